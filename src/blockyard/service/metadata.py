"""Key/value metadata of volumes and snapshots: one implementation for both owners."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import delete, update
from sqlalchemy.orm import Session

from blockyard.db.models import Snapshot, SnapshotMetadata, Volume, VolumeMetadata, utcnow
from blockyard.errors import NotFound
from blockyard.service.identity import Identity
from blockyard.service.runtime import Runtime


@dataclass(frozen=True)
class Owner:
    """Which rows hold the metadata of which resource."""

    model: type[Volume] | type[Snapshot]
    item: type[VolumeMetadata] | type[SnapshotMetadata]
    #: the item's column naming its owner
    fk: str
    #: loads the owner as the caller may see it, or raises NotFound
    get: Callable[[Session, Identity, str], Any]


def replace_items(s: Session, owner: Owner, ident: str, meta: dict[str, str]) -> None:
    """Make `meta` the owner's whole metadata, in the caller's transaction."""
    s.execute(delete(owner.item).where(getattr(owner.item, owner.fk) == ident))
    for key, value in meta.items():
        s.add(owner.item(**{owner.fk: ident, "key": key, "value": value}))
    s.execute(update(owner.model).where(owner.model.id == ident).values(updated_at=utcnow())
              .execution_options(synchronize_session=False))
    s.flush()


def show(rt: Runtime, who: Identity, owner: Owner, ident: str) -> dict[str, str]:
    with rt.db.read() as s:
        return dict(owner.get(s, who, ident).meta)


def set_items(rt: Runtime, who: Identity, owner: Owner, ident: str, meta: dict[str, str], *,
              replace: bool) -> dict[str, str]:
    """POST merges keys, PUT replaces the whole set; returns the resulting metadata."""
    with rt.db.write() as s:
        found = owner.get(s, who, ident)
        current = {} if replace else dict(found.meta)
        current.update(meta)
        replace_items(s, owner, ident, current)
        return current


def delete_key(rt: Runtime, who: Identity, owner: Owner, ident: str, key: str) -> None:
    with rt.db.write() as s:
        owner.get(s, who, ident)
        gone = s.execute(delete(owner.item).where(getattr(owner.item, owner.fk) == ident,
                                                  owner.item.key == key))
        if gone.rowcount != 1:  # type: ignore[attr-defined]
            raise NotFound("Metadata", key, f"Metadata key {key} could not be found.")
