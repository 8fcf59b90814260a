"""The real Keystone of the tests (tests/support/keystone.py) does what the auth tests lean on:
project-scoped tokens carrying implied roles, system scope, the services' own users,
revocation, expiry, the catalog; and keystonemiddleware's auth_token, configured as blockyard
configures it, accepts its tokens and turns away others."""

from __future__ import annotations

import time
import tomllib
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import pytest
import webob

from tests.support import keystone as keystone_support
from tests.support.daemons import processes_mentioning
from tests.support.keystone import Keystone, KeystoneError, authtoken_config

WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


def role_names(body: dict[str, Any]) -> set[str]:
    return {role["name"] for role in body["roles"]}


def test_member_token_carries_member_and_implied_reader(keystone: Keystone) -> None:
    user_id, token = keystone.persona("fixture-p1", "member")
    body = keystone.validate(token)
    assert body is not None
    assert role_names(body) == {"member", "reader"}  # member implies reader, nothing more
    assert body["user"]["id"] == user_id
    assert body["project"]["id"] == keystone.project("fixture-p1")
    assert body["project"]["name"] == "fixture-p1"


def test_admin_persona_implies_member_and_reader(keystone: Keystone) -> None:
    _, token = keystone.persona("fixture-p1", "admin")
    body = keystone.validate(token)
    assert body is not None
    assert {"admin", "member", "reader"} <= role_names(body)


def test_reader_of_one_project_cannot_scope_to_another(keystone: Keystone) -> None:
    keystone.persona("fixture-p1", "reader")
    keystone.project("fixture-p2")
    with pytest.raises(RuntimeError, match="401"):
        keystone.token("fixture-p1-reader", project="fixture-p2")


def test_admin_token_is_the_admin_project_s(keystone: Keystone) -> None:
    body = keystone.validate(keystone.admin_token())
    assert body is not None
    assert body["project"]["name"] == "admin"
    assert {"admin", "member", "reader"} <= role_names(body)


def test_system_token_is_system_scoped(keystone: Keystone) -> None:
    body = keystone.validate(keystone.system_token())
    assert body is not None
    assert body["system"] == {"all": True}
    assert "project" not in body
    assert "admin" in role_names(body)


def test_service_user_has_service_and_admin_on_the_service_project(keystone: Keystone) -> None:
    creds = keystone.service_user("fixture-cinder")
    assert creds["auth_url"] == keystone.url
    token = keystone.token(creds["username"], creds["password"], creds["project_name"])
    body = keystone.validate(token)
    assert body is not None
    assert body["project"]["name"] == "service"
    assert {"service", "admin", "member", "reader"} <= role_names(body)


def test_revoked_token_no_longer_validates(keystone: Keystone) -> None:
    _, token = keystone.persona("fixture-p1", "member")
    _, other = keystone.persona("fixture-p1", "member")
    assert keystone.validate(token) is not None  # validated once: any cache now holds it
    keystone.revoke(token)
    assert keystone.validate(token) is None
    assert keystone.validate(other) is not None  # one token revoked, not the user


def test_catalog_lists_registered_endpoints(keystone: Keystone) -> None:
    _, token = keystone.persona("fixture-p1", "member")
    project_id = keystone.project("fixture-p1")
    keystone.register_endpoint("block-storage", "cinderv3",
                               "http://127.0.0.1:1/v3/%(project_id)s")
    keystone.register_endpoint("compute", "nova", "http://127.0.0.1:2/v2.1")
    # registering again moves the endpoint rather than adding a second one
    keystone.register_endpoint("block-storage", "cinderv3",
                               "http://127.0.0.1:3/v3/%(project_id)s")
    urls = {entry["type"]: [e["url"] for e in entry["endpoints"] if e["interface"] == "public"]
            for entry in keystone.catalog(token)}
    assert urls["identity"] == [keystone.url]
    assert urls["block-storage"] == [f"http://127.0.0.1:3/v3/{project_id}"]
    assert urls["compute"] == ["http://127.0.0.1:2/v2.1"]


def test_tokens_expire_after_the_configured_lifetime(tmp_path: Path) -> None:
    with Keystone(tmp_path / "ks", token_expiration=3) as ks:
        assert processes_mentioning(str(ks.dir))  # gunicorn: master and worker
        _, token = ks.persona("p", "member")
        assert ks.validate(token) is not None
        deadline = time.monotonic() + 10
        while ks.validate(token) is not None:
            assert time.monotonic() < deadline, "the token outlived its 3 s lifetime"
            time.sleep(0.5)
    assert processes_mentioning(str(ks.dir)) == []  # stop() left nothing behind


def test_a_failed_start_says_why(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Keystone's app failing to import (a bad config does that): gunicorn gives up at once
    monkeypatch.setattr(keystone_support, "_APP_MODULE",
                        "raise RuntimeError('no keystone here')")
    ks = Keystone(tmp_path / "ks")
    with pytest.raises(KeystoneError, match="no keystone here"):
        ks.start()
    assert ks.pid is None
    assert processes_mentioning(str(ks.dir)) == []


# ---------------------------------------------------------------------- keystonemiddleware

def _echo_identity(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
    """A WSGI app that answers with what auth_token told it about the caller."""
    keys = ("HTTP_X_IDENTITY_STATUS", "HTTP_X_USER_ID", "HTTP_X_PROJECT_ID", "HTTP_X_ROLES",
            "HTTP_X_SERVICE_IDENTITY_STATUS", "HTTP_X_SERVICE_ROLES")
    start_response("200 OK", [("Content-Type", "text/plain")])
    return ["\n".join(f"{k}={environ.get(k, '')}" for k in keys).encode()]


@pytest.fixture(scope="module")
def auth_token(keystone: Keystone) -> WsgiApp:
    """keystonemiddleware's auth_token around `_echo_identity`, configured with the
    [keystone_authtoken] table that `authtoken_config` writes for blockyard."""
    from keystonemiddleware import auth_token as ks_auth_token

    config = tomllib.loads(authtoken_config(keystone, "fixture-blockyard",
                                            delay_auth_decision=False))
    assert config["auth"] == {"strategy": "keystone"}
    conf = config["keystone_authtoken"]
    assert conf["auth_url"] == conf["www_authenticate_uri"] == keystone.url
    assert conf["project_name"] == "service"
    app: WsgiApp = ks_auth_token.AuthProtocol(_echo_identity, conf)
    return app


def _call(app: WsgiApp, headers: dict[str, str]) -> webob.Response:
    return webob.Request.blank("/v3/volumes", headers=headers).get_response(app)


def _fields(reply: webob.Response) -> dict[str, str]:
    return dict(line.split("=", 1) for line in reply.text.splitlines())


def test_auth_token_accepts_a_member_token(keystone: Keystone, auth_token: WsgiApp) -> None:
    user_id, token = keystone.persona("fixture-p1", "member")
    reply = _call(auth_token, {"X-Auth-Token": token})
    assert reply.status_int == 200, reply.text
    seen = _fields(reply)
    assert seen["HTTP_X_IDENTITY_STATUS"] == "Confirmed"
    assert seen["HTTP_X_USER_ID"] == user_id
    assert seen["HTTP_X_PROJECT_ID"] == keystone.project("fixture-p1")
    assert set(seen["HTTP_X_ROLES"].split(",")) == {"member", "reader"}


def test_auth_token_rejects_a_bad_token(keystone: Keystone, auth_token: WsgiApp) -> None:
    reply = _call(auth_token, {"X-Auth-Token": "not-a-token"})
    assert reply.status_int == 401
    assert keystone.url.rsplit("/v3", 1)[0] in reply.headers["WWW-Authenticate"]


def test_auth_token_rejects_a_missing_token(auth_token: WsgiApp) -> None:
    assert _call(auth_token, {}).status_int == 401


def test_auth_token_rejects_a_revoked_token(keystone: Keystone, auth_token: WsgiApp) -> None:
    _, token = keystone.persona("fixture-p1", "member")
    keystone.revoke(token)  # before auth_token ever saw it: its own cache holds nothing
    assert _call(auth_token, {"X-Auth-Token": token}).status_int == 401


def test_auth_token_reads_a_service_token(keystone: Keystone, auth_token: WsgiApp) -> None:
    _, token = keystone.persona("fixture-p1", "member")
    creds = keystone.service_user("fixture-nova")
    service = keystone.token(creds["username"], creds["password"], creds["project_name"])
    reply = _call(auth_token, {"X-Auth-Token": token, "X-Service-Token": service})
    assert reply.status_int == 200, reply.text
    seen = _fields(reply)
    assert seen["HTTP_X_SERVICE_IDENTITY_STATUS"] == "Confirmed"
    assert {"service", "admin"} <= set(seen["HTTP_X_SERVICE_ROLES"].split(","))
