"""The metadata sub-resources (``/{collection}/{id}/metadata[/{key}]``) of volumes and
snapshots, built once for any owner."""

from __future__ import annotations

from dataclasses import dataclass

from starlette.requests import Request
from starlette.responses import Response

from blockyard.api import wire
from blockyard.api.routes import PolicyRoute, route
from blockyard.errors import NotFound
from blockyard.rest import schema
from blockyard.rest.errors import ApiError
from blockyard.service import metadata
from blockyard.service.metadata import Owner


@dataclass(frozen=True)
class Rules:
    """The policy rules of one owner's metadata: read, add (POST), replace or set (PUT), and
    delete a key (Cinder's volume_metadata and snapshot_metadata rules)."""

    get: str
    create: str
    update: str
    delete: str


VOLUME_RULES = Rules("volume:get_volume_metadata", "volume:create_volume_metadata",
                     "volume:update_volume_metadata", "volume:delete_volume_metadata")
SNAPSHOT_RULES = Rules("volume:get_snapshot_metadata", "volume:update_snapshot_metadata",
                       "volume:update_snapshot_metadata", "volume:delete_snapshot_metadata")

# Cinder's volume_metadata.py / snapshot_metadata.py schemas
CREATE = {"type": "object", "properties": {"metadata": schema.extra_specs},
          "required": ["metadata"], "additionalProperties": False}
UPDATE = {"type": "object",
          "properties": {"meta": {**schema.extra_specs, "minProperties": 1,
                                  "maxProperties": 1}},
          "required": ["meta"], "additionalProperties": False}


def routes(collection: str, owner: Owner, rules: Rules) -> list[PolicyRoute]:
    """GET/POST/PUT on the whole set and GET/PUT/DELETE on one key, each under its rule."""

    async def show(request: Request) -> Response:
        meta = await wire.in_thread(metadata.show, wire.runtime(request),
                                    wire.identity(request), owner, request.path_params["id"])
        return wire.ok({"metadata": meta})

    async def write(request: Request, replace: bool) -> Response:
        body = await wire.json_body(request)
        schema.check(body, CREATE)
        meta: dict[str, str] = body["metadata"]
        result = await wire.in_thread(metadata.set_items, wire.runtime(request),
                                      wire.identity(request), owner,
                                      request.path_params["id"], meta, replace=replace)
        return wire.ok({"metadata": result})

    async def merge(request: Request) -> Response:
        return await write(request, replace=False)

    async def replace(request: Request) -> Response:
        return await write(request, replace=True)

    async def show_key(request: Request) -> Response:
        meta = await wire.in_thread(metadata.show, wire.runtime(request),
                                    wire.identity(request), owner, request.path_params["id"])
        key = request.path_params["key"]
        if key not in meta:
            raise NotFound("Metadata", key, f"Metadata key {key} could not be found.")
        return wire.ok({"meta": {key: meta[key]}})

    async def update_key(request: Request) -> Response:
        body = await wire.json_body(request)
        key = request.path_params["key"]
        schema.check(body, UPDATE)
        meta: dict[str, str] = body["meta"]
        if key not in meta:
            raise ApiError(400, "Request body and URI mismatch")
        await wire.in_thread(metadata.set_items, wire.runtime(request),
                             wire.identity(request), owner, request.path_params["id"],
                             meta, replace=False)
        return wire.ok({"meta": meta})

    async def delete_key(request: Request) -> Response:
        await wire.in_thread(metadata.delete_key, wire.runtime(request),
                             wire.identity(request), owner, request.path_params["id"],
                             request.path_params["key"])
        return Response(status_code=200)

    base = f"/v3/{collection}/{{id}}/metadata"
    return [
        route(base, show, "GET", rules.get),
        route(base, merge, "POST", rules.create),
        route(base, replace, "PUT", rules.update),
        route(f"{base}/{{key}}", show_key, "GET", rules.get),
        route(f"{base}/{{key}}", update_key, "PUT", rules.update),
        route(f"{base}/{{key}}", delete_key, "DELETE", rules.delete),
    ]
