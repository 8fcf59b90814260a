"""Attach and detach over real targets (tgt iSCSI, qemu-nbd), end to end.

A real server exports file-backed volumes through its own tgtd and qemu-nbd processes; the
client side is blockyard.connectors (userspace: a qemu-nbd bridge over libiscsi, libnbd).
Data written through one connector's file handle is read back through another's after a
detach and reattach; other initiators and wrong CHAP secrets are refused; after detach no
target, LUN, ACL, account or qemu-nbd process is left.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from blockyard.connectors import LoginRefused, connector_for
from blockyard.model import ConnectionInfo, IscsiInfo, parse
from tests.support.daemons import processes_mentioning
from tests.support.server import (
    Api,
    Server,
    exported_backends_config,
    free_port,
    free_tgt_control_port,
)

MiB = 1024**2
PATTERN = [(0, os.urandom(4096)), (5 * MiB + 17, os.urandom(100_000)), (1023 * MiB, b"end" * 100)]



@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    control = free_tgt_control_port()
    srv = Server(tmp_path_factory.mktemp("targets") / "state",
                 config=exported_backends_config(control_port=control))
    srv.control_port = control  # type: ignore[attr-defined]
    srv.start()
    api = srv.client()
    for name in ("iscsi", "nbd"):
        r = api.post("/types", {"volume_type": {
            "name": name, "extra_specs": {"volume_backend_name": name}}})
        assert r.status_code == 200, r.text
    yield srv
    srv.close()
    assert _qemu_nbd_of(srv) == []


def _qemu_nbd_of(srv: Server) -> list[int]:
    """Live qemu-nbd processes serving this server's volumes."""
    return processes_mentioning(str(srv.state_dir), "qemu-nbd")


def _tgt_targets(srv: Server) -> str:
    return subprocess.run(
        ["tgtadm", "--control-port", str(srv.control_port),  # type: ignore[attr-defined]
         "--lld", "iscsi", "--op", "show", "--mode", "target"],
        capture_output=True, text=True, check=True).stdout


def _props(tmp: Path, name: str) -> dict[str, Any]:
    return {"initiator": f"iqn.2004-10.org.blockyard:{name}", "host": name, "ip": "127.0.0.1",
            "platform": "x86_64", "os_type": "linux", "multipath": False}


def _info(attachment: dict[str, Any]) -> ConnectionInfo:
    data = dict(attachment["connection_info"])
    return parse({"driver_volume_type": data.pop("driver_volume_type"), "data": data})


def _attach(api: Api, volume_id: str, props: dict[str, Any]) -> dict[str, Any]:
    r = api.post("/attachments", {"attachment": {
        "volume_uuid": volume_id, "instance_uuid": "11111111-2222-3333-4444-555555555555",
        "connector": props}})
    assert r.status_code == 200, r.text
    att: dict[str, Any] = r.json()["attachment"]
    assert api.post(f"/attachments/{att['id']}/action", {"os-complete": None}).status_code == 204
    return att


def _write(info: ConnectionInfo, props: dict[str, Any], run_dir: Path) -> None:
    with connector_for(info, props, run_dir=str(run_dir)).open(info, "r+b") as h:
        for offset, data in PATTERN:
            h.seek(offset)
            assert h.write(data) == len(data)
        h.flush()


def _read(info: ConnectionInfo, props: dict[str, Any], run_dir: Path) -> list[bytes]:
    with connector_for(info, props, run_dir=str(run_dir)).open(info, "rb") as h:
        assert h.size == 1024 * MiB
        out = []
        for offset, data in PATTERN:
            h.seek(offset)
            out.append(h.read(len(data)))
        return out


def _backing(srv: Server, backend: str, volume_id: str) -> Path:
    return srv.state_dir / "volumes" / backend / f"volume-{volume_id}"


@pytest.mark.parametrize("protocol", ["iscsi", "nbd"])
def test_write_detach_reattach_read(server: Server, tmp_path: Path, protocol: str) -> None:
    api = server.client()
    r = api.post("/volumes", {"volume": {"size": 1, "volume_type": protocol}})
    vol = api.wait_volume(r.json()["volume"]["id"], "available")
    first, second = _props(tmp_path, "hosta"), _props(tmp_path, "hostb")

    att = _attach(api, vol["id"], first)
    info = _info(att)
    assert info.protocol == protocol
    _write(info, first, tmp_path)
    with open(_backing(server, protocol, vol["id"]), "rb") as f:
        for offset, data in PATTERN:
            f.seek(offset)
            assert hashlib.sha256(f.read(len(data))).digest() == hashlib.sha256(data).digest()
    assert api.delete(f"/attachments/{att['id']}").status_code == 200

    att2 = _attach(api, vol["id"], second)
    assert _read(_info(att2), second, tmp_path) == [d for _, d in PATTERN]
    assert api.delete(f"/attachments/{att2['id']}").status_code == 200
    assert api.get(f"/volumes/{vol['id']}").json()["volume"]["status"] == "available"
    if protocol == "iscsi":
        assert f"volume-{vol['id']}" not in _tgt_targets(server)
    assert _qemu_nbd_of(server) == []


def test_iscsi_refuses_other_initiators_and_wrong_chap(server: Server, tmp_path: Path) -> None:
    api = server.client()
    r = api.post("/volumes", {"volume": {"size": 1, "volume_type": "iscsi"}})
    vol = api.wait_volume(r.json()["volume"]["id"], "available")
    allowed = _props(tmp_path, "allowed")
    att = _attach(api, vol["id"], allowed)
    info = _info(att)
    assert isinstance(info, IscsiInfo) and info.auth_method == "CHAP"
    assert info.auth_password
    assert "auth_password" not in str(api.get(f"/volumes/{vol['id']}").json())
    stranger = _props(tmp_path, "stranger")
    with pytest.raises(LoginRefused):
        _read(info, stranger, tmp_path)
    wrong = replace(info, auth_password="not-the-password")
    with pytest.raises(LoginRefused):
        _read(wrong, allowed, tmp_path)
    _read(info, allowed, tmp_path)  # the right one still works
    listed = api.get("/volumes/detail").text + api.get(f"/volumes/{vol['id']}").text
    # the attachment's own views mask the CHAP credentials: only attaching returns them
    listed += api.get(f"/attachments/{att['id']}").text + api.get("/attachments/detail").text
    assert info.auth_password not in listed
    assert info.auth_username not in listed
    assert info.auth_password not in server.log()
    api.delete(f"/attachments/{att['id']}")
    assert f"volume-{vol['id']}" not in _tgt_targets(server)


@pytest.mark.parametrize("protocol", ["iscsi", "nbd"])
def test_legacy_flow_initialize_connection_is_idempotent(server: Server, tmp_path: Path,
                                                         protocol: str) -> None:
    api = server.client()
    r = api.post("/volumes", {"volume": {"size": 1, "volume_type": protocol}})
    vol = api.wait_volume(r.json()["volume"]["id"], "available")
    props = _props(tmp_path, "legacy")
    act = f"/volumes/{vol['id']}/action"
    assert api.post(act, {"os-reserve": None}).status_code == 202
    first = api.post(act, {"os-initialize_connection": {"connector": props}}).json()
    assert first["connection_info"]["driver_volume_type"] == protocol
    processes, targets = _qemu_nbd_of(server), _tgt_targets(server)
    assert len(processes) == (1 if protocol == "nbd" else 0)
    for _ in range(100):
        again = api.post(act, {"os-initialize_connection": {"connector": props}})
        assert again.json() == first
    assert (_qemu_nbd_of(server), _tgt_targets(server)) == (processes, targets)
    info = parse(first["connection_info"])
    _write(info, props, tmp_path)
    assert api.post(act, {"os-attach": {"instance_uuid": "11111111-2222-3333-4444-555555555555",
                                        "mountpoint": "/dev/vdb"}}).status_code == 202
    assert api.post(act, {"os-begin_detaching": None}).status_code == 202
    assert api.post(act, {"os-terminate_connection": {"connector": props}}).status_code == 202
    assert api.post(act, {"os-detach": {}}).status_code == 202
    assert _qemu_nbd_of(server) == []
    assert f"volume-{vol['id']}" not in _tgt_targets(server)


def test_restart_re_creates_exports(make_server: Callable[..., Server], tmp_path: Path) -> None:
    control = free_tgt_control_port()
    srv = make_server("state", config=f"""
[backends.iscsi]
driver = "file"
target = "iscsi"
[targets.iscsi]
portal = "127.0.0.1:{free_port()}"
control_port = {control}
""")
    srv.control_port = control  # type: ignore[attr-defined]
    srv.start()
    api = srv.client()
    r = api.post("/volumes", {"volume": {"size": 1}})
    vol = api.wait_volume(r.json()["volume"]["id"], "available")
    props = _props(tmp_path, "survivor")
    att = _attach(api, vol["id"], props)
    _write(_info(att), props, tmp_path)
    srv.kill()  # tgtd keeps no state across its restart: the service must re-create it
    subprocess.run(["tgtadm", "--control-port", str(control), "--lld", "iscsi", "--op",
                    "delete", "--mode", "target", "--tid", "1", "--force"],
                   capture_output=True, check=False)
    srv.start()
    api = srv.client()
    shown = api.get(f"/attachments/{att['id']}").json()["attachment"]
    assert shown["status"] == "attached"
    # the attacher keeps the connection info it was given (as Nova keeps it in the block
    # device mapping): a later read of the attachment masks the CHAP credentials, and the
    # re-created export takes the same ones
    assert shown["connection_info"]["auth_password"] == "***"
    assert shown["connection_info"]["target_iqn"] == att["connection_info"]["target_iqn"]
    assert _read(_info(att), props, tmp_path) == [d for _, d in PATTERN]
    assert api.delete(f"/attachments/{att['id']}").status_code == 200
    srv.stop()
    assert _qemu_nbd_of(srv) == []


def test_iscsi_needs_an_initiator(server: Server, tmp_path: Path) -> None:
    api = server.client()
    r = api.post("/volumes", {"volume": {"size": 1, "volume_type": "iscsi"}})
    vol = api.wait_volume(r.json()["volume"]["id"], "available")
    bad = {k: v for k, v in _props(tmp_path, "noiqn").items() if k != "initiator"}
    r = api.post("/attachments", {"attachment": {"volume_uuid": vol["id"], "connector": bad}})
    assert r.status_code == 400, r.text
    assert "initiator" in r.json()["badRequest"]["message"]
    # nothing half-created: no attachment, the volume is available, no target
    assert api.get(f"/attachments?volume_id={vol['id']}").json()["attachments"] == []
    assert api.get(f"/volumes/{vol['id']}").json()["volume"]["status"] == "available"
    assert f"volume-{vol['id']}" not in _tgt_targets(server)
    act = f"/volumes/{vol['id']}/action"
    r = api.post(act, {"os-initialize_connection": {"connector": bad}})
    assert r.status_code == 400, r.text
