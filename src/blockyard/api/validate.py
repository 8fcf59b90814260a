"""Checks of request values, with Cinder's wording for what was wrong.

Cinder validates bodies with JSON schemas and reports ``Invalid input for field/attribute
<name>. Value: <value>. <reason>``; these helpers produce the same sentences. Values clients
send as strings ("True", "5") are accepted where Cinder accepts them.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from blockyard.rest.errors import ApiError

_TRUE = {"true", "1", "yes", "y", "on", "t"}
_FALSE = {"false", "0", "no", "n", "off", "f"}
MAX_INT = 2**31 - 1
#: digits as JSON and Cinder's schemas mean them: ASCII only (int() also takes "٣" and "²")
_SIGNED = re.compile(r"[-+]?[0-9]{1,20}")


def invalid(field: str, value: Any, reason: str) -> ApiError:
    return ApiError(400, f"Invalid input for field/attribute {field}. Value: {value}. {reason}")


def section(body: dict[str, Any], key: str) -> dict[str, Any]:
    """The object under `key` in a request body (``{"volume": {...}}``)."""
    if key not in body:
        raise ApiError(400, f"Missing required element '{key}' in request body.")
    value = body[key]
    if not isinstance(value, dict):
        raise invalid(key, value, f"{value!r} is not of type 'object'")
    return value


def no_extra_keys(obj: dict[str, Any], allowed: Iterable[str], where: str = "") -> None:
    """Cinder's additionalProperties: false (strict from microversion 3.53 on)."""
    extra = sorted(set(obj) - set(allowed))
    if extra:
        listed = ", ".join(repr(k) for k in extra)
        verb = "were" if len(extra) > 1 else "was"
        raise ApiError(400, f"Invalid input for field/attribute {where or 'body'}. Value: "
                            f"{obj}. Additional properties are not allowed ({listed} {verb} "
                            f"unexpected)")


def boolean(value: Any, field: str) -> bool:
    """true/false as JSON booleans or the strings clients send ("True", "false", "1")."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    raise ApiError(400, f"Invalid input received: {field} must be a boolean, got {value!r}.")


def string(value: Any, field: str, *, max_length: int = 255, nullable: bool = True,
           min_length: int = 0) -> str | None:
    if value is None:
        if nullable:
            return None
        raise invalid(field, value, "None is not of type 'string'")
    if not isinstance(value, str):
        raise invalid(field, value, f"{value!r} is not of type 'string'")
    if len(value) > max_length:
        raise invalid(field, value, f"{value!r} is too long")
    if len(value.strip()) < min_length:
        raise invalid(field, value, f"{value!r} is too short")
    return value


def query_bool(value: str | None, field: str, default: bool = False) -> bool:
    if value is None:
        return default
    return boolean(value, field)


def query_int(value: str | None, field: str, *, minimum: int = 0,
              maximum: int | None = MAX_INT) -> int | None:
    """An integer query parameter: ASCII digits, within [minimum, maximum] (None: no upper
    bound, for values that are capped rather than refused, like ``limit``)."""
    if value is None:
        return None
    if not _SIGNED.fullmatch(value.strip()):
        raise ApiError(400, f"Invalid input received: {field} must be an integer, got "
                            f"{value!r}.")
    number = int(value.strip())
    if number < minimum:
        raise ApiError(400, f"Invalid input received: {field} must be >= {minimum}.")
    if maximum is not None and number > maximum:
        raise ApiError(400, f"Invalid input received: {field} must be <= {maximum}.")
    return number

