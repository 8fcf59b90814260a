"""/v3/attachments (microversion 3.27+) and the legacy attach/detach volume actions.

Connecting and disconnecting do backend work (targets, processes), so those calls always run
on a worker thread; the rest is database work like any other endpoint's.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from blockyard.api import listing, validate, wire
from blockyard.api.routes import action_route, route
from blockyard.api.views import iso
from blockyard.connectors.properties import to_connector
from blockyard.db.models import Attachment
from blockyard.rest import schema
from blockyard.rest.errors import ApiError
from blockyard.service import attachments

#: the attachments API appeared in 3.27; complete in 3.44; attach mode in 3.54
MIN_MV, COMPLETE_MV, MODE_MV = 27, 44, 54


async def blocking(request: Request, fn: Any, *args: Any, **kwargs: Any) -> Any:
    """Run ``fn(runtime, identity, ...)`` on a worker thread: it talks to backends."""
    return await wire.in_thread(fn, wire.runtime(request), wire.identity(request), *args,
                                **kwargs)


def _require(request: Request, minor: int = MIN_MV) -> None:
    wire.require_since(request, minor)


def attachment_summary(att: Attachment) -> dict[str, Any]:
    return {"id": att.id, "status": att.attach_status, "instance": att.instance_uuid,
            "volume_id": att.volume_id}


def attachment_detail(att: Attachment, *, secrets: bool = False) -> dict[str, Any]:
    """The attachment; its connection info with secrets only for the answer of a call that
    attaches (`secrets`), masked everywhere else (see `attachments.masked`)."""
    info = att.connection_info or {}
    return {
        **attachment_summary(att),
        "attached_at": iso(att.attach_time) or "",
        "detached_at": iso(att.detach_time) or "",
        "attach_mode": att.attach_mode or "null",
        "connection_info": info if secrets else attachments.masked(info),
    }


#: os-brick connector properties: Cinder takes any object; the keys blockyard records as
#: text (and the mountpoint an attachment keeps) must be text, the rest is passed on as is
CONNECTOR = {
    "type": "object",
    "properties": {
        **{key: {"type": ["string", "null"], "maxLength": 255}
           for key in ("host", "ip", "initiator", "platform", "os_type", "nqn", "mountpoint")},
        "multipath": {"type": ["boolean", "string", "null"]},
    },
}


def _connector_arg(value: Any, field: str = "connector") -> dict[str, Any]:
    if not isinstance(value, dict):
        raise validate.invalid(field, value, f"{value!r} is not of type 'object'")
    schema.check(value, CONNECTOR)
    return value


# Cinder's attachments.py schemas (mode from 3.54)
CREATE = schema.body("attachment", {
    "instance_uuid": schema.uuid,
    "connector": {"type": ["object", "null"]},
    "volume_uuid": schema.uuid,
}, required=("volume_uuid",))
CREATE_V354 = schema.body("attachment", {
    **CREATE["properties"]["attachment"]["properties"],
    "mode": {"type": "string", "enum": ["rw", "ro"]},
}, required=("volume_uuid",))
UPDATE = schema.body("attachment", {"connector": {"type": "object", "minProperties": 1}},
                     required=("connector",))


async def create(request: Request) -> Response:
    _require(request)
    body = await wire.json_body(request)
    schema.check(body, CREATE_V354 if wire.mv(request) >= MODE_MV else CREATE)
    spec: dict[str, Any] = body["attachment"]
    volume_id, instance_uuid = spec["volume_uuid"], spec.get("instance_uuid")
    mode = spec.get("mode")
    connector = None
    if spec.get("connector"):
        connector = to_connector(_connector_arg(spec["connector"]))
    att = await blocking(request, attachments.create, volume_id, instance_uuid, connector, mode)
    return wire.ok({"attachment": attachment_detail(att, secrets=True)})


async def _list(request: Request, detail: bool) -> Response:
    _require(request)
    filters = {k: v for k, v in request.query_params.items()
               if k in ("volume_id", "instance_id", "status")}
    found = await wire.call(request, attachments.list_attachments,
                            all_projects=listing.all_tenants(request), filters=filters)
    render = attachment_detail if detail else attachment_summary
    return wire.ok({"attachments": [render(a) for a in found]})


list_summary, list_detail = listing.summary_and_detail(_list)


async def show(request: Request) -> Response:
    _require(request)
    att = await wire.call(request, attachments.get, request.path_params["id"])
    return wire.ok({"attachment": attachment_detail(att)})


async def update(request: Request) -> Response:
    _require(request)
    body = await wire.json_body(request)
    schema.check(body, UPDATE)
    connector = to_connector(_connector_arg(body["attachment"]["connector"]))
    att = await blocking(request, attachments.update_connector, request.path_params["id"],
                         connector)
    return wire.ok({"attachment": attachment_detail(att, secrets=True)})


async def delete(request: Request) -> Response:
    _require(request)
    await blocking(request, attachments.delete_attachment, request.path_params["id"])
    return wire.ok({"attachments": []})


#: action name → its Cinder rule
ACTION_RULES = {"os-complete": "volume:attachment_complete"}


async def action(request: Request) -> Response:
    _require(request, COMPLETE_MV)
    body = await wire.json_body(request)
    if list(body) != ["os-complete"]:
        name = next(iter(body), "")
        raise ApiError(400, f"There is no such action: {name}. Verify the request body and "
                            f"Content-Type header and try again.")
    await wire.call(request, attachments.complete, request.path_params["id"])
    return Response(status_code=204)


routes = [
    route("/v3/attachments", list_summary, "GET", "volume:get_all"),
    route("/v3/attachments", create, "POST", "volume:attachment_create"),
    route("/v3/attachments/detail", list_detail, "GET", "volume:get_all"),
    route("/v3/attachments/{id}", show, "GET", "volume:get"),
    route("/v3/attachments/{id}", update, "PUT", "volume:attachment_update"),
    route("/v3/attachments/{id}", delete, "DELETE", "volume:attachment_delete"),
    action_route("/v3/attachments/{id}/action", action, ACTION_RULES),
]


# ---------------------------------------------------------------------------- legacy actions


# Cinder's schemas for the legacy actions (volume_actions.py, admin_actions.py)
ATTACH = schema.body("os-attach", {
    "instance_uuid": schema.uuid,
    "mountpoint": {"type": "string", "minLength": 1, "maxLength": 255},
    "host_name": {"type": "string", "maxLength": 255},
    "mode": {"type": "string", "enum": ["rw", "ro"]},
}, required=("mountpoint",))
ATTACH["properties"]["os-attach"]["anyOf"] = [{"required": ["instance_uuid"]},
                                              {"required": ["host_name"]}]
DETACH = schema.body("os-detach", {"attachment_id": schema.uuid_allow_null}, nullable=True)
FORCE_DETACH = schema.body("os-force_detach", {
    "connector": {"type": ["string", "object", "null"]},
    # Cinder takes any string here; an id that is no uuid could never name an attachment
    "attachment_id": {"type": ["string", "null"], "format": "uuid"},
})
INITIALIZE_CONNECTION = schema.body("os-initialize_connection", {
    "connector": {"type": ["object", "string"]}}, required=("connector",))
TERMINATE_CONNECTION = schema.body("os-terminate_connection", {
    "connector": {"type": ["string", "object", "null"]}}, required=("connector",))


def _state_step(step: Callable[..., None]) -> Callable[[Request, str, Any], Awaitable[Response]]:
    """An action that only moves the volume's status (its value, if any, is ignored)."""

    async def handler(request: Request, volume_id: str, value: Any) -> Response:
        await wire.call(request, step, volume_id)
        return wire.accepted()

    return handler


async def _initialize_connection(request: Request, volume_id: str, value: Any) -> Response:
    schema.check({"os-initialize_connection": value}, INITIALIZE_CONNECTION)
    connector = to_connector(_connector_arg(value["connector"]))
    info = await blocking(request, attachments.initialize_connection, volume_id, connector)
    return wire.ok({"connection_info": info.to_wire()})


async def _terminate_connection(request: Request, volume_id: str, value: Any) -> Response:
    schema.check({"os-terminate_connection": value}, TERMINATE_CONNECTION)
    connector = to_connector(_connector_arg(value["connector"]))
    await blocking(request, attachments.terminate_connection, volume_id, connector)
    return wire.accepted()


async def _attach(request: Request, volume_id: str, value: Any) -> Response:
    schema.check({"os-attach": value}, ATTACH)
    instance_uuid, host_name = value.get("instance_uuid"), value.get("host_name")
    if not instance_uuid and not host_name:
        raise ApiError(400, "Invalid request to attach volume to an invalid target")
    await wire.call(request, attachments.attach, volume_id, instance_uuid=instance_uuid,
                    host_name=host_name, mountpoint=value["mountpoint"],
                    mode=value.get("mode", "rw"))
    return wire.accepted()


async def _detach(request: Request, volume_id: str, value: Any) -> Response:
    schema.check({"os-detach": value}, DETACH)
    attachment_id = (value or {}).get("attachment_id")
    await blocking(request, attachments.detach, volume_id, attachment_id)
    return wire.accepted()


async def _force_detach(request: Request, volume_id: str, value: Any) -> Response:
    schema.check({"os-force_detach": value}, FORCE_DETACH)
    args: dict[str, Any] = value
    attachment_id = args.get("attachment_id")
    connector = to_connector(_connector_arg(args["connector"])) if args.get("connector") \
        else None
    await blocking(request, attachments.detach, volume_id, attachment_id, force=True,
                   connector=connector)
    return wire.accepted()


LEGACY_ACTIONS = {
    "os-reserve": _state_step(attachments.reserve),
    "os-unreserve": _state_step(attachments.unreserve),
    "os-initialize_connection": _initialize_connection,
    "os-terminate_connection": _terminate_connection,
    "os-attach": _attach,
    "os-begin_detaching": _state_step(attachments.begin_detaching),
    "os-roll_detaching": _state_step(attachments.roll_detaching),
    "os-detach": _detach,
    "os-force_detach": _force_detach,
}
