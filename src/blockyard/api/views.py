"""Rendering of volumes (and their attachments) in Cinder's wire shape, per microversion.

The field set follows Cinder 29's view builder; Tempest's schemas allow no other keys.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from starlette.requests import Request

from blockyard.api import wire
from blockyard.service import migration
from blockyard.service.identity import allowed
from blockyard.service.records import AttachmentRecord, VolumeRecord
from blockyard.service.runtime import Runtime
from blockyard.states import MIGRATION_ACTIVE, AttachStatus


def iso(ts: datetime | None) -> str | None:
    """Cinder's timestamps: ISO 8601 with microseconds, no offset."""
    return None if ts is None else ts.isoformat(timespec="microseconds")


def attachment_summary(a: AttachmentRecord) -> dict[str, Any]:
    """A volume's `attachments` entry (only attached ones are shown, as Cinder does)."""
    return {
        "id": a.volume_id,
        "attachment_id": a.id,
        "volume_id": a.volume_id,
        "server_id": a.instance_uuid,
        "host_name": a.attached_host,
        "device": a.mountpoint,
        "attached_at": iso(a.attach_time),
    }


def volume_summary(request: Request, v: VolumeRecord) -> dict[str, Any]:
    return {"id": v.id, "name": v.name, "links": wire.links(request, "volumes", v.id)}


def volume_detail(
    request: Request, v: VolumeRecord, *, admin_fields: bool = True
) -> dict[str, Any]:
    """The full volume object. `admin_fields` adds the os-vol-* attributes (not on create)."""
    rt: Runtime = wire.runtime(request)
    mv = wire.mv(request)
    attached = [a for a in v.attachments if a.attach_status == AttachStatus.ATTACHED]
    metadata = dict(v.meta)
    if attached or v.readonly:
        metadata.setdefault("readonly", str(v.readonly))
    if attached:
        metadata.setdefault("attached_mode", attached[0].attach_mode)
    if v.migration_status in MIGRATION_ACTIVE:
        # Cinder has no progress field and Tempest's schemas allow no new key: like admin
        # metadata, the running copy's progress shows in `metadata` (service.migration)
        progress = migration.progress_of(v.id)
        if progress is not None:
            metadata.setdefault(migration.PROGRESS_KEY, progress)
    backend = rt.backends.get(v.backend)
    body: dict[str, Any] = {
        "id": v.id,
        "status": v.status,
        "size": v.size,
        "availability_zone": v.availability_zone,
        "created_at": iso(v.created_at),
        "updated_at": iso(v.updated_at),
        "name": v.name,
        "description": v.description,
        "volume_type": v.type_name,
        "snapshot_id": v.snapshot_id,
        "source_volid": v.source_volid,
        "metadata": metadata,
        "links": wire.links(request, "volumes", v.id),
        "user_id": v.user_id,
        "bootable": "true" if v.bootable else "false",
        "encrypted": False,
        "replication_status": None,
        "consistencygroup_id": None,
        "multiattach": v.multiattach,
        "attachments": [attachment_summary(a) for a in attached],
        "migration_status": v.migration_status,
    }
    if mv >= 13:
        body["group_id"] = v.group_id
    if mv >= 21:
        body["provider_id"] = None
    if mv >= 48:
        body["shared_targets"] = False
        body["service_uuid"] = backend.service_uuid if backend else None
    if mv >= 61:
        body["cluster_name"] = None
    if mv >= 63:
        body["volume_type_id"] = v.volume_type_id
    if mv >= 65:
        body["consumes_quota"] = True
    if admin_fields:  # each by its Cinder rule, for the volume's project
        who, target = wire.identity(request), {"project_id": v.project_id}
        if allowed(who, "volume_extension:volume_tenant_attribute", target):
            body["os-vol-tenant-attr:tenant_id"] = v.project_id
        if allowed(who, "volume_extension:volume_mig_status_attribute", target):
            body["os-vol-mig-status-attr:migstat"] = v.migration_status
            body["os-vol-mig-status-attr:name_id"] = v.name_id
        if allowed(who, "volume_extension:volume_host_attribute", target):
            body["os-vol-host-attr:host"] = (backend.pool_host if backend
                                             else (v.backend or None))
    return body
