"""Connection info is parsed once, into typed records, with errors naming the key."""

from __future__ import annotations

from typing import Any

import pytest

from blockyard.backends.base import ConnectionInfo
from blockyard.connectors import (
    ConnectionInfoError,
    IscsiConnector,
    IscsiInfo,
    LocalConnector,
    LocalInfo,
    NbdConnector,
    NbdInfo,
    connector_for,
    parse,
)

ISCSI = {"target_iqn": "iqn.2010-10.org.x:v1", "target_portal": "10.0.0.1:3260",
         "target_lun": 1, "auth_method": "CHAP", "auth_username": "u",
         "auth_password": "pw-secret", "volume_id": "v1", "access_mode": "rw"}


def test_iscsi() -> None:
    info = parse(ConnectionInfo("iscsi", ISCSI))
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


def test_dispatch_on_the_tag() -> None:
    assert isinstance(connector_for(ConnectionInfo("iscsi", ISCSI)), IscsiConnector)
    assert isinstance(connector_for(NbdInfo("e", socket="/s")), NbdConnector)
    assert isinstance(connector_for({"driver_volume_type": "local",
                                     "data": {"device_path": "/x"}}), LocalConnector)
