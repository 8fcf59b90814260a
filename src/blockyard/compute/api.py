"""The agent's Nova-compatible API: the subset of /v2.1 the real clients need to give volumes
to guests (`openstack server add/remove volume`, openstacksdk's volume attachments) and the
external-events endpoint the volume service calls when it extended an attached volume. The
endpoints of other modules join `ROUTES` here: flavors and images (`catalog`, with a Glance
subset under /image), server actions such as the console log (`actions`, `console`), and
Nova's os-volumes/os-snapshots proxies (`proxies`).

Microversions 2.1 to `MAX_VERSION`, from ``OpenStack-API-Version: compute X`` or the older
``X-OpenStack-Nova-API-Version``; attachment bodies follow them (tag at 2.70,
delete_on_termination at 2.79, attachment_id/bdm_uuid instead of id at 2.89). Errors use
the same fault bodies as Nova (and Cinder): ``{"itemNotFound": {"code": 404, ...}}``.

Extensions, under a ``blockyard:`` prefix that clients ignore: a server created with
``blockyard:qmp_socket`` adopts a running QEMU instead of starting one, and every volume
attachment reports ``blockyard:guest_device``, the path the guest really sees the disk at.

Every route declares its policy rule (`PolicyRoute`, Nova's names: `compute.policies`), and
the rule is checked before the endpoint runs: against the server's project for routes under
``/servers/{server_id}`` (another project's server is 404 first, unless the caller is an
admin), against the caller's own project elsewhere. Only the version documents have none.
"""

from __future__ import annotations

import contextlib
import logging
import re
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

from blockyard import errors
from blockyard.failpoints import InjectedFailure
from blockyard.rest import errors as http_errors
from blockyard.rest import guard, schema
from blockyard.rest.auth import Authenticate, KeystoneValidator
from blockyard.rest.auth import identity as identity_of
from blockyard.rest.errors import ApiError, fault

from . import actions, assisted, boot, catalog, policies, proxies, swap_api
from .config import ComputeConfig
from .hypervisor import HypervisorError
from .manager import Agent
from .policies import ComputePolicy
from .routing import (
    MIN_VERSION,
    agent_of,
    authorize,
    body_of,
    json_of,
    links,
    route,
    string_of,
    timestamp,
    uuid_of,
    version_of,
)
from .store import Instance, Mapping
from .volume_api import VolumeApiError

log = logging.getLogger(__name__)

MAX_VERSION = (2, 89)
_VERSION_RE = re.compile(r"^(\d+)\.(\d+)$")
_COLLECTIONS = {"servers", "os-server-external-events", "flavors", "limits", "extensions",
                "images", "os-volumes", "os-snapshots"}


def _text(v: tuple[int, int]) -> str:
    return f"{v[0]}.{v[1]}"


# ---------------------------------------------------------------------- views
def server_view(request: Request, inst: Instance, mappings: list[Mapping]) -> dict[str, Any]:
    agent = agent_of(request)
    v = version_of(request)
    vm_state = {"ACTIVE": "active", "BUILD": "building", "SHUTOFF": "stopped",
                "ERROR": "error"}[inst.status]
    flavor = agent.config.flavors.get(inst.flavor or "")
    view: dict[str, Any] = {
        "id": inst.id, "name": inst.name, "status": inst.status,
        "tenant_id": inst.project_id, "user_id": inst.user_id, "metadata": {},
        "hostId": "", "created": timestamp(inst.created_at), "updated": timestamp(inst.updated_at),
        "addresses": {}, "accessIPv4": "", "accessIPv6": "", "progress": 0,
        "links": links(request, "servers", inst.id),
        "image": _image_ref(request, inst.image) if inst.image else "",
        "OS-DCF:diskConfig": "MANUAL", "OS-EXT-AZ:availability_zone": "nova",
        "OS-EXT-SRV-ATTR:host": agent.config.host,
        "OS-EXT-SRV-ATTR:hypervisor_hostname": agent.config.host,
        "OS-EXT-SRV-ATTR:instance_name": f"instance-{inst.id}",
        "OS-EXT-STS:vm_state": vm_state, "OS-EXT-STS:task_state": None,
        "OS-EXT-STS:power_state": 1 if inst.status == "ACTIVE" else 4,
        "OS-SRV-USG:launched_at": timestamp(inst.created_at), "OS-SRV-USG:terminated_at": None,
        "os-extended-volumes:volumes_attached": [
            {"id": m.volume_id, "delete_on_termination": m.delete_on_termination}
            if v >= (2, 3) else {"id": m.volume_id} for m in mappings],
        "config_drive": "", "key_name": None, "security_groups": [{"name": "default"}],
    }
    if v >= (2, 47):
        view["flavor"] = {"original_name": inst.flavor, "vcpus": flavor.vcpus if flavor else 0,
                          "ram": flavor.ram_mb if flavor else 0, "disk": 0, "ephemeral": 0,
                          "swap": 0, "extra_specs": {}}
    else:
        view["flavor"] = {"id": inst.flavor, "links": []}
    if v >= (2, 9):
        view["locked"] = False
    if v >= (2, 19):
        view["description"] = None
    if v >= (2, 26):
        view["tags"] = []
    if inst.fault:
        view["fault"] = {"code": 500, "message": inst.fault, "created": timestamp(inst.updated_at)}
    view["blockyard:adopted"] = inst.adopted
    if inst.console_socket:
        view["blockyard:console_socket"] = inst.console_socket
    return view


def _image_ref(request: Request, name: str) -> dict[str, Any]:
    """The server's image by id (the name it was booted with, if the image is gone since)."""
    image = agent_of(request).config.image(name)
    ident = image.id if image is not None else name
    return {"id": ident, "links": links(request, "images", ident)}


def attachment_view(request: Request, m: Mapping) -> dict[str, Any]:
    v = version_of(request)
    view: dict[str, Any] = {"device": m.device_name, "serverId": m.instance_id,
                            "volumeId": m.volume_id}
    if v < (2, 89):
        view["id"] = m.volume_id
    if v >= (2, 70):
        view["tag"] = m.tag
    if v >= (2, 79):
        view["delete_on_termination"] = m.delete_on_termination
    if v >= (2, 89):
        view["attachment_id"] = m.attachment_id
        view["bdm_uuid"] = m.id
    view["blockyard:guest_device"] = m.guest_path
    return view


# ---------------------------------------------------------------------- versions
def _version_doc(request: Request) -> dict[str, Any]:
    base = str(request.base_url).rstrip("/")
    return {"id": "v2.1", "status": "CURRENT", "version": _text(MAX_VERSION),
            "min_version": _text(MIN_VERSION), "updated": "2013-07-23T11:33:21Z",
            "links": [{"rel": "self", "href": f"{base}/v2.1/"}],
            "media-types": [{"base": "application/json",
                             "type": "application/vnd.openstack.compute+json;version=2.1"}]}


async def versions(request: Request) -> Response:
    return JSONResponse({"versions": [_version_doc(request)]}, 300)


async def version(request: Request) -> Response:
    return JSONResponse({"version": _version_doc(request)})


# ---------------------------------------------------------------------- servers
async def list_servers(request: Request) -> Response:
    return await _servers(request, detail=False)


async def list_servers_detail(request: Request) -> Response:
    return await _servers(request, detail=True)


async def _servers(request: Request, *, detail: bool) -> Response:
    agent = agent_of(request)
    q = request.query_params
    all_projects = q.get("all_tenants", q.get("all_projects", "0")).lower() in ("1", "true")
    if all_projects:  # Nova: 403, not a quiet fall-back to the caller's project
        authorize(request, policies.SERVERS_DETAIL_ALL if detail else policies.SERVERS_INDEX_ALL)
    found = agent.instances(identity_of(request), all_projects)
    if name := q.get("name"):
        try:
            pattern = re.compile(name)
        except (re.error, RecursionError, OverflowError):  # "((((...", "a{99999999999}"
            raise ApiError(400, f"Invalid regular expression for name: {name}") from None
        found = [i for i in found if pattern.search(i.name)]
    if status := q.get("status"):
        found = [i for i in found if i.status == status.upper()]
    if detail:
        body = [server_view(request, i, agent.store.mappings(i.id)) for i in found]
    else:
        body = [{"id": i.id, "name": i.name, "links": links(request, "servers", i.id)}
                for i in found]
    return JSONResponse({"servers": body})


async def show_server(request: Request) -> Response:
    agent = agent_of(request)
    inst = agent.instance(identity_of(request), request.path_params["server_id"])
    return JSONResponse({"server": server_view(request, inst, agent.store.mappings(inst.id))})


async def create_server(request: Request) -> Response:
    agent = agent_of(request)
    identity = identity_of(request)
    body = await body_of(request, "server")
    name = string_of(body, "name", required=True)
    assert name is not None
    qmp = string_of(body, "blockyard:qmp_socket", max_len=1024)
    if qmp is not None:
        authorize(request, policies.SERVERS_ADOPT)
        inst = await agent.adopt_server(identity, name, qmp)
    elif body.get("block_device_mapping_v2") is not None:  # volumes, maybe booting
        flavor = string_of(body, "flavorRef", required=True)
        assert flavor is not None
        plan = boot.parse(body, agent.config.image, version_of(request))
        if plan.devices:
            authorize(request, policies.SERVERS_CREATE_ATTACH_VOLUME)
            inst = await boot.create_server(agent, identity, name, flavor, plan)
        else:  # only the image's own root mapping, as `openstack server create --image` sends
            assert plan.image is not None
            inst = await agent.create_server(identity, name, plan.image, flavor)
    else:
        image = string_of(body, "imageRef", required=True)
        flavor = string_of(body, "flavorRef", required=True)
        assert image is not None and flavor is not None
        inst = await agent.create_server(identity, name, image, flavor)
    return JSONResponse({"server": {
        "id": inst.id, "links": links(request, "servers", inst.id),
        "OS-DCF:diskConfig": "MANUAL", "security_groups": [{"name": "default"}],
        "adminPass": uuid.uuid4().hex[:12]}}, 202)


async def delete_server(request: Request) -> Response:
    await agent_of(request).delete_server(identity_of(request), request.path_params["server_id"])
    return Response(status_code=204)


# ---------------------------------------------------------------------- volume attachments
async def list_attachments(request: Request) -> Response:
    agent = agent_of(request)
    inst = agent.instance(identity_of(request), request.path_params["server_id"])
    return JSONResponse({"volumeAttachments": [attachment_view(request, m)
                                               for m in agent.store.mappings(inst.id)]})


async def show_attachment(request: Request) -> Response:
    agent = agent_of(request)
    inst = agent.instance(identity_of(request), request.path_params["server_id"])
    m = agent.store.mapping_of(inst.id, request.path_params["volume_id"])
    return JSONResponse({"volumeAttachment": attachment_view(request, m)})


# Nova's volume attachment schemas (tag from 2.49, delete_on_termination from 2.79)
ATTACH = schema.body("volumeAttachment", {
    "volumeId": schema.uuid,
    "device": {"type": ["string", "null"],
               "pattern": "(^/dev/x{0,1}[a-z]{0,1}d{0,1})([a-z]+)[0-9]*$"},
}, required=("volumeId",))
ATTACH_V249 = schema.body("volumeAttachment", {
    **ATTACH["properties"]["volumeAttachment"]["properties"],
    "tag": {"type": "string", "minLength": 1, "maxLength": 60, "pattern": "^[^,/]*$"},
}, required=("volumeId",))
ATTACH_V279 = schema.body("volumeAttachment", {
    **ATTACH_V249["properties"]["volumeAttachment"]["properties"],
    "delete_on_termination": {"type": ["boolean", "string"],
                              "enum": [True, "True", "true", "1", False, "False", "false",
                                       "0"]},
}, required=("volumeId",))


def _attach_schema(v: tuple[int, int]) -> dict[str, Any]:
    return ATTACH_V279 if v >= (2, 79) else ATTACH_V249 if v >= (2, 49) else ATTACH


async def create_attachment(request: Request) -> Response:
    agent = agent_of(request)
    v = version_of(request)
    raw = await json_of(request)
    schema.check(raw, _attach_schema(v))
    body: dict[str, Any] = raw["volumeAttachment"]
    volume_id = uuid_of(body["volumeId"], "volumeId")
    device = body.get("device")
    if device is not None and (len(device) > 32 or
                               not re.fullmatch(r"/dev/[a-z]+[a-z0-9]*", device)):
        raise ApiError(400, f"The supplied device path ({device}) is invalid.")
    tag = body.get("tag")
    delete_on_termination = str(body.get("delete_on_termination", False)).lower() in \
        ("true", "1")
    m = await agent.attach(identity_of(request), request.path_params["server_id"], volume_id,
                           device=device, tag=tag,
                           delete_on_termination=delete_on_termination)
    return JSONResponse({"volumeAttachment": attachment_view(request, m)})


async def delete_attachment(request: Request) -> Response:
    await agent_of(request).begin_detach(identity_of(request), request.path_params["server_id"],
                                         request.path_params["volume_id"])
    return Response(status_code=202)


# ---------------------------------------------------------------------- external events
async def external_events(request: Request) -> Response:
    """Nova's os-server-external-events; the agent acts on ``volume-extended``."""
    agent = agent_of(request)
    body = await json_of(request)
    events = body.get("events") if isinstance(body, dict) else None
    if not isinstance(events, list) or not events:
        raise ApiError(400, "Invalid input for field/attribute events.")
    results, found = [], False
    for event in events:
        if not isinstance(event, dict) or not isinstance(event.get("name"), str) or \
                not isinstance(event.get("server_uuid"), str):
            raise ApiError(400, f"Invalid event: {event!r}")
        result = dict(event, code=200, status="completed")
        try:
            agent.store.instance(event["server_uuid"])
        except errors.NotFound:
            result.update(code=404, status="failed")
            results.append(result)
            continue
        found = True
        if event["name"] == "volume-extended" and isinstance(event.get("tag"), str):
            agent.handle_volume_extended(event["server_uuid"], event["tag"])
        results.append(result)
    if not found:
        raise errors.NotFound("Instance", "", "No instances found for any event")
    status = 200 if all(r["code"] == 200 for r in results) else 207
    return JSONResponse({"events": results}, status)


# ---------------------------------------------------------------------- errors, middleware
async def handle_volume_api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, VolumeApiError)
    status = exc.status if 400 <= exc.status < 500 else 503
    return fault(status, exc.message)


async def handle_hypervisor_error(request: Request, exc: Exception) -> Response:
    log.error("%s %s: %s", request.method, request.url.path, exc)
    return fault(500, f"The hypervisor failed: {exc}")


async def handle_injected(request: Request, exc: Exception) -> Response:
    return fault(500, str(exc))


class ComputeMiddleware:
    """Microversion negotiation, a project id in the URL, request ids; like Nova's."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        parts = path.split("/")
        # /v2.1/{project_id}/servers... → /v2.1/servers...
        if len(parts) > 3 and parts[1] == "v2.1" and parts[2] not in _COLLECTIONS:
            scope = dict(scope, path="/".join(parts[:2] + parts[3:]))
        # latin-1, as HTTP defines header bytes: a stray \xff is text, not an exception
        headers = {k.decode("latin-1").lower(): v.decode("latin-1")
                   for k, v in scope["headers"]}
        wanted = headers.get("x-openstack-nova-api-version")
        if "openstack-api-version" in headers:
            service, _, value = headers["openstack-api-version"].strip().partition(" ")
            if service.lower() == "compute":
                wanted = value.strip()
        try:
            v = _negotiate(wanted)
        except ApiError as exc:
            await fault(exc.status, exc.message)(scope, receive, send)
            return
        scope["compute_version"] = v
        request_id = "req-" + str(uuid.uuid4())

        async def send_with_headers(message: Any) -> None:
            if message["type"] == "http.response.start":
                extra = [(b"openstack-api-version", f"compute {_text(v)}".encode()),
                         (b"x-openstack-nova-api-version", _text(v).encode()),
                         (b"vary", b"OpenStack-API-Version, X-OpenStack-Nova-API-Version"),
                         (b"x-openstack-request-id", request_id.encode()),
                         (b"x-compute-request-id", request_id.encode())]
                message = dict(message, headers=list(message.get("headers", [])) + extra)
            await send(message)

        await self.app(scope, receive, send_with_headers)


def _negotiate(wanted: str | None) -> tuple[int, int]:
    if wanted is None or not wanted.strip():
        return MIN_VERSION
    wanted = wanted.strip().lower()
    if wanted == "latest":
        return MAX_VERSION
    match = _VERSION_RE.match(wanted)
    if not match:
        raise ApiError(400, f"Invalid API version request string: {wanted}")
    v = (int(match[1]), int(match[2]))
    if not MIN_VERSION <= v <= MAX_VERSION:
        raise ApiError(406, f"Version {wanted} is not supported by the API. Minimum is "
                            f"{_text(MIN_VERSION)} and maximum is {_text(MAX_VERSION)}.")
    return v


P = policies
ROUTES = [
    *route("/", versions, "GET", None),
    *route("/v2.1", version, "GET", None, slash=True),
    *route("/v2.1/servers", list_servers, "GET", P.SERVERS_INDEX, slash=True),
    *route("/v2.1/servers", create_server, "POST", P.SERVERS_CREATE),
    *route("/v2.1/servers/detail", list_servers_detail, "GET", P.SERVERS_DETAIL, slash=True),
    *route("/v2.1/servers/{server_id}", show_server, "GET", P.SERVERS_SHOW),
    *route("/v2.1/servers/{server_id}", delete_server, "DELETE", P.SERVERS_DELETE),
    *route("/v2.1/servers/{server_id}/os-volume_attachments", list_attachments, "GET",
            P.ATTACHMENTS_INDEX),
    *route("/v2.1/servers/{server_id}/os-volume_attachments", create_attachment, "POST",
            P.ATTACHMENTS_CREATE),
    *route("/v2.1/servers/{server_id}/os-volume_attachments/{volume_id}", show_attachment,
            "GET", P.ATTACHMENTS_SHOW),
    *route("/v2.1/servers/{server_id}/os-volume_attachments/{volume_id}", delete_attachment,
            "DELETE", P.ATTACHMENTS_DELETE),
    *route("/v2.1/servers/{server_id}/os-volume_attachments/{volume_id}",
            swap_api.update_attachment, "PUT", P.ATTACHMENTS_UPDATE),
    *route("/v2.1/os-server-external-events", external_events, "POST", P.EVENTS_CREATE),
    *actions.ROUTES,
    *catalog.ROUTES,
    *proxies.ROUTES,
    *route("/v2.1/os-assisted-volume-snapshots", assisted.create, "POST",
            P.ASSISTED_SNAPSHOTS_CREATE),
]

HANDLERS: dict[Any, Callable[[Request, Exception], Awaitable[Response]]] = {
    VolumeApiError: handle_volume_api_error,
    errors.BlockyardError: http_errors.handle_domain_error,
    ApiError: http_errors.handle_api_error,
    HTTPException: http_errors.handle_http_error,
    HypervisorError: handle_hypervisor_error,
    InjectedFailure: handle_injected,
}
# Anything else is answered by `guard.CatchAll`, which keeps the connection.


#: what answers without authentication: version discovery (as in Nova's paste pipeline)
PUBLIC_PATHS = frozenset({"/", "/v2.1", "/v2.1/"}) | catalog.PUBLIC_PATHS


def is_public(method: str, path: str) -> bool:
    return method in ("GET", "HEAD") and path in PUBLIC_PATHS


def middleware(config: ComputeConfig) -> list[Middleware]:
    """Outermost first: microversion and request-id headers on every answer (a 401 and the
    catch-all's too); authentication after the project id left the path and after the size
    limits, before any endpoint. A bad [keystone_authtoken] is a ConfigError here."""
    auth = config.auth
    validator = KeystoneValidator(auth.keystone_authtoken) if auth.keystone else None
    return [Middleware(ComputeMiddleware), Middleware(guard.CatchAll),
            Middleware(guard.RequestLimits),
            Middleware(Authenticate, validator=validator, public=is_public)]


def create_app(config: ComputeConfig) -> Starlette:
    """The agent's app; configuration errors (policy file, keystone options) are raised
    here, before anything listens."""
    policy = ComputePolicy(config.auth.policy_file)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        agent = Agent(config, policy)
        await agent.start()
        app.state.agent = agent
        try:
            yield
        finally:
            await agent.close()

    return Starlette(routes=ROUTES, middleware=middleware(config),
                     exception_handlers=HANDLERS, lifespan=lifespan)
