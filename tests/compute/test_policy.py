"""The compute agent's policy: every route declares a Nova rule, and each persona gets what
Nova's defaults give it (generated from the routes and the rule defaults, so a new route is
covered the day it is added), plus the cells that matter spelled out by hand.

The app is the agent's own, middleware and all, with ``[auth] strategy = "keystone"``
against the session's real Keystone: each persona is a Keystone user holding its role on its
project, and each request carries its real token (keystonemiddleware validates it; the agent's
`Authenticate` makes the identity). Project ids are Keystone's: the `cast` fixture provides
them. Servers are rows in the agent's store (no QEMU): an allowed call goes on to fail further
in (the volume service is unreachable, the image unknown...), which is neither 403 nor the
server's 404.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from oslo_policy import policy as oslo_policy
from starlette.routing import Route
from starlette.testclient import TestClient

from blockyard.compute import config as compute_config
from blockyard.compute import policies
from blockyard.compute.api import ROUTES, create_app
from blockyard.compute.manager import Agent
from blockyard.compute.routing import PolicyRoute
from blockyard.compute.store import Instance, InstanceStatus
from blockyard.errors import ConfigError
from blockyard.identity import ADMIN, MEMBER, READER, SERVICE, Identity
from tests.support.keystone import DEFAULT_DOMAIN, Keystone

#: each persona: the role its Keystone user is granted, on which project (a name suffix), and
#: the roles its token then carries (Keystone's implied roles: admin → manager → member →
#: reader). The admin is an admin of a project of its own, the service user has no other role.
GRANTS = {
    "reader": (READER, "a", {READER}),
    "member": (MEMBER, "a", {MEMBER, READER}),
    "admin": (ADMIN, "admin", {ADMIN, "manager", MEMBER, READER}),
    "other-member": (MEMBER, "b", {MEMBER, READER}),
    "service": (SERVICE, "service", {SERVICE}),
}
PERSONAS = tuple(GRANTS)
RULES = {rule.name: rule for rule in policies.DEFAULTS}
PUBLIC = {"/", "/v2.1", "/v2.1/"}
#: what Nova (and Glance) guard by no rule: any authenticated caller reads flavors and images;
#: and the server actions, where each action checks its own rule (`compute.actions.ACTIONS`)
UNGUARDED = re.compile(r"^/v2\.1/(flavors|images)(/|$)|^/image(/|$)|"
                       r"^/v2\.1/servers/\{server_id\}/action$")

CREDS = {"auth_url": "http://127.0.0.1:9/v3", "username": "nova", "password": "secret",
         "project_name": "service"}


@dataclass(frozen=True)
class Cast:
    """The personas as Keystone made them: identities (what Nova's defaults are expected to
    see), tokens, and the ids of the owning project (A) and the other one (B)."""

    owner: str
    other: str
    identities: dict[str, Identity]
    tokens: dict[str, str]

    def auth(self, persona: str) -> dict[str, str]:
        return {"X-Auth-Token": self.tokens[persona]}


@pytest.fixture(scope="module")
def cast(keystone: Keystone) -> Cast:
    identities, tokens = {}, {}
    for name, (role, suffix, roles) in GRANTS.items():
        project = f"compute-matrix-{suffix}"
        user_id, tokens[name] = keystone.persona(project, role)
        identities[name] = Identity(user_id, keystone.project(project), frozenset(roles),
                                    user_domain_id=DEFAULT_DOMAIN,
                                    project_domain_id=DEFAULT_DOMAIN, is_admin_project=True)
    return Cast(keystone.project("compute-matrix-a"), keystone.project("compute-matrix-b"),
                identities, tokens)


def keystone_config(tmp_path: Path, ks: Keystone | None = None,
                    **auth: Any) -> compute_config.ComputeConfig:
    """The agent under ``[auth] strategy = "keystone"``: against `ks` with a real service
    user, or (no `ks`) against nothing, for what only reads the config."""
    creds = ks.service_user("nova-matrix") if ks is not None else CREDS
    uri = ks.url if ks is not None else "http://127.0.0.1:9/v3"
    return compute_config.build({
        "state_dir": str(tmp_path), "volume_url": "http://127.0.0.1:9",
        "auth": {"strategy": "keystone", **auth},
        "keystone_authtoken": {"www_authenticate_uri": uri, "auth_type": "password", **creds}
        if ks is not None else {"www_authenticate_uri": uri, **creds},
        "service_user": creds})


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory, keystone: Keystone,
           cast: Cast) -> Iterator[TestClient]:
    with TestClient(create_app(keystone_config(tmp_path_factory.mktemp("agent"),
                                               keystone))) as tc:
        yield tc


def _server(tc: TestClient, project: str) -> str:
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


def _call(tc: TestClient, cast: Cast, persona: str, method: str, path: str,
          rule: str | None) -> Any:
    server = _server(tc, cast.owner)
    url = path.replace("{server_id}", server).replace("{volume_id}", VOLUME)
    body = BODIES.get(rule or "")
    if rule == policies.EVENTS_CREATE:
        body = {"events": [{"name": "network-changed", "server_uuid": server}]}
    return tc.request(method, url, json=body, headers=cast.auth(persona))


def _expected(cast: Cast, persona: str, path: str, rule: str | None) -> str:
    """What Nova's defaults give: 'ok', 403 or 404 (the server is of project A)."""
    identity = cast.identities[persona]
    engine = policies.ComputePolicy()
    if rule is None:
        return "ok"
    if "{server_id}" in path:
        if not engine.sees(identity, cast.owner):
            return "404"
        target = {"project_id": cast.owner}
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
def test_persona_matrix(client: TestClient, cast: Cast, persona: str, method: str, path: str,
                        rule: str | None) -> None:
    r = _call(client, cast, persona, method, path, rule)
    expected = _expected(cast, persona, path, rule)
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
def test_nova_defaults_by_hand(client: TestClient, cast: Cast, persona: str, method: str,
                               path: str, status: int) -> None:
    rule = {"POST /v2.1/os-server-external-events": policies.EVENTS_CREATE}.get(
        f"{method} {path}")
    assert _call(client, cast, persona, method, path, rule).status_code == status


@pytest.mark.parametrize("persona, status", [
    ("reader", 403), ("member", 200), ("admin", 200), ("other-member", 404), ("service", 404)])
def test_console_output_is_for_members(client: TestClient, cast: Cast, persona: str,
                                       status: int) -> None:
    """os-getConsoleOutput: Nova's os_compute_api:os-console-output (member or admin); the
    server row has no console socket of the agent's, so an allowed call says so (404) —
    told apart from another project's server by the message."""
    server = _server(client, cast.owner)
    r = client.post(f"/v2.1/servers/{server}/action", json={"os-getConsoleOutput": {}},
                    headers=cast.auth(persona))
    if status == 403:
        assert r.status_code == 403 and policies.CONSOLE_OUTPUT in r.text, r.text
    elif status == 404:
        assert r.status_code == 404 and "Instance" in r.text, r.text
    else:
        assert r.status_code == 404 and "console" in r.text, r.text


def test_each_persona_is_what_its_token_says(cast: Cast, keystone: Keystone) -> None:
    """The identities the expectations are computed with are Keystone's view of the tokens
    the requests carry: user, project and roles (the granted one and those it implies)."""
    for name, who in cast.identities.items():
        token = keystone.validate(cast.tokens[name])
        assert token is not None, name
        assert (token["user"]["id"], token["project"]["id"]) == (who.user_id, who.project_id)
        assert {r["name"] for r in token["roles"]} == who.roles, name
        assert token.get("is_admin_project", True) is who.is_admin_project


def test_every_route_declares_a_rule_documented_for_it() -> None:
    for route in ROUTES:
        assert isinstance(route, Route) and isinstance(route, PolicyRoute), route
        if route.rule is None:
            assert route.path in PUBLIC or UNGUARDED.match(route.path), \
                f"{route.path} has no policy rule"
            continue
        documented = RULES[route.rule]
        assert isinstance(documented, oslo_policy.DocumentedRuleDefault)
        path = re.sub(r"^/v2\.1", "", route.path).rstrip("/")
        for method in (route.methods or set()) - {"HEAD"}:
            assert {"method": method, "path": path} in documented.operations, \
                (route.rule, method, path)


def test_listing_all_projects_is_for_admins(client: TestClient, cast: Cast) -> None:
    mine, theirs = _server(client, cast.owner), _server(client, cast.other)
    for path in ("/v2.1/servers", "/v2.1/servers/detail"):
        r = client.get(path, headers=cast.auth("member"))
        ids = {s["id"] for s in r.json()["servers"]}
        assert mine in ids and theirs not in ids
        r = client.get(path + "?all_tenants=1", headers=cast.auth("member"))
        assert r.status_code == 403, r.text
        r = client.get(path + "?all_tenants=1", headers=cast.auth("admin"))
        assert {mine, theirs} <= {s["id"] for s in r.json()["servers"]}


def test_adopting_a_qemu_is_for_admins(client: TestClient, cast: Cast) -> None:
    body = {"server": {"name": "x", "blockyard:qmp_socket": "/nonexistent/qmp.sock"}}
    r = client.post("/v2.1/servers", json=body, headers=cast.auth("member"))
    assert r.status_code == 403 and policies.SERVERS_ADOPT in r.text
    r = client.post("/v2.1/servers", json=body, headers=cast.auth("admin"))
    assert r.status_code == 400 and "No QEMU answers" in r.text


@pytest.mark.parametrize("token", [None, "member", "gAAAAAnot-a-token"])
def test_versions_are_public_and_the_rest_needs_a_token(client: TestClient,
                                                        keystone: Keystone,
                                                        token: str | None) -> None:
    """No token, or one Keystone never issued (a persona's name, as the noauth strategy
    would take it): keystonemiddleware's 401."""
    assert client.get("/").status_code == 300
    assert client.get("/v2.1").status_code == 200
    r = client.get("/v2.1/servers", headers={"X-Auth-Token": token} if token else {})
    assert r.status_code == 401, r.text
    assert r.headers["www-authenticate"] == f'Keystone uri="{keystone.url}"'


def test_noauth_callers_are_admins_as_before(tmp_path: Path) -> None:
    with TestClient(create_app(compute_config.build({"state_dir": str(tmp_path)}))) as tc:
        sid = _server(tc, "project-b")
        assert tc.get(f"/v2.1/servers/{sid}", headers={"X-Auth-Token": "demo:demo"}) \
            .status_code == 200
        r = tc.get("/v2.1/servers", headers={"X-Auth-Token": "demo:project-b"})
        assert [s["id"] for s in r.json()["servers"]] == [sid]


def test_a_policy_file_overrides_a_default(tmp_path: Path, keystone: Keystone,
                                           cast: Cast) -> None:
    rules = tmp_path / "policy.yaml"
    rules.write_text(f'"{policies.SERVERS_SHOW}": "role:admin"\n')
    config = keystone_config(tmp_path, keystone, policy_file=str(rules))
    with TestClient(create_app(config)) as tc:
        sid = _server(tc, cast.owner)
        assert tc.get(f"/v2.1/servers/{sid}", headers=cast.auth("reader")).status_code == 403
        assert tc.get(f"/v2.1/servers/{sid}/os-volume_attachments",
                      headers=cast.auth("reader")).status_code == 200


@pytest.mark.parametrize("raw, key", [
    ({"auth": {"strategy": "basic"}}, "auth.strategy"),
    ({"auth": {"stratgy": "keystone"}}, "auth.stratgy"),
    ({"auth": {"strategy": "keystone"}}, "keystone_authtoken.www_authenticate_uri"),
    ({"auth": {"strategy": "keystone"},
      "keystone_authtoken": {"www_authenticate_uri": "http://k/v3", **CREDS,
                             "auth_url": "keystone:5000"}}, "keystone_authtoken.auth_url"),
    ({"keystone_authtoken": CREDS}, "keystone_authtoken"),  # under noauth: unused, so wrong
    ({"auth": {"strategy": "keystone"},
      "keystone_authtoken": {"www_authenticate_uri": "http://k/v3", **CREDS},
      "service_user": {**CREDS, "pasword": "x"}}, "service_user.pasword"),
    ({"auth": {"strategy": "keystone"},
      "keystone_authtoken": {"www_authenticate_uri": "http://k/v3", **CREDS},
      "service_user": {k: v for k, v in CREDS.items() if k != "password"}},
     "service_user.password"),
    ({"auth": {"policy_file": "/nonexistent/policy.yaml"}}, "auth.policy_file"),
])
def test_bad_auth_config_names_the_key(raw: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError) as err:
        compute_config.build(raw)
    assert err.value.key == key


def test_a_policy_file_that_does_not_parse_stops_the_start(tmp_path: Path) -> None:
    rules = tmp_path / "policy.yaml"
    rules.write_text("rule: [unclosed\n")
    cfg = compute_config.build({"auth": {"policy_file": str(rules)}})
    with pytest.raises(ConfigError) as err:
        create_app(cfg)
    assert err.value.key == "auth.policy_file"


def test_auth_config_defaults_to_noauth_and_reads_keystone(tmp_path: Path) -> None:
    noauth = compute_config.build({})
    assert not noauth.auth.keystone and noauth.service_user is None
    cfg = keystone_config(tmp_path)
    assert cfg.auth.keystone and cfg.auth.keystone_authtoken["username"] == "nova"
    assert cfg.service_user is not None and cfg.service_user.project_name == "service"
    assert cfg.service_user.user_domain_name == "Default"
