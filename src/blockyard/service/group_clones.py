"""Groups created from a group snapshot or from another group (3.14 create-from-src).

Accepting one inserts the new group and one volume per source member (``creating``, quota
taken), pins every source (the member snapshots or the member volumes) and hands all of it to
one durable task, which makes the copies one after the other. A copy that fails removes every
volume the task made and the group ends ``error`` with no member: all or nothing, also across
`kill -9` (a restart re-runs the task; the driver calls are idempotent).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from blockyard import failpoints, states
from blockyard.db.models import (
    Group,
    GroupSnapshot,
    GroupVolumeType,
    Snapshot,
    Volume,
    utcnow,
)
from blockyard.errors import Invalid, InvalidState
from blockyard.model import VolumeRef
from blockyard.service import group_snapshots, groups, quotas, records, services, tasks
from blockyard.service.identity import Identity
from blockyard.service.runtime import Runtime
from blockyard.service.volume_ops import (
    insert_volume,
    model_values,
    new_volume,
    snapshot_ref,
    volume_ref,
)
from blockyard.service.volumes import COPYABLE
from blockyard.states import GroupStatus, SnapshotStatus, VolumeStatus


@dataclass(frozen=True)
class _Source:
    """One member to copy: from a snapshot of a group snapshot or from a source volume."""

    volume: Volume
    snapshot_id: str | None = None
    size: int = 0


def _sources_from_snapshot(s: Session, who: Identity,
                           group_snapshot_id: str) -> tuple[Group, GroupSnapshot, list[_Source]]:
    gs = group_snapshots.get(s, who, group_snapshot_id)
    source_group = s.get(Group, gs.group_id)
    assert source_group is not None  # a group with group snapshots cannot be deleted
    try:
        states.begin(s, GroupSnapshot, gs.id, "clone")
    except InvalidState as exc:
        raise Invalid(f"Invalid GroupSnapshot: GroupSnapshot {gs.id} status must be "
                      f"available to create a group from it, but current status is: "
                      f"{exc.current}.") from exc
    snaps = s.execute(select(Snapshot).where(Snapshot.group_snapshot_id == gs.id)
                      .order_by(Snapshot.volume_id)).scalars().all()
    if not snaps:
        raise Invalid("Invalid Group: Group snapshot is empty. No group will be created.")
    out = []
    for snap in snaps:
        try:
            states.pin(s, Snapshot, snap.id, (SnapshotStatus.AVAILABLE,), "create a group from")
        except InvalidState as exc:
            raise Invalid(f"Invalid snapshot: Snapshot {snap.id} of the group snapshot must be "
                          f"available, but current status is: {exc.current}.") from exc
        parent = s.get(Volume, snap.volume_id)
        assert parent is not None
        out.append(_Source(parent, snap.id, snap.size))
    return source_group, gs, out


def _sources_from_group(s: Session, who: Identity,
                        source_group_id: str) -> tuple[Group, list[_Source]]:
    source = groups.get(s, who, source_group_id)
    try:
        states.begin(s, Group, source.id, "clone")
    except InvalidState as exc:
        raise Invalid(f"Invalid Group: Source group {source.id} status must be available, "
                      f"but current status is: {exc.current}.") from exc
    vols = s.execute(select(Volume).where(Volume.group_id == source.id)
                     .order_by(Volume.id)).scalars().all()
    if not vols:
        raise Invalid("Invalid Group: Source Group is empty. No group will be created.")
    for v in vols:
        try:
            states.pin(s, Volume, v.id, COPYABLE, "clone")
        except InvalidState as exc:
            raise groups.invalid_volume(f"Volume {v.id} of the source group must be available or "
                                  f"in-use, but current status is: {exc.current}.") from exc
    return source, [_Source(v, None, v.size) for v in vols]


def create_from_src(rt: Runtime, who: Identity, *, name: str | None, description: str | None,
                    group_snapshot_id: str | None, source_group_id: str | None) -> Group:
    """Accept a group cloned from a group snapshot or a group: the group and one volume per
    source member are inserted `creating`, owned by one task that makes them all."""
    new_id = str(uuid.uuid4())
    with rt.db.write() as s:
        if group_snapshot_id is not None:
            template, gs, sources = _sources_from_snapshot(s, who, group_snapshot_id)
            group_type_id = gs.group_type_id
        else:
            assert source_group_id is not None
            template, sources = _sources_from_group(s, who, source_group_id)
            group_type_id = template.group_type_id
        services.assert_not_frozen(s, template.backend)
        deltas: dict[str, int] = {"groups": 1}
        type_names = [records.type_name(s, src.volume.volume_type_id) for src in sources]
        for src, type_name in zip(sources, type_names, strict=True):
            for k, d in quotas.volume_deltas(type_name, 1, src.size).items():
                deltas[k] = deltas.get(k, 0) + d
        quotas.consume(s, rt.config.quotas, who.project_id, deltas)
        task = tasks.enqueue(s, "create_group_from_src", template.backend, new_id)
        now = utcnow()
        group = Group(id=new_id, project_id=who.project_id, user_id=who.user_id, name=name,
                      description=description, status=GroupStatus.CREATING,
                      group_type_id=group_type_id,
                      availability_zone=template.availability_zone, backend=template.backend,
                      group_snapshot_id=group_snapshot_id, source_group_id=source_group_id,
                      task_id=task.id, created_at=now,
                      type_items=[GroupVolumeType(volume_type_id=t, position=i)
                                  for i, t in enumerate(template.volume_type_ids)])
        s.add(group)
        s.flush()
        for src, type_name in zip(sources, type_names, strict=True):
            v = src.volume
            insert_volume(s, new_volume(
                project_id=who.project_id, user_id=who.user_id, size=src.size,
                status=VolumeStatus.CREATING, availability_zone=v.availability_zone,
                volume_type_id=v.volume_type_id, type_name=type_name, backend=v.backend,
                snapshot_id=src.snapshot_id, source_volid=None if src.snapshot_id else v.id,
                bootable=v.bootable, multiattach=v.multiattach, created_at=now,
                group_id=new_id), task.id)
    tasks.start(rt, task)
    return group


def _copy_refs(rt: Runtime, task_id: int) -> list[tuple[str, Volume, Any]]:
    """(backend, new volume, source ref) of each member a clone task makes."""
    out: list[tuple[str, Volume, Any]] = []
    with rt.db.read() as s:
        for v in s.execute(select(Volume).where(Volume.task_id == task_id)
                           .order_by(Volume.id)).scalars():
            if v.snapshot_id is not None:
                snap = s.get(Snapshot, v.snapshot_id)
                assert snap is not None
                parent = s.get(Volume, snap.volume_id)
                assert parent is not None
                out.append((v.backend, v, snapshot_ref(snap, parent)))
            else:
                assert v.source_volid is not None
                src = s.get(Volume, v.source_volid)
                assert src is not None
                out.append((v.backend, v, volume_ref(src)))
    return out


def _delete_volumes(rt: Runtime, refs: list[tuple[str, VolumeRef]]) -> None:
    groups.remove_each(rt, refs, lambda driver, ref: driver.delete_volume(ref),
                       "volume of a failed group clone")


def _run_create_from_src(rt: Runtime, task: tasks.TaskView) -> dict[str, dict[str, Any]]:
    members = _copy_refs(rt, task.id)
    made: dict[str, dict[str, Any]] = {}
    try:
        for i, (backend, v, source) in enumerate(members):
            if i:
                failpoints.hit("create_group_from_src.between_members")
            driver = rt.backend(backend).driver
            ref = VolumeRef(id=v.id, size_gb=v.size)
            if v.snapshot_id is not None:
                made[v.id] = model_values(driver.create_volume_from_snapshot(ref, source))
            else:
                made[v.id] = model_values(driver.create_cloned_volume(ref, source))
    except Exception:
        _delete_volumes(rt, [(b, VolumeRef(id=v.id, size_gb=v.size)) for b, v, _ in members])
        raise
    return made


def _settle_create_from_src(s: Session, rt: Runtime, task: tasks.TaskView, result: Any,
                            error: BaseException | None) -> tasks.FollowUp | None:
    owned = s.execute(select(Volume.id, Volume.size, Volume.backend, Volume.snapshot_id,
                             Volume.source_volid).where(Volume.task_id == task.id)).all()
    for row in owned:
        if row.snapshot_id is not None:
            states.unpin(s, Snapshot, row.snapshot_id)
        elif row.source_volid is not None:
            states.unpin(s, Volume, row.source_volid)
    if error is None:
        for row in owned:
            states.finish(s, Volume, row.id, "create", task_id=task.id,
                          values=(result or {}).get(row.id) or None)
        states.finish(s, Group, task.resource_id, "create", task_id=task.id)
        return None
    # all or nothing: no member survives a failed clone; the group stays, in error
    refs = [(row.backend, VolumeRef(id=row.id, size_gb=row.size)) for row in owned]
    groups.release_volumes(s, rt, task.id)
    states.fail(s, Group, task.resource_id, "create", task_id=task.id)
    return lambda: _delete_volumes(rt, refs)


tasks.register("create_group_from_src",
               tasks.Handler(_run_create_from_src, _settle_create_from_src))
