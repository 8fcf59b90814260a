"""The compute agent's QEMU layer: hot-plugging block devices into a running guest over QMP.

`Hypervisor` wraps one `qemu.qmp.QMPClient` connection to one QEMU and offers what attaching
a volume needs, in the order it needs it:

    add_secret / add_tls_psk       objects a protocol node refers to (CHAP password, TLS-PSK)
    blockdev_add                   a ``raw`` node over the volume's protocol node
    device_add                     the ``virtio-blk-pci`` device the guest sees
    device_del                     ask the guest to let go; wait for ``DEVICE_DELETED``
    blockdev_del, remove_*         drop the node and the objects (each is idempotent)
    block_resize, query_disks, status, system_reset, quit
    mirror, wait_job_ready         copy a device's node to another while the guest runs
    complete_job / cancel_job      pivot the device onto the copy, or give up; job
    stop, cont                     pause and resume the guest (assisted snapshots; a guest
                                   started paused with -S runs from its first cont)

Raw QMP messages never leave this module: replies are checked once, here, into small frozen
records (`Disk`). Every call runs under ``asyncio.timeout()``, the caller's or the default
given to `Hypervisor.connect`.

Errors (all under `blockyard.errors.BackendError`)::

    HypervisorError(qmp_class, desc, command)  QEMU refused `command`: qmp_class is QMP's error
    │                                          class ("GenericError", "DeviceNotFound", ...),
    │                                          None when QEMU gave no usable answer
    ├── HypervisorGone                         no QMP connection: nothing listens on the socket,
    │                                          or QEMU exited / hung up mid-call
    ├── HypervisorTimeout(timeout)             no answer in time; the command may still happen
    └── DetachTimeout(device_id, attempts)     the guest never released a device

`asyncio.CancelledError` is never wrapped.

Facts about QEMU 7.2 this module relies on (each was checked against the real binary):

* A node name has at most 31 characters. The protocol node is named ``<node>-proto`` and
  created inline under the raw node, so `blockdev_del` of the raw node removes both, and
  ``block_resize`` of the raw node resizes through it. Hence `MAX_NODE_NAME` = 25.
* ``blockdev-del`` of a missing node and ``object-del`` of a missing object fail with a bare
  GenericError; the idempotent removals therefore look the name up before calling it an error.
* ``device_del`` of a device already asked to go fails with GenericError "... is already in
  the process of unplug" until 5 s of *guest* (virtual) time have passed; a guest that is
  paused, or started with ``-S``, never gets there. `device_del` keeps waiting on that error.
* For a virtio-blk-pci device QEMU sends ``DEVICE_DELETED`` twice: first for the backend
  (``path`` ``/machine/peripheral/<id>/virtio-backend``, no ``device``), then with
  ``device=<id>``; only the latter means the device is gone.
* virtio-blk serials are 20 bytes on the wire; QEMU accepts longer ones and the guest sees
  the first 20 (udev: ``/dev/disk/by-id/virtio-<serial>``). `device_add` truncates openly.
* A ``tls-creds-psk`` object with ``endpoint=client`` reads ``<dir>/keys.psk`` once, when the
  object is created (object-add fails if the file is missing); later TLS handshakes use the
  key held in memory. The file may be deleted as soon as `add_tls_psk` returns;
  `add_tls_psk_key` does exactly that. A *server* endpoint (qemu-nbd's) is the opposite:
  it looks the key up in its file at every handshake, so that file must stay.
* Deleting a secret or TLS object that an open node uses succeeds and leaves the node
  working: the nbd client holds its own reference to the creds, the iscsi driver copied the
  password when it logged in. Keeping them until `blockdev_del` costs nothing and keeps
  the order of undo simple.
* A ``pc`` machine has 32 slots on pci.0 and the host and ISA bridges take two: with
  ``-nodefaults`` and nothing else plugged, the 31st device_add fails ("PCI: no
  slot/function available").
* ``block_resize`` of an nbd node fails ("Cannot grow NBD nodes"): QEMU's NBD client learns
  the export size only at connect. An iscsi node re-reads the LUN's capacity; file and
  host_device nodes read the size of the file or device.
* ``blockdev-mirror`` to an existing node of another size starts, and the job then fails
  before it is ready ("Source and target image have different sizes"); a ``raw`` node's
  ``size`` option makes a larger volume the same size, and ``blockdev-reopen`` without it
  (the ``file`` child named, not described) shows the whole volume again, after which a
  ``block_resize`` to that size tells the guest. A mirror job that
  is ready keeps both nodes in step; ``block-job-complete`` then makes the device use the
  target (the source node stays, unused, for ``blockdev-del``), ``block-job-cancel`` with
  ``force`` leaves it on the source. With ``auto-dismiss`` off a concluded job stays in
  ``query-jobs`` with its error until ``job-dismiss``.
* A disk added with ``device_add ... bootindex=0`` to a guest started with ``-S`` is not in
  SeaBIOS's boot order until a ``system_reset`` (QEMU writes the fw_cfg ``bootorder`` file
  at reset); without the reset the firmware boots the first disk it finds instead.
* One QMP socket serves one client at a time: while a `Hypervisor` is connected, a second
  `connect` to the same socket waits for the greeting until it times out.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import os
import shutil
import socket
import struct
import tempfile
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from types import TracebackType
from typing import Any, TypeVar

from qemu.qmp import (
    EventListener,
    ExecInterruptedError,
    ExecuteError,
    Message,
    QMPClient,
    QMPError,
    Runstate,
    StateError,
)

from blockyard.errors import BackendError

from .disks import TlsPsk

log = logging.getLogger(__name__)
T = TypeVar("T")

#: seconds a QMP call may take when the caller gives no timeout
DEFAULT_TIMEOUT = 30.0
#: the protocol node of disk ``<node>`` is ``<node>-proto``
PROTO_SUFFIX = "-proto"
#: QEMU stores node names in 32 bytes; the protocol node's name must fit as well
MAX_NODE_NAME = 31 - len(PROTO_SUFFIX)
#: bytes of serial a virtio-blk device carries (VIRTIO_BLK_ID_BYTES)
SERIAL_MAX = 20
#: Nova's defaults: 8 device_del requests (the first and 7 re-sends), 20 s each
DETACH_TIMEOUT = 20.0
DETACH_RETRIES = 7


class HypervisorError(BackendError):
    """QEMU refused or failed a QMP command."""

    def __init__(self, qmp_class: str | None, desc: str, command: str,
                 cause: BaseException | None = None) -> None:
        shown = f"{desc} ({qmp_class})" if qmp_class else desc
        super().__init__(f"QMP {command}: {shown}", cause)
        #: QMP's error class, e.g. "GenericError" or "DeviceNotFound"; None without a reply
        self.qmp_class = qmp_class
        self.desc = desc
        self.command = command


class HypervisorGone(HypervisorError):
    """There is no QMP connection: QEMU is not listening, or it hung up (exited)."""

    def __init__(self, command: str, cause: BaseException | None = None) -> None:
        why = f": {cause}" if cause is not None and str(cause) else ""
        super().__init__(None, f"the QMP connection is lost{why}", command, cause)


class HypervisorTimeout(HypervisorError):
    """QEMU did not answer in time. The command may still take effect."""

    def __init__(self, command: str, timeout: float) -> None:
        super().__init__(None, f"no answer within {timeout:g} s", command)
        self.timeout = timeout


class DetachTimeout(HypervisorError):
    """The guest did not release the device: no DEVICE_DELETED after every request."""

    def __init__(self, device_id: str, attempts: int, timeout: float) -> None:
        super().__init__(None, f"the guest did not release device {device_id!r} "
                               f"({attempts} requests, {timeout:g} s each)", "device_del")
        self.device_id = device_id
        self.attempts = attempts


@dataclass(frozen=True)
class Disk:
    """A virtio-blk device in the guest and the block node behind it."""

    device_id: str
    node_name: str
    #: what the guest reads as the serial; None when the device has none
    serial: str | None
    #: bytes, as QEMU currently knows it (after the last block_resize)
    size: int
    read_only: bool


@dataclass(frozen=True)
class BlockJob:
    """A block job (``query-jobs``): a mirror of a swap, here."""

    id: str
    #: "mirror", "commit", ...
    type: str
    #: QEMU's job status: "created", "running", "ready", "pending", "concluded", ...
    status: str
    #: why a concluded job failed; None while it runs or when it succeeded
    error: str | None


class Hypervisor:
    """One QMP connection to one QEMU. Build it with `connect`; close it (or use it as
    ``async with``). Calls may run concurrently: QMP matches replies to requests by id."""

    def __init__(self, client: QMPClient, pid: int, timeout: float) -> None:
        self._qmp = client
        self._pid = pid
        self._timeout = timeout

    # ------------------------------------------------------------------ connection
    @classmethod
    async def connect(cls, qmp_socket_path: str, *,
                      timeout: float = DEFAULT_TIMEOUT) -> Hypervisor:
        """Connect to QEMU's QMP unix socket and negotiate capabilities. `timeout` bounds
        the connect and is the default of every later call."""
        client = _Client(os.path.basename(os.path.dirname(qmp_socket_path)) or None)
        # the default listener would keep every event forever; ours are per call
        client.events.event_filter = _no_event
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.setblocking(False)
        try:
            async with _deadline("connect", timeout):
                await asyncio.get_running_loop().sock_connect(sock, qmp_socket_path)
                pid = _peer_pid(sock)
                await client.connect(sock)
        except (OSError, QMPError) as err:
            sock.close()
            raise HypervisorGone("connect", err) from err
        except BaseException:
            sock.close()
            raise
        log.debug("connected to QEMU %d on %s", pid, qmp_socket_path)
        return cls(client, pid, timeout)

    @property
    def connected(self) -> bool:
        """True while the QMP session is up (False once QEMU hung up or `close` ran)."""
        return self._qmp.runstate == Runstate.RUNNING

    @property
    def pid(self) -> int:
        """The QEMU process at the other end of the socket (its SO_PEERCRED)."""
        return self._pid

    async def close(self) -> None:
        """Disconnect; idempotent. Whatever broke the connection is logged, not raised:
        the caller is done with it either way."""
        if self._qmp.runstate == Runstate.IDLE:
            return
        try:
            await self._qmp.disconnect()
        except Exception as err:  # the bottom half re-raises e.g. ConnectionResetError
            log.debug("QMP connection to QEMU %d ended with %r", self._pid, err)

    async def __aenter__(self) -> Hypervisor:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.close()

    # ------------------------------------------------------------------ objects
    async def add_secret(self, secret_id: str, data: str | bytes, *,
                         timeout: float | None = None) -> None:
        """Create a QEMU ``secret`` object holding `data` (base64 on the wire), for nodes to
        name (``password-secret``): a password never appears on a command line, in this
        module's log lines or in the errors it raises."""
        raw = data.encode() if isinstance(data, str) else data
        args = {"qom-type": "secret", "id": secret_id, "format": "base64",
                "data": base64.b64encode(raw).decode("ascii")}
        async with self._deadline("object-add", timeout):
            await self._execute("object-add", args, secret=True)

    async def add_tls_psk(self, creds_id: str, *, directory: str, username: str,
                          timeout: float | None = None) -> None:
        """Create ``tls-creds-psk`` (endpoint client) from ``<directory>/keys.psk`` for an
        nbd node's ``tls-creds``; `username` is the PSK identity to look up there. QEMU
        reads the file here, once: it may be deleted when this returns. (Keywords only:
        three strings in a row are too easy to pass in the wrong order.)"""
        args = {"qom-type": "tls-creds-psk", "id": creds_id, "dir": directory,
                "endpoint": "client", "username": username}
        async with self._deadline("object-add", timeout):
            await self._execute("object-add", args)

    async def add_tls_psk_key(self, psk: TlsPsk, *, timeout: float | None = None) -> None:
        """`add_tls_psk` from the key itself: the key file exists, private (0600 in a 0700
        directory), only while QEMU reads it. QEMU must run as this user."""
        directory = tempfile.mkdtemp(prefix="blockyard-psk-")
        try:
            path = os.path.join(directory, "keys.psk")
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(psk.keys_file())
            await self.add_tls_psk(psk.creds_id, directory=directory, username=psk.identity,
                                   timeout=timeout)
        finally:
            shutil.rmtree(directory, ignore_errors=True)

    async def remove_object(self, object_id: str, *, timeout: float | None = None) -> None:
        """Delete a QOM object (secret, TLS credentials); a missing one is not an error.
        A node that still uses it keeps its own reference, so this may run before
        `blockdev_del` too."""
        async with self._deadline("object-del", timeout):
            try:
                await self._execute("object-del", {"id": object_id})
            except HypervisorError as err:
                if err.qmp_class != "GenericError" or await self._object_exists(object_id):
                    raise

    async def remove_secret(self, secret_id: str, *, timeout: float | None = None) -> None:
        """Delete an `add_secret` object; idempotent."""
        await self.remove_object(secret_id, timeout=timeout)

    async def remove_tls_psk(self, creds_id: str, *, timeout: float | None = None) -> None:
        """Delete an `add_tls_psk` object; idempotent."""
        await self.remove_object(creds_id, timeout=timeout)

    # ------------------------------------------------------------------ block nodes
    async def blockdev_add(self, node_name: str, options: Mapping[str, object], *,
                           read_only: bool = False, size: int | None = None,
                           timeout: float | None = None) -> None:
        """Open a volume: a ``raw`` node `node_name` whose ``file`` is the protocol node
        described by `options` (driver and its arguments, see `disks.qemu_source`), created
        inline as ``<node_name>-proto`` so that it lives and dies with its parent (which it
        inherits read-only from). Guest discards pass down (``discard=unmap``), so a thin
        volume gets its space back. With `size`, the node shows only the volume's first
        `size` bytes (a mirror target for a smaller disk) until `drop_size_limit`."""
        if len(node_name) > MAX_NODE_NAME:
            raise ValueError(f"node name {node_name!r} is longer than {MAX_NODE_NAME} "
                             f"characters (QEMU's limit, less {PROTO_SUFFIX!r})")
        args: dict[str, object] = {
            "driver": "raw", "node-name": node_name, "read-only": read_only,
            "discard": "unmap", "file": {**options, "node-name": node_name + PROTO_SUFFIX},
        }
        if size is not None:
            args["size"] = size
        async with self._deadline("blockdev-add", timeout):
            await self._execute("blockdev-add", args)

    async def drop_size_limit(self, node_name: str, *, read_only: bool = False,
                              timeout: float | None = None) -> None:
        """Let a `blockdev_add` node opened with `size` show the whole volume, and tell the
        guest of the device using it that its disk grew (``blockdev-reopen`` without the
        limit, then ``block_resize`` to the size that gives). Idempotent."""
        args = {"options": [{"driver": "raw", "node-name": node_name, "read-only": read_only,
                             "discard": "unmap", "file": node_name + PROTO_SUFFIX}]}
        async with self._deadline("blockdev-reopen", timeout):
            await self._execute("blockdev-reopen", args)
            raw = await self._execute("query-named-block-nodes", {"flat": True})
        size = _checked("query-named-block-nodes", lambda: next(
            int(n["image"]["virtual-size"]) for n in _list(raw) if n["node-name"] == node_name))
        await self.block_resize(node_name, size, timeout=timeout)

    async def blockdev_del(self, node_name: str, *, timeout: float | None = None) -> None:
        """Close a `blockdev_add` node (and its protocol node); a missing node is not an
        error. A node a device still uses is ("Node ... is in use")."""
        async with self._deadline("blockdev-del", timeout):
            try:
                await self._execute("blockdev-del", {"node-name": node_name})
            except HypervisorError as err:
                if err.qmp_class != "GenericError" or node_name in await self._node_names():
                    raise

    async def block_resize(self, node_name: str, size_bytes: int, *,
                           timeout: float | None = None) -> None:
        """Tell QEMU (and so the guest) the volume under `node_name` is now `size_bytes`.
        Grow the volume first: for a file this truncates it to the size; nbd nodes refuse
        to grow at all (see the module docstring)."""
        async with self._deadline("block_resize", timeout):
            await self._execute("block_resize", {"node-name": node_name, "size": size_bytes})

    # ------------------------------------------------------------------ devices
    async def device_add(self, device_id: str, node_name: str, serial: str, *,
                         bus: str | None = None, share_rw: bool = False,
                         bootindex: int | None = None, timeout: float | None = None) -> None:
        """Hot-plug a virtio-blk-pci disk backed by `node_name`. The serial is cut to its
        first 20 characters, all a virtio-blk device carries (the guest sees
        ``/dev/disk/by-id/virtio-<serial>``); an empty one is left out. Without `bus`, QEMU
        picks a hot-pluggable bus (pci.0 on a ``pc`` machine); a q35 machine needs a free
        PCIe root port named here. `share_rw`: other guests may write the same volume
        (multiattach); without it QEMU takes a write lock on a local file, which a second
        guest's device_add then fails to get. `bootindex`: the firmware's boot order (0 boots
        first); it counts only for a disk plugged before the guest started (``-S``)."""
        args: dict[str, object] = {"driver": "virtio-blk-pci", "id": device_id,
                                   "drive": node_name}
        if bootindex is not None:
            args["bootindex"] = bootindex
        if share_rw:
            args["share-rw"] = True
        if serial:
            args["serial"] = serial[:SERIAL_MAX]
        if bus is not None:
            args["bus"] = bus
        async with self._deadline("device_add", timeout):
            await self._execute("device_add", args)

    async def device_del(self, device_id: str, *, timeout: float = DETACH_TIMEOUT,
                         retries: int = DETACH_RETRIES) -> None:
        """Unplug a device and return once the guest released it (``DEVICE_DELETED`` for
        it arrived), as Nova does: ask, wait `timeout` seconds, ask again, up to `retries`
        more times (``1 + retries`` requests in all), then raise `DetachTimeout`. A device
        that is not there counts as released. The node behind it stays: `blockdev_del` it
        next. Each request itself runs under the connection's default timeout."""
        attempts = 1 + max(0, retries)
        with self._qmp.listener("DEVICE_DELETED", _deleted(device_id)) as listener:
            # listening before the first request, so the event cannot slip past
            for attempt in range(1, attempts + 1):
                try:
                    async with self._deadline("device_del", None):
                        await self._execute("device_del", {"id": device_id})
                except HypervisorError as err:
                    if err.qmp_class == "DeviceNotFound":
                        log.debug("device %s is already gone", device_id)
                        return
                    if not _unplug_pending(err):
                        raise
                    # an earlier request is still with the guest: keep waiting for it
                if await self._next_event(listener, timeout, "device_del"):
                    return
                log.info("guest has not released device %s after request %d of %d",
                         device_id, attempt, attempts)
        raise DetachTimeout(device_id, attempts, timeout)

    # ------------------------------------------------------------------ block jobs
    async def mirror(self, job_id: str, source_node: str, target_node: str, *,
                     timeout: float | None = None) -> None:
        """Start copying `source_node` (what a device reads and writes) to `target_node`,
        an existing node (`blockdev_add`) of the same size: ``blockdev-mirror``,
        ``sync: full``. The guest keeps running; its writes go to both from then on. The job
        stays until `complete_job` or `cancel_job` (``auto-dismiss`` off, so a failure keeps
        its error for us to read); wait for it with `wait_job_ready`."""
        args = {"job-id": job_id, "device": source_node, "target": target_node,
                "sync": "full", "auto-dismiss": False}
        async with self._deadline("blockdev-mirror", timeout):
            await self._execute("blockdev-mirror", args)

    async def wait_job_ready(self, job_id: str, *, timeout: float) -> None:
        """Return once the mirror `job_id` has caught up (``ready``: both nodes hold the
        same data and keep doing so). A job that ended first (an I/O error, a cancel)
        is dismissed and raised as a HypervisorError carrying QEMU's error."""
        job = await self._wait_job(job_id, ("ready", "concluded"), timeout, "blockdev-mirror")
        if job is None or job.status == "concluded":
            await self._dismiss(job_id)
            why = job.error if job is not None and job.error else "the job ended"
            raise HypervisorError(None, f"mirror {job_id} failed before it was ready: {why}",
                                  "blockdev-mirror")

    async def complete_job(self, job_id: str, *, timeout: float) -> None:
        """Pivot a ready mirror: from here on the device uses the target node (the source
        node is left without users, for `blockdev_del`). Returns when the job concluded;
        raises with QEMU's error when it failed (the device then still uses the source)."""
        async with self._deadline("block-job-complete", None):
            await self._execute("block-job-complete", {"device": job_id})
        job = await self._wait_job(job_id, ("concluded",), timeout, "block-job-complete")
        await self._dismiss(job_id)
        if job is not None and job.error:
            raise HypervisorError(None, f"mirror {job_id} failed: {job.error}",
                                  "block-job-complete")

    async def cancel_job(self, job_id: str, *, timeout: float) -> None:
        """Stop a job and forget it; the device keeps its source node (a mirror cancelled
        is not pivoted, even when ready: ``force``). A job that is not there counts as
        cancelled."""
        try:
            async with self._deadline("block-job-cancel", None):
                await self._execute("block-job-cancel", {"device": job_id, "force": True})
        except HypervisorError:
            # no such job (DeviceNotActive), or one that concluded already and can only be
            # dismissed (below): anything else is a real refusal
            job = await self.job(job_id)
            if job is not None and job.status != "concluded":
                raise
        await self._wait_job(job_id, ("concluded",), timeout, "block-job-cancel")
        await self._dismiss(job_id)

    async def job(self, job_id: str, *, timeout: float | None = None) -> BlockJob | None:
        """The job `job_id` as QEMU reports it (``query-jobs``), None when there is none."""
        async with self._deadline("query-jobs", timeout):
            raw = await self._execute("query-jobs")
        jobs = _checked("query-jobs", lambda: [
            BlockJob(str(j["id"]), str(j["type"]), str(j["status"]),
                     str(j["error"]) if j.get("error") is not None else None)
            for j in _list(raw)])
        return next((j for j in jobs if j.id == job_id), None)

    async def _dismiss(self, job_id: str) -> None:
        """Forget a concluded job; one that is gone already is fine."""
        try:
            async with self._deadline("job-dismiss", None):
                await self._execute("job-dismiss", {"id": job_id})
        except HypervisorError as err:
            if err.qmp_class != "GenericError" or await self.job(job_id) is not None:
                raise

    async def _wait_job(self, job_id: str, statuses: tuple[str, ...], timeout: float,
                        command: str) -> BlockJob | None:
        """Wait until the job is in one of `statuses` (or gone: None). ``JOB_STATUS_CHANGE``
        only wakes us: ``query-jobs`` is the truth, so an event that came before we
        listened is not missed."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        with self._qmp.listener("JOB_STATUS_CHANGE", _about_job(job_id)) as listener:
            while True:
                job = await self.job(job_id)
                if job is None or job.status in statuses:
                    return job
                left = deadline - loop.time()
                if left <= 0:
                    raise HypervisorTimeout(command, timeout)
                await self._next_event(listener, left, command)

    # ------------------------------------------------------------------ queries
    async def query_disks(self, *, timeout: float | None = None) -> list[Disk]:
        """The guest's virtio-blk devices with their node, serial, size and mode, sorted by
        device id. Devices only: a node no device uses is not listed (`blockdev_del` of a
        name the caller remembers is the way to clean those up)."""
        async with self._deadline("query-disks", timeout):
            children = await self._execute("qom-list", {"path": _PERIPHERAL})
            ids = _checked("qom-list", lambda: sorted(
                str(c["name"]) for c in _list(children) if c["type"] == "child<virtio-blk-pci>"
            ))
            blocks = await self._execute("query-block")
            node_of = _checked("query-block", lambda: _nodes_by_device(blocks))
            raw_nodes = await self._execute("query-named-block-nodes", {"flat": True})
            nodes = _checked("query-named-block-nodes", lambda: {
                str(n["node-name"]): (int(n["image"]["virtual-size"]), bool(n["ro"]))
                for n in _list(raw_nodes)
            })
            disks = []
            for device_id in ids:
                node_name = node_of.get(device_id)
                if node_name is None or node_name not in nodes:
                    continue  # no medium: not a disk we could have plugged
                serial = await self._execute(
                    "qom-get", {"path": f"{_PERIPHERAL}/{device_id}", "property": "serial"})
                size, read_only = nodes[node_name]
                disks.append(Disk(device_id, node_name, str(serial) if serial else None,
                                  size, read_only))
            return disks

    async def status(self, *, timeout: float | None = None) -> str:
        """QEMU's run state: "running", "paused", "prelaunch" (started with -S),
        "shutdown", "internal-error", ..."""
        async with self._deadline("query-status", timeout):
            reply = await self._execute("query-status")
        return _checked("query-status", lambda: str(_dict(reply)["status"]))

    async def stop(self, *, timeout: float | None = None) -> None:
        """Pause the guest's vCPUs. QEMU answers once they stopped and every request the
        guest had in flight completed and was flushed (``vm_stop``: drain, then flush), so
        what a disk holds afterwards is all the guest was told is written."""
        async with self._deadline("stop", timeout):
            await self._execute("stop")

    async def system_reset(self, *, timeout: float | None = None) -> None:
        """Reset the machine. A guest started with ``-S`` stays paused; its firmware then
        sees the disks plugged since start-up in its boot order (QEMU writes the fw_cfg
        ``bootorder`` file at reset: without one, SeaBIOS ignores a hot-plugged disk's
        bootindex and boots the first disk it finds)."""
        async with self._deadline("system_reset", timeout):
            await self._execute("system_reset")

    async def cont(self, *, timeout: float | None = None) -> None:
        """Start or resume the guest's CPUs: a `stop`-ped guest, or one started with ``-S``;
        one that runs already is not an error."""
        async with self._deadline("cont", timeout):
            await self._execute("cont")

    async def quit(self, *, timeout: float | None = None) -> None:
        """Make QEMU exit, wait until it hung up, and close the connection. Reaping the
        process is the caller's (see `pid`)."""
        async with self._deadline("quit", timeout):
            try:
                await self._execute("quit")
            except HypervisorGone as err:
                if not isinstance(err.cause, ExecInterruptedError):
                    raise
                # sent, and QEMU went before its reply made it back: that is quitting
            await self._disconnected()
        await self.close()

    # ------------------------------------------------------------------ plumbing
    @asynccontextmanager
    async def _deadline(self, command: str, timeout: float | None) -> AsyncIterator[None]:
        async with _deadline(command, self._timeout if timeout is None else timeout):
            yield

    async def _execute(self, command: str, arguments: Mapping[str, object] | None = None,
                       *, secret: bool = False) -> object:
        """Run one QMP command; translate the library's errors into ours. With `secret`,
        the error keeps no cause (the library's error holds the message sent)."""
        try:
            return await self._qmp.execute(command, arguments)
        except ExecuteError as err:
            error = HypervisorError(err.error_class, str(err), command,
                                    None if secret else err)
            if secret:
                raise error from None
            raise error from err
        except (ExecInterruptedError, StateError) as err:
            raise HypervisorGone(command, err) from err
        except QMPError as err:
            raise HypervisorError(None, str(err), command, err) from err

    async def _node_names(self) -> set[str]:
        raw = await self._execute("query-named-block-nodes", {"flat": True})
        return _checked("query-named-block-nodes",
                        lambda: {str(n["node-name"]) for n in _list(raw)})

    async def _object_exists(self, object_id: str) -> bool:
        raw = await self._execute("qom-list", {"path": "/objects"})
        return _checked("qom-list", lambda: any(c["name"] == object_id for c in _list(raw)))

    async def _disconnected(self) -> None:
        while self._qmp.runstate == Runstate.RUNNING:
            await self._qmp.runstate_changed()

    async def _next_event(self, listener: EventListener, timeout: float,
                          command: str) -> bool:
        """Wait up to `timeout` s for `listener`'s next event: True when one came, False
        when none did, HypervisorGone as soon as the connection drops."""
        event = asyncio.ensure_future(listener.get())
        gone = asyncio.ensure_future(self._disconnected())
        try:
            await asyncio.wait((event, gone), timeout=timeout,
                               return_when=asyncio.FIRST_COMPLETED)
        finally:
            event.cancel()
            gone.cancel()
        if event.done() and not event.cancelled():
            return True
        if gone.done() and not gone.cancelled():
            raise HypervisorGone(command)
        return False


class _Client(QMPClient):
    """A QMPClient whose debug log never shows a secret object's value."""

    def _cb_outbound(self, msg: Message) -> Message:
        if self.logger.isEnabledFor(logging.DEBUG):
            shown = msg
            arguments = msg.get("arguments")
            if msg.get("execute") == "object-add" and isinstance(arguments, Mapping) \
                    and "data" in arguments:
                shown = Message({**msg, "arguments": {**arguments, "data": "***"}})
            self.logger.debug("--> %s", str(shown))
        return msg


_PERIPHERAL = "/machine/peripheral"


@asynccontextmanager
async def _deadline(command: str, timeout: float) -> AsyncIterator[None]:
    """``asyncio.timeout`` whose expiry is a HypervisorTimeout naming the command."""
    try:
        async with asyncio.timeout(timeout) as scope:
            yield
    except TimeoutError:
        if scope.expired():
            raise HypervisorTimeout(command, timeout) from None
        raise


def _peer_pid(sock: socket.socket) -> int:
    """The pid of the process at the other end of a unix socket (struct ucred)."""
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid: int = struct.unpack("3i", creds)[0]
    return pid


def _no_event(event: Message) -> bool:
    return False


def _deleted(device_id: str) -> Callable[[Message], bool]:
    """Accept the DEVICE_DELETED of `device_id` itself, not the one of its virtio backend
    (which has only a ``path``)."""
    def accept(event: Message) -> bool:
        data = event.get("data")
        return isinstance(data, Mapping) and data.get("device") == device_id
    return accept


def _about_job(job_id: str) -> Callable[[Message], bool]:
    def accept(event: Message) -> bool:
        data = event.get("data")
        return isinstance(data, Mapping) and data.get("id") == job_id
    return accept


def _unplug_pending(err: HypervisorError) -> bool:
    """device_del refused because an earlier request is still with the guest. QEMU has no
    error class for it; the message is the only sign."""
    return err.qmp_class == "GenericError" and "in the process of unplug" in err.desc


def _checked(command: str, parse: Callable[[], T]) -> T:
    """Run `parse` over a reply: a reply of another shape than expected is a HypervisorError
    naming the command, once, here."""
    try:
        return parse()
    except (KeyError, TypeError, ValueError) as err:
        raise HypervisorError(None, f"unexpected reply: {err!r}", command, err) from err


def _list(raw: object) -> list[Mapping[str, Any]]:
    if not isinstance(raw, list) or not all(isinstance(x, Mapping) for x in raw):
        raise TypeError("expected a list of objects")
    return raw


def _dict(raw: object) -> Mapping[str, Any]:
    if not isinstance(raw, Mapping):
        raise TypeError("expected an object")
    return raw


def _nodes_by_device(raw: object) -> dict[str, str]:
    """device id -> top node name, from query-block. A device added with -device/device_add
    and an id has the qdev path /machine/peripheral/<id>[/virtio-backend]."""
    found = {}
    for block in _list(raw):
        qdev, inserted = block.get("qdev"), block.get("inserted")
        if not isinstance(qdev, str) or not isinstance(inserted, Mapping):
            continue
        parts = qdev.split("/")
        if len(parts) >= 4 and parts[:3] == ["", "machine", "peripheral"]:
            found[parts[3]] = str(inserted["node-name"])
    return found
