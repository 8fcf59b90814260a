"""``/v3/scheduler-stats/get_pools``: the pools the scheduler may place volumes in.

Pools come live from each driver's ``get_stats`` (cached briefly by `Backend.stats`); their
capabilities are the ones the scheduler matches volume types against
(`blockyard.service.capabilities`). Services, hosts and one backend's capabilities are in
`blockyard.api.services`.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from blockyard.api import validate, wire
from blockyard.api.routes import route
from blockyard.api.views import iso
from blockyard.db.models import utcnow
from blockyard.rest.errors import ApiError
from blockyard.service import capabilities as caps
from blockyard.service import services
from blockyard.service import types as vtypes
from blockyard.service.identity import Identity
from blockyard.service.runtime import Runtime


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
    for name in sorted(rt.backends):
        backend = rt.backends[name]
        if name in excluded:
            continue
        stats = caps.fresh_stats(backend)
        if stats is None:  # Cinder's scheduler drops backends that stopped reporting
            continue
        for pool in stats.pools:
            capabilities = {**caps.pool_capabilities(backend, stats, pool), "timestamp": now}
            if specs is not None and not caps.satisfies(capabilities, specs):
                continue
            pool_host = backend.pool_host if len(stats.pools) == 1 else \
                f"{backend.service_host}#{pool.name}"
            result.append({"name": pool_host, "capabilities": capabilities})
    return result


async def get_pools(request: Request) -> Response:
    who = wire.identity(request)
    q = request.query_params
    detail = validate.query_bool(q.get("detail"), "detail")
    mv = wire.mv(request)
    allowed = {"detail", "name"} | ({"volume_type"} if mv >= 35 else set())
    unknown = sorted(set(q) - allowed)
    if unknown and mv >= 33:  # from 3.33 Cinder rejects filters pools do not have
        raise ApiError(400, f"Invalid filters {', '.join(unknown)} are found in query "
                            f"options.")
    volume_type = q.get("volume_type") if mv >= 35 else None
    pools = await wire.in_thread(_pools, wire.runtime(request), who, volume_type or None)
    if q.get("name"):
        pools = [p for p in pools if p["name"] == q["name"]]
    if not detail:
        pools = [{"name": p["name"]} for p in pools]
    return wire.ok({"pools": pools})


routes = [
    route("/v3/scheduler-stats/get_pools", get_pools, "GET",
          "scheduler_extension:scheduler_stats:get_pools"),
]
