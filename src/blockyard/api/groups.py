"""/v3/groups (3.13): generic volume groups, create-from-src (3.14), reset-status (3.20)."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from blockyard import states
from blockyard.api import listing, wire
from blockyard.api.group_types import require_mv
from blockyard.api.routes import action_route, route
from blockyard.api.validate import boolean, query_bool
from blockyard.api.views import iso
from blockyard.db.models import Group
from blockyard.rest import schema
from blockyard.rest.errors import ApiError
from blockyard.service import group_clones, groups
from blockyard.service.identity import allowed

#: microversions of the groups API (Cinder's GROUP_VOLUME, GROUP_SNAPSHOTS, ...)
MV_GROUPS = 13
MV_FROM_SOURCE = 14
MV_RESET = 20
MV_VOLUME_LIST = 25
MV_REPLICATION = 38
MV_PROJECT_ID = 58

# request bodies, as cinder/api/schemas/groups.py declares them
CREATE = schema.body("group", {
    "description": schema.description,
    "group_type": {"type": "string", "minLength": 1, "maxLength": 255, "pattern": r"\S"},
    "name": schema.name_allow_zero_min_length,
    "volume_types": {"type": "array", "minItems": 1, "uniqueItems": True,
                     "items": {"type": "string", "maxLength": 255}},
    "availability_zone": schema.availability_zone,
}, required=("group_type", "volume_types"))
CREATE_FROM_SOURCE = {
    "type": "object",
    "properties": {"create-from-src": {
        "type": "object",
        "properties": {
            "description": schema.description,
            "name": schema.name_allow_zero_min_length,
            "source_group_id": schema.uuid,
            "group_snapshot_id": schema.uuid,
        },
        "oneOf": [{"required": ["group_snapshot_id"]}, {"required": ["source_group_id"]}],
        "additionalProperties": False,
    }},
    "required": ["create-from-src"],
    "additionalProperties": False,
}
UPDATE = {
    "type": "object",
    "properties": {"group": {
        "type": "object",
        "properties": {
            "description": schema.description,
            "name": schema.name_allow_zero_min_length,
            "add_volumes": schema.description,
            "remove_volumes": schema.description,
        },
        "anyOf": [{"required": ["name"]}, {"required": ["description"]},
                  {"required": ["add_volumes"]}, {"required": ["remove_volumes"]}],
        "additionalProperties": False,
    }},
    "required": ["group"],
    "additionalProperties": False,
}
DELETE = schema.body("delete", {"delete-volumes": schema.boolean})
RESET_STATUS = schema.body("reset_status", {"status": {"type": "string"}}, required=("status",))


def reset_status_of(value: str, what: str, allowed: frozenset[str]) -> str:
    """Cinder's group_status / group_snapshot_status formats: a known status, any case."""
    if not value.strip():
        raise ApiError(400, "The 'status' can not be empty.")
    status = value.lower()
    if status not in allowed:
        raise ApiError(400, f"{what} status: {value} is invalid, valid statuses are: "
                            f"{', '.join(sorted(allowed))}.")
    return status


def _stripped(value: str | None) -> str | None:
    return value.strip() if value else value


def _id_list(value: str | None) -> list[str]:
    """``"uuid1,uuid2,..."`` as Cinder splits it."""
    if not value:
        return []
    return [part for part in value.strip(",").split(",") if part]


# ---------------------------------------------------------------------------- rendering


def summary(g: Group) -> dict[str, Any]:
    return {"id": g.id, "name": g.name}


def detail(request: Request, g: Group, volumes: list[str] | None) -> dict[str, Any]:
    mv = wire.mv(request)
    body: dict[str, Any] = {
        "id": g.id,
        "status": g.status,
        "availability_zone": g.availability_zone,
        "created_at": iso(g.created_at),
        "name": g.name,
        "description": g.description,
        "group_type": g.group_type_id,
        "volume_types": g.volume_type_ids,
    }
    if mv >= MV_FROM_SOURCE:
        body["group_snapshot_id"] = g.group_snapshot_id
        body["source_group_id"] = g.source_group_id
    if mv >= MV_VOLUME_LIST and volumes is not None:
        body["volumes"] = volumes
    if mv >= MV_REPLICATION:
        body["replication_status"] = "disabled"
    if mv >= MV_PROJECT_ID and allowed(wire.identity(request), "group:group_project_attribute",
                                       {"project_id": g.project_id}):
        body["project_id"] = g.project_id
    return body


def _wants_volumes(request: Request) -> bool:
    raw = request.query_params.get("list_volume")
    return wire.mv(request) >= MV_VOLUME_LIST and raw is not None and query_bool(raw,
                                                                                "list_volume")


# ---------------------------------------------------------------------------- endpoints


async def create(request: Request) -> Response:
    require_mv(request, MV_GROUPS)
    body = await wire.json_body(request)
    schema.check(body, CREATE)
    spec = body["group"]
    g = await wire.call(request, groups.create, name=_stripped(spec.get("name")),
                        description=_stripped(spec.get("description")),
                        group_type=spec["group_type"], volume_types=spec["volume_types"],
                        availability_zone=spec.get("availability_zone"))
    return wire.ok({"group": summary(g)}, 202)


async def _list(request: Request, is_detail: bool) -> Response:
    require_mv(request, MV_GROUPS)
    params = listing.parse_params(request)
    params.filters.pop("list_volume", None)
    page = await wire.call(request, groups.list_groups, params,
                           all_projects=listing.all_tenants(request),
                           like_allowed=listing.like_allowed(request))
    if is_detail:
        members = await wire.call(request, groups.member_ids, [g.id for g in page.rows]) \
            if _wants_volumes(request) else {}
        items = [detail(request, g, members.get(g.id)) for g in page.rows]
    else:
        items = [summary(g) for g in page.rows]
    return wire.ok(listing.page_body(request, "groups", items, page, links_key="group_links"))


list_summary, list_detail = listing.summary_and_detail(_list)


async def show(request: Request) -> Response:
    require_mv(request, MV_GROUPS)
    g = await wire.call(request, groups.load, request.path_params["id"])
    volumes = (await wire.call(request, groups.member_ids, [g.id]))[g.id] \
        if _wants_volumes(request) else None
    return wire.ok({"group": detail(request, g, volumes)})


async def update(request: Request) -> Response:
    require_mv(request, MV_GROUPS)
    body = await wire.json_body(request)
    schema.check(body, UPDATE)
    spec = body["group"]
    await wire.call(request, groups.update_group, request.path_params["id"],
                    name=_stripped(spec.get("name")),
                    description=_stripped(spec.get("description")),
                    add=_id_list(spec.get("add_volumes")),
                    remove=_id_list(spec.get("remove_volumes")))
    return wire.accepted()


async def create_from_source(request: Request) -> Response:
    require_mv(request, MV_FROM_SOURCE)
    body = await wire.json_body(request)
    if "create-from-src" not in body:
        raise ApiError(400, f"There is no such action: {next(iter(body), '')}. Verify the "
                            f"request body and Content-Type header and try again.")
    schema.check(body, CREATE_FROM_SOURCE)
    spec = body["create-from-src"]
    g = await wire.call(request, group_clones.create_from_src, name=_stripped(spec.get("name")),
                        description=_stripped(spec.get("description")),
                        group_snapshot_id=spec.get("group_snapshot_id"),
                        source_group_id=spec.get("source_group_id"))
    return wire.ok({"group": summary(g)}, 202)


async def _delete(request: Request, body: dict[str, Any]) -> Response:
    schema.check(body, DELETE)
    delete_volumes = boolean(body["delete"].get("delete-volumes", False), "delete-volumes")
    await wire.call(request, groups.delete_group, request.path_params["id"],
                    delete_volumes=delete_volumes)
    return wire.accepted()


async def _reset_status(request: Request, body: dict[str, Any]) -> Response:
    require_mv(request, MV_RESET)
    schema.check(body, RESET_STATUS)
    status = reset_status_of(body["reset_status"]["status"], "Group",
                             states.GROUP_RESET_STATUSES)
    await wire.call(request, groups.reset_status, request.path_params["id"], status)
    return wire.accepted()


ACTIONS = {"delete": _delete, "reset_status": _reset_status}
#: action name → its Cinder rule (group_actions policies)
ACTION_RULES = {"delete": "group:delete", "reset_status": "group:reset_status"}


async def action(request: Request) -> Response:
    require_mv(request, MV_GROUPS)
    body = await wire.json_body(request)
    if len(body) != 1 or next(iter(body)) not in ACTIONS:
        name = next(iter(body), "")
        raise ApiError(400, f"There is no such action: {name}. Verify the request body and "
                            f"Content-Type header and try again.")
    return await ACTIONS[next(iter(body))](request, body)


routes = [
    route("/v3/groups", list_summary, "GET", "group:get_all"),
    route("/v3/groups", create, "POST", "group:create"),
    route("/v3/groups/detail", list_detail, "GET", "group:get_all"),
    route("/v3/groups/action", create_from_source, "POST", "group:create"),
    route("/v3/groups/{id}", show, "GET", "group:get"),
    route("/v3/groups/{id}", update, "PUT", "group:update"),
    action_route("/v3/groups/{id}/action", action, ACTION_RULES),
]
