"""Quota enforcement by conditional increments, race-free on any database.

A usage row per (project, resource) is only ever changed by
``UPDATE quota_usages SET in_use = in_use + :n WHERE ... AND in_use + :n <= <its limit>``, in the
same transaction that creates, grows or removes what it counts. Two concurrent requests cannot both
squeeze under a limit, and a rolled-back request releases nothing it did not take.
"""

from __future__ import annotations

import functools
from typing import Any

from sqlalchemy import Connection, bindparam, case, func, insert, or_, select, update
from sqlalchemy.dialects import postgresql as postgresql_dml
from sqlalchemy.dialects import sqlite as sqlite_dml
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from blockyard.db.models import Base, Quota, QuotaClass, QuotaUsage
from blockyard.errors import QuotaExceeded

#: resources that also exist per volume type, as "<resource>_<type name>"
PER_TYPE = ("volumes", "gigabytes", "snapshots")


def _conn(db: Session | Connection) -> Connection:
    return db.connection() if isinstance(db, Session) else db


#: the quota class whose limits are every project's defaults (Cinder's _DEFAULT_QUOTA_NAME)
DEFAULT_CLASS = "default"


def limit_of(db: Session | Connection, defaults: dict[str, int], project_id: str,
             resource: str) -> int:
    """The project's hard limit for `resource` (-1: unlimited): its own, else the default
    quota class's, else the configured default (Cinder's order)."""
    stored = _conn(db).execute(
        select(Quota.hard_limit).where(Quota.project_id == project_id, Quota.resource == resource)
    ).scalar()
    if stored is not None:
        return int(stored)
    return class_limits(db, defaults, DEFAULT_CLASS, [resource])[resource]


def class_limits(db: Session | Connection, defaults: dict[str, int], class_name: str,
                 names: list[str]) -> dict[str, int]:
    """Limits of `class_name` for the resources `names`: the class's own, else the default
    class's, else the configured defaults (Cinder's get_class_quotas / get_defaults)."""
    wanted = [DEFAULT_CLASS] if class_name == DEFAULT_CLASS else [class_name, DEFAULT_CLASS]
    stored: dict[tuple[str, str], int] = {
        (row.class_name, row.resource): int(row.hard_limit)
        for row in _conn(db).execute(
            select(QuotaClass.class_name, QuotaClass.resource, QuotaClass.hard_limit)
            .where(QuotaClass.class_name.in_(wanted), QuotaClass.resource.in_(names)))
    }
    result = {}
    for name in names:
        for cls in wanted:
            if (cls, name) in stored:
                result[name] = stored[(cls, name)]
                break
        else:
            result[name] = default_of(defaults, name)
    return result


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
        session.connection().execute(_change_statement(len(shrink), False),
                                     _params(project_id, shrink))


@functools.cache
def _change_statement(slots: int, grow: bool) -> Any:
    """The UPDATE changing `slots` usage rows of one project by their own deltas (all bound
    parameters, so it is built and compiled once per shape). Growing checks each row against
    its limit, the stored one else the default class's else the configured default (``-1``:
    unlimited); shrinking stops at zero."""
    table = Base.metadata.tables["quota_usages"]
    resource, in_use = table.c.resource, table.c.in_use
    names: list[Any] = [bindparam(f"r{i}") for i in range(slots)]
    delta = case(*[(resource == names[i], bindparam(f"d{i}")) for i in range(slots)], else_=0)
    stmt = update(table).where(table.c.project_id == bindparam("p_project"),
                               resource.in_(names))
    if not grow:
        return stmt.values(in_use=case((in_use + delta < 0, 0), else_=in_use + delta))
    stored = (
        select(Quota.hard_limit)
        .where(Quota.project_id == table.c.project_id, Quota.resource == resource)
        .scalar_subquery()
    )
    class_default = (
        select(QuotaClass.hard_limit)
        .where(QuotaClass.class_name == DEFAULT_CLASS, QuotaClass.resource == resource)
        .scalar_subquery()
    )
    default = case(*[(resource == names[i], bindparam(f"l{i}")) for i in range(slots)],
                   else_=-1)
    limit = func.coalesce(stored, class_default, default)
    return (stmt.where(or_(limit < 0, in_use + delta <= limit))
            .values(in_use=in_use + delta).returning(resource))


def _params(project_id: str, deltas: dict[str, int],
            defaults: dict[str, int] | None = None) -> dict[str, Any]:
    params: dict[str, Any] = {"p_project": project_id}
    for i, (resource, delta) in enumerate(sorted(deltas.items())):
        params[f"r{i}"], params[f"d{i}"] = resource, delta
        if defaults is not None:
            params[f"l{i}"] = default_of(defaults, resource)
    return params


def _increase(session: Session, defaults: dict[str, int], project_id: str,
              grow: dict[str, int]) -> set[str]:
    """Grow every row of `grow` in one conditional UPDATE; returns the resources it changed
    (a row over its limit, or a row that does not exist yet, is left out)."""
    result = session.connection().execute(_change_statement(len(grow), True),
                                          _params(project_id, grow, defaults))
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
