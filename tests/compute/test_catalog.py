"""The agent's catalog and proxies, as units: flavors and images (Nova's and Glance's
shapes, filters, paging), the console log's bounded tail and the console action's checks,
and os-volumes/os-snapshots against a recording stand-in of the volume API (what is sent
on, how answers and errors are reshaped). The real services and the real CLI are
tests/test_compute_catalog.py's."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.testclient import TestClient

from blockyard.compute import config as compute_config
from blockyard.compute.api import create_app
from blockyard.compute.console import tail
from blockyard.compute.manager import Agent
from blockyard.compute.store import Instance, InstanceStatus
from blockyard.compute.volume_api import Caller, VolumeApi, VolumeApiError
from blockyard.identity import from_noauth

VOLUME = "0d9f5e8a-6c1b-4b7e-9a55-3f2c1d0e9b11"
SNAPSHOT = "5a1e3c9d-2b4f-4e6a-8c7d-9f0e1a2b3c4d"


class Volumes(VolumeApi):
    """The volume API as a dict of volumes and snapshots; every call is recorded with the
    caller it was made for."""

    def __init__(self) -> None:
        super().__init__("http://127.0.0.1:9")
        self.calls: list[tuple[str, Caller, Any]] = []
        self.volumes: dict[str, dict[str, Any]] = {VOLUME: {
            "id": VOLUME, "status": "in-use", "size": 2, "availability_zone": "nova",
            "created_at": "2026-01-01T00:00:00.000000", "name": "v", "description": "d",
            "volume_type": "local", "snapshot_id": None, "metadata": {"k": "v"},
            "attachments": [{"server_id": "s1", "attachment_id": "a1", "device": "/dev/vdb"}]}}
        self.snapshots: dict[str, dict[str, Any]] = {SNAPSHOT: {
            "id": SNAPSHOT, "volume_id": VOLUME, "status": "available", "size": 2,
            "created_at": "2026-01-01T00:00:00.000000", "name": "s", "description": None}}
        #: the status the next create fails with, if any
        self.refuse: int | None = None

    def _get(self, table: dict[str, dict[str, Any]], ident: str, kind: str) -> dict[str, Any]:
        if ident not in table:
            raise VolumeApiError(404, f"{kind} {ident} could not be found.", "GET")
        return table[ident]

    async def list_volumes(self, caller: Caller) -> list[dict[str, Any]]:
        self.calls.append(("list_volumes", caller, None))
        return list(self.volumes.values())

    async def get_volume(self, caller: Caller, volume_id: str) -> dict[str, Any]:
        self.calls.append(("get_volume", caller, volume_id))
        return self._get(self.volumes, volume_id, "Volume")

    async def create_volume(self, caller: Caller, volume: dict[str, Any]) -> dict[str, Any]:
        self.calls.append(("create_volume", caller, volume))
        if self.refuse:
            raise VolumeApiError(self.refuse, "refused", "POST /volumes")
        vol = {"id": str(uuid.uuid4()), "status": "creating", "attachments": [], **volume}
        self.volumes[vol["id"]] = vol
        return vol

    async def delete_volume(self, caller: Caller, volume_id: str) -> None:
        self.calls.append(("delete_volume", caller, volume_id))
        self._get(self.volumes, volume_id, "Volume")
        del self.volumes[volume_id]

    async def list_snapshots(self, caller: Caller) -> list[dict[str, Any]]:
        self.calls.append(("list_snapshots", caller, None))
        return list(self.snapshots.values())

    async def get_snapshot(self, caller: Caller, snapshot_id: str) -> dict[str, Any]:
        self.calls.append(("get_snapshot", caller, snapshot_id))
        return self._get(self.snapshots, snapshot_id, "Snapshot")

    async def create_snapshot(self, caller: Caller, snapshot: dict[str, Any]) -> dict[str, Any]:
        self.calls.append(("create_snapshot", caller, snapshot))
        if self.refuse:
            raise VolumeApiError(self.refuse, "refused", "POST /snapshots")
        snap = {"id": str(uuid.uuid4()), "status": "creating", **snapshot}
        self.snapshots[snap["id"]] = snap
        return snap

    async def delete_snapshot(self, caller: Caller, snapshot_id: str) -> None:
        self.calls.append(("delete_snapshot", caller, snapshot_id))
        self._get(self.snapshots, snapshot_id, "Snapshot")
        del self.snapshots[snapshot_id]


@pytest.fixture
def image_files(tmp_path: Path) -> dict[str, Path]:
    files = {"kernel": tmp_path / "vmlinuz", "initrd": tmp_path / "initrd.img",
             "disk": tmp_path / "root.qcow2"}
    for i, path in enumerate(files.values()):
        path.write_bytes(b"x" * (100 + i))
    return files


@pytest.fixture
def client(tmp_path: Path, image_files: dict[str, Path]) -> Iterator[TestClient]:
    cfg = compute_config.build({
        "images": {"tiny": {"kernel": str(image_files["kernel"]),
                            "initrd": str(image_files["initrd"])},
                   "disky": {"disk": str(image_files["disk"])}},
        "flavors": {"small": {"ram_mb": 256, "vcpus": 2}, "big": {"ram_mb": 1024, "vcpus": 4}},
    }, state_dir=str(tmp_path / "state"))
    with TestClient(create_app(cfg)) as tc:
        agent: Agent = tc.app.state.agent  # type: ignore[attr-defined]
        real, agent.volumes = agent.volumes, Volumes()
        yield tc
        agent.volumes = real


def _get(tc: TestClient, path: str, version: str = "2.89", token: str = "admin:admin") -> Any:
    return tc.get(path, headers={"X-Auth-Token": token,
                                 "OpenStack-API-Version": f"compute {version}"})


def _post(tc: TestClient, path: str, body: Any, version: str = "2.1",
          token: str = "admin:admin") -> Any:
    return tc.post(path, json=body, headers={"X-Auth-Token": token,
                                             "OpenStack-API-Version": f"compute {version}"})


def _fake(tc: TestClient) -> Volumes:
    volumes = tc.app.state.agent.volumes  # type: ignore[attr-defined]
    assert isinstance(volumes, Volumes)
    return volumes


# ---------------------------------------------------------------------- flavors
def test_flavors_are_the_configured_ones_with_nova_shapes(client: TestClient) -> None:
    r = _get(client, "/v2.1/flavors")
    assert [f["id"] for f in r.json()["flavors"]] == ["big", "m1.tiny", "small"]
    assert set(r.json()["flavors"][0]) == {"id", "name", "links", "description"}
    tiny = _get(client, "/v2.1/flavors/m1.tiny").json()["flavor"]
    assert (tiny["ram"], tiny["vcpus"], tiny["disk"], tiny["swap"]) == (128, 1, 0, 0)
    assert tiny["os-flavor-access:is_public"] is True and tiny["extra_specs"] == {}
    assert tiny["links"][0]["href"].endswith("/v2.1/flavors/m1.tiny")
    old = _get(client, "/v2.1/flavors/m1.tiny", "2.1").json()["flavor"]
    assert old["swap"] == "" and "description" not in old and "extra_specs" not in old
    assert "description" in _get(client, "/v2.1/flavors/m1.tiny", "2.55").json()["flavor"]
    r = _get(client, "/v2.1/flavors/nope")
    assert r.status_code == 404 and r.json()["itemNotFound"]["message"] == \
        "Flavor nope could not be found."
    assert _get(client, "/v2.1/flavors/small/os-extra_specs").json() == {"extra_specs": {}}


@pytest.mark.parametrize("query, ids", [
    ("minRam=256", ["big", "small"]),
    ("minDisk=1", []),
    ("limit=1", ["big"]),
    ("marker=big&limit=1", ["m1.tiny"]),
    ("sort_key=memory_mb&sort_dir=desc", ["big", "small", "m1.tiny"]),
    ("is_public=none", ["big", "m1.tiny", "small"]),
    ("is_public=false", []),
])
def test_flavor_filters_and_paging(client: TestClient, query: str, ids: list[str]) -> None:
    r = _get(client, f"/v2.1/flavors/detail?{query}")
    assert r.status_code == 200, r.text
    assert [f["id"] for f in r.json()["flavors"]] == ids


@pytest.mark.parametrize("query", ["limit=x", "limit=-1", "minRam=big", "marker=nope",
                                   "sort_key=colour", "sort_dir=up", "is_public=maybe"])
def test_bad_flavor_queries_are_400(client: TestClient, query: str) -> None:
    r = _get(client, f"/v2.1/flavors?{query}")
    assert r.status_code == 400 and "badRequest" in r.json(), r.text


# ---------------------------------------------------------------------- images
def test_image_ids_are_stable_and_resolve_like_names(client: TestClient) -> None:
    agent: Agent = client.app.state.agent  # type: ignore[attr-defined]
    tiny = agent.config.images["tiny"]
    assert tiny.id == str(uuid.uuid5(compute_config.IMAGE_NAMESPACE, "tiny"))
    assert agent.config.image(tiny.id) is tiny and agent.config.image("tiny") is tiny
    assert agent.config.image("nope") is None


def test_glance_lists_and_shows_the_configured_images(
        client: TestClient, image_files: dict[str, Path]) -> None:
    r = client.get("/image")  # version discovery: no token needed
    assert r.status_code == 300
    assert r.json()["versions"][0]["links"][0]["href"].endswith("/image/v2/")
    images = _get(client, "/image/v2/images").json()["images"]
    assert [i["name"] for i in images] == ["disky", "tiny"]
    tiny = _get(client, "/image/v2/images?name=tiny").json()["images"]
    assert len(tiny) == 1
    shown = _get(client, f"/image/v2/images/{tiny[0]['id']}").json()
    assert shown == tiny[0]
    assert (shown["status"], shown["visibility"], shown["disk_format"]) == \
        ("active", "public", "aki")
    assert shown["size"] == 100 + 101  # kernel and initrd
    disky = _get(client, "/image/v2/images?name=disky").json()["images"][0]
    assert (disky["disk_format"], disky["container_format"], disky["size"]) == \
        ("qcow2", "bare", 102)
    # Glance finds images by id only: the name is a 404 (openstacksdk then lists by name)
    assert _get(client, "/image/v2/images/tiny").status_code == 404
    assert _get(client, "/image/v2/images?name=nope").json()["images"] == []


def test_glance_pages_with_a_next_link(client: TestClient) -> None:
    first = _get(client, "/image/v2/images?limit=1").json()
    assert [i["name"] for i in first["images"]] == ["disky"]
    assert first["next"] == f"/v2/images?marker={first['images'][0]['id']}&limit=1"
    second = _get(client, "/image" + first["next"]).json()
    assert [i["name"] for i in second["images"]] == ["tiny"] and "next" not in second
    assert _get(client, "/image/v2/images?marker=nope").status_code == 400


def test_nova_image_proxy_ends_at_2_35(client: TestClient) -> None:
    r = _get(client, "/v2.1/images/detail", "2.35")
    assert r.status_code == 200
    tiny = next(i for i in r.json()["images"] if i["name"] == "tiny")
    assert (tiny["status"], tiny["OS-EXT-IMG-SIZE:size"]) == ("ACTIVE", 201)
    assert _get(client, f"/v2.1/images/{tiny['id']}", "2.1").json()["image"]["id"] == \
        tiny["id"]
    assert _get(client, "/v2.1/images/tiny", "2.1").status_code == 404
    for path in ("/v2.1/images", "/v2.1/images/detail", f"/v2.1/images/{tiny['id']}"):
        r = _get(client, path, "2.36")
        assert r.status_code == 404 and "itemNotFound" in r.json(), path


# ---------------------------------------------------------------------- console
def test_console_tail_is_bounded_and_by_lines(tmp_path: Path) -> None:
    log = tmp_path / "console.log"
    assert tail(log, None) == ""  # not written yet
    log.write_bytes(b"".join(b"line %d\r\n" % i for i in range(100000)) + b"\x07last")
    out = tail(log, None, max_bytes=4096)
    assert len(out) < 4096 and out.endswith("line 99999\nlast")
    assert out.startswith("line ")  # the line cut by the bound is dropped, not half-shown
    assert "\r" not in out and "\x07" not in out  # Nova's control characters are gone
    assert tail(log, 2) == "line 99999\nlast"
    assert tail(log, 0) == ""


def _server(tc: TestClient, tmp_path: Path, *, console: bool = True,
            status: str = InstanceStatus.ACTIVE) -> str:
    agent: Agent = tc.app.state.agent  # type: ignore[attr-defined]
    sid = str(uuid.uuid4())
    (tmp_path / sid).mkdir()
    agent.store.add_instance(Instance(
        id=sid, name="s", project_id="admin", user_id="admin", status=status,
        qmp_socket=str(tmp_path / sid / "qmp.sock"),
        console_socket=str(tmp_path / sid / "console.sock") if console else None))
    return sid


def test_console_output_action(client: TestClient, tmp_path: Path) -> None:
    sid = _server(client, tmp_path)
    action = f"/v2.1/servers/{sid}/action"
    assert _post(client, action, {"os-getConsoleOutput": {}}).json() == {"output": ""}
    (tmp_path / sid / "console.log").write_text("boot\nGUEST-READY\nhello\n")
    for length, out in ((None, "boot\nGUEST-READY\nhello\n"), (-1, "boot\nGUEST-READY\nhello\n"),
                        (1, "hello\n"), ("2", "GUEST-READY\nhello\n"), (0, "")):
        r = _post(client, action, {"os-getConsoleOutput": {"length": length}})
        assert r.status_code == 200 and r.json() == {"output": out}, (length, r.text)


@pytest.mark.parametrize("body", [
    {"os-getConsoleOutput": {"length": -2}}, {"os-getConsoleOutput": {"length": "ten"}},
    {"os-getConsoleOutput": {"length": 1.5}}, {"os-getConsoleOutput": {"length": True}},
    {"os-getConsoleOutput": {"lines": 3}}, {"os-getConsoleOutput": None},
    {"os-getConsoleOutput": {}, "extra": 1}, {"os-reboot": {}}, {}, [],
])
def test_console_output_refuses_bad_bodies(client: TestClient, tmp_path: Path,
                                           body: Any) -> None:
    r = _post(client, f"/v2.1/servers/{_server(client, tmp_path)}/action", body)
    assert r.status_code == 400 and "badRequest" in r.json(), r.text


def test_console_output_of_what_has_no_console(client: TestClient, tmp_path: Path) -> None:
    body = {"os-getConsoleOutput": {}}
    r = _post(client, f"/v2.1/servers/{uuid.uuid4()}/action", body)
    assert r.status_code == 404 and "Instance" in r.text
    r = _post(client, f"/v2.1/servers/{_server(client, tmp_path, console=False)}/action", body)
    assert r.status_code == 404 and "console" in r.text  # adopted: not the agent's console
    r = _post(client, f"/v2.1/servers/{_server(client, tmp_path, status='BUILD')}/action",
              body)
    assert r.status_code == 409


# ---------------------------------------------------------------------- os-volumes, os-snapshots
def test_volumes_are_shown_as_nova_shows_them(client: TestClient) -> None:
    r = _get(client, f"/v2.1/os-volumes/{VOLUME}", "2.1", token="alice:p1")
    assert r.status_code == 200, r.text
    assert r.json()["volume"] == {
        "id": VOLUME, "status": "in-use", "size": 2, "availabilityZone": "nova",
        "createdAt": "2026-01-01T00:00:00.000000", "displayName": "v",
        "displayDescription": "d", "volumeType": "local", "snapshotId": None,
        "metadata": {"k": "v"}, "attachments": [
            {"id": VOLUME, "volumeId": VOLUME, "serverId": "s1", "device": "/dev/vdb"}]}
    name, caller, _ = _fake(client).calls[-1]
    # the caller's own identity goes on to the volume service
    assert (name, caller.project_id, caller.token) == ("get_volume", "p1", "alice:p1")
    for path in ("/v2.1/os-volumes", "/v2.1/os-volumes/detail"):
        assert _get(client, path, "2.35").json()["volumes"][0]["id"] == VOLUME
    snap = _get(client, f"/v2.1/os-snapshots/{SNAPSHOT}", "2.1").json()["snapshot"]
    assert snap == {"id": SNAPSHOT, "volumeId": VOLUME, "status": "available", "size": 2,
                    "createdAt": "2026-01-01T00:00:00.000000", "displayName": "s",
                    "displayDescription": None}


def test_create_sends_the_volume_apis_fields(client: TestClient) -> None:
    fake = _fake(client)
    r = _post(client, "/v2.1/os-volumes", {"volume": {
        "size": "3", "display_name": "n", "display_description": "d", "volume_type": "t",
        "metadata": {"a": "b"}, "availability_zone": "nova", "snapshot_id": SNAPSHOT}})
    assert r.status_code == 200, r.text
    assert [c[0] for c in fake.calls] == ["get_snapshot", "create_volume"]
    assert fake.calls[-1][2] == {"size": 3, "name": "n", "description": "d",
                                 "volume_type": "t", "metadata": {"a": "b"},
                                 "availability_zone": "nova", "snapshot_id": SNAPSHOT}
    vol = r.json()["volume"]
    assert (vol["snapshotId"], vol["attachments"]) == (SNAPSHOT, [{}])
    assert r.headers["location"].endswith(f"/v2.1/os-volumes/{vol['id']}")
    r = _post(client, "/v2.1/os-snapshots", {"snapshot": {
        "volume_id": VOLUME, "force": "true", "display_name": "s2"}})
    assert r.status_code == 200, r.text
    assert fake.calls[-1][2] == {"volume_id": VOLUME, "force": True, "name": "s2"}
    assert r.json()["snapshot"]["displayName"] == "s2"


@pytest.mark.parametrize("path, body", [
    ("/v2.1/os-volumes", {"volume": {}}),
    ("/v2.1/os-volumes", {"volume": {"size": 0}}),
    ("/v2.1/os-volumes", {"volume": {"size": "1.5"}}),
    ("/v2.1/os-volumes", {"volume": {"size": 1, "name": "x"}}),
    ("/v2.1/os-volumes", {"volume": {"size": 1, "metadata": []}}),
    ("/v2.1/os-volumes", {"size": 1}),
    ("/v2.1/os-snapshots", {"snapshot": {}}),
    ("/v2.1/os-snapshots", {"snapshot": {"volume_id": VOLUME, "force": "maybe"}}),
    ("/v2.1/os-snapshots", {"snapshot": {"volume_id": 7}}),
])
def test_bad_creates_are_400_and_send_nothing(client: TestClient, path: str,
                                              body: Any) -> None:
    r = _post(client, path, body)
    assert r.status_code == 400 and "badRequest" in r.json(), r.text
    assert _fake(client).calls == []


def test_errors_come_back_as_nova_faults(client: TestClient) -> None:
    fake = _fake(client)
    missing = str(uuid.uuid4())
    r = _get(client, f"/v2.1/os-volumes/{missing}", "2.1")
    assert r.json() == {"itemNotFound": {"code": 404,
                                         "message": f"Volume {missing} could not be found."}}
    r = _post(client, "/v2.1/os-volumes", {"volume": {"size": 1, "snapshot_id": missing}})
    assert r.status_code == 404 and "Snapshot" in r.text
    assert [c[0] for c in fake.calls[-1:]] == ["get_snapshot"]  # nothing created
    fake.calls.clear()
    for path in (f"/v2.1/os-volumes/{'x' * 40}", "/v2.1/os-snapshots/..%2F..%2Fvolumes"):
        assert _get(client, path, "2.1").status_code == 404, path
    assert fake.calls == []  # not a UUID: not asked
    fake.refuse = 413
    r = _post(client, "/v2.1/os-volumes", {"volume": {"size": 1}})
    assert r.status_code == 403 and "forbidden" in r.json()  # Nova's answer to over-quota
    fake.refuse = 500
    r = _post(client, "/v2.1/os-snapshots", {"snapshot": {"volume_id": VOLUME}})
    assert r.status_code == 503


def test_delete_is_202_and_the_proxies_end_at_2_35(client: TestClient) -> None:
    headers = {"X-Auth-Token": "admin:admin", "OpenStack-API-Version": "compute 2.1"}
    r = client.delete(f"/v2.1/os-snapshots/{SNAPSHOT}", headers=headers)
    assert r.status_code == 202 and SNAPSHOT not in _fake(client).snapshots
    r = client.delete(f"/v2.1/os-volumes/{VOLUME}", headers=headers)
    assert r.status_code == 202 and VOLUME not in _fake(client).volumes
    assert client.delete(f"/v2.1/os-volumes/{VOLUME}", headers=headers).status_code == 404
    later = {**headers, "OpenStack-API-Version": "compute 2.36"}
    for method, path in (("GET", "/v2.1/os-volumes"), ("POST", "/v2.1/os-volumes"),
                         ("GET", "/v2.1/os-snapshots/detail"),
                         ("DELETE", f"/v2.1/os-snapshots/{SNAPSHOT}")):
        r = client.request(method, path, headers=later, json={"volume": {"size": 1}})
        assert r.status_code == 404 and "itemNotFound" in r.json(), (method, path)


def test_a_callers_token_is_passed_on_byte_for_byte() -> None:
    """A noauth token with a stray byte (\\x80: latin-1, as HTTP headers are) reaches the
    volume service as it came, instead of failing the request in the HTTP client (500)."""
    seen: list[bytes] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers.raw[[k for k, _ in request.headers.raw].index(
            b"X-Auth-Token")][1])
        return httpx.Response(200, json={"volumes": []})

    async def run() -> list[dict[str, Any]]:
        api = VolumeApi("http://volumes")
        await api.close()
        api._client = httpx.AsyncClient(base_url="http://volumes/v3",
                                        transport=httpx.MockTransport(handler))
        try:
            return await api.list_volumes(Caller.of(from_noauth("\x80:p", None, None)))
        finally:
            await api.close()

    assert asyncio.run(run()) == [] and seen == [b"\x80:p"]
