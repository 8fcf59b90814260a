"""Time the migration copy engine against qemu-img convert, cp and dd, on the same sources.

Two volumes, the shapes the migration issue names:

* a 4 GiB sparse volume with 256 MiB of data in 64 scattered 4 MiB extents;
* a 1 GiB volume full of data.

**file→file**, each source is copied by

* blockyard: what a migration does — FileDriver.create_volume on the destination, open_volume
  on both sides, `blockyard.backends.transfer.copy_volume`, close_volume (fsync);
* ``qemu-img convert -O raw`` (sparse-aware, the usual tool), then fsync;
* ``cp --sparse=always``, then fsync;
* ``dd bs=1M iflag=direct oflag=direct conv=fsync``: what Cinder's generic migration runs
  (volume_utils.copy_volume; it adds conv=sparse only for drivers that ask for it).

**file→rbd**, on a single-node Ceph the script starts on loopback (tests/support/ceph.py; skipped
with `--no-ceph` or without the Ceph packages), into an image the RbdDriver creates (layering,
exclusive-lock, object-map, fast-diff), by

* blockyard: RbdDriver.create_volume, open_volume on both sides, copy_volume, close_volume
  (waits for every write and flushes);
* ``qemu-img convert -n -W -m 16 -O raw`` into the same kind of image (created by the driver,
  in the timing as for blockyard): 16 writes in flight, out of order;
* Cinder's path for an rbd destination: os-brick's rbd connector hands over a file-like
  RBDVolumeIOWrapper and volume_utils.copy_volume reads and writes it 1 MiB at a time, one
  synchronous ``rbd.Image.write`` after the other, zeros included (here: that loop).

Every copy is made durable (fsync, rbd flush) inside the timing. The source stays in the page
cache for all of them (written just before). Each copy runs `--repeat` times (the Cinder
baselines once: they are slow) and the best time is reported, with MiB/s of the volume size,
the ratio to blockyard and the destination's allocated size (rbd: whole 4 MiB objects, as the
object map counts them). blockyard's verification (checksum of both sides, part of every
migration) is timed separately.

Targets: file→file blockyard ≤ 1.0× qemu-img convert and ≤ 1.3× cp, the sparse copy ≥ 10×
faster than dd; file→rbd blockyard ≤ 1.0× ``qemu-img convert -W -m 16``.

    .venv/bin/python bench/migrate.py [--dir /var/tmp] [--repeat 3] [--no-ceph]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.support.ceph import CephCluster, missing_packages  # noqa: E402

from blockyard.backends import transfer  # noqa: E402
from blockyard.backends.base import VolumeDriver  # noqa: E402
from blockyard.backends.file import FileDriver  # noqa: E402
from blockyard.backends.sparse import allocated_bytes  # noqa: E402
from blockyard.model import VolumeRef  # noqa: E402
from blockyard.targets.local import LocalTarget  # noqa: E402
from blockyard.targets.rbd import RbdTarget  # noqa: E402

MiB = 1024**2
GiB = 1024**3

#: copy the source volume (its path) to a new destination; returns the seconds the copy took
#: (to durability; removing the destination afterwards is not timed) and the destination's
#: allocated bytes
Run = Callable[[str, int], tuple[float, int]]


@dataclass(frozen=True)
class Method:
    label: str
    run: Run
    repeat: bool = True


@dataclass(frozen=True)
class Pair:
    """A destination kind, its copiers (blockyard's first) and its targets."""

    title: str
    methods: list[Method]
    #: the label blockyard must be at least as fast as
    at_least_qemu: str
    #: (label, at most this many times blockyard's time) that must hold
    within: tuple[tuple[str, float], ...] = ()
    #: the label the sparse copy must beat 10×
    sparse_vs: str | None = None


def _fsync(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _tool(argv: Callable[[str, str], list[str]], work: str) -> Run:
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


def _into(driver: VolumeDriver, source: FileDriver, refs: dict[str, VolumeRef],
          copy: Callable[[VolumeRef, VolumeRef], None],
          allocated: Callable[[VolumeRef], int]) -> Run:
    """A copier into a fresh volume of `driver`: create it (timed), `copy(src, dst)`, measure,
    delete."""
    counter = iter(range(1_000_000))

    def run(src_path: str, size_gb: int) -> tuple[float, int]:
        dst = VolumeRef(id=f"dst-{os.getpid()}-{next(counter)}", size_gb=size_gb)
        t0 = time.perf_counter()
        driver.create_volume(dst)
        try:
            copy(refs[src_path], dst)
            seconds = time.perf_counter() - t0
            return seconds, allocated(dst)
        finally:
            driver.delete_volume(dst)

    return run


def _copy_volume(source: FileDriver, driver: VolumeDriver) -> Callable[[VolumeRef, VolumeRef],
                                                                         None]:
    """blockyard's migration copy: open_volume on both sides, copy_volume, close_volume."""
    def copy(src: VolumeRef, dst: VolumeRef) -> None:
        s = source.open_volume(src, "rb")
        d = driver.open_volume(dst, "r+b")
        try:
            transfer.copy_volume(s, d, src.size_gb * GiB)
        finally:
            driver.close_volume(dst, d)
            source.close_volume(src, s)

    return copy


def file_methods(work: str, driver: FileDriver, refs: dict[str, VolumeRef]) -> list[Method]:
    return [
        Method("blockyard copy_volume", _into(
            driver, driver, refs, _copy_volume(driver, driver),
            lambda ref: allocated_bytes(driver.volume_path(ref)))),
        Method("qemu-img convert", _tool(
            lambda s, d: ["qemu-img", "convert", "-f", "raw", "-O", "raw", s, d], work)),
        Method("cp --sparse=always", _tool(lambda s, d: ["cp", "--sparse=always", s, d], work)),
        Method("dd bs=1M (Cinder)", _tool(
            lambda s, d: ["dd", f"if={s}", f"of={d}", "bs=1M", "iflag=direct", "oflag=direct",
                          "conv=fsync"], work), repeat=False),
    ]


def rbd_methods(ceph: CephCluster, rbd_driver: Any, source: FileDriver,
                refs: dict[str, VolumeRef]) -> list[Method]:
    import rbd  # type: ignore[import-not-found]

    def objects(ref: VolumeRef) -> int:
        handle = rbd_driver.open_volume(ref, "rb")
        try:
            return sum(e.length for e in handle.extents() if e.is_data)
        finally:
            handle.close()

    def qemu_img(src: VolumeRef, dst: VolumeRef) -> None:
        target = (f"rbd:{ceph.pool}/{dst.name}:id={ceph.client_id}:conf={ceph.conf}"
                  f":keyring={ceph.client_keyring}")
        subprocess.run(["qemu-img", "convert", "-n", "-W", "-m", "16", "-f", "raw", "-O", "raw",
                        source.volume_path(src), target], check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def cinder(src: VolumeRef, dst: VolumeRef) -> None:
        ioctx = rbd_driver._connect().open_ioctx(ceph.pool)
        image = rbd.Image(ioctx, dst.name)
        try:
            with open(source.volume_path(src), "rb") as f:
                offset = 0
                while chunk := f.read(MiB):
                    image.write(chunk, offset)
                    offset += len(chunk)
            image.flush()
        finally:
            image.close()
            ioctx.close()

    return [
        Method("blockyard copy_volume", _into(rbd_driver, source, refs,
                                              _copy_volume(source, rbd_driver), objects)),
        Method("qemu-img convert -W -m16", _into(rbd_driver, source, refs, qemu_img, objects)),
        Method("1 MiB sync loop (Cinder)", _into(rbd_driver, source, refs, cinder, objects),
               repeat=False),
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


@contextmanager
def rbd_backend(work: str, enabled: bool) -> Iterator[tuple[CephCluster, Any] | None]:
    """A single-node Ceph and an rbd driver on it, or None (saying why)."""
    reason = "--no-ceph" if not enabled else missing_packages()
    if reason is not None:
        print(f"file→rbd skipped: {reason}")
        yield None
        return
    from blockyard.backends.rbd import RbdDriver

    with CephCluster(Path(work) / "ceph") as ceph:
        print(f"Ceph up in {ceph.start_seconds:.1f} s (one mon, mgr and BlueStore OSD on "
              f"loopback, pool size 1)")
        driver = RbdDriver("ceph", ceph.driver_options(), RbdTarget())
        driver.do_setup()
        try:
            yield ceph, driver
        finally:
            driver.close()


def run_pair(pair: Pair, sources: list[tuple[str, VolumeRef, int]], source: FileDriver,
             repeat: int) -> list[str]:
    """Print the pair's table for every source; returns the titles whose targets were missed."""
    failed = []
    for title, ref, data in sources:
        path = source.volume_path(ref)
        print(f"\n{pair.title}, {title}: source allocated {allocated_bytes(path) / MiB:.1f} MiB")
        times: dict[str, float] = {}
        for m in pair.methods:
            best, alloc = float("inf"), 0
            for _ in range(repeat if m.repeat else 1):
                seconds, alloc = m.run(path, ref.size_gb)
                best = min(best, seconds)
            times[m.label] = best
            ratio = best / times[pair.methods[0].label]
            print(f"  {m.label:26} {best:7.3f} s  {ref.size_gb * GiB / MiB / best:8.0f} MiB/s"
                  f"  {ratio:6.2f}x blockyard  allocated {alloc / MiB:8.1f} MiB")
        ours = times[pair.methods[0].label]
        vs_qemu = ours / times[pair.at_least_qemu]
        verdicts = [f"blockyard/qemu-img {vs_qemu:.2f} (target ≤ 1.0)"]
        missed = vs_qemu > 1.0
        for label, most in pair.within:
            ratio = ours / times[label]
            verdicts.append(f"blockyard/{label.split()[0]} {ratio:.2f} (target ≤ {most})")
            missed |= ratio > most
        if pair.sparse_vs is not None:
            speedup = times[pair.sparse_vs] / ours
            sparse = data < ref.size_gb * GiB
            verdicts.append(f"{pair.sparse_vs.split()[0]}/blockyard {speedup:.1f}"
                            + (" (target ≥ 10)" if sparse else ""))
            missed |= sparse and speedup < 10
        print("  " + ", ".join(verdicts))
        if missed:
            failed.append(f"{pair.title} {title}")
    return failed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dir", default="/var/tmp", help="where the volumes go (a real disk)")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--no-ceph", action="store_true", help="file→file only")
    args = ap.parse_args()
    work = tempfile.mkdtemp(prefix="blockyard-bench-migrate-", dir=args.dir)
    try:
        driver = FileDriver("bench", {"path": os.path.join(work, "vols")}, LocalTarget())
        driver.do_setup()
        sources = make_sources(driver)
        refs = {driver.volume_path(ref): ref for _, ref, _ in sources}
        print(f"volumes under {args.dir}")
        for title, ref, _ in sources:
            handle = driver.open_volume(ref, "rb")
            t0 = time.perf_counter()
            transfer.checksum(handle, ref.size_gb * GiB)
            handle.close()
            print(f"verify (checksum of one side), {title}: {time.perf_counter() - t0:.3f} s")
        failed = run_pair(Pair("file→file", file_methods(work, driver, refs),
                               "qemu-img convert", (("cp --sparse=always", 1.3),),
                               "dd bs=1M (Cinder)"), sources, driver, args.repeat)
        with rbd_backend(work, not args.no_ceph) as rbd:
            if rbd is not None:
                ceph, rbd_driver = rbd
                failed += run_pair(Pair("file→rbd", rbd_methods(ceph, rbd_driver, driver, refs),
                                        "qemu-img convert -W -m16"),
                                   sources, driver, args.repeat)
        print("\ntargets: " + ("met" if not failed else f"MISSED for {'; '.join(failed)}"))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
