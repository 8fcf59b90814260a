"""One running QEMU, driven over QMP with the `qemu.qmp` library.

What the agent asks of a guest, and nothing more: secrets and TLS credentials as QEMU
objects (so no password is ever on a command line), block nodes, virtio-blk devices, resize,
what is plugged in, quit. Raw QMP messages never leave this module; every call runs under
`asyncio.timeout()`.

Errors::

    HypervisorError(qmp_class, desc, command)   a command failed, or QEMU went away
    └── DetachTimeout                             the guest never released a device

The device-removal protocol is Nova's: ``device_del`` only *asks* the guest (ACPI hot-unplug);
the device is gone when QEMU emits ``DEVICE_DELETED`` for its id. We listen before asking,
and ask again a bounded number of times.
"""

from __future__ import annotations

import asyncio
import base64
import os
import shutil
import socket
import struct
import tempfile
from dataclasses import dataclass
from typing import Any

from qemu.qmp import EventListener, ExecuteError, QMPClient, QMPError

from blockyard.errors import BlockyardError

#: the default time one QMP command may take
TIMEOUT = 10.0


class HypervisorError(BlockyardError):
    """A QMP command failed (`qmp_class` is QEMU's error class) or QEMU is unreachable."""

    def __init__(self, qmp_class: str, desc: str, command: str) -> None:
        super().__init__(f"{command}: {desc}")
        self.qmp_class = qmp_class
        self.desc = desc
        self.command = command


class DetachTimeout(HypervisorError):
    """The guest did not release the device after every retry of device_del."""


@dataclass(frozen=True)
class Disk:
    """A virtio disk QEMU has, as query-block tells."""

    device_id: str
    node_name: str
    size: int
    read_only: bool


def peer_pid(path: str) -> int | None:
    """The pid of the process listening on a unix socket (SO_PEERCRED of a connection)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(2.0)
        try:
            s.connect(path)
            creds = s.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        except OSError:
            return None
    pid, _uid, _gid = struct.unpack("3i", creds)
    return pid or None


class Hypervisor:
    """A QMP session with one QEMU. Make one with `connect`; `close` ends the session (not
    the guest: `quit` does that)."""

    def __init__(self, qmp: QMPClient, path: str, pid: int | None) -> None:
        self._qmp = qmp
        self.path = path
        self.pid = pid

    @classmethod
    async def connect(cls, path: str, *, timeout: float = TIMEOUT) -> Hypervisor:
        # QEMU serves one QMP client at a time: ask who listens first, then connect for real
        pid = peer_pid(path)
        qmp = QMPClient(os.path.basename(path))
        try:
            async with asyncio.timeout(timeout):
                await qmp.connect(path)
        except (QMPError, OSError, TimeoutError) as exc:
            await _quietly(qmp.disconnect())
            raise HypervisorError("ConnectError", f"cannot reach QEMU at {path}: {exc}",
                                  "connect") from exc
        return cls(qmp, path, pid)

    @property
    def connected(self) -> bool:
        from qemu.qmp import Runstate
        return self._qmp.runstate == Runstate.RUNNING

    async def close(self) -> None:
        await _quietly(self._qmp.disconnect())

    async def __aenter__(self) -> Hypervisor:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _execute(self, command: str, args: dict[str, Any] | None = None, *,
                       timeout: float = TIMEOUT) -> Any:
        try:
            async with asyncio.timeout(timeout):
                return await self._qmp.execute(command, args)
        except ExecuteError as exc:
            raise HypervisorError(exc.error_class, exc.error.error.desc, command) from exc
        except (QMPError, OSError, TimeoutError) as exc:
            raise HypervisorError("Disconnected", f"QEMU at {self.path} did not answer: "
                                  f"{exc or type(exc).__name__}", command) from exc

    # objects
    async def add_secret(self, secret_id: str, data: str) -> None:
        """A QEMU secret (e.g. a CHAP password), sent over QMP only, base64-encoded."""
        await self._execute("object-add", {
            "qom-type": "secret", "id": secret_id, "format": "base64",
            "data": base64.b64encode(data.encode()).decode()})

    async def add_tls_psk(self, creds_id: str, username: str, key: str) -> None:
        """TLS-PSK client credentials. QEMU reads ``keys.psk`` while the object is created
        (qcrypto_tls_creds_psk_load), so the file lives only for this call."""
        directory = tempfile.mkdtemp(prefix="blockyard-psk-")  # 0700
        try:
            path = os.path.join(directory, "keys.psk")
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(f"{username}:{key}\n")
            await self._execute("object-add", {
                "qom-type": "tls-creds-psk", "id": creds_id, "dir": directory,
                "endpoint": "client", "username": username})
        finally:
            shutil.rmtree(directory, ignore_errors=True)

    async def remove_object(self, object_id: str) -> None:
        """Delete an object; one that does not exist is already removed."""
        try:
            await self._execute("object-del", {"id": object_id})
        except HypervisorError as exc:
            if "not found" not in exc.desc and exc.qmp_class != "DeviceNotFound":
                raise

    # block nodes
    async def blockdev_add(self, node_name: str, options: dict[str, Any], *,
                           read_only: bool = False) -> None:
        """A raw format node `node_name` over the protocol node `options` (defined inline,
        so deleting `node_name` deletes both; block_resize works on `node_name`)."""
        await self._execute("blockdev-add", {
            "driver": "raw", "node-name": node_name, "read-only": read_only,
            "discard": "unmap", "file": dict(options, **{"read-only": read_only})})

    async def blockdev_del(self, node_name: str) -> None:
        """Delete a node; a missing one is not an error (undo and recovery repeat this)."""
        try:
            await self._execute("blockdev-del", {"node-name": node_name})
        except HypervisorError as exc:
            if "Failed to find node" not in exc.desc and "Cannot find" not in exc.desc:
                raise

    async def block_resize(self, node_name: str, size: int) -> None:
        await self._execute("block_resize", {"node-name": node_name, "size": size})

    # devices
    async def device_add(self, device_id: str, node_name: str, serial: str, *,
                         bus: str | None = None) -> None:
        """A virtio-blk-pci disk on `node_name`; the guest reads `serial` (20 chars at most
        in virtio-blk, so it is cut there) as the disk's serial."""
        args: dict[str, Any] = {"driver": "virtio-blk-pci", "id": device_id,
                                "drive": node_name, "serial": serial[:20]}
        if bus:
            args["bus"] = bus
        await self._execute("device_add", args)

    async def device_del(self, device_id: str, timeout: float = 5.0, retries: int = 3) -> None:
        """Ask the guest to release the device, and wait until QEMU says it is gone.

        Each attempt waits `timeout` seconds for DEVICE_DELETED; like Nova, device_del is
        sent again up to `retries` times (a guest may miss the first ACPI request while it
        boots). A device that does not exist counts as removed."""
        def ours(event: Any) -> bool:
            # virtio devices also send one for their backend, without `device`
            return bool(event.get("data", {}).get("device") == device_id)

        listener = EventListener("DEVICE_DELETED", ours)
        with self._qmp.listen(listener):
            for _ in range(max(1, retries)):
                try:
                    await self._execute("device_del", {"id": device_id})
                except HypervisorError as exc:
                    if exc.qmp_class == "DeviceNotFound":
                        return
                    if "already in the process of unplug" not in exc.desc:
                        raise
                try:
                    async with asyncio.timeout(timeout):
                        await listener.get()
                    return
                except TimeoutError:
                    continue
        raise DetachTimeout("DetachTimeout", f"the guest did not release {device_id} "
                            f"after {retries} requests of {timeout:g} s", "device_del")

    async def query_disks(self) -> list[Disk]:
        """The disks plugged in as devices with an id (ours and anyone's)."""
        disks = []
        for entry in await self._execute("query-block"):
            qdev = str(entry.get("qdev") or "")
            inserted = entry.get("inserted")
            if not inserted or "/machine/peripheral/" not in qdev:
                continue
            device_id = qdev.split("/machine/peripheral/", 1)[1].split("/", 1)[0]
            disks.append(Disk(device_id=device_id, node_name=str(inserted["node-name"]),
                              size=int(inserted["image"]["virtual-size"]),
                              read_only=bool(inserted.get("ro"))))
        return disks

    async def status(self) -> str:
        return str((await self._execute("query-status"))["status"])

    async def quit(self) -> None:
        try:
            await self._execute("quit")
        except HypervisorError as exc:
            if exc.qmp_class != "Disconnected":  # QEMU may hang up before it answers
                raise
        await self.close()


async def _quietly(aw: Any) -> None:
    try:
        await aw
    except Exception:  # closing what is broken: nothing to report
        pass
