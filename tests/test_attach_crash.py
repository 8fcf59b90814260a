"""kill -9 while attaching or detaching, restart: the volume ends in a stable state.

Attaching with a connector records the connector before any export work; a restart finds an
attachment whose export was in progress, undoes the export and leaves the attachment reserved
(the client may update it again or delete it). Detaching marks the attachment detaching first;
a restart finishes the detach. Either way the volume's status is the one its attachments imply.
"""

from __future__ import annotations

import sqlite3
import subprocess
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from tests.support.daemons import processes_mentioning
from tests.support.server import Api, Server, free_port, free_tgt_control_port

CONNECTOR = {"initiator": "iqn.1993-08.org.debian:01:crash", "host": "h1", "ip": "127.0.0.1"}


def _rows(srv: Server, sql: str) -> list[tuple[Any, ...]]:
    with sqlite3.connect(srv.state_dir / "blockyard.db") as db:
        return list(db.execute(sql))


def _post_dying(api: Api, method: str, path: str, body: Any = None) -> None:
    """Send a request the server dies in the middle of (no response is fine)."""
    try:
        api.request(method, path, json=body)
    except httpx.HTTPError:
        pass


def _server(make_server: Callable[..., Server], protocol: str) -> Server:
    """A server whose one backend exports through `protocol`."""
    if protocol == "local":
        return make_server("state")
    control = free_tgt_control_port()
    extra = (f"[targets.iscsi]\nportal = '127.0.0.1:{free_port()}'\n"
             f"control_port = {control}\n" if protocol == "iscsi" else "")
    srv = make_server("state", config=f"[backends.b]\ndriver = 'file'\n"
                                      f"target = '{protocol}'\n{extra}")
    srv.control_port = control  # type: ignore[attr-defined]
    return srv


def _exported(srv: Server, protocol: str, volume_id: str) -> bool:
    """Does the target still export the volume (a leak once nothing is attached)?"""
    if protocol == "iscsi":
        shown = subprocess.run(
            ["tgtadm", "--control-port", str(srv.control_port),  # type: ignore[attr-defined]
             "--lld", "iscsi", "--op", "show", "--mode", "target"],
            capture_output=True, text=True, check=True).stdout
        return f"volume-{volume_id}" in shown
    if protocol == "nbd":
        return bool(processes_mentioning(str(srv.state_dir), "qemu-nbd"))
    return False


def _volume(api: Api) -> str:
    r = api.post("/volumes", {"volume": {"size": 1}})
    assert r.status_code == 202, r.text
    return str(api.wait_volume(r.json()["volume"]["id"], "available")["id"])


@pytest.mark.parametrize("protocol", ["local", "iscsi", "nbd"])
@pytest.mark.parametrize("point", ["attach.connector_recorded", "attach.export_created",
                                   "attach.exported"])
def test_kill_while_attaching(make_server: Callable[..., Server], point: str,
                              protocol: str) -> None:
    srv = _server(make_server, protocol).start()
    api = srv.client()
    vid = _volume(api)
    r = api.post("/attachments", {"attachment": {"volume_uuid": vid}})
    att = r.json()["attachment"]["id"]
    srv.stop()

    srv.start(env={"BLOCKYARD_FAILPOINTS": point})
    _post_dying(srv.client(), "PUT", f"/attachments/{att}",
                {"attachment": {"connector": CONNECTOR}})
    assert srv.wait_exit() == -9
    srv.start()
    api = srv.client()
    shown = api.get(f"/attachments/{att}").json()["attachment"]
    assert shown["status"] == "reserved"
    assert shown["connection_info"] == {}
    assert _rows(srv, f"select connector from attachments where id = '{att}'") == [(None,)]
    assert api.get(f"/volumes/{vid}").json()["volume"]["status"] == "reserved"
    assert not _exported(srv, protocol, vid)
    # and it can be used normally afterwards
    r = api.put(f"/attachments/{att}", {"attachment": {"connector": CONNECTOR}})
    assert r.status_code == 200, r.text
    assert api.post(f"/attachments/{att}/action", {"os-complete": None}).status_code == 204
    assert api.get(f"/volumes/{vid}").json()["volume"]["status"] == "in-use"
    assert api.delete(f"/attachments/{att}").status_code == 200
    assert not _exported(srv, protocol, vid)


@pytest.mark.parametrize("protocol", ["local", "iscsi", "nbd"])
@pytest.mark.parametrize("point", ["detach.detaching", "detach.disconnected"])
def test_kill_while_detaching(make_server: Callable[..., Server], point: str,
                              protocol: str) -> None:
    srv = _server(make_server, protocol).start()
    api = srv.client()
    vid = _volume(api)
    r = api.post("/attachments", {"attachment": {"volume_uuid": vid, "connector": CONNECTOR}})
    att = r.json()["attachment"]["id"]
    assert api.post(f"/attachments/{att}/action", {"os-complete": None}).status_code == 204
    srv.stop()

    srv.start(env={"BLOCKYARD_FAILPOINTS": point})
    _post_dying(srv.client(), "DELETE", f"/attachments/{att}")
    assert srv.wait_exit() == -9
    srv.start()
    api = srv.client()
    assert api.get(f"/attachments/{att}").status_code == 404
    volume = api.get(f"/volumes/{vid}").json()["volume"]
    assert (volume["status"], volume["attachments"]) == ("available", [])
    assert _rows(srv, "select count(*) from attachments") == [(0,)]
    assert not _exported(srv, protocol, vid)
    assert api.delete(f"/volumes/{vid}").status_code == 202
