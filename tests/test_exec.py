"""The command runner: outcomes, failures with their output, timeouts."""

from __future__ import annotations

import pytest

from blockyard.exec import CommandFailed, CommandTimeout, run


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
