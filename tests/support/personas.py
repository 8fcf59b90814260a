"""Cinder's personas as identities, and a volume API in this process that takes them.

`PERSONAS`: reader, member and admin of project A, and a member of project B (the stranger).
`app_sender(tmp_path)` starts the real volume application (fake backend, real database, real
task runner) in this process and returns `send(persona, method, path, body)`: the persona's
identity is put where the authentication middleware puts a caller's
(``request.state.identity``, by a middleware standing in that middleware's place), so every
layer above it is the one a real request meets.
When the volume API takes Keystone tokens in the tests, `send` can give each persona a token
instead, and nothing else in the tests that use it changes.
"""

from __future__ import annotations

import contextlib
import uuid
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
from starlette.middleware import Middleware
from starlette.types import ASGIApp, Receive, Scope, Send

from blockyard.api.app import create_app
from blockyard.config import build
from blockyard.identity import ADMIN, MEMBER, READER, Identity

with warnings.catch_warnings():  # it would rather have httpx2; httpx is what is installed
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient

PROJECT_A = uuid.uuid5(uuid.NAMESPACE_URL, "blockyard-test:project-a").hex
PROJECT_B = uuid.uuid5(uuid.NAMESPACE_URL, "blockyard-test:project-b").hex


def _persona(name: str, project: str, *roles: str) -> Identity:
    return Identity(user_id=uuid.uuid5(uuid.NAMESPACE_URL, f"blockyard-test:{name}").hex,
                    project_id=project, roles=frozenset(roles), user_domain_id="default",
                    project_domain_id="default", is_admin_project=True)


PERSONAS: dict[str, Identity] = {
    "reader": _persona("reader", PROJECT_A, READER),
    "member": _persona("member", PROJECT_A, READER, MEMBER),
    "admin": _persona("admin", PROJECT_A, READER, MEMBER, ADMIN),
    "stranger": _persona("stranger", PROJECT_B, READER, MEMBER),
}
#: the personas of the owning project
OWNERS = ("reader", "member", "admin")

PERSONA_HEADER = "x-test-persona"

Sender = Callable[[str, str, str, Any], httpx.Response]


class InjectIdentity:
    """Put the identity of the persona named in the request's test header into the request
    state, as blockyard.rest.auth does for an authenticated caller."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            headers = dict(scope["headers"])
            name = headers.get(PERSONA_HEADER.encode())
            if name is not None:
                scope.setdefault("state", {})["identity"] = PERSONAS[name.decode()]
        await self.app(scope, receive, send)


@contextlib.contextmanager
def app_sender(tmp_path: Path, version: str = "3.71") -> Iterator[Sender]:
    """The volume API in this process on the fake backend; yields `send`."""
    config = build({"backends": {"fake": {"driver": "fake"}}}, state_dir=str(tmp_path))
    application = create_app(config)
    # the identity goes where the authentication middleware would put it (innermost, after
    # the request limits), in place of that middleware where the app has one
    application.user_middleware = [
        m for m in application.user_middleware
        if getattr(m.cls, "__name__", "") != "Authenticate"] + [Middleware(InjectIdentity)]
    with TestClient(application, base_url="http://testserver") as client:

        def send(persona: str, method: str, path: str, body: Any = None) -> httpx.Response:
            headers = {PERSONA_HEADER: persona, "OpenStack-API-Version": f"volume {version}"}
            if body is None:
                return client.request(method, path, headers=headers)
            return client.request(method, path, headers=headers, json=body)

        yield send
