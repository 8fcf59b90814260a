"""How long a guest is paused for a point-in-time snapshot of its attached volume, under TCG.

One volume service (a file backend, and rbd on a loopback Ceph unless ``--no-ceph``) and one
`blockyard compute` that boots the tiny test guest (scripts/build-test-guest). Per backend, a
1 GiB volume is attached and the guest writes numbered blocks with an fsync each
(tests/support/numbered.py) the whole time, while N snapshots are taken one after the other:

    POST /snapshots {"force": true}  →  the snapshot task asks the agent to pause the guest,
    takes the backend snapshot, asks it to resume  →  until the snapshot is available

and each snapshot is deleted again. Reported per backend, p50 and max over the N:

    paused     the agent's measure: from before QMP ``stop`` to after ``cont`` returned
    snapshot   the part of it the backend took (`staged_snapshot`'s instant), in the service
    service    the volume service's: from sending the pause to the resume's answer
    available  the client's: from POST /snapshots until GET shows it available

    .venv/bin/python bench/assisted_snapshot.py [--snapshots 20] [--no-ceph]

Target (issue 13): paused p50 ≤ 50 ms. Prints PASS/MISS; exits non-zero only on errors.
"""

from __future__ import annotations

import argparse
import contextlib
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _harness import percentile  # noqa: E402
from tests.support.ceph import CephCluster, missing_packages  # noqa: E402
from tests.support.compute import (  # noqa: E402
    ComputeServer,
    GuestConsole,
    build_test_guest,
)
from tests.support.compute import (
    compute_config as agent_config,
)
from tests.support.numbered import NumberedWriter  # noqa: E402
from tests.support.server import Server, free_port  # noqa: E402

TARGET_P50_MS = 50.0
_PAUSED = re.compile(r"snapshot (\S+) of volume \S+: guests \S+ paused ([\d.]+) ms "
                     r"\(([\d.]+) ms from the pause request to the resume's answer, "
                     r"([\d.]+) ms of them the snapshot itself\)")


class InfoServer(Server):
    """The volume service at log level INFO: it logs each snapshot's pause."""

    def _argv(self) -> list[str]:
        return [*super()._argv(), "--log-level", "info"]


def config(agent_port: int, ceph: CephCluster | None) -> str:
    text = '[backends.local]\ndriver = "file"\n'
    if ceph is not None:
        o = ceph.driver_options()
        text += (f'[backends.rbd]\ndriver = "rbd"\ntarget = "rbd"\npool = "{o["pool"]}"\n'
                 f'user = "{o["user"]}"\nconf = "{o["conf"]}"\nkeyring = "{o["keyring"]}"\n')
    return text + f'[compute]\nurl = "http://127.0.0.1:{agent_port}/v2.1"\n'


@contextlib.contextmanager
def maybe_ceph(work: Path, enabled: bool) -> Iterator[CephCluster | None]:
    reason = "--no-ceph" if not enabled else missing_packages()
    if reason is not None:
        print(f"rbd skipped: {reason}")
        yield None
        return
    with CephCluster(work / "ceph") as ceph:
        print(f"Ceph up in {ceph.start_seconds:.1f} s")
        yield ceph


Sample = tuple[float, float, float, float]  # paused ms, service ms, available s, snapshot ms


def run(work: Path, image: dict[str, str], ceph: CephCluster | None,
        snapshots: int) -> dict[str, list[Sample]]:
    agent_port = free_port()
    volumes = InfoServer(work / "volumes", config=config(agent_port, ceph)).start()
    agent = ComputeServer(work / "agent", port=agent_port, config=agent_config(
        volumes.url, images={"tiny": image})).start()
    api, nova = volumes.client(), agent.nova()
    backends = ["local"] + (["rbd"] if ceph is not None else [])
    results: dict[str, list[Sample]] = {}
    try:
        for name in backends:
            r = api.post("/types", {"volume_type": {
                "name": name, "extra_specs": {"volume_backend_name": name}}})
            assert r.status_code == 200, r.text
        server = nova.create("bench", "tiny")
        console = GuestConsole(server["blockyard:console_socket"])
        for backend in backends:
            r = api.post("/volumes", {"volume": {"size": 1, "volume_type": backend}})
            vid = r.json()["volume"]["id"]
            api.wait_volume(vid, "available", timeout=120)
            assert nova.attach(server["id"], vid).status_code == 200
            api.wait_volume(vid, "in-use", timeout=60)
            writer = NumberedWriter(console, console.wait_disk(vid, timeout=60))
            writer.start()
            samples = []
            for _ in range(snapshots):
                t0 = time.perf_counter()
                r = api.post("/snapshots", {"snapshot": {"volume_id": vid, "force": True}})
                assert r.status_code == 202, r.text
                sid = r.json()["snapshot"]["id"]
                api.wait_snapshot(sid, "available", timeout=120)
                available = time.perf_counter() - t0
                paused, service, instant = _pause_of(volumes, sid)
                samples.append((paused, service, available, instant))
                assert api.delete(f"/snapshots/{sid}").status_code == 202
                api.wait_snapshot(sid, "deleted", timeout=120)
            written = writer.stop()
            assert written.error is None and not written.io_errors, written
            results[backend] = samples
            nova.detach(server["id"], vid, wait=120)
        console.close()
        nova.delete(server["id"])
    finally:
        agent.stop()
        volumes.stop()
    return results


def _pause_of(volumes: Server, snapshot_id: str) -> tuple[float, float, float]:
    for match in _PAUSED.finditer(volumes.log()):
        if match[1] == snapshot_id:
            return float(match[2]), float(match[3]), float(match[4])
    raise AssertionError(f"snapshot {snapshot_id}: no pause in the volume service's log")


def ms(values: list[float]) -> str:
    return f"p50 {percentile(values, 50):7.1f} ms  max {max(values):7.1f} ms"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--snapshots", type=int, default=20)
    parser.add_argument("--no-ceph", action="store_true", help="the file backend only")
    parser.add_argument("--dir", default="/var/tmp")
    args = parser.parse_args()
    image = build_test_guest()
    work = Path(tempfile.mkdtemp(prefix="blockyard-asnap-", dir=args.dir))
    try:
        with maybe_ceph(work, not args.no_ceph) as ceph:
            results = run(work, image, ceph, args.snapshots)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"\nassisted snapshots of an attached 1 GiB volume, the TCG guest writing numbered "
          f"fsynced blocks meanwhile; {args.snapshots} snapshots per backend")
    met = 0
    for backend, samples in results.items():
        paused = [s[0] for s in samples]
        ok = percentile(paused, 50) <= TARGET_P50_MS
        met += ok
        print(f"  {backend:6} paused    {ms(paused)}   {'PASS' if ok else 'MISS'} "
              f"(target p50 ≤ {TARGET_P50_MS:g} ms)")
        print(f"  {'':6} snapshot  {ms([s[3] for s in samples])}   (the driver's part of "
              f"the pause)")
        print(f"  {'':6} service   {ms([s[1] for s in samples])}")
        print(f"  {'':6} available {ms([s[2] * 1000 for s in samples])}")
    print(f"\n{met} of {len(results)} targets met")
    return 0


if __name__ == "__main__":
    sys.exit(main())
