"""The rbd driver against a real single-node Ceph (tests/support/ceph.py), as a non-admin
cephx user with caps for one pool: what is particular to RBD (images, layering, flattening,
options, native connection info). The driver contract itself is tested once, for every driver,
in tests/contract/test_driver.py."""

from __future__ import annotations

import hashlib
import os
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from blockyard.backends import load
from blockyard.backends.rbd import RbdDriver
from blockyard.errors import BackendError, ConfigError
from blockyard.model import GiB, SnapshotRef, VolumeHandle, VolumeRef
from blockyard.targets.rbd import RbdTarget
from tests.support.ceph import CephCluster, ceph, missing_packages  # noqa: F401  (the fixture)
from tests.support.drivers import read_at, write_at

MiB = 1024**2


@pytest.fixture
def driver(ceph: CephCluster) -> Iterator[RbdDriver]:  # noqa: F811
    drv = load("ceph", "rbd", ceph.driver_options(), RbdTarget())
    assert isinstance(drv, RbdDriver)
    drv.do_setup()
    yield drv
    drv.close()


def vol(size_gb: int = 1) -> VolumeRef:
    return VolumeRef(id=str(uuid.uuid4()), size_gb=size_gb)


def snap(volume: VolumeRef) -> SnapshotRef:
    return SnapshotRef(id=str(uuid.uuid4()), volume=volume, size_gb=volume.size_gb)


def images(ceph: CephCluster) -> set[str]:  # noqa: F811
    import rbd  # type: ignore[import-not-found]

    with ceph.admin().open_ioctx(ceph.pool) as ioctx:
        return set(rbd.RBD().list(ioctx))


def image_info(ceph: CephCluster, name: str) -> dict[str, Any]:  # noqa: F811
    import rbd

    with ceph.admin().open_ioctx(ceph.pool) as ioctx, rbd.Image(ioctx, name,
                                                               read_only=True) as image:
        try:
            parent = image.get_parent_image_spec()
        except rbd.ImageNotFound:
            parent = None
        return {"size": image.size(), "snaps": [s["name"] for s in image.list_snaps()],
                "parent": parent}


# ------------------------------------------------------------------ configuration


@pytest.mark.parametrize(("options", "key"), [
    ({}, "pool"),
    ({"pool": "a/b"}, "pool"),
    ({"pool": "volumes", "user": 3}, "user"),
    ({"pool": "volumes", "rados_connect_timeout": "soon"}, "rados_connect_timeout"),
    ({"pool": "volumes", "conf": ""}, "conf"),
    ({"pool": "volumes", "colour": "blue"}, "colour"),
])
def test_bad_options_name_the_key(options: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError) as info:
        load("ceph", "rbd", options, RbdTarget())
    assert info.value.key == f"backends.ceph.{key}"


def test_an_export_target_is_refused(tmp_path: Any) -> None:
    from blockyard.targets.qemu_nbd import QemuNbdTarget

    with pytest.raises(ConfigError) as info:
        load("ceph", "rbd", {"pool": "volumes"}, QemuNbdTarget(str(tmp_path)))
    assert info.value.key == "backends.ceph.target"


def test_a_missing_pool_fails_setup(ceph: CephCluster) -> None:  # noqa: F811
    drv = load("ceph", "rbd", dict(ceph.driver_options(), pool="nope"), RbdTarget())
    try:
        with pytest.raises(BackendError, match="nope"):
            drv.do_setup()
    finally:
        assert isinstance(drv, RbdDriver)
        drv.close()


# ------------------------------------------------------------------ images and layering


def test_info(driver: RbdDriver) -> None:
    info = driver.info()
    assert (info.online_extend, info.multiattach, info.protocols, info.thin) == \
        (True, True, ("rbd",), True)


def test_a_volume_is_an_image_of_its_size(driver: RbdDriver,
                                          ceph: CephCluster) -> None:  # noqa: F811
    v = vol(1)
    driver.create_volume(v)
    driver.extend_volume(v, 3)
    assert v.name in images(ceph)
    assert image_info(ceph, v.name)["size"] == 3 * GiB
    driver.delete_volume(v)
    assert v.name not in images(ceph)



def test_volume_from_snapshot_is_a_layered_clone(driver: RbdDriver,
                                                 ceph: CephCluster) -> None:  # noqa: F811
    """An RBD snapshot of the image, cloned; deleting the snapshot flattens the child first."""
    src = vol(1)
    driver.create_volume(src)
    write_at(driver, src, 5 * MiB, b"before")
    s = snap(src)
    driver.create_snapshot(s)
    dst = vol(2)
    driver.create_volume_from_snapshot(dst, s)
    info = image_info(ceph, dst.name)
    assert info["size"] == 2 * GiB
    assert info["parent"]["image_name"] == src.name
    assert info["parent"]["snap_name"] == s.name
    driver.delete_snapshot(s)
    assert image_info(ceph, dst.name)["parent"] is None
    assert read_at(driver, dst, 5 * MiB, 6) == b"before"
    assert s.name not in image_info(ceph, src.name)["snaps"]
    for v in (src, dst):
        driver.delete_volume(v)


def test_clone_of_10_gib_is_o1(driver: RbdDriver, ceph: CephCluster) -> None:  # noqa: F811
    src = vol(10)
    driver.create_volume(src)
    write_at(driver, src, 9 * GiB, b"far away")
    clone = vol(10)
    t0 = time.monotonic()
    driver.create_cloned_volume(clone, src)
    took = time.monotonic() - t0
    print(f"\nclone of a 10 GiB rbd volume: {took * 1000:.0f} ms")
    assert took < 1.0
    assert read_at(driver, clone, 9 * GiB, 8) == b"far away"
    write_at(driver, clone, 9 * GiB, b"mine now")
    assert read_at(driver, src, 9 * GiB, 8) == b"far away"
    assert f"{clone.name}.clone_snap" in image_info(ceph, src.name)["snaps"]
    # deleting the source flattens the clone, which keeps its data
    driver.delete_volume(src)
    assert src.name not in images(ceph)
    assert image_info(ceph, clone.name)["parent"] is None
    assert read_at(driver, clone, 9 * GiB, 8) == b"mine now"
    driver.delete_volume(clone)


def test_deleting_a_clone_drops_its_snapshot_on_the_source(
        driver: RbdDriver, ceph: CephCluster) -> None:  # noqa: F811
    src = vol(1)
    driver.create_volume(src)
    a, b = vol(1), vol(1)
    driver.create_cloned_volume(a, src)
    driver.create_cloned_volume(b, src)
    driver.create_cloned_volume(b, src)  # a rerun recreates it
    assert sorted(image_info(ceph, src.name)["snaps"]) == sorted(
        [f"{a.name}.clone_snap", f"{b.name}.clone_snap"])
    driver.delete_volume(a)
    assert image_info(ceph, src.name)["snaps"] == [f"{b.name}.clone_snap"]
    driver.delete_volume(b)
    assert image_info(ceph, src.name)["snaps"] == []
    driver.delete_volume(src)



def test_stats_come_from_the_cluster(driver: RbdDriver) -> None:
    v = vol(5)
    driver.create_volume(v)
    try:
        stats = driver.get_stats()
    finally:
        driver.delete_volume(v)
    (pool,) = stats.pools
    assert stats.storage_protocol == "ceph"
    assert pool.name == "volumes"
    assert 60 <= pool.total_capacity_gb <= 64  # the OSD's 64 GiB file, less BlueStore's own
    assert 0 < pool.free_capacity_gb <= pool.total_capacity_gb
    assert pool.provisioned_capacity_gb >= 5
    assert pool.thin_provisioning_support


# ------------------------------------------------------------------ data access


def test_handles_report_extents_by_rbd_object(driver: RbdDriver) -> None:
    """The round trip itself: tests/contract/test_driver.py; here, RBD's 4 MiB objects."""
    v = vol(2)
    driver.create_volume(v)
    try:
        chunk = os.urandom(3 * MiB)
        handle = driver.open_volume(v, "r+b")
        assert isinstance(handle, VolumeHandle)
        assert handle.size == 2 * GiB
        handle.seek(64 * MiB)
        handle.write(chunk)
        handle.seek(1 * GiB + 4 * MiB)
        handle.write(chunk)
        driver.close_volume(v, handle)

        handle = driver.open_volume(v)
        try:
            extents = list(handle.extents())
            assert sum(e.length for e in extents) == 2 * GiB
            data = [(e.offset, e.length) for e in extents if e.is_data]
            assert data == [(64 * MiB, 4 * MiB), (1 * GiB + 4 * MiB, 4 * MiB)]
            digest = hashlib.sha256()
            for e in extents:
                handle.seek(e.offset)
                if e.is_data:
                    digest.update(handle.read(e.length) or b"")
            want = hashlib.sha256(chunk + bytes(MiB) + chunk + bytes(MiB)).hexdigest()
            assert digest.hexdigest() == want
        finally:
            driver.close_volume(v, handle)
    finally:
        driver.delete_volume(v)


def test_extents_of_a_clone_include_the_parent(driver: RbdDriver) -> None:
    src = vol(1)
    driver.create_volume(src)
    write_at(driver, src, 100 * MiB, b"x" * MiB)
    clone = vol(1)
    driver.create_cloned_volume(clone, src)
    write_at(driver, clone, 500 * MiB, b"y" * MiB)
    handle = driver.open_volume(clone)
    try:
        data = [(e.offset, e.length) for e in handle.extents() if e.is_data]
    finally:
        driver.close_volume(clone, handle)
    assert data == [(100 * MiB, 4 * MiB), (500 * MiB, 4 * MiB)]
    driver.delete_volume(clone)
    driver.delete_volume(src)


# ------------------------------------------------------------------ connections


def test_connection_info_is_native_rbd(driver: RbdDriver, ceph: CephCluster) -> None:  # noqa: F811
    from blockyard.model import Connector

    v = vol(1)
    driver.create_volume(v)
    try:
        assert driver.create_export(v, Connector(host="h")) is None
        info = driver.initialize_connection(v, Connector(host="h")).to_wire()
    finally:
        driver.delete_volume(v)
    assert info["driver_volume_type"] == "rbd"
    data = info["data"]
    assert data["name"] == f"volumes/{v.name}"
    assert data["hosts"] == ["127.0.0.1"] and data["ports"] == [str(ceph.mon_port_v1)]
    assert data["auth_enabled"] is True and data["auth_username"] == "blockyard"
    assert data["secret_type"] == "ceph" and data["discard"] is True
    assert data["key"] == ceph.client_key()
    assert data["volume_id"] == v.id


@pytest.mark.ceph
def test_data_survives_a_cluster_restart_and_the_driver_reconnects(tmp_path: Any) -> None:
    """A cluster of its own, stopped and started again on the same data (a Ceph host reboot
    while blockyard keeps running): the same driver, whose connection saw the cluster go,
    reads what it wrote, and clones from a snapshot taken before."""
    reason = missing_packages()
    if reason is not None:
        pytest.skip(reason)
    with CephCluster(tmp_path / "ceph", osd_size_gb=8) as cluster:
        drv = load("ceph", "rbd", cluster.driver_options(), RbdTarget())
        assert isinstance(drv, RbdDriver)
        drv.do_setup()
        try:
            v = vol(1)
            drv.create_volume(v)
            data = os.urandom(9 * MiB)
            write_at(drv, v, 100 * MiB + 4096, data)
            s = snap(v)
            drv.create_snapshot(s)
            cluster.stop()
            cluster.start()
            assert read_at(drv, v, 100 * MiB + 4096, len(data)) == data
            clone = vol(1)
            drv.create_volume_from_snapshot(clone, s)
            assert read_at(drv, clone, 100 * MiB + 4096, len(data)) == data
            assert drv.get_stats().pools[0].provisioned_capacity_gb == 2
        finally:
            drv.close()
