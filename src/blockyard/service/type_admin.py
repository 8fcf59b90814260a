"""Volume type administration: create, update, delete, extra specs and project access.

Lookups here are by id only, as Cinder's /types/{id} endpoints resolve them (only a volume
create also accepts a name; that lives in `blockyard.service.types`). Every change is one write
transaction, so a failed request leaves nothing half-done. A type's name is part of the
per-type quota resources (``volumes_<name>``...), so a rename moves those rows along with it in
the same transaction, as Cinder's ``update_quota_resource`` does.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from sqlalchemy import delete, exists, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from blockyard.db.models import (
    GroupVolumeType,
    Quota,
    QuotaClass,
    QuotaUsage,
    Snapshot,
    Volume,
    VolumeType,
    VolumeTypeExtraSpec,
    VolumeTypeProject,
    utcnow,
)
from blockyard.errors import Conflict, Invalid, NotFound
from blockyard.service import listing
from blockyard.service import types as vtypes
from blockyard.service.identity import Identity
from blockyard.service.quotas import PER_TYPE
from blockyard.service.runtime import Runtime

#: the API's sort keys for GET /types
SORTABLE = {"id": "id", "name": "name", "created_at": "created_at"}
#: columns an admin may filter GET /types on with ``?<column>=<value>``
FILTERABLE = {"id", "name", "description"}


@dataclass(frozen=True)
class TypeFilter:
    """What GET /types asked for: `is_public` None means public and private alike."""

    is_public: bool | None = True
    columns: dict[str, str] | None = None
    extra_specs: dict[str, str] | None = None
    #: a filter on something no type has: the answer is empty, as in Cinder
    impossible: bool = False


# ---------------------------------------------------------------------------- lookups


def by_id(session: Session, who: Identity, type_id: str) -> VolumeType:
    """The type `type_id` if `who` may see it, else Cinder's VolumeTypeNotFound."""
    vt = session.get(VolumeType, type_id)
    if vt is None or not vtypes.visible(vt, who):
        raise NotFound("VolumeType", type_id, f"Volume type {type_id} could not be found.")
    return vt


def get(rt: Runtime, who: Identity, type_id: str) -> VolumeType:
    with rt.db.read() as s:
        return by_id(s, who, type_id)


def get_default(rt: Runtime, who: Identity) -> VolumeType:
    with rt.db.read() as s:
        vt = s.execute(
            select(VolumeType).where(VolumeType.name == rt.config.default_volume_type)
        ).scalar()
        if vt is None:
            raise NotFound("VolumeType", "default", "Default volume type can not be found.")
        return vt


def list_types(rt: Runtime, who: Identity, params: listing.ListParams,
               flt: TypeFilter) -> listing.Page:
    """Types sorted newest first (Cinder's default), filtered and paged."""
    if flt.impossible:
        return listing.Page(rows=[], next_marker=None, count=0 if params.with_count else None)
    query = select(VolumeType)
    if flt.is_public is not None:
        if flt.is_public:
            shared = VolumeType.projects.any(VolumeTypeProject.project_id == who.project_id)
            query = query.where(or_(VolumeType.is_public.is_(True), shared))
        else:
            query = query.where(VolumeType.is_public.is_(False))
    for column, value in (flt.columns or {}).items():
        query = query.where(getattr(VolumeType, column) == value)
    for key, value in (flt.extra_specs or {}).items():
        query = query.where(VolumeType.extra_specs.any(
            (VolumeTypeExtraSpec.key == key) & (VolumeTypeExtraSpec.value == value)))
    with rt.db.read() as s:
        return listing.paginate(s, VolumeType, query, params, sortable=SORTABLE)


# ---------------------------------------------------------------------------- create / update


def _name_taken(session: Session, name: str, other_than: str | None = None) -> bool:
    query = select(VolumeType.id).where(VolumeType.name == name)
    if other_than is not None:
        query = query.where(VolumeType.id != other_than)
    return session.execute(query).first() is not None


def create(rt: Runtime, name: str, description: str | None, is_public: bool,
           extra_specs: dict[str, str]) -> VolumeType:
    """A new type; a taken name is Cinder's VolumeTypeExists (409)."""
    conflict = Conflict(f"Volume Type {name} already exists.")
    try:
        with rt.db.write() as s:
            if _name_taken(s, name):
                raise conflict
            vt = VolumeType(
                id=str(uuid.uuid4()), name=name, description=description, is_public=is_public,
                created_at=utcnow(),
                extra_specs=[VolumeTypeExtraSpec(key=k, value=v) for k, v in
                             extra_specs.items()],
                projects=[],
            )
            s.add(vt)
            s.flush()
    except IntegrityError:  # a concurrent create of the same name won (PostgreSQL)
        raise conflict from None
    return vt


def _rename_quota_resources(session: Session, old: str, new: str) -> None:
    for base in PER_TYPE:
        for model in (Quota, QuotaClass, QuotaUsage):
            session.execute(
                update(model).where(model.resource == f"{base}_{old}")
                .values(resource=f"{base}_{new}")
                .execution_options(synchronize_session=False)
            )


def update_type(rt: Runtime, who: Identity, type_id: str, *, name: str | None,
                description: str | None, is_public: bool | None,
                set_description: bool) -> VolumeType:
    """Change name, description and/or visibility; `set_description` tells an explicit
    null description (clear it) from an absent one."""
    try:
        with rt.db.write() as s:
            vt = by_id(s, who, type_id)
            if name is not None and name != vt.name:
                if vt.name == rt.config.default_volume_type:
                    raise Invalid("Invalid volume type: The default volume type cannot be "
                                  "renamed.")
                if _name_taken(s, name, other_than=vt.id):
                    raise Conflict(f"Volume Type {name} already exists.")
                _rename_quota_resources(s, vt.name, name)
                vt.name = name
            if set_description:
                vt.description = description
            if is_public is not None:
                vt.is_public = is_public
            vt.updated_at = utcnow()
            s.flush()
    except IntegrityError:
        raise Conflict(f"Volume Type {name} already exists.") from None
    return vt


def delete_type(rt: Runtime, who: Identity, type_id: str) -> None:
    """Refused for the default type and while any volume or snapshot has the type."""
    with rt.db.write() as s:
        vt = by_id(s, who, type_id)
        if vt.name == rt.config.default_volume_type:
            raise Invalid(f"The volume type {vt.id} is a default volume type and cannot be "
                          f"deleted.")
        in_use = s.execute(select(
            exists().where(Volume.volume_type_id == vt.id)
            | exists().where(Snapshot.volume_type_id == vt.id)
            | exists().where(GroupVolumeType.volume_type_id == vt.id)
        )).scalar()
        if in_use:
            raise Invalid("Target volume type is still in use.")
        # per-type limits must not outlive the type and surprise a later type of that name
        per_type = [f"{b}_{vt.name}" for b in PER_TYPE]
        for model in (Quota, QuotaClass):
            s.execute(delete(model).where(model.resource.in_(per_type))
                      .execution_options(synchronize_session=False))
        s.delete(vt)


# ---------------------------------------------------------------------------- extra specs


def _refuse_if_in_use(session: Session, type_id: str) -> None:
    """Cinder refuses extra-spec changes while a volume has the type (its placement and
    capabilities were chosen from them)."""
    if session.execute(select(exists().where(Volume.volume_type_id == type_id))).scalar():
        raise Invalid("Volume Type is currently in use.")


def extra_specs(rt: Runtime, who: Identity, type_id: str) -> dict[str, str]:
    with rt.db.read() as s:
        return by_id(s, who, type_id).specs


def set_extra_specs(rt: Runtime, who: Identity, type_id: str, specs: dict[str, str]) -> None:
    """Create or overwrite the given keys, all or none."""
    with rt.db.write() as s:
        vt = by_id(s, who, type_id)
        _refuse_if_in_use(s, vt.id)
        rows = {row.key: row for row in vt.extra_specs}
        for key, value in specs.items():
            if key in rows:
                rows[key].value = value
            else:
                vt.extra_specs.append(VolumeTypeExtraSpec(key=key, value=value))
        vt.updated_at = utcnow()


def delete_extra_spec(rt: Runtime, who: Identity, type_id: str, key: str) -> None:
    with rt.db.write() as s:
        vt = by_id(s, who, type_id)
        _refuse_if_in_use(s, vt.id)
        row = next((r for r in vt.extra_specs if r.key == key), None)
        if row is None:
            raise NotFound("ExtraSpec", key, f"Volume Type {vt.id} has no extra specs with key "
                                             f"{key}.")
        vt.extra_specs.remove(row)
        vt.updated_at = utcnow()


# ---------------------------------------------------------------------------- project access


def access_list(rt: Runtime, who: Identity, type_id: str) -> list[str]:
    with rt.db.read() as s:
        vt = by_id(s, who, type_id)
        if vt.is_public:
            raise NotFound("VolumeTypeAccess", type_id,
                           "Access list not available for public volume types.")
        return sorted(p.project_id for p in vt.projects)


def _private(vt: VolumeType) -> None:
    if vt.is_public:
        raise Invalid("Invalid volume type: Type access modification is not applicable to "
                      "public volume type.")


def add_access(rt: Runtime, who: Identity, type_id: str, project_id: str) -> None:
    exists_error = Conflict(f"Volume type access for {type_id} / {project_id} combination "
                            f"already exists.")
    try:
        with rt.db.write() as s:
            vt = by_id(s, who, type_id)
            _private(vt)
            if any(p.project_id == project_id for p in vt.projects):
                raise exists_error
            vt.projects.append(VolumeTypeProject(project_id=project_id))
    except IntegrityError:
        raise exists_error from None


def remove_access(rt: Runtime, who: Identity, type_id: str, project_id: str) -> None:
    with rt.db.write() as s:
        vt = by_id(s, who, type_id)
        _private(vt)
        row = next((p for p in vt.projects if p.project_id == project_id), None)
        if row is None:
            raise NotFound("VolumeTypeAccess", type_id,
                           f"Volume type access not found for {type_id} / {project_id} "
                           f"combination.")
        vt.projects.remove(row)


def type_names(session: Session) -> list[str]:
    """Every type's name, newest first: the order of per-type keys in quota sets."""
    return list(session.execute(
        select(VolumeType.name).order_by(VolumeType.created_at.desc(), VolumeType.id.desc())
    ).scalars())
