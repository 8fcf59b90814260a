"""blockyard.model: connection info is parsed once, into typed records, with errors naming the
key; `to_wire()` gives back exactly the dict Cinder's drivers return."""

from __future__ import annotations

from typing import Any

import pytest

from blockyard.errors import ConnectionInfoError
from blockyard.model import IscsiInfo, LocalInfo, NbdInfo, RbdInfo, parse

ISCSI = {"target_iqn": "iqn.2010-10.org.x:v1", "target_portal": "10.0.0.1:3260",
         "target_lun": 1, "auth_method": "CHAP", "auth_username": "u",
         "auth_password": "pw-secret", "volume_id": "v1", "access_mode": "rw"}


def test_iscsi() -> None:
    info = parse({"driver_volume_type": "iscsi", "data": ISCSI})
    assert info == IscsiInfo("iqn.2010-10.org.x:v1", "10.0.0.1:3260", 1, "v1", "rw", "CHAP",
                             "u", "pw-secret")
    assert "pw-secret" not in repr(info)
    no_auth = {k: v for k, v in ISCSI.items() if not k.startswith("auth")}
    assert parse({"driver_volume_type": "iscsi", "data": no_auth}) == IscsiInfo(
        "iqn.2010-10.org.x:v1", "10.0.0.1:3260", 1, "v1", "rw")


def test_nbd() -> None:
    unix = parse({"driver_volume_type": "nbd", "data": {"export_name": "e", "socket": "/s"}})
    assert isinstance(unix, NbdInfo)
    assert unix.uri == "nbd+unix:///e?socket=/s"
    tcp = parse({"driver_volume_type": "nbd",
                 "data": {"export_name": "e", "host": "h", "port": "10809", "tls": True,
                          "tls_psk_identity": "id", "tls_psk_key": "abcd"}})
    assert isinstance(tcp, NbdInfo)
    assert (tcp.host, tcp.port, tcp.tls, tcp.uri) == ("h", 10809, True, "nbds://h:10809/e")
    assert "abcd" not in repr(tcp)


def test_local() -> None:
    assert parse({"driver_volume_type": "local",
                  "data": {"device_path": "/x", "access_mode": "ro"}}) == LocalInfo("/x",
                                                                                    None, "ro")


@pytest.mark.parametrize(("wire", "message"), [
    ({"data": {}}, "no driver_volume_type"),
    ({"driver_volume_type": "fibre_channel", "data": {}}, "Unsupported driver_volume_type"),
    ({"driver_volume_type": "iscsi", "data": None}, "must be an object"),
    ({"driver_volume_type": "iscsi", "data": {**ISCSI, "target_iqn": None}},
     "'target_iqn' is missing"),
    ({"driver_volume_type": "iscsi", "data": {**ISCSI, "target_portal": "10.0.0.1"}},
     "'target_portal' must be 'host:port'"),
    ({"driver_volume_type": "iscsi", "data": {**ISCSI, "target_lun": "one"}},
     "'target_lun' must be an integer"),
    ({"driver_volume_type": "iscsi", "data": {**ISCSI, "auth_password": None}},
     "'auth_password' is missing"),
    ({"driver_volume_type": "iscsi", "data": {**ISCSI, "auth_method": "kerberos"}},
     "'auth_method' must be 'CHAP'"),
    ({"driver_volume_type": "iscsi", "data": {**ISCSI, "access_mode": "wo"}},
     "'access_mode' must be 'rw' or 'ro'"),
    ({"driver_volume_type": "nbd", "data": {"export_name": "e"}}, "'socket' is missing"),
    ({"driver_volume_type": "nbd", "data": {"host": "h"}}, "'port' is missing"),
    ({"driver_volume_type": "nbd", "data": {"socket": "/s", "tls": True}},
     "'tls_psk_identity' is missing"),
    ({"driver_volume_type": "nbd", "data": {"socket": "/s", "tls": "yes"}},
     "'tls' must be true or false"),
    ({"driver_volume_type": "local", "data": {}}, "local connection_info: 'device_path'"),
])
def test_errors_name_the_key(wire: dict[str, Any], message: str) -> None:
    with pytest.raises(ConnectionInfoError, match=message):
        parse(wire)


def test_to_wire_is_cinders_shape_in_cinders_order() -> None:
    """The API answers these dicts as they are: keys, values and order are the contract."""
    iscsi = IscsiInfo("iqn.x:v1", "10.0.0.1:3260", 1, "v1", "rw", "CHAP", "u", "pw")
    assert list(iscsi.to_wire()["data"].items()) == [
        ("target_discovered", False), ("target_iqn", "iqn.x:v1"),
        ("target_portal", "10.0.0.1:3260"), ("target_lun", 1), ("volume_id", "v1"),
        ("access_mode", "rw"), ("encrypted", False), ("auth_method", "CHAP"),
        ("auth_username", "u"), ("auth_password", "pw")]
    assert "auth_method" not in IscsiInfo("iqn.x:v1", "h:1", 1, "v1").to_wire()["data"]
    nbd = NbdInfo("e", host="h", port=10809, tls=True, tls_psk_identity="id",
                  tls_psk_key="abcd", volume_id="v1")
    assert list(nbd.to_wire()["data"].items()) == [
        ("export_name", "e"), ("volume_id", "v1"), ("access_mode", "rw"), ("tls", True),
        ("host", "h"), ("port", 10809), ("tls_psk_identity", "id"), ("tls_psk_key", "abcd")]
    assert NbdInfo("e", socket="/s", volume_id="v1").to_wire() == {
        "driver_volume_type": "nbd", "data": {"export_name": "e", "volume_id": "v1",
                                              "access_mode": "rw", "tls": False,
                                              "socket": "/s"}}
    assert LocalInfo("/x", "v1").to_wire() == {
        "driver_volume_type": "local",
        "data": {"device_path": "/x", "volume_id": "v1", "access_mode": "rw"}}
    rbd = RbdInfo("volumes", "volume-1", (("10.0.0.1", 6789), ("::1", 3300)),
                  auth_username="blockyard", key="QVFC", volume_id="v1")
    assert list(rbd.to_wire()["data"].items()) == [
        ("name", "volumes/volume-1"), ("hosts", ["10.0.0.1", "::1"]),
        ("ports", ["6789", "3300"]), ("cluster_name", "ceph"), ("auth_enabled", True),
        ("auth_username", "blockyard"), ("secret_type", "ceph"), ("secret_uuid", None),
        ("volume_id", "v1"), ("access_mode", "rw"), ("discard", True), ("key", "QVFC"),
        ("keyring", "[client.blockyard]\n\tkey = QVFC\n")]


@pytest.mark.parametrize("info", [
    IscsiInfo("iqn.x:v1", "10.0.0.1:3260", 1, "v1", "ro", "CHAP", "u", "pw"),
    NbdInfo("e", socket="/s", volume_id="v1"),
    NbdInfo("e", host="h", port=1, tls=True, tls_psk_identity="i", tls_psk_key="k"),
    LocalInfo("/x", "v1", "ro"),
    RbdInfo("p", "i", (("h", 6789),), auth_username="u", key="k", snapshot="s", volume_id="v"),
])
def test_parse_reads_back_what_to_wire_writes(info: object) -> None:
    assert parse(info.to_wire()) == info  # type: ignore[attr-defined]
    assert parse(info) is info  # type: ignore[arg-type]
