"""The status vocabulary: every status value of volumes, attachments, snapshots, groups and
group snapshots, and the shape of a declared transition.

A leaf module (it imports nothing from blockyard) so that the DB models can name a column's
default and the compute agent can declare its own transitions without importing the state
machine; `blockyard.states` declares the transition tables and is the only module that writes
a status.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class VolumeStatus(StrEnum):
    CREATING = "creating"
    AVAILABLE = "available"
    RESERVED = "reserved"
    ATTACHING = "attaching"
    IN_USE = "in-use"
    DETACHING = "detaching"
    DELETING = "deleting"
    EXTENDING = "extending"
    MAINTENANCE = "maintenance"
    RETYPING = "retyping"
    ERROR = "error"
    ERROR_DELETING = "error_deleting"
    ERROR_EXTENDING = "error_extending"
    ERROR_RESTORING = "error_restoring"
    ERROR_MANAGING = "error_managing"
    BACKING_UP = "backing-up"
    RESTORING_BACKUP = "restoring-backup"
    DOWNLOADING = "downloading"
    UPLOADING = "uploading"
    AWAITING_TRANSFER = "awaiting-transfer"


class AttachStatus(StrEnum):
    DETACHED = "detached"
    RESERVED = "reserved"
    ATTACHING = "attaching"
    ATTACHED = "attached"
    DETACHING = "detaching"
    ERROR_ATTACHING = "error_attaching"
    ERROR_DETACHING = "error_detaching"
    DELETED = "deleted"


class MigrationStatus(StrEnum):
    """A volume's ``migration_status`` (Cinder's values); NULL when it never migrated.

    A migration's temporary destination row carries ``target:<source id>`` instead.
    """

    STARTING = "starting"
    MIGRATING = "migrating"
    COMPLETING = "completing"
    SUCCESS = "success"
    ERROR = "error"


class SnapshotStatus(StrEnum):
    CREATING = "creating"
    AVAILABLE = "available"
    DELETING = "deleting"
    ERROR = "error"
    ERROR_DELETING = "error_deleting"
    BACKING_UP = "backing-up"
    RESTORING = "restoring"
    UNMANAGING = "unmanaging"
    DELETED = "deleted"


class GroupStatus(StrEnum):
    """A generic volume group's status (Cinder's GroupStatus)."""

    CREATING = "creating"
    AVAILABLE = "available"
    UPDATING = "updating"
    IN_USE = "in-use"
    DELETING = "deleting"
    DELETED = "deleted"
    ERROR = "error"
    ERROR_DELETING = "error_deleting"


class GroupSnapshotStatus(StrEnum):
    """A group snapshot's status (Cinder's GroupSnapshotStatus)."""

    CREATING = "creating"
    AVAILABLE = "available"
    UPDATING = "updating"
    DELETING = "deleting"
    DELETED = "deleted"
    ERROR = "error"
    ERROR_DELETING = "error_deleting"


#: the ``ok`` status that means "go back to the status before the transition began"
PREVIOUS = "<previous>"


@dataclass(frozen=True)
class Transition:
    """allowed → busy, then busy → ok on success or busy → error on failure."""

    allowed: tuple[str, ...]
    busy: str
    ok: str | None
    error: str | None


#: statuses an admin may set with os-reset_status
VOLUME_RESET_STATUSES = frozenset(VolumeStatus)
SNAPSHOT_RESET_STATUSES = frozenset(
    {SnapshotStatus.AVAILABLE, SnapshotStatus.ERROR, SnapshotStatus.CREATING,
     SnapshotStatus.DELETING, SnapshotStatus.ERROR_DELETING}
)
ATTACH_RESET_STATUSES = frozenset({AttachStatus.ATTACHED, AttachStatus.DETACHED})
#: Cinder checks a group's reset status against the group *snapshot* statuses (its validator
#: does so for both); the same set here, so the same requests pass
GROUP_RESET_STATUSES = frozenset(GroupSnapshotStatus)
GROUP_SNAPSHOT_RESET_STATUSES = frozenset(GroupSnapshotStatus)
