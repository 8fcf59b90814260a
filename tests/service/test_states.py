"""The state machine: every transition is a compare-and-swap with exact outcomes."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import select

from blockyard import states
from blockyard.db.engine import Database
from blockyard.db.models import Attachment, Group, GroupSnapshot, GroupType, Snapshot, Volume
from blockyard.errors import InvalidState, NotFound
from blockyard.service import types as vtypes
from blockyard.states import AttachStatus, VolumeStatus


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Database]:
    database = Database(f"sqlite:///{tmp_path / 'states.db'}")
    database.migrate()
    yield database
    database.dispose()


def _volume(db: Database, status: str = VolumeStatus.AVAILABLE, **kw: object) -> str:
    with db.write() as s:
        vt = vtypes.ensure_default_type(s, "__DEFAULT__")
        s.add(Volume(id="v1", project_id="p", user_id="u", size=1, status=status,
                     availability_zone="nova", volume_type_id=vt.id, backend="b", **kw))
    return "v1"


def _status(db: Database, vid: str) -> tuple[str, str | None, int | None]:
    with db.read() as s:
        row = s.execute(select(Volume.status, Volume.previous_status, Volume.task_id)
                        .where(Volume.id == vid)).one()
        return row[0], row[1], row[2]


def test_extend_sequence_returns_to_previous_status(db: Database) -> None:
    vid = _volume(db)
    seen = [_status(db, vid)[0]]
    with db.write() as s:
        states.begin(s, Volume, vid, "extend", task_id=7)
    seen.append(_status(db, vid)[0])
    with db.write() as s:
        assert states.finish(s, Volume, vid, "extend", task_id=7, values={"size": 2})
    seen.append(_status(db, vid)[0])
    assert seen == ["available", "extending", "available"]
    assert _status(db, vid)[2] is None


def test_attached_extend_goes_back_to_in_use(db: Database) -> None:
    vid = _volume(db, VolumeStatus.IN_USE)
    with db.write() as s:
        states.begin(s, Volume, vid, "extend_attached", task_id=1)
    with db.write() as s:
        states.finish(s, Volume, vid, "extend_attached", task_id=1)
    assert _status(db, vid)[0] == "in-use"


def test_begin_from_wrong_status_raises_and_changes_nothing(db: Database) -> None:
    vid = _volume(db, VolumeStatus.ERROR)
    with db.write() as s, pytest.raises(InvalidState) as info:
        states.begin(s, Volume, vid, "extend", task_id=1)
    assert info.value.current == "error"
    assert info.value.allowed == ("available",)
    assert _status(db, vid) == ("error", None, None)


def test_second_begin_loses_while_a_task_owns_the_row(db: Database) -> None:
    vid = _volume(db)
    with db.write() as s:
        states.begin(s, Volume, vid, "extend", task_id=1)
    with db.write() as s, pytest.raises(InvalidState):
        states.begin(s, Volume, vid, "delete", task_id=2)
    assert _status(db, vid) == ("extending", "available", 1)


def test_finish_of_another_task_does_nothing(db: Database) -> None:
    vid = _volume(db)
    with db.write() as s:
        states.begin(s, Volume, vid, "extend", task_id=1)
    with db.write() as s:
        assert not states.finish(s, Volume, vid, "extend", task_id=99)
    assert _status(db, vid)[0] == "extending"


def test_fail_sets_the_error_status(db: Database) -> None:
    vid = _volume(db)
    with db.write() as s:
        states.begin(s, Volume, vid, "delete", task_id=3)
    with db.write() as s:
        assert states.fail(s, Volume, vid, "delete", task_id=3)
    assert _status(db, vid) == ("error_deleting", "available", None)


def test_reset_is_refused_while_a_task_runs(db: Database) -> None:
    vid = _volume(db)
    with db.write() as s:
        states.begin(s, Volume, vid, "extend", task_id=1)
    with db.write() as s, pytest.raises(InvalidState):
        states.reset(s, Volume, vid, "error")
    with db.write() as s:
        states.finish(s, Volume, vid, "extend", task_id=1)
    with db.write() as s:
        states.reset(s, Volume, vid, "error")
    assert _status(db, vid)[0] == "error"


def test_reset_without_status_keeps_it(db: Database) -> None:
    vid = _volume(db, VolumeStatus.ERROR)
    with db.write() as s:
        states.reset(s, Volume, vid, None, values={"attach_status": "detached"})
    assert _status(db, vid)[0] == "error"


def test_missing_row_is_not_found(db: Database) -> None:
    with db.write() as s, pytest.raises(NotFound):
        states.begin(s, Volume, "nope", "extend", task_id=1)
    with db.write() as s, pytest.raises(NotFound):
        states.begin(s, Snapshot, "nope", "delete", task_id=1)


def test_where_conditions_are_part_of_the_swap(db: Database) -> None:
    vid = _volume(db)
    with db.write() as s:
        states.pin(s, Volume, vid, (VolumeStatus.AVAILABLE,), "clone")
    with db.write() as s, pytest.raises(InvalidState):
        states.begin(s, Volume, vid, "delete", task_id=1, where=(Volume.pins == 0,))
    with db.write() as s:
        states.unpin(s, Volume, vid)
        states.begin(s, Volume, vid, "delete", task_id=1, where=(Volume.pins == 0,))
    assert _status(db, vid)[0] == "deleting"


def test_pin_needs_an_allowed_status(db: Database) -> None:
    vid = _volume(db, VolumeStatus.ERROR)
    with db.write() as s, pytest.raises(InvalidState):
        states.pin(s, Volume, vid, (VolumeStatus.AVAILABLE,), "clone")


def test_every_transition_names_known_statuses() -> None:
    volume_statuses = set(states.VolumeStatus)
    for name, t in states.VOLUME_TRANSITIONS.items():
        assert set(t.allowed) <= volume_statuses, name
        assert t.busy in volume_statuses, name
        assert t.ok in volume_statuses | {None, states.PREVIOUS}, name
        assert t.error in volume_statuses | {None, states.PREVIOUS}, name
    snapshot_statuses = set(states.SnapshotStatus)
    for name, t in states.SNAPSHOT_TRANSITIONS.items():
        assert set(t.allowed) <= snapshot_statuses, name
        assert t.busy in snapshot_statuses, name


def test_attach_tables_name_known_statuses() -> None:
    attach_statuses = set(AttachStatus)
    for name, t in states.ATTACHMENT_TRANSITIONS.items():
        assert set(t.allowed) <= attach_statuses, name
        assert t.busy in attach_statuses | {states.UNCHANGED}, name
    for name, allowed in states.LEAVE_ATTACH.items():
        assert set(allowed) <= set(states.VolumeStatus), name


# ---------------------------------------------------------------------------- attachments


def _attachment(db: Database, status: str, ident: str = "a1", volume: str = "v1") -> str:
    with db.write() as s:
        s.add(Attachment(id=ident, volume_id=volume, project_id="p", attach_status=status,
                         attach_mode="null"))
    return ident


def _attach_status(db: Database, ident: str) -> tuple[str, str]:
    with db.read() as s:
        row = s.execute(select(Attachment.attach_status, Attachment.attach_mode)
                        .where(Attachment.id == ident)).one()
        return row[0], row[1]


def _race(*calls: Callable[[], object]) -> list[BaseException | None]:
    """Run `calls` at once, each in its own thread; what each raised (None: it won)."""
    start = threading.Barrier(len(calls))
    outcomes: list[BaseException | None] = [None] * len(calls)

    def run(i: int) -> None:
        start.wait()
        try:
            calls[i]()
        except BaseException as exc:  # noqa: BLE001 - the outcome is what the test reads
            outcomes[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    return outcomes


def test_attachment_steps_follow_the_table(db: Database) -> None:
    _volume(db, VolumeStatus.RESERVED)
    aid = _attachment(db, AttachStatus.RESERVED)
    with db.write() as s:  # connect keeps the status and writes its columns
        states.move_attachment(s, aid, "connect", attached_host="h1")
    assert _attach_status(db, aid) == ("reserved", "null")
    with db.write() as s:
        states.move_attachment(s, aid, "complete", attach_mode="rw")
        states.mark_attached(s, "v1")
    assert _attach_status(db, aid) == ("attached", "rw")
    assert _status(db, "v1")[0] == "in-use"
    with db.write() as s:
        states.move_attachment(s, aid, "delete")
    assert _attach_status(db, aid)[0] == "detaching"


@pytest.mark.parametrize("status, action", [
    (AttachStatus.DETACHING, "complete"),   # a delete under way is not completed
    (AttachStatus.DETACHING, "connect"),    # nor given a connector
    (AttachStatus.ERROR_ATTACHING, "connect"),
    (AttachStatus.DELETED, "delete"),
])
def test_attachment_step_outside_the_table_is_refused(db: Database, status: str,
                                                      action: str) -> None:
    _volume(db, VolumeStatus.IN_USE)
    aid = _attachment(db, status)
    with db.write() as s, pytest.raises(InvalidState) as info:
        states.move_attachment(s, aid, action, attached_host="h1")
    assert info.value.current == status
    assert info.value.allowed == states.ATTACHMENT_TRANSITIONS[action].allowed
    assert _attach_status(db, aid) == (status, "null")
    with db.write() as s, pytest.raises(NotFound):
        states.move_attachment(s, "nope", action)


def test_a_complete_racing_a_delete_never_revives_the_attachment(db: Database) -> None:
    _volume(db, VolumeStatus.RESERVED)
    aid = _attachment(db, AttachStatus.RESERVED)

    def step(action: str) -> Callable[[], None]:
        def run() -> None:
            with db.write() as s:
                states.move_attachment(s, aid, action)
        return run

    deleted, completed = _race(step("delete"), step("complete"))
    assert deleted is None  # a delete takes a reserved or an attached attachment
    # either the complete came first, or it lost to the delete that was under way
    assert completed is None or (isinstance(completed, InvalidState)
                                 and completed.current == "detaching")
    assert _attach_status(db, aid)[0] == "detaching"


def test_leaving_an_attach_state_follows_leave_attach(db: Database) -> None:
    _volume(db, VolumeStatus.AVAILABLE)
    with db.write() as s, pytest.raises(InvalidState) as info:  # legacy detach: not attached
        states.derive_attach_status(s, "v1", "detach")
    assert info.value.action == "detach"
    assert info.value.allowed == states.LEAVE_ATTACH["detach"]
    with db.write() as s:  # force-detach takes what an error left behind
        assert states.derive_attach_status(s, "v1", "force_detach") == "available"
    with db.read() as s:
        assert s.execute(select(Volume.attach_status)).scalar() == "detached"


def test_racing_unreserves_exactly_one_wins(db: Database) -> None:
    _volume(db, VolumeStatus.ATTACHING)

    def unreserve() -> None:
        with db.write() as s:
            states.derive_attach_status(s, "v1", "unreserve")

    outcomes = _race(unreserve, unreserve)
    assert sorted(type(o).__name__ for o in outcomes) == ["InvalidState", "NoneType"]
    assert _status(db, "v1")[0] == "available"


# ---------------------------------------------------------------------------- groups


def _group(db: Database, status: str = states.GroupStatus.AVAILABLE) -> str:
    with db.write() as s:
        s.add(GroupType(id="gt", name="gt", is_public=True))
        s.flush()
        s.add(Group(id="g1", project_id="p", user_id="u", status=status, group_type_id="gt",
                    availability_zone="nova", backend="b"))
    return "g1"


def _group_status(db: Database, gid: str) -> tuple[str, int | None]:
    with db.read() as s:
        row = s.execute(select(Group.status, Group.task_id).where(Group.id == gid)).one()
        return row[0], row[1]


def test_group_delete_sequence_and_guards(db: Database) -> None:
    gid = _group(db)
    with db.write() as s:  # a guard keeps the status and takes no ownership
        states.begin(s, Group, gid, "snapshot")
    assert _group_status(db, gid) == ("available", None)
    with db.write() as s:
        states.begin(s, Group, gid, "delete", task_id=3)
    assert _group_status(db, gid) == ("deleting", 3)
    with db.write() as s, pytest.raises(InvalidState):  # owned: no guard, no reset
        states.begin(s, Group, gid, "update")
    with db.write() as s, pytest.raises(InvalidState):
        states.reset(s, Group, gid, "available")
    with db.write() as s:
        assert not states.fail(s, Group, gid, "delete", task_id=4)  # not that task's
        assert states.fail(s, Group, gid, "delete", task_id=3)
    assert _group_status(db, gid) == ("error_deleting", None)
    with db.write() as s, pytest.raises(InvalidState):  # plain delete: available/error only
        states.begin(s, Group, gid, "delete", task_id=5)
    with db.write() as s:  # delete-volumes takes it whatever its status
        states.begin(s, Group, gid, "delete_with_volumes", task_id=5)
    assert _group_status(db, gid) == ("deleting", 5)


def test_group_snapshot_create_finishes_or_fails_only_for_its_task(db: Database) -> None:
    gid = _group(db)
    with db.write() as s:
        s.add(GroupSnapshot(id="gs", project_id="p", user_id="u", group_id=gid,
                            group_type_id="gt", status=states.GroupSnapshotStatus.CREATING,
                            task_id=9))
    with db.write() as s:
        assert not states.finish(s, GroupSnapshot, "gs", "create", task_id=8)
        assert states.finish(s, GroupSnapshot, "gs", "create", task_id=9)
    with db.read() as s:
        assert s.execute(select(GroupSnapshot.status)).scalar() == "available"
    with db.write() as s, pytest.raises(NotFound):
        states.begin(s, GroupSnapshot, "nope", "delete", task_id=1)
