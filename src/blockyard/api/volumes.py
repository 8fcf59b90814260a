"""/v3/volumes: create, list, show, update, delete, summary, metadata and actions."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from blockyard import states
from blockyard.api import attachments as attachment_api
from blockyard.api import listing, metadata, validate, views, wire
from blockyard.api.errors import ApiError
from blockyard.api.types import admin_only
from blockyard.service import migration, volumes

CREATE_KEYS = {
    "name", "description", "display_name", "display_description", "size", "availability_zone",
    "source_volid", "snapshot_id", "backup_id", "imageRef", "volume_type", "metadata",
    "consistencygroup_id", "multiattach", "group_id", "bootable",
}
UPDATE_KEYS = {"name", "description", "display_name", "display_description", "metadata"}


def _strict(request: Request) -> bool:
    """From 3.53 on, Cinder rejects unknown keys in request bodies."""
    return wire.mv(request) >= 53


# ---------------------------------------------------------------------------- collection


async def create(request: Request) -> Response:
    body = await wire.json_body(request)
    spec = validate.section(body, "volume")
    if _strict(request):
        validate.no_extra_keys(spec, CREATE_KEYS, "volume")
        validate.no_extra_keys(body, {"volume", "OS-SCH-HNT:scheduler_hints"})
    size = spec.get("size")
    if size is not None:
        size = validate.integer(size, "size", minimum=1)
    name = validate.string(spec.get("name", spec.get("display_name")), "name")
    description = validate.string(spec.get("description", spec.get("display_description")),
                                  "description")
    snapshot_id = validate.uuid_string(spec.get("snapshot_id"), "snapshot_id")
    source_volid = validate.uuid_string(spec.get("source_volid"), "source_volid")
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
    volume_type = spec.get("volume_type")
    if volume_type is not None and not isinstance(volume_type, str):
        raise validate.invalid("volume_type", volume_type,
                               f"{volume_type!r} is not of type 'string'")
    zone = validate.string(spec.get("availability_zone"), "availability_zone")
    # groups came with 3.13; before that Cinder ignores the key
    group_id = validate.uuid_string(spec.get("group_id"), "group_id") \
        if wire.mv(request) >= 13 else None
    req = volumes.VolumeCreate(
        size=size,
        name=name,
        description=description,
        metadata=validate.metadata(spec.get("metadata")),
        volume_type=volume_type or None,
        availability_zone=zone or None,
        snapshot_id=snapshot_id,
        source_volid=source_volid,
        bootable=validate.boolean(spec.get("bootable", False), "bootable"),
        group_id=group_id,
    )
    v = await wire.call(request, volumes.create, req)
    return wire.ok({"volume": views.volume_detail(request, v, admin_fields=False)}, 202)


async def _list(request: Request, detail: bool) -> Response:
    params = listing.parse_params(request)
    page = await wire.call(
        request, volumes.list_volumes, params,
        all_projects=listing.all_tenants(request), like_allowed=wire.mv(request) >= 34,
    )
    render = views.volume_detail if detail else views.volume_summary
    return wire.ok(listing.page_body(request, "volumes", [render(request, v) for v in page.rows],
                                     page))


async def list_summary(request: Request) -> Response:
    return await _list(request, detail=False)


async def list_detail(request: Request) -> Response:
    return await _list(request, detail=True)


async def summary(request: Request) -> Response:
    if wire.mv(request) < 12:
        raise ApiError(404, "The resource could not be found.")
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
    spec = validate.section(body, "volume")
    if _strict(request):
        validate.no_extra_keys(spec, UPDATE_KEYS, "volume")
    values: dict[str, Any] = {}
    if "name" in spec or "display_name" in spec:
        values["name"] = validate.string(spec.get("name", spec.get("display_name")), "name")
    if "description" in spec or "display_description" in spec:
        values["description"] = validate.string(
            spec.get("description", spec.get("display_description")), "description")
    if "metadata" in spec:
        values["metadata"] = validate.metadata(spec["metadata"])
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
    await wire.call(request, volumes.delete_volume, request.path_params["id"], cascade=cascade,
                    force=force)
    return wire.accepted()


# ---------------------------------------------------------------------------- actions

Action = Callable[[Request, str, Any], Awaitable[Response]]


async def _extend(request: Request, volume_id: str, value: Any) -> Response:
    args = validate.action_args(value, "os-extend")
    if "new_size" not in args:
        raise validate.invalid("os-extend", args, "'new_size' is a required property")
    if _strict(request):
        validate.no_extra_keys(args, {"new_size"}, "os-extend")
    new_size = validate.integer(args["new_size"], "new_size", minimum=1)
    await wire.call(request, volumes.extend, volume_id, new_size,
                    attached_ok=wire.mv(request) >= 42)
    return wire.accepted()


async def _reset_status(request: Request, volume_id: str, value: Any) -> Response:
    args = validate.action_args(value, "os-reset_status")
    validate.no_extra_keys(args, {"status", "attach_status", "migration_status"},
                           "os-reset_status")
    if not args:
        raise ApiError(400, "Must specify 'status', 'attach_status' or 'migration_status' for "
                            "update.")
    status = args.get("status")
    if status is not None:
        status = str(status).lower()
        if status not in states.VOLUME_RESET_STATUSES:
            raise ApiError(400, f"Invalid input received: Must specify a valid status: "
                                f"{status}")
    attach_status = args.get("attach_status")
    if attach_status is not None:
        attach_status = str(attach_status).lower()
        if attach_status not in states.ATTACH_RESET_STATUSES:
            raise ApiError(400, f"Invalid input received: Must specify a valid attach "
                                f"status: {attach_status}")
    migration_status = args.get("migration_status")
    if migration_status is not None:
        migration_status = str(migration_status).lower()
    await wire.call(request, volumes.reset_status, volume_id, status, attach_status,
                    migration_status)
    return wire.accepted()


async def _set_bootable(request: Request, volume_id: str, value: Any) -> Response:
    args = validate.action_args(value, "os-set_bootable")
    if "bootable" not in args:
        raise ApiError(400, "Must specify bootable in request.")
    bootable = validate.boolean(args["bootable"], "bootable")
    await wire.call(request, volumes.update_fields, volume_id, {"bootable": bootable})
    return Response(status_code=200)


async def _update_readonly(request: Request, volume_id: str, value: Any) -> Response:
    args = validate.action_args(value, "os-update_readonly_flag")
    if "readonly" not in args:
        raise ApiError(400, "Must specify readonly in request.")
    readonly = validate.boolean(args["readonly"], "readonly")
    await wire.call(request, volumes.update_fields, volume_id, {"readonly": readonly})
    return wire.accepted()


async def _force_delete(request: Request, volume_id: str, value: Any) -> Response:
    await wire.call(request, volumes.delete_volume, volume_id, force=True)
    return wire.accepted()


async def _migrate(request: Request, volume_id: str, value: Any) -> Response:
    """os-migrate_volume (admin): a generic, host-assisted copy to another backend.

    ``force_host_copy`` is accepted and changes nothing (every migration is a host copy);
    ``cluster`` (3.16) is refused unless null, since a deployment has no clusters.
    """
    admin_only(wire.identity(request),
               "volume_extension:volume_admin_actions:migrate_volume")
    args = validate.action_args(value, "os-migrate_volume")
    allowed = {"host", "force_host_copy", "lock_volume"}
    if wire.mv(request) >= 16:
        allowed.add("cluster")
    validate.no_extra_keys(args, allowed, "os-migrate_volume")
    if args.get("cluster") is not None:
        raise ApiError(400, "Invalid input received: cluster is not supported: this "
                            "deployment has no clusters; give a host.")
    host = args.get("host")
    if not isinstance(host, str) or not host:
        raise validate.invalid("os-migrate_volume", args, "'host' is a required property")
    validate.boolean(args.get("force_host_copy", False), "force_host_copy")
    lock = validate.boolean(args.get("lock_volume", False), "lock_volume")
    await wire.call(request, migration.migrate, volume_id, host, lock_volume=lock)
    return wire.accepted()


async def _retype(request: Request, volume_id: str, value: Any) -> Response:
    args = validate.action_args(value, "os-retype")
    validate.no_extra_keys(args, {"new_type", "migration_policy"}, "os-retype")
    new_type = args.get("new_type")
    if not isinstance(new_type, str) or not new_type:
        raise validate.invalid("os-retype", args, "'new_type' is a required property")
    policy = args.get("migration_policy") or "never"
    if policy not in ("on-demand", "never"):
        raise ApiError(400, f"Invalid input received: migration_policy must be 'on-demand' "
                            f"or 'never', passed: {policy}")
    await wire.call(request, migration.retype, volume_id, new_type, policy)
    return wire.accepted()


async def _migrate_completion(request: Request, volume_id: str, value: Any) -> Response:
    """os-migrate_volume_completion (admin): Cinder's checks and answer (see the service)."""
    admin_only(wire.identity(request),
               "volume_extension:volume_admin_actions:migrate_volume_completion")
    args = validate.action_args(value, "os-migrate_volume_completion")
    validate.no_extra_keys(args, {"new_volume", "error"}, "os-migrate_volume_completion")
    new_volume = validate.uuid_string(args.get("new_volume"), "new_volume")
    if new_volume is None:
        raise validate.invalid("os-migrate_volume_completion", args,
                               "'new_volume' is a required property")
    error = validate.boolean(args.get("error", False), "error")
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
    Route("/v3/volumes", list_summary, methods=["GET"]),
    Route("/v3/volumes", create, methods=["POST"]),
    Route("/v3/volumes/detail", list_detail, methods=["GET"]),
    Route("/v3/volumes/summary", summary, methods=["GET"]),
    Route("/v3/volumes/{id}", show, methods=["GET"]),
    Route("/v3/volumes/{id}", update, methods=["PUT"]),
    Route("/v3/volumes/{id}", delete, methods=["DELETE"]),
    Route("/v3/volumes/{id}/action", action, methods=["POST"]),
    *metadata.routes("volumes", volumes.METADATA),
]
