"""The snapshots API over HTTP against a real server, and the data the file backend keeps."""

from __future__ import annotations

import hashlib
import uuid
from pathlib import Path

import jsonschema
from tempest.lib.api_schema.response.volume import snapshots as schema

from tests.support.resources import available_snapshot, available_volume
from tests.support.server import Server

MiB = 1024**2


def _file(server: Server, kind: str, ident: str) -> Path:
    return server.state_dir / "volumes" / "default" / f"{kind}-{ident}"


def test_bodies_match_tempest_schemas(server: Server) -> None:
    api = server.client(version="3.0")
    vol = available_volume(api)
    r = api.post("/snapshots", {"snapshot": {"volume_id": vol["id"], "name": "s"}})
    assert r.status_code == 202
    jsonschema.validate(r.json(), schema.create_snapshot["response_body"])
    sid = r.json()["snapshot"]["id"]
    api.wait_snapshot(sid, "available")
    jsonschema.validate(api.get(f"/snapshots/{sid}").json(),
                        schema.show_snapshot["response_body"])
    jsonschema.validate(api.get("/snapshots").json(),
                        schema.list_snapshots_no_detail["response_body"])
    jsonschema.validate(api.get("/snapshots/detail").json(),
                        schema.list_snapshots_with_detail["response_body"])
    jsonschema.validate(api.put(f"/snapshots/{sid}", {"snapshot": {"name": "t"}}).json(),
                        schema.update_snapshot["response_body"])
    jsonschema.validate(api.get(f"/snapshots/{sid}/metadata").json(),
                        schema.show_snapshot_metadata["response_body"])


def test_snapshot_copies_data_and_volume_from_it_is_independent(server: Server) -> None:
    api = server.client()
    vol = available_volume(api, size=1)
    path = _file(server, "volume", vol["id"])
    pattern = uuid.uuid4().bytes * (MiB // 16)
    with open(path, "r+b") as fh:
        fh.seek(300 * MiB)
        fh.write(pattern)
    snap = available_snapshot(api, vol["id"], name="s1", metadata={"k": "v"})
    assert snap["size"] == 1 and snap["metadata"] == {"k": "v"}
    assert snap["os-extended-snapshot-attributes:progress"] == "100%"
    # change the volume after the snapshot: the snapshot keeps the old bytes
    with open(path, "r+b") as fh:
        fh.seek(300 * MiB)
        fh.write(b"\xff" * MiB)
    r = api.post("/volumes", {"volume": {"snapshot_id": snap["id"], "size": 2}})
    assert r.status_code == 202
    restored = api.wait_volume(r.json()["volume"]["id"], "available")
    assert restored["size"] == 2 and restored["snapshot_id"] == snap["id"]
    with open(_file(server, "volume", restored["id"]), "rb") as fh:
        fh.seek(300 * MiB)
        assert hashlib.sha256(fh.read(MiB)).digest() == hashlib.sha256(pattern).digest()
        fh.seek(0)
        assert fh.read(MiB) == bytes(MiB)
    assert _file(server, "volume", restored["id"]).stat().st_size == 2 * 1024**3
    # a volume from a snapshot may not be smaller than it
    small = api.post("/volumes", {"volume": {"snapshot_id": snap["id"], "size": 0}})
    assert small.status_code == 400


def test_snapshot_rules(server: Server) -> None:
    api = server.client()
    vol = available_volume(api)
    ghost = str(uuid.uuid4())
    assert api.post("/snapshots", {"snapshot": {"volume_id": ghost}}).status_code == 404
    assert api.post("/snapshots", {"snapshot": {"volume_id": "bad"}}).status_code == 400
    assert api.post("/snapshots", {"snapshot": {}}).status_code == 400
    assert api.post("/snapshots", {"nosnapshot": {}}).status_code == 400
    assert api.post("/snapshots", {"snapshot": {"volume_id": vol["id"],
                                                "bogus": 1}}).status_code == 400
    api.post(f"/volumes/{vol['id']}/action", {"os-reset_status": {"status": "error"}})
    r = api.post("/snapshots", {"snapshot": {"volume_id": vol["id"]}})
    assert r.status_code == 400 and "badRequest" in r.json()
    api.post(f"/volumes/{vol['id']}/action", {"os-reset_status": {"status": "in-use"}})
    v365 = {"OpenStack-API-Version": "volume 3.65"}  # before 3.66, in-use takes force
    assert api.post("/snapshots", {"snapshot": {"volume_id": vol["id"]}},
                    headers=v365).status_code == 400
    forced = api.post("/snapshots", {"snapshot": {"volume_id": vol["id"], "force": "True"}},
                      headers=v365)
    assert forced.status_code == 202
    api.wait_snapshot(forced.json()["snapshot"]["id"], "available")
    # from 3.66 an in-use volume needs no force (the CLI then sends none); false is refused
    v366 = {"OpenStack-API-Version": "volume 3.66"}
    r = api.post("/snapshots", {"snapshot": {"volume_id": vol["id"], "force": False}},
                 headers=v366)
    assert r.status_code == 400 and "3.66 the 'force' flag is invalid" in r.text, r.text
    for spec in ({}, {"force": True}):
        r = api.post("/snapshots", {"snapshot": {"volume_id": vol["id"], **spec}},
                     headers=v366)
        assert r.status_code == 202, r.text
        api.wait_snapshot(r.json()["snapshot"]["id"], "available")


def test_snapshot_update_metadata_reset_delete(server: Server) -> None:
    api = server.client()
    vol = available_volume(api)
    snap = available_snapshot(api, vol["id"], name="a")
    sid = snap["id"]
    assert api.put(f"/snapshots/{sid}", {"snapshot": {"name": "b", "description": "d"}}
                   ).json()["snapshot"]["name"] == "b"
    assert api.post(f"/snapshots/{sid}/metadata", {"metadata": {"x": "1"}}
                    ).json() == {"metadata": {"x": "1"}}
    assert api.put(f"/snapshots/{sid}/metadata/x", {"meta": {"x": "2"}}
                   ).json() == {"meta": {"x": "2"}}
    assert api.get(f"/snapshots/{sid}/metadata/x").json() == {"meta": {"x": "2"}}
    assert api.delete(f"/snapshots/{sid}/metadata/x").status_code == 200
    assert api.get(f"/snapshots/{sid}/metadata").json() == {"metadata": {}}
    path = f"/snapshots/{sid}/action"
    assert api.post(path, {"os-reset_status": {"status": "error"}}).status_code == 202
    assert api.get(f"/snapshots/{sid}").json()["snapshot"]["status"] == "error"
    assert api.post(path, {"os-reset_status": {"status": "nonsense"}}).status_code == 400
    assert api.post(path, {"os-bogus": None}).status_code == 400
    assert api.delete(f"/snapshots/{sid}").status_code == 202
    api.wait_snapshot(sid, "deleted")
    assert not _file(server, "snapshot", sid).exists()
    # and the volume can go now
    assert api.delete(f"/volumes/{vol['id']}").status_code == 202
    api.wait_volume(vol["id"], "deleted")
    assert not _file(server, "volume", vol["id"]).exists()


def test_snapshot_list_is_per_project_and_pages(server: Server) -> None:
    a, b = server.client(project="snap-a"), server.client(project="snap-b")
    vol = available_volume(a)
    ids = {available_snapshot(a, vol["id"], name=f"s{i}")["id"] for i in range(3)}
    assert {s["id"] for s in a.get("/snapshots").json()["snapshots"]} == ids
    assert b.get("/snapshots").json()["snapshots"] == []
    first = a.get("/snapshots?limit=2&sort=name:asc").json()
    assert [s["name"] for s in first["snapshots"]] == ["s0", "s1"]
    marker = first["snapshots_links"][0]["href"].rsplit("marker=", 1)[1]
    rest = a.get(f"/snapshots?limit=2&sort=name:asc&marker={marker}").json()
    assert [s["name"] for s in rest["snapshots"]] == ["s2"]
    assert [s["name"] for s in a.get("/snapshots?name=s1").json()["snapshots"]] == ["s1"]
    force_delete = a.post(f"/snapshots/{sorted(ids)[0]}/action", {"os-force_delete": {}})
    assert force_delete.status_code == 202
