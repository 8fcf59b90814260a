"""Encryption specs of volume types (Cinder's volume_type_encryption).

A type has at most one set of specs. Like Cinder, they cannot be created, changed or removed
while any volume has the type: those volumes were made under the old specs. The check and the
write share one write transaction, so a volume created meanwhile cannot slip between them.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import delete, exists, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from blockyard.db.models import Volume, VolumeTypeEncryption, utcnow
from blockyard.errors import Invalid, NotFound
from blockyard.service import type_admin
from blockyard.service.identity import Identity
from blockyard.service.runtime import Runtime

#: the columns a request may set
FIELDS = ("provider", "control_location", "cipher", "key_size")


@dataclass(frozen=True)
class EncryptionSpecs:
    volume_type_id: str
    encryption_id: str
    provider: str
    control_location: str
    cipher: str | None
    key_size: int | None
    created_at: datetime
    updated_at: datetime | None


def _view(row: VolumeTypeEncryption) -> EncryptionSpecs:
    return EncryptionSpecs(row.volume_type_id, row.encryption_id, row.provider,
                           row.control_location, row.cipher, row.key_size, row.created_at,
                           row.updated_at)


def _not_found(type_id: str) -> NotFound:
    return NotFound("VolumeTypeEncryption", type_id,
                    f"Volume type encryption for type {type_id} does not exist.")


def _refuse_if_in_use(session: Session, type_id: str, verb: str) -> None:
    if session.execute(select(exists().where(Volume.volume_type_id == type_id))).scalar():
        raise Invalid(f"Cannot {verb} encryption specs. Volume type in use.")


def get(rt: Runtime, who: Identity, type_id: str) -> EncryptionSpecs | None:
    """The type's specs, None when it has none; the type must exist."""
    with rt.db.read() as s:
        type_admin.by_id(s, who, type_id)
        row = s.get(VolumeTypeEncryption, type_id)
        return None if row is None else _view(row)


def create(rt: Runtime, who: Identity, type_id: str, values: dict[str, Any]) -> EncryptionSpecs:
    exists_already = Invalid(f"Volume type encryption for type {type_id} already exists.")
    try:
        with rt.db.write() as s:
            _refuse_if_in_use(s, type_id, "create")
            type_admin.by_id(s, who, type_id)
            if s.get(VolumeTypeEncryption, type_id) is not None:
                raise exists_already
            row = VolumeTypeEncryption(volume_type_id=type_id, encryption_id=str(uuid.uuid4()),
                                       created_at=utcnow(), **values)
            s.add(row)
            s.flush()
            return _view(row)
    except IntegrityError:  # a concurrent create for the same type won (PostgreSQL)
        raise exists_already from None


def update_specs(rt: Runtime, who: Identity, type_id: str, values: dict[str, Any]) -> None:
    with rt.db.write() as s:
        type_admin.by_id(s, who, type_id)
        _refuse_if_in_use(s, type_id, "update")
        result = s.execute(update(VolumeTypeEncryption)
                           .where(VolumeTypeEncryption.volume_type_id == type_id)
                           .values(updated_at=utcnow(), **values)
                           .execution_options(synchronize_session=False))
        if result.rowcount != 1:  # type: ignore[attr-defined]
            raise _not_found(type_id)


def delete_specs(rt: Runtime, who: Identity, type_id: str) -> None:
    with rt.db.write() as s:
        _refuse_if_in_use(s, type_id, "delete")
        result = s.execute(delete(VolumeTypeEncryption)
                           .where(VolumeTypeEncryption.volume_type_id == type_id)
                           .execution_options(synchronize_session=False))
        if result.rowcount != 1:  # type: ignore[attr-defined]
            raise _not_found(type_id)
