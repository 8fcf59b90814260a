"""Quota classes: named sets of limits. The class ``default`` is what every project without a
limit of its own gets, ahead of the configured defaults, as in Cinder; other classes are stored
and shown (Cinder assigns no project to them without Keystone's help, and neither does this).
"""

from __future__ import annotations

from sqlalchemy import insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from blockyard.db.models import QuotaClass
from blockyard.service.quotas import DEFAULT_CLASS, default_of


def class_limits(session: Session, defaults: dict[str, int], class_name: str,
                 names: list[str]) -> dict[str, int]:
    """Limits of `class_name` for the resources `names`: the class's own, else the default
    class's, else the configured defaults (Cinder's get_class_quotas / get_defaults)."""
    wanted = [DEFAULT_CLASS] if class_name == DEFAULT_CLASS else [class_name, DEFAULT_CLASS]
    stored: dict[tuple[str, str], int] = {
        (row.class_name, row.resource): int(row.hard_limit)
        for row in session.execute(
            select(QuotaClass.class_name, QuotaClass.resource, QuotaClass.hard_limit)
            .where(QuotaClass.class_name.in_(wanted)))
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


def set_class_limits(session: Session, class_name: str, limits: dict[str, int]) -> None:
    """Upsert the class's limits, each row taken over by an update if a concurrent first
    insert of the same row won (PostgreSQL)."""
    for resource, value in limits.items():
        row = (QuotaClass.class_name == class_name, QuotaClass.resource == resource)
        stmt = update(QuotaClass).where(*row).values(hard_limit=value) \
            .execution_options(synchronize_session=False)
        if session.execute(stmt).rowcount == 1:  # type: ignore[attr-defined]
            continue
        try:
            with session.begin_nested():
                session.execute(insert(QuotaClass).values(
                    class_name=class_name, resource=resource, hard_limit=value))
        except IntegrityError:
            session.execute(stmt)
