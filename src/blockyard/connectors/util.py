"""Small helpers every connector shares: host locks and private files.

Polling and process checks (`wait_until`, `process_gone`, `process_cmdline`) live in
`blockyard.exec`, which targets share too; nothing in the connectors sleeps in a loop of its own.
"""

from __future__ import annotations

import fcntl
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager

_thread_locks: dict[str, threading.Lock] = {}
_thread_locks_guard = threading.Lock()


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
