"""Attach/detach through the attachments API with real targets, and data through the handles.

One `blockyard serve` with two file backends, one exported by tgt (iSCSI, CHAP) and one by
qemu-nbd, measured three ways:

(a) attach/detach cycles per second, NBD and iSCSI apart: N clients (threads, one keep-alive
    connection each) on distinct volumes loop for a bounded time over
    POST /attachments (with a connector) → POST os-complete → DELETE /attachments/{id}.
(b) the legacy ``os-initialize_connection`` action on an export that exists already
    (reserved volume), repeated; p50/p95.
(c) a 1 GiB sequential write and read through each connector's `VolumeHandle`
    (`connector_for(...).open(info, "r+b")`), next to ``qemu-img convert`` over the same export
    in the same run: ``-n`` from a 1 GiB file of random data (tmpfs) into the export URI
    (``nbd+unix:///EXPORT?socket=...``; for iSCSI ``--target-image-opts driver=iscsi,...``
    with the CHAP secret in a ``--object secret,file=`` file), and back into a raw file on
    tmpfs. The export is written once, unmeasured, first (a sparse file is slower to write
    the first time, whoever writes it); then every round measures qemu-img and the handle
    alternately, and the best round of each counts.

    .venv/bin/python bench/attach.py [--clients 4] [--seconds 10] [--init-repeats 200]
                                     [--size-gib 1] [--chunk-mib 4] [--rounds 3]
                                     [--skip cycles,init,throughput] [--dir /var/tmp]

Targets (2 cores): >= 20 cycles/s NBD, >= 10 iSCSI; os-initialize_connection p50 < 5 ms;
handle >= 0.8x qemu-img, write and read. Prints PASS/MISS per target; exits non-zero only when
something fails (an error, not a missed target).
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections import defaultdict
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import Client, blockyard_server, cpu_seconds, free_port, percentile  # noqa: E402

from blockyard.connectors import connector_for  # noqa: E402
from blockyard.connectors import iscsi as iscsi_connector  # noqa: E402
from blockyard.connectors import nbd as nbd_connector  # noqa: E402
from blockyard.connectors.iscsi import image_opts  # noqa: E402
from blockyard.model import ConnectionInfo, IscsiInfo, NbdInfo, parse  # noqa: E402

MiB = 1024 * 1024
TARGET_CYCLES = {"nbd": 20.0, "iscsi": 10.0}
TARGET_INIT_P50_MS = 5.0
TARGET_RATIO = 0.8
INSTANCE = "11111111-2222-3333-4444-555555555555"
PROTOCOLS = ("nbd", "iscsi")


class BenchError(Exception):
    pass


def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def config(control_port: int) -> str:
    return f"""
[quota]
volumes = 100000
gigabytes = 10000000
[backends.iscsi]
driver = "file"
target = "iscsi"
[backends.nbd]
driver = "file"
target = "nbd"
[targets.iscsi]
portal = "127.0.0.1:{free_port()}"
control_port = {control_port}
"""


def control_port() -> int:
    while True:  # tgtd's control "port" names an abstract unix socket; below 32768
        port = random.randint(10000, 32000)
        if not Path(f"/var/run/tgtd/socket.{port}").exists():
            return port


def connector_props(name: str) -> dict[str, Any]:
    return {"initiator": f"iqn.2004-10.org.blockyard:{name}", "host": name,
            "ip": "127.0.0.1", "platform": "x86_64", "os_type": "linux", "multipath": False}


def call(client: Client, method: str, path: str, body: Any = None,
         expect: tuple[int, ...] = (200,)) -> tuple[Any, float]:
    status, data, dt, _ = client.call(method, path, body)
    if status not in expect:
        raise BenchError(f"{method} {path} → {status}: {data}")
    return data, dt


def create_volume(client: Client, volume_type: str, size_gib: int) -> str:
    data, _ = call(client, "POST", "/v3/volumes",
                   {"volume": {"size": size_gib, "volume_type": volume_type}}, (202,))
    vid: str = data["volume"]["id"]
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        data, _ = call(client, "GET", f"/v3/volumes/{vid}")
        status = data["volume"]["status"]
        if status == "available":
            return vid
        if status.startswith("error"):
            raise BenchError(f"volume {vid} went {status}")
        time.sleep(0.01)
    raise BenchError(f"volume {vid} never became available")


def setup_types(client: Client) -> None:
    for name in PROTOCOLS:
        call(client, "POST", "/v3/types", {"volume_type": {
            "name": name, "extra_specs": {"volume_backend_name": name}}})


def attach(client: Client, volume_id: str, props: dict[str, Any]) -> tuple[str, ConnectionInfo]:
    data, _ = call(client, "POST", "/v3/attachments", {"attachment": {
        "volume_uuid": volume_id, "instance_uuid": INSTANCE, "connector": props}})
    att = data["attachment"]
    call(client, "POST", f"/v3/attachments/{att['id']}/action", {"os-complete": None}, (204,))
    info = dict(att["connection_info"])
    return att["id"], parse({"driver_volume_type": info.pop("driver_volume_type"), "data": info})


# ---------------------------------------------------------------------------- (a) cycles


class Cycler(threading.Thread):
    def __init__(self, port: int, volume_id: str, props: dict[str, Any],
                 barrier: threading.Barrier, seconds: float) -> None:
        super().__init__(daemon=True)
        self.client = Client(port, "admin:admin")
        self.volume_id = volume_id
        self.props = props
        self.barrier = barrier
        self.seconds = seconds
        self.samples: dict[str, list[float]] = defaultdict(list)
        self.cycles = 0
        self.error: str | None = None

    def cycle(self, record: bool) -> None:
        t0 = time.perf_counter()
        data, dt_post = call(self.client, "POST", "/v3/attachments", {"attachment": {
            "volume_uuid": self.volume_id, "instance_uuid": INSTANCE,
            "connector": self.props}})
        att = data["attachment"]
        if not att.get("connection_info"):
            raise BenchError(f"attachment {att['id']} has no connection_info")
        _, dt_complete = call(self.client, "POST", f"/v3/attachments/{att['id']}/action",
                              {"os-complete": None}, (204,))
        _, dt_delete = call(self.client, "DELETE", f"/v3/attachments/{att['id']}")
        if record:
            self.samples["POST /attachments"].append(dt_post)
            self.samples["os-complete"].append(dt_complete)
            self.samples["DELETE"].append(dt_delete)
            self.samples["cycle"].append(time.perf_counter() - t0)

    def run(self) -> None:
        try:
            self.cycle(False)  # warm-up
        except Exception as exc:  # noqa: BLE001
            self.error = f"{type(exc).__name__}: {exc}"
            self.barrier.abort()
            return
        try:
            self.barrier.wait()
        except threading.BrokenBarrierError:
            return
        end = time.monotonic() + self.seconds
        try:
            while time.monotonic() < end:
                self.cycle(True)
                self.cycles += 1
        except Exception as exc:  # noqa: BLE001
            self.error = f"{type(exc).__name__}: {exc}"


def bench_cycles(srv_pid: int, port: int, protocol: str, volumes: list[str],
                 args: argparse.Namespace) -> bool:
    barrier = threading.Barrier(len(volumes) + 1)
    workers = [Cycler(port, vid, connector_props(f"cycler{i}"), barrier, args.seconds)
               for i, vid in enumerate(volumes)]
    for w in workers:
        w.start()
    try:
        barrier.wait(timeout=120)
    except threading.BrokenBarrierError:
        pass
    cpu0, t0 = cpu_seconds(srv_pid), time.monotonic()
    for w in workers:
        w.join()
    wall = time.monotonic() - t0
    cpu = cpu_seconds(srv_pid) - cpu0
    errors = [w.error for w in workers if w.error]
    if errors:
        raise BenchError(f"{protocol} cycles: {errors[0]}")
    cycles = sum(w.cycles for w in workers)
    rate = cycles / wall
    merged: dict[str, list[float]] = defaultdict(list)
    for w in workers:
        for k, v in w.samples.items():
            merged[k].extend(v)
    ok = rate >= TARGET_CYCLES[protocol]
    print(f"\n(a) {protocol}: {cycles} attach/detach cycles in {wall:.1f} s by {len(volumes)} "
          f"clients = {rate:.1f} cycles/s; server CPU {cpu:.1f} s "
          f"({cpu / max(cycles, 1) * 1e3:.1f} ms/cycle)")
    print(f"    {'call':<20}{'n':>6}{'p50 ms':>9}{'p95 ms':>9}{'max ms':>9}")
    for name in ("POST /attachments", "os-complete", "DELETE", "cycle"):
        v = merged[name]
        print(f"    {name:<20}{len(v):>6}{percentile(v, 50) * 1e3:9.2f}"
              f"{percentile(v, 95) * 1e3:9.2f}{max(v, default=float('nan')) * 1e3:9.2f}")
    print(f"    {verdict(ok)}: {protocol} cycles/s {rate:.1f} (target >= "
          f"{TARGET_CYCLES[protocol]:g})")
    for w in workers:
        w.client.close()
    return ok


# ---------------------------------------------------------------------------- (b) legacy


def bench_initialize(client: Client, volume_id: str, repeats: int) -> bool:
    act = f"/v3/volumes/{volume_id}/action"
    props = connector_props("legacy")
    call(client, "POST", act, {"os-reserve": None}, (202,))
    first, _ = call(client, "POST", act, {"os-initialize_connection": {"connector": props}})
    samples = []
    for _ in range(repeats):
        again, dt = call(client, "POST", act, {"os-initialize_connection": {"connector": props}})
        if again != first:
            raise BenchError("os-initialize_connection answered differently on a repeat")
        samples.append(dt)
    call(client, "POST", act, {"os-terminate_connection": {"connector": props}}, (202,))
    call(client, "POST", act, {"os-unreserve": None}, (202,))
    p50, p95 = percentile(samples, 50) * 1e3, percentile(samples, 95) * 1e3
    ok = p50 < TARGET_INIT_P50_MS
    print(f"\n(b) os-initialize_connection on an existing nbd export, {repeats} times: "
          f"p50 {p50:.2f} ms, p95 {p95:.2f} ms, max {max(samples) * 1e3:.2f} ms")
    print(f"    {verdict(ok)}: p50 {p50:.2f} ms (target < {TARGET_INIT_P50_MS:g} ms)")
    return ok


# ---------------------------------------------------------------------------- (c) data


def run_timed(argv: list[str]) -> float:
    t0 = time.monotonic()
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=600)
    dt = time.monotonic() - t0
    if proc.returncode:
        raise BenchError(f"{argv[:3]} failed ({proc.returncode}): {proc.stderr.strip()}")
    return dt


class QemuImg:
    """qemu-img convert into and out of one export, as QEMU itself would open it."""

    def __init__(self, info: ConnectionInfo, props: dict[str, Any], work: Path, cache: str) -> None:
        self.objects: list[str] = []
        self.cache = cache
        if isinstance(info, NbdInfo):
            self.target = ["-O", "raw", info.uri]
            self.source = ["-f", "raw", info.uri]
        elif isinstance(info, IscsiInfo):
            secret_id = None
            if info.auth_method == "CHAP":
                secret = work / "chap.secret"
                secret.touch(mode=0o600)
                secret.write_text(info.auth_password or "")
                secret_id = "chap0"
                self.objects = ["--object", f"secret,id={secret_id},file={secret}"]
            opts = image_opts(info, props["initiator"], secret_id)
            self.target = ["--target-image-opts", opts]
            self.source = ["--image-opts", opts]
        else:
            raise BenchError(f"no qemu-img form for {info.protocol}")

    def write(self, src: Path) -> float:
        return run_timed(["qemu-img", "convert", "-n", "-t", self.cache, *self.objects,
                          "-f", "raw", str(src), *self.target])

    def read(self, dst: Path) -> float:
        dst.unlink(missing_ok=True)
        dt = run_timed(["qemu-img", "convert", *self.objects, *self.source, "-O", "raw",
                        str(dst)])
        dst.unlink(missing_ok=True)
        return dt


def handle_write(info: ConnectionInfo, props: dict[str, Any], run_dir: Path, src: Path,
                 chunk: int) -> float:
    conn = connector_for(info, props, run_dir=str(run_dir))
    with conn.open(info, "r+b") as f, open(src, "rb", buffering=0) as s:
        t0 = time.monotonic()
        while data := s.read(chunk):
            f.write(data)
        f.flush()
        dt = time.monotonic() - t0
    return dt


def handle_read(info: ConnectionInfo, props: dict[str, Any], run_dir: Path, size: int,
                chunk: int) -> float:
    conn = connector_for(info, props, run_dir=str(run_dir))
    buf = bytearray(chunk)
    total = 0
    with conn.open(info, "rb") as f:
        t0 = time.monotonic()
        while n := f.readinto(buf):
            total += n
        dt = time.monotonic() - t0
    if total != size:
        raise BenchError(f"read {total} bytes of {size}")
    return dt


def bench_throughput(client: Client, protocol: str, args: argparse.Namespace, work: Path,
                     src: Path, shm: Path) -> bool:
    size = args.size_gib * 1024 * MiB
    chunk = args.chunk_mib * MiB
    vid = create_volume(client, protocol, args.size_gib)
    props = connector_props(f"data-{protocol}")
    att_id, info = attach(client, vid, props)
    run_dir = Path(tempfile.mkdtemp(prefix="bya-", dir="/tmp"))  # short: unix sockets
    try:
        qemu = QemuImg(info, props, run_dir, args.qemu_cache)
        qemu.write(src)  # allocate the sparse file, unmeasured
        best: dict[str, float] = {}
        for _ in range(args.rounds):
            for name, fn in (
                ("qemu-img write", lambda: qemu.write(src)),
                ("handle write", lambda: handle_write(info, props, run_dir, src, chunk)),
                ("qemu-img read", lambda: qemu.read(shm / "read.raw")),
                ("handle read", lambda: handle_read(info, props, run_dir, size, chunk)),
            ):
                dt = fn()
                best[name] = min(best.get(name, dt), dt)
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)
        call(client, "DELETE", f"/v3/attachments/{att_id}")
    mibs = {k: size / MiB / v for k, v in best.items()}
    ok = True
    print(f"\n(c) {protocol}: {args.size_gib} GiB sequential, {args.chunk_mib} MiB per "
          f"handle call, best of {args.rounds} rounds; qemu-img convert -t {args.qemu_cache}")
    for op in ("write", "read"):
        h, q = mibs[f"handle {op}"], mibs[f"qemu-img {op}"]
        ratio = h / q
        ok &= ratio >= TARGET_RATIO
        print(f"    {op:<6} handle {h:8.1f} MiB/s   qemu-img convert {q:8.1f} MiB/s   "
              f"ratio {ratio:5.2f}  {verdict(ratio >= TARGET_RATIO)} (target >= "
              f"{TARGET_RATIO:g}x)")
    return ok


# ---------------------------------------------------------------------------- main


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--init-repeats", type=int, default=200)
    parser.add_argument("--size-gib", type=int, default=1)
    parser.add_argument("--chunk-mib", type=int, default=4,
                        help="bytes per handle write()/readinto() call (default 4 MiB)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--qemu-cache", default="writeback",
                        help="qemu-img convert -t for the export it writes (default writeback: "
                             "it flushes at the end, as the handle's flush does; qemu-img's "
                             "own default, unsafe, never flushes)")
    parser.add_argument("--skip", default="", help="comma list of: cycles, init, throughput")
    parser.add_argument("--protocols", default="nbd,iscsi")
    parser.add_argument("--dir", default="/var/tmp", help="parent of the state directory")
    parser.add_argument("--request-kib", type=int, default=0,
                        help="override the handles' request size, nbd and iscsi (experiments)")
    parser.add_argument("--depth", type=int, default=0,
                        help="override the handles' requests in flight, nbd and iscsi "
                             "(experiments)")
    args = parser.parse_args()
    if args.request_kib:
        nbd_connector.REQUEST = args.request_kib * 1024
        iscsi_connector._BridgedHandle.request_size = args.request_kib * 1024
    if args.depth:
        nbd_connector.DEPTH = args.depth
        iscsi_connector._BridgedHandle.depth = args.depth
    skip = {s for s in args.skip.split(",") if s}
    protocols = [p for p in args.protocols.split(",") if p]

    work = Path(tempfile.mkdtemp(prefix="blockyard-attach-", dir=args.dir))
    shm = Path(tempfile.mkdtemp(prefix="blockyard-attach-", dir="/dev/shm"))
    results: list[bool] = []
    failed = False
    srv = blockyard_server(work / "state", config=config(control_port()))
    try:
        srv.start()
        print(f"blockyard pid {srv.pid} on :{srv.port}, state in {work / 'state'}; "
              f"{os.cpu_count()} cores")
        client = Client(srv.port, "admin:admin")
        setup_types(client)
        if "cycles" not in skip:
            for protocol in protocols:
                volumes = [create_volume(client, protocol, 1) for _ in range(args.clients)]
                results.append(bench_cycles(srv.pid, srv.port, protocol, volumes, args))
        if "init" not in skip:
            results.append(bench_initialize(client, create_volume(client, "nbd", 1),
                                            args.init_repeats))
        if "throughput" not in skip:
            src = shm / "random.raw"
            with open(src, "wb") as f:
                for _ in range(args.size_gib * 1024 // 4):
                    f.write(os.urandom(4 * MiB))
            for protocol in protocols:
                results.append(bench_throughput(client, protocol, args, work, src, shm))
        client.close()
    except Exception:  # noqa: BLE001
        traceback.print_exc()
        failed = True
    finally:
        srv.stop()
        if failed and srv.log_path.exists():
            print("server log (last 40 lines):\n" + "\n".join(
                srv.log_path.read_text(errors="replace").splitlines()[-40:]))
        shutil.rmtree(shm, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)
    if failed:
        print("\nERROR: the benchmark failed (see above)")
        return 1
    print(f"\n{sum(results)} of {len(results)} targets met")
    return 0


if __name__ == "__main__":
    sys.exit(main())
