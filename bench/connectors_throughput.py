"""Throughput of the connector handles vs qemu-img convert over the same export.

256 MiB sequential write then read, in 4 MiB requests, through the NBD handle (qemu-nbd on a
unix socket) and the iSCSI handle (qemu-nbd bridge to a tgtd LUN), against `qemu-img convert`
writing the same amount into the same export. Starts and stops its own daemons.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import socket
import subprocess
import tempfile
import time

from blockyard.connectors import IscsiConnector, connector_for
from blockyard.connectors.iscsi import image_opts
from blockyard.exec import CommandFailed, run, spawn, wait_until
from blockyard.model import NbdInfo, parse

MiB = 1024 * 1024
TOTAL = 256 * MiB
CHUNK = 4 * MiB


def rate(seconds: float) -> str:
    return f"{TOTAL / MiB / seconds:8.1f} MiB/s"


def through_handle(conn: object, info: object, label: str) -> None:
    data = os.urandom(CHUNK)
    with conn.open(info, "r+b") as f:  # type: ignore[attr-defined]
        t = time.monotonic()
        for _ in range(TOTAL // CHUNK):
            f.write(data)
        f.flush()
        w = time.monotonic() - t
        f.seek(0)
        t = time.monotonic()
        while f.read(CHUNK):
            pass
        r = time.monotonic() - t
    print(f"{label:28} write {rate(w)}   read {rate(r)}")


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def main() -> None:
    tmp = tempfile.mkdtemp(prefix="bybench-")
    src = os.path.join(tmp, "src.raw")
    with open(src, "wb") as f:
        for _ in range(TOTAL // CHUNK):
            f.write(os.urandom(CHUNK))
    try:
        # NBD
        image, sock = os.path.join(tmp, "nbd.raw"), os.path.join(tmp, "nbd.sock")
        with open(image, "wb") as f:
            f.truncate(TOTAL)
        proc = spawn(["qemu-nbd", "-f", "raw", "-t", "-e", "0", "-k", sock, image])
        try:
            wait_until(lambda: os.path.exists(sock), 10)
            info = NbdInfo("", socket=sock)
            through_handle(connector_for(info), info, "nbd handle")
            t = time.monotonic()
            run(["qemu-img", "convert", "-n", "-f", "raw", "-O", "raw", src, info.uri],
                timeout=300)
            print(f"{'nbd qemu-img convert':28} write {rate(time.monotonic() - t)}")
        finally:
            stop(proc)
        # iSCSI
        lun = os.path.join(tmp, "lun.raw")
        with open(lun, "wb") as f:
            f.truncate(TOTAL)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        control = random.randint(10000, 32000)
        tgtd = spawn(["tgtd", "-f", "-C", str(control), "--iscsi", f"portal=127.0.0.1:{port}"])
        adm = ["tgtadm", "-C", str(control), "--lld", "iscsi"]
        try:
            def up() -> bool:
                try:
                    run([*adm, "--mode", "target", "--op", "show"])
                    return True
                except CommandFailed:
                    return False
            wait_until(up, 10)
            iqn, initiator = "iqn.2010-10.org.blockyard.bench:lun", "iqn.2004-10.org.blockyard:b"
            run([*adm, "--op", "new", "--mode", "target", "--tid", "1", "-T", iqn])
            run([*adm, "--op", "new", "--mode", "logicalunit", "--tid", "1", "--lun", "1",
                 "-b", lun])
            run([*adm, "--op", "bind", "--mode", "target", "--tid", "1", "-Q", initiator])
            iinfo = parse({"driver_volume_type": "iscsi", "data": {
                "target_iqn": iqn, "target_portal": f"127.0.0.1:{port}", "target_lun": 1}})
            assert not isinstance(iinfo, NbdInfo)
            through_handle(IscsiConnector({"initiator": initiator}), iinfo, "iscsi handle")
            opts = image_opts(iinfo, initiator, None)  # type: ignore[arg-type]
            t = time.monotonic()
            run(["qemu-img", "convert", "-n", "-f", "raw", "--target-image-opts", src, opts],
                timeout=300)
            print(f"{'iscsi qemu-img convert':28} write {rate(time.monotonic() - t)}")
        finally:
            run([*adm, "--mode", "system", "--op", "delete", "--force"], ok_codes=(0, 1, 22))
            stop(tgtd)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
