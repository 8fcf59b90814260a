"""The `openstack` CLI (python-openstackclient) against a real server, as an operator runs it:
`--os-auth-type none` as documented, and `--os-auth-type admin_token --os-token admin:PROJECT`
to act in a chosen project for the two-project lifecycle. Output is read with `-f json`;
bodies the CLI hides are fetched raw and checked against Tempest's schemas.
"""

from __future__ import annotations

import json
import os
import subprocess
from typing import Any

from tests.clients import BIN, PROJECTS, schemas
from tests.support.server import Api, Server
from tests.support.waits import poll

MV = "3.71"


def osc(server: Server, auth: list[str], *args: str, check: bool = True) -> Any:
    """Run `openstack ARGS` (JSON output where the command has any); return the parsed output,
    or the CompletedProcess when `check` is False."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OS_")}
    argv = [str(BIN / "openstack"), *auth, "--os-endpoint", server.endpoint,
            "--os-volume-api-version", MV, *args]
    done = subprocess.run(argv, env=env, stdin=subprocess.DEVNULL, capture_output=True,
                          text=True, timeout=120)
    if not check:
        return done
    assert done.returncode == 0, f"openstack {' '.join(args)} → rc {done.returncode}:\n" \
                                 f"{done.stderr}"
    return json.loads(done.stdout) if done.stdout.strip() else None


def as_project(project: str) -> list[str]:
    return ["--os-auth-type", "admin_token", "--os-token", f"admin:{project}"]


NONE = ["--os-auth-type", "none"]


def show(api: Api, volume_id: str) -> dict[str, Any]:
    r = api.get(f"/volumes/{volume_id}")
    return dict(schemas.check(schemas.volumes(MV).show_volume, r)["volume"])


def test_auth_type_none_as_documented(server: Server) -> None:
    # the README's command, verbatim but for the port
    assert osc(server, NONE, "volume", "list", "-f", "json") == []
    created = osc(server, NONE, "volume", "create", "--size", "1", "osc-none", "-f", "json")
    assert (created["size"], created["name"]) == (1, "osc-none")
    api = Api(server.endpoint, project="notused", user="notused", version=MV)
    try:
        api.wait_volume(created["id"], "available")
        listed = osc(server, NONE, "volume", "list", "-f", "json")
        assert [(v["ID"], v["Name"], v["Status"], v["Size"]) for v in listed] == \
            [(created["id"], "osc-none", "available", 1)]
        assert osc(server, NONE, "volume", "show", "osc-none", "-f", "json")["id"] == \
            created["id"]
        osc(server, NONE, "volume", "delete", created["id"])
        api.wait_volume(created["id"], "deleted")
    finally:
        api.close()


class Project:
    def __init__(self, server: Server, name: str) -> None:
        self.server = server
        self.name = name
        self.auth = as_project(name)
        self.api = server.client(project=name)
        self.vol: dict[str, str] = {}
        self.snap_id = ""
        self.gone: set[str] = set()

    def ids(self) -> set[str]:
        return set(self.vol.values())

    def run(self, *args: str) -> Any:
        return osc(self.server, self.auth, *args)


def _build(p: Project) -> None:
    n, api = p.name, p.api
    out = p.run("volume", "create", "--size", "1", "--description", "base", "--property",
                "tier=gold", f"{n}-3", "-f", "json")
    assert (out["size"], out["name"], out["description"]) == (1, f"{n}-3", "base")
    base = p.vol["base"] = out["id"]
    api.wait_volume(base, "available")
    got = show(api, base)
    assert (got["size"], got["metadata"], got["os-vol-tenant-attr:tenant_id"]) == \
        (1, {"tier": "gold"}, n)

    out = p.run("volume", "snapshot", "create", "--volume", base, f"{n}-snap", "-f", "json")
    assert (out["volume_id"], out["size"]) == (base, 1)
    p.snap_id = out["id"]
    api.wait_snapshot(p.snap_id, "available")
    snap = schemas.check(schemas.snapshots(MV).show_snapshot,
                         api.get(f"/snapshots/{p.snap_id}"))["snapshot"]
    assert (snap["name"], snap["status"]) == (f"{n}-snap", "available")

    out = p.run("volume", "create", "--snapshot", p.snap_id, "--size", "2", f"{n}-1",
                "-f", "json")
    p.vol["from_snap"] = out["id"]
    out = p.run("volume", "create", "--source", base, "--size", "1", f"{n}-2", "-f", "json")
    p.vol["clone"] = out["id"]
    api.wait_volume(p.vol["from_snap"], "available")
    api.wait_volume(p.vol["clone"], "available")
    got = p.run("volume", "show", p.vol["from_snap"], "-f", "json")
    assert (got["size"], got["snapshot_id"], got["status"]) == (2, p.snap_id, "available")
    got = p.run("volume", "show", p.vol["clone"], "-f", "json")
    assert (got["size"], got["source_volid"], got["status"]) == (1, base, "available")

    p.run("volume", "set", "--size", "3", base)
    poll(lambda: show(api, base), lambda v: v["size"] == 3 and v["status"] == "available",
         what="extended to 3 GiB")

    p.run("volume", "set", "--property", "k1=v1", "--property", "k2=v2", base)
    p.run("volume", "unset", "--property", "k1", base)
    got = p.run("volume", "show", f"{n}-3", "-f", "json")  # by name
    assert (got["id"], got["size"]) == (base, 3)
    assert got["properties"] == {"tier": "gold", "k2": "v2"}

    p.vol["plain"] = p.run("volume", "create", "--size", "1", f"{n}-4", "-f", "json")["id"]
    p.vol["broken"] = p.run("volume", "create", "--size", "1", f"{n}-5", "-f", "json")["id"]
    api.wait_volume(p.vol["plain"], "available")
    api.wait_volume(p.vol["broken"], "available")
    p.run("volume", "set", "--state", "error", p.vol["broken"])
    assert show(api, p.vol["broken"])["status"] == "error"


def _check_lists(p: Project, other: Project) -> None:
    n = p.name
    listed = p.run("volume", "list", "-f", "json")
    assert {v["ID"] for v in listed} == p.ids()
    assert not {v["ID"] for v in listed} & (other.ids() | other.gone)
    # newest first, by default
    assert [v["Name"] for v in listed] == [f"{n}-{i}" for i in (5, 4, 2, 1, 3)]
    sizes = {v["Name"]: v["Size"] for v in p.run("volume", "list", "--long", "-f", "json")}
    assert sizes == {f"{n}-1": 2, f"{n}-2": 1, f"{n}-3": 3, f"{n}-4": 1, f"{n}-5": 1}

    # --limit sets the page size (the CLI follows the pages); --marker starts after an id
    assert [v["ID"] for v in p.run("volume", "list", "--limit", "2", "-f", "json")] == \
        [v["ID"] for v in listed]
    after = p.run("volume", "list", "--limit", "2", "--marker", listed[1]["ID"], "-f", "json")
    assert [v["ID"] for v in after] == [v["ID"] for v in listed[2:]]

    assert [v["ID"] for v in p.run("volume", "list", "--name", f"{n}-2", "-f", "json")] == \
        [p.vol["clone"]]
    assert p.run("volume", "list", "--name", f"{other.name}-2", "-f", "json") == []
    assert {v["ID"] for v in p.run("volume", "list", "--status", "available", "-f", "json")} \
        == p.ids() - {p.vol["broken"]}
    assert [v["ID"] for v in p.run("volume", "list", "--status", "error", "-f", "json")] == \
        [p.vol["broken"]]

    assert [s["ID"] for s in p.run("volume", "snapshot", "list", "-f", "json")] == [p.snap_id]


def _tear_down(p: Project) -> None:
    done = osc(p.server, p.auth, "volume", "delete", p.vol["base"], check=False)
    assert done.returncode != 0  # it still has a snapshot
    assert "BadRequestException: 400" in done.stderr and "snapshots" in done.stderr
    assert show(p.api, p.vol["base"])["status"] == "available"
    p.run("volume", "delete", *(p.vol[r] for r in ("from_snap", "clone", "plain", "broken")))
    p.run("volume", "snapshot", "delete", p.snap_id)
    p.api.wait_snapshot(p.snap_id, "deleted")
    p.run("volume", "delete", p.vol["base"])
    for vid in p.ids():
        p.api.wait_volume(vid, "deleted")
    assert p.run("volume", "list", "-f", "json") == []
    assert p.run("volume", "snapshot", "list", "-f", "json") == []
    p.gone, p.vol = p.ids(), {}


def test_lifecycle_in_two_projects(server: Server) -> None:
    a, b = (Project(server, name) for name in PROJECTS)
    try:
        for p in (a, b):
            _build(p)
        _check_lists(a, b)
        _check_lists(b, a)
        _tear_down(a)
        assert {v["ID"] for v in b.run("volume", "list", "-f", "json")} == b.ids()
        _tear_down(b)
    finally:
        for p in (a, b):
            p.api.close()


def test_volume_transfer_and_messages(server: Server) -> None:
    """The README's transfer commands: offer in one project, accept in another; then the
    message a failed request leaves, as `openstack volume message list` shows it."""
    giver, taker = as_project("osc-giver"), as_project("osc-taker")
    created = osc(server, giver, "volume", "create", "--size", "1", "gift", "-f", "json")
    api = Api(server.endpoint, project="osc-giver", user="admin", version=MV)
    try:
        api.wait_volume(created["id"], "available")
        offer = osc(server, giver, "volume", "transfer", "request", "create", created["id"],
                    "-f", "json")
        assert len(offer["auth_key"]) == 16
        listed = osc(server, giver, "volume", "transfer", "request", "list", "-f", "json")
        assert [t["ID"] for t in listed] == [offer["id"]]
        wrong = osc(server, taker, "volume", "transfer", "request", "accept", "--auth-key",
                    "0" * 16, offer["id"], check=False)
        assert wrong.returncode != 0 and "invalid auth key" in wrong.stderr
        osc(server, taker, "volume", "transfer", "request", "accept", "--auth-key",
            offer["auth_key"], offer["id"], "-f", "json")
        assert [v["ID"] for v in osc(server, taker, "volume", "list", "-f", "json")] == \
            [created["id"]]
        assert osc(server, giver, "volume", "list", "-f", "json") == []

        osc(server, as_project("admin"), "volume", "type", "create", "--property",
            "volume_backend_name=nowhere", "osc-nowhere", "-f", "json")
        failed = osc(server, taker, "volume", "create", "--size", "1", "--type", "osc-nowhere",
                     "doomed", "-f", "json")
        messages = osc(server, taker, "volume", "message", "list", "-f", "json")
        assert [(m["Resource UUID"], m["Event ID"]) for m in messages] == \
            [(failed["id"], "VOLUME_VOLUME_001_003")]
    finally:
        api.close()
