"""Volumes: create, delete, extend and the small updates, each as begin → task → settle.

Every function takes the runtime and the caller's identity and works in its own transaction;
long work is handed to a durable task (blockyard.service.tasks) after the transaction commits.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, delete, exists, func, select, update
from sqlalchemy.orm import Session

from blockyard import states
from blockyard.db.models import (
    Attachment,
    Group,
    GroupVolumeType,
    Snapshot,
    Volume,
    VolumeMetadata,
    VolumeType,
    utcnow,
)
from blockyard.errors import InUse, Invalid, InvalidState, NotFound
from blockyard.model import ModelUpdate, SnapshotRef, VolumeRef
from blockyard.service import (
    compute_events,
    listing,
    messages,
    metadata,
    quotas,
    records,
    scheduler,
    services,
    tasks,
    volume_ops,
)
from blockyard.service import types as vtypes
from blockyard.service.identity import Identity, authorize, can_see_all, enforce
from blockyard.service.records import VolumeRecord
from blockyard.service.runtime import Backend, Runtime
from blockyard.states import SnapshotStatus, VolumeStatus

#: the `backend` of a volume no backend would take (created in `error`; nothing to remove)
UNSCHEDULED = ""

#: statuses a volume may be copied from (clone source, snapshot source)
COPYABLE = (VolumeStatus.AVAILABLE, VolumeStatus.IN_USE)


@dataclass(frozen=True)
class VolumeCreate:
    size: int | None
    name: str | None = None
    description: str | None = None
    metadata: dict[str, str] = field(default_factory=dict)
    volume_type: str | None = None
    availability_zone: str | None = None
    snapshot_id: str | None = None
    source_volid: str | None = None
    bootable: bool = False
    #: the generic volume group to join (3.13)
    group_id: str | None = None


# ---------------------------------------------------------------------------- reads


def get(session: Session, who: Identity, volume_id: str) -> Volume:
    """The volume `volume_id` as `who` may see it, or NotFound (also for names, as Cinder)."""
    volume = session.get(Volume, volume_id)
    if volume is None:
        raise NotFound("Volume", volume_id)
    authorize(who, "volume:get", volume.project_id, hidden=NotFound("Volume", volume_id))
    return volume


def show(rt: Runtime, who: Identity, volume_id: str) -> VolumeRecord:
    """The read model of one volume, as `who` may see it."""
    with rt.db.reading() as conn:
        record = records.fetch_volume(conn, volume_id)
    if record is None:
        raise NotFound("Volume", volume_id)
    authorize(who, "volume:get", record.project_id, hidden=NotFound("Volume", volume_id))
    return record


METADATA = metadata.Owner(Volume, VolumeMetadata, "volume_id", get)


# ---------------------------------------------------------------------------- create


def create(rt: Runtime, who: Identity, req: VolumeCreate) -> VolumeRecord:
    """Accept a volume: insert it `creating` with its task, then start the task.

    Three steps: `_resolve` decides from one read everything a read can decide (source, group,
    size, type, limits); `_place` picks the backend; `_insert_creating` runs the write
    transaction, which holds only the quota increment, the pins of the source (which re-check
    what was read) and two inserts, because SQLite runs one writer at a time. When no backend
    may take the volume it is created in `error` instead (`_create_unscheduled`).
    """
    plan = _resolve(rt, who, req)
    try:
        backend = _place(rt, req, plan)
    except scheduler.NoValidBackend as exc:
        return _create_unscheduled(rt, who, req, plan.size, plan.vt, exc)
    return _insert_creating(rt, who, req, plan, backend)


@dataclass(frozen=True)
class _Source:
    """What a new volume copies (a snapshot or a volume), as far as creating it cares."""

    #: the new volume's size: the source's, unless a larger one was asked for
    size: int
    #: the source's backend: the copy is made there
    backend: str
    #: the source's type: the new volume's unless another was asked for
    volume_type_id: str


@dataclass(frozen=True)
class _Plan:
    """What `_resolve` decided for a new volume."""

    size: int
    vt: vtypes.TypeInfo
    #: the backend the volume must live on (its source's or its group's); None: any
    backend: str | None


def _snapshot_source(conn: Connection, who: Identity, snapshot_id: str,
                     size: int | None) -> _Source:
    snap = conn.execute(
        select(Snapshot.project_id, Snapshot.status, Snapshot.size,
               Snapshot.volume_type_id, Volume.backend)
        .join(Volume, Volume.id == Snapshot.volume_id)
        .where(Snapshot.id == snapshot_id)).first()
    if snap is None:
        raise NotFound("Snapshot", snapshot_id)
    authorize(who, "volume:get_snapshot", snap.project_id, hidden=NotFound("Snapshot", snapshot_id))
    if snap.status != SnapshotStatus.AVAILABLE:
        raise Invalid("Invalid snapshot: Originating snapshot status must be one of "
                      "'available' values")
    return _copy_of(snap, size, "snapshot", "the snapshot size")


def _volume_source(conn: Connection, who: Identity, source_volid: str,
                   size: int | None) -> _Source:
    src = conn.execute(
        select(Volume.project_id, Volume.size, Volume.backend, Volume.volume_type_id)
        .where(Volume.id == source_volid)).first()
    if src is None:
        raise NotFound("Volume", source_volid)
    authorize(who, "volume:get", src.project_id, hidden=NotFound("Volume", source_volid))
    return _copy_of(src, size, "volume", "original volume size")


def _copy_of(source: Any, size: int | None, kind: str, its_size: str) -> _Source:
    """A copy of `source` (a row with size, backend, volume_type_id): as large as the source
    unless `size` asks for more, never smaller (Cinder's wording names the source's size
    `its_size`)."""
    size = source.size if size is None else size
    if size < source.size:
        raise Invalid(f"Invalid input received: Volume size '{size}'GB cannot be smaller "
                      f"than {its_size} {source.size}GB. They must be >= original {kind} "
                      f"size.")
    return _Source(size, source.backend, source.volume_type_id)


def _resolve_source(conn: Connection, who: Identity, req: VolumeCreate) -> _Source | None:
    """The snapshot or volume the new volume copies, if any (the API refuses both at once)."""
    if req.snapshot_id is not None:
        return _snapshot_source(conn, who, req.snapshot_id, req.size)
    if req.source_volid is not None:
        return _volume_source(conn, who, req.source_volid, req.size)
    return None


def _resolve(rt: Runtime, who: Identity, req: VolumeCreate) -> _Plan:
    """Step 1 of `create`: the source, group, size and type of the new volume, checked
    against the limits, in one read."""
    with rt.db.reading() as conn:
        source = _resolve_source(conn, who, req)
        group = _membership(conn, who, req.group_id) if req.group_id is not None else None
        size = source.size if source is not None else req.size
        if size is None:
            raise Invalid("Invalid input received: Size is required for a new volume.")
        if size > rt.config.max_volume_size_gb:
            raise Invalid(f"Invalid input received: Volume size {size}GB exceeds the maximum "
                          f"of {rt.config.max_volume_size_gb}GB.")
        type_ident = req.volume_type or (source.volume_type_id if source is not None else None)
        vt = vtypes.resolve(conn, type_ident or rt.config.default_volume_type, who)
        per_volume = quotas.limit_of(conn, rt.config.quotas, who.project_id,
                                     "per_volume_gigabytes")
    if 0 <= per_volume < size:
        raise Invalid(f"Volume size {size}G exceeds the allowed per volume quota of "
                      f"{per_volume}G.")
    backend = source.backend if source is not None else None
    if group is not None:
        backend = _agree_with_group(group, vt, backend)
    return _Plan(size, vt, backend)


def _agree_with_group(group: _Membership, vt: vtypes.TypeInfo, source_backend: str | None) -> str:
    """A new member must have a type of its group and live on the group's backend, which is
    the backend it goes to."""
    if vt.id not in group.volume_type_ids:
        raise Invalid(f"Invalid input received: Invalid volume_type provided: {vt.name} "
                      f"(requested type must be supported by this group).")
    if source_backend is not None and source_backend != group.backend:
        raise Invalid(f"Invalid input received: the source lives on backend "
                      f"{source_backend}, but the volumes of group {group.group_id} live "
                      f"on {group.backend}.")
    return group.backend


def _place(rt: Runtime, req: VolumeCreate, plan: _Plan) -> Backend:
    """Step 2 of `create`: the backend the volume goes to, or NoValidBackend."""
    if plan.backend is None:
        return scheduler.pick(rt, plan.vt, plan.size, req.availability_zone)
    backend = rt.backend(plan.backend)
    if req.availability_zone and req.availability_zone != backend.config.availability_zone:
        raise Invalid("Invalid input received: Availability zone of the source must "
                      "match the requested one.")
    if backend.name in services.unschedulable(rt):
        # the only backend it may go to is disabled or frozen: Cinder's scheduler finds
        # no valid backend for it either
        raise scheduler.NoValidBackend("No valid backend was found. No weighed backends "
                                       "available")
    return backend


def _insert_creating(rt: Runtime, who: Identity, req: VolumeCreate, plan: _Plan,
                     backend: Backend) -> VolumeRecord:
    """Step 3 of `create`: in one write transaction, hold the group, take the quota, pin the
    source, queue the task and insert the volume `creating`; then start the task."""
    size, type_name = plan.size, plan.vt.name
    record = volume_ops.new_volume(
        project_id=who.project_id, user_id=who.user_id, name=req.name,
        description=req.description, size=size, status=VolumeStatus.CREATING,
        availability_zone=backend.config.availability_zone, volume_type_id=plan.vt.id,
        type_name=type_name, backend=backend.name, snapshot_id=req.snapshot_id,
        source_volid=req.source_volid, bootable=req.bootable,
        multiattach=vtypes.is_multiattach(plan.vt), group_id=req.group_id, meta=req.metadata)
    with rt.db.write() as s:
        if req.group_id is not None:
            _hold_group_for_new_member(s, req.group_id)
        quotas.consume(s, rt.config.quotas, who.project_id,
                       quotas.volume_deltas(type_name, 1, size))
        _pin_source(s, req, size)
        task = tasks.enqueue(s, "create_volume", backend.name, record.id, {
            "size": size, "snapshot_id": req.snapshot_id, "source_volid": req.source_volid})
        volume_ops.insert_volume(s, record, task.id)
    tasks.start(rt, task)
    return record


def _pin_source(s: Session, req: VolumeCreate, size: int) -> None:
    """Pin what the new volume copies, re-checking by condition what `_resolve` read."""
    if req.snapshot_id is not None:
        states.pin(s, Snapshot, req.snapshot_id, (SnapshotStatus.AVAILABLE,),
                   "create a volume from")
    if req.source_volid is not None:
        try:
            # the size read above must still hold: an extend may have finished since
            states.pin(s, Volume, req.source_volid, COPYABLE, "clone",
                       where=(Volume.size <= size,))
        except InvalidState as exc:
            if exc.current in COPYABLE:
                raise Invalid(f"Invalid input received: Volume size '{size}'GB cannot be "
                              f"smaller than original volume size, which grew meanwhile. "
                              f"They must be >= original volume size.") from exc
            raise


def _create_unscheduled(rt: Runtime, who: Identity, req: VolumeCreate, size: int,
                        vt: vtypes.TypeInfo | VolumeType,
                        why: scheduler.NoValidBackend) -> VolumeRecord:
    """No backend fits: as Cinder's scheduler does, the volume exists in `error`, on no
    backend (``host`` is null), counted against quota until it is deleted, and a user message
    says why. The request itself succeeds: the failure is the volume's, not the request's."""
    zone = req.availability_zone or min(scheduler.availability_zones(rt))
    record = volume_ops.new_volume(
        project_id=who.project_id, user_id=who.user_id, name=req.name,
        description=req.description, size=size, status=VolumeStatus.ERROR, availability_zone=zone,
        volume_type_id=vt.id, type_name=vt.name, backend=UNSCHEDULED, bootable=req.bootable,
        multiattach=vtypes.is_multiattach(vt), meta=req.metadata)
    with rt.db.write() as s:
        quotas.consume(s, rt.config.quotas, who.project_id,
                       quotas.volume_deltas(vt.name, 1, size))
        volume_ops.insert_volume(s, record, None)
        messages.record(s, rt.config.message_ttl, project_id=who.project_id,
                        resource_type=messages.Resource.VOLUME, resource_uuid=record.id,
                        action=messages.Action.SCHEDULE_ALLOCATE_VOLUME,
                        detail=messages.detail_for(why, messages.Detail.UNKNOWN_ERROR))
    return record


@dataclass(frozen=True)
class _Membership:
    """What a volume joining group `group_id` at create must agree with."""

    group_id: str
    backend: str
    volume_type_ids: tuple[str, ...]


def _membership(conn: Connection, who: Identity, group_id: str) -> _Membership:
    """Read the group a new volume asks to join (its status is held at insert time)."""
    row = conn.execute(select(Group.project_id, Group.backend)
                       .where(Group.id == group_id)).first()
    if row is None:
        raise NotFound("Group", group_id, f"Group {group_id} could not be found.")
    authorize(who, "group:get", row.project_id,
              hidden=NotFound("Group", group_id, f"Group {group_id} could not be found."))
    type_ids = tuple(conn.execute(select(GroupVolumeType.volume_type_id)
                                  .where(GroupVolumeType.group_id == group_id)).scalars())
    return _Membership(group_id, row.backend, type_ids)


def _hold_group_for_new_member(s: Session, group_id: str) -> None:
    """In the transaction inserting a member: the group must (still) be available."""
    try:
        states.begin(s, Group, group_id, "add_volume")
    except InvalidState as exc:
        raise Invalid(f"Invalid Group: Group {group_id} status must be available to add a "
                      f"volume, but current status is: {exc.current}.") from exc


def _refs_of_sources(rt: Runtime, snapshot_id: str | None,
                     source_volid: str | None) -> tuple[SnapshotRef | None, VolumeRef | None]:
    """The pinned sources of a copy (they cannot change while pinned)."""
    with rt.db.read() as s:
        if snapshot_id is not None:
            snap = s.get(Snapshot, snapshot_id)
            assert snap is not None
            parent = s.get(Volume, snap.volume_id)
            assert parent is not None
            return volume_ops.snapshot_ref(snap, parent), None
        if source_volid is not None:
            src = s.get(Volume, source_volid)
            assert src is not None
            return None, volume_ops.volume_ref(src)
    return None, None


def _run_create(rt: Runtime, task: tasks.TaskView) -> ModelUpdate | None:
    p = task.payload
    ref = VolumeRef(id=task.resource_id, size_gb=int(p["size"]))
    driver = rt.backend(task.backend).driver
    snap_ref, src_ref = _refs_of_sources(rt, p.get("snapshot_id"), p.get("source_volid"))
    if snap_ref is not None:
        return driver.create_volume_from_snapshot(ref, snap_ref)
    if src_ref is not None:
        return driver.create_cloned_volume(ref, src_ref)
    return driver.create_volume(ref)


def _settle_create(s: Session, rt: Runtime, task: tasks.TaskView, result: Any,
                   error: BaseException | None) -> None:
    if task.payload.get("snapshot_id") is not None:
        states.unpin(s, Snapshot, task.payload["snapshot_id"])
    if task.payload.get("source_volid") is not None:
        states.unpin(s, Volume, task.payload["source_volid"])
    if error is None:
        states.finish(s, Volume, task.resource_id, "create", task_id=task.id,
                      values=volume_ops.model_values(result))
    else:
        states.fail(s, Volume, task.resource_id, "create", task_id=task.id)


tasks.register("create_volume", tasks.Handler(_run_create, _settle_create))


# ---------------------------------------------------------------------------- delete


def delete_volume(rt: Runtime, who: Identity, volume_id: str, *, cascade: bool = False,
                  force: bool = False) -> None:
    """Accept a delete: mark the volume (and with `cascade` its snapshots) deleting."""

    def act(v: VolumeRecord, _per_volume: int) -> tasks.TaskView:
        # the size as read goes into the task (it releases that much quota): begin_as_read
        # makes sure it holds; a group's member goes with its group (delete-volumes), as in
        # Cinder
        # nor while it migrates, source or temporary destination (Cinder's expected
        # migration_status), force or not: the migration's own task deletes what it made
        conditions: list[Any] = [Volume.pins == 0, Volume.group_id.is_(None),
                                 states.not_migrating()]
        if not cascade:
            conditions.append(volume_ops.no_snapshots(volume_id))
        else:  # a member of a group snapshot goes with its group snapshot
            conditions.append(~exists().where(Snapshot.volume_id == volume_id,
                                              Snapshot.group_snapshot_id.is_not(None)))
        if not force:
            conditions.append(Volume.attach_status == states.AttachStatus.DETACHED)
        with rt.db.write() as s:
            services.assert_not_frozen(s, v.backend)
            # a volume on no backend has nothing to remove: any backend's workers settle it
            task = tasks.enqueue(s, "delete_volume", v.backend or min(rt.backends), volume_id,
                                 {"cascade": cascade, "unscheduled": not v.backend,
                                  **volume_ops.ref_payload(v)})
            try:
                volume_ops.begin_as_read(s, v, "force_delete" if force else "delete",
                                         task_id=task.id, where=tuple(conditions))
            except InvalidState as exc:
                raise Invalid(
                    "Invalid volume: Volume status must be available or error or "
                    "error_restoring or error_extending or error_managing and must not be "
                    "migrating, attached, belong to a group, have snapshots, awaiting a "
                    "transfer, or be disassociated from snapshots after volume transfer."
                ) from exc
            if cascade:
                snap_ids = s.execute(select(Snapshot.id).where(Snapshot.volume_id == volume_id)
                                     ).scalars().all()
                for snap_id in snap_ids:
                    states.begin(s, Snapshot, snap_id, "force_delete" if force else "delete",
                                 task_id=task.id, where=(Snapshot.pins == 0,))
        return task

    volume_ops.act_on_fresh(rt, who, volume_id, act)


def _cascaded_snapshots(conn: Connection, task_id: int) -> list[tuple[str, str, int, Any]]:
    """(id, project_id, size, provider_location) of the snapshots a cascade delete owns."""
    return [tuple(r) for r in conn.execute(  # type: ignore[misc]
        select(Snapshot.id, Snapshot.project_id, Snapshot.size, Snapshot.provider_location)
        .where(Snapshot.task_id == task_id))]


def _run_delete(rt: Runtime, task: tasks.TaskView) -> None:
    if task.payload.get("unscheduled"):
        return
    ref = volume_ops.ref_from_payload(task)
    driver = rt.backend(task.backend).driver
    if task.payload.get("cascade"):
        with rt.db.reading() as conn:
            snaps = _cascaded_snapshots(conn, task.id)
        for sid, _project, size, location in snaps:
            driver.delete_snapshot(SnapshotRef(id=sid, volume=ref, size_gb=size,
                                               provider_location=location))
    driver.remove_export(ref)
    driver.delete_volume(ref)


def _settle_delete(s: Session, rt: Runtime, task: tasks.TaskView, result: Any,
                   error: BaseException | None) -> None:
    p = task.payload
    snaps = _cascaded_snapshots(s.connection(), task.id) if p.get("cascade") else []
    if error is not None:
        for sid, *_ in snaps:
            states.fail(s, Snapshot, sid, "delete", task_id=task.id)
        states.fail(s, Volume, task.resource_id, "delete", task_id=task.id)
        return
    type_name = str(p["type_name"])
    for sid, project, size, _location in snaps:
        s.connection().execute(
            delete(Snapshot).where(Snapshot.id == sid, Snapshot.task_id == task.id))
        quotas.consume(s, rt.config.quotas, project, quotas.snapshot_deltas(type_name, -1, -size))
    # a forced delete may leave attachment records behind: they go with the volume
    owned = select(Volume.id).where(Volume.id == task.resource_id, Volume.task_id == task.id)
    s.connection().execute(delete(Attachment).where(Attachment.volume_id.in_(owned)))
    removed = s.connection().execute(delete(Volume).where(Volume.id == task.resource_id,
                                             Volume.task_id == task.id))
    # a migration's temporary destination never counted against quota (`no_quota`)
    if removed.rowcount == 1 and not p.get("no_quota"):
        quotas.consume(s, rt.config.quotas, str(p["project_id"]),
                       quotas.volume_deltas(type_name, -1, -int(p["size"])))


tasks.register("delete_volume", tasks.Handler(_run_delete, _settle_delete))


# ---------------------------------------------------------------------------- extend


def _extend_attached(rt: Runtime, who: Identity, v: VolumeRecord, attached_ok: bool) -> str:
    """The action extending the attached volume `v`, if the request (`attached_ok`, 3.42),
    Cinder's own rule for it, its driver and its export target allow one."""
    if not attached_ok:
        raise InvalidState("Volume", v.id, v.status, (VolumeStatus.AVAILABLE,), "extend")
    enforce(who, "volume:extend_attached_volume", {"project_id": v.project_id})
    if not rt.backend(v.backend).driver.info().online_extend:
        raise Invalid(f"Invalid volume: backend {v.backend} cannot extend an "
                      f"attached volume.")
    # the driver may grow the volume, but could the attached consumer see it grow?
    target = rt.target_of(v.backend)
    if not target.online_resize:
        raise Invalid(f"Invalid volume: volumes exported over {target.protocol} cannot "
                      f"be extended while attached ({target.online_resize_blocker}); "
                      f"detach it first.")
    return "extend_attached"


def extend(rt: Runtime, who: Identity, volume_id: str, new_size: int, *,
           attached_ok: bool = False) -> None:
    """Accept an extend: reserve the extra gigabytes and mark the volume extending.

    An attached volume (`attached_ok`, microversion 3.42) also needs a driver that extends
    online and an export target whose consumers can see the volume grow; once it has grown,
    compute is told (`_tell_compute`).
    """

    def act(v: VolumeRecord, per_volume: int) -> tasks.TaskView:
        if new_size <= v.size:
            raise Invalid(f"Invalid input received: New size for extend must be greater than "
                          f"current size. (current: {v.size}, extended: {new_size}).")
        if new_size > rt.config.max_volume_size_gb:
            raise Invalid(f"Invalid input received: Volume size {new_size}GB exceeds the "
                          f"maximum of {rt.config.max_volume_size_gb}GB.")
        if 0 <= per_volume < new_size:
            raise Invalid(f"Volume size {new_size}G exceeds the allowed per volume quota of "
                          f"{per_volume}G.")
        action = (_extend_attached(rt, who, v, attached_ok) if v.status == VolumeStatus.IN_USE
                  else "extend")
        grow = new_size - v.size
        with rt.db.write() as s:
            task = tasks.enqueue(s, "extend_volume", v.backend, volume_id, {
                "new_size": new_size, "old_size": v.size, "action": action,
                **volume_ops.ref_payload(v)})
            # size as read: nothing grew it meanwhile; pins == 0: no snapshot or clone is
            # copying the volume while it grows under it
            volume_ops.begin_as_read(
                s, v, action, task_id=task.id, where=(Volume.pins == 0,),
                busy=InUse(f"Invalid volume: Volume {volume_id} is being copied by a "
                           f"snapshot or clone in progress; extend it afterwards."))
            quotas.consume(s, rt.config.quotas, v.project_id,
                           {"gigabytes": grow, f"gigabytes_{v.type_name}": grow})
        return task

    volume_ops.act_on_fresh(rt, who, volume_id, act)


def _run_extend(rt: Runtime, task: tasks.TaskView) -> None:
    rt.backend(task.backend).driver.extend_volume(volume_ops.ref_from_payload(task),
                                                  int(task.payload["new_size"]))


def _settle_extend(s: Session, rt: Runtime, task: tasks.TaskView, result: Any,
                   error: BaseException | None) -> tasks.FollowUp | None:
    p = task.payload
    action = p.get("action", "extend")
    new_size, old_size = int(p["new_size"]), int(p["old_size"])
    if error is None:
        done = states.finish(s, Volume, task.resource_id, action, task_id=task.id,
                             values={"size": new_size})
        if done and action == "extend_attached":
            return _tell_compute(s, rt, task.resource_id)
        return None
    if states.fail(s, Volume, task.resource_id, action, task_id=task.id):
        shrink = old_size - new_size
        quotas.consume(s, rt.config.quotas, str(p["project_id"]),
                       {"gigabytes": shrink, f"gigabytes_{p['type_name']}": shrink})
    return None


def _tell_compute(s: Session, rt: Runtime, volume_id: str) -> tasks.FollowUp | None:
    """Once the extend commits, send compute a volume-extended event for each instance the
    volume is attached to, so that the guests' disks grow (Cinder's extend does the same)."""
    if rt.config.compute.url is None:
        return None
    instances = [str(uuid_) for uuid_ in s.execute(
        select(Attachment.instance_uuid)
        .where(Attachment.volume_id == volume_id, Attachment.instance_uuid.is_not(None))
        .group_by(Attachment.instance_uuid)
        .order_by(func.min(Attachment.created_at))).scalars()]
    if not instances:
        return None
    config = rt.config.compute
    auth = compute_events.service_auth(rt.config.auth)  # its service token under keystone

    def send() -> None:
        compute_events.volume_extended(config, volume_id, instances, auth=auth)

    return send


tasks.register("extend_volume", tasks.Handler(_run_extend, _settle_extend))


# ---------------------------------------------------------------------------- small updates


def update_fields(
    rt: Runtime, who: Identity, volume_id: str, values: dict[str, Any]
) -> VolumeRecord:
    """Name, description, metadata (replace), bootable, readonly: no status involved."""
    with rt.db.write() as s:
        v = get(s, who, volume_id)
        meta = values.pop("metadata", None)
        if values:
            s.execute(update(Volume).where(Volume.id == volume_id)
                      .values(updated_at=utcnow(), **values)
                      .execution_options(synchronize_session=False))
        if meta is not None:
            metadata.replace_items(s, METADATA, volume_id, meta)
        record = records.fetch_volume(s.connection(), v.id)
    assert record is not None
    return record


def reset_status(rt: Runtime, who: Identity, volume_id: str, status: str | None,
                 attach_status: str | None, migration_status: str | None) -> None:
    with rt.db.write() as s:
        v = get(s, who, volume_id)
        values: dict[str, Any] = {}
        if attach_status is not None:
            values["attach_status"] = attach_status
        if migration_status is not None:
            values["migration_status"] = None if migration_status in ("", "none") \
                else migration_status
        states.reset(s, Volume, v.id, status, values=values)


# ---------------------------------------------------------------------------- listing

#: the largest size a `size=` filter may name (Cinder's DB_MAX_INT)
MAX_SIZE_FILTER = 2**31 - 1

#: API sort keys → Volume columns
SORTABLE = {
    "created_at": "created_at", "updated_at": "updated_at", "id": "id", "name": "name",
    "display_name": "name", "status": "status", "size": "size",
    "availability_zone": "availability_zone", "bootable": "bootable",
    "project_id": "project_id", "user_id": "user_id", "volume_type_id": "volume_type_id",
}


#: filters that compare one column, exactly or (``key~=value``) as `listing.like`
_COLUMN_FILTERS: dict[str, Any] = {
    "name": Volume.name, "display_name": Volume.name, "status": Volume.status,
    "availability_zone": Volume.availability_zone, "volume_type_id": Volume.volume_type_id,
    "user_id": Volume.user_id, "migration_status": Volume.migration_status,
    "description": Volume.description, "group_id": Volume.group_id,
}


def _size_is(value: str) -> list[Any]:
    # ASCII digits only (int() takes "٣"), and no number a column cannot hold
    if not re.fullmatch(r"[0-9]{1,10}", value.strip()) or int(value) > MAX_SIZE_FILTER:
        raise Invalid(f"Invalid input received: size must be an integer, got {value!r}.")
    return [Volume.size == int(value)]


def _bootable_is(value: str) -> list[Any]:
    return [Volume.bootable == (value.strip().lower() in ("true", "1", "yes", "t", "y", "on"))]


def _has_metadata(value: str) -> list[Any]:
    return listing.has_metadata(value, VolumeMetadata.volume_id, Volume.id,
                                VolumeMetadata.key, VolumeMetadata.value)


def _of_type(value: str) -> list[Any]:
    return [Volume.volume_type.has((VolumeType.name == value) | (VolumeType.id == value))]


#: filters whose value is parsed: they always match exactly, also written ``key~=value``
_VALUE_FILTERS: dict[str, Callable[[str], list[Any]]] = {
    "size": _size_is, "bootable": _bootable_is, "metadata": _has_metadata,
    "volume_type": _of_type,
}


def _filtered_query(who: Identity, filters: dict[str, str], all_projects: bool,
                    like_allowed: bool) -> Any:
    """The ids of the volumes `filters` select among those `who` may list; other keys are
    ignored, as Cinder ignores them, and so is ``key~=value`` where `like_allowed` is not."""
    # a migration's temporary destination is no volume of anyone's (Cinder hides it too)
    q = select(Volume.id).where(states.not_migration_target())
    if not all_projects:
        q = q.where(Volume.project_id == who.project_id)
    elif filters.get("project_id"):
        q = q.where(Volume.project_id == filters["project_id"])
    q = listing.filter_columns(q, filters, _COLUMN_FILTERS, like_allowed=like_allowed)
    for key, value in filters.items():
        approx = key.endswith("~")
        conditions = _VALUE_FILTERS.get(key[:-1] if approx else key)
        if conditions is not None and (like_allowed or not approx):
            q = q.where(*conditions(value))
    return q


def list_volumes(rt: Runtime, who: Identity, params: Any, *, all_projects: bool,
                 like_allowed: bool) -> Any:
    """One page of the caller's volumes (every project's with `all_projects`)."""
    with rt.db.read() as s:
        q = _filtered_query(who, params.filters, all_projects and can_see_all(who), like_allowed)
        page = listing.paginate(s, Volume, q, params, sortable=SORTABLE,
                        nullable={"name": "", "updated_at": Volume.created_at})
        page.rows = records.fetch_volumes(s.connection(), page.rows)
        return page


def summary(
    rt: Runtime, who: Identity, all_projects: bool
) -> tuple[int, int, dict[str, list[str]]]:
    """Count, total size and the metadata values of the caller's volumes."""
    with rt.db.read() as s:
        q = select(func.count(Volume.id), func.coalesce(func.sum(Volume.size), 0))
        mq = select(VolumeMetadata.key, VolumeMetadata.value).join(
            Volume, Volume.id == VolumeMetadata.volume_id)
        q = q.where(states.not_migration_target())
        mq = mq.where(states.not_migration_target())
        if not (all_projects and can_see_all(who)):
            q = q.where(Volume.project_id == who.project_id)
            mq = mq.where(Volume.project_id == who.project_id)
        count, total = s.execute(q).one()
        meta: dict[str, list[str]] = {}
        for key, value in s.execute(mq.distinct()):
            meta.setdefault(key, []).append(value)
        return int(count), int(total), meta
