"""Deployment description: availability zones, extensions and scheduler pools.

Pools come live from each driver's ``get_stats`` (cached briefly by `Backend.stats`); their
capabilities are the ones the scheduler matches volume types against. Services, hosts and
backend capabilities are in `blockyard.api.services`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from blockyard.api import validate, wire
from blockyard.api.errors import ApiError
from blockyard.api.types import admin_only
from blockyard.api.views import iso
from blockyard.backends.base import BackendStats, PoolStats
from blockyard.db.models import utcnow
from blockyard.service import capabilities as caps
from blockyard.service import services
from blockyard.service import types as vtypes
from blockyard.service.identity import Identity
from blockyard.service.runtime import Backend, Runtime

#: Cinder 29's extension list: (name, alias, description, updated)
EXTENSIONS = (
    ("VolumeImageMetadata", "os-vol-image-meta",
     "Show image metadata associated with the volume.", "2012-12-07T00:00:00+00:00"),
    ("VolumeUnmanage", "os-volume-unmanage", "Enable volume unmanage operation.",
     "2012-05-31T00:00:00+00:00"),
    ("UsedLimits", "os-used-limits", "Provide data on limited resources that are being used.",
     "2013-10-03T00:00:00+00:00"),
    ("AdminActions", "os-admin-actions", "Enable admin actions.", "2012-08-25T00:00:00+00:00"),
    ("Cgsnapshots", "cgsnapshots", "cgsnapshots support.", "2014-08-18T00:00:00+00:00"),
    ("TypesExtraSpecs", "os-types-extra-specs", "Type extra specs support.",
     "2011-08-24T00:00:00+00:00"),
    ("SnapshotUnmanage", "os-snapshot-unmanage", "Enable volume unmanage operation.",
     "2014-12-31T00:00:00+00:00"),
    ("VolumeTypeEncryption", "encryption", "Encryption support for volume types.",
     "2013-07-01T00:00:00+00:00"),
    ("VolumeEncryptionMetadata", "os-volume-encryption-metadata",
     "Volume encryption metadata retrieval support.", "2013-07-10T00:00:00+00:00"),
    ("Consistencygroups", "consistencygroups", "consistency groups support.",
     "2014-08-18T00:00:00+00:00"),
    ("SnapshotActions", "os-snapshot-actions", "Enable snapshot manager actions.",
     "2013-07-16T00:00:00+00:00"),
    ("Backups", "backups", "Backups support.", "2012-12-12T00:00:00+00:00"),
    ("Quotas", "os-quota-sets", "Quota management support.", "2011-08-08T00:00:00+00:00"),
    ("VolumeActions", "os-volume-actions", "Enable volume actions.",
     "2012-05-31T00:00:00+00:00"),
    ("QuotaClasses", "os-quota-class-sets", "Quota classes management support.",
     "2012-03-12T00:00:00+00:00"),
    ("AvailabilityZones", "os-availability-zone", "Describe Availability Zones.",
     "2013-06-27T00:00:00+00:00"),
    ("VolumeTypeAccess", "os-volume-type-access", "Volume type access support.",
     "2014-06-26T00:00:00Z"),
    ("Services", "os-services", "Services support.", "2012-10-28T00:00:00-00:00"),
    ("Hosts", "os-hosts", "Admin-only host administration.", "2011-06-29T00:00:00+00:00"),
    ("TypesManage", "os-types-manage", "Types manage support.", "2011-08-24T00:00:00+00:00"),
    ("ExtendedSnapshotAttributes", "os-extended-snapshot-attributes",
     "Extended SnapshotAttributes support.", "2012-06-19T00:00:00+00:00"),
    ("SnapshotManage", "os-snapshot-manage",
     "Allows existing backend storage to be 'managed' by Cinder.", "2014-12-31T00:00:00+00:00"),
    ("Qos_specs_manage", "qos-specs", "QoS specs support.", "2013-08-02T00:00:00+00:00"),
    ("VolumeHostAttribute", "os-vol-host-attr", "Expose host as an attribute of a volume.",
     "2011-11-03T00:00:00+00:00"),
    ("Scheduler_stats", "scheduler-stats", "Scheduler stats support.",
     "2014-09-07T00:00:00+00:00"),
    ("VolumeManage", "os-volume-manage",
     "Allows existing backend storage to be 'managed' by Cinder.", "2014-02-10T00:00:00+00:00"),
    ("VolumeMigStatusAttribute", "os-vol-mig-status-attr",
     "Expose migration_status as an attribute of a volume.", "2013-08-08T00:00:00+00:00"),
    ("VolumeTransfer", "os-volume-transfer", "Volume transfer management support.",
     "2013-05-29T00:00:00+00:00"),
    ("VolumeTenantAttribute", "os-vol-tenant-attr",
     "Expose the internal project_id as an attribute of a volume.",
     "2011-11-03T00:00:00+00:00"),
    ("SchedulerHints", "OS-SCH-HNT", "Pass arbitrary key/value pairs to the scheduler.",
     "2013-04-18T00:00:00+00:00"),
    ("ExtendedServices", "os-extended-services", "Extended services support.",
     "2014-01-10T00:00:00-00:00"),
    ("Capabilities", "capabilities", "Capabilities support.", "2015-08-31T00:00:00+00:00"),
)


async def _in_thread(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    return await run_in_threadpool(fn, *args, **kwargs)


def _backends(rt: Runtime) -> list[Backend]:
    return [rt.backends[name] for name in sorted(rt.backends)]


# ---------------------------------------------------------------------------- zones


async def availability_zones(request: Request) -> Response:
    rt = wire.runtime(request)
    zones = sorted({b.config.availability_zone for b in rt.backends.values()})
    return wire.ok({"availabilityZoneInfo": [
        {"zoneName": zone, "zoneState": {"available": True}} for zone in zones]})


# ---------------------------------------------------------------------------- extensions


async def extensions(request: Request) -> Response:
    return wire.ok({"extensions": [
        {"name": name, "alias": alias, "description": description, "updated": updated,
         "links": []}
        for name, alias, description, updated in EXTENSIONS]})


# ---------------------------------------------------------------------------- pools


def _capabilities(backend: Backend, stats: BackendStats, pool: PoolStats,
                  now: str) -> dict[str, Any]:
    return {**caps.pool_capabilities(backend, stats, pool), "timestamp": now}


def _pools(rt: Runtime, who: Identity, volume_type: str | None) -> list[dict[str, Any]]:
    """The pools the scheduler may place volumes in (of backends that report, and whose
    service is enabled and not frozen), only those fit for `volume_type` when given."""
    specs: dict[str, str] | None = None
    if volume_type is not None:
        with rt.db.read() as s:
            specs = vtypes.get_type(s, volume_type, who).specs
    excluded = services.unschedulable(rt)
    now = iso(utcnow())
    assert now is not None
    result = []
    for backend in _backends(rt):
        if backend.name in excluded:
            continue
        stats = caps.fresh_stats(backend)
        if stats is None:  # Cinder's scheduler drops backends that stopped reporting
            continue
        for pool in stats.pools:
            capabilities = _capabilities(backend, stats, pool, now)
            if specs is not None and not caps.satisfies(capabilities, specs):
                continue
            name = backend.pool_host if len(stats.pools) == 1 else \
                f"{backend.service_host}#{pool.name}"
            result.append({"name": name, "capabilities": capabilities})
    return result


async def get_pools(request: Request) -> Response:
    who = wire.identity(request)
    admin_only(who, "scheduler_extension:scheduler_stats:get_pools")
    q = request.query_params
    detail = validate.query_bool(q.get("detail"), "detail")
    mv = wire.mv(request)
    allowed = {"detail", "name"} | ({"volume_type"} if mv >= 35 else set())
    unknown = sorted(set(q) - allowed)
    if unknown and mv >= 33:  # from 3.33 Cinder rejects filters pools do not have
        raise ApiError(400, f"Invalid filters {', '.join(unknown)} are found in query "
                            f"options.")
    volume_type = q.get("volume_type") if mv >= 35 else None
    pools = await _in_thread(_pools, wire.runtime(request), who, volume_type or None)
    if q.get("name"):
        pools = [p for p in pools if p["name"] == q["name"]]
    if not detail:
        pools = [{"name": p["name"]} for p in pools]
    return wire.ok({"pools": pools})


routes = [
    Route("/v3/os-availability-zone", availability_zones, methods=["GET"]),
    Route("/v3/extensions", extensions, methods=["GET"]),
    Route("/v3/scheduler-stats/get_pools", get_pools, methods=["GET"]),
]
