"""Choosing a backend for a new volume: filter, then weigh by free capacity.

Filters, as Cinder's default filter scheduler applies them: the backend's service is enabled
and not frozen, the availability zone, the volume type's extra specs against each pool's
capabilities (CapabilitiesFilter: ``volume_backend_name``, ``storage_protocol``,
``vendor_name``, ``capabilities:...``, with Cinder's operators; see
`blockyard.service.capabilities`), and capacity (thin backends may over-subscribe up to
`max_over_subscription_ratio`, minus `reserved_percentage`).
"""

from __future__ import annotations

from blockyard.backends.base import PoolStats
from blockyard.db.models import VolumeType
from blockyard.errors import BackendError, Invalid
from blockyard.service import capabilities, services
from blockyard.service.runtime import Backend, Runtime
from blockyard.service.types import TypeInfo


class NoValidBackend(BackendError):
    """No backend passes the filters."""


def _virtual_free_gb(pool: PoolStats) -> float:
    reserved = pool.total_capacity_gb * pool.reserved_percentage / 100.0
    if pool.thin_provisioning_support:
        virtual_total = pool.total_capacity_gb * pool.max_over_subscription_ratio
        return min(
            virtual_total - pool.provisioned_capacity_gb - reserved,
            # a thin pool still needs real free space to take any write at all
            (pool.free_capacity_gb - reserved) * pool.max_over_subscription_ratio,
        )
    return pool.free_capacity_gb - reserved


def availability_zones(rt: Runtime) -> set[str]:
    return {b.config.availability_zone for b in rt.backends.values()}


def _fitting_pools(backend: Backend, specs: dict[str, str]) -> list[PoolStats]:
    """The pools of `backend` whose capabilities a type with `specs` accepts (none when the
    backend cannot report)."""
    try:
        stats = backend.stats()
    except Exception:  # a backend that cannot report is not a candidate
        return []
    return [p for p in stats.pools
            if capabilities.satisfies(capabilities.pool_capabilities(backend, stats, p), specs)]


def fits(backend: Backend, vt: VolumeType | TypeInfo) -> bool:
    """Whether `backend` can serve volumes of type `vt` (a retype then stays in place)."""
    return bool(_fitting_pools(backend, vt.specs))


def pick(rt: Runtime, vt: VolumeType | TypeInfo, size_gb: int, zone: str | None) -> Backend:
    """The best backend for a volume of `size_gb` GiB of type `vt` in `zone` (None: any)."""
    if zone is not None and zone not in availability_zones(rt):
        raise Invalid(f"Invalid input received: Availability zone '{zone}' is invalid.")
    specs = vt.specs
    excluded = services.unschedulable(rt)
    best: tuple[float, Backend] | None = None
    for backend in rt.backends.values():
        if backend.name in excluded:
            continue
        if zone is not None and backend.config.availability_zone != zone:
            continue
        free = max((_virtual_free_gb(p) for p in _fitting_pools(backend, specs)), default=None)
        if free is None or free < size_gb:
            continue
        if best is None or free > best[0]:
            best = (free, backend)
    if best is None:
        raise NoValidBackend("No valid backend was found. No weighed backends available")
    return best[1]
