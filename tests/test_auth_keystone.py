"""The volume API behind real Keystone tokens: who gets in, with what identity, for how long.

A real Keystone (tests/support/keystone.py) and a real `blockyard serve` with
``[auth] strategy = "keystone"``: keystonemiddleware validates every token; these tests check
what a user sees of that at the HTTP edge.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.keystone import Keystone, authtoken_config
from tests.support.server import Server, free_port

#: seconds keystonemiddleware may keep a validated token (revocation shows after this)
CACHE_SECONDS = 2


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, keystone: Keystone) -> Iterator[Server]:
    srv = Server(tmp_path_factory.mktemp("auth") / "state",
                 config=authtoken_config(keystone, "cinder-auth",
                                         token_cache_time=CACHE_SECONDS)).start()
    yield srv
    srv.stop()


def _get(server: Server, path: str, token: str | None = None,
         **headers: str) -> httpx.Response:
    if token is not None:
        headers["X-Auth-Token"] = token
    return httpx.get(f"{server.endpoint}{path}", headers=headers, timeout=30)


def test_version_discovery_needs_no_token(server: Server) -> None:
    assert httpx.get(server.url + "/", timeout=30).status_code == 300


@pytest.mark.parametrize("token", [None, "", "not-a-token", "admin:admin"])
def test_a_missing_or_bad_token_is_401_saying_where_to_authenticate(
        server: Server, keystone: Keystone, token: str | None) -> None:
    answer = _get(server, "/volumes", token)
    assert answer.status_code == 401, answer.text
    assert answer.headers["WWW-Authenticate"] == f'Keystone uri="{keystone.url}"'
    assert answer.json()["error"]["code"] == 401
    assert answer.headers["X-OpenStack-Request-Id"].startswith("req-")


def test_keystone_out_of_reach_is_503_not_500(tmp_path: Path, keystone: Keystone) -> None:
    """Tokens cannot be checked: the service is unavailable, it does not fail."""
    nowhere = f"http://127.0.0.1:{free_port()}/v3"
    config = authtoken_config(keystone, "cinder-nowhere", http_request_max_retries=0,
                              http_connect_timeout=2).replace(keystone.url, nowhere)
    srv = Server(tmp_path / "state", config=config).start()
    try:
        answer = _get(srv, "/volumes", "some-token")
        assert answer.status_code == 503, answer.text
        assert "Keystone" in answer.text
    finally:
        srv.stop()


def test_a_member_token_is_its_project_and_roles(server: Server, keystone: Keystone) -> None:
    """The identity comes from the token: the project's volumes, the member's rights."""
    project = keystone.project("auth-a")
    _, token = keystone.persona("auth-a", "member")
    created = httpx.post(f"{server.endpoint}/volumes", json={"volume": {"size": 1}},
                         headers={"X-Auth-Token": token}, timeout=30)
    assert created.status_code == 202, created.text
    volume = created.json()["volume"]
    shown = _get(server, f"/volumes/{volume['id']}", token).json()["volume"]
    # Cinder's volume_extension:volume_tenant_attribute: a project reader sees the owner
    assert shown["os-vol-tenant-attr:tenant_id"] == project
    _, other = keystone.persona("auth-b", "member")
    assert _get(server, f"/volumes/{volume['id']}", other).status_code == 404
    listed = _get(server, "/volumes", token).json()["volumes"]
    assert [v["id"] for v in listed] == [volume["id"]]


def test_a_member_naming_another_projects_limits_gets_its_own(server: Server,
                                                              keystone: Keystone) -> None:
    """As Cinder: only an admin's `project_id` is heeded (3.39+), no 403 to probe with."""
    _, token = keystone.persona("auth-limits", "member")
    created = httpx.post(f"{server.endpoint}/volumes", json={"volume": {"size": 1}},
                         headers={"X-Auth-Token": token}, timeout=30)
    assert created.status_code == 202, created.text
    headers = {"OpenStack-API-Version": "volume 3.39"}
    empty_project = keystone.project("auth-limits-empty")
    other = _get(server, f"/limits?project_id={empty_project}", token, **headers)
    assert other.status_code == 200, other.text
    assert other.json()["limits"]["absolute"]["totalVolumesUsed"] == 1  # its own, not 0


def test_the_type_access_flag_is_for_members_not_readers(server: Server,
                                                         keystone: Keystone) -> None:
    """Cinder's volume_extension:volume_type_access: the `is_public` access flag is shown
    to a project member (and admins), not to a reader."""
    _, reader = keystone.persona("auth-types", "reader")
    _, member = keystone.persona("auth-types", "member")
    flag = "os-volume-type-access:is_public"
    assert all(flag not in t for t in _get(server, "/types", reader).json()["volume_types"])
    types = _get(server, "/types", member).json()["volume_types"]
    assert types and all(t[flag] is True for t in types)


def test_a_reader_token_may_look_but_not_create(server: Server, keystone: Keystone) -> None:
    _, token = keystone.persona("auth-r", "reader")
    assert _get(server, "/volumes", token).status_code == 200
    refused = httpx.post(f"{server.endpoint}/volumes", json={"volume": {"size": 1}},
                         headers={"X-Auth-Token": token}, timeout=30)
    assert refused.status_code == 403, refused.text
    assert "volume:create" in refused.json()["forbidden"]["message"]


def test_a_revoked_token_stops_working_within_the_cache_time(server: Server,
                                                             keystone: Keystone) -> None:
    _, token = keystone.persona("auth-revoke", "member")
    assert _get(server, "/volumes", token).status_code == 200
    keystone.revoke(token)
    deadline = time.monotonic() + CACHE_SECONDS + 3
    while _get(server, "/volumes", token).status_code == 200:
        assert time.monotonic() < deadline, "a revoked token still works after the cache time"
        time.sleep(0.2)
    assert _get(server, "/volumes", token).status_code == 401


def test_an_expired_token_is_refused_even_from_the_cache(tmp_path: Path,
                                                         keystone: Keystone) -> None:
    """keystonemiddleware checks expiry on every request, cached or not (a short-lived
    Keystone of its own: tokens last a few seconds)."""
    with Keystone(tmp_path / "ks", token_expiration=4) as short:
        srv = Server(tmp_path / "state", config=authtoken_config(short, "cinder-exp")).start()
        try:
            _, token = short.persona("exp", "member")
            assert _get(srv, "/volumes", token).status_code == 200
            time.sleep(5)
            assert _get(srv, "/volumes", token).status_code == 401
            # X-Service-Token is honoured: a service (role `service`) vouching for the call
            # lets an expired user token finish what it started, as Nova relies on; a
            # service token of a user without that role does not
            service = short.service_user("nova-exp")
            service_token = short.token(service["username"], service["password"],
                                        project=service["project_name"])
            assert _get(srv, "/volumes", token,
                        **{"X-Service-Token": service_token}).status_code == 200
            _, member_token = short.persona("exp-other", "member")
            assert _get(srv, "/volumes", token,
                        **{"X-Service-Token": member_token}).status_code == 401
        finally:
            srv.stop()
