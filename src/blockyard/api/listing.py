"""Query-string parsing shared by the list endpoints: limit, marker, offset, sort, with_count."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from blockyard.api import validate, wire
from blockyard.rest.errors import ApiError
from blockyard.service.listing import MAX_LIMIT, ListParams, Page

#: query keys that steer the listing itself, never filters
PAGING_KEYS = {"limit", "marker", "offset", "sort", "sort_key", "sort_dir", "with_count",
               "all_tenants"}


def parse_sort(request: Request) -> tuple[tuple[str, str], ...]:
    q = request.query_params
    keys: list[tuple[str, str]] = []
    if q.get("sort"):
        if q.get("sort_key") or q.get("sort_dir"):
            raise ApiError(400, "Invalid input received: The 'sort_key' and 'sort_dir' "
                                "parameters are deprecated and cannot be used with the 'sort' "
                                "parameter.")
        for part in q["sort"].split(","):
            key, _, direction = part.strip().partition(":")
            if not key:
                continue
            keys.append((key.strip(), (direction or "desc").strip().lower()))
    elif q.get("sort_key") or q.get("sort_dir"):
        keys.append((q.get("sort_key", "created_at"), q.get("sort_dir", "desc").lower()))
    return tuple(keys)


def parse_params(request: Request) -> ListParams:
    q = request.query_params
    limit = validate.query_int(q.get("limit"), "limit", minimum=0, maximum=None)
    offset = validate.query_int(q.get("offset"), "offset", minimum=0)
    with_count = False
    if "with_count" in q:
        if wire.mv(request) < 45:
            raise ApiError(400, "Invalid input received: with_count requires microversion "
                                "3.45 or later.")
        with_count = validate.query_bool(q.get("with_count"), "with_count")
    filters = {k: v for k, v in q.items() if k not in PAGING_KEYS}
    return ListParams(
        limit=None if limit is None else min(limit, MAX_LIMIT),
        marker=q.get("marker") or None,
        offset=offset,
        sort=parse_sort(request),
        with_count=with_count,
        filters=filters,
    )


def page_body(request: Request, key: str, items: list[Any], page: Page,
              links_key: str | None = None) -> dict[str, Any]:
    """A list response: the rendered `items` under `key`, the next-page link (under
    ``<key>_links`` unless Cinder names it otherwise) and the count when asked for."""
    body: dict[str, Any] = {key: items}
    if page.next_marker is not None:
        body[links_key or f"{key}_links"] = wire.next_link(request, page.next_marker)
    if page.count is not None:
        body["count"] = page.count
    return body


Endpoint = Callable[[Request], Awaitable[Response]]


def summary_and_detail(
        list_: Callable[[Request, bool], Awaitable[Response]]) -> tuple[Endpoint, Endpoint]:
    """The two GET endpoints of a collection, ``/x`` and ``/x/detail``, from the one function
    that lists it and takes whether to render the detailed view."""

    async def list_summary(request: Request) -> Response:
        return await list_(request, False)

    async def list_detail(request: Request) -> Response:
        return await list_(request, True)

    return list_summary, list_detail


#: the microversion that brought ``key~=value`` (LIKE) filters
LIKE_FILTER_MV = 34


def like_allowed(request: Request) -> bool:
    """May this request's filters use ``key~=value``?"""
    return wire.mv(request) >= LIKE_FILTER_MV


def all_tenants(request: Request) -> bool:
    value = request.query_params.get("all_tenants")
    return value is not None and validate.query_bool(value or "1", "all_tenants")
