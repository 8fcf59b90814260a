"""/v3/qos-specs: QoS spec sets and their association with volume types (admin only).

Cinder answers create with 200 (its api-ref says 202; the real service and Tempest say 200),
update by echoing the request body, and the association calls are GETs with
``?vol_type_id=``.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from blockyard.api import listing, validate, wire
from blockyard.api.routes import route
from blockyard.db.models import QosSpecs
from blockyard.rest.errors import ApiError
from blockyard.service import qos


def _summary(q: QosSpecs) -> dict[str, Any]:
    return {"id": q.id, "name": q.name, "consumer": q.consumer, "specs": dict(q.specs)}


def _detail(request: Request, q: QosSpecs) -> dict[str, Any]:
    return {"qos_specs": _summary(q), "links": wire.links(request, "qos-specs", q.id)}


def _spec_values(specs: dict[str, Any], field: str) -> dict[str, str]:
    """Spec values as strings; numbers and booleans are taken as their text, as Cinder stores
    whatever it is given in a string column. A nested ``"specs": {...}`` (what openstacksdk
    sends for its `specs` attribute) is taken as flat keys, which is what it means."""
    nested = specs.get("specs")
    if isinstance(nested, dict):
        specs = {**{k: v for k, v in specs.items() if k != "specs"}, **nested}
    result = {}
    for key, value in specs.items():
        if not isinstance(key, str) or not 1 <= len(key) <= 255:
            raise validate.invalid(field, specs, f"{key!r} is not a valid key")
        if isinstance(value, bool | int | float):
            value = str(value)
        if not isinstance(value, str):
            raise validate.invalid(f"{field}/{key}", value, f"{value!r} is not of type "
                                                            f"'string'")
        if len(value) > 255:
            raise validate.invalid(f"{field}/{key}", value, f"{value!r} is too long")
        result[key] = value
    return result


def _vol_type_id(request: Request) -> str:
    type_id = request.query_params.get("vol_type_id")
    if not type_id:
        raise ApiError(400, "Volume Type id must not be None.")
    return type_id


# ---------------------------------------------------------------------------- endpoints


async def list_specs(request: Request) -> Response:
    params = listing.parse_params(request)
    filters = {k: v for k, v in params.filters.items() if k in qos.FILTERABLE}
    if set(params.filters) - qos.FILTERABLE:
        page_rows: list[QosSpecs] = []  # Cinder: a filter on no column matches nothing
        next_marker = None
    else:
        page = await wire.in_thread(qos.list_specs, wire.runtime(request), params, filters)
        page_rows, next_marker = page.rows, page.next_marker
    body: dict[str, Any] = {"qos_specs": [_summary(q) for q in page_rows]}
    if next_marker is not None:
        body["qos_specs_links"] = wire.next_link(request, next_marker)
    return wire.ok(body)


async def create(request: Request) -> Response:
    body = await wire.json_body(request)
    spec = dict(validate.section(body, "qos_specs"))
    validate.no_extra_keys(body, {"qos_specs"})
    if "name" not in spec:
        raise validate.invalid("qos_specs", spec, "'name' is a required property")
    name = validate.string(spec.pop("name"), "name", nullable=False)
    assert name is not None
    name = name.strip()
    if not name:
        raise validate.invalid("name", name, "An invalid 'name' value was provided. The "
                                             "'name' can not be empty.")
    consumer = spec.pop("consumer", None)
    consumer = "back-end" if consumer is None else consumer
    if not isinstance(consumer, str):
        raise validate.invalid("consumer", consumer, f"{consumer!r} is not of type 'string'")
    specs = _spec_values(spec, "qos_specs")
    q = await wire.in_thread(qos.create, wire.runtime(request), name, consumer, specs)
    return wire.ok(_detail(request, q))


async def show(request: Request) -> Response:
    q = await wire.in_thread(qos.get, wire.runtime(request), request.path_params["id"])
    return wire.ok(_detail(request, q))


async def update(request: Request) -> Response:
    body = await wire.json_body(request)
    spec = validate.section(body, "qos_specs")
    validate.no_extra_keys(body, {"qos_specs"})
    specs = _spec_values(spec, "qos_specs")
    await wire.in_thread(qos.set_keys, wire.runtime(request), request.path_params["id"], specs)
    return wire.ok({"qos_specs": specs})


async def delete(request: Request) -> Response:
    force = validate.query_bool(request.query_params.get("force"), "force")
    await wire.in_thread(qos.delete, wire.runtime(request), request.path_params["id"], force)
    return wire.accepted()


async def delete_keys(request: Request) -> Response:
    body = await wire.json_body(request)
    validate.no_extra_keys(body, {"keys"})
    keys = body.get("keys")
    if "keys" not in body:
        raise validate.invalid("body", body, "'keys' is a required property")
    if not isinstance(keys, list):
        raise validate.invalid("keys", keys, f"{keys!r} is not of type 'array'")
    for key in keys:
        if not isinstance(key, str) or not 1 <= len(key) <= 255:
            raise validate.invalid("keys", keys, f"{key!r} is not a valid key")
    if len(set(keys)) != len(keys):
        raise validate.invalid("keys", keys, f"{keys!r} has non-unique elements")
    await wire.in_thread(qos.delete_keys, wire.runtime(request), request.path_params["id"], keys)
    return wire.accepted()


async def associations(request: Request) -> Response:
    rows = await wire.in_thread(qos.associations, wire.runtime(request), request.path_params["id"])
    return wire.ok({"qos_associations": [
        {"association_type": "volume_type", "name": name, "id": type_id}
        for type_id, name in rows]})


async def associate(request: Request) -> Response:
    type_id = _vol_type_id(request)
    await wire.in_thread(qos.associate, wire.runtime(request), request.path_params["id"], type_id)
    return wire.accepted()


async def disassociate(request: Request) -> Response:
    type_id = _vol_type_id(request)
    await wire.in_thread(qos.disassociate, wire.runtime(request), request.path_params["id"],
                         type_id)
    return wire.accepted()


async def disassociate_all(request: Request) -> Response:
    await wire.in_thread(qos.disassociate_all, wire.runtime(request), request.path_params["id"])
    return wire.accepted()


routes = [
    route("/v3/qos-specs", list_specs, "GET", "volume_extension:qos_specs_manage:get_all"),
    route("/v3/qos-specs", create, "POST", "volume_extension:qos_specs_manage:create"),
    route("/v3/qos-specs/{id}", show, "GET", "volume_extension:qos_specs_manage:get"),
    route("/v3/qos-specs/{id}", update, "PUT", "volume_extension:qos_specs_manage:update"),
    route("/v3/qos-specs/{id}", delete, "DELETE", "volume_extension:qos_specs_manage:delete"),
    route("/v3/qos-specs/{id}/delete_keys", delete_keys, "PUT",
          "volume_extension:qos_specs_manage:delete"),
    route("/v3/qos-specs/{id}/associations", associations, "GET",
          "volume_extension:qos_specs_manage:get_all"),
    route("/v3/qos-specs/{id}/associate", associate, "GET",
          "volume_extension:qos_specs_manage:update"),
    route("/v3/qos-specs/{id}/disassociate", disassociate, "GET",
          "volume_extension:qos_specs_manage:update"),
    route("/v3/qos-specs/{id}/disassociate_all", disassociate_all, "GET",
          "volume_extension:qos_specs_manage:update"),
]
