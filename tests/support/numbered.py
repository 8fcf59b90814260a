"""A guest that writes numbered blocks and fsyncs each, to check what a copy really holds.

The writer runs in the test guest's background (scripts/build-test-guest): for i = 0, 1, ...
it writes block i — `BLOCK` bytes at offset i * BLOCK, the line ``%08d\\n`` of i repeated
512 times — with ``conv=fsync``, and records i as *acknowledged* only after dd returned: the
data is then on the volume (the flush went through), whatever happens to the disk under it
afterwards (a swap, a migration, a snapshot). A failed write stops it and is reported.

Reading back (`read_numbers`) gives, per block in order, the number it holds: a copy taken at
any instant must read as a *prefix* 0, 1, ..., k-1 followed by nothing but zeros
(`check_prefix`); a block that holds two numbers or part of one is torn, a gap is a lost write.
A block is 9 sectors (4608 bytes), so the lines never straddle blocks.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from tests.support.compute import GuestConsole

#: bytes per numbered block: 512 lines of "%08d\n"
BLOCK = 512 * 9
_STATE = "/tmp/numbered"
_COUNTED = re.compile(r"^\s*(\d+) (\d{8})$")


@dataclass(frozen=True)
class Written:
    #: the last block acknowledged to the guest (-1: none)
    acked: int
    #: why the writer stopped early (dd's message), None if it was stopped
    error: str | None
    #: the guest kernel's I/O error lines (dmesg), if any
    io_errors: list[str]

    @property
    def count(self) -> int:
        """How many blocks were acknowledged (they are 0 .. count-1)."""
        return self.acked + 1


class NumberedWriter:
    """The background writer on `device` inside the guest behind `console`."""

    def __init__(self, console: GuestConsole, device: str) -> None:
        self.console = console
        self.device = device

    def start(self) -> None:
        s = _STATE
        self.console.check(f"rm -rf {s} && mkdir -p {s} && touch {s}/go && dmesg -c >/dev/null")
        loop = (f"i=0; while [ -e {s}/go ]; do "
                f"yes $(printf %08d $i) | head -n 512 > {s}/blk; "
                f"if dd if={s}/blk of={self.device} bs={BLOCK} seek=$i count=1 "
                f"conv=notrunc,fsync 2>{s}/err; then echo $i > {s}/a.new; mv {s}/a.new {s}/acked; "
                f"else cp {s}/err {s}/failed; break; fi; i=$((i+1)); done; touch {s}/done")
        self.console.check(f"( {loop} ) </dev/null >/dev/null 2>&1 &")

    def acked(self) -> int:
        """The last acknowledged block so far (-1: none yet), while the writer runs (the
        writer renames the number into place, so it is never read half-written)."""
        out = self.console.check(f"cat {_STATE}/acked 2>/dev/null || echo -1")
        return int(out.split()[-1])

    def wait_acked(self, at_least: int, timeout: float = 120.0) -> int:
        """Wait until block `at_least` is acknowledged (the writer is really going)."""
        import time

        deadline = time.monotonic() + timeout
        while (n := self.acked()) < at_least:
            if time.monotonic() > deadline:
                raise AssertionError(f"the guest acknowledged only up to block {n}")
            time.sleep(0.2)
        return n

    def stop(self, timeout: float = 60.0) -> Written:
        """Stop the writer, wait for it, and say how far it got and whether it failed."""
        s = _STATE
        self.console.check(f"rm -f {s}/go; n=0; while [ ! -e {s}/done ]; do sleep 0.1; "
                           f"n=$((n+1)); [ $n -gt {int(timeout * 10)} ] && exit 1; done; true",
                           timeout=timeout + 10)
        acked = self.acked()
        failed = self.console.check(f"cat {s}/failed 2>/dev/null; true")
        errors = [line for line in self.console.check("dmesg").splitlines()
                  if "error" in line.lower()]
        return Written(acked, failed.strip() or None, errors)


def read_numbers(console: GuestConsole, device: str, count: int) -> list[tuple[int, int]]:
    """The first `count` blocks of `device` as the guest reads them: (how many lines, number)
    per run of equal lines, in order. Zeros are dropped, so unwritten blocks read as nothing."""
    out = console.check(f"dd if={device} bs={BLOCK} count={count} iflag=direct 2>/dev/null "
                        f"| tr -d '\\000' | uniq -c", timeout=300)
    runs = []
    for line in out.splitlines():
        if not line.strip():
            continue
        match = _COUNTED.match(line)
        if match is None:
            raise AssertionError(f"block data that no writer wrote: {line[:80]!r}")
        runs.append((int(match[1]), int(match[2])))
    return runs


def check_prefix(runs: list[tuple[int, int]]) -> int:
    """The number of whole blocks 0, 1, ..., k-1 at the start; AssertionError when anything
    else is there (a torn block, a gap, a block out of place)."""
    for index, (lines, number) in enumerate(runs):
        if number != index or lines != 512:
            raise AssertionError(f"block {index} holds {lines} lines of {number:08d}: "
                                 f"torn or lost (expected 512 lines of {index:08d})")
    return len(runs)



class LatencyProbe:
    """Measures the guest's I/O stalls: a background loop of 4 KiB direct, fsynced writes
    to `device` (within its first MiB), each timed by the guest's own monotonic clock
    (``now at ... nsecs`` of /proc/timer_list, read with shell builtins only). The longest
    write is the longest stall the guest saw; the median is what a write costs anyway."""

    _DIR = "/tmp/latency"

    def __init__(self, console: GuestConsole, device: str) -> None:
        self.console = console
        self.device = device

    def start(self) -> None:
        s = self._DIR
        now = "{ read a; read b; read c; } </proc/timer_list; c=${c#now at }; "
        self.console.check(f"rm -rf {s} && mkdir -p {s} && touch {s}/go")
        loop = (f"i=0; while [ -e {s}/go ]; do {now}t0=${{c% nsecs}}; "
                f"dd if=/dev/zero of={self.device} bs=4096 count=1 seek=$((i % 256)) "
                f"oflag=direct conv=notrunc,fsync 2>/dev/null || echo $i >> {s}/failed; "
                f"{now}echo $(( ${{c% nsecs}} - t0 )) >> {s}/ns; i=$((i+1)); done; "
                f"touch {s}/done")
        self.console.check(f"( {loop} ) </dev/null >/dev/null 2>&1 &")

    def stop(self, timeout: float = 60.0) -> tuple[list[float], int]:
        """Stop; the seconds each write took, in order, and how many writes failed."""
        s = self._DIR
        self.console.check(f"rm -f {s}/go; n=0; while [ ! -e {s}/done ]; do sleep 0.1; "
                           f"n=$((n+1)); [ $n -gt {int(timeout * 10)} ] && exit 1; done; true",
                           timeout=timeout + 10)
        took = [int(n) / 1e9 for n in self.console.check(f"cat {s}/ns").split()]
        failed = len(self.console.check(f"cat {s}/failed 2>/dev/null; true").split())
        return took, failed


__all__ = ["BLOCK", "LatencyProbe", "NumberedWriter", "Written", "check_prefix", "read_numbers"]
