"""/v3/snapshots: create, list, show, update, delete, metadata and actions."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from blockyard.api import listing, metadata, validate, wire
from blockyard.api.routes import action_route, route
from blockyard.api.views import iso
from blockyard.db.models import Snapshot
from blockyard.errors import NotFound
from blockyard.rest import schema
from blockyard.rest.errors import ApiError
from blockyard.service import snapshots
from blockyard.service.identity import allowed

# Cinder's snapshots.py schemas; unknown keys are refused from 3.53 on, as for volumes
_TEXTS = {"name": schema.name_allow_zero_min_length,
          "display_name": schema.name_allow_zero_min_length,
          "description": schema.description, "display_description": schema.description}
CREATE = schema.body("snapshot", {
    **_TEXTS,
    "volume_id": schema.uuid_allow_null,
    "force": schema.boolean,
    "metadata": schema.metadata_allows_null,
}, required=("volume_id",), strict=False)
CREATE_V353 = schema.body("snapshot", CREATE["properties"]["snapshot"]["properties"],
                          required=("volume_id",))
UPDATE = schema.body("snapshot", _TEXTS, strict=False)
UPDATE_V353 = schema.body("snapshot", _TEXTS)

#: Cinder's snapshot_actions.update_snapshot_status; `progress` is its 'progress' format (an
#: integer percentage 0-100, or empty), checked by schema.py's format of that name
UPDATE_STATUS_SCHEMA = schema.body("os-update_snapshot_status", {
    "status": {"type": "string"},
    "progress": {"type": "string", "format": "progress"},
}, required=("status",))


def snapshot_view(request: Request, snap: Snapshot, *, extended: bool = True) -> dict[str, Any]:
    mv = wire.mv(request)
    body: dict[str, Any] = {
        "id": snap.id,
        "created_at": iso(snap.created_at),
        "updated_at": iso(snap.updated_at),
        "name": snap.name,
        "description": snap.description,
        "volume_id": snap.volume_id,
        "status": snap.status,
        "size": snap.size,
        "metadata": snap.meta,
    }
    if mv >= 14:
        body["group_snapshot_id"] = snap.group_snapshot_id
    if mv >= 41:
        body["user_id"] = snap.user_id
    if mv >= 65:
        body["consumes_quota"] = True
    if extended and allowed(wire.identity(request),
                            "volume_extension:extended_snapshot_attributes",
                            {"project_id": snap.project_id}):
        body["os-extended-snapshot-attributes:project_id"] = snap.project_id
        body["os-extended-snapshot-attributes:progress"] = snap.progress
    return body


#: Cinder's words for ``force: false`` from 3.66 on
SNAPSHOT_IN_USE_FLAG_MSG = (
    "Since microversion 3.66 the 'force' flag is invalid for this request.  For backward "
    "compatability, however, when the 'force' flag is passed with a value evaluating to "
    "True, it is silently ignored.")


def _force(flag: Any, mv: int) -> bool:
    """Whether an in-use volume may be snapshotted: with ``force`` before 3.66, always from
    3.66 (SNAPSHOT_IN_USE), where ``force: false`` is a 400 and a true one is ignored."""
    force = flag is not None and validate.boolean(flag, "force")
    if mv >= 66:
        if flag is not None and not force:
            raise ApiError(400, SNAPSHOT_IN_USE_FLAG_MSG)
        return True
    return force


async def create(request: Request) -> Response:
    body = await wire.json_body(request)
    schema.check(body, CREATE_V353 if wire.mv(request) >= 53 else CREATE)
    spec: dict[str, Any] = body["snapshot"]
    volume_id = spec["volume_id"]
    if volume_id is None:  # Cinder's schema allows null, then its lookup finds no volume
        raise NotFound("Volume", "None")
    force = _force(spec.get("force"), wire.mv(request))
    name = spec.get("name", spec.get("display_name"))
    description = spec.get("description", spec.get("display_description"))
    meta = spec.get("metadata") or {}
    snap = await wire.call(
        request, snapshots.create, volume_id,
        name=name, description=description, metadata=meta, force=force)
    return wire.ok({"snapshot": snapshot_view(request, snap, extended=False)}, 202)


async def _list(request: Request, detail: bool) -> Response:
    params = listing.parse_params(request)
    page = await wire.call(
        request, snapshots.list_snapshots, params,
        all_projects=listing.all_tenants(request), like_allowed=listing.like_allowed(request))
    return wire.ok(listing.page_body(
        request, "snapshots", [snapshot_view(request, s, extended=detail) for s in page.rows],
        page))


list_summary, list_detail = listing.summary_and_detail(_list)


async def show(request: Request) -> Response:
    snap = await wire.call(request, snapshots.load, request.path_params["id"])
    return wire.ok({"snapshot": snapshot_view(request, snap)})


async def update(request: Request) -> Response:
    body = await wire.json_body(request)
    schema.check(body, UPDATE_V353 if wire.mv(request) >= 53 else UPDATE)
    spec: dict[str, Any] = body["snapshot"]
    values: dict[str, Any] = {}
    if "name" in spec or "display_name" in spec:
        values["name"] = spec.get("name", spec.get("display_name"))
    if "description" in spec or "display_description" in spec:
        values["description"] = spec.get("description", spec.get("display_description"))
    if not values:
        raise ApiError(400, "Invalid input received: No updatable fields were given.")
    snap = await wire.call(request, snapshots.update_fields, request.path_params["id"], values)
    return wire.ok({"snapshot": snapshot_view(request, snap, extended=False)})


async def delete(request: Request) -> Response:
    await wire.call(request, snapshots.delete_snapshot, request.path_params["id"])
    return wire.accepted()


# Cinder's snapshot action schemas (admin_actions.py)
RESET_STATUS = schema.body("os-reset_status", {
    "status": {"type": "string", "format": "snapshot_status"}}, required=("status",))
FORCE_DELETE = {"type": "object", "properties": {"os-force_delete": schema.ANY},
                "required": ["os-force_delete"], "additionalProperties": False}


#: action name → its Cinder rule (snapshot_actions policies)
ACTION_RULES = {
    "os-reset_status": "volume_extension:snapshot_admin_actions:reset_status",
    "os-update_snapshot_status": "snapshot_extension:snapshot_actions:update_snapshot_status",
    "os-force_delete": "volume_extension:snapshot_admin_actions:force_delete",
}


async def action(request: Request) -> Response:
    body = await wire.json_body(request)
    if len(body) != 1:
        raise ApiError(400, "Malformed request body: exactly one action is expected.")
    name, value = next(iter(body.items()))
    snapshot_id = request.path_params["id"]
    if name == "os-reset_status":
        schema.check(body, RESET_STATUS)
        status = value["status"].lower()
        await wire.call(request, snapshots.reset_status, snapshot_id, status)
        return wire.accepted()
    if name == "os-update_snapshot_status":
        schema.check(body, UPDATE_STATUS_SCHEMA)
        await wire.call(request, snapshots.update_status, snapshot_id, value["status"],
                        value.get("progress"))
        return wire.accepted()
    if name == "os-force_delete":
        schema.check(body, FORCE_DELETE)
        await wire.call(request, snapshots.delete_snapshot, snapshot_id, force=True)
        return wire.accepted()
    raise ApiError(400, f"There is no such action: {name}. Verify the request body and "
                        f"Content-Type header and try again.")


routes = [
    route("/v3/snapshots", list_summary, "GET", "volume:get_all_snapshots"),
    route("/v3/snapshots", create, "POST", "volume:create_snapshot"),
    route("/v3/snapshots/detail", list_detail, "GET", "volume:get_all_snapshots"),
    route("/v3/snapshots/{id}", show, "GET", "volume:get_snapshot"),
    route("/v3/snapshots/{id}", update, "PUT", "volume:update_snapshot"),
    route("/v3/snapshots/{id}", delete, "DELETE", "volume:delete_snapshot"),
    action_route("/v3/snapshots/{id}/action", action, ACTION_RULES),
    *metadata.routes("snapshots", snapshots.METADATA, metadata.SNAPSHOT_RULES),
]
