"""/v3/volumes: create, list, show, update, delete, summary, metadata and actions."""

from __future__ import annotations

import copy
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from blockyard.api import attachments as attachment_api
from blockyard.api import listing, metadata, validate, views, wire
from blockyard.api.routes import action_route, route
from blockyard.rest import schema
from blockyard.rest.errors import ApiError
from blockyard.service import migration, volumes
from blockyard.service.identity import enforce

# Cinder's volumes.py schemas: create (with group_id from 3.13, backup_id from 3.47, no
# unknown keys from 3.53) and update (unknown keys never; at least one field from 3.53)
_NAME = {"type": ["string", "null"], "format": "name_non_mandatory_remove_white_spaces"}
_DESCRIPTION = {"type": ["string", "null"],
                "format": "description_non_mandatory_remove_white_spaces"}
_TEXTS = {"name": _NAME, "display_name": _NAME, "description": _DESCRIPTION,
          "display_description": _DESCRIPTION}
CREATE = schema.body("volume", {
    **_TEXTS,
    "volume_type": schema.name_allow_zero_min_length,
    "metadata": schema.metadata_allows_null,
    "snapshot_id": schema.optional_uuid,
    "source_volid": schema.optional_uuid,
    "consistencygroup_id": schema.optional_uuid,
    "size": schema.volume_size_allows_null,
    "availability_zone": schema.availability_zone,
    "multiattach": schema.optional_boolean,
    "image_id": schema.name_allow_zero_min_length,
    "imageRef": schema.name_allow_zero_min_length,
    "bootable": schema.optional_boolean,  # blockyard's: a new volume marked bootable
}, strict=False)
CREATE["properties"]["OS-SCH-HNT:scheduler_hints"] = {"type": ["object", "null"]}
CREATE_V313 = copy.deepcopy(CREATE)
CREATE_V313["properties"]["volume"]["properties"]["group_id"] = \
    schema.name_allow_zero_min_length
CREATE_V347 = copy.deepcopy(CREATE_V313)
CREATE_V347["properties"]["volume"]["properties"]["backup_id"] = schema.optional_uuid
CREATE_V353 = copy.deepcopy(CREATE_V347)
CREATE_V353["properties"]["volume"]["additionalProperties"] = False
UPDATE = schema.body("volume", {**_TEXTS, "metadata": schema.extra_specs})
UPDATE_V353 = copy.deepcopy(UPDATE)
UPDATE_V353["properties"]["volume"]["anyOf"] = [
    {"required": [key]} for key in (*_TEXTS, "metadata")]


def _create_schema(mv: int) -> dict[str, Any]:
    return CREATE_V353 if mv >= 53 else CREATE_V347 if mv >= 47 else \
        CREATE_V313 if mv >= 13 else CREATE


def _strict(request: Request) -> bool:
    """From 3.53 on, Cinder rejects unknown keys in request bodies."""
    return wire.mv(request) >= 53


# ---------------------------------------------------------------------------- collection


async def create(request: Request) -> Response:
    body = await wire.json_body(request)
    schema.check(body, _create_schema(wire.mv(request)))
    spec: dict[str, Any] = body["volume"]
    size = None if spec.get("size") is None else int(spec["size"])
    name = spec.get("name", spec.get("display_name"))
    description = spec.get("description", spec.get("display_description"))
    snapshot_id, source_volid = spec.get("snapshot_id"), spec.get("source_volid")
    if snapshot_id and source_volid:
        raise ApiError(400, "Invalid input received: Cannot create a volume from a snapshot "
                            "and a source volume at once.")
    if size is None and not (snapshot_id or source_volid):
        raise validate.invalid("size", None, "None is not of type 'integer', 'string'")
    if spec.get("imageRef"):
        raise ApiError(400, "Invalid input received: Creating a volume from an image is not "
                            "supported: this deployment has no image service.")
    if spec.get("backup_id"):
        raise ApiError(400, "Invalid input received: Creating a volume from a backup is not "
                            "supported: this deployment has no backup service.")
    if spec.get("multiattach") is not None and validate.boolean(spec["multiattach"],
                                                                "multiattach"):
        raise ApiError(400, "Invalid input received: The multiattach flag is no longer "
                            "supported; use a volume type with multiattach=\"<is> True\".")
    volume_type, zone = spec.get("volume_type"), spec.get("availability_zone")
    # groups came with 3.13; before that Cinder ignores the key (the schema checked its form)
    group_id = (spec.get("group_id") or None) if wire.mv(request) >= 13 else None
    req = volumes.VolumeCreate(
        size=size,
        name=name,
        description=description,
        metadata=spec.get("metadata") or {},
        volume_type=volume_type or None,
        availability_zone=zone or None,
        snapshot_id=snapshot_id,
        source_volid=source_volid,
        bootable=validate.boolean(spec.get("bootable") or False, "bootable"),
        group_id=group_id,
    )
    v = await wire.call(request, volumes.create, req)
    return wire.ok({"volume": views.volume_detail(request, v, admin_fields=False)}, 202)


async def _list(request: Request, detail: bool) -> Response:
    params = listing.parse_params(request)
    page = await wire.call(
        request, volumes.list_volumes, params,
        all_projects=listing.all_tenants(request), like_allowed=listing.like_allowed(request),
    )
    render = views.volume_detail if detail else views.volume_summary
    return wire.ok(listing.page_body(request, "volumes", [render(request, v) for v in page.rows],
                                     page))


list_summary, list_detail = listing.summary_and_detail(_list)


async def summary(request: Request) -> Response:
    wire.require_since(request, 12)
    count, total, meta = await wire.call(request, volumes.summary, listing.all_tenants(request))
    body: dict[str, Any] = {"total_count": count, "total_size": total}
    if wire.mv(request) >= 36:
        body["metadata"] = meta
    return wire.ok({"volume-summary": body})


# ---------------------------------------------------------------------------- member


async def show(request: Request) -> Response:
    v = await wire.call(request, volumes.show, request.path_params["id"])
    return wire.ok({"volume": views.volume_detail(request, v)})


async def update(request: Request) -> Response:
    body = await wire.json_body(request)
    schema.check(body, UPDATE_V353 if _strict(request) else UPDATE)
    spec: dict[str, Any] = body["volume"]
    values: dict[str, Any] = {}
    if "name" in spec or "display_name" in spec:
        values["name"] = spec.get("name", spec.get("display_name"))
    if "description" in spec or "display_description" in spec:
        values["description"] = spec.get("description", spec.get("display_description"))
    if "metadata" in spec:
        values["metadata"] = spec["metadata"]
    if not values:
        raise ApiError(400, "Invalid input received: No updatable fields were given.")
    v = await wire.call(request, volumes.update_fields, request.path_params["id"], values)
    return wire.ok({"volume": views.volume_detail(request, v, admin_fields=False)})


async def delete(request: Request) -> Response:
    q = request.query_params
    cascade = validate.query_bool(q.get("cascade"), "cascade")
    force = validate.query_bool(q.get("force"), "force")
    if force and wire.mv(request) < 23:
        raise ApiError(400, "Invalid input received: force requires microversion 3.23.")
    if force:  # on top of the route's volume:delete, as Cinder checks it
        enforce(wire.identity(request), "volume:force_delete")
    await wire.call(request, volumes.delete_volume, request.path_params["id"], cascade=cascade,
                    force=force)
    return wire.accepted()


# ---------------------------------------------------------------------------- actions

Action = Callable[[Request, str, Any], Awaitable[Response]]

# Cinder's schemas for these actions (volume_actions.py, admin_actions.py); each is checked
# against the whole body, ``{"os-extend": {...}}``, before anything else happens.
EXTEND = schema.body("os-extend", {"new_size": schema.volume_size}, required=("new_size",))
_STATUS = {"type": ["string", "null"]}
RESET_STATUS = schema.body("os-reset_status", {
    "status": {**_STATUS, "format": "volume_status"},
    "attach_status": {**_STATUS, "format": "volume_attach_status"},
    "migration_status": {**_STATUS, "format": "volume_migration_status"},
})
RESET_STATUS["properties"]["os-reset_status"]["format"] = "validate_volume_reset_body"
SET_BOOTABLE = schema.body("os-set_bootable", {"bootable": schema.boolean},
                           required=("bootable",))
UPDATE_READONLY = schema.body("os-update_readonly_flag", {"readonly": schema.boolean},
                              required=("readonly",))
FORCE_DELETE = {"type": "object", "properties": {"os-force_delete": schema.ANY},
                "required": ["os-force_delete"], "additionalProperties": False}
_MIGRATE_FLAGS = {"force_host_copy": schema.boolean, "lock_volume": schema.boolean}
MIGRATE = schema.body("os-migrate_volume", {
    "host": {"type": "string", "maxLength": 255}, **_MIGRATE_FLAGS}, required=("host",))
#: 3.16: a cluster may be named instead of a host
MIGRATE_V316 = schema.body("os-migrate_volume", {
    "host": {"type": ["string", "null"], "maxLength": 255}, **_MIGRATE_FLAGS,
    "cluster": schema.name_allow_zero_min_length})
RETYPE = schema.body("os-retype", {
    "new_type": {"type": "string"},
    "migration_policy": {"type": ["string", "null"], "enum": ["on-demand", "never"]},
}, required=("new_type",))
MIGRATE_COMPLETION = schema.body("os-migrate_volume_completion", {
    "new_volume": schema.uuid, "error": {"type": ["string", "null", "boolean"]},
}, required=("new_volume",))


async def _extend(request: Request, volume_id: str, value: Any) -> Response:
    schema.check({"os-extend": value}, EXTEND)
    new_size = int(value["new_size"])
    await wire.call(request, volumes.extend, volume_id, new_size,
                    attached_ok=wire.mv(request) >= 42)
    return wire.accepted()


async def _reset_status(request: Request, volume_id: str, value: Any) -> Response:
    schema.check({"os-reset_status": value}, RESET_STATUS)
    status, attach_status, migration_status = (
        value[key].lower() if value.get(key) else None
        for key in ("status", "attach_status", "migration_status"))
    await wire.call(request, volumes.reset_status, volume_id, status, attach_status,
                    migration_status)
    return wire.accepted()


async def _set_bootable(request: Request, volume_id: str, value: Any) -> Response:
    schema.check({"os-set_bootable": value}, SET_BOOTABLE)
    bootable = validate.boolean(value["bootable"], "bootable")
    await wire.call(request, volumes.update_fields, volume_id, {"bootable": bootable})
    return Response(status_code=200)


async def _update_readonly(request: Request, volume_id: str, value: Any) -> Response:
    schema.check({"os-update_readonly_flag": value}, UPDATE_READONLY)
    readonly = validate.boolean(value["readonly"], "readonly")
    await wire.call(request, volumes.update_fields, volume_id, {"readonly": readonly})
    return wire.accepted()


async def _force_delete(request: Request, volume_id: str, value: Any) -> Response:
    schema.check({"os-force_delete": value}, FORCE_DELETE)
    await wire.call(request, volumes.delete_volume, volume_id, force=True)
    return wire.accepted()


async def _migrate(request: Request, volume_id: str, value: Any) -> Response:
    """os-migrate_volume (admin): a generic, host-assisted copy to another backend.

    ``force_host_copy`` is accepted and changes nothing (every migration is a host copy);
    ``cluster`` (3.16) is refused unless null, since a deployment has no clusters.
    """
    schema.check({"os-migrate_volume": value},
                 MIGRATE_V316 if wire.mv(request) >= 16 else MIGRATE)
    args: dict[str, Any] = value
    if args.get("cluster") is not None:
        raise ApiError(400, "Invalid input received: cluster is not supported: this "
                            "deployment has no clusters; give a host.")
    host = args.get("host")
    if not host:
        raise validate.invalid("os-migrate_volume", args, "'host' is a required property")
    lock = validate.boolean(args.get("lock_volume", False), "lock_volume")
    await wire.call(request, migration.migrate, volume_id, host, lock_volume=lock)
    return wire.accepted()


async def _retype(request: Request, volume_id: str, value: Any) -> Response:
    schema.check({"os-retype": value}, RETYPE)
    new_type, policy = value["new_type"], value.get("migration_policy", "never")
    await wire.call(request, migration.retype, volume_id, new_type, policy)
    return wire.accepted()


async def _migrate_completion(request: Request, volume_id: str, value: Any) -> Response:
    """os-migrate_volume_completion (admin): Cinder's checks and answer (see the service)."""
    schema.check({"os-migrate_volume_completion": value}, MIGRATE_COMPLETION)
    new_volume = value["new_volume"]
    error = validate.boolean(value.get("error") or False, "error")
    save = await wire.call(request, migration.complete, volume_id, new_volume, error)
    return wire.ok({"save_volume_id": save})


#: action name → handler (the attach/detach ones live with the attachments API)
ACTIONS: dict[str, Action] = {
    "os-extend": _extend,
    "os-reset_status": _reset_status,
    "os-set_bootable": _set_bootable,
    "os-update_readonly_flag": _update_readonly,
    "os-force_delete": _force_delete,
    "os-migrate_volume": _migrate,
    "os-retype": _retype,
    "os-migrate_volume_completion": _migrate_completion,
    **attachment_api.LEGACY_ACTIONS,
}


#: action name → its Cinder rule (volume_actions, volume_metadata and volumes policies)
ACTION_RULES = {
    "os-extend": "volume:extend",
    "os-reset_status": "volume_extension:volume_admin_actions:reset_status",
    "os-set_bootable": "volume:update",
    "os-update_readonly_flag": "volume:update_readonly_flag",
    "os-force_delete": "volume_extension:volume_admin_actions:force_delete",
    "os-migrate_volume": "volume_extension:volume_admin_actions:migrate_volume",
    "os-retype": "volume:retype",
    "os-migrate_volume_completion":
        "volume_extension:volume_admin_actions:migrate_volume_completion",
    "os-reserve": "volume_extension:volume_actions:reserve",
    "os-unreserve": "volume_extension:volume_actions:unreserve",
    "os-initialize_connection": "volume_extension:volume_actions:initialize_connection",
    "os-terminate_connection": "volume_extension:volume_actions:terminate_connection",
    "os-attach": "volume_extension:volume_actions:attach",
    "os-begin_detaching": "volume_extension:volume_actions:begin_detaching",
    "os-roll_detaching": "volume_extension:volume_actions:roll_detaching",
    "os-detach": "volume_extension:volume_actions:detach",
    "os-force_detach": "volume_extension:volume_admin_actions:force_detach",
}


async def action(request: Request) -> Response:
    body = await wire.json_body(request)
    if len(body) != 1:
        raise ApiError(400, "Malformed request body: exactly one action is expected.")
    name, value = next(iter(body.items()))
    handler = ACTIONS.get(name)
    if handler is None:
        raise ApiError(400, f"There is no such action: {name}. Verify the request body and "
                            f"Content-Type header and try again.")
    return await handler(request, request.path_params["id"], value)


routes = [
    route("/v3/volumes", list_summary, "GET", "volume:get_all"),
    route("/v3/volumes", create, "POST", "volume:create"),
    route("/v3/volumes/detail", list_detail, "GET", "volume:get_all"),
    route("/v3/volumes/summary", summary, "GET", "volume:get_all"),
    route("/v3/volumes/{id}", show, "GET", "volume:get"),
    route("/v3/volumes/{id}", update, "PUT", "volume:update"),
    route("/v3/volumes/{id}", delete, "DELETE", "volume:delete"),
    action_route("/v3/volumes/{id}/action", action, ACTION_RULES),
    *metadata.routes("volumes", volumes.METADATA, metadata.VOLUME_RULES),
]
