"""volume_ops: a new volume's row round-trips, and a lost compare-and-swap is told apart."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select, update

from blockyard.db.engine import Database
from blockyard.db.models import Volume
from blockyard.errors import InUse, InvalidState
from blockyard.service import records, volume_ops
from blockyard.service import types as vtypes
from blockyard.service.records import VolumeRecord
from blockyard.states import VolumeStatus


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Database]:
    database = Database(f"sqlite:///{tmp_path / 'ops.db'}")
    database.migrate()
    yield database
    database.dispose()


def _inserted(db: Database, *, bootable: bool = False) -> VolumeRecord:
    with db.write() as s:
        vt = vtypes.ensure_default_type(s, "__DEFAULT__")
        record = volume_ops.new_volume(
            project_id="p", user_id="u", size=2, status=VolumeStatus.AVAILABLE,
            availability_zone="nova",
            volume_type_id=vt.id, type_name=vt.name, backend="b", multiattach=False,
            name="n", meta={"k": "v"}, bootable=bootable)
        volume_ops.insert_volume(s, record, None)
    return record


def test_a_new_volume_reads_back_as_its_record(db: Database) -> None:
    record = _inserted(db, bootable=True)
    with db.reading() as conn:
        back = records.fetch_volume(conn, record.id)
        pins, previous = conn.execute(select(Volume.pins, Volume.previous_status)
                                      .where(Volume.id == record.id)).one()
    assert back == record
    assert (pins, previous) == (0, None)


def test_begin_as_read_begins_while_the_volume_is_as_read(db: Database) -> None:
    record = _inserted(db)
    with db.write() as s:
        volume_ops.begin_as_read(s, record, "extend", task_id=3)
    with db.reading() as conn:
        assert conn.execute(select(Volume.status, Volume.task_id)
                            .where(Volume.id == record.id)).one() == ("extending", 3)


def test_a_volume_grown_since_the_read_is_stale(db: Database) -> None:
    record = _inserted(db)
    with db.write() as s:
        s.execute(update(Volume).where(Volume.id == record.id).values(size=3))
    with db.write() as s, pytest.raises(volume_ops.Stale):
        volume_ops.begin_as_read(s, record, "extend", task_id=3)


def test_a_failed_condition_is_the_callers_refusal_a_wrong_status_invalid_state(
        db: Database) -> None:
    record = _inserted(db)
    with db.write() as s:
        s.execute(update(Volume).where(Volume.id == record.id).values(pins=1))
    busy = InUse("busy")
    with db.write() as s, pytest.raises(InUse) as raised:
        volume_ops.begin_as_read(s, record, "extend", task_id=3, where=(Volume.pins == 0,),
                                 busy=busy)
    assert raised.value is busy
    with db.write() as s:
        s.execute(update(Volume).where(Volume.id == record.id).values(status=VolumeStatus.ERROR))
    with db.write() as s, pytest.raises(InvalidState):
        volume_ops.begin_as_read(s, record, "extend", task_id=3, busy=busy)
