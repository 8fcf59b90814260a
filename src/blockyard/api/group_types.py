"""/v3/group_types (3.11): group types and their group specs.

Creating, changing and deleting types and specs is for admins, and so is seeing a type's
``group_specs`` (Cinder's SHOW_ACCESS_POLICY); everyone may list and show public types.
"""

from __future__ import annotations

import copy
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from blockyard.api import listing, wire
from blockyard.api.routes import public, route
from blockyard.api.types import is_public_filter
from blockyard.api.validate import boolean
from blockyard.db.models import GroupType
from blockyard.errors import NotFound
from blockyard.rest import schema
from blockyard.rest.errors import ApiError
from blockyard.service import group_types
from blockyard.service.identity import Identity, allowed, can_see_all

#: the microversion that brought group types
MIN_MV = 11

# request bodies, as cinder/api/schemas/group_types.py and group_specs.py declare them
CREATE = schema.body("group_type", {
    "name": schema.name,
    "description": schema.description,
    "is_public": schema.boolean,
    "group_specs": schema.metadata_allows_null,
}, required=("name",))
UPDATE = schema.body("group_type", {
    "name": schema.name_allow_zero_min_length,
    "description": schema.description,
    "is_public": schema.boolean,
})
_SPECS = {
    "type": "object",
    "patternProperties": {
        "^[a-zA-Z0-9-_:.]{1,255}$": {"type": ["string", "null"], "maxLength": 255},
    },
    "additionalProperties": False,
}
SPECS_CREATE = {"type": "object", "properties": {"group_specs": _SPECS},
                "required": ["group_specs"], "additionalProperties": False}
SPEC_UPDATE = {**copy.deepcopy(_SPECS), "minProperties": 1, "maxProperties": 1}


def require_mv(request: Request, minor: int) -> None:
    """Below the microversion that brought an endpoint, Cinder answers 404."""
    if wire.mv(request) < minor:
        raise ApiError(404, f"API version 3.{wire.mv(request)} is not supported on this "
                            f"method.")


def render(who: Identity, gt: GroupType) -> dict[str, Any]:
    body: dict[str, Any] = {"id": gt.id, "name": gt.name, "description": gt.description,
                            "is_public": gt.is_public}
    if allowed(who, "group:access_group_types_specs"):
        body["group_specs"] = gt.specs
    return body


# ---------------------------------------------------------------------------- types


async def list_types(request: Request) -> Response:
    require_mv(request, MIN_MV)
    who = wire.identity(request)
    params = listing.parse_params(request)
    is_public = is_public_filter(request.query_params.get("is_public")) if can_see_all(who) \
        else True
    page = await wire.call(request, group_types.list_types, params,
                           group_types.TypeFilter(is_public=is_public))
    return wire.ok(listing.page_body(request, "group_types",
                                     [render(who, gt) for gt in page.rows], page,
                                     links_key="group_type_links"))


async def show(request: Request) -> Response:
    require_mv(request, MIN_MV)
    who = wire.identity(request)
    gt = await wire.call(request, group_types.get, request.path_params["id"])
    return wire.ok({"group_type": render(who, gt)})


async def show_default(request: Request) -> Response:
    require_mv(request, MIN_MV)
    who = wire.identity(request)
    gt = await wire.call(request, group_types.get_default,
                         wire.runtime(request).config.default_group_type)
    return wire.ok({"group_type": render(who, gt)})


async def create(request: Request) -> Response:
    require_mv(request, MIN_MV)
    who = wire.identity(request)
    body = await wire.json_body(request)
    schema.check(body, CREATE)
    spec = body["group_type"]
    is_public = boolean(spec.get("is_public", True), "is_public")
    gt = await wire.call(request, group_types.create, spec["name"], spec.get("description"),
                         is_public, spec.get("group_specs") or {})
    return wire.ok({"group_type": render(who, gt)}, 202)


async def update(request: Request) -> Response:
    require_mv(request, MIN_MV)
    who = wire.identity(request)
    body = await wire.json_body(request)
    schema.check(body, UPDATE)
    spec = body["group_type"]
    name, description = spec.get("name"), spec.get("description")
    is_public = None if spec.get("is_public") is None else boolean(spec["is_public"],
                                                                  "is_public")
    if name is not None and not name.strip():
        raise ApiError(400, "Group type name can not be empty.")
    if name is None and description is None and is_public is None:
        raise ApiError(400, "Specify group type name, description or a combination thereof.")
    gt = await wire.call(request, group_types.update_type, request.path_params["id"],
                         name=name, description=description, is_public=is_public)
    return wire.ok({"group_type": render(who, gt)})


async def delete(request: Request) -> Response:
    require_mv(request, MIN_MV)
    await wire.call(request, group_types.delete_type, request.path_params["id"])
    return wire.accepted()


# ---------------------------------------------------------------------------- group specs


async def specs_index(request: Request) -> Response:
    require_mv(request, MIN_MV)
    specs = await wire.call(request, group_types.specs_of, request.path_params["id"])
    return wire.ok({"group_specs": specs})


async def specs_create(request: Request) -> Response:
    require_mv(request, MIN_MV)
    body = await wire.json_body(request)
    schema.check(body, SPECS_CREATE)
    await wire.call(request, group_types.set_specs, request.path_params["id"],
                    body["group_specs"])
    return wire.ok(body, 202)


async def specs_show(request: Request) -> Response:
    require_mv(request, MIN_MV)
    type_id, key = request.path_params["id"], request.path_params["key"]
    specs = await wire.call(request, group_types.specs_of, type_id)
    if key not in specs:
        raise NotFound("GroupTypeSpec", key, f"Group Type {type_id} has no extra spec with key "
                                             f"{key}.")
    return wire.ok({key: specs[key]})


async def specs_update(request: Request) -> Response:
    require_mv(request, MIN_MV)
    body = await wire.json_body(request)
    schema.check(body, SPEC_UPDATE)
    if request.path_params["key"] not in body:
        raise ApiError(400, "Request body and URI mismatch")
    await wire.call(request, group_types.set_specs, request.path_params["id"], body)
    return wire.ok(body)


async def specs_delete(request: Request) -> Response:
    require_mv(request, MIN_MV)
    await wire.call(request, group_types.delete_spec, request.path_params["id"],
                    request.path_params["key"])
    return wire.accepted()


routes = [
    # Cinder has no rule for reading group types: any caller sees the public ones
    public("/v3/group_types", list_types),
    route("/v3/group_types", create, "POST", "group:group_types:create"),
    public("/v3/group_types/default", show_default),
    public("/v3/group_types/{id}", show),
    route("/v3/group_types/{id}", update, "PUT", "group:group_types:update"),
    route("/v3/group_types/{id}", delete, "DELETE", "group:group_types:delete"),
    route("/v3/group_types/{id}/group_specs", specs_index, "GET",
          "group:group_types_specs:get_all"),
    route("/v3/group_types/{id}/group_specs", specs_create, "POST",
          "group:group_types_specs:create"),
    route("/v3/group_types/{id}/group_specs/{key}", specs_show, "GET",
          "group:group_types_specs:get"),
    route("/v3/group_types/{id}/group_specs/{key}", specs_update, "PUT",
          "group:group_types_specs:update"),
    route("/v3/group_types/{id}/group_specs/{key}", specs_delete, "DELETE",
          "group:group_types_specs:delete"),
]
