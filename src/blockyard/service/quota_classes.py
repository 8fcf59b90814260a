"""Quota classes: named sets of limits. The class ``default`` is what every project without a
limit of its own gets, ahead of the configured defaults, as in Cinder; other classes are stored
and shown (Cinder assigns no project to them without Keystone's help, and neither does this).
A class's limits are read by `blockyard.service.quotas.class_limits`, beside the project
limits that fall back on them.
"""

from __future__ import annotations

from sqlalchemy import insert, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from blockyard.db.models import QuotaClass


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
