"""User messages over HTTP against a real server: recorded when an asynchronous request fails
(no backend fits, the driver fails to create or to extend), with Cinder's event ids and the id
of the request that started the work; listed, filtered, paged, shown, deleted, and expired.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from tempest.lib.api_schema.response.volume import messages as schema

from tests.support.checks import check
from tests.support.server import Api, Server

SCHEDULE_NO_BACKEND = "VOLUME_VOLUME_001_003"
EXTEND_DRIVER_FAILED = "VOLUME_VOLUME_007_010"
CREATE_DRIVER_FAILED = "VOLUME_VOLUME_008_012"


@pytest.fixture
def project(server: Server) -> Iterator[Api]:
    """A client speaking as a project of its own, so that its messages are only its own."""
    name = uuid.uuid4().hex
    client = server.client(project=name, user=name)
    yield client
    client.close()


def backend_file(server: Server, name: str) -> Path:
    return server.state_dir / "volumes" / "default" / name


def messages_of(api: Api, **params: str) -> list[dict[str, Any]]:
    body = check(schema.list_messages, api.get("/messages", params=params))
    return list(body["messages"])


def unschedulable_volume(api: Api, admin: Api) -> tuple[str, str]:
    """A volume whose type no backend offers: (volume id, id of the request)."""
    name = f"nowhere-{uuid.uuid4().hex[:8]}"
    r = admin.post("/types", {"volume_type": {
        "name": name, "extra_specs": {"volume_backend_name": "no-such-backend"}}})
    assert r.status_code == 200, r.text
    r = api.post("/volumes", {"volume": {"size": 1, "volume_type": name}})
    assert r.status_code == 202, r.text
    vid = str(r.json()["volume"]["id"])
    assert api.wait_volume(vid, "error")["status"] == "error"
    return vid, r.headers["x-openstack-request-id"]


def test_unschedulable_volume_is_an_error_with_a_message(project: Api, api: Api) -> None:
    vid, request_id = unschedulable_volume(project, api)
    v = api.get(f"/volumes/{vid}").json()["volume"]
    assert v["os-vol-host-attr:host"] is None
    [m] = messages_of(project)
    assert m["resource_uuid"] == vid and m["resource_type"] == "VOLUME"
    assert m["event_id"] == SCHEDULE_NO_BACKEND and m["message_level"] == "ERROR"
    assert m["user_message"] == ("schedule allocate volume:Could not find any available "
                                 "weighted backend.")
    assert m["request_id"] == request_id
    shown = check(schema.show_message, project.get(f"/messages/{m['id']}"))["message"]
    assert shown == m
    # 30 days by default
    created = time.mktime(time.strptime(m["created_at"][:19], "%Y-%m-%dT%H:%M:%S"))
    until = time.mktime(time.strptime(m["guaranteed_until"][:19], "%Y-%m-%dT%H:%M:%S"))
    assert until - created == 2592000
    # the failed volume counts against quota until it is deleted, and deletes cleanly
    assert project.delete(f"/volumes/{vid}").status_code == 202
    project.wait_volume(vid, "deleted")
    # other projects do not list it
    other = Api(project.endpoint, project=uuid.uuid4().hex, user="u", version="3.71")
    assert all(x["id"] != m["id"] for x in messages_of(other))
    other.close()


def test_extend_failure_is_recorded(server: Server, project: Api) -> None:
    r = project.post("/volumes", {"volume": {"size": 1}})
    vid = r.json()["volume"]["id"]
    project.wait_volume(vid, "available")
    backend_file(server, f"volume-{vid}").unlink()
    r = project.post(f"/volumes/{vid}/action", {"os-extend": {"new_size": 2}})
    assert r.status_code == 202, r.text
    project.wait_volume(vid, "error_extending")
    [m] = messages_of(project, resource_uuid=vid)
    assert m["event_id"] == EXTEND_DRIVER_FAILED
    assert m["user_message"] == "extend volume:Volume Driver failed to extend volume."
    # the id of the extend request, not of a later one
    assert m["request_id"] == r.headers["x-openstack-request-id"]


def test_create_failure_is_recorded(server: Server, project: Api) -> None:
    r = project.post("/volumes", {"volume": {"size": 1}})
    vid = r.json()["volume"]["id"]
    project.wait_volume(vid, "available")
    r = project.post("/snapshots", {"snapshot": {"volume_id": vid}})
    sid = r.json()["snapshot"]["id"]
    project.wait_snapshot(sid, "available")
    backend_file(server, f"snapshot-{sid}").unlink()
    r = project.post("/volumes", {"volume": {"size": 1, "snapshot_id": sid}})
    assert r.status_code == 202, r.text
    clone = r.json()["volume"]["id"]
    project.wait_volume(clone, "error")
    [m] = messages_of(project, resource_uuid=clone)
    assert m["event_id"] == CREATE_DRIVER_FAILED
    assert m["user_message"] == ("create volume from backend storage:Driver failed to create "
                                 "the volume.")


def test_list_filters_sort_paging_and_delete(project: Api, api: Api) -> None:
    made = [unschedulable_volume(project, api)[0] for _ in range(3)]
    listed = messages_of(project)
    assert [m["resource_uuid"] for m in listed] == made[::-1]  # newest first
    assert [m["resource_uuid"] for m in messages_of(project, sort="created_at:asc")] == made
    assert [m["resource_uuid"] for m in messages_of(project, resource_uuid=made[1])] == \
        [made[1]]
    assert messages_of(project, event_id="VOLUME_VOLUME_002_021") == []
    assert len(messages_of(project, message_level="ERROR")) == 3
    r = project.get("/messages", params={"limit": 2})
    assert r.status_code == 200, r.text
    first = r.json()
    assert len(first["messages"]) == 2 and "messages_links" in first
    r = project.get("/messages", params={"limit": 2, "marker": first["messages"][-1]["id"]})
    assert [m["resource_uuid"] for m in r.json()["messages"]] == [made[0]]
    assert project.get("/messages", params={"bogus": "1"}).status_code == 400
    # before 3.5 the query string is not looked at; before 3.3 there are no messages
    old = Api(project.endpoint, project="x", user="x", version="3.3")
    old.http.headers["X-Auth-Token"] = project.http.headers["X-Auth-Token"]
    assert len(old.get("/messages", params={"limit": 1}).json()["messages"]) == 3
    old.http.headers["OpenStack-API-Version"] = "volume 3.2"
    assert old.get("/messages").status_code == 404
    old.close()

    gone = listed[0]["id"]
    check(schema.delete_message, project.delete(f"/messages/{gone}"))
    assert project.get(f"/messages/{gone}").status_code == 404
    assert project.delete(f"/messages/{gone}").status_code == 404
    assert gone not in {m["id"] for m in messages_of(project)}


def test_messages_expire(make_server: type[Server]) -> None:
    srv = make_server(config="message_ttl = 1\n").start()
    client, admin = srv.client(project="p1", user="p1"), srv.client()
    try:
        vid, _ = unschedulable_volume(client, admin)
        [m] = messages_of(client)
        assert m["resource_uuid"] == vid
        created = datetime.fromisoformat(m["created_at"])
        until = datetime.fromisoformat(m["guaranteed_until"])
        assert until - created == timedelta(seconds=1)
        # wait for the clock, not for a guessed delay, to pass the guarantee (the server
        # shares this host's clock); the bound only guards against a hang
        deadline = time.monotonic() + 30
        while datetime.now(UTC).replace(tzinfo=None) <= until:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        # expired: neither listed nor shown, and purged when the next message is made
        assert messages_of(client) == []
        assert client.get(f"/messages/{m['id']}").status_code == 404
        unschedulable_volume(client, admin)
        assert len(messages_of(client)) == 1
    finally:
        client.close()
        admin.close()
    srv.stop()
    import sqlite3

    db = sqlite3.connect(srv.state_dir / "blockyard.db")
    try:
        ids = [r[0] for r in db.execute("SELECT id FROM messages")]
    finally:
        db.close()
    assert m["id"] not in ids and len(ids) == 1


def test_attach_failure_is_recorded(project: Api, api: Api) -> None:
    # a volume on no backend, forced to `available` by an admin: connecting it must fail
    vid, _ = unschedulable_volume(project, api)
    r = api.post(f"/volumes/{vid}/action", {"os-reset_status": {"status": "available"}})
    assert r.status_code == 202, r.text
    connector = {"initiator": "iqn.1993-08.org.debian:01:abc", "host": "h1", "ip": "127.0.0.1"}
    r = project.post(f"/volumes/{vid}/action", {"os-initialize_connection": {
        "connector": connector}})
    assert r.status_code == 400, r.text
    events = [m["event_id"] for m in messages_of(project, resource_uuid=vid)]
    assert sorted(events) == [SCHEDULE_NO_BACKEND, "VOLUME_VOLUME_002_021"]
    [m] = messages_of(project, event_id="VOLUME_VOLUME_002_021")
    assert m["user_message"] == "attach volume:Failed to attach volume."
    assert m["request_id"] == r.headers["x-openstack-request-id"]


def test_snapshot_failure_is_recorded_for_the_snapshot(server: Server, project: Api) -> None:
    r = project.post("/volumes", {"volume": {"size": 1}})
    vid = r.json()["volume"]["id"]
    project.wait_volume(vid, "available")
    backend_file(server, f"volume-{vid}").unlink()
    r = project.post("/snapshots", {"snapshot": {"volume_id": vid}})
    assert r.status_code == 202, r.text
    sid = r.json()["snapshot"]["id"]
    project.wait_snapshot(sid, "error")
    [m] = messages_of(project, resource_uuid=sid)
    assert (m["resource_type"], m["event_id"]) == ("VOLUME_SNAPSHOT",
                                                   "VOLUME_VOLUME_SNAPSHOT_009_013")
    assert m["user_message"] == "create snapshot:Snapshot failed to create."
