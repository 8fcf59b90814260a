"""/v3/os-volume-transfer (3.0+) and /v3/volume-transfers (3.55+): offer a volume to another
project, list and show offers, accept one with its auth key, withdraw one.

Both paths serve the same offers. As in Cinder, only ``volume-transfers`` takes
``no_snapshots`` (3.55); the views grow with the microversion (3.55 ``no_snapshots``, 3.57
``source_project_id``, ``destination_project_id``, ``accepted``), and ``volume-transfers``
lists page and sort from 3.59 (before that, and always on ``os-volume-transfer``, oldest
first).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from blockyard.api import listing, wire
from blockyard.api.routes import route
from blockyard.api.views import iso
from blockyard.rest import schema
from blockyard.service import transfers
from blockyard.service.transfers import TransferView

NEW_PATH_MV, SNAPSHOTS_MV, HISTORY_MV, PAGINATION_MV = 55, 55, 57, 59

#: links name this collection, whichever path was used (as Cinder's view builder does)
COLLECTION = "os-volume-transfer"

_name = {"oneOf": [{"type": "string", "format": "name_skip_leading_trailing_spaces"},
                   {"type": "null"}]}
CREATE = schema.body("transfer", {"volume_id": schema.uuid, "name": _name},
                     required=("volume_id",))
CREATE_V355 = schema.body("transfer", {"volume_id": schema.uuid, "name": _name,
                                       "no_snapshots": schema.boolean},
                          required=("volume_id",))
ACCEPT = schema.body("accept", {"auth_key": {"type": ["string", "integer"]}},
                     required=("auth_key",))

_TRUE = {"true", "1", "on", "yes", "y", "t"}


def _new_path(request: Request) -> bool:
    """Was the request made on /volume-transfers (3.55+), not on os-volume-transfer?"""
    new = "/volume-transfers" in request.url.path
    if new:
        wire.require_since(request, NEW_PATH_MV)
    return new


def summary_view(request: Request, t: TransferView) -> dict[str, Any]:
    return {"id": t.id, "volume_id": t.volume_id, "name": t.name,
            "links": wire.links(request, COLLECTION, t.id)}


def detail_view(request: Request, t: TransferView) -> dict[str, Any]:
    body: dict[str, Any] = {"id": t.id, "created_at": iso(t.created_at), "name": t.name,
                            "volume_id": t.volume_id}
    if t.auth_key is not None:
        body["auth_key"] = t.auth_key
    body["links"] = wire.links(request, COLLECTION, t.id)
    mv = wire.mv(request)
    if mv >= SNAPSHOTS_MV:
        body["no_snapshots"] = t.no_snapshots
    if mv >= HISTORY_MV:
        body["destination_project_id"] = t.destination_project_id
        body["source_project_id"] = t.source_project_id
        body["accepted"] = t.accepted
    return body


async def create(request: Request) -> Response:
    new = _new_path(request)
    body = await wire.json_body(request)
    schema.check(body, CREATE_V355 if new and wire.mv(request) >= SNAPSHOTS_MV else CREATE)
    spec = body["transfer"]
    name = spec.get("name")
    no_snapshots = str(spec.get("no_snapshots", False)).strip().lower() in _TRUE
    # hashing the key takes real CPU time: off the event loop
    t = await wire.in_thread(transfers.create, wire.runtime(request),
                             wire.identity(request), spec["volume_id"],
                             None if name is None else name.strip(), no_snapshots)
    return wire.ok({"transfer": detail_view(request, t)}, 202)


async def _list(request: Request, detail: bool) -> Response:
    new = _new_path(request)
    params = listing.parse_params(request)
    if not (new and wire.mv(request) >= PAGINATION_MV):
        params = dataclasses.replace(params, marker=None,
                                     sort=(("created_at", "asc"), ("id", "asc")))
    page = await wire.call(request, transfers.list_transfers, params,
                           all_projects=listing.all_tenants(request))
    view = detail_view if detail else summary_view
    return wire.ok(listing.page_body(request, "transfers", [view(request, t) for t in page.rows],
                                     page))


list_summary, list_detail = listing.summary_and_detail(_list)


async def show(request: Request) -> Response:
    _new_path(request)
    t = await wire.call(request, transfers.get, request.path_params["id"])
    return wire.ok({"transfer": detail_view(request, t)})


async def accept(request: Request) -> Response:
    _new_path(request)
    body = await wire.json_body(request)
    schema.check(body, ACCEPT)
    # always on a worker thread, not through wire.call: checking the key costs a scrypt hash
    # (tens of ms), which must not stall the event loop even where the database runs inline
    t = await wire.in_thread(transfers.accept, wire.runtime(request), wire.identity(request),
                             request.path_params["id"], str(body["accept"]["auth_key"]))
    return wire.ok({"transfer": summary_view(request, t)}, 202)


async def delete(request: Request) -> Response:
    _new_path(request)
    await wire.call(request, transfers.delete_transfer, request.path_params["id"])
    return wire.accepted()


routes = [
    declared
    for prefix in ("/v3/os-volume-transfer", "/v3/volume-transfers")
    for declared in (
        route(prefix, list_summary, "GET", "volume:get_all_transfers"),
        route(prefix, create, "POST", "volume:create_transfer"),
        route(f"{prefix}/detail", list_detail, "GET", "volume:get_all_transfers"),
        route(f"{prefix}/{{id}}", show, "GET", "volume:get_transfer"),
        route(f"{prefix}/{{id}}", delete, "DELETE", "volume:delete_transfer"),
        route(f"{prefix}/{{id}}/accept", accept, "POST", "volume:accept_transfer"),
    )
]
