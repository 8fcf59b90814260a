"""swap_volume: give a running guest's disk another volume without pausing it (Nova's
swap_volume, the compute half of migrating an attached volume).

``PUT /servers/{id}/os-volume_attachments/{old}`` with ``{"volumeAttachment": {"volumeId":
new}}`` is accepted (202) once the checks passed and the mapping is ``swapping``; the rest
runs in the background in Nova's order. Each step is recorded on the mapping row
(`Mapping.swap`) before it is taken, so that `reconcile` can undo or finish it after a crash:

    1. checks; mapping attached → swapping                      undo: back to attached
    2. begin_detaching(old), unless the volume service is migrating the old volume (it asked
       for this swap and owns the old volume's status)          undo: roll_detaching
    3. attachment create for new, update with this host's connector, connect_volume,
       secrets + blockdev-add of a new node                      undo: each, newest first
    4. blockdev-mirror of the device's node to the new node; once ready, block-job-complete:
       the pivot                                                 undo: block-job-cancel
       (a larger new volume is shown at the old size until then, and grown right after, as
       Nova resizes the disk after a swap: QEMU mirrors only between equal sizes)
    -- from the pivot on the guest reads and writes the new volume: the rest goes forward --
    5. attachment complete (new → in-use)
    6. os-migrate_volume_completion(old, new) → the id the mapping keeps: the new volume's for
       a plain swap, the old one's when the volume service was migrating (it swapped the two
       volumes' identities and moved the new attachment onto the old id)
    7. the old node and its secrets go, then the old host connection, then the old attachment
       (the order detach uses: nothing is cut from under a user); the mapping then names the
       id from 6, the new attachment and the new node, and is attached again

A failure before the pivot undoes 2-4 and then tells the volume service
(os-migrate_volume_completion with error true, as Nova does, so a migration fails cleanly):
the guest never left its old disk. A failure after it is the server's fault, and the next
reconcile finishes the swap. The guest's device keeps its serial (the old volume's, as in
Nova until the disk is plugged again), so the guest finds the disk where it was.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import uuid
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from blockyard import failpoints
from blockyard.connectors import Device, connector_for
from blockyard.errors import Conflict, Invalid, InvalidState
from blockyard.identity import Identity
from blockyard.model import ConnectionInfo, parse
from blockyard.statuses import MigrationStatus

from .hypervisor import Hypervisor, HypervisorError
from .store import Instance, InstanceStatus, Mapping
from .undo import Undo
from .volume_api import Caller, VolumeApiError, VolumeView

if TYPE_CHECKING:
    from .manager import Agent

log = logging.getLogger(__name__)

GiB = 1024**3
#: seconds the mirror may take to catch up (a full copy of the volume while the guest writes)
MIRROR_TIMEOUT = 3600.0
#: seconds a pivot or a cancel may take once asked for
JOB_TIMEOUT = 60.0

#: `Mapping.swap["phase"]`: accepted (steps 1-4 under way), then the steps after the pivot
ACCEPTED, PIVOTED, COMPLETED, SAVED = "accepted", "pivoted", "completed", "saved"
_AFTER_PIVOT = (PIVOTED, COMPLETED, SAVED)
#: a volume's migration_status while the volume service migrates it (and so owns its status)
_MIGRATING = (MigrationStatus.STARTING, MigrationStatus.MIGRATING, MigrationStatus.COMPLETING)


# ---------------------------------------------------------------------- accept (the API)
async def begin(agent: Agent, identity: Identity, inst: Instance, old_id: str,
                new_id: str) -> None:
    """Nova's checks, then accept: the mapping is swapping and the old volume detaching
    when this returns; the swap itself goes on in the background."""
    caller = Caller.of(identity)
    if inst.status != InstanceStatus.ACTIVE:
        raise Conflict(f"Cannot 'swap_volume' instance {inst.id} while it is in status "
                       f"{inst.status}.")
    m = agent.store.mapping_of(inst.id, old_id)  # 404, as Nova's VolumeBDMNotFound
    old = await agent.volumes.volume(caller, old_id)
    try:
        new = await agent.volumes.volume(caller, new_id)
    except VolumeApiError as exc:  # a body's resource that is not there is 400 (Nova)
        if exc.status == 404:
            raise Invalid(f"Volume {new_id} could not be found.") from exc
        raise
    _check(old, new, inst.id)
    async with agent._instance_locks[inst.id], Undo() as undo:
        try:
            agent.store.begin_mapping(m.id, "swap")
        except InvalidState as exc:
            raise Conflict(f"Volume {old_id} is {exc.current} on instance {inst.id}; it can "
                           f"be swapped once it is attached.") from exc
        undo.push(agent.store.fail_mapping, m.id, "swap")
        migrating = old.migration_status in _MIGRATING
        agent.store.set_mapping(m.id, swap={
            "old_volume_id": old_id, "new_volume_id": new_id, "migrating": migrating,
            "detaching": not migrating, "node": "bv" + uuid.uuid4().hex[:20],
            "job": f"swap-{m.id}", "phase": ACCEPTED,
            # QEMU mirrors only between nodes of one size: a larger new volume is shown at
            # the old size until the pivot, then grown (as Nova resizes after the swap)
            "limit": old.size * GiB if new.size > old.size else None})
        undo.push(functools.partial(agent.store.set_mapping, m.id, swap=None))
        if not migrating:
            await agent.volumes.begin_detaching(caller, old_id)
            undo.push(agent.volumes.roll_detaching, caller, old_id)
        failpoints.hit("compute.swap.accepted")
        undo.commit()
    agent._spawn(_swap(agent, caller, inst.id, m.id))


def _check(old: VolumeView, new: VolumeView, instance_id: str) -> None:
    """Nova's compute API checks (nova.compute.api.API.swap_volume), in its words."""
    if instance_id not in old.attached_to:
        raise Invalid("Invalid volume: Old volume is attached to a different instance.")
    if new.attached_to or new.id == old.id:
        raise Invalid("Invalid volume: New volume must be detached in order to swap.")
    if new.status != "available":
        raise Invalid(f"Invalid volume: volume {new.id} status must be 'available', not "
                      f"'{new.status}'.")
    if new.size < old.size:
        raise Invalid("Invalid volume: New volume must be the same size or larger.")
    if len(old.attached_to) > 1:
        raise Invalid("Swapping multi-attach volumes with more than one read/write "
                      "attachment is not supported.")


# ---------------------------------------------------------------------- the work
async def _swap(agent: Agent, caller: Caller, instance_id: str, mapping_id: str) -> None:
    async with agent._instance_locks[instance_id]:
        m = agent.store.mapping(mapping_id)
        old_id, new_id = m.swap["old_volume_id"], m.swap["new_volume_id"]  # type: ignore[index]
        try:
            hv = await _move(agent, caller, m)
        except Exception as exc:  # undone: the guest is on its old disk
            log.error("swap of volume %s to %s in %s failed: %s", old_id, new_id,
                      instance_id, exc)
            agent.store.set_instance(instance_id, fault=f"Swap of volume {old_id} to "
                                     f"{new_id} failed: {exc}"[:1000])
            return
        try:
            await _finish(agent, caller, agent.store.mapping(mapping_id), hv)
        except Exception as exc:  # the guest is on the new disk: reconcile finishes
            log.error("swap of volume %s to %s in %s: the guest uses the new volume, but "
                      "finishing failed: %s", old_id, new_id, instance_id, exc)
            agent.store.set_instance(instance_id, fault=f"Swap of volume {old_id} to "
                                     f"{new_id} is not finished: {exc}"[:1000])


def _record(agent: Agent, mapping_id: str, **changes: Any) -> dict[str, Any]:
    """Merge `changes` into the mapping's swap record (under the instance's lock)."""
    record = dict(agent.store.mapping(mapping_id).swap or {}, **changes)
    agent.store.set_mapping(mapping_id, swap=record)
    return record


async def _move(agent: Agent, caller: Caller, m: Mapping) -> Hypervisor:
    """Steps 3 and 4: when this returns the guest uses the new volume; when it raises,
    everything was undone and the volume service told."""
    rec = dict(m.swap or {})
    new_id, node, job = rec["new_volume_id"], rec["node"], rec["job"]
    async with Undo() as undo:
        undo.push(_abandon, agent, caller, m.id)
        # 3. the new volume's attachment, connection and node
        attachment_id = await agent.volumes.create_attachment(caller, new_id, m.instance_id)
        _record(agent, m.id, attachment_id=attachment_id)
        undo.push(agent.volumes.delete_attachment, caller, attachment_id)
        failpoints.hit("compute.swap.attachment_created")
        connector = dict(agent.connector_properties, mountpoint=m.guest_path)
        info = parse(await agent.volumes.update_attachment(caller, attachment_id, connector))
        _record(agent, m.id, protocol=info.protocol, read_only=info.access_mode == "ro")
        failpoints.hit("compute.swap.connection_info")
        device = await _connect(agent, info)
        _record(agent, m.id, connected=True, device=asdict(device) if device else None)
        undo.push(_disconnect, agent, info, device)
        failpoints.hit("compute.swap.connected")
        hv = await agent.guest(agent.store.instance(m.instance_id))
        await agent._add_node(hv, node, info, undo, size=rec["limit"], direct=True)
        failpoints.hit("compute.swap.blockdev_added")
        # 4. copy while the guest runs, then pivot
        await hv.mirror(job, m.node_name, node)
        undo.push(functools.partial(hv.cancel_job, job, timeout=JOB_TIMEOUT))
        failpoints.hit("compute.swap.mirroring")
        await hv.wait_job_ready(job, timeout=MIRROR_TIMEOUT)
        failpoints.hit("compute.swap.ready")
        try:
            await hv.complete_job(job, timeout=JOB_TIMEOUT)
        except HypervisorError:
            if await _device_node(hv, m) != node:
                raise
            # the answer was lost, the pivot was not
        _record(agent, m.id, phase=PIVOTED)
        undo.commit()
    failpoints.hit("compute.swap.pivoted")
    return hv


async def _finish(agent: Agent, caller: Caller, m: Mapping, hv: Hypervisor | None) -> None:
    """Steps 5-7, from wherever the record says they stopped (each may run again)."""
    rec = dict(m.swap or {})
    if rec["phase"] == PIVOTED:
        if rec["limit"] is not None and hv is not None:  # the guest sees the whole volume
            await hv.drop_size_limit(rec["node"], read_only=rec["read_only"])
        await agent.volumes.complete_attachment(caller, rec["attachment_id"])
        rec = _record(agent, m.id, phase=COMPLETED)
        failpoints.hit("compute.swap.completed")
    if rec["phase"] == COMPLETED:
        saved = await agent.volumes.migrate_volume_completion(
            caller, rec["old_volume_id"], rec["new_volume_id"], error=False)
        rec = _record(agent, m.id, phase=SAVED, saved=saved)
        failpoints.hit("compute.swap.saved")
    # 7. the old volume: node, host connection, attachment (the row still names them)
    m = agent.store.mapping(m.id)
    if hv is not None:
        await agent._del_node(hv, m.node_name)
    await agent._disconnect(m.id, await agent._connection_info(caller, m))
    failpoints.hit("compute.swap.disconnected")
    if m.attachment_id:
        await agent.volumes.delete_attachment(caller, m.attachment_id)
    agent.store.set_mapping(m.id, volume_id=rec["saved"], attachment_id=rec["attachment_id"],
                            node=rec["node"], disk_serial=m.serial, protocol=rec["protocol"],
                            connected=True, device=rec.get("device"), swap=None)
    agent.store.finish_mapping(m.id, "swap")
    log.info("volume %s of %s swapped to %s (kept as %s)", rec["old_volume_id"],
             m.instance_id, rec["new_volume_id"], rec["saved"])


async def _abandon(agent: Agent, caller: Caller, mapping_id: str) -> None:
    """The last undo of a failed swap, after the new volume's steps were undone: tell the
    volume service (so a migration fails), give the old volume its in-use back, and make
    the mapping attached again."""
    rec = agent.store.mapping(mapping_id).swap or {}
    try:
        await agent.volumes.migrate_volume_completion(
            caller, rec["old_volume_id"], rec["new_volume_id"], error=True)
    except VolumeApiError as exc:
        log.warning("os-migrate_volume_completion (error) for %s: %s",
                    rec["old_volume_id"], exc)
    if rec.get("detaching"):  # recorded before begin_detaching: it may never have run
        try:
            await agent.volumes.roll_detaching(caller, rec["old_volume_id"])
        except VolumeApiError as exc:
            if exc.status != 400:
                raise
            log.info("old volume %s was not detaching: %s", rec["old_volume_id"], exc)
    agent.store.set_mapping(mapping_id, swap=None)
    agent.store.fail_mapping(mapping_id, "swap")


async def _connect(agent: Agent, info: ConnectionInfo) -> Device | None:
    """connect_volume for the new volume (unshared: it has no other attachment); iSCSI has
    none, QEMU logs in itself."""
    if info.protocol == "iscsi":
        return None
    connector = connector_for(info, agent.connector_properties)
    return await asyncio.to_thread(connector.connect_volume, info)


async def _disconnect(agent: Agent, info: ConnectionInfo | None,
                      device: Device | None) -> None:
    if info is None or device is None:
        return
    connector = connector_for(info, agent.connector_properties)
    await asyncio.to_thread(connector.disconnect_volume, info, device)


async def _device_node(hv: Hypervisor, m: Mapping) -> str | None:
    """The node the mapping's device uses now (None: no such device)."""
    return next((d.node_name for d in await hv.query_disks() if d.device_id == m.device_id),
                None)


# ---------------------------------------------------------------------- after a crash
async def reconcile(agent: Agent, hv: Hypervisor | None, m: Mapping) -> None:
    """A swap the agent's crash interrupted: finish it when the guest already uses the new
    volume, undo it otherwise. `hv` None: the guest is gone (nothing to do in QEMU; the
    record alone says whether the pivot happened)."""
    caller = agent._service_caller(m.project_id)
    rec = m.swap
    if rec is None:  # the last step had run: only the status was left
        agent.store.finish_mapping(m.id, "swap")
        return
    pivoted = rec["phase"] in _AFTER_PIVOT
    if hv is not None and not pivoted:
        await hv.cancel_job(rec["job"], timeout=JOB_TIMEOUT)  # a done job is only dismissed
        pivoted = await _device_node(hv, m) == rec["node"]
        if pivoted:
            rec = _record(agent, m.id, phase=PIVOTED)
    if pivoted:
        log.warning("finishing the interrupted swap of volume %s to %s in %s",
                    rec["old_volume_id"], rec["new_volume_id"], m.instance_id)
        await _finish(agent, caller, agent.store.mapping(m.id), hv)
        return
    log.warning("undoing the interrupted swap of volume %s to %s in %s",
                rec["old_volume_id"], rec["new_volume_id"], m.instance_id)
    if hv is not None:
        await agent._del_node(hv, rec["node"])
    if rec.get("connected") and rec.get("attachment_id"):
        raw = await agent.volumes.attachment_connection_info(caller, rec["attachment_id"])
        device = rec.get("device")
        await _disconnect(agent, parse(raw) if raw else None,
                          Device(**device) if device else None)
    if rec.get("attachment_id"):
        await agent.volumes.delete_attachment(caller, rec["attachment_id"])
    await _abandon(agent, caller, m.id)
