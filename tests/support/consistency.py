"""Whole-service consistency checks for the crash and race tests.

`assert_consistent(state_dir, client)` waits until the server has settled (no task rows, no
row in a busy status) and then checks, straight against the SQLite database and the file
backend's directories, the promises of the durable tasks:

* no volume or snapshot in a transient status, no row still owned by a task or pinned;
* every ``available``/``in-use`` volume has its backing file, of exactly ``size`` GiB; every
  ``available`` snapshot has its file, of exactly ``size`` GiB;
* no ``volume-*``/``snapshot-*`` file without a row, no ``.tmp-*`` file, nothing else;
* no snapshot whose volume row is gone;
* quota usage (``volumes``, ``snapshots``, ``gigabytes`` and their per-type variants, and
  ``groups``) equals what the rows add up to;
* the API's listings agree with the database.

It also has small helpers for data patterns written straight into backing files.
"""

from __future__ import annotations

import hashlib
import os
import random
import sqlite3
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.support.server import Api

GiB = 1 << 30

TRANSIENT_VOLUME = frozenset({
    "creating", "deleting", "extending", "attaching", "detaching", "reserved", "retyping",
    "maintenance", "backing-up", "restoring-backup", "downloading", "uploading",
    "awaiting-transfer",
})
TRANSIENT_SNAPSHOT = frozenset({"creating", "deleting", "backing-up", "restoring", "unmanaging"})
#: statuses whose backing object must exist
VOLUME_HAS_FILE = frozenset({"available", "in-use"})
SNAPSHOT_HAS_FILE = frozenset({"available"})

QUOTA_RESOURCES = ("volumes", "snapshots", "gigabytes", "groups")


# ---------------------------------------------------------------------------- database view


@dataclass
class DbState:
    """The rows that matter, read in one transaction."""

    volumes: dict[str, dict[str, Any]] = field(default_factory=dict)
    snapshots: dict[str, dict[str, Any]] = field(default_factory=dict)
    tasks: list[dict[str, Any]] = field(default_factory=list)
    #: (project, resource) → in_use
    usages: dict[tuple[str, str], int] = field(default_factory=dict)
    #: volume type id → name
    types: dict[str, str] = field(default_factory=dict)
    #: project → how many generic volume groups it has
    groups: dict[str, int] = field(default_factory=dict)

    def busy(self) -> list[str]:
        """Why the service is not settled yet (empty when it is)."""
        out = [f"task {t['id']} {t['kind']} of {t['resource_id']} (attempts "
               f"{t['attempts']})" for t in self.tasks]
        out += [f"volume {v['id']} is {v['status']}" for v in self.volumes.values()
                if v["status"] in TRANSIENT_VOLUME]
        out += [f"snapshot {s['id']} is {s['status']}" for s in self.snapshots.values()
                if s["status"] in TRANSIENT_SNAPSHOT]
        return out


def db_path(state_dir: Path) -> Path:
    return Path(state_dir) / "blockyard.db"


def read_db(state_dir: Path) -> DbState:
    conn = sqlite3.connect(db_path(state_dir), timeout=30)
    conn.row_factory = sqlite3.Row
    try:
        conn.execute("BEGIN")
        st = DbState()
        for r in conn.execute("SELECT * FROM volumes"):
            st.volumes[r["id"]] = dict(r)
        for r in conn.execute("SELECT * FROM snapshots"):
            st.snapshots[r["id"]] = dict(r)
        st.tasks = [dict(r) for r in conn.execute("SELECT * FROM tasks ORDER BY id")]
        for r in conn.execute("SELECT project_id, resource, in_use FROM quota_usages"):
            st.usages[(r["project_id"], r["resource"])] = int(r["in_use"])
        for r in conn.execute("SELECT id, name FROM volume_types"):
            st.types[r["id"]] = r["name"]
        for r in conn.execute("SELECT project_id, COUNT(*) AS n FROM groups GROUP BY project_id"):
            st.groups[r["project_id"]] = int(r["n"])
        conn.execute("COMMIT")
        return st
    finally:
        conn.close()


def wait_settled(state_dir: Path, timeout: float = 20.0) -> DbState:
    """Poll the database until no task row is left and no row is in a busy status."""
    deadline = time.monotonic() + timeout
    while True:
        st = read_db(state_dir)
        busy = st.busy()
        if not busy:
            return st
        if time.monotonic() > deadline:
            raise AssertionError(f"the service did not settle within {timeout}s: "
                                 + "; ".join(busy))
        time.sleep(0.05)


# ---------------------------------------------------------------------------- files


def backend_dir(state_dir: Path, backend: str = "default") -> Path:
    return Path(state_dir) / "volumes" / backend


def volume_file(state_dir: Path, row_or_id: dict[str, Any] | str,
                backend: str = "default") -> Path:
    if isinstance(row_or_id, dict):
        name = row_or_id.get("name_id") or row_or_id["id"]
        return backend_dir(state_dir, row_or_id.get("backend") or backend) / f"volume-{name}"
    return backend_dir(state_dir, backend) / f"volume-{row_or_id}"


def snapshot_file(state_dir: Path, snapshot_id: str, backend: str = "default") -> Path:
    return backend_dir(state_dir, backend) / f"snapshot-{snapshot_id}"


# ---------------------------------------------------------------------------- data patterns

HEAD = 64 * 1024
TAIL = 4096


def pattern(seed: int) -> tuple[bytes, bytes]:
    """(head, tail) bytes of the pattern `seed`: written at offset 0 and just below 1 GiB."""
    rng = random.Random(seed)
    return rng.randbytes(HEAD), rng.randbytes(TAIL)


def write_pattern(path: Path, seed: int, at_gib: int = 1) -> None:
    """Write the pattern into a backing file (tests may do this while the volume is available).

    The head goes to offset 0, the tail to the last `TAIL` bytes of the first `at_gib` GiB.
    """
    head, tail = pattern(seed)
    fd = os.open(path, os.O_WRONLY)
    try:
        os.pwrite(fd, head, 0)
        os.pwrite(fd, tail, at_gib * GiB - TAIL)
        os.fsync(fd)
    finally:
        os.close(fd)


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def pattern_problems(path: Path, seed: int | None, at_gib: int = 1) -> list[str]:
    """What differs from the pattern `seed` (None: the file must read zeros there)."""
    if not path.exists():
        return [f"{path.name}: missing"]
    if seed is None:
        head, tail = bytes(HEAD), bytes(TAIL)
    else:
        head, tail = pattern(seed)
    with open(path, "rb") as fh:
        got_head = fh.read(HEAD)
        fh.seek(at_gib * GiB - TAIL)
        got_tail = fh.read(TAIL)
    out = []
    what = "zeros" if seed is None else f"pattern {seed}"
    if _sha(got_head) != _sha(head):
        out.append(f"{path.name}: leading {HEAD} bytes are not {what}")
    if _sha(got_tail) != _sha(tail):
        out.append(f"{path.name}: {TAIL} bytes below {at_gib} GiB are not {what}")
    return out


def tail_is_zero(path: Path, size_gb: int) -> bool:
    with open(path, "rb") as fh:
        fh.seek(size_gb * GiB - TAIL)
        return fh.read(TAIL) == bytes(TAIL)


# ---------------------------------------------------------------------------- the check


def consistency_problems(state_dir: Path, st: DbState) -> list[str]:
    """Everything wrong with a settled state (empty list: consistent)."""
    problems: list[str] = []
    volume_names: dict[str, set[str]] = defaultdict(set)
    snapshot_names: dict[str, set[str]] = defaultdict(set)

    for v in st.volumes.values():
        vid, status = v["id"], v["status"]
        if status in TRANSIENT_VOLUME:
            problems.append(f"volume {vid} is stuck in {status}")
        if v["task_id"] is not None:
            problems.append(f"volume {vid} ({status}) still names task {v['task_id']}")
        if v["pins"]:
            problems.append(f"volume {vid} ({status}) still has {v['pins']} pin(s)")
        path = volume_file(state_dir, v)
        volume_names[v["backend"]].add(path.name)
        if status in VOLUME_HAS_FILE:
            if not path.exists():
                problems.append(f"volume {vid} is {status} but {path} is missing")
            elif path.stat().st_size != v["size"] * GiB:
                problems.append(f"volume {vid} is {status} with size {v['size']} GiB but "
                                f"{path.name} has {path.stat().st_size} bytes")

    for sn in st.snapshots.values():
        sid, status = sn["id"], sn["status"]
        if status in TRANSIENT_SNAPSHOT:
            problems.append(f"snapshot {sid} is stuck in {status}")
        if sn["task_id"] is not None:
            problems.append(f"snapshot {sid} ({status}) still names task {sn['task_id']}")
        if sn["pins"]:
            problems.append(f"snapshot {sid} ({status}) still has {sn['pins']} pin(s)")
        vol = st.volumes.get(sn["volume_id"])
        if vol is None:
            problems.append(f"snapshot {sid} ({status}) belongs to volume {sn['volume_id']}, "
                            f"which has no row")
            continue
        path = snapshot_file(state_dir, sid, vol["backend"])
        snapshot_names[vol["backend"]].add(path.name)
        if status in SNAPSHOT_HAS_FILE:
            if not path.exists():
                problems.append(f"snapshot {sid} is {status} but {path} is missing")
            elif path.stat().st_size != sn["size"] * GiB:
                problems.append(f"snapshot {sid} has size {sn['size']} GiB but {path.name} "
                                f"has {path.stat().st_size} bytes")

    root = Path(state_dir) / "volumes"
    for bdir in sorted(root.iterdir()) if root.exists() else []:
        for entry in sorted(os.listdir(bdir)):
            if entry.startswith(".tmp-"):
                problems.append(f"leftover temporary file {bdir.name}/{entry}")
            elif entry.startswith("volume-"):
                if entry not in volume_names[bdir.name]:
                    problems.append(f"orphaned backing file {bdir.name}/{entry} (no volume row)")
            elif entry.startswith("snapshot-"):
                if entry not in snapshot_names[bdir.name]:
                    problems.append(f"orphaned backing file {bdir.name}/{entry} "
                                    f"(no snapshot row)")
            else:
                problems.append(f"unexpected file {bdir.name}/{entry}")

    problems += quota_problems(st)
    return problems


def expected_usage(st: DbState) -> dict[tuple[str, str], int]:
    """(project, resource) → what the rows add up to, for the counted resources."""
    want: dict[tuple[str, str], int] = defaultdict(int)
    for v in st.volumes.values():
        p, t = v["project_id"], st.types.get(v["volume_type_id"], "?")
        for res, n in (("volumes", 1), ("gigabytes", v["size"])):
            want[(p, res)] += n
            want[(p, f"{res}_{t}")] += n
    for sn in st.snapshots.values():
        p, t = sn["project_id"], st.types.get(sn["volume_type_id"], "?")
        for res, n in (("snapshots", 1), ("gigabytes", sn["size"])):
            want[(p, res)] += n
            want[(p, f"{res}_{t}")] += n
    for p, n in st.groups.items():
        want[(p, "groups")] += n
    return want


def quota_problems(st: DbState) -> list[str]:
    want = expected_usage(st)
    counted = {(p, r) for (p, r) in st.usages
               if r in QUOTA_RESOURCES or r.split("_", 1)[0] in QUOTA_RESOURCES}
    problems = []
    for key in sorted(set(want) | counted):
        have = st.usages.get(key, 0)
        if have != want.get(key, 0):
            problems.append(f"quota drift: project {key[0]} {key[1]} in_use={have}, the rows "
                            f"add up to {want.get(key, 0)}")
    return problems


def api_problems(client: Api, st: DbState) -> list[str]:
    """The API's view (all projects) must agree with the database."""
    problems = []
    r = client.get("/volumes/detail", params={"all_tenants": "1", "limit": "1000"})
    if r.status_code != 200:
        return [f"GET /volumes/detail answered {r.status_code}: {r.text[:300]}"]
    api_vols = {v["id"]: v for v in r.json()["volumes"]}
    if set(api_vols) != set(st.volumes):
        problems.append(f"API lists volumes {sorted(api_vols)}, database has "
                        f"{sorted(st.volumes)}")
    for vid, v in api_vols.items():
        row = st.volumes.get(vid)
        if row is not None and (v["status"], v["size"]) != (row["status"], row["size"]):
            problems.append(f"API shows volume {vid} {v['status']}/{v['size']}G, database "
                            f"{row['status']}/{row['size']}G")
    r = client.get("/snapshots/detail", params={"all_tenants": "1", "limit": "1000"})
    if r.status_code != 200:
        return problems + [f"GET /snapshots/detail answered {r.status_code}: {r.text[:300]}"]
    api_snaps = {s["id"]: s for s in r.json()["snapshots"]}
    if set(api_snaps) != set(st.snapshots):
        problems.append(f"API lists snapshots {sorted(api_snaps)}, database has "
                        f"{sorted(st.snapshots)}")
    return problems


def assert_consistent(state_dir: Path, client: Api | None = None, *, timeout: float = 20.0,
                      log: str | None = None) -> DbState:
    """Wait until the service has settled, then assert every invariant; returns the rows.

    `log` (the server's log) is appended to the failure message.
    """
    try:
        st = wait_settled(state_dir, timeout)
    except AssertionError as exc:
        raise AssertionError(f"{exc}{_log_suffix(log)}") from None
    problems = consistency_problems(state_dir, st)
    if client is not None:
        problems += api_problems(client, st)
    assert not problems, "inconsistent state:\n  " + "\n  ".join(problems) + _log_suffix(log)
    return st


def _log_suffix(log: str | None) -> str:
    if not log:
        return ""
    lines = log.strip().splitlines()
    return "\n--- server log (last 40 lines) ---\n" + "\n".join(lines[-40:])


# ---------------------------------------------------------------------------- state dirs


def copy_state_sparse(src: Path, dst: Path) -> None:
    """Copy a (stopped) server's state directory, keeping volume files thin."""
    from blockyard.backends.sparse import copy_sparse  # type: ignore[import-untyped]

    for root, _dirs, files in os.walk(src):
        rel = Path(root).relative_to(src)
        (dst / rel).mkdir(parents=True, exist_ok=True)
        for name in files:
            s, d = Path(root) / name, dst / rel / name
            sfd = os.open(s, os.O_RDONLY)
            try:
                dfd = os.open(d, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
                try:
                    copy_sparse(sfd, dfd, os.fstat(sfd).st_size)
                finally:
                    os.close(dfd)
            finally:
                os.close(sfd)
