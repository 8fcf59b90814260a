"""Group snapshots (3.14): a snapshot of every member volume of a group, taken together.

Accepting one inserts the group snapshot and one Snapshot row per member (``creating``,
``group_snapshot_id`` set, quota taken) and pins every member volume, all owned by one durable
task. The task snapshots the members one after the other; if any fails it removes those
already made and the group snapshot ends ``error`` with no member left. So a group snapshot is
all or nothing, also across `kill -9`: a restart re-runs the task (the driver calls are
idempotent), and an abandoned task settles as a failure that removes every member.
"""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from blockyard import failpoints, states
from blockyard.db.models import Group, GroupSnapshot, Snapshot, Volume, utcnow
from blockyard.errors import Invalid, InvalidState, NotFound
from blockyard.model import SnapshotRef
from blockyard.service import groups, quotas, records, services, tasks
from blockyard.service.identity import Identity, authorize, can_see_all
from blockyard.service.listing import ListParams, Page, filter_columns, paginate
from blockyard.service.runtime import Runtime
from blockyard.service.volume_ops import snapshot_ref
from blockyard.service.volumes import COPYABLE
from blockyard.states import GroupSnapshotStatus, SnapshotStatus

SORTABLE = {"created_at": "created_at", "updated_at": "updated_at", "id": "id", "name": "name",
            "status": "status", "group_id": "group_id", "project_id": "project_id"}


def get(session: Session, who: Identity, group_snapshot_id: str) -> GroupSnapshot:
    gs = session.get(GroupSnapshot, group_snapshot_id)
    if gs is None:
        raise NotFound("GroupSnapshot", group_snapshot_id,
                       f"GroupSnapshot {group_snapshot_id} could not be found.")
    authorize(who, "group:get_group_snapshot", gs.project_id,
              hidden=NotFound("GroupSnapshot", group_snapshot_id,
                              f"GroupSnapshot {group_snapshot_id} could not be found."))
    return gs


def load(rt: Runtime, who: Identity, group_snapshot_id: str) -> GroupSnapshot:
    with rt.db.read() as s:
        return get(s, who, group_snapshot_id)


def list_group_snapshots(rt: Runtime, who: Identity, params: ListParams, *,
                         all_projects: bool, like_allowed: bool) -> Page:
    query = select(GroupSnapshot)
    if not (all_projects and can_see_all(who)):
        query = query.where(GroupSnapshot.project_id == who.project_id)
    query = filter_columns(query, params.filters, {
        "name": GroupSnapshot.name, "status": GroupSnapshot.status,
        "group_id": GroupSnapshot.group_id, "project_id": GroupSnapshot.project_id,
        "description": GroupSnapshot.description,
    }, like_allowed=like_allowed)
    with rt.db.read() as s:
        return paginate(s, GroupSnapshot, query, params, sortable=SORTABLE,
                        nullable={"name": "", "updated_at": GroupSnapshot.created_at})


# ---------------------------------------------------------------------------- create


def create(rt: Runtime, who: Identity, group_id: str, *, name: str | None,
           description: str | None) -> GroupSnapshot:
    """Accept a group snapshot: pin every member, insert it and its member snapshots."""
    gs_id = str(uuid.uuid4())
    with rt.db.write() as s:
        group = groups.get(s, who, group_id)
        services.assert_not_frozen(s, group.backend)
        try:
            states.begin(s, Group, group.id, "snapshot")
        except InvalidState as exc:
            raise Invalid(f"Invalid Group: Group {group.id} status must be available to take a "
                          f"group snapshot, but current status is: {exc.current}.") from exc
        members = s.execute(select(Volume).where(Volume.group_id == group.id)
                            .order_by(Volume.id)).scalars().all()
        deltas: dict[str, int] = {}
        for v in members:
            for k, d in quotas.snapshot_deltas(records.type_name(s, v.volume_type_id), 1,
                                               v.size).items():
                deltas[k] = deltas.get(k, 0) + d
        if deltas:
            quotas.consume(s, rt.config.quotas, who.project_id, deltas)
        for v in members:
            try:
                states.pin(s, Volume, v.id, COPYABLE, "snapshot")
            except InvalidState as exc:
                raise Invalid(f"Invalid volume: Volume {v.id} status must be available or "
                              f"in-use to be snapshotted with its group, but current status "
                              f"is: {exc.current}.") from exc
        task = tasks.enqueue(s, "create_group_snapshot", group.backend, gs_id)
        now = utcnow()
        gs = GroupSnapshot(id=gs_id, project_id=who.project_id, user_id=who.user_id,
                           group_id=group.id, group_type_id=group.group_type_id, name=name,
                           description=description, status=GroupSnapshotStatus.CREATING,
                           task_id=task.id,
                           created_at=now)
        s.add(gs)
        for v in members:
            s.add(Snapshot(id=str(uuid.uuid4()), project_id=who.project_id,
                           user_id=who.user_id, volume_id=v.id, name=name,
                           description=description, size=v.size, status=SnapshotStatus.CREATING,
                           progress="0%", volume_type_id=v.volume_type_id, task_id=task.id,
                           pins=0, group_snapshot_id=gs_id, created_at=now,
                           metadata_items=[]))
        s.flush()
    tasks.start(rt, task)
    return gs


def _members(rt: Runtime, task_id: int) -> list[tuple[str, SnapshotRef]]:
    """(backend, ref) of every member snapshot task `task_id` owns, in a stable order."""
    with rt.db.read() as s:
        return _member_refs(s, task_id)


def _member_refs(s: Session, task_id: int) -> list[tuple[str, SnapshotRef]]:
    out = []
    for snap in s.execute(select(Snapshot).where(Snapshot.task_id == task_id)
                          .order_by(Snapshot.volume_id)).scalars():
        volume = s.get(Volume, snap.volume_id)
        assert volume is not None  # pinned or owned: it cannot go away
        out.append((volume.backend, snapshot_ref(snap, volume)))
    return out


def _delete_snapshots(rt: Runtime, members: list[tuple[str, SnapshotRef]]) -> None:
    groups.remove_each(rt, members, lambda driver, ref: driver.delete_snapshot(ref),
                       "snapshot of a failed group snapshot")


def _run_create(rt: Runtime, task: tasks.TaskView) -> dict[str, str | None]:
    members = _members(rt, task.id)
    locations: dict[str, str | None] = {}
    try:
        for i, (backend, ref) in enumerate(members):
            if i:
                failpoints.hit("create_group_snapshot.between_members")
            made = rt.backend(backend).driver.create_snapshot(ref)
            locations[ref.id] = made.provider_location if made is not None else None
    except Exception:
        _delete_snapshots(rt, members)
        raise
    return locations


def _release_members(s: Session, rt: Runtime, task_id: int) -> None:
    """Remove the member snapshot rows task `task_id` owns, and their quota usage."""
    rows = s.execute(select(Snapshot.id, Snapshot.project_id, Snapshot.size,
                            Snapshot.volume_type_id).where(Snapshot.task_id == task_id)).all()
    for r in rows:
        gone = s.execute(delete(Snapshot).where(Snapshot.id == r.id,
                                                Snapshot.task_id == task_id)
                         .execution_options(synchronize_session=False))
        if gone.rowcount == 1:  # type: ignore[attr-defined]
            quotas.consume(s, rt.config.quotas, r.project_id,
                           quotas.snapshot_deltas(records.type_name(s, r.volume_type_id), -1,
                                                  -r.size))


def _settle_create(s: Session, rt: Runtime, task: tasks.TaskView, result: Any,
                   error: BaseException | None) -> tasks.FollowUp | None:
    members = s.execute(select(Snapshot.id, Snapshot.volume_id)
                        .where(Snapshot.task_id == task.id)).all()
    for m in members:
        states.unpin(s, Volume, m.volume_id)
    if error is None:
        for m in members:
            values: dict[str, Any] = {"progress": "100%"}
            location = (result or {}).get(m.id)
            if location is not None:
                values["provider_location"] = location
            states.finish(s, Snapshot, m.id, "create", task_id=task.id, values=values)
        states.finish(s, GroupSnapshot, task.resource_id, "create", task_id=task.id)
        return None
    # all or nothing: the members go (the run removed what it made; the follow-up makes sure,
    # e.g. for a task abandoned after too many interrupted attempts)
    refs = _member_refs(s, task.id)
    _release_members(s, rt, task.id)
    states.fail(s, GroupSnapshot, task.resource_id, "create", task_id=task.id)
    return lambda: _delete_snapshots(rt, refs)


tasks.register("create_group_snapshot", tasks.Handler(_run_create, _settle_create))


# ---------------------------------------------------------------------------- delete


def delete_group_snapshot(rt: Runtime, who: Identity, group_snapshot_id: str) -> None:
    """Accept a delete: the group snapshot and every member snapshot become deleting."""
    with rt.db.write() as s:
        gs = get(s, who, group_snapshot_id)
        backend = s.execute(select(Group.backend).where(Group.id == gs.group_id)).scalar_one()
        services.assert_not_frozen(s, backend)
        task = tasks.enqueue(s, "delete_group_snapshot", backend, gs.id)
        try:
            states.begin(s, GroupSnapshot, gs.id, "delete", task_id=task.id,
                         where=(~groups.group_snapshot_in_use(gs.id),))
        except InvalidState as exc:
            raise Invalid("Invalid GroupSnapshot: GroupSnapshot status must be available or "
                          "error, and no Group can be currently using it as source for its "
                          f"creation (current status: {exc.current}).") from exc
        for sid in s.execute(select(Snapshot.id).where(Snapshot.group_snapshot_id == gs.id)
                             ).scalars().all():
            try:
                states.begin(s, Snapshot, sid, "force_delete", task_id=task.id,
                             where=(Snapshot.pins == 0,))
            except InvalidState as exc:
                raise Invalid(f"Invalid GroupSnapshot: its snapshot {sid} is in use (status "
                              f"{exc.current}); try again later.") from exc
    tasks.start(rt, task)


def _run_delete(rt: Runtime, task: tasks.TaskView) -> None:
    for backend, ref in _members(rt, task.id):
        rt.backend(backend).driver.delete_snapshot(ref)


def _settle_delete(s: Session, rt: Runtime, task: tasks.TaskView, result: Any,
                   error: BaseException | None) -> None:
    if error is not None:
        for sid in s.execute(select(Snapshot.id).where(Snapshot.task_id == task.id)).scalars():
            states.fail(s, Snapshot, sid, "delete", task_id=task.id)
        states.fail(s, GroupSnapshot, task.resource_id, "delete", task_id=task.id)
        return
    _release_members(s, rt, task.id)
    s.execute(delete(GroupSnapshot).where(GroupSnapshot.id == task.resource_id,
                                          GroupSnapshot.task_id == task.id)
              .execution_options(synchronize_session=False))


tasks.register("delete_group_snapshot", tasks.Handler(_run_delete, _settle_delete))


def reset_status(rt: Runtime, who: Identity, group_snapshot_id: str, status: str) -> None:
    with rt.db.write() as s:
        get(s, who, group_snapshot_id)
        states.reset(s, GroupSnapshot, group_snapshot_id, status)
