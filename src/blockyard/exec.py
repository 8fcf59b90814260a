"""The one way blockyard runs external commands (tgtadm, qemu-nbd, qemu-img, rbd, ...).

Callers build argv lists and name exit codes in tiny predicates; this module runs them with a
timeout, captures output, and turns failures into errors that keep everything needed to
debug them. Nothing else in the package imports `subprocess` to run a command to completion;
long-running daemons are started through `spawn`, watched with `exited`, `process_gone`,
`process_start_time` and `process_cmdline` (the one reader of ``/proc``), waited for with
`wait_until` (the one polling loop) and ended with `stop` (the one SIGTERM-then-SIGKILL), shared
by targets, connectors and the compute agent.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from blockyard.errors import BackendError

log = logging.getLogger(__name__)


class CommandFailed(BackendError):
    """A command exited with a code its caller did not accept."""

    def __init__(self, argv: Sequence[str], returncode: int, stdout: str, stderr: str) -> None:
        super().__init__(
            f"{' '.join(argv)} exited with {returncode}: {stderr.strip() or stdout.strip()}"
        )
        self.argv = list(argv)
        self.returncode = returncode
        self.stdout = stdout
        self.stderr = stderr


class CommandTimeout(BackendError):
    """A command did not finish in time; it was killed."""

    def __init__(self, argv: Sequence[str], timeout: float) -> None:
        super().__init__(f"{' '.join(argv)} did not finish within {timeout} s")
        self.argv = list(argv)
        self.timeout = timeout


@dataclass(frozen=True)
class Completed:
    argv: list[str]
    returncode: int
    stdout: str
    stderr: str


def run(
    argv: Sequence[str],
    *,
    timeout: float = 30.0,
    ok_codes: tuple[int, ...] = (0,),
    input: str | None = None,
    redact: tuple[str, ...] = (),
) -> Completed:
    """Run `argv` to completion; raise CommandFailed/CommandTimeout unless it exits in
    `ok_codes`. Secrets belong in `input`, not argv (argv shows in `ps`); a tool that only
    takes one on its command line gets it listed in `redact`, which masks it in every log
    line, error and result this function produces."""
    shown = [_mask(arg, redact) for arg in argv]
    try:
        proc = subprocess.run(
            list(argv), input=input, capture_output=True, text=True, timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise CommandTimeout(shown, timeout) from None
    except FileNotFoundError as exc:
        raise CommandFailed(shown, 127, "", str(exc)) from None
    stdout, stderr = _mask(proc.stdout, redact), _mask(proc.stderr, redact)
    if proc.returncode not in ok_codes:
        raise CommandFailed(shown, proc.returncode, stdout, stderr)
    log.debug("ran %s", shown)
    return Completed(shown, proc.returncode, stdout, stderr)


def _mask(text: str, secrets: tuple[str, ...]) -> str:
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return text


def spawn(argv: Sequence[str], *, log_path: str | None = None) -> subprocess.Popen[bytes]:
    """Start a daemon-like child (tgtd, qemu-nbd) that the caller supervises and stops.

    It gets its own session, so a signal aimed at blockyard's terminal does not reach it,
    and its output goes to `log_path` (or is discarded).
    """
    out = open(log_path, "ab") if log_path else subprocess.DEVNULL  # noqa: SIM115
    try:
        return subprocess.Popen(list(argv), stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    finally:
        if log_path:
            out.close()  # type: ignore[union-attr]


class WaitTimeout(BackendError):
    """`wait_until` gave up: what it waited for did not happen in time."""

    def __init__(self, what: str, timeout: float) -> None:
        super().__init__(f"timed out after {timeout:g} s waiting for {what}")
        self.what = what
        self.timeout = timeout


def wait_until(pred: Callable[[], bool], timeout: float, interval: float = 0.05,
               what: str = "a condition") -> None:
    """Call `pred` every `interval` seconds until it returns true; raise `WaitTimeout` when
    `timeout` seconds pass first. `pred` is always called at least once, and once more at the
    deadline, so a slow scheduler never turns success into a timeout."""
    deadline = time.monotonic() + timeout
    while True:
        if pred():
            return
        now = time.monotonic()
        if now >= deadline:
            if pred():
                return
            raise WaitTimeout(what, timeout)
        time.sleep(min(interval, deadline - now))


def process_gone(pid: int) -> bool:
    """True when `pid` has exited. Reaps it when it is our child; a zombie that belongs to
    someone else counts as gone."""
    try:
        reaped, _ = os.waitpid(pid, os.WNOHANG)
        if reaped == pid:
            return True
    except ChildProcessError:
        pass
    fields = _stat(pid)
    return fields is None or fields[0] in ("Z", "X")


def process_start_time(pid: int) -> int | None:
    """When the process started, in clock ticks since boot (``/proc/PID/stat`` field 22): with
    the pid, an identity the kernel does not reuse. None when it is gone or a zombie."""
    fields = _stat(pid)
    if fields is None or fields[0] in ("Z", "X"):
        return None
    return int(fields[19])  # field 22 of stat; fields[0] is field 3


def _stat(pid: int) -> list[str] | None:
    """``/proc/PID/stat`` from field 3 (the state) on, or None when there is no such process.
    Field 2, the command name in parentheses, may itself hold spaces and parentheses."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return None
    return fields or None


def process_cmdline(pid: int) -> list[str]:
    """The argv of a running process, or [] when it is gone."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            raw = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def process_ids() -> list[int]:
    """The pids of every process this host shows us."""
    return [int(entry) for entry in os.listdir("/proc") if entry.isdigit()]


class Child(Protocol):
    """What `exited` and `stop` use of a child we spawned (a `subprocess.Popen`): reaping it
    through its `poll` lets it know how it ended."""

    pid: int

    def poll(self) -> int | None: ...


#: a process to wait for or stop: our own child, or a bare pid (our child or not; ours is
#: reaped with `waitpid`)
Process = Child | int


def exited(proc: Process) -> bool:
    """True when `proc` has exited; reaps it when it is our child."""
    if isinstance(proc, int):
        return process_gone(proc)
    return proc.poll() is not None


def stop(proc: Process, timeout: float, *, force: bool = False,
         ours: Callable[[], bool] | None = None, interval: float = 0.02) -> bool:
    """End a process: SIGTERM, up to `timeout` s to exit, then SIGKILL and up to `timeout` s
    more (`force`: SIGKILL at once). Only the process itself is signalled, never its group.
    Returns whether it is gone; one that outlives SIGKILL (stuck in the kernel) is the
    caller's to report. An already-gone process is fine, and our child is reaped either way.

    `ours` guards a pid that is not our unreaped child (an adopted daemon, a bridge of an
    earlier run): once such a process exits the kernel may give its pid to a stranger.
    `ours` says whether the pid is still the process meant; it is asked before each signal
    and while waiting, and once it says no there is nothing left to stop."""
    pid = proc if isinstance(proc, int) else proc.pid

    def ended() -> bool:
        return exited(proc) or (ours is not None and not ours())

    for sig in (signal.SIGKILL,) if force else (signal.SIGTERM, signal.SIGKILL):
        if ended():
            return True
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
        try:
            wait_until(ended, timeout, interval, f"pid {pid} to exit")
            return True
        except WaitTimeout:
            log.debug("pid %d did not exit within %g s of %s", pid, timeout, sig.name)
    return False
