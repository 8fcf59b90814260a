"""/v3/types: volume types, their extra specs and their project access list.

The object differs by endpoint, as Cinder 29 renders it (and Tempest checks it):

* list and show add ``qos_specs_id`` (admins) and ``os-volume-type-access:is_public``;
* GET /types/default has ``qos_specs_id`` but not the access flag (Cinder's access extension
  finds no cached type under the id "default");
* create has the access flag but no ``qos_specs_id``; update has neither (both are rendered by
  Cinder's older types_manage view).

Non-admins see only the user-visible extra specs, as Cinder's READ_SENSITIVE policy does.
"""

from __future__ import annotations

import ast
import re
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from blockyard.api import listing, validate, wire
from blockyard.api.routes import action_route, route
from blockyard.db.models import VolumeType
from blockyard.errors import NotFound
from blockyard.rest import schema
from blockyard.rest.errors import ApiError
from blockyard.service import type_admin
from blockyard.service.identity import Identity, allowed, can_see_all

ACCESS_KEY = "os-volume-type-access:is_public"
USER_VISIBLE_SPECS = ("RESKEY:availability_zones", "multiattach", "replication_enabled")
#: extra spec keys in the extra_specs API (no spaces; a type create allows them)
_SPEC_KEY_NO_SPACE = re.compile(r"^[a-zA-Z0-9-_:.]{1,255}$")


# ---------------------------------------------------------------------------- rendering


def visible_specs(who: Identity, specs: dict[str, str]) -> dict[str, str]:
    if allowed(who, "volume_extension:types_extra_specs:read_sensitive"):
        return specs
    return {k: v for k, v in specs.items() if k in USER_VISIBLE_SPECS}


def render(who: Identity, vt: VolumeType, *, qos: bool, access: bool) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": vt.id,
        "name": vt.name,
        "is_public": vt.is_public,
        "description": vt.description,
        "extra_specs": visible_specs(who, vt.specs),
    }
    if qos and allowed(who, "volume_extension:access_types_qos_specs_id"):
        body["qos_specs_id"] = vt.qos_specs_id
    if access and allowed(who, "volume_extension:volume_type_access"):  # not for readers
        body[ACCESS_KEY] = vt.is_public
    return body


# ---------------------------------------------------------------------------- input checks

# Cinder's volume_types.py, types_extra_specs.py and volume_type_access.py schemas; spec
# values must be text here (Cinder also takes null, which no consumer of a spec can use)
_SPECS_NO_SPACE = {"type": "object",
                   "patternProperties": {_SPEC_KEY_NO_SPACE.pattern: {"type": "string",
                                                                      "maxLength": 255}},
                   "additionalProperties": False}
CREATE = schema.body("volume_type", {
    "name": schema.name, "description": schema.description,
    "extra_specs": {**schema.extra_specs, "type": ["object", "null"]},
    ACCESS_KEY: schema.boolean}, required=("name",))
UPDATE = schema.body("volume_type", {
    "name": schema.update_name, "description": schema.description,
    "is_public": schema.boolean})
SPECS_CREATE = {"type": "object", "properties": {"extra_specs": _SPECS_NO_SPACE},
                "required": ["extra_specs"], "additionalProperties": False}
SPECS_UPDATE = {**_SPECS_NO_SPACE, "minProperties": 1, "maxProperties": 1}
ACCESS_ACTIONS = {
    name: schema.body(name, {"project": {"type": "string", "minLength": 1, "maxLength": 255}},
                      required=("project",))
    for name in ("addProjectAccess", "removeProjectAccess")}


def is_public_filter(raw: str | None) -> bool | None:
    """Cinder's ``_parse_is_public``: absent → public only, "None" → all, else a boolean."""
    if raw is None:
        return True
    if raw.strip().lower() == "none":
        return None
    try:
        return validate.boolean(raw, "is_public")
    except ApiError:
        raise ApiError(400, f"Invalid is_public filter [{raw}]") from None


def _type_filter(request: Request, who: Identity, filters: dict[str, str]) -> type_admin.TypeFilter:
    if not can_see_all(who):  # only admins may see all private types or filter
        return type_admin.TypeFilter(is_public=True)
    is_public = is_public_filter(request.query_params.get("is_public"))
    columns: dict[str, str] = {}
    specs: dict[str, str] | None = None
    impossible = False
    for key, value in filters.items():
        if key == "is_public":
            continue
        if key == "extra_specs":
            try:
                parsed = ast.literal_eval(value)
            except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
                parsed = None  # TypeError: {[]: 1}, a literal Python cannot build
            if not isinstance(parsed, dict):
                raise ApiError(400, f"Invalid input received: extra_specs filter must be a "
                                    f"dictionary, got {value!r}.")
            specs = {str(k): str(v) for k, v in parsed.items()}
        elif key in type_admin.FILTERABLE:
            columns[key] = value
        else:
            impossible = True  # Cinder: a filter on no column of the type matches nothing
    return type_admin.TypeFilter(is_public=is_public, columns=columns, extra_specs=specs,
                                 impossible=impossible)


# ---------------------------------------------------------------------------- types


async def list_types(request: Request) -> Response:
    who = wire.identity(request)
    params = listing.parse_params(request)
    flt = _type_filter(request, who, params.filters)
    page = await wire.in_thread(type_admin.list_types, wire.runtime(request), who, params, flt)
    return wire.ok(listing.page_body(
        request, "volume_types", [render(who, vt, qos=True, access=True) for vt in page.rows],
        page, links_key="volume_type_links"))


async def show_default(request: Request) -> Response:
    who = wire.identity(request)
    vt = await wire.in_thread(type_admin.get_default, wire.runtime(request), who)
    return wire.ok({"volume_type": render(who, vt, qos=True, access=False)})


async def show(request: Request) -> Response:
    who = wire.identity(request)
    vt = await wire.in_thread(type_admin.get, wire.runtime(request), who, request.path_params["id"])
    return wire.ok({"volume_type": render(who, vt, qos=True, access=True)})


async def create(request: Request) -> Response:
    who = wire.identity(request)
    body = await wire.json_body(request)
    schema.check(body, CREATE)
    spec: dict[str, Any] = body["volume_type"]
    name, description = spec["name"], spec.get("description")
    specs = dict(spec.get("extra_specs") or {})
    is_public = validate.boolean(spec.get(ACCESS_KEY, True), ACCESS_KEY)
    vt = await wire.in_thread(type_admin.create, wire.runtime(request), name, description,
                              is_public, specs)
    return wire.ok({"volume_type": render(who, vt, qos=False, access=True)})


async def update(request: Request) -> Response:
    who = wire.identity(request)
    body = await wire.json_body(request)
    schema.check(body, UPDATE)
    spec: dict[str, Any] = body["volume_type"]
    name, description = spec.get("name"), spec.get("description")
    is_public = None if spec.get("is_public") is None else \
        validate.boolean(spec["is_public"], "is_public")
    if name is not None and not name.strip():
        raise ApiError(400, "Volume type name can not be empty.")
    if name is None and description is None and is_public is None:
        raise ApiError(400, "Specify volume type name, description, is_public or a "
                            "combination thereof.")
    vt = await wire.in_thread(type_admin.update_type, wire.runtime(request), who,
                              request.path_params["id"], name=name, description=description,
                              is_public=is_public, set_description=description is not None)
    return wire.ok({"volume_type": render(who, vt, qos=False, access=False)})


async def delete(request: Request) -> Response:
    who = wire.identity(request)
    await wire.in_thread(type_admin.delete_type, wire.runtime(request), who,
                         request.path_params["id"])
    return wire.accepted()


# ---------------------------------------------------------------------------- extra specs


async def specs_index(request: Request) -> Response:
    who = wire.identity(request)
    specs = await wire.in_thread(type_admin.extra_specs, wire.runtime(request), who,
                                 request.path_params["id"])
    return wire.ok({"extra_specs": visible_specs(who, specs)})


async def specs_create(request: Request) -> Response:
    who = wire.identity(request)
    body = await wire.json_body(request)
    schema.check(body, SPECS_CREATE)
    specs: dict[str, str] = body["extra_specs"]
    await wire.in_thread(type_admin.set_extra_specs, wire.runtime(request), who,
                         request.path_params["id"], specs)
    return wire.ok({"extra_specs": specs})


async def specs_show(request: Request) -> Response:
    who = wire.identity(request)
    type_id, key = request.path_params["id"], request.path_params["key"]
    specs = visible_specs(who, await wire.in_thread(type_admin.extra_specs, wire.runtime(request),
                                                    who, type_id))
    if key not in specs:
        raise NotFound("ExtraSpec", key, f"Volume Type {type_id} has no extra specs with key "
                                         f"{key}.")
    return wire.ok({key: specs[key]})


async def specs_update(request: Request) -> Response:
    who = wire.identity(request)
    body = await wire.json_body(request)
    key = request.path_params["key"]
    schema.check(body, SPECS_UPDATE)
    specs: dict[str, str] = body
    if key not in specs:
        raise ApiError(400, "Request body and URI mismatch")
    await wire.in_thread(type_admin.set_extra_specs, wire.runtime(request), who,
                         request.path_params["id"], specs)
    return wire.ok(specs)


async def specs_delete(request: Request) -> Response:
    who = wire.identity(request)
    await wire.in_thread(type_admin.delete_extra_spec, wire.runtime(request), who,
                         request.path_params["id"], request.path_params["key"])
    return wire.accepted()


# ---------------------------------------------------------------------------- project access


async def access_index(request: Request) -> Response:
    who = wire.identity(request)
    type_id = request.path_params["id"]
    projects = await wire.in_thread(type_admin.access_list, wire.runtime(request), who, type_id)
    return wire.ok({"volume_type_access": [{"volume_type_id": type_id, "project_id": p}
                                           for p in projects]})


#: action name → its Cinder rule (volume_access policies)
ACTION_RULES = {name: f"volume_extension:volume_type_access:{name}"
                for name in ("addProjectAccess", "removeProjectAccess")}


async def action(request: Request) -> Response:
    who = wire.identity(request)
    body = await wire.json_body(request)
    if len(body) != 1:
        raise ApiError(400, "Malformed request body: exactly one action is expected.")
    name, value = next(iter(body.items()))
    handlers = {"addProjectAccess": type_admin.add_access,
                "removeProjectAccess": type_admin.remove_access}
    if name not in handlers:
        raise ApiError(400, f"There is no such action: {name}. Verify the request body and "
                            f"Content-Type header and try again.")
    schema.check(body, ACCESS_ACTIONS[name])
    project = value["project"]
    await wire.in_thread(handlers[name], wire.runtime(request), who, request.path_params["id"],
                         project)
    return wire.accepted()


routes = [
    route("/v3/types", list_types, "GET", "volume_extension:type_get_all"),
    route("/v3/types", create, "POST", "volume_extension:type_create"),
    route("/v3/types/default", show_default, "GET", "volume_extension:type_get"),
    route("/v3/types/{id}", show, "GET", "volume_extension:type_get"),
    route("/v3/types/{id}", update, "PUT", "volume_extension:type_update"),
    route("/v3/types/{id}", delete, "DELETE", "volume_extension:type_delete"),
    action_route("/v3/types/{id}/action", action, ACTION_RULES),
    route("/v3/types/{id}/os-volume-type-access", access_index, "GET",
          "volume_extension:volume_type_access:get_all_for_type"),
    route("/v3/types/{id}/extra_specs", specs_index, "GET",
          "volume_extension:types_extra_specs:index"),
    route("/v3/types/{id}/extra_specs", specs_create, "POST",
          "volume_extension:types_extra_specs:create"),
    route("/v3/types/{id}/extra_specs/{key}", specs_show, "GET",
          "volume_extension:types_extra_specs:show"),
    route("/v3/types/{id}/extra_specs/{key}", specs_update, "PUT",
          "volume_extension:types_extra_specs:update"),
    route("/v3/types/{id}/extra_specs/{key}", specs_delete, "DELETE",
          "volume_extension:types_extra_specs:delete"),
]
