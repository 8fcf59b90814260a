"""Sorted, filtered, keyset-paginated listing shared by volumes, snapshots and attachments.

Pages are cut with a marker (the last id of the previous page) turned into a row-value
comparison on the sort keys, so page N costs the same as page 1 on an index, unlike OFFSET.
"""

from __future__ import annotations

import ast
import json
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Select, and_, exists, func, literal_column, or_, select
from sqlalchemy.orm import InstrumentedAttribute, Session

from blockyard.errors import Invalid, NotFound

MAX_LIMIT = 1000

#: how Cinder names a missing marker of each listed model (its ``<Kind>NotFound``, a 404)
_MARKER_KIND = {"Volume": "Volume", "Snapshot": "Snapshot", "VolumeType": "Volume type",
                "QosSpecs": "QoS Specs", "Attachment": "Volume attachment"}


@dataclass(frozen=True)
class ListParams:
    limit: int | None = None
    marker: str | None = None
    offset: int | None = None
    #: (column name, "asc" | "desc") in priority order
    sort: tuple[tuple[str, str], ...] = ()
    with_count: bool = False
    filters: dict[str, Any] = field(default_factory=dict)


@dataclass
class Page:
    rows: list[Any]
    #: the id to pass as marker for the next page, or None on the last page
    next_marker: str | None
    count: int | None = None


def _sort_expr(model: Any, name: str, nullable: dict[str, Any]) -> Any:
    """The column to sort on; a nullable one is coalesced to its stand-in so that keyset
    comparisons never meet NULL (portable across SQLite and PostgreSQL)."""
    column = getattr(model, name)
    if name not in nullable:
        return column
    stand_in = nullable[name]
    if stand_in == "":
        # rendered literally, not bound: an expression index on coalesce(name, '') only
        # serves a query whose expression is the same text
        stand_in = literal_column("''")
    return func.coalesce(column, stand_in)


def paginate(
    session: Session,
    model: Any,
    query: Select[Any],
    params: ListParams,
    *,
    sortable: dict[str, str],
    nullable: dict[str, Any] | None = None,
) -> Page:
    """Run `query` (already filtered) sorted by `params.sort` and cut to one page.

    The page holds what the query selects: ORM objects, or plain ids when it selects only the
    id column (the caller then fetches read models for them).

    As Cinder's ``_get_collection_links``, a page as long as the limit (asked for, else
    MAX_LIMIT) carries the marker of the next page (which may turn out empty); a shorter page
    is the last one. A marker that names no row is a 404, as Cinder's lookup of the marker
    row answers.

    `sortable` maps the API's sort key names to column names (e.g. display_name → name);
    `nullable` maps nullable sort columns to the expression standing in for NULL.
    """
    nullable = nullable or {}
    count = _count(session, query) if params.with_count else None
    exprs = [(_sort_expr(model, c, nullable), d) for c, d in _sort_keys(params.sort, sortable)]
    if params.marker is not None:
        query = query.where(*_after_marker(session, model, exprs, params.marker))
    query = query.order_by(*[e.asc() if d == "asc" else e.desc() for e, d in exprs])
    if params.offset:
        query = query.offset(params.offset)
    # no limit asked for is Cinder's osapi_max_limit, as is any larger one
    limit = MAX_LIMIT if params.limit is None else min(params.limit, MAX_LIMIT)
    if limit == 0:
        return Page(rows=[], next_marker=None, count=count)
    rows = list(session.execute(query.limit(limit)).scalars().unique())
    return Page(rows=rows, next_marker=_next_marker(rows, limit), count=count)


def _sort_keys(sort: tuple[tuple[str, str], ...],
               sortable: dict[str, str]) -> list[tuple[str, str]]:
    """(column, direction) to sort on: the asked keys (default newest first), each column
    once, and `id` last so that the order is total (a marker then names one position)."""
    keys: list[tuple[str, str]] = []
    for key, direction in sort or (("created_at", "desc"),):
        column = sortable.get(key)
        if column is None:
            raise Invalid(f"Invalid input received: Invalid sort key {key}")
        if direction not in ("asc", "desc"):
            raise Invalid("Invalid input received: Unknown sort direction, must be 'desc' or "
                          "'asc'")
        if column not in (c for c, _ in keys):
            keys.append((column, direction))
    if "id" not in (c for c, _ in keys):
        keys.append(("id", keys[-1][1] if keys else "desc"))
    return keys


def _count(session: Session, query: Select[Any]) -> int:
    """How many rows `query` matches, over all pages (``with_count``)."""
    count: int = session.execute(
        select(func.count()).select_from(query.order_by(None).subquery())
    ).scalar_one()
    return count


def _after_marker(session: Session, model: Any, exprs: list[tuple[Any, str]],
                  marker: str) -> tuple[Any, Any]:
    """The conditions selecting the rows after the marker's row in the order of `exprs`: a
    row-value comparison written out, (a > a0) or (a = a0 and b > b0) or ..."""
    marker_row = session.execute(
        select(*[e for e, _ in exprs]).where(model.id == marker)
    ).first()
    if marker_row is None:
        raise NotFound(_MARKER_KIND.get(model.__name__, "Marker"), marker)
    after: list[Any] = []
    for i, (expr, direction) in enumerate(exprs):
        ties = [exprs[j][0] == marker_row[j] for j in range(i)]
        step = expr > marker_row[i] if direction == "asc" else expr < marker_row[i]
        after.append(and_(*ties, step))
    # the redundant bound on the first key lets the index seek to the marker instead of
    # scanning from the start of the order
    first, first_dir = exprs[0]
    bound = first >= marker_row[0] if first_dir == "asc" else first <= marker_row[0]
    return bound, or_(*after)


def _next_marker(rows: list[Any], limit: int) -> str | None:
    """A full page carries the marker of the next one (which may turn out empty); a shorter
    page is the last."""
    if not rows or len(rows) < limit:
        return None
    last = rows[-1]
    return last if isinstance(last, str) else str(last.id)


def filter_columns(query: Any, filters: dict[str, str],
                   columns: dict[str, InstrumentedAttribute[Any]], *, like_allowed: bool) -> Any:
    """`query` narrowed by the filters that name one of `columns`: ``key=value`` matches
    exactly, ``key~=value`` as `like` (ignored where the microversion has no `~`); other keys
    are ignored, as Cinder ignores them."""
    for key, value in filters.items():
        base, approx = (key[:-1], True) if key.endswith("~") else (key, False)
        if approx and not like_allowed:
            continue
        column = columns.get(base)
        if column is not None:
            query = query.where(like(column, value) if approx else column == value)
    return query


def metadata_filter(value: str) -> dict[str, str]:
    """The pairs of a ``metadata=`` filter: JSON, or a Python dict literal as Cinder takes."""
    try:
        parsed = json.loads(value)
    except (ValueError, RecursionError):
        try:
            parsed = ast.literal_eval(value)
        except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
            # TypeError: {[]: 1} (an unhashable key) is a literal Python cannot build
            raise Invalid(f"Invalid input received: Invalid metadata filter {value!r}.") from None
    if not isinstance(parsed, dict):
        raise Invalid(f"Invalid input received: Invalid metadata filter {value!r}.")
    pairs = {str(k): str(v) for k, v in parsed.items()}
    try:  # "\ud800" escapes decode to text no database can store
        "".join(pairs).encode("utf-8"), "".join(pairs.values()).encode("utf-8")
    except UnicodeEncodeError:
        raise Invalid(f"Invalid input received: Invalid metadata filter {value!r}.") from None
    return pairs


def has_metadata(value: str, owner_of_item: Any, owner_id: Any, item_key: Any,
                 item_value: Any) -> list[Any]:
    """One condition per pair of the ``metadata=`` filter `value`: the owner (`owner_id`)
    has a metadata item (`owner_of_item`, `item_key`, `item_value`) with that key and value."""
    return [exists().where(owner_of_item == owner_id, item_key == key, item_value == val)
            for key, val in metadata_filter(value).items()]


def like(column: InstrumentedAttribute[Any], text: str) -> Any:
    """Cinder's `key~=value` filters: a case-insensitive substring match."""
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return func.lower(column).like(f"%{escaped.lower()}%", escape="\\")
