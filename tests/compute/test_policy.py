"""The compute agent's policy: every route declares a Nova rule, and each persona gets what
Nova's defaults give it (generated from the routes and the rule defaults, so a new route is
covered the day it is added), plus the cells that matter spelled out by hand.

The app is the agent's own, with a stand-in for the REST edge's auth middleware that puts
the persona's `Identity` where the real one will (``request.state.identity``). Servers are
rows in the agent's store (no QEMU): an allowed call goes on to fail further in (the volume
service is unreachable, the image unknown...), which is neither 403 nor the server's 404.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from starlette.routing import Route
from starlette.testclient import TestClient
from starlette.types import ASGIApp, Receive, Scope, Send

from blockyard.compute import config as compute_config
from blockyard.compute import policies
from blockyard.compute.api import ROUTES, PolicyRoute, create_app
from blockyard.compute.manager import Agent
from blockyard.compute.store import Instance, InstanceStatus
from blockyard.errors import ConfigError
from blockyard.identity import ADMIN, MEMBER, READER, SERVICE, Identity

OWNER = "project-a"
PERSONAS = {
    "reader": Identity("reader-a", OWNER, roles=frozenset({READER})),
    "member": Identity("member-a", OWNER, roles=frozenset({MEMBER, READER})),
    "admin": Identity("admin", "admin-project", roles=frozenset({ADMIN, MEMBER, READER})),
    "other-member": Identity("member-b", "project-b", roles=frozenset({MEMBER, READER})),
    "service": Identity("cinder", "service", roles=frozenset({SERVICE})),
}
RULES = {rule.name: rule for rule in policies.DEFAULTS}
PUBLIC = {"/", "/v2.1", "/v2.1/"}


class Personas:
    """Stand-in for blockyard.rest.auth: the X-Test-Persona header names the caller."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            name = dict(scope["headers"]).get(b"x-test-persona", b"").decode()
            if name:
                scope.setdefault("state", {})["identity"] = PERSONAS[name]
        await self.app(scope, receive, send)


def keystone_config(tmp_path: Path, **extra: Any) -> compute_config.ComputeConfig:
    creds = {"auth_url": "http://127.0.0.1:9/v3", "username": "nova", "password": "secret",
             "project_name": "service"}
    return compute_config.build({
        "state_dir": str(tmp_path), "volume_url": "http://127.0.0.1:9",
        "auth": {"strategy": "keystone"}, "keystone_authtoken": creds, "service_user": creds,
        **extra})


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    app = create_app(keystone_config(tmp_path_factory.mktemp("agent")))
    app.add_middleware(Personas)
    with TestClient(app) as tc:
        yield tc


def _server(tc: TestClient, project: str = OWNER) -> str:
    """A server row of `project` (no guest behind it), with a volume slot reserved."""
    agent: Agent = tc.app.state.agent  # type: ignore[attr-defined]
    sid = str(uuid.uuid4())
    inst = agent.store.add_instance(Instance(
        id=sid, name="s", project_id=project, user_id="someone",
        status=InstanceStatus.ACTIVE, qmp_socket=f"/nonexistent/{sid}.sock"))
    agent.store.reserve(inst, VOLUME, None)
    return sid


VOLUME = "8f1c5b1e-4d7a-4c50-9d1e-0a3c9b6e2f10"
BODIES: dict[str, Any] = {
    policies.SERVERS_CREATE: {"server": {"name": "x", "imageRef": "none",
                                         "flavorRef": "m1.tiny"}},
    policies.ATTACHMENTS_CREATE: {"volumeAttachment": {"volumeId": VOLUME}},
}


def _call(tc: TestClient, persona: str, method: str, path: str, rule: str | None) -> Any:
    server = _server(tc)
    url = path.replace("{server_id}", server).replace("{volume_id}", VOLUME)
    body = BODIES.get(rule or "")
    if rule == policies.EVENTS_CREATE:
        body = {"events": [{"name": "network-changed", "server_uuid": server}]}
    return tc.request(method, url, json=body, headers={"X-Test-Persona": persona})


def _expected(persona: str, path: str, rule: str | None) -> str:
    """What Nova's defaults give: 'ok', 403 or 404 (the server is of project A)."""
    identity = PERSONAS[persona]
    engine = policies.ComputePolicy()
    if rule is None:
        return "ok"
    if "{server_id}" in path:
        if not engine.sees(identity, OWNER):
            return "404"
        target = {"project_id": OWNER}
    else:
        target = {"project_id": identity.project_id}
    return "ok" if engine.check(identity, rule, target) else "403"


def _cases() -> list[Any]:
    cases = []
    for route in ROUTES:
        assert isinstance(route, PolicyRoute)
        for method in sorted((route.methods or set()) - {"HEAD"}):
            for persona in PERSONAS:
                cases.append(pytest.param(persona, method, route.path, route.rule,
                                          id=f"{persona}:{method}:{route.path}"))
    return cases


@pytest.mark.parametrize("persona, method, path, rule", _cases())
def test_persona_matrix(client: TestClient, persona: str, method: str, path: str,
                        rule: str | None) -> None:
    r = _call(client, persona, method, path, rule)
    expected = _expected(persona, path, rule)
    if expected == "ok":
        assert r.status_code not in (401, 403), r.text
        assert not (r.status_code == 404 and "Instance" in r.text), r.text
    elif expected == "404":
        assert r.status_code == 404 and "Instance" in r.text, r.text
    else:
        assert r.status_code == 403, r.text
        assert r.json() == {"forbidden": {"code": 403, "message":
                                          f"Policy doesn't allow {rule} to be performed."}}


@pytest.mark.parametrize("persona, method, path, status", [
    ("reader", "POST", "/v2.1/servers/{server_id}/os-volume_attachments", 403),
    ("reader", "DELETE", "/v2.1/servers/{server_id}/os-volume_attachments/{volume_id}", 403),
    ("reader", "DELETE", "/v2.1/servers/{server_id}", 403),
    ("reader", "GET", "/v2.1/servers/{server_id}", 200),
    ("member", "GET", "/v2.1/servers/{server_id}/os-volume_attachments/{volume_id}", 200),
    ("other-member", "GET", "/v2.1/servers/{server_id}", 404),
    ("other-member", "POST", "/v2.1/servers/{server_id}/os-volume_attachments", 404),
    ("service", "GET", "/v2.1/servers/{server_id}", 404),
    ("admin", "GET", "/v2.1/servers/{server_id}", 200),
    ("member", "POST", "/v2.1/os-server-external-events", 403),
    ("reader", "POST", "/v2.1/os-server-external-events", 403),
    ("service", "POST", "/v2.1/os-server-external-events", 200),
    ("admin", "POST", "/v2.1/os-server-external-events", 200),
])
def test_nova_defaults_by_hand(client: TestClient, persona: str, method: str, path: str,
                               status: int) -> None:
    rule = {"POST /v2.1/os-server-external-events": policies.EVENTS_CREATE}.get(
        f"{method} {path}")
    assert _call(client, persona, method, path, rule).status_code == status


def test_every_route_declares_a_rule_documented_for_it() -> None:
    for route in ROUTES:
        assert isinstance(route, Route) and isinstance(route, PolicyRoute), route
        if route.rule is None:
            assert route.path in PUBLIC, f"{route.path} has no policy rule"
            continue
        documented = RULES[route.rule]
        assert isinstance(documented, policies.oslo_policy.DocumentedRuleDefault)
        path = re.sub(r"^/v2\.1", "", route.path).rstrip("/")
        for method in (route.methods or set()) - {"HEAD"}:
            assert {"method": method, "path": path} in documented.operations, \
                (route.rule, method, path)


def test_listing_all_projects_is_for_admins(client: TestClient) -> None:
    mine, theirs = _server(client, OWNER), _server(client, "project-b")
    for path in ("/v2.1/servers", "/v2.1/servers/detail"):
        r = client.get(path, headers={"X-Test-Persona": "member"})
        ids = {s["id"] for s in r.json()["servers"]}
        assert mine in ids and theirs not in ids
        r = client.get(path + "?all_tenants=1", headers={"X-Test-Persona": "member"})
        assert r.status_code == 403, r.text
        r = client.get(path + "?all_tenants=1", headers={"X-Test-Persona": "admin"})
        assert {mine, theirs} <= {s["id"] for s in r.json()["servers"]}


def test_adopting_a_qemu_is_for_admins(client: TestClient) -> None:
    body = {"server": {"name": "x", "blockyard:qmp_socket": "/nonexistent/qmp.sock"}}
    r = client.post("/v2.1/servers", json=body, headers={"X-Test-Persona": "member"})
    assert r.status_code == 403 and policies.SERVERS_ADOPT in r.text
    r = client.post("/v2.1/servers", json=body, headers={"X-Test-Persona": "admin"})
    assert r.status_code == 400 and "No QEMU answers" in r.text


def test_without_an_identity_keystone_never_falls_back_to_noauth(client: TestClient) -> None:
    r = client.get("/v2.1/servers", headers={"X-Auth-Token": "admin:admin"})
    assert r.status_code == 401


def test_a_policy_file_overrides_a_default(tmp_path: Path) -> None:
    rules = tmp_path / "policy.yaml"
    rules.write_text(f'"{policies.SERVERS_SHOW}": "role:admin"\n')
    app = create_app(keystone_config(tmp_path, oslo_policy={"policy_file": str(rules)}))
    app.add_middleware(Personas)
    with TestClient(app) as tc:
        sid = _server(tc)
        assert tc.get(f"/v2.1/servers/{sid}", headers={"X-Test-Persona": "reader"}) \
            .status_code == 403
        assert tc.get(f"/v2.1/servers/{sid}/os-volume_attachments",
                      headers={"X-Test-Persona": "reader"}).status_code == 200


@pytest.mark.parametrize("raw, key", [
    ({"auth": {"strategy": "basic"}}, "auth.strategy"),
    ({"auth": {"stratgy": "keystone"}}, "auth.stratgy"),
    ({"auth": {"strategy": "keystone"}}, "keystone_authtoken.auth_url"),
    ({"keystone_authtoken": {"auth_url": "keystone:5000"}}, "keystone_authtoken.auth_url"),
    ({"keystone_authtoken": {"token_cache_time": "300"}},
     "keystone_authtoken.token_cache_time"),
    ({"service_user": {"pasword": "x"}}, "service_user.pasword"),
    ({"auth": {"strategy": "keystone"},
      "keystone_authtoken": {"auth_url": "http://k/v3", "username": "n", "password": "p",
                             "project_name": "s"},
      "service_user": {"auth_url": "http://k/v3", "username": "n", "project_name": "s"}},
     "service_user.password"),
    ({"oslo_policy": {"policy_file": "/nonexistent/policy.yaml"}}, "oslo_policy.policy_file"),
])
def test_bad_auth_config_names_the_key(raw: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError) as err:
        compute_config.build(raw)
    assert err.value.key == key


def test_auth_config_defaults_to_noauth_and_reads_keystone(tmp_path: Path) -> None:
    assert compute_config.build({}).auth_strategy == "noauth"
    cfg = keystone_config(tmp_path)
    assert cfg.auth_strategy == "keystone"
    assert cfg.keystone_authtoken["username"] == "nova"
    assert cfg.service_user is not None and cfg.service_user.project_name == "service"
    assert cfg.service_user.user_domain_name == "Default"
