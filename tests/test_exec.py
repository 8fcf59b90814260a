"""The command runner: outcomes, failures with their output, timeouts; stopping children."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest

from blockyard.exec import (
    CommandFailed,
    CommandTimeout,
    exited,
    process_ids,
    process_start_time,
    run,
    stop,
    wait_until,
)


def test_success_captures_output() -> None:
    done = run(["sh", "-c", "echo out; echo err >&2"])
    assert (done.returncode, done.stdout, done.stderr) == (0, "out\n", "err\n")


def test_failure_keeps_argv_code_and_output() -> None:
    with pytest.raises(CommandFailed) as info:
        run(["sh", "-c", "echo boom >&2; exit 3"])
    assert info.value.returncode == 3
    assert info.value.stderr == "boom\n"
    assert info.value.argv[0] == "sh"


def test_accepted_codes() -> None:
    assert run(["sh", "-c", "exit 22"], ok_codes=(0, 22)).returncode == 22


def test_missing_program_is_a_failure_not_a_crash() -> None:
    with pytest.raises(CommandFailed) as info:
        run(["/nonexistent/tool"])
    assert info.value.returncode == 127


def test_timeout_kills() -> None:
    with pytest.raises(CommandTimeout):
        run(["sleep", "5"], timeout=0.2)


def test_input_goes_to_stdin() -> None:
    assert run(["cat"], input="secret").stdout == "secret"


def test_redacted_secrets_never_show() -> None:
    done = run(["echo", "user", "s3cret"], redact=("s3cret",))
    assert "s3cret" not in " ".join(done.argv) + done.stdout
    with pytest.raises(CommandFailed) as info:
        run(["sh", "-c", "echo s3cret >&2; exit 1", "s3cret"], redact=("s3cret",))
    assert "s3cret" not in str(info.value) + info.value.stderr + " ".join(info.value.argv)


# ---------------------------------------------------------------------------- stop

def _ignoring_sigterm() -> subprocess.Popen[bytes]:
    """A child that ignores SIGTERM, started once it says so (the trap is in place)."""
    proc = subprocess.Popen(["sh", "-c", "trap '' TERM; echo ready; exec sleep 30"],
                            stdout=subprocess.PIPE)
    assert proc.stdout is not None and proc.stdout.readline() == b"ready\n"
    return proc


def test_stop_ends_a_child_with_sigterm() -> None:
    proc = subprocess.Popen(["sleep", "30"])
    assert stop(proc, 5.0)
    assert proc.returncode == -signal.SIGTERM


def test_stop_sigkills_a_child_that_ignores_sigterm_after_the_timeout() -> None:
    proc = _ignoring_sigterm()
    started = time.monotonic()
    assert stop(proc, 0.3)
    assert time.monotonic() - started >= 0.3
    assert proc.returncode == -signal.SIGKILL


def test_stop_by_pid_reaps_our_child() -> None:
    proc = _ignoring_sigterm()
    assert stop(proc.pid, 0.2)
    with pytest.raises(ChildProcessError):  # reaped by stop: no zombie is left
        os.waitpid(proc.pid, os.WNOHANG)


def test_force_sigkills_at_once() -> None:
    proc = _ignoring_sigterm()
    started = time.monotonic()
    assert stop(proc, 60.0, force=True)
    assert time.monotonic() - started < 30.0  # not the 60 s SIGTERM grace: SIGKILL at once
    assert proc.returncode == -signal.SIGKILL


def test_stop_reaps_a_zombie() -> None:
    proc = subprocess.Popen(["true"])
    wait_until(lambda: _state(proc.pid) == "Z", 5.0)
    assert stop(proc.pid, 1.0)
    assert not os.path.exists(f"/proc/{proc.pid}")
    with pytest.raises(ChildProcessError):
        os.waitpid(proc.pid, os.WNOHANG)


def test_stopping_an_already_dead_pid_is_fine() -> None:
    proc = subprocess.Popen(["true"])
    proc.wait()
    assert exited(proc) and exited(proc.pid)
    assert stop(proc.pid, 0.1)
    assert stop(proc, 0.1)


def test_stop_leaves_a_process_that_is_no_longer_ours() -> None:
    proc = subprocess.Popen(["sleep", "30"])
    try:
        assert stop(proc, 5.0, ours=lambda: False)
        assert proc.poll() is None  # never signalled
    finally:
        proc.kill()
        proc.wait()


def test_start_time_identifies_a_process() -> None:
    proc = subprocess.Popen(["sleep", "30"])
    try:
        started = process_start_time(proc.pid)
        assert started is not None and started > 0
        assert process_start_time(proc.pid) == started
        assert proc.pid in process_ids()
    finally:
        stop(proc, 5.0)
    assert process_start_time(proc.pid) is None


def _state(pid: int) -> str:
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0]


def test_exec_is_the_one_place_that_signals_or_reads_processes() -> None:
    """Stopping a process and reading ``/proc/PID`` go through this module (fail points kill
    their own process, which is theirs to do)."""
    src = Path(__file__).resolve().parents[1] / "src" / "blockyard"
    allowed = {src / "exec.py", src / "failpoints.py"}
    offenders = [f"{path.relative_to(src)}: {line.strip()}"
                 for path in sorted(src.rglob("*.py")) if path not in allowed
                 for line in path.read_text().splitlines()
                 if re.search(r"os\.kill\(|os\.killpg\(|\.terminate\(\)|\.kill\(\)|/proc/\{", line)]
    assert offenders == []
