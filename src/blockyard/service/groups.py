"""Generic volume groups (3.13): create, list, membership, delete with the member volumes,
reset-status (3.20). Groups cloned from a source live in `blockyard.service.group_clones`.

A group lives on one backend (Cinder's group host): its members are placed there, and a
volume joins only from there. A plain group needs no backend work, so it is inserted
``available``. Deleting a group with its volumes is a durable task (blockyard.service.tasks)
that owns the group row and every member row: a restart finishes it.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from sqlalchemy import delete, exists, select, update
from sqlalchemy.orm import Session

from blockyard import states
from blockyard.backends.base import VolumeDriver
from blockyard.db.models import (
    Group,
    GroupSnapshot,
    GroupVolumeType,
    Snapshot,
    Volume,
    VolumeType,
    utcnow,
)
from blockyard.errors import Invalid, InvalidState, NotFound
from blockyard.model import SnapshotRef, VolumeRef
from blockyard.service import group_types, quotas, records, scheduler, services, tasks
from blockyard.service import types as vtypes
from blockyard.service.identity import Identity, authorize, can_see_all
from blockyard.service.listing import ListParams, Page, filter_columns, paginate
from blockyard.service.runtime import Backend, Runtime
from blockyard.service.volume_ops import volume_ref
from blockyard.states import GroupStatus, VolumeStatus

log = logging.getLogger(__name__)

Ref = TypeVar("Ref", VolumeRef, SnapshotRef)

#: statuses a volume may leave or join a group in (Cinder's VALID_*_GROUP_STATUS)
REMOVABLE = (VolumeStatus.AVAILABLE, VolumeStatus.IN_USE, VolumeStatus.ERROR,
             VolumeStatus.ERROR_DELETING)
ADDABLE = (VolumeStatus.AVAILABLE, VolumeStatus.IN_USE)

SORTABLE = {"created_at": "created_at", "updated_at": "updated_at", "id": "id", "name": "name",
            "status": "status", "availability_zone": "availability_zone",
            "group_type_id": "group_type_id", "project_id": "project_id"}


def not_found(group_id: str) -> NotFound:
    return NotFound("Group", group_id, f"Group {group_id} could not be found.")


def get(session: Session, who: Identity, group_id: str) -> Group:
    group = session.get(Group, group_id)
    if group is None:
        raise not_found(group_id)
    authorize(who, "group:get", group.project_id, hidden=not_found(group_id))
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
    if not (all_projects and can_see_all(who)):
        query = query.where(Group.project_id == who.project_id)
    query = filter_columns(query, params.filters, {
        "name": Group.name, "status": Group.status, "group_type": Group.group_type_id,
        "group_type_id": Group.group_type_id, "project_id": Group.project_id,
        "availability_zone": Group.availability_zone, "description": Group.description,
    }, like_allowed=like_allowed)
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
                  name=name, description=description, status=GroupStatus.AVAILABLE,
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


def invalid_volume(message: str) -> Invalid:
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
        raise invalid_volume(f"Cannot remove volume {volume_id} from group {group.id} because "
                              f"it is not in the group.")
    raise invalid_volume(f"Cannot remove volume {volume_id} from group {group.id} because "
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
    if v is None or not (can_see_all(who) or v.project_id == who.project_id):
        raise invalid_volume(f"{prefix} because volume cannot be found.")
    if v.group_id is not None:
        raise invalid_volume(f"{prefix} because it is already in group {v.group_id}.")
    if v.project_id != group.project_id:
        raise invalid_volume(f"{prefix} as they belong to different projects.")
    if v.volume_type_id not in group.volume_type_ids:
        raise invalid_volume(f"{prefix} because volume type {v.volume_type_id} is not "
                              f"supported by the group.")
    if v.status not in ADDABLE:
        raise invalid_volume(f"{prefix} because volume is in an invalid state: {v.status}. "
                              f"Valid states are: {', '.join(ADDABLE)}.")
    if v.backend != group.backend:
        raise invalid_volume("Volume is not local to this node.")
    raise invalid_volume(f"{prefix} because a task is working on the volume; try again.")


def update_group(rt: Runtime, who: Identity, group_id: str, *, name: str | None,
                 description: str | None, add: list[str], remove: list[str]) -> None:
    """Rename, describe, add and remove members: all of it in one transaction, or none."""
    both = [vid for vid in add if vid in remove]
    if both:
        raise invalid_volume(f"UUIDs {both} are in both add and remove volume list.")
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


def creating_from(column: Any, ident: str) -> Any:
    """A group is being created from `ident` (a source group or a group snapshot)."""
    return exists().where(column == ident, Group.status == GroupStatus.CREATING,
                          Group.task_id.is_not(None))


def delete_group(rt: Runtime, who: Identity, group_id: str, *, delete_volumes: bool) -> None:
    """Accept a delete: the group (and with `delete_volumes` each member) becomes deleting."""
    with rt.db.write() as s:
        group = get(s, who, group_id)
        services.assert_not_frozen(s, group.backend)
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
                       ~creating_from(Group.source_group_id, group.id)))
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


def release_volumes(s: Session, rt: Runtime, task_id: int) -> None:
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
    release_volumes(s, rt, task.id)
    project = s.execute(select(Group.project_id).where(Group.id == group_id,
                                                       Group.task_id == task.id)).scalar()
    if project is None:
        return
    s.execute(delete(GroupVolumeType).where(GroupVolumeType.group_id == group_id))
    s.execute(delete(Group).where(Group.id == group_id, Group.task_id == task.id)
              .execution_options(synchronize_session=False))
    quotas.consume(s, rt.config.quotas, project, {"groups": -1})


tasks.register("delete_group", tasks.Handler(_run_delete, _settle_delete))


def group_snapshot_in_use(group_snapshot_id: str) -> Any:
    """A group is being created from the group snapshot (it cannot be deleted meanwhile)."""
    return creating_from(Group.group_snapshot_id, group_snapshot_id)


def remove_each(rt: Runtime, made: Sequence[tuple[str, Ref]],
                remove: Callable[[VolumeDriver, Ref], None], what: str) -> None:
    """Best-effort removal of what a failed group task made, as (backend, ref) pairs: one
    failure does not keep the others (removal is idempotent; leftovers are swept at start)."""
    for backend, ref in made:
        try:
            remove(rt.backend(backend).driver, ref)
        except Exception:  # noqa: BLE001 - remove the others all the same
            log.exception("could not remove %s %s", what, ref.id)
