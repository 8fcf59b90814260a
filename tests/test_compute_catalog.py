"""The agent's catalog, console log and volume proxies end to end: the real `openstack` CLI,
unchanged, against a real `blockyard compute` (one TCG guest) and a real volume service with
its default file backend.

The CLI resolves ``--flavor`` and ``--image`` names through the agent's flavors and its
Glance subset (clouds.yaml's ``image_endpoint_override``), boots a server and reads its
console log; os-volumes and os-snapshots (no CLI speaks them any more) go through the agent
to the volume service with the caller's identity, which is checked on the volume service's
side.
"""

from __future__ import annotations

import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from blockyard.compute.config import IMAGE_NAMESPACE
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
from tests.support.server import Api, Server, free_port

BIN = Path(sys.executable).parent
TINY_ID = str(uuid.uuid5(IMAGE_NAMESPACE, "tiny"))


class Stack:
    def __init__(self, volumes: Server, agent: ComputeServer) -> None:
        self.volumes, self.agent = volumes, agent
        self.api: Api = volumes.client()
        self.nova: Nova = agent.nova()
        self.servers: list[str] = []

    def openstack(self, *args: str) -> str:
        return openstack(self.agent, self.volumes, *args, timeout=300)

    def proxy(self, project: str = "admin", version: str = "2.1") -> httpx.Client:
        """The agent's API as `project`'s user at `version` (the proxies end at 2.35)."""
        return httpx.Client(base_url=self.agent.endpoint, timeout=60, headers={
            "X-Auth-Token": f"user:{project}", "OpenStack-API-Version": f"compute {version}"})


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    image = build_test_guest()
    base = short_alias(tmp_path_factory.mktemp("catalog"))
    volumes = Server(base / "volumes").start()
    agent = ComputeServer(base / "agent", port=free_port(),
                          config=compute_config(volumes.url, images={"tiny": image}))
    st = Stack(volumes, agent)
    try:
        agent.start()
        yield st
    finally:
        for server_id in st.servers:
            st.nova.delete(server_id)
        agent.stop()
        volumes.close()
    assert not processes_mentioning(str(base), "qemu-system"), "a guest outlived the tests"


def _wait(what: str, check: Any, timeout: float = 180.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        found = check()
        if found:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"no {what} within {timeout} s")
        time.sleep(0.5)


# ---------------------------------------------------------------------- flavors, images
def test_cli_lists_and_shows_flavors(stack: Stack) -> None:
    out = stack.openstack("flavor", "list", "-f", "value", "-c", "ID", "-c", "RAM",
                          "-c", "VCPUs")
    assert out.split() == ["m1.tiny", "128", "1"]
    out = stack.openstack("flavor", "show", "m1.tiny", "-f", "value", "-c", "ram", "-c",
                          "vcpus", "-c", "swap")
    assert out.split() == ["128", "0", "1"]


def test_cli_lists_and_shows_images(stack: Stack) -> None:
    out = stack.openstack("image", "list", "-f", "value", "-c", "ID", "-c", "Name",
                          "-c", "Status")
    assert out.split() == [TINY_ID, "tiny", "active"]
    out = stack.openstack("image", "show", "tiny", "-f", "value", "-c", "id", "-c", "size")
    size = sum(Path(p).stat().st_size for p in build_test_guest().values() if p.startswith("/"))
    assert out.split() == [TINY_ID, str(size)]


# ---------------------------------------------------------------------- servers, console
def test_cli_creates_a_server_by_names_and_reads_its_console_log(stack: Stack) -> None:
    """`server create --image tiny --flavor m1.tiny --wait` unchanged; the console log holds
    the guest's boot output though nobody connected to its console."""
    out = stack.openstack("server", "create", "--image", "tiny", "--flavor", "m1.tiny",
                          "--wait", "-f", "value", "-c", "id", "-c", "status", "-c", "image",
                          "cli-server")
    server_id, image, status = out.splitlines()  # show's fields come sorted by name
    stack.servers.append(server_id)
    assert (image, status) == (f"tiny ({TINY_ID})", "ACTIVE")
    # listing commands insist on an identity v3 client: the README's clouds.yaml gives one
    assert server_id in stack.openstack("server", "list", "-f", "value", "-c", "ID").split()
    stack.openstack("volume", "list")
    log = _wait("GUEST-READY in the console log", lambda: (
        text := stack.openstack("console", "log", "show", server_id)) and
        "GUEST-READY" in text and text)
    assert "GUEST-READY" in log
    stack.openstack("server", "delete", "--wait", server_id)
    stack.servers.remove(server_id)
    r = stack.nova.request("GET", f"/servers/{server_id}")
    assert r.status_code == 404


def test_console_socket_and_log_see_the_same_console(stack: Stack) -> None:
    """The console socket still drives the guest (tests need it), and what the guest prints
    there is in the log too; --lines gives the last lines."""
    server = stack.nova.create("socket-server", TINY_ID)  # imageRef by id, as the CLI sends
    stack.servers.append(server["id"])
    console = GuestConsole(server["blockyard:console_socket"])
    try:
        marker = uuid.uuid4().hex
        assert marker in console.check(f"echo {marker}")
        last = _wait("the marker in the console log", lambda: (
            text := stack.openstack("console", "log", "show", "--lines", "2",
                                    server["id"])) and marker in text and text)
        assert last.splitlines() == [marker, "GUEST-DONE 0"]  # the guest's last two lines
        whole = stack.openstack("console", "log", "show", server["id"])
        assert whole.index("GUEST-READY") < whole.index(marker)
    finally:
        console.close()


# ---------------------------------------------------------------------- os-volumes, os-snapshots
def _proxied(client: httpx.Client, kind: str, ident: str, status: str) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        r = client.get(f"/os-{kind}s/{ident}")
        assert r.status_code == 200, r.text
        body: dict[str, Any] = r.json()[kind]
        assert body["status"] not in ("error", "error_deleting"), body
        return body if body["status"] == status else None

    found: dict[str, Any] = _wait(f"{kind} {ident} {status}", check, 60)
    return found


def test_volume_proxies_through_the_agent(stack: Stack) -> None:
    with stack.proxy("p1") as nova, stack.proxy("p2") as other:
        r = nova.post("/os-volumes", json={"volume": {
            "size": 1, "display_name": "proxied", "display_description": "via nova",
            "availability_zone": "nova", "metadata": {"k": "v"}}})
        assert r.status_code == 200, r.text
        vol = r.json()["volume"]
        assert r.headers["location"].endswith(f"/os-volumes/{vol['id']}")
        vol = _proxied(nova, "volume", vol["id"], "available")
        assert (vol["displayName"], vol["availabilityZone"], vol["metadata"], vol["size"]) == \
            ("proxied", "nova", {"k": "v"}, 1)
        # the volume service made it in the caller's project, and says so to that project
        own = stack.volumes.client(project="p1", user="user")
        assert own.get(f"/volumes/{vol['id']}").json()["volume"]["name"] == "proxied"
        for path in ("/os-volumes", "/os-volumes/detail"):
            assert [v["id"] for v in nova.get(path).json()["volumes"]] == [vol["id"]]
            assert other.get(path).json()["volumes"] == []
        # (a show by id is the volume service's call too: under noauth every caller is an
        # admin there, as in Cinder, so p2 may read it, through the agent or not)
        theirs = stack.volumes.client(project="p2", user="user")
        assert other.get(f"/os-volumes/{vol['id']}").status_code == \
            theirs.get(f"/volumes/{vol['id']}").status_code
        theirs.close()

        r = nova.post("/os-snapshots", json={"snapshot": {
            "volume_id": vol["id"], "display_name": "snap"}})
        assert r.status_code == 200, r.text
        snap = _proxied(nova, "snapshot", r.json()["snapshot"]["id"], "available")
        assert (snap["volumeId"], snap["displayName"], snap["size"]) == (vol["id"], "snap", 1)
        assert [s["id"] for s in nova.get("/os-snapshots/detail").json()["snapshots"]] == \
            [snap["id"]]
        assert other.get("/os-snapshots").json()["snapshots"] == []

        r = nova.post("/os-volumes", json={"volume": {"size": 1, "snapshot_id": snap["id"]}})
        assert r.status_code == 200, r.text
        clone = _proxied(nova, "volume", r.json()["volume"]["id"], "available")
        assert clone["snapshotId"] == snap["id"]

        # a volume with a snapshot cannot go: the volume service's 400, in Nova's shape
        r = nova.delete(f"/os-volumes/{vol['id']}")
        assert r.status_code == 400 and "badRequest" in r.json(), r.text
        # refused where Nova refuses, before anything is made
        r = nova.post("/os-volumes", json={"volume": {"size": 1, "availability_zone": "mars"}})
        assert r.status_code == 400, r.text
        r = nova.post("/os-volumes", json={"volume": {"size": 1,
                                                      "snapshot_id": str(uuid.uuid4())}})
        assert r.status_code == 404, r.text
        assert len(own.get("/volumes").json()["volumes"]) == 2

        for kind, ident in (("volume", clone["id"]), ("snapshot", snap["id"]),
                            ("volume", vol["id"])):
            r = nova.delete(f"/os-{kind}s/{ident}")
            assert r.status_code == 202, r.text
            _wait(f"{kind} {ident} gone",
                  lambda k=kind, i=ident: nova.get(f"/os-{k}s/{i}").status_code == 404, 60)
        assert own.get("/volumes").json()["volumes"] == []
        own.close()

    with stack.proxy("p1", "2.36") as later:
        for path in ("/os-volumes", "/os-snapshots", f"/os-volumes/{vol['id']}"):
            assert later.get(path).status_code == 404, path
