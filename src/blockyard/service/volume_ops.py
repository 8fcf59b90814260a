"""The steps every volume operation is built from, shared by volumes, snapshots, migration,
attachments and the group services.

- What a driver is given: `volume_ref`, `snapshot_ref`, and for a task that must not read
  the row again `ref_payload` / `ref_from_payload`.
- What a driver returns: `model_values` turns its ModelUpdate into column values;
  `persist_model_update` writes them (and `forget_export` clears them when the export is gone).
- Read, then act under conditions: `act_on_fresh` reads the volume as the caller may see it
  (`read_visible`), runs the caller's action, and reads again when the action's
  compare-and-swap lost only because the volume changed meanwhile (`Stale`). `begin_as_read`
  is that compare-and-swap: it begins a transition only while the volume is as read, and
  translates a lost race into `Stale`, the caller's own refusal, or InvalidState.
- A new volume: `new_volume` describes it (what every new volume starts with is written
  once, here), `insert_volume` inserts its row and metadata.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, exists, insert, select, update
from sqlalchemy.orm import Session

from blockyard import states
from blockyard.db.models import Base, Snapshot, Volume, utcnow
from blockyard.errors import BlockyardError, InUse, InvalidState, NotFound
from blockyard.model import ModelUpdate, SnapshotRef, VolumeRef
from blockyard.service import quotas, records, tasks
from blockyard.service.identity import Identity, authorize
from blockyard.service.records import VolumeRecord
from blockyard.service.runtime import Runtime

# ---------------------------------------------------------------------------- driver refs


def volume_ref(v: Volume | VolumeRecord) -> VolumeRef:
    """The part of a volume a driver needs."""
    return VolumeRef(
        id=v.id,
        size_gb=v.size,
        name_id=v.name_id,
        provider_location=v.provider_location,
        provider_auth=v.provider_auth,
    )


def snapshot_ref(s: Snapshot, volume: Volume) -> SnapshotRef:
    """The part of a snapshot (and of the volume it was taken of) a driver needs."""
    return SnapshotRef(
        id=s.id, volume=volume_ref(volume), size_gb=s.size, provider_location=s.provider_location
    )


def ref_payload(v: VolumeRecord) -> dict[str, Any]:
    """What a task needs to rebuild the volume's VolumeRef without reading it again (the row
    cannot change under the task that owns it)."""
    return {"size": v.size, "name_id": v.name_id, "provider_location": v.provider_location,
            "provider_auth": v.provider_auth, "project_id": v.project_id,
            "type_name": v.type_name}


def ref_from_payload(task: tasks.TaskView) -> VolumeRef:
    """The VolumeRef `ref_payload` put into the task."""
    p = task.payload
    return VolumeRef(id=task.resource_id, size_gb=int(p["size"]), name_id=p.get("name_id"),
                     provider_location=p.get("provider_location"),
                     provider_auth=p.get("provider_auth"))


# ---------------------------------------------------------------------------- model updates


def model_values(update_: ModelUpdate | None) -> dict[str, Any]:
    """The volume columns a driver's ModelUpdate sets (None leaves a column as it is)."""
    if update_ is None:
        return {}
    values = {}
    if update_.provider_location is not None:
        values["provider_location"] = update_.provider_location
    if update_.provider_auth is not None:
        values["provider_auth"] = update_.provider_auth
    return values


def _write_volume(rt: Runtime, volume_id: str, values: dict[str, Any]) -> None:
    if values:
        with rt.db.write() as s:
            s.execute(update(Volume).where(Volume.id == volume_id).values(**values)
                      .execution_options(synchronize_session=False))


def persist_model_update(rt: Runtime, volume_id: str,
                         update_: ModelUpdate | None) -> dict[str, Any]:
    """Record what a driver returned outside a task (export work) with the volume, in its own
    transaction; returns the values written (none when the driver changed nothing)."""
    values = model_values(update_)
    _write_volume(rt, volume_id, values)
    return values


def forget_export(rt: Runtime, volume_id: str) -> None:
    """The export is gone: the next connection starts from nothing, not from a stale record."""
    _write_volume(rt, volume_id, {"provider_location": None, "provider_auth": None})


# ---------------------------------------------------------------------------- read, then act

#: how often an action re-reads a volume that changed under it before giving up
FRESH_TRIES = 5


class Stale(Exception):
    """The volume changed between the read and the write transaction (it was extended)."""


def read_visible(rt: Runtime, who: Identity, volume_id: str) -> tuple[VolumeRecord, int]:
    """Read a volume (and its project's per-volume size limit) before a write transaction
    that re-checks what matters by condition."""
    with rt.db.reading() as conn:
        v = records.fetch_volume(conn, volume_id)
        if v is None:
            raise NotFound("Volume", volume_id)
        authorize(who, "volume:get", v.project_id, hidden=NotFound("Volume", volume_id))
        per_volume = quotas.limit_of(conn, rt.config.quotas, v.project_id,
                                     "per_volume_gigabytes")
    return v, per_volume


def act_on_fresh(rt: Runtime, who: Identity, volume_id: str,
                 act: Callable[[VolumeRecord, int], tasks.TaskView | None]) -> None:
    """Read the volume, act on what was read under conditions that it still holds, and read
    again when it did not (`Stale`); then start the task the action queued, if it queued one."""
    for _ in range(FRESH_TRIES):
        try:
            task = act(*read_visible(rt, who, volume_id))
        except Stale:
            continue
        if task is not None:
            tasks.start(rt, task)
        return
    raise InUse(f"Invalid volume: Volume {volume_id} kept changing; try again.")


def _stale(s: Session, v: VolumeRecord) -> bool:
    """Did the write lose its compare-and-swap only because the size changed since the read?"""
    size = s.connection().execute(select(Volume.size).where(Volume.id == v.id)).scalar()
    return size is not None and size != v.size


def begin_as_read(s: Session, v: VolumeRecord, action: str, *, task_id: int,
                  where: tuple[ColumnElement[bool], ...] = (),
                  values: dict[str, Any] | None = None,
                  busy: BlockyardError | None = None) -> None:
    """Begin `action` on volume `v` (states.begin) only while its size is still as read and
    `where` holds.

    A lost race is told apart: the size changed → `Stale` (`act_on_fresh` reads again); the
    status allowed the action but another condition of `where` failed → `busy`, the caller's
    refusal, when it gave one; otherwise the InvalidState itself.
    """
    try:
        states.begin(s, Volume, v.id, action, task_id=task_id, values=values,
                     where=(Volume.size == v.size, *where))
    except InvalidState as exc:
        if _stale(s, v):
            raise Stale() from exc
        if busy is not None and exc.current in states.VOLUME_TRANSITIONS[action].allowed:
            raise busy from exc
        raise


def no_snapshots(volume_id: str) -> ColumnElement[bool]:
    """The condition that volume `volume_id` has no snapshot."""
    return ~exists().where(Snapshot.volume_id == volume_id)


# ---------------------------------------------------------------------------- new volumes

#: prebuilt inserts: the values come as parameters, nothing is coerced
_INSERT_VOLUME = insert(Base.metadata.tables["volumes"])
_INSERT_METADATA = insert(Base.metadata.tables["volume_metadata"])


def new_volume(*, project_id: str, user_id: str, size: int, status: str,
               availability_zone: str, volume_type_id: str, type_name: str, backend: str,
               multiattach: bool, name: str | None = None, description: str | None = None,
               snapshot_id: str | None = None, source_volid: str | None = None,
               bootable: bool = False, readonly: bool = False,
               migration_status: str | None = None, group_id: str | None = None,
               meta: dict[str, str] | None = None, created_at: datetime | None = None,
               volume_id: str | None = None) -> VolumeRecord:
    """The record of a volume about to be inserted: a new volume is detached, has no export
    and no name of its own on the backend yet, and was never updated."""
    return VolumeRecord(
        id=volume_id or str(uuid.uuid4()), project_id=project_id, user_id=user_id, name=name,
        description=description, size=size, status=status,
        attach_status=states.AttachStatus.DETACHED, availability_zone=availability_zone,
        volume_type_id=volume_type_id, type_name=type_name, backend=backend,
        snapshot_id=snapshot_id, source_volid=source_volid, bootable=bootable,
        readonly=readonly, multiattach=multiattach, name_id=None,
        migration_status=migration_status, created_at=created_at or utcnow(), updated_at=None,
        provider_location=None, provider_auth=None, group_id=group_id, meta=dict(meta or {}),
    )


def insert_volume(s: Session, record: VolumeRecord, task_id: int | None) -> None:
    """Insert the row of the new volume `record` describes, and its metadata: the one place
    that lists every column a volume starts with (create, the destination of a migration,
    the members of a cloned group). A new volume has no pins and no previous status yet."""
    s.connection().execute(_INSERT_VOLUME, {
        "id": record.id, "project_id": record.project_id, "user_id": record.user_id,
        "name": record.name, "description": record.description, "size": record.size,
        "status": record.status, "previous_status": None,
        "attach_status": record.attach_status, "availability_zone": record.availability_zone,
        "volume_type_id": record.volume_type_id, "backend": record.backend,
        "snapshot_id": record.snapshot_id, "source_volid": record.source_volid,
        "bootable": record.bootable, "readonly": record.readonly,
        "multiattach": record.multiattach, "task_id": task_id, "pins": 0,
        "created_at": record.created_at, "updated_at": record.updated_at,
        "provider_location": record.provider_location, "provider_auth": record.provider_auth,
        "name_id": record.name_id, "migration_status": record.migration_status,
        "group_id": record.group_id,
    })
    if record.meta:
        s.connection().execute(_INSERT_METADATA, [
            {"volume_id": record.id, "key": k, "value": v} for k, v in record.meta.items()])
