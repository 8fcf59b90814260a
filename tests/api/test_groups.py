"""Generic volume groups over HTTP against a real server: group types and specs, groups and
their members, group snapshots (real snapshots of every member, all or nothing, also across
kill -9), groups cloned from a group snapshot or a group, reset-status, and refused bodies.

Bodies are checked against Tempest's response schemas, the strictest contract there is.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jsonschema
import pytest
from tempest.lib.api_schema.response.volume import group_snapshots as gs_schema
from tempest.lib.api_schema.response.volume import group_types as gt_schema
from tempest.lib.api_schema.response.volume import groups as g_schema
from tempest.lib.api_schema.response.volume import volumes as v_schema

from tests.support.checks import check
from tests.support.consistency import (
    assert_consistent,
    pattern_problems,
    read_db,
    snapshot_file,
    volume_file,
    write_pattern,
)
from tests.support.server import Api, Server

# ---------------------------------------------------------------------------- helpers


def _volume_type(api: Api, name: str) -> str:
    r = api.post("/types", {"volume_type": {"name": name}})
    assert r.status_code == 200, r.text
    return str(r.json()["volume_type"]["id"])


def _group_type(api: Api, name: str, **extra: Any) -> str:
    r = api.post("/group_types", {"group_type": {"name": name, **extra}})
    body = check(gt_schema.create_group_type, r)
    return str(body["group_type"]["id"])


def _group(api: Api, group_type: str, volume_types: list[str], name: str = "g") -> str:
    r = api.post("/groups", {"group": {"name": name, "group_type": group_type,
                                       "volume_types": volume_types}})
    body = check(g_schema.create_group, r)
    gid = str(body["group"]["id"])
    api.wait_status(f"/groups/{gid}", "group", "available")
    return gid


def _member(api: Api, group_id: str, volume_type: str, size: int = 1) -> dict[str, Any]:
    r = api.post("/volumes", {"volume": {"size": size, "volume_type": volume_type,
                                         "group_id": group_id}})
    assert r.status_code == 202, r.text
    assert r.json()["volume"]["group_id"] == group_id
    return api.wait_volume(r.json()["volume"]["id"], "available")


def _group_snapshot(api: Api, group_id: str, name: str = "gs") -> str:
    r = api.post("/group_snapshots", {"group_snapshot": {"group_id": group_id, "name": name}})
    body = check(gs_schema.create_group_snapshot, r)
    return str(body["group_snapshot"]["id"])


def _members_of(api: Api, group_id: str) -> list[dict[str, Any]]:
    vols = api.get("/volumes/detail").json()["volumes"]
    return [v for v in vols if v["group_id"] == group_id]


def _snapshots_of(api: Api, group_snapshot_id: str) -> list[dict[str, Any]]:
    snaps = api.get("/snapshots/detail").json()["snapshots"]
    return [s for s in snaps if s["group_snapshot_id"] == group_snapshot_id]


def _delete_group(api: Api, group_id: str, delete_volumes: bool = True) -> None:
    r = api.post(f"/groups/{group_id}/action", {"delete": {"delete-volumes": delete_volumes}})
    check(g_schema.delete_group, r)
    api.wait_status(f"/groups/{group_id}", "group", "deleted")


@pytest.fixture
def v313(server: Server) -> Any:
    c = server.client(version="3.13")
    yield c
    c.close()


# ---------------------------------------------------------------------------- group types


def test_group_types_and_specs_round_trip(api: Api) -> None:
    r = api.post("/group_types", {"group_type": {
        "name": "gt-round", "description": "d", "is_public": True,
        "group_specs": {"consistent_group_snapshot_enabled": "<is> False"}}})
    gt = check(gt_schema.create_group_type, r)["group_type"]
    assert gt["group_specs"] == {"consistent_group_snapshot_enabled": "<is> False"}
    gid = gt["id"]
    assert api.post("/group_types", {"group_type": {"name": "gt-round"}}).status_code == 409
    updated = check(gt_schema.update_group_type, api.put(
        f"/group_types/{gid}", {"group_type": {"name": "gt-round2", "description": "e"}}))
    assert updated["group_type"]["name"] == "gt-round2"
    shown = check(gt_schema.show_group_type, api.get(f"/group_types/{gid}"))["group_type"]
    assert (shown["name"], shown["description"], shown["is_public"]) == ("gt-round2", "e", True)

    specs = check(gt_schema.create_or_update_group_type_specs, api.post(
        f"/group_types/{gid}/group_specs", {"group_specs": {"key1": "v1", "key2": "v2"}}))
    assert specs["group_specs"] == {"key1": "v1", "key2": "v2"}
    item = check(gt_schema.update_group_type_specs_item,
                  api.put(f"/group_types/{gid}/group_specs/key2", {"key2": "v2b"}))
    assert item == {"key2": "v2b"}
    assert check(gt_schema.show_group_type_specs_item,
                  api.get(f"/group_types/{gid}/group_specs/key2")) == {"key2": "v2b"}
    listed = check(gt_schema.list_group_type_specs, api.get(f"/group_types/{gid}/group_specs"))
    assert listed["group_specs"] == {"consistent_group_snapshot_enabled": "<is> False",
                                     "key1": "v1", "key2": "v2b"}
    check(gt_schema.delete_group_type_specs_item,
           api.delete(f"/group_types/{gid}/group_specs/key1"))
    assert api.get(f"/group_types/{gid}/group_specs/key1").status_code == 404
    assert api.delete(f"/group_types/{gid}/group_specs/key1").status_code == 404
    check(gt_schema.delete_group_type, api.delete(f"/group_types/{gid}"))
    assert api.get(f"/group_types/{gid}").status_code == 404


def test_group_type_list_sort_and_visibility(api: Api) -> None:
    a = _group_type(api, "a_gt_vis", is_public=True)
    b = _group_type(api, "b_gt_vis", is_public=False)
    names = [t["name"] for t in check(gt_schema.list_group_types, api.get(
        "/group_types", params={"sort": "name:asc", "is_public": "None"}))["group_types"]]
    assert names.index("a_gt_vis") < names.index("b_gt_vis")
    names = [t["name"] for t in api.get("/group_types", params={
        "sort": "name:desc", "is_public": "None"}).json()["group_types"]]
    assert names.index("b_gt_vis") < names.index("a_gt_vis")
    private = [t["name"] for t in api.get("/group_types", params={"is_public": "False"})
               .json()["group_types"]]
    assert "b_gt_vis" in private and "a_gt_vis" not in private
    public = [t["name"] for t in api.get("/group_types", params={"is_public": "True"})
              .json()["group_types"]]
    assert "a_gt_vis" in public and "b_gt_vis" not in public
    for gid in (a, b):
        assert api.delete(f"/group_types/{gid}").status_code == 202


def test_group_types_need_311_and_default_is_not_configured(server: Server) -> None:
    old = server.client(version="3.10")
    assert old.get("/group_types").status_code == 404
    old.close()
    r = server.client().get("/group_types/default")
    assert r.status_code == 404
    assert r.json()["itemNotFound"]["message"] == "Default group type can not be found."


# ---------------------------------------------------------------------------- groups


def test_group_create_show_list_members_and_delete(v313: Api, api: Api) -> None:
    vt = _volume_type(api, "vt-crud")
    gt = _group_type(api, "gt-crud")
    g1 = _group(v313, gt, [vt], "group1")
    g2 = _group(v313, gt, [vt], "group2")
    vol = _member(v313, g1, vt)
    assert vol["group_id"] == g1
    jsonschema.validate(v313.get(f"/volumes/{vol['id']}").json(),
                        v_schema.show_volume["response_body"])
    shown = check(g_schema.show_group, v313.get(f"/groups/{g1}"))["group"]
    assert (shown["name"], shown["group_type"], shown["volume_types"]) == ("group1", gt, [vt])
    listed = check(g_schema.list_groups_with_detail, v313.get("/groups/detail"))["groups"]
    assert {g1, g2} <= {g["id"] for g in listed}
    check(g_schema.list_groups_no_detail, v313.get("/groups"))
    # 3.25: the members on request; 3.58: the project for admins (not in Tempest's schema)
    v325 = Api(v313.endpoint, project="admin", user="admin", version="3.25")
    members = v325.get(f"/groups/{g1}", params={"list_volume": "True"}).json()["group"]
    assert members["volumes"] == [vol["id"]]
    jsonschema.validate({"group": members}, g_schema.show_group["response_body"])
    assert api.get(f"/groups/{g1}").json()["group"]["project_id"] == "admin"
    v325.close()

    # a member goes with its group only; a group with volumes needs delete-volumes
    r = v313.delete(f"/volumes/{vol['id']}")
    assert r.status_code == 400, r.text
    r = v313.post(f"/groups/{g1}/action", {"delete": {"delete-volumes": False}})
    assert r.status_code == 400 and "delete-volumes" in r.text
    _delete_group(v313, g1)
    v313.wait_volume(vol["id"], "deleted")
    _delete_group(v313, g2, delete_volumes=False)
    assert {g1, g2}.isdisjoint({g["id"] for g in v313.get("/groups").json()["groups"]})
    assert api.delete(f"/group_types/{gt}").status_code == 202


def test_group_update_moves_members_in_and_out(v313: Api, api: Api) -> None:
    vt = _volume_type(api, "vt-upd")
    other_vt = _volume_type(api, "vt-upd-other")
    gt = _group_type(api, "gt-upd")
    g = _group(v313, gt, [vt])
    v1, v2 = _member(v313, g, vt), _member(v313, g, vt)
    r = v313.put(f"/groups/{g}", {"group": {"name": "new", "description": "desc",
                                             "remove_volumes": v2["id"]}})
    check(g_schema.update_group, r)
    shown = v313.wait_status(f"/groups/{g}", "group", "available")
    assert (shown["name"], shown["description"]) == ("new", "desc")
    assert [v["id"] for v in _members_of(v313, g)] == [v1["id"]]
    check(g_schema.update_group, v313.put(f"/groups/{g}", {"group": {"add_volumes":
                                                                       v2["id"]}}))
    assert {v["id"] for v in _members_of(v313, g)} == {v1["id"], v2["id"]}
    # refused changes leave the membership alone (all or nothing)
    r = v313.post("/volumes", {"volume": {"size": 1, "volume_type": other_vt}})
    stranger = v313.wait_volume(r.json()["volume"]["id"], "available")
    r = v313.put(f"/groups/{g}", {"group": {"remove_volumes": v1["id"],
                                             "add_volumes": stranger["id"]}})
    assert r.status_code == 400 and "not supported by the group" in r.text, r.text
    assert {v["id"] for v in _members_of(v313, g)} == {v1["id"], v2["id"]}
    r = v313.put(f"/groups/{g}", {"group": {"add_volumes": v1["id"],
                                             "remove_volumes": v1["id"]}})
    assert r.status_code == 400 and "both add and remove" in r.text
    r = v313.post("/volumes", {"volume": {"size": 1, "volume_type": other_vt,
                                          "group_id": g}})
    assert r.status_code == 400 and "supported by this group" in r.text
    _delete_group(v313, g)
    assert v313.delete(f"/volumes/{stranger['id']}").status_code == 202


def test_reset_group_status_is_admin_and_validated(server: Server, api: Api) -> None:
    c = server.client(version="3.20")
    vt = _volume_type(api, "vt-reset")
    gt = _group_type(api, "gt-reset")
    g = _group(c, gt, [vt])
    for status in ("creating", "available", "error"):
        r = c.post(f"/groups/{g}/action", {"reset_status": {"status": status}})
        check(g_schema.reset_group_status, r)
        assert c.get(f"/groups/{g}").json()["group"]["status"] == status
    r = c.post(f"/groups/{g}/action", {"reset_status": {"status": "bogus"}})
    assert r.status_code == 400 and "is invalid" in r.text
    old = server.client(version="3.19")
    assert old.post(f"/groups/{g}/action",
                    {"reset_status": {"status": "available"}}).status_code == 404
    _delete_group(c, g)
    c.close()
    old.close()


@pytest.mark.parametrize(("path", "body"), [
    ("/groups", {"group": {"group_type": "x"}}),
    ("/groups", {"group": {"group_type": "x", "volume_types": []}}),
    ("/groups", {"group": {"group_type": "x", "volume_types": ["a", "a"]}}),
    ("/groups", {"group": {"group_type": "x", "volume_types": ["a"], "bogus": 1}}),
    ("/groups", {"group": {"group_type": " ", "volume_types": ["a"]}}),
    ("/groups", {"group": {"group_type": "x", "volume_types": ["a"], "name": "n" * 256}}),
    ("/groups", {"grp": {}}),
    ("/groups/action", {"create-from-src": {}}),
    ("/groups/action", {"create-from-src": {"source_group_id": "not-a-uuid"}}),
    ("/groups/action", {"create-from-src": {
        "source_group_id": "8f2ad4a6-2f63-4ff5-9ef4-6fdc3a9f4b71",
        "group_snapshot_id": "8f2ad4a6-2f63-4ff5-9ef4-6fdc3a9f4b71"}}),
    ("/group_snapshots", {"group_snapshot": {"name": "x"}}),
    ("/group_snapshots", {"group_snapshot": {"group_id": "nope"}}),
    ("/group_types", {"group_type": {}}),
    ("/group_types", {"group_type": {"name": "x", "is_public": "maybe"}}),
    ("/group_types", {"group_type": {"name": "x", "group_specs": {"bad key!": "v"}}}),
    ("/group_types", {"group_type": {"name": ""}}),
])
def test_bad_bodies_are_400(api: Api, path: str, body: dict[str, Any]) -> None:
    before = (api.get("/groups").json(), api.get("/group_types", params={"is_public": "None"})
              .json(), api.get("/group_snapshots").json())
    r = api.post(path, body)
    assert r.status_code == 400, r.text
    assert set(r.json()) == {"badRequest"}
    after = (api.get("/groups").json(), api.get("/group_types", params={"is_public": "None"})
             .json(), api.get("/group_snapshots").json())
    assert before == after


def test_bad_update_and_action_bodies_are_400(api: Api) -> None:
    vt = _volume_type(api, "vt-bad")
    gt = _group_type(api, "gt-bad")
    g = _group(api, gt, [vt])
    for body in ({"group": {}}, {"group": {"bogus": "x"}}, {"group": {"name": 5}},
                 {"group": {"add_volumes": "x" * 256}}):
        r = api.put(f"/groups/{g}", body)
        assert r.status_code == 400, (body, r.text)
    for body in ({"delete": {"delete-volumes": "perhaps"}}, {"delete": {"x": 1}},
                 {"reset_status": {}}, {"reset_status": {"status": " "}},
                 {"frobnicate": {}}, {"delete": {}, "reset_status": {}}):
        r = api.post(f"/groups/{g}/action", body)
        assert r.status_code == 400, (body, r.text)
    assert api.get(f"/groups/{g}").json()["group"]["status"] == "available"
    r = api.post(f"/group_types/{gt}/group_specs", {"group_specs": {"a": "b"}, "x": 1})
    assert r.status_code == 400
    r = api.put(f"/group_types/{gt}/group_specs/a", {"a": "1", "b": "2"})
    assert r.status_code == 400
    r = api.put(f"/group_types/{gt}/group_specs/a", {"b": "2"})
    assert r.status_code == 400 and "mismatch" in r.text
    assert api.delete(f"/group_types/{gt}").status_code == 400  # still used by the group
    assert api.delete(f"/types/{vt}").status_code == 400  # a volume type of the group
    member = _member(api, g, vt)
    other = _volume_type(api, "vt-bad-other")
    r = api.post(f"/volumes/{member['id']}/action", {"os-retype": {"new_type": other}})
    assert r.status_code == 400 and "does not support the type" in r.text, r.text
    r = api.post(f"/volumes/{member['id']}/action", {"os-migrate_volume": {"host": "x@y#z"}})
    assert r.status_code in (400, 404), r.text
    _delete_group(api, g)
    assert api.delete(f"/group_types/{gt}").status_code == 202
    assert api.delete(f"/types/{vt}").status_code == 202


def test_group_quota(make_server: Any) -> None:
    srv = make_server(config="[quota]\ngroups = 1\n").start()
    c = srv.client()
    vt = _volume_type(c, "vt-q")
    gt = _group_type(c, "gt-q")
    g = _group(c, gt, [vt])
    r = c.post("/groups", {"group": {"group_type": gt, "volume_types": [vt]}})
    assert r.status_code == 413 and "groups" in r.text, r.text
    usage = c.get("/os-quota-sets/admin", params={"usage": "True"}).json()["quota_set"]
    assert usage["groups"]["in_use"] == 1
    _delete_group(c, g)
    usage = c.get("/os-quota-sets/admin", params={"usage": "True"}).json()["quota_set"]
    assert usage["groups"]["in_use"] == 0
    c.close()


# ---------------------------------------------------------------------------- snapshots, clones


def test_group_snapshot_takes_every_member_and_clones_from_it(server: Server,
                                                               api: Api) -> None:
    c = server.client(version="3.14")
    vt = _volume_type(api, "vt-gs")
    gt = _group_type(api, "gt-gs")
    g = _group(c, gt, [vt])
    v1, v2 = _member(c, g, vt), _member(c, g, vt)
    write_pattern(volume_file(server.state_dir, v1["id"]), 1)
    write_pattern(volume_file(server.state_dir, v2["id"]), 2)
    gs = _group_snapshot(c, g, "gsnap")
    shown = c.wait_status(f"/group_snapshots/{gs}", "group_snapshot", "available")
    jsonschema.validate({"group_snapshot": shown}, gs_schema.show_group_snapshot["response_body"])
    assert (shown["group_id"], shown["group_type_id"], shown["name"]) == (g, gt, "gsnap")
    members = _snapshots_of(c, gs)
    assert {s["volume_id"] for s in members} == {v1["id"], v2["id"]}
    assert {s["status"] for s in members} == {"available"}
    by_volume = {s["volume_id"]: s["id"] for s in members}
    assert not pattern_problems(snapshot_file(server.state_dir, by_volume[v1["id"]]), 1)
    assert not pattern_problems(snapshot_file(server.state_dir, by_volume[v2["id"]]), 2)
    check(gs_schema.list_group_snapshots_with_detail, c.get("/group_snapshots/detail"))
    check(gs_schema.list_group_snapshots_no_detail, c.get("/group_snapshots"))
    # a member snapshot goes only with its group snapshot; the group only without them
    assert c.delete(f"/snapshots/{by_volume[v1['id']]}").status_code == 400
    r = c.post(f"/groups/{g}/action", {"delete": {"delete-volumes": True}})
    assert r.status_code == 400

    # a new group from the group snapshot: one new volume per member, with its data
    r = c.post("/groups/action", {"create-from-src": {"group_snapshot_id": gs,
                                                      "name": "from-snap"}})
    g2 = check(g_schema.create_group_from_source, r)["group"]["id"]
    c.wait_status(f"/groups/{g2}", "group", "available")
    shown2 = c.get(f"/groups/{g2}").json()["group"]
    assert (shown2["group_snapshot_id"], shown2["group_type"]) == (gs, gt)
    copies = _members_of(c, g2)
    assert sorted(v["snapshot_id"] for v in copies) == sorted(by_volume.values())
    assert {v["status"] for v in copies} == {"available"}
    seeds = {by_volume[v1["id"]]: 1, by_volume[v2["id"]]: 2}
    for v in copies:
        assert not pattern_problems(volume_file(server.state_dir, v["id"]),
                                    seeds[v["snapshot_id"]])

    # and one from the group itself
    r = c.post("/groups/action", {"create-from-src": {"source_group_id": g, "name": "clone"}})
    g3 = check(g_schema.create_group_from_source, r)["group"]["id"]
    c.wait_status(f"/groups/{g3}", "group", "available")
    clones = _members_of(c, g3)
    assert sorted(v["source_volid"] for v in clones) == sorted([v1["id"], v2["id"]])

    # reset-status of a group snapshot (3.19)
    c19 = server.client(version="3.19")
    for status in ("creating", "available", "error", "available"):
        check(gs_schema.reset_group_snapshot_status, c19.post(
            f"/group_snapshots/{gs}/action", {"reset_status": {"status": status}}))
        assert c19.get(f"/group_snapshots/{gs}").json()["group_snapshot"]["status"] == status

    for gid in (g3, g2):
        _delete_group(c, gid)
    check(gs_schema.delete_group_snapshot, c.delete(f"/group_snapshots/{gs}"))
    c.wait_status(f"/group_snapshots/{gs}", "group_snapshot", "deleted")
    for sid in by_volume.values():
        c.wait_snapshot(sid, "deleted")
        assert not snapshot_file(server.state_dir, sid).exists()
    _delete_group(c, g)
    assert_consistent(server.state_dir, api, log=server.log())
    c.close()
    c19.close()


def test_a_frozen_backend_refuses_group_operations(make_server: Any) -> None:
    """As in Cinder (group.assert_not_frozen): no group delete, group snapshot create or
    delete, or group clone on a frozen backend; each refusal changes nothing. Nor does a new
    member land there."""
    srv = make_server().start()
    c = srv.client()
    vt = _volume_type(c, "vt-frozen")
    g = _group(c, _group_type(c, "gt-frozen"), [vt])
    _member(c, g, vt)
    gs = _group_snapshot(c, g)
    c.wait_status(f"/group_snapshots/{gs}", "group_snapshot", "available")
    host = next(s["host"] for s in c.get("/os-services").json()["services"]
                if s["binary"] == "cinder-volume")
    assert c.put("/os-services/freeze", {"host": host}).status_code == 200
    before = read_db(srv.state_dir)
    frozen = "Modification operations are not allowed on frozen storage backends."
    for r in (c.post("/group_snapshots", {"group_snapshot": {"group_id": g}}),
              c.delete(f"/group_snapshots/{gs}"),
              c.post("/groups/action", {"create-from-src": {"source_group_id": g}}),
              c.post("/groups/action", {"create-from-src": {"group_snapshot_id": gs}}),
              c.post(f"/groups/{g}/action", {"delete": {"delete-volumes": True}})):
        assert r.status_code == 400 and frozen in r.text, r.text
    after = read_db(srv.state_dir)
    assert (after.volumes, after.snapshots, after.usages, after.groups) == \
        (before.volumes, before.snapshots, before.usages, before.groups)
    assert c.get(f"/group_snapshots/{gs}").json()["group_snapshot"]["status"] == "available"
    assert c.get(f"/groups/{g}").json()["group"]["status"] == "available"
    # a new member could only go to the group's (frozen) backend: no valid backend, as in
    # Cinder's scheduler; the volume ends in error outside the group
    r = c.post("/volumes", {"volume": {"size": 1, "volume_type": vt, "group_id": g}})
    assert r.status_code == 202, r.text
    stray = c.wait_volume(r.json()["volume"]["id"], "error")
    assert stray["group_id"] is None and len(_members_of(c, g)) == 1
    assert c.put("/os-services/thaw", {"host": host}).status_code == 200
    assert c.delete(f"/volumes/{stray['id']}").status_code == 202
    c.wait_volume(stray["id"], "deleted")
    assert c.delete(f"/group_snapshots/{gs}").status_code == 202
    c.wait_status(f"/group_snapshots/{gs}", "group_snapshot", "deleted")
    _delete_group(c, g)
    assert_consistent(srv.state_dir, c, log=srv.log())
    c.close()


def _server_with_failpoints(make_server: Any, tmp_path: Path) -> tuple[Server, Api, Path]:
    """A started server that reads its fail points from the returned file (none armed yet)."""
    armed = tmp_path / "failpoints"
    srv = make_server(env={"BLOCKYARD_FAILPOINTS_FILE": str(armed)}).start()
    return srv, srv.client(), armed


def _group_with_members(c: Api, state_dir: Path, count: int) -> tuple[str, list[str]]:
    vt = _volume_type(c, "vt-crash")
    gt = _group_type(c, "gt-crash")
    g = _group(c, gt, [vt])
    vids = []
    for i in range(count):
        v = _member(c, g, vt)
        write_pattern(volume_file(state_dir, v["id"]), 100 + i)
        vids.append(v["id"])
    return g, vids


def test_group_snapshot_killed_between_members_finishes_after_restart(
        make_server: Any, tmp_path: Path) -> None:
    srv, c, armed = _server_with_failpoints(make_server, tmp_path)
    g, vids = _group_with_members(c, srv.state_dir, 3)
    armed.write_text("create_group_snapshot.between_members")
    r = c.post("/group_snapshots", {"group_snapshot": {"group_id": g}})
    assert r.status_code == 202, r.text
    gs = r.json()["group_snapshot"]["id"]
    srv.wait_exit()  # killed after the first member was made
    st = read_db(srv.state_dir)
    made = [sid for sid, s in st.snapshots.items() if s["group_snapshot_id"] == gs]
    assert len(made) == 3 and {st.snapshots[s]["status"] for s in made} == {"creating"}
    assert sum(snapshot_file(srv.state_dir, s).exists() for s in made) == 1
    armed.write_text("")
    srv.start()
    c = srv.client()
    c.wait_status(f"/group_snapshots/{gs}", "group_snapshot", "available")
    members = _snapshots_of(c, gs)
    assert {s["status"] for s in members} == {"available"} and len(members) == 3
    for s in members:
        seed = 100 + vids.index(s["volume_id"])
        assert not pattern_problems(snapshot_file(srv.state_dir, s["id"]), seed)
    assert_consistent(srv.state_dir, c, log=srv.log())
    c.close()


def test_group_snapshot_failing_midway_leaves_no_member(make_server: Any,
                                                         tmp_path: Path) -> None:
    srv, c, armed = _server_with_failpoints(make_server, tmp_path)
    g, vids = _group_with_members(c, srv.state_dir, 3)
    quota_before = c.get("/os-quota-sets/admin", params={"usage": "True"}).json()["quota_set"]
    armed.write_text("create_group_snapshot.between_members=error")
    gs = _group_snapshot(c, g)
    c.wait_status(f"/group_snapshots/{gs}", "group_snapshot", "error")
    armed.write_text("")
    assert _snapshots_of(c, gs) == []
    assert not list((srv.state_dir / "volumes" / "default").glob("snapshot-*"))
    quota_after = c.get("/os-quota-sets/admin", params={"usage": "True"}).json()["quota_set"]
    assert quota_after["snapshots"] == quota_before["snapshots"]
    assert quota_after["gigabytes"] == quota_before["gigabytes"]
    assert_consistent(srv.state_dir, c, log=srv.log())
    # the group snapshot in error can go, and then the group with its volumes
    assert c.delete(f"/group_snapshots/{gs}").status_code == 202
    c.wait_status(f"/group_snapshots/{gs}", "group_snapshot", "deleted")
    _delete_group(c, g)
    for vid in vids:
        c.wait_volume(vid, "deleted")
    assert_consistent(srv.state_dir, c, log=srv.log())
    c.close()


def test_group_clone_failing_midway_leaves_no_volume(make_server: Any, tmp_path: Path) -> None:
    srv, c, armed = _server_with_failpoints(make_server, tmp_path)
    g, vids = _group_with_members(c, srv.state_dir, 2)
    armed.write_text("create_group_from_src.between_members=error")
    r = c.post("/groups/action", {"create-from-src": {"source_group_id": g}})
    assert r.status_code == 202, r.text
    g2 = r.json()["group"]["id"]
    c.wait_status(f"/groups/{g2}", "group", "error")
    armed.write_text("")
    assert _members_of(c, g2) == []
    assert len(list((srv.state_dir / "volumes" / "default").glob("volume-*"))) == len(vids)
    assert_consistent(srv.state_dir, c, log=srv.log())
    _delete_group(c, g2)
    c.close()
