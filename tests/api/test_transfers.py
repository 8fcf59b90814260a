"""Volume transfers over HTTP against a real server: the volume, its snapshots and their quota
usage really change project; the auth key works once and is never stored.

Each test works in projects of its own (the server is shared by the module).
"""

from __future__ import annotations

import sqlite3
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from tempest.lib.api_schema.response.volume import transfers as schema_30
from tempest.lib.api_schema.response.volume.v3_55 import transfers as schema_355
from tempest.lib.api_schema.response.volume.v3_57 import transfers as schema_357

from tests.support.checks import check, fault
from tests.support.server import Api, Server

NEW = "/volume-transfers"
OLD = "/os-volume-transfer"


class Project:
    """A project of its own (uuid-named, as Keystone's are), with a client per version."""

    def __init__(self, server: Server) -> None:
        self.id = uuid.uuid4().hex
        self.user = uuid.uuid4().hex
        self.api = server.client(project=self.id, user=self.user)
        self.v355 = server.client(project=self.id, user=self.user, version="3.55")
        self.v30 = server.client(project=self.id, user=self.user, version="3.0")

    def close(self) -> None:
        for c in (self.api, self.v355, self.v30):
            c.close()

    def volume(self, size: int = 1) -> str:
        r = self.api.post("/volumes", {"volume": {"size": size}})
        assert r.status_code == 202, r.text
        vid = str(r.json()["volume"]["id"])
        self.api.wait_volume(vid, "available")
        return vid

    def snapshot(self, volume_id: str) -> str:
        r = self.api.post("/snapshots", {"snapshot": {"volume_id": volume_id}})
        assert r.status_code == 202, r.text
        sid = str(r.json()["snapshot"]["id"])
        self.api.wait_snapshot(sid, "available")
        return sid

    def usage(self) -> dict[str, int]:
        r = self.api.get(f"/os-quota-sets/{self.id}", params={"usage": "True"})
        assert r.status_code == 200, r.text
        return {k: v["in_use"] for k, v in r.json()["quota_set"].items() if isinstance(v, dict)}

    def volume_ids(self) -> set[str]:
        return {v["id"] for v in self.api.get("/volumes").json()["volumes"]}

    def snapshot_ids(self) -> set[str]:
        return {s["id"] for s in self.api.get("/snapshots").json()["snapshots"]}


@pytest.fixture
def giver(server: Server) -> Iterator[Project]:
    p = Project(server)
    yield p
    p.close()


@pytest.fixture
def taker(server: Server) -> Iterator[Project]:
    p = Project(server)
    yield p
    p.close()


def offer(p: Project, volume_id: str, **extra: Any) -> dict[str, Any]:
    r = p.api.post(NEW, {"transfer": {"volume_id": volume_id, **extra}})
    body = check(schema_357.create_volume_transfer, r)["transfer"]
    return dict(body)


def test_accept_moves_volume_snapshots_and_quota(giver: Project, taker: Project) -> None:
    vid = giver.volume(2)
    sid = giver.snapshot(vid)
    before_giver, before_taker = giver.usage(), taker.usage()
    assert before_giver["volumes"] == 1 and before_giver["snapshots"] == 1
    assert before_giver["gigabytes"] == 4 and before_taker["gigabytes"] == 0

    t = offer(giver, vid, name="  for you  ")
    assert t["name"] == "for you" and t["source_project_id"] == giver.id
    assert t["accepted"] is False and t["destination_project_id"] is None
    assert len(t["auth_key"]) == 16
    assert giver.api.wait_volume(vid, "awaiting-transfer")
    shown = check(schema_357.show_volume_transfer, giver.api.get(f"{NEW}/{t['id']}"))
    assert "auth_key" not in shown["transfer"]

    # nothing else may start on a volume awaiting transfer
    r = giver.api.post(f"/volumes/{vid}/action", {"os-extend": {"new_size": 3}})
    fault(r, 400)
    fault(giver.api.delete(f"/volumes/{vid}"), 400)

    r = taker.api.post(f"{NEW}/{t['id']}/accept", {"accept": {"auth_key": t["auth_key"]}})
    accepted = check(schema_357.accept_volume_transfer, r)["transfer"]
    assert accepted == {"id": t["id"], "volume_id": vid, "name": "for you",
                        "links": accepted["links"]}

    v = taker.api.get(f"/volumes/{vid}").json()["volume"]
    assert v["status"] == "available"
    assert v["os-vol-tenant-attr:tenant_id"] == taker.id and v["user_id"] == taker.user
    assert vid in taker.volume_ids() and vid not in giver.volume_ids()
    assert sid in taker.snapshot_ids() and sid not in giver.snapshot_ids()
    snap = taker.api.get(f"/snapshots/{sid}").json()["snapshot"]
    assert snap["os-extended-snapshot-attributes:project_id"] == taker.id
    after_giver, after_taker = giver.usage(), taker.usage()
    for resource in ("volumes", "snapshots", "gigabytes"):
        assert after_giver[resource] == 0, (resource, after_giver)
        assert after_taker[resource] == before_giver[resource], (resource, after_taker)

    # the offer is spent: not listed, not shown, not accepted twice
    assert t["id"] not in {x["id"] for x in giver.api.get(NEW).json()["transfers"]}
    fault(giver.api.get(f"{NEW}/{t['id']}"), 404)
    r = taker.api.post(f"{NEW}/{t['id']}/accept", {"accept": {"auth_key": t["auth_key"]}})
    fault(r, 404)
    # and the new owner can use the volume
    r = taker.api.post(f"/volumes/{vid}/action", {"os-extend": {"new_size": 3}})
    assert r.status_code == 202, r.text
    taker.api.wait_volume(vid, "available")


def test_wrong_key_is_refused_and_moves_nothing(giver: Project, taker: Project) -> None:
    vid = giver.volume()
    t = offer(giver, vid)
    for key in ("0" * 16, t["auth_key"].upper() + "0", 1234):
        r = taker.api.post(f"{NEW}/{t['id']}/accept", {"accept": {"auth_key": key}})
        assert "invalid auth key" in fault(r, 400)
    # a key that is not even valid UTF-8 is just as wrong (and no 500)
    r = taker.api.post(f"{NEW}/{t['id']}/accept", content=b'{"accept": {"auth_key": "\\ud800"}}',
                       headers={"Content-Type": "application/json"})
    assert r.status_code == 400, r.text
    assert giver.api.get(f"/volumes/{vid}").json()["volume"]["status"] == "awaiting-transfer"
    assert vid in giver.volume_ids() and taker.usage()["volumes"] == 0
    fault(taker.api.post(f"{NEW}/{uuid.uuid4()}/accept", {"accept": {"auth_key": "x"}}), 404)


def test_only_a_hash_of_the_key_is_stored(server: Server, giver: Project) -> None:
    vid = giver.volume()
    t = offer(giver, vid)
    db = sqlite3.connect(server.state_dir / "blockyard.db")
    try:
        rows = db.execute("SELECT * FROM transfers WHERE id = ?", (t["id"],)).fetchall()
        names = [d[0] for d in db.execute("SELECT * FROM transfers LIMIT 0").description]
        other = db.execute("SELECT salt, crypt_hash FROM transfers WHERE id != ?",
                           (t["id"],)).fetchall()
    finally:
        db.close()
    assert len(rows) == 1
    row = dict(zip(names, rows[0], strict=True))
    assert all(t["auth_key"] not in str(value) for value in row.values()), row
    assert row["crypt_hash"].startswith("scrypt$") and len(row["salt"]) == 32
    # the salt is per transfer
    assert row["salt"] not in {salt for salt, _ in other}


def test_over_quota_is_413_and_nothing_moves(giver: Project, taker: Project, api: Api) -> None:
    vid = giver.volume(3)
    t = offer(giver, vid)
    r = api.put(f"/os-quota-sets/{taker.id}", {"quota_set": {"gigabytes": 2}})
    assert r.status_code == 200, r.text
    r = taker.api.post(f"{NEW}/{t['id']}/accept", {"accept": {"auth_key": t["auth_key"]}})
    assert "gigabytes" in fault(r, 413)
    assert giver.api.get(f"/volumes/{vid}").json()["volume"]["status"] == "awaiting-transfer"
    assert vid in giver.volume_ids() and vid not in taker.volume_ids()
    assert giver.usage()["gigabytes"] == 3 and taker.usage()["gigabytes"] == 0
    # the offer still stands: with room, the same key works
    api.put(f"/os-quota-sets/{taker.id}", {"quota_set": {"gigabytes": 3}})
    r = taker.api.post(f"{NEW}/{t['id']}/accept", {"accept": {"auth_key": t["auth_key"]}})
    assert r.status_code == 202, r.text
    assert giver.usage()["gigabytes"] == 0 and taker.usage()["gigabytes"] == 3


def test_no_snapshots_leaves_snapshots_behind(giver: Project, taker: Project) -> None:
    vid = giver.volume()
    sid = giver.snapshot(vid)
    r = giver.v355.post(NEW, {"transfer": {"volume_id": vid, "no_snapshots": True}})
    t = check(schema_355.create_volume_transfer, r)["transfer"]
    assert t["no_snapshots"] is True and "accepted" not in t
    r = taker.v355.post(f"{NEW}/{t['id']}/accept", {"accept": {"auth_key": t["auth_key"]}})
    check(schema_355.accept_volume_transfer, r)
    assert vid in taker.volume_ids() and sid in giver.snapshot_ids()
    assert giver.usage()["snapshots"] == 1 and taker.usage()["snapshots"] == 0
    assert giver.usage()["volumes"] == 0 and taker.usage()["volumes"] == 1


def test_snapshots_left_behind_stay_counted_for_their_owner(server: Server, giver: Project,
                                                           taker: Project) -> None:
    """A volume handed on again after a `no_snapshots` transfer: the snapshot left with the
    first giver neither moves nor counts for the middle project or the last taker."""
    vid = giver.volume()
    sid = giver.snapshot(vid)
    t = offer(giver, vid, no_snapshots=True)
    r = taker.api.post(f"{NEW}/{t['id']}/accept", {"accept": {"auth_key": t["auth_key"]}})
    assert r.status_code == 202, r.text
    last = Project(server)
    try:
        t = offer(taker, vid)
        r = last.api.post(f"{NEW}/{t['id']}/accept", {"accept": {"auth_key": t["auth_key"]}})
        assert r.status_code == 202, r.text
        assert vid in last.volume_ids() and sid in giver.snapshot_ids()
        assert giver.usage()["snapshots"] == 1
        assert taker.usage()["snapshots"] == 0 and last.usage()["snapshots"] == 0
        assert taker.usage()["volumes"] == 0 and last.usage()["volumes"] == 1
    finally:
        last.close()


def test_a_new_offer_replaces_one_left_open_by_a_reset(giver: Project, taker: Project,
                                                     api: Api) -> None:
    """After an admin resets a volume awaiting transfer to `available` and it is offered again,
    the old offer is gone: its key cannot take the volume, and withdrawing it cannot cancel
    the new offer."""
    vid = giver.volume()
    old = offer(giver, vid)
    r = api.post(f"/volumes/{vid}/action", {"os-reset_status": {"status": "available"}})
    assert r.status_code == 202, r.text
    new = offer(giver, vid)
    fault(giver.api.get(f"{NEW}/{old['id']}"), 404)
    fault(giver.api.delete(f"{NEW}/{old['id']}"), 404)
    assert giver.api.get(f"/volumes/{vid}").json()["volume"]["status"] == "awaiting-transfer"
    r = taker.api.post(f"{NEW}/{old['id']}/accept", {"accept": {"auth_key": old["auth_key"]}})
    fault(r, 404)
    assert [t["id"] for t in giver.api.get(NEW).json()["transfers"]] == [new["id"]]
    r = taker.api.post(f"{NEW}/{new['id']}/accept", {"accept": {"auth_key": new["auth_key"]}})
    assert r.status_code == 202, r.text
    assert vid in taker.volume_ids()


def test_delete_gives_the_volume_back(giver: Project) -> None:
    vid = giver.volume()
    r = giver.v30.post(OLD, {"transfer": {"volume_id": vid}})
    t = check(schema_30.create_volume_transfer, r)["transfer"]
    assert "no_snapshots" not in t
    listed = check(schema_30.list_volume_transfers_no_detail, giver.v30.get(OLD))
    assert t["id"] in {x["id"] for x in listed["transfers"]}
    detail = check(schema_30.list_volume_transfers_with_detail, giver.v30.get(f"{OLD}/detail"))
    assert vid in {x["volume_id"] for x in detail["transfers"]}
    check(schema_30.delete_volume_transfer, giver.v30.delete(f"{OLD}/{t['id']}"))
    assert giver.api.get(f"/volumes/{vid}").json()["volume"]["status"] == "available"
    fault(giver.v30.get(f"{OLD}/{t['id']}"), 404)
    fault(giver.v30.delete(f"{OLD}/{t['id']}"), 404)
    # a second offer of the same volume is possible once the first is gone
    offer(giver, vid)


def test_refused_offers(giver: Project) -> None:
    vid = giver.volume()
    t = offer(giver, vid)
    assert "status must be available" in fault(
        giver.api.post(NEW, {"transfer": {"volume_id": vid}}), 400)
    giver.api.delete(f"{NEW}/{t['id']}")
    fault(giver.api.post(NEW, {"transfer": {"volume_id": str(uuid.uuid4())}}), 404)
    bad_bodies: list[Any] = [
        {}, {"transfer": {}}, {"transfer": {"volume_id": "nope"}},
        {"transfer": {"volume_id": vid, "extra": 1}},
        {"transfer": {"volume_id": vid, "name": "   "}},
        {"transfer": {"volume_id": vid, "name": "x" * 256}},
        {"transfer": {"volume_id": vid, "no_snapshots": "perhaps"}},
        {"transfer": {"volume_id": vid}, "other": {}},
    ]
    for body in bad_bodies:
        fault(giver.api.post(NEW, body), 400)
    # no_snapshots is 3.55's, and only on the new path
    fault(giver.api.post(OLD, {"transfer": {"volume_id": vid, "no_snapshots": True}}), 400)
    fault(giver.v30.post(NEW, {"transfer": {"volume_id": vid}}), 404)
    for body in ({}, {"accept": {}}, {"accept": {"auth_key": None}},
                 {"accept": {"auth_key": "k", "more": 1}}):
        fault(giver.api.post(f"{NEW}/{uuid.uuid4()}/accept", body), 400)
    assert giver.api.get(f"/volumes/{vid}").json()["volume"]["status"] == "available"


def test_snapshot_in_flux_blocks_the_offer(giver: Project, api: Api) -> None:
    vid = giver.volume()
    sid = giver.snapshot(vid)
    api.post(f"/snapshots/{sid}/action", {"os-reset_status": {"status": "error"}})
    assert sid in fault(giver.api.post(NEW, {"transfer": {"volume_id": vid}}), 400)
    # without its snapshots the volume may go
    r = giver.api.post(NEW, {"transfer": {"volume_id": vid, "no_snapshots": True}})
    assert r.status_code == 202, r.text


def test_concurrent_accepts_have_one_winner(server: Server, giver: Project) -> None:
    import threading

    vid = giver.volume()
    t = offer(giver, vid)
    takers = [Project(server) for _ in range(4)]
    answers: list[int] = []
    go = threading.Barrier(len(takers))

    def take(p: Project) -> None:
        go.wait()
        r = p.api.post(f"{NEW}/{t['id']}/accept", {"accept": {"auth_key": t["auth_key"]}})
        answers.append(r.status_code)

    threads = [threading.Thread(target=take, args=(p,)) for p in takers]
    for th in threads:
        th.start()
    for th in threads:
        th.join(60)
    try:
        assert sorted(answers) == [202, 404, 404, 404], answers
        owners = [p for p in takers if vid in p.volume_ids()]
        assert len(owners) == 1
        assert [p.usage()["volumes"] for p in takers].count(1) == 1
        assert sum(p.usage()["gigabytes"] for p in takers) == 1
        assert giver.usage()["volumes"] == 0
    finally:
        for p in takers:
            p.close()
