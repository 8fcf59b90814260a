"""Fail points: named places where tests make a process fail on purpose.

The one mechanism for the service, its durable tasks and the compute agent. A point is
declared where it sits, by its name: ``failpoints.hit("attach.exported")``. It is armed by
naming it in ``BLOCKYARD_FAILPOINTS`` (comma separated, read once at start) or in the file
named by ``BLOCKYARD_FAILPOINTS_FILE`` (re-read at every hit, so a test can arm and disarm
points of a running process). ``name`` kills the process on the spot, as ``kill -9`` would
(crash tests); ``name=error`` raises `InjectedFailure` there instead (rollback tests). A fault
only its call site can make (corrupting a copy before it is verified) asks `armed` instead.
Unarmed, a hit costs a set lookup, plus a stat when the file is used.
"""

from __future__ import annotations

import logging
import os
import signal

log = logging.getLogger(__name__)

_STATIC = frozenset(filter(None, os.environ.get("BLOCKYARD_FAILPOINTS", "").split(",")))
_FILE = os.environ.get("BLOCKYARD_FAILPOINTS_FILE")


class InjectedFailure(RuntimeError):
    """Raised at an armed ``name=error`` fail point."""

    def __init__(self, name: str) -> None:
        super().__init__(f"injected failure at {name}")
        self.name = name


def _armed() -> frozenset[str]:
    if not _FILE:
        return _STATIC
    try:
        with open(_FILE) as f:
            return _STATIC | frozenset(filter(None, f.read().replace("\n", ",").split(",")))
    except FileNotFoundError:
        return _STATIC


def hit(name: str) -> None:
    """Fail here if the point `name` is armed (see the module docstring)."""
    armed = _armed()
    if not armed:
        return
    if f"{name}=error" in armed:
        log.warning("fail point %s: raising", name)
        raise InjectedFailure(name)
    if name in armed:
        log.warning("fail point %s: killing the process", name)
        os.kill(os.getpid(), signal.SIGKILL)


def armed(name: str) -> bool:
    """Is the point `name` armed? For a fault the call site injects itself, instead of the
    kill or error `hit` makes."""
    return name in _armed()
