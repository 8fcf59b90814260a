"""Fixtures with real daemons: qemu-nbd over a sparse file, tgtd with one CHAP-protected LUN.

Every daemon is started through `blockyard.exec.spawn` and stopped in the fixture's teardown,
which also asserts that no process mentioning the fixture's private directory is left.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from blockyard.exec import CommandFailed, process_cmdline, process_gone, run, spawn, wait_until

MiB = 1024 * 1024


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def processes_mentioning(text: str) -> list[int]:
    """Live (non-zombie) processes whose argv mentions `text`."""
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and not process_gone(int(entry)) and any(
            text in arg for arg in process_cmdline(int(entry))
        ):
            pids.append(int(entry))
    return pids


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
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
            run([*tgtadm, "--mode", "target", "--op", "show"], timeout=5)
        except CommandFailed:
            return False
        return True

    iqn = f"iqn.2010-10.org.blockyard.test:lun-{random.getrandbits(32):08x}"
    try:
        wait_until(up, 10, what="tgtd to answer")
        target = ["--mode", "target", "--tid", "1"]
        run([*tgtadm, "--op", "new", *target, "--targetname", iqn])
        run([*tgtadm, "--op", "new", "--mode", "logicalunit", "--tid", "1", "--lun", "1",
             "--backing-store", image])
        run([*tgtadm, "--op", "bind", *target, "--initiator-name", INITIATOR])
        run([*tgtadm, "--op", "new", "--mode", "account", "--user", "alice",
             "--password", "s3cret-chap-pw"])
        run([*tgtadm, "--op", "bind", "--mode", "account", "--tid", "1", "--user", "alice"])
        yield IscsiTarget(image, f"127.0.0.1:{port}", iqn, INITIATOR, "alice",
                          "s3cret-chap-pw", 32 * MiB)
    finally:
        # tgtd -f waits ~10 s on SIGTERM; it keeps no state worth a clean exit here
        proc.kill()
        proc.wait(10)
