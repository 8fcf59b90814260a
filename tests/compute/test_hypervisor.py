"""Hypervisor against a real QEMU (TCG, stopped with -S: no guest OS is needed to add, resize
and query block devices), real qemu-nbd exports and a real tgtd (the fixtures `qemu`,
`iscsi_target` and `short_dir` are tests/support/daemons.py's).

Every QEMU and qemu-nbd is a child of the test, never daemonized, and is killed and reaped in
its fixture's teardown; `short_dir` then checks no process mentioning its directory is left.
"""

from __future__ import annotations

import asyncio
import base64
import os
import signal
import subprocess
import time
from collections.abc import Iterator

import pytest
from qemu.qmp import Message

from blockyard.compute.disks import TlsPsk, qemu_source
from blockyard.compute.hypervisor import (
    MAX_NODE_NAME,
    BlockJob,
    DetachTimeout,
    Disk,
    Hypervisor,
    HypervisorError,
    HypervisorGone,
    HypervisorTimeout,
    _deleted,
)
from blockyard.exec import process_cmdline, spawn, wait_until
from blockyard.model import NbdInfo, parse
from tests.support.compute import GuestConsole, build_test_guest
from tests.support.daemons import INITIATOR, IscsiTarget, Qemu, run
from tests.support.daemons import kill as stop

MiB = 1024 * 1024
KEY = "5e" * 32


def sparse(path: str, size: int) -> str:
    with open(path, "wb") as f:
        f.truncate(size)
    return path


@pytest.fixture
def nbd_tls(short_dir: str) -> Iterator[NbdInfo]:
    """qemu-nbd serving an 8 MiB file over a unix socket, TLS with a pre-shared key."""
    image = sparse(os.path.join(short_dir, "nbd.raw"), 8 * MiB)
    sock, keys = os.path.join(short_dir, "nbd.sock"), os.path.join(short_dir, "psk")
    os.mkdir(keys, 0o700)
    with open(os.path.join(keys, "keys.psk"), "w") as f:
        f.write(f"alice:{KEY}\n")
    proc = spawn(["qemu-nbd", "--persistent", "--shared=0", "-f", "raw", "-x", "vol",
                  "--object", f"tls-creds-psk,id=tls0,endpoint=server,dir={keys}",
                  "--tls-creds", "tls0", "--socket", sock, image],
                 log_path=os.path.join(short_dir, "qemu-nbd.log"))
    try:
        wait_until(lambda: os.path.exists(sock) or proc.poll() is not None, 10,
                   what="qemu-nbd to listen")
        assert proc.poll() is None
        yield NbdInfo(export_name="vol", socket=sock, tls=True, tls_psk_identity="alice",
                      tls_psk_key=KEY)
    finally:
        stop(proc)


# ---------------------------------------------------------------- connection
def test_connect_reports_status_and_pid(qemu: Qemu) -> None:
    async def body(hv: Hypervisor) -> None:
        assert hv.connected and hv.pid == qemu.proc.pid
        assert await hv.status() == "prelaunch"  # -S: the CPU never ran
        await hv.close()
        assert not hv.connected
        await hv.close()  # idempotent
        with pytest.raises(HypervisorGone) as err:
            await hv.status()
        assert err.value.command == "query-status" and err.value.qmp_class is None
    run(qemu, body)


def test_connect_to_nothing_is_gone(short_dir: str) -> None:
    with pytest.raises(HypervisorGone) as err:
        asyncio.run(Hypervisor.connect(os.path.join(short_dir, "none.sock"), timeout=2))
    assert err.value.command == "connect"


def test_one_client_at_a_time(qemu: Qemu) -> None:
    """QEMU's QMP socket serves one client: a second connect waits for a greeting that
    comes only once the first client left."""
    async def body(hv: Hypervisor) -> None:
        with pytest.raises(HypervisorTimeout) as err:
            await Hypervisor.connect(qemu.qmp, timeout=0.5)
        assert err.value.command == "connect"
        await hv.close()
        async with await Hypervisor.connect(qemu.qmp, timeout=5) as again:
            assert await again.status() == "prelaunch"
    run(qemu, body)


def test_a_stopped_qemu_times_out_and_a_dead_one_is_gone(qemu: Qemu) -> None:
    async def body(hv: Hypervisor) -> None:
        os.kill(qemu.proc.pid, signal.SIGSTOP)
        try:
            with pytest.raises(HypervisorTimeout) as err:
                await hv.status(timeout=0.3)
            assert err.value.timeout == 0.3
        finally:
            os.kill(qemu.proc.pid, signal.SIGCONT)
        assert await hv.status() == "prelaunch"  # the late reply was dropped, not misrouted
        qemu.proc.kill()
        with pytest.raises(HypervisorGone):
            await hv.query_disks()
        assert not hv.connected
    run(qemu, body)


def test_quit_returns_once_qemu_hung_up(qemu: Qemu) -> None:
    async def body(hv: Hypervisor) -> None:
        await hv.quit()
        assert not hv.connected
    run(qemu, body)
    assert qemu.proc.wait(10) == 0


# ---------------------------------------------------------------- objects
def test_secret_is_never_on_the_command_line(qemu: Qemu) -> None:
    password = "chap-Pa55word-never-shown"

    async def body(hv: Hypervisor) -> None:
        await hv.add_secret("disk-1-secret", password)
        with pytest.raises(HypervisorError) as err:  # ids are unique
            await hv.add_secret("disk-1-secret", password)
        assert err.value.qmp_class == "GenericError" and err.value.cause is None
        assert password not in str(err.value)
        await hv.remove_secret("disk-1-secret")
        await hv.remove_secret("disk-1-secret")  # idempotent
    run(qemu, body)
    cmdline = " ".join(process_cmdline(qemu.proc.pid))
    assert "qemu-system" in cmdline
    assert password not in cmdline and base64.b64encode(password.encode()).decode() not in cmdline


# ---------------------------------------------------------------- file disks
def test_file_disk_add_query_resize_and_remove(qemu: Qemu) -> None:
    image = sparse(os.path.join(qemu.dir, "vol.raw"), 16 * MiB)
    serial = "0f3c2a9e-7d7b-4c5e-9b64-1f2e3d4c5b6a"  # a volume id, as Nova uses it
    timings: list[float] = []

    async def body(hv: Hypervisor) -> None:
        started = time.monotonic()
        await hv.blockdev_add("vol-1", {"driver": "file", "filename": image})
        await hv.device_add("disk-1", "vol-1", serial)
        timings.append(time.monotonic() - started)
        assert await hv.query_disks() == [Disk("disk-1", "vol-1", serial[:20], 16 * MiB, False)]

        with open(image, "r+b") as f:  # the volume service grew the volume
            f.truncate(48 * MiB)
        await hv.block_resize("vol-1", 48 * MiB)
        [disk] = await hv.query_disks()
        assert disk.size == 48 * MiB

        with pytest.raises(HypervisorError) as err:  # a device still uses it
            await hv.blockdev_del("vol-1")
        assert err.value.qmp_class == "GenericError" and "in use" in err.value.desc

        other = sparse(os.path.join(qemu.dir, "other.raw"), 2 * MiB)
        await hv.blockdev_add("vol-2", {"driver": "file", "filename": other}, read_only=True)
        await hv.device_add("disk-2", "vol-2", "")
        disks = await hv.query_disks()
        assert disks[1] == Disk("disk-2", "vol-2", None, 2 * MiB, True)
        assert await hv._node_names() == {"vol-1", "vol-1-proto", "vol-2", "vol-2-proto"}
    run(qemu, body)
    print(f"blockdev_add + device_add: {timings[0] * 1000:.1f} ms")


def test_share_rw_lets_two_writers_open_one_volume(qemu: Qemu) -> None:
    """Multiattach: QEMU locks the file of a writable device unless the device says
    share-rw (two guests are two nodes on one file, as here)."""
    image = sparse(os.path.join(qemu.dir, "vol.raw"), MiB)

    async def body(hv: Hypervisor) -> None:
        for n in (1, 2, 3):
            await hv.blockdev_add(f"vol-{n}", {"driver": "file", "filename": image})
        await hv.device_add("disk-1", "vol-1", "s1", share_rw=True)
        await hv.device_add("disk-2", "vol-2", "s2", share_rw=True)
        with pytest.raises(HypervisorError, match="lock"):
            await hv.device_add("disk-3", "vol-3", "s3")
        assert [d.device_id for d in await hv.query_disks()] == ["disk-1", "disk-2"]
    run(qemu, body)


def test_blockdev_del_removes_both_nodes_and_is_idempotent(qemu: Qemu) -> None:
    image = sparse(os.path.join(qemu.dir, "vol.raw"), MiB)

    async def body(hv: Hypervisor) -> None:
        await hv.blockdev_add("vol-1", {"driver": "file", "filename": image})
        assert await hv._node_names() == {"vol-1", "vol-1-proto"}
        await hv.blockdev_del("vol-1")
        assert await hv._node_names() == set()
        await hv.blockdev_del("vol-1")
        await hv.blockdev_del("never-was")
        assert await hv.query_disks() == []
    run(qemu, body)


def test_errors_carry_the_qmp_class_and_the_command(qemu: Qemu) -> None:
    async def body(hv: Hypervisor) -> None:
        with pytest.raises(HypervisorError) as err:
            await hv.blockdev_add("vol-1", {"driver": "file", "filename": "/nonexistent.raw"})
        assert (err.value.qmp_class, err.value.command) == ("GenericError", "blockdev-add")
        assert "/nonexistent.raw" in err.value.desc
        with pytest.raises(HypervisorError) as err:
            await hv.device_add("disk-1", "no-such-node", "s")
        assert err.value.command == "device_add"
        with pytest.raises(HypervisorError) as err:
            await hv.block_resize("no-such-node", MiB)
        assert err.value.command == "block_resize"
        with pytest.raises(ValueError, match="longer than"):
            await hv.blockdev_add("n" * (MAX_NODE_NAME + 1), {"driver": "file",
                                                             "filename": "/x"})
        assert await hv.query_disks() == []
    run(qemu, body)


# ---------------------------------------------------------------- unplug
def test_device_del_without_a_guest_times_out_after_the_retries(qemu: Qemu) -> None:
    """With -S nothing in the guest answers the ACPI unplug request: no DEVICE_DELETED. The
    re-sent requests are refused ("already in the process of unplug") and waited out."""
    image = sparse(os.path.join(qemu.dir, "vol.raw"), MiB)

    async def body(hv: Hypervisor) -> None:
        await hv.blockdev_add("vol-1", {"driver": "file", "filename": image})
        await hv.device_add("disk-1", "vol-1", "serial-1")
        started = time.monotonic()
        with pytest.raises(DetachTimeout) as err:
            await hv.device_del("disk-1", timeout=0.2, retries=2)
        assert time.monotonic() - started >= 0.6
        assert (err.value.device_id, err.value.attempts) == ("disk-1", 3)
        assert [d.device_id for d in await hv.query_disks()] == ["disk-1"]  # still there
        await hv.device_del("no-such-disk", timeout=0.2, retries=0)  # gone counts as done
    run(qemu, body)


def test_device_del_stops_waiting_when_qemu_dies(qemu: Qemu) -> None:
    image = sparse(os.path.join(qemu.dir, "vol.raw"), MiB)

    async def body(hv: Hypervisor) -> None:
        await hv.blockdev_add("vol-1", {"driver": "file", "filename": image})
        await hv.device_add("disk-1", "vol-1", "serial-1")
        loop = asyncio.get_running_loop()
        loop.call_later(0.3, qemu.proc.kill)
        started = time.monotonic()
        with pytest.raises(HypervisorGone):
            await hv.device_del("disk-1", timeout=30, retries=0)
        assert time.monotonic() - started < 10
    run(qemu, body)


def test_only_the_device_event_counts() -> None:
    """QEMU sends DEVICE_DELETED for the virtio backend first (path only), then for the
    device; only the latter says the device is gone."""
    accept = _deleted("disk-1")
    backend = Message({"event": "DEVICE_DELETED", "data": {
        "path": "/machine/peripheral/disk-1/virtio-backend"}})
    device = Message({"event": "DEVICE_DELETED", "data": {
        "device": "disk-1", "path": "/machine/peripheral/disk-1"}})
    other = Message({"event": "DEVICE_DELETED", "data": {"device": "disk-2"}})
    assert [accept(e) for e in (backend, device, other)] == [False, True, False]


# ---------------------------------------------------------------- network disks
def test_nbd_with_tls_psk(qemu: Qemu, nbd_tls: NbdInfo) -> None:
    source = qemu_source(nbd_tls, prefix="vol-1")
    psk = source.tls_psk
    assert psk is not None

    async def body(hv: Hypervisor) -> None:
        await hv.add_tls_psk_key(psk)
        # the key file is gone already; QEMU read it when the object was made
        await hv.blockdev_add("vol-1", source.options)
        await hv.device_add("disk-1", "vol-1", "nbd-serial")
        assert await hv.query_disks() == [Disk("disk-1", "vol-1", "nbd-serial", 8 * MiB,
                                                False)]
        # another handshake with the same creds still works without the file
        await hv.blockdev_add("vol-2", {**source.options}, read_only=True)
        await hv.blockdev_del("vol-2")

        with pytest.raises(HypervisorError, match="Cannot grow NBD nodes"):
            await hv.block_resize("vol-1", 16 * MiB)

        wrong = TlsPsk("vol-3-tls", "alice", "00" * 32)
        await hv.add_tls_psk_key(wrong)
        with pytest.raises(HypervisorError) as err:
            await hv.blockdev_add("vol-3", {**source.options, "tls-creds": wrong.creds_id})
        assert "TLS" in err.value.desc
        await hv.remove_tls_psk(wrong.creds_id)
        await hv.remove_tls_psk(wrong.creds_id)
    run(qemu, body, timeout=10)


def test_tls_psk_file_is_read_when_the_object_is_made(qemu: Qemu) -> None:
    keys = os.path.join(qemu.dir, "keys")
    os.mkdir(keys, 0o700)

    async def body(hv: Hypervisor) -> None:
        with pytest.raises(HypervisorError, match="keys.psk"):
            await hv.add_tls_psk("t1", directory=keys, username="alice")
    run(qemu, body)


def test_iscsi_lun_with_chap(qemu: Qemu, iscsi_target: IscsiTarget) -> None:
    info = parse(iscsi_target.wire())
    source = qemu_source(info, prefix="vol-1", initiator=INITIATOR)
    bad = qemu_source(parse(iscsi_target.wire(auth_password="wrong-password")),
                      prefix="vol-2", initiator=INITIATOR)

    async def body(hv: Hypervisor) -> None:
        for secret_id, value in source.secrets.items():
            await hv.add_secret(secret_id, value)
        await hv.blockdev_add("vol-1", source.options)
        for secret_id in source.secrets:  # the driver copied the password at login
            await hv.remove_secret(secret_id)
        await hv.device_add("disk-1", "vol-1", "iscsi-serial")
        [disk] = await hv.query_disks()
        assert (disk.node_name, disk.size) == ("vol-1", iscsi_target.size)

        for secret_id, value in bad.secrets.items():
            await hv.add_secret(secret_id, value)
        with pytest.raises(HypervisorError) as err:
            await hv.blockdev_add("vol-2", bad.options)
        assert err.value.qmp_class == "GenericError"
    run(qemu, body, timeout=20)
    cmdline = " ".join(process_cmdline(qemu.proc.pid))
    assert iscsi_target.password not in cmdline


# ---------------------------------------------------------------- with a guest OS
@pytest.fixture
def guest(short_dir: str) -> Iterator[tuple[Qemu, GuestConsole]]:
    """The tiny TCG test guest (scripts/build-test-guest), booted, its console attached."""
    try:
        image = build_test_guest()
    except subprocess.CalledProcessError as err:
        pytest.skip(f"no test guest: {err.stderr.decode(errors='replace')[-300:]}")
    qmp, console = os.path.join(short_dir, "qmp.sock"), os.path.join(short_dir, "con.sock")
    proc = spawn(["qemu-system-x86_64", "-machine", "pc", "-accel", "tcg", "-m", "128",
                  "-nodefaults", "-display", "none", "-no-user-config",
                  "-kernel", image["kernel"], "-initrd", image["initrd"],
                  "-append", image["append"],
                  "-qmp", f"unix:{qmp},server=on,wait=off",
                  "-serial", f"unix:{console},server=on,wait=off"],
                 log_path=os.path.join(short_dir, "qemu.log"))
    con = None
    try:
        wait_until(lambda: os.path.exists(console) or proc.poll() is not None, 10,
                   what="QEMU to listen")
        con = GuestConsole(console, boot_timeout=120)
        yield Qemu(proc, qmp, short_dir), con
    finally:
        if con is not None:
            con.close()
        stop(proc)


def test_guest_sees_the_disk_come_grow_and_go(
        guest: tuple[Qemu, GuestConsole]) -> None:
    vm, console = guest
    image = sparse(os.path.join(vm.dir, "vol.raw"), 8 * MiB)
    serial = "9b1c7e4a-0d2f-4c61-8a7e-5f3b2d1c0e9f"

    async def body(hv: Hypervisor) -> None:
        assert await hv.status() == "running"
        await hv.blockdev_add("vol-1", {"driver": "file", "filename": image})
        await hv.device_add("disk-1", "vol-1", serial)
        # the guest reads the first 20 characters (sysfs; udev would make by-id/virtio-<that>)
        device = await asyncio.to_thread(console.wait_disk, serial[:20], size=8 * MiB)
        console.check(f"dd if=/dev/zero of={device} bs=64k count=4 2>/dev/null")

        with open(image, "r+b") as f:
            f.truncate(24 * MiB)
        await hv.block_resize("vol-1", 24 * MiB)
        await asyncio.to_thread(console.wait_disk, serial, size=24 * MiB)

        started = time.monotonic()
        await hv.device_del("disk-1", timeout=20, retries=2)  # returns on DEVICE_DELETED
        print(f"device_del until DEVICE_DELETED: {(time.monotonic() - started) * 1000:.0f} ms")
        assert await hv.query_disks() == []
        await hv.blockdev_del("vol-1")
        assert await hv._node_names() == set()
        await asyncio.to_thread(console.wait_disk_gone, serial)
    run(vm, body, timeout=30)


# ---------------------------------------------------------------- mirror jobs (swap_volume)
def _pattern(path: str, size: int) -> bytes:
    data = os.urandom(size)
    with open(path, "r+b") as f:
        f.write(data)
    return data


async def _disk_on(hv: Hypervisor, node: str, path: str) -> None:
    """A guest disk (device disk-1) on a file node: what a mirror moves."""
    await hv.blockdev_add(node, {"driver": "file", "filename": path})
    await hv.device_add("disk-1", node, "serial-1")


def test_mirror_pivots_the_device_onto_the_copy(qemu: Qemu) -> None:
    """The device reads the old node, the mirror copies it to the new one, and after
    complete the device uses the new node; the old one has no user left."""
    old = sparse(os.path.join(qemu.dir, "old.raw"), 4 * MiB)
    new = sparse(os.path.join(qemu.dir, "new.raw"), 4 * MiB)
    data = _pattern(old, MiB)

    async def body(hv: Hypervisor) -> None:
        await _disk_on(hv, "old", old)
        await hv.blockdev_add("new", {"driver": "file", "filename": new})
        await hv.mirror("swap-1", "old", "new")
        await hv.wait_job_ready("swap-1", timeout=30)
        job = await hv.job("swap-1")
        assert job is not None and job.type == "mirror" and job.status == "ready"
        await hv.complete_job("swap-1", timeout=30)
        assert await hv.job("swap-1") is None  # dismissed
        [disk] = await hv.query_disks()
        assert (disk.node_name, disk.serial) == ("new", "serial-1")  # same device, new node
        await hv.blockdev_del("old")  # nobody uses it any more
        assert await hv._node_names() == {"new", "new-proto"}
    run(qemu, body)
    with open(new, "rb") as f:
        assert f.read(MiB) == data


def test_a_cancelled_mirror_leaves_the_device_on_its_node(qemu: Qemu) -> None:
    old = sparse(os.path.join(qemu.dir, "old.raw"), 4 * MiB)
    new = sparse(os.path.join(qemu.dir, "new.raw"), 4 * MiB)

    async def body(hv: Hypervisor) -> None:
        await _disk_on(hv, "old", old)
        await hv.blockdev_add("new", {"driver": "file", "filename": new})
        await hv.mirror("swap-1", "old", "new")
        await hv.wait_job_ready("swap-1", timeout=30)
        await hv.cancel_job("swap-1", timeout=30)
        assert await hv.job("swap-1") is None
        await hv.cancel_job("swap-1", timeout=30)  # idempotent
        [disk] = await hv.query_disks()
        assert disk.node_name == "old"
        await hv.blockdev_del("new")
        assert await hv._node_names() == {"old", "old-proto"}
    run(qemu, body)


def test_a_mirror_that_fails_reports_the_error(qemu: Qemu) -> None:
    """A target that refuses writes: the job ends before it is ready, with QEMU's error."""
    old = sparse(os.path.join(qemu.dir, "old.raw"), 4 * MiB)
    _pattern(old, MiB)

    async def body(hv: Hypervisor) -> None:
        await _disk_on(hv, "old", old)
        # every write to the target fails with EIO
        await hv._execute("blockdev-add", {
            "driver": "blkdebug", "node-name": "bad",
            "image": {"driver": "null-co", "size": 4 * MiB},
            "inject-error": [{"event": "none", "iotype": "write", "errno": 5}]})
        await hv.mirror("swap-1", "old", "bad")
        with pytest.raises(HypervisorError) as err:
            await hv.wait_job_ready("swap-1", timeout=30)
        assert err.value.command == "blockdev-mirror" and "error" in err.value.desc.lower()
        assert await hv.job("swap-1") is None
        [disk] = await hv.query_disks()
        assert disk.node_name == "old"
    run(qemu, body)


def test_a_mirror_needs_a_target_of_the_same_size_or_a_size_limit(qemu: Qemu) -> None:
    old = sparse(os.path.join(qemu.dir, "old.raw"), 4 * MiB)
    big = sparse(os.path.join(qemu.dir, "big.raw"), 8 * MiB)

    async def body(hv: Hypervisor) -> None:
        await _disk_on(hv, "old", old)
        await hv.blockdev_add("big", {"driver": "file", "filename": big})
        await hv.mirror("swap-1", "old", "big")
        with pytest.raises(HypervisorError, match="different sizes"):
            await hv.wait_job_ready("swap-1", timeout=30)
        [disk] = await hv.query_disks()
        assert disk.node_name == "old"
        await hv.blockdev_del("big")
        # shown at the source's size it mirrors; afterwards the device gets the whole volume
        await hv.blockdev_add("big", {"driver": "file", "filename": big}, size=4 * MiB)
        await hv.mirror("swap-2", "old", "big")
        await hv.wait_job_ready("swap-2", timeout=30)
        await hv.complete_job("swap-2", timeout=30)
        [disk] = await hv.query_disks()
        assert (disk.node_name, disk.size) == ("big", 4 * MiB)
        await hv.drop_size_limit("big")
        await hv.drop_size_limit("big")  # idempotent
        [disk] = await hv.query_disks()
        assert (disk.node_name, disk.size) == ("big", 8 * MiB)
        await hv.block_resize("big", 8 * MiB)  # no limit left in the way
    run(qemu, body)


def test_job_waits_time_out_and_unknown_jobs_are_none(qemu: Qemu) -> None:
    async def body(hv: Hypervisor) -> None:
        assert await hv.job("nope") is None
        await hv.cancel_job("nope", timeout=1)
        # a throttled mirror of a big null node cannot become ready in time
        await hv._execute("blockdev-add", {"driver": "null-co", "node-name": "src",
                                           "size": 1024 * MiB, "read-zeroes": True})
        await hv._execute("blockdev-add", {"driver": "null-co", "node-name": "dst",
                                           "size": 1024 * MiB})
        await hv._execute("blockdev-mirror", {"job-id": "slow", "device": "src",
                                              "target": "dst", "sync": "full",
                                              "auto-dismiss": False, "speed": 1024})
        with pytest.raises(HypervisorTimeout):
            await hv.wait_job_ready("slow", timeout=0.5)
        job = await hv.job("slow")
        assert job == BlockJob("slow", "mirror", "running", None)
        await hv.cancel_job("slow", timeout=10)
        assert await hv.job("slow") is None
    run(qemu, body)
