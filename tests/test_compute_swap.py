"""swap_volume end to end (the stack of tests/test_compute.py: real volume service, agent and
TCG guests): a guest keeps writing numbered, fsynced blocks while the agent moves its disk to
another volume (QEMU mirror + pivot) between the file backends (local, nbd, iscsi) and Ceph
RBD.

Afterwards every acknowledged block reads back through the same guest device, and again from
the new volume attached afresh; a failure injected at any step before the pivot leaves the
guest on its old disk with its data, and the new volume as it was; an agent killed mid-swap
is undone or finished by its restart.
"""

# ruff: noqa: F811  (`stack` is tests/test_compute.py's fixture, imported to be shared)
from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from blockyard.compute import policies
from blockyard.identity import Identity
from tests.support.ceph import ceph  # noqa: F401  (the fixture `stack` needs)
from tests.support.compute import GuestConsole
from tests.support.daemons import processes_mentioning
from tests.support.numbered import NumberedWriter, Written, check_prefix, read_numbers
from tests.test_compute import Stack, stack  # noqa: F401  (agent, guests g1 and g2)

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="tgtd needs root")

GiB = 1024**3


@pytest.fixture(autouse=True)
def _tidy(stack: Stack) -> Iterator[None]:
    """A failed test must not leave its disks (or its writer) to the next one."""
    yield
    g1, c1 = stack.guests["g1"], stack.consoles["g1"]
    c1.run("rm -f /tmp/numbered/go")
    for vid in _attached(stack, g1):
        try:
            stack.nova.detach(g1, vid)
        except AssertionError:
            pass


def _swap(stack: Stack, server_id: str, old: str, new: str) -> httpx.Response:
    return stack.nova.request("PUT", f"/servers/{server_id}/os-volume_attachments/{old}",
                              {"volumeAttachment": {"volumeId": new}})


def _wait(what: str, done: Any, timeout: float = 180.0) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


def _fault(stack: Stack, server_id: str) -> str:
    return str(stack.nova.show(server_id).get("fault", {}).get("message", ""))


def _attached(stack: Stack, server_id: str) -> list[str]:
    return [a["volumeId"] for a in stack.nova.attachments(server_id)]


def _swapped(stack: Stack, server_id: str, old: str, new: str) -> bool:
    return (_attached(stack, server_id) == [new] and stack.status(new) == "in-use"
            and stack.status(old) == "available")


def _writing(stack: Stack, protocol: str) -> tuple[str, str, NumberedWriter]:
    """A volume attached to g1 with the numbered writer going on it."""
    g1, c1 = stack.guests["g1"], stack.consoles["g1"]
    old = stack.volume(protocol)
    assert stack.nova.attach(g1, old).status_code == 200
    device = c1.wait_disk(old, size=GiB, timeout=120)
    writer = NumberedWriter(c1, device)
    writer.start()
    writer.wait_acked(10)
    return old, device, writer


def _all_there(console: GuestConsole, device: str, written: Written) -> None:
    """No I/O error in the guest, and every acknowledged block on `device`."""
    assert written.error is None and not written.io_errors, written
    assert check_prefix(read_numbers(console, device, written.count + 64)) >= written.count


def _clean_up(stack: Stack, server_id: str, volume_id: str, *others: str) -> None:
    stack.nova.detach(server_id, volume_id)
    stack.api.wait_volume(volume_id, "available")
    for vid in (volume_id, *others):
        assert stack.api.delete(f"/volumes/{vid}").status_code == 202
        stack.api.wait_volume(vid, "deleted", timeout=60)


@pytest.mark.parametrize("source, target", [("local", "nbd"), ("nbd", "rbd"),
                                            ("rbd", "iscsi"), ("iscsi", "local")])
def test_swap_moves_the_disk_while_the_guest_writes(stack: Stack, source: str,
                                                    target: str) -> None:
    g1, c1 = stack.guests["g1"], stack.consoles["g1"]
    old, device, writer = _writing(stack, source)
    new = stack.volume(target)
    r = _swap(stack, g1, old, new)
    assert r.status_code == 202 and not r.content, r.text
    _wait("the swap", lambda: _swapped(stack, g1, old, new))
    writer.wait_acked(writer.acked() + 10)  # it keeps writing, to the new volume now
    written = writer.stop()
    _all_there(c1, device, written)
    # both sides agree: the old volume is free, the new one is the guest's
    assert stack.attachments_of(old) == []
    [att] = stack.attachments_of(new)
    assert att["instance"] == g1
    [view] = stack.nova.attachments(g1)
    assert view["volumeId"] == new and view["attachment_id"] == att["id"]
    # the guest finds its disk where it was (the device keeps its serial, as in Nova)
    assert view["blockyard:guest_device"] == f"/dev/disk/by-id/virtio-{old[:20]}"
    assert c1.disks()[old[:20]] == (device.removeprefix("/dev/"), GiB)
    # the data is on the new volume itself: detach it and plug it in afresh
    stack.nova.detach(g1, new)
    c1.wait_disk_gone(old)
    stack.api.wait_volume(new, "available")
    assert stack.nova.attach(g1, new).status_code == 200
    fresh = c1.wait_disk(new, size=GiB, timeout=120)
    assert check_prefix(read_numbers(c1, fresh, written.count + 64)) >= written.count
    _clean_up(stack, g1, new, old)


@pytest.mark.parametrize("target", ["local", "rbd"])
def test_a_larger_volume_grows_the_guests_disk(stack: Stack, target: str) -> None:
    """As Nova: the disk is copied at its size, and the guest sees it grow after the pivot."""
    g1, c1 = stack.guests["g1"], stack.consoles["g1"]
    old, device, writer = _writing(stack, "nbd")
    new = stack.volume(target, size=2)
    assert _swap(stack, g1, old, new).status_code == 202
    _wait("the swap", lambda: _swapped(stack, g1, old, new))
    c1.wait_disk(old, size=2 * GiB, timeout=60)  # same device, same serial, grown
    written = writer.stop()
    _all_there(c1, device, written)
    # the new space is usable
    c1.check(f"dd if=/dev/urandom of={device} bs=64k seek=20000 count=4 conv=notrunc,fsync "
             f"2>/dev/null")
    _clean_up(stack, g1, new, old)


SWAP_STEPS = ["attachment_created", "connection_info", "connected", "blockdev_added",
              "mirroring", "ready"]


@pytest.mark.parametrize("step", SWAP_STEPS)
def test_a_failure_before_the_pivot_leaves_the_guest_on_its_disk(stack: Stack,
                                                                  step: str) -> None:
    g1, c1 = stack.guests["g1"], stack.consoles["g1"]
    old, device, writer = _writing(stack, "local")
    new = stack.volume("rbd")
    stack.failpoints.write_text(f"compute.swap.{step}=error\n")
    try:
        assert _swap(stack, g1, old, new).status_code == 202
        _wait("the swap to fail", lambda: f"compute.swap.{step}" in _fault(stack, g1))
    finally:
        stack.failpoints.write_text("")
    assert _attached(stack, g1) == [old]
    assert stack.status(old) == "in-use" and stack.status(new) == "available"
    assert stack.attachments_of(new) == []
    writer.wait_acked(writer.acked() + 5)
    _all_there(c1, device, writer.stop())
    # nothing left behind: QEMU let go of the new volume (Ceph refuses to delete an image
    # a client still watches), and the old one swaps cleanly now
    assert stack.api.delete(f"/volumes/{new}").status_code == 202
    stack.api.wait_volume(new, "deleted", timeout=60)
    again = stack.volume("nbd")
    assert _swap(stack, g1, old, again).status_code == 202
    _wait("the swap", lambda: _swapped(stack, g1, old, again))
    _clean_up(stack, g1, again, old)


def test_a_failure_when_accepting_changes_nothing(stack: Stack) -> None:
    g1 = stack.guests["g1"]
    old = stack.volume("local")
    assert stack.nova.attach(g1, old).status_code == 200
    new = stack.volume("nbd")
    stack.failpoints.write_text("compute.swap.accepted=error\n")
    try:
        r = _swap(stack, g1, old, new)
    finally:
        stack.failpoints.write_text("")
    assert r.status_code == 500 and "compute.swap.accepted" in r.text, r.text
    assert stack.status(old) == "in-use" and stack.status(new) == "available"
    assert _attached(stack, g1) == [old]
    _clean_up(stack, g1, old, new)


@pytest.mark.parametrize("step, finished", [("accepted", False), ("mirroring", False),
                                            ("ready", False),
                                            ("pivoted", True), ("saved", True)])
def test_a_crash_mid_swap_is_undone_or_finished_at_restart(stack: Stack, step: str,
                                                           finished: bool) -> None:
    """kill -9 of the agent: QEMU keeps the guest (and the mirror job) running; the restart
    cancels a mirror that had not pivoted, and finishes a swap whose guest already moved."""
    g1, c1 = stack.guests["g1"], stack.consoles["g1"]
    old, device, writer = _writing(stack, "nbd")
    new = stack.volume("local")
    stack.failpoints.write_text(f"compute.swap.{step}\n")
    try:
        try:
            assert _swap(stack, g1, old, new).status_code == 202
        except httpx.HTTPError:
            assert step == "accepted"  # the agent died before it answered
        stack.agent.wait_exit(120)
    finally:
        stack.failpoints.write_text("")
    stack.agent.start()
    if finished:
        _wait("the swap to be finished", lambda: _swapped(stack, g1, old, new))
        assert stack.attachments_of(old) == []
    else:
        _wait("the swap to be undone", lambda: stack.status(new) == "available"
              and stack.status(old) == "in-use" and not stack.attachments_of(new))
        assert _attached(stack, g1) == [old]
    writer.wait_acked(writer.acked() + 5)
    _all_there(c1, device, writer.stop())
    kept, other = (new, old) if finished else (old, new)
    _clean_up(stack, g1, kept, other)


def test_a_failure_after_the_pivot_is_finished_by_the_restart(stack: Stack) -> None:
    """The guest already uses the new volume: nothing is undone, the server's fault says the
    swap is not finished, and the next start of the agent finishes it."""
    g1, c1 = stack.guests["g1"], stack.consoles["g1"]
    old, device, writer = _writing(stack, "local")
    new = stack.volume("nbd")
    stack.failpoints.write_text("compute.swap.saved=error\n")
    try:
        assert _swap(stack, g1, old, new).status_code == 202
        _wait("the swap to stop", lambda: "is not finished" in _fault(stack, g1))
    finally:
        stack.failpoints.write_text("")
    assert stack.status(new) == "in-use" and _attached(stack, g1) == [old]
    # meanwhile the mapping is busy: no other swap, no detach
    other = stack.volume("local")
    r = _swap(stack, g1, old, other)
    assert r.status_code == 409 and "swapping" in r.text, r.text
    r = stack.nova.request("DELETE", f"/servers/{g1}/os-volume_attachments/{old}")
    assert r.status_code == 409, r.text
    assert stack.status(other) == "available"
    writer.wait_acked(writer.acked() + 5)  # on the new volume, no I/O error
    stack.agent.kill()
    stack.agent.start()
    _wait("the swap to be finished", lambda: _swapped(stack, g1, old, new))
    assert stack.attachments_of(old) == []
    writer.wait_acked(writer.acked() + 5)
    _all_there(c1, device, writer.stop())
    _clean_up(stack, g1, new, old, other)


def test_a_swap_whose_guest_died_with_the_agent_is_undone(stack: Stack) -> None:
    """Agent and guest both killed mid-mirror: the restart finds no guest, undoes the swap
    on the volume service's side from the record alone, and the server is SHUTOFF."""
    server_id, console = stack.boot("g3")
    try:
        old = stack.volume("local")
        assert stack.nova.attach(server_id, old).status_code == 200
        console.wait_disk(old, timeout=120)
        new = stack.volume("nbd")
        stack.failpoints.write_text("compute.swap.mirroring\n")
        try:
            assert _swap(stack, server_id, old, new).status_code == 202
            stack.agent.wait_exit(120)
        finally:
            stack.failpoints.write_text("")
        [pid] = processes_mentioning(server_id, "qemu-system")
        os.kill(pid, signal.SIGKILL)
        _wait("the guest to die", lambda: not processes_mentioning(server_id, "qemu-system"))
        stack.agent.start()
        assert stack.nova.show(server_id)["status"] == "SHUTOFF"
        assert _attached(stack, server_id) == [old]
        assert stack.status(new) == "available" and stack.attachments_of(new) == []
        assert stack.status(old) == "in-use"
    finally:
        console.close()
        stack.nova.delete(server_id)
        del stack.guests["g3"], stack.consoles["g3"]
    stack.api.wait_volume(old, "available")
    for vid in (old, new):
        assert stack.api.delete(f"/volumes/{vid}").status_code == 202


def test_bad_swaps_are_clear_4xx(stack: Stack) -> None:
    g1 = stack.guests["g1"]
    old, free, big = (stack.volume("local", size=2) for _ in range(3))
    small = stack.volume("local")
    assert stack.nova.attach(g1, old).status_code == 200
    nobody = "00000000-0000-0000-0000-000000000000"
    cases = [
        (_swap(stack, nobody, old, free), 404),                 # no such server
        (_swap(stack, g1, free, old), 404),                     # not attached to it
        (_swap(stack, g1, old, nobody), 400),                   # no such new volume
        (_swap(stack, g1, old, small), 400),                    # smaller than the old one
        (_swap(stack, g1, old, "not-a-uuid"), 400),
        (stack.nova.request("PUT", f"/servers/{g1}/os-volume_attachments/{old}",
                            {"volumeAttachment": {}}), 400),
        (stack.nova.request("PUT", f"/servers/{g1}/os-volume_attachments/{old}",
                            {"volumeAttachment": {"volumeId": old, "tag": "x"}}), 400),
    ]
    for n, (r, status) in enumerate(cases):
        assert r.status_code == status, (n, r.text)
        assert next(iter(r.json().values()))["code"] == status
    assert "same size or larger" in cases[3][0].text
    assert stack.status(old) == "in-use" and stack.status(free) == "available"
    assert _attached(stack, g1) == [old]
    # 2.85: the same volumeId only updates delete_on_termination (no swap)
    r = stack.nova.request("PUT", f"/servers/{g1}/os-volume_attachments/{old}",
                           {"volumeAttachment": {"volumeId": old,
                                                 "delete_on_termination": True}})
    assert r.status_code == 202, r.text
    [view] = stack.nova.attachments(g1)
    assert view["delete_on_termination"] is True and view["volumeId"] == old
    # a volume attached elsewhere cannot be the new one
    assert _swap(stack, g1, old, big).status_code == 202
    _wait("the swap", lambda: _swapped(stack, g1, old, big))
    r = _swap(stack, g1, big, big)
    assert r.status_code == 202  # 2.89: same id is an update, nothing to swap
    stack.nova.http.headers["OpenStack-API-Version"] = "compute 2.84"
    try:
        r = _swap(stack, g1, big, big)
    finally:
        stack.nova.http.headers["OpenStack-API-Version"] = "compute 2.89"
    assert r.status_code == 400 and "must be detached" in r.text, r.text
    _clean_up(stack, g1, big, old, free, small)


def test_swap_is_for_admins_and_services_by_default() -> None:
    """Nova's default for os-volumes-attachments:swap: the volume service (service role)
    or an admin, whatever the project; a project member may not."""
    engine = policies.ComputePolicy()

    def who(*roles: str) -> Identity:
        return Identity(user_id="u", project_id="p", roles=frozenset(roles))

    assert engine.check(who("admin", "member", "reader"), policies.ATTACHMENTS_SWAP, {})
    assert engine.check(who("service"), policies.ATTACHMENTS_SWAP, {})
    assert not engine.check(who("member", "reader"), policies.ATTACHMENTS_SWAP, {})
    assert engine.check(who("member", "reader"), policies.ATTACHMENTS_UPDATE,
                        {"project_id": "p"})
