"""Durable records of the target daemons (tgtd, qemu-nbd) that outlive the service.

A daemon serving an export must keep running while `blockyard serve` restarts (SIGTERM or
kill -9): a guest's I/O goes through it. The service therefore starts each daemon in a
session of its own (`blockyard.exec.spawn`) and writes, as soon as it is spawned, a record
in the state directory: its pid, its argv and its start time. A later service adopts the
daemon only when the record still describes a live process: same pid, the very same
``/proc/PID/cmdline`` and the same start time (a pid the kernel reused for something else
fails one of them). Whether the daemon also answers is the caller's check (tgtadm on the
control port, an NBD greeting on the socket).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from blockyard.exec import process_cmdline, process_ids, process_start_time, stop

#: seconds between checks while waiting for a process to exit
POLL = 0.005


@dataclass(frozen=True)
class DaemonRecord:
    """One daemon as spawned: enough to find it again, and to tell it from a stranger."""

    pid: int
    argv: tuple[str, ...]
    #: when the process started, in clock ticks since boot (/proc/PID/stat field 22)
    started: int
    #: what the owner wants to remember with it (an NBD address, tgtd's control port)
    data: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def of(cls, pid: int, argv: list[str], data: dict[str, Any] | None = None) -> DaemonRecord:
        """The record of a process just spawned (its start time read now)."""
        return cls(pid, tuple(argv), process_start_time(pid) or 0, dict(data or {}))

    def alive(self) -> bool:
        """Is the recorded process still running, and still the one recorded?"""
        return (process_start_time(self.pid) == self.started
                and tuple(process_cmdline(self.pid)) == self.argv)

    def save(self, path: Path) -> None:
        """Write the record atomically and durably (it must survive a crash right after)."""
        body = json.dumps({"pid": self.pid, "argv": list(self.argv), "started": self.started,
                           "data": self.data}, sort_keys=True)
        tmp = path.with_name(path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(body)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: Path) -> DaemonRecord | None:
        """The record at `path`; None when there is none or it is unreadable."""
        try:
            raw = json.loads(path.read_text())
            return cls(int(raw["pid"]), tuple(str(a) for a in raw["argv"]),
                       int(raw["started"]), dict(raw.get("data", {})))
        except (FileNotFoundError, ValueError, KeyError, TypeError):
            return None

    def terminate(self, timeout: float) -> None:
        """SIGTERM the recorded process, SIGKILL it after `timeout`; only while it is still
        the recorded one. Our own child is reaped; someone else's is left to its parent."""
        stop(self.pid, timeout, ours=self.alive, interval=POLL)


def find_process(argv: list[str], data: dict[str, Any] | None = None) -> DaemonRecord | None:
    """A live process running exactly `argv`, as a record (for one started but not recorded:
    a crash right after the spawn, or a daemon of a version that kept no record)."""
    wanted = list(argv)
    for pid in process_ids():
        if process_cmdline(pid) == wanted:
            record = DaemonRecord.of(pid, wanted, data)
            if record.started:
                return record
    return None
