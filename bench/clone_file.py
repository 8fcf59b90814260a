"""Time FileDriver.create_cloned_volume against `cp --sparse=always` on the same sparse volume.

A 10 GiB volume with 100 MiB written in 25 scattered 4 MiB extents, the shape of a fresh OS
image on a big disk. The target is a clone in well under 2 s that stays thin.

    .venv/bin/python bench/clone_file.py [DIRECTORY]

The work directory defaults to one under /var/tmp (a real disk; /tmp may be tmpfs, which would
measure memory copies) and is removed afterwards.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time

from blockyard.backends.file import FileDriver
from blockyard.backends.sparse import allocated_bytes
from blockyard.model import VolumeRef
from blockyard.targets.local import LocalTarget

MiB = 1024**2
SIZE_GB = 10
EXTENTS = 25
EXTENT = 4 * MiB


def main() -> None:
    parent = sys.argv[1] if len(sys.argv) > 1 else "/var/tmp"
    work = tempfile.mkdtemp(prefix="blockyard-bench-", dir=parent)
    try:
        driver = FileDriver("bench", {"path": work}, LocalTarget())
        driver.do_setup()
        src, dst = VolumeRef(id="src", size_gb=SIZE_GB), VolumeRef(id="dst", size_gb=SIZE_GB)
        driver.create_volume(src)
        src_path = driver.volume_path(src)
        stride = SIZE_GB * 1024**3 // EXTENTS
        data = os.urandom(EXTENT)
        with open(src_path, "r+b", buffering=0) as f:
            for i in range(EXTENTS):
                os.pwrite(f.fileno(), data, i * stride + i * 64 * 1024)
            os.fsync(f.fileno())

        t0 = time.perf_counter()
        driver.create_cloned_volume(dst, src)
        t_driver = time.perf_counter() - t0

        cp_path = os.path.join(work, "cp-copy")
        t0 = time.perf_counter()
        subprocess.run(["cp", "--sparse=always", src_path, cp_path], check=True)
        fd = os.open(cp_path, os.O_RDONLY)  # the driver's clone is fsynced: make cp's durable too
        os.fsync(fd)
        os.close(fd)
        t_cp = time.perf_counter() - t0

        dst_path = driver.volume_path(dst)
        written = EXTENTS * EXTENT // MiB
        print(f"volume {SIZE_GB} GiB, {written} MiB written in {EXTENTS} extents, in {parent}")
        print(f"{'source':20} {'':>9}   allocated {allocated_bytes(src_path) / MiB:7.1f} MiB")
        for label, secs, path in (
            ("FileDriver clone", t_driver, dst_path),
            ("cp --sparse=always", t_cp, cp_path),
        ):
            print(f"{label:20} {secs:7.3f} s   allocated {allocated_bytes(path) / MiB:7.1f} MiB")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
