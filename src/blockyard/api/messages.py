"""/v3/messages (3.3+): the user messages of the caller's project; list, show, delete.

From 3.5 the list takes Cinder's paging (limit, marker, offset), sort and filters
(resource_uuid, resource_type, event_id, request_id, message_level).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from blockyard.api import listing, wire
from blockyard.api.routes import route
from blockyard.api.views import iso
from blockyard.db.models import Message
from blockyard.service import messages

MESSAGES_MV, PAGINATION_MV = 3, 5


def _require(request: Request) -> None:
    wire.require_since(request, MESSAGES_MV)


def message_view(request: Request, m: Message) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": m.id,
        "event_id": m.event_id,
        "user_message": messages.user_message(m.action_id, m.detail_id),
        "message_level": m.message_level,
        "created_at": iso(m.created_at),
        "guaranteed_until": iso(m.expires_at),
        "request_id": m.request_id or "",
        "links": wire.links(request, "messages", m.id),
    }
    if m.resource_type:
        body["resource_type"] = m.resource_type
    if m.resource_uuid:
        body["resource_uuid"] = m.resource_uuid
    return body


async def list_messages(request: Request) -> Response:
    _require(request)
    params = listing.parse_params(request)
    if wire.mv(request) < PAGINATION_MV:  # before 3.5 the query string is not looked at
        params = dataclasses.replace(params, limit=None, marker=None, offset=None, sort=(),
                                     with_count=False, filters={})
    page = await wire.call(request, messages.list_messages, params,
                           all_projects=listing.all_tenants(request))
    return wire.ok(listing.page_body(
        request, "messages", [message_view(request, m) for m in page.rows], page))


async def show(request: Request) -> Response:
    _require(request)
    m = await wire.call(request, messages.get, request.path_params["id"])
    return wire.ok({"message": message_view(request, m)})


async def delete(request: Request) -> Response:
    _require(request)
    await wire.call(request, messages.delete_message, request.path_params["id"])
    return Response(status_code=204)


routes = [
    route("/v3/messages", list_messages, "GET", "message:get_all"),
    route("/v3/messages/{id}", show, "GET", "message:get"),
    route("/v3/messages/{id}", delete, "DELETE", "message:delete"),
]
