"""The iSCSI connector, in userspace: a qemu-nbd bridge logs in to the target with QEMU's
libiscsi driver and serves the LUN on a private unix socket; handles use libnbd on it.

One bridge per `connect_volume` (its pid and directory are in the `Device`) and one per
`open` (owned by the handle, stopped by `close`). The initiator name is the host's, from the
connector properties, so the target's ACL admits us; the CHAP password reaches qemu-nbd only
through a 0600 secret file (``--object secret,file=``), never its command line, and the file
is deleted once the bridge is up.

TODO(kernel initiator): with ``iscsiadm`` present, a kernel session (``/dev/sdX``) could serve
hosts that need a block device; this module deliberately does only the userspace bridge.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from typing import Any

from blockyard.errors import ConnectorError
from blockyard.exec import WaitTimeout, process_cmdline, spawn, stop, wait_until
from blockyard.model import IscsiInfo, NbdInfo, OpenMode, VolumeHandle

from .base import Device, LoginRefused, check_mode
from .nbd import NbdHandle, connect_handle
from .util import host_lock, remove_quietly, write_private

QEMU_NBD = "qemu-nbd"
#: how long the login and the bridge's start may take before we give up and kill it
LOGIN_TIMEOUT = 20.0
#: request size and requests in flight of handles on a bridge (see NbdHandle)
BRIDGE_REQUEST = 2 * 1024 * 1024
BRIDGE_DEPTH = 8
#: how long a stopping bridge gets before SIGKILL
STOP_TIMEOUT = 10.0

# libiscsi's login status, as qemu reports it: "... Status: Authentication failure(513)"
_LOGIN_STATUS = re.compile(r"Status: (?P<text>[^(]*)\((?P<code>\d+)\)")
_AUTH_CODES = {"513"}  # authentication failure
_ACL_CODES = {"514", "515"}  # authorization failure; target not found (tgt hides it)


@dataclass(frozen=True)
class Bridge:
    pid: int
    dir: str

    @property
    def socket(self) -> str:
        return os.path.join(self.dir, "bridge.sock")

    @property
    def pid_file(self) -> str:
        """Written by qemu-nbd once the export is up, i.e. after the iSCSI login (the socket
        appears earlier, before the login, so it is no readiness signal)."""
        return os.path.join(self.dir, "bridge.pid")

    @property
    def log(self) -> str:
        return os.path.join(self.dir, "bridge.log")

    def nbd_info(self, info: IscsiInfo) -> NbdInfo:
        return NbdInfo(export_name="", socket=self.socket, volume_id=info.volume_id,
                       access_mode=info.access_mode)


def image_opts(info: IscsiInfo, initiator: str, secret_id: str | None) -> str:
    """QEMU's ``--image-opts`` for the LUN (QEMU 7.2's iscsi driver: BlockdevOptionsIscsi)."""
    opts = {
        "driver": "iscsi",
        "transport": "tcp",
        "portal": info.target_portal,
        "target": info.target_iqn,
        "lun": str(info.target_lun),
        "initiator-name": initiator,
    }
    if info.auth_method == "CHAP" and secret_id:
        opts["user"] = info.auth_username or ""
        opts["password-secret"] = secret_id
    # QEMU's option syntax: a comma inside a value is written twice
    return ",".join(f"{k}={v.replace(',', ',,')}" for k, v in opts.items())


class IscsiConnector:
    protocol = "iscsi"

    def __init__(self, properties: dict[str, Any] | None = None, *,
                 run_dir: str | None = None, login_timeout: float = LOGIN_TIMEOUT,
                 **_: Any) -> None:
        """`properties` are this host's (`get_connector_properties`); `initiator` is needed.
        Bridges keep their sockets in `run_dir` (default: the temp dir; keep it short, a
        unix socket path has 107 bytes at most)."""
        self._properties = dict(properties or {})
        self._run_dir = run_dir
        self._login_timeout = login_timeout

    @property
    def initiator(self) -> str:
        initiator = self._properties.get("initiator")
        if not initiator:
            raise ConnectorError("this host has no iSCSI initiator name; pass the connector "
                                 "properties (get_connector_properties) to IscsiConnector")
        return str(initiator)

    def get_connector_properties(self) -> dict[str, Any]:
        return dict(self._properties)

    # the four verbs
    def connect_volume(self, info: IscsiInfo) -> Device:
        bridge = self._start_bridge(info, read_only=info.access_mode == "ro")
        try:
            with NbdHandle(connect_handle(bridge.nbd_info(info)), False, bridge.socket) as h:
                size = h.size
        except BaseException:
            self._stop_bridge(bridge, force=True)
            raise
        return Device(path=bridge.nbd_info(info).uri, size=size, bridge_pid=bridge.pid,
                      bridge_dir=bridge.dir)

    def disconnect_volume(self, info: IscsiInfo, device: Device, force: bool = False) -> None:
        """Stop the device's bridge (logging out of the target) and remove its files.
        Idempotent. `force`: SIGKILL at once instead of a clean logout."""
        if device.bridge_pid is None or device.bridge_dir is None:
            raise ConnectorError(f"{device.path} is not an iSCSI bridge device")
        self._stop_bridge(Bridge(device.bridge_pid, device.bridge_dir), force=force)

    def extend_volume(self, info: IscsiInfo) -> int:
        """The LUN's size as the target reports it now, through a fresh login. A bridge that
        is already running keeps the size it logged in with until it is reconnected."""
        bridge = self._start_bridge(info, read_only=True)
        try:
            with NbdHandle(connect_handle(bridge.nbd_info(info)), False, bridge.socket) as h:
                return h.size
        finally:
            self._stop_bridge(bridge)

    def open(self, info: IscsiInfo, mode: OpenMode = "rb") -> VolumeHandle:
        writable = check_mode(info, mode)
        bridge = self._start_bridge(info, read_only=not writable)
        try:
            h = connect_handle(bridge.nbd_info(info))
            return _BridgedHandle(h, writable, f"iscsi://{info.target_portal}/"
                                  f"{info.target_iqn}/{info.target_lun}", self, bridge)
        except BaseException:
            self._stop_bridge(bridge, force=True)
            raise

    # the bridge
    def _start_bridge(self, info: IscsiInfo, read_only: bool) -> Bridge:
        initiator = self.initiator
        if self._run_dir:
            with host_lock("iscsi-run-dir"):
                os.makedirs(self._run_dir, mode=0o700, exist_ok=True)
        path = tempfile.mkdtemp(prefix="byiscsi-", dir=self._run_dir)  # 0700
        secret = os.path.join(path, "chap.secret")
        argv = [QEMU_NBD, "--persistent", "--shared=0", "--socket",
                os.path.join(path, "bridge.sock"), "--pid-file", os.path.join(path, "bridge.pid")]
        if read_only:
            argv.append("--read-only")
        if info.auth_method == "CHAP":
            write_private(secret, info.auth_password or "")
            argv += ["--object", f"secret,id=chap0,file={secret}"]
        argv += ["--image-opts", image_opts(info, initiator, "chap0")]
        proc = spawn(argv, log_path=os.path.join(path, "bridge.log"))
        bridge = Bridge(proc.pid, path)

        def ready() -> bool:
            return os.path.exists(bridge.pid_file) or proc.poll() is not None

        try:
            wait_until(ready, self._login_timeout, what=f"qemu-nbd to log in to "
                       f"{info.target_iqn} at {info.target_portal}")
        except WaitTimeout:
            self._stop_bridge(bridge, force=True)
            raise ConnectorError(f"iSCSI login to {info.target_iqn} at {info.target_portal} "
                                 f"did not finish within {self._login_timeout:g} s") from None
        finally:
            remove_quietly(secret)  # qemu-nbd read it at start, or failed
        if proc.poll() is not None:
            message = _read(bridge.log).strip()
            self._stop_bridge(bridge)
            raise _login_error(info, initiator, message)
        return bridge

    def _stop_bridge(self, bridge: Bridge, force: bool = False) -> None:
        def ours() -> bool:  # signal the pid only while it is our bridge (argv names our socket)
            return any(bridge.socket in arg for arg in process_cmdline(bridge.pid))

        if not stop(bridge.pid, STOP_TIMEOUT, force=force, ours=ours):
            raise WaitTimeout(f"qemu-nbd bridge {bridge.pid} to die", STOP_TIMEOUT)
        shutil.rmtree(bridge.dir, ignore_errors=True)


class _BridgedHandle(NbdHandle):
    """An `NbdHandle` that owns its bridge and stops it on close."""

    #: fewer, larger requests: each one costs the bridge an iSCSI command as well
    request_size = BRIDGE_REQUEST
    depth = BRIDGE_DEPTH

    def __init__(self, h: Any, writable: bool, name: str, owner: IscsiConnector,
                 bridge: Bridge) -> None:
        super().__init__(h, writable, name)
        self._owner = owner
        self._bridge = bridge

    def _release(self) -> None:
        try:
            super()._release()
        finally:
            self._owner._stop_bridge(self._bridge)


def _read(path: str) -> str:
    try:
        with open(path, errors="replace") as f:
            return f.read()
    except FileNotFoundError:
        return ""


def _login_error(info: IscsiInfo, initiator: str, message: str) -> ConnectorError:
    where = f"{info.target_iqn} at {info.target_portal} (lun {info.target_lun})"
    found = _LOGIN_STATUS.search(message)
    if found and found["code"] in _AUTH_CODES:
        return LoginRefused(f"iSCSI login to {where} refused: CHAP authentication failed "
                            f"for user {info.auth_username!r}", "auth")
    if found and found["code"] in _ACL_CODES:
        return LoginRefused(f"iSCSI login to {where} refused for initiator {initiator}: "
                            f"{found['text'].strip().lower()} (not in the target's ACL, or "
                            f"no such target)", "acl")
    detail = message.splitlines()[-1] if message else "qemu-nbd exited without a message"
    return ConnectorError(f"iSCSI connection to {where} failed: {detail}")
