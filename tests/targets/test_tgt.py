"""TgtTarget against a real tgtd of its own on loopback: free ports, temp dirs, sparse files.

What tgtd holds is read back with tgtadm's own listings (parsed by the module's parsers), so
every assertion is about the daemon's state, not about what TgtTarget believes. The data test
logs in for real with qemu's libiscsi driver.
"""

from __future__ import annotations

import os
import random
import shutil
import socket
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from blockyard.errors import BackendError, Invalid
from blockyard.exec import CommandFailed, run
from blockyard.model import Connector, Export, VolumeRef
from blockyard.targets import tgt as tgt_module
from blockyard.targets.daemon import DaemonRecord
from blockyard.targets.tgt import LiveTarget, TgtTarget, parse_targets, show_system_argv
from tests.support.server import free_port

pytestmark = pytest.mark.skipif(
    shutil.which("tgtd") is None or os.geteuid() != 0, reason="needs tgtd and root")

HOST_A = Connector(host="a", initiator="iqn.1994-05.com.redhat:host-a")
HOST_B = Connector(host="b", initiator="iqn.1994-05.com.redhat:host-b")
STRANGER = "iqn.1994-05.com.redhat:stranger"


def free_control_port() -> int:
    """A tgtd control port (a Unix socket ``/var/run/tgtd/socket.N``) no tgtd answers on."""
    for _ in range(100):
        port = random.randrange(20000, 60000)
        try:
            run(show_system_argv(port))
        except CommandFailed as exc:
            if exc.returncode == tgt_module.TGTADM_ENOTCONN:
                return port
    raise RuntimeError("no free tgtd control port")


@pytest.fixture
def target(tmp_path: Path) -> Iterator[TgtTarget]:
    t = TgtTarget(str(tmp_path / "tgt"), portal=f"127.0.0.1:{free_port()}",
                  control_port=free_control_port())
    t.start()
    yield t
    t.teardown()


def make_volume(tmp_path: Path, name: str = "v1", size: int = 64 * 1024**2) -> tuple[VolumeRef,
                                                                                      str]:
    volume = VolumeRef(id=f"00000000-0000-0000-0000-{name:0>12}", size_gb=1)
    path = tmp_path / f"{volume.name}.img"
    with open(path, "wb") as f:
        f.truncate(size)
    return volume, str(path)


def live(t: TgtTarget) -> dict[str, LiveTarget]:
    return parse_targets(run(tgt_module.show_targets_argv(t.control_port)).stdout)


def snapshot_of(t: TgtTarget) -> tuple[dict[str, LiveTarget], list[str]]:
    return live(t), t.live_accounts()


# -- export -------------------------------------------------------------------------------------


def test_export_creates_target_lun_account_and_acl(target: TgtTarget, tmp_path: Path) -> None:
    volume, path = make_volume(tmp_path)
    export = target.export(volume, path, HOST_A, None)

    iqn = "iqn.2010-10.org.openstack:" + volume.name
    assert export.protocol == "iscsi"
    assert export.data == {"target_iqn": iqn, "target_portal": target.portal,
                           "target_lun": 1, "tid": export.data["tid"]}
    assert export.secrets["auth_method"] == "CHAP"
    assert len(export.secrets["auth_username"]) == 20
    assert len(export.secrets["auth_password"]) == 16
    assert export.connectors == (HOST_A.initiator,)

    shown = live(target)[iqn]
    assert shown.tid == export.data["tid"]
    assert shown.luns[1] == path  # LUN 0 is tgtd's controller
    assert shown.accounts == (export.secrets["auth_username"],)
    assert shown.acls == (HOST_A.initiator,)
    assert "ALL" not in shown.acls
    assert target.live_accounts() == [export.secrets["auth_username"]]
    assert target.exports() == [iqn]


def test_export_persists_as_json(target: TgtTarget, tmp_path: Path) -> None:
    volume, path = make_volume(tmp_path)
    export = target.export(volume, path, HOST_A, None)
    assert Export.from_json(export.to_json()) == export


def test_second_connector_adds_only_its_acl(target: TgtTarget, tmp_path: Path) -> None:
    volume, path = make_volume(tmp_path)
    first = target.export(volume, path, HOST_A, None)
    second = target.export(volume, path, HOST_B, first)

    assert second.connectors == (HOST_A.initiator, HOST_B.initiator)
    assert (second.data, second.secrets) == (first.data, first.secrets)
    shown = live(target)[first.data["target_iqn"]]
    assert sorted(shown.acls) == sorted([HOST_A.initiator, HOST_B.initiator])
    assert shown.accounts == (first.secrets["auth_username"],)
    assert len(target.live_accounts()) == 1


def test_export_twice_is_idempotent(target: TgtTarget, tmp_path: Path) -> None:
    volume, path = make_volume(tmp_path)
    export = target.export(volume, path, HOST_A, None)
    before = snapshot_of(target)
    again = target.export(volume, path, HOST_A, export)
    assert again == export
    assert snapshot_of(target) == before


def test_volumes_get_their_own_targets_and_tids(target: TgtTarget, tmp_path: Path) -> None:
    v1, p1 = make_volume(tmp_path, "v1")
    v2, p2 = make_volume(tmp_path, "v2")
    e1 = target.export(v1, p1, HOST_A, None)
    e2 = target.export(v2, p2, HOST_A, None)
    assert e1.data["tid"] != e2.data["tid"]
    assert e1.secrets["auth_username"] != e2.secrets["auth_username"]
    assert target.exports() == sorted([e1.data["target_iqn"], e2.data["target_iqn"]])


def test_first_export_discards_an_unrecorded_target(target: TgtTarget, tmp_path: Path) -> None:
    """A crash after tgtadm but before the Export was stored leaves a target nobody knows
    the credentials of; exporting again replaces it instead of failing."""
    volume, path = make_volume(tmp_path)
    lost = target.export(volume, path, HOST_A, None)
    fresh = target.export(volume, path, HOST_A, None)
    assert fresh.secrets != lost.secrets
    assert target.live_accounts() == [fresh.secrets["auth_username"]]
    assert live(target)[fresh.data["target_iqn"]].accounts == (fresh.secrets["auth_username"],)


@pytest.mark.parametrize("initiator", [None, "", "ALL", "iqn.2004-10.x:a,b", "host a"])
def test_connector_without_a_usable_initiator_is_invalid(
        target: TgtTarget, tmp_path: Path, initiator: str | None) -> None:
    volume, path = make_volume(tmp_path)
    with pytest.raises(Invalid):
        target.export(volume, path, Connector(host="x", initiator=initiator), None)
    assert target.exports() == []


# -- connection_info ----------------------------------------------------------------------------


def test_connection_info_is_pure_formatting(target: TgtTarget, tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    volume, path = make_volume(tmp_path)
    export = target.export(volume, path, HOST_A, None)
    before = snapshot_of(target)

    def no_commands(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("connection_info ran a command")

    monkeypatch.setattr(tgt_module, "run", no_commands)
    infos = [target.connection_info(volume, export, HOST_A).to_wire() for _ in range(100)]
    monkeypatch.undo()

    assert all(info == infos[0] for info in infos)
    assert infos[0] == {
        "driver_volume_type": "iscsi",
        "data": {
            "target_discovered": False,
            "target_iqn": export.data["target_iqn"],
            "target_portal": target.portal,
            "target_lun": 1,
            "volume_id": volume.id,
            "auth_method": "CHAP",
            "auth_username": export.secrets["auth_username"],
            "auth_password": export.secrets["auth_password"],
            "access_mode": "rw",
            "encrypted": False,
        },
    }
    assert snapshot_of(target) == before


# -- unexport and remove ------------------------------------------------------------------------


def test_unexport_removes_only_that_acl(target: TgtTarget, tmp_path: Path) -> None:
    volume, path = make_volume(tmp_path)
    export = target.export(volume, path, HOST_B, target.export(volume, path, HOST_A, None))
    left = target.unexport(volume, export, HOST_A)

    assert left.connectors == (HOST_B.initiator,)
    shown = live(target)[export.data["target_iqn"]]
    assert shown.acls == (HOST_B.initiator,)
    assert shown.luns[1] == path and shown.accounts == (export.secrets["auth_username"],)
    assert target.unexport(volume, left, HOST_A) == left  # again: nothing to do


def test_unexport_none_removes_every_acl(target: TgtTarget, tmp_path: Path) -> None:
    volume, path = make_volume(tmp_path)
    export = target.export(volume, path, HOST_B, target.export(volume, path, HOST_A, None))
    left = target.unexport(volume, export, None)
    assert left.connectors == ()
    assert live(target)[export.data["target_iqn"]].acls == ()


def test_remove_leaves_no_target_and_no_account(target: TgtTarget, tmp_path: Path) -> None:
    v1, p1 = make_volume(tmp_path, "v1")
    v2, p2 = make_volume(tmp_path, "v2")
    e1 = target.export(v1, p1, HOST_A, None)
    e2 = target.export(v2, p2, HOST_A, None)

    target.remove(v1, e1)
    assert target.exports() == [e2.data["target_iqn"]]
    assert target.live_accounts() == [e2.secrets["auth_username"]]
    target.remove(v1, e1)  # already gone: fine

    target.remove(v2, e2)
    assert (target.exports(), target.live_accounts()) == ([], [])


# -- restarts -----------------------------------------------------------------------------------


def test_ensure_after_restart_recreates_the_same_export(target: TgtTarget,
                                                        tmp_path: Path) -> None:
    volume, path = make_volume(tmp_path)
    export = target.export(volume, path, HOST_B, target.export(volume, path, HOST_A, None))
    before = live(target)[export.data["target_iqn"]]

    target.teardown()  # tgtd gone (a reboot): it keeps nothing
    assert not os.path.exists(target.record_path)
    target.start()
    assert target.exports() == []

    ensured = target.ensure(volume, path, export)
    assert ensured == export  # same IQN, tid, credentials, connectors
    after = live(target)[export.data["target_iqn"]]
    assert (after.tid, after.luns, after.accounts, sorted(after.acls)) == (
        before.tid, before.luns, before.accounts, sorted(before.acls))
    assert target.ensure(volume, path, export) == export  # and again: nothing changes
    assert live(target)[export.data["target_iqn"]] == after


def test_ensure_takes_another_tid_when_its_own_is_taken(target: TgtTarget,
                                                        tmp_path: Path) -> None:
    v1, p1 = make_volume(tmp_path, "v1")
    v2, p2 = make_volume(tmp_path, "v2")
    e1 = target.export(v1, p1, HOST_A, None)
    target.teardown()
    target.start()
    e2 = target.export(v2, p2, HOST_A, None)  # takes tid 1 now
    assert e2.data["tid"] == e1.data["tid"]

    ensured = target.ensure(v1, p1, e1)
    assert ensured.data["tid"] != e1.data["tid"]
    assert (ensured.data["target_iqn"], ensured.secrets) == (e1.data["target_iqn"], e1.secrets)
    assert live(target)[e1.data["target_iqn"]].tid == ensured.data["tid"]


def test_start_adopts_a_running_tgtd(target: TgtTarget, tmp_path: Path) -> None:
    volume, path = make_volume(tmp_path)
    export = target.export(volume, path, HOST_A, None)
    record = DaemonRecord.load(Path(target.record_path))
    assert record is not None and record.alive()
    assert record.argv == tuple(tgt_module.tgtd_argv(target.control_port, target.portal))

    again = TgtTarget(target.state_dir, portal=target.portal, control_port=target.control_port)
    again.start()
    assert DaemonRecord.load(Path(target.record_path)) == record
    assert again.exports() == [export.data["target_iqn"]]


def test_stop_leaves_a_serving_tgtd_running_for_the_next_start(target: TgtTarget,
                                                               tmp_path: Path) -> None:
    volume, path = make_volume(tmp_path)
    export = target.export(volume, path, HOST_A, None)
    before = snapshot_of(target)
    record = DaemonRecord.load(Path(target.record_path))
    assert record is not None

    target.stop()  # the service shuts down: its attached volumes stay exported
    assert record.alive() and snapshot_of(target) == before
    again = TgtTarget(target.state_dir, portal=target.portal, control_port=target.control_port)
    again.start()
    assert again.ensure(volume, path, export) == export
    assert snapshot_of(again) == before
    assert TgtTarget.recorded(target.state_dir) is not None

    again.remove(volume, export)
    again.stop()  # nothing served: tgtd goes, and its record
    assert not record.alive() and not os.path.exists(target.record_path)
    assert TgtTarget.recorded(target.state_dir) is None
    with pytest.raises(CommandFailed):
        run(show_system_argv(target.control_port))


def test_a_record_of_a_reused_pid_is_not_trusted(target: TgtTarget, tmp_path: Path) -> None:
    record = DaemonRecord.load(Path(target.record_path))
    assert record is not None
    # the recorded pid with another start time: the pid now names some other process
    DaemonRecord(record.pid, record.argv, record.started + 1, record.data).save(
        Path(target.record_path))
    try:
        assert TgtTarget(target.state_dir, portal=target.portal,
                         control_port=target.control_port)._running_pid() is None
    finally:  # the true record back, or the fixture's teardown rightly leaves this tgtd alone
        record.save(Path(target.record_path))


def test_someone_elses_tgtd_on_the_control_port_is_refused(target: TgtTarget,
                                                            tmp_path: Path) -> None:
    other = TgtTarget(str(tmp_path / "other"), portal=f"127.0.0.1:{free_port()}",
                      control_port=target.control_port)
    with pytest.raises(BackendError, match="another tgtd"):
        other.start()
    assert target.exports() == []  # untouched, still answering


def test_prune_removes_targets_no_export_accounts_for(target: TgtTarget,
                                                      tmp_path: Path) -> None:
    v1, p1 = make_volume(tmp_path, "v1")
    v2, p2 = make_volume(tmp_path, "v2")
    e1 = target.export(v1, p1, HOST_A, None)
    e2 = target.export(v2, p2, HOST_A, None)
    assert target.prune([e1]) == [e2.data["target_iqn"]]
    assert target.exports() == [e1.data["target_iqn"]]
    assert target.live_accounts() == [e1.secrets["auth_username"]]
    assert target.prune([e1]) == []


def test_start_refuses_a_portal_it_cannot_bind(tmp_path: Path) -> None:
    """tgtd falls back to 0.0.0.0:3260 when its portal is taken; start must not accept it."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        t = TgtTarget(str(tmp_path / "tgt"), portal=f"127.0.0.1:{port}",
                      control_port=free_control_port())
        with pytest.raises(BackendError, match="could not listen"):
            t.start()
    assert not os.path.exists(t.record_path)
    with pytest.raises(CommandFailed):
        run(show_system_argv(t.control_port))


def test_failed_account_call_does_not_show_the_password(tmp_path: Path) -> None:
    t = TgtTarget(str(tmp_path / "tgt"), portal="127.0.0.1:1", control_port=free_control_port())
    with pytest.raises(CommandFailed) as info:
        t._add_account("someone", "Sup3rS3cretPw")
    assert "Sup3rS3cretPw" not in str(info.value)
    assert "Sup3rS3cretPw" not in info.value.argv
    assert info.value.__context__ is None and info.value.__cause__ is None


def test_concurrent_first_exports_get_distinct_tids(target: TgtTarget, tmp_path: Path) -> None:
    volumes = [make_volume(tmp_path, f"c{i}") for i in range(8)]
    with ThreadPoolExecutor(8) as pool:
        exports = list(pool.map(lambda vp: target.export(vp[0], vp[1], HOST_A, None), volumes))
    assert len({e.data["tid"] for e in exports}) == 8
    assert len(target.exports()) == 8 and len(target.live_accounts()) == 8


# -- a real login -------------------------------------------------------------------------------


def _qemu_io(target: TgtTarget, export: Export, initiator: str, password: str,
             command: str, tmp_path: Path) -> Any:
    """qemu-io through libiscsi; the CHAP password goes in a file, never on argv."""
    secret = tmp_path / f"chap-{random.randrange(1 << 30)}"
    secret.write_text(password)
    secret.chmod(0o600)
    opts = ",".join([
        "driver=iscsi", "transport=tcp", f"portal={target.portal}",
        f"target={export.data['target_iqn']}", "lun=1", f"initiator-name={initiator}",
        f"user={export.secrets['auth_username']}", "password-secret=chap"])
    return run(["qemu-io", "--object", f"secret,id=chap,file={secret}", "--image-opts", opts,
                "-c", command], timeout=30, ok_codes=(0, 1))


@pytest.mark.qemu
@pytest.mark.skipif(shutil.which("qemu-io") is None
                    or not os.path.exists("/usr/lib/x86_64-linux-gnu/qemu/block-iscsi.so"),
                    reason="needs qemu-io with qemu-block-extra's iscsi driver")
def test_real_login_writes_the_backing_file(target: TgtTarget, tmp_path: Path) -> None:
    volume, path = make_volume(tmp_path)
    export = target.export(volume, path, HOST_A, None)
    password = export.secrets["auth_password"]
    assert HOST_A.initiator is not None

    done = _qemu_io(target, export, HOST_A.initiator, password, "write -P 0xab 0 1M", tmp_path)
    assert done.returncode == 0, done.stderr
    with open(path, "rb") as f:
        assert f.read(1024**2) == b"\xab" * 1024**2
        assert f.read(512) == b"\0" * 512

    stranger = _qemu_io(target, export, STRANGER, password, "read 0 512", tmp_path)
    assert stranger.returncode != 0 and "Target not found" in stranger.stderr
    wrong = _qemu_io(target, export, HOST_A.initiator, "WrongPassword123", "read 0 512",
                     tmp_path)
    assert wrong.returncode != 0 and "Authentication failure" in wrong.stderr

    left = target.unexport(volume, export, HOST_A)
    refused = _qemu_io(target, left, HOST_A.initiator, password, "read 0 512", tmp_path)
    assert refused.returncode != 0


def test_an_adopted_tgtd_on_another_portal_is_refused_not_stopped(target: TgtTarget,
                                                                 tmp_path: Path) -> None:
    volume, path = make_volume(tmp_path)
    target.export(volume, path, HOST_A, None)
    target.stop()
    moved = TgtTarget(target.state_dir, portal=f"127.0.0.1:{free_port()}",
                      control_port=target.control_port)
    with pytest.raises(BackendError, match="stop-exports"):
        moved.start()
    assert len(target.exports()) == 1  # still serving


def test_a_tgtd_spawned_but_never_recorded_is_adopted(target: TgtTarget,
                                                      tmp_path: Path) -> None:
    """The service died between spawning tgtd and recording it (or an older blockyard, which
    kept no record, started it): the tgtd running exactly as configured is ours."""
    volume, path = make_volume(tmp_path)
    export = target.export(volume, path, HOST_A, None)
    record = DaemonRecord.load(Path(target.record_path))
    assert record is not None
    os.unlink(target.record_path)
    again = TgtTarget(target.state_dir, portal=target.portal, control_port=target.control_port)
    again.start()
    assert DaemonRecord.load(Path(target.record_path)) == record
    assert again.exports() == [export.data["target_iqn"]]
