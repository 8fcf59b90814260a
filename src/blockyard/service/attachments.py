"""Attaching volumes: the attachments API (3.27+) and the six legacy actions.

The volume's status moves by conditional updates (blockyard.states): reserving is one
compare-and-swap, so of many concurrent reservations of a non-multiattach volume exactly one
wins. Leaving an attach state derives the status from the attachments that remain.

Export work happens once per connector, in `_connect`: the driver's create_export (which may
start targets and processes) and then initialize_connection, which only formats. What the
driver returns is persisted with the volume; the connection info with the attachment. The
steps are ordered so that a crash leaves a state `reconcile` can settle at the next start:
an attachment whose connector is recorded but whose connection info is not was being
exported, and its export is undone.
"""

from __future__ import annotations

import dataclasses
import logging
import uuid
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

from sqlalchemy import case, delete, select, update
from sqlalchemy.orm import Session

from blockyard import failpoints, states
from blockyard.connectors.properties import to_connector
from blockyard.db.models import Attachment, Volume, utcnow
from blockyard.errors import Invalid, InvalidState, NotFound
from blockyard.model import ConnectionInfo, Connector, VolumeRef
from blockyard.service import messages, volume_ops, volumes
from blockyard.service.identity import Identity, authorize, can_see_all
from blockyard.service.runtime import Runtime
from blockyard.states import AttachStatus, VolumeStatus

log = logging.getLogger(__name__)

def _props_of(connector: Connector) -> dict[str, Any]:
    props = {k: v for k, v in asdict(connector).items() if k != "extra" and v is not None}
    props.update(connector.extra)
    return props


def attachment_connection_info(info: ConnectionInfo, attachment_id: str) -> dict[str, Any]:
    """The attachments API's connection_info (stored with the attachment, in its wire shape):
    the driver's data with the protocol and the attachment id folded in, as Cinder returns
    it."""
    wire = info.to_wire()
    return {**wire["data"], "driver_volume_type": wire["driver_volume_type"],
            "attachment_id": attachment_id}


#: the connection info keys whose values are secrets: CHAP credentials (session and
#: discovery), the cephx key and a keyring holding it, the libvirt secret that names one,
#: and the NBD TLS pre-shared key
SECRET_KEYS = frozenset({
    "auth_username", "auth_password", "discovery_auth_username", "discovery_auth_password",
    "key", "keyring", "secret_uuid", "tls_psk_key",
})
#: what a secret shows as (oslo's mask): the keys stay, so the info still parses
MASK = "***"


def masked(info: dict[str, Any]) -> dict[str, Any]:
    """`info` (flat, or nested under "data") with every secret value replaced by MASK.

    Only the answers of the calls that attach (os-initialize_connection, an attachment
    created or updated with a connector) carry the secrets; what reads an attachment later
    (show, list) gets this, as do logs: what remains is enough to find and disconnect the
    volume, not to connect to it.
    """
    out = {k: (MASK if k in SECRET_KEYS and v is not None else v) for k, v in info.items()}
    if isinstance(info.get("data"), dict):
        out["data"] = masked(info["data"])
    return out


# ---------------------------------------------------------------------------- reads


def _volume(s: Session, who: Identity, volume_id: str) -> Volume:
    return volumes.get(s, who, volume_id)


def _attachment_not_found(attachment_id: str) -> NotFound:
    return NotFound("VolumeAttachment", attachment_id,
                    f"VolumeAttachment {attachment_id} could not be found.")


def get(rt: Runtime, who: Identity, attachment_id: str) -> Attachment:
    with rt.db.read() as s:
        att = s.get(Attachment, attachment_id)
        if att is None:
            raise _attachment_not_found(attachment_id)
        authorize(who, "volume:get", att.project_id, hidden=_attachment_not_found(attachment_id))
        return att


def list_attachments(rt: Runtime, who: Identity, *, all_projects: bool,
                     filters: dict[str, str]) -> list[Attachment]:
    with rt.db.read() as s:
        q = select(Attachment).order_by(Attachment.created_at.desc(), Attachment.id.desc())
        if not (all_projects and can_see_all(who)):
            q = q.where(Attachment.project_id == who.project_id)
        if filters.get("volume_id"):
            q = q.where(Attachment.volume_id == filters["volume_id"])
        if filters.get("instance_id"):
            q = q.where(Attachment.instance_uuid == filters["instance_id"])
        if filters.get("status"):
            q = q.where(Attachment.attach_status == filters["status"])
        return list(s.execute(q).scalars())


# ---------------------------------------------------------------------------- export steps


def _connect(rt: Runtime, volume_id: str, connector: Connector,
             action: messages.Field = messages.Action.ATTACH_VOLUME) -> ConnectionInfo:
    """Export the volume to `connector` (once) and format its connection info.

    When the backend fails (not when the connector is refused), the volume's project is also
    told with a user message, as Cinder does for a failed attach.
    """
    with rt.db.read() as s:
        v = s.get(Volume, volume_id)
        assert v is not None
        ref, backend, project = volume_ops.volume_ref(v), v.backend, v.project_id
    try:
        return _export_and_connect(rt, volume_id, ref, backend, connector)
    except Invalid:
        raise
    except Exception:
        with rt.db.write() as s:
            messages.record(s, rt.config.message_ttl, project_id=project,
                            resource_type=messages.Resource.VOLUME, resource_uuid=volume_id,
                            action=action, detail=messages.Detail.ATTACH_ERROR)
        raise


def _export_and_connect(rt: Runtime, volume_id: str, ref: VolumeRef, backend: str,
                        connector: Connector) -> ConnectionInfo:
    driver = rt.backend(backend).driver
    driver.validate_connector(connector)
    model = driver.create_export(ref, connector)
    failpoints.hit("attach.export_created")
    values = volume_ops.persist_model_update(rt, volume_id, model)
    return driver.initialize_connection(dataclasses.replace(ref, **values), connector)


def _disconnect(rt: Runtime, volume_id: str, connector: Connector | None, *,
                force: bool = False) -> None:
    """Stop exporting to `connector`; remove the export when no attachment needs it and the
    target allows no other connector (legacy initialize_connection leaves no attachment row)."""
    with rt.db.read() as s:
        v = s.get(Volume, volume_id)
        if v is None:
            return
        ref, backend = volume_ops.volume_ref(v), v.backend
        users = [to_connector(c or {}) for c in s.execute(
            select(Attachment.connector)
            .where(Attachment.volume_id == volume_id, Attachment.connection_info.is_not(None))
        ).scalars()]
    remaining = len(users)
    driver = rt.backend(backend).driver
    if connector is not None and any(_same_host(connector, u) for u in users):
        return  # another attachment of this host still uses the connection: keep it
    model = driver.terminate_connection(ref, connector, force)
    values = volume_ops.model_values(model)
    still_allowed = driver.export_of(VolumeRef(
        id=ref.id, size_gb=ref.size_gb,
        provider_location=values.get("provider_location", ref.provider_location),
        provider_auth=values.get("provider_auth", ref.provider_auth)))
    if remaining == 0 and not (still_allowed and still_allowed.connectors):
        driver.remove_export(ref)
        volume_ops.forget_export(rt, volume_id)
    else:
        volume_ops.persist_model_update(rt, volume_id, model)


def _same_host(a: Connector, b: Connector) -> bool:
    """Do two connectors name the same initiator (a host attaching twice shares one
    connection, as os-brick's multiattach does)?"""
    if a.initiator and b.initiator:
        return a.initiator == b.initiator
    return a.host is not None and a.host == b.host


# ---------------------------------------------------------------------------- attachments API


def create(rt: Runtime, who: Identity, volume_id: str, instance_uuid: str | None,
           connector: Connector | None, mode: str | None) -> Attachment:
    """Reserve the volume for a new attachment; with a connector, connect it at once."""
    attachment_id = str(uuid.uuid4())
    with rt.db.write() as s:
        v = _volume(s, who, volume_id)
        action = "attachment_reserve_multiattach" if v.multiattach else "attachment_reserve"
        try:
            states.begin(s, Volume, volume_id, action)
        except InvalidState as exc:
            raise Invalid(f"Invalid volume: Volume {volume_id} status must be available or "
                          f"downloading to reserve, but the current status is "
                          f"{exc.current}.") from exc
        s.add(Attachment(id=attachment_id, volume_id=volume_id, project_id=v.project_id,
                         instance_uuid=instance_uuid, attach_status=AttachStatus.RESERVED,
                         attach_mode=mode or "null", created_at=utcnow()))
    if connector is not None:
        try:
            return update_connector(rt, who, attachment_id, connector)
        except Exception:
            # nothing half-created: the reservation goes with the connection that failed
            with rt.db.write() as s:
                s.execute(delete(Attachment).where(Attachment.id == attachment_id))
                states.derive_attach_status(s, volume_id, "leave")
            raise
    return get(rt, who, attachment_id)


def update_connector(rt: Runtime, who: Identity, attachment_id: str,
                     connector: Connector) -> Attachment:
    """Give a reserved attachment its connector: export, and store the connection info."""
    att = get(rt, who, attachment_id)
    try:
        with rt.db.write() as s:
            # the connector is recorded before any export work: a crash from here on leaves an
            # attachment whose export `reconcile` can find and undo
            states.move_attachment(s, attachment_id, "connect", connector=_props_of(connector),
                                   attached_host=connector.host,
                                   mountpoint=connector.extra.get("mountpoint"))
    except InvalidState as exc:
        raise Invalid(f"Invalid attachment: attachment {attachment_id} is "
                      f"{exc.current}, it must be reserved to be updated.") from exc
    except NotFound as exc:
        raise _attachment_not_found(attachment_id) from exc
    failpoints.hit("attach.connector_recorded")
    try:
        info = _connect(rt, att.volume_id, connector, messages.Action.UPDATE_ATTACHMENT)
        failpoints.hit("attach.exported")
    except Exception:
        with rt.db.write() as s:
            s.execute(update(Attachment).where(Attachment.id == attachment_id)
                      .values(connector=None, attached_host=None)
                      .execution_options(synchronize_session=False))
        _disconnect(rt, att.volume_id, connector, force=True)
        raise
    try:
        with rt.db.write() as s:
            states.move_attachment(s, attachment_id, "connect",
                                   connection_info=attachment_connection_info(info,
                                                                              attachment_id))
    except (InvalidState, NotFound) as exc:
        # the attachment was deleted while we exported: take the export back with it
        _disconnect(rt, att.volume_id, connector, force=True)
        raise _attachment_not_found(attachment_id) from exc
    return get(rt, who, attachment_id)


def complete(rt: Runtime, who: Identity, attachment_id: str) -> None:
    """The host is connected: attachment attached, volume in-use."""
    att = get(rt, who, attachment_id)
    with rt.db.write() as s:
        # a mode nobody asked for ("null") becomes read-write, in the same statement
        states.move_attachment(s, attachment_id, "complete", attach_time=utcnow(),
                               attach_mode=case((Attachment.attach_mode == "null", "rw"),
                                                else_=Attachment.attach_mode))
        states.mark_attached(s, att.volume_id)


def delete_attachment(rt: Runtime, who: Identity, attachment_id: str) -> None:
    """Disconnect (when connected) and remove the attachment; the volume's status follows."""
    att = get(rt, who, attachment_id)
    with rt.db.write() as s:
        states.move_attachment(s, attachment_id, "delete")
    failpoints.hit("detach.detaching")
    if att.connector is not None:
        _disconnect_attachment(rt, att)
    failpoints.hit("detach.disconnected")
    with rt.db.write() as s:
        s.execute(delete(Attachment).where(Attachment.id == attachment_id))
        states.derive_attach_status(s, att.volume_id, "leave")


def _disconnect_attachment(rt: Runtime, att: Attachment) -> None:
    with rt.db.write() as s:
        # this attachment no longer needs the export: count it out before deciding
        s.execute(update(Attachment).where(Attachment.id == att.id)
                  .values(connection_info=None)
                  .execution_options(synchronize_session=False))
    _disconnect(rt, att.volume_id, to_connector(att.connector or {}), force=True)


# ---------------------------------------------------------------------------- legacy actions


def reserve(rt: Runtime, who: Identity, volume_id: str) -> None:
    with rt.db.write() as s:
        v = _volume(s, who, volume_id)
        states.begin(s, Volume, volume_id,
                     "reserve_multiattach" if v.multiattach else "reserve")


def unreserve(rt: Runtime, who: Identity, volume_id: str) -> None:
    with rt.db.write() as s:
        _volume(s, who, volume_id)
        states.derive_attach_status(s, volume_id, "unreserve")


def initialize_connection(rt: Runtime, who: Identity, volume_id: str,
                          connector: Connector) -> ConnectionInfo:
    with rt.db.read() as s:
        v = _volume(s, who, volume_id)
        if v.task_id is not None or v.status in (
                VolumeStatus.CREATING, VolumeStatus.DELETING, VolumeStatus.ERROR_DELETING):
            raise Invalid(f"Invalid volume: Volume {volume_id} is {v.status} and cannot be "
                          f"connected.")
    return _connect(rt, volume_id, connector)


def terminate_connection(rt: Runtime, who: Identity, volume_id: str,
                         connector: Connector, force: bool = False) -> None:
    with rt.db.read() as s:
        _volume(s, who, volume_id)
    _disconnect(rt, volume_id, connector, force=force)


def attach(rt: Runtime, who: Identity, volume_id: str, *, instance_uuid: str | None,
           host_name: str | None, mountpoint: str | None, mode: str) -> None:
    with rt.db.write() as s:
        v = _volume(s, who, volume_id)
        states.mark_attached(s, volume_id)
        s.add(Attachment(id=str(uuid.uuid4()), volume_id=volume_id, project_id=v.project_id,
                         instance_uuid=instance_uuid, attached_host=host_name,
                         mountpoint=mountpoint, attach_status=AttachStatus.ATTACHED,
                         attach_mode=mode,
                         attach_time=utcnow(), created_at=utcnow()))


def begin_detaching(rt: Runtime, who: Identity, volume_id: str) -> None:
    with rt.db.write() as s:
        _volume(s, who, volume_id)
        states.begin(s, Volume, volume_id, "begin_detaching")


def roll_detaching(rt: Runtime, who: Identity, volume_id: str) -> None:
    with rt.db.write() as s:
        _volume(s, who, volume_id)
        states.begin(s, Volume, volume_id, "roll_detaching")


def detach(rt: Runtime, who: Identity, volume_id: str, attachment_id: str | None, *,
           force: bool = False, connector: Connector | None = None) -> None:
    """Remove one attachment of the volume (the only one when none is named)."""
    with rt.db.write() as s:
        _volume(s, who, volume_id)
        q = select(Attachment).where(Attachment.volume_id == volume_id)
        if attachment_id:
            q = q.where(Attachment.id == attachment_id)
        found = list(s.execute(q).scalars())
        if attachment_id and not found:
            raise _attachment_not_found(attachment_id)
        if not attachment_id and len(found) > 1:
            raise Invalid("Invalid input received: attachment_id is required to detach a "
                          "volume with several attachments.")
        for att in found:
            s.execute(delete(Attachment).where(Attachment.id == att.id))
        # refused (and the deletes rolled back) unless the volume's status allows the detach
        states.derive_attach_status(s, volume_id, "force_detach" if force else "detach")
    if force:
        # the caller cannot be trusted to terminate the connection: do it here
        _disconnect(rt, volume_id, connector, force=True)


# ---------------------------------------------------------------------------- restart


def _undo_unrecorded_export(rt: Runtime, volume_id: str, connector: Connector) -> None:
    """An export the target made but the service never recorded (a crash in between) is
    invisible to remove_export: export again, which adopts what the target has, and record
    that, so that the disconnect which follows removes it."""
    with rt.db.read() as s:
        v = s.get(Volume, volume_id)
        if v is None or v.provider_location:
            return
        ref, backend = volume_ops.volume_ref(v), v.backend
    volume_ops.persist_model_update(rt, volume_id,
                                    rt.backend(backend).driver.create_export(ref, connector))


def reconcile(rt: Runtime) -> None:
    """After a restart: undo exports that were in progress, finish detaches that were, and
    re-create the exports of attached volumes (target daemons keep no state).

    Each attachment is settled on its own: one backend that fails is logged and retried at
    the next start, and does not keep the service (and every other volume) down."""
    with rt.db.read() as s:
        half = list(s.execute(select(Attachment).where(
            Attachment.connector.is_not(None), Attachment.connection_info.is_(None))).scalars())
        leaving = list(s.execute(select(Attachment).where(
            Attachment.attach_status == AttachStatus.DETACHING)).scalars())
    for att in half:
        if att.attach_status != AttachStatus.DETACHING:
            _settling(f"undo the export of attachment {att.id}", _undo_half_attach, rt, att)
    for att in leaving:
        _settling(f"finish detaching attachment {att.id}", _finish_detach, rt, att)
    # only what is still connected once the two steps above are done
    with rt.db.read() as s:
        exported = list(s.execute(
            select(Volume).where(Volume.id.in_(
                select(Attachment.volume_id).where(Attachment.connection_info.is_not(None))))
        ).scalars())
    for v in exported:
        _settling(f"re-create the export of volume {v.id}", _ensure_export, rt, v)


def _settling(what: str, step: Callable[[Runtime, Any], None], rt: Runtime, row: Any) -> None:
    try:
        step(rt, row)
    except Exception:  # noqa: BLE001 - logged; the next start tries again
        log.exception("could not %s at start-up", what)


def _undo_half_attach(rt: Runtime, att: Attachment) -> None:
    _undo_unrecorded_export(rt, att.volume_id, to_connector(att.connector or {}))
    _disconnect(rt, att.volume_id, to_connector(att.connector or {}), force=True)
    with rt.db.write() as s:
        s.execute(update(Attachment).where(Attachment.id == att.id)
                  .values(connector=None, attached_host=None)
                  .execution_options(synchronize_session=False))


def remove_all(rt: Runtime, volume_id: str) -> int:
    """Remove every attachment of `volume_id` on the service's own authority, disconnecting
    each as a delete does; returns how many there were. For rows nobody else will detach: a
    migration's temporary volume that compute left attached (it gave up, or died)."""
    with rt.db.read() as s:
        found = list(s.execute(select(Attachment).where(
            Attachment.volume_id == volume_id)).scalars())
    for att in found:
        with rt.db.write() as s:
            try:
                states.move_attachment(s, att.id, "delete")
            except NotFound:
                continue  # removed meanwhile by its owner
        _finish_detach(rt, att)
    return len(found)


def _finish_detach(rt: Runtime, att: Attachment) -> None:
    if att.connector is not None:
        _disconnect_attachment(rt, att)
    with rt.db.write() as s:
        s.execute(delete(Attachment).where(Attachment.id == att.id))
        try:
            states.derive_attach_status(s, att.volume_id, "leave")
        except (InvalidState, NotFound):
            pass  # the volume moved on (deleted, or owned by a task): nothing to derive


def _ensure_export(rt: Runtime, v: Volume) -> None:
    volume_ops.persist_model_update(
        rt, v.id, rt.backend(v.backend).driver.ensure_export(volume_ops.volume_ref(v)))
