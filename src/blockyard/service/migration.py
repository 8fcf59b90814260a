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
live on the source backend and would be stranded; so are a group's members.

An attached (in-use) volume is moved by compute, as in Cinder: only the guest can copy a disk
it is writing. The volume stays in-use (``retyping`` for a retype) and the task
(`_run_migrate_attached`) differs from step 2 on:

2. It creates the destination's object and makes the temporary row ``available`` (it stays
   hidden, but compute can attach it by id); sets migration_status ``completing`` (from now
   on the migration is compute's) and asks compute to swap the guest's disk, Nova's
   ``PUT /servers/{instance}/os-volume_attachments/{volume}`` with the temporary volume's id.
   Compute attaches the temporary volume, mirrors the disk onto it while the guest runs,
   pivots, and calls ``os-migrate_volume_completion`` (`complete`): in one transaction the
   identities are swapped as in step 3, and so are the attachments: compute's new one is now
   the volume's, the old one the temporary row's, so that compute deleting it next tears down
   the OLD object's export. Compute that gives up first deletes its attachment and completes
   with ``error``: migration_status ``error``, the source untouched.
3. The task waits (``[compute] swap_timeout``, polling the database) for the completion and
   then for the temporary row to lose its attachment; compute unreachable or refusing (4xx),
   or the time running out, is a failure (migration_status ``error``, a success that came
   first stands). Then the volume returns to in-use and the temporary row is deleted as above,
   whatever attachment compute left on it detached first.

A restart re-runs the task, which resumes from migration_status: still ``migrating`` means
compute was never asked (the destination is made ready again); ``completing`` is waited for and
never asked twice (a crash between the mark and the request costs the timeout, and then the
migration fails cleanly); ``success``/``error`` only waits for compute to let go of the
temporary row. An attached volume with more than one attachment is refused, as Nova refuses to
swap it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import logging
import threading
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import httpx
from sqlalchemy import ColumnElement, Connection, case, exists, select, update
from sqlalchemy import delete as delete_
from sqlalchemy.orm import Session

from blockyard import failpoints, states
from blockyard.backends import transfer
from blockyard.backends.base import VolumeDriver
from blockyard.db.models import Attachment, GroupVolumeType, Snapshot, Task, Volume, utcnow
from blockyard.errors import BlockyardError, Invalid, InvalidState, NotFound
from blockyard.exec import WaitTimeout, wait_until
from blockyard.model import ModelUpdate, OpenMode, VolumeRef
from blockyard.service import (
    attachments,
    compute_events,
    quotas,
    records,
    scheduler,
    tasks,
    volume_ops,
)
from blockyard.service import types as vtypes
from blockyard.service.identity import Identity, authorize
from blockyard.service.records import AttachmentRecord, VolumeRecord
from blockyard.service.runtime import Backend, Runtime
from blockyard.service_auth import ServiceTokenError
from blockyard.states import MigrationStatus, VolumeStatus

log = logging.getLogger(__name__)

#: the metadata key the API shows a running migration's progress under
PROGRESS_KEY = "blockyard:migration_progress"
#: the busy action of a migration → that of the same migration of an attached volume
ATTACHED_ACTIONS = {"migrate": "migrate_attached", "migrate_locked": "migrate_attached",
                    "retype_migrate": "retype_migrate_attached"}


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


def _refuse_unless_migratable(rt: Runtime, v: VolumeRecord, *, snapshots: bool) -> None:
    """Cinder's checks and wording, in Cinder's order; then what moving an attached volume
    needs (one attachment, to an instance, and a compute service to ask)."""
    if v.migration_status in states.MIGRATION_ACTIVE or (
            v.migration_status or "").startswith(states.MIGRATION_TARGET):
        raise Invalid(f"Invalid volume: Volume {v.id} is already part of an active migration.")
    if v.status not in (VolumeStatus.AVAILABLE, VolumeStatus.IN_USE):
        raise Invalid(f"Invalid volume: Volume {v.id} status must be available or in-use, but "
                      f"current status is: {v.status}.")
    if snapshots:
        raise Invalid(f"Invalid volume: Volume {v.id} must not have snapshots.")
    if v.group_id is not None:  # a group's volumes live on the group's backend
        raise Invalid(f"Invalid volume: Volume {v.id} must not be part of a group.")
    if v.status == VolumeStatus.IN_USE:
        _attachment_to_swap(rt, v)


def _attachment_to_swap(rt: Runtime, v: VolumeRecord) -> AttachmentRecord:
    """The one attachment of in-use volume `v` whose instance compute is asked to swap."""
    if len(v.attachments) > 1:  # Nova refuses to swap these (MultiattachSwapVolumeNotSupported)
        raise Invalid("Invalid volume: Swapping multi-attach volumes with more than one "
                      "read/write attachment is not supported.")
    att = v.attachments[0] if v.attachments else None
    if att is None or att.attach_status != states.AttachStatus.ATTACHED \
            or not att.instance_uuid:
        raise Invalid(f"Invalid volume: Volume {v.id} is in-use but not attached to an "
                      f"instance; only compute can move an attached volume: detach it first.")
    if rt.config.compute.url is None:
        raise Invalid(f"Invalid volume: Volume {v.id} is attached, and moving an attached "
                      f"volume needs the compute service, but [compute] url is not "
                      f"configured.")
    return att


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
    swap: dict[str, Any] = {}
    attached: tuple[ColumnElement[bool], ...] = (
        Volume.attach_status == states.AttachStatus.DETACHED,)
    if v.status == VolumeStatus.IN_USE:  # compute moves the data: `_run_migrate_attached`
        att = _attachment_to_swap(rt, v)
        swap = {"attachment_id": att.id, "instance_uuid": att.instance_uuid}
        action = ATTACHED_ACTIONS[action]
        # still that one attachment, attached, and no other
        attached = (Volume.attach_status == states.AttachStatus.ATTACHED,
                    exists().where(Attachment.id == att.id, Attachment.volume_id == v.id,
                                   Attachment.attach_status == states.AttachStatus.ATTACHED),
                    ~exists().where(Attachment.volume_id == v.id, Attachment.id != att.id))
    with rt.db.write() as s:
        task = tasks.enqueue(s, "migrate_volume", v.backend, v.id, {
            **volume_ops.ref_payload(v), "dest_id": dest_id, "dest_backend": dest.name,
            "action": action, "new_type_id": new_type.id if new_type else None,
            "new_type_name": new_type.name if new_type else None, **swap})
        volume_ops.begin_as_read(
            s, v, action, task_id=task.id, values={"migration_status": MigrationStatus.STARTING},
            where=(Volume.pins == 0, volume_ops.no_snapshots(v.id), Volume.group_id.is_(None),
                   *attached, states.migration_may_become(MigrationStatus.STARTING)),
            busy=Invalid(f"Invalid volume: Volume {v.id} is busy (being copied, "
                         f"snapshotted, attached, detached or changed); migrate it "
                         f"afterwards."))
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
        _refuse_unless_migratable(rt, v, snapshots=_has_snapshots(rt, v.id))
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
        _refuse_unless_migratable(rt, v, snapshots=_has_snapshots(rt, v.id))
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

    This is how compute ends the migration of an attached volume, after it mirrored the
    guest's disk onto the temporary destination and pivoted (or gave up): `_complete_swap`
    swaps the two rows' identities and attachments, or, with `error`, the migration fails and
    the source stays as it was. The migration of a detached volume is blockyard's own task's
    to complete, so such a pair is refused. Two volumes not migrating at all get Cinder's
    answer (the new volume's id): that is the end of a plain swap (Nova's swap_volume of an
    attached volume), where the compute agent itself completes the new volume's attachment
    and deletes the old one's, so nothing is moved here (Cinder's detach/attach of the legacy
    flow has no counterpart).
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
    if old.attach_status == states.AttachStatus.DETACHED:
        raise Invalid(f"Invalid volume: The migration of volume {volume_id} is carried out "
                      f"by blockyard's own task, which completes (or fails) it by itself.")
    with rt.db.write() as s:
        if error:
            done = _fail_swap(s, volume_id)
        else:
            done = _complete_swap(s, volume_id, new_volume_id)
    failpoints.hit("migrate_volume.completed")
    if not done and not _completed_already(rt, volume_id, new_volume_id, error):
        raise Invalid(f"Invalid volume: Volume {volume_id} is no longer waiting for compute "
                      f"to complete its migration (its migration_status is "
                      f"{_migration_status(rt, volume_id)}).")
    log.info("migration of attached volume %s completed by compute (%s)", volume_id,
             "error" if error else "success")
    return volume_id


def _completed_already(rt: Runtime, volume_id: str, dest_id: str, error: bool) -> bool:
    """Was this very completion done before? Compute repeats one whose answer it lost (the
    service died after committing it), and must get the same answer, not a refusal: after
    a success the volume names the destination's object (`_identity_of`), after an error it
    has migration_status ``error``; either way until the task settles."""
    with rt.db.reading() as conn:
        src = _row(conn, volume_id)
    if src is None or src.task_id is None:
        return False
    if error:
        return bool(src.migration_status == MigrationStatus.ERROR)
    return bool(src.migration_status == MigrationStatus.SUCCESS and src.name_id == dest_id)


def _fail_swap(s: Session, volume_id: str) -> bool:
    """Compute gave up before pivoting: the migration failed, the source keeps everything.
    The task waiting for compute removes the temporary volume."""
    src = _row(s, volume_id)
    return src is not None and src.task_id is not None and states.advance_migration(
        s, volume_id, MigrationStatus.ERROR, task_id=src.task_id,
        where=(Volume.migration_status == MigrationStatus.COMPLETING,))


def _complete_swap(s: Session, volume_id: str, dest_id: str) -> bool:
    """Compute pivoted the guest onto `dest_id`: in this one transaction the source row (same
    id) takes the destination's backend, object and export, the temporary row the source's,
    and their attachments change places too: the one compute made for the destination is the
    volume's now, and the old one, which compute deletes next, tears down the old object's
    export through the temporary row. False when the source is no longer waiting for this."""
    src, dst = _row(s, volume_id), _row(s, dest_id)
    if src is None or dst is None or src.task_id is None or dst.task_id is not None:
        return False
    swapped = states.advance_migration(
        s, volume_id, MigrationStatus.SUCCESS, task_id=src.task_id,
        where=(Volume.migration_status == MigrationStatus.COMPLETING,
               Volume.attach_status == states.AttachStatus.ATTACHED),
        values=_identity_of(dst, dest_id))
    if not swapped:
        return False
    s.connection().execute(
        update(Volume)
        .where(Volume.id == dest_id,
               Volume.migration_status == f"{states.MIGRATION_TARGET}{volume_id}")
        .values(**_identity_of(src, volume_id), updated_at=utcnow())
        .execution_options(synchronize_session=False))
    s.connection().execute(
        update(Attachment)
        .where(Attachment.volume_id.in_((volume_id, dest_id)))
        .values(volume_id=case((Attachment.volume_id == volume_id, dest_id), else_=volume_id),
                updated_at=utcnow())
        .execution_options(synchronize_session=False))
    # the temporary row now holds the old attachment (it was in-use with compute's new one)
    states.derive_attach_status(s, dest_id, "leave")
    return True


def _identity_of(row: Any, volume_id: str) -> dict[str, Any]:
    """What names the object behind the row `row` of volume `volume_id`, for another row."""
    return {"backend": row.backend, "name_id": row.name_id or volume_id,
            "provider_location": row.provider_location, "provider_auth": row.provider_auth,
            "availability_zone": row.availability_zone}


def _migration_status(rt: Runtime, volume_id: str) -> str | None:
    with rt.db.reading() as conn:
        got = conn.execute(select(Volume.migration_status)
                           .where(Volume.id == volume_id)).scalar()
    return None if got is None else str(got)


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
    if task.payload.get("attachment_id"):
        _run_migrate_attached(rt, task)
        return None
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


def _row(s: Session | Connection, volume_id: str) -> Any:
    conn = s.connection() if isinstance(s, Session) else s
    return conn.execute(
        select(Volume.backend, Volume.name_id, Volume.provider_location, Volume.provider_auth,
               Volume.availability_zone, Volume.status, Volume.task_id,
               Volume.migration_status)
        .where(Volume.id == volume_id)).first()


def _settle_migrate(s: Session, rt: Runtime, task: tasks.TaskView, result: Any,
                    error: BaseException | None) -> tasks.FollowUp | None:
    if task.payload.get("attachment_id"):
        return _settle_attached(s, rt, task)
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


# ---------------------------------------------------------------------------- attached volumes


class SwapRefused(BlockyardError):
    """Compute did not take the request to swap the guest's disk (unreachable, or refused)."""


#: the compute API microversion the swap request is sent with (Nova's swap is 2.1's)
SWAP_MICROVERSION = "2.1"
#: seconds between two looks at whether compute completed the swap
POLL_INTERVAL = 0.25


def _run_migrate_attached(rt: Runtime, task: tasks.TaskView) -> None:
    """Step 2 for an attached volume (module docstring): make the destination ready, ask
    compute to swap, wait for its completion, then for it to let go of the old object.

    Re-run after a restart, it resumes from what the database says: migration_status
    ``completing`` is written before compute is asked, so a volume still ``migrating`` was
    never handed to compute and is prepared (again); one ``completing`` is compute's, and is
    waited for, never asked twice; one settled (``success``/``error``) only waits for
    compute to let go of the temporary volume's attachment. Raises when the migration failed,
    so that the project is told (settling looks at migration_status, not at this)."""
    vid = task.resource_id
    dest_id = str(task.payload["dest_id"])
    timeout = rt.config.compute.swap_timeout
    if _migration_status(rt, vid) in (MigrationStatus.STARTING, MigrationStatus.MIGRATING):
        _advance(rt, task, MigrationStatus.MIGRATING)
        _prepare_destination(rt, task)
        failpoints.hit("migrate_volume.destination_ready")
        _advance(rt, task, MigrationStatus.COMPLETING)
        failpoints.hit("migrate_volume.before_swap")
        try:
            _ask_compute(rt, task)
        except SwapRefused as exc:
            log.warning("migration of attached volume %s: %s", vid, exc)
            _give_up(rt, task)
            attachments.remove_all(rt, dest_id)
            raise
        failpoints.hit("migrate_volume.swap_requested")
    if not _waited(lambda: _migration_status(rt, vid) not in states.MIGRATION_ACTIVE,
                   timeout):
        log.warning("migration of attached volume %s: compute did not complete the swap in "
                    "%g seconds; giving up on it", vid, timeout)
        _give_up(rt, task)
        timeout = 0  # compute is not answering: nothing to wait for below
    failpoints.hit("migrate_volume.swap_completed")
    # compute deletes the old attachment (now the temporary row's) after a success, or its
    # own new one before reporting an error; what it leaves is detached here
    if not _waited(lambda: not _has_attachments(rt, dest_id), timeout):
        log.warning("migration of attached volume %s: compute did not detach temporary "
                    "volume %s; detaching it here", vid, dest_id)
    attachments.remove_all(rt, dest_id)
    status = _migration_status(rt, vid)
    if status != MigrationStatus.SUCCESS:
        raise MigrationFailed(f"the migration of attached volume {vid} failed "
                              f"(migration_status {status}): see the compute service's log")


def _waited(done: Callable[[], bool], timeout: float) -> bool:
    """Did `done` become true within `timeout` seconds (looking every POLL_INTERVAL)?"""
    try:
        wait_until(done, timeout, POLL_INTERVAL)
    except WaitTimeout:
        return False
    return True


def _has_attachments(rt: Runtime, volume_id: str) -> bool:
    with rt.db.reading() as conn:
        return conn.execute(select(Attachment.id).where(Attachment.volume_id == volume_id)
                            .limit(1)).first() is not None


def _prepare_destination(rt: Runtime, task: tasks.TaskView) -> None:
    """Create the destination's object and make the temporary row available (and unowned)
    for the attachment compute makes; one a previous attempt made ready is kept."""
    dest_id = str(task.payload["dest_id"])
    with rt.db.reading() as conn:
        row = _row(conn, dest_id)
    if row is None or row.status != VolumeStatus.CREATING or row.task_id != task.id:
        return
    dst_drv = rt.backend(str(task.payload["dest_backend"])).driver
    dst_ref = _dest_ref(task)
    try:
        created = dst_drv.create_volume(dst_ref)
        with rt.db.write() as s:
            states.finish(s, Volume, dest_id, "create", task_id=task.id,
                          values=volume_ops.model_values(created))
    except BaseException:
        _remove_destination(task, dst_drv, dst_ref)
        raise


def _ask_compute(rt: Runtime, task: tasks.TaskView) -> None:
    """Ask compute to swap the instance's disk from the volume to the temporary one (Nova's
    swap volume: it answers 202 and works on); raises SwapRefused when it certainly did not
    take the request. A request that timed out may have been taken: it is waited for."""
    vid, instance = task.resource_id, str(task.payload["instance_uuid"])
    path = f"/servers/{instance}/os-volume_attachments/{vid}"
    body = {"volumeAttachment": {"volumeId": str(task.payload["dest_id"])}}
    try:
        response = compute_events.call(rt.config.compute, "PUT", path, body,
                                       auth=compute_events.service_auth(rt.config.auth),
                                       microversion=SWAP_MICROVERSION)
    except httpx.ReadTimeout:
        log.warning("migration of attached volume %s: compute did not answer the swap of "
                    "instance %s in time; waiting for it to complete", vid, instance)
        return
    except (httpx.HTTPError, httpx.InvalidURL, ServiceTokenError) as exc:
        raise SwapRefused(f"compute at {rt.config.compute.url} could not be asked to swap "
                          f"the disk of instance {instance}: {str(exc) or type(exc).__name__}"
                          ) from exc
    if response.status_code != 202:
        text = response.content.decode(errors="replace").strip()[:300]
        raise SwapRefused(f"compute refused to swap the disk of instance {instance}: "
                          f"{response.status_code} {text or response.reason_phrase}")
    log.info("migration of attached volume %s: compute swaps instance %s onto %s", vid,
             instance, task.payload["dest_id"])


def _give_up(rt: Runtime, task: tasks.TaskView) -> None:
    """The migration fails unless compute completed it meanwhile (the update is conditional:
    a success that came first stands)."""
    with rt.db.write() as s:
        states.advance_migration(s, task.resource_id, MigrationStatus.ERROR, task_id=task.id)


def _settle_attached(s: Session, rt: Runtime, task: tasks.TaskView) -> tasks.FollowUp | None:
    """Step 3 for an attached volume: the outcome is what migration_status says (compute's
    completion swapped the identities already, and a success stands whatever failed after
    it); the volume returns to in-use, and the temporary row is deleted with what it names
    then (the old object after a success, the destination's after a failure)."""
    p = task.payload
    vid, action = task.resource_id, str(p["action"])
    src = _row(s, vid)
    type_name, new_type = str(p["type_name"]), p.get("new_type_name")
    if src is not None and src.migration_status == MigrationStatus.SUCCESS:
        states.finish(s, Volume, vid, action, task_id=task.id, values={
            "volume_type_id": p["new_type_id"]} if p.get("new_type_id") else None)
        if new_type:
            quotas.consume(s, rt.config.quotas, str(p["project_id"]),
                           _type_deltas(type_name, -1, -int(p["size"])))
    else:
        states.advance_migration(s, vid, MigrationStatus.ERROR, task_id=task.id)
        states.fail(s, Volume, vid, action, task_id=task.id)
        if new_type:
            quotas.consume(s, rt.config.quotas, str(p["project_id"]),
                           _type_deltas(str(new_type), -1, -int(p["size"])))
    return _delete_temporary(s, rt, task)


def _delete_temporary(s: Session, rt: Runtime, task: tasks.TaskView) -> tasks.FollowUp | None:
    """Queue the delete of the migration's temporary row, with the object it names now."""
    p = task.payload
    dest_id = str(p["dest_id"])
    dst = _row(s, dest_id)
    if dst is None:
        return None
    if dst.task_id == task.id:  # never made ready
        states.fail(s, Volume, dest_id, "create", task_id=task.id)
    delete = tasks.enqueue(s, "delete_volume", str(dst.backend), dest_id, {
        "cascade": False, "size": int(p["size"]), "name_id": dst.name_id,
        "provider_location": dst.provider_location, "provider_auth": dst.provider_auth,
        "project_id": p["project_id"], "type_name": str(p["type_name"]), "no_quota": True})
    try:  # forced: whatever compute left on it goes too
        states.begin(s, Volume, dest_id, "force_delete", task_id=delete.id)
    except InvalidState:
        log.error("migration of volume %s: temporary volume %s is busy and is left for an "
                  "admin to delete", task.resource_id, dest_id)
        s.connection().execute(delete_(Task).where(Task.id == delete.id))
        return None

    def start_delete() -> None:
        tasks.start(rt, delete)

    return start_delete


tasks.register("migrate_volume", tasks.Handler(_run_migrate, _settle_migrate))

