"""Snapshot actions and list paging as Tempest's volume suite checks them against Cinder 29:
os-update_snapshot_status, force-delete of a snapshot stuck in `deleting`, the next link of a
full page, limit=0, offset, an unknown marker and a create without a volume id."""

from __future__ import annotations

import uuid
from typing import Any

from tempest.lib.api_schema.response.volume import snapshots as schema

from tests.support.resources import available_snapshot, available_volume
from tests.support.server import Api, Server


def _action(api: Api, snapshot_id: str, body: dict[str, Any]) -> Any:
    return api.post(f"/snapshots/{snapshot_id}/action", body)


def _usage(api: Api, project: str) -> dict[str, int]:
    quota_set = api.get(f"/os-quota-sets/{project}?usage=true").json()["quota_set"]
    return {k: quota_set[k]["in_use"] for k in ("snapshots", "gigabytes", "volumes")}


def test_update_snapshot_status_follows_cinders_status_map(server: Server) -> None:
    api = server.client(project="snap-status")
    snap = available_snapshot(api, available_volume(api)["id"])
    sid = snap["id"]
    # only a snapshot being created or deleted takes reports
    refused = _action(api, sid, {"os-update_snapshot_status": {"status": "error"}})
    assert refused.status_code == 400
    assert refused.json()["badRequest"]["message"] == (
        "Snapshot status available not allowed for update_snapshot_status")

    assert _action(api, sid, {"os-reset_status": {"status": "creating"}}).status_code == 202
    r = _action(api, sid, {"os-update_snapshot_status": {"status": "error", "progress": "80%"}})
    assert r.status_code == 202 and r.content == b""
    assert r.status_code in schema.update_snapshot_status["status_code"]
    shown = api.get(f"/snapshots/{sid}").json()["snapshot"]
    assert shown["status"] == "error"
    assert shown["os-extended-snapshot-attributes:progress"] == "80%"

    # from `deleting` only `deleting`/`error_deleting` may be reported
    assert _action(api, sid, {"os-reset_status": {"status": "deleting"}}).status_code == 202
    wrong = _action(api, sid, {"os-update_snapshot_status": {"status": "available"}})
    assert wrong.status_code == 400
    assert wrong.json()["badRequest"]["message"] == (
        "Provided snapshot status available not allowed for snapshot with status deleting.")
    assert api.get(f"/snapshots/{sid}").json()["snapshot"]["status"] == "deleting"
    ok = _action(api, sid, {"os-update_snapshot_status": {"status": "error_deleting"}})
    assert ok.status_code == 202
    assert api.get(f"/snapshots/{sid}").json()["snapshot"]["status"] == "error_deleting"

    # Cinder's schema: status required, progress an integer percentage, nothing else
    for bad in ({}, {"status": "error", "progress": "101%"}, {"status": "error",
                "progress": "eighty"}, {"status": "error", "extra": 1}, {"status": 5}):
        r = _action(api, sid, {"os-update_snapshot_status": bad})
        assert r.status_code == 400, (bad, r.text)
    assert api.get(f"/snapshots/{sid}").json()["snapshot"]["status"] == "error_deleting"
    missing = _action(api, str(uuid.uuid4()), {"os-update_snapshot_status": {"status": "error"}})
    assert missing.status_code == 404


def test_force_delete_takes_a_snapshot_stuck_in_deleting(server: Server) -> None:
    project = "snap-stuck"
    api = server.client(project=project)
    vol = available_volume(api)
    before = _usage(api, project)
    sid = available_snapshot(api, vol["id"])["id"]
    assert _action(api, sid, {"os-reset_status": {"status": "deleting"}}).status_code == 202
    # a plain delete still refuses it; the forced one takes it and releases its quota
    assert api.delete(f"/snapshots/{sid}").status_code == 400
    assert _action(api, sid, {"os-force_delete": {}}).status_code == 202
    api.wait_snapshot(sid, "deleted")
    assert _usage(api, project) == before
    # the volume has no snapshot left, so it can go too
    assert api.delete(f"/volumes/{vol['id']}").status_code == 202
    api.wait_volume(vol["id"], "deleted")


def test_force_delete_takes_a_volume_stuck_in_deleting(server: Server) -> None:
    api = server.client(project="vol-stuck")
    vid = available_volume(api)["id"]
    assert api.post(f"/volumes/{vid}/action",
                    {"os-reset_status": {"status": "deleting"}}).status_code == 202
    assert api.post(f"/volumes/{vid}/action", {"os-force_delete": {}}).status_code == 202
    api.wait_volume(vid, "deleted")


def test_snapshot_pages_as_cinder(server: Server) -> None:
    api = server.client(project="snap-pages")
    vol = available_volume(api)
    made = [available_snapshot(api, vol["id"], name=f"p{i}")["id"] for i in range(3)]
    newest_first = made[::-1]

    # a full page links to the next one, even when that one turns out empty
    seen: list[str] = []
    query = "/snapshots?limit=1"
    pages = 0
    while True:
        body = api.get(query).json()
        pages += 1
        seen += [s["id"] for s in body["snapshots"]]
        links = body.get("snapshots_links")
        if not links:
            assert body["snapshots"] == []
            break
        assert links[0]["rel"] == "next"
        assert "/v3/snapshots?" in links[0]["href"]
        query = "/snapshots?" + links[0]["href"].split("?", 1)[1]
    assert seen == newest_first and pages == 4
    # a page shorter than the limit is the last one
    assert "snapshots_links" not in api.get("/snapshots?limit=5").json()

    assert api.get("/snapshots?limit=0").json() == {"snapshots": []}
    assert api.get("/snapshots/detail?limit=0").json() == {"snapshots": []}
    # Tempest's offset case: offset 2 of 3 with limit 3 leaves the oldest one
    offset = api.get("/snapshots?offset=2&limit=3").json()["snapshots"]
    assert [s["id"] for s in offset] == [made[0]]
    # the marker is the last id seen: the page continues after it
    after = api.get(f"/snapshots?marker={made[1]}").json()["snapshots"]
    assert [s["id"] for s in after] == [made[0]]

    missing = uuid.uuid4()
    gone = api.get(f"/snapshots?marker={missing}")
    assert gone.status_code == 404
    assert gone.json() == {"itemNotFound": {
        "code": 404, "message": f"Snapshot {missing} could not be found."}}


def test_snapshot_without_volume_id_is_not_found(server: Server) -> None:
    api = server.client(project="snap-novol")
    r = api.post("/snapshots", {"snapshot": {"volume_id": None, "name": "s"}})
    assert r.status_code == 404
    assert r.json()["itemNotFound"]["message"] == "Volume None could not be found."
    # absent altogether is still a schema error, as in Cinder
    assert api.post("/snapshots", {"snapshot": {"name": "s"}}).status_code == 400
    assert api.get("/snapshots").json()["snapshots"] == []
