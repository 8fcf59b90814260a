"""QemuNbdTarget against real qemu-nbd processes, checked with a real NBD client (libnbd)."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import nbd
import pytest

from blockyard.errors import Invalid
from blockyard.model import Connector, Export, NbdInfo, VolumeRef
from blockyard.targets.qemu_nbd import QemuNbdTarget
from tests.support.daemons import processes_mentioning

MiB = 1024**2
SIZE = 64 * MiB
HOST_A = Connector(host="compute-a", ip="127.0.0.1")
HOST_B = Connector(host="compute-b", ip="127.0.0.1")


def qemu_nbd_pids(under: Path) -> list[int]:
    """Live (not zombie) qemu-nbd processes whose command line mentions `under`."""
    return processes_mentioning(str(under), "qemu-nbd")


@pytest.fixture
def base() -> Iterator[Path]:
    """A short directory (Unix socket paths must stay under 108 bytes); no qemu-nbd of ours
    may outlive the test."""
    path = Path(tempfile.mkdtemp(prefix="nbdt-", dir="/tmp"))
    yield path
    leftover = qemu_nbd_pids(path)
    for pid in leftover:
        os.kill(pid, signal.SIGKILL)
    assert leftover == [], "qemu-nbd processes left behind"
    for root, dirs, files in os.walk(path, topdown=False):
        for name in files:
            os.unlink(os.path.join(root, name))
        for name in dirs:
            os.rmdir(os.path.join(root, name))
    os.rmdir(path)


@pytest.fixture
def make_target(base: Path) -> Iterator[Callable[..., QemuNbdTarget]]:
    made: list[QemuNbdTarget] = []

    def make(**options: Any) -> QemuNbdTarget:
        target = QemuNbdTarget(base / "state", run_dir=base / "run" / "nbd", **options)
        target.start()
        made.append(target)
        return target

    yield make
    for target in made:
        target.teardown()
    assert not (base / "run").exists(), "the run dir outlived its exports"


@pytest.fixture
def volume(base: Path) -> tuple[VolumeRef, str]:
    ref = VolumeRef(id="0b5c3f0e-6a35-4a47-9b0e-2f4c1e2d3a4b", size_gb=1)
    path = base / ref.name
    with open(path, "wb") as f:
        f.truncate(SIZE)
    return ref, str(path)


def connect(info: NbdInfo, tmp: Path, *, tls: bool | None = None,
            identity: str | None = None, key: str | None = None) -> nbd.NBD:
    """Connect libnbd the way `info` says; `tls`/`identity`/`key` override it."""
    h = nbd.NBD()
    h.set_export_name(info.export_name)
    use_tls = info.tls if tls is None else tls
    if use_tls:
        h.set_tls(nbd.TLS_REQUIRE)
        identity = identity or info.tls_psk_identity
        key = key or info.tls_psk_key
        if identity and key:
            psk = tmp / f"client-{identity}-{key[:8]}.psk"
            psk.write_text(f"{identity}:{key}\n")
            h.set_tls_username(identity)
            h.set_tls_psk_file(str(psk))
    if info.socket:
        h.connect_unix(info.socket)
    else:
        h.connect_tcp(info.host, str(info.port))
    return h


def refused(info: NbdInfo, tmp: Path, **kw: Any) -> bool:
    try:
        h = connect(info, tmp, **kw)
    except nbd.Error:
        return True
    h.shutdown()
    return False


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def file_region_sha(path: str, offset: int, length: int) -> str:
    with open(path, "rb") as f:
        f.seek(offset)
        return sha(f.read(length))


def pid_of(base: Path) -> int:
    (pid,) = qemu_nbd_pids(base)
    return pid


def test_written_blocks_reach_the_backing_file(make_target: Callable[..., QemuNbdTarget],
                                               volume: tuple[VolumeRef, str],
                                               base: Path) -> None:
    ref, path = volume
    target = make_target()
    export = target.export(ref, path, HOST_A, None)
    assert export.protocol == "nbd"
    assert export.data == {"export_name": f"volume-{ref.id}", "tls": False,
                           "socket": str(base / "run" / "nbd" / f"volume-{ref.id}.sock")}
    assert export.connectors == ("compute-a",) and export.secrets == {}
    assert Export.from_json(export.to_json()) == export
    info = target.connection_info(ref, export, HOST_A)
    assert info.protocol == "nbd"
    assert info.access_mode == "rw" and info.volume_id == ref.id

    h = connect(info, base)
    assert h.get_size() == SIZE
    assert h.can_trim()
    writes = {0: os.urandom(4096), 3 * MiB + 512: os.urandom(65536),
              SIZE - 4096: os.urandom(4096)}
    for offset, block in writes.items():
        h.pwrite(block, offset)
    h.flush()
    for offset, block in writes.items():
        assert h.pread(len(block), offset) == block
    h.shutdown()
    for offset, block in writes.items():
        assert file_region_sha(path, offset, len(block)) == sha(block)
    assert target.exports() == [f"volume-{ref.id}"]


def test_connection_info_only_formats(make_target: Callable[..., QemuNbdTarget],
                                      volume: tuple[VolumeRef, str], base: Path) -> None:
    ref, path = volume
    target = make_target(tls=True)
    export = target.export(ref, path, HOST_A, None)
    pids = qemu_nbd_pids(base)
    files = sorted(base.rglob("*"))
    infos = [target.connection_info(ref, export, HOST_A) for _ in range(100)]
    assert all(i == infos[0] for i in infos)
    assert qemu_nbd_pids(base) == pids and sorted(base.rglob("*")) == files
    assert infos[0].tls_psk_identity == "compute-a"
    assert infos[0].tls_psk_key == export.secrets["tls_psk_key:compute-a"]
    with pytest.raises(Invalid):
        target.connection_info(ref, export, HOST_B)


def test_export_is_idempotent_and_serves_several_connectors(
        make_target: Callable[..., QemuNbdTarget], volume: tuple[VolumeRef, str],
        base: Path) -> None:
    ref, path = volume
    target = make_target(tls=True)
    first = target.export(ref, path, HOST_A, None)
    pid = pid_of(base)
    assert target.export(ref, path, HOST_A, first) == first
    both = target.export(ref, path, HOST_B, first)
    assert pid_of(base) == pid
    assert both.connectors == ("compute-a", "compute-b")
    assert both.data == first.data
    assert both.secrets["tls_psk_key:compute-a"] == first.secrets["tls_psk_key:compute-a"]
    assert both.secrets["tls_psk_key:compute-b"] != both.secrets["tls_psk_key:compute-a"]

    # both attached at once (multiattach): what one writes, the other reads
    a = connect(target.connection_info(ref, both, HOST_A), base)
    b = connect(target.connection_info(ref, both, HOST_B), base)
    a.pwrite(b"x" * 512, MiB)
    a.flush()
    assert b.pread(512, MiB) == b"x" * 512
    a.shutdown()
    b.shutdown()


def test_a_crash_before_persisting_is_adopted(make_target: Callable[..., QemuNbdTarget],
                                              volume: tuple[VolumeRef, str],
                                              base: Path) -> None:
    ref, path = volume
    lost = make_target(tls=True).export(ref, path, HOST_A, None)
    pid = pid_of(base)
    again = make_target(tls=True).export(ref, path, HOST_A, None)  # a new service, no record
    assert again == lost and pid_of(base) == pid


def test_a_qemu_nbd_spawned_but_never_recorded_is_replaced_not_leaked(
        make_target: Callable[..., QemuNbdTarget], volume: tuple[VolumeRef, str],
        base: Path) -> None:
    """kill -9 between the spawn and the record: no export was handed out, so the next
    service stops that qemu-nbd (found by its pid file argument) and serves a new one."""
    ref, path = volume
    lost = make_target().export(ref, path, HOST_A, None)
    orphan = pid_of(base)
    (base / "state" / f"volume-{ref.id}.json").unlink()  # the record was never written
    target = make_target()
    again = target.ensure(ref, path, lost)
    assert again == lost and pid_of(base) != orphan
    target.remove(ref, again)
    assert qemu_nbd_pids(base) == []


def test_remove_ends_the_process_and_its_files(make_target: Callable[..., QemuNbdTarget],
                                               volume: tuple[VolumeRef, str],
                                               base: Path) -> None:
    ref, path = volume
    target = make_target(tls=True)
    export = target.export(ref, path, HOST_A, None)
    pid = pid_of(base)
    h = connect(target.connection_info(ref, export, HOST_A), base)  # a client stays connected
    target.remove(ref, export)
    assert not Path(f"/proc/{pid}").exists()
    assert sorted(p.name for p in (base / "state").iterdir()) == []
    assert sorted(p.name for p in (base / "run" / "nbd").iterdir()) == []
    assert target.exports() == []
    target.remove(ref, export)  # idempotent
    with pytest.raises(nbd.Error):
        h.pread(512, 0)
    del h  # libnbd 1.14 has no close(): the handle closes when collected


def test_ensure_restarts_a_killed_process_at_the_same_socket(
        make_target: Callable[..., QemuNbdTarget], volume: tuple[VolumeRef, str],
        base: Path) -> None:
    ref, path = volume
    target = make_target()
    export = target.export(ref, path, HOST_A, None)
    h = connect(target.connection_info(ref, export, HOST_A), base)
    h.pwrite(b"before" * 100, 0)
    h.flush()
    h.shutdown()
    old = pid_of(base)
    os.kill(old, signal.SIGKILL)
    while qemu_nbd_pids(base):
        time.sleep(0.01)
    assert target.exports() == []

    ensured = target.ensure(ref, path, export)
    assert ensured == export
    assert pid_of(base) != old
    assert target.ensure(ref, path, ensured) == ensured  # running: nothing to do
    h = connect(target.connection_info(ref, ensured, HOST_A), base)
    assert h.pread(600, 0) == b"before" * 100
    h.shutdown()


def test_ensure_after_a_service_restart_keeps_port_and_keys(
        make_target: Callable[..., QemuNbdTarget], volume: tuple[VolumeRef, str],
        base: Path) -> None:
    ref, path = volume
    first = make_target(mode="tcp", tls=True, port_range=(20809, 20899))
    export = first.export(ref, path, HOST_A, None)
    assert export.data["host"] == "127.0.0.1" and 20809 <= export.data["port"] <= 20899
    first.teardown()  # its qemu-nbd is gone (a reboot, a crash)
    assert qemu_nbd_pids(base) == [] and first.exports() == []

    second = make_target(mode="tcp", tls=True, port_range=(20809, 20899))
    ensured = second.ensure(ref, path, export)
    assert ensured == export
    h = connect(second.connection_info(ref, ensured, HOST_A), base)
    assert h.get_tls_negotiated()
    h.shutdown()


def test_tcp_tls_lets_in_only_the_exported_connectors(
        make_target: Callable[..., QemuNbdTarget], volume: tuple[VolumeRef, str],
        base: Path) -> None:
    ref, path = volume
    target = make_target(mode="tcp", tls=True, port_range=(20809, 20899))
    export = target.export(ref, path, HOST_A, None)
    export = target.export(ref, path, HOST_B, export)
    info_a = target.connection_info(ref, export, HOST_A)
    info_b = target.connection_info(ref, export, HOST_B)
    pid = pid_of(base)

    assert refused(info_a, base, tls=False)                      # plain NBD
    assert refused(info_a, base, identity="nobody", key=None)    # TLS without a key
    assert refused(info_a, base, key="00" * 32)                  # the wrong key
    assert refused(info_a, base, identity="compute-b")           # a's key under b's name
    h = connect(info_a, base)
    assert h.get_tls_negotiated() and h.get_size() == SIZE
    h.shutdown()

    remaining = target.unexport(ref, export, HOST_A)
    assert remaining.connectors == ("compute-b",)
    assert list(remaining.secrets) == ["tls_psk_key:compute-b"]
    assert refused(info_a, base)          # a's key is gone, without a restart
    assert not refused(info_b, base)
    assert pid_of(base) == pid

    nobody = target.unexport(ref, remaining, None)
    assert nobody.connectors == () and nobody.secrets == {}
    assert refused(info_b, base)
    again = target.export(ref, path, HOST_A, nobody)      # re-export: a new key works
    assert again.secrets["tls_psk_key:compute-a"] != info_a.tls_psk_key
    assert not refused(target.connection_info(ref, again, HOST_A), base)
    assert pid_of(base) == pid


def test_tcp_ports_are_distinct_per_volume(make_target: Callable[..., QemuNbdTarget],
                                           base: Path) -> None:
    target = make_target(mode="tcp", port_range=(20809, 20899))
    ports = set()
    for n in range(3):
        ref = VolumeRef(id=f"vol{n}", size_gb=1)
        path = base / ref.name
        path.write_bytes(b"")
        os.truncate(path, MiB)
        export = target.export(ref, str(path), HOST_A, None)
        ports.add(export.data["port"])
        h = connect(target.connection_info(ref, export, HOST_A), base)
        assert h.get_size() == MiB
        h.shutdown()
    assert len(ports) == 3
    assert target.exports() == ["volume-vol0", "volume-vol1", "volume-vol2"]
    target.teardown()
    assert target.exports() == [] and qemu_nbd_pids(base) == []


def test_connectors_need_a_plain_host_name(make_target: Callable[..., QemuNbdTarget]) -> None:
    target = make_target()
    target.validate_connector(HOST_A)
    for bad in (Connector(), Connector(host="a:b"), Connector(host="a\nb")):
        with pytest.raises(Invalid):
            target.validate_connector(bad)


def test_stop_leaves_exports_running_and_the_next_target_adopts_them(
        make_target: Callable[..., QemuNbdTarget], volume: tuple[VolumeRef, str],
        base: Path) -> None:
    """A service restart: the client's connection (a guest's disk) is never interrupted."""
    ref, path = volume
    first = make_target(tls=True)
    export = first.export(ref, path, HOST_A, None)
    pid = pid_of(base)
    h = connect(first.connection_info(ref, export, HOST_A), base)
    h.pwrite(b"before" * 100, 0)
    first.stop()
    assert pid_of(base) == pid
    record = json.loads((base / "state" / f"volume-{ref.id}.json").read_text())
    assert record["pid"] == pid
    assert record["argv"] == Path(f"/proc/{pid}/cmdline").read_text().split("\0")[:-1]

    second = make_target(tls=True)
    assert second.ensure(ref, path, export) == export
    assert pid_of(base) == pid and second.exports() == [f"volume-{ref.id}"]
    h.pwrite(b"after" * 100, 4096)  # the same connection, all along
    h.flush()
    assert h.pread(600, 0) == b"before" * 100
    h.shutdown()
    assert second.export(ref, path, HOST_B, export).connectors == ("compute-a", "compute-b")
    assert pid_of(base) == pid


def test_stop_removes_the_run_dir_once_nothing_is_exported(
        make_target: Callable[..., QemuNbdTarget], volume: tuple[VolumeRef, str],
        base: Path) -> None:
    ref, path = volume
    target = make_target()
    target.stop()
    assert not (base / "run").exists()
    target.start()
    export = target.export(ref, path, HOST_A, None)
    target.stop()
    assert (base / "run" / "nbd" / f"volume-{ref.id}.sock").exists()  # still served
    target.remove(ref, export)
    target.stop()
    assert not (base / "run").exists()


def test_a_record_of_a_reused_pid_is_not_adopted(make_target: Callable[..., QemuNbdTarget],
                                                 volume: tuple[VolumeRef, str],
                                                 base: Path) -> None:
    ref, path = volume
    target = make_target()
    export = target.export(ref, path, HOST_A, None)
    old = pid_of(base)
    record_path = base / "state" / f"volume-{ref.id}.json"
    record = json.loads(record_path.read_text())
    record["started"] += 1  # as if the pid now named a process started later
    record_path.write_text(json.dumps(record))

    ensured = make_target().ensure(ref, path, export)
    assert ensured == export
    new = [pid for pid in qemu_nbd_pids(base) if pid != old]
    assert len(new) == 1
    os.kill(old, signal.SIGKILL)  # the stranger, not ours to stop
    h = connect(target.connection_info(ref, ensured, HOST_A), base)
    assert h.get_size() == SIZE
    h.shutdown()


def test_prune_removes_exports_no_persisted_export_describes(
        make_target: Callable[..., QemuNbdTarget], base: Path) -> None:
    target = make_target()
    exports = []
    for n in range(2):
        ref = VolumeRef(id=f"vol{n}", size_gb=1)
        path = base / ref.name
        path.write_bytes(b"")
        os.truncate(path, MiB)
        exports.append(target.export(ref, str(path), HOST_A, None))
    assert target.prune([exports[0], Export("iscsi", {"target_iqn": "x"})]) == ["volume-vol1"]
    assert target.exports() == ["volume-vol0"] and len(qemu_nbd_pids(base)) == 1
    assert sorted(p.name for p in (base / "state").glob("volume-vol1*")) == []


def test_a_port_in_time_wait_is_free(make_target: Callable[..., QemuNbdTarget],
                                     volume: tuple[VolumeRef, str], base: Path) -> None:
    """qemu-nbd binds with SO_REUSEADDR: a port whose last connection is in TIME_WAIT is
    free to it, and so to the probe (else a range of N ports allows N attaches a minute)."""
    ref, path = volume
    target = make_target(mode="tcp", port_range=(20950, 20950))
    for _ in range(3):
        export = target.export(ref, path, HOST_A, None)
        assert export.data["port"] == 20950
        h = connect(target.connection_info(ref, export, HOST_A), base)
        target.remove(ref, export)  # the server closes first: its side lingers in TIME_WAIT
        del h
        assert _time_wait_on(20950)


def _time_wait_on(port: int) -> bool:
    """Is a TCP connection of local port `port` in TIME_WAIT (/proc/net/tcp state 06)?"""
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        if int(local.split(":")[1], 16) == port and state == "06":
            return True
    return False


def test_a_recorded_qemu_nbd_that_does_not_answer_is_replaced(
        make_target: Callable[..., QemuNbdTarget], volume: tuple[VolumeRef, str],
        base: Path) -> None:
    ref, path = volume
    target = make_target()
    export = target.export(ref, path, HOST_A, None)
    old = pid_of(base)
    Path(export.data["socket"]).unlink()  # alive, but nobody can reach it any more
    assert make_target().ensure(ref, path, export) == export
    assert pid_of(base) != old
    h = connect(target.connection_info(ref, export, HOST_A), base)
    assert h.get_size() == SIZE
    h.shutdown()
