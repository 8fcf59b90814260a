"""Generic migration between backends (os-migrate_volume, os-retype on-demand), end to end.

A real `blockyard serve` with two file backends `a` and `b`. Data is written into the backing
files directly, the volume is migrated, and the destination's file must hold the same bytes
(sha256 over the full size), keep the volume's id, stay thin, and the source file must go. The
crash tests kill the server with fail points at every step of the migration task and check that
after a restart nothing is stuck, orphaned or lost.
"""

from __future__ import annotations

import hashlib
import os
import random
import threading
import time
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.consistency import (
    GiB,
    assert_consistent,
    backend_dir,
    read_db,
    volume_file,
)
from tests.support.server import Api, Server

MiB = 1024 * 1024

CONFIG = """
[backends.a]
driver = "file"
volume_backend_name = "a"

[backends.b]
driver = "file"
volume_backend_name = "b"
"""

FP_ENV = "BLOCKYARD_FAILPOINTS"


# ---------------------------------------------------------------------------- helpers


def file_sha(path: Path) -> str:
    h = hashlib.sha256()
    buf = bytearray(8 * MiB)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buf):
            h.update(view[:n])
    return h.hexdigest()


def allocated(path: Path) -> int:
    return os.stat(path).st_blocks * 512


def scatter(path: Path, data_bytes: int, seed: int, piece: int = MiB) -> None:
    """Write `data_bytes` of random data in random places of the file (unaligned pieces)."""
    rng = random.Random(seed)
    size = path.stat().st_size
    with open(path, "r+b") as f:
        for _ in range(data_bytes // piece):
            f.seek(rng.randrange(0, size - piece))
            f.write(rng.randbytes(piece))
        f.seek(size - 4096)  # the very end too
        f.write(rng.randbytes(4096))


def fill(path: Path, seed: int) -> None:
    """Write data over the whole file."""
    rng = random.Random(seed)
    block = rng.randbytes(8 * MiB)
    size = path.stat().st_size
    with open(path, "r+b") as f:
        for off in range(0, size, len(block)):
            f.write(block[: min(len(block), size - off)][::-1] if off % 3 else block)


def create(c: Api, size: int, vtype: str = "on-a", **extra: Any) -> str:
    r = c.post("/volumes", {"volume": {"size": size, "volume_type": vtype, **extra}})
    assert r.status_code == 202, r.text
    vid = str(r.json()["volume"]["id"])
    c.wait_volume(vid, "available")
    return vid


def show(c: Api, vid: str) -> dict[str, Any]:
    r = c.get(f"/volumes/{vid}")
    assert r.status_code == 200, r.text
    return dict(r.json()["volume"])


def host_of(c: Api, backend: str) -> str:
    """"host@<backend>#<backend>", from the service list's naming of a volume on `a`."""
    r = c.get("/scheduler-stats/get_pools")
    assert r.status_code == 200, r.text
    for pool in r.json()["pools"]:
        if pool["name"].endswith(f"@{backend}#{backend}"):
            return str(pool["name"])
    raise AssertionError(f"no pool of backend {backend}: {r.text}")


def migrate(c: Api, vid: str, host: str, **extra: Any) -> httpx.Response:
    return c.post(f"/volumes/{vid}/action", {"os-migrate_volume": {"host": host, **extra}})


def wait_migrated(c: Api, vid: str, timeout: float = 120.0,
                  status: str = "available") -> dict[str, Any]:
    """The volume once its migration settled: migration_status final, back to `status`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = show(c, vid)
        if v["migration_status"] in ("success", "error") and v["status"] == status:
            return v
        time.sleep(0.05)
    raise AssertionError(f"volume {vid} did not finish migrating: {show(c, vid)}")


def backing_files(state_dir: Path) -> dict[str, set[str]]:
    return {b: set(os.listdir(backend_dir(state_dir, b))) for b in ("a", "b")}


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    server = start_with_types(tmp_path_factory.mktemp("mig") / "state", CONFIG, ("a", "b"))
    with closing(server.client()) as c:
        r = c.post("/types", {"volume_type": {"name": "anywhere"}})
        assert r.status_code == 200, r.text
    yield server
    server.stop()


def start_with_types(state: Path, config: str, backends: tuple[str, ...]) -> Server:
    """A started server with a volume type `on-<name>` per backend name."""
    server = Server(state, config=config).start()
    with closing(server.client()) as c:
        for name in backends:
            r = c.post("/types", {"volume_type": {
                "name": f"on-{name}", "extra_specs": {"volume_backend_name": name}}})
            assert r.status_code == 200, r.text
    return server


@pytest.fixture
def c(srv: Server) -> Iterator[Api]:
    client = srv.client()
    yield client
    client.close()


def check_moved(srv: Server, c: Api, vid: str, sha: str, src_alloc: int,
                to: str = "b", src_backend: str = "a") -> dict[str, Any]:
    """The volume `vid` now lives on `to`, with the same bytes, thin, and the source is gone."""
    v = wait_migrated(c, vid)
    assert v["migration_status"] == "success", v
    assert v["id"] == vid
    assert v["os-vol-host-attr:host"].endswith(f"@{to}#{to}")
    name_id = v["os-vol-mig-status-attr:name_id"]
    assert name_id and name_id != vid
    dest = backend_dir(srv.state_dir, to) / f"volume-{name_id}"
    assert file_sha(dest) == sha
    assert allocated(dest) <= src_alloc + MiB, (allocated(dest), src_alloc)
    st = assert_consistent(srv.state_dir, c, log=srv.log())
    # nothing left of the temporary row, and the old object was deleted through it
    assert set(st.volumes) >= {vid}
    assert not [r for r in st.volumes.values()
                if (r["migration_status"] or "").startswith("target:")]
    assert f"volume-{name_id}" in backing_files(srv.state_dir)[to]
    return v


# ---------------------------------------------------------------------------- migrations


def test_migrate_1g_scattered(srv: Server, c: Api) -> None:
    vid = create(c, 1)
    path = volume_file(srv.state_dir, vid, "a")
    scatter(path, 64 * MiB, seed=1)
    sha, alloc = file_sha(path), allocated(path)
    r = migrate(c, vid, host_of(c, "b"))
    assert r.status_code == 202, r.text
    check_moved(srv, c, vid, sha, alloc)
    assert not path.exists()
    # the volume works on its new backend: extend, then delete removes the right file
    r = c.post(f"/volumes/{vid}/action", {"os-extend": {"new_size": 2}})
    assert r.status_code == 202, r.text
    v = c.wait_volume(vid, "available")
    dest = backend_dir(srv.state_dir, "b") / f"volume-{v['os-vol-mig-status-attr:name_id']}"
    assert dest.stat().st_size == 2 * GiB
    assert c.delete(f"/volumes/{vid}").status_code == 202
    c.wait_volume(vid, "deleted")
    assert not dest.exists()
    assert_consistent(srv.state_dir, c, log=srv.log())


def test_migrate_sparse_4g_and_back(srv: Server, c: Api) -> None:
    vid = create(c, 4)
    path = volume_file(srv.state_dir, vid, "a")
    scatter(path, 16 * MiB, seed=2, piece=256 * 1024)
    sha, alloc = file_sha(path), allocated(path)
    assert migrate(c, vid, host_of(c, "b")).status_code == 202
    v = check_moved(srv, c, vid, sha, alloc)
    first = backend_dir(srv.state_dir, "b") / f"volume-{v['os-vol-mig-status-attr:name_id']}"
    # and back again: the source is now named by name_id, the destination gets a new one
    assert migrate(c, vid, host_of(c, "a") + "", lock_volume=True).status_code == 202
    check_moved(srv, c, vid, sha, allocated(first), to="a", src_backend="b")
    assert not first.exists()
    assert c.delete(f"/volumes/{vid}").status_code == 202
    c.wait_volume(vid, "deleted")
    assert_consistent(srv.state_dir, c, log=srv.log())


def test_verify_mismatch_keeps_source(make_server: type[Server]) -> None:
    s = make_server(config=CONFIG).start(env={FP_ENV: "migrate_volume.corrupt_destination"})
    c = s.client()
    r = c.post("/volumes", {"volume": {"size": 1}})
    assert r.status_code == 202, r.text
    vid = r.json()["volume"]["id"]
    v = c.wait_volume(vid, "available")
    src_backend = v["os-vol-host-attr:host"].rsplit("#", 1)[1]
    other = "b" if src_backend == "a" else "a"
    path = volume_file(s.state_dir, vid, src_backend)
    scatter(path, 8 * MiB, seed=3)
    sha = file_sha(path)
    assert migrate(c, vid, host_of(c, other)).status_code == 202
    v = wait_migrated(c, vid)
    assert v["migration_status"] == "error", v
    assert v["status"] == "available"
    assert v["os-vol-host-attr:host"].endswith(f"@{src_backend}#{src_backend}")
    assert v["os-vol-mig-status-attr:name_id"] is None
    assert file_sha(path) == sha
    assert_consistent(s.state_dir, c, log=s.log())
    assert backing_files(s.state_dir)[other] == set()
    assert "does not verify" in s.log()
    # a failed migration does not block the next one (the corruption hook is still on)
    assert migrate(c, vid, host_of(c, other)).status_code == 202
    assert wait_migrated(c, vid)["migration_status"] == "error"
    c.close()


# ---------------------------------------------------------------------------- retype


def _usage(c: Api, project: str = "admin") -> dict[str, int]:
    r = c.get(f"/os-quota-sets/{project}", params={"usage": "True"})
    assert r.status_code == 200, r.text
    return {k: v["in_use"] for k, v in r.json()["quota_set"].items() if isinstance(v, dict)}


def test_retype(srv: Server, c: Api) -> None:
    vid = create(c, 1)
    path = volume_file(srv.state_dir, vid, "a")
    scatter(path, 8 * MiB, seed=4)
    sha, alloc = file_sha(path), allocated(path)
    before = _usage(c)
    # never: a migration would be needed → refused, nothing changes
    r = c.post(f"/volumes/{vid}/action", {"os-retype": {"new_type": "on-b",
                                                        "migration_policy": "never"}})
    assert r.status_code == 400, r.text
    assert "migration_policy is 'never'" in r.json()["badRequest"]["message"]
    v = show(c, vid)
    assert (v["volume_type"], v["status"], v["migration_status"]) == ("on-a", "available", None)
    # same type → Cinder's message
    r = c.post(f"/volumes/{vid}/action", {"os-retype": {"new_type": "on-a"}})
    assert r.status_code == 400
    assert "New volume_type same as original" in r.json()["badRequest"]["message"]
    # on-demand: migrates, then the type changes
    r = c.post(f"/volumes/{vid}/action", {"os-retype": {"new_type": "on-b",
                                                        "migration_policy": "on-demand"}})
    assert r.status_code == 202, r.text
    v = check_moved(srv, c, vid, sha, alloc)
    assert v["volume_type"] == "on-b"
    after = _usage(c)
    assert after["volumes"] == before["volumes"]
    assert after["volumes_on-a"] == before["volumes_on-a"] - 1
    assert after["volumes_on-b"] == before.get("volumes_on-b", 0) + 1
    # a type any backend serves: the type changes in place, no migration
    r = c.post(f"/volumes/{vid}/action", {"os-retype": {"new_type": "anywhere"}})
    assert r.status_code == 202, r.text
    v = show(c, vid)
    assert v["volume_type"] == "anywhere" and v["os-vol-host-attr:host"].endswith("@b#b")
    assert v["status"] == "available"
    assert c.delete(f"/volumes/{vid}").status_code == 202
    c.wait_volume(vid, "deleted")
    assert_consistent(srv.state_dir, c, log=srv.log())


# ---------------------------------------------------------------------------- refusals


def _refused(c: Api, vid: str, body: dict[str, Any], status: int, text: str) -> None:
    before = show(c, vid)
    r = c.post(f"/volumes/{vid}/action", body)
    assert r.status_code == status, r.text
    fault = next(iter(r.json().values()))
    assert fault["code"] == status
    assert text in fault["message"], fault
    after = show(c, vid)
    for key in ("status", "migration_status", "os-vol-host-attr:host",
                "os-vol-mig-status-attr:name_id", "volume_type"):
        assert after[key] == before[key], key


def test_refusals(srv: Server, c: Api) -> None:
    vid = create(c, 1)
    b = host_of(c, "b")
    a = host_of(c, "a")
    _refused(c, vid, {"os-migrate_volume": {"host": a}}, 400,
             "Invalid host: Destination host must be different than the current host.")
    _refused(c, vid, {"os-migrate_volume": {"host": "nowhere@x#x"}}, 400,
             "Invalid host: No available service named 'nowhere@x#x'")
    _refused(c, vid, {"os-migrate_volume": {"host": b.replace("#b", "#zz")}}, 400,
             "No available service named")
    _refused(c, vid, {"os-migrate_volume": {}}, 400, "'host' is a required property")
    _refused(c, vid, {"os-migrate_volume": {"host": b, "bogus": 1}}, 400, "bogus")
    _refused(c, vid, {"os-migrate_volume": {"host": b, "cluster": "c1"}}, 400,
             "cluster is not supported")
    _refused(c, vid, {"os-migrate_volume": {"host": b, "lock_volume": "maybe"}}, 400,
             "lock_volume")
    r = c.post("/volumes/00000000-0000-0000-0000-000000000000/action",
               {"os-migrate_volume": {"host": b}})
    assert r.status_code == 404, r.text
    # with a snapshot: refused, as Cinder's generic migration refuses it
    r = c.post("/snapshots", {"snapshot": {"volume_id": vid}})
    assert r.status_code == 202, r.text
    snap = r.json()["snapshot"]["id"]
    c.wait_snapshot(snap, "available")
    _refused(c, vid, {"os-migrate_volume": {"host": b}}, 400,
             f"Invalid volume: Volume {vid} must not have snapshots.")
    assert c.delete(f"/snapshots/{snap}").status_code == 202
    c.wait_snapshot(snap, "deleted")
    # attached (legacy flow: reserve + attach)
    assert c.post(f"/volumes/{vid}/action", {"os-reserve": None}).status_code == 202
    _refused(c, vid, {"os-migrate_volume": {"host": b}}, 400,
             "status must be available or in-use, but current status is: attaching")
    r = c.post(f"/volumes/{vid}/action", {"os-attach": {
        "instance_uuid": "11111111-2222-3333-4444-555555555555", "mountpoint": "/dev/vdb"}})
    assert r.status_code == 202, r.text
    c.wait_volume(vid, "in-use")
    # (moving an attached volume is compute's: tests/test_migration_attached.py)
    _refused(c, vid, {"os-migrate_volume": {"host": b}}, 400,
             "needs the compute service, but [compute] url is not configured")
    _refused(c, vid, {"os-retype": {"new_type": "on-b", "migration_policy": "on-demand"}},
             400, "needs the compute service, but [compute] url is not configured")
    assert c.post(f"/volumes/{vid}/action", {"os-detach": {}}).status_code == 202
    c.wait_volume(vid, "available")
    assert c.delete(f"/volumes/{vid}").status_code == 202
    c.wait_volume(vid, "deleted")
    assert_consistent(srv.state_dir, c, log=srv.log())


def test_migrate_volume_completion(srv: Server, c: Api) -> None:
    one, two = create(c, 1), create(c, 1)
    body = {"os-migrate_volume_completion": {"new_volume": two, "error": False}}
    # neither is migrating: Cinder's answer is the new volume's id
    r = c.post(f"/volumes/{one}/action", body)
    assert r.status_code == 200, r.text
    assert r.json() == {"save_volume_id": two}
    assert migrate(c, one, host_of(c, "b")).status_code == 202
    assert wait_migrated(c, one)["migration_status"] == "success"
    _refused(c, one, body, 400, "Invalid volume: Destination volume not mid-migration.")
    _refused(c, two, {"os-migrate_volume_completion": {"new_volume": one}}, 400,
             "Invalid volume: Source volume not mid-migration.")
    _refused(c, one, {"os-migrate_volume_completion": {}}, 400,
             "'new_volume' is a required property")
    r = c.post(f"/volumes/{one}/action", {"os-migrate_volume_completion": {
        "new_volume": "00000000-0000-0000-0000-000000000000"}})
    assert r.status_code == 404, r.text
    for v in (one, two):
        assert c.delete(f"/volumes/{v}").status_code == 202
        c.wait_volume(v, "deleted")


# ---------------------------------------------------------------------------- concurrency


def test_concurrent_use_during_migration(srv: Server, c: Api) -> None:
    vid = create(c, 1)
    path = volume_file(srv.state_dir, vid, "a")
    fill(path, seed=5)
    sha, alloc = file_sha(path), allocated(path)
    seen: dict[str, Any] = {"progress": set(), "statuses": set(), "errors": []}
    stop = threading.Event()

    def watch() -> None:
        w = srv.client()
        try:
            while not stop.is_set():
                v = show(w, vid)
                seen["statuses"].add((v["status"], v["migration_status"]))
                if "blockyard:migration_progress" in v["metadata"]:
                    seen["progress"].add(v["metadata"]["blockyard:migration_progress"])
                r = w.get("/volumes/detail")
                ids = [x["id"] for x in r.json()["volumes"]]
                if len(ids) != len(set(ids)) or any(
                        (x["migration_status"] or "").startswith("target:")
                        for x in r.json()["volumes"]):
                    seen["errors"].append("a migration target shows in the list")
        finally:
            w.close()

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        assert migrate(c, vid, host_of(c, "b")).status_code == 202
        # the running migration's own pair cannot be completed from outside
        targets = [r["id"] for r in read_db(srv.state_dir).volumes.values()
                   if r["migration_status"] == f"target:{vid}"]
        if targets:
            r = c.post(f"/volumes/{vid}/action", {"os-migrate_volume_completion": {
                "new_volume": targets[0]}})
            assert r.status_code in (400, 404), r.text
            if r.status_code == 400:
                assert "carried out by blockyard's own task" in r.text
        # other volumes on both backends keep working meanwhile
        others = []
        for i in range(4):
            others.append(create(c, 1, vtype="on-a" if i % 2 else "on-b"))
        # the migrating volume itself refuses changes while it moves
        v = show(c, vid)
        if v["migration_status"] in ("starting", "migrating", "completing"):
            r = c.post(f"/volumes/{vid}/action", {"os-extend": {"new_size": 2}})
            assert r.status_code == 400, r.text
            r = c.delete(f"/volumes/{vid}")
            assert r.status_code == 400, r.text
        for o in others:
            assert c.delete(f"/volumes/{o}").status_code == 202
        for o in others:
            c.wait_volume(o, "deleted")
        check_moved(srv, c, vid, sha, alloc)
    finally:
        stop.set()
        watcher.join()
    # the copy of 1 GiB of data takes long enough for the watcher to see it move
    assert seen["progress"], statuses_seen(seen)
    assert not seen["errors"], seen["errors"]
    statuses = seen["statuses"]
    assert ("available", "success") in statuses
    assert not {s for s, _ in statuses} - {"available"}, statuses
    assert c.delete(f"/volumes/{vid}").status_code == 202
    c.wait_volume(vid, "deleted")


def statuses_seen(seen: dict[str, Any]) -> str:
    return f"no progress seen; statuses seen: {sorted(seen['statuses'], key=str)}"


# ---------------------------------------------------------------------------- crashes

CRASH_POINTS = [
    "api.after_commit",
    "migrate_volume.before_run",
    "migrate_volume.before_copy",
    "migrate_volume.mid_copy",
    "migrate_volume.after_verify",
    "migrate_volume.after_run",
    "migrate_volume.after_settle",
    "delete_volume.before_run",
]


@pytest.mark.parametrize("point", CRASH_POINTS)
def test_crash(make_server: type[Server], point: str) -> None:
    s = make_server(config=CONFIG).start()
    c = s.client()
    r = c.post("/volumes", {"volume": {"size": 1}})
    vid = r.json()["volume"]["id"]
    v = c.wait_volume(vid, "available")
    src = v["os-vol-host-attr:host"].rsplit("#", 1)[1]
    other = "b" if src == "a" else "a"
    dest_host = host_of(c, other)
    path = volume_file(s.state_dir, vid, src)
    scatter(path, 32 * MiB, seed=6)
    sha = file_sha(path)
    c.close()
    assert s.stop() == 0
    s.start(env={FP_ENV: point})
    c = s.client()
    try:
        migrate(c, vid, dest_host)
    except httpx.TransportError:
        pass  # killed before answering
    s.wait_exit(60)
    c.close()
    s.start()
    c = s.client()
    st = assert_consistent(s.state_dir, c, timeout=60, log=s.log())
    row = st.volumes[vid]
    assert row["status"] == "available", row
    assert row["migration_status"] in ("success", "error"), row
    assert len(st.volumes) == 1, "the temporary destination row is left"
    assert file_sha(volume_file(s.state_dir, row, src)) == sha
    if row["migration_status"] == "success":
        assert row["backend"] == other
    files = backing_files(s.state_dir)
    assert sum(len(f) for f in files.values()) == 1, files
    # whichever way it went, the volume can migrate (again) now
    target = host_of(c, src if row["backend"] == other else other)
    assert migrate(c, vid, target).status_code == 202
    assert wait_migrated(c, vid)["migration_status"] == "success"
    assert_consistent(s.state_dir, c, log=s.log())
    db = read_db(s.state_dir)
    assert file_sha(volume_file(s.state_dir, db.volumes[vid], src)) == sha
    c.close()


def test_the_cli_migrates_with_a_progress_bar(srv: Server, c: Api) -> None:
    """`blockyard migrate VOLUME HOST` starts the migration and draws its progress."""
    import subprocess
    import sys

    vid = create(c, 1)
    fill(volume_file(srv.state_dir, vid, "a"), seed=7)
    cli = [sys.executable, "-m", "blockyard.cli", "migrate", "--url", srv.endpoint]
    done = subprocess.run([*cli, vid, "nohost@b#b"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 1 and "No available service named" in done.stderr, done.stderr
    host = c.get(f"/volumes/{vid}").json()["volume"]["os-vol-host-attr:host"]
    destination = host.split("@")[0] + "@b#b"
    done = subprocess.run([*cli, vid, destination], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert "[" + "#" * 30 + "] 100%" in done.stderr
    assert f"migrated {vid} to {destination}" in done.stderr
    assert c.get(f"/volumes/{vid}").json()["volume"]["migration_status"] == "success"
