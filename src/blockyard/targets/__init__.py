"""Export targets: how a backend's volume is offered to an initiator (iSCSI via tgt, NBD via
qemu-nbd, local paths; "rbd" for Ceph, which needs no export). Drivers compose one target with
their storage; the runtime builds one target per protocol in use and starts and stops its
daemons."""

from __future__ import annotations

import hashlib
import inspect
import os
from pathlib import Path
from typing import Any

from blockyard.errors import ConfigError
from blockyard.model import Target
from blockyard.targets.local import LocalTarget
from blockyard.targets.qemu_nbd import QemuNbdTarget
from blockyard.targets.rbd import RbdTarget
from blockyard.targets.tgt import TgtTarget

TARGETS: dict[str, type[Any]] = {
    "local": LocalTarget,
    "iscsi": TgtTarget,
    "nbd": QemuNbdTarget,
    "rbd": RbdTarget,
}
#: targets without daemons or options, built without a directory
_PLAIN: tuple[type[Any], ...] = (LocalTarget, RbdTarget)

__all__ = ["TARGETS", "build", "check_options", "teardown"]


def _run_dir(state_dir: Path, protocol: str) -> Path:
    """A short directory for sockets (a unix socket path has at most 107 bytes), unique to
    this state dir: /run/blockyard/<hash>/<protocol>."""
    digest = hashlib.sha256(str(state_dir).encode()).hexdigest()[:12]
    base = Path("/run") if os.access("/run", os.W_OK) else Path("/tmp")
    return base / "blockyard" / digest / protocol


def _state_dir(state_dir: Path, protocol: str) -> Path:
    """Where a target keeps the records of its daemons (they outlive the service)."""
    return state_dir / "targets" / protocol


def teardown(state_dir: Path) -> None:
    """Stop every target daemon and export the services of `state_dir` left running, from
    their records alone (no configuration needed): a deliberate full stop, for tests and for
    decommissioning a state dir. Attached consumers lose their disks."""
    nbd = _state_dir(state_dir, "nbd")
    if nbd.is_dir():
        QemuNbdTarget(nbd, run_dir=_run_dir(state_dir, "nbd")).teardown()
    tgt = TgtTarget.recorded(str(_state_dir(state_dir, "iscsi")))
    if tgt is not None:
        tgt.teardown()


def check_options(protocol: str, options: dict[str, Any]) -> None:
    """Raise ConfigError naming the first [targets.<protocol>] option the target lacks."""
    cls = TARGETS[protocol]
    if cls in _PLAIN:
        if options:
            raise ConfigError(f"targets.{protocol}", f"the {protocol} target takes no options")
        return
    params = inspect.signature(cls).parameters
    unknown = sorted(set(options) - set(params) - {"state_dir", "run_dir"})
    if unknown:
        raise ConfigError(f"targets.{protocol}.{unknown[0]}", "unknown option")
    missing = sorted(n for n, p in params.items() if p.default is inspect.Parameter.empty
                     and p.kind is inspect.Parameter.KEYWORD_ONLY and n not in options)
    if missing:
        raise ConfigError(f"targets.{protocol}.{missing[0]}", "is required")


def build(protocol: str, state_dir: Path, options: dict[str, Any]) -> Target:
    """The target for `protocol` with its [targets.<protocol>] `options`."""
    check_options(protocol, options)
    cls = TARGETS[protocol]
    if cls in _PLAIN:
        plain: Target = cls()
        return plain
    kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in options.items()}
    where = _state_dir(state_dir, protocol)
    where.mkdir(parents=True, exist_ok=True, mode=0o700)
    if protocol == "nbd":  # its sockets need a short path
        kwargs["run_dir"] = _run_dir(state_dir, protocol)
    try:
        target: Target = cls(str(where), **kwargs)
    except TypeError as exc:
        raise ConfigError(f"targets.{protocol}", str(exc)) from None
    return target
