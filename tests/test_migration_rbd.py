"""Migration between a file backend and an rbd backend, both ways, on a real Ceph.

The same copy engine as file→file (blockyard.backends.transfer), here through RbdHandle's
extents() (diff_iterate) and positional I/O. The volume's bytes are compared with a sha256 over
the full size on both sides, the id stays, and thin stays thin: the image's data extents after
file→rbd, the file's allocated size after rbd→file.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from blockyard.backends import load, transfer
from blockyard.model import VolumeRef
from blockyard.targets.rbd import RbdTarget
from tests.support.ceph import CephCluster, ceph  # noqa: F401  (the fixture)
from tests.support.consistency import GiB, backend_dir, volume_file
from tests.support.server import Api, Server
from tests.test_migration import (
    MiB,
    allocated,
    create,
    file_sha,
    host_of,
    migrate,
    scatter,
    start_with_types,
    wait_migrated,
)


def _config(cluster: CephCluster) -> str:
    opts = cluster.driver_options()
    lines = "".join(f"{k} = {json.dumps(v)}\n" for k, v in opts.items())
    return (f'[backends.a]\ndriver = "file"\nvolume_backend_name = "a"\n\n'
            f'[backends.ceph]\ndriver = "rbd"\nvolume_backend_name = "ceph"\n{lines}')


@pytest.fixture(scope="module")
def srv(ceph: CephCluster,  # noqa: F811
        tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    server = start_with_types(tmp_path_factory.mktemp("migrbd") / "state", _config(ceph),
                              ("a", "ceph"))
    yield server
    server.stop()


@pytest.fixture
def c(srv: Server) -> Iterator[Api]:
    client = srv.client()
    yield client
    client.close()


@pytest.fixture(scope="module")
def driver(ceph: CephCluster) -> Iterator[Any]:  # noqa: F811
    drv = load("check", "rbd", ceph.driver_options(), RbdTarget())
    drv.do_setup()
    yield drv
    drv.close()


def image_sha(driver: Any, vid: str, name_id: str | None, size_gb: int) -> tuple[str, int]:
    """sha256 over the full image, and the bytes its extents report as data."""
    ref = VolumeRef(id=vid, size_gb=size_gb, name_id=name_id)
    h = driver.open_volume(ref, "rb")
    try:
        data = sum(size for _, size in transfer.data_extents(h, ref.size_bytes))
        digest = hashlib.sha256()
        h.seek(0)
        while chunk := h.read(8 * MiB):
            digest.update(chunk)
        return digest.hexdigest(), data
    finally:
        driver.close_volume(ref, h)


@pytest.mark.parametrize("size_gb,data", [(1, 64 * MiB), (4, 16 * MiB)])
def test_file_to_rbd_and_back(srv: Server, c: Api, driver: Any, size_gb: int,
                              data: int) -> None:
    vid = create(c, size_gb)
    path = volume_file(srv.state_dir, vid, "a")
    scatter(path, data, seed=size_gb, piece=MiB if size_gb == 1 else 256 * 1024)
    sha, alloc = file_sha(path), allocated(path)

    # file → rbd
    assert migrate(c, vid, host_of(c, "ceph")).status_code == 202
    v = wait_migrated(c, vid, timeout=300)
    assert v["migration_status"] == "success", (v, srv.log()[-3000:])
    assert v["id"] == vid and v["os-vol-host-attr:host"].endswith("@ceph#ceph")
    name_id = v["os-vol-mig-status-attr:name_id"]
    img_sha, img_data = image_sha(driver, vid, name_id, size_gb)
    assert img_sha == sha
    # thin: at most the source's allocation, rounded up to whole 4 MiB objects per extent
    pieces = data // (MiB if size_gb == 1 else 256 * 1024) + 1
    assert img_data <= alloc + pieces * 4 * MiB, (img_data, alloc)
    assert not path.exists()
    assert f"volume-{name_id}" in driver.list_volume_names()

    # rbd → file
    assert migrate(c, vid, host_of(c, "a")).status_code == 202
    v = wait_migrated(c, vid, timeout=300)
    assert v["migration_status"] == "success", (v, srv.log()[-3000:])
    back = backend_dir(srv.state_dir, "a") / f"volume-{v['os-vol-mig-status-attr:name_id']}"
    assert file_sha(back) == sha
    assert allocated(back) <= alloc + MiB, (allocated(back), alloc)
    assert back.stat().st_size == size_gb * GiB
    assert f"volume-{name_id}" not in driver.list_volume_names()  # the image went
    assert c.delete(f"/volumes/{vid}").status_code == 202
    c.wait_volume(vid, "deleted")
    assert os.listdir(Path(backend_dir(srv.state_dir, "a"))) == []
