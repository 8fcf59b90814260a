"""The wire edge shared by every endpoint: microversions, request ids, project-in-URL, the
caller's identity, JSON bodies and links.

`CinderMiddleware` is a plain ASGI middleware (no BaseHTTPMiddleware: it costs a task per
request). It negotiates ``OpenStack-API-Version: volume X.Y`` and echoes it with ``Vary``, sets
Cinder's request-id headers, and moves a project id in the URL (``/v3/{project_id}/...``)
out of the path into ``request.state.url_project`` so one route table serves both URL forms.
"""

from __future__ import annotations

import random
import re
import uuid
from collections.abc import Callable
from typing import Any, ParamSpec, TypeVar

from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers, MutableHeaders
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from blockyard.rest import guard
from blockyard.rest.auth import identity as identity
from blockyard.rest.errors import ApiError, SafeJSONResponse, fault
from blockyard.service.request_context import REQUEST_ID
from blockyard.service.runtime import Runtime

MIN_MINOR = 0
MAX_MINOR = 71
MIN_VERSION = "3.0"
MAX_VERSION = f"3.{MAX_MINOR}"

T = TypeVar("T")
P = ParamSpec("P")

#: request ids need to be unique, not secret: no system call per request for them
_random = random.Random()

_PROJECT_IN_URL = re.compile(r"^/v3/([0-9a-fA-F-]+)(/.*)?$")
_VERSION = re.compile(r"^([1-9]\d*)\.([1-9]\d*|0)$")


def parse_microversion(header: str | None) -> tuple[int, str]:
    """The requested minor version of 3.x and the string to echo; raises ApiError."""
    if header is None:
        return MIN_MINOR, MIN_VERSION
    value = None
    for part in header.split(","):
        service, _, version = part.strip().partition(" ")
        if service.lower() == "volume":
            value = version.strip()
    if value is None:
        return MIN_MINOR, MIN_VERSION
    if value.lower() == "latest":
        return MAX_MINOR, MAX_VERSION
    m = _VERSION.match(value)
    if m is None:
        raise ApiError(400, f"API Version String {value} is of invalid format. Must be of "
                            f"format MajorNum.MinorNum.")
    major, minor = int(m.group(1)), int(m.group(2))
    if major != 3 or not MIN_MINOR <= minor <= MAX_MINOR:
        raise ApiError(406, f"Version {value} is not supported by the API. Minimum is "
                            f"{MIN_VERSION} and maximum is {MAX_VERSION}.")
    return minor, value


class CinderMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = f"req-{uuid.UUID(int=_random.getrandbits(128), version=4)}"
        state = scope.setdefault("state", {})
        state["request_id"] = request_id
        REQUEST_ID.set(request_id)  # for what the request queues (see request_context)
        path: str = scope["path"]
        echo = MIN_VERSION
        error: Response | None = None
        if path.startswith("/v3"):
            m = _PROJECT_IN_URL.match(path)
            if m is not None and m.group(2) not in (None, "/"):
                state["url_project"] = m.group(1)
                scope = dict(scope, path="/v3" + m.group(2), raw_path=None)
            header = Headers(scope=scope).get("openstack-api-version")
            try:
                minor, echo = parse_microversion(header)
                state["mv"] = minor
            except ApiError as exc:
                echo = (header or "").partition(" ")[2].strip() or MIN_VERSION
                error = fault(exc.status, exc.message)
        else:
            state["mv"] = MIN_MINOR

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                headers["OpenStack-API-Version"] = f"volume {echo}"
                headers["Vary"] = "OpenStack-API-Version"
                headers["X-OpenStack-Request-Id"] = request_id
                headers["X-Compute-Request-Id"] = request_id
            await send(message)

        if error is not None:
            await error(scope, receive, send_with_headers)
            return
        await self.app(scope, receive, send_with_headers)


# ---------------------------------------------------------------------------- per request


def runtime(request: Request) -> Runtime:
    rt: Runtime = request.app.state.runtime
    return rt


async def in_thread(fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    """Run ``fn(*args, **kwargs)`` on a worker thread: the one way an endpoint moves blocking
    work (a driver's report, a backend call, a slow hash) off the event loop."""
    return await run_in_threadpool(fn, *args, **kwargs)


async def call(request: Request, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run the service function ``fn(runtime, identity, *args, **kwargs)`` for this request.

    Service functions that do database work only run on the event loop where the database
    allows it (see `Database.inline`), else on a worker thread.
    """
    rt, who = runtime(request), identity(request)
    if rt.db.inline:
        return fn(rt, who, *args, **kwargs)
    return await in_thread(fn, rt, who, *args, **kwargs)


def mv(request: Request) -> int:
    """The negotiated minor version of 3.x."""
    return int(getattr(request.state, "mv", MIN_MINOR))


def require_since(request: Request, minor: int) -> None:
    """Below the microversion that brought it, an endpoint does not exist: Cinder's plain 404
    (group endpoints word theirs differently: `blockyard.api.group_types.require_mv`)."""
    if mv(request) < minor:
        raise ApiError(404, "The resource could not be found.")


async def json_body(request: Request) -> dict[str, Any]:
    """The request body as a JSON object, or 400 as Cinder words it (bounded and checked by
    `guard.parse_json`: no deep nesting, huge numbers, NUL or lone surrogates get through)."""
    raw = await request.body()
    if not raw:
        raise ApiError(400, "Missing request body")
    body = guard.parse_json(raw)
    if not isinstance(body, dict):
        raise ApiError(400, "Malformed request body")
    return body


def base_url(request: Request) -> str:
    """scheme://host:port as the client addressed us (worked out once per request)."""
    cached: str | None = getattr(request.state, "base_url", None)
    if cached is None:
        cached = request.state.base_url = str(request.base_url).rstrip("/")
    return cached


def project_prefix(request: Request) -> str:
    project = getattr(request.state, "url_project", None)
    return f"/{project}" if project else ""


def links(request: Request, collection: str, ident: str) -> list[dict[str, str]]:
    root, prefix = base_url(request), project_prefix(request)
    return [
        {"rel": "self", "href": f"{root}/v3{prefix}/{collection}/{ident}"},
        {"rel": "bookmark", "href": f"{root}{prefix}/{collection}/{ident}"},
    ]


def next_link(request: Request, marker: str) -> list[dict[str, str]]:
    """The `<collection>_links` entry for the next page: same query, new marker."""
    params = [(k, v) for k, v in request.query_params.multi_items() if k != "marker"]
    params.append(("marker", marker))
    from urllib.parse import urlencode

    root, prefix = base_url(request), project_prefix(request)
    path = request.url.path
    return [{"rel": "next", "href": f"{root}{path.replace('/v3', '/v3' + prefix, 1)}?"
                                    f"{urlencode(params)}"}]


def ok(body: Any, status: int = 200) -> Response:
    return SafeJSONResponse(body, status)


def accepted() -> Response:
    return Response(status_code=202)
