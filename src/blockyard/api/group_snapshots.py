"""/v3/group_snapshots (3.14): snapshots of whole groups, reset-status (3.19)."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from blockyard import states
from blockyard.api import listing, wire
from blockyard.api.group_types import require_mv
from blockyard.api.groups import reset_status_of
from blockyard.api.routes import action_route, route
from blockyard.api.views import iso
from blockyard.db.models import GroupSnapshot
from blockyard.rest import schema
from blockyard.rest.errors import ApiError
from blockyard.service import group_snapshots
from blockyard.service.identity import allowed
from blockyard.service.listing import ListParams

#: microversions of the group snapshots API
MV_GROUP_SNAPSHOTS = 14
MV_RESET = 19
MV_PAGINATION = 29
MV_PROJECT_ID = 58

# request bodies, as cinder/api/schemas/group_snapshots.py declares them
CREATE = schema.body("group_snapshot", {
    "group_id": schema.uuid,
    "name": schema.name_allow_zero_min_length,
    "description": schema.description,
}, required=("group_id",))
RESET_STATUS = schema.body("reset_status", {"status": {"type": "string"}}, required=("status",))


def summary(gs: GroupSnapshot) -> dict[str, Any]:
    return {"id": gs.id, "name": gs.name, "group_type_id": gs.group_type_id}


def detail(request: Request, gs: GroupSnapshot) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": gs.id,
        "group_id": gs.group_id,
        "group_type_id": gs.group_type_id,
        "status": gs.status,
        "created_at": iso(gs.created_at),
        "name": gs.name,
        "description": gs.description,
    }
    if wire.mv(request) >= MV_PROJECT_ID and allowed(
            wire.identity(request), "group:group_snapshot_project_attribute",
            {"project_id": gs.project_id}):
        body["project_id"] = gs.project_id
    return body


async def create(request: Request) -> Response:
    require_mv(request, MV_GROUP_SNAPSHOTS)
    body = await wire.json_body(request)
    schema.check(body, CREATE)
    spec = body["group_snapshot"]
    gs = await wire.call(request, group_snapshots.create, spec["group_id"],
                         name=spec.get("name"), description=spec.get("description"))
    return wire.ok({"group_snapshot": summary(gs)}, 202)


async def _list(request: Request, is_detail: bool) -> Response:
    require_mv(request, MV_GROUP_SNAPSHOTS)
    params = listing.parse_params(request)
    if wire.mv(request) < MV_PAGINATION:  # paging, sorting and filters came with 3.29
        params = ListParams()
    page = await wire.call(request, group_snapshots.list_group_snapshots, params,
                           all_projects=listing.all_tenants(request),
                           like_allowed=listing.like_allowed(request))
    items = [detail(request, gs) if is_detail else {"id": gs.id, "name": gs.name}
             for gs in page.rows]
    return wire.ok(listing.page_body(request, "group_snapshots", items, page,
                                     links_key="group_snapshot_links"))


list_summary, list_detail = listing.summary_and_detail(_list)


async def show(request: Request) -> Response:
    require_mv(request, MV_GROUP_SNAPSHOTS)
    gs = await wire.call(request, group_snapshots.load, request.path_params["id"])
    return wire.ok({"group_snapshot": detail(request, gs)})


async def delete(request: Request) -> Response:
    require_mv(request, MV_GROUP_SNAPSHOTS)
    await wire.call(request, group_snapshots.delete_group_snapshot, request.path_params["id"])
    return wire.accepted()


#: action name → its Cinder rule (group_snapshot_actions policies)
ACTION_RULES = {"reset_status": "group:reset_group_snapshot_status"}


async def action(request: Request) -> Response:
    require_mv(request, MV_GROUP_SNAPSHOTS)
    body = await wire.json_body(request)
    if len(body) != 1 or "reset_status" not in body:
        name = next(iter(body), "")
        raise ApiError(400, f"There is no such action: {name}. Verify the request body and "
                            f"Content-Type header and try again.")
    require_mv(request, MV_RESET)
    schema.check(body, RESET_STATUS)
    status = reset_status_of(body["reset_status"]["status"], "Group snapshot",
                             states.GROUP_SNAPSHOT_RESET_STATUSES)
    await wire.call(request, group_snapshots.reset_status, request.path_params["id"], status)
    return wire.accepted()


routes = [
    route("/v3/group_snapshots", list_summary, "GET", "group:get_all_group_snapshots"),
    route("/v3/group_snapshots", create, "POST", "group:create_group_snapshot"),
    route("/v3/group_snapshots/detail", list_detail, "GET", "group:get_all_group_snapshots"),
    route("/v3/group_snapshots/{id}", show, "GET", "group:get_group_snapshot"),
    route("/v3/group_snapshots/{id}", delete, "DELETE", "group:delete_group_snapshot"),
    action_route("/v3/group_snapshots/{id}/action", action, ACTION_RULES),
]
