"""The iSCSI connector (qemu-nbd bridge over libiscsi) against a real tgtd."""

from __future__ import annotations

import hashlib
import os
import time

import pytest

from blockyard.connectors import (
    IscsiConnector,
    LoginRefused,
    connector_for,
    get_connector_properties,
)
from blockyard.model import parse
from tests.support.daemons import IscsiTarget, MiB, processes_mentioning

PATTERN = [(0, b"Z" * 512), (MiB + 3, os.urandom(70_001)), (31 * MiB - 9, b"near-the-end")]


def connector(target: IscsiTarget, run_dir: str, initiator: str | None = None) -> IscsiConnector:
    props = {"initiator": initiator or target.initiator, "host": "test"}
    return IscsiConnector(props, run_dir=run_dir, login_timeout=15)


def test_connect_write_read_disconnect(iscsi_target: IscsiTarget, short_dir: str) -> None:
    info = parse(iscsi_target.wire())
    conn = connector(iscsi_target, short_dir)
    device = conn.connect_volume(info)
    assert device.size == iscsi_target.size
    assert device.path.startswith("nbd+unix:///?socket=" + short_dir)
    assert device.bridge_pid and processes_mentioning(device.bridge_dir or "?")
    with conn.open(info, "r+b") as f:
        assert f.size == iscsi_target.size
        for offset, data in PATTERN:
            f.seek(offset)
            f.write(data)
        for offset, data in PATTERN:
            f.seek(offset)
            assert f.read(len(data)) == data
    with open(iscsi_target.image, "rb") as raw:
        for offset, data in PATTERN:
            raw.seek(offset)
            assert hashlib.sha256(raw.read(len(data))).digest() == hashlib.sha256(data).digest()
    assert conn.extend_volume(info) == iscsi_target.size
    conn.disconnect_volume(info, device)
    assert not os.path.exists(device.bridge_dir or "?")
    assert processes_mentioning(short_dir) == []
    conn.disconnect_volume(info, device)  # idempotent


def test_wrong_chap_password_is_refused(iscsi_target: IscsiTarget, short_dir: str) -> None:
    info = parse(iscsi_target.wire(auth_password="wrong-password"))
    started = time.monotonic()
    with pytest.raises(LoginRefused, match="CHAP authentication failed") as refused:
        connector(iscsi_target, short_dir).open(info, "r+b")
    assert refused.value.reason == "auth"
    assert time.monotonic() - started < 15
    assert processes_mentioning(short_dir) == [] and sorted(os.listdir(short_dir)) == ["lun.raw",
                                                                                       "tgtd.log"]


def test_initiator_not_in_the_acl_is_refused(iscsi_target: IscsiTarget, short_dir: str) -> None:
    info = parse(iscsi_target.wire())
    conn = connector(iscsi_target, short_dir, initiator="iqn.2004-10.org.blockyard:intruder")
    with pytest.raises(LoginRefused, match="intruder") as refused:
        conn.connect_volume(info)
    assert refused.value.reason == "acl"
    assert processes_mentioning(short_dir) == []


def test_default_properties_feed_the_connector(iscsi_target: IscsiTarget,
                                               short_dir: str) -> None:
    props = get_connector_properties(short_dir, iscsi_initiator_file="/nonexistent")
    conn = connector_for(parse(iscsi_target.wire()), props, run_dir=short_dir)
    assert conn.get_connector_properties()["initiator"] == props["initiator"]
    # this host's generated initiator is not in the target's ACL
    with pytest.raises(LoginRefused):
        conn.connect_volume(parse(iscsi_target.wire()))
