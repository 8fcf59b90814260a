"""The compute agent's workflows: servers, attach, detach, extend, and start-up reconcile.

Attach is the seed's flow on the attachments API, each step registering its undo:

    1. reserve a device slot (mapping row)            undo: remove the row
    2. attachment create (volume → reserved)          undo: attachment delete
    3. connector = get_connector_properties()
    4. attachment update with the connector → connection_info
    5. connect_volume on this host                     undo: disconnect (unless shared)
    6. QEMU: secrets, blockdev-add, device_add         undo: device_del, blockdev-del, secrets
    7. attachment complete (volume → in-use); the mapping is marked attached

A failure anywhere undoes every earlier step, newest first, and the caller gets the error.
Detach: begin_detaching → device_del (waits for the guest's DEVICE_DELETED, retried like
Nova) → blockdev-del → disconnect → attachment delete; a guest that will not let go rolls
back to in-use (roll_detaching) and the fault is recorded on the instance.

Every step that changes something outside the agent is recorded on the mapping row first, so
a restarted agent knows what to finish or undo (`reconcile`). Work on one instance is
serialized by a per-instance lock; a multiattach volume's host connection is shared by the
mappings of this host and dropped with the last one (per-volume lock).
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections import defaultdict
from dataclasses import asdict
from pathlib import Path
from typing import Any

from blockyard import failpoints
from blockyard.connectors import Device, connector_for, get_connector_properties
from blockyard.errors import BlockyardError, Conflict, Invalid, InvalidState, NotFound
from blockyard.exec import stop
from blockyard.identity import Identity
from blockyard.model import ConnectionInfo, parse
from blockyard.service_auth import ServiceAuth

from . import launcher, swap
from .config import ComputeConfig
from .disks import qemu_source, secret_id, tls_creds_id
from .hypervisor import DetachTimeout, Hypervisor, HypervisorError
from .pauses import Pauses
from .policies import ComputePolicy
from .store import Instance, InstanceStatus, Mapping, MappingStatus, Store, utcnow
from .undo import Undo
from .volume_api import Caller, VolumeApi, VolumeApiError, VolumeView

log = logging.getLogger(__name__)

#: how long QMP may take to answer once connected
QMP_TIMEOUT = 10.0


class Agent:
    """One per host: the instances it owns and the volumes in them."""

    def __init__(self, config: ComputeConfig, policy: ComputePolicy | None = None) -> None:
        self.config = config
        self.policy = policy or ComputePolicy(config.auth.policy_file)
        self.store = Store(config.database_path)
        user = config.service_user
        self.volumes = VolumeApi(config.volume_url,
                                 service=ServiceAuth(user) if user is not None else None)
        self.accel = launcher.accelerator(config.qemu)
        self._properties: dict[str, Any] | None = None
        self._guests: dict[str, Hypervisor] = {}
        self._processes: dict[str, Any] = {}
        self._instance_locks: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)
        self._volume_locks: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)
        self._background: set[asyncio.Task[None]] = set()
        #: guests paused for point-in-time snapshots of their volumes
        self.pauses = Pauses(self.store, self.guest, config.state_dir / "paused")

    # ------------------------------------------------------------------ lifecycle
    @property
    def connector_properties(self) -> dict[str, Any]:
        """This host's connector (read once: the initiator name is persisted on first use)."""
        if self._properties is None:
            props = get_connector_properties(str(self.config.state_dir))
            props["host"] = self.config.host
            self._properties = props
        return dict(self._properties)

    async def start(self) -> None:
        await asyncio.to_thread(lambda: self.connector_properties)
        await self.pauses.reconcile()
        await self.reconcile()

    async def close(self) -> None:
        for task in list(self._background):
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        await self.pauses.close()
        for hv in self._guests.values():
            await hv.close()
        self._guests.clear()
        await self.volumes.close()
        self.store.close()

    def _service_caller(self, project_id: str) -> Caller:
        """Work nobody asked for (recovery, releasing a deleted server's volumes) runs as the
        agent's service user (noauth: the admin of the volume's project)."""
        return Caller.agent(project_id)

    # ------------------------------------------------------------------ guests
    async def guest(self, instance: Instance) -> Hypervisor:
        hv = self._guests.get(instance.id)
        if hv is not None and hv.connected:
            return hv
        hv = await Hypervisor.connect(instance.qmp_socket, timeout=QMP_TIMEOUT)
        self._guests[instance.id] = hv
        return hv

    async def _drop_guest(self, instance_id: str) -> None:
        hv = self._guests.pop(instance_id, None)
        if hv is not None:
            await hv.close()

    # ------------------------------------------------------------------ servers
    def instance(self, identity: Identity | None, instance_id: str) -> Instance:
        """The instance, if `identity` may know of it (None: the agent itself); another
        project's is not found, unless the policy makes the caller an admin."""
        inst = self.store.instance(instance_id)
        if identity is not None and not self.policy.sees(identity, inst.project_id):
            raise NotFound("Instance", instance_id, f"Instance {instance_id} could not be found.")
        return inst

    def instances(self, identity: Identity, all_projects: bool) -> list[Instance]:
        """The caller's project's instances, or every project's (the caller was allowed
        all_tenants by the API's policy check)."""
        return [i for i in self.store.instances()
                if all_projects or i.project_id == identity.project_id]

    async def create_server(self, identity: Identity, name: str, image: str,
                            flavor: str) -> Instance:
        found = self.config.image(image)  # by name or by id
        if found is None:
            raise Invalid(f"Image {image} could not be found.")
        image = found.name
        if flavor not in self.config.flavors:
            raise Invalid(f"Flavor {flavor} could not be found.")
        instance_id = str(uuid.uuid4())
        directory = self._instance_dir(instance_id)
        inst = self.store.add_instance(Instance(
            id=instance_id, name=name, project_id=identity.project_id,
            user_id=identity.user_id, status=InstanceStatus.BUILD, image=image, flavor=flavor,
            qmp_socket=str(directory / "qmp.sock"),
            console_socket=str(directory / "console.sock")))
        try:
            launched = await asyncio.to_thread(
                launcher.launch, self.config.qemu, self.config.images[image],
                self.config.flavors[flavor], name=instance_id, directory=directory,
                accel=self.accel)
            self._processes[instance_id] = launched.process
            self.store.set_instance(instance_id, pid=launched.pid)
            await self.guest(self.store.instance(instance_id))
        except Exception as exc:
            log.error("instance %s did not start: %s", instance_id, exc)
            self.store.set_instance(instance_id, status=InstanceStatus.ERROR,
                                    fault=str(exc)[:1000])
            return self.store.instance(instance_id)
        self.store.set_instance(instance_id, status=InstanceStatus.ACTIVE)
        return self.store.instance(inst.id)

    async def adopt_server(self, identity: Identity, name: str, qmp_socket: str) -> Instance:
        """Take over a running QEMU by its QMP socket (started by someone else)."""
        if not Path(qmp_socket).is_absolute():
            raise Invalid("The QMP socket must be an absolute path.")
        for other in self.store.instances():
            if other.qmp_socket == qmp_socket:
                raise Conflict(f"The QMP socket {qmp_socket} belongs to instance {other.id}.")
        try:
            hv = await Hypervisor.connect(qmp_socket, timeout=QMP_TIMEOUT)
        except HypervisorError as exc:
            raise Invalid(f"No QEMU answers on {qmp_socket}: {exc}") from None
        inst = self.store.add_instance(Instance(
            id=str(uuid.uuid4()), name=name, project_id=identity.project_id,
            user_id=identity.user_id, status=InstanceStatus.ACTIVE, qmp_socket=qmp_socket,
            pid=hv.pid, adopted=True))
        self._guests[inst.id] = hv
        return inst

    async def delete_server(self, identity: Identity, instance_id: str) -> None:
        """Stop a guest we started, then let go of its volumes (nothing uses them any
        more) and forget it. An adopted guest is not ours to stop: its volumes are
        unplugged (the guest must let go, as on detach) and then it is forgotten."""
        inst = self.instance(identity, instance_id)
        async with self._instance_locks[instance_id]:
            try:
                hv: Hypervisor | None = await self.guest(inst)
            except HypervisorError:
                hv = None  # not running: nothing to stop or unplug
            if hv is not None and inst.adopted:
                for m in self.store.mappings(instance_id):
                    await self._unplug(hv, m)
            elif hv is not None:
                await hv.quit()
            await self._drop_guest(instance_id)
            if inst.pid is not None and not inst.adopted:
                proc = self._processes.pop(instance_id, None)  # None once the agent restarted
                await asyncio.to_thread(stop, proc if proc is not None else inst.pid,
                                        launcher.STOP_TIMEOUT)
            for m in self.store.mappings(instance_id):
                await self._release(m, self._service_caller(m.project_id))
                if m.delete_on_termination:
                    await self._delete_volume(Caller.of(identity), m.volume_id)
            self.store.forget_instance(instance_id)

    async def _delete_volume(self, caller: Caller, volume_id: str) -> None:
        """delete_on_termination, with the deleting user's token (as Nova); a volume that
        will not go is logged and left, and the server goes all the same (as Nova)."""
        try:
            await self.volumes.delete_volume(caller, volume_id)
        except VolumeApiError as exc:
            log.error("volume %s (delete_on_termination) was not deleted: %s", volume_id, exc)

    def _instance_dir(self, instance_id: str) -> Path:
        return self.config.state_dir / "instances" / instance_id

    # ------------------------------------------------------------------ attach
    async def attach(self, identity: Identity, instance_id: str, volume_id: str, *,
                     device: str | None = None, tag: str | None = None,
                     delete_on_termination: bool = False) -> Mapping:
        inst = self.instance(identity, instance_id)
        caller = Caller.of(identity)
        if inst.status != InstanceStatus.ACTIVE:
            raise Conflict(f"Cannot 'attach_volume' instance {instance_id} while it is in "
                           f"status {inst.status}.")
        volume = await self.volumes.volume(caller, volume_id)  # 404 before anything starts
        async with self._instance_locks[instance_id]:
            async with Undo() as undo:
                m = await self._attach_steps(inst, caller, volume, undo, device=device, tag=tag,
                                             delete_on_termination=delete_on_termination)
                undo.commit()
        return m

    async def _attach_steps(self, inst: Instance, caller: Caller, volume: VolumeView,
                            undo: Undo, *, device: str | None = None, tag: str | None = None,
                            delete_on_termination: bool = False, boot_index: int | None = None,
                            source_type: str | None = None) -> Mapping:
        """Steps 1-7 of attach (the module's docstring), each undo pushed on `undo`; the
        caller holds the instance's lock. A server being created runs them on its paused
        guest (`boot`), the boot disk with `boot_index` 0."""
        instance_id, volume_id = inst.id, volume.id
        # 1. the slot
        m = self.store.reserve(inst, volume_id, device, tag=tag,
                               delete_on_termination=delete_on_termination,
                               boot_index=boot_index, source_type=source_type)
        undo.push(self.store.remove_mapping, m.id)
        failpoints.hit("compute.attach.reserved")
        # 2. the attachment
        attachment_id = await self.volumes.create_attachment(caller, volume_id, instance_id)
        self.store.set_mapping(m.id, attachment_id=attachment_id)
        undo.push(self.volumes.delete_attachment, caller, attachment_id)
        failpoints.hit("compute.attach.attachment_created")
        # 3 + 4. the connector, and the connection info for it
        # the mountpoint Cinder records is where the guest really finds the disk
        connector = dict(self.connector_properties, mountpoint=m.guest_path)
        raw = await self.volumes.update_attachment(caller, attachment_id, connector)
        info = parse(raw)
        self.store.set_mapping(m.id, protocol=info.protocol)
        failpoints.hit("compute.attach.connection_info")
        # 5. the host connection
        m = self.store.mapping(m.id)
        await self._connect(m, info)
        undo.push(self._disconnect, m.id, info)
        failpoints.hit("compute.attach.connected")
        # 6. the guest
        hv = await self.guest(inst)
        await self._plug(hv, m, info, undo, shared=volume.multiattach,
                         bootindex=0 if boot_index == 0 else None)
        failpoints.hit("compute.attach.plugged")
        # 7. done: the volume is in-use
        await self.volumes.complete_attachment(caller, attachment_id)
        failpoints.hit("compute.attach.completed")
        if not self.store.finish_mapping(m.id, "attach"):
            raise Conflict(f"Volume {volume_id} changed on instance {instance_id} "
                           f"while it was being attached.")
        return self.store.mapping(m.id)

    async def _connect(self, m: Mapping, info: ConnectionInfo) -> None:
        """connect_volume on this host, once per volume: a multiattach volume in several
        guests here shares the first mapping's connection. iSCSI has none: QEMU logs in to
        the target itself (libiscsi), with the CHAP secret handed over QMP."""
        async with self._volume_locks[m.volume_id]:
            shared = self.store.other_connections(m)
            if shared:
                self.store.set_mapping(m.id, connected=True, device=shared[0].device)
                return
            device: Device | None = None
            if info.protocol != "iscsi":
                connector = connector_for(info, self.connector_properties)
                device = await asyncio.to_thread(connector.connect_volume, info)
            self.store.set_mapping(m.id, connected=True,
                                   device=asdict(device) if device else None)

    async def _disconnect(self, mapping_id: str, info: ConnectionInfo | None) -> None:
        """Drop this mapping's share of the host connection; disconnect with the last."""
        try:
            m = self.store.mapping(mapping_id)
        except NotFound:
            return
        if not m.connected:
            return
        async with self._volume_locks[m.volume_id]:
            if not self.store.other_connections(m) and m.device and info is not None:
                connector = connector_for(info, self.connector_properties)
                await asyncio.to_thread(connector.disconnect_volume, info, Device(**m.device))
            self.store.set_mapping(m.id, connected=False, device=None)

    async def _plug(self, hv: Hypervisor, m: Mapping, info: ConnectionInfo, undo: Undo, *,
                    shared: bool, bootindex: int | None = None) -> None:
        """Hand the volume to QEMU: secrets, the block node, the virtio-blk device (shared
        for writing with other guests when the volume is multiattach)."""
        await self._add_node(hv, m.node_name, info, undo)
        failpoints.hit("compute.attach.blockdev_added")
        await hv.device_add(m.device_id, m.node_name, m.serial, share_rw=shared,
                            bootindex=bootindex)
        undo.push(self._device_del, hv, m.device_id)

    async def _add_node(self, hv: Hypervisor, node_name: str, info: ConnectionInfo,
                        undo: Undo, *, size: int | None = None, direct: bool = False) -> None:
        """The volume's block node in QEMU, and the secrets it names (ids from the node's);
        `size`: show only that many bytes of it (see `Hypervisor.blockdev_add`). `direct`:
        a file opened with O_DIRECT (QEMU's ``cache.direct``), for a mirror target: the
        copy then does not pile up dirty pages that the guest's next flush must write back
        all at once."""
        source = qemu_source(info, prefix=node_name,
                             initiator=str(self.connector_properties.get("initiator", "")))
        for object_id, value in source.secrets.items():
            await hv.add_secret(object_id, value)
            undo.push(hv.remove_object, object_id)
        if source.tls_psk is not None:
            await hv.add_tls_psk_key(source.tls_psk)
            undo.push(hv.remove_object, source.tls_psk.creds_id)
        options = dict(source.options)
        if direct and options.get("driver") == "file":
            options["cache"] = {"direct": True}
        try:
            await hv.blockdev_add(node_name, options, read_only=source.read_only, size=size)
        except HypervisorError as exc:
            if "cache" not in options:
                raise
            # not every file system takes O_DIRECT (tmpfs): then as any other node
            log.info("node %s without O_DIRECT: %s", node_name, exc)
            del options["cache"]
            await hv.blockdev_add(node_name, options, read_only=source.read_only, size=size)
        undo.push(hv.blockdev_del, node_name)

    async def _device_del(self, hv: Hypervisor, device_id: str) -> None:
        await hv.device_del(device_id, timeout=self.config.detach_timeout,
                            retries=self.config.detach_retries)

    async def _unplug(self, hv: Hypervisor, m: Mapping) -> None:
        """Take the volume out of the guest: device, node, then what the node needed."""
        await self._device_del(hv, m.device_id)
        await self._unplug_leftovers(hv, m)

    # ------------------------------------------------------------------ detach
    async def begin_detach(self, identity: Identity, instance_id: str, volume_id: str) -> None:
        """Accept a detach (Nova answers 202 here); the work goes on in the background, with
        the user's token (as Nova's detach does)."""
        self.instance(identity, instance_id)
        caller = Caller.of(identity)
        async with self._instance_locks[instance_id], Undo() as undo:
            m = self.store.mapping_of(instance_id, volume_id)
            if m.boot_index == 0:  # the guest would lose its root disk (Nova refuses too)
                raise Invalid("Cannot detach a root device volume")
            try:
                self.store.begin_mapping(m.id, "detach")
            except InvalidState as exc:
                raise Conflict(f"Volume {volume_id} is {exc.current} on instance "
                               f"{instance_id}; it can be detached once it is attached.") from exc
            undo.push(self.store.fail_mapping, m.id, "detach")
            volume = await self.volumes.volume(caller, volume_id)
            if not volume.multiattach:  # the volume's own status guards single attachments
                await self.volumes.begin_detaching(caller, volume_id)
            undo.commit()
        self._spawn(self._detach(caller, instance_id, m.id, not volume.multiattach))

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def detach(self, identity: Identity, instance_id: str, volume_id: str) -> None:
        """Detach and wait for the result (tests, the bench, and delete use this)."""
        await self.begin_detach(identity, instance_id, volume_id)
        while True:
            try:
                m = self.store.mapping_of(instance_id, volume_id)
            except NotFound:
                return
            if m.status == MappingStatus.ATTACHED:
                inst = self.store.instance(instance_id)
                raise Invalid(inst.fault or f"Volume {volume_id} could not be detached.")
            await asyncio.sleep(0.01)

    async def _detach(self, caller: Caller, instance_id: str, mapping_id: str,
                      roll_back_volume: bool) -> None:
        async with self._instance_locks[instance_id]:
            m = self.store.mapping(mapping_id)
            inst = self.store.instance(instance_id)
            try:
                hv = await self.guest(inst)
                await self._unplug(hv, m)
            except (HypervisorError, OSError) as exc:
                reason = ("the guest did not release the disk" if isinstance(exc, DetachTimeout)
                          else str(exc))
                log.error("detach of volume %s from %s failed: %s", m.volume_id,
                          instance_id, reason)
                self.store.set_instance(instance_id, fault=f"Detach of volume {m.volume_id} "
                                        f"failed: {reason}"[:1000])
                self.store.fail_mapping(m.id, "detach")
                if roll_back_volume:
                    try:
                        await self.volumes.roll_detaching(caller, m.volume_id)
                    except VolumeApiError as err:
                        log.error("roll_detaching of %s failed: %s", m.volume_id, err)
                return
            failpoints.hit("compute.detach.unplugged")
            await self._release(m, caller)

    async def _release(self, m: Mapping, caller: Caller) -> None:
        """After the guest let go: host connection, attachment, mapping (in that order, so a
        crash in between leaves a row that says what is left)."""
        info = await self._connection_info(caller, m)
        await self._disconnect(m.id, info)
        failpoints.hit("compute.detach.disconnected")
        if m.attachment_id:
            await self.volumes.delete_attachment(caller, m.attachment_id)
        failpoints.hit("compute.detach.attachment_deleted")
        self.store.remove_mapping(m.id)

    async def _connection_info(self, caller: Caller, m: Mapping) -> ConnectionInfo | None:
        if not m.attachment_id or not m.connected:
            return None
        try:
            raw = await self.volumes.attachment_connection_info(caller, m.attachment_id)
        except VolumeApiError as exc:
            log.warning("connection info of attachment %s: %s", m.attachment_id, exc)
            return None
        return parse(raw) if raw else None

    # ------------------------------------------------------------------ extend
    def handle_volume_extended(self, instance_id: str, volume_id: str) -> None:
        """Nova's ``volume-extended`` event: resize in the background, report failures."""

        async def resize() -> None:
            try:
                await self.volume_extended(instance_id, volume_id)
            except Exception as exc:
                log.error("volume %s in %s was extended but the guest was not told: %s",
                          volume_id, instance_id, exc)
                self.store.set_instance(instance_id, fault=f"Resize of volume {volume_id} "
                                        f"failed: {exc}"[:1000])

        self._spawn(resize())

    async def volume_extended(self, instance_id: str, volume_id: str) -> None:
        """The volume service grew an attached volume: tell QEMU, so the guest sees it."""
        inst = self.store.instance(instance_id)
        async with self._instance_locks[instance_id]:
            m = self.store.mapping_of(instance_id, volume_id)
            caller = self._service_caller(m.project_id)
            info = await self._connection_info(caller, m)
            volume = await self.volumes.volume(caller, volume_id)
            size = volume.size * 1024 ** 3
            if info is not None and info.protocol == "local":
                connector = connector_for(info, self.connector_properties)
                size = await asyncio.to_thread(connector.extend_volume, info)
            hv = await self.guest(inst)
            await hv.block_resize(m.node_name, size)

    # ------------------------------------------------------------------ reconcile
    async def reconcile(self) -> None:
        """After a (re)start: find every guest again, finish or undo what a crash
        interrupted, and repair or report where mappings and guests disagree."""
        for inst in self.store.instances():
            try:
                await self._reconcile_instance(inst)
            except Exception as exc:  # one broken instance must not stop the others
                log.exception("reconcile of instance %s failed", inst.id)
                self.store.set_instance(inst.id, fault=f"reconcile failed: {exc}"[:1000])

    async def _reconcile_instance(self, inst: Instance) -> None:
        try:
            hv = await self.guest(inst)
        except (HypervisorError, OSError):
            hv = None
        if inst.status == InstanceStatus.BUILD:
            await self._abandon_build(inst, hv)
            return
        if hv is None:
            if inst.status != InstanceStatus.ERROR:
                self.store.set_instance(inst.id, status=InstanceStatus.SHUTOFF)
            for m in self.store.mappings(inst.id):
                if m.status == MappingStatus.SWAPPING:
                    await swap.reconcile(self, None, m)
                elif m.status != MappingStatus.ATTACHED:
                    await self._release(m, self._service_caller(m.project_id))
            return
        if inst.status != InstanceStatus.ACTIVE:
            self.store.set_instance(inst.id, status=InstanceStatus.ACTIVE)
        disks = {d.device_id: d for d in await hv.query_disks()}
        mine = self.store.mappings(inst.id)
        problems: list[str] = []
        for m in mine:
            caller = self._service_caller(m.project_id)
            if m.status == MappingStatus.ATTACHING:
                await self._undo_attach(hv, m, caller, m.device_id in disks)
            elif m.status == MappingStatus.DETACHING:
                if m.device_id in disks:
                    self._spawn(self._detach(caller, inst.id, m.id, True))
                else:
                    await self._unplug_leftovers(hv, m)
                    await self._release(m, caller)
            elif m.status == MappingStatus.SWAPPING:
                await swap.reconcile(self, hv, m)
            elif m.device_id not in disks:
                problems.append(await self._replug(hv, m, caller))
        known = {m.device_id for m in mine}
        for device_id in disks:
            if device_id.startswith("disk-") and device_id not in known:
                log.warning("instance %s has disk %s that no mapping names: removing it",
                            inst.id, device_id)
                problems.append(f"removed unmapped disk {device_id}")
                await self._device_del(hv, device_id)
                await hv.blockdev_del(disks[device_id].node_name)
        if problems:
            self.store.set_instance(inst.id, fault="; ".join(problems)[:1000])

    async def _abandon_build(self, inst: Instance, hv: Hypervisor | None) -> None:
        """A server the agent was building when it stopped (`boot`): undo the build as its
        own undo would have. The guest (paused, or just started) is stopped, its mappings
        released, any attachment left for it (an image volume being filled) deleted, and the
        volumes created for it deleted; it ends in ERROR, as a failed build does."""
        log.warning("server %s was being built when the agent stopped: undoing it", inst.id)
        caller = self._service_caller(inst.project_id)
        if hv is not None:
            await hv.quit()
            await self._drop_guest(inst.id)
        for m in self.store.mappings(inst.id):
            await self._release(m, caller)
        for attachment_id in await self.volumes.instance_attachments(caller, inst.id):
            await self.volumes.delete_attachment(caller, attachment_id)
        left = []
        for volume_id in inst.build_volumes or []:
            try:
                await self.volumes.delete_volume(caller, volume_id)
            except VolumeApiError as exc:
                if exc.status != 404:
                    left.append(f"{volume_id} ({exc})")
        fault = "The agent stopped while the server was being built; the build was undone."
        if left:
            fault += f" Volumes not deleted: {', '.join(left)}"
        self.store.set_instance(inst.id, status=InstanceStatus.ERROR, pid=None,
                                fault=fault[:1000])

    async def _undo_attach(self, hv: Hypervisor, m: Mapping, caller: Caller,
                           plugged: bool) -> None:
        """An attach the crash interrupted: roll it back as its own undo would have."""
        log.warning("rolling back the interrupted attach of volume %s to %s", m.volume_id,
                    m.instance_id)
        if plugged:
            await self._device_del(hv, m.device_id)
        await self._unplug_leftovers(hv, m)
        await self._release(m, caller)

    async def _unplug_leftovers(self, hv: Hypervisor, m: Mapping) -> None:
        await self._del_node(hv, m.node_name)

    async def _del_node(self, hv: Hypervisor, node_name: str) -> None:
        """Undo `_add_node` (idempotent): the node, then the objects it named."""
        await hv.blockdev_del(node_name)
        for object_id in (secret_id(node_name), tls_creds_id(node_name)):
            await hv.remove_object(object_id)

    async def _replug(self, hv: Hypervisor, m: Mapping, caller: Caller) -> str:
        """An attached mapping whose disk the guest lost (QEMU restarted under us):
        plug it again from the attachment's connection info."""
        info = await self._connection_info(caller, m)
        if info is None:
            return f"volume {m.volume_id} is attached but has no connection info"
        try:
            async with Undo() as undo:
                await self._unplug_leftovers(hv, m)
                volume = await self.volumes.volume(caller, m.volume_id)
                await self._plug(hv, m, info, undo, shared=volume.multiattach)
                undo.commit()
        except (BlockyardError, HypervisorError, OSError) as exc:
            return f"volume {m.volume_id} could not be plugged again: {exc}"
        log.warning("plugged volume %s into %s again", m.volume_id, m.instance_id)
        return f"re-plugged volume {m.volume_id}"


__all__ = ["Agent", "utcnow"]
