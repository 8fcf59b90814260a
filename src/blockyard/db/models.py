"""SQLAlchemy models: the four nouns (Volume, Snapshot, Attachment, and the Backend they live on,
which is configuration, not a table) plus types, qos, quotas and the durable task queue.

Statuses are plain strings here, named by `blockyard.statuses`; `blockyard.states` owns every
change to them.
Queries must stay portable between SQLite and PostgreSQL.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    func,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from blockyard.statuses import AttachStatus


def utcnow() -> datetime:
    """Naive UTC, as Cinder renders timestamps (no offset)."""
    return datetime.now(UTC).replace(tzinfo=None)


class Base(DeclarativeBase):
    pass


class VolumeType(Base):
    __tablename__ = "volume_types"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    name: Mapped[str] = mapped_column(String(255), unique=True)
    description: Mapped[str | None] = mapped_column(String(255))
    is_public: Mapped[bool] = mapped_column(Boolean, default=True)
    qos_specs_id: Mapped[str | None] = mapped_column(ForeignKey("qos_specs.id"))
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    updated_at: Mapped[datetime | None] = mapped_column(DateTime)

    extra_specs: Mapped[list[VolumeTypeExtraSpec]] = relationship(
        cascade="all, delete-orphan", lazy="selectin"
    )
    projects: Mapped[list[VolumeTypeProject]] = relationship(
        cascade="all, delete-orphan", lazy="selectin"
    )

    @property
    def specs(self) -> dict[str, str]:
        return {s.key: s.value for s in self.extra_specs}


class VolumeTypeExtraSpec(Base):
    __tablename__ = "volume_type_extra_specs"

    volume_type_id: Mapped[str] = mapped_column(
        ForeignKey("volume_types.id", ondelete="CASCADE"), primary_key=True
    )
    key: Mapped[str] = mapped_column(String(255), primary_key=True)
    value: Mapped[str] = mapped_column(String(255))


class VolumeTypeProject(Base):
    """Which projects may use a private volume type."""

    __tablename__ = "volume_type_projects"

    volume_type_id: Mapped[str] = mapped_column(
        ForeignKey("volume_types.id", ondelete="CASCADE"), primary_key=True
    )
    project_id: Mapped[str] = mapped_column(String(255), primary_key=True)


class QosSpecs(Base):
    __tablename__ = "qos_specs"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    name: Mapped[str] = mapped_column(String(255), unique=True)
    consumer: Mapped[str] = mapped_column(String(32), default="back-end")
    specs: Mapped[dict[str, str]] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    updated_at: Mapped[datetime | None] = mapped_column(DateTime)


class Volume(Base):
    __tablename__ = "volumes"
    __table_args__ = (
        # default listing order (created_at desc, id desc) within a project, keyset paging
        Index("ix_volumes_project_created", "project_id", "created_at", "id"),
        Index("ix_volumes_created", "created_at", "id"),
        Index("ix_volumes_backend", "backend"),
        Index("ix_volumes_source_volid", "source_volid"),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    project_id: Mapped[str] = mapped_column(String(255))
    user_id: Mapped[str] = mapped_column(String(255))
    name: Mapped[str | None] = mapped_column(String(255))
    description: Mapped[str | None] = mapped_column(String(255))
    size: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(32))
    previous_status: Mapped[str | None] = mapped_column(String(32))
    attach_status: Mapped[str] = mapped_column(String(32), default=AttachStatus.DETACHED)
    availability_zone: Mapped[str] = mapped_column(String(255))
    volume_type_id: Mapped[str] = mapped_column(ForeignKey("volume_types.id"))
    #: the backend's config name; `host` renders as host@backend#pool
    backend: Mapped[str] = mapped_column(String(255))
    snapshot_id: Mapped[str | None] = mapped_column(String(36))
    source_volid: Mapped[str | None] = mapped_column(String(36))
    bootable: Mapped[bool] = mapped_column(Boolean, default=False)
    readonly: Mapped[bool] = mapped_column(Boolean, default=False)
    multiattach: Mapped[bool] = mapped_column(Boolean, default=False)
    provider_location: Mapped[str | None] = mapped_column(Text)
    provider_auth: Mapped[str | None] = mapped_column(Text)
    #: the backend object's id when it differs from `id` (after a migration)
    name_id: Mapped[str | None] = mapped_column(String(36))
    migration_status: Mapped[str | None] = mapped_column(String(255))
    #: the generic volume group the volume belongs to (3.13), if any
    group_id: Mapped[str | None] = mapped_column(String(36), index=True)
    #: the durable task working on this row, if any (see blockyard.states)
    task_id: Mapped[int | None] = mapped_column(Integer)
    #: how many copies are reading this volume right now (snapshots, clones): no delete meanwhile
    pins: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    updated_at: Mapped[datetime | None] = mapped_column(DateTime)

    # loaded on access only: the API reads volumes through blockyard.service.records
    volume_type: Mapped[VolumeType] = relationship(lazy="select")
    metadata_items: Mapped[list[VolumeMetadata]] = relationship(
        cascade="all, delete-orphan", lazy="select", order_by="VolumeMetadata.key"
    )
    attachments: Mapped[list[Attachment]] = relationship(
        lazy="select", order_by="Attachment.created_at", viewonly=True
    )

    @property
    def meta(self) -> dict[str, str]:
        return {m.key: m.value for m in self.metadata_items}


# sorting by name coalesces NULL to '' (see blockyard.service.listing): index that expression
Index("ix_volumes_project_sortname", Volume.project_id, func.coalesce(Volume.name, ""), Volume.id)
Index("ix_volumes_sortname", func.coalesce(Volume.name, ""), Volume.id)


class VolumeMetadata(Base):
    __tablename__ = "volume_metadata"

    volume_id: Mapped[str] = mapped_column(
        ForeignKey("volumes.id", ondelete="CASCADE"), primary_key=True
    )
    key: Mapped[str] = mapped_column(String(255), primary_key=True)
    value: Mapped[str] = mapped_column(String(255))


class Snapshot(Base):
    __tablename__ = "snapshots"
    __table_args__ = (
        Index("ix_snapshots_project_created", "project_id", "created_at", "id"),
        Index("ix_snapshots_volume", "volume_id"),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    project_id: Mapped[str] = mapped_column(String(255))
    user_id: Mapped[str] = mapped_column(String(255))
    volume_id: Mapped[str] = mapped_column(ForeignKey("volumes.id"))
    name: Mapped[str | None] = mapped_column(String(255))
    description: Mapped[str | None] = mapped_column(String(255))
    size: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(32))
    previous_status: Mapped[str | None] = mapped_column(String(32))
    progress: Mapped[str] = mapped_column(String(8), default="0%")
    volume_type_id: Mapped[str] = mapped_column(ForeignKey("volume_types.id"))
    provider_location: Mapped[str | None] = mapped_column(Text)
    #: the group snapshot this snapshot was taken for, as one of its members (3.14)
    group_snapshot_id: Mapped[str | None] = mapped_column(String(36), index=True)
    task_id: Mapped[int | None] = mapped_column(Integer)
    pins: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    updated_at: Mapped[datetime | None] = mapped_column(DateTime)

    metadata_items: Mapped[list[SnapshotMetadata]] = relationship(
        cascade="all, delete-orphan", lazy="selectin", order_by="SnapshotMetadata.key"
    )

    @property
    def meta(self) -> dict[str, str]:
        return {m.key: m.value for m in self.metadata_items}


class SnapshotMetadata(Base):
    __tablename__ = "snapshot_metadata"

    snapshot_id: Mapped[str] = mapped_column(
        ForeignKey("snapshots.id", ondelete="CASCADE"), primary_key=True
    )
    key: Mapped[str] = mapped_column(String(255), primary_key=True)
    value: Mapped[str] = mapped_column(String(255))


class Attachment(Base):
    __tablename__ = "attachments"
    __table_args__ = (Index("ix_attachments_volume", "volume_id"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    volume_id: Mapped[str] = mapped_column(ForeignKey("volumes.id"))
    project_id: Mapped[str] = mapped_column(String(255))
    instance_uuid: Mapped[str | None] = mapped_column(String(36))
    attached_host: Mapped[str | None] = mapped_column(String(255))
    mountpoint: Mapped[str | None] = mapped_column(String(255))
    attach_status: Mapped[str] = mapped_column(String(32))
    attach_mode: Mapped[str] = mapped_column(String(8), default="rw")
    # none_as_null: "no connector yet" must be SQL NULL, which the queries look for
    connector: Mapped[dict[str, Any] | None] = mapped_column(JSON(none_as_null=True))
    connection_info: Mapped[dict[str, Any] | None] = mapped_column(JSON(none_as_null=True))
    attach_time: Mapped[datetime | None] = mapped_column(DateTime)
    detach_time: Mapped[datetime | None] = mapped_column(DateTime)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    updated_at: Mapped[datetime | None] = mapped_column(DateTime)


class GroupType(Base):
    """A kind of generic volume group (3.11); its group specs describe what groups can do."""

    __tablename__ = "group_types"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    name: Mapped[str] = mapped_column(String(255), unique=True)
    description: Mapped[str | None] = mapped_column(String(255))
    is_public: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    updated_at: Mapped[datetime | None] = mapped_column(DateTime)

    spec_items: Mapped[list[GroupTypeSpec]] = relationship(
        cascade="all, delete-orphan", lazy="selectin", order_by="GroupTypeSpec.key"
    )

    @property
    def specs(self) -> dict[str, str | None]:
        return {s.key: s.value for s in self.spec_items}


class GroupTypeSpec(Base):
    __tablename__ = "group_type_specs"

    group_type_id: Mapped[str] = mapped_column(
        ForeignKey("group_types.id", ondelete="CASCADE"), primary_key=True
    )
    key: Mapped[str] = mapped_column(String(255), primary_key=True)
    #: Cinder's group specs API accepts null values
    value: Mapped[str | None] = mapped_column(String(255))


class Group(Base):
    """A generic volume group (3.13): volumes of the group's volume types on one backend, which
    can be snapshotted together and cloned together."""

    __tablename__ = "groups"
    __table_args__ = (Index("ix_groups_project_created", "project_id", "created_at", "id"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    project_id: Mapped[str] = mapped_column(String(255))
    user_id: Mapped[str] = mapped_column(String(255))
    name: Mapped[str | None] = mapped_column(String(255))
    description: Mapped[str | None] = mapped_column(String(255))
    status: Mapped[str] = mapped_column(String(32))
    previous_status: Mapped[str | None] = mapped_column(String(32))
    group_type_id: Mapped[str] = mapped_column(ForeignKey("group_types.id"))
    availability_zone: Mapped[str] = mapped_column(String(255))
    #: the backend every member volume lives on (Cinder's group host)
    backend: Mapped[str] = mapped_column(String(255))
    #: what the group was created from (3.14 create-from-src), if anything
    group_snapshot_id: Mapped[str | None] = mapped_column(String(36))
    source_group_id: Mapped[str | None] = mapped_column(String(36))
    #: the durable task working on this row, if any (see blockyard.states)
    task_id: Mapped[int | None] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    updated_at: Mapped[datetime | None] = mapped_column(DateTime)

    type_items: Mapped[list[GroupVolumeType]] = relationship(
        cascade="all, delete-orphan", lazy="selectin", order_by="GroupVolumeType.position"
    )

    @property
    def volume_type_ids(self) -> list[str]:
        return [t.volume_type_id for t in self.type_items]


class GroupVolumeType(Base):
    """The volume types a group accepts, in the order they were given."""

    __tablename__ = "group_volume_types"

    group_id: Mapped[str] = mapped_column(
        ForeignKey("groups.id", ondelete="CASCADE"), primary_key=True
    )
    volume_type_id: Mapped[str] = mapped_column(ForeignKey("volume_types.id"), primary_key=True)
    position: Mapped[int] = mapped_column(Integer, default=0)


class GroupSnapshot(Base):
    """Snapshots of every member of a group taken together (3.14); the members are Snapshot
    rows carrying its id in ``group_snapshot_id``."""

    __tablename__ = "group_snapshots"
    __table_args__ = (
        Index("ix_group_snapshots_project_created", "project_id", "created_at", "id"),
        Index("ix_group_snapshots_group", "group_id"),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    project_id: Mapped[str] = mapped_column(String(255))
    user_id: Mapped[str] = mapped_column(String(255))
    group_id: Mapped[str] = mapped_column(ForeignKey("groups.id"))
    group_type_id: Mapped[str] = mapped_column(String(36))
    name: Mapped[str | None] = mapped_column(String(255))
    description: Mapped[str | None] = mapped_column(String(255))
    status: Mapped[str] = mapped_column(String(32))
    previous_status: Mapped[str | None] = mapped_column(String(32))
    task_id: Mapped[int | None] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    updated_at: Mapped[datetime | None] = mapped_column(DateTime)


class Quota(Base):
    """A project's hard limit for one resource (volumes, gigabytes, volumes_<type>, ...)."""

    __tablename__ = "quotas"

    project_id: Mapped[str] = mapped_column(String(255), primary_key=True)
    resource: Mapped[str] = mapped_column(String(255), primary_key=True)
    hard_limit: Mapped[int] = mapped_column(Integer)


class QuotaClass(Base):
    """A quota class's hard limit for one resource. The class named ``default`` holds the
    defaults every project without a limit of its own gets (before the configured ones), as
    Cinder's ``quota_classes`` table."""

    __tablename__ = "quota_classes"

    class_name: Mapped[str] = mapped_column(String(255), primary_key=True)
    resource: Mapped[str] = mapped_column(String(300), primary_key=True)
    hard_limit: Mapped[int] = mapped_column(Integer)


class VolumeTypeEncryption(Base):
    """The encryption specs of a volume type (Cinder's ``encryption`` table): how volumes of
    the type are to be encrypted. One row per type at most."""

    __tablename__ = "volume_type_encryption"

    volume_type_id: Mapped[str] = mapped_column(
        ForeignKey("volume_types.id", ondelete="CASCADE"), primary_key=True
    )
    encryption_id: Mapped[str] = mapped_column(String(36), unique=True)
    provider: Mapped[str] = mapped_column(String(255))
    control_location: Mapped[str] = mapped_column(String(255))
    cipher: Mapped[str | None] = mapped_column(String(255))
    key_size: Mapped[int | None] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    updated_at: Mapped[datetime | None] = mapped_column(DateTime)


class QuotaUsage(Base):
    """What a project uses of one resource; changed only by conditional increments."""

    __tablename__ = "quota_usages"

    project_id: Mapped[str] = mapped_column(String(255), primary_key=True)
    resource: Mapped[str] = mapped_column(String(255), primary_key=True)
    in_use: Mapped[int] = mapped_column(Integer, default=0)


class Service(Base):
    """One of Cinder's services this process runs: ``cinder-scheduler`` at the host and one
    ``cinder-volume`` per backend at ``host@backend``. `updated_at` is the heartbeat (written
    every few seconds while the process runs; a stale one shows the service "down");
    `disabled` keeps the scheduler away from a backend, `frozen` refuses management ops."""

    __tablename__ = "services"
    __table_args__ = (UniqueConstraint("host", "binary", name="uq_services_host_binary"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    host: Mapped[str] = mapped_column(String(255))
    binary: Mapped[str] = mapped_column(String(255))
    #: the backend's config name for a cinder-volume service, None for the scheduler
    backend: Mapped[str | None] = mapped_column(String(255))
    availability_zone: Mapped[str] = mapped_column(String(255))
    disabled: Mapped[bool] = mapped_column(Boolean, default=False)
    disabled_reason: Mapped[str | None] = mapped_column(String(255))
    frozen: Mapped[bool] = mapped_column(Boolean, default=False)
    replication_status: Mapped[str] = mapped_column(String(36), default="disabled")
    active_backend_id: Mapped[str | None] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    updated_at: Mapped[datetime | None] = mapped_column(DateTime)


class Task(Base):
    """A durable unit of long work. It exists from the moment the work is accepted until the
    transaction that settles its resource's status; a restart re-runs every row left here."""

    __tablename__ = "tasks"
    # ids are never reused: rows are stamped with the id of the task that owns them
    __table_args__ = {"sqlite_autoincrement": True}

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    kind: Mapped[str] = mapped_column(String(64))
    backend: Mapped[str] = mapped_column(String(255))
    resource_id: Mapped[str] = mapped_column(String(36))
    payload: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class Transfer(Base):
    """An offer to give a volume (and, unless `no_snapshots`, its snapshots) to whichever
    project presents the auth key. Only a salted hash of the key is kept.

    An accepted transfer stays as history (`accepted`, `destination_project_id`) and is no
    longer listed; a cancelled one is removed. `volume_id` has no foreign key: history
    outlives the volume.
    """

    __tablename__ = "transfers"
    __table_args__ = (
        Index("ix_transfers_project_created", "source_project_id", "created_at", "id"),
        Index("ix_transfers_volume", "volume_id"),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    volume_id: Mapped[str] = mapped_column(String(36))
    name: Mapped[str | None] = mapped_column(String(255))
    #: random per transfer; the key derivation's parameters travel in `crypt_hash`
    salt: Mapped[str] = mapped_column(String(64))
    crypt_hash: Mapped[str] = mapped_column(String(255))
    no_snapshots: Mapped[bool] = mapped_column(Boolean, default=False)
    source_project_id: Mapped[str] = mapped_column(String(255))
    destination_project_id: Mapped[str | None] = mapped_column(String(255))
    accepted: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    updated_at: Mapped[datetime | None] = mapped_column(DateTime)


class Message(Base):
    """A user message: what went wrong with an asynchronous request, in Cinder's terms
    (event id built from resource type, action id and detail id); gone after `expires_at`."""

    __tablename__ = "messages"
    __table_args__ = (
        Index("ix_messages_project_created", "project_id", "created_at", "id"),
        Index("ix_messages_expires", "expires_at"),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    project_id: Mapped[str] = mapped_column(String(255))
    request_id: Mapped[str | None] = mapped_column(String(255))
    resource_type: Mapped[str | None] = mapped_column(String(255))
    resource_uuid: Mapped[str | None] = mapped_column(String(36))
    event_id: Mapped[str] = mapped_column(String(255))
    action_id: Mapped[str | None] = mapped_column(String(10))
    detail_id: Mapped[str | None] = mapped_column(String(10))
    message_level: Mapped[str] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(DateTime)
