"""The rbd backend through a real `blockyard serve` and a real single-node Ceph: the volume
lifecycle, native rbd connection info for an attachment (the cephx key for the attaching
caller only), and no Ceph process left behind by a cluster's stop."""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.ceph import CephCluster, ceph, missing_packages  # noqa: F401  (fixture)
from tests.support.server import Api, Server

INSTANCE = "11111111-2222-3333-4444-555555555555"
CONNECTOR = {"host": "compute1", "ip": "127.0.0.1", "platform": "x86_64", "os_type": "linux",
             "multipath": False}


@pytest.fixture(scope="module")
def rbd_server(ceph: CephCluster, tmp_path_factory: pytest.TempPathFactory  # noqa: F811
               ) -> Iterator[Server]:
    opts = ceph.driver_options()
    config = f"""
[backends.ceph]
driver = "rbd"
target = "rbd"
pool = "{opts['pool']}"
user = "{opts['user']}"
conf = "{opts['conf']}"
keyring = "{opts['keyring']}"
rados_connect_timeout = 10
"""
    srv = Server(tmp_path_factory.mktemp("rbdsrv") / "state", config=config).start()
    yield srv
    srv.stop()


@pytest.fixture
def api(rbd_server: Server) -> Iterator[Api]:
    client = rbd_server.client()
    yield client
    client.close()


def images(ceph: CephCluster) -> set[str]:  # noqa: F811
    import rbd  # type: ignore[import-not-found]

    with ceph.admin().open_ioctx(ceph.pool) as ioctx:
        return set(rbd.RBD().list(ioctx))


def create(api: Api, **spec: Any) -> dict[str, Any]:
    r = api.post("/volumes", {"volume": {"size": 1, **spec}})
    assert r.status_code == 202, r.text
    return api.wait_volume(r.json()["volume"]["id"], "available")


def test_volume_lifecycle_on_ceph(api: Api, ceph: CephCluster) -> None:  # noqa: F811
    vol = create(api, size=10)
    assert f"volume-{vol['id']}" in images(ceph)

    r = api.post("/snapshots", {"snapshot": {"volume_id": vol["id"], "name": "s1"}})
    assert r.status_code == 202, r.text
    snap = api.wait_snapshot(r.json()["snapshot"]["id"], "available")

    from_snap = create(api, size=12, snapshot_id=snap["id"])
    t0 = time.monotonic()
    clone = create(api, size=10, source_volid=vol["id"])
    print(f"\nclone of a 10 GiB volume through the API: {time.monotonic() - t0:.2f} s")
    assert from_snap["size"] == 12 and clone["size"] == 10

    r = api.post(f"/volumes/{vol['id']}/action", {"os-extend": {"new_size": 11}})
    assert r.status_code == 202, r.text
    assert api.wait_volume(vol["id"], "available")["size"] == 11

    pools = api.get("/scheduler-stats/get_pools?detail=true").json()["pools"]
    ceph_pool = [p for p in pools if p["name"].endswith("@ceph#volumes")
                 or "ceph" in p["name"]]
    assert ceph_pool and ceph_pool[0]["capabilities"]["total_capacity_gb"] > 0, pools

    # delete everything: the snapshot with a child (flattened), the source with a clone
    assert api.delete(f"/snapshots/{snap['id']}").status_code == 202
    api.wait_snapshot(snap["id"], "deleted")
    for v in (vol, from_snap, clone):
        assert api.delete(f"/volumes/{v['id']}").status_code == 202
    for v in (vol, from_snap, clone):
        api.wait_volume(v["id"], "deleted")
    assert {f"volume-{v['id']}" for v in (vol, from_snap, clone)} & images(ceph) == set()


def test_attachment_gets_native_rbd_info_with_the_key(api: Api,
                                                      ceph: CephCluster) -> None:  # noqa: F811
    vol = create(api)
    key = ceph.client_key()
    r = api.post("/attachments", {"attachment": {"volume_uuid": vol["id"],
                                                 "instance_uuid": INSTANCE,
                                                 "connector": CONNECTOR}})
    assert r.status_code == 200, r.text
    att = r.json()["attachment"]
    info = att["connection_info"]
    assert info["driver_volume_type"] == "rbd"
    assert info["name"] == f"volumes/volume-{vol['id']}"
    assert info["hosts"] == ["127.0.0.1"] and info["ports"] == [str(ceph.mon_port_v1)]
    assert info["auth_enabled"] is True and info["auth_username"] == "blockyard"
    assert info["key"] == key

    # the key is for the attaching caller only: not in the volume's views
    for path in (f"/volumes/{vol['id']}", "/volumes/detail"):
        body = api.get(path).text
        assert key not in body
    assert "provider_auth" not in json.dumps(api.get(f"/volumes/{vol['id']}").json())

    # what the API returned is enough to open the image from this "host"
    from blockyard.connectors import connector_for
    from blockyard.model import parse

    parsed = parse({"driver_volume_type": "rbd", "data": info})
    with connector_for(parsed).open(parsed, "r+b") as handle:
        handle.write(b"attached")

    assert api.post(f"/attachments/{att['id']}/action",
                    {"os-complete": None}).status_code == 204
    assert api.get(f"/volumes/{vol['id']}").json()["volume"]["status"] == "in-use"
    assert api.delete(f"/attachments/{att['id']}").status_code == 200
    api.wait_volume(vol["id"], "available")
    assert api.delete(f"/volumes/{vol['id']}").status_code == 202
    api.wait_volume(vol["id"], "deleted")


def test_the_server_log_has_no_key(rbd_server: Server, ceph: CephCluster) -> None:  # noqa: F811
    assert ceph.client_key() not in rbd_server.log()


@pytest.mark.ceph
def test_a_cluster_leaves_no_process_behind() -> None:
    """Start and stop a second cluster: every daemon it started is gone (and reaped)."""
    reason = missing_packages()
    if reason is not None:
        pytest.skip(reason)
    with tempfile.TemporaryDirectory(prefix="ceph-") as d:
        cluster = CephCluster(Path(d))
        with cluster:
            pids = cluster.pids()
            assert len(pids) == 3
        print(f"\nceph start {cluster.start_seconds:.1f} s, stop {cluster.stop_seconds:.1f} s")
        for pid in pids:
            assert not os.path.exists(f"/proc/{pid}"), f"ceph process {pid} survived"
        mentioning = [p for p in os.listdir("/proc") if p.isdigit()
                      and d.encode() in _cmdline(int(p))]
        assert mentioning == []


def _cmdline(pid: int) -> bytes:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read()
    except OSError:
        return b""
