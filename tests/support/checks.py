"""Response checks the API tests share: a body against one of Tempest's response schemas (the
strictest public contract) and a Cinder fault body; plus a fresh project per test."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import httpx
from tempest.lib.common.jsonschema_validator import FORMAT_CHECKER, JSONSCHEMA_VALIDATOR

from tests.support.server import Api, Server

#: Cinder's fault names by HTTP status
FAULT_NAMES = {400: "badRequest", 403: "forbidden", 404: "itemNotFound", 406: "computeFault",
               409: "conflictingRequest", 413: "overLimit"}


def check(schema: dict[str, Any], r: httpx.Response) -> Any:
    """Status and body as Tempest's RestClient checks them; returns the body (None when there
    is none)."""
    assert r.status_code in schema["status_code"], r.text
    body = r.json() if r.content else None
    if "response_body" in schema:
        JSONSCHEMA_VALIDATOR(schema["response_body"], format_checker=FORMAT_CHECKER).validate(
            body)
    return body


def fault(r: httpx.Response, status: int) -> str:
    """Assert a Cinder fault body of `status` (its one key names the fault); returns its
    message."""
    name = FAULT_NAMES[status]
    assert r.status_code == status, r.text
    body = r.json()
    assert list(body) == [name], body
    assert body[name]["code"] == status
    return str(body[name]["message"])


def fresh_project(server: Server) -> Iterator[tuple[str, Api]]:
    """A new uuid-named project and a client speaking as it (for a fixture to yield from), so
    usage and limits never leak between tests."""
    name = uuid.uuid4().hex
    client = server.client(project=name, user=name)
    yield name, client
    client.close()
