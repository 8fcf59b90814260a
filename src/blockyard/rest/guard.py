"""The hostile-input edge shared by the volume API and the compute agent.

Everything a request can carry is bounded here, before an endpoint sees it, so no input can
reach a code path that was not written for it:

* bodies: at most `MAX_BODY_BYTES` (Cinder's ``osapi_max_request_body_size``), refused with a
  413 before any parsing (`RequestLimits`);
* JSON (`parse_json`): strict UTF-8, no NaN/Infinity, integers of at most `MAX_INT_DIGITS`
  ASCII digits, finite floats, nesting at most `MAX_DEPTH` deep, and no text (keys or values)
  with NUL or lone surrogates (``"\\ud800"`` escapes decode to those in `json.loads`, and they
  cannot be encoded back out, stored in PostgreSQL or echoed in an error);
* paths and query strings: no NUL (`RequestLimits` checks them with the body);
* the last line (`CatchAll`): an exception nothing else handled becomes a Cinder-shaped 500
  instead of a dropped keep-alive connection.

All of these answer with the caller's fault body (``{"badRequest": {...}}``), never a
traceback.
"""

from __future__ import annotations

import json
import logging
import math
from typing import Any
from urllib.parse import unquote_to_bytes

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from blockyard.rest.errors import ApiError, fault

log = logging.getLogger(__name__)

#: Cinder's default ``osapi_max_request_body_size`` (bytes)
MAX_BODY_BYTES = 114688
#: objects and arrays nested deeper than any real request body
MAX_DEPTH = 32
#: an integer literal longer than this is no count, size or id anyone means (2**63 has 19)
MAX_INT_DIGITS = 20

_BAD_TEXT = "Malformed request body: text must be UTF-8 without NUL characters or lone " \
            "surrogates."


class _Refused(ValueError):
    """A JSON literal the parser hooks refuse; becomes a 400 with its message."""


def _parse_int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_INT_DIGITS:
        raise _Refused(f"Malformed request body: the number {text[:40]}... is too long.")
    return int(text)


def _parse_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise _Refused(f"Malformed request body: the number {text[:40]} is out of range.")
    return value


def _parse_constant(name: str) -> Any:
    raise _Refused(f"Malformed request body: {name} is not a JSON value.")


def is_clean_text(text: str) -> bool:
    """True when `text` holds no NUL and no lone surrogate (so it encodes as UTF-8)."""
    if "\x00" in text:
        return False
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _check_tree(value: Any) -> None:
    """Depth and text of a parsed body, walked without recursion."""
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, str):
            if not is_clean_text(item):
                raise ApiError(400, _BAD_TEXT)
        elif isinstance(item, dict | list):
            if depth >= MAX_DEPTH:
                raise ApiError(400, f"Malformed request body: nested more than {MAX_DEPTH} "
                                    f"levels deep.")
            if isinstance(item, dict):
                for key, inner in item.items():
                    if not is_clean_text(key):
                        raise ApiError(400, _BAD_TEXT)
                    stack.append((inner, depth + 1))
            else:
                stack.extend((inner, depth + 1) for inner in item)


def parse_json(raw: bytes) -> Any:
    """The JSON value in `raw` under the bounds above; ApiError(400) when it breaks one."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ApiError(400, _BAD_TEXT) from None
    try:
        value = json.loads(text, parse_int=_parse_int, parse_float=_parse_float,
                           parse_constant=_parse_constant)
    except _Refused as exc:
        raise ApiError(400, str(exc)) from None
    except RecursionError:
        raise ApiError(400, f"Malformed request body: nested more than {MAX_DEPTH} levels "
                            f"deep.") from None
    except ValueError:  # JSONDecodeError, and int() refusing a literal
        raise ApiError(400, "Malformed request body") from None
    _check_tree(value)
    return value


class BodyTooLarge(ApiError):
    def __init__(self) -> None:
        super().__init__(413, f"Request is too large: the body may be at most "
                              f"{MAX_BODY_BYTES} bytes.")


def _has_nul(scope: Scope) -> bool:
    raw_path = scope.get("raw_path") or scope["path"].encode("utf-8", "surrogateescape")
    return b"\x00" in unquote_to_bytes(raw_path) or \
        b"\x00" in unquote_to_bytes(scope.get("query_string", b""))


def _refusal(scope: Scope) -> ApiError | None:
    """What is wrong with a request before its body is read, if anything."""
    if _has_nul(scope):
        return ApiError(400, "Invalid input received: the URL may not contain NUL "
                             "characters.")
    length = Headers(scope=scope).get("content-length")
    if length is None:
        return None
    if not (length.isascii() and length.isdigit()):
        return ApiError(400, "Invalid Content-Length header.")
    if int(length) > MAX_BODY_BYTES:
        return BodyTooLarge()
    return None


class RequestLimits:
    """413 for a body over `MAX_BODY_BYTES` (by Content-Length before reading anything, or
    as soon as a chunked body passes it), 400 for a NUL in the path or query string."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        refusal = _refusal(scope)
        if refusal is not None:
            await fault(refusal.status, refusal.message)(scope, receive, send)
            return
        seen = 0

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > MAX_BODY_BYTES:
                    raise BodyTooLarge()
            return message

        await self.app(scope, limited, send)


class CatchAll:
    """The last line of defence: an unexpected exception becomes Cinder's 500 fault on the
    same connection (uvicorn would drop the connection after Starlette re-raises it).

    When the response had already started nothing can be said any more, and the exception
    goes on to the server, which closes the connection.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, tracking)
        except Exception:
            if started:
                raise
            log.exception("unexpected error on %s %s", scope.get("method"), scope.get("path"))
            await fault(500, "The server has either erred or is incapable of performing the "
                             "requested operation.")(scope, receive, send)
