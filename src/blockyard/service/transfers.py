"""Volume transfers: one project offers a volume, another takes it with the offer's key.

* `create` parks an `available` volume in `awaiting-transfer` (a conditional update in
  `blockyard.states`; nothing else can start on it meanwhile) and stores the offer with a
  random auth key. The key is returned once; only a salted scrypt hash of it is kept.
* `accept`, given the right key, moves in one transaction the volume (and, unless the offer
  says `no_snapshots`, its snapshots) to the caller's project and the quota usage they count
  from the giving project to the taking one; over the taker's quota nothing moves (413).
  The accepted offer stays as history and is no longer listed.
* `delete` withdraws an offer: the volume is `available` to its owner again.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import delete, exists, insert, select, update
from sqlalchemy.orm import Session

from blockyard import states
from blockyard.db.models import Base, Snapshot, Transfer, Volume, utcnow
from blockyard.errors import Invalid, InvalidState, NotFound
from blockyard.service import quotas, records
from blockyard.service.identity import Identity, authorize, can_see_all
from blockyard.service.listing import ListParams, Page, paginate
from blockyard.service.runtime import Runtime
from blockyard.states import SnapshotStatus, VolumeStatus

#: characters of the auth key handed out (Cinder's volume_transfer_key_length: hex digits a
#: person can type)
KEY_LENGTH = 16
#: scrypt cost: ~16 MiB and some tens of milliseconds per check, so a stolen database does not
#: give the keys away cheaply; stored with the hash so that it can be raised later
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**14, 8, 1

_INSERT = insert(Base.metadata.tables["transfers"])


@dataclass(frozen=True)
class TransferView:
    """A transfer as the API shows it; `auth_key` only in the answer to its creation."""

    id: str
    volume_id: str
    name: str | None
    no_snapshots: bool
    source_project_id: str
    destination_project_id: str | None
    accepted: bool
    created_at: datetime
    auth_key: str | None = None


def _view(t: Transfer, auth_key: str | None = None) -> TransferView:
    return TransferView(t.id, t.volume_id, t.name, t.no_snapshots, t.source_project_id,
                        t.destination_project_id, t.accepted, t.created_at, auth_key)


# ---------------------------------------------------------------------------- the key


def hash_key(salt: str, auth_key: str) -> str:
    """``scrypt$N$r$p$<hex digest>`` of `auth_key` under `salt` (hex)."""
    digest = hashlib.scrypt(auth_key.encode(), salt=bytes.fromhex(salt), n=SCRYPT_N,
                            r=SCRYPT_R, p=SCRYPT_P, dklen=32)
    return f"scrypt${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${digest.hex()}"


def key_matches(salt: str, stored: str, auth_key: str) -> bool:
    """Does `auth_key` hash to `stored`? Compared in constant time."""
    algorithm, n, r, p, expected = stored.split("$")
    if algorithm != "scrypt":
        return False
    # any text is a candidate key, even one that is not valid UTF-8: it simply does not match
    digest = hashlib.scrypt(auth_key.encode("utf-8", "surrogatepass"), salt=bytes.fromhex(salt),
                            n=int(n), r=int(r), p=int(p), dklen=len(expected) // 2)
    return hmac.compare_digest(digest.hex(), expected)


# ---------------------------------------------------------------------------- create


def _busy_snapshot(volume_id: str) -> tuple[Any, ...]:
    """A snapshot of the volume that is anything but `available` and idle."""
    return (Snapshot.volume_id == volume_id,
            (Snapshot.status != SnapshotStatus.AVAILABLE) | Snapshot.task_id.is_not(None))


def _snapshots_settled(volume_id: str) -> Any:
    """No snapshot of the volume is busy (they move with it)."""
    return ~exists().where(*_busy_snapshot(volume_id))


def create(rt: Runtime, who: Identity, volume_id: str, name: str | None,
           no_snapshots: bool = False) -> TransferView:
    """Offer `volume_id` for transfer; the answer carries the auth key, shown this once."""
    auth_key = secrets.token_hex(KEY_LENGTH // 2)
    salt = secrets.token_hex(16)
    crypt_hash = hash_key(salt, auth_key)
    ident = str(uuid.uuid4())
    with rt.db.write() as s:
        owner = s.execute(select(Volume.project_id).where(Volume.id == volume_id)).scalar()
        if owner is None:
            raise NotFound("Volume", volume_id)
        authorize(who, "volume:create_transfer", owner, hidden=NotFound("Volume", volume_id))
        conditions: list[Any] = [states.not_migrating()]
        if not no_snapshots:
            conditions.append(_snapshots_settled(volume_id))
        try:
            states.begin(s, Volume, volume_id, "offer_transfer", where=tuple(conditions))
        except InvalidState as exc:
            raise _why_not_offered(s, volume_id, exc) from exc
        # an older open offer of this volume is stale (an admin reset the volume to
        # `available` since): it goes, so that its key cannot take the volume offered anew and
        # withdrawing it cannot cancel the new offer
        s.execute(delete(Transfer).where(Transfer.volume_id == volume_id,
                                         Transfer.accepted.is_(False)))
        now = utcnow()
        s.connection().execute(_INSERT, {
            "id": ident, "volume_id": volume_id, "name": name, "salt": salt,
            "crypt_hash": crypt_hash, "no_snapshots": no_snapshots,
            "source_project_id": owner, "destination_project_id": None, "accepted": False,
            "created_at": now, "updated_at": None})
    return TransferView(ident, volume_id, name, no_snapshots, owner, None, False, now,
                        auth_key)


def _why_not_offered(s: Session, volume_id: str, exc: InvalidState) -> Invalid:
    if exc.current != VolumeStatus.AVAILABLE:
        return Invalid(f"Invalid volume: status must be available, but current status is: "
                       f"{exc.current}.")
    busy = s.execute(select(Snapshot.id).where(*_busy_snapshot(volume_id))).scalar()
    if busy is not None:
        return Invalid(f"Invalid snapshot: snapshot: {busy} status must be available")
    return Invalid(f"Invalid volume: Volume {volume_id} is being migrated.")


# ---------------------------------------------------------------------------- reads


def _open() -> Any:
    """Offers still open whose volume still exists (a force-deleted volume ends its offer)."""
    return (select(Transfer)
            .where(Transfer.accepted.is_(False),
                   exists().where(Volume.id == Transfer.volume_id)))


def get(rt: Runtime, who: Identity, transfer_id: str) -> TransferView:
    with rt.db.read() as s:
        t = _open_offer(s, transfer_id)
        authorize(who, "volume:get_transfer", t.source_project_id, hidden=_missing(transfer_id))
        return _view(t)


def _open_offer(s: Session, transfer_id: str) -> Transfer:
    """The open offer `transfer_id`, or NotFound (also once it is accepted or withdrawn)."""
    t: Transfer | None = s.execute(_open().where(Transfer.id == transfer_id)).scalar()
    if t is None:
        raise _missing(transfer_id)
    return t


def _missing(transfer_id: str) -> NotFound:
    return NotFound("Transfer", transfer_id, f"Transfer {transfer_id} could not be found.")


#: API sort keys → Transfer columns
SORTABLE = {"created_at": "created_at", "id": "id", "name": "name", "display_name": "name",
            "volume_id": "volume_id", "updated_at": "updated_at"}
FILTERS = {"name": "name", "display_name": "name", "volume_id": "volume_id",
           "id": "id", "source_project_id": "source_project_id"}


def list_transfers(rt: Runtime, who: Identity, params: ListParams, *,
                   all_projects: bool) -> Page:
    """One page of the open offers of the caller's project (every project's with
    `all_projects`, for admins). A filter on a key transfers do not have matches nothing,
    as in Cinder."""
    q = _open()
    if not (all_projects and can_see_all(who)):
        q = q.where(Transfer.source_project_id == who.project_id)
    for key, value in params.filters.items():
        column = FILTERS.get(key)
        if column is None:
            return Page(rows=[], next_marker=None, count=0 if params.with_count else None)
        q = q.where(getattr(Transfer, column) == value)
    with rt.db.read() as s:
        page = paginate(s, Transfer, q, params, sortable=SORTABLE,
                        nullable={"name": "", "updated_at": Transfer.created_at})
        page.rows = [_view(t) for t in page.rows]
        return page


# ---------------------------------------------------------------------------- accept


def accept(rt: Runtime, who: Identity, transfer_id: str, auth_key: str) -> TransferView:
    """Take the offered volume into the caller's project, if `auth_key` is the offer's."""
    with rt.db.read() as s:
        t = _open_offer(s, transfer_id)
        offer = _view(t)
        salt, crypt_hash = t.salt, t.crypt_hash
    if not key_matches(salt, crypt_hash, auth_key):
        raise Invalid(f"Invalid auth key: Attempt to transfer {transfer_id} with invalid auth "
                      f"key.")
    giver, taker = offer.source_project_id, who.project_id
    with rt.db.write() as s:
        taken = s.execute(
            update(Transfer)
            .where(Transfer.id == transfer_id, Transfer.accepted.is_(False),
                   Transfer.crypt_hash == crypt_hash)
            .values(accepted=True, destination_project_id=taker, updated_at=utcnow())
            .execution_options(synchronize_session=False))
        if taken.rowcount != 1:  # type: ignore[attr-defined]
            raise _missing(transfer_id)  # withdrawn or accepted meanwhile
        volume = s.execute(select(Volume.size, Volume.volume_type_id)
                           .where(Volume.id == offer.volume_id)).first()
        if volume is None:
            raise _missing(transfer_id)
        size, type_id = int(volume.size), str(volume.volume_type_id)
        per_volume = quotas.limit_of(s, rt.config.quotas, taker, "per_volume_gigabytes")
        if 0 <= per_volume < size:
            raise Invalid(f"Volume size {size}G exceeds the allowed per volume quota of "
                          f"{per_volume}G.")
        states.begin(s, Volume, offer.volume_id, "accept_transfer",
                     where=(Volume.project_id == giver,),
                     values={"project_id": taker, "user_id": who.user_id})
        type_name = records.type_name(s, type_id)
        moved = quotas.volume_deltas(type_name, 1, size)
        if not offer.no_snapshots:
            snaps = _move_snapshots(s, offer.volume_id, giver, who)
            for resource, delta in quotas.snapshot_deltas(
                    type_name, len(snaps), sum(snaps)).items():
                moved[resource] = moved.get(resource, 0) + delta
        if taker != giver:
            # the taker's increase is checked against its limits first; over them, the raised
            # error rolls the whole transfer back
            quotas.consume(s, rt.config.quotas, taker, moved)
            quotas.consume(s, rt.config.quotas, giver, {r: -d for r, d in moved.items()})
    return offer


def _move_snapshots(s: Session, volume_id: str, giver: str, who: Identity) -> list[int]:
    """Give every snapshot of the volume to the taker; returns their sizes. They must all be
    `available` and idle (they were when the offer was made, and stay so: a snapshot of a
    volume awaiting transfer cannot be taken, and a deleted one is simply not moved).

    Only the giver's snapshots move and count: one left behind by an earlier
    `no_snapshots` transfer still belongs to (and is counted for) its own project."""
    rows = s.execute(select(Snapshot.id, Snapshot.size, Snapshot.status, Snapshot.task_id)
                     .where(Snapshot.volume_id == volume_id,
                            Snapshot.project_id == giver)).all()
    for sid, _size, status, task_id in rows:
        if status != SnapshotStatus.AVAILABLE or task_id is not None:
            raise Invalid(f"Invalid snapshot: snapshot: {sid} status must be available")
    s.execute(update(Snapshot)
              .where(Snapshot.volume_id == volume_id, Snapshot.project_id == giver,
                     Snapshot.status == SnapshotStatus.AVAILABLE, Snapshot.task_id.is_(None))
              .values(project_id=who.project_id, user_id=who.user_id, updated_at=utcnow())
              .execution_options(synchronize_session=False))
    return [int(size) for _sid, size, _status, _task in rows]


# ---------------------------------------------------------------------------- delete


def delete_transfer(rt: Runtime, who: Identity, transfer_id: str) -> None:
    """Withdraw an open offer; its volume is `available` to its owner again."""
    with rt.db.write() as s:
        t = _open_offer(s, transfer_id)
        authorize(who, "volume:delete_transfer", t.source_project_id, hidden=_missing(transfer_id))
        s.execute(delete(Transfer).where(Transfer.id == transfer_id,
                                         Transfer.accepted.is_(False)))
        try:
            states.begin(s, Volume, t.volume_id, "cancel_transfer")
        except (InvalidState, NotFound):
            pass  # an admin reset the volume meanwhile: the offer goes all the same
