"""Nova's deprecated proxies of the volume API: ``os-volumes`` and ``os-snapshots``.

Each call goes on to the volume service with the caller's own identity (`Caller.of`), so
the volume service decides what the caller sees and may do, exactly as when they call it
directly; the agent only reshapes the bodies into Nova's (camelCase, ``displayName``...).
Errors of the volume API come back as Nova's faults with the volume service's message
(404 → ``itemNotFound``...), a quota refusal as 403 as in Nova, and the volume service
being down as 503.

As in Nova, the proxies exist up to microversion 2.35 and are 404 from 2.36 on; bodies are
checked with Nova's schemas before anything is sent, and ids that are not UUIDs are not
found without asking.
"""

from __future__ import annotations

import uuid
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from blockyard.rest import schema
from blockyard.rest.auth import identity as identity_of
from blockyard.rest.errors import ApiError

from . import policies as P
from .routing import MAX_PROXY_VERSION, agent_of, json_of, page, route
from .volume_api import Caller, VolumeApiError

# ---------------------------------------------------------------------- Nova's schemas
VOLUME_CREATE = schema.body("volume", {
    "volume_type": {"type": "string"},
    "metadata": {"type": "object"},
    "snapshot_id": {"type": "string"},
    "size": {"type": ["integer", "string"], "pattern": "^[0-9]+$", "minimum": 1,
             "maximum": schema.DB_MAX_INT},
    "availability_zone": {"type": "string"},
    "display_name": {"type": "string"},
    "display_description": {"type": "string"},
}, required=("size",))
SNAPSHOT_CREATE = schema.body("snapshot", {
    "volume_id": {"type": "string"},
    "force": schema.boolean,
    "display_name": {"type": "string"},
    "display_description": {"type": "string"},
}, required=("volume_id",))

_TRUE = {"1", "t", "true", "on", "y", "yes"}


# ---------------------------------------------------------------------- views
def volume_view(vol: dict[str, Any]) -> dict[str, Any]:
    """Nova's view of a volume API volume (nova.api.openstack.compute.volumes)."""
    attachments: list[dict[str, Any]] = [{}]
    found = vol.get("attachments") or []
    if found:
        first = found[0]
        attachment = {"id": vol["id"], "volumeId": vol["id"], "serverId": first.get("server_id")}
        if first.get("device"):
            attachment["device"] = first["device"]
        attachments = [attachment]
    return {
        "id": vol["id"], "status": vol.get("status"), "size": vol.get("size"),
        "availabilityZone": vol.get("availability_zone"), "createdAt": vol.get("created_at"),
        "attachments": attachments, "displayName": vol.get("name"),
        "displayDescription": vol.get("description"), "volumeType": vol.get("volume_type"),
        "snapshotId": vol.get("snapshot_id"), "metadata": vol.get("metadata") or {},
    }


def snapshot_view(snap: dict[str, Any]) -> dict[str, Any]:
    """Nova's view of a snapshot: its size is the volume's size, as the volume API says."""
    return {"id": snap["id"], "volumeId": snap.get("volume_id"), "status": snap.get("status"),
            "size": snap.get("size"), "createdAt": snap.get("created_at"),
            "displayName": snap.get("name"), "displayDescription": snap.get("description")}


# ---------------------------------------------------------------------- helpers
def _caller(request: Request) -> Caller:
    return Caller.of(identity_of(request))


def _known(ident: str, kind: str) -> str:
    """`ident` if it is a UUID; else nothing can have it: 404 without asking."""
    try:
        uuid.UUID(ident)
    except ValueError:
        raise ApiError(404, f"{kind} {ident} could not be found.") from None
    return ident


def _over_quota(exc: VolumeApiError) -> None:
    """Nova answers the volume service's quota refusal (413) with 403."""
    if exc.status == 413:
        raise VolumeApiError(403, exc.message, exc.call) from exc


# ---------------------------------------------------------------------- os-volumes
async def list_volumes(request: Request) -> Response:
    vols = await agent_of(request).volumes.list_volumes(_caller(request))
    shown = page(request, vols, lambda v: str(v["id"]))
    return JSONResponse({"volumes": [volume_view(v) for v in shown]})


async def show_volume(request: Request) -> Response:
    volume_id = _known(request.path_params["volume_id"], "Volume")
    vol = await agent_of(request).volumes.get_volume(_caller(request), volume_id)
    return JSONResponse({"volume": volume_view(vol)})


async def create_volume(request: Request) -> Response:
    raw = await json_of(request)
    schema.check(raw, VOLUME_CREATE)
    body: dict[str, Any] = raw["volume"]
    api, caller = agent_of(request).volumes, _caller(request)
    wanted: dict[str, Any] = {"size": int(body["size"])}
    if body.get("snapshot_id") is not None:  # Nova looks the snapshot up first: 404
        snapshot_id = _known(body["snapshot_id"], "Snapshot")
        await api.get_snapshot(caller, snapshot_id)
        wanted["snapshot_id"] = snapshot_id
    for ours, theirs in (("display_name", "name"), ("display_description", "description"),
                         ("volume_type", "volume_type"), ("metadata", "metadata"),
                         ("availability_zone", "availability_zone")):
        if body.get(ours) is not None:
            wanted[theirs] = body[ours]
    try:
        vol = await api.create_volume(caller, wanted)
    except VolumeApiError as exc:
        _over_quota(exc)
        raise
    return JSONResponse({"volume": volume_view(vol)},
                        headers={"Location": f"{str(request.url).rstrip('/')}/{vol['id']}"})


async def delete_volume(request: Request) -> Response:
    volume_id = _known(request.path_params["volume_id"], "Volume")
    await agent_of(request).volumes.delete_volume(_caller(request), volume_id)
    return Response(status_code=202)


# ---------------------------------------------------------------------- os-snapshots
async def list_snapshots(request: Request) -> Response:
    snaps = await agent_of(request).volumes.list_snapshots(_caller(request))
    shown = page(request, snaps, lambda s: str(s["id"]))
    return JSONResponse({"snapshots": [snapshot_view(s) for s in shown]})


async def show_snapshot(request: Request) -> Response:
    snapshot_id = _known(request.path_params["snapshot_id"], "Snapshot")
    snap = await agent_of(request).volumes.get_snapshot(_caller(request), snapshot_id)
    return JSONResponse({"snapshot": snapshot_view(snap)})


async def create_snapshot(request: Request) -> Response:
    raw = await json_of(request)
    schema.check(raw, SNAPSHOT_CREATE)
    body: dict[str, Any] = raw["snapshot"]
    wanted: dict[str, Any] = {"volume_id": _known(body["volume_id"], "Volume"),
                              "force": str(body.get("force", False)).lower() in _TRUE}
    for ours, theirs in (("display_name", "name"), ("display_description", "description")):
        if body.get(ours) is not None:
            wanted[theirs] = body[ours]
    try:
        snap = await agent_of(request).volumes.create_snapshot(_caller(request), wanted)
    except VolumeApiError as exc:
        _over_quota(exc)
        raise
    return JSONResponse({"snapshot": snapshot_view(snap)})


async def delete_snapshot(request: Request) -> Response:
    snapshot_id = _known(request.path_params["snapshot_id"], "Snapshot")
    await agent_of(request).volumes.delete_snapshot(_caller(request), snapshot_id)
    return Response(status_code=202)


V = MAX_PROXY_VERSION
ROUTES: list[Route] = [
    *route("/v2.1/os-volumes", list_volumes, "GET", P.VOLUMES_LIST, slash=True, max_version=V),
    *route("/v2.1/os-volumes", create_volume, "POST", P.VOLUMES_CREATE, slash=True,
           max_version=V),
    *route("/v2.1/os-volumes/detail", list_volumes, "GET", P.VOLUMES_DETAIL, slash=True,
           max_version=V),
    *route("/v2.1/os-volumes/{volume_id}", show_volume, "GET", P.VOLUMES_SHOW, max_version=V),
    *route("/v2.1/os-volumes/{volume_id}", delete_volume, "DELETE", P.VOLUMES_DELETE,
           max_version=V),
    *route("/v2.1/os-snapshots", list_snapshots, "GET", P.SNAPSHOTS_LIST, slash=True,
           max_version=V),
    *route("/v2.1/os-snapshots", create_snapshot, "POST", P.SNAPSHOTS_CREATE, slash=True,
           max_version=V),
    *route("/v2.1/os-snapshots/detail", list_snapshots, "GET", P.SNAPSHOTS_DETAIL,
           slash=True, max_version=V),
    *route("/v2.1/os-snapshots/{snapshot_id}", show_snapshot, "GET", P.SNAPSHOTS_SHOW,
           max_version=V),
    *route("/v2.1/os-snapshots/{snapshot_id}", delete_snapshot, "DELETE", P.SNAPSHOTS_DELETE,
           max_version=V),
]
