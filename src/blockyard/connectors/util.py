"""Small helpers every connector shares: polling, host locks, private files, processes.

Polling goes through `wait_until` only; nothing in the connectors sleeps in a loop of its own.
"""

from __future__ import annotations

import fcntl
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from blockyard.errors import BackendError

_thread_locks: dict[str, threading.Lock] = {}
_thread_locks_guard = threading.Lock()


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


@contextmanager
def host_lock(name: str, lock_dir: str | None = None) -> Iterator[None]:
    """Serialise work on host state called `name`: between threads always, and between
    processes too when `lock_dir` is given (an flock on ``<lock_dir>/<name>.lock``)."""
    with _thread_locks_guard:
        lock = _thread_locks.setdefault(name, threading.Lock())
    with lock:
        if lock_dir is None:
            yield
            return
        os.makedirs(lock_dir, exist_ok=True)
        fd = os.open(os.path.join(lock_dir, f"{name}.lock"), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing drops the flock


def write_private(path: str, data: str) -> None:
    """Create `path` readable by its owner only (0600) and write `data` to it. The file must
    not exist yet, so a secret never lands in a file someone else prepared."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(data)


def remove_quietly(path: str) -> None:
    """Remove a file that may already be gone."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


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
