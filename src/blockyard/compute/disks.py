"""From a volume's typed connection info to what QEMU needs to open it: pure, no I/O.

`qemu_source(info, prefix=..., initiator=...)` returns a `QemuSource`: the options of the
*protocol* block node (``file``, ``host_device``, ``nbd`` (which reconnects to a replaced
server: `NBD_RECONNECT_DELAY`), ``iscsi`` or ``rbd`` plus its arguments;
`blockyard.compute.hypervisor.Hypervisor.blockdev_add` puts the ``raw`` node on top), the
QEMU ``secret`` objects to create first (the iSCSI CHAP password, the cephx key)
and the TLS-PSK credentials an NBD-over-TLS export needs. The ids of those objects are derived
from `prefix` (the disk's node name), so the objects of two disks never collide and a
restarted agent can name, and remove, the objects of a disk it only knows by its node name
(`secret_id`, `tls_creds_id`).

Secrets live only in `QemuSource.secrets` and `TlsPsk.key`; neither appears in a ``repr``.
An iSCSI volume without this host's initiator name raises `blockyard.errors.Invalid`; info
missing what its protocol needs (a PSK, CHAP credentials) raises `ConnectionInfoError`.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from blockyard.errors import ConnectionInfoError, Invalid
from blockyard.model import ConnectionInfo, IscsiInfo, LocalInfo, NbdInfo, RbdInfo

LocalDriver = Literal["file", "host_device"]

#: seconds QEMU's NBD client holds a guest's requests while it reconnects to a server that
#: went away (QEMU's ``reconnect-delay``): a qemu-nbd replaced under a live export (the volume
#: service restarted it, or it crashed and was started again) is survived without an I/O
#: error. Past this, requests fail until the client is connected again.
NBD_RECONNECT_DELAY = 60


def secret_id(prefix: str) -> str:
    """The id of the QEMU ``secret`` object holding the CHAP password (iSCSI) or the cephx
    key (RBD) of disk `prefix`."""
    return f"{prefix}-secret"


def tls_creds_id(prefix: str) -> str:
    """The id of the ``tls-creds-psk`` object of disk `prefix`."""
    return f"{prefix}-tls"


@dataclass(frozen=True)
class TlsPsk:
    """TLS pre-shared-key credentials for one NBD client connection.

    QEMU reads a PSK only from a ``keys.psk`` file in a directory (one ``identity:hexkey``
    line, as GnuTLS's psktool writes it); `keys_file` is that file's content.
    """

    #: the id of the ``tls-creds-psk`` object to create (``tls-creds`` of the nbd node)
    creds_id: str
    identity: str
    #: the key, hex
    key: str = field(repr=False)

    def keys_file(self) -> str:
        return f"{self.identity}:{self.key}\n"


@dataclass(frozen=True)
class QemuSource:
    """What QEMU needs to open one volume, in the order it needs it: `secrets` and `tls_psk`
    objects first, then a block node with `options`."""

    #: the protocol node's blockdev options (``driver`` and its arguments; no node-name)
    options: Mapping[str, object]
    read_only: bool
    #: secret object id -> value (the value never shows in repr); bytes where QEMU wants the
    #: raw secret (the cephx key: QEMU's rbd driver hands librados the base64 of the object)
    secrets: Mapping[str, str | bytes] = field(default_factory=dict)
    tls_psk: TlsPsk | None = None

    def __repr__(self) -> str:
        return (f"QemuSource(options={dict(self.options)!r}, read_only={self.read_only}, "
                f"secrets={sorted(self.secrets)!r}, tls_psk={self.tls_psk!r})")


def qemu_source(info: ConnectionInfo, *, prefix: str, initiator: str | None = None,
                local_driver: LocalDriver = "file") -> QemuSource:
    """Translate `info` for QEMU; the ids of the objects it needs start with `prefix`.

    `initiator` is this host's iSCSI initiator name; an iSCSI volume needs it (targets bind
    their ACL to it, and QEMU's own default, ``iqn.2008-11.org.linux-kvm``, matches no ACL).
    `local_driver` is ``host_device`` when the caller knows a local path is a block device:
    only that driver reports a device's size and lets ``block_resize`` check it.
    """
    read_only = info.access_mode == "ro"
    if isinstance(info, LocalInfo):
        return QemuSource({"driver": local_driver, "filename": info.device_path}, read_only)
    if isinstance(info, NbdInfo):
        return _nbd(info, prefix, read_only)
    if isinstance(info, IscsiInfo):
        return _iscsi(info, prefix, initiator, read_only)
    if isinstance(info, RbdInfo):
        return _rbd(info, prefix, read_only)
    raise TypeError(f"no QEMU source for {type(info).__name__}")


def _nbd(info: NbdInfo, prefix: str, read_only: bool) -> QemuSource:
    server: dict[str, object]
    if info.socket:
        server = {"type": "unix", "path": info.socket}
    else:
        # QAPI's InetSocketAddress takes the port as a string (it may be a service name)
        server = {"type": "inet", "host": info.host, "port": str(info.port)}
    options: dict[str, object] = {"driver": "nbd", "server": server,
                                  "export": info.export_name,
                                  "reconnect-delay": NBD_RECONNECT_DELAY}
    psk = None
    if info.tls:
        if not info.tls_psk_identity or not info.tls_psk_key:
            raise ConnectionInfoError("an NBD export with TLS needs a PSK identity and key")
        psk = TlsPsk(tls_creds_id(prefix), info.tls_psk_identity, info.tls_psk_key)
        options["tls-creds"] = psk.creds_id
    return QemuSource(options, read_only, tls_psk=psk)


def _iscsi(info: IscsiInfo, prefix: str, initiator: str | None,
           read_only: bool) -> QemuSource:
    if not initiator:
        raise Invalid("an iSCSI volume needs this host's initiator name")
    options: dict[str, object] = {
        "driver": "iscsi", "transport": "tcp", "portal": info.target_portal,
        "target": info.target_iqn, "lun": info.target_lun, "initiator-name": initiator,
    }
    secrets: dict[str, str] = {}
    if info.auth_method == "CHAP":
        if info.auth_username is None or info.auth_password is None:
            raise ConnectionInfoError("CHAP needs a user name and a password")
        options["user"] = info.auth_username
        options["password-secret"] = secret_id(prefix)
        secrets[secret_id(prefix)] = info.auth_password
    return QemuSource(options, read_only, secrets)


def _rbd(info: RbdInfo, prefix: str, read_only: bool) -> QemuSource:
    """QEMU's own librbd client (BlockdevOptionsRbd): the monitors as ``server``, the cephx
    key as a ``secret`` object (``key-secret``), so no ceph.conf or keyring is needed on this
    host when the key came with the connection info."""
    options: dict[str, object] = {
        "driver": "rbd", "pool": info.pool, "image": info.image,
        # QAPI's InetSocketAddressBase takes the port as a string
        "server": [{"host": host, "port": str(port)} for host, port in info.monitors],
    }
    if info.snapshot:
        options["snapshot"] = info.snapshot
    secrets: dict[str, str | bytes] = {}
    if info.auth_enabled:
        if info.auth_username:
            options["user"] = info.auth_username
        options["auth-client-required"] = ["cephx"]
        if info.key:
            options["key-secret"] = secret_id(prefix)
            # QEMU base64-encodes the secret object's bytes into librados' "key": it must
            # hold the decoded key
            try:
                secrets[secret_id(prefix)] = base64.b64decode(info.key, validate=True)
            except binascii.Error:
                raise ConnectionInfoError("rbd connection_info: 'key' is not base64") from None
    else:
        options["auth-client-required"] = ["none"]
    return QemuSource(options, read_only or info.snapshot is not None, secrets)
