"""Races: concurrent requests on the same resources admit only legal sequences, never a 500.

Every status change is a compare-and-swap and quota is taken by conditional increments, so
whatever the interleaving:

* 100 concurrent os-reset_status / os-extend / DELETE on one volume answer 202/400/404 only, the
  sizes the volume goes through are exactly the accepted extends, a delete once accepted is
  final, and the end state is consistent (file of exactly `size` GiB, quota matching the rows);
* concurrent creates never exceed a quota (volumes, gigabytes, snapshots);
* snapshot create vs volume delete, clone vs source delete: exactly one of the two wins, and
  there is never a snapshot or clone of a deleted volume;
* snapshot create / clone vs extend of the volume: whatever is accepted ends well (a snapshot
  file of exactly its row's size, a clone that is `available` with the source's data).
"""

from __future__ import annotations

import random
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from tests.support.consistency import (
    GiB,
    assert_consistent,
    consistency_problems,
    pattern_problems,
    snapshot_file,
    volume_file,
    wait_settled,
    write_pattern,
)
from tests.support.server import Api, Server

#: generous quotas for the tests that are not about quota
ROOMY = """
[quota]
volumes = 200
snapshots = 200
gigabytes = 100000
"""


@pytest.fixture
def roomy(make_server: Callable[..., Server]) -> Iterator[Server]:
    srv = make_server("state", config=ROOMY).start()
    yield srv


Call = Callable[[Api], httpx.Response]


def post(path: str, body: Any) -> Call:
    return lambda a: a.post(path, body)


def delete(path: str) -> Call:
    return lambda a: a.delete(path)


def extend_to(new_size: int) -> Callable[[str], Call]:
    return lambda vid: post(f"/volumes/{vid}/action", {"os-extend": {"new_size": new_size}})


def concurrently(srv: Server, calls: list[Call], *,
                 workers: int = 32, project: str = "admin") -> list[httpx.Response]:
    """Run `calls` on `workers` threads (one client each), released together by a barrier."""
    local = threading.local()
    clients: list[Api] = []
    lock = threading.Lock()
    barrier = threading.Barrier(min(workers, len(calls)))

    def client() -> Api:
        if not hasattr(local, "c"):
            local.c = srv.client(project=project)
            with lock:
                clients.append(local.c)
            barrier.wait(30)  # every worker has its connection ready: start at once
        return local.c  # type: ignore[no-any-return]

    def run(call: Call) -> httpx.Response:
        return call(client())

    try:
        with ThreadPoolExecutor(workers) as pool:
            return list(pool.map(run, calls))
    finally:
        for c in clients:
            c.close()


def _create_available(c: Api, srv: Server, n: int, size: int = 1,
                      seed0: int | None = None) -> list[str]:
    ids = []
    for _ in range(n):
        r = c.post("/volumes", {"volume": {"size": size}})
        assert r.status_code == 202, r.text
        ids.append(r.json()["volume"]["id"])
    for i, vid in enumerate(ids):
        c.wait_volume(vid, "available")
        if seed0 is not None:
            write_pattern(volume_file(srv.state_dir, vid), seed0 + i)
    return ids


def _no_server_errors(responses: list[httpx.Response], allowed: set[int], srv: Server) -> None:
    bad = [(r.request.method, r.request.url.path, r.status_code, r.text[:300])
           for r in responses if r.status_code not in allowed]
    assert not bad, f"unexpected answers: {bad}\n--- server log ---\n{srv.log()[-4000:]}"


# ---------------------------------------------------------------------------- one volume


@pytest.mark.parametrize("seed", [1, 2])
def test_100_concurrent_actions_on_one_volume(roomy: Server, seed: int) -> None:
    srv = roomy
    c = srv.client()
    (vid,) = _create_available(c, srv, 1, seed0=100)
    rng = random.Random(seed)

    calls: list[Call] = []
    kinds: list[tuple[str, Any]] = []
    next_size = 2
    for i in range(100):
        # deletes only in the second half, so that the first half sees real contention
        op = rng.choices(["reset", "extend", "delete"],
                         weights=[4, 5, 0 if i < 50 else 2])[0]
        if op == "reset":
            status = rng.choice(["available", "error"])
            calls.append(post(f"/volumes/{vid}/action", {"os-reset_status": {"status": status}}))
            kinds.append(("reset", status))
        elif op == "extend":
            size = next_size
            next_size += 1
            calls.append(extend_to(size)(vid))
            kinds.append(("extend", size))
        else:
            calls.append(delete(f"/volumes/{vid}"))
            kinds.append(("delete", None))

    # a watcher samples what the volume goes through meanwhile
    seen: list[tuple[str, int]] = []
    stop = threading.Event()

    def watch() -> None:
        w = srv.client()
        try:
            while not stop.is_set():
                r = w.get(f"/volumes/{vid}")
                if r.status_code == 404:
                    seen.append(("deleted", 0))
                elif r.status_code == 200:
                    v = r.json()["volume"]
                    seen.append((v["status"], v["size"]))
                else:
                    seen.append((f"HTTP {r.status_code}: {r.text[:200]}", 0))
        finally:
            w.close()

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        responses = concurrently(srv, calls, workers=32)
    finally:
        stop.set()
        watcher.join(30)

    _no_server_errors(responses, {202, 400, 404, 413}, srv)
    results = list(zip(kinds, (r.status_code for r in responses), strict=True))
    deletes = [code for (op, _), code in results if op == "delete" and code == 202]
    assert len(deletes) <= 1, f"{len(deletes)} deletes were accepted"
    extends = sorted(n for (op, n), code in results if op == "extend" and code == 202)

    st = assert_consistent(srv.state_dir, c, log=srv.log())
    if deletes:
        assert vid not in st.volumes
        assert c.get(f"/volumes/{vid}").status_code == 404
    else:
        assert all(code != 404 for _, code in results), "404 without an accepted delete"
        v = st.volumes[vid]
        assert v["status"] in ("available", "error"), v["status"]
        assert v["size"] == max([1, *extends]), (v["size"], extends)
        path = volume_file(srv.state_dir, v)
        assert path.exists(), f"{v['status']} volume lost its file"
        assert path.stat().st_size == v["size"] * GiB
        assert not pattern_problems(path, 100)

    # what the watcher saw is a legal history
    legal_sizes = {1, *extends}
    assert {s for _, s in seen if s} <= legal_sizes, (seen, extends)
    sizes = [s for _, s in seen if s]
    assert sizes == sorted(sizes), f"the size went down: {sizes}"
    statuses = [s for s, _ in seen]
    assert set(statuses) <= {"available", "error", "extending", "deleting", "deleted"}, \
        set(statuses)
    if "deleting" in statuses:
        after = statuses[statuses.index("deleting"):]
        assert set(after) <= {"deleting", "deleted"}, f"a deleting volume came back: {after}"
        assert deletes, "deleting without an accepted delete"
    c.close()


# ---------------------------------------------------------------------------- quota


@pytest.mark.parametrize(("quota", "size", "winners"), [
    ("volumes = 3", 1, 3),
    ("gigabytes = 10", 3, 3),
])
def test_concurrent_creates_never_exceed_quota(make_server: Callable[..., Server], quota: str,
                                               size: int, winners: int) -> None:
    srv = make_server("state", config=f"[quota]\n{quota}\n").start()
    c = srv.client(project="p1")
    calls = [post("/volumes", {"volume": {"size": size}}) for _ in range(20)]
    responses = concurrently(srv, calls, workers=20, project="p1")
    _no_server_errors(responses, {202, 413}, srv)
    accepted = [r.json()["volume"]["id"] for r in responses if r.status_code == 202]
    assert len(accepted) == winners, [r.status_code for r in responses]
    for vid in accepted:
        c.wait_volume(vid, "available")
    st = assert_consistent(srv.state_dir, c, log=srv.log())
    assert st.usages[("p1", "volumes")] == winners

    # releasing one makes room for exactly one more
    assert c.delete(f"/volumes/{accepted[0]}").status_code == 202
    c.wait_volume(accepted[0], "deleted")
    responses = concurrently(srv, calls[:6], workers=6, project="p1")
    _no_server_errors(responses, {202, 413}, srv)
    again = [r.json()["volume"]["id"] for r in responses if r.status_code == 202]
    assert len(again) == 1, [r.status_code for r in responses]
    c.wait_volume(again[0], "available")
    st = assert_consistent(srv.state_dir, c, log=srv.log())
    assert st.usages[("p1", "volumes")] == winners
    c.close()


def test_concurrent_snapshots_never_exceed_quota(make_server: Callable[..., Server]) -> None:
    srv = make_server("state", config="[quota]\nsnapshots = 2\n").start()
    c = srv.client(project="p1")
    (vid,) = _create_available(c, srv, 1)
    calls = [post("/snapshots", {"snapshot": {"volume_id": vid}}) for _ in range(12)]
    responses = concurrently(srv, calls, workers=12, project="p1")
    _no_server_errors(responses, {202, 413}, srv)
    accepted = [r.json()["snapshot"]["id"] for r in responses if r.status_code == 202]
    assert len(accepted) == 2, [r.status_code for r in responses]
    for sid in accepted:
        c.wait_snapshot(sid, "available")
    st = assert_consistent(srv.state_dir, c, log=srv.log())
    assert st.usages[("p1", "snapshots")] == 2
    c.close()


# ---------------------------------------------------------------------------- pairs


def _pairs(srv: Server, n: int, first: Callable[[str], Call], second: Callable[[str], Call],
           ids: list[str]) -> list[tuple[httpx.Response, httpx.Response]]:
    """For each volume id, `first(id)` and `second(id)`, all released at once."""
    calls: list[Call] = []
    for vid in ids:
        calls.append(first(vid))
        calls.append(second(vid))
    responses = concurrently(srv, calls, workers=len(calls))
    return [(responses[2 * i], responses[2 * i + 1]) for i in range(n)]


def test_snapshot_create_vs_volume_delete(roomy: Server) -> None:
    srv, n = roomy, 12
    c = srv.client()
    ids = _create_available(c, srv, n, seed0=200)
    pairs = _pairs(
        srv, n,
        lambda v: post("/snapshots", {"snapshot": {"volume_id": v}}),
        lambda v: delete(f"/volumes/{v}"),
        ids,
    )
    _no_server_errors([r for p in pairs for r in p], {202, 400, 404}, srv)
    st = assert_consistent(srv.state_dir, c, log=srv.log())
    problems = []
    for i, (vid, (snap_r, del_r)) in enumerate(zip(ids, pairs, strict=True)):
        codes = (snap_r.status_code, del_r.status_code)
        if codes == (202, 400):  # the snapshot won
            sid = snap_r.json()["snapshot"]["id"]
            if st.snapshots.get(sid, {}).get("status") != "available":
                problems.append(f"{vid}: accepted snapshot {sid} is "
                                f"{st.snapshots.get(sid, {}).get('status')}")
            elif st.volumes.get(vid, {}).get("status") != "available":
                problems.append(f"{vid}: snapshotted volume is "
                                f"{st.volumes.get(vid, {}).get('status')}")
            else:
                problems += pattern_problems(snapshot_file(srv.state_dir, sid), 200 + i)
        elif codes in ((400, 202), (404, 202)):  # the delete won
            if vid in st.volumes:
                problems.append(f"{vid}: survived its accepted delete")
            if any(s["volume_id"] == vid for s in st.snapshots.values()):
                problems.append(f"{vid}: a snapshot of the deleted volume exists")
        else:
            problems.append(f"{vid}: snapshot {codes[0]} {snap_r.text[:200]}, delete "
                            f"{codes[1]} {del_r.text[:200]}")
    assert not problems, "\n".join(problems)
    c.close()


def test_clone_vs_source_delete(roomy: Server) -> None:
    srv, n = roomy, 12
    c = srv.client()
    ids = _create_available(c, srv, n, seed0=300)
    pairs = _pairs(
        srv, n,
        lambda v: post("/volumes", {"volume": {"source_volid": v}}),
        lambda v: delete(f"/volumes/{v}"),
        ids,
    )
    _no_server_errors([r for p in pairs for r in p], {202, 400, 404}, srv)
    st = assert_consistent(srv.state_dir, c, log=srv.log())
    problems = []
    for i, (vid, (clone_r, del_r)) in enumerate(zip(ids, pairs, strict=True)):
        codes = (clone_r.status_code, del_r.status_code)
        if codes[0] == 202:
            # the clone won (the delete is refused while the source is pinned), or it had
            # already finished when the delete came: either way it is a full copy
            cid = clone_r.json()["volume"]["id"]
            clone = st.volumes.get(cid)
            if clone is None or clone["status"] != "available":
                problems.append(f"{vid}: accepted clone {cid} is "
                                f"{None if clone is None else clone['status']}")
            else:
                problems += pattern_problems(volume_file(srv.state_dir, clone), 300 + i)
            if del_r.status_code == 202 and vid in st.volumes:
                problems.append(f"{vid}: survived its accepted delete")
            if del_r.status_code == 400 and vid not in st.volumes:
                problems.append(f"{vid}: gone although its delete was refused")
        elif codes[1] == 202 and codes[0] in (400, 404):  # the delete won
            if vid in st.volumes:
                problems.append(f"{vid}: survived its accepted delete")
            if any(v["source_volid"] == vid for v in st.volumes.values()):
                problems.append(f"{vid}: a clone of the deleted volume exists")
        else:
            problems.append(f"{vid}: clone {codes[0]} {clone_r.text[:200]}, delete "
                            f"{codes[1]} {del_r.text[:200]}")
    assert not problems, "\n".join(problems)
    c.close()


WIDE = ROOMY + """
[backends.default]
driver = "file"
workers = 16
"""


def test_snapshot_create_vs_extend(make_server: Callable[..., Server]) -> None:
    """A snapshot is as big as its row says, whatever extend runs beside it.

    Snapshot create only pins its volume (the status stays `available`), so an extend can be
    accepted while the snapshot's task has not copied the volume yet. Whatever the order, the
    snapshot file must be `size` GiB and a volume created from it at that size must work.
    """
    srv = make_server("state", config=WIDE).start()
    n = 32
    c = srv.client()
    ids = _create_available(c, srv, n, seed0=400)
    problems: list[str] = []
    for round_ in range(3):
        pairs = _pairs(
            srv, n,
            lambda v: post("/snapshots", {"snapshot": {"volume_id": v}}),
            extend_to(round_ + 2),
            ids,
        )
        _no_server_errors([r for p in pairs for r in p], {202, 400}, srv)
        st = wait_settled(srv.state_dir)
        problems += consistency_problems(srv.state_dir, st)
        # a volume from each snapshot, at the snapshot's size, must work
        made = []
        for i, (snap_r, ext_r) in enumerate(pairs):
            if snap_r.status_code != 202:
                continue
            sid = snap_r.json()["snapshot"]["id"]
            problems += pattern_problems(snapshot_file(srv.state_dir, sid), 400 + i)
            r = c.post("/volumes", {"volume": {"snapshot_id": sid}})
            assert r.status_code == 202, r.text
            made.append((sid, r.json()["volume"]["id"], ext_r.status_code))
        for sid, new_id, ext_code in made:
            v = c.wait_volume(new_id, {"available", "error"})
            if v["status"] != "available":
                ext = "accepted" if ext_code == 202 else "refused"
                problems.append(f"volume from snapshot {sid} ({st.snapshots[sid]['size']} GiB, "
                                f"taken beside an extend that was {ext}) ended {v['status']}")
        if problems:
            break
    assert not problems, "\n".join(problems) + "\n--- server log ---\n" + srv.log()[-3000:]
    assert_consistent(srv.state_dir, c, log=srv.log())
    c.close()


def test_clone_vs_extend_of_source(make_server: Callable[..., Server]) -> None:
    """A clone accepted beside an extend of its source ends `available` with the source's data.

    Either the extend wins (the clone is refused: the source is `extending`, or the clone is
    made at the grown size) or the clone wins; an accepted clone never fails because its source
    grew under it.
    """
    srv = make_server("state", config=WIDE).start()
    n = 32
    c = srv.client()
    ids = _create_available(c, srv, n, seed0=500)
    problems: list[str] = []
    for round_ in range(3):
        pairs = _pairs(
            srv, n,
            lambda v: post("/volumes", {"volume": {"source_volid": v}}),
            extend_to(round_ + 2),
            ids,
        )
        _no_server_errors([r for p in pairs for r in p], {202, 400}, srv)
        st = wait_settled(srv.state_dir)
        problems += consistency_problems(srv.state_dir, st)
        for i, (vid, (clone_r, ext_r)) in enumerate(zip(ids, pairs, strict=True)):
            if clone_r.status_code != 202:
                continue
            cid = clone_r.json()["volume"]["id"]
            clone = st.volumes[cid]
            if clone["status"] != "available":
                ext = "accepted" if ext_r.status_code == 202 else "refused"
                problems.append(f"clone {cid} ({clone['size']} GiB) of {vid} (now "
                                f"{st.volumes[vid]['size']} GiB), made beside an extend that was "
                                f"{ext}, ended {clone['status']}")
            else:
                problems += pattern_problems(volume_file(srv.state_dir, clone), 500 + i)
        if problems:
            break
    assert not problems, "\n".join(problems) + "\n--- server log ---\n" + srv.log()[-3000:]
    assert_consistent(srv.state_dir, c, log=srv.log())
    c.close()
