"""The driver contract (src/blockyard/backends/base.py), once, over every driver.

Each test runs against every registered driver: `file` exporting through the local target and
through qemu-nbd (and tgt where tgtd and root are there), `rbd` on a real Ceph (marked `ceph`),
and the in-memory `fake` (also with its capability flags off, so the NotSupported half of the
contract is seen). A driver's own tests (tests/backends/test_<driver>.py) keep only what is
specific to it: its layout on disk or in the pool, its options, its thinness in its own terms.

`Case.live_exports` is what the export side holds right now (the target's live exports, the
fake's table): after terminate_connection and remove_export it must be empty.
"""

from __future__ import annotations

import dataclasses
import io
import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from blockyard.backends import DRIVERS, load
from blockyard.backends.base import DriverBase, VolumeDriver
from blockyard.backends.fake import FakeDriver
from blockyard.backends.transfer import checksum, data_extents
from blockyard.errors import BackendError, Invalid, NotSupported
from blockyard.model import Connector, GiB, ModelUpdate, SnapshotRef, Target, VolumeRef
from blockyard.targets.local import LocalTarget
from blockyard.targets.rbd import RbdTarget
from tests.support.ceph import CephCluster, ceph  # noqa: F401  (the fixture)
from tests.support.drivers import read_at, size_of, write_at
from tests.support.server import free_port, free_tgt_control_port

MiB = 1024**2

HOST_A = Connector(host="compute-a", ip="127.0.0.1",
                   initiator="iqn.1994-05.com.redhat:compute-a")
HOST_B = Connector(host="compute-b", ip="127.0.0.1",
                   initiator="iqn.1994-05.com.redhat:compute-b")


@dataclass
class Case:
    """A driver under test, and how to see what its export side holds."""

    driver: VolumeDriver
    live_exports: Callable[[], list[str]]


def _file_case(root: Path, target: Target | None) -> Iterator[Case]:
    """The file driver exporting through `target` (None: local paths, nothing to watch)."""
    drv = load("contract", "file", {"path": str(root / "vols")}, target or LocalTarget())
    drv.do_setup()
    if target is None:
        yield Case(drv, lambda: [])
        return
    target.start()
    try:
        yield Case(drv, target.exports)
    finally:
        target.teardown()


def _needs(*binaries: str, root: bool = False) -> list[pytest.MarkDecorator]:
    missing = [b for b in binaries if shutil.which(b) is None]
    reason = f"needs {', '.join(binaries)}{' and root' if root else ''}"
    return [pytest.mark.skipif(bool(missing) or (root and os.geteuid() != 0), reason=reason)]


CASES = [
    pytest.param("file", id="file-local"),
    pytest.param("file-nbd", id="file-nbd", marks=[pytest.mark.qemu, *_needs("qemu-nbd")]),
    pytest.param("file-iscsi", id="file-iscsi", marks=_needs("tgtd", "tgtadm", root=True)),
    pytest.param("rbd", id="rbd", marks=pytest.mark.ceph),
    pytest.param("fake", id="fake"),
    pytest.param("fake-minimal", id="fake-minimal"),
]


@pytest.fixture(params=CASES)
def case(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Case]:
    kind = request.param
    if kind == "file":
        yield from _file_case(tmp_path, None)
    elif kind == "file-nbd":
        from blockyard.targets.qemu_nbd import QemuNbdTarget

        short = request.getfixturevalue("short_dir")  # also: no qemu-nbd outlives the test
        yield from _file_case(tmp_path, QemuNbdTarget(tmp_path / "nbd", run_dir=short))
    elif kind == "file-iscsi":
        from blockyard.targets.tgt import TgtTarget

        yield from _file_case(tmp_path, TgtTarget(str(tmp_path / "tgt"),
                                                  portal=f"127.0.0.1:{free_port()}",
                                                  control_port=free_tgt_control_port()))
    elif kind == "rbd":
        cluster: CephCluster = request.getfixturevalue("ceph")
        drv = load("contract", "rbd", cluster.driver_options(), RbdTarget())
        drv.do_setup()
        try:
            yield Case(drv, lambda: [])
        finally:
            drv.close()  # type: ignore[attr-defined]
    else:
        options = {"online_extend": False, "multiattach": False} if kind == "fake-minimal" else {}
        fake = load("contract", "fake", options, LocalTarget())
        assert isinstance(fake, FakeDriver)
        yield Case(fake, lambda: sorted(n for n, hosts in fake.exports.items() if hosts))


def vol(size_gb: int = 1, name_id: str | None = None) -> VolumeRef:
    return VolumeRef(id=str(uuid.uuid4()), size_gb=size_gb, name_id=name_id)


def snap(volume: VolumeRef) -> SnapshotRef:
    return SnapshotRef(id=str(uuid.uuid4()), volume=volume, size_gb=volume.size_gb)


def stored(volume: VolumeRef, update: ModelUpdate | None) -> VolumeRef:
    """`volume` as the service persists it after a call returned `update`."""
    if update is None:
        return volume
    changes = {k: v for k, v in dataclasses.asdict(update).items() if v is not None}
    return dataclasses.replace(volume, **changes)


# ------------------------------------------------------------------ volumes


def test_create_is_idempotent_and_a_rerun_shows_no_old_data(case: Case) -> None:
    drv, v = case.driver, vol()
    drv.create_volume(v)
    assert v.name in drv.list_volume_names()
    assert size_of(drv, v) == GiB
    write_at(drv, v, 3 * MiB, b"old data")
    drv.create_volume(v)  # a rerun after a crash
    assert read_at(drv, v, 3 * MiB, 8) == bytes(8)
    assert size_of(drv, v) == GiB
    drv.delete_volume(v)


def test_delete_is_idempotent(case: Case) -> None:
    drv, v = case.driver, vol()
    drv.create_volume(v)
    drv.delete_volume(v)
    drv.delete_volume(v)
    assert v.name not in drv.list_volume_names()
    drv.delete_snapshot(snap(v))  # its volume is gone too
    with pytest.raises(BackendError):
        drv.open_volume(v)


def test_the_object_is_named_by_name_id(case: Case) -> None:
    drv = case.driver
    v = vol(name_id=str(uuid.uuid4()))
    drv.create_volume(v)
    names = drv.list_volume_names()
    assert f"volume-{v.name_id}" in names and f"volume-{v.id}" not in names
    drv.delete_volume(v)
    assert f"volume-{v.name_id}" not in drv.list_volume_names()


def test_extend_keeps_data_never_shrinks_and_needs_the_volume(case: Case) -> None:
    drv, v = case.driver, vol()
    drv.create_volume(v)
    write_at(drv, v, GiB - 8, b"the tail")
    drv.extend_volume(v, 3)
    drv.extend_volume(v, 3)  # a rerun
    drv.extend_volume(v, 2)  # smaller: nothing
    assert size_of(drv, v) == 3 * GiB
    assert read_at(drv, v, GiB - 8, 8) == b"the tail"
    assert read_at(drv, v, 2 * GiB, MiB) == bytes(MiB)
    drv.delete_volume(v)
    with pytest.raises(BackendError):
        drv.extend_volume(v, 4)


# ------------------------------------------------------------------ snapshots and clones


def test_snapshot_is_point_in_time_and_volumes_are_made_from_it(case: Case) -> None:
    drv, src = case.driver, vol()
    drv.create_volume(src)
    write_at(drv, src, 5 * MiB, b"before")
    s = snap(src)
    drv.create_snapshot(s)
    drv.create_snapshot(s)  # a rerun
    write_at(drv, src, 5 * MiB, b"after!")
    dst = vol(2)
    drv.create_volume_from_snapshot(dst, s)
    drv.create_volume_from_snapshot(dst, s)  # a rerun
    assert size_of(drv, dst) == 2 * GiB
    assert read_at(drv, dst, 5 * MiB, 6) == b"before"
    assert read_at(drv, src, 5 * MiB, 6) == b"after!"
    drv.delete_snapshot(s)
    drv.delete_snapshot(s)
    assert read_at(drv, dst, 5 * MiB, 6) == b"before"  # outlives its snapshot
    for v in (dst, src):
        drv.delete_volume(v)


def test_volume_from_snapshot_needs_room(case: Case) -> None:
    drv, big = case.driver, vol(2)
    drv.create_volume(big)
    s = snap(big)
    drv.create_snapshot(s)
    small = vol(1)
    with pytest.raises(Invalid):
        drv.create_volume_from_snapshot(small, s)
    assert small.name not in drv.list_volume_names()
    drv.delete_snapshot(s)
    drv.delete_volume(big)


def test_clone_is_a_copy_that_goes_its_own_way(case: Case) -> None:
    drv, src = case.driver, vol()
    drv.create_volume(src)
    write_at(drv, src, 700 * MiB, b"shared")
    clone = vol(2)
    drv.create_cloned_volume(clone, src)
    drv.create_cloned_volume(clone, src)  # a rerun
    assert size_of(drv, clone) == 2 * GiB
    assert read_at(drv, clone, 700 * MiB, 6) == b"shared"
    write_at(drv, clone, 700 * MiB, b"mine!!")
    assert read_at(drv, src, 700 * MiB, 6) == b"shared"
    drv.delete_volume(src)  # the clone keeps its data
    assert read_at(drv, clone, 700 * MiB, 6) == b"mine!!"
    drv.delete_volume(clone)


def test_clone_needs_its_source_and_room(case: Case) -> None:
    drv = case.driver
    gone = vol()
    dst = vol()
    with pytest.raises(BackendError):
        drv.create_cloned_volume(dst, gone)
    assert dst.name not in drv.list_volume_names()
    big = vol(2)
    drv.create_volume(big)
    with pytest.raises(Invalid):
        drv.create_cloned_volume(dst, big)
    assert dst.name not in drv.list_volume_names()
    drv.delete_volume(big)


# ------------------------------------------------------------------ exports and connections


def test_exports_once_per_connector_and_connections_only_format(case: Case) -> None:
    drv = case.driver
    v = vol()
    drv.create_volume(v)
    drv.validate_connector(HOST_A)
    v = stored(v, drv.create_export(v, HOST_A))
    again = stored(v, drv.create_export(v, HOST_A))  # a rerun for the same connector
    assert (again.provider_location, again.provider_auth) == \
        (v.provider_location, v.provider_auth)
    exports, names = case.live_exports(), drv.list_volume_names()
    info = drv.initialize_connection(v, HOST_A)
    assert info == drv.initialize_connection(v, HOST_A)
    assert (case.live_exports(), drv.list_volume_names()) == (exports, names)  # no side effect
    wire = info.to_wire()
    assert wire["data"]["volume_id"] == v.id
    assert isinstance(wire["driver_volume_type"], str)

    v = stored(v, drv.terminate_connection(v, HOST_A))
    v = stored(v, drv.terminate_connection(v, None, force=True))  # a rerun, for everyone
    drv.remove_export(v)
    drv.remove_export(v)
    assert case.live_exports() == []
    drv.delete_volume(v)


def test_ensure_export_brings_back_a_persisted_export(case: Case) -> None:
    drv = case.driver
    v = vol()
    drv.create_volume(v)
    v = stored(v, drv.create_export(v, HOST_A))
    info, exported = drv.initialize_connection(v, HOST_A), case.live_exports()
    drv.remove_export(v)  # what a lost daemon looks like
    assert case.live_exports() == []
    v = stored(v, drv.ensure_export(v))
    assert case.live_exports() == exported
    assert drv.initialize_connection(v, HOST_A).protocol == info.protocol
    drv.remove_export(v)
    assert case.live_exports() == []
    drv.delete_volume(v)


def test_second_connector_as_info_says(case: Case) -> None:
    drv = case.driver
    v = vol()
    drv.create_volume(v)
    v = stored(v, drv.create_export(v, HOST_A))
    if drv.info().multiattach:
        v = stored(v, drv.create_export(v, HOST_B))
        drv.initialize_connection(v, HOST_B)
    else:
        with pytest.raises(NotSupported):
            drv.create_export(v, HOST_B)
    v = stored(v, drv.terminate_connection(v, None, force=True))
    drv.remove_export(v)
    drv.delete_volume(v)
    assert case.live_exports() == []


def test_extend_while_exported_as_info_says(case: Case) -> None:
    drv = case.driver
    v = vol()
    drv.create_volume(v)
    v = stored(v, drv.create_export(v, HOST_A))
    if drv.info().online_extend:
        drv.extend_volume(v, 2)
        assert size_of(drv, v) == 2 * GiB
    else:
        with pytest.raises(NotSupported):
            drv.extend_volume(v, 2)
    drv.remove_export(v)
    drv.delete_volume(v)


# ------------------------------------------------------------------ data access


def test_open_volume_handles_read_write_and_are_sparse(case: Case) -> None:
    drv = case.driver
    v = vol(2)
    drv.create_volume(v)
    data = os.urandom(64 * 1024)
    handle = drv.open_volume(v, "r+b")
    assert isinstance(handle, io.RawIOBase) and handle.writable()
    handle.seek(10 * MiB)
    assert handle.write(data) == len(data)
    handle.seek(GiB + 4096)
    assert handle.write(data) == len(data)
    drv.close_volume(v, handle)
    assert handle.closed
    drv.close_volume(v, handle)  # closing twice is harmless

    reader = drv.open_volume(v)
    try:
        assert not reader.writable()
        reader.seek(10 * MiB)
        assert reader.read(len(data)) == data
        reader.seek(GiB + 4096)
        assert reader.read(len(data)) == data
        reader.seek(500 * MiB)
        assert reader.read(MiB) == bytes(MiB)  # never written: zeros
        with pytest.raises(OSError):
            reader.write(b"x")
        extents = data_extents(reader, 2 * GiB)  # thin: only around what was written
        assert sum(size for _, size in extents) <= 16 * MiB
        assert any(off <= 10 * MiB < off + size for off, size in extents)
    finally:
        drv.close_volume(v, reader)
    with pytest.raises(Invalid):
        drv.open_volume(v, "w")  # type: ignore[arg-type]

    clone = vol(2)
    drv.create_cloned_volume(clone, v)
    digests = []
    for ref in (v, clone):
        h = drv.open_volume(ref)
        try:
            digests.append(checksum(h, 2 * GiB))
        finally:
            drv.close_volume(ref, h)
    assert digests[0] == digests[1]
    for ref in (v, clone):
        drv.delete_volume(ref)


# ------------------------------------------------------------------ stats


def test_stats_have_the_shape_the_scheduler_reads(case: Case) -> None:
    drv = case.driver
    before = drv.get_stats()
    assert before.volume_backend_name == "contract"
    assert before.storage_protocol and before.vendor_name and before.driver_version
    assert before.pools
    for pool in before.pools:
        assert pool.total_capacity_gb > 0
        assert 0 <= pool.free_capacity_gb <= pool.total_capacity_gb
        assert pool.thin_provisioning_support == drv.info().thin
    v = vol(5)
    drv.create_volume(v)
    try:
        after = drv.get_stats()
    finally:
        drv.delete_volume(v)
    provisioned = sum(p.provisioned_capacity_gb for p in after.pools)
    assert provisioned >= sum(p.provisioned_capacity_gb for p in before.pools) + 5


# ------------------------------------------------------------------ what is not supported


def test_every_driver_is_registered_and_covered() -> None:
    assert set(DRIVERS) == {"file", "rbd", "fake"}, "add the new driver to CASES"


def test_the_optional_calls_default_to_not_supported() -> None:
    """A driver that overrides nothing: what its info() does not promise raises NotSupported."""

    class Bare(DriverBase):
        pass

    drv, v = Bare("bare", {}, LocalTarget()), vol()
    s = snap(v)
    calls: list[Callable[[], object]] = [
        lambda: drv.create_snapshot(s), lambda: drv.delete_snapshot(s),
        lambda: drv.create_volume_from_snapshot(v, s), lambda: drv.create_cloned_volume(v, v),
        lambda: drv.extend_volume(v, 2), lambda: drv.list_volume_names(),
        lambda: drv.initialize_connection(v, HOST_A), lambda: drv.open_volume(v),
    ]
    for call in calls:
        with pytest.raises(NotSupported):
            call()
    assert not drv.info().online_extend and not drv.info().multiattach
