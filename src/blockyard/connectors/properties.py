"""This host's connector properties: what an initiator tells the volume service on attach.

`get_connector_properties` returns os-brick's dict (the wire shape Nova sends to Cinder);
`to_connector`, the one parser of that dict, turns it into the typed
`blockyard.model.Connector` drivers take.
"""

from __future__ import annotations

import hashlib
import os
import platform
import secrets
import socket
from typing import Any

from blockyard.model import Connector

from .util import host_lock, write_private

ISCSI_INITIATOR_FILE = "/etc/iscsi/initiatorname.iscsi"
NVME_HOSTNQN_FILE = "/etc/nvme/hostnqn"
MACHINE_ID_FILE = "/etc/machine-id"
#: our IQN naming authority; a generated initiator is ``<prefix>:<hostname>-<random>``
IQN_PREFIX = "iqn.2004-10.org.blockyard"
INITIATOR_FILE_NAME = "initiatorname.iscsi"


def get_connector_properties(
    state_dir: str | None = None,
    *,
    multipath: bool = False,
    iscsi_initiator_file: str = ISCSI_INITIATOR_FILE,
    nvme_hostnqn_file: str = NVME_HOSTNQN_FILE,
) -> dict[str, Any]:
    """This host's properties as os-brick reports them.

    The iSCSI initiator is the system's (open-iscsi's file) when there is one; otherwise it
    is generated once and kept in ``<state_dir>/initiatorname.iscsi`` so it stays the same
    across restarts (target ACLs name it). Without `state_dir` it is derived from the machine
    id instead, which is just as stable but not random.
    """
    hostname = socket.gethostname()
    props: dict[str, Any] = {
        "platform": platform.machine(),
        "os_type": "linux",
        "ip": _primary_ip(),
        "host": hostname,
        "multipath": bool(multipath),
        "initiator": (_read_initiator(iscsi_initiator_file)
                      or _our_initiator(state_dir, hostname)),
    }
    nqn = _read_first_line(nvme_hostnqn_file)
    if nqn:
        props["nqn"] = nqn
    return props


#: the connector keys `Connector` has a text field for
TEXT_FIELDS = ("host", "ip", "initiator", "platform", "os_type", "nqn")
#: what oslo's ``strutils.bool_from_string`` reads as true (OpenStack's spelling of a boolean
#: in text); any other string is false
TRUE_STRINGS = frozenset({"1", "t", "true", "on", "y", "yes"})


def to_connector(props: dict[str, Any]) -> Connector:
    """The typed `Connector` of a connector dict: os-brick's properties as Nova sends them on
    attach, or as the API recorded them. The one parser of that dict (the API, the service and
    the compute agent all use it).

    os-brick sends ``multipath`` as a boolean, the cinder CLI may send the strings "true" and
    "false": both mean the same here (`as_bool`). Text fields are kept as text; keys `Connector`
    has no field for go to `extra` unchanged."""
    return Connector(
        **{k: (str(props[k]) if props.get(k) is not None else None) for k in TEXT_FIELDS},
        multipath=as_bool(props.get("multipath", False)),
        extra={k: v for k, v in props.items() if k not in (*TEXT_FIELDS, "multipath")},
    )


def as_bool(value: Any) -> bool:
    """A wire flag as OpenStack reads it (oslo ``bool_from_string``): a boolean as is; text
    true when it is one of `TRUE_STRINGS` (any case, outer blanks ignored); None false."""
    if isinstance(value, bool):
        return value
    if value is None:
        return False
    return str(value).strip().lower() in TRUE_STRINGS


def _primary_ip() -> str:
    """The address this host would use to reach the outside (no packet is sent)."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect(("192.0.2.1", 9))  # TEST-NET-1: a route lookup only
            address: str = s.getsockname()[0]
            return address
    except OSError:
        return "127.0.0.1"


def _read_first_line(path: str) -> str | None:
    try:
        with open(path) as f:
            for line in f:
                if line.strip() and not line.lstrip().startswith("#"):
                    return line.strip()
    except OSError:
        pass
    return None


def _read_initiator(path: str) -> str | None:
    """``InitiatorName=`` from an open-iscsi style file, or None."""
    try:
        with open(path) as f:
            for line in f:
                key, sep, value = line.strip().partition("=")
                if sep and key.strip() == "InitiatorName" and value.strip():
                    return value.strip()
    except OSError:
        pass
    return None


def _our_initiator(state_dir: str | None, hostname: str) -> str:
    name = _safe_label(hostname)
    if state_dir is None:
        machine = _read_first_line(MACHINE_ID_FILE) or hostname
        return f"{IQN_PREFIX}:{name}-{hashlib.sha256(machine.encode()).hexdigest()[:12]}"
    path = os.path.join(state_dir, INITIATOR_FILE_NAME)
    with host_lock("initiatorname", state_dir):  # two processes must not make two names
        existing = _read_initiator(path)
        if existing:
            return existing
        initiator = f"{IQN_PREFIX}:{name}-{secrets.token_hex(6)}"
        write_private(path + ".tmp", f"InitiatorName={initiator}\n")
        os.replace(path + ".tmp", path)
        return initiator


def _safe_label(hostname: str) -> str:
    """A hostname as IQN characters allow (lowercase letters, digits, '-', '.')."""
    label = "".join(c if c.isalnum() or c in "-." else "-" for c in hostname.lower())
    return label.strip("-.") or "host"
