"""Paging rules shared by every list endpoint, on a real (SQLite) database: Cinder's default
page size and when a page carries the marker of the next one."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import insert, select

from blockyard.db.engine import Database
from blockyard.db.models import VolumeType
from blockyard.errors import NotFound
from blockyard.service.listing import MAX_LIMIT, ListParams, paginate

SORTABLE = {"id": "id", "name": "name", "created_at": "created_at"}
ROWS = MAX_LIMIT + 1


@pytest.fixture(scope="module")
def db(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Database]:
    database = Database(f"sqlite:///{tmp_path_factory.mktemp('listing') / 'l.db'}")
    database.migrate()
    start = datetime(2026, 1, 1)
    with database.write() as s:
        s.execute(insert(VolumeType), [
            {"id": f"t{i:05d}", "name": f"n{i:05d}", "is_public": True,
             "created_at": start + timedelta(seconds=i)} for i in range(ROWS)])
    yield database
    database.dispose()


def _page(db: Database, **kw: Any) -> tuple[list[str], str | None]:
    with db.read() as s:
        page = paginate(s, VolumeType, select(VolumeType), ListParams(**kw),
                        sortable=SORTABLE)
        return [t.id for t in page.rows], page.next_marker


def test_no_limit_is_a_page_of_max_limit_with_a_next_marker(db: Database) -> None:
    ids, marker = _page(db)
    assert len(ids) == MAX_LIMIT and marker == ids[-1]
    rest, last = _page(db, marker=marker)
    assert len(rest) == 1 and last is None
    # a larger limit is capped the same way
    assert _page(db, limit=5 * MAX_LIMIT) == (ids, marker)


def test_full_page_links_on_short_page_does_not(db: Database) -> None:
    ids, marker = _page(db, limit=ROWS - 1, sort=(("created_at", "asc"),))
    assert marker == ids[-1] == f"t{ROWS - 2:05d}"
    ids, marker = _page(db, limit=1, offset=ROWS - 1, sort=(("created_at", "asc"),))
    assert ids == [f"t{ROWS - 1:05d}"] and marker == ids[-1]
    assert _page(db, limit=1, offset=ROWS, sort=(("created_at", "asc"),)) == ([], None)
    assert _page(db, limit=0) == ([], None)


def test_unknown_marker_is_not_found(db: Database) -> None:
    with pytest.raises(NotFound, match="Volume type nope could not be found"):
        _page(db, marker="nope")
