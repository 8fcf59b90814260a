"""Cinder's personas: reader, member and admin of project A, and a member of project B (the
stranger), and two ways of sending a request as one of them.

* Through real Keystone tokens (`keystone_personas`, `keystone_sender`): each persona is a
  Keystone user holding its one role on its project (and those Keystone's implied roles add:
  `ROLES`), and each request carries that user's project-scoped token to a real
  `blockyard serve` with ``[auth] strategy = "keystone"`` (keystonemiddleware validates it, the
  server's own authentication edge makes the identity). The project ids are Keystone's, so they
  are values of the `Personas` returned, never constants.
* In this process (`PERSONAS`, `app_sender`): the real volume application (fake backend, real
  database, real task runner) with each persona's identity put where the authentication
  middleware puts a caller's (``request.state.identity``, by a middleware standing in that
  middleware's place): cheap, for unit-ish tests that swap the policy engine under the app.

Both send with the same `Sender` signature: ``send(persona, method, path, body)``.
"""

from __future__ import annotations

import contextlib
import uuid
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import httpx
from starlette.middleware import Middleware
from starlette.types import ASGIApp, Receive, Scope, Send

from blockyard.api.app import create_app
from blockyard.config import build
from blockyard.identity import ADMIN, MEMBER, READER, Identity
from tests.support.keystone import DEFAULT_DOMAIN, Keystone, authtoken_config
from tests.support.server import Server

with warnings.catch_warnings():  # it would rather have httpx2; httpx is what is installed
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient

#: the roles each persona's token carries: the one granted and those it implies in Keystone
#: (its bootstrap makes admin → manager → member → reader; no Cinder default reads manager)
MANAGER = "manager"
ROLES: dict[str, frozenset[str]] = {
    "reader": frozenset({READER}),
    "member": frozenset({READER, MEMBER}),
    "admin": frozenset({READER, MEMBER, MANAGER, ADMIN}),
    "stranger": frozenset({READER, MEMBER}),
}
#: the role granted to each persona's Keystone user (on its project), and which project
GRANTED = {"reader": (READER, "a"), "member": (MEMBER, "a"), "admin": (ADMIN, "a"),
           "stranger": (MEMBER, "b")}
#: the personas of the owning project
OWNERS = ("reader", "member", "admin")

class Sender(Protocol):
    """``send(persona, method, path, body=None)``: one request as `persona` (JSON `body`)."""

    def __call__(self, persona: str, method: str, path: str,
                 body: Any = None) -> httpx.Response: ...

#: the volume service config of the servers here: the in-memory backend, as in process
FAKE_BACKEND = '[backends.fake]\ndriver = "fake"\n'


@dataclass(frozen=True)
class Personas:
    """The four personas' identities (what the policy engine is expected to see of each),
    the ids of their two projects, and, through Keystone, each one's token."""

    project_a: str
    project_b: str
    identities: dict[str, Identity]
    tokens: dict[str, str]

    def __getitem__(self, name: str) -> Identity:
        return self.identities[name]


def _identity(user_id: str, project_id: str, roles: frozenset[str]) -> Identity:
    return Identity(user_id=user_id, project_id=project_id, roles=roles,
                    user_domain_id=DEFAULT_DOMAIN, project_domain_id=DEFAULT_DOMAIN,
                    is_admin_project=True)  # Keystone's answer when no admin project is set


def keystone_personas(ks: Keystone, prefix: str) -> Personas:
    """The personas as users of `ks` in projects ``<prefix>-a`` and ``<prefix>-b`` (made if
    missing), each with a fresh project-scoped token."""
    projects = {key: ks.project(f"{prefix}-{key}") for key in ("a", "b")}
    identities, tokens = {}, {}
    for name, (role, key) in GRANTED.items():
        user_id, tokens[name] = ks.persona(f"{prefix}-{key}", role)
        identities[name] = _identity(user_id, projects[key], ROLES[name])
    return Personas(projects["a"], projects["b"], identities, tokens)


@contextlib.contextmanager
def keystone_sender(ks: Keystone, personas: Personas, state_dir: Path,
                    version: str = "3.71") -> Iterator[tuple[Sender, Server]]:
    """A real `blockyard serve` (fake backend, ``[auth] strategy = "keystone"`` against `ks`),
    and `send`, which makes each request with the persona's token over one keep-alive
    connection. keystonemiddleware caches each validated token, so only a persona's first
    request costs a call to Keystone."""
    server = Server(state_dir, config=FAKE_BACKEND + authtoken_config(ks, "cinder-personas"))
    server.start()
    try:
        with httpx.Client(base_url=server.url, timeout=30.0, headers={
                "OpenStack-API-Version": f"volume {version}"}) as client:

            def send(persona: str, method: str, path: str, body: Any = None) -> httpx.Response:
                headers = {"X-Auth-Token": personas.tokens[persona]}
                if body is None:
                    return client.request(method, path, headers=headers)
                return client.request(method, path, headers=headers, json=body)

            yield send, server
    finally:
        server.close()


# ---------------------------------------------------------------------------- in process

PROJECT_A = uuid.uuid5(uuid.NAMESPACE_URL, "blockyard-test:project-a").hex
PROJECT_B = uuid.uuid5(uuid.NAMESPACE_URL, "blockyard-test:project-b").hex


def _persona(name: str, project: str) -> Identity:
    return _identity(uuid.uuid5(uuid.NAMESPACE_URL, f"blockyard-test:{name}").hex, project,
                     ROLES[name])


#: the personas of `app_sender` (a test may add one of its own, under its own name)
PERSONAS: dict[str, Identity] = {
    "reader": _persona("reader", PROJECT_A),
    "member": _persona("member", PROJECT_A),
    "admin": _persona("admin", PROJECT_A),
    "stranger": _persona("stranger", PROJECT_B),
}

PERSONA_HEADER = "x-test-persona"


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
    """The volume API in this process on the fake backend; yields `send` (as `PERSONAS`)."""
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
            answer: httpx.Response = (client.request(method, path, headers=headers)
                                      if body is None else
                                      client.request(method, path, headers=headers, json=body))
            return answer

        yield send
