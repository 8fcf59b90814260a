"""Read models of volumes: what the API renders, fetched with a fixed, small number of queries.

Showing and listing volumes is most of the API's traffic (clients poll a volume until it is
ready), so it bypasses ORM object loading: one joined SELECT for the rows, one for their
metadata, and one for attachments only when some volume is attached.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from blockyard.db.models import Attachment, Volume, VolumeMetadata, VolumeType


@dataclass(slots=True)
class AttachmentRecord:
    id: str
    volume_id: str
    instance_uuid: str | None
    attached_host: str | None
    mountpoint: str | None
    attach_status: str
    attach_mode: str
    attach_time: datetime | None


@dataclass(slots=True)
class VolumeRecord:
    id: str
    project_id: str
    user_id: str
    name: str | None
    description: str | None
    size: int
    status: str
    attach_status: str
    availability_zone: str
    volume_type_id: str
    type_name: str
    backend: str
    snapshot_id: str | None
    source_volid: str | None
    bootable: bool
    readonly: bool
    multiattach: bool
    name_id: str | None
    migration_status: str | None
    created_at: datetime
    updated_at: datetime | None
    meta: dict[str, str] = field(default_factory=dict)
    attachments: list[AttachmentRecord] = field(default_factory=list)


_COLUMNS = (
    Volume.id, Volume.project_id, Volume.user_id, Volume.name, Volume.description, Volume.size,
    Volume.status, Volume.attach_status, Volume.availability_zone, Volume.volume_type_id,
    VolumeType.name, Volume.backend, Volume.snapshot_id, Volume.source_volid, Volume.bootable,
    Volume.readonly, Volume.multiattach, Volume.name_id, Volume.migration_status,
    Volume.created_at, Volume.updated_at,
)
_BY_IDS = select(*_COLUMNS).join(VolumeType, VolumeType.id == Volume.volume_type_id)
_ATTACHMENT_COLUMNS = (
    Attachment.id, Attachment.volume_id, Attachment.instance_uuid, Attachment.attached_host,
    Attachment.mountpoint, Attachment.attach_status, Attachment.attach_mode,
    Attachment.attach_time,
)


def fetch_volumes(session: Session, ids: Sequence[str]) -> list[VolumeRecord]:
    """Records of the volumes `ids`, in that order (missing ones are left out)."""
    if not ids:
        return []
    conn = session.connection()
    records: dict[str, VolumeRecord] = {}
    for row in conn.execute(_BY_IDS.where(Volume.id.in_(ids))):
        records[row[0]] = VolumeRecord(*row)  # type: ignore[call-arg]
    for volume_id, key, value in conn.execute(
        select(VolumeMetadata.volume_id, VolumeMetadata.key, VolumeMetadata.value)
        .where(VolumeMetadata.volume_id.in_(list(records)))
        .order_by(VolumeMetadata.key)
    ):
        records[volume_id].meta[key] = value
    attached = [r.id for r in records.values() if r.attach_status != "detached"]
    if attached:
        for arow in conn.execute(
            select(*_ATTACHMENT_COLUMNS)
            .where(Attachment.volume_id.in_(attached))
            .order_by(Attachment.created_at)
        ):
            records[arow[1]].attachments.append(AttachmentRecord(*arow))
    return [records[i] for i in ids if i in records]


def fetch_volume(session: Session, volume_id: str) -> VolumeRecord | None:
    found = fetch_volumes(session, [volume_id])
    return found[0] if found else None


def type_name(session: Session, type_id: str) -> str:
    """A volume type's name, without loading the type."""
    name: Any = session.execute(
        select(VolumeType.name).where(VolumeType.id == type_id)
    ).scalar_one()
    return str(name)
