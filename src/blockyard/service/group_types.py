"""Group types (3.11) and their group specs: lookups, create, update, delete.

A group type only describes groups (Cinder's drivers read specs such as
``consistent_group_snapshot_enabled``); every change is one write transaction. A type still
used by a group cannot be deleted, as in Cinder.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from sqlalchemy import delete, exists, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from blockyard.db.models import Group, GroupType, GroupTypeSpec, utcnow
from blockyard.errors import Conflict, Invalid, NotFound
from blockyard.service import listing
from blockyard.service.identity import Identity, can_see_all
from blockyard.service.runtime import Runtime

#: the API's sort keys for GET /group_types
SORTABLE = {"id": "id", "name": "name", "created_at": "created_at",
            "description": "description", "is_public": "is_public"}


def _not_found(ident: str) -> NotFound:
    return NotFound("GroupType", ident, f"Group type {ident} could not be found.")


def _visible(gt: GroupType, who: Identity) -> bool:
    return gt.is_public or can_see_all(who)


def by_id(session: Session, who: Identity, type_id: str) -> GroupType:
    gt = session.get(GroupType, type_id)
    if gt is None or not _visible(gt, who):
        raise _not_found(type_id)
    return gt


def by_id_or_name(session: Session, who: Identity, ident: str) -> GroupType:
    """As a group create resolves `group_type`: by id first, then by name (Cinder also looks
    up a uuid-like name)."""
    gt = session.get(GroupType, ident)
    if gt is None:
        gt = session.execute(select(GroupType).where(GroupType.name == ident)).scalar()
    if gt is None or not _visible(gt, who):
        raise NotFound("GroupType", ident,
                       f"Group type with name {ident} could not be found.")
    return gt


def get(rt: Runtime, who: Identity, type_id: str) -> GroupType:
    with rt.db.read() as s:
        return by_id(s, who, type_id)


def get_default(rt: Runtime, who: Identity, name: str | None) -> GroupType:
    """The type named by the `default_group_type` setting; Cinder has none unless set."""
    with rt.db.read() as s:
        gt = None if name is None else s.execute(
            select(GroupType).where(GroupType.name == name)).scalar()
        if gt is None:
            raise NotFound("GroupType", "default", "Default group type can not be found.")
        return gt


@dataclass(frozen=True)
class TypeFilter:
    """`is_public` None: public and private alike (admins asking ``is_public=None``)."""

    is_public: bool | None = True


def list_types(rt: Runtime, who: Identity, params: listing.ListParams,
               flt: TypeFilter) -> listing.Page:
    query = select(GroupType)
    if flt.is_public is True:
        query = query.where(GroupType.is_public.is_(True))
    elif flt.is_public is False:
        query = query.where(GroupType.is_public.is_(False))
    with rt.db.read() as s:
        return listing.paginate(s, GroupType, query, params, sortable=SORTABLE,
                                nullable={"description": ""})


# ---------------------------------------------------------------------------- changes


def _name_taken(session: Session, name: str, other_than: str | None = None) -> bool:
    query = select(GroupType.id).where(GroupType.name == name)
    if other_than is not None:
        query = query.where(GroupType.id != other_than)
    return session.execute(query).first() is not None


def create(rt: Runtime, who: Identity, name: str, description: str | None, is_public: bool,
           specs: dict[str, str | None]) -> GroupType:
    """A new type; a taken name is Cinder's GroupTypeExists (409)."""
    conflict = Conflict(f"Group Type {name} already exists.")
    try:
        with rt.db.write() as s:
            if _name_taken(s, name):
                raise conflict
            gt = GroupType(id=str(uuid.uuid4()), name=name, description=description,
                           is_public=is_public, created_at=utcnow(),
                           spec_items=[GroupTypeSpec(key=k, value=v) for k, v in specs.items()])
            s.add(gt)
            s.flush()
    except IntegrityError:  # a concurrent create of the same name won
        raise conflict from None
    return gt


def update_type(rt: Runtime, who: Identity, type_id: str, *, name: str | None,
                description: str | None, is_public: bool | None) -> GroupType:
    try:
        with rt.db.write() as s:
            gt = by_id(s, who, type_id)
            if name is not None and name != gt.name:
                if _name_taken(s, name, other_than=gt.id):
                    raise Conflict(f"Group Type {name} already exists.")
                gt.name = name
            if description is not None:
                gt.description = description
            if is_public is not None:
                gt.is_public = is_public
            gt.updated_at = utcnow()
            s.flush()
    except IntegrityError:
        raise Conflict(f"Group Type {name} already exists.") from None
    return gt


def delete_type(rt: Runtime, who: Identity, type_id: str) -> None:
    with rt.db.write() as s:
        gt = by_id(s, who, type_id)
        if s.execute(select(exists().where(Group.group_type_id == gt.id))).scalar():
            raise Invalid("Target group type is still in use.")
        s.delete(gt)


# ---------------------------------------------------------------------------- group specs


def specs_of(rt: Runtime, who: Identity, type_id: str) -> dict[str, str | None]:
    with rt.db.read() as s:
        return by_id(s, who, type_id).specs


def set_specs(rt: Runtime, who: Identity, type_id: str,
              specs: dict[str, str | None]) -> None:
    """Create or replace the given keys (others stay)."""
    with rt.db.write() as s:
        gt = by_id(s, who, type_id)
        current = {item.key: item for item in gt.spec_items}
        for key, value in specs.items():
            if key in current:
                current[key].value = value
            else:
                gt.spec_items.append(GroupTypeSpec(key=key, value=value))
        gt.updated_at = utcnow()


def delete_spec(rt: Runtime, who: Identity, type_id: str, key: str) -> None:
    with rt.db.write() as s:
        by_id(s, who, type_id)
        gone = s.execute(delete(GroupTypeSpec).where(GroupTypeSpec.group_type_id == type_id,
                                                     GroupTypeSpec.key == key)
                         .execution_options(synchronize_session=False))
        if gone.rowcount != 1:  # type: ignore[attr-defined]
            raise NotFound("GroupTypeSpec", key, f"Group Type {type_id} has no specs with key "
                                                 f"{key}.")

