"""Migration of an attached volume end to end: the volume service asks the real compute agent
to swap a running guest's disk onto the migration's temporary volume (QEMU mirror + pivot),
the agent completes the migration, and the volume keeps its id.

While that runs the guest writes numbered, fsynced blocks. Afterwards every acknowledged
block is on the new backend (read through the same guest device, and again after the volume
is attached afresh), the guest saw no I/O error, the volume id is unchanged, the old object
and the temporary volume are gone. A failure in the agent before the pivot fails the
migration and leaves the guest on its old disk.
"""

from __future__ import annotations

import os
import time
from typing import Any

import pytest

from tests import test_compute_swap as swap_tests
from tests.support.ceph import ceph  # noqa: F401  (the stack's fixture)
from tests.support.consistency import backend_dir, read_db
from tests.support.numbered import check_prefix, read_numbers
from tests.test_compute import Stack
from tests.test_compute_swap import _all_there, _writing
from tests.test_migration import wait_migrated

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="tgtd needs root")

GiB = 1024**3


# tests/test_compute.py's volume service (its [compute] url is the agent's: all a migration
# of an attached volume needs), agent and guests; the swap tests' tidying up after each test
stack = swap_tests.stack
_tidy = swap_tests._tidy


def _host_of(stack: Stack, backend: str) -> str:
    r = stack.api.get("/scheduler-stats/get_pools")
    assert r.status_code == 200, r.text
    return next(str(p["name"]) for p in r.json()["pools"]
                if p["name"].endswith(f"@{backend}#{backend}"))


def _show(stack: Stack, vid: str) -> dict[str, Any]:
    r = stack.api.get(f"/volumes/{vid}")
    assert r.status_code == 200, r.text
    return dict(r.json()["volume"])


def _settled(stack: Stack, vid: str, timeout: float = 900.0) -> dict[str, Any]:
    """The volume once its migration settled (back in-use, no temporary volume left)."""
    v = wait_migrated(stack.api, vid, timeout, status="in-use")
    deadline = time.monotonic() + 60
    while _temporary_rows(stack):
        assert time.monotonic() < deadline, f"a temporary volume is left: {_show(stack, vid)}"
        time.sleep(0.2)
    return v


def _temporary_rows(stack: Stack) -> list[str]:
    return [vid for vid, row in read_db(stack.volumes.state_dir).volumes.items()
            if (row["migration_status"] or "").startswith("target:")]


def _old_object_gone(stack: Stack, backend: str, vid: str) -> None:
    if backend == "rbd":
        return  # the delete task removed the image (the temporary row is gone with it)
    assert not (backend_dir(stack.volumes.state_dir, backend) / f"volume-{vid}").exists()


@pytest.mark.parametrize("source, target, how", [("local", "rbd", "migrate"),
                                                 ("local", "nbd", "migrate"),
                                                 ("nbd", "iscsi", "retype")])
def test_in_use_migration_while_the_guest_writes(stack: Stack, source: str, target: str,
                                                 how: str) -> None:
    g1, c1 = stack.guests["g1"], stack.consoles["g1"]
    vid, device, writer = _writing(stack, source)
    if how == "migrate":
        body: dict[str, Any] = {"os-migrate_volume": {"host": _host_of(stack, target)}}
    else:
        body = {"os-retype": {"new_type": target, "migration_policy": "on-demand"}}
    r = stack.api.post(f"/volumes/{vid}/action", body)
    assert r.status_code == 202, r.text
    v = _settled(stack, vid)
    assert v["migration_status"] == "success", (v, stack.volumes.log()[-3000:])
    writer.wait_acked(writer.acked() + 10)  # it keeps writing, to the new backend now
    written = writer.stop()
    _all_there(c1, device, written)
    # the same volume, on the new backend, attached to the same guest
    assert v["id"] == vid and v["os-vol-host-attr:host"].endswith(f"@{target}#{target}")
    if how == "retype":
        assert v["volume_type"] == target
    [att] = stack.attachments_of(vid)
    assert att["instance"] == g1
    [view] = stack.nova.attachments(g1)
    assert view["volumeId"] == vid and view["attachment_id"] == att["id"]
    _old_object_gone(stack, source, vid)
    # the data is on the new backend's object itself: detach and plug it in afresh
    stack.nova.detach(g1, vid)
    c1.wait_disk_gone(vid)
    stack.api.wait_volume(vid, "available")
    assert stack.nova.attach(g1, vid).status_code == 200
    fresh = c1.wait_disk(vid, size=GiB, timeout=120)
    assert check_prefix(read_numbers(c1, fresh, written.count + 64)) >= written.count
    stack.nova.detach(g1, vid)
    stack.api.wait_volume(vid, "available")
    assert stack.api.delete(f"/volumes/{vid}").status_code == 202
    stack.api.wait_volume(vid, "deleted", timeout=60)


def test_a_failure_in_compute_before_the_pivot_fails_the_migration(stack: Stack) -> None:
    g1, c1 = stack.guests["g1"], stack.consoles["g1"]
    vid, device, writer = _writing(stack, "local")
    stack.failpoints.write_text("compute.swap.mirroring=error\n")
    try:
        r = stack.api.post(f"/volumes/{vid}/action",
                           {"os-migrate_volume": {"host": _host_of(stack, "rbd")}})
        assert r.status_code == 202, r.text
        v = _settled(stack, vid)
    finally:
        stack.failpoints.write_text("")
    assert v["migration_status"] == "error", v
    assert v["os-vol-host-attr:host"].endswith("@local#local")
    assert v["os-vol-mig-status-attr:name_id"] is None
    assert [a["volumeId"] for a in stack.nova.attachments(g1)] == [vid]
    writer.wait_acked(writer.acked() + 5)
    _all_there(c1, device, writer.stop())
    stack.nova.detach(g1, vid)
    stack.api.wait_volume(vid, "available")
    assert stack.api.delete(f"/volumes/{vid}").status_code == 202
    stack.api.wait_volume(vid, "deleted", timeout=60)


def test_the_volume_service_killed_as_it_completes(stack: Stack) -> None:
    """kill -9 of the volume service right after compute's completion committed, before it
    answered: the agent's restart finishes the swap (it completes again and gets the same
    answer), the service's restart resumes the migration task, and the volume ends on the new
    backend with every acknowledged block."""
    g1, c1 = stack.guests["g1"], stack.consoles["g1"]
    vid, device, writer = _writing(stack, "local")
    assert stack.volumes.stop() == 0
    stack.volumes.start(env={"BLOCKYARD_FAILPOINTS": "migrate_volume.completed"})
    r = stack.api.post(f"/volumes/{vid}/action",
                       {"os-migrate_volume": {"host": _host_of(stack, "nbd")}})
    assert r.status_code == 202, r.text
    stack.volumes.wait_exit(600)
    stack.volumes.start()
    # the agent's completion got no answer: its restart finishes the swap
    stack.agent.kill()
    stack.agent.start()
    v = _settled(stack, vid)
    assert v["migration_status"] == "success", (v, stack.volumes.log()[-3000:])
    assert v["os-vol-host-attr:host"].endswith("@nbd#nbd")
    assert [a["volumeId"] for a in stack.nova.attachments(g1)] == [vid]
    writer.wait_acked(writer.acked() + 10)
    _all_there(c1, device, writer.stop())
    _old_object_gone(stack, "local", vid)
    stack.nova.detach(g1, vid)
    stack.api.wait_volume(vid, "available")
    assert stack.api.delete(f"/volumes/{vid}").status_code == 202
    stack.api.wait_volume(vid, "deleted", timeout=60)
