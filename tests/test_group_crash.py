"""Crash safety of the group tasks: `kill -9` at each step, restart, and the outcome is whole.

Each group operation that is a durable task (group snapshot create and delete, group clone from
a source group, group delete with its volumes) is killed by a fail point right after the API's
commit, before its driver work, between two members, after the driver work and after the
settling commit. The server is restarted without fail points; then the operation must have
finished entirely (every member snapshot or volume there, with the source's data, or every one
gone) and `assert_consistent` must find no orphan file, no stuck row and exact quota usage.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import pytest

from tests.support.consistency import (
    assert_consistent,
    pattern_problems,
    read_db,
    snapshot_file,
    volume_file,
    wait_settled,
    write_pattern,
)
from tests.support.server import Api, Server

SEEDS = (31, 32)


def _ok(r: httpx.Response, status: int = 202) -> dict[str, Any]:
    assert r.status_code == status, r.text
    return r.json() if r.content else {}


def _setup(srv: Server, *, group_snapshot: bool) -> dict[str, Any]:
    """A group with two members holding patterns SEEDS (and a group snapshot of it)."""
    c = srv.client()
    vt = _ok(c.post("/types", {"volume_type": {"name": "vt"}}), 200)["volume_type"]["id"]
    gt = _ok(c.post("/group_types", {"group_type": {"name": "gt"}}))["group_type"]["id"]
    g = _ok(c.post("/groups", {"group": {"name": "g", "group_type": gt,
                                         "volume_types": [vt]}}))["group"]["id"]
    vids = []
    for seed in SEEDS:
        vid = _ok(c.post("/volumes", {"volume": {"size": 1, "volume_type": vt,
                                                 "group_id": g}}))["volume"]["id"]
        c.wait_volume(vid, "available")
        write_pattern(volume_file(srv.state_dir, vid), seed)
        vids.append(vid)
    ctx: dict[str, Any] = {"group": g, "volumes": vids, "volume_type": vt}
    if group_snapshot:
        gs = _ok(c.post("/group_snapshots", {"group_snapshot": {"group_id": g,
                                                                "name": "base"}})
                 )["group_snapshot"]["id"]
        c.wait_status(f"/group_snapshots/{gs}", "group_snapshot", "available")
        ctx["group_snapshot"] = gs
    c.close()
    return ctx


def _seed_of(ctx: dict[str, Any], volume_id: str) -> int:
    return SEEDS[ctx["volumes"].index(volume_id)]


# ---------------------------------------------------------------------------- operations


def _snapshot_group(c: Api, ctx: dict[str, Any]) -> httpx.Response:
    return c.post("/group_snapshots", {"group_snapshot": {"group_id": ctx["group"],
                                                          "name": "new"}})


def _check_snapshot(srv: Server, c: Api, ctx: dict[str, Any]) -> None:
    st = read_db(srv.state_dir)
    new = [gs for gs in c.get("/group_snapshots/detail").json()["group_snapshots"]
           if gs["name"] == "new"]
    assert len(new) == 1 and new[0]["status"] == "available", new
    members = [s for s in st.snapshots.values() if s["group_snapshot_id"] == new[0]["id"]]
    assert sorted(s["volume_id"] for s in members) == sorted(ctx["volumes"])
    for s in members:
        assert s["status"] == "available"
        assert not pattern_problems(snapshot_file(srv.state_dir, s["id"]),
                                    _seed_of(ctx, s["volume_id"]))


def _clone_group(c: Api, ctx: dict[str, Any]) -> httpx.Response:
    return c.post("/groups/action", {"create-from-src": {"source_group_id": ctx["group"],
                                                         "name": "clone"}})


def _check_clone(srv: Server, c: Api, ctx: dict[str, Any]) -> None:
    clones = [g for g in c.get("/groups/detail").json()["groups"] if g["name"] == "clone"]
    assert len(clones) == 1 and clones[0]["status"] == "available", clones
    st = read_db(srv.state_dir)
    members = [v for v in st.volumes.values() if v["group_id"] == clones[0]["id"]]
    assert sorted(v["source_volid"] for v in members) == sorted(ctx["volumes"])
    for v in members:
        assert v["status"] == "available"
        assert not pattern_problems(volume_file(srv.state_dir, v["id"]),
                                    _seed_of(ctx, v["source_volid"]))


def _delete_group_snapshot(c: Api, ctx: dict[str, Any]) -> httpx.Response:
    return c.delete(f"/group_snapshots/{ctx['group_snapshot']}")


def _check_group_snapshot_gone(srv: Server, c: Api, ctx: dict[str, Any]) -> None:
    assert c.get(f"/group_snapshots/{ctx['group_snapshot']}").status_code == 404
    st = read_db(srv.state_dir)
    assert not [s for s in st.snapshots.values() if s["group_snapshot_id"]]
    assert not list(snapshot_file(srv.state_dir, "x").parent.glob("snapshot-*"))


def _delete_group(c: Api, ctx: dict[str, Any]) -> httpx.Response:
    return c.post(f"/groups/{ctx['group']}/action", {"delete": {"delete-volumes": True}})


def _check_group_gone(srv: Server, c: Api, ctx: dict[str, Any]) -> None:
    assert c.get(f"/groups/{ctx['group']}").status_code == 404
    st = read_db(srv.state_dir)
    assert not set(ctx["volumes"]) & set(st.volumes)


Operation = tuple[Callable[[Api, dict[str, Any]], httpx.Response],
                  Callable[[Server, Api, dict[str, Any]], None]]
OPERATIONS: dict[str, Operation] = {
    "create_group_snapshot": (_snapshot_group, _check_snapshot),
    "create_group_from_src": (_clone_group, _check_clone),
    "delete_group_snapshot": (_delete_group_snapshot, _check_group_snapshot_gone),
    "delete_group": (_delete_group, _check_group_gone),
}
CASES = [
    *[("create_group_snapshot", p) for p in ("api.after_commit", "before_run",
                                             "between_members", "after_run")],
    *[("create_group_from_src", p) for p in ("between_members", "after_run")],
    ("delete_group_snapshot", "after_run"),
    ("delete_group", "after_run"),
]


@pytest.mark.parametrize(("kind", "point"), CASES)
def test_killed_group_task_completes_after_restart(make_server: Any, kind: str,
                                                    point: str) -> None:
    # the point is armed from the start when the setup runs no task it would fire in
    if point.startswith("api."):
        srv = make_server().start()
        ctx = _setup(srv, group_snapshot=False)
        assert srv.stop() == 0, srv.log()
        srv.start(env={"BLOCKYARD_FAILPOINTS": point})
    else:
        srv = make_server(env={"BLOCKYARD_FAILPOINTS": f"{kind}.{point}"}).start()
        ctx = _setup(srv, group_snapshot=kind == "delete_group_snapshot")
    request, check = OPERATIONS[kind]
    c = srv.client()
    try:
        request(c, ctx)
    except httpx.TransportError:
        pass  # killed before it answered
    c.close()
    srv.wait_exit()
    srv.env.pop("BLOCKYARD_FAILPOINTS", None)
    srv.start()
    wait_settled(srv.state_dir)
    c = srv.client()
    check(srv, c, ctx)
    assert_consistent(srv.state_dir, c, log=srv.log())
    c.close()
