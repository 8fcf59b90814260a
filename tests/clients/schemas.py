"""Tempest's response schemas for the volume API, picked by microversion, and a validator.

Tempest (`tempest/lib/api_schema/response/volume/`) is the strictest public contract of the
Cinder v3 wire format: its objects allow no properties beyond the documented ones. Each schema is
a dict with `status_code` (the allowed success codes) and, where a body is returned,
`response_body` (a JSON schema); `validate` checks both the way Tempest's RestClient does
(Draft 4, Tempest's format checker, so `iso8601-date-time` is enforced).

Tempest keeps one module per microversion that changed the volume object (3.61 cluster_name,
3.63 volume_type_id, 3.64 encryption_key_id, 3.65 consumes_quota, 3.69 nullable
shared_targets); `volumes(mv)` gives the newest one not above `mv`. Three gaps in Tempest are
filled here, all following Cinder's microversion history and its real responses:

* the snapshot schemas exist only for 3.0, so `snapshots(mv)` adds `group_snapshot_id` (3.14),
  `user_id` (3.41) and `consumes_quota` (3.65) as required properties at those microversions;
* the list schemas leave out the `count` that `?with_count=true` adds from 3.45 on (Tempest
  has it commented out), so lists at 3.45 and later allow an integer `count`;
* Tempest's `update_volume` was never moved forward with the microversions, while Cinder
  answers PUT /volumes/{id} with the same object as POST /volumes, so `update_volume(mv)` is
  that microversion's `create_volume` with status 200.
"""

from __future__ import annotations

import copy
import importlib
from types import ModuleType, SimpleNamespace
from typing import Any

import httpx


def _tempest(name: str) -> ModuleType:
    return importlib.import_module(f"tempest.lib.{name}")


parameter_types = _tempest("api_schema.response.compute.v2_1.parameter_types")
versions = _tempest("api_schema.response.volume.versions")
_snapshots_3_0 = _tempest("api_schema.response.volume.snapshots")
_volumes_3_0 = _tempest("api_schema.response.volume.volumes")
_volumes_3_61 = _tempest("api_schema.response.volume.v3_61.volumes")
_volumes_3_63 = _tempest("api_schema.response.volume.v3_63.volumes")
_volumes_3_64 = _tempest("api_schema.response.volume.v3_64.volumes")
_volumes_3_65 = _tempest("api_schema.response.volume.v3_65.volumes")
_volumes_3_69 = _tempest("api_schema.response.volume.v3_69.volumes")
#: Tempest's RestClient validates with these (Draft 4 + its iso8601-date-time format)
_validator = _tempest("common.jsonschema_validator")
JSONSCHEMA_VALIDATOR = _validator.JSONSCHEMA_VALIDATOR
FORMAT_CHECKER = _validator.FORMAT_CHECKER

#: (first minor version, Tempest module), newest first
_VOLUME_MODULES: list[tuple[int, ModuleType]] = [
    (69, _volumes_3_69),
    (65, _volumes_3_65),
    (64, _volumes_3_64),
    (63, _volumes_3_63),
    (61, _volumes_3_61),
    (0, _volumes_3_0),
]


def minor(version: str | int) -> int:
    """'3.71' → 71 (an int is taken as the minor version already)."""
    if isinstance(version, int):
        return version
    major, _, minor_text = version.partition(".")
    assert major == "3", f"not a volume v3 microversion: {version!r}"
    return int(minor_text)


def _schemas_of(module: ModuleType) -> dict[str, Any]:
    return {k: v for k, v in vars(module).items()
            if not k.startswith("_") and isinstance(v, dict)}


def volumes(version: str | int) -> SimpleNamespace:
    """Tempest's volumes schemas for microversion `version`: the newest module not above it
    (schemas a newer module does not repeat, e.g. show_volume_metadata_item, come from 3.0)."""
    mv = minor(version)
    module = next(module for first, module in _VOLUME_MODULES if mv >= first)
    found = {**_schemas_of(_volumes_3_0), **_schemas_of(module)}
    if mv >= 45:
        for name in ("list_volumes_no_detail", "list_volumes_with_detail"):
            found[name] = _with_count(found[name])
    return SimpleNamespace(**found)


def _with_count(schema: dict[str, Any]) -> dict[str, Any]:
    """A list schema that also allows the `count` of `?with_count=true` (3.45)."""
    out: dict[str, Any] = copy.deepcopy(schema)
    out["response_body"]["properties"]["count"] = {"type": "integer"}
    return out


def update_volume(version: str | int) -> dict[str, Any]:
    """PUT /volumes/{id}: the create_volume object of that microversion, status 200."""
    schema: dict[str, Any] = copy.deepcopy(volumes(version).create_volume)
    schema["status_code"] = [200]
    return schema


def _snapshot_object(base: dict[str, Any], mv: int) -> dict[str, Any]:
    obj = copy.deepcopy(base)
    added: dict[str, Any] = {}
    if mv >= 14:
        added["group_snapshot_id"] = parameter_types.uuid_or_null
    if mv >= 41:
        added["user_id"] = {"type": "string"}
    if mv >= 65:
        added["consumes_quota"] = {"type": "boolean"}
    obj["properties"].update(added)
    obj["required"] = [*obj["required"], *added]
    return obj


def snapshots(version: str | int) -> SimpleNamespace:
    """Tempest's snapshot schemas, extended with the fields of later microversions."""
    mv = minor(version)
    base = _snapshots_3_0
    summary = _snapshot_object(base.common_snapshot_schema, mv)
    detail = _snapshot_object(base.common_snapshot_detail_schema, mv)

    def with_object(schema: dict[str, Any], key: str, obj: dict[str, Any],
                    array: bool = False) -> dict[str, Any]:
        out = copy.deepcopy(schema)
        props = out["response_body"]["properties"]
        if array:
            props[key]["items"] = obj
        else:
            props[key] = obj
        return out

    list_summary = with_object(base.list_snapshots_no_detail, "snapshots", summary, array=True)
    list_detail = with_object(base.list_snapshots_with_detail, "snapshots", detail, array=True)
    if mv >= 45:
        list_summary, list_detail = _with_count(list_summary), _with_count(list_detail)
    return SimpleNamespace(
        create_snapshot=with_object(base.create_snapshot, "snapshot", summary),
        update_snapshot=with_object(base.update_snapshot, "snapshot", summary),
        show_snapshot=with_object(base.show_snapshot, "snapshot", detail),
        list_snapshots_no_detail=list_summary,
        list_snapshots_with_detail=list_detail,
        delete_snapshot=base.delete_snapshot,
        create_snapshot_metadata=base.create_snapshot_metadata,
        show_snapshot_metadata=base.show_snapshot_metadata,
        update_snapshot_metadata=base.update_snapshot_metadata,
        show_snapshot_metadata_item=base.show_snapshot_metadata_item,
        update_snapshot_metadata_item=base.update_snapshot_metadata_item,
        delete_snapshot_metadata_item=base.delete_snapshot_metadata_item,
    )


class SchemaError(AssertionError):
    pass


def validate(schema: dict[str, Any], status: int, body: Any) -> None:
    """Tempest's RestClient.validate_response: the status code, then the body (or none)."""
    if status not in schema["status_code"]:
        raise SchemaError(f"status {status}, expected one of {schema['status_code']}: {body!r}")
    body_schema = schema.get("response_body")
    if body_schema:
        validator = JSONSCHEMA_VALIDATOR(body_schema, format_checker=FORMAT_CHECKER)
        errors = sorted(validator.iter_errors(body), key=lambda e: list(e.absolute_path))
        if errors:
            lines = [f"  at /{'/'.join(map(str, e.absolute_path))}: {e.message}"
                     for e in errors]
            raise SchemaError("response body does not match Tempest's schema:\n"
                              + "\n".join(lines))
    elif body:
        raise SchemaError(f"response body should be empty, got {body!r}")


def check(schema: dict[str, Any], response: httpx.Response) -> Any:
    """Validate an httpx response against `schema`; return its decoded body (None if empty)."""
    body = response.json() if response.content else None
    validate(schema, response.status_code, body)
    return body


__all__ = ["SchemaError", "check", "minor", "snapshots", "update_volume", "validate",
           "versions", "volumes"]
