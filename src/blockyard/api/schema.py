"""Declarative request-body checks: one JSON schema per body or action, as Cinder declares them.

Cinder validates bodies with JSON Schema (draft 4) and words the first failure as
``Invalid input for field/attribute <name>. Value: <value>. <reason>``. `check` does the same
with the same constraints, so a body Cinder refuses is refused here with the same sentence,
before any state is touched. The parameter types below mirror Cinder's
``cinder/api/validation/parameter_types.py`` (facts, not code).

A schema is a plain dict written once at module level next to the endpoint that uses it; its
compiled validator is cached by identity, so a check costs one walk of the body.
"""

from __future__ import annotations

import copy
import re
import uuid as _uuid
from typing import Any

import jsonschema  # type: ignore[import-untyped]
from jsonschema import Draft4Validator, FormatChecker

from blockyard.api.errors import ApiError

#: the largest integer a Cinder column holds (DB_MAX_INT)
DB_MAX_INT = 2**31 - 1

_formats = FormatChecker()


def _is_uuid(value: object) -> bool:
    if not isinstance(value, str):
        return True
    try:
        _uuid.UUID(value)
    except ValueError:
        return False
    return True


class _BlankName(Exception):
    """A name that is empty once stripped: Cinder says so in its own words."""


def _is_name(value: object) -> bool:
    if isinstance(value, str) and not value.strip():
        raise _BlankName("The 'name' can not be empty.")
    return True


# Cinder's printable-description pattern: no control, format, surrogate, private-use or
# unassigned code points, and no separators other than plain spaces.
_NON_PRINTABLE = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")


def _is_printable(value: object) -> bool:
    return not isinstance(value, str) or _NON_PRINTABLE.search(value) is None


_formats.checks("uuid")(_is_uuid)
_formats.checks("name", raises=_BlankName)(_is_name)
_formats.checks("printable")(_is_printable)


# ------------------------------------------------------------------ parameter types

name = {"type": "string", "minLength": 1, "maxLength": 255, "format": "name"}
update_name = {"type": ["string", "null"], "minLength": 1, "maxLength": 255}
name_allow_zero_min_length = {"type": ["string", "null"], "minLength": 0, "maxLength": 255}
description = {"type": ["string", "null"], "minLength": 0, "maxLength": 255,
               "format": "printable"}
nullable_string = {"type": ["string", "null"], "minLength": 0, "maxLength": 255}
uuid = {"type": "string", "format": "uuid"}
optional_uuid = {"oneOf": [{"type": "null"}, uuid]}
boolean = {
    "type": ["boolean", "string"],
    "enum": [True, "True", "TRUE", "true", "1", "ON", "On", "on", "YES", "Yes", "yes", "y",
             "t", False, "False", "FALSE", "false", "0", "OFF", "Off", "off", "NO", "No",
             "no", "n", "f"],
}
optional_boolean = {"oneOf": [{"type": "null"}, boolean]}
volume_size = {"type": ["integer", "string"], "pattern": "^[0-9]+$", "minimum": 1,
               "maximum": DB_MAX_INT}
volume_size_allows_null = {**volume_size, "type": ["integer", "string", "null"]}
extra_specs = {
    "type": "object",
    "patternProperties": {"^[a-zA-Z0-9-_:. /]{1,255}$": {"type": "string", "maxLength": 255}},
    "additionalProperties": False,
}
metadata_allows_null = {**copy.deepcopy(extra_specs), "type": ["object", "null"]}
availability_zone = {"type": ["string", "null"], "minLength": 1, "maxLength": 255}
hostname = {"type": ["string", "null"], "minLength": 1, "maxLength": 255,
            "pattern": "^[a-zA-Z0-9-._#@:/+]*$"}
cinder_host = {"type": ["string", "null"], "minLength": 1, "maxLength": 255,
               "pattern": r"^[a-zA-Z0-9-._#@:/+\[\]]*$"}


def body(key: str, properties: dict[str, Any], *, required: tuple[str, ...] = (),
         strict: bool = True, nullable: bool = False) -> dict[str, Any]:
    """The common shape ``{key: {properties...}}`` with `key` required.

    `strict` is Cinder's ``additionalProperties: False`` inside the object.
    """
    inner: dict[str, Any] = {"type": ["object", "null"] if nullable else "object",
                             "properties": properties,
                             "additionalProperties": not strict}
    if required:
        inner["required"] = list(required)
    return {"type": "object", "properties": {key: inner}, "required": [key],
            "additionalProperties": False}


# ------------------------------------------------------------------ checking

_compiled: dict[int, tuple[dict[str, Any], Draft4Validator]] = {}


def _validator(schema: dict[str, Any]) -> Draft4Validator:
    hit = _compiled.get(id(schema))
    if hit is None or hit[0] is not schema:
        hit = (schema, Draft4Validator(schema, format_checker=_formats))
        _compiled[id(schema)] = hit
    return hit[1]


def _message(error: jsonschema.ValidationError) -> str:
    if isinstance(error.cause, _BlankName):
        return str(error.cause)
    if error.path:
        return (f"Invalid input for field/attribute {error.path[-1]}. Value: "
                f"{error.instance}. {error.message}")
    return str(error.message)


def check(value: Any, schema: dict[str, Any]) -> None:
    """Raise a 400 worded as Cinder words it when `value` does not satisfy `schema`."""
    validator = _validator(schema)
    error = jsonschema.exceptions.best_match(validator.iter_errors(value))
    if error is not None:
        raise ApiError(400, _message(error))
