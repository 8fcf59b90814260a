"""Crash safety of the durable tasks: `kill -9` at every step, restart, and nothing is lost.

Every long operation (create blank / from snapshot / from a source volume, delete, delete with
cascade, extend, snapshot create and delete) is killed by a fail point at each step of its task
(before the driver work, after it, after the settling commit) and right after the API's commit.
The server is then restarted without fail points and `assert_consistent` checks that every task
finished (an accepted request always has its task row, so the outcome is the requested one),
that no file is orphaned or missing, that quota usage matches the rows, and that data written
into the backing files before survives extend, clone and snapshot.

A randomized test then kills a server running a stream of mixed operations at random moments.
"""

from __future__ import annotations

import random
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from blockyard.exec import wait_until
from tests.support.consistency import (
    DbState,
    GiB,
    assert_consistent,
    copy_state_sparse,
    pattern_problems,
    read_db,
    snapshot_file,
    tail_is_zero,
    volume_file,
    write_pattern,
)
from tests.support.server import Api, Server

FP_ENV = "BLOCKYARD_FAILPOINTS"

#: seeds of the data patterns of the template's volumes
SRC_SEED = 11
BASE_SEED = 22


# ---------------------------------------------------------------------------- the template


@dataclass(frozen=True)
class Template:
    """A stopped server's state dir holding the preconditions of every scenario.

    * ``src``: an available 1 GiB volume without snapshots, pattern SRC_SEED written into it;
    * ``base``: an available 1 GiB volume with pattern BASE_SEED and one snapshot ``snap`` of it.
    """

    state_dir: Path
    src: str
    base: str
    snap: str


def _create_volume(c: Api, body: dict[str, Any]) -> str:
    r = c.post("/volumes", {"volume": body})
    assert r.status_code == 202, r.text
    vid = r.json()["volume"]["id"]
    c.wait_volume(vid, "available")
    return str(vid)


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Template:
    root = tmp_path_factory.mktemp("crash-template")
    srv = Server(root / "state").start()
    try:
        c = srv.client()
        src = _create_volume(c, {"size": 1, "name": "src"})
        write_pattern(volume_file(srv.state_dir, src), SRC_SEED)
        base = _create_volume(c, {"size": 1, "name": "base"})
        write_pattern(volume_file(srv.state_dir, base), BASE_SEED)
        r = c.post("/snapshots", {"snapshot": {"volume_id": base, "name": "snap"}})
        assert r.status_code == 202, r.text
        snap = r.json()["snapshot"]["id"]
        c.wait_snapshot(snap, "available")
        assert_consistent(srv.state_dir, c, log=srv.log())
        c.close()
    finally:
        assert srv.stop() == 0, srv.log()
    return Template(srv.state_dir, src, base, snap)


# ---------------------------------------------------------------------------- scenarios


@dataclass(frozen=True)
class Scenario:
    kind: str
    #: issues the request; returns the response, or None when the connection dropped
    request: Callable[[Api, Template], httpx.Response | None]
    #: checks the outcome on the settled state; `accepted` is the 202 body (None: no answer)
    check: Callable[[Path, Template, DbState, dict[str, Any] | None], None]


def _send(fn: Callable[[], httpx.Response]) -> httpx.Response | None:
    try:
        return fn()
    except httpx.TransportError:
        return None  # the server died before answering


def _new_volume(tpl: Template, st: DbState, accepted: dict[str, Any] | None) -> dict[str, Any]:
    new = set(st.volumes) - {tpl.src, tpl.base}
    assert len(new) == 1, f"expected exactly one new volume, found {sorted(new)}"
    vid = new.pop()
    if accepted is not None:
        assert accepted["volume"]["id"] == vid
    return st.volumes[vid]


def _template_intact(state_dir: Path, tpl: Template, st: DbState, *, src: bool = True,
                     base: bool = True, snap: bool = True) -> None:
    problems = []
    if src:
        assert st.volumes[tpl.src]["status"] == "available"
        assert st.volumes[tpl.src]["size"] == 1
        problems += pattern_problems(volume_file(state_dir, tpl.src), SRC_SEED)
    if base:
        assert st.volumes[tpl.base]["status"] == "available"
        problems += pattern_problems(volume_file(state_dir, tpl.base), BASE_SEED)
    if snap:
        assert st.snapshots[tpl.snap]["status"] == "available"
        problems += pattern_problems(snapshot_file(state_dir, tpl.snap), BASE_SEED)
    assert not problems, problems


# create a blank volume


def _req_create_blank(c: Api, tpl: Template) -> httpx.Response | None:
    return _send(lambda: c.post("/volumes", {"volume": {"size": 2, "name": "blank"}}))


def _check_create_blank(state_dir: Path, tpl: Template, st: DbState,
                        accepted: dict[str, Any] | None) -> None:
    v = _new_volume(tpl, st, accepted)
    assert (v["status"], v["size"], v["name"]) == ("available", 2, "blank")
    assert not pattern_problems(volume_file(state_dir, v), None, at_gib=2)
    _template_intact(state_dir, tpl, st)


# create a volume from the snapshot (size taken from the snapshot)


def _req_create_from_snapshot(c: Api, tpl: Template) -> httpx.Response | None:
    return _send(lambda: c.post("/volumes", {"volume": {"snapshot_id": tpl.snap,
                                                         "name": "from-snap"}}))


def _check_create_from_snapshot(state_dir: Path, tpl: Template, st: DbState,
                                accepted: dict[str, Any] | None) -> None:
    v = _new_volume(tpl, st, accepted)
    assert (v["status"], v["size"], v["snapshot_id"]) == ("available", 1, tpl.snap)
    assert not pattern_problems(volume_file(state_dir, v), BASE_SEED)
    _template_intact(state_dir, tpl, st)


# clone the source volume into a bigger one


def _req_clone(c: Api, tpl: Template) -> httpx.Response | None:
    return _send(lambda: c.post("/volumes", {"volume": {"source_volid": tpl.src, "size": 2,
                                                         "name": "clone"}}))


def _check_clone(state_dir: Path, tpl: Template, st: DbState,
                 accepted: dict[str, Any] | None) -> None:
    v = _new_volume(tpl, st, accepted)
    assert (v["status"], v["size"], v["source_volid"]) == ("available", 2, tpl.src)
    path = volume_file(state_dir, v)
    assert not pattern_problems(path, SRC_SEED)
    assert tail_is_zero(path, 2), "the grown part of the clone is not zeros"
    _template_intact(state_dir, tpl, st)


# delete the source volume


def _req_delete_volume(c: Api, tpl: Template) -> httpx.Response | None:
    return _send(lambda: c.delete(f"/volumes/{tpl.src}"))


def _check_delete_volume(state_dir: Path, tpl: Template, st: DbState,
                         accepted: dict[str, Any] | None) -> None:
    assert tpl.src not in st.volumes, f"volume still {st.volumes[tpl.src]['status']}"
    assert not volume_file(state_dir, tpl.src).exists()
    assert set(st.volumes) == {tpl.base}
    _template_intact(state_dir, tpl, st, src=False)


# delete the base volume together with its snapshot


def _req_delete_cascade(c: Api, tpl: Template) -> httpx.Response | None:
    return _send(lambda: c.delete(f"/volumes/{tpl.base}", params={"cascade": "true"}))


def _check_delete_cascade(state_dir: Path, tpl: Template, st: DbState,
                          accepted: dict[str, Any] | None) -> None:
    assert tpl.base not in st.volumes, f"volume still {st.volumes[tpl.base]['status']}"
    assert tpl.snap not in st.snapshots, f"snapshot still {st.snapshots[tpl.snap]['status']}"
    assert not volume_file(state_dir, tpl.base).exists()
    assert not snapshot_file(state_dir, tpl.snap).exists()
    _template_intact(state_dir, tpl, st, base=False, snap=False)


# extend the source volume from 1 to 3 GiB


def _req_extend(c: Api, tpl: Template) -> httpx.Response | None:
    return _send(lambda: c.post(f"/volumes/{tpl.src}/action",
                                {"os-extend": {"new_size": 3}}))


def _check_extend(state_dir: Path, tpl: Template, st: DbState,
                  accepted: dict[str, Any] | None) -> None:
    v = st.volumes[tpl.src]
    assert (v["status"], v["size"]) == ("available", 3)
    path = volume_file(state_dir, v)
    assert path.stat().st_size == 3 * GiB
    assert not pattern_problems(path, SRC_SEED), "data written before the extend was lost"
    assert tail_is_zero(path, 3), "the grown part is not zeros"
    _template_intact(state_dir, tpl, st, src=False)


# snapshot the source volume


def _req_create_snapshot(c: Api, tpl: Template) -> httpx.Response | None:
    return _send(lambda: c.post("/snapshots", {"snapshot": {"volume_id": tpl.src,
                                                            "name": "snap2"}}))


def _check_create_snapshot(state_dir: Path, tpl: Template, st: DbState,
                           accepted: dict[str, Any] | None) -> None:
    new = set(st.snapshots) - {tpl.snap}
    assert len(new) == 1, f"expected exactly one new snapshot, found {sorted(new)}"
    sid = new.pop()
    if accepted is not None:
        assert accepted["snapshot"]["id"] == sid
    sn = st.snapshots[sid]
    assert (sn["status"], sn["size"], sn["volume_id"]) == ("available", 1, tpl.src)
    assert not pattern_problems(snapshot_file(state_dir, sid), SRC_SEED)
    _template_intact(state_dir, tpl, st)


# delete the snapshot


def _req_delete_snapshot(c: Api, tpl: Template) -> httpx.Response | None:
    return _send(lambda: c.delete(f"/snapshots/{tpl.snap}"))


def _check_delete_snapshot(state_dir: Path, tpl: Template, st: DbState,
                           accepted: dict[str, Any] | None) -> None:
    assert tpl.snap not in st.snapshots, f"snapshot still {st.snapshots[tpl.snap]['status']}"
    assert not snapshot_file(state_dir, tpl.snap).exists()
    _template_intact(state_dir, tpl, st, snap=False)


SCENARIOS = {
    "create_blank": Scenario("create_volume", _req_create_blank, _check_create_blank),
    "create_from_snapshot": Scenario("create_volume", _req_create_from_snapshot,
                                     _check_create_from_snapshot),
    "create_clone": Scenario("create_volume", _req_clone, _check_clone),
    "delete_volume": Scenario("delete_volume", _req_delete_volume, _check_delete_volume),
    "delete_volume_cascade": Scenario("delete_volume", _req_delete_cascade,
                                      _check_delete_cascade),
    "extend_volume": Scenario("extend_volume", _req_extend, _check_extend),
    "create_snapshot": Scenario("create_snapshot", _req_create_snapshot,
                                _check_create_snapshot),
    "delete_snapshot": Scenario("delete_snapshot", _req_delete_snapshot,
                                _check_delete_snapshot),
}
STEPS = ("before_run", "after_run", "after_settle")
#: the API's fail point (after the commit, before the task is submitted) is the same for every
#: kind; these scenarios cover a plain row, a pinned source and a cascade
AFTER_COMMIT = ("create_blank", "create_clone", "delete_volume_cascade")
CASES = [(name, step) for name in SCENARIOS for step in STEPS] + \
    [(name, "api.after_commit") for name in AFTER_COMMIT]


def _failpoint(kind: str, step: str) -> str:
    return step if step.startswith("api.") else f"{kind}.{step}"


@pytest.mark.parametrize(("name", "step"), CASES, ids=[f"{n}-{s}" for n, s in CASES])
def test_kill_at_failpoint(make_server: Callable[..., Server], template: Template, name: str,
                           step: str) -> None:
    scenario = SCENARIOS[name]
    fp = _failpoint(scenario.kind, step)
    srv = make_server("state")
    copy_state_sparse(template.state_dir, srv.state_dir)

    srv.start(env={FP_ENV: fp})
    c = srv.client()
    r = scenario.request(c, template)
    accepted = None
    if r is not None:
        assert r.status_code == 202, f"{r.status_code}: {r.text}"
        accepted = r.json() if r.content else {}
    try:
        rc = srv.wait_exit(timeout=20)
    except subprocess.TimeoutExpired:
        pytest.fail(f"the server did not die at {fp}:\n{srv.log()}")
    assert rc == -9, f"the server exited with {rc} instead of dying at {fp}:\n{srv.log()}"
    assert f"fail point {fp}: killing the process" in srv.log()
    c.close()

    srv.start()
    c = srv.client()
    st = assert_consistent(srv.state_dir, c, log=srv.log())
    scenario.check(srv.state_dir, template, st, accepted)
    if step == "after_run":
        # the recovered state is stable: a further restart (sweep + recovery) changes nothing
        c.close()
        srv.kill()
        srv.start()
        c = srv.client()
        st2 = assert_consistent(srv.state_dir, c, log=srv.log())
        assert {k: (v["status"], v["size"]) for k, v in st2.volumes.items()} == \
            {k: (v["status"], v["size"]) for k, v in st.volumes.items()}
        assert set(st2.snapshots) == set(st.snapshots)
    c.close()
    srv.kill()  # everything is checked; no need for a graceful stop


# ---------------------------------------------------------------------------- randomized kills


@dataclass
class Ledger:
    """What the server accepted (202) across all rounds, to check outcomes after each restart."""

    created_volumes: dict[str, str]  # id → how
    deleted_volumes: set[str]
    extended: dict[str, int]  # id → largest accepted new_size
    created_snapshots: dict[str, str]  # id → volume id
    deleted_snapshots: set[str]
    #: deletes sent, answered or not (a kill can swallow the 202 of an accepted one)
    tried_deletes: set[str]
    statuses: list[tuple[str, int, str]]  # (operation, status code, body excerpt)
    lock: threading.Lock


def _stream(srv: Server, seed: int, stop: threading.Event, started: threading.Event,
            ledger: Ledger) -> None:
    """Issue random operations until told to stop or the server dies."""
    rng = random.Random(seed)
    c = srv.client()
    try:
        while not stop.is_set():
            vols = c.get("/volumes/detail").json()["volumes"]
            snaps = c.get("/snapshots/detail").json()["snapshots"]
            avail = [v for v in vols if v["status"] == "available"] or vols
            with_snaps = {sn["volume_id"] for sn in snaps}
            deletable = [v for v in avail if v["id"] not in with_snaps] or vols
            snaps = [sn for sn in snaps if sn["status"] == "available"] or snaps
            op = rng.choices(["create", "clone", "from_snap", "snapshot", "extend", "delete",
                              "delete_snap"], weights=[2, 2, 2, 2, 2, 3, 2])[0]
            r: httpx.Response | None = None
            started.set()
            if op == "create":
                r = c.post("/volumes", {"volume": {"size": rng.randint(1, 2)}})
            elif op == "clone" and avail:
                src = rng.choice(avail)
                r = c.post("/volumes", {"volume": {"source_volid": src["id"]}})
            elif op == "from_snap" and snaps:
                sn = rng.choice(snaps)
                r = c.post("/volumes", {"volume": {"snapshot_id": sn["id"]}})
            elif op == "snapshot" and avail:
                v = rng.choice(avail)
                r = c.post("/snapshots", {"snapshot": {"volume_id": v["id"]}})
            elif op == "extend" and avail:
                v = rng.choice(avail)
                new_size = v["size"] + 1
                r = c.post(f"/volumes/{v['id']}/action", {"os-extend": {"new_size": new_size}})
            elif op == "delete" and deletable:
                v = rng.choice(deletable)
                with ledger.lock:
                    ledger.tried_deletes.add(v["id"])
                r = c.delete(f"/volumes/{v['id']}")
            elif op == "delete_snap" and snaps:
                sn = rng.choice(snaps)
                with ledger.lock:
                    ledger.tried_deletes.add(sn["id"])
                r = c.delete(f"/snapshots/{sn['id']}")
            if r is None:
                continue
            with ledger.lock:
                ledger.statuses.append((op, r.status_code, r.text[:200]))
                if r.status_code != 202:
                    continue
                if op in ("create", "clone", "from_snap"):
                    ledger.created_volumes[r.json()["volume"]["id"]] = op
                elif op == "snapshot":
                    ledger.created_snapshots[r.json()["snapshot"]["id"]] = v["id"]
                elif op == "extend":
                    ledger.extended[v["id"]] = max(ledger.extended.get(v["id"], 0), new_size)
                elif op == "delete":
                    ledger.deleted_volumes.add(v["id"])
                elif op == "delete_snap":
                    ledger.deleted_snapshots.add(sn["id"])
    except (httpx.TransportError, ValueError):
        pass  # killed under us (ValueError: a body cut off mid-way)
    finally:
        started.set()
        c.close()


def _accepted(ledger: Ledger) -> int:
    """How many operations the server accepted (202) so far."""
    with ledger.lock:
        return sum(1 for s in ledger.statuses if s[1] == 202)


def _content_of(st: DbState, known: dict[str, int | None], vid: str) -> int | None | str:
    """The data pattern a volume must hold: a seed, None (zeros) or "?" (unknown lineage)."""
    if vid in known:
        return known[vid]
    v = st.volumes.get(vid)
    if v is None:
        return "?"
    if v["source_volid"]:
        content = _content_of(st, known, v["source_volid"])
    elif v["snapshot_id"]:
        sn = st.snapshots.get(v["snapshot_id"])
        content = "?" if sn is None else known.get("snap:" + sn["id"],
                                                   _content_of(st, known, sn["volume_id"]))
    else:
        content = None
    if content != "?":
        known[vid] = content  # type: ignore[assignment]
    return content


def _check_ledger(state_dir: Path, st: DbState, ledger: Ledger,
                  known: dict[str, int | None]) -> None:
    problems = []
    for vid, how in ledger.created_volumes.items():
        if vid in ledger.deleted_volumes:
            continue
        v = st.volumes.get(vid)
        if v is None and vid not in ledger.tried_deletes:
            problems.append(f"accepted {how} {vid} vanished without an accepted delete")
        elif v is not None and v["status"] != "available":
            problems.append(f"accepted {how} {vid} ended {v['status']}")
    for vid in ledger.deleted_volumes:
        if vid in st.volumes:
            problems.append(f"volume {vid} survived an accepted delete "
                            f"({st.volumes[vid]['status']})")
    for vid, size in ledger.extended.items():
        v = st.volumes.get(vid)
        if v is not None and v["size"] < size:
            problems.append(f"volume {vid} has {v['size']} GiB after an accepted extend to "
                            f"{size}")
    for sid, vid in ledger.created_snapshots.items():
        if sid in ledger.deleted_snapshots or vid in ledger.deleted_volumes:
            continue
        sn = st.snapshots.get(sid)
        if sn is None and sid not in ledger.tried_deletes:
            problems.append(f"accepted snapshot {sid} vanished without an accepted delete")
        elif sn is not None and sn["status"] != "available":
            problems.append(f"accepted snapshot {sid} ended {sn['status']}")
    for sid in ledger.deleted_snapshots:
        if sid in st.snapshots:
            problems.append(f"snapshot {sid} survived an accepted delete")
    # data: every volume/snapshot holds what its lineage says
    for sn in st.snapshots.values():
        known.setdefault("snap:" + sn["id"], _content_of(st, known, sn["volume_id"]))  # type: ignore[arg-type]
    for vid, v in st.volumes.items():
        content = _content_of(st, known, vid)
        if content != "?" and v["status"] == "available":
            problems += pattern_problems(volume_file(state_dir, v), content)  # type: ignore[arg-type]
    for sid, sn in st.snapshots.items():
        content = known.get("snap:" + sid, "?")
        if content != "?" and sn["status"] == "available":
            problems += pattern_problems(snapshot_file(state_dir, sid), content)  # type: ignore[arg-type]
    assert not problems, "\n".join(problems)


RANDOM_QUOTA = """
[quota]
volumes = 25
snapshots = 25
"""


def test_random_kills_keep_consistency(make_server: Callable[..., Server]) -> None:
    rng = random.Random(0xB10C)
    srv = make_server("state", config=RANDOM_QUOTA).start()
    c = srv.client()
    base = _create_volume(c, {"size": 1, "name": "base"})
    write_pattern(volume_file(srv.state_dir, base), BASE_SEED)
    c.close()
    known: dict[str, int | None] = {base: BASE_SEED}
    ledger = Ledger({}, set(), {}, {}, set(), set(), [], threading.Lock())
    for round_ in range(5):
        stop, started = threading.Event(), threading.Event()
        threads = [threading.Thread(target=_stream, args=(srv, rng.randrange(1 << 30), stop,
                                                          started, ledger)) for _ in range(4)]
        for t in threads:
            t.start()
        started.wait(30)  # the streams are issuing operations: kill at a random moment
        # once this round had an operation accepted, so a loaded machine still checks work
        wait_until(lambda n=_accepted(ledger): _accepted(ledger) > n, 60,
                   what="an accepted operation in this round")
        time.sleep(rng.uniform(0.0, 0.3))
        srv.kill()
        stop.set()
        for t in threads:
            t.join(30)
        srv.start()
        c = srv.client()
        st = assert_consistent(srv.state_dir, c, log=srv.log())
        c.close()
        bad = [s for s in ledger.statuses if s[1] not in (200, 202, 400, 404, 413)]
        assert not bad, f"round {round_}: unexpected answers {bad}\n{srv.log()[-3000:]}"
        try:
            _check_ledger(srv.state_dir, st, ledger, known)
        except AssertionError as exc:
            raise AssertionError(f"round {round_}: {exc}\n--- server log ---\n"
                                 f"{srv.log()[-3000:]}") from None
    # the streams did something worth checking
    accepted = _accepted(ledger)
    assert accepted >= 5, f"only {accepted} operations were accepted: {ledger.statuses}"
    final = read_db(srv.state_dir)
    assert not final.tasks
