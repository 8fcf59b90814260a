"""Attach/detach through the attachments API and the legacy actions, on a real server."""

from __future__ import annotations

import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from tests.support.resources import available_volume
from tests.support.server import Api, Server

INSTANCE = "11111111-2222-3333-4444-555555555555"
CONNECTOR = {"initiator": "iqn.1993-08.org.debian:01:abc", "host": "h1", "ip": "127.0.0.1",
             "platform": "x86_64", "os_type": "linux", "multipath": False,
             "mountpoint": "/dev/vdb"}


def _status(api: Api, volume_id: str) -> str:
    return str(api.get(f"/volumes/{volume_id}").json()["volume"]["status"])


def _attachments(api: Api, volume_id: str) -> list[dict[str, Any]]:
    return list(api.get(f"/attachments?volume_id={volume_id}").json()["attachments"])


def test_attachments_api_flow(server: Server) -> None:
    api = server.client()
    vol = available_volume(api)
    r = api.post("/attachments", {"attachment": {"volume_uuid": vol["id"],
                                                 "instance_uuid": INSTANCE}})
    assert r.status_code == 200, r.text
    att = r.json()["attachment"]
    assert (att["status"], att["volume_id"], att["instance"]) == ("reserved", vol["id"], INSTANCE)
    assert (att["attached_at"], att["attach_mode"], att["connection_info"]) == ("", "null", {})
    assert _status(api, vol["id"]) == "reserved"

    r = api.put(f"/attachments/{att['id']}", {"attachment": {"connector": CONNECTOR}})
    assert r.status_code == 200, r.text
    info = r.json()["attachment"]["connection_info"]
    assert info["driver_volume_type"] == "local"
    assert info["attachment_id"] == att["id"]
    assert info["device_path"].endswith(f"volume-{vol['id']}")

    r = api.post(f"/attachments/{att['id']}/action", {"os-complete": None})
    assert r.status_code == 204, r.text
    shown = api.get(f"/attachments/{att['id']}").json()["attachment"]
    assert shown["status"] == "attached" and shown["attach_mode"] == "rw"
    assert shown["attached_at"] != ""
    volume = api.get(f"/volumes/{vol['id']}").json()["volume"]
    assert volume["status"] == "in-use"
    assert [a["attachment_id"] for a in volume["attachments"]] == [att["id"]]
    assert volume["attachments"][0]["host_name"] == "h1"
    assert volume["metadata"]["attached_mode"] == "rw"
    assert api.delete(f"/volumes/{vol['id']}").status_code == 400  # attached

    r = api.delete(f"/attachments/{att['id']}")
    assert (r.status_code, r.json()) == (200, {"attachments": []})
    assert _status(api, vol["id"]) == "available"
    assert api.get(f"/attachments/{att['id']}").status_code == 404


def test_attachment_with_connector_at_once_and_detail_list(server: Server) -> None:
    api = server.client()
    vol = available_volume(api)
    r = api.post("/attachments", {"attachment": {"volume_uuid": vol["id"],
                                                 "instance_uuid": INSTANCE,
                                                 "connector": CONNECTOR, "mode": "ro"}})
    assert r.status_code == 200, r.text
    att = r.json()["attachment"]
    assert att["connection_info"]["driver_volume_type"] == "local"
    assert att["attach_mode"] == "ro"
    detail = api.get("/attachments/detail").json()["attachments"]
    assert att["id"] in {a["id"] for a in detail}
    summary = api.get("/attachments").json()["attachments"]
    assert set(summary[0]) == {"id", "status", "instance", "volume_id"}
    assert api.delete(f"/attachments/{att['id']}").status_code == 200
    assert _status(api, vol["id"]) == "available"


def test_attachments_need_3_27_and_valid_input(server: Server) -> None:
    old = server.client(version="3.0")
    assert old.get("/attachments").status_code == 404
    api = server.client()
    vol = available_volume(api)
    r = api.post("/attachments", {"attachment": {"volume_uuid": vol["id"],
                                                 "instance_uuid": None}})
    assert r.status_code == 400
    assert r.json()["badRequest"]["message"] == (
        "Invalid input for field/attribute instance_uuid. Value: None. None is not of type "
        "'string'")
    assert api.post("/attachments", {"attachment": {}}).status_code == 400
    assert api.post("/attachments", {"attachment": {"volume_uuid": "nope"}}).status_code == 400
    ghost = str(uuid.uuid4())
    assert api.post("/attachments", {"attachment": {"volume_uuid": ghost}}).status_code == 404
    assert api.get(f"/attachments/{ghost}").status_code == 404
    assert _status(api, vol["id"]) == "available"


def test_second_attachment_needs_multiattach(server: Server) -> None:
    api = server.client()
    vol = available_volume(api)
    first = api.post("/attachments", {"attachment": {"volume_uuid": vol["id"]}})
    assert first.status_code == 200
    second = api.post("/attachments", {"attachment": {"volume_uuid": vol["id"]}})
    assert second.status_code == 400, second.text
    api.delete(f"/attachments/{first.json()['attachment']['id']}")

    t = api.post("/types", {"volume_type": {"name": f"multi-{uuid.uuid4().hex[:6]}",
                                            "extra_specs": {"multiattach": "<is> True"}}})
    assert t.status_code == 200, t.text
    multi = available_volume(api, volume_type=t.json()["volume_type"]["name"])
    assert multi["multiattach"] is True
    ids = []
    for host in ("h1", "h2"):
        r = api.post("/attachments", {"attachment": {
            "volume_uuid": multi["id"], "instance_uuid": str(uuid.uuid4()),
            "connector": dict(CONNECTOR, host=host)}})
        assert r.status_code == 200, r.text
        ids.append(r.json()["attachment"]["id"])
        assert api.post(f"/attachments/{ids[-1]}/action", {"os-complete": None}
                        ).status_code == 204
    assert _status(api, multi["id"]) == "in-use"
    api.delete(f"/attachments/{ids[0]}")
    assert _status(api, multi["id"]) == "in-use"  # the second still holds it
    api.delete(f"/attachments/{ids[1]}")
    assert _status(api, multi["id"]) == "available"


def test_concurrent_reservations_have_one_winner(server: Server) -> None:
    api = server.client()
    vol = available_volume(api)

    def attach(_: int) -> int:
        client = server.client()
        try:
            return client.post("/attachments", {"attachment": {"volume_uuid": vol["id"]}}
                               ).status_code
        finally:
            client.close()

    with ThreadPoolExecutor(16) as pool:
        codes = list(pool.map(attach, range(50)))
    assert sorted(set(codes)) == [200, 400], codes
    assert codes.count(200) == 1
    (winner,) = _attachments(api, vol["id"])
    api.delete(f"/attachments/{winner['id']}")
    assert _status(api, vol["id"]) == "available"
    assert _attachments(api, vol["id"]) == []

    def reserve(_: int) -> int:
        client = server.client()
        try:
            return client.post(f"/volumes/{vol['id']}/action", {"os-reserve": None}).status_code
        finally:
            client.close()

    with ThreadPoolExecutor(16) as pool:
        codes = list(pool.map(reserve, range(50)))
    assert codes.count(202) == 1 and set(codes) == {202, 400}, codes
    assert api.post(f"/volumes/{vol['id']}/action", {"os-unreserve": None}).status_code == 202
    assert _status(api, vol["id"]) == "available"


def test_legacy_attach_detach_flow(server: Server) -> None:
    api = server.client()
    vol = available_volume(api)
    act = f"/volumes/{vol['id']}/action"
    assert api.post(act, {"os-reserve": None}).status_code == 202
    assert _status(api, vol["id"]) == "attaching"
    r = api.post(act, {"os-initialize_connection": {"connector": CONNECTOR}})
    assert r.status_code == 200, r.text
    info = r.json()["connection_info"]
    assert info["driver_volume_type"] == "local" and info["data"]["volume_id"] == vol["id"]
    again = api.post(act, {"os-initialize_connection": {"connector": CONNECTOR}})
    assert again.json() == r.json()  # only formatting: identical every time
    assert api.post(act, {"os-attach": {"instance_uuid": INSTANCE, "mountpoint": "/dev/vdb",
                                        "mode": "rw"}}).status_code == 202
    volume = api.get(f"/volumes/{vol['id']}").json()["volume"]
    assert volume["status"] == "in-use"
    assert volume["attachments"][0]["server_id"] == INSTANCE
    assert volume["attachments"][0]["device"] == "/dev/vdb"
    assert api.post(act, {"os-begin_detaching": None}).status_code == 202
    assert _status(api, vol["id"]) == "detaching"
    assert api.post(act, {"os-roll_detaching": None}).status_code == 202
    assert _status(api, vol["id"]) == "in-use"
    assert api.post(act, {"os-begin_detaching": {}}).status_code == 202
    assert api.post(act, {"os-terminate_connection": {"connector": CONNECTOR}}
                    ).status_code == 202
    assert api.post(act, {"os-detach": {}}).status_code == 202
    volume = api.get(f"/volumes/{vol['id']}").json()["volume"]
    assert (volume["status"], volume["attachments"]) == ("available", [])
    # wrong states are refused in Cinder's shape
    assert api.post(act, {"os-begin_detaching": None}).status_code == 400
    assert api.post(act, {"os-attach": {"mountpoint": "/dev/vdb"}}).status_code == 400
    assert api.post(act, {"os-initialize_connection": {}}).status_code == 400
    refused = api.post(act, {"os-detach": {}})
    assert refused.status_code == 400
    assert "status must be detaching, in-use, attaching to detach" in refused.text


def test_force_detach(server: Server) -> None:
    api = server.client()
    vol = available_volume(api)
    act = f"/volumes/{vol['id']}/action"
    api.post(act, {"os-reserve": None})
    api.post(act, {"os-attach": {"host_name": "h9", "mountpoint": "/dev/vdc"}})
    assert _status(api, vol["id"]) == "in-use"
    assert api.post(act, {"os-force_detach": {"connector": CONNECTOR}}).status_code == 202
    assert _status(api, vol["id"]) == "available"
    assert api.delete(f"/volumes/{vol['id']}").status_code == 202


def test_force_delete_of_an_attached_volume(server: Server) -> None:
    api = server.client(version="3.71")
    vol = available_volume(api)
    r = api.post("/attachments", {"attachment": {"volume_uuid": vol["id"],
                                                 "connector": CONNECTOR}})
    att = r.json()["attachment"]["id"]
    assert api.post(f"/attachments/{att}/action", {"os-complete": None}).status_code == 204
    assert api.delete(f"/volumes/{vol['id']}").status_code == 400
    assert api.delete(f"/volumes/{vol['id']}?force=true").status_code == 202
    api.wait_volume(vol["id"], "deleted")
    assert api.get(f"/attachments/{att}").status_code == 404
