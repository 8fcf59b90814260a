"""Time the migration copy engine against qemu-img convert, cp and dd, on the same sources.

Two volumes, the shapes the migration issue names:

* a 4 GiB sparse volume with 256 MiB of data in 64 scattered 4 MiB extents;
* a 1 GiB volume full of data.

Each is copied file→file by

* blockyard: what a migration does — FileDriver.create_volume on the destination, open_volume
  on both sides, `blockyard.backends.transfer.copy_volume`, close_volume (fsync);
* ``qemu-img convert -O raw`` (sparse-aware, the usual tool), then fsync;
* ``cp --sparse=always``, then fsync;
* ``dd bs=1M iflag=direct oflag=direct conv=fsync``: what Cinder's generic migration runs
  (volume_utils.copy_volume; it adds conv=sparse only for drivers that ask for it).

Every copy is fsynced, so all of them are timed to durability. The source stays in the page
cache for all of them (written just before). Each copy runs `--repeat` times (dd once: it is
the slow baseline) and the best time is reported, with MiB/s of the volume size, the ratio to
blockyard and the destination's allocated size. blockyard's verification (checksum of both
sides, part of every migration) is timed separately.

Targets: blockyard ≤ 1.0× qemu-img convert and ≤ 1.3× cp; the sparse copy ≥ 10× faster than dd.

    .venv/bin/python bench/migrate.py [--dir /var/tmp] [--repeat 3]

Hook for other backend pairs (file→rbd): add a `Method` to `methods()` whose `run` copies the
source path to a destination of its own and returns the destination's allocated bytes (e.g.
RbdDriver.create_volume + open_volume + copy_volume for blockyard, ``qemu-img convert -W -m 16
-O raw src rbd:pool/image`` for qemu-img); the table picks it up.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass

from blockyard.backends import transfer
from blockyard.backends.base import VolumeRef
from blockyard.backends.file import FileDriver
from blockyard.backends.sparse import allocated_bytes

MiB = 1024**2
GiB = 1024**3


@dataclass(frozen=True)
class Method:
    label: str
    #: copy the source volume (its path) to a new destination; returns the seconds the copy
    #: took (to durability; removing the destination afterwards is not timed) and the
    #: destination's allocated bytes
    run: Callable[[str, int], tuple[float, int]]
    repeat: bool = True


def _fsync(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _tool(argv: Callable[[str, str], list[str]],
          work: str) -> Callable[[str, int], tuple[float, int]]:
    def run(src: str, size_gb: int) -> tuple[float, int]:
        dst = os.path.join(work, "tool-copy")
        t0 = time.perf_counter()
        subprocess.run(argv(src, dst), check=True, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)
        _fsync(dst)
        seconds = time.perf_counter() - t0
        allocated = allocated_bytes(dst)
        os.unlink(dst)
        return seconds, allocated

    return run


def methods(work: str, driver: FileDriver, source: dict[str, VolumeRef]) -> list[Method]:
    counter = iter(range(1_000_000))

    def blockyard(src_path: str, size_gb: int) -> tuple[float, int]:
        src = source[src_path]
        dst = VolumeRef(id=f"dst-{next(counter)}", size_gb=size_gb)
        t0 = time.perf_counter()
        driver.create_volume(dst)
        s = driver.open_volume(src, "rb")
        d = driver.open_volume(dst, "r+b")
        try:
            transfer.copy_volume(s, d, size_gb * GiB)
        finally:
            driver.close_volume(dst, d)
            driver.close_volume(src, s)
        seconds = time.perf_counter() - t0
        allocated = allocated_bytes(driver.volume_path(dst))
        driver.delete_volume(dst)
        return seconds, allocated

    return [
        Method("blockyard copy_volume", blockyard),
        Method("qemu-img convert", _tool(
            lambda s, d: ["qemu-img", "convert", "-f", "raw", "-O", "raw", s, d], work)),
        Method("cp --sparse=always", _tool(lambda s, d: ["cp", "--sparse=always", s, d], work)),
        Method("dd bs=1M (Cinder)", _tool(
            lambda s, d: ["dd", f"if={s}", f"of={d}", "bs=1M", "iflag=direct", "oflag=direct",
                          "conv=fsync"], work), repeat=False),
    ]


def make_sources(driver: FileDriver) -> list[tuple[str, VolumeRef, int]]:
    sparse = VolumeRef(id="sparse-4g", size_gb=4)
    full = VolumeRef(id="full-1g", size_gb=1)
    driver.create_volume(sparse)
    driver.create_volume(full)
    data = os.urandom(4 * MiB)
    with open(driver.volume_path(sparse), "r+b", buffering=0) as f:
        stride = 4 * GiB // 64
        for i in range(64):  # 256 MiB in 64 extents, not aligned to the stride
            os.pwrite(f.fileno(), data, i * stride + (i % 7) * 64 * 1024)
        os.fsync(f.fileno())
    with open(driver.volume_path(full), "r+b", buffering=0) as f:
        for i in range(GiB // len(data)):
            os.pwrite(f.fileno(), data[i % 4096:] + data[:i % 4096], i * len(data))
        os.fsync(f.fileno())
    return [("4 GiB sparse, 256 MiB data", sparse, 256 * MiB),
            ("1 GiB full", full, GiB)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dir", default="/var/tmp", help="where the volumes go (a real disk)")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    work = tempfile.mkdtemp(prefix="blockyard-bench-migrate-", dir=args.dir)
    try:
        driver = FileDriver("bench", {"path": os.path.join(work, "vols")})
        driver.do_setup()
        sources = make_sources(driver)
        by_path = {driver.volume_path(ref): ref for _, ref, _ in sources}
        table = methods(work, driver, by_path)
        failed = []
        for title, ref, data in sources:
            path = driver.volume_path(ref)
            print(f"\n{title}: source allocated {allocated_bytes(path) / MiB:.1f} MiB "
                  f"({args.dir})")
            times: dict[str, float] = {}
            for m in table:
                best, alloc = float("inf"), 0
                for _ in range(args.repeat if m.repeat else 1):
                    seconds, alloc = m.run(path, ref.size_gb)
                    best = min(best, seconds)
                times[m.label] = best
                ratio = best / times[table[0].label]
                print(f"  {m.label:24} {best:7.3f} s  {ref.size_gb * GiB / MiB / best:8.0f} MiB/s"
                      f"  {ratio:6.2f}x blockyard  allocated {alloc / MiB:8.1f} MiB")
            handle = driver.open_volume(ref, "rb")
            t0 = time.perf_counter()
            transfer.checksum(handle, ref.size_gb * GiB)
            handle.close()
            print(f"  {'(verify: checksum, one side)':24} {time.perf_counter() - t0:7.3f} s")
            ours = times[table[0].label]
            vs_qemu = ours / times["qemu-img convert"]
            vs_cp = ours / times["cp --sparse=always"]
            vs_dd = times["dd bs=1M (Cinder)"] / ours
            print(f"  blockyard/qemu-img {vs_qemu:.2f} (target ≤ 1.0), blockyard/cp {vs_cp:.2f} "
                  f"(target ≤ 1.3), dd/blockyard {vs_dd:.1f}"
                  + (" (target ≥ 10)" if data < ref.size_gb * GiB else ""))
            if vs_qemu > 1.0 or vs_cp > 1.3 or (data < ref.size_gb * GiB and vs_dd < 10):
                failed.append(title)
        print("\ntargets: " + ("met" if not failed else f"MISSED for {', '.join(failed)}"))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
