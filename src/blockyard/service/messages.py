"""User messages: what went wrong with an asynchronous request, told to its project.

A request that was answered 202 can still fail later (no backend fits, the driver fails to
create or extend, a snapshot cannot be taken). Cinder then records a *message* the project
can list (API 3.3+); so does blockyard, with Cinder's identifiers so that clients and
operators read them the same way:

* ``event_id`` = ``VOLUME_<resource type>_<action id>_<detail id>``, e.g.
  ``VOLUME_VOLUME_001_003`` (schedule allocate volume: no backend available);
* ``user_message`` = ``"<action text>:<detail text>"``, rebuilt from the ids when shown.

Every durable task that ends in error is recorded from one place, `record_task_failure`,
which `blockyard.service.tasks` calls in the transaction that settles the task; `TASK_EVENTS`
says which action and detail each kind of task stands for. Messages expire `message_ttl`
seconds after they were made (Cinder's default: 30 days): expired ones are not listed and
are purged.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import delete, insert, select
from sqlalchemy.orm import Session

from blockyard.db.models import Base, Message, Snapshot, Volume, utcnow
from blockyard.errors import Invalid, NotFound
from blockyard.service.identity import Identity, authorize, can_see_all
from blockyard.service.listing import ListParams, Page, paginate
from blockyard.service.request_context import current_request_id
from blockyard.service.runtime import Runtime

LEVEL_ERROR = "ERROR"


class Resource:
    """Cinder's message resource types."""

    VOLUME = "VOLUME"
    VOLUME_SNAPSHOT = "VOLUME_SNAPSHOT"


@dataclass(frozen=True)
class Field:
    """One of Cinder's action or detail entries: a three-digit id and the text users see."""

    id: str
    text: str


class Action:
    """Cinder's message actions (cinder/message/message_field.py), the ones blockyard uses."""

    SCHEDULE_ALLOCATE_VOLUME = Field("001", "schedule allocate volume")
    ATTACH_VOLUME = Field("002", "attach volume")
    UPDATE_ATTACHMENT = Field("004", "update attachment")
    EXTEND_VOLUME = Field("007", "extend volume")
    CREATE_VOLUME_FROM_BACKEND = Field("008", "create volume from backend storage")
    SNAPSHOT_CREATE = Field("009", "create snapshot")
    SNAPSHOT_DELETE = Field("010", "delete snapshot")
    #: Cinder records nothing when a migration fails; blockyard does, under an id far from
    #: Cinder's sequence so that it never collides with one Cinder adds
    MIGRATE_VOLUME = Field("901", "migrate volume")
    DELETE_VOLUME = Field("902", "delete volume")


class Detail:
    """Cinder's message details, the ones blockyard uses."""

    UNKNOWN_ERROR = Field("001", "An unknown error occurred.")
    NO_BACKEND_AVAILABLE = Field("003", "Could not find any available weighted backend.")
    QUOTA_EXCEED = Field("006", "Not enough quota resource for operation.")
    DRIVER_FAILED_EXTEND = Field("010", "Volume Driver failed to extend volume.")
    DRIVER_FAILED_CREATE = Field("012", "Driver failed to create the volume.")
    SNAPSHOT_CREATE_ERROR = Field("013", "Snapshot failed to create.")
    SNAPSHOT_DELETE_ERROR = Field("016", "Snapshot failed to delete.")
    ATTACH_ERROR = Field("021", "Failed to attach volume.")


def _texts(fields: type) -> dict[str, str]:
    """Id → text of the Fields a class such as Action or Detail lists."""
    return {f.id: f.text for f in vars(fields).values() if isinstance(f, Field)}


_ACTIONS, _DETAILS = _texts(Action), _texts(Detail)

#: an exception class name → the detail that explains it better than the default (as Cinder's
#: EXCEPTION_DETAIL_MAPPINGS); the exception's own text is never shown to users
EXCEPTION_DETAILS = {
    "NoValidBackend": Detail.NO_BACKEND_AVAILABLE,
    "QuotaExceeded": Detail.QUOTA_EXCEED,
}


@dataclass(frozen=True)
class Event:
    """What the failure of one kind of task means to the user."""

    resource_type: str
    action: Field
    detail: Field


#: task kind → the event recorded when such a task ends in error
TASK_EVENTS: dict[str, Event] = {
    "create_volume": Event(Resource.VOLUME, Action.CREATE_VOLUME_FROM_BACKEND,
                           Detail.DRIVER_FAILED_CREATE),
    "extend_volume": Event(Resource.VOLUME, Action.EXTEND_VOLUME, Detail.DRIVER_FAILED_EXTEND),
    "delete_volume": Event(Resource.VOLUME, Action.DELETE_VOLUME, Detail.UNKNOWN_ERROR),
    "migrate_volume": Event(Resource.VOLUME, Action.MIGRATE_VOLUME, Detail.UNKNOWN_ERROR),
    "create_snapshot": Event(Resource.VOLUME_SNAPSHOT, Action.SNAPSHOT_CREATE,
                             Detail.SNAPSHOT_CREATE_ERROR),
    "delete_snapshot": Event(Resource.VOLUME_SNAPSHOT, Action.SNAPSHOT_DELETE,
                             Detail.SNAPSHOT_DELETE_ERROR),
}

_OWNER_TABLES: dict[str, Any] = {Resource.VOLUME: Volume, Resource.VOLUME_SNAPSHOT: Snapshot}
_INSERT = insert(Base.metadata.tables["messages"])


def event_id(resource_type: str, action: Field, detail: Field) -> str:
    return f"VOLUME_{resource_type}_{action.id}_{detail.id}"


def user_message(action_id: str | None, detail_id: str | None) -> str:
    """"<action>:<detail>" from the stored ids, as Cinder words it when a message is shown."""
    action = _ACTIONS.get(action_id or "", "unknown action")
    return f"{action}:{_DETAILS.get(detail_id or '', Detail.UNKNOWN_ERROR.text)}"


def detail_for(error: BaseException | None, default: Field) -> Field:
    """The detail that explains `error`: a mapped exception class wins over `default`."""
    if error is not None:
        for cls in type(error).__mro__:
            if cls.__name__ in EXCEPTION_DETAILS:
                return EXCEPTION_DETAILS[cls.__name__]
    return default


def record(session: Session, ttl_seconds: int, *, project_id: str, resource_type: str,
           resource_uuid: str | None, action: Field, detail: Field,
           request_id: str | None = None, level: str = LEVEL_ERROR) -> str:
    """Insert one message in the caller's transaction; returns its id.

    Expired messages are purged on the way (messages are rare, and the purge is one indexed
    DELETE), so no reaper thread is needed.
    """
    now = utcnow()
    ident = str(uuid.uuid4())
    session.connection().execute(delete(Message).where(Message.expires_at <= now))
    session.connection().execute(_INSERT, {
        "id": ident, "project_id": project_id,
        "request_id": request_id or current_request_id(),
        "resource_type": resource_type, "resource_uuid": resource_uuid,
        "event_id": event_id(resource_type, action, detail), "action_id": action.id,
        "detail_id": detail.id, "message_level": level, "created_at": now,
        "expires_at": now + timedelta(seconds=ttl_seconds)})
    return ident


def record_task_failure(session: Session, rt: Runtime, kind: str, resource_id: str,
                        payload: dict[str, Any], error: BaseException) -> None:
    """Tell the project owning `resource_id` that its task of `kind` failed (no message for
    kinds without an event, or when the resource is gone)."""
    event = TASK_EVENTS.get(kind)
    if event is None:
        return
    table = _OWNER_TABLES[event.resource_type]
    project = session.connection().execute(
        select(table.project_id).where(table.id == resource_id)).scalar()
    if project is None:
        return
    record(session, rt.config.message_ttl, project_id=str(project),
           resource_type=event.resource_type, resource_uuid=resource_id,
           action=event.action, detail=detail_for(error, event.detail),
           request_id=payload.get("request_id"))


# ---------------------------------------------------------------------------- the API's reads

#: API sort keys → Message columns
SORTABLE = {"created_at": "created_at", "id": "id", "event_id": "event_id",
            "resource_type": "resource_type", "resource_uuid": "resource_uuid",
            "message_level": "message_level", "request_id": "request_id",
            "expires_at": "expires_at", "guaranteed_until": "expires_at"}
#: the filters Cinder's resource_filters.json allows on messages
FILTERS = ("resource_uuid", "resource_type", "event_id", "request_id", "message_level")
_NULLABLE = {"resource_type": "", "resource_uuid": "", "request_id": ""}


def _visible(who: Identity, all_projects: bool) -> Any:
    q = select(Message).where(Message.expires_at > utcnow())
    if not (all_projects and can_see_all(who)):
        q = q.where(Message.project_id == who.project_id)
    return q


def list_messages(rt: Runtime, who: Identity, params: ListParams, *,
                  all_projects: bool = False) -> Page:
    """One page of the caller's messages that have not expired, newest first by default."""
    q = _visible(who, all_projects)
    for key, value in params.filters.items():
        if key not in FILTERS:
            raise Invalid(f"Invalid input received: Invalid filters {key} are found in query "
                          f"options.")
        q = q.where(getattr(Message, key) == value)
    with rt.db.read() as s:
        page = paginate(s, Message, q, params, sortable=SORTABLE, nullable=_NULLABLE)
        s.expunge_all()
        return page


def get(rt: Runtime, who: Identity, message_id: str) -> Message:
    with rt.db.read() as s:
        msg: Message | None = s.execute(
            _visible(who, True).where(Message.id == message_id)).scalar()
        if msg is None:
            raise NotFound("Message", message_id, f"Message {message_id} could not be found.")
        authorize(who, "message:get", msg.project_id,
                  hidden=NotFound("Message", message_id,
                                  f"Message {message_id} could not be found."))
        s.expunge(msg)
        return msg


def delete_message(rt: Runtime, who: Identity, message_id: str) -> None:
    with rt.db.write() as s:
        msg = s.get(Message, message_id)
        if msg is None or msg.expires_at <= utcnow():
            raise NotFound("Message", message_id, f"Message {message_id} could not be found.")
        authorize(who, "message:delete", msg.project_id,
                  hidden=NotFound("Message", message_id,
                                  f"Message {message_id} could not be found."))
        s.execute(delete(Message).where(Message.id == message_id))
