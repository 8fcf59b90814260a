"""The agent's persistent state: instances and their block-device mappings, in SQLite.

A mapping row is written *before* anything else happens on attach (it reserves the device
slot, and its unique keys make two attaches of one volume to one instance, or of two volumes
to one slot, lose at the database rather than in QEMU), and it records each step as the
workflow passes it (`attachment_id`, `connected`, `status`), so that after a crash the agent
knows what to finish or undo. Its status moves only by the conditional updates that
MAPPING_TRANSITIONS declares (`begin_mapping`, `finish_mapping`, `fail_mapping`). The agent
owns this file alone; the volume service's state is reached only through its API.

The schema is created on first start (`create_all`). Columns added since are all nullable,
and a state file an earlier agent wrote gets them at start (`add_missing_columns`), so an
upgraded agent keeps its instances and mappings.
"""

from __future__ import annotations

import string
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    ForeignKey,
    Integer,
    String,
    UniqueConstraint,
    create_engine,
    delete,
    event,
    inspect,
    select,
    text,
    update,
)
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker
from sqlalchemy.schema import CreateColumn

from blockyard.errors import Conflict, Invalid, InvalidState, NotFound
from blockyard.statuses import Transition


def utcnow() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


class InstanceStatus(StrEnum):
    """Nova's server statuses, the subset the agent produces."""

    BUILD = "BUILD"
    ACTIVE = "ACTIVE"
    SHUTOFF = "SHUTOFF"
    ERROR = "ERROR"


class MappingStatus(StrEnum):
    #: the slot is taken; nothing exists outside the agent yet, or undo is under way
    ATTACHING = "attaching"
    #: the guest has the disk and the volume service knows (attachment complete)
    ATTACHED = "attached"
    #: detach accepted (then begin_detaching); back to ATTACHED if it fails or the guest refuses
    DETACHING = "detaching"
    #: the guest's disk is being moved to another volume (swap_volume; `Mapping.swap` says
    #: how far); ATTACHED again when it is done or undone
    SWAPPING = "swapping"


#: a mapping's transitions, in the shape of `blockyard.states`' tables (the agent keeps its
#: own: it does not import the volume service's state machine). A mapping is inserted
#: `attaching` (`Store.reserve`) and leaves by deleting its row, detached or rolled back.
MAPPING_TRANSITIONS: dict[str, Transition] = {
    # the attach workflow ends: attaching → attached (a failed attach removes the row)
    "attach": Transition((MappingStatus.ATTACHING,), MappingStatus.ATTACHING,
                         MappingStatus.ATTACHED, None),
    # a detach is accepted: attached → detaching; success removes the row, a failure (the
    # volume service refusing, the guest keeping the disk) makes it attached again
    "detach": Transition((MappingStatus.ATTACHED,), MappingStatus.DETACHING, None,
                         MappingStatus.ATTACHED),
    # a swap is accepted: attached → swapping; it ends attached whether the guest moved to
    # the new volume (the row then names it) or stayed on the old one
    "swap": Transition((MappingStatus.ATTACHED,), MappingStatus.SWAPPING,
                       MappingStatus.ATTACHED, MappingStatus.ATTACHED),
}


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON}


class Instance(Base):
    __tablename__ = "instances"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    name: Mapped[str] = mapped_column(String(255))
    project_id: Mapped[str] = mapped_column(String(255))
    user_id: Mapped[str] = mapped_column(String(255))
    status: Mapped[str] = mapped_column(String(16))
    image: Mapped[str | None] = mapped_column(String(255))
    flavor: Mapped[str | None] = mapped_column(String(255))
    #: the QMP socket; ours for guests we started, the caller's for adopted ones
    qmp_socket: Mapped[str] = mapped_column(String(1024))
    console_socket: Mapped[str | None] = mapped_column(String(1024))
    pid: Mapped[int | None] = mapped_column(Integer)
    #: True: started by someone else and adopted; deleting it only forgets it
    adopted: Mapped[bool] = mapped_column(Boolean, default=False)
    fault: Mapped[str | None] = mapped_column(String(1024))
    #: the volumes the agent created for this server while building it (block device
    #: mappings with source_type image or blank), recorded as each is created: a restart
    #: that finds the server still BUILD deletes them (`Agent._abandon_build`)
    build_volumes: Mapped[list[str] | None] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow, onupdate=utcnow)


class Mapping(Base):
    """A block-device mapping: one volume in one instance (Nova's BDM)."""

    __tablename__ = "block_device_mappings"
    __table_args__ = (
        UniqueConstraint("instance_id", "volume_id"),
        UniqueConstraint("instance_id", "device_name"),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    instance_id: Mapped[str] = mapped_column(ForeignKey("instances.id", ondelete="CASCADE"))
    volume_id: Mapped[str] = mapped_column(String(36))
    project_id: Mapped[str] = mapped_column(String(255))
    #: the slot name Nova would report (/dev/vdb, ...): a hint, the guest names disks itself
    device_name: Mapped[str] = mapped_column(String(32))
    status: Mapped[str] = mapped_column(String(16))
    attachment_id: Mapped[str | None] = mapped_column(String(36))
    #: the protocol of the connection (local, nbd, iscsi), once known
    protocol: Mapped[str | None] = mapped_column(String(16))
    #: this mapping holds a host connection (connect_volume succeeded)
    connected: Mapped[bool] = mapped_column(Boolean, default=False)
    #: the host device connect_volume returned (path, bridge), to disconnect it later
    device: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    tag: Mapped[str | None] = mapped_column(String(60))
    delete_on_termination: Mapped[bool] = mapped_column(Boolean, default=False)
    #: Nova's boot_index: 0 is the disk the guest boots from; None for volumes attached
    #: to a running server (and for boot_index -1: no boot device)
    boot_index: Mapped[int | None] = mapped_column(Integer)
    #: where the volume came from when the server was created with it (block_device_mapping_v2
    #: source_type: volume, image, blank); None for volumes attached to a running server
    source_type: Mapped[str | None] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    #: the block node the device uses, once a swap moved it off the first one (None: the
    #: name derived from the mapping's id)
    node: Mapped[str | None] = mapped_column(String(32))
    #: the serial the guest's device carries, once a swap gave the mapping another volume
    #: (the device keeps the old volume's, as in Nova: the guest finds its disk where it was)
    disk_serial: Mapped[str | None] = mapped_column(String(20))
    #: a swap under way: each step it has taken outside the agent (see compute.swap)
    swap: Mapped[dict[str, Any] | None] = mapped_column(JSON)

    @property
    def node_name(self) -> str:
        """The QEMU block node (at most 25 characters: see hypervisor.MAX_NODE_NAME)."""
        return self.node or "bv" + self.id.replace("-", "")[:20]

    @property
    def device_id(self) -> str:
        """The QEMU device id of the virtio-blk disk."""
        return "disk-" + self.id

    @property
    def serial(self) -> str:
        """What the guest reads as the disk's serial: virtio-blk keeps 20 characters."""
        return self.disk_serial or self.volume_id[:20]

    @property
    def guest_path(self) -> str:
        """The path the guest really sees (udev's by-id link), whatever its /dev/vdX."""
        return f"/dev/disk/by-id/virtio-{self.serial}"


#: slots offered to guests; vda is left to a root disk, as Nova does
_SLOTS = [f"/dev/vd{c}" for c in string.ascii_lowercase[1:]]


def add_missing_columns(engine: Engine) -> list[str]:
    """Add the columns a table of an older state file lacks (`create_all` only makes missing
    tables); returns them as ``table.column``. Every column added after the first release
    is nullable, which SQLite's ``ADD COLUMN`` needs."""
    added = []
    with engine.begin() as conn:
        found = inspect(conn)
        for table in Base.metadata.sorted_tables:
            have = {c["name"] for c in found.get_columns(table.name)}
            for column in table.columns:
                if column.name not in have:
                    ddl = CreateColumn(column).compile(dialect=engine.dialect)
                    conn.execute(text(f"ALTER TABLE {table.name} ADD COLUMN {ddl}"))
                    added.append(f"{table.name}.{column.name}")
    return added


class Store:
    """Sessions on the agent's SQLite file, and the few queries the workflows need."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.engine = create_engine(f"sqlite:///{path}")

        @event.listens_for(self.engine, "connect")
        def _pragmas(conn: Any, _record: Any) -> None:
            cur = conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.close()

        Base.metadata.create_all(self.engine)
        add_missing_columns(self.engine)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

    def close(self) -> None:
        self.engine.dispose()

    @contextmanager
    def session(self) -> Iterator[Session]:
        with self._sessions.begin() as s:
            yield s

    # instances
    def add_instance(self, instance: Instance) -> Instance:
        with self.session() as s:
            s.add(instance)
        return instance

    def instance(self, instance_id: str) -> Instance:
        with self.session() as s:
            row = s.get(Instance, instance_id)
        if row is None:
            raise NotFound("Instance", instance_id, f"Instance {instance_id} could not be found.")
        return row

    def instances(self) -> list[Instance]:
        with self.session() as s:
            return list(s.scalars(select(Instance).order_by(Instance.created_at, Instance.id)))

    def set_instance(self, instance_id: str, **values: Any) -> None:
        with self.session() as s:
            s.execute(update(Instance).where(Instance.id == instance_id)
                      .values(updated_at=utcnow(), **values))

    def forget_instance(self, instance_id: str) -> None:
        with self.session() as s:
            s.execute(delete(Mapping).where(Mapping.instance_id == instance_id))
            s.execute(delete(Instance).where(Instance.id == instance_id))

    # mappings
    def reserve(self, instance: Instance, volume_id: str, device_name: str | None, *,
                tag: str | None = None, delete_on_termination: bool = False,
                boot_index: int | None = None, source_type: str | None = None) -> Mapping:
        """Take a device slot for `volume_id` (the first free one unless `device_name`)."""
        with self.session() as s:
            taken = set(s.scalars(select(Mapping.device_name)
                                  .where(Mapping.instance_id == instance.id)))
            existing = s.scalar(select(Mapping).where(Mapping.instance_id == instance.id,
                                                      Mapping.volume_id == volume_id))
        if existing is not None:
            raise Invalid(f"Invalid volume: volume {volume_id} is already attached to "
                          f"instance {instance.id}.")
        if device_name is None:
            free = [slot for slot in _SLOTS if slot not in taken]
            if not free:
                raise Invalid(f"Instance {instance.id} has no free device slot.")
            device_name = free[0]
        elif device_name in taken:
            raise Conflict(f"The supplied device path ({device_name}) is in use.")
        row = Mapping(id=str(uuid.uuid4()), instance_id=instance.id, volume_id=volume_id,
                      project_id=instance.project_id, device_name=device_name,
                      status=MappingStatus.ATTACHING, tag=tag,
                      delete_on_termination=delete_on_termination, boot_index=boot_index,
                      source_type=source_type)
        try:
            with self.session() as s:
                s.add(row)
        except IntegrityError:  # a concurrent attach took the volume or the slot first
            raise Conflict(f"Volume {volume_id} or device {device_name} is already being "
                           f"attached to instance {instance.id}.") from None
        return row

    def mapping(self, mapping_id: str) -> Mapping:
        with self.session() as s:
            row = s.get(Mapping, mapping_id)
        if row is None:
            raise NotFound("Mapping", mapping_id)
        return row

    def mappings(self, instance_id: str | None = None) -> list[Mapping]:
        stmt = select(Mapping).order_by(Mapping.created_at, Mapping.id)
        if instance_id is not None:
            stmt = stmt.where(Mapping.instance_id == instance_id)
        with self.session() as s:
            return list(s.scalars(stmt))

    def mapping_of(self, instance_id: str, volume_id: str) -> Mapping:
        with self.session() as s:
            row = s.scalar(select(Mapping).where(Mapping.instance_id == instance_id,
                                                 Mapping.volume_id == volume_id))
        if row is None:
            raise NotFound("Volume attachment", volume_id,
                           f"volume_id not found: {volume_id}")
        return row

    def set_mapping(self, mapping_id: str, **values: Any) -> None:
        """Record a workflow step's columns; the status moves only through `begin_mapping`,
        `finish_mapping` and `fail_mapping`."""
        if "status" in values:
            raise ValueError("a mapping's status moves through MAPPING_TRANSITIONS")
        with self.session() as s:
            s.execute(update(Mapping).where(Mapping.id == mapping_id).values(**values))

    def begin_mapping(self, mapping_id: str, action: str) -> None:
        """allowed → busy for `action` (MAPPING_TRANSITIONS) in one conditional update, or
        raise InvalidState (NotFound when the mapping is gone)."""
        t = MAPPING_TRANSITIONS[action]
        if not self._move(mapping_id, t.allowed, t.busy):
            with self.session() as s:
                current = s.scalar(select(Mapping.status).where(Mapping.id == mapping_id))
            if current is None:
                raise NotFound("Mapping", mapping_id)
            raise InvalidState("Mapping", mapping_id, current, t.allowed, action)

    def finish_mapping(self, mapping_id: str, action: str) -> bool:
        """busy → ok; False when the mapping was not in the busy status (or is gone)."""
        t = MAPPING_TRANSITIONS[action]
        if t.ok is None:
            raise ValueError(f"{action} ends by removing the mapping")
        return self._move(mapping_id, (t.busy,), t.ok)

    def fail_mapping(self, mapping_id: str, action: str) -> bool:
        """busy → error; False when the mapping was not in the busy status (or is gone)."""
        t = MAPPING_TRANSITIONS[action]
        if t.error is None:
            raise ValueError(f"{action} fails by removing the mapping")
        return self._move(mapping_id, (t.busy,), t.error)

    def _move(self, mapping_id: str, allowed: tuple[str, ...], status: str) -> bool:
        stmt = (update(Mapping).where(Mapping.id == mapping_id, Mapping.status.in_(allowed))
                .values(status=status))
        with self.session() as s:
            return bool(s.execute(stmt).rowcount)  # type: ignore[attr-defined]

    def remove_mapping(self, mapping_id: str) -> None:
        with self.session() as s:
            s.execute(delete(Mapping).where(Mapping.id == mapping_id))

    def other_connections(self, mapping: Mapping) -> list[Mapping]:
        """Other mappings of the same volume on this host that hold a host connection."""
        with self.session() as s:
            return list(s.scalars(select(Mapping).where(
                Mapping.volume_id == mapping.volume_id, Mapping.id != mapping.id,
                Mapping.connected.is_(True))))
