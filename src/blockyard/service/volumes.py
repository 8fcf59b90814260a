"""Volumes: create, delete, extend and the small updates, each as begin → task → settle.

Every function takes the runtime and the caller's identity and works in its own transaction;
long work is handed to a durable task (blockyard.service.tasks) after the transaction commits.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import delete, exists, select, update
from sqlalchemy.orm import Session

from blockyard import states
from blockyard.backends.base import ModelUpdate, SnapshotRef, VolumeRef
from blockyard.db.models import (
    Snapshot,
    Volume,
    VolumeMetadata,
    VolumeType,
    utcnow,
)
from blockyard.errors import InUse, Invalid, InvalidState, NotFound
from blockyard.service import metadata, quotas, records, scheduler, tasks
from blockyard.service import types as vtypes
from blockyard.service.identity import Identity, authorize
from blockyard.service.records import VolumeRecord
from blockyard.service.runtime import Runtime
from blockyard.states import SnapshotStatus as S
from blockyard.states import VolumeStatus as V

#: statuses a volume may be copied from (clone source, snapshot source)
COPYABLE = (V.AVAILABLE, V.IN_USE)


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


# ---------------------------------------------------------------------------- references


def volume_ref(v: Volume) -> VolumeRef:
    return VolumeRef(
        id=v.id,
        size_gb=v.size,
        name_id=v.name_id,
        provider_location=v.provider_location,
        provider_auth=v.provider_auth,
    )


def snapshot_ref(s: Snapshot, volume: Volume) -> SnapshotRef:
    return SnapshotRef(
        id=s.id, volume=volume_ref(volume), size_gb=s.size, provider_location=s.provider_location
    )


def _model_values(update_: ModelUpdate | None) -> dict[str, Any]:
    if update_ is None:
        return {}
    values = {}
    if update_.provider_location is not None:
        values["provider_location"] = update_.provider_location
    if update_.provider_auth is not None:
        values["provider_auth"] = update_.provider_auth
    return values


# ---------------------------------------------------------------------------- reads


def get(session: Session, who: Identity, volume_id: str) -> Volume:
    """The volume `volume_id` as `who` may see it, or NotFound (also for names, as Cinder)."""
    volume = session.get(Volume, volume_id)
    if volume is None:
        raise NotFound("Volume", volume_id)
    authorize(who, "volume:get", volume.project_id)
    return volume


def show(rt: Runtime, who: Identity, volume_id: str) -> VolumeRecord:
    """The read model of one volume, as `who` may see it."""
    with rt.db.read() as s:
        record = records.fetch_volume(s, volume_id)
    if record is None:
        raise NotFound("Volume", volume_id)
    authorize(who, "volume:get", record.project_id)
    return record


METADATA = metadata.Owner(Volume, VolumeMetadata, "volume_id", get)


def _no_snapshots(volume_id: str) -> Any:
    return ~exists().where(Snapshot.volume_id == volume_id)


# ---------------------------------------------------------------------------- create


def create(rt: Runtime, who: Identity, req: VolumeCreate) -> VolumeRecord:
    """Accept a volume: insert it `creating` with its task, then start the task."""
    with rt.db.read() as s:
        source_backend: str | None = None
        size = req.size
        type_ident = req.volume_type
        if req.snapshot_id is not None:
            snap = s.get(Snapshot, req.snapshot_id)
            if snap is None:
                raise NotFound("Snapshot", req.snapshot_id)
            authorize(who, "snapshot:get", snap.project_id)
            if snap.status != S.AVAILABLE:
                raise Invalid("Invalid snapshot: Originating snapshot status must be one of "
                              "'available' values")
            size = snap.size if size is None else size
            if size < snap.size:
                raise Invalid(f"Invalid input received: Volume size '{size}'GB cannot be "
                              f"smaller than the snapshot size {snap.size}GB. They must be >= "
                              f"original snapshot size.")
            source_backend = s.get(Volume, snap.volume_id).backend  # type: ignore[union-attr]
            type_ident = type_ident or snap.volume_type_id
        if req.source_volid is not None:
            src = s.get(Volume, req.source_volid)
            if src is None:
                raise NotFound("Volume", req.source_volid)
            authorize(who, "volume:get", src.project_id)
            size = src.size if size is None else size
            if size < src.size:
                raise Invalid(f"Invalid input received: Volume size '{size}'GB cannot be "
                              f"smaller than original volume size {src.size}GB. They must be "
                              f">= original volume size.")
            source_backend = src.backend
            type_ident = type_ident or src.volume_type_id
        if size is None:
            raise Invalid("Invalid input received: Size is required for a new volume.")
        if size > rt.config.max_volume_size_gb:
            raise Invalid(f"Invalid input received: Volume size {size}GB exceeds the maximum "
                          f"of {rt.config.max_volume_size_gb}GB.")
        vt = vtypes.get_type(s, type_ident or rt.config.default_volume_type, who)
        per_volume = quotas.limit_of(s, rt.config.quotas, who.project_id, "per_volume_gigabytes")
        if 0 <= per_volume < size:
            raise Invalid(f"Volume size {size}G exceeds the allowed per volume quota of "
                          f"{per_volume}G.")
        if source_backend is not None:
            backend = rt.backend(source_backend)
            if req.availability_zone and req.availability_zone != \
                    backend.config.availability_zone:
                raise Invalid("Invalid input received: Availability zone of the source must "
                              "match the requested one.")
        else:
            backend = scheduler.pick(rt, vt, size, req.availability_zone)
        type_id, type_name, multiattach = vt.id, vt.name, vtypes.is_multiattach(vt)

    volume_id = str(uuid.uuid4())
    with rt.db.write() as s:
        quotas.consume(s, rt.config.quotas, who.project_id,
                       quotas.volume_deltas(type_name, 1, size))
        if req.snapshot_id is not None:
            states.pin(s, Snapshot, req.snapshot_id, (S.AVAILABLE,), "create a volume from")
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
        task = tasks.enqueue(s, "create_volume", backend.name, volume_id)
        volume = Volume(
            id=volume_id,
            project_id=who.project_id,
            user_id=who.user_id,
            name=req.name,
            description=req.description,
            size=size,
            status=V.CREATING,
            attach_status=states.AttachStatus.DETACHED,
            availability_zone=backend.config.availability_zone,
            volume_type_id=type_id,
            backend=backend.name,
            snapshot_id=req.snapshot_id,
            source_volid=req.source_volid,
            bootable=req.bootable,
            multiattach=multiattach,
            task_id=task.id,
            pins=0,
            created_at=utcnow(),
            metadata_items=[VolumeMetadata(key=k, value=v) for k, v in req.metadata.items()],
        )
        s.add(volume)
        s.flush()
        record = records.fetch_volume(s, volume_id)
    tasks.start(rt, task)
    assert record is not None
    return record


def _run_create(rt: Runtime, task: tasks.TaskView) -> ModelUpdate | None:
    with rt.db.read() as s:
        v = s.get(Volume, task.resource_id)
        if v is None:
            return None
        ref = volume_ref(v)
        driver = rt.backend(v.backend).driver
        if v.snapshot_id is not None:
            snap = s.get(Snapshot, v.snapshot_id)
            assert snap is not None
            snap_ref = snapshot_ref(snap, s.get(Volume, snap.volume_id))  # type: ignore[arg-type]
            return driver.create_volume_from_snapshot(ref, snap_ref)
        if v.source_volid is not None:
            src = s.get(Volume, v.source_volid)
            assert src is not None
            return driver.create_cloned_volume(ref, volume_ref(src))
    return driver.create_volume(ref)


def _settle_create(s: Session, rt: Runtime, task: tasks.TaskView, result: Any,
                   error: BaseException | None) -> None:
    v = s.get(Volume, task.resource_id)
    if v is None:
        return
    if v.snapshot_id is not None:
        states.unpin(s, Snapshot, v.snapshot_id)
    if v.source_volid is not None:
        states.unpin(s, Volume, v.source_volid)
    if error is None:
        states.finish(s, Volume, v.id, "create", task_id=task.id, values=_model_values(result))
    else:
        states.fail(s, Volume, v.id, "create", task_id=task.id)


tasks.register("create_volume", tasks.Handler(_run_create, _settle_create))


# ---------------------------------------------------------------------------- delete


def delete_volume(rt: Runtime, who: Identity, volume_id: str, *, cascade: bool = False,
                  force: bool = False) -> None:
    """Accept a delete: mark the volume (and with `cascade` its snapshots) deleting."""
    with rt.db.write() as s:
        v = get(s, who, volume_id)
        task = tasks.enqueue(s, "delete_volume", v.backend, volume_id, {"cascade": cascade})
        conditions: list[Any] = [Volume.pins == 0]
        if not cascade:
            conditions.append(_no_snapshots(volume_id))
        if not force:
            conditions.append(Volume.attach_status == states.AttachStatus.DETACHED)
        try:
            states.begin(s, Volume, volume_id, "force_delete" if force else "delete",
                         task_id=task.id, where=tuple(conditions))
        except InvalidState as exc:
            raise Invalid(
                "Invalid volume: Volume status must be available or error or error_restoring "
                "or error_extending or error_managing and must not be migrating, attached, "
                "belong to a group, have snapshots, awaiting a transfer, or be disassociated "
                "from snapshots after volume transfer."
            ) from exc
        if cascade:
            snap_ids = s.execute(select(Snapshot.id).where(Snapshot.volume_id == volume_id)
                                 ).scalars().all()
            for snap_id in snap_ids:
                states.begin(s, Snapshot, snap_id, "force_delete" if force else "delete",
                             task_id=task.id, where=(Snapshot.pins == 0,))
    tasks.start(rt, task)


def _run_delete(rt: Runtime, task: tasks.TaskView) -> None:
    with rt.db.read() as s:
        v = s.get(Volume, task.resource_id)
        if v is None:
            return
        driver = rt.backend(v.backend).driver
        snaps = s.execute(select(Snapshot).where(Snapshot.task_id == task.id)).scalars().all()
        snap_refs = [snapshot_ref(sn, v) for sn in snaps]
        ref = volume_ref(v)
    for snap_ref in snap_refs:
        driver.delete_snapshot(snap_ref)
    driver.remove_export(ref)
    driver.delete_volume(ref)


def _settle_delete(s: Session, rt: Runtime, task: tasks.TaskView, result: Any,
                   error: BaseException | None) -> None:
    v = s.get(Volume, task.resource_id)
    if v is None:
        return
    snaps = s.execute(select(Snapshot).where(Snapshot.task_id == task.id)).scalars().all()
    if error is not None:
        for sn in snaps:
            states.fail(s, Snapshot, sn.id, "delete", task_id=task.id)
        states.fail(s, Volume, v.id, "delete", task_id=task.id)
        return
    type_name = records.type_name(s, v.volume_type_id)
    for sn in snaps:
        s.execute(delete(Snapshot).where(Snapshot.id == sn.id, Snapshot.task_id == task.id))
        quotas.consume(s, rt.config.quotas, sn.project_id,
                       quotas.snapshot_deltas(type_name, -1, -sn.size))
    removed = s.execute(delete(Volume).where(Volume.id == v.id, Volume.task_id == task.id))
    if removed.rowcount == 1:  # type: ignore[attr-defined]
        quotas.consume(s, rt.config.quotas, v.project_id,
                       quotas.volume_deltas(type_name, -1, -v.size))


tasks.register("delete_volume", tasks.Handler(_run_delete, _settle_delete))


# ---------------------------------------------------------------------------- extend


def extend(rt: Runtime, who: Identity, volume_id: str, new_size: int, *,
           attached_ok: bool = False) -> None:
    """Accept an extend: reserve the extra gigabytes and mark the volume extending."""
    with rt.db.write() as s:
        v = get(s, who, volume_id)
        if new_size <= v.size:
            raise Invalid(f"Invalid input received: New size for extend must be greater than "
                          f"current size. (current: {v.size}, extended: {new_size}).")
        if new_size > rt.config.max_volume_size_gb:
            raise Invalid(f"Invalid input received: Volume size {new_size}GB exceeds the "
                          f"maximum of {rt.config.max_volume_size_gb}GB.")
        per_volume = quotas.limit_of(s, rt.config.quotas, v.project_id, "per_volume_gigabytes")
        if 0 <= per_volume < new_size:
            raise Invalid(f"Volume size {new_size}G exceeds the allowed per volume quota of "
                          f"{per_volume}G.")
        action = "extend"
        if v.status == V.IN_USE:
            if not attached_ok:
                raise InvalidState("Volume", volume_id, v.status, (V.AVAILABLE,), "extend")
            if not rt.backend(v.backend).driver.info().online_extend:
                raise Invalid(f"Invalid volume: backend {v.backend} cannot extend an "
                              f"attached volume.")
            action = "extend_attached"
        task = tasks.enqueue(s, "extend_volume", v.backend, volume_id,
                                {"new_size": new_size, "old_size": v.size, "action": action})
        try:
            # pins == 0: no snapshot or clone is copying the volume while it grows under it
            states.begin(s, Volume, volume_id, action, task_id=task.id,
                         where=(Volume.size == v.size, Volume.pins == 0))
        except InvalidState as exc:
            if exc.current in states.VOLUME_TRANSITIONS[action].allowed:
                raise InUse(f"Invalid volume: Volume {volume_id} is being copied by a "
                            f"snapshot or clone in progress; extend it afterwards.") from exc
            raise
        quotas.consume(s, rt.config.quotas, v.project_id,
                       {"gigabytes": new_size - v.size,
                        f"gigabytes_{records.type_name(s, v.volume_type_id)}": new_size - v.size})
    tasks.start(rt, task)


def _run_extend(rt: Runtime, task: tasks.TaskView) -> None:
    with rt.db.read() as s:
        v = s.get(Volume, task.resource_id)
        if v is None:
            return
        ref, backend = volume_ref(v), v.backend
    rt.backend(backend).driver.extend_volume(ref, int(task.payload["new_size"]))


def _settle_extend(s: Session, rt: Runtime, task: tasks.TaskView, result: Any,
                   error: BaseException | None) -> None:
    v = s.get(Volume, task.resource_id)
    if v is None:
        return
    action = task.payload.get("action", "extend")
    new_size, old_size = int(task.payload["new_size"]), int(task.payload["old_size"])
    if error is None:
        states.finish(s, Volume, v.id, action, task_id=task.id, values={"size": new_size})
        return
    if states.fail(s, Volume, v.id, action, task_id=task.id):
        quotas.consume(s, rt.config.quotas, v.project_id,
                       {"gigabytes": old_size - new_size,
                        f"gigabytes_{records.type_name(s, v.volume_type_id)}": old_size - new_size})


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
        record = records.fetch_volume(s, v.id)
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

#: API sort keys → Volume columns
SORTABLE = {
    "created_at": "created_at", "updated_at": "updated_at", "id": "id", "name": "name",
    "display_name": "name", "status": "status", "size": "size",
    "availability_zone": "availability_zone", "bootable": "bootable",
    "project_id": "project_id", "user_id": "user_id", "volume_type_id": "volume_type_id",
}


def _metadata_filter(value: str) -> dict[str, str]:
    import ast
    import json

    try:
        parsed = json.loads(value)
    except ValueError:
        try:
            parsed = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            raise Invalid(f"Invalid input received: Invalid metadata filter {value!r}.") from None
    if not isinstance(parsed, dict):
        raise Invalid(f"Invalid input received: Invalid metadata filter {value!r}.")
    return {str(k): str(v) for k, v in parsed.items()}


def _filtered_query(who: Identity, filters: dict[str, str], all_projects: bool,
                    like_allowed: bool) -> Any:
    from blockyard.service.listing import like

    q = select(Volume.id)
    project = filters.get("project_id") if all_projects else None
    if not all_projects:
        q = q.where(Volume.project_id == who.project_id)
    elif project:
        q = q.where(Volume.project_id == project)
    for key, value in filters.items():
        base, approx = (key[:-1], True) if key.endswith("~") else (key, False)
        if approx and not like_allowed:
            continue
        if base == "display_name":
            base = "name"
        if base in ("name", "status", "availability_zone", "volume_type_id", "user_id",
                    "migration_status", "description"):
            column = getattr(Volume, base)
            q = q.where(like(column, value) if approx else column == value)
        elif base == "size":
            try:
                q = q.where(Volume.size == int(value))
            except ValueError:
                raise Invalid(f"Invalid input received: size must be an integer, got "
                              f"{value!r}.") from None
        elif base == "bootable":
            q = q.where(Volume.bootable == (value.strip().lower() in
                                            ("true", "1", "yes", "t", "y", "on")))
        elif base == "metadata":
            for mk, mv in _metadata_filter(value).items():
                q = q.where(exists().where(VolumeMetadata.volume_id == Volume.id,
                                           VolumeMetadata.key == mk, VolumeMetadata.value == mv))
        elif base == "volume_type":
            q = q.where(Volume.volume_type.has(
                (VolumeType.name == value) | (VolumeType.id == value)))
    return q


def list_volumes(rt: Runtime, who: Identity, params: Any, *, all_projects: bool,
                 like_allowed: bool) -> Any:
    """One page of the caller's volumes (every project's with `all_projects`)."""
    from blockyard.service.listing import paginate

    with rt.db.read() as s:
        q = _filtered_query(who, params.filters, all_projects and who.is_admin, like_allowed)
        page = paginate(s, Volume, q, params, sortable=SORTABLE,
                        nullable={"name": "", "updated_at": Volume.created_at})
        page.rows = records.fetch_volumes(s, page.rows)
        return page


def summary(
    rt: Runtime, who: Identity, all_projects: bool
) -> tuple[int, int, dict[str, list[str]]]:
    """Count, total size and the metadata values of the caller's volumes."""
    from sqlalchemy import func

    with rt.db.read() as s:
        q = select(func.count(Volume.id), func.coalesce(func.sum(Volume.size), 0))
        mq = select(VolumeMetadata.key, VolumeMetadata.value).join(
            Volume, Volume.id == VolumeMetadata.volume_id)
        if not (all_projects and who.is_admin):
            q = q.where(Volume.project_id == who.project_id)
            mq = mq.where(Volume.project_id == who.project_id)
        count, total = s.execute(q).one()
        meta: dict[str, list[str]] = {}
        for key, value in s.execute(mq.distinct()):
            meta.setdefault(key, []).append(value)
        return int(count), int(total), meta
