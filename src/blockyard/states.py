"""Every status transition of volumes, snapshots, attachments, groups and group snapshots
(the status values themselves are named in the leaf module `blockyard.statuses`).

This is the only module that writes a ``status`` (or an attachment's ``attach_status``) column.
Each transition is one conditional update (compare-and-swap)::

    UPDATE volumes SET status = :busy, previous_status = status, task_id = :task
     WHERE id = :id AND status IN (:allowed...) AND task_id IS NULL [AND ...]

and the row count tells whether it won. A lost race raises `InvalidState`; nothing is ever
read, modified and written back.

A row that a durable task is working on carries that task's id in ``task_id``. Finishing or
failing a transition is conditional on the same task id, so an interrupted task that is re-run
after a restart completes its own transition and nobody else's, and an admin's reset-status
cannot pull a row out from under a running task.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import ColumnElement, CursorResult, case, exists, or_, select, update
from sqlalchemy.orm import Session

from blockyard.db.models import Attachment, Group, GroupSnapshot, Snapshot, Volume
from blockyard.errors import InvalidState, NotFound
from blockyard.statuses import ATTACH_RESET_STATUSES as ATTACH_RESET_STATUSES
from blockyard.statuses import GROUP_RESET_STATUSES as GROUP_RESET_STATUSES
from blockyard.statuses import GROUP_SNAPSHOT_RESET_STATUSES as GROUP_SNAPSHOT_RESET_STATUSES

# the vocabulary lives in a leaf module (the DB models and the compute agent name statuses
# too); it is re-exported here, where the tables that use it are
from blockyard.statuses import PREVIOUS as PREVIOUS
from blockyard.statuses import SNAPSHOT_RESET_STATUSES as SNAPSHOT_RESET_STATUSES
from blockyard.statuses import VOLUME_RESET_STATUSES as VOLUME_RESET_STATUSES
from blockyard.statuses import AttachStatus as AttachStatus
from blockyard.statuses import GroupSnapshotStatus as GroupSnapshotStatus
from blockyard.statuses import GroupStatus as GroupStatus
from blockyard.statuses import MigrationStatus as MigrationStatus
from blockyard.statuses import SnapshotStatus as SnapshotStatus
from blockyard.statuses import Transition as Transition
from blockyard.statuses import VolumeStatus as VolumeStatus

VOLUME_TRANSITIONS: dict[str, Transition] = {
    # a new row is inserted as `creating`; create only finishes or fails
    "create": Transition(
        (VolumeStatus.CREATING,), VolumeStatus.CREATING, VolumeStatus.AVAILABLE, VolumeStatus.ERROR
    ),
    "delete": Transition(
        (
            VolumeStatus.AVAILABLE,
            VolumeStatus.ERROR,
            VolumeStatus.ERROR_RESTORING,
            VolumeStatus.ERROR_EXTENDING,
            VolumeStatus.ERROR_MANAGING,
        ),
        VolumeStatus.DELETING,
        None,
        VolumeStatus.ERROR_DELETING,
    ),
    # force-delete also takes rows that are stuck half-way, `deleting` included (as Cinder,
    # which drops every status condition when forced); a delete whose task still runs is not
    # taken over, since `begin` only moves rows that no task owns
    "force_delete": Transition(
        tuple(VolumeStatus), VolumeStatus.DELETING, None, VolumeStatus.ERROR_DELETING
    ),
    "extend": Transition(
        (VolumeStatus.AVAILABLE,), VolumeStatus.EXTENDING, PREVIOUS, VolumeStatus.ERROR_EXTENDING
    ),
    "extend_attached": Transition(
        (VolumeStatus.IN_USE,), VolumeStatus.EXTENDING, PREVIOUS, VolumeStatus.ERROR_EXTENDING
    ),
    # legacy attach flow (os-reserve ... os-detach) and the attachments API; these are single
    # steps (no task): `begin` moves the volume, and leaving an attach state goes through
    # `derive_attach_status`, which looks at the attachments that remain
    "reserve": Transition((VolumeStatus.AVAILABLE,), VolumeStatus.ATTACHING, None, None),
    "reserve_multiattach": Transition(
        (
            VolumeStatus.AVAILABLE,
            VolumeStatus.IN_USE,
            VolumeStatus.RESERVED,
            VolumeStatus.ATTACHING,
        ),
        VolumeStatus.ATTACHING,
        None,
        None,
    ),
    "attachment_reserve": Transition((VolumeStatus.AVAILABLE,), VolumeStatus.RESERVED, None, None),
    "attachment_reserve_multiattach": Transition(
        (
            VolumeStatus.AVAILABLE,
            VolumeStatus.IN_USE,
            VolumeStatus.RESERVED,
            VolumeStatus.ATTACHING,
        ),
        VolumeStatus.RESERVED,
        None,
        None,
    ),
    "attach": Transition(
        (VolumeStatus.ATTACHING, VolumeStatus.RESERVED, VolumeStatus.IN_USE),
        VolumeStatus.IN_USE,
        None,
        None,
    ),
    "begin_detaching": Transition((VolumeStatus.IN_USE,), VolumeStatus.DETACHING, None, None),
    "roll_detaching": Transition((VolumeStatus.DETACHING,), VolumeStatus.IN_USE, None, None),
    # a migration between backends (os-migrate_volume): like Cinder, the status stays what it
    # was (the task's ownership of the row refuses every other action meanwhile), or becomes
    # `maintenance` with lock_volume; either way it returns to the previous status at the end,
    # and migration_status (MIGRATION_STEPS) tells how the migration went
    "migrate": Transition((VolumeStatus.AVAILABLE,), VolumeStatus.AVAILABLE, PREVIOUS, PREVIOUS),
    "migrate_locked": Transition(
        (VolumeStatus.AVAILABLE,), VolumeStatus.MAINTENANCE, PREVIOUS, PREVIOUS
    ),
    # os-retype that needs a migration: `retyping` until the data moved and the type changed
    "retype_migrate": Transition(
        (VolumeStatus.AVAILABLE,), VolumeStatus.RETYPING, PREVIOUS, PREVIOUS
    ),
    # the same for an attached volume, whose data compute moves (swap volume): the volume
    # stays in-use (or shows `retyping`) while compute mirrors it, and its attachment is
    # moved, not detached, so it returns to in-use either way
    "migrate_attached": Transition(
        (VolumeStatus.IN_USE,), VolumeStatus.IN_USE, PREVIOUS, PREVIOUS
    ),
    "retype_migrate_attached": Transition(
        (VolumeStatus.IN_USE,), VolumeStatus.RETYPING, PREVIOUS, PREVIOUS
    ),
    # volume transfers are single steps: offering parks the volume in `awaiting-transfer`
    # (nothing else may start on it); accepting hands it, in the same statement, to the new
    # project (`values`), cancelling gives it back to its owner as it was
    "offer_transfer": Transition(
        (VolumeStatus.AVAILABLE,), VolumeStatus.AWAITING_TRANSFER, None, None
    ),
    "accept_transfer": Transition(
        (VolumeStatus.AWAITING_TRANSFER,), VolumeStatus.AVAILABLE, None, None
    ),
    "cancel_transfer": Transition(
        (VolumeStatus.AWAITING_TRANSFER,), VolumeStatus.AVAILABLE, None, None
    ),
}


#: migration_status → the values it may be reached from (None: never migrated). `migrating`
#: is re-entered from every active value because an interrupted migration task starts over.
MIGRATION_STEPS: dict[str, tuple[str | None, ...]] = {
    MigrationStatus.STARTING: (None, MigrationStatus.SUCCESS, MigrationStatus.ERROR),
    MigrationStatus.MIGRATING: (
        MigrationStatus.STARTING,
        MigrationStatus.MIGRATING,
        MigrationStatus.COMPLETING,
    ),
    MigrationStatus.COMPLETING: (MigrationStatus.MIGRATING,),
    MigrationStatus.SUCCESS: (MigrationStatus.COMPLETING,),
    MigrationStatus.ERROR: (
        MigrationStatus.STARTING,
        MigrationStatus.MIGRATING,
        MigrationStatus.COMPLETING,
    ),
}
#: a volume with one of these is part of a migration in progress
MIGRATION_ACTIVE = (MigrationStatus.STARTING, MigrationStatus.MIGRATING, MigrationStatus.COMPLETING)
#: prefix of the migration_status of a migration's temporary destination row
MIGRATION_TARGET = "target:"

#: statuses a volume may leave through `derive_attach_status`
ATTACH_STATES = (
    VolumeStatus.ATTACHING,
    VolumeStatus.RESERVED,
    VolumeStatus.IN_USE,
    VolumeStatus.DETACHING,
)

#: the ways a volume leaves an attach state (`derive_attach_status`) → the statuses each may
#: start from; the status it ends in is derived from the attachments that remain
LEAVE_ATTACH: dict[str, tuple[str, ...]] = {
    # an attachment was removed, or its reservation dropped with a failed connection
    "leave": ATTACH_STATES,
    # legacy os-unreserve: only a reservation that no attach completed
    "unreserve": (VolumeStatus.ATTACHING,),
    # legacy os-detach
    "detach": (VolumeStatus.DETACHING, VolumeStatus.IN_USE, VolumeStatus.ATTACHING),
    # os-force_detach: also from a volume an error or a lost attachment left behind
    "force_detach": (*ATTACH_STATES, VolumeStatus.ERROR, VolumeStatus.AVAILABLE),
}

#: the ``busy`` status of an attachment step that keeps the attachment's status as it is
UNCHANGED = "<unchanged>"

#: an attachment's steps (`move_attachment`). An attachment is inserted `reserved` (the
#: attachments API) or `attached` (legacy os-attach) and removed by deleting its row; every
#: step is one conditional update, with no task owning the row
ATTACHMENT_TRANSITIONS: dict[str, Transition] = {
    # the connector, and then the connection info made for it, are recorded only on an
    # attachment nobody is deleting
    "connect": Transition((AttachStatus.RESERVED, AttachStatus.ATTACHED), UNCHANGED, None, None),
    # the host is connected (attachment_complete; again on an attached one is harmless)
    "complete": Transition(
        (AttachStatus.RESERVED, AttachStatus.ATTACHED), AttachStatus.ATTACHED, None, None
    ),
    # a delete takes every live status, `detaching` included: a delete that a crash
    # interrupted is simply deleted again
    "delete": Transition(
        (
            AttachStatus.RESERVED,
            AttachStatus.ATTACHED,
            AttachStatus.ATTACHING,
            AttachStatus.DETACHING,
            AttachStatus.ERROR_ATTACHING,
        ),
        AttachStatus.DETACHING,
        None,
        None,
    ),
}

SNAPSHOT_TRANSITIONS: dict[str, Transition] = {
    "create": Transition(
        (SnapshotStatus.CREATING,),
        SnapshotStatus.CREATING,
        SnapshotStatus.AVAILABLE,
        SnapshotStatus.ERROR,
    ),
    "delete": Transition(
        (SnapshotStatus.AVAILABLE, SnapshotStatus.ERROR),
        SnapshotStatus.DELETING,
        None,
        SnapshotStatus.ERROR_DELETING,
    ),
    "force_delete": Transition(
        tuple(s for s in SnapshotStatus if s != SnapshotStatus.DELETED),
        SnapshotStatus.DELETING,
        None,
        SnapshotStatus.ERROR_DELETING,
    ),
}

#: os-update_snapshot_status (what a driver or Nova reports about a snapshot it is making or
#: removing): current status → the statuses it may be set to, as Cinder's status_map
SNAPSHOT_STATUS_UPDATES: dict[str, tuple[str, ...]] = {
    SnapshotStatus.CREATING: (
        SnapshotStatus.CREATING,
        SnapshotStatus.AVAILABLE,
        SnapshotStatus.ERROR,
    ),
    SnapshotStatus.DELETING: (SnapshotStatus.DELETING, SnapshotStatus.ERROR_DELETING),
}


GROUP_TRANSITIONS: dict[str, Transition] = {
    # a plain group needs no backend work and is inserted `available`; a group created from a
    # source is inserted `creating` with the task that clones the members
    "create": Transition(
        (GroupStatus.CREATING,), GroupStatus.CREATING, GroupStatus.AVAILABLE, GroupStatus.ERROR
    ),
    "delete": Transition(
        (GroupStatus.AVAILABLE, GroupStatus.ERROR),
        GroupStatus.DELETING,
        None,
        GroupStatus.ERROR_DELETING,
    ),
    # delete-volumes: Cinder then takes the group whatever its status (unless a task owns it)
    "delete_with_volumes": Transition(
        tuple(s for s in GroupStatus if s != GroupStatus.DELETING),
        GroupStatus.DELETING,
        None,
        GroupStatus.ERROR_DELETING,
    ),
    # guards that keep the status: a membership change, a volume joining at create, a group
    # snapshot or a clone of the group taken in the same transaction need an available group
    "update": Transition((GroupStatus.AVAILABLE,), GroupStatus.AVAILABLE, None, None),
    "add_volume": Transition((GroupStatus.AVAILABLE,), GroupStatus.AVAILABLE, None, None),
    "snapshot": Transition((GroupStatus.AVAILABLE,), GroupStatus.AVAILABLE, None, None),
    "clone": Transition((GroupStatus.AVAILABLE,), GroupStatus.AVAILABLE, None, None),
}

GROUP_SNAPSHOT_TRANSITIONS: dict[str, Transition] = {
    # inserted `creating` with the task that snapshots every member
    "create": Transition(
        (GroupSnapshotStatus.CREATING,),
        GroupSnapshotStatus.CREATING,
        GroupSnapshotStatus.AVAILABLE,
        GroupSnapshotStatus.ERROR,
    ),
    "delete": Transition(
        (GroupSnapshotStatus.AVAILABLE, GroupSnapshotStatus.ERROR),
        GroupSnapshotStatus.DELETING,
        None,
        GroupSnapshotStatus.ERROR_DELETING,
    ),
    # a group is being created from it (same transaction, keeps the status)
    "clone": Transition(
        (GroupSnapshotStatus.AVAILABLE,), GroupSnapshotStatus.AVAILABLE, None, None
    ),
}


Row = type[Volume] | type[Snapshot] | type[Group] | type[GroupSnapshot]
#: rows a copy may pin (see `pin`)
Pinnable = type[Volume] | type[Snapshot]
_TABLES: dict[type[Any], tuple[str, dict[str, Transition]]] = {
    Volume: ("Volume", VOLUME_TRANSITIONS),
    Snapshot: ("Snapshot", SNAPSHOT_TRANSITIONS),
    Group: ("Group", GROUP_TRANSITIONS),
    GroupSnapshot: ("GroupSnapshot", GROUP_SNAPSHOT_TRANSITIONS),
}


def _exec(session: Session, stmt: Any) -> CursorResult[Any]:
    """Run a Core statement on the session's connection: the CAS updates need no ORM."""
    return session.connection().execute(stmt)


def _now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


def _lost(session: Session, model: Row, ident: str, allowed: tuple[str, ...], action: str) -> None:
    """Raise the error that explains why a compare-and-swap on `ident` matched no row."""
    kind = _TABLES[model][0]
    current = _exec(session, select(model.status, model.task_id).where(model.id == ident)).first()
    if current is None:
        raise NotFound(kind, ident)
    status, task_id = tuple(current)
    if status in allowed and task_id is not None:
        raise InvalidState(kind, ident, f"{status} (a task is in progress)", allowed, action)
    raise InvalidState(kind, ident, status, allowed, action)


def begin(
    session: Session,
    model: Row,
    ident: str,
    action: str,
    *,
    task_id: int | None = None,
    where: tuple[ColumnElement[bool], ...] = (),
    values: dict[str, Any] | None = None,
) -> None:
    """Move a row from one of the action's allowed statuses to its busy status, or raise.

    `task_id` marks the row as owned by a durable task until `finish` or `fail`; `where` adds
    conditions that must hold in the same statement (no snapshots, no pins, ...); `values` are
    written together with the status.
    """
    kind, table = _TABLES[model]
    t = table[action]
    stmt = (
        update(model)
        .where(model.id == ident, model.status.in_(t.allowed), model.task_id.is_(None), *where)
        .values(
            status=t.busy,
            previous_status=model.status,
            task_id=task_id,
            updated_at=_now(),
            **(values or {}),
        )
        .execution_options(synchronize_session=False)
    )
    if _exec(session, stmt).rowcount != 1:
        _lost(session, model, ident, t.allowed, action)


def _settle(
    session: Session,
    model: Row,
    ident: str,
    action: str,
    outcome: str | None,
    task_id: int | None,
    values: dict[str, Any] | None,
) -> bool:
    t = _TABLES[model][1][action]
    if outcome is None:
        raise ValueError(f"{action} has no status to settle in")
    status: Any = model.previous_status if outcome == PREVIOUS else outcome
    owner = model.task_id.is_(None) if task_id is None else model.task_id == task_id
    stmt = (
        update(model)
        .where(model.id == ident, model.status == t.busy, owner)
        .values(status=status, task_id=None, updated_at=_now(), **(values or {}))
        .execution_options(synchronize_session=False)
    )
    return bool(_exec(session, stmt).rowcount == 1)


def finish(
    session: Session,
    model: Row,
    ident: str,
    action: str,
    *,
    task_id: int | None = None,
    values: dict[str, Any] | None = None,
) -> bool:
    """busy → ok. False when the row was no longer ours (an admin reset it meanwhile)."""
    return _settle(session, model, ident, action, _TABLES[model][1][action].ok, task_id, values)


def fail(
    session: Session,
    model: Row,
    ident: str,
    action: str,
    *,
    task_id: int | None = None,
    values: dict[str, Any] | None = None,
) -> bool:
    """busy → error. False when the row was no longer ours."""
    return _settle(session, model, ident, action, _TABLES[model][1][action].error, task_id, values)


def reset(
    session: Session,
    model: Row,
    ident: str,
    status: str | None,
    *,
    values: dict[str, Any] | None = None,
) -> None:
    """An admin's os-reset_status: any status → `status` (None: keep), unless a task owns it.

    Refusing while a task runs keeps the invariants the tasks guarantee (an `available` volume
    always has its backing file); tasks always end, by finishing or by rolling back on restart.
    """
    kind = _TABLES[model][0]
    stmt = (
        update(model)
        .where(model.id == ident, model.task_id.is_(None))
        .values(updated_at=_now(), **({"status": status} if status else {}), **(values or {}))
        .execution_options(synchronize_session=False)
    )
    if _exec(session, stmt).rowcount != 1:
        current = _exec(session, select(model.status).where(model.id == ident)).scalar()
        if current is None:
            raise NotFound(kind, ident)
        raise InvalidState(kind, ident, f"{current} (a task is in progress)", ("any",), "reset")


def update_snapshot_status(
    session: Session, ident: str, status: str, values: dict[str, Any] | None = None
) -> None:
    """os-update_snapshot_status: `status` from a current status that SNAPSHOT_STATUS_UPDATES
    allows it from. One conditional update; the status only changes on a row no task owns
    (a report that keeps the status, e.g. progress, is taken either way)."""
    sources = [cur for cur, targets in SNAPSHOT_STATUS_UPDATES.items() if status in targets]
    stmt = (
        update(Snapshot)
        .where(
            Snapshot.id == ident,
            Snapshot.status.in_(sources),
            or_(Snapshot.task_id.is_(None), Snapshot.status == status),
        )
        .values(status=status, updated_at=_now(), **(values or {}))
        .execution_options(synchronize_session=False)
    )
    if _exec(session, stmt).rowcount != 1:
        _lost(session, Snapshot, ident, tuple(sources), f"be set to {status}")


def move_attachment(session: Session, attachment_id: str, action: str, **values: Any) -> None:
    """One step of an attachment (ATTACHMENT_TRANSITIONS): from one of the action's allowed
    statuses to its busy one, with `values` written in the same statement; or raise
    `InvalidState` (or `NotFound` when the attachment is gone)."""
    t = ATTACHMENT_TRANSITIONS[action]
    status: Any = Attachment.attach_status if t.busy == UNCHANGED else t.busy
    stmt = (
        update(Attachment)
        .where(Attachment.id == attachment_id, Attachment.attach_status.in_(t.allowed))
        .values(attach_status=status, updated_at=_now(), **values)
        .execution_options(synchronize_session=False)
    )
    if _exec(session, stmt).rowcount != 1:
        current = _exec(
            session, select(Attachment.attach_status).where(Attachment.id == attachment_id)
        ).scalar()
        if current is None:
            raise NotFound("Attachment", attachment_id)
        raise InvalidState(
            "Attachment",
            attachment_id,
            current,
            t.allowed,
            action if t.busy == UNCHANGED else t.busy,
        )


def mark_attached(session: Session, volume_id: str) -> None:
    """A volume gets an attachment that is attached (legacy os-attach, attachment_complete):
    it becomes in-use and its attach_status `attached`, in one conditional update."""
    begin(session, Volume, volume_id, "attach", values={"attach_status": AttachStatus.ATTACHED})


def pin(
    session: Session,
    model: Pinnable,
    ident: str,
    allowed: tuple[str, ...],
    action: str,
    *,
    where: tuple[ColumnElement[bool], ...] = (),
) -> None:
    """Mark a row as being read by a copy (snapshot, clone), if its status allows the copy.

    A pinned row cannot begin `delete` or `extend` (their conditions require ``pins = 0``), so
    the source of a copy never disappears or grows under it.
    """
    if model is Volume:  # a migrating volume moves to another backend: nothing may copy it
        where = (*where, not_migrating())
    stmt = (
        update(model)
        .where(model.id == ident, model.status.in_(allowed), *where)
        .values(pins=model.pins + 1)
        .execution_options(synchronize_session=False)
    )
    if _exec(session, stmt).rowcount != 1:
        _lost(session, model, ident, allowed, action)


def unpin(session: Session, model: Pinnable, ident: str) -> None:
    _exec(
        session,
        update(model)
        .where(model.id == ident, model.pins > 0)
        .values(pins=model.pins - 1)
        .execution_options(synchronize_session=False),
    )


def derive_attach_status(session: Session, volume_id: str, action: str = "leave") -> str:
    """Set a volume's status from its attachments, as Cinder derives it: in-use while one is
    attached, reserved while one is reserved or attaching, else available. One conditional
    UPDATE (the volume must be in one of the statuses LEAVE_ATTACH allows `action` from, and
    owned by no task); returns the status.
    """
    allowed = LEAVE_ATTACH[action]

    def having(*statuses: str) -> ColumnElement[bool]:
        return exists().where(
            Attachment.volume_id == volume_id, Attachment.attach_status.in_(statuses)
        )

    derived = case(
        (having(AttachStatus.ATTACHED, AttachStatus.DETACHING), VolumeStatus.IN_USE.value),
        (having(AttachStatus.RESERVED, AttachStatus.ATTACHING), VolumeStatus.RESERVED.value),
        else_=VolumeStatus.AVAILABLE.value,
    )
    attached = case(
        (having(AttachStatus.ATTACHED, AttachStatus.DETACHING), AttachStatus.ATTACHED.value),
        else_=AttachStatus.DETACHED.value,
    )
    stmt = (
        update(Volume)
        .where(Volume.id == volume_id, Volume.status.in_(allowed), Volume.task_id.is_(None))
        .values(status=derived, attach_status=attached, updated_at=_now())
        .returning(Volume.status)
    )
    status = _exec(session, stmt).scalar()
    if status is None:
        # the wording the API has always given: legacy os-detach names itself
        _lost(
            session,
            Volume,
            volume_id,
            allowed,
            "detach" if action == "detach" else "update attachments of",
        )
    return str(status)


# ---------------------------------------------------------------------------- migration


def migration_may_become(to: str) -> ColumnElement[bool]:
    """The condition that a volume's migration_status may move to `to` (MIGRATION_STEPS)."""
    allowed = MIGRATION_STEPS[to]
    values = [a for a in allowed if a is not None]
    cond = Volume.migration_status.in_(values)
    return or_(Volume.migration_status.is_(None), cond) if None in allowed else cond


def not_migrating() -> ColumnElement[bool]:
    """The volume is not part of a migration in progress (as source or as destination)."""
    return or_(
        Volume.migration_status.is_(None),
        ~Volume.migration_status.in_(MIGRATION_ACTIVE)
        & ~Volume.migration_status.startswith(MIGRATION_TARGET),
    )


def not_migration_target() -> ColumnElement[bool]:
    """The row is a real volume, not a migration's temporary destination (lists, quota)."""
    return or_(
        Volume.migration_status.is_(None), ~Volume.migration_status.startswith(MIGRATION_TARGET)
    )


def advance_migration(
    session: Session,
    volume_id: str,
    to: str,
    *,
    task_id: int,
    where: tuple[ColumnElement[bool], ...] = (),
    values: dict[str, Any] | None = None,
) -> bool:
    """Move the migration_status of a volume owned by task `task_id` to `to`, if the step is
    allowed (MIGRATION_STEPS) and `where` holds, writing `values` in the same statement; False
    when it is not (or the row is not the task's)."""
    stmt = (
        update(Volume)
        .where(Volume.id == volume_id, Volume.task_id == task_id, migration_may_become(to), *where)
        .values(migration_status=to, updated_at=_now(), **(values or {}))
        .execution_options(synchronize_session=False)
    )
    return bool(_exec(session, stmt).rowcount == 1)
