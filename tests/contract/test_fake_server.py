"""The in-memory `fake` driver behind a real `blockyard serve`: a configuration can name it,
and the volume life cycle runs on it over HTTP (what fast service-level tests can build on)."""

from __future__ import annotations

from collections.abc import Callable

from tests.support.resources import available_snapshot, available_volume
from tests.support.server import Api, Server

CONFIG = """[backends.mem]
driver = "fake"
total_capacity_gb = 50
"""


def test_a_server_runs_the_volume_life_cycle_on_the_fake_driver(
        make_server: Callable[..., Server]) -> None:
    srv = make_server(config=CONFIG).start()
    api = srv.client()
    try:
        (pool,) = api.get("/scheduler-stats/get_pools",
                          params={"detail": "true"}).json()["pools"]
        assert pool["capabilities"]["total_capacity_gb"] == 50
        assert pool["capabilities"]["storage_protocol"] == "fake"
        vol = available_volume(api, size=2)
        assert vol["os-vol-host-attr:host"].endswith("@mem#mem")
        snap = available_snapshot(api, vol["id"])
        clone = available_volume(api, source_volid=vol["id"], size=3)
        from_snap = available_volume(api, snapshot_id=snap["id"], size=2)
        r = api.post(f"/volumes/{vol['id']}/action", {"os-extend": {"new_size": 4}})
        assert r.status_code == 202, r.text
        assert api.wait_volume(vol["id"], "available")["size"] == 4
        _attach_and_detach(api, clone["id"])
        assert api.delete(f"/snapshots/{snap['id']}").status_code == 202
        api.wait_snapshot(snap["id"], "deleted")
        for v in (from_snap, clone, vol):
            assert api.delete(f"/volumes/{v['id']}").status_code == 202
            api.wait_volume(v["id"], "deleted")
        assert "ERROR" not in srv.log()
    finally:
        api.close()


def _attach_and_detach(api: Api, volume_id: str) -> None:
    r = api.post("/attachments", {"attachment": {
        "volume_uuid": volume_id, "instance_uuid": "0a3c1d4e-5f60-4718-8a9b-c0d1e2f3a4b5",
        "connector": {"host": "h1", "initiator": "iqn.1994-05.com.redhat:h1"}}})
    assert r.status_code == 200, r.text
    attachment = r.json()["attachment"]
    info = attachment["connection_info"]
    assert info["driver_volume_type"] == "local"  # a path nothing can open: fake://mem/…
    assert info["device_path"].startswith("fake://mem/volume-"), info
    assert api.post(f"/attachments/{attachment['id']}/action",
                    {"os-complete": None}).status_code == 204
    shown = api.wait_volume(volume_id, "in-use")
    assert [a["attachment_id"] for a in shown["attachments"]] == [attachment["id"]]
    assert api.delete(f"/attachments/{attachment['id']}").status_code == 200
    assert api.wait_volume(volume_id, "available")["attachments"] == []
