"""In-process cost of one call of each lifecycle endpoint: SQL statements and CPU time.

No sockets and no concurrency: the ASGI app is called directly on one event loop, and the
durable task of each call is waited for before the next call. For every call type it prints

* the SQL statements it runs (BEGIN/COMMIT/ROLLBACK included), split into the request's own and
  the ones its background task runs, with `--sql` the statements themselves;
* the mean wall time per call over `--n` repetitions (single-threaded, so ≈ CPU time);
* with `--cprofile TYPE`, the top functions of that call type under cProfile.

    .venv/bin/python bench/profile_requests.py [--n 500] [--sql] [--cprofile show]

This is the "where does one request's time go" companion of api_lifecycle.py.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import json
import pstats
import shutil
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

from sqlalchemy import event

from blockyard import config as configuration
from blockyard.api.app import create_app_with_runtime
from blockyard.service.lifecycle import build_runtime, close_runtime

HEADERS = [
    (b"x-auth-token", b"admin:bench"),
    (b"openstack-api-version", b"volume 3.71"),
    (b"accept", b"application/json"),
    (b"content-type", b"application/json"),
    (b"host", b"127.0.0.1:8776"),
]


class Recorder:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.statements: list[tuple[str, str]] = []  # (thread kind, sql)
        self.on = False

    def __call__(self, conn: Any, cursor: Any, statement: str, *a: Any) -> None:
        if not self.on:
            return
        kind = "task" if threading.current_thread().name.startswith("task-") else "request"
        with self.lock:
            self.statements.append((kind, " ".join(statement.split())))


async def call(app: Any, method: str, path: str, body: Any = None) -> tuple[int, bytes]:
    raw = b"" if body is None else json.dumps(body).encode()
    path_, _, query = path.partition("?")
    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method,
        "scheme": "http", "path": path_, "raw_path": path_.encode(),
        "query_string": query.encode(), "root_path": "", "headers": HEADERS,
        "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 8776), "state": {},
    }
    sent = False
    status = 0
    chunks: list[bytes] = []

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": raw, "more_body": False}
        await asyncio.sleep(3600)
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]
        elif message["type"] == "http.response.body":
            chunks.append(message.get("body", b""))

    await app(scope, receive, send)
    return status, b"".join(chunks)


async def run(args: argparse.Namespace, work: Path) -> None:
    cfg = configuration.build({"quota": {"volumes": 10**9, "gigabytes": 10**9}},
                              state_dir=str(work / "state"), listen="127.0.0.1:0")
    rt = build_runtime(cfg)
    app = create_app_with_runtime(rt)
    rec = Recorder()
    event.listen(rt.db.engine, "before_cursor_execute", rec)
    idle = rt.tasks.wait_idle  # type: ignore[union-attr]

    async def lifecycle(measure: dict[str, list[float]] | None, sql: dict[str, Counter[str]]
                        | None, prof: cProfile.Profile | None) -> None:
        vid = ""

        async def step(name: str, method: str, path: str, body: Any = None,
                       expect: int = 200) -> bytes:
            nonlocal vid
            rec.statements.clear()
            rec.on = sql is not None
            use_prof = prof is not None and args.cprofile == name
            if use_prof:
                prof.enable()
            t0 = time.perf_counter()
            status, data = await call(app, method, path.format(id=vid), body)
            dt = time.perf_counter() - t0
            if use_prof:
                prof.disable()
            # the task (if any) runs outside the measured time
            t1 = time.perf_counter()
            await asyncio.to_thread(idle, 30)
            t_task = time.perf_counter() - t1
            rec.on = False
            if status != expect:
                raise RuntimeError(f"{name}: {status} {data[:300]!r}")
            if measure is not None:
                measure.setdefault(name, []).append(dt)
                if sql_counts.get(name, (0, 0))[1]:
                    measure.setdefault(f"  {name}: its task (wall)", []).append(t_task)
            if sql is not None:
                sql[name] = Counter(f"{k}: {s}" for k, s in rec.statements)
            return data

        data = await step("create", "POST", "/v3/volumes", {"volume": {"size": 1}}, 202)
        vid = json.loads(data)["volume"]["id"]
        await step("show", "GET", "/v3/volumes/{id}")
        await step("list detail (1 row)", "GET", "/v3/volumes/detail")
        await step("list summary (1 row)", "GET", "/v3/volumes")
        await step("extend", "POST", "/v3/volumes/{id}/action",
                   {"os-extend": {"new_size": 2}}, 202)
        await step("delete", "DELETE", "/v3/volumes/{id}", None, 202)
        await step("show 404", "GET", "/v3/volumes/{id}", None, 404)
        await step("versions root", "GET", "/", None, 300)

    sql: dict[str, Counter[str]] = {}
    sql_counts: dict[str, tuple[int, int]] = {}
    await lifecycle(None, sql, None)  # warm-up
    await lifecycle(None, sql, None)  # the statements of each call, in the steady state
    print("SQL statements per call (request thread | its background task):")
    for name, stmts in sql.items():
        req = sum(c for s, c in stmts.items() if s.startswith("request"))
        task = sum(c for s, c in stmts.items() if s.startswith("task"))
        sql_counts[name] = (req, task)
        print(f"  {name:<22} {req:3d} | {task:3d}")
        if args.sql:
            for s, c in stmts.items():
                print(f"        {c}x {s[:220]}")
    measure: dict[str, list[float]] = {}
    prof = cProfile.Profile() if args.cprofile else None
    for _ in range(args.n):
        await lifecycle(measure, None, prof)
    print(f"\nmean / median wall time per call, in-process, single-threaded (n={args.n}):")
    for name, vals in measure.items():
        vals.sort()
        print(f"  {name:<22} {sum(vals) / len(vals) * 1000:7.3f} ms  "
              f"{vals[len(vals) // 2] * 1000:7.3f} ms")
    if prof is not None:
        out = io.StringIO()
        stats = pstats.Stats(prof, stream=out).sort_stats("cumulative")
        stats.print_stats(args.top)
        out.write("\n---- by own time ----\n")
        stats.sort_stats("tottime").print_stats(args.top)
        print(f"\ncProfile of '{args.cprofile}' ({args.n} calls):")
        print(out.getvalue())
    close_runtime(rt)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=300)
    parser.add_argument("--sql", action="store_true", help="print every statement")
    parser.add_argument("--cprofile", metavar="CALL",
                        help="profile one call type (create, show, list detail (1 row), "
                             "extend, delete, ...)")
    parser.add_argument("--top", type=int, default=40)
    parser.add_argument("--dir", default="/var/tmp")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="blockyard-profile-", dir=args.dir))
    try:
        asyncio.run(run(args, work))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
