"""What a backend's pools report to the scheduler, and whether a volume type's extra specs
accept them (Cinder's CapabilitiesFilter and its extra-spec operators).

The capabilities of a pool are the dict get_pools shows under ``capabilities``; the scheduler
matches a type's extra specs against the very same dict, so what an operator reads in
``cinder get-pools --detail`` is what a type can ask for.

Matching, as Cinder does it:

- a key scoped with ``capabilities:`` is matched without the scope; a key with any other
  scope (``vendor:thing``, ``provisioning:type``, ``RESKEY:...``) is not the scheduler's and
  is ignored; an unscoped key must name a capability the pool reports, else the pool fails;
- a requirement is ``<op> operand`` with op one of ``=`` (at least, numerically), ``==``,
  ``!=``, ``>=``, ``<=`` (numbers), ``s==``, ``s!=``, ``s<``, ``s<=``, ``s>``, ``s>=``
  (strings), ``<in>`` (substring), ``<is>`` (booleans), ``<or> a <or> b``; anything else is
  compared for plain equality with the reported value;
- a list-valued capability matches when any of its items does (``storage_protocol`` is
  matched with its spelling variants, so ``iscsi`` finds an ``iSCSI`` backend).
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Mapping
from typing import Any

from blockyard.backends.base import BackendStats, PoolStats
from blockyard.service.runtime import Backend

#: Cinder's spellings of each storage protocol; the canonical one first
PROTOCOL_VARIANTS: tuple[tuple[str, ...], ...] = (
    ("iSCSI", "iscsi"),
    ("FC", "fibre_channel", "fc"),
    ("NFS", "nfs"),
    ("NVMe-oF", "NVMeOF", "nvmeof"),
)

_TRUE = frozenset(("1", "t", "true", "on", "y", "yes"))


def fresh_stats(backend: Backend) -> BackendStats | None:
    """The driver's report, asked afresh, or None when it cannot give one (the backend is
    down): for the endpoints that show backends, where a driver failure is never a 500."""
    try:
        return backend.stats(fresh=True)
    except Exception:  # noqa: BLE001 - any driver failure means "cannot report"
        return None


def volume_backend_name(backend: Backend, stats: BackendStats) -> str:
    """The name a type's ``volume_backend_name`` is matched against."""
    return backend.config.volume_backend_name or stats.volume_backend_name


def pool_capabilities(backend: Backend, stats: BackendStats, pool: PoolStats) -> dict[str, Any]:
    """One pool's capabilities in Cinder's get_pools field order (without the timestamp)."""
    return {
        "pool_name": pool.name,
        "total_capacity_gb": pool.total_capacity_gb,
        "free_capacity_gb": pool.free_capacity_gb,
        "allocated_capacity_gb": pool.allocated_capacity_gb,
        "provisioned_capacity_gb": pool.provisioned_capacity_gb,
        "max_over_subscription_ratio": pool.max_over_subscription_ratio,
        "thin_provisioning_support": pool.thin_provisioning_support,
        "thick_provisioning_support": pool.thick_provisioning_support,
        "reserved_percentage": int(pool.reserved_percentage),
        "multiattach": pool.multiattach,
        "QoS_support": False,
        "filter_function": None,
        "goodness_function": None,
        "consistencygroup_support": False,
        "replication_enabled": False,
        "group_replication_enabled": False,
        "volume_backend_name": volume_backend_name(backend, stats),
        "storage_protocol": stats.storage_protocol,
        "vendor_name": stats.vendor_name,
        "driver_version": stats.driver_version,
    }


def _property(title: str, description: str) -> dict[str, str]:
    return {"title": title, "description": description, "type": "boolean"}


#: the standard capabilities every Cinder driver advertises (keys a type's specs may set)
STANDARD_PROPERTIES: dict[str, dict[str, str]] = {
    "thin_provisioning": _property("Thin Provisioning", "Sets thin provisioning."),
    "compression": _property("Compression", "Enables compression."),
    "qos": _property("QoS", "Enables QoS."),
    "replication_enabled": _property("Replication", "Enables replication."),
}


def backend_capabilities(backend: Backend, stats: BackendStats) -> dict[str, Any]:
    """What ``GET capabilities/{host}`` shows: the backend-level report (no single pool)."""
    return {
        "namespace": f"OS::Storage::Capabilities::{backend.service_host}",
        "vendor_name": stats.vendor_name,
        "volume_backend_name": volume_backend_name(backend, stats),
        "pool_name": None,
        "driver_version": stats.driver_version,
        "storage_protocol": stats.storage_protocol,
        "display_name": None,
        "description": None,
        "visibility": None,
        "replication_targets": [],
        "properties": {key: dict(value) for key, value in STANDARD_PROPERTIES.items()},
    }


# ---------------------------------------------------------------------------- matching


def _bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    return str(value).strip().lower() in _TRUE


def _numeric(compare: Callable[[float, float], bool]) -> Callable[[Any, str], bool]:
    return lambda value, operand: compare(float(value), float(operand))


_OPERATORS: dict[str, Callable[[Any, str], bool]] = {
    "=": _numeric(operator.ge),
    "<in>": lambda value, operand: operand in value,
    "<is>": lambda value, operand: _bool(value) is _bool(operand),
    "==": _numeric(operator.eq),
    "!=": _numeric(operator.ne),
    ">=": _numeric(operator.ge),
    "<=": _numeric(operator.le),
    "s==": operator.eq,
    "s!=": operator.ne,
    "s<": operator.lt,
    "s<=": operator.le,
    "s>": operator.gt,
    "s>=": operator.ge,
}


def match(value: Any, requirement: str | None) -> bool:
    """Whether a reported capability `value` meets one extra spec's `requirement`."""
    if requirement is None:
        return value is None
    words = requirement.split()
    op = words.pop(0) if words else None
    method = _OPERATORS.get(op) if op is not None else None
    if op != "<or>" and method is None:
        return bool(value == requirement)
    if value is None:
        return False
    if op == "<or>":  # <or> a <or> b <or> c: every other word is a choice
        return value in words[::2]
    assert method is not None
    if not words:
        return False
    try:
        return bool(method(value, words[0]))
    except (TypeError, ValueError):  # a non-number where a number is compared: no match
        return False


def _with_variants(capabilities: Mapping[str, Any]) -> Mapping[str, Any]:
    protocol = capabilities.get("storage_protocol")
    for variants in PROTOCOL_VARIANTS:
        if protocol in variants:
            return {**capabilities, "storage_protocol": list(variants)}
    return capabilities


def satisfies(capabilities: Mapping[str, Any], specs: Mapping[str, str]) -> bool:
    """Whether a pool reporting `capabilities` may hold a volume of a type with `specs`."""
    caps = _with_variants(capabilities)
    for key, requirement in specs.items():
        scope = key.split(":")
        if len(scope) > 1 and scope[0] != "capabilities":
            continue  # another component's key (vendor, QoS, provisioning...)
        if scope[0] == "capabilities":
            del scope[0]
        reported: Any = caps
        for part in scope:
            try:
                reported = reported[part]
            except (TypeError, KeyError):
                return False  # the pool does not report what the type asks for
        values = reported if isinstance(reported, list) else [reported]
        if not any(match(value, requirement) for value in values):
            return False
    return True
