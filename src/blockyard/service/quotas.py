"""Quota enforcement by conditional increments, race-free on any database.

A usage row per (project, resource) is only ever changed by
``UPDATE quota_usages SET in_use = in_use + :n WHERE ... AND in_use + :n <= :limit``, in the same
transaction that creates, grows or removes what it counts. Two concurrent requests cannot both
squeeze under a limit, and a rolled-back request releases nothing it did not take.
"""

from __future__ import annotations

from sqlalchemy import insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from blockyard.db.models import Quota, QuotaUsage
from blockyard.errors import QuotaExceeded

#: resources that also exist per volume type, as "<resource>_<type name>"
PER_TYPE = ("volumes", "gigabytes", "snapshots")


def limit_of(session: Session, defaults: dict[str, int], project_id: str, resource: str) -> int:
    """The project's hard limit for `resource` (-1: unlimited)."""
    stored = session.execute(
        select(Quota.hard_limit).where(Quota.project_id == project_id, Quota.resource == resource)
    ).scalar()
    if stored is not None:
        return int(stored)
    base = resource.split("_", 1)[0] if resource.split("_", 1)[0] in PER_TYPE else resource
    if base != resource and resource not in defaults:
        return -1  # per-type quotas are unlimited unless set
    return defaults.get(resource, -1)


def usage_of(session: Session, project_id: str, resource: str) -> int:
    value = session.execute(
        select(QuotaUsage.in_use).where(
            QuotaUsage.project_id == project_id, QuotaUsage.resource == resource
        )
    ).scalar()
    return int(value or 0)


def _ensure_row(session: Session, project_id: str, resource: str) -> None:
    exists = session.execute(
        select(QuotaUsage.in_use).where(
            QuotaUsage.project_id == project_id, QuotaUsage.resource == resource
        )
    ).first()
    if exists is None:
        try:
            with session.begin_nested():
                session.execute(
                    insert(QuotaUsage).values(project_id=project_id, resource=resource, in_use=0)
                )
        except IntegrityError:
            pass  # a concurrent request created it first


def consume(
    session: Session, defaults: dict[str, int], project_id: str, deltas: dict[str, int]
) -> None:
    """Add `deltas` to the project's usage, or raise QuotaExceeded and change nothing.

    Negative deltas (releases) always succeed and never go below zero.
    """
    for resource, delta in sorted(deltas.items()):
        if delta == 0:
            continue
        _ensure_row(session, project_id, resource)
        row = (QuotaUsage.project_id == project_id, QuotaUsage.resource == resource)
        if delta < 0:
            session.execute(
                update(QuotaUsage)
                .where(*row)
                .values(in_use=QuotaUsage.in_use + delta)
                .execution_options(synchronize_session=False)
            )
            session.execute(
                update(QuotaUsage)
                .where(*row, QuotaUsage.in_use < 0)
                .values(in_use=0)
                .execution_options(synchronize_session=False)
            )
            continue
        limit = limit_of(session, defaults, project_id, resource)
        stmt = update(QuotaUsage).where(*row).values(in_use=QuotaUsage.in_use + delta)
        if limit >= 0:
            stmt = stmt.where(QuotaUsage.in_use + delta <= limit)
        result = session.execute(stmt.execution_options(synchronize_session=False))
        if result.rowcount != 1:  # type: ignore[attr-defined]
            raise QuotaExceeded(resource, delta, limit, usage_of(session, project_id, resource))


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
