"""Generic volume groups (3.13): create, membership, delete with the member volumes, create
from a group snapshot or from another group (3.14), reset-status (3.20).

A group lives on one backend (Cinder's group host): its members are placed there, and a
volume joins only from there. A plain group needs no backend work, so it is inserted
``available``. Deleting a group with its volumes and cloning a whole group are durable tasks
(blockyard.service.tasks) that own the group row and every member row they touch: a restart
finishes them, and a clone that fails removes every volume it made (all or nothing).
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from typing import Any

from sqlalchemy import delete, exists, insert, select, update
from sqlalchemy.orm import Session

from blockyard import failpoints, states
from blockyard.backends.base import VolumeRef
from blockyard.db.models import (
    Base,
    Group,
    GroupSnapshot,
    GroupVolumeType,
    Snapshot,
    Volume,
    VolumeType,
    utcnow,
)
from blockyard.errors import Invalid, InvalidState, NotFound
from blockyard.service import group_types, quotas, records, scheduler, tasks
from blockyard.service import types as vtypes
from blockyard.service.identity import Identity, authorize
from blockyard.service.listing import ListParams, Page, like, paginate
from blockyard.service.runtime import Backend, Runtime
from blockyard.service.volumes import COPYABLE, model_values, snapshot_ref, volume_ref
from blockyard.states import GroupStatus as G
from blockyard.states import SnapshotStatus as S
from blockyard.states import VolumeStatus as V

log = logging.getLogger(__name__)

#: statuses a volume may leave or join a group in (Cinder's VALID_*_GROUP_STATUS)
REMOVABLE = (V.AVAILABLE, V.IN_USE, V.ERROR, V.ERROR_DELETING)
ADDABLE = (V.AVAILABLE, V.IN_USE)

SORTABLE = {"created_at": "created_at", "updated_at": "updated_at", "id": "id", "name": "name",
            "status": "status", "availability_zone": "availability_zone",
            "group_type_id": "group_type_id", "project_id": "project_id"}

_INSERT_VOLUME = insert(Base.metadata.tables["volumes"])


def not_found(group_id: str) -> NotFound:
    return NotFound("Group", group_id, f"Group {group_id} could not be found.")


def get(session: Session, who: Identity, group_id: str) -> Group:
    group = session.get(Group, group_id)
    if group is None:
        raise not_found(group_id)
    authorize(who, "group:get", group.project_id)
    return group


def load(rt: Runtime, who: Identity, group_id: str) -> Group:
    with rt.db.read() as s:
        return get(s, who, group_id)


def member_ids(rt: Runtime, who: Identity, group_ids: list[str]) -> dict[str, list[str]]:
    """The volumes of each group (3.25 ``list_volume``), oldest first."""
    out: dict[str, list[str]] = {g: [] for g in group_ids}
    if not group_ids:
        return out
    with rt.db.reading() as conn:
        for vid, gid in conn.execute(select(Volume.id, Volume.group_id)
                                     .where(Volume.group_id.in_(group_ids))
                                     .order_by(Volume.created_at, Volume.id)):
            out[str(gid)].append(vid)
    return out


def list_groups(rt: Runtime, who: Identity, params: ListParams, *, all_projects: bool,
                like_allowed: bool) -> Page:
    query = select(Group)
    if not (all_projects and who.is_admin):
        query = query.where(Group.project_id == who.project_id)
    for key, value in params.filters.items():
        base, approx = (key[:-1], True) if key.endswith("~") else (key, False)
        if approx and not like_allowed:
            continue
        column = {"name": Group.name, "status": Group.status, "group_type": Group.group_type_id,
                  "group_type_id": Group.group_type_id, "project_id": Group.project_id,
                  "availability_zone": Group.availability_zone,
                  "description": Group.description}.get(base)
        if column is not None:
            query = query.where(like(column, value) if approx else column == value)
    with rt.db.read() as s:
        return paginate(s, Group, query, params, sortable=SORTABLE,
                        nullable={"name": "", "updated_at": Group.created_at})


# ---------------------------------------------------------------------------- create


def _place(rt: Runtime, vts: list[VolumeType], zone: str | None) -> Backend:
    """The backend of a new group: one that every volume type of the group may use."""
    backend = scheduler.pick(rt, vts[0], 0, zone)
    for vt in vts[1:]:
        wanted = vt.specs.get("volume_backend_name")
        if wanted and wanted != backend.config.volume_backend_name:
            raise Invalid("Invalid input received: the group's volume types ask for different "
                          "backends (volume_backend_name), but a group's volumes live on one "
                          "backend.")
    return backend


def create(rt: Runtime, who: Identity, *, name: str | None, description: str | None,
           group_type: str, volume_types: list[str], availability_zone: str | None) -> Group:
    with rt.db.read() as s:
        gt = group_types.by_id_or_name(s, who, group_type)
        vts: list[VolumeType] = []
        for ident in volume_types:
            vt = vtypes.get_type(s, ident, who)
            if vt.id not in {t.id for t in vts}:
                vts.append(vt)
    backend = _place(rt, vts, availability_zone)
    group = Group(id=str(uuid.uuid4()), project_id=who.project_id, user_id=who.user_id,
                  name=name, description=description, status=G.AVAILABLE,
                  group_type_id=gt.id, availability_zone=backend.config.availability_zone,
                  backend=backend.name, created_at=utcnow(),
                  type_items=[GroupVolumeType(volume_type_id=vt.id, position=i)
                              for i, vt in enumerate(vts)])
    with rt.db.write() as s:
        quotas.consume(s, rt.config.quotas, who.project_id, {"groups": 1})
        s.add(group)
        s.flush()
    return group


# ---------------------------------------------------------------------------- update


def _invalid_volume(message: str) -> Invalid:
    return Invalid(f"Invalid volume: {message}")


def _remove_member(s: Session, group: Group, volume_id: str) -> None:
    done = s.execute(
        update(Volume)
        .where(Volume.id == volume_id, Volume.group_id == group.id, Volume.status.in_(REMOVABLE),
               Volume.task_id.is_(None))
        .values(group_id=None, updated_at=utcnow())
        .execution_options(synchronize_session=False))
    if done.rowcount == 1:  # type: ignore[attr-defined]
        return
    row = s.execute(select(Volume.group_id, Volume.status).where(Volume.id == volume_id)).first()
    if row is None or row.group_id != group.id:
        raise _invalid_volume(f"Cannot remove volume {volume_id} from group {group.id} because "
                              f"it is not in the group.")
    raise _invalid_volume(f"Cannot remove volume {volume_id} from group {group.id} because "
                          f"volume is in an invalid state: {row.status}. Valid states are: "
                          f"{', '.join(REMOVABLE)}.")


def _add_member(s: Session, who: Identity, group: Group, volume_id: str) -> None:
    done = s.execute(
        update(Volume)
        .where(Volume.id == volume_id, Volume.group_id.is_(None),
               Volume.project_id == group.project_id,
               Volume.volume_type_id.in_(group.volume_type_ids), Volume.status.in_(ADDABLE),
               Volume.backend == group.backend, Volume.task_id.is_(None),
               states.not_migrating())
        .values(group_id=group.id, updated_at=utcnow())
        .execution_options(synchronize_session=False))
    if done.rowcount == 1:  # type: ignore[attr-defined]
        return
    v = s.get(Volume, volume_id)
    prefix = f"Cannot add volume {volume_id} to group {group.id}"
    if v is None or not (who.is_admin or v.project_id == who.project_id):
        raise _invalid_volume(f"{prefix} because volume cannot be found.")
    if v.group_id is not None:
        raise _invalid_volume(f"{prefix} because it is already in group {v.group_id}.")
    if v.project_id != group.project_id:
        raise _invalid_volume(f"{prefix} as they belong to different projects.")
    if v.volume_type_id not in group.volume_type_ids:
        raise _invalid_volume(f"{prefix} because volume type {v.volume_type_id} is not "
                              f"supported by the group.")
    if v.status not in ADDABLE:
        raise _invalid_volume(f"{prefix} because volume is in an invalid state: {v.status}. "
                              f"Valid states are: {', '.join(ADDABLE)}.")
    if v.backend != group.backend:
        raise _invalid_volume("Volume is not local to this node.")
    raise _invalid_volume(f"{prefix} because a task is working on the volume; try again.")


def update_group(rt: Runtime, who: Identity, group_id: str, *, name: str | None,
                 description: str | None, add: list[str], remove: list[str]) -> None:
    """Rename, describe, add and remove members: all of it in one transaction, or none."""
    both = [vid for vid in add if vid in remove]
    if both:
        raise _invalid_volume(f"UUIDs {both} are in both add and remove volume list.")
    with rt.db.write() as s:
        group = get(s, who, group_id)
        if name == group.name:
            name = None
        if description == group.description:
            description = None
        members = set(s.execute(select(Volume.id).where(Volume.group_id == group.id)).scalars())
        add = [vid for vid in dict.fromkeys(add) if vid not in members]
        remove = list(dict.fromkeys(remove))
        if name is None and description is None and not add and not remove:
            raise Invalid(f"Invalid Group: Cannot update group {group.id} because no valid "
                          f"name, description, add_volumes, or remove_volumes were provided.")
        if add or remove:
            try:
                states.begin(s, Group, group.id, "update")
            except InvalidState as exc:
                raise Invalid(f"Invalid Group: Group status must be available, but current "
                              f"status is: {exc.current}.") from exc
            for vid in remove:
                _remove_member(s, group, vid)
            for vid in add:
                _add_member(s, who, group, vid)
        values: dict[str, Any] = {"updated_at": utcnow()}
        if name is not None:
            values["name"] = name
        if description is not None:
            values["description"] = description
        s.execute(update(Group).where(Group.id == group.id).values(**values)
                  .execution_options(synchronize_session=False))


def reset_status(rt: Runtime, who: Identity, group_id: str, status: str) -> None:
    with rt.db.write() as s:
        get(s, who, group_id)
        states.reset(s, Group, group_id, status)


# ---------------------------------------------------------------------------- delete


def _creating_from(column: Any, ident: str) -> Any:
    """A group is being created from `ident` (a source group or a group snapshot)."""
    return exists().where(column == ident, Group.status == G.CREATING,
                          Group.task_id.is_not(None))


def delete_group(rt: Runtime, who: Identity, group_id: str, *, delete_volumes: bool) -> None:
    """Accept a delete: the group (and with `delete_volumes` each member) becomes deleting."""
    with rt.db.write() as s:
        group = get(s, who, group_id)
        if s.execute(select(exists().where(GroupSnapshot.group_id == group.id))).scalar():
            raise Invalid("Invalid Group: Group has existing snapshots.")
        members = s.execute(select(Volume.id, Volume.attach_status)
                            .where(Volume.group_id == group.id).order_by(Volume.id)).all()
        if members and not delete_volumes:
            raise Invalid(f"Invalid Group: Group {group.id} still contains volumes. The "
                          f"delete-volumes flag is required to delete it.")
        if any(m.attach_status != states.AttachStatus.DETACHED for m in members):
            raise Invalid(f"Invalid Group: Volume in group {group.id} is attached. Need to "
                          f"detach first.")
        if members and s.execute(select(exists().where(
                Snapshot.volume_id.in_([m.id for m in members])))).scalar():
            raise Invalid("Invalid Group: Volume in group still has dependent snapshots.")
        task = tasks.enqueue(s, "delete_group", group.backend, group.id)
        try:
            states.begin(
                s, Group, group.id, "delete_with_volumes" if delete_volumes else "delete",
                task_id=task.id,
                where=(~exists().where(GroupSnapshot.group_id == group.id),
                       ~_creating_from(Group.source_group_id, group.id)))
        except InvalidState as exc:
            reason = ("Group status must be available or error and must not have dependent "
                      "group snapshots")
            raise Invalid(f"Invalid Group: Cannot delete group {group.id}. {reason}, and it "
                          f"cannot be the source for an ongoing group or group snapshot "
                          f"creation (current status: {exc.current}).") from exc
        for m in members:
            try:
                states.begin(s, Volume, m.id, "delete", task_id=task.id,
                             where=(Volume.group_id == group.id, Volume.pins == 0,
                                    Volume.attach_status == states.AttachStatus.DETACHED))
            except InvalidState as exc:
                raise Invalid(f"Invalid Group: Cannot delete group {group.id}: its volume "
                              f"{m.id} cannot be deleted now (status {exc.current}).") from exc
    tasks.start(rt, task)


def _owned_volumes(rt: Runtime, task_id: int) -> list[Volume]:
    with rt.db.read() as s:
        return list(s.execute(select(Volume).where(Volume.task_id == task_id)
                              .order_by(Volume.id)).scalars())


def _run_delete(rt: Runtime, task: tasks.TaskView) -> None:
    for v in _owned_volumes(rt, task.id):
        driver = rt.backend(v.backend).driver
        ref = volume_ref(v)
        driver.remove_export(ref)
        driver.delete_volume(ref)


def _release_volumes(s: Session, rt: Runtime, task_id: int) -> None:
    """Remove the volume rows task `task_id` owns, and their quota usage."""
    rows = s.execute(select(Volume.id, Volume.project_id, Volume.size, Volume.volume_type_id)
                     .where(Volume.task_id == task_id)).all()
    for r in rows:
        gone = s.execute(delete(Volume).where(Volume.id == r.id, Volume.task_id == task_id)
                         .execution_options(synchronize_session=False))
        if gone.rowcount == 1:  # type: ignore[attr-defined]
            quotas.consume(s, rt.config.quotas, r.project_id,
                           quotas.volume_deltas(records.type_name(s, r.volume_type_id), -1,
                                                -r.size))


def _settle_delete(s: Session, rt: Runtime, task: tasks.TaskView, result: Any,
                   error: BaseException | None) -> None:
    group_id = task.resource_id
    if error is not None:
        for vid in s.execute(select(Volume.id).where(Volume.task_id == task.id)).scalars():
            states.fail(s, Volume, vid, "delete", task_id=task.id)
        states.fail(s, Group, group_id, "delete", task_id=task.id)
        return
    _release_volumes(s, rt, task.id)
    project = s.execute(select(Group.project_id).where(Group.id == group_id,
                                                       Group.task_id == task.id)).scalar()
    if project is None:
        return
    s.execute(delete(GroupVolumeType).where(GroupVolumeType.group_id == group_id))
    s.execute(delete(Group).where(Group.id == group_id, Group.task_id == task.id)
              .execution_options(synchronize_session=False))
    quotas.consume(s, rt.config.quotas, project, {"groups": -1})


tasks.register("delete_group", tasks.Handler(_run_delete, _settle_delete))


# ---------------------------------------------------------------------------- create from src


@dataclass(frozen=True)
class _Source:
    """One member to copy: from a snapshot of a group snapshot or from a source volume."""

    volume: Volume
    snapshot_id: str | None = None
    size: int = 0


def _sources_from_snapshot(s: Session, who: Identity,
                           group_snapshot_id: str) -> tuple[Group, GroupSnapshot, list[_Source]]:
    gs = s.get(GroupSnapshot, group_snapshot_id)
    if gs is None:
        raise NotFound("GroupSnapshot", group_snapshot_id,
                       f"GroupSnapshot {group_snapshot_id} could not be found.")
    authorize(who, "group_snapshot:get", gs.project_id)
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
            states.pin(s, Snapshot, snap.id, (S.AVAILABLE,), "create a group from")
        except InvalidState as exc:
            raise Invalid(f"Invalid snapshot: Snapshot {snap.id} of the group snapshot must be "
                          f"available, but current status is: {exc.current}.") from exc
        parent = s.get(Volume, snap.volume_id)
        assert parent is not None
        out.append(_Source(parent, snap.id, snap.size))
    return source_group, gs, out


def _sources_from_group(s: Session, who: Identity,
                        source_group_id: str) -> tuple[Group, list[_Source]]:
    source = get(s, who, source_group_id)
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
            raise _invalid_volume(f"Volume {v.id} of the source group must be available or "
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
        deltas: dict[str, int] = {"groups": 1}
        for src in sources:
            type_name = records.type_name(s, src.volume.volume_type_id)
            for k, d in quotas.volume_deltas(type_name, 1, src.size).items():
                deltas[k] = deltas.get(k, 0) + d
        quotas.consume(s, rt.config.quotas, who.project_id, deltas)
        task = tasks.enqueue(s, "create_group_from_src", template.backend, new_id)
        now = utcnow()
        group = Group(id=new_id, project_id=who.project_id, user_id=who.user_id, name=name,
                      description=description, status=G.CREATING,
                      group_type_id=group_type_id,
                      availability_zone=template.availability_zone, backend=template.backend,
                      group_snapshot_id=group_snapshot_id, source_group_id=source_group_id,
                      task_id=task.id, created_at=now,
                      type_items=[GroupVolumeType(volume_type_id=t, position=i)
                                  for i, t in enumerate(template.volume_type_ids)])
        s.add(group)
        s.flush()
        for src in sources:
            v = src.volume
            s.connection().execute(_INSERT_VOLUME, {
                "id": str(uuid.uuid4()), "project_id": who.project_id, "user_id": who.user_id,
                "name": None, "description": None, "size": src.size, "status": V.CREATING,
                "previous_status": None, "attach_status": states.AttachStatus.DETACHED,
                "availability_zone": v.availability_zone, "volume_type_id": v.volume_type_id,
                "backend": v.backend, "snapshot_id": src.snapshot_id,
                "source_volid": None if src.snapshot_id else v.id, "bootable": v.bootable,
                "readonly": False, "multiattach": v.multiattach, "task_id": task.id,
                "pins": 0, "created_at": now, "updated_at": None, "provider_location": None,
                "provider_auth": None, "name_id": None, "migration_status": None,
                "group_id": new_id,
            })
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
    """Best-effort removal of backend volumes (idempotent; leftovers are swept at start)."""
    for backend, ref in refs:
        try:
            rt.backend(backend).driver.delete_volume(ref)
        except Exception:  # noqa: BLE001 - remove the others all the same
            log.exception("could not remove volume %s of a failed group clone", ref.id)


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
    _release_volumes(s, rt, task.id)
    states.fail(s, Group, task.resource_id, "create", task_id=task.id)
    return lambda: _delete_volumes(rt, refs)


tasks.register("create_group_from_src",
               tasks.Handler(_run_create_from_src, _settle_create_from_src))


def group_snapshot_in_use(group_snapshot_id: str) -> Any:
    """A group is being created from the group snapshot (it cannot be deleted meanwhile)."""
    return _creating_from(Group.group_snapshot_id, group_snapshot_id)

