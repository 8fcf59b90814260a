"""Real daemons for the connector and hypervisor tests: qemu-nbd over a sparse file, tgtd with
one CHAP-protected LUN, a stopped QEMU to talk QMP to. A pytest plugin (tests/conftest.py loads
it), so every test module gets the fixtures by name.

Every daemon is a child of the test, started through `blockyard.exec.spawn` (never daemonized:
PID 1 here reaps no orphans) and stopped and reaped in its fixture's teardown; `short_dir` then
asserts that no process mentioning the fixture's private directory is left.
"""

from __future__ import annotations

import asyncio
import os
import random
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass

import pytest

from blockyard.compute.hypervisor import Hypervisor
from blockyard.compute.launcher import listening
from blockyard.exec import CommandFailed, process_cmdline, spawn, wait_until
from blockyard.exec import run as command
from tests.support.server import free_port

MiB = 1024 * 1024


def processes_mentioning(text: str, program: str = "") -> list[int]:
    """Live (non-zombie) processes whose argv mentions `text`, and whose program's name starts
    with `program` when given ("qemu-nbd", "qemu-system"). Only looks: reaps nothing."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        argv = process_cmdline(int(entry))
        if argv and os.path.basename(argv[0]).startswith(program) \
                and any(text in arg for arg in argv) and _alive(int(entry)):
            pids.append(int(entry))
    return sorted(pids)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def stop(proc: subprocess.Popen[bytes], sig: signal.Signals = signal.SIGTERM) -> None:
    """`sig` (SIGTERM), then SIGKILL after 10 s; always reaped."""
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
    proc.wait(10)


@pytest.fixture
def short_dir() -> Iterator[str]:
    """A private directory with a short path (unix sockets allow 107 bytes); on teardown,
    no process of ours may still mention it."""
    path = tempfile.mkdtemp(prefix="byc-")
    yield path
    try:
        wait_until(lambda: not processes_mentioning(path), 5, what="stray processes to exit")
    finally:
        shutil.rmtree(path, ignore_errors=True)
    assert processes_mentioning(path) == []


# ---------------------------------------------------------------------- qemu-nbd


@dataclass
class NbdExport:
    image: str
    socket: str
    size: int

    def wire(self, **extra: object) -> dict[str, object]:
        return {"driver_volume_type": "nbd",
                "data": {"export_name": "vol", "socket": self.socket, "volume_id": "v1",
                         "access_mode": "rw", **extra}}


@pytest.fixture
def nbd_export(short_dir: str) -> Iterator[NbdExport]:
    """qemu-nbd serving a 64 MiB sparse raw file as export "vol" on a unix socket."""
    image, sock = os.path.join(short_dir, "disk.raw"), os.path.join(short_dir, "nbd.sock")
    with open(image, "wb") as f:
        f.truncate(64 * MiB)
    proc = spawn(["qemu-nbd", "--format=raw", "--persistent", "--shared=0", "--export-name=vol",
                  "--socket", sock, image], log_path=os.path.join(short_dir, "qemu-nbd.log"))
    try:
        wait_until(lambda: os.path.exists(sock) or proc.poll() is not None, 10,
                   what="qemu-nbd to listen")
        assert proc.poll() is None, open(os.path.join(short_dir, "qemu-nbd.log")).read()
        yield NbdExport(image, sock, 64 * MiB)
    finally:
        stop(proc)


# ---------------------------------------------------------------------- tgtd


@dataclass
class IscsiTarget:
    image: str
    portal: str
    iqn: str
    initiator: str
    user: str
    password: str
    size: int

    def wire(self, **extra: object) -> dict[str, object]:
        data = {"target_iqn": self.iqn, "target_portal": self.portal, "target_lun": 1,
                "auth_method": "CHAP", "auth_username": self.user,
                "auth_password": self.password, "volume_id": "v1", "access_mode": "rw"}
        data.update(extra)
        return {"driver_volume_type": "iscsi", "data": data}


INITIATOR = "iqn.2004-10.org.blockyard:test-initiator"


@pytest.fixture
def iscsi_target(short_dir: str) -> Iterator[IscsiTarget]:
    """A real tgtd on free loopback ports: target with LUN 1 on a 32 MiB sparse file, its ACL
    bound to INITIATOR and a CHAP account (raw tgtadm calls)."""
    image = os.path.join(short_dir, "lun.raw")
    with open(image, "wb") as f:
        f.truncate(32 * MiB)
    port = free_port()
    # tgtd's control "port" names an abstract unix socket and must be below 32768
    control = random.randint(10000, 32000)
    proc = spawn(["tgtd", "-f", "--control-port", str(control),
                  "--iscsi", f"portal=127.0.0.1:{port}"],
                 log_path=os.path.join(short_dir, "tgtd.log"))
    tgtadm = ["tgtadm", "--control-port", str(control), "--lld", "iscsi"]

    def up() -> bool:
        assert proc.poll() is None, open(os.path.join(short_dir, "tgtd.log")).read()
        try:
            command([*tgtadm, "--mode", "target", "--op", "show"], timeout=5)
        except CommandFailed:
            return False
        return True

    iqn = f"iqn.2010-10.org.blockyard.test:lun-{random.getrandbits(32):08x}"
    try:
        wait_until(up, 10, what="tgtd to answer")
        target = ["--mode", "target", "--tid", "1"]
        command([*tgtadm, "--op", "new", *target, "--targetname", iqn])
        command([*tgtadm, "--op", "new", "--mode", "logicalunit", "--tid", "1", "--lun", "1",
                 "--backing-store", image])
        command([*tgtadm, "--op", "bind", *target, "--initiator-name", INITIATOR])
        command([*tgtadm, "--op", "new", "--mode", "account", "--user", "alice",
                 "--password", "s3cret-chap-pw"])
        command([*tgtadm, "--op", "bind", "--mode", "account", "--tid", "1", "--user", "alice"])
        yield IscsiTarget(image, f"127.0.0.1:{port}", iqn, INITIATOR, "alice",
                          "s3cret-chap-pw", 32 * MiB)
    finally:
        # tgtd -f waits ~10 s on SIGTERM; it keeps no state worth a clean exit here
        proc.kill()
        proc.wait(10)


# ---------------------------------------------------------------------- QEMU


@dataclass
class Qemu:
    proc: subprocess.Popen[bytes]
    qmp: str
    dir: str

    def log(self) -> str:
        with open(os.path.join(self.dir, "qemu.log"), errors="replace") as f:
            return f.read()


@pytest.fixture
def qemu(short_dir: str) -> Iterator[Qemu]:
    """A QEMU (TCG) stopped with -S, its QMP on a unix socket: no guest OS is needed to add,
    resize and query block devices."""
    qmp = os.path.join(short_dir, "qmp.sock")
    proc = spawn(["qemu-system-x86_64", "-machine", "pc", "-accel", "tcg", "-m", "64",
                  "-nodefaults", "-display", "none", "-no-user-config",
                  "-qmp", f"unix:{qmp},server=on,wait=off", "-S"],
                 log_path=os.path.join(short_dir, "qemu.log"))
    try:
        vm = Qemu(proc, qmp, short_dir)
        # listening, not only bound: a connect in between is refused (launcher.listening)
        wait_until(lambda: listening(qmp) or proc.poll() is not None, 10,
                   what="QEMU to listen")
        assert proc.poll() is None, vm.log()
        yield vm
    finally:
        kill(proc)


def kill(proc: subprocess.Popen[bytes]) -> None:
    """Kill and reap (a QEMU of ours keeps nothing worth a clean exit)."""
    if proc.poll() is None:
        proc.kill()
    proc.wait(10)


def run(qemu: Qemu, body: Callable[[Hypervisor], Awaitable[None]], timeout: float = 5) -> None:
    """Connect to `qemu` in a fresh event loop and run `body` with the connection."""
    async def main() -> None:
        async with await Hypervisor.connect(qemu.qmp, timeout=timeout) as hv:
            await body(hv)
    asyncio.run(main())
