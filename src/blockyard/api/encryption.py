"""/v3/types/{type_id}/encryption: a volume type's encryption specs, as Cinder 29 serves them.

GET of the collection answers the bare specs object (``{}`` when the type has none), with
Cinder's columns including ``deleted``/``deleted_at``; create answers the specs with their
ids; update echoes what was asked; GET of one key answers ``{key: value}``. The specs are
admin-only, and refused while a volume has the type (`blockyard.service.encryption`).
"""

from __future__ import annotations

import copy
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from blockyard.api import wire
from blockyard.api.routes import route
from blockyard.api.views import iso
from blockyard.errors import NotFound
from blockyard.rest import schema
from blockyard.rest.errors import ApiError
from blockyard.service import encryption
from blockyard.service.encryption import EncryptionSpecs

#: Cinder's volume_type_encryption.create; key_size is parameter_types.key_size (an integer or
#: a string that reads as one)
CREATE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "encryption": {
            "type": "object",
            "properties": {
                "key_size": {"type": ["string", "integer", "null"], "minimum": 0,
                             "maximum": schema.DB_MAX_INT},
                "provider": {"type": "string", "minLength": 0, "maxLength": 255},
                "control_location": {"enum": ["front-end", "back-end"]},
                "cipher": {"type": ["string", "null"], "minLength": 0, "maxLength": 255},
            },
            "required": ["provider", "control_location"],
            "additionalProperties": True,
        },
    },
    "required": ["encryption"],
    "additionalProperties": False,
}
UPDATE_SCHEMA = copy.deepcopy(CREATE_SCHEMA)
UPDATE_SCHEMA["properties"]["encryption"]["required"] = []


def _values(body: dict[str, Any]) -> dict[str, Any]:
    """The known fields of a checked body, key_size as an integer (Cinder's int())."""
    spec = body["encryption"]
    values = {k: spec[k] for k in encryption.FIELDS if k in spec}
    key_size = values.get("key_size")
    if isinstance(key_size, str):
        text = key_size.strip()
        digits = text[1:] if text[:1] in "+-" else text
        if not (digits.isascii() and digits.isdigit()) or len(digits) > 10:
            raise ApiError(400, "Invalid input received: key_size must be an integer.")
        values["key_size"] = int(text)
    if values.get("key_size") is not None and not 0 <= values["key_size"] <= schema.DB_MAX_INT:
        raise ApiError(400, f"Invalid input for field/attribute key_size. Value: {key_size}. "
                            f"{key_size} is not within 0 and {schema.DB_MAX_INT}")
    return values


def _full(spec: EncryptionSpecs) -> dict[str, Any]:
    """Every column of Cinder's ``encryption`` row, as its index answers."""
    return {
        "volume_type_id": spec.volume_type_id,
        "encryption_id": spec.encryption_id,
        "provider": spec.provider,
        "control_location": spec.control_location,
        "cipher": spec.cipher,
        "key_size": spec.key_size,
        "created_at": iso(spec.created_at),
        "updated_at": iso(spec.updated_at),
        "deleted": False,
        "deleted_at": None,
    }


async def index(request: Request) -> Response:
    spec = await wire.call(request, encryption.get, request.path_params["type_id"])
    return wire.ok({} if spec is None else _full(spec))


async def show_key(request: Request) -> Response:
    type_id, key = request.path_params["type_id"], request.path_params["key"]
    spec = await wire.call(request, encryption.get, type_id)
    full = {} if spec is None else _full(spec)
    if key not in full:
        raise NotFound("VolumeTypeEncryption", type_id,
                       f"Volume type encryption for type {type_id} does not exist.")
    return wire.ok({key: full[key]})


async def create(request: Request) -> Response:
    body = await wire.json_body(request)
    schema.check(body, CREATE_SCHEMA)
    values = _values(body)
    spec = await wire.call(request, encryption.create, request.path_params["type_id"], values)
    created = {k: v for k, v in _full(spec).items() if k in encryption.FIELDS}
    created.update(volume_type_id=spec.volume_type_id, encryption_id=spec.encryption_id)
    return wire.ok({"encryption": created})


async def update(request: Request) -> Response:
    body = await wire.json_body(request)
    schema.check(body, UPDATE_SCHEMA)
    values = _values(body)
    await wire.call(request, encryption.update_specs, request.path_params["type_id"], values)
    return wire.ok({"encryption": values})


async def delete(request: Request) -> Response:
    await wire.call(request, encryption.delete_specs, request.path_params["type_id"])
    return wire.accepted()


routes = [
    route("/v3/types/{type_id}/encryption", index, "GET",
          "volume_extension:volume_type_encryption:get"),
    route("/v3/types/{type_id}/encryption", create, "POST",
          "volume_extension:volume_type_encryption:create"),
    route("/v3/types/{type_id}/encryption/{key}", show_key, "GET",
          "volume_extension:volume_type_encryption:get"),
    route("/v3/types/{type_id}/encryption/{key}", update, "PUT",
          "volume_extension:volume_type_encryption:update"),
    route("/v3/types/{type_id}/encryption/{key}", delete, "DELETE",
          "volume_extension:volume_type_encryption:delete"),
]
