"""Snapshots: create and delete as durable tasks, plus the small updates and listing."""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from blockyard import failpoints, states
from blockyard.db.models import Attachment, Snapshot, SnapshotMetadata, Volume, utcnow
from blockyard.errors import Invalid, InvalidState, NotFound
from blockyard.service import metadata, quotas, records, services, tasks
from blockyard.service.assisted_snapshots import guests_paused
from blockyard.service.identity import Identity, authorize, can_see_all
from blockyard.service.listing import (
    ListParams,
    Page,
    filter_columns,
    has_metadata,
    paginate,
)
from blockyard.service.runtime import Runtime
from blockyard.service.volume_ops import snapshot_ref
from blockyard.states import AttachStatus, SnapshotStatus, VolumeStatus

SORTABLE = {
    "created_at": "created_at", "updated_at": "updated_at", "id": "id", "name": "name",
    "display_name": "name", "status": "status", "size": "size", "volume_id": "volume_id",
    "project_id": "project_id",
}


#: filters that compare one column, exactly or (``key~=value``) as `listing.like`
_COLUMN_FILTERS: dict[str, Any] = {
    "name": Snapshot.name, "display_name": Snapshot.name, "status": Snapshot.status,
    "volume_id": Snapshot.volume_id, "description": Snapshot.description,
}


def get(session: Session, who: Identity, snapshot_id: str) -> Snapshot:
    snap = session.get(Snapshot, snapshot_id)
    if snap is None:
        raise NotFound("Snapshot", snapshot_id)
    authorize(who, "volume:get_snapshot", snap.project_id, hidden=NotFound("Snapshot", snapshot_id))
    return snap


METADATA = metadata.Owner(Snapshot, SnapshotMetadata, "snapshot_id", get)


def load(rt: Runtime, who: Identity, snapshot_id: str) -> Snapshot:
    with rt.db.read() as s:
        snap = get(s, who, snapshot_id)
        _ = snap.metadata_items
        return snap


def create(rt: Runtime, who: Identity, volume_id: str, *, name: str | None,
           description: str | None, metadata: dict[str, str], force: bool) -> Snapshot:
    """Accept a snapshot of `volume_id`: pin the volume, insert the snapshot `creating`."""
    snapshot_id = str(uuid.uuid4())
    with rt.db.write() as s:
        v = s.get(Volume, volume_id)
        if v is None:
            raise NotFound("Volume", volume_id)
        authorize(who, "volume:get", v.project_id, hidden=NotFound("Volume", volume_id))
        services.assert_not_frozen(s, v.backend)
        allowed = ((VolumeStatus.AVAILABLE, VolumeStatus.IN_USE) if force
                   else (VolumeStatus.AVAILABLE,))
        if v.status not in allowed:
            raise Invalid(f"Invalid volume: Volume {volume_id} status must be available, but "
                          f"current status is: {v.status}.")
        quotas.consume(s, rt.config.quotas, who.project_id,
                       quotas.snapshot_deltas(records.type_name(s, v.volume_type_id), 1, v.size))
        try:
            states.pin(s, Volume, volume_id, allowed, "snapshot")
        except InvalidState as exc:
            raise Invalid(f"Invalid volume: Volume {volume_id} status must be available, but "
                          f"current status is: {exc.current}.") from exc
        task = tasks.enqueue(s, "create_snapshot", v.backend, snapshot_id)
        snap = Snapshot(
            id=snapshot_id,
            project_id=who.project_id,
            user_id=who.user_id,
            volume_id=volume_id,
            name=name,
            description=description,
            size=v.size,
            status=SnapshotStatus.CREATING,
            progress="0%",
            volume_type_id=v.volume_type_id,
            task_id=task.id,
            pins=0,
            created_at=utcnow(),
            metadata_items=[SnapshotMetadata(key=k, value=val) for k, val in metadata.items()],
        )
        s.add(snap)
        s.flush()
        s.refresh(snap)
        _ = snap.metadata_items
    tasks.start(rt, task)
    return snap


def _run_create(rt: Runtime, task: tasks.TaskView) -> Any:
    with rt.db.read() as s:
        snap = s.get(Snapshot, task.resource_id)
        if snap is None:
            return None
        v = s.get(Volume, snap.volume_id)
        assert v is not None
        ref = snapshot_ref(snap, v)
        backend = v.backend
        instances = _instances_of(s, v.id)
    # an attached volume: its guests paused for the snapshot's instant, so that it is
    # point-in-time; prepared before and made durable after, so the pause is short
    with rt.backend(backend).driver.staged_snapshot(ref) as take, \
            guests_paused(rt.config.compute, rt.config.auth, ref.volume.id, task.resource_id,
                          instances):
        failpoints.hit("create_snapshot.guests_paused")  # the crash and rollback tests
        result = take()
    return result


def _instances_of(s: Session, volume_id: str) -> list[str]:
    """The instances that may write `volume_id`: attached, or being attached or detached
    (not merely reserved for one)."""
    return sorted({str(i) for i in s.scalars(
        select(Attachment.instance_uuid).where(
            Attachment.volume_id == volume_id, Attachment.instance_uuid.is_not(None),
            Attachment.attach_status.not_in(_NOT_WRITING)))})


_NOT_WRITING = (AttachStatus.RESERVED, AttachStatus.DETACHED, AttachStatus.DELETED)


def _settle_create(s: Session, rt: Runtime, task: tasks.TaskView, result: Any,
                   error: BaseException | None) -> None:
    snap = s.get(Snapshot, task.resource_id)
    if snap is None:
        return
    states.unpin(s, Volume, snap.volume_id)
    if error is None:
        values = {"progress": "100%"}
        if result is not None and result.provider_location is not None:
            values["provider_location"] = result.provider_location
        states.finish(s, Snapshot, snap.id, "create", task_id=task.id, values=values)
    else:
        states.fail(s, Snapshot, snap.id, "create", task_id=task.id)


tasks.register("create_snapshot", tasks.Handler(_run_create, _settle_create))


def delete_snapshot(rt: Runtime, who: Identity, snapshot_id: str, *, force: bool = False) -> None:
    with rt.db.write() as s:
        snap = get(s, who, snapshot_id)
        v = s.get(Volume, snap.volume_id)
        assert v is not None
        services.assert_not_frozen(s, v.backend)
        task = tasks.enqueue(s, "delete_snapshot", v.backend, snapshot_id)
        try:
            # a member of a group snapshot goes only with its group snapshot, as in Cinder
            states.begin(s, Snapshot, snapshot_id, "force_delete" if force else "delete",
                         task_id=task.id,
                         where=(Snapshot.pins == 0, Snapshot.group_snapshot_id.is_(None)))
        except InvalidState as exc:
            if exc.current in states.SNAPSHOT_TRANSITIONS["delete"].allowed \
                    and snap.group_snapshot_id is None:
                raise Invalid(f"Invalid snapshot: Snapshot {snapshot_id} is being used to "
                              f"create a volume.") from exc
            raise Invalid(f"Invalid snapshot: Snapshot status must be available or error "
                          f"and must not be part of a group, but current status is: "
                          f"{exc.current}.") from exc
    tasks.start(rt, task)


def _run_delete(rt: Runtime, task: tasks.TaskView) -> None:
    with rt.db.read() as s:
        snap = s.get(Snapshot, task.resource_id)
        if snap is None:
            return
        v = s.get(Volume, snap.volume_id)
        assert v is not None
        ref = snapshot_ref(snap, v)
        backend = v.backend
    rt.backend(backend).driver.delete_snapshot(ref)


def _settle_delete(s: Session, rt: Runtime, task: tasks.TaskView, result: Any,
                   error: BaseException | None) -> None:
    snap = s.get(Snapshot, task.resource_id)
    if snap is None:
        return
    if error is not None:
        states.fail(s, Snapshot, snap.id, "delete", task_id=task.id)
        return
    v = s.get(Volume, snap.volume_id)
    removed = s.execute(delete(Snapshot).where(Snapshot.id == snap.id,
                                               Snapshot.task_id == task.id))
    if removed.rowcount == 1 and v is not None:  # type: ignore[attr-defined]
        type_name = records.type_name(s, v.volume_type_id)
        quotas.consume(s, rt.config.quotas, snap.project_id,
                       quotas.snapshot_deltas(type_name, -1, -snap.size))


tasks.register("delete_snapshot", tasks.Handler(_run_delete, _settle_delete))


# ---------------------------------------------------------------------------- small updates


def update_fields(rt: Runtime, who: Identity, snapshot_id: str,
                  values: dict[str, Any]) -> Snapshot:
    with rt.db.write() as s:
        snap = get(s, who, snapshot_id)
        if values:
            s.execute(update(Snapshot).where(Snapshot.id == snapshot_id)
                      .values(updated_at=utcnow(), **values)
                      .execution_options(synchronize_session=False))
        s.expire(snap)
        s.refresh(snap)
        _ = snap.metadata_items
        return snap


def reset_status(rt: Runtime, who: Identity, snapshot_id: str, status: str) -> None:
    with rt.db.write() as s:
        get(s, who, snapshot_id)
        states.reset(s, Snapshot, snapshot_id, status)


def update_status(rt: Runtime, who: Identity, snapshot_id: str, status: str,
                  progress: str | None) -> None:
    """os-update_snapshot_status: a status (and progress) reported by whoever makes the
    snapshot, within Cinder's allowed steps (`states.SNAPSHOT_STATUS_UPDATES`)."""
    with rt.db.write() as s:
        get(s, who, snapshot_id)
        try:
            states.update_snapshot_status(s, snapshot_id, status,
                                          {"progress": progress} if progress else None)
        except InvalidState as exc:
            allowed = states.SNAPSHOT_STATUS_UPDATES.get(str(exc.current))
            if allowed is None:
                raise Invalid(f"Snapshot status {exc.current} not allowed for "
                              f"update_snapshot_status") from exc
            if status not in allowed:
                raise Invalid(f"Provided snapshot status {status} not allowed for snapshot "
                              f"with status {exc.current}.") from exc
            raise


def list_snapshots(rt: Runtime, who: Identity, params: ListParams, *, all_projects: bool,
                   like_allowed: bool) -> Page:
    with rt.db.read() as s:
        q = select(Snapshot)
        if not (all_projects and can_see_all(who)):
            q = q.where(Snapshot.project_id == who.project_id)
        elif params.filters.get("project_id"):
            q = q.where(Snapshot.project_id == params.filters["project_id"])
        q = filter_columns(q, params.filters, _COLUMN_FILTERS, like_allowed=like_allowed)
        for key, value in params.filters.items():
            # metadata always matches exactly, also written metadata~=
            if key == "metadata" or (key == "metadata~" and like_allowed):
                q = q.where(*has_metadata(value, SnapshotMetadata.snapshot_id, Snapshot.id,
                                          SnapshotMetadata.key, SnapshotMetadata.value))
        return paginate(s, Snapshot, q, params, sortable=SORTABLE,
                        nullable={"name": "", "updated_at": Snapshot.created_at})
