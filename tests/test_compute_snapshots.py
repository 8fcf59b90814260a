"""Point-in-time snapshots of attached volumes, end to end: a real volume service takes the
snapshot of a volume a real guest (TCG, driven over its serial console) keeps writing, and
the real compute agent pauses that guest around it (``os-assisted-volume-snapshots``).

What the guest writes are numbered blocks, each fsynced before the next
(`tests.support.numbered`). A point-in-time snapshot reads back as a prefix 0, 1, ..., k-1 of
them, nothing torn, and holds at least every block acknowledged before it was asked for. The
guest never sees an I/O error and is never left paused: not when the snapshot fails, not when
the volume service dies with the guest paused (compute's watchdog resumes it).

How long the guest was paused is printed (``-s`` shows it), not asserted: timing belongs in
bench/assisted_snapshot.py.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.ceph import CephCluster, ceph  # noqa: F401  (fixture)
from tests.support.compute import (
    ComputeServer,
    GuestConsole,
    Nova,
    build_test_guest,
    compute_config,
    short_alias,
)
from tests.support.daemons import processes_mentioning
from tests.support.numbered import NumberedWriter, check_prefix, read_numbers
from tests.support.server import Api, Server, free_port

GiB = 1024**3
PROTOCOLS = ("local", "rbd")
PATH = "/os-assisted-volume-snapshots"

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the agent connects volumes as root")


class Writer(NumberedWriter):
    """The shared writer rewrites its ``acked`` file in place (``echo $i > acked``): a read
    between the truncate and the write finds it empty. Read again then."""

    def acked(self) -> int:
        for _ in range(100):
            try:
                return super().acked()
            except IndexError:
                time.sleep(0.05)
        raise AssertionError("the writer's acked file stayed empty")


class InfoServer(Server):
    """The volume service logging at INFO: where the measured pause is reported."""

    def _argv(self) -> list[str]:
        return [*super()._argv(), "--log-level", "info"]


class InfoComputeServer(ComputeServer):
    def _argv(self) -> list[str]:
        return [*super()._argv(), "--log-level", "info"]


class Stack:
    def __init__(self, volumes: Server, agent: ComputeServer, failpoints: Path) -> None:
        self.volumes = volumes
        self.agent = agent
        self.failpoints = failpoints
        self.api: Api = volumes.client()
        self.nova: Nova = agent.nova()
        self.server_id = ""
        self.console: GuestConsole | None = None

    def volume(self, protocol: str, **extra: Any) -> str:
        r = self.api.post("/volumes", {"volume": {"size": 1, "volume_type": protocol,
                                                  **extra}})
        assert r.status_code == 202, r.text
        vid = str(r.json()["volume"]["id"])
        self.api.wait_volume(vid, "available", timeout=120)
        return vid

    def attach(self, volume_id: str) -> str:
        """Attach to the guest; the device it sees."""
        assert self.console is not None
        r = self.nova.attach(self.server_id, volume_id)
        assert r.status_code == 200, r.text
        self.api.wait_volume(volume_id, "in-use", timeout=60)
        return self.console.wait_disk(volume_id, size=GiB, timeout=60)

    def detach_and_delete(self, volume_id: str) -> None:
        assert self.console is not None
        self.nova.detach(self.server_id, volume_id, wait=120)
        self.console.wait_disk_gone(volume_id, timeout=60)
        self.api.wait_volume(volume_id, "available", timeout=60)
        for snap in self.api.get(f"/snapshots?volume_id={volume_id}").json()["snapshots"]:
            assert self.api.delete(f"/snapshots/{snap['id']}").status_code == 202
            self.api.wait_snapshot(snap["id"], "deleted", timeout=60)
        assert self.api.delete(f"/volumes/{volume_id}").status_code == 202

    def snapshot(self, volume_id: str) -> str:
        r = self.api.post("/snapshots", {"snapshot": {"volume_id": volume_id, "force": True}})
        assert r.status_code == 202, r.text
        return str(r.json()["snapshot"]["id"])

    def arm(self, *points: str) -> None:
        self.failpoints.write_text("\n".join(points))


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory,
          ceph: CephCluster) -> Iterator[Stack]:  # noqa: F811
    image = build_test_guest()
    base = short_alias(tmp_path_factory.mktemp("asnap"))
    agent_port = free_port()
    failpoints = base / "failpoints"
    volumes = InfoServer(base / "volumes", env={"BLOCKYARD_FAILPOINTS_FILE": str(failpoints)},
                         config=f"""
[backends.local]
driver = "file"
{ceph.backend_config()}[compute]
url = "http://127.0.0.1:{agent_port}/v2.1"
""")
    volumes.start()
    api = volumes.client()
    for name in PROTOCOLS:
        r = api.post("/types", {"volume_type": {"name": name, "extra_specs": {
            "volume_backend_name": name}}})
        assert r.status_code == 200, r.text
    agent = InfoComputeServer(base / "agent", port=agent_port, config=compute_config(
        volumes.url, images={"tiny": image})).start()
    st = Stack(volumes, agent, failpoints)
    try:
        server = st.nova.create("snapper", "tiny")
        assert server["status"] == "ACTIVE", server
        st.server_id = server["id"]
        st.console = GuestConsole(server["blockyard:console_socket"])
        yield st
    finally:
        if st.console is not None:
            st.console.close()
        if st.server_id:
            st.nova.delete(st.server_id)
        agent.stop()
        volumes.close()
    assert not processes_mentioning(str(base), "qemu-system"), "a guest outlived the tests"


def _pause_line(stack: Stack, snapshot_id: str) -> str:
    """The volume service's log line with the guest's measured pause for `snapshot_id`."""
    found = re.findall(rf".*snapshot {snapshot_id} of volume .* paused .*", stack.volumes.log())
    assert found, f"no pause was logged for snapshot {snapshot_id}"
    return str(found[-1])


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_snapshot_of_a_volume_being_written_is_point_in_time(stack: Stack,
                                                             protocol: str) -> None:
    assert stack.console is not None
    console = stack.console
    vid = stack.volume(protocol)
    device = stack.attach(vid)
    writer = Writer(console, device)
    writer.start()
    try:
        writer.wait_acked(3)
        before = writer.acked()  # acknowledged before the snapshot was asked for
        sid = stack.snapshot(vid)
        stack.api.wait_snapshot(sid, "available", timeout=120)
        writer.wait_acked(before + 3)  # the guest went on writing after the snapshot
    finally:
        written = writer.stop()
    assert written.error is None and written.io_errors == [], written
    print(f"\n[{protocol}] {_pause_line(stack, sid)}")
    held = _held(stack, protocol, sid, written.count)
    print(f"[{protocol}] acknowledged before the request: {before + 1} blocks; snapshot "
          f"holds {held}; the guest wrote {written.count} in all")
    assert before + 1 <= held <= written.count + 1
    assert held < written.count, "the snapshot holds what was written after it"
    stack.detach_and_delete(vid)


def _held(stack: Stack, protocol: str, snapshot_id: str, written: int) -> int:
    """How many numbered blocks the snapshot holds, read in the guest from a volume made
    from it; AssertionError when they are not a prefix (torn, a gap)."""
    assert stack.console is not None
    copy = stack.volume(protocol, snapshot_id=snapshot_id)
    runs = read_numbers(stack.console, stack.attach(copy), written + 8)
    stack.detach_and_delete(copy)
    return check_prefix(runs)


def test_a_failed_snapshot_resumes_the_guest(stack: Stack) -> None:
    """The backend fails while the guest is paused: the snapshot is an error, the guest runs
    on (it answers on its console, its writes go through) long before any watchdog."""
    assert stack.console is not None
    vid = stack.volume("local")
    device = stack.attach(vid)
    writer = Writer(stack.console, device)
    writer.start()
    try:
        before = writer.wait_acked(1)
        stack.arm("create_snapshot.guests_paused=error")
        sid = stack.snapshot(vid)
        stack.api.wait_snapshot(sid, "error", timeout=60)
        stack.arm()
        writer.wait_acked(before + 3)
    finally:
        stack.arm()
        written = writer.stop()
    assert written.error is None and written.io_errors == [], written
    assert re.search(rf"resumed \(resumed\) after .* paused for snapshot {sid}",
                     stack.agent.log()), "the guest was not resumed by the volume service"
    assert stack.api.get(f"/volumes/{vid}").json()["volume"]["status"] == "in-use"
    stack.detach_and_delete(vid)


def test_the_watchdog_resumes_a_guest_nobody_resumes(stack: Stack) -> None:
    """A pause whose resume never comes (the volume service died): the agent resumes the
    guest by itself after max_pause_ms, and a resume that comes later is refused (the
    snapshot would not be point-in-time)."""
    assert stack.console is not None
    vid = stack.volume("local")
    stack.attach(vid)
    sid = "6f0e3f38-7a3a-4e38-9a53-0c8b1a0d2e57"

    def ask(kind: str, **extra: Any) -> Any:
        return stack.nova.request("POST", PATH, {"snapshot": {
            "volume_id": vid, "create_info": {"snapshot_id": sid, "type": kind, **extra}}})

    r = ask("blockyard-pause", max_pause_ms=1500)
    assert r.status_code == 200, r.text
    assert r.json() == {"snapshot": {"id": sid, "volumeId": vid}}
    t0 = time.monotonic()
    assert stack.console.check("echo alive", timeout=120).strip().endswith("alive")
    print(f"\nthe paused guest answered its console {time.monotonic() - t0:.1f} s later")
    r = ask("blockyard-resume")
    assert r.status_code == 409, r.text
    assert "not point-in-time" in r.json()["conflictingRequest"]["message"]
    assert f"snapshot {sid} did not resume" in stack.agent.log()
    stack.detach_and_delete(vid)


def test_the_volume_service_dies_with_the_guest_paused(stack: Stack) -> None:
    """kill -9 of the volume service between the pause and the resume: the agent's watchdog
    resumes the guest (its writes go on), and the restarted service runs the snapshot task
    again from the start: pause, snapshot, resume, point-in-time."""
    assert stack.console is not None
    vid = stack.volume("local")
    writer = Writer(stack.console, stack.attach(vid))
    writer.start()
    try:
        before = writer.wait_acked(1)
        stack.arm("create_snapshot.guests_paused")  # the service dies there
        sid = stack.snapshot(vid)
        stack.volumes.wait_exit(60)
        stack.arm()
        writer.wait_acked(before + 3)  # running again, with nobody to resume it but the agent
        assert f"snapshot {sid} did not resume" in stack.agent.log()
        stack.volumes.start()
        stack.api.wait_snapshot(sid, "available", timeout=120)
    finally:
        stack.arm()
        written = writer.stop()
    assert written.error is None and written.io_errors == [], written
    print(f"\n{_pause_line(stack, sid)}")
    held = _held(stack, "local", sid, written.count)
    assert before + 1 <= held <= written.count + 1
    stack.detach_and_delete(vid)


def test_a_restarted_agent_resumes_the_guest_it_left_paused(stack: Stack) -> None:
    """kill -9 of the agent with the guest paused (its watchdog dies with it): the agent's
    start finds the pause's marker and resumes the guest."""
    assert stack.console is not None
    vid = stack.volume("local")
    stack.attach(vid)
    sid = "0d9b5c4e-3f7a-4a11-b2e4-8c6f1e2d3a90"
    r = stack.nova.request("POST", PATH, {"snapshot": {"volume_id": vid, "create_info": {
        "snapshot_id": sid, "type": "blockyard-pause", "max_pause_ms": 60_000}}})
    assert r.status_code == 200, r.text
    stack.agent.kill()
    stack.agent.start()
    assert stack.console.check("echo alive", timeout=30).strip().endswith("alive")
    assert f"left paused for snapshot {sid}" in stack.agent.log()
    stack.detach_and_delete(vid)
