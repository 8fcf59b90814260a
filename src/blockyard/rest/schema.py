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
import math
import re
import uuid as _uuid
from typing import Any

import jsonschema  # type: ignore[import-untyped]
from jsonschema import Draft4Validator, FormatChecker

from blockyard import statuses
from blockyard.rest.errors import ApiError

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


class Refusal(Exception):
    """A format check that Cinder words in its own sentence (not "... is not a 'fmt'");
    `check` answers with the message as it is."""


class _BlankName(Refusal):
    """A name that is empty once stripped."""


def _is_name(value: object) -> bool:
    if isinstance(value, str) and not value.strip():
        raise _BlankName("The 'name' can not be empty.")
    return True


def _is_trimmed_name(value: object) -> bool:
    """Cinder's check of names it strips before storing (transfers): judged once stripped."""
    if not isinstance(value, str):
        return True
    if not value:
        raise _BlankName("The 'name' can not be None.")
    if not value.strip():
        raise _BlankName("The 'name' can not be empty.")
    if len(value.strip()) > 255:
        raise _BlankName("The 'name' can not be greater than 255 characters.")
    return True


_formats.checks("name_skip_leading_trailing_spaces", raises=_BlankName)(_is_trimmed_name)


# Cinder's printable-description pattern: no control, format, surrogate, private-use or
# unassigned code points, and no separators other than plain spaces.
_NON_PRINTABLE = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")


def _is_printable(value: object) -> bool:
    return not isinstance(value, str) or _NON_PRINTABLE.search(value) is None


def _one_of(allowed: frozenset[str], *, empty_ok: bool = True) -> Any:
    """A format: a text that, lowercased, is one of `allowed` (or empty, for the volume
    status formats of Cinder, not for its snapshot status)."""

    def check(value: object) -> bool:
        if not isinstance(value, str):
            return True
        return (empty_ok and not value) or value.lower() in allowed

    return check


def _is_reset_body(value: object) -> bool:
    """Cinder's validate_volume_reset_body: at least one of the three statuses."""
    return not isinstance(value, dict) or any(
        value.get(k) for k in ("status", "attach_status", "migration_status"))


def _is_progress(value: object) -> bool:
    """A snapshot progress: an integer percentage, "0%" to "100%"."""
    if not isinstance(value, str) or not value:
        return True
    number = value[:-1]
    return value.endswith("%") and re.fullmatch(r"[0-9]{1,3}", number) is not None and \
        int(number) <= 100


def _at_most_255_stripped(entity: str) -> Any:
    """Cinder's *_non_mandatory_remove_white_spaces formats: at most 255 characters once
    stripped, worded as its check_string_length."""

    def check(value: object) -> bool:
        if isinstance(value, str) and len(value.strip()) > 255:
            raise Refusal(f"Invalid input received: {entity} has {len(value.strip())} "
                          f"characters, more than 255.")
        return True

    return check


_formats.checks("name_non_mandatory_remove_white_spaces", raises=Refusal)(
    _at_most_255_stripped("name"))
_formats.checks("description_non_mandatory_remove_white_spaces", raises=Refusal)(
    _at_most_255_stripped("description"))
_formats.checks("uuid")(_is_uuid)
_formats.checks("name", raises=_BlankName)(_is_name)
_formats.checks("printable")(_is_printable)
_formats.checks("volume_status")(_one_of(statuses.VOLUME_RESET_STATUSES))
_formats.checks("volume_attach_status")(_one_of(statuses.ATTACH_RESET_STATUSES))
# Cinder's VolumeMigrationStatus.ALL; "none" clears it. Never the internal "target:<id>".
_formats.checks("volume_migration_status")(_one_of(
    frozenset({*statuses.MigrationStatus, "none"})))
_formats.checks("snapshot_status")(_one_of(statuses.SNAPSHOT_RESET_STATUSES, empty_ok=False))
_formats.checks("validate_volume_reset_body")(_is_reset_body)
_formats.checks("progress")(_is_progress)


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


uuid_allow_null = {"oneOf": [uuid, {"type": "null"}]}
extra_specs_with_null = {
    "type": "object",
    "patternProperties": {"^[a-zA-Z0-9-_:. /]{1,255}$": {"type": ["string", "null"],
                                                         "maxLength": 255}},
    "additionalProperties": False,
}
#: an action whose value Cinder ignores (``{"os-reserve": null}``, ``{}``, anything)
ANY: dict[str, Any] = {}


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

_NUMBER = re.compile(r"-?[0-9]{1,20}")
_DIGITS = re.compile(r"-?[0-9]+")


def _number(value: Any) -> Any:
    """What Cinder's minimum/maximum compare: numbers, and strings of ASCII digits as the
    number they spell (JSON Schema alone ignores strings there, so "0" would pass
    ``minimum: 1``); None for anything else, which the bounds leave to other keywords."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return value
    if isinstance(value, str) and _DIGITS.fullmatch(value.strip()):
        text = value.strip()
        if _NUMBER.fullmatch(text):
            return int(text)
        return -math.inf if text.startswith("-") else math.inf  # beyond every bound
    return None


def _minimum(validator: Any, minimum: Any, instance: Any, schema: Any) -> Any:
    number = _number(instance)
    if number is not None and number < minimum:
        yield jsonschema.ValidationError(f"{number!r} is less than the minimum of {minimum}")


def _maximum(validator: Any, maximum: Any, instance: Any, schema: Any) -> Any:
    number = _number(instance)
    if number is not None and number > maximum:
        yield jsonschema.ValidationError(f"{number!r} is greater than the maximum of "
                                         f"{maximum}")


#: Draft 4 with Cinder's string-aware minimum and maximum
_Validator = jsonschema.validators.extend(Draft4Validator,
                                          {"minimum": _minimum, "maximum": _maximum})
_compiled: dict[int, tuple[dict[str, Any], Any]] = {}


def _validator(schema: dict[str, Any]) -> Any:
    hit = _compiled.get(id(schema))
    if hit is None or hit[0] is not schema:
        hit = (schema, _Validator(schema, format_checker=_formats))
        _compiled[id(schema)] = hit
    return hit[1]


def _message(error: jsonschema.ValidationError) -> str:
    if isinstance(error.cause, Refusal):
        return str(error.cause)
    if error.path:
        return (f"Invalid input for field/attribute {error.path[-1]}. Value: "
                f"{error.instance}. {error.message}")
    return str(error.message)


def check(value: Any, schema: dict[str, Any]) -> None:
    """Raise a 400 worded as Cinder words it when `value` does not satisfy `schema`."""
    # the first failure, as Cinder's validator raises it (not jsonschema's best_match)
    error = next(iter(_validator(schema).iter_errors(value)), None)
    if error is not None:
        raise ApiError(400, _message(error))
