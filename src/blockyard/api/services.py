"""Cinder's service administration over HTTP: ``os-services`` (list, enable, disable with a
reason, freeze, thaw, failover), ``os-hosts`` and ``capabilities/{host}``.

Services are rows with a heartbeat (see `blockyard.service.services`); backend capabilities
come live from each driver's report. Every endpoint here is admin-only, as Cinder's policies
have it.
"""

from __future__ import annotations

import copy
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from blockyard.api import wire
from blockyard.api.routes import route
from blockyard.api.views import iso
from blockyard.errors import NotFound
from blockyard.rest.errors import ApiError
from blockyard.rest.schema import check as check_body
from blockyard.rest.schema import cinder_host, nullable_string
from blockyard.service import capabilities as caps
from blockyard.service import services as svc
from blockyard.service.identity import enforce
from blockyard.service.runtime import Runtime

#: Cinder's microversions for the fields and parameters gated here
CLUSTER_SUPPORT = 7
REPLICATION_CLUSTER = 26
BACKEND_STATE_REPORT = 49

# ---------------------------------------------------------------------------- body schemas
# (cinder/api/schemas/services.py)

ENABLE_AND_DISABLE: dict[str, Any] = {
    "type": "object",
    "properties": {
        "binary": {"type": "string", "minLength": 1, "maxLength": 255},
        "host": cinder_host,
        "cluster": nullable_string,
        "service": {"type": "string", "minLength": 1, "maxLength": 255},
    },
    "anyOf": [{"required": ["binary"]}, {"required": ["service"]}],
    "additionalProperties": False,
}

DISABLE_LOG_REASON: dict[str, Any] = copy.deepcopy(ENABLE_AND_DISABLE)
DISABLE_LOG_REASON["properties"]["disabled_reason"] = {
    "type": "string", "minLength": 1, "maxLength": 255}

FREEZE_AND_THAW: dict[str, Any] = {
    "type": "object",
    "properties": {"cluster": nullable_string, "host": cinder_host},
    "additionalProperties": False,
}

FAILOVER_HOST: dict[str, Any] = {
    "type": "object",
    "properties": {"host": cinder_host, "backend_id": nullable_string,
                   "cluster": nullable_string},
    "additionalProperties": False,
}

UPDATE_POLICY = "volume_extension:services:update"


# ---------------------------------------------------------------------------- os-services


def _render(s: svc.ServiceView, mv: int, backend_state: str | None) -> dict[str, Any]:
    """One service in Cinder's field order, with the fields each microversion adds."""
    body: dict[str, Any] = {"binary": s.binary, "host": s.host, "zone": s.zone,
                            "status": "disabled" if s.disabled else "enabled",
                            "state": "up" if s.is_up else "down",
                            "updated_at": iso(s.updated_at)}
    if s.binary == svc.VOLUME and mv >= BACKEND_STATE_REPORT:
        body["backend_state"] = backend_state
    if mv >= CLUSTER_SUPPORT:
        body["cluster"] = None
    body["disabled_reason"] = s.disabled_reason
    if s.binary == svc.VOLUME:
        body.update({"replication_status": s.replication_status,
                     "active_backend_id": s.active_backend_id, "frozen": s.frozen})
    return body


def _services(rt: Runtime, mv: int, host: str | None, binary: str | None) -> list[dict[str, Any]]:
    found = svc.listing(rt, host, binary)
    result = []
    for s in found:
        state = None
        if s.binary == svc.VOLUME and mv >= BACKEND_STATE_REPORT:
            backend = rt.backends.get(s.backend or "")
            up = backend is not None and caps.fresh_stats(backend) is not None
            state = "up" if up else "down"
        result.append(_render(s, mv, state))
    return result


async def index(request: Request) -> Response:
    q = request.query_params
    binary = q.get("binary") or q.get("service")  # `service` is Cinder's deprecated alias
    found = await wire.in_thread(_services, wire.runtime(request), wire.mv(request),
                                 q.get("host"), binary)
    return wire.ok({"services": found})


def _host_of(body: dict[str, Any]) -> str:
    """Cinder's get_cluster_host without clusters: the host is required."""
    host = body.get("host")
    if not host:
        raise ApiError(400, "Invalid input received: Host field is missing.")
    return str(host)


def _replication_host(request: Request, body: dict[str, Any]) -> str:
    """The host of a freeze/thaw/failover: from 3.26 one and only one of cluster and host;
    blockyard has no clusters, so a cluster is never found."""
    if wire.mv(request) < REPLICATION_CLUSTER:
        return _host_of(body)
    cluster, host = body.get("cluster"), body.get("host")
    if bool(cluster) == bool(host):
        raise ApiError(400, "Invalid input received: One and only one of cluster and host "
                            "must be set.")
    if cluster:
        raise ApiError(400, f"Invalid input received: No service found with "
                            f"cluster={cluster}")
    return str(host)


async def _enable_or_disable(request: Request, rt: Runtime, body: dict[str, Any],
                             disabled: bool, reason: str | None = None) -> dict[str, Any]:
    host = _host_of(body)
    service, binary = body.get("service", ""), body.get("binary", "")
    await wire.in_thread(svc.set_disabled, rt, host, binary or service, disabled, reason)
    return {"host": host, "service": service, "binary": binary,
            "status": "disabled" if disabled else "enabled", "disabled": disabled}


#: the replication host actions' own rules
HOST_RULES = {"freeze": "volume:freeze_host", "thaw": "volume:thaw_host",
              "failover_host": "volume:failover_host", "failover": "volume:failover_host"}


async def update(request: Request) -> Response:
    """PUT os-services/{action}: enable, disable, disable-log-reason, freeze, thaw,
    failover_host (failover is refused: no backend here replicates)."""
    action = request.path_params["action"]
    if action not in ("enable", "disable", "disable-log-reason", "freeze", "thaw",
                      "failover_host", "failover"):
        raise ApiError(404, "Unknown action")
    if action in HOST_RULES:  # Cinder checks these on top of the route's services:update
        enforce(wire.identity(request), HOST_RULES[action])
    rt, body = wire.runtime(request), await wire.json_body(request)
    if action == "enable":
        check_body(body, ENABLE_AND_DISABLE)
        result = await _enable_or_disable(request, rt, body, False)
        # Tempest's schema for this answer names the reason too (always null once enabled)
        return wire.ok({**result, "disabled_reason": None})
    if action == "disable":
        check_body(body, ENABLE_AND_DISABLE)
        return wire.ok(await _enable_or_disable(request, rt, body, True))
    if action == "disable-log-reason":
        check_body(body, DISABLE_LOG_REASON)
        reason = body.get("disabled_reason")
        if reason is not None and not reason.strip():
            raise ApiError(400, "Invalid input received: disabled_reason has a minimum "
                                "character requirement of 1.")
        result = await _enable_or_disable(request, rt, body, True, reason)
        return wire.ok({**result, "disabled_reason": reason})
    if action in ("freeze", "thaw"):
        check_body(body, FREEZE_AND_THAW)
        host = _replication_host(request, body)
        await wire.in_thread(svc.set_frozen, rt, host, action == "freeze")
        return Response(status_code=200)
    check_body(body, FAILOVER_HOST)
    host = _replication_host(request, body)
    views = await wire.in_thread(svc.listing, rt, host, svc.VOLUME)
    if not views:
        raise ApiError(400, f"Invalid input received: No service found with host={host}")
    raise ApiError(400, f"Invalid input received: No service could be changed: "
                        f"replication_status in {[v.host for v in views]} must be "
                        f"['enabled', 'failed-over'] and must be up to failover.")


# ---------------------------------------------------------------------------- os-hosts

HOSTS_POLICY = "volume_extension:hosts"


def _hosts(rt: Runtime, zone: str | None) -> list[dict[str, Any]]:
    result = []
    for s in svc.listing(rt):
        if s.disabled or (zone and s.zone != zone):
            continue
        result.append({"host_name": s.host, "service": s.binary, "zone": s.zone,
                       "service-status": "available" if s.is_up else "unavailable",
                       "service-state": "enabled", "last-update": iso(s.updated_at)})
    return result


async def hosts_index(request: Request) -> Response:
    found = await wire.in_thread(_hosts, wire.runtime(request),
                                 request.query_params.get("zone"))
    return wire.ok({"hosts": found})


def _usage(count: int, gb: int, snapshots: int, snapshot_gb: int, host: str,
           project: str) -> dict[str, Any]:
    return {"resource": {"host": host, "project": project, "volume_count": str(count),
                         "total_volume_gb": str(gb), "snapshot_count": str(snapshots),
                         "total_snapshot_gb": str(snapshot_gb)}}


def _host_usage(rt: Runtime, host: str) -> list[dict[str, Any]]:
    """What the volume service at `host` holds: a total, then one entry per project."""
    service = next((s for s in svc.listing(rt, host, svc.VOLUME) if not s.disabled), None)
    if service is None or service.backend is None:
        raise NotFound("Service", svc.VOLUME,
                       f"Service {svc.VOLUME} could not be found on host {host}.")
    per_volume, per_snapshot = svc.usage_by_project(rt, service.backend)
    result = [_usage(sum(c for c, _ in per_volume.values()),
                     sum(g for _, g in per_volume.values()),
                     sum(c for c, _ in per_snapshot.values()),
                     sum(g for _, g in per_snapshot.values()), host, "(total)")]
    for project in sorted(per_volume):
        count, gb = per_volume[project]
        snapshots, snapshot_gb = per_snapshot.get(project, (0, 0))
        result.append(_usage(count, gb, snapshots, snapshot_gb, host, project))
    return result


async def hosts_show(request: Request) -> Response:
    found = await wire.in_thread(_host_usage, wire.runtime(request),
                                 request.path_params["host"])
    return wire.ok({"host": found})


# ---------------------------------------------------------------------------- capabilities


def _capabilities(rt: Runtime, host: str) -> dict[str, Any]:
    found = svc.listing(rt, host, svc.VOLUME)
    backend = rt.backends.get(found[0].backend or "") if found else None
    if backend is None:
        raise NotFound("Service", host, f"Can't find service: {host}")
    # a driver that cannot report raises BackendError: a 400 naming the backend
    return caps.backend_capabilities(backend, backend.stats(fresh=True))


async def capabilities(request: Request) -> Response:
    return wire.ok(await wire.in_thread(_capabilities, wire.runtime(request),
                                        request.path_params["host"]))


routes = [
    route("/v3/os-services", index, "GET", "volume_extension:services:index"),
    route("/v3/os-services/{action}", update, "PUT", "volume_extension:services:update"),
    route("/v3/os-hosts", hosts_index, "GET", "volume_extension:hosts"),
    route("/v3/os-hosts/{host}", hosts_show, "GET", "volume_extension:hosts"),
    route("/v3/capabilities/{host}", capabilities, "GET", "volume_extension:capabilities"),
]
