"""disks.qemu_source: typed connection info to QEMU blockdev options, secrets and TLS creds."""

from __future__ import annotations

import pytest

from blockyard.compute.disks import (
    NBD_RECONNECT_DELAY,
    QemuSource,
    TlsPsk,
    qemu_source,
    secret_id,
    tls_creds_id,
)
from blockyard.errors import Invalid
from blockyard.model import IscsiInfo, LocalInfo, NbdInfo, parse

INITIATOR = "iqn.2004-10.org.blockyard:host-a"
KEY = "0123456789abcdef" * 4


def test_local_file_and_block_device() -> None:
    info = LocalInfo(device_path="/var/lib/blockyard/v1.raw")
    assert qemu_source(info, prefix="vol1") == QemuSource(
        {"driver": "file", "filename": "/var/lib/blockyard/v1.raw"}, read_only=False)
    dev = qemu_source(LocalInfo("/dev/sdx", access_mode="ro"), prefix="vol1",
                      local_driver="host_device")
    assert dev.options == {"driver": "host_device", "filename": "/dev/sdx"}
    assert dev.read_only and not dev.secrets and dev.tls_psk is None


def test_nbd_unix_and_inet() -> None:
    unix = qemu_source(NbdInfo(export_name="vol", socket="/run/nbd.sock"), prefix="d")
    # reconnect-delay: a qemu-nbd replaced under the export is survived
    assert unix.options == {"driver": "nbd", "export": "vol",
                            "server": {"type": "unix", "path": "/run/nbd.sock"},
                            "reconnect-delay": NBD_RECONNECT_DELAY}
    assert NBD_RECONNECT_DELAY >= 30
    inet = qemu_source(NbdInfo(export_name="", host="10.0.0.5", port=10809), prefix="d")
    # QAPI's InetSocketAddress wants the port as a string
    assert inet.options["server"] == {"type": "inet", "host": "10.0.0.5", "port": "10809"}
    assert inet.options["export"] == ""
    assert not inet.secrets and inet.tls_psk is None


def test_nbd_tls_names_its_creds_and_hides_the_key() -> None:
    info = NbdInfo(export_name="vol", socket="/s", tls=True, tls_psk_identity="alice",
                   tls_psk_key=KEY)
    source = qemu_source(info, prefix="disk-7")
    assert source.tls_psk == TlsPsk("disk-7-tls", "alice", KEY)
    assert source.options["tls-creds"] == tls_creds_id("disk-7") == "disk-7-tls"
    assert source.tls_psk.keys_file() == f"alice:{KEY}\n"
    assert KEY not in repr(source) and KEY not in repr(source.tls_psk)


def test_iscsi_with_chap_uses_a_secret_object() -> None:
    info = parse({"driver_volume_type": "iscsi", "data": {
        "target_iqn": "iqn.2010-10.org.blockyard:volume-1", "target_portal": "10.0.0.2:3260",
        "target_lun": 1, "auth_method": "CHAP", "auth_username": "u",
        "auth_password": "chap-pw-123", "access_mode": "ro"}})
    source = qemu_source(info, prefix="disk-7", initiator=INITIATOR)
    assert source.options == {
        "driver": "iscsi", "transport": "tcp", "portal": "10.0.0.2:3260",
        "target": "iqn.2010-10.org.blockyard:volume-1", "lun": 1,
        "initiator-name": INITIATOR, "user": "u", "password-secret": "disk-7-secret",
    }
    assert source.secrets == {secret_id("disk-7"): "chap-pw-123"}
    assert source.read_only
    assert "chap-pw-123" not in repr(source) and "disk-7-secret" in repr(source)


def test_iscsi_without_auth_has_no_secret() -> None:
    info = IscsiInfo(target_iqn="iqn.x:y", target_portal="h:3260", target_lun=0)
    source = qemu_source(info, prefix="d", initiator=INITIATOR)
    assert "user" not in source.options and "password-secret" not in source.options
    assert source.secrets == {}


def test_iscsi_needs_the_initiator_name() -> None:
    info = IscsiInfo(target_iqn="iqn.x:y", target_portal="h:3260", target_lun=0)
    with pytest.raises(Invalid, match="initiator"):
        qemu_source(info, prefix="d", initiator="")


def test_two_disks_never_share_an_object_id() -> None:
    info = NbdInfo(export_name="v", socket="/s", tls=True, tls_psk_identity="i",
                   tls_psk_key=KEY)
    a, b = qemu_source(info, prefix="disk-a"), qemu_source(info, prefix="disk-b")
    assert a.tls_psk is not None and b.tls_psk is not None
    assert a.tls_psk.creds_id != b.tls_psk.creds_id
    assert secret_id("disk-a") != secret_id("disk-b")
