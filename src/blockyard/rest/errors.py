"""The one map from domain errors to HTTP: status code and Cinder fault name.

Cinder's error bodies look like ``{"badRequest": {"code": 400, "message": "..."}}``; the fault
name depends on the status code, as in Cinder's wsgi Fault.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from blockyard import errors

log = logging.getLogger(__name__)

FAULT_NAMES = {
    400: "badRequest",
    401: "unauthorized",
    403: "forbidden",
    404: "itemNotFound",
    405: "badMethod",
    406: "computeFault",
    409: "conflictingRequest",
    413: "overLimit",
    415: "badMediaType",
    429: "overLimit",
    500: "computeFault",
    501: "notImplemented",
    503: "serviceUnavailable",
}

#: domain error class → HTTP status; the most specific class in an error's MRO wins
STATUS_OF: dict[type[BaseException], int] = {
    errors.NotFound: 404,
    errors.Forbidden: 403,
    errors.Invalid: 400,
    errors.Conflict: 409,
    errors.QuotaExceeded: 413,
    errors.NotSupported: 400,
    errors.BackendError: 400,
    errors.BlockyardError: 500,
}


class ApiError(Exception):
    """An HTTP-level error raised by the API layer itself (bad body, bad microversion...)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class SafeJSONResponse(JSONResponse):
    """JSON that always encodes: text that cannot be UTF-8 (a lone surrogate echoed from a
    request, a row written before input was checked) is sent \\u-escaped instead of failing
    the response."""

    def render(self, content: Any) -> bytes:
        try:
            return super().render(content)
        except UnicodeEncodeError:
            return json.dumps(content, ensure_ascii=True, allow_nan=False,
                              separators=(",", ":")).encode("ascii")


def fault(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    name = FAULT_NAMES.get(status, "computeFault")
    return SafeJSONResponse({name: {"code": status, "message": message}}, status,
                            headers=headers)


def status_of(exc: BaseException) -> int:
    for cls in type(exc).__mro__:
        if cls in STATUS_OF:
            return STATUS_OF[cls]
    return 500


async def handle_domain_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, errors.BlockyardError)
    status = status_of(exc)
    if status >= 500:
        log.error("request %s failed: %s", request.url.path, exc)
    return fault(status, exc.message)


async def handle_api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return fault(exc.status, exc.message)


async def handle_http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 404:
        return fault(404, "The resource could not be found.")
    if exc.status_code == 405:
        return fault(405, "The method is not allowed for this resource.")
    return fault(exc.status_code, str(exc.detail))


HANDLERS = {
    errors.BlockyardError: handle_domain_error,
    ApiError: handle_api_error,
    HTTPException: handle_http_error,
}
# Anything else is answered by `blockyard.rest.guard.CatchAll`, which keeps the connection.
