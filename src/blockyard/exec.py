"""The one way blockyard runs external commands (tgtadm, qemu-nbd, qemu-img, rbd, ...).

Callers build argv lists and name exit codes in tiny predicates; this module runs them with a
timeout, captures output, and turns failures into errors that keep everything needed to
debug them. Nothing else in the package imports `subprocess` to run a command to completion;
long-running daemons are started through `spawn`, watched with `process_gone` and
`process_cmdline`, and waited for with `wait_until` (the one polling loop, shared by targets and
connectors).
"""

from __future__ import annotations

import logging
import os
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

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
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return True
    return state in ("Z", "X")


def process_cmdline(pid: int) -> list[str]:
    """The argv of a running process, or [] when it is gone."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            raw = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]
