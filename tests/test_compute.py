"""The compute agent end to end: real volume service, real targets, real QEMU guests (TCG).

One volume service with three file backends (exported locally, over iSCSI by tgt, over NBD
by qemu-nbd) whose extend events go to one `blockyard compute`; the agent boots two tiny
guests (scripts/build-test-guest) whose serial consoles the tests drive. Data goes in
through one guest and comes out through the other; every failure injected into attach
leaves nothing behind on either side.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from blockyard.compute.store import Mapping
from blockyard.exec import exited, stop
from tests.support.ceph import CephCluster, ceph  # noqa: F401  (fixture)
from tests.support.compute import (
    ComputeServer,
    GuestConsole,
    Nova,
    build_test_guest,
    compute_config,
    openstack,
    short_alias,
)
from tests.support.daemons import processes_mentioning
from tests.support.server import Api, Server, exported_backends_config, free_port

GiB = 1024**3
PROTOCOLS = ("local", "nbd", "iscsi", "rbd")

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="tgtd needs root")


class Stack:
    def __init__(self, volumes: Server, agent: ComputeServer, failpoints: Path) -> None:
        self.volumes = volumes
        self.agent = agent
        self.failpoints = failpoints
        self.api: Api = volumes.client()
        self.nova: Nova = agent.nova()
        self.guests: dict[str, str] = {}
        self.consoles: dict[str, GuestConsole] = {}

    def boot(self, name: str, image: str = "tiny") -> tuple[str, GuestConsole]:
        server = self.nova.create(name, image)
        assert server["status"] == "ACTIVE", server
        console = GuestConsole(server["blockyard:console_socket"])
        self.guests[name], self.consoles[name] = server["id"], console
        return server["id"], console

    def volume(self, protocol: str, size: int = 1) -> str:
        r = self.api.post("/volumes", {"volume": {"size": size, "volume_type": protocol}})
        assert r.status_code == 202, r.text
        vid = str(r.json()["volume"]["id"])
        self.api.wait_volume(vid, "available")
        return vid

    def status(self, volume_id: str) -> str:
        return str(self.api.get(f"/volumes/{volume_id}").json()["volume"]["status"])

    def attachments_of(self, volume_id: str) -> list[dict[str, Any]]:
        r = self.api.get(f"/attachments?volume_id={volume_id}")
        assert r.status_code == 200, r.text
        return list(r.json()["attachments"])


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory,
          ceph: CephCluster) -> Iterator[Stack]:  # noqa: F811
    image = build_test_guest()
    base = short_alias(tmp_path_factory.mktemp("compute"))
    agent_port = free_port()
    volumes = Server(base / "volumes", config=exported_backends_config(local=True, extra=f"""
[quota]
volumes = 1000
gigabytes = 10000
{ceph.backend_config()}[compute]
url = "http://127.0.0.1:{agent_port}/v2.1"
""")).start()
    api = volumes.client()
    for name in PROTOCOLS:
        specs = {"volume_backend_name": name}
        r = api.post("/types", {"volume_type": {"name": name, "extra_specs": specs}})
        assert r.status_code == 200, r.text
    r = api.post("/types", {"volume_type": {"name": "shared", "extra_specs": {
        "volume_backend_name": "local", "multiattach": "<is> True"}}})
    assert r.status_code == 200, r.text
    failpoints = base / "failpoints"
    agent = ComputeServer(base / "agent", port=agent_port, config=compute_config(
        volumes.url, images={"tiny": image, "deaf": dict(image, append=image["append"] +
                                                         " acpi=off")},
        detach_timeout=1.0, detach_retries=1),
        env={"BLOCKYARD_FAILPOINTS_FILE": str(failpoints)}).start()
    st = Stack(volumes, agent, failpoints)
    try:
        st.boot("g1")
        st.boot("g2")
        yield st
    finally:
        for console in st.consoles.values():
            console.close()
        for server_id in st.guests.values():
            st.nova.delete(server_id)
        agent.stop()
        volumes.close()
    assert not _qemu_of(base), "a guest outlived the tests"


def _qemu_of(base: Path) -> list[int]:
    return processes_mentioning(str(base), "qemu-system")


def _write_pattern(console: GuestConsole, device: str) -> str:
    """Random data at three places of the disk; returns their sha256 as the guest reads it."""
    console.check(f"dd if=/dev/urandom of=/tmp/p bs=64k count=16 2>/dev/null && "
                  f"dd if=/tmp/p of={device} bs=64k seek=0 conv=notrunc,fsync 2>/dev/null && "
                  f"dd if=/tmp/p of={device} bs=64k seek=8000 conv=notrunc,fsync 2>/dev/null")
    return _read_pattern(console, device)


def _read_pattern(console: GuestConsole, device: str) -> str:
    out = console.check(f"(dd if={device} bs=64k count=16 2>/dev/null; "
                        f"dd if={device} bs=64k skip=8000 count=16 2>/dev/null) | sha256sum")
    return out.split()[0]


def _openstack(stack: Stack, *args: str) -> str:
    """The real `openstack` CLI against both services, through a clouds.yaml."""
    return openstack(stack.agent, stack.volumes, *args)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_data_moves_between_guests(stack: Stack, protocol: str) -> None:
    """Attach to g1 (with the openstack CLI), write, detach; attach to g2, read it back."""
    g1, g2 = stack.guests["g1"], stack.guests["g2"]
    c1, c2 = stack.consoles["g1"], stack.consoles["g2"]
    vid = stack.volume(protocol)
    out = _openstack(stack, "server", "add", "volume", g1, vid, "-f", "value", "-c", "Device")
    assert out.strip().startswith("/dev/vd")
    assert stack.status(vid) == "in-use"
    [attachment] = stack.nova.attachments(g1)
    assert attachment["blockyard:guest_device"] == f"/dev/disk/by-id/virtio-{vid[:20]}"
    # the attachment in the volume service knows where the guest really has the disk
    [cinder_att] = stack.attachments_of(vid)
    assert cinder_att["instance"] == g1
    device = c1.wait_disk(vid, size=GiB)
    digest = _write_pattern(c1, device)

    _openstack(stack, "server", "remove", "volume", g1, vid)
    c1.wait_disk_gone(vid)
    stack.api.wait_volume(vid, "available")
    assert stack.attachments_of(vid) == []

    r = stack.nova.attach(g2, vid)
    assert r.status_code == 200, r.text
    assert _read_pattern(c2, c2.wait_disk(vid, size=GiB)) == digest
    stack.nova.detach(g2, vid)
    c2.wait_disk_gone(vid)
    stack.api.wait_volume(vid, "available")
    assert stack.api.delete(f"/volumes/{vid}").status_code == 202


@pytest.mark.parametrize("protocol", ["local", "rbd"])
def test_extend_while_attached(stack: Stack, protocol: str) -> None:
    """os-extend at 3.42 → volume-extended event → block_resize → the guest sees 2 GiB."""
    g1, c1 = stack.guests["g1"], stack.consoles["g1"]
    vid = stack.volume(protocol)
    assert stack.nova.attach(g1, vid).status_code == 200
    c1.wait_disk(vid, size=GiB)
    r = stack.api.post(f"/volumes/{vid}/action", {"os-extend": {"new_size": 2}})
    assert r.status_code == 202, r.text
    stack.api.wait_volume(vid, "in-use")
    c1.wait_disk(vid, size=2 * GiB, timeout=30)
    stack.nova.detach(g1, vid)
    stack.api.wait_volume(vid, "available")
    assert stack.api.get(f"/volumes/{vid}").json()["volume"]["size"] == 2


@pytest.mark.parametrize("protocol", ["nbd", "iscsi"])
def test_extend_while_attached_is_refused_where_guests_cannot_grow(stack: Stack,
                                                                    protocol: str) -> None:
    g1 = stack.guests["g1"]
    vid = stack.volume(protocol)
    assert stack.nova.attach(g1, vid).status_code == 200
    r = stack.api.post(f"/volumes/{vid}/action", {"os-extend": {"new_size": 2}})
    assert r.status_code == 400 and protocol in r.text, r.text
    assert stack.status(vid) == "in-use"
    stack.nova.detach(g1, vid)
    stack.api.wait_volume(vid, "available")


def test_multiattach_shares_the_host_connection(stack: Stack) -> None:
    g1, g2 = stack.guests["g1"], stack.guests["g2"]
    c1, c2 = stack.consoles["g1"], stack.consoles["g2"]
    vid = stack.volume("shared")
    assert stack.nova.attach(g1, vid).status_code == 200
    assert stack.nova.attach(g2, vid).status_code == 200
    d1, d2 = c1.wait_disk(vid), c2.wait_disk(vid)
    digest = _write_pattern(c1, d1)
    stack.nova.detach(g1, vid)
    c1.wait_disk_gone(vid)
    assert stack.status(vid) == "in-use"  # g2 still has it, and it still works
    assert _read_pattern(c2, d2) == digest
    assert _write_pattern(c2, d2) != digest
    stack.nova.detach(g2, vid)
    stack.api.wait_volume(vid, "available")


ATTACH_STEPS = ["reserved", "attachment_created", "connection_info", "connected",
                "blockdev_added", "plugged", "completed"]


@pytest.mark.parametrize("step", ATTACH_STEPS)
def test_a_failure_at_any_attach_step_leaves_nothing(stack: Stack, step: str) -> None:
    g1, c1 = stack.guests["g1"], stack.consoles["g1"]
    vid = stack.volume("nbd")
    stack.failpoints.write_text(f"compute.attach.{step}=error\n")
    try:
        r = stack.nova.attach(g1, vid)
    finally:
        stack.failpoints.write_text("")
    assert r.status_code == 500 and step in r.text, r.text
    assert stack.nova.attachments(g1) == []
    assert stack.attachments_of(vid) == []
    stack.api.wait_volume(vid, "available")
    assert vid[:20] not in c1.disks()
    # and nothing in QEMU either: the same volume attaches cleanly at once
    assert stack.nova.attach(g1, vid).status_code == 200
    c1.wait_disk(vid)
    stack.nova.detach(g1, vid)
    stack.api.wait_volume(vid, "available")


def test_a_guest_that_never_lets_go_rolls_back_to_in_use(stack: Stack) -> None:
    """A guest without ACPI never answers device_del: after the retries the volume is
    in-use again, the mapping is still there and the fault says why."""
    deaf, console = stack.boot("deaf", image="deaf")
    try:
        vid = stack.volume("local")
        assert stack.nova.attach(deaf, vid).status_code == 200
        r = stack.nova.request("DELETE", f"/servers/{deaf}/os-volume_attachments/{vid}")
        assert r.status_code == 202
        stack.api.wait_volume(vid, "in-use", timeout=30)
        server = stack.nova.show(deaf)
        assert "did not release" in server["fault"]["message"]
        assert [a["volumeId"] for a in stack.nova.attachments(deaf)] == [vid]
    finally:
        console.close()
        stack.nova.delete(deaf)
        del stack.guests["deaf"], stack.consoles["deaf"]
    stack.api.wait_volume(vid, "available")  # deleting the server let go of the volume
    assert stack.attachments_of(vid) == []


def test_agent_restart_keeps_guests_and_disks(stack: Stack) -> None:
    g1, c1 = stack.guests["g1"], stack.consoles["g1"]
    vid = stack.volume("iscsi")
    assert stack.nova.attach(g1, vid).status_code == 200
    device = c1.wait_disk(vid)
    digest = _write_pattern(c1, device)
    stack.agent.kill()
    stack.agent.start()
    assert stack.nova.show(g1)["status"] == "ACTIVE"
    assert [a["volumeId"] for a in stack.nova.attachments(g1)] == [vid]
    assert _read_pattern(c1, device) == digest
    stack.nova.detach(g1, vid)
    c1.wait_disk_gone(vid)
    stack.api.wait_volume(vid, "available")


@pytest.mark.parametrize("step", ["connected", "plugged"])
def test_a_crash_during_attach_is_rolled_back_at_restart(stack: Stack, step: str) -> None:
    g1, c1 = stack.guests["g1"], stack.consoles["g1"]
    vid = stack.volume("local")
    stack.failpoints.write_text(f"compute.attach.{step}\n")  # kill -9 there
    try:
        try:
            stack.nova.attach(g1, vid)
        except Exception:
            pass  # the connection dies with the agent
        stack.agent.wait_exit(30)
    finally:
        stack.failpoints.write_text("")
    stack.agent.start()
    assert stack.nova.attachments(g1) == []
    stack.api.wait_volume(vid, "available")
    assert stack.attachments_of(vid) == []
    c1.wait_disk_gone(vid)
    assert stack.nova.attach(g1, vid).status_code == 200
    stack.nova.detach(g1, vid)
    stack.api.wait_volume(vid, "available")


def test_bad_requests_are_clear_4xx(stack: Stack) -> None:
    g1 = stack.guests["g1"]
    vid = stack.volume("local")
    cases = [
        (stack.nova.attach(g1, "not-a-uuid"), 400),
        (stack.nova.attach("00000000-0000-0000-0000-000000000000", vid), 404),
        (stack.nova.attach(g1, "00000000-0000-0000-0000-000000000000"), 404),
        (stack.nova.attach(g1, vid, device="sda"), 400),
        (stack.nova.request("DELETE", f"/servers/{g1}/os-volume_attachments/{vid}"), 404),
        (stack.nova.request("POST", "/servers", {"server": {"name": "x", "imageRef": "nope",
                                                           "flavorRef": "m1.tiny"}}), 400),
        (stack.nova.request("POST", "/servers", {"oops": 1}), 400),
    ]
    for r, status in cases:
        assert r.status_code == status, r.text
        assert next(iter(r.json().values()))["code"] == status
    assert stack.status(vid) == "available"
    # a volume attached twice to one guest: the second is refused, the first stays
    assert stack.nova.attach(g1, vid).status_code == 200
    r = stack.nova.attach(g1, vid)
    assert r.status_code == 400, r.text
    assert stack.status(vid) == "in-use"
    stack.nova.detach(g1, vid)
    stack.api.wait_volume(vid, "available")


@pytest.mark.parametrize("step", ["unplugged", "disconnected"])
def test_a_crash_during_detach_is_finished_at_restart(stack: Stack, step: str) -> None:
    g1, c1 = stack.guests["g1"], stack.consoles["g1"]
    vid = stack.volume("nbd")
    assert stack.nova.attach(g1, vid).status_code == 200
    c1.wait_disk(vid)
    stack.failpoints.write_text(f"compute.detach.{step}\n")  # kill -9 there
    try:
        r = stack.nova.request("DELETE", f"/servers/{g1}/os-volume_attachments/{vid}")
        assert r.status_code == 202, r.text
        stack.agent.wait_exit(30)
    finally:
        stack.failpoints.write_text("")
    stack.agent.start()
    stack.api.wait_volume(vid, "available")
    assert stack.nova.attachments(g1) == []
    assert stack.attachments_of(vid) == []
    c1.wait_disk_gone(vid)


def _behind_the_agents_back(stack: Stack, server_id: str, work: Any) -> None:
    """With the agent down, change the guest through its QMP socket ourselves."""
    import asyncio

    from blockyard.compute.hypervisor import Hypervisor

    qmp = Path(stack.nova.show(server_id)["blockyard:console_socket"]).with_name("qmp.sock")
    stack.agent.kill()

    async def run() -> None:
        async with await Hypervisor.connect(str(qmp), timeout=10) as hv:
            await work(hv)

    asyncio.run(run())
    stack.agent.start()


def test_restart_plugs_a_lost_disk_in_again(stack: Stack) -> None:
    """A mapping whose disk vanished from the guest (say QEMU lost it) is repaired and
    reported in the server's fault."""
    g1, c1 = stack.guests["g1"], stack.consoles["g1"]
    vid = stack.volume("local")
    assert stack.nova.attach(g1, vid).status_code == 200
    device = c1.wait_disk(vid)
    digest = _write_pattern(c1, device)
    [disk_id] = [a["bdm_uuid"] for a in stack.nova.attachments(g1)]

    mapping = Mapping(id=disk_id)  # only for its QEMU names

    async def unplug(hv: Any) -> None:
        await hv.device_del(mapping.device_id, timeout=10, retries=1)
        await hv.blockdev_del(mapping.node_name)

    _behind_the_agents_back(stack, g1, unplug)
    device = c1.wait_disk(vid, timeout=30)
    assert _read_pattern(c1, device) == digest
    assert "re-plugged" in stack.nova.show(g1)["fault"]["message"]
    stack.nova.detach(g1, vid)
    stack.api.wait_volume(vid, "available")


def test_restart_removes_a_disk_no_mapping_names(stack: Stack, tmp_path: Path) -> None:
    g1, c1 = stack.guests["g1"], stack.consoles["g1"]
    stray = tmp_path / "stray.raw"
    stray.write_bytes(b"")
    os.truncate(stray, 1 << 20)

    async def plug(hv: Any) -> None:
        await hv.blockdev_add("stray", {"driver": "file", "filename": str(stray)})
        await hv.device_add("disk-stray", "stray", "stray-disk")

    _behind_the_agents_back(stack, g1, plug)
    c1.wait_disk_gone("stray-disk", timeout=30)
    assert "disk-stray" in stack.nova.show(g1)["fault"]["message"]


def test_an_adopted_guest_gets_volumes_and_is_not_stopped(stack: Stack, tmp_path: Path) -> None:
    from blockyard.compute import config as compute_config
    from blockyard.compute import launcher

    cfg = compute_config.build({"images": {"tiny": build_test_guest()},
                                "qemu": {"accel": "tcg"}})
    guest = launcher.launch(cfg.qemu, cfg.images["tiny"], cfg.flavors["m1.tiny"],
                            name="adoptee", directory=tmp_path / "adoptee", accel="tcg")
    console = GuestConsole(guest.console_socket)
    try:
        server_id = stack.nova.adopt("adoptee", guest.qmp_socket)
        server = stack.nova.show(server_id)
        assert server["status"] == "ACTIVE" and server["blockyard:adopted"] is True
        vid = stack.volume("local")
        assert stack.nova.attach(server_id, vid).status_code == 200
        console.wait_disk(vid)
        stack.nova.delete(server_id)  # forget it: the volume comes out, the guest stays up
        stack.api.wait_volume(vid, "available")
        console.wait_disk_gone(vid)
        assert not exited(guest.process)
        assert console.check("echo still here").strip() == "still here"
    finally:
        console.close()
        stop(guest.process, launcher.STOP_TIMEOUT)
