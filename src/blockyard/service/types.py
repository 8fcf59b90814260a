"""Volume types: lookup and the default type. (CRUD of types lives in type_admin.)"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from sqlalchemy import Connection, bindparam, or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from blockyard.db.models import VolumeType, VolumeTypeExtraSpec, VolumeTypeProject
from blockyard.errors import NotFound
from blockyard.service.identity import Identity, can_see_all

DEFAULT_TYPE_DESCRIPTION = "Default Volume Type"


def ensure_default_type(session: Session, name: str) -> VolumeType:
    """Create the default volume type on first start; it always exists afterwards."""
    found = session.execute(select(VolumeType).where(VolumeType.name == name)).scalar()
    if found is not None:
        return found
    vt = VolumeType(id=str(uuid.uuid4()), name=name, description=DEFAULT_TYPE_DESCRIPTION,
                    is_public=True)
    try:
        with session.begin_nested():
            session.add(vt)
    except IntegrityError:
        return session.execute(select(VolumeType).where(VolumeType.name == name)).scalar_one()
    return vt


def get_type(session: Session, ident: str, who: Identity | None = None) -> VolumeType:
    """A type by id or by name, as Cinder resolves `volume_type` in a create request."""
    found = session.execute(
        select(VolumeType).where(or_(VolumeType.id == ident, VolumeType.name == ident))
    ).scalars().first()
    if found is None or (who is not None and not visible(found, who)):
        raise NotFound("VolumeType", ident, f"Volume type with name {ident} could not be found.")
    return found


@dataclass(frozen=True)
class TypeInfo:
    """What creating a volume needs of its type."""

    id: str
    name: str
    is_public: bool
    specs: dict[str, str]


_TYPE_WITH_SPECS = (
    select(VolumeType.id, VolumeType.name, VolumeType.is_public, VolumeTypeExtraSpec.key,
           VolumeTypeExtraSpec.value)
    .outerjoin(VolumeTypeExtraSpec, VolumeTypeExtraSpec.volume_type_id == VolumeType.id)
    .where(or_(VolumeType.id == bindparam("ident"), VolumeType.name == bindparam("ident")))
)


def resolve(conn: Connection, ident: str, who: Identity) -> TypeInfo:
    """A type by id or by name with its extra specs, in one statement (the create path)."""
    rows = conn.execute(_TYPE_WITH_SPECS, {"ident": ident}).all()
    if rows:
        # an id match wins over a name match, as get_type's first() would have it
        type_id = next((r[0] for r in rows if r[0] == ident), rows[0][0])
        rows = [r for r in rows if r[0] == type_id]
        info = TypeInfo(rows[0][0], rows[0][1], bool(rows[0][2]),
                        {r[3]: r[4] for r in rows if r[3] is not None})
        if info.is_public or can_see_all(who) or conn.execute(
            select(VolumeTypeProject.project_id).where(
                VolumeTypeProject.volume_type_id == info.id,
                VolumeTypeProject.project_id == who.project_id)
        ).first() is not None:
            return info
    raise NotFound("VolumeType", ident, f"Volume type with name {ident} could not be found.")


def visible(vt: VolumeType, who: Identity) -> bool:
    return vt.is_public or can_see_all(who) or any(p.project_id == who.project_id
                                              for p in vt.projects)


def default_type(session: Session, name: str) -> VolumeType:
    return get_type(session, name)


def is_multiattach(vt: VolumeType | TypeInfo) -> bool:
    """Cinder's convention: extra spec multiattach = '<is> True'."""
    return vt.specs.get("multiattach", "").strip().lower() in ("<is> true", "true")
