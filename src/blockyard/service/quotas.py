"""Quota enforcement by conditional increments, race-free on any database.

A usage row per (project, resource) is only ever changed by
``UPDATE quota_usages SET in_use = in_use + :n WHERE ... AND in_use + :n <= <its limit>``, in the
same transaction that creates, grows or removes what it counts. Two concurrent requests cannot both
squeeze under a limit, and a rolled-back request releases nothing it did not take.
"""

from __future__ import annotations

from sqlalchemy import Connection, case, func, insert, or_, select, update
from sqlalchemy.dialects import postgresql as postgresql_dml
from sqlalchemy.dialects import sqlite as sqlite_dml
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from blockyard.db.models import Quota, QuotaUsage
from blockyard.errors import QuotaExceeded

#: resources that also exist per volume type, as "<resource>_<type name>"
PER_TYPE = ("volumes", "gigabytes", "snapshots")


def _conn(db: Session | Connection) -> Connection:
    return db.connection() if isinstance(db, Session) else db


def limit_of(db: Session | Connection, defaults: dict[str, int], project_id: str,
             resource: str) -> int:
    """The project's hard limit for `resource` (-1: unlimited)."""
    stored = _conn(db).execute(
        select(Quota.hard_limit).where(Quota.project_id == project_id, Quota.resource == resource)
    ).scalar()
    if stored is not None:
        return int(stored)
    return default_of(defaults, resource)


def usage_of(session: Session, project_id: str, resource: str) -> int:
    value = session.connection().execute(
        select(QuotaUsage.in_use).where(
            QuotaUsage.project_id == project_id, QuotaUsage.resource == resource
        )
    ).scalar()
    return int(value or 0)


def default_of(defaults: dict[str, int], resource: str) -> int:
    """The configured default limit of `resource`; per-type resources are unlimited (-1)."""
    if resource in defaults:
        return defaults[resource]
    return -1


#: prebuilt "insert unless present" statements, run with one parameter set per row
_INSERT_IF_MISSING = {
    "sqlite": sqlite_dml.insert(QuotaUsage).on_conflict_do_nothing(),
    "postgresql": postgresql_dml.insert(QuotaUsage).on_conflict_do_nothing(),
}


def _ensure_rows(session: Session, project_id: str, resources: list[str]) -> None:
    """Create missing usage rows at zero (a concurrent creator wins harmlessly)."""
    rows = [{"project_id": project_id, "resource": r, "in_use": 0} for r in resources]
    dialect = session.get_bind().dialect.name
    if dialect in _INSERT_IF_MISSING:
        session.connection().execute(_INSERT_IF_MISSING[dialect], rows)
        return
    existing = set(session.execute(select(QuotaUsage.resource).where(
        QuotaUsage.project_id == project_id, QuotaUsage.resource.in_(resources))).scalars())
    for row in rows:
        if row["resource"] not in existing:
            try:
                with session.begin_nested():
                    session.execute(insert(QuotaUsage).values(row))
            except IntegrityError:
                pass


def consume(
    session: Session, defaults: dict[str, int], project_id: str, deltas: dict[str, int]
) -> None:
    """Add `deltas` to the project's usage, or raise QuotaExceeded.

    Increases are one conditional UPDATE over all their rows (plus, the first time a project
    uses a resource, the insert of its row); if any row would exceed its limit the raised error
    aborts the caller's transaction, which rolls back whatever the statement did change.
    Decreases always succeed and stop at zero.
    """
    grow = {r: d for r, d in deltas.items() if d > 0}
    shrink = {r: d for r, d in deltas.items() if d < 0}
    if grow:
        applied = _increase(session, defaults, project_id, grow)
        if len(applied) < len(grow):
            # usage rows are created on first use: make the missing ones and try those again
            absent = sorted(set(grow) - applied - _existing(session, project_id, grow))
            if absent:
                _ensure_rows(session, project_id, absent)
                applied |= _increase(session, defaults, project_id,
                                     {r: grow[r] for r in absent})
        if len(applied) < len(grow):
            _raise_exceeded(session, defaults, project_id,
                            {r: d for r, d in grow.items() if r not in applied})
    if shrink:
        delta = case(shrink, value=QuotaUsage.resource, else_=0)
        session.connection().execute(
            update(QuotaUsage)
            .where(QuotaUsage.project_id == project_id, QuotaUsage.resource.in_(shrink))
            .values(in_use=case((QuotaUsage.in_use + delta < 0, 0),
                                else_=QuotaUsage.in_use + delta))
            .execution_options(synchronize_session=False)
        )


def _increase(session: Session, defaults: dict[str, int], project_id: str,
              grow: dict[str, int]) -> set[str]:
    """One conditional UPDATE over every row of `grow`: each row is checked against its own
    limit (the stored one, else the default). Returns the resources it changed."""
    delta = case(grow, value=QuotaUsage.resource, else_=0)
    stored = (
        select(Quota.hard_limit)
        .where(Quota.project_id == QuotaUsage.project_id, Quota.resource == QuotaUsage.resource)
        .scalar_subquery()
    )
    limit = func.coalesce(stored, case({r: default_of(defaults, r) for r in grow},
                                       value=QuotaUsage.resource, else_=-1))
    result = session.connection().execute(
        update(QuotaUsage)
        .where(QuotaUsage.project_id == project_id, QuotaUsage.resource.in_(grow),
               or_(limit < 0, QuotaUsage.in_use + delta <= limit))
        .values(in_use=QuotaUsage.in_use + delta)
        .returning(QuotaUsage.resource)
    )
    return set(result.scalars())


def _existing(session: Session, project_id: str, resources: dict[str, int]) -> set[str]:
    return set(session.connection().execute(
        select(QuotaUsage.resource).where(QuotaUsage.project_id == project_id,
                                          QuotaUsage.resource.in_(resources))).scalars())


def _raise_exceeded(session: Session, defaults: dict[str, int], project_id: str,
                    grow: dict[str, int]) -> None:
    """Name the first resource whose limit the increase would pass."""
    for resource, delta in sorted(grow.items()):
        limit = limit_of(session, defaults, project_id, resource)
        in_use = usage_of(session, project_id, resource)
        if limit >= 0 and in_use + delta > limit:
            raise QuotaExceeded(resource, delta, limit, in_use)
    resource, delta = sorted(grow.items())[0]
    raise QuotaExceeded(resource, delta, limit_of(session, defaults, project_id, resource),
                        usage_of(session, project_id, resource))


def volume_deltas(type_name: str, count: int, gigabytes: int) -> dict[str, int]:
    """Usage changes for `count` volumes totalling `gigabytes` of type `type_name`."""
    return {
        "volumes": count,
        f"volumes_{type_name}": count,
        "gigabytes": gigabytes,
        f"gigabytes_{type_name}": gigabytes,
    }


def snapshot_deltas(type_name: str, count: int, gigabytes: int) -> dict[str, int]:
    return {
        "snapshots": count,
        f"snapshots_{type_name}": count,
        "gigabytes": gigabytes,
        f"gigabytes_{type_name}": gigabytes,
    }
