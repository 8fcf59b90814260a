"""Host properties: the generated initiator is persisted and stable; system files win."""

from __future__ import annotations

import os
import platform
import socket
import stat
from pathlib import Path
from typing import Any

import pytest

from blockyard.connectors import get_connector_properties, to_connector
from blockyard.connectors.properties import as_bool
from blockyard.model import Connector

NONE = "/nonexistent/file"


def props(state_dir: Path | None, **kw: str) -> dict[str, object]:
    kw.setdefault("iscsi_initiator_file", NONE)
    kw.setdefault("nvme_hostnqn_file", NONE)
    return get_connector_properties(None if state_dir is None else str(state_dir), **kw)


def test_shape(tmp_path: Path) -> None:
    p = props(tmp_path)
    assert p["platform"] == platform.machine()
    assert p["os_type"] == "linux"
    assert p["host"] == socket.gethostname()
    assert p["multipath"] is False
    assert isinstance(p["ip"], str) and p["ip"]
    assert "nqn" not in p
    assert get_connector_properties(str(tmp_path), multipath=True,
                                    iscsi_initiator_file=NONE)["multipath"] is True


def test_generated_initiator_is_persisted_and_stable(tmp_path: Path) -> None:
    first = props(tmp_path)["initiator"]
    assert isinstance(first, str)
    assert first.startswith("iqn.2004-10.org.blockyard:")
    saved = tmp_path / "initiatorname.iscsi"
    assert saved.read_text() == f"InitiatorName={first}\n"
    assert stat.S_IMODE(os.stat(saved).st_mode) == 0o600
    assert props(tmp_path)["initiator"] == first
    # another state dir is another host identity
    other = tmp_path / "other"
    other.mkdir()
    assert props(other)["initiator"] != first


def test_without_state_dir_the_initiator_is_still_stable() -> None:
    assert props(None)["initiator"] == props(None)["initiator"]


def test_system_initiator_and_nqn_win(tmp_path: Path) -> None:
    iscsi = tmp_path / "initiatorname.sys"
    iscsi.write_text("## comment\nInitiatorName=iqn.1993-08.org.debian:01:abcdef\n")
    nqn = tmp_path / "hostnqn"
    nqn.write_text("nqn.2014-08.org.nvmexpress:uuid:1234\n")
    p = props(tmp_path, iscsi_initiator_file=str(iscsi), nvme_hostnqn_file=str(nqn))
    assert p["initiator"] == "iqn.1993-08.org.debian:01:abcdef"
    assert p["nqn"] == "nqn.2014-08.org.nvmexpress:uuid:1234"
    assert not (tmp_path / "initiatorname.iscsi").exists()


def test_to_connector(tmp_path: Path) -> None:
    p = props(tmp_path)
    c = to_connector({**p, "do_local_attach": False})
    assert isinstance(c, Connector)
    assert (c.host, c.ip, c.initiator, c.multipath) == (p["host"], p["ip"], p["initiator"],
                                                        False)
    assert c.extra == {"do_local_attach": False}


@pytest.mark.parametrize(("wire", "multipath"), [
    (True, True), (False, False), (None, False),           # os-brick sends booleans
    ("true", True), ("false", False), ("True", True),      # the cinder CLI may send text
    (" YES ", True), ("1", True), ("on", True), ("t", True), ("y", True),
    ("no", False), ("0", False), ("off", False), ("", False), ("maybe", False),
])
def test_multipath_as_openstack_reads_it(wire: Any, multipath: bool) -> None:
    assert to_connector({"host": "h", "multipath": wire}).multipath is multipath
    assert as_bool(wire) is multipath


def test_a_missing_multipath_is_false_and_never_extra() -> None:
    assert to_connector({}) == Connector()
    assert to_connector({"multipath": "false"}).extra == {}


def test_text_fields_are_text_and_unknown_keys_go_to_extra() -> None:
    c = to_connector({"host": "h1", "ip": "10.0.0.1", "initiator": "iqn.x", "platform": None,
                      "os_type": "linux", "nqn": "nqn.y", "wwpns": ["50:01"],
                      "do_local_attach": False, "mountpoint": "/dev/vdb"})
    assert (c.host, c.ip, c.initiator, c.platform, c.os_type, c.nqn) == (
        "h1", "10.0.0.1", "iqn.x", None, "linux", "nqn.y")
    assert c.extra == {"wwpns": ["50:01"], "do_local_attach": False, "mountpoint": "/dev/vdb"}
    assert to_connector({"host": 42}).host == "42"
