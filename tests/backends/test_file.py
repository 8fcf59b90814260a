"""FileDriver and the sparse helpers, against a real directory: what is particular to files
(layout, thinness, crash safety, options). The driver contract itself is tested once, for every
driver, in tests/contract/test_driver.py.

Thinness is checked through st_blocks and SEEK_DATA, so these tests need a filesystem with holes
(ext4, xfs, btrfs, tmpfs all qualify).
"""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import json
import os
from pathlib import Path

import pytest

import blockyard.backends.file as file_mod
from blockyard.backends.file import FileDriver
from blockyard.backends.sparse import allocated_bytes, copy_sparse, iter_data_extents
from blockyard.errors import ConfigError, Invalid
from blockyard.model import Connector, GiB, SnapshotRef, VolumeRef
from blockyard.targets.local import LocalTarget

MiB = 1024**2


@pytest.fixture
def driver(tmp_path: Path) -> FileDriver:
    d = FileDriver("fast", {"path": str(tmp_path / "vols")}, LocalTarget())
    d.do_setup()
    return d


def vol(ident: str, size_gb: int = 1, name_id: str | None = None) -> VolumeRef:
    return VolumeRef(id=ident, size_gb=size_gb, name_id=name_id)


def write_at(path: str | Path, offset: int, data: bytes) -> None:
    with open(path, "r+b", buffering=0) as f:
        f.seek(offset)
        f.write(data)
        os.fsync(f.fileno())


def read_at(path: str | Path, offset: int, size: int) -> bytes:
    with open(path, "rb", buffering=0) as f:
        return os.pread(f.fileno(), size, offset)


def sha256(path: str | Path) -> str:
    # large unbuffered reads: hashing 1 GiB of holes with small reads is several times slower
    h = hashlib.sha256()
    buf = bytearray(8 * MiB)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buf):
            h.update(view[:n])
    return h.hexdigest()


def extents(path: str | Path) -> list[tuple[int, int]]:
    with open(path, "rb") as f:
        return list(iter_data_extents(f.fileno(), os.fstat(f.fileno()).st_size))


def assert_same_content(a: str | Path, b: str | Path) -> None:
    """Byte equality in O(allocated): compare wherever either file has data; elsewhere both are
    holes and read as zeros."""
    size = os.path.getsize(a)
    assert os.path.getsize(b) == size
    ranges = sorted(extents(a) + extents(b))
    with open(a, "rb") as fa, open(b, "rb") as fb:
        for off, length in ranges:
            for pos in range(off, off + length, 8 * MiB):
                n = min(8 * MiB, off + length - pos)
                assert os.pread(fa.fileno(), n, pos) == os.pread(fb.fileno(), n, pos), pos


# configuration and setup


def test_path_is_required() -> None:
    with pytest.raises(ConfigError) as err:
        FileDriver("b1", {}, LocalTarget())
    assert err.value.key == "backends.b1.path"


def test_numeric_options_are_validated(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        FileDriver("b1", {"path": str(tmp_path), "reserved_percentage": "lots"}, LocalTarget())
    assert err.value.key == "backends.b1.reserved_percentage"
    with pytest.raises(ConfigError):
        FileDriver("b1", {"path": str(tmp_path), "max_over_subscription_ratio": 0.5}, LocalTarget())
    d = FileDriver("b1", {"path": str(tmp_path), "reserved_percentage": "5"}, LocalTarget())
    assert d.reserved_percentage == 5


def test_do_setup_creates_directory_and_removes_stale_tmp_files(tmp_path: Path) -> None:
    root = tmp_path / "vols"
    root.mkdir()
    (root / ".tmp-volume-abc-x1y2").write_bytes(b"half a copy")
    (root / "volume-keep").write_bytes(b"")
    d = FileDriver("fast", {"path": str(root / "sub")}, LocalTarget())
    d.do_setup()
    assert (root / "sub").is_dir()
    d = FileDriver("fast", {"path": str(root)}, LocalTarget())
    d.do_setup()
    d.do_setup()  # idempotent
    assert sorted(p.name for p in root.iterdir()) == ["sub", "volume-keep"]


def test_info_and_the_local_export_is_the_file(driver: FileDriver) -> None:
    """The rest of the export contract: tests/contract/test_driver.py."""
    info = driver.info()
    assert info.online_extend and info.multiattach and info.thin
    assert info.protocols == ("local",)
    v = vol("v1")
    driver.create_volume(v)
    driver.validate_connector(Connector())  # a local path needs no initiator
    update = driver.create_export(v, Connector(host="h1"))
    assert update is not None and update.provider_location is not None
    assert json.loads(update.provider_location)["data"] == {"device_path": driver.volume_path(v)}
    assert os.path.isabs(driver.volume_path(v))
    v = dataclasses.replace(v, provider_location=update.provider_location,
                            provider_auth=update.provider_auth)
    assert driver.initialize_connection(v, Connector(host="h1")).to_wire() == {
        "driver_volume_type": "local",
        "data": {"device_path": driver.volume_path(v), "volume_id": "v1", "access_mode": "rw"},
    }
    assert driver.export_of(vol("v1")) is None  # nothing persisted: not exported
    export = driver.export_of(v)
    assert export is not None and export.connectors == ("h1",)
    left = driver.terminate_connection(v, Connector(host="h1"))
    assert left is not None
    gone = driver.export_of(dataclasses.replace(v, provider_location=left.provider_location,
                                                provider_auth=left.provider_auth))
    assert gone is not None and gone.connectors == ()


def test_names_refuse_escapes(driver: FileDriver) -> None:
    with pytest.raises(Invalid):
        driver.create_volume(vol("x/../../etc"))


# volumes


def test_new_volume_reads_zeros_and_allocates_nothing(driver: FileDriver) -> None:
    v = vol("v1")
    assert driver.create_volume(v) is None
    path = driver.volume_path(v)
    assert os.path.getsize(path) == GiB
    assert allocated_bytes(path) <= 64 * 1024
    assert extents(path) == []
    for off in (0, 123 * MiB, GiB - MiB):
        assert read_at(path, off, MiB) == bytes(MiB)




def test_extend_stays_sparse(driver: FileDriver) -> None:
    v = vol("v1")
    driver.create_volume(v)
    path = driver.volume_path(v)
    write_at(path, 0, os.urandom(MiB))
    write_at(path, GiB - MiB, os.urandom(MiB))
    before = allocated_bytes(path)
    driver.extend_volume(v, 3)
    assert os.path.getsize(path) == 3 * GiB
    assert allocated_bytes(path) <= before + 64 * 1024



# copies


def test_clone_copies_only_allocated_extents(driver: FileDriver) -> None:
    src, dst = vol("src"), vol("dst")
    driver.create_volume(src)
    for off in (3 * MiB, 400 * MiB, GiB - MiB):
        write_at(driver.volume_path(src), off, os.urandom(MiB))
    driver.create_cloned_volume(dst, src)
    s, d = driver.volume_path(src), driver.volume_path(dst)
    assert os.path.getsize(d) == GiB
    assert sha256(s) == sha256(d)
    assert allocated_bytes(d) <= allocated_bytes(s) + MiB
    assert extents(d) == extents(s)




def test_snapshots_are_thin_files_of_their_own(driver: FileDriver) -> None:
    """A snapshot is a thin copy beside its volume, listed by name; a volume made from it
    copies only its extents."""
    v = vol("v1")
    driver.create_volume(v)
    vpath = driver.volume_path(v)
    write_at(vpath, 100 * MiB, os.urandom(2 * MiB))
    snap = SnapshotRef(id="s1", volume=v, size_gb=1)
    assert driver.create_snapshot(snap) is None
    spath = driver.snapshot_path(snap)
    assert_same_content(spath, vpath)
    assert allocated_bytes(spath) <= allocated_bytes(vpath) + MiB

    new = vol("v2", 3)
    driver.create_volume_from_snapshot(new, snap)
    assert extents(driver.volume_path(new)) == extents(spath)
    assert driver.list_volume_names() == {"volume-v1", "volume-v2", "snapshot-s1"}
    driver.delete_snapshot(snap)
    assert driver.list_volume_names() == {"volume-v1", "volume-v2"}



def test_volume_from_snapshot_replaces_partial_destination(driver: FileDriver) -> None:
    """A rerun must not leave data of an earlier attempt (or another volume) in the holes."""
    v = vol("v1")
    driver.create_volume(v)
    data = os.urandom(MiB)
    write_at(driver.volume_path(v), 0, data)
    snap = SnapshotRef(id="s1", volume=v, size_gb=1)
    driver.create_snapshot(snap)
    new = vol("v2")
    stale = driver.volume_path(new)
    with open(stale, "wb") as f:
        f.truncate(GiB)
        f.seek(500 * MiB)
        f.write(b"secret" * 1000)
    driver.create_volume_from_snapshot(new, snap)
    assert read_at(stale, 500 * MiB, 6000) == bytes(6000)
    assert read_at(stale, 0, MiB) == data
    assert extents(stale) == [(0, MiB)]


def test_interrupted_copy_leaves_no_file(
    driver: FileDriver, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = vol("src")
    driver.create_volume(src)
    write_at(driver.volume_path(src), 0, os.urandom(MiB))

    def boom(src_fd: int, dst_fd: int, length: int) -> None:
        os.pwrite(dst_fd, b"partial", 0)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(file_mod, "copy_sparse", boom)
    with pytest.raises(OSError):
        driver.create_cloned_volume(vol("dst"), src)
    assert os.listdir(driver.path) == ["volume-src"]


def test_large_clone_stays_thin(driver: FileDriver) -> None:
    """10 GiB with 100 MiB written in 25 scattered extents (the bench times this case)."""
    src, dst = vol("big", 10), vol("big-clone", 10)
    driver.create_volume(src)
    s = driver.volume_path(src)
    chunk = os.urandom(4 * MiB)
    with open(s, "r+b", buffering=0) as f:
        for i in range(25):
            os.pwrite(f.fileno(), chunk, i * 409 * MiB + i * 4096)
        os.fsync(f.fileno())
    driver.create_cloned_volume(dst, src)
    d = driver.volume_path(dst)
    assert os.path.getsize(d) == 10 * GiB
    assert allocated_bytes(d) <= allocated_bytes(s) + MiB
    assert allocated_bytes(d) < 110 * MiB
    assert_same_content(s, d)


# data access



# stats


def test_stats_count_files_and_their_blocks(driver: FileDriver) -> None:
    """The shape of the stats: tests/contract/test_driver.py; here, what the file driver counts."""
    empty = driver.get_stats()
    assert (empty.vendor_name, empty.driver_version, empty.storage_protocol) == (
        "blockyard",
        "1.0",
        "local",
    )
    (pool,) = empty.pools
    assert pool.name == "fast"
    assert not pool.thick_provisioning_support
    assert pool.allocated_capacity_gb == 0 and pool.provisioned_capacity_gb == 0

    v = vol("v1", 2)
    driver.create_volume(v)
    driver.create_snapshot(SnapshotRef(id="s1", volume=v, size_gb=2))
    (pool,) = driver.get_stats().pools
    assert pool.provisioned_capacity_gb == 4
    assert pool.allocated_capacity_gb == 0

    write_at(driver.volume_path(v), 0, os.urandom(64 * MiB))
    (pool,) = driver.get_stats().pools
    assert 0.06 <= pool.allocated_capacity_gb <= 0.07


def test_stats_respect_configured_capacity(tmp_path: Path) -> None:
    d = FileDriver(
        "capped",
        {
            "path": str(tmp_path),
            "total_capacity_gb": 1,
            "reserved_percentage": 10,
            "max_over_subscription_ratio": 3,
        },
        LocalTarget(),
    )
    d.do_setup()
    v = vol("v1")
    d.create_volume(v)
    write_at(d.volume_path(v), 0, b"\x01" * (256 * MiB))
    (pool,) = d.get_stats().pools
    assert pool.total_capacity_gb == 1
    assert pool.free_capacity_gb == 0.75
    assert pool.reserved_percentage == 10 and pool.max_over_subscription_ratio == 3


# the sparse helpers on their own


def _file_with(tmp_path: Path, name: str, size: int, writes: dict[int, bytes]) -> Path:
    p = tmp_path / name
    with open(p, "wb") as f:
        f.truncate(size)
        for off, data in writes.items():
            f.seek(off)
            f.write(data)
    return p


def test_iter_data_extents_skips_holes_and_respects_length(tmp_path: Path) -> None:
    p = _file_with(tmp_path, "f", 64 * MiB, {MiB: b"a" * MiB, 40 * MiB: b"b" * MiB})
    with open(p, "rb") as f:
        assert list(iter_data_extents(f.fileno(), 64 * MiB)) == [(MiB, MiB), (40 * MiB, MiB)]
        assert list(iter_data_extents(f.fileno(), MiB + 4096)) == [(MiB, 4096)]
        assert list(iter_data_extents(f.fileno(), 0)) == []


def test_iter_data_extents_without_seek_data(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    p = _file_with(tmp_path, "f", 8 * MiB, {MiB: b"a"})
    real_lseek = os.lseek

    def lseek(fd: int, pos: int, how: int) -> int:
        if how in (os.SEEK_DATA, os.SEEK_HOLE):
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_lseek(fd, pos, how)

    monkeypatch.setattr(os, "lseek", lseek)
    with open(p, "rb") as f:
        assert list(iter_data_extents(f.fileno(), 100 * MiB)) == [(0, 8 * MiB)]


def test_copy_sparse_fallback_skips_zero_chunks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = os.urandom(3 * MiB)
    # 16 MiB of explicitly written zeros: allocated in the source, but need not be in the copy
    src = _file_with(tmp_path, "src", 64 * MiB, {0: bytes(16 * MiB), 20 * MiB: data})
    assert allocated_bytes(src) >= 19 * MiB

    def no_cfr(*args: object) -> int:
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    monkeypatch.setattr(os, "copy_file_range", no_cfr)
    dst = tmp_path / "dst"
    with open(src, "rb") as fs, open(dst, "wb") as fd:
        copy_sparse(fs.fileno(), fd.fileno(), 64 * MiB)
    assert os.path.getsize(dst) == 64 * MiB
    assert sha256(dst) == sha256(src)
    assert allocated_bytes(dst) <= 4 * MiB


def test_copy_sparse_grows_destination_and_drops_stale_data(tmp_path: Path) -> None:
    src = _file_with(tmp_path, "src", 4 * MiB, {0: b"hello"})
    dst = _file_with(tmp_path, "dst", 32 * MiB, {8 * MiB: b"stale" * 1000})
    with open(src, "rb") as fs, open(dst, "r+b") as fd:
        copy_sparse(fs.fileno(), fd.fileno(), 16 * MiB)
    assert os.path.getsize(dst) == 16 * MiB
    assert read_at(dst, 0, 5) == b"hello"
    assert read_at(dst, 8 * MiB, 5000) == bytes(5000)
    assert extents(dst) == extents(src)
