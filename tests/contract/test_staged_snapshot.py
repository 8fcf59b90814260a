"""`staged_snapshot` (the driver contract's snapshot in stages, for attached volumes whose
guests are paused for its instant), over every driver of the contract suite: what the volume
holds at the callable's call is the snapshot, whatever is written before the block ends."""

from __future__ import annotations

import pytest

from blockyard.errors import BlockyardError
from tests.contract.test_driver import Case, MiB, case, snap, vol  # noqa: F401  (fixture)
from tests.support.ceph import ceph  # noqa: F401  (fixture)
from tests.support.daemons import short_dir  # noqa: F401  (fixture)
from tests.support.drivers import read_at, write_at


def test_the_snapshot_is_the_instant_of_the_call(case: Case) -> None:  # noqa: F811
    drv, src = case.driver, vol()
    drv.create_volume(src)
    write_at(drv, src, 5 * MiB, b"before")
    s = snap(src)
    with drv.staged_snapshot(s) as take:
        write_at(drv, src, 5 * MiB, b"still!")  # before the instant: in the snapshot
        take()
        write_at(drv, src, 5 * MiB, b"after!")  # the guest runs again: not in it
    dst = vol()
    drv.create_volume_from_snapshot(dst, s)
    assert read_at(drv, dst, 5 * MiB, 6) == b"still!"
    drv.delete_snapshot(s)
    for v in (dst, src):
        drv.delete_volume(v)


def test_a_failure_before_the_instant_leaves_no_snapshot(case: Case) -> None:  # noqa: F811
    drv, src = case.driver, vol()
    drv.create_volume(src)
    s = snap(src)
    with pytest.raises(RuntimeError), drv.staged_snapshot(s):
        raise RuntimeError("the guests could not be paused")
    with pytest.raises(BlockyardError):
        drv.create_volume_from_snapshot(vol(), s)
    drv.delete_snapshot(s)  # and deleting it is fine all the same
    drv.delete_volume(src)
