"""Generic migration of a volume to another backend, and retype (which may need one).

This is Cinder's host-assisted ("generic") migration, done by one durable task:

1. Accepting (`migrate`, `retype`): one transaction moves the volume into its busy status
   (`available` stays, owned by the task; `maintenance` with lock_volume; `retyping` for a
   retype), sets migration_status ``starting``, and inserts the temporary destination row on the
   destination backend: status ``creating``, migration_status ``target:<source id>``, owned by
   the same task. That row is hidden from lists and summaries and never counts against quota.
2. The task (`_run_migrate`): migration_status ``migrating``; create the destination's backend
   object; open both sides with `open_volume` and copy sparse-aware
   (`blockyard.backends.transfer.copy_volume`); migration_status ``completing``; checksum both
   sides over their full size and compare. Any failure deletes the destination object again.
3. Settling, in one transaction: on success the identities are swapped, as Cinder's
   `migrate_volume_completion` does — the user's row (same id) now names the destination
   backend and, through ``name_id``, the destination's object; the temporary row takes over the
   source's backend, object and location. migration_status becomes ``success`` and the status
   returns to what it was. On failure the source row keeps everything, migration_status becomes
   ``error``, the status returns. Either way the temporary row is then deleted by an ordinary
   durable `delete_volume` task (without quota), which removes the backend object it names: the
   old source object after a success, the partial destination after a failure.

A crash at any point before step 3 commits leaves the task row, and the restarted service runs
the migration again from the start (creating the destination object recreates it from
scratch). After step 3 the delete task is durable too. So no volume stays ``migrating`` and no
destination is orphaned.

Progress is kept in memory while the copy runs (it needs no durability, and the copy must not
contend for the database's single writer) and shown by the API as the synthesized metadata key
``blockyard:migration_progress`` (`progress_of`).

Volumes with snapshots are refused, as Cinder's generic migration refuses them: the snapshots
live on the source backend and would be stranded. Attached volumes are refused for now (live
migration through the compute agent's block mirror is a later step).
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import logging
import threading
import uuid
from collections.abc import Iterator
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from blockyard import failpoints, states
from blockyard.backends import transfer
from blockyard.backends.base import VolumeDriver
from blockyard.db.models import GroupVolumeType, Snapshot, Volume, utcnow
from blockyard.errors import BlockyardError, Invalid, NotFound
from blockyard.model import ModelUpdate, OpenMode, VolumeRef
from blockyard.service import quotas, records, scheduler, tasks, volume_ops
from blockyard.service import types as vtypes
from blockyard.service.identity import Identity, authorize
from blockyard.service.records import VolumeRecord
from blockyard.service.runtime import Backend, Runtime
from blockyard.states import MigrationStatus, VolumeStatus

log = logging.getLogger(__name__)

#: the metadata key the API shows a running migration's progress under
PROGRESS_KEY = "blockyard:migration_progress"


class MigrationFailed(BlockyardError):
    """The copy did not verify: the destination differs from the source."""


# ---------------------------------------------------------------------------- progress

_progress: dict[str, tuple[int, int]] = {}
_progress_lock = threading.Lock()


def _set_progress(volume_id: str, done: int, total: int) -> None:
    with _progress_lock:
        _progress[volume_id] = (done, total)


def _clear_progress(volume_id: str) -> None:
    with _progress_lock:
        _progress.pop(volume_id, None)


def progress_of(volume_id: str) -> str | None:
    """"<percent>% (<done> of <total> bytes)" of the running copy of `volume_id`, else None.

    Bytes count the source's data (holes cost nothing, so they are not counted); the percent is
    of those. Cinder has no progress field and Tempest's schemas allow no new key in a volume,
    so the API shows this in `metadata`, as Cinder shows its admin metadata there.
    """
    with _progress_lock:
        got = _progress.get(volume_id)
    if got is None:
        return None
    done, total = got
    percent = 100 if total == 0 else done * 100 // total
    return f"{percent}% ({done} of {total} bytes)"


# ---------------------------------------------------------------------------- accepting


def find_backend(rt: Runtime, host: str) -> Backend:
    """The backend `host` names: "host@backend#pool" or "host@backend" (one pool each)."""
    service, _, pool = host.partition("#")
    for backend in rt.backends.values():
        if backend.service_host == service and pool in ("", backend.name):
            return backend
    raise Invalid(f"Invalid host: No available service named '{host}'")


def _refuse_unless_migratable(v: VolumeRecord, *, snapshots: bool) -> None:
    """Cinder's checks and wording, in Cinder's order."""
    if v.status == VolumeStatus.IN_USE or v.attach_status != states.AttachStatus.DETACHED:
        raise Invalid(f"Invalid volume: Volume {v.id} is attached; migrating an attached "
                      f"volume is not supported yet: detach it first.")
    if v.migration_status in states.MIGRATION_ACTIVE or (
            v.migration_status or "").startswith(states.MIGRATION_TARGET):
        raise Invalid(f"Invalid volume: Volume {v.id} is already part of an active migration.")
    if v.status != VolumeStatus.AVAILABLE:
        raise Invalid(f"Invalid volume: Volume {v.id} status must be available or in-use, but "
                      f"current status is: {v.status}.")
    if snapshots:
        raise Invalid(f"Invalid volume: Volume {v.id} must not have snapshots.")
    if v.group_id is not None:  # a group's volumes live on the group's backend
        raise Invalid(f"Invalid volume: Volume {v.id} must not be part of a group.")


def _group_types(rt: Runtime, group_id: str) -> set[str]:
    """The volume types group `group_id` accepts."""
    with rt.db.reading() as conn:
        return set(conn.execute(select(GroupVolumeType.volume_type_id)
                                .where(GroupVolumeType.group_id == group_id)).scalars())


def _has_snapshots(rt: Runtime, volume_id: str) -> bool:
    with rt.db.reading() as conn:
        return conn.execute(select(Snapshot.id).where(Snapshot.volume_id == volume_id)
                            .limit(1)).first() is not None


def _accept(rt: Runtime, v: VolumeRecord, dest: Backend, action: str,
            new_type: vtypes.TypeInfo | None = None) -> tasks.TaskView:
    """The transaction of step 1 (module docstring); returns the task to start."""
    dest_id = str(uuid.uuid4())
    type_id = new_type.id if new_type is not None else v.volume_type_id
    with rt.db.write() as s:
        task = tasks.enqueue(s, "migrate_volume", v.backend, v.id, {
            **volume_ops.ref_payload(v), "dest_id": dest_id, "dest_backend": dest.name,
            "action": action, "new_type_id": new_type.id if new_type else None,
            "new_type_name": new_type.name if new_type else None})
        volume_ops.begin_as_read(
            s, v, action, task_id=task.id, values={"migration_status": MigrationStatus.STARTING},
            where=(Volume.pins == 0, volume_ops.no_snapshots(v.id), Volume.group_id.is_(None),
                   Volume.attach_status == states.AttachStatus.DETACHED,
                   states.migration_may_become(MigrationStatus.STARTING)),
            busy=Invalid(f"Invalid volume: Volume {v.id} is busy (being copied, "
                         f"snapshotted or changed); migrate it afterwards."))
        if new_type is not None:  # the new type's share of quota, reserved up front
            quotas.consume(s, rt.config.quotas, v.project_id,
                           _type_deltas(new_type.name, 1, v.size))
        volume_ops.insert_volume(s, volume_ops.new_volume(
            volume_id=dest_id, project_id=v.project_id, user_id=v.user_id, name=v.name,
            description=f"migration target of volume {v.id}", size=v.size,
            status=VolumeStatus.CREATING,
            availability_zone=dest.config.availability_zone, volume_type_id=type_id,
            type_name=new_type.name if new_type is not None else v.type_name,
            backend=dest.name, bootable=v.bootable, readonly=v.readonly,
            multiattach=v.multiattach, migration_status=f"{states.MIGRATION_TARGET}{v.id}"),
            task.id)
    return task


def migrate(rt: Runtime, who: Identity, volume_id: str, host: str, *,
            lock_volume: bool = False) -> None:
    """os-migrate_volume: copy the volume to the backend `host` names, keeping its id."""

    def act(v: VolumeRecord, _per_volume: int) -> tasks.TaskView:
        _refuse_unless_migratable(v, snapshots=_has_snapshots(rt, v.id))
        dest = find_backend(rt, host)
        if dest.name == v.backend:
            raise Invalid("Invalid host: Destination host must be different than the current "
                          "host.")
        return _accept(rt, v, dest, "migrate_locked" if lock_volume else "migrate")

    volume_ops.act_on_fresh(rt, who, volume_id, act)


def retype(rt: Runtime, who: Identity, volume_id: str, new_type: str, policy: str) -> None:
    """os-retype: change the volume's type; migrate it when its backend cannot serve the type
    (only with ``migration_policy=on-demand``)."""

    def act(v: VolumeRecord, _per_volume: int) -> tasks.TaskView | None:
        if v.status not in (VolumeStatus.AVAILABLE, VolumeStatus.IN_USE):
            raise Invalid(f"Invalid volume: Unable to update type due to incorrect status: "
                          f"{v.status} on volume: {v.id}. Volume status must be available or "
                          f"in-use.")
        if v.migration_status in states.MIGRATION_ACTIVE:
            raise Invalid(f"Invalid volume: Volume {v.id} is already part of an active "
                          f"migration.")
        with rt.db.reading() as conn:
            try:
                vt = vtypes.resolve(conn, new_type, who)
            except NotFound:
                raise Invalid(f"Invalid input received: Invalid volume_type passed: "
                              f"{new_type}.") from None
        if vt.id == v.volume_type_id:
            raise Invalid(f"Invalid input received: New volume_type same as original: "
                          f"{new_type}.")
        if v.group_id is not None and vt.id not in _group_types(rt, v.group_id):
            raise Invalid(f"Invalid input received: Retype of volume {v.id} to type {vt.name} "
                          f"is not allowed: its group {v.group_id} does not support the type.")
        # in place when the volume's backend can serve the new type (its extra specs match
        # the backend's capabilities, as the scheduler matches them), else a migration
        if scheduler.fits(rt.backend(v.backend), vt):
            _retype_in_place(rt, v, vt)
            return None
        if policy != "on-demand":
            raise Invalid(f"Invalid input received: Retype of volume {v.id} to type "
                          f"{vt.name} needs a migration to another backend, but "
                          f"migration_policy is 'never'.")
        _refuse_unless_migratable(v, snapshots=_has_snapshots(rt, v.id))
        dest = scheduler.pick(rt, vt, v.size, None)
        return _accept(rt, v, dest, "retype_migrate", vt)

    volume_ops.act_on_fresh(rt, who, volume_id, act)


def _type_deltas(type_name: str, count: int, gigabytes: int) -> dict[str, int]:
    """The per-type part of a volume's quota usage: a retype moves only that part."""
    return {f"volumes_{type_name}": count, f"gigabytes_{type_name}": gigabytes}


def _retype_in_place(rt: Runtime, v: VolumeRecord, vt: vtypes.TypeInfo) -> None:
    """The backend can serve the new type: only the row changes (and per-type quota)."""
    with rt.db.write() as s:
        changed = s.connection().execute(
            update(Volume)
            .where(Volume.id == v.id, Volume.volume_type_id == v.volume_type_id,
                   Volume.task_id.is_(None),
                   Volume.status.in_((VolumeStatus.AVAILABLE, VolumeStatus.IN_USE)),
                   states.not_migrating())
            .values(volume_type_id=vt.id, updated_at=utcnow())
            .execution_options(synchronize_session=False))
        if changed.rowcount != 1:
            raise volume_ops.Stale()
        quotas.consume(s, rt.config.quotas, v.project_id, _type_deltas(vt.name, 1, v.size))
        quotas.consume(s, rt.config.quotas, v.project_id,
                       _type_deltas(v.type_name, -1, -v.size))


def complete(rt: Runtime, who: Identity, volume_id: str, new_volume_id: str,
             error: bool) -> str:
    """os-migrate_volume_completion: Cinder's checks; returns the id the caller keeps.

    In Cinder this is how a migration driven from outside the volume manager (Nova's
    swap_volume for attached volumes) ends. Here every migration is driven and completed by
    blockyard's own durable task, so a valid pair is always owned by that task and is refused;
    two volumes not migrating at all get Cinder's answer (the new volume's id): that is the
    end of a plain swap (Nova's swap_volume of an attached volume), where the compute agent
    itself completes the new volume's attachment and deletes the old one's, so nothing is
    moved here (Cinder's detach/attach of the legacy flow has no counterpart).
    """
    with rt.db.reading() as conn:
        pair = records.fetch_volumes(conn, [volume_id, new_volume_id])
    found = {r.id: r for r in pair}
    for ident in (volume_id, new_volume_id):
        if ident not in found:
            raise NotFound("Volume", ident)
        authorize(who, "volume:get", found[ident].project_id, hidden=NotFound("Volume", ident))
    old, new = found[volume_id], found[new_volume_id]
    if not (old.migration_status or new.migration_status):
        return new_volume_id
    if not old.migration_status:
        raise Invalid("Invalid volume: Source volume not mid-migration.")
    if not new.migration_status:
        raise Invalid("Invalid volume: Destination volume not mid-migration.")
    expected = f"{states.MIGRATION_TARGET}{volume_id}"
    if new.migration_status != expected:
        raise Invalid(f"Invalid volume: Destination has migration_status "
                      f"{new.migration_status}, expected {expected}.")
    raise Invalid(f"Invalid volume: The migration of volume {volume_id} is carried out by "
                  f"blockyard's own task, which completes (or fails) it by itself.")


# ---------------------------------------------------------------------------- the task


def _dest_ref(task: tasks.TaskView) -> VolumeRef:
    return VolumeRef(id=str(task.payload["dest_id"]), size_gb=int(task.payload["size"]))


def _advance(rt: Runtime, task: tasks.TaskView, to: str) -> None:
    with rt.db.write() as s:
        if not states.advance_migration(s, task.resource_id, to, task_id=task.id):
            log.warning("migration of %s: could not set migration_status %s", task.resource_id,
                        to)


@contextlib.contextmanager
def _opened(driver: VolumeDriver, ref: VolumeRef, mode: OpenMode) -> Iterator[io.RawIOBase]:
    """The volume `ref` open through `driver`, closed again however the block ends."""
    handle = driver.open_volume(ref, mode)
    try:
        yield handle
    finally:
        driver.close_volume(ref, handle)


def _copy(src_drv: VolumeDriver, src_ref: VolumeRef, dst_drv: VolumeDriver,
          dst_ref: VolumeRef, progress: transfer.Progress) -> transfer.CopyStats:
    """Copy the source volume into the destination (sparse-aware), both open only meanwhile."""
    length = src_ref.size_bytes
    with _opened(src_drv, src_ref, "rb") as src, _opened(dst_drv, dst_ref, "r+b") as dst:
        stats = transfer.copy_volume(src, dst, length, progress)
        if failpoints.armed("migrate_volume.corrupt_destination"):  # verify must fail
            dst.seek(length // 2)
            dst.write(b"\xff")
    return stats


def _verify(volume_id: str, src_drv: VolumeDriver, src_ref: VolumeRef,
            dst_drv: VolumeDriver, dst_ref: VolumeRef) -> str:
    """The sha256 both sides agree on over the volume's full size, or MigrationFailed."""
    length = src_ref.size_bytes
    digests = []
    for drv, ref in ((src_drv, src_ref), (dst_drv, dst_ref)):
        with _opened(drv, ref, "rb") as handle:
            digests.append(transfer.checksum(handle, length))
    if digests[0] != digests[1]:
        raise MigrationFailed(f"the copy of volume {volume_id} does not verify: "
                              f"source sha256 {digests[0]}, destination {digests[1]}")
    return digests[0]


def _run_migrate(rt: Runtime, task: tasks.TaskView) -> ModelUpdate | None:
    """Step 2 (module docstring): create the destination object, copy, verify. Any failure,
    a kill included, leaves no destination object behind the task does not own: it is
    removed here, else by the delete task settling queues."""
    src_ref = volume_ops.ref_from_payload(task)
    src_drv = rt.backend(task.backend).driver
    dst_drv = rt.backend(str(task.payload["dest_backend"])).driver
    dst_ref = _dest_ref(task)
    _advance(rt, task, MigrationStatus.MIGRATING)

    def progress(done: int, total: int) -> None:
        _set_progress(task.resource_id, done, total)
        failpoints.hit("migrate_volume.mid_copy")

    try:
        created = dst_drv.create_volume(dst_ref)
        dst_ref = dataclasses.replace(dst_ref, **volume_ops.model_values(created))
        failpoints.hit("migrate_volume.before_copy")
        stats = _copy(src_drv, src_ref, dst_drv, dst_ref, progress)
        _advance(rt, task, MigrationStatus.COMPLETING)
        digest = _verify(task.resource_id, src_drv, src_ref, dst_drv, dst_ref)
        log.info("migrated volume %s to %s: %d data bytes, %d written (%s), sha256 %s",
                 task.resource_id, task.payload["dest_backend"], stats.data_bytes,
                 stats.written_bytes, stats.method, digest)
        failpoints.hit("migrate_volume.after_verify")
        return created
    except BaseException:
        _remove_destination(task, dst_drv, dst_ref)
        raise
    finally:
        _clear_progress(task.resource_id)


def _remove_destination(task: tasks.TaskView, driver: VolumeDriver, ref: VolumeRef) -> None:
    try:
        driver.delete_volume(ref)
    except Exception:  # the delete task queued when settling removes it, durably
        log.warning("migration of %s: could not remove the destination yet",
                    task.resource_id, exc_info=True)


def _row(s: Session, volume_id: str) -> Any:
    return s.connection().execute(
        select(Volume.backend, Volume.name_id, Volume.provider_location, Volume.provider_auth,
               Volume.availability_zone, Volume.status)
        .where(Volume.id == volume_id)).first()


def _settle_migrate(s: Session, rt: Runtime, task: tasks.TaskView, result: Any,
                    error: BaseException | None) -> tasks.FollowUp | None:
    p = task.payload
    vid, dest_id, action = task.resource_id, str(p["dest_id"]), str(p["action"])
    src, dst = _row(s, vid), _row(s, dest_id)
    ok = error is None and states.advance_migration(s, vid, MigrationStatus.SUCCESS,
                                                    task_id=task.id)
    type_name = str(p["type_name"])
    new_type = p.get("new_type_name")
    if ok:
        values: dict[str, Any] = {
            "backend": p["dest_backend"], "name_id": dst.name_id or dest_id,
            "provider_location": dst.provider_location, "provider_auth": dst.provider_auth,
            "availability_zone": dst.availability_zone, **volume_ops.model_values(result)}
        if p.get("new_type_id"):
            values["volume_type_id"] = p["new_type_id"]
        states.finish(s, Volume, vid, action, task_id=task.id, values=values)
        # the temporary row now names what the source was: deleting it removes the old object
        states.finish(s, Volume, dest_id, "create", task_id=task.id, values={
            "backend": src.backend, "name_id": src.name_id or vid,
            "provider_location": src.provider_location, "provider_auth": src.provider_auth})
        doomed = VolumeRef(id=dest_id, size_gb=int(p["size"]), name_id=src.name_id or vid,
                           provider_location=src.provider_location,
                           provider_auth=src.provider_auth)
        doomed_backend = str(src.backend)
        if new_type:  # the old type's share of quota goes (the new one was reserved)
            quotas.consume(s, rt.config.quotas, str(p["project_id"]),
                           _type_deltas(type_name, -1, -int(p["size"])))
    else:
        log.warning("migration of volume %s failed: %s", vid, error)
        states.advance_migration(s, vid, MigrationStatus.ERROR, task_id=task.id)
        states.fail(s, Volume, vid, action, task_id=task.id)
        states.fail(s, Volume, dest_id, "create", task_id=task.id)
        doomed = VolumeRef(id=dest_id, size_gb=int(p["size"]),
                           provider_location=dst.provider_location if dst else None)
        doomed_backend = str(p["dest_backend"])
        if new_type:
            quotas.consume(s, rt.config.quotas, str(p["project_id"]),
                           _type_deltas(str(new_type), -1, -int(p["size"])))
    if dst is None:
        return None
    delete = tasks.enqueue(s, "delete_volume", doomed_backend, dest_id, {
        "cascade": False, "size": doomed.size_gb, "name_id": doomed.name_id,
        "provider_location": doomed.provider_location, "provider_auth": doomed.provider_auth,
        "project_id": p["project_id"], "type_name": type_name, "no_quota": True})
    states.begin(s, Volume, dest_id, "delete", task_id=delete.id)

    def start_delete() -> None:
        tasks.start(rt, delete)

    return start_delete


tasks.register("migrate_volume", tasks.Handler(_run_migrate, _settle_migrate))

