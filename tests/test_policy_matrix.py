"""The persona matrix: every route of the volume API (and every action name of its action
routes) against reader, member and admin of the owning project and a member of another.

The expected answer is not written down here: it is computed from the registered rule
defaults through the enforcer (the route's rule with the persona's own project as target),
so a new route, a new action or a changed default is covered as soon as it exists.

The answers come from a real `blockyard serve` (fake backend, real database and task runner)
with ``[auth] strategy = "keystone"`` against the session's real Keystone: each persona is a
Keystone user holding its role on its project, each request carries that user's token, and
the identity the policies see is the one the server's authentication edge makes of it
(tests/support/personas.py). The project ids are Keystone's: the `world` fixture provides
them, and the expectations are computed with them.

* Owners: reads use project A's real resources; what would change something gets a body that
  fails validation (``{}``) and ids that do not exist. Allowed: anything but 401/403 (200,
  400, 404...). Denied: 403.
* The stranger (member of project B) uses project A's real resources with valid bodies: 403
  where the route's rule denies it, 404 where it lets the stranger through (A's resource is
  invisible to B), never 2xx; the stranger's lists show none of A's resources.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from blockyard.api import app, attachments, group_snapshots, groups, snapshots, types, volumes
from blockyard.api.routes import PolicyRoute
from blockyard.policy import Policy
from blockyard.service import policies
from tests.support.keystone import Keystone
from tests.support.personas import (
    OWNERS,
    ROLES,
    Personas,
    Sender,
    keystone_personas,
    keystone_sender,
)

ENFORCER = Policy(policies.DEFAULTS)
MISSING = str(uuid.uuid4())
#: GET routes that change something (Cinder's QoS association API)
MUTATING_GETS = ("/associate", "/disassociate", "/disassociate_all")


@dataclass(frozen=True)
class Case:
    """One request of the matrix: a route and, for action routes, an action name."""

    route: PolicyRoute
    action: str | None = None

    @property
    def rule(self) -> str | None:
        if self.route.actions is not None:
            return self.route.actions[self.action or ""]
        return self.route.rule

    @property
    def id(self) -> str:
        return f"{self.route.method} {self.route.path}" + (f" {self.action}"
                                                           if self.action else "")


def _cases() -> list[Case]:
    out: list[Case] = []
    for r in app.ROUTES:
        assert isinstance(r, PolicyRoute)
        if r.actions is not None:
            out.extend(Case(r, name) for name in r.actions)
        else:
            out.append(Case(r))
    return out


CASES = _cases()


# ---------------------------------------------------------------------------- the table itself


def test_every_route_declares_its_policy() -> None:
    """Built by blockyard.api.routes, with a rule (or explicitly public), each rule known."""
    public = set()
    for r in app.ROUTES:
        assert isinstance(r, PolicyRoute), f"{r!r} does not declare its policy rule"
        if r.actions is not None:
            assert r.actions and all(rule in ENFORCER.names for rule in r.actions.values())
        elif r.rule is None:
            public.add(r.path)
        else:
            assert r.rule in ENFORCER.names, r.rule
    # discovery, and what Cinder reads without a rule (zones, extensions, group types)
    assert public == {"/", "/v3/", "/v3/extensions", "/v3/os-availability-zone",
                      "/v3/group_types", "/v3/group_types/default", "/v3/group_types/{id}"}


def test_every_action_an_endpoint_handles_has_its_rule() -> None:
    """The action routes' rule lists name exactly the actions their endpoints dispatch."""
    assert set(volumes.ACTION_RULES) == set(volumes.ACTIONS)
    assert set(groups.ACTION_RULES) == set(groups.ACTIONS)
    assert set(snapshots.ACTION_RULES) == {"os-reset_status", "os-update_snapshot_status",
                                           "os-force_delete"}
    assert set(attachments.ACTION_RULES) == {"os-complete"}
    assert set(group_snapshots.ACTION_RULES) == {"reset_status"}
    assert set(types.ACTION_RULES) == {"addProjectAccess", "removeProjectAccess"}


def test_the_defaults_are_cinders_personas(world: World) -> None:
    """A spot check of the engine against the personas Cinder documents."""
    reader, member, admin, stranger = (world.personas[n] for n in
                                       ("reader", "member", "admin", "stranger"))
    own = {"project_id": world.project_a}
    assert ENFORCER.check(reader, "volume:get", own)
    assert not ENFORCER.check(reader, "volume:create", own)
    assert ENFORCER.check(member, "volume:delete", own)
    assert not ENFORCER.check(stranger, "volume:delete", own)
    assert not ENFORCER.check(member, "volume_extension:volume_admin_actions:reset_status", own)
    assert ENFORCER.check(admin, "scheduler_extension:scheduler_stats:get_pools", own)
    assert not ENFORCER.check(member, "context_is_admin")


# ---------------------------------------------------------------------------- the world


@dataclass
class World:
    """The personas and their projects, `send` as one of them, project A's resources (made
    by its admin), and B's own volume."""

    personas: Personas
    send: Sender
    url: str
    ids: dict[str, str]
    other_volume: str

    @property
    def project_a(self) -> str:
        return self.personas.project_a


def _ok(r: Any, *codes: int) -> Any:
    assert r.status_code in (codes or (200, 202)), r.text
    return r.json() if r.content else None


def _wait(send: Sender, path: str, key: str, status: str) -> None:
    import time

    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        got = _ok(send("admin", "GET", path))[key]["status"]
        if got == status:
            return
        time.sleep(0.05)
    raise AssertionError(f"{path} did not become {status}")


def _volume(send: Sender, persona: str = "admin", **spec: Any) -> str:
    vid = str(_ok(send(persona, "POST", "/v3/volumes",
                       {"volume": {"size": 1, **spec}}))["volume"]["id"])
    _wait(send, f"/v3/volumes/{vid}", "volume", "available")
    return vid


def _build(personas: Personas, send: Sender, url: str) -> World:
    ids: dict[str, str] = {}
    vt = _ok(send("admin", "POST", "/v3/types", {"volume_type": {
        "name": "private-a", "os-volume-type-access:is_public": False}}))["volume_type"]
    ids["type"] = vt["id"]
    _ok(send("admin", "POST", f"/v3/types/{vt['id']}/action",
             {"addProjectAccess": {"project": personas.project_a}}))
    _ok(send("admin", "POST", f"/v3/types/{vt['id']}/extra_specs",
             {"extra_specs": {"vendor:k1": "v1"}}))
    ids["volume"] = _volume(send, volume_type="private-a", metadata={"k1": "v1"})
    snap = _ok(send("admin", "POST", "/v3/snapshots", {"snapshot": {
        "volume_id": ids["volume"], "metadata": {"k1": "v1"}}}))["snapshot"]
    ids["snapshot"] = snap["id"]
    _wait(send, f"/v3/snapshots/{snap['id']}", "snapshot", "available")
    ids["attachment"] = _ok(send("admin", "POST", "/v3/attachments", {"attachment": {
        "volume_uuid": ids["volume"], "instance_uuid": str(uuid.uuid4())}}))["attachment"]["id"]
    gt = _ok(send("admin", "POST", "/v3/group_types", {"group_type": {
        "name": "private-gt", "is_public": False,
        "group_specs": {"consistent_group_snapshot_enabled": "<is> True"}}}))["group_type"]
    ids["group_type"] = gt["id"]
    gid = _ok(send("admin", "POST", "/v3/groups", {"group": {
        "name": "g", "group_type": gt["id"], "volume_types": [ids["type"]]}}))["group"]["id"]
    ids["group"] = gid
    _wait(send, f"/v3/groups/{gid}", "group", "available")
    gs = send("admin", "POST", "/v3/group_snapshots", {"group_snapshot": {"group_id": gid}})
    ids["group_snapshot"] = gs.json()["group_snapshot"]["id"] if gs.status_code == 202 \
        else MISSING
    offered = _volume(send)
    ids["transfer"] = _ok(send("admin", "POST", "/v3/volume-transfers", {"transfer": {
        "volume_id": offered}}))["transfer"]["id"]
    ids["qos"] = _ok(send("admin", "POST", "/v3/qos-specs", {"qos_specs": {
        "name": "qos-a", "consumer": "back-end"}}))["qos_specs"]["id"]
    ids["message"] = MISSING  # messages come from failures; none is needed to be hidden
    return World(personas, send, url, ids, _volume(send, "stranger"))


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, keystone: Keystone) -> Iterator[World]:
    """One server for the module; the personas are users of the session's Keystone."""
    personas = keystone_personas(keystone, "matrix")
    with keystone_sender(keystone, personas, tmp_path_factory.mktemp("matrix") / "state") \
            as (send, server):
        yield _build(personas, send, server.url)


# ---------------------------------------------------------------------------- requests

#: the resource a path's first parameter names, by the collection before it
KINDS = {"volumes": "volume", "snapshots": "snapshot", "attachments": "attachment",
         "types": "type", "group_types": "group_type", "groups": "group",
         "group_snapshots": "group_snapshot", "qos-specs": "qos", "messages": "message",
         "os-volume-transfer": "transfer", "volume-transfers": "transfer"}
#: the other parameters: a fixed value each ("project": project A's id, from Keystone)
FIXED = {"name": "default", "key": "k1", "action": "enable", "host": "nohost"}


def _path(case: Case, w: World, real: bool) -> str:
    """The route's path, its resource the real one (`real`) or one that does not exist."""
    fixed = {**FIXED, "project": w.project_a}
    parts = case.route.path.split("/")
    for i, part in enumerate(parts):
        if part.startswith("{"):
            name = part[1:-1]
            if name in ("id", "type_id"):
                parts[i] = w.ids[KINDS[parts[i - 1]]] if real else MISSING
            elif name == "key" and parts[i - 1] == "extra_specs":
                parts[i] = "vendor:k1"  # a key the scheduler leaves alone
            else:
                parts[i] = fixed[name]
    return "/".join(parts)


def _mutates(case: Case) -> bool:
    return case.route.method != "GET" or case.route.path.endswith(MUTATING_GETS)


def _target(case: Case, w: World, persona: str) -> dict[str, Any]:
    who = w.personas[persona]
    project = w.project_a if case.route.target else who.project_id
    return {"project_id": project, "user_id": who.user_id}


def _expected(case: Case, w: World, persona: str) -> bool:
    assert case.rule is not None
    return ENFORCER.check(w.personas[persona], case.rule, _target(case, w, persona))


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_owners(world: World, case: Case) -> None:
    w, send = world, world.send
    path = _path(case, w, real=not _mutates(case))
    body: Any = None
    if case.action is not None:
        body = {case.action: {}}
    elif case.route.method in ("POST", "PUT"):
        body = {}
    for persona in OWNERS:
        r = send(persona, case.route.method, path, body)
        assert r.status_code != 401, (persona, r.text)
        if case.rule is None or _expected(case, w, persona):
            assert r.status_code != 403, (persona, r.text)
        else:
            assert r.status_code == 403, (persona, r.status_code, r.text)
            assert r.json() == {"forbidden": {
                "code": 403, "message": f"Policy doesn't allow {case.rule} to be performed."}}


def _valid_body(case: Case, ids: dict[str, str]) -> Any:
    """A body that passes validation, for the requests the stranger makes on A's
    resources (so the answer is the one their visibility gives, not a 400)."""
    path, method, action = case.route.path, case.route.method, case.action
    connector = {"host": "stranger-host", "initiator": "iqn.1993-08.org.debian:01:b"}
    actions: dict[str, Any] = {
        "os-extend": {"new_size": 2}, "os-set_bootable": {"bootable": True},
        "os-update_readonly_flag": {"readonly": True}, "os-retype": {"new_type": "x"},
        "os-reserve": None, "os-unreserve": None, "os-begin_detaching": None,
        "os-roll_detaching": None, "os-detach": {}, "os-complete": None,
        "os-initialize_connection": {"connector": connector},
        "os-terminate_connection": {"connector": connector},
        "os-attach": {"instance_uuid": str(uuid.uuid4()), "mountpoint": "/dev/vdb"},
        "os-update_snapshot_status": {"status": "error"},
        "delete": {"delete-volumes": False},
    }
    if action is not None:
        return {action: actions.get(action, {})}
    collection = (path.split("/") + ["", ""])[2]
    if method == "POST" and path.endswith("/metadata"):
        return {"metadata": {"k2": "v2"}}
    if method == "PUT" and path.endswith("/metadata"):
        return {"metadata": {"k2": "v2"}}
    if method == "PUT" and path.endswith("/metadata/{key}"):
        return {"meta": {"k1": "v2"}}
    if path.endswith("/accept"):
        return {"accept": {"auth_key": "0123456789abcdef"}}
    creates: dict[str, Any] = {
        "volumes": {"volume": {"size": 1, "source_volid": ids["volume"]}},
        "snapshots": {"snapshot": {"volume_id": ids["volume"]}},
        "attachments": {"attachment": {"volume_uuid": ids["volume"]}},
        "os-volume-transfer": {"transfer": {"volume_id": ids["volume"]}},
        "volume-transfers": {"transfer": {"volume_id": ids["volume"]}},
        "group_snapshots": {"group_snapshot": {"group_id": ids["group"]}},
        "groups": {"group": {"group_type": ids["group_type"],
                             "volume_types": [ids["type"]]}},
    }
    if method == "POST" and path == "/v3/groups/action":
        return {"create-from-src": {"source_group_id": ids["group"]}}
    if method == "POST" and path.count("/") == 2:
        return creates.get(collection, {})
    updates: dict[str, Any] = {
        "volumes": {"volume": {"name": "stolen"}},
        "snapshots": {"snapshot": {"name": "stolen"}},
        "groups": {"group": {"name": "stolen"}},
        "attachments": {"attachment": {"connector": connector}},
    }
    if method == "PUT":
        return updates.get(collection, {})
    return None


def test_each_persona_is_what_its_token_says(world: World, keystone: Keystone) -> None:
    """The identities the expectations are computed with are Keystone's view of the tokens
    the requests carry: user, project and roles (the granted one and those it implies)."""
    for name, who in world.personas.identities.items():
        token = keystone.validate(world.personas.tokens[name])
        assert token is not None, name
        assert token["user"]["id"] == who.user_id
        assert token["project"]["id"] == who.project_id
        assert {r["name"] for r in token["roles"]} == ROLES[name] == who.roles, name
        assert token.get("is_admin_project", True) is who.is_admin_project
    assert world.project_a != world.personas.project_b


@pytest.fixture(scope="module")
def anonymous(world: World) -> Iterator[httpx.Client]:
    """A keep-alive client of the same server that sends no token of its own."""
    with httpx.Client(base_url=world.url, timeout=30.0) as client:
        yield client


@pytest.mark.parametrize("route", [r for r in app.ROUTES if isinstance(r, PolicyRoute)],
                         ids=lambda r: f"{r.method} {r.path}")
def test_no_token_no_entry(world: World, anonymous: httpx.Client, route: PolicyRoute) -> None:
    """Every route but version discovery is behind the authentication edge: without a
    token, or with one Keystone never issued, keystonemiddleware's 401."""
    path = _path(Case(route), world, real=False)
    for headers in ({}, {"X-Auth-Token": "gAAAAAnot-a-token"}):
        r = anonymous.request(route.method, path, headers=headers)
        if app.is_public(route.method, route.path):
            assert r.status_code not in (401, 403), r.text
        else:
            assert r.status_code == 401, (r.status_code, r.text)
            assert r.headers["WWW-Authenticate"].startswith("Keystone uri=")


#: what the stranger is answered where a plain 404 is not Cinder's answer
STRANGER_EXPECTED = {
    # anyone may accept a transfer who has its key (that is what transfers are for): a
    # wrong key is Cinder's 400
    ("POST", "/v3/os-volume-transfer/{id}/accept"): {400},
    ("POST", "/v3/volume-transfers/{id}/accept"): {400},
}
#: lists whose rows belong to projects
LISTS = ("/v3/volumes", "/v3/volumes/detail", "/v3/snapshots", "/v3/snapshots/detail",
         "/v3/attachments", "/v3/attachments/detail", "/v3/groups", "/v3/groups/detail",
         "/v3/group_snapshots", "/v3/group_snapshots/detail", "/v3/os-volume-transfer",
         "/v3/os-volume-transfer/detail", "/v3/volume-transfers",
         "/v3/volume-transfers/detail", "/v3/types", "/v3/group_types")


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_member_of_another_project(world: World, case: Case) -> None:
    w, send = world, world.send
    path = _path(case, w, real=True)
    r = send("stranger", case.route.method, path, _valid_body(case, w.ids))
    key = (case.route.method, case.route.path)
    if case.rule is None:
        assert r.status_code not in (401, 403), r.text
        return
    if not _expected(case, w, "stranger"):
        assert r.status_code == 403, (r.status_code, r.text)
    elif key in STRANGER_EXPECTED:
        assert r.status_code in STRANGER_EXPECTED[key], (r.status_code, r.text)
    elif "{" in case.route.path and not case.route.target and \
            not case.route.path.startswith(("/v3/os-hosts", "/v3/capabilities")):
        assert r.status_code == 404, (r.status_code, r.text)
    elif case.route.method == "POST":
        # a create that names A's resources: they are missing to B
        assert r.status_code == 404, (r.status_code, r.text)
    elif case.route.path not in LISTS:  # the stranger's own: quotas, limits, defaults
        assert r.status_code not in (401, 403) and r.status_code < 500, r.text
    else:
        assert r.status_code == 200, (r.status_code, r.text)
        text = r.text
        leaked = [kind for kind, ident in w.ids.items() if ident != MISSING and ident in text]
        assert not leaked, leaked
        if case.route.path.startswith("/v3/volumes"):
            assert w.other_volume in text  # B's own volume is listed


def test_a_stranger_changed_nothing(world: World) -> None:
    """After every request of the matrix (module order: this runs last), A's resources are
    as A left them."""
    w, send = world, world.send
    vol = _ok(send("admin", "GET", f"/v3/volumes/{w.ids['volume']}"))["volume"]
    assert vol["size"] == 1 and vol["name"] is None and vol["bootable"] == "false"
    assert vol["metadata"] == {"k1": "v1"}
    assert _ok(send("admin", "GET", f"/v3/snapshots/{w.ids['snapshot']}"))[
        "snapshot"]["status"] == "available"
    assert _ok(send("admin", "GET", f"/v3/attachments/{w.ids['attachment']}"))[
        "attachment"]["status"] == "reserved"
    assert _ok(send("admin", "GET", f"/v3/volume-transfers/{w.ids['transfer']}"))


def test_private_type_is_invisible_and_unusable_outside_its_access_list(
        world: World) -> None:
    w, send = world, world.send
    assert send("stranger", "GET", f"/v3/types/{w.ids['type']}").status_code == 404
    assert send("member", "GET", f"/v3/types/{w.ids['type']}").status_code == 200
    listed = [t["id"] for t in _ok(send("member", "GET", "/v3/types"))["volume_types"]]
    assert w.ids["type"] in listed
    listed = [t["id"] for t in _ok(send("stranger", "GET", "/v3/types"))["volume_types"]]
    assert w.ids["type"] not in listed
    r = send("stranger", "POST", "/v3/volumes", {"volume": {"size": 1,
                                                            "volume_type": "private-a"}})
    assert r.status_code == 404, r.text
    # the access list is an admin's to read and change
    assert send("member", "GET",
                f"/v3/types/{w.ids['type']}/os-volume-type-access").status_code == 403
    assert send("admin", "GET",
                f"/v3/types/{w.ids['type']}/os-volume-type-access").status_code == 200


def test_admin_sees_all_projects_only_when_asked(world: World) -> None:
    w, send = world, world.send
    own = _ok(send("admin", "GET", "/v3/volumes"))["volumes"]
    assert w.other_volume not in [v["id"] for v in own]
    every = _ok(send("admin", "GET", "/v3/volumes?all_tenants=1"))["volumes"]
    assert w.other_volume in [v["id"] for v in every]
    # a member's all_tenants is ignored, as Cinder ignores it for non-admins
    mine = _ok(send("stranger", "GET", "/v3/volumes?all_tenants=1"))["volumes"]
    assert [v["id"] for v in mine] == [w.other_volume]


def test_admin_attributes_follow_their_rules(world: World) -> None:
    w, send = world, world.send
    shown = _ok(send("member", "GET", f"/v3/volumes/{w.ids['volume']}"))["volume"]
    assert shown["os-vol-tenant-attr:tenant_id"] == w.project_a  # a reader rule
    assert "os-vol-host-attr:host" not in shown  # admin_api
    assert "os-vol-mig-status-attr:migstat" not in shown
    shown = _ok(send("admin", "GET", f"/v3/volumes/{w.ids['volume']}"))["volume"]
    assert "os-vol-host-attr:host" in shown


def test_owner_member_can_work_and_reader_cannot(world: World,
                                                  tmp_path: Path) -> None:
    """The member's whole small lifecycle passes; the reader is refused each step."""
    send = world.send
    assert send("reader", "POST", "/v3/volumes",
                {"volume": {"size": 1}}).status_code == 403
    vid = _volume(send, "member")
    assert send("reader", "POST", f"/v3/volumes/{vid}/action",
                {"os-extend": {"new_size": 2}}).status_code == 403
    assert send("member", "POST", f"/v3/volumes/{vid}/action",
                {"os-extend": {"new_size": 2}}).status_code == 202
    _wait(send, f"/v3/volumes/{vid}", "volume", "available")
    assert send("member", "POST", f"/v3/volumes/{vid}/action",
                {"os-reset_status": {"status": "error"}}).status_code == 403
    assert send("reader", "DELETE", f"/v3/volumes/{vid}").status_code == 403
    r = send("member", "DELETE", f"/v3/volumes/{vid}?force=true")  # admin_api's
    assert r.status_code == 403 and "volume:force_delete" in r.text, r.text
    assert send("member", "DELETE", f"/v3/volumes/{vid}").status_code == 202


def test_a_transfer_moves_a_volume_between_projects(world: World) -> None:
    """The one way a volume crosses projects: B accepts A's offer with its key."""
    send = world.send
    vid = _volume(send, "member")
    offer = _ok(send("member", "POST", "/v3/volume-transfers",
                     {"transfer": {"volume_id": vid}}))["transfer"]
    assert send("stranger", "GET", f"/v3/volume-transfers/{offer['id']}").status_code == 404
    r = send("stranger", "POST", f"/v3/volume-transfers/{offer['id']}/accept",
             {"accept": {"auth_key": offer["auth_key"]}})
    assert r.status_code == 202, r.text
    assert send("stranger", "GET", f"/v3/volumes/{vid}").status_code == 200
    assert send("member", "GET", f"/v3/volumes/{vid}").status_code == 404
    assert send("admin", "GET", f"/v3/volumes/{vid}").status_code == 200  # admin sees all
