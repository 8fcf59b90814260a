"""What every endpoint of the agent's API shares: the request's context (agent, caller,
microversion), input checks in Nova's words, and routes that carry their policy rule.

The feature modules (`api`, and the endpoints of servers, volumes, images, ...) import from
here, and `api` assembles their routes into one app.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime
from typing import Any, TypeVar

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from blockyard.rest import guard
from blockyard.rest.auth import identity as identity_of
from blockyard.rest.errors import ApiError

from .manager import Agent

MIN_VERSION = (2, 1)
#: Nova's cap on one page of a list (``[api] max_limit``)
MAX_LIMIT = 1000
T = TypeVar("T")


# ---------------------------------------------------------------------- request context
def agent_of(request: Request) -> Agent:
    agent: Agent = request.app.state.agent
    return agent


def authorize(request: Request, rule: str, target: dict[str, Any] | None = None) -> None:
    """403 unless the caller passes `rule` for `target` (default: the caller's project)."""
    agent_of(request).policy.enforce(identity_of(request), rule, target)


def version_of(request: Request) -> tuple[int, int]:
    v: tuple[int, int] = request.scope.get("compute_version", MIN_VERSION)
    return v


async def json_of(request: Request) -> Any:
    """The request body as JSON, bounded and checked as the volume API's (`guard`)."""
    raw = await request.body()
    if not raw:
        raise ApiError(400, "Malformed request body")
    return guard.parse_json(raw)


async def body_of(request: Request, key: str) -> dict[str, Any]:
    body = await json_of(request)
    if not isinstance(body, dict) or not isinstance(body.get(key), dict):
        raise ApiError(400, f"Invalid input for field/attribute {key}. Value: {body!r}.")
    return dict(body[key])


def string_of(body: dict[str, Any], key: str, *, required: bool = False,
            max_len: int = 255) -> str | None:
    value = body.get(key)
    if value is None:
        if required:
            raise ApiError(400, f"Invalid input for field/attribute {key}: it is required.")
        return None
    if not isinstance(value, str) or not value.strip() or len(value) > max_len:
        raise ApiError(400, f"Invalid input for field/attribute {key}. Value: {value!r}.")
    return value


def uuid_of(value: str | None, key: str) -> str:
    try:
        return str(uuid.UUID(str(value)))
    except ValueError:
        raise ApiError(400, f"Invalid input for field/attribute {key}. Value: {value}. "
                            f"'{value}' is not a 'uuid'") from None


# ---------------------------------------------------------------------- views
def timestamp(t: datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


def links(request: Request, kind: str, ident: str) -> list[dict[str, str]]:
    base = str(request.base_url).rstrip("/")
    return [{"rel": "self", "href": f"{base}/v2.1/{kind}/{ident}"},
            {"rel": "bookmark", "href": f"{base}/{kind}/{ident}"}]


Endpoint = Callable[[Request], Awaitable[Response]]


class PolicyRoute(Route):
    """A route with its policy rule, checked before the endpoint runs (None: public).

    `max_version`: the last microversion the route exists at (Nova's proxies of the image and
    volume APIs end at 2.35); above it the route is 404 before anything else, as in Nova."""

    def __init__(self, path: str, endpoint: Endpoint, method: str, rule: str | None,
                 max_version: tuple[int, int] | None = None) -> None:
        self.rule = rule
        self.max_version = max_version
        super().__init__(path, up_to(max_version, guarded_by(endpoint, rule)),
                         methods=[method], name=endpoint.__name__)


def guarded_by(endpoint: Endpoint, rule: str | None) -> Endpoint:
    if rule is None:
        return endpoint

    async def guarded(request: Request) -> Response:
        server_id = request.path_params.get("server_id")
        if server_id is None:
            authorize(request, rule)
        else:  # 404 for a server the caller may not know of, then the rule on its project
            inst = agent_of(request).instance(identity_of(request), server_id)
            authorize(request, rule, {"project_id": inst.project_id, "user_id": inst.user_id})
        return await endpoint(request)

    return guarded


#: the last microversion of Nova's proxies of other services (images, os-volumes, ...)
MAX_PROXY_VERSION = (2, 35)


def up_to(max_version: tuple[int, int] | None, endpoint: Endpoint) -> Endpoint:
    if max_version is None:
        return endpoint

    async def versioned(request: Request) -> Response:
        if version_of(request) > max_version:
            raise ApiError(404, "The resource could not be found.")
        return await endpoint(request)

    return versioned


def route(path: str, endpoint: Endpoint, method: str, rule: str | None, *,
           slash: bool = False, max_version: tuple[int, int] | None = None) -> list[Route]:
    """The route, and with `slash` the same with a trailing slash."""
    paths = [path, path + "/"] if slash else [path]
    return [PolicyRoute(p, endpoint, method, rule, max_version) for p in paths]


def query_int(request: Request, key: str, *, minimum: int = 0) -> int | None:
    """A non-negative integer query parameter (limit, offset, minRam...), or None; 400 in
    Nova's words for anything else."""
    value = request.query_params.get(key)
    if value is None:
        return None
    try:
        number = int(value)
    except ValueError:
        raise ApiError(400, f"{key} param must be an integer") from None
    if number < minimum or number > 2**63 - 1:
        raise ApiError(400, f"{key} param must be positive")
    return number


def page(request: Request, items: Sequence[T], key: Callable[[T], str]) -> list[T]:
    """Nova's paging: ``offset``, or the items after the one whose key is ``marker``; at
    most ``limit`` of them (never more than MAX_LIMIT)."""
    limit = query_int(request, "limit")
    start = query_int(request, "offset") or 0
    marker = request.query_params.get("marker")
    if marker is not None:
        keys = [key(i) for i in items]
        if marker not in keys:
            raise ApiError(400, f"marker [{marker}] not found")
        start = keys.index(marker) + 1
    count = MAX_LIMIT if limit is None else min(limit, MAX_LIMIT)
    return list(items[start:start + count])
