"""Service tokens both ways, at unit level: what the agent sends the volume service, what the
volume service sends the agent, and how the service user's token is had and renewed.

The HTTP peers are small stdlib servers that record each request's headers: a fake Keystone
(version discovery and ``POST /v3/auth/tokens``, tokens built with keystoneauth1's own
fixture), a fake volume service and a fake compute API. The real Keystone test is in
tests/test_compute_keystone.py.
"""

from __future__ import annotations

import asyncio
import datetime
import json
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from typing import Any

import pytest
from keystoneauth1 import fixture as ks_fixture

from blockyard.compute.volume_api import Caller, VolumeApi, VolumeApiError
from blockyard.config import ComputeEndpoint
from blockyard.identity import Identity, from_noauth
from blockyard.service import compute_events
from blockyard.service_auth import ServiceAuth, ServiceTokenError, ServiceUser
from tests.support.recording import RecordingServer

VOLUME = "8f1c5b1e-4d7a-4c50-9d1e-0a3c9b6e2f10"
INSTANCE = "11111111-2222-3333-4444-555555555555"


# ---------------------------------------------------------------------------- fake peers
@dataclass
class Peer(RecordingServer):
    """A recording HTTP server; `answer(method, path, body)` → (status, headers, body)."""

    answer: Any

    def start(self) -> Peer:
        peer = self

        class Handler(BaseHTTPRequestHandler):
            def _any(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                peer.record(self)
                status, headers, body = peer.answer(self.command, self.path,
                                                    json.loads(raw) if raw else None)
                data = json.dumps(body).encode() if body is not None else b""
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PUT = do_DELETE = _any  # noqa: N815

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.serve(Handler)
        return self


class FakeKeystone:
    """Version discovery and password authentication; each token lives `lifetime` seconds."""

    def __init__(self, lifetime: float = 3600.0) -> None:
        self.lifetime = lifetime
        self.issued: list[str] = []
        self.refuse = False
        self.peer = Peer(self._answer).start()

    @property
    def auth_url(self) -> str:
        return self.peer.url + "/v3"

    def _answer(self, method: str, path: str, body: Any) -> tuple[int, dict[str, str], Any]:
        if method == "GET":
            return 200, {}, {"version": {"id": "v3.14", "status": "stable", "links": [
                {"rel": "self", "href": self.auth_url + "/"}]}}
        ident = body["auth"]["identity"]["password"]["user"]
        if self.refuse or ident["password"] != "secret":
            return 401, {}, {"error": {"code": 401, "message": "The request you have made "
                                       "requires authentication.", "title": "Unauthorized"}}
        token = f"svc-token-{len(self.issued) + 1}"
        self.issued.append(token)
        expires = datetime.datetime.now(datetime.UTC) + \
            datetime.timedelta(seconds=self.lifetime)
        doc = ks_fixture.V3Token(expires=expires, user_name=ident["name"],
                                 project_name="service", project_id="svc-project")
        doc.add_role(name="service")
        return 201, {"X-Subject-Token": token}, dict(doc)

    def user(self, password: str = "secret") -> ServiceUser:
        return ServiceUser.of({"auth_url": self.auth_url, "username": "blockyard",
                               "password": password, "project_name": "service"})


@pytest.fixture
def keystone() -> Iterator[FakeKeystone]:
    ks = FakeKeystone()
    yield ks
    ks.peer.stop()


def _volume_service(method: str, path: str, body: Any) -> tuple[int, dict[str, str], Any]:
    if path.endswith("/attachments") and method == "POST":
        return 200, {}, {"attachment": {"id": "att-1"}}
    return 200, {}, {"volume": {"id": VOLUME, "status": "available", "size": 1}}


@pytest.fixture
def volumes() -> Iterator[Peer]:
    peer = Peer(_volume_service).start()
    yield peer
    peer.stop()


# ---------------------------------------------------------------------------- ServiceAuth
def test_service_token_is_fetched_once_and_reused(keystone: FakeKeystone) -> None:
    auth = ServiceAuth(keystone.user())
    assert auth.own_headers() == {"X-Auth-Token": "svc-token-1"}
    assert auth.headers_for("user-token") == {"X-Auth-Token": "user-token",
                                              "X-Service-Token": "svc-token-1"}
    assert keystone.issued == ["svc-token-1"]


def test_service_token_is_renewed_before_it_expires(keystone: FakeKeystone) -> None:
    keystone.lifetime = 60  # inside keystoneauth1's two-minute margin: renewed at each use
    auth = ServiceAuth(keystone.user())
    assert auth.token() == "svc-token-1"
    assert auth.token() == "svc-token-2"
    keystone.lifetime = 3600
    assert auth.token() == "svc-token-3"
    assert auth.token() == "svc-token-3"


def test_invalidate_fetches_a_new_token(keystone: FakeKeystone) -> None:
    auth = ServiceAuth(keystone.user())
    assert auth.token() == "svc-token-1"
    auth.invalidate()
    assert auth.token() == "svc-token-2"


def test_a_wrong_password_is_one_clear_error(keystone: FakeKeystone) -> None:
    with pytest.raises(ServiceTokenError, match="service user 'blockyard'"):
        ServiceAuth(keystone.user(password="wrong")).token()


def test_service_user_names_a_missing_key() -> None:
    with pytest.raises(KeyError, match="password"):
        ServiceUser.of({"auth_url": "http://k/v3", "username": "u", "project_name": "p"})
    assert "secret" not in repr(ServiceUser.of({"auth_url": "http://k/v3", "username": "u",
                                                "project_name": "p", "password": "secret"}))


# ---------------------------------------------------------------------------- agent → volumes
def _run(coro: Any) -> Any:
    return asyncio.run(coro)


async def _calls(api: VolumeApi, caller: Caller) -> None:
    try:
        await api.volume(caller, VOLUME)
        await api.create_attachment(caller, VOLUME, INSTANCE)
    finally:
        await api.close()


def test_keystone_user_calls_carry_the_user_token_and_the_service_token(
        keystone: FakeKeystone, volumes: Peer) -> None:
    user = Identity("u1", "p1", roles=frozenset({"member", "reader"}), auth_token="user-tok")
    api = VolumeApi(volumes.url, service=ServiceAuth(keystone.user()))
    _run(_calls(api, Caller.of(user)))
    assert [s.path for s in volumes.seen] == [f"/v3/volumes/{VOLUME}", "/v3/attachments"]
    for seen in volumes.seen:
        assert seen.headers["x-auth-token"] == "user-tok"
        assert seen.headers["x-service-token"] == "svc-token-1"
        assert "x-project-id" not in seen.headers  # the token says the project
    assert keystone.issued == ["svc-token-1"]  # cached across calls


def test_keystone_agent_work_carries_the_service_token_alone(
        keystone: FakeKeystone, volumes: Peer) -> None:
    api = VolumeApi(volumes.url, service=ServiceAuth(keystone.user()))
    _run(_calls(api, Caller.agent("p1")))
    for seen in volumes.seen:
        assert seen.headers["x-auth-token"] == "svc-token-1"
        assert "x-service-token" not in seen.headers
        assert not seen.headers["x-auth-token"].startswith("admin:")


def test_noauth_calls_are_as_before(volumes: Peer) -> None:
    api = VolumeApi(volumes.url)
    _run(_calls(api, Caller.of(from_noauth("demo:p1", None, None))))
    _run(_calls(VolumeApi(volumes.url), Caller.agent("p2")))
    headers = [(s.headers["x-auth-token"], s.headers["x-project-id"],
                "x-service-token" in s.headers) for s in volumes.seen]
    assert headers == [("demo:p1", "p1", False)] * 2 + [("admin:p2", "p2", False)] * 2


def test_a_refused_service_token_is_renewed_once(keystone: FakeKeystone) -> None:
    refused = {"left": 1}

    def answer(method: str, path: str, body: Any) -> tuple[int, dict[str, str], Any]:
        if refused["left"]:
            refused["left"] -= 1
            return 401, {}, {"error": {"code": 401, "message": "revoked"}}
        return _volume_service(method, path, body)

    peer = Peer(answer).start()
    try:
        api = VolumeApi(peer.url, service=ServiceAuth(keystone.user()))
        _run(_calls(api, Caller.agent("p1")))
    finally:
        peer.stop()
    assert [s.headers["x-auth-token"] for s in peer.seen] == \
        ["svc-token-1", "svc-token-2", "svc-token-2"]


def test_no_service_token_is_a_503_naming_it(keystone: FakeKeystone, volumes: Peer) -> None:
    keystone.refuse = True
    api = VolumeApi(volumes.url, service=ServiceAuth(keystone.user()))
    with pytest.raises(VolumeApiError) as err:
        _run(_calls(api, Caller.agent("p1")))
    assert err.value.status == 503 and "service token" in err.value.message
    assert volumes.seen == []


# ---------------------------------------------------------------------------- volumes → agent
def _compute(status: int = 200) -> Peer:
    def answer(method: str, path: str, body: Any) -> tuple[int, dict[str, str], Any]:
        return status, {}, {"events": [dict(e, code=200, status="completed")
                                       for e in body["events"]]}
    return Peer(answer).start()


def test_volume_extended_events_carry_the_service_token(keystone: FakeKeystone) -> None:
    compute = _compute()
    try:
        endpoint = ComputeEndpoint(url=compute.url + "/v2.1")
        assert compute_events.volume_extended(endpoint, VOLUME, [INSTANCE],
                                              auth=ServiceAuth(keystone.user()))
    finally:
        compute.stop()
    [seen] = compute.seen
    assert seen.path == "/v2.1/os-server-external-events"
    assert seen.headers["x-auth-token"] == "svc-token-1"
    assert "x-service-token" not in seen.headers


def test_volume_extended_events_under_noauth_are_as_before() -> None:
    compute = _compute()
    try:
        assert compute_events.volume_extended(ComputeEndpoint(url=compute.url), VOLUME,
                                              [INSTANCE])
    finally:
        compute.stop()
    assert compute.seen[0].headers["x-auth-token"] == compute_events.TOKEN


def test_volume_extended_renews_a_refused_token_once(keystone: FakeKeystone) -> None:
    compute = _compute(status=401)
    try:
        assert not compute_events.volume_extended(ComputeEndpoint(url=compute.url), VOLUME,
                                                  [INSTANCE],
                                                  auth=ServiceAuth(keystone.user()))
    finally:
        compute.stop()
    assert [s.headers["x-auth-token"] for s in compute.seen] == ["svc-token-1", "svc-token-2"]


def test_volume_extended_without_a_token_is_logged_not_raised(
        keystone: FakeKeystone, caplog: pytest.LogCaptureFixture) -> None:
    keystone.refuse = True
    compute = _compute()
    try:
        assert not compute_events.volume_extended(ComputeEndpoint(url=compute.url), VOLUME,
                                                  [INSTANCE],
                                                  auth=ServiceAuth(keystone.user()))
    finally:
        compute.stop()
    assert compute.seen == []
    assert "could not send the volume-extended event" in caplog.text
    assert "service user 'blockyard'" in caplog.text
