"""Read models of volumes: what the API renders, fetched with a fixed, small number of queries.

Showing and listing volumes is most of the API's traffic (clients poll a volume until it is
ready), so it bypasses the ORM: one prebuilt SELECT joins each volume with its type's name and
its metadata, and a second one reads attachments only when some volume is attached. The
functions take a Connection, so callers can run them inside an ORM transaction
(``session.connection()``) or on a bare connection.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, bindparam, select
from sqlalchemy.orm import Session

from blockyard.db.models import Attachment, Volume, VolumeMetadata, VolumeType
from blockyard.states import AttachStatus


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
    provider_location: str | None
    #: secrets of the export (CHAP): for drivers, never rendered
    provider_auth: str | None = field(repr=False)
    #: the generic volume group the volume belongs to (3.13)
    group_id: str | None
    meta: dict[str, str] = field(default_factory=dict)
    attachments: list[AttachmentRecord] = field(default_factory=list)


_COLUMNS = (
    Volume.id, Volume.project_id, Volume.user_id, Volume.name, Volume.description, Volume.size,
    Volume.status, Volume.attach_status, Volume.availability_zone, Volume.volume_type_id,
    VolumeType.name, Volume.backend, Volume.snapshot_id, Volume.source_volid, Volume.bootable,
    Volume.readonly, Volume.multiattach, Volume.name_id, Volume.migration_status,
    Volume.created_at, Volume.updated_at, Volume.provider_location, Volume.provider_auth,
    Volume.group_id,
)
_WIDTH = len(_COLUMNS)
#: volumes with their type's name and their metadata, one row per metadata item (or one row
#: with NULL key when there is none); built once so that SQLAlchemy's compiled cache serves it
_WITH_METADATA = (
    select(*_COLUMNS, VolumeMetadata.key, VolumeMetadata.value)
    .join(VolumeType, VolumeType.id == Volume.volume_type_id)
    .outerjoin(VolumeMetadata, VolumeMetadata.volume_id == Volume.id)
)
_BY_ID = _WITH_METADATA.where(Volume.id == bindparam("id")).order_by(VolumeMetadata.key)
_BY_IDS = _WITH_METADATA.where(Volume.id.in_(bindparam("ids", expanding=True))).order_by(
    VolumeMetadata.key
)
_ATTACHMENTS = (
    select(
        Attachment.id, Attachment.volume_id, Attachment.instance_uuid,
        Attachment.attached_host, Attachment.mountpoint, Attachment.attach_status,
        Attachment.attach_mode, Attachment.attach_time,
    )
    .where(Attachment.volume_id.in_(bindparam("ids", expanding=True)))
    .order_by(Attachment.created_at)
)


def _collect(conn: Connection, rows: Any) -> dict[str, VolumeRecord]:
    records: dict[str, VolumeRecord] = {}
    for row in rows:
        record = records.get(row[0])
        if record is None:
            record = records[row[0]] = VolumeRecord(*row[:_WIDTH])
        if row[_WIDTH] is not None:
            record.meta[row[_WIDTH]] = row[_WIDTH + 1]
    attached = [r.id for r in records.values() if r.attach_status != AttachStatus.DETACHED]
    if attached:
        for arow in conn.execute(_ATTACHMENTS, {"ids": attached}):
            records[arow[1]].attachments.append(AttachmentRecord(*arow))
    return records


def fetch_volumes(conn: Connection, ids: Sequence[str]) -> list[VolumeRecord]:
    """Records of the volumes `ids`, in that order (missing ones are left out)."""
    if not ids:
        return []
    records = _collect(conn, conn.execute(_BY_IDS, {"ids": list(ids)}))
    return [records[i] for i in ids if i in records]


def fetch_volume(conn: Connection, volume_id: str) -> VolumeRecord | None:
    return _collect(conn, conn.execute(_BY_ID, {"id": volume_id})).get(volume_id)


def type_name(session: Session, type_id: str) -> str:
    """A volume type's name, without loading the type."""
    name: Any = session.execute(
        select(VolumeType.name).where(VolumeType.id == type_id)
    ).scalar_one()
    return str(name)
