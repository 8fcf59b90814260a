"""Servers booted from volumes (block_device_mapping_v2), end to end: real volume service,
real QEMU guests under TCG, the test guest's BIOS-bootable disk (scripts/build-test-guest's
disk.raw) copied into a volume by the agent.

No kernel is handed to these guests: a console that says GUEST-READY was booted by SeaBIOS
from the volume. Data the guest writes to its boot disk outlives the server and boots again
in the next one; created volumes go with a failed build and with delete_on_termination; bad
mappings are refused before anything exists.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.compute import (
    ComputeServer,
    GuestConsole,
    Nova,
    build_test_guest,
    build_test_guest_disk,
    compute_config,
    openstack,
    short_alias,
)
from tests.support.daemons import processes_mentioning
from tests.support.server import Api, Server, exported_backends_config, free_port

GiB = 1024**3
#: where the guest writes its mark on the boot disk: past the FAT file system (~23 MiB)
MARK_OFFSET_MIB = 512
#: a TCG guest's BIOS boot is slow on a busy machine
BOOT_TIMEOUT = 300.0

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="tgtd needs root")


class Stack:
    def __init__(self, volumes: Server, agent: ComputeServer, failpoints: Path,
                 base: Path) -> None:
        self.volumes = volumes
        self.agent = agent
        self.failpoints = failpoints
        self.base = base
        self.api: Api = volumes.client()
        self.nova: Nova = agent.nova()

    def volume(self, volume_type: str = "local", size: int = 1) -> str:
        r = self.api.post("/volumes", {"volume": {"size": size, "volume_type": volume_type}})
        assert r.status_code == 202, r.text
        vid = str(r.json()["volume"]["id"])
        self.api.wait_volume(vid, "available")
        return vid

    def volume_ids(self) -> set[str]:
        r = self.api.get("/volumes")
        assert r.status_code == 200, r.text
        return {v["id"] for v in r.json()["volumes"]}

    def server_ids(self) -> set[str]:
        r = self.nova.request("GET", "/servers")
        assert r.status_code == 200, r.text
        return {s["id"] for s in r.json()["servers"]}

    def create(self, name: str, bdms: Any, **extra: Any) -> Any:
        return self.nova.request("POST", "/servers", {"server": {
            "name": name, "flavorRef": "m1.tiny", "block_device_mapping_v2": bdms, **extra}})

    def build(self, name: str, bdms: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
        """Create and wait until the server left BUILD."""
        r = self.create(name, bdms, **extra)
        assert r.status_code == 202, r.text
        return self.wait_built(r.json()["server"]["id"])

    def wait_built(self, server_id: str) -> dict[str, Any]:
        deadline = time.monotonic() + BOOT_TIMEOUT
        while True:
            server = self.nova.show(server_id)
            if server["status"] != "BUILD":
                return server
            assert time.monotonic() < deadline, f"server {server_id} still BUILD"
            time.sleep(0.2)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    image = build_test_guest_disk()
    base = short_alias(tmp_path_factory.mktemp("bfv"))
    agent_port = free_port()
    volumes = Server(base / "volumes", config=exported_backends_config(local=True, extra=f"""
[quota]
volumes = 1000
gigabytes = 10000
[compute]
url = "http://127.0.0.1:{agent_port}/v2.1"
""")).start()
    api = volumes.client()
    for name in ("local", "nbd", "iscsi"):
        r = api.post("/types", {"volume_type": {
            "name": name, "extra_specs": {"volume_backend_name": name}}})
        assert r.status_code == 200, r.text
    failpoints = base / "failpoints"
    agent = ComputeServer(base / "agent", port=agent_port, config=compute_config(
        volumes.url, images={"disk": image, "tiny": build_test_guest()}, detach_timeout=1.0,
        detach_retries=1),
        env={"BLOCKYARD_FAILPOINTS_FILE": str(failpoints)}).start()
    st = Stack(volumes, agent, failpoints, base)
    try:
        yield st
    finally:
        for server_id in st.server_ids():
            st.nova.delete(server_id)
        agent.stop()
        volumes.close()
    assert not processes_mentioning(str(base), "qemu-system"), "a guest outlived the tests"


def _image_volume(volume_type: str = "local", **extra: Any) -> dict[str, Any]:
    return {"source_type": "image", "uuid": "disk", "destination_type": "volume",
            "volume_size": 1, "boot_index": 0, "volume_type": volume_type, **extra}



def _console(server: dict[str, Any]) -> GuestConsole:
    return GuestConsole(server["blockyard:console_socket"], boot_timeout=BOOT_TIMEOUT)


def _boot_disk(console: GuestConsole, volume_id: str) -> str:
    return console.wait_disk(volume_id, size=GiB)


@pytest.mark.parametrize("volume_type", ["local", "nbd", "iscsi"])
def test_boot_from_image_volume_then_from_that_volume(stack: Stack, volume_type: str) -> None:
    """image → volume (filled by the agent) boots; a blank volume is there too; what the
    guest wrote to its boot disk survives the server (delete_on_termination false) and the
    blank volume does not (true); the volume boots again in a second server."""
    before = stack.volume_ids()
    server = stack.build("bfv-1", [
        _image_volume(volume_type, delete_on_termination=False),
        {"source_type": "blank", "destination_type": "volume", "volume_size": 1,
         "boot_index": -1, "delete_on_termination": True, "volume_type": "nbd"},
    ])
    assert server["status"] == "ACTIVE", server
    assert server["image"] == ""
    attached = {v["id"]: v["delete_on_termination"]
                for v in server["os-extended-volumes:volumes_attached"]}
    assert len(attached) == 2 and set(attached) == stack.volume_ids() - before
    [boot_vid] = [v for v, dot in attached.items() if not dot]
    [blank_vid] = [v for v, dot in attached.items() if dot]
    devices = {a["volumeId"]: a["device"] for a in stack.nova.attachments(server["id"])}
    assert devices[boot_vid] == "/dev/vda"
    r = stack.nova.request("DELETE", f"/servers/{server['id']}/os-volume_attachments/{boot_vid}")
    assert r.status_code == 400 and "root device" in r.text, r.text
    for vid in attached:
        assert stack.api.get(f"/volumes/{vid}").json()["volume"]["status"] == "in-use"

    console = _console(server)  # GUEST-READY: SeaBIOS booted the volume (there is no -kernel)
    try:
        boot_dev = _boot_disk(console, boot_vid)
        blank_dev = console.wait_disk(blank_vid, size=GiB)
        assert console.check(f"dd if={blank_dev} bs=1M count=1 2>/dev/null | "
                             f"tr -d '\\000' | wc -c").strip() == "0"
        mark = f"BFV-{uuid.uuid4()}"
        console.check(f"echo {mark} | dd of={boot_dev} bs=1M seek={MARK_OFFSET_MIB} "
                      f"conv=fsync 2>/dev/null")
    finally:
        console.close()
    stack.nova.delete(server["id"])
    stack.api.wait_volume(boot_vid, "available")
    stack.api.wait_volume(blank_vid, "deleted")

    again = stack.build("bfv-2", [{"source_type": "volume", "uuid": boot_vid,
                                   "destination_type": "volume", "boot_index": "0"}])
    assert again["status"] == "ACTIVE", again
    assert again["os-extended-volumes:volumes_attached"] == [
        {"id": boot_vid, "delete_on_termination": False}]
    console = _console(again)
    try:
        boot_dev = _boot_disk(console, boot_vid)
        out = console.check(f"dd if={boot_dev} bs=1M skip={MARK_OFFSET_MIB} count=1 "
                            f"2>/dev/null | head -c {len(mark)}")
        assert out == mark
    finally:
        console.close()
    stack.nova.delete(again["id"])
    stack.api.wait_volume(boot_vid, "available")  # delete_on_termination defaults to false
    assert stack.api.delete(f"/volumes/{boot_vid}").status_code == 202
    stack.api.wait_volume(boot_vid, "deleted")


def _bad_mappings() -> list[tuple[Any, str]]:
    """(block_device_mapping_v2, what the 400 says)."""
    missing = str(uuid.uuid4())
    return [
        ([{"source_type": "volume", "destination_type": "volume", "boot_index": 0}],
         "Block Device Mapping is Invalid: Missing device UUID."),
        ([{"source_type": "blank", "uuid": missing, "destination_type": "volume",
           "volume_size": 1, "boot_index": 0}],
         "Block Device Mapping is Invalid: Invalid device UUID."),
        ([_image_volume(boot_index=1)],
         "Block Device Mapping is Invalid: Boot sequence for the instance and image/block "
         "device mapping combination is not valid."),
        ([_image_volume(uuid="nope")], "Block Device Mapping is Invalid: failed to get image "
                                       "nope."),
        ([_image_volume(volume_size=0)], "Images with destination_type 'volume' need to have "
                                         "a non-zero size specified"),
        ([_image_volume(), {"source_type": "blank", "destination_type": "volume"}],
         "Blank volumes (source: 'blank', dest: 'volume') need to have non-zero size"),
        ([{"source_type": "volume", "uuid": missing, "destination_type": "volume",
           "boot_index": 0}], f"Block Device Mapping is Invalid: failed to get volume "
                              f"{missing}."),
        ([{"source_type": "snapshot", "uuid": missing, "destination_type": "volume",
           "boot_index": 0}], "source_type snapshot is not supported"),
        ([{"source_type": "blank", "destination_type": "local", "volume_size": 1,
           "boot_index": 0}], "destination_type local is not supported"),
        ([_image_volume(), {"source_type": "blank", "destination_type": "volume",
                            "volume_size": 1, "device_name": "vda"}],
         "The same device name is given to two block devices."),
        ([_image_volume(colour="blue")], "Additional properties are not allowed"),
        ([_image_volume(source_type="floppy")], "Invalid input for field/attribute "
                                                "source_type."),
        ("all", "Invalid input for field/attribute block_device_mapping_v2."),
    ]


@pytest.mark.parametrize(("version", "key"), [("2.41", "tag"), ("2.66", "volume_type")])
def test_keys_of_later_microversions_are_refused(stack: Stack, version: str,
                                                 key: str) -> None:
    """Each key alone, at the version before Nova took it (its value is otherwise fine)."""
    bdm = {"source_type": "blank", "destination_type": "volume", "volume_size": 1,
           "boot_index": 0, key: "x"}
    nova = stack.agent.nova(version=version)
    try:
        r = nova.request("POST", "/servers", {"server": {
            "name": "early", "flavorRef": "m1.tiny", "block_device_mapping_v2": [bdm]}})
    finally:
        nova.close()
    assert r.status_code == 400, r.text
    assert f"('{key}' was unexpected)" in r.json()["badRequest"]["message"]


def test_bad_mappings_are_400_and_create_nothing(stack: Stack) -> None:
    volumes, servers = stack.volume_ids(), stack.server_ids()
    for bdms, message in _bad_mappings():
        r = stack.create("bad", bdms)
        assert r.status_code == 400, (bdms, r.text)
        assert message in r.json()["badRequest"]["message"], (bdms, r.text)
    assert stack.volume_ids() == volumes
    assert stack.server_ids() == servers


@pytest.mark.parametrize("failpoint", ["compute.boot.image_copied", "compute.boot.plugged",
                                       "compute.attach.connected"])
def test_a_failed_build_leaves_no_volume(stack: Stack, failpoint: str) -> None:
    """The build fails after the agent created volumes (and, for the later points, started
    the guest and plugged them): the server is ERROR with the fault, the volumes it created
    are gone, the existing one is available again with no attachment, no QEMU is left."""
    existing = stack.volume()
    before = stack.volume_ids()
    stack.failpoints.write_text(f"{failpoint}=error\n")
    try:
        server = stack.build("doomed", [
            _image_volume(),
            {"source_type": "blank", "destination_type": "volume", "volume_size": 1},
            {"source_type": "volume", "uuid": existing, "destination_type": "volume"},
        ])
    finally:
        stack.failpoints.write_text("")
    assert server["status"] == "ERROR", server
    assert failpoint in server["fault"]["message"]
    assert server["os-extended-volumes:volumes_attached"] == []
    assert stack.volume_ids() == before  # both created volumes are deleted again
    stack.api.wait_volume(existing, "available")
    r = stack.api.get(f"/attachments?volume_id={existing}")
    assert r.json()["attachments"] == []
    assert not processes_mentioning(server["id"], "qemu-system")
    stack.nova.delete(server["id"])
    assert server["id"] not in stack.server_ids()
    assert stack.api.delete(f"/volumes/{existing}").status_code == 202


def test_image_boot_with_volumes_at_boot(stack: Stack) -> None:
    """imageRef boots (the kernel image), the mapped volumes are there from the first
    instruction on: the guest finds them at boot, not by hot-plug later."""
    existing = stack.volume("local")
    before = stack.volume_ids()
    server = stack.build("with-disks", [
        {"source_type": "blank", "destination_type": "volume", "volume_size": 1,
         "delete_on_termination": "true", "volume_type": "nbd", "tag": "scratch"},
        {"source_type": "volume", "uuid": existing, "destination_type": "volume",
         "boot_index": None},
    ], imageRef="tiny")
    assert server["status"] == "ACTIVE", server
    assert server["image"]["id"]  # the image booted it (its name, or its id in a catalog)
    [blank] = stack.volume_ids() - before
    console = _console(server)
    try:
        # no waiting: virtio-blk probes the disks while init loads its driver, before READY
        disks = console.disks()
        assert disks[blank[:20]][1] == GiB and disks[existing[:20]][1] == GiB, disks
    finally:
        console.close()
    tags = {a["volumeId"]: a["tag"] for a in stack.nova.attachments(server["id"])}
    assert tags == {blank: "scratch", existing: None}
    stack.nova.delete(server["id"])
    stack.api.wait_volume(blank, "deleted")
    stack.api.wait_volume(existing, "available")
    assert stack.api.delete(f"/volumes/{existing}").status_code == 202


@pytest.mark.parametrize("failpoint", ["compute.boot.image_copied", "compute.boot.plugged"])
def test_a_build_cut_short_by_a_crash_is_undone_at_restart(stack: Stack,
                                                           failpoint: str) -> None:
    """kill -9 of the agent while it fills an image volume (attached to this host) or
    while the paused guest has its disks: the restarted agent stops the guest, releases
    everything and deletes the volumes it created; the server is ERROR."""
    existing = stack.volume()
    before = stack.volume_ids()
    stack.failpoints.write_text(f"{failpoint}\n")  # kill -9 there
    try:
        r = stack.create("crashed", [
            _image_volume(),
            {"source_type": "blank", "destination_type": "volume", "volume_size": 1,
             "volume_type": "nbd"},
            {"source_type": "volume", "uuid": existing, "destination_type": "volume"},
        ])
        assert r.status_code == 202, r.text
        server_id = r.json()["server"]["id"]
        stack.agent.wait_exit(BOOT_TIMEOUT)
    finally:
        stack.failpoints.write_text("")
    stack.agent.start()
    server = stack.nova.show(server_id)
    assert server["status"] == "ERROR", server
    assert "being built" in server["fault"]["message"]
    assert server["os-extended-volumes:volumes_attached"] == []
    assert stack.volume_ids() == before
    stack.api.wait_volume(existing, "available")
    assert stack.api.get(f"/attachments?volume_id={existing}").json()["attachments"] == []
    assert not processes_mentioning(server_id, "qemu-system")
    stack.nova.delete(server_id)
    assert stack.api.delete(f"/volumes/{existing}").status_code == 202


def _openstack(stack: Stack, *args: str) -> str:
    return openstack(stack.agent, stack.volumes, *args, timeout=BOOT_TIMEOUT + 60)


def test_openstack_server_create_from_volume(stack: Stack) -> None:
    """`openstack server create --volume VOL --wait`: the CLI's own mapping (boot_index 0,
    source and destination volume) is accepted and the server becomes ACTIVE on it (that
    such a volume boots, the console of the first test shows)."""
    if stack.nova.request("GET", "/flavors/m1.tiny").status_code != 200:
        pytest.skip("the CLI resolves --flavor through /flavors (the catalog branch)")
    seed = stack.build("seed", [_image_volume(delete_on_termination=False)])
    [vid] = [v["id"] for v in seed["os-extended-volumes:volumes_attached"]]
    stack.nova.delete(seed["id"])
    stack.api.wait_volume(vid, "available")
    out = _openstack(stack, "server", "create", "--volume", vid, "--flavor", "m1.tiny",
                     "--wait", "-f", "value", "-c", "id", "cli-bfv")
    server = stack.nova.show(out.strip())
    assert server["status"] == "ACTIVE" and server["image"] == "", server
    assert server["os-extended-volumes:volumes_attached"] == [
        {"id": vid, "delete_on_termination": False}]
    assert stack.api.get(f"/volumes/{vid}").json()["volume"]["status"] == "in-use"
    _openstack(stack, "server", "delete", "--wait", server["id"])
    stack.api.wait_volume(vid, "available")
    assert stack.api.delete(f"/volumes/{vid}").status_code == 202
