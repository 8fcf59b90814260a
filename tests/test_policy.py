"""blockyard.policy: the engine around oslo.policy, and an operator's policy file over the
defaults, down to the answer a request gets."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from blockyard.errors import ConfigError, Forbidden
from blockyard.identity import Identity
from blockyard.policy import Policy, RuleDefault
from blockyard.service import policies
from tests.support.personas import PERSONAS, PROJECT_A, app_sender
from tests.support.server import Server

RULES = [
    RuleDefault("admin_api", "is_admin:True or (role:admin and is_admin_project:True)"),
    RuleDefault("owner_member", "(role:admin) or (role:member and project_id:%(project_id)s)"),
    RuleDefault("thing:delete", "rule:owner_member"),
    RuleDefault("thing:purge", "rule:admin_api"),
]
MEMBER = Identity("u1", "p1", frozenset({"reader", "member"}))
ADMIN = Identity("u2", "p2", frozenset({"reader", "member", "admin"}))


def test_defaults_decide_by_role_and_project() -> None:
    p = Policy(RULES)
    assert p.check(MEMBER, "thing:delete")  # target: the caller's own project
    assert p.check(MEMBER, "thing:delete", {"project_id": "p1"})
    assert not p.check(MEMBER, "thing:delete", {"project_id": "p9"})
    assert not p.check(MEMBER, "thing:purge")
    assert p.check(ADMIN, "thing:purge")
    assert p.check(ADMIN, "thing:delete", {"project_id": "p9"})


def test_enforce_raises_cinders_403() -> None:
    with pytest.raises(Forbidden) as caught:
        Policy(RULES).enforce(MEMBER, "thing:purge")
    assert caught.value.message == "Policy doesn't allow thing:purge to be performed."


def test_an_unknown_rule_is_an_error_not_a_deny() -> None:
    with pytest.raises(KeyError):
        Policy(RULES).check(ADMIN, "thing:typo")


def test_a_policy_file_overrides_defaults(tmp_path: Path) -> None:
    f = tmp_path / "policy.yaml"
    f.write_text('"thing:delete": "rule:admin_api"\n')
    p = Policy(RULES, f)
    assert not p.check(MEMBER, "thing:delete")
    assert p.check(ADMIN, "thing:delete")
    assert p.check_str("thing:delete") == "rule:admin_api"
    assert p.check_str("thing:purge") == "rule:admin_api"  # the rest keep their defaults


def test_a_broken_or_missing_policy_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        Policy(RULES, tmp_path / "absent.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text('"thing:delete": [unclosed\n')
    with pytest.raises(ConfigError):
        Policy(RULES, bad)


def test_two_engines_do_not_share_state(tmp_path: Path) -> None:
    """Each has its own oslo.config object: one's file does not leak into the other."""
    f = tmp_path / "policy.yaml"
    f.write_text('"thing:delete": "!"\n')
    strict, plain = Policy(RULES, f), Policy(RULES)
    assert not strict.check(ADMIN, "thing:delete")
    assert plain.check(ADMIN, "thing:delete")


def test_checks_are_remembered(monkeypatch: pytest.MonkeyPatch) -> None:
    """A request makes one or two checks, the same few over and over: oslo.policy is asked
    once per (rule, caller, target), then the result is remembered (what that saves is
    measured in bench/policy_check.py)."""
    p = Policy(policies.DEFAULTS)
    asked: list[str] = []
    enforce = p._enforcer.enforce

    def counting(rule: str, *args: object, **kwargs: object) -> object:
        asked.append(rule)
        return enforce(rule, *args, **kwargs)

    monkeypatch.setattr(p._enforcer, "enforce", counting)
    who, other = PERSONAS["member"], PERSONAS["stranger"]
    mine = {"project_id": PROJECT_A, "user_id": who.user_id}
    for _ in range(100):
        assert p.check(who, "volume:delete", mine)
        assert not p.check(other, "volume:delete", mine)
    assert asked == ["volume:delete", "volume:delete"]  # once per caller, then remembered


def test_cinder_defaults_are_all_declared_once() -> None:
    names = [r.name for r in policies.DEFAULTS]
    assert len(names) == len(set(names))
    referred = {check.split(":", 1)[1] for r in policies.DEFAULTS
                for check in r.check_str.replace("(", " ").replace(")", " ").split()
                if check.startswith("rule:")}
    assert referred <= set(names)


def _operator_file(tmp_path: Path, rules: str) -> Iterator[None]:
    """The volume API's engine with an operator file of `rules` (YAML) over the defaults,
    for the duration of a test."""
    f = tmp_path / "policy.yaml"
    f.write_text(rules)
    old = policies.use(Policy(policies.DEFAULTS, f))
    try:
        yield
    finally:
        policies.use(old)


@pytest.fixture
def admin_only_delete(tmp_path: Path) -> Iterator[None]:
    """volume:delete admin-only."""
    yield from _operator_file(tmp_path, '"volume:delete": "rule:admin_api"\n')


def test_an_operator_file_changes_what_a_member_may_do(tmp_path: Path,
                                                       admin_only_delete: None) -> None:
    with app_sender(tmp_path / "state") as send:
        r = send("member", "POST", "/v3/volumes", {"volume": {"size": 1}})
        assert r.status_code == 202, r.text
        vid = r.json()["volume"]["id"]
        deadline = time.monotonic() + 20
        while send("member", "GET", f"/v3/volumes/{vid}").json()["volume"]["status"] != \
                "available" and time.monotonic() < deadline:
            time.sleep(0.05)
        r = send("member", "DELETE", f"/v3/volumes/{vid}")
        assert r.status_code == 403
        assert r.json() == {"forbidden": {"code": 403, "message":
                                          "Policy doesn't allow volume:delete to be performed."}}
        assert send("admin", "DELETE", f"/v3/volumes/{vid}").status_code == 202


@pytest.fixture
def project_admins_only(tmp_path: Path) -> Iterator[None]:
    """Deleting a volume or an attachment: an admin of the resource's own project only."""
    yield from _operator_file(
        tmp_path, '"volume:delete": "role:admin and project_id:%(project_id)s"\n'
                  '"volume:attachment_delete": "role:admin and project_id:%(project_id)s"\n')


def test_the_resource_check_uses_the_routes_rule_with_the_resources_project(
        tmp_path: Path, project_admins_only: None) -> None:
    """An admin of another project passes the route's check (own project as target) and may
    see across projects, but the rule checked on the volume itself (its project as target)
    refuses: 403, for a call run on the event loop and one run on a worker thread alike."""
    import dataclasses
    import uuid

    from tests.support import personas

    outsider = dataclasses.replace(PERSONAS["admin"], project_id=uuid.uuid4().hex)
    personas.PERSONAS["outsider"] = outsider
    try:
        with app_sender(tmp_path / "state") as send:
            r = send("admin", "POST", "/v3/volumes", {"volume": {"size": 1}})
            vid = r.json()["volume"]["id"]
            deadline = time.monotonic() + 20
            while send("admin", "GET", f"/v3/volumes/{vid}").json()["volume"]["status"] != \
                    "available" and time.monotonic() < deadline:
                time.sleep(0.05)
            att = send("admin", "POST", "/v3/attachments", {"attachment": {
                "volume_uuid": vid, "instance_uuid": str(uuid.uuid4())}}).json()["attachment"]
            assert send("outsider", "GET", f"/v3/volumes/{vid}").status_code == 200
            r = send("outsider", "DELETE", f"/v3/attachments/{att['id']}")
            assert r.status_code == 403, r.text
            assert "volume:attachment_delete" in r.text
            assert send("admin", "DELETE", f"/v3/attachments/{att['id']}").status_code == 200
            r = send("outsider", "DELETE", f"/v3/volumes/{vid}")
            assert r.status_code == 403, r.text
            assert send("admin", "DELETE", f"/v3/volumes/{vid}").status_code == 202
    finally:
        del personas.PERSONAS["outsider"]


def test_a_served_config_applies_the_operators_policy_file(tmp_path: Path) -> None:
    """`[auth] policy_file` in a real `blockyard serve`: its rules replace the defaults
    (here even an admin may not list volumes), the others stay."""
    rules = tmp_path / "policy.yaml"
    rules.write_text('"volume:get_all": "!"\n')
    server = Server(tmp_path / "state",
                    config=f'[auth]\npolicy_file = "{rules}"\n').start()
    try:
        api = server.client()
        refused = api.get("/volumes")
        assert refused.status_code == 403, refused.text
        assert "volume:get_all" in refused.json()["forbidden"]["message"]
        assert api.get("/types").status_code == 200
        api.close()
    finally:
        server.stop()


@pytest.fixture
def admins_extend_attached(tmp_path: Path) -> Iterator[None]:
    """Extending an attached volume: admins only (volume:extend itself stays the default)."""
    yield from _operator_file(tmp_path, '"volume:extend_attached_volume": "rule:admin_api"\n')


def test_extending_an_attached_volume_has_its_own_rule(tmp_path: Path,
                                                       admins_extend_attached: None) -> None:
    """Cinder checks volume:extend_attached_volume on top of volume:extend when the volume
    is in use: the member may extend it detached, not attached."""
    with app_sender(tmp_path / "state") as send:
        def available(vid: str) -> None:
            deadline = time.monotonic() + 20
            while send("member", "GET", f"/v3/volumes/{vid}").json()["volume"]["status"] \
                    != "available":
                assert time.monotonic() < deadline
                time.sleep(0.05)

        vid = send("member", "POST", "/v3/volumes", {"volume": {"size": 1}}).json()[
            "volume"]["id"]
        available(vid)
        att = send("member", "POST", "/v3/attachments", {"attachment": {
            "volume_uuid": vid, "connector": {"host": "h1", "initiator": "iqn.x:h1"}}})
        assert att.status_code == 200, att.text
        done = send("member", "POST", f"/v3/attachments/{att.json()['attachment']['id']}"
                                      "/action", {"os-complete": None})
        assert done.status_code == 204, done.text
        assert send("member", "GET", f"/v3/volumes/{vid}").json()["volume"]["status"] == \
            "in-use"
        refused = send("member", "POST", f"/v3/volumes/{vid}/action",
                       {"os-extend": {"new_size": 2}})
        assert refused.status_code == 403, refused.text
        assert "volume:extend_attached_volume" in refused.json()["forbidden"]["message"]
        assert send("admin", "POST", f"/v3/volumes/{vid}/action",
                    {"os-extend": {"new_size": 2}}).status_code != 403
        other = send("member", "POST", "/v3/volumes", {"volume": {"size": 1}}).json()[
            "volume"]["id"]
        available(other)
        assert send("member", "POST", f"/v3/volumes/{other}/action",
                    {"os-extend": {"new_size": 2}}).status_code == 202
