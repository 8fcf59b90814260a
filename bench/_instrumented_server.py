"""`blockyard serve` with timers around the places where a request can wait (bench only).

    python bench/_instrumented_server.py serve --state-dir DIR --listen HOST:PORT [...]

Same command line as `blockyard serve`. Nothing in blockyard is edited: before the app is built
this module wraps, from the outside,

* the SQLite ``BEGIN`` / ``BEGIN IMMEDIATE`` (the latter waits for the one write lock, in
  SQLite's busy handler, which sleeps 1, 2, 5, 10, 15, 20, 25, ... ms between tries),
* COMMIT / ROLLBACK, and how long each write transaction held the write lock, by the service
  function that opened it,
* `run_in_threadpool` of the API modules: delay until the worker thread starts, time in the
  thread, and the delay until the event loop picks the result up again,
* the durable tasks: submit → start, and the driver calls (file create/extend/delete with fsync),
* every HTTP request, by route,
* every garbage-collector pause, by generation.

On exit it writes all durations to the JSON file named by ``BLOCKYARD_BENCH_STATS``.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

_lock = threading.Lock()
#: set by the gcfreeze experiment
FREEZE: list[bool] = []
#: set by the pool experiment
POOL: list[int] = []
STATS: dict[str, list[float]] = defaultdict(list)
perf = time.perf_counter


def record(name: str, seconds: float) -> None:
    with _lock:
        STATS[name].append(seconds)


def _caller() -> str:
    """The innermost blockyard service/api function on the stack (who opened the txn)."""
    f = sys._getframe(2)
    while f is not None:
        fn = f.f_code.co_filename
        if ("blockyard/service" in fn or "blockyard/api" in fn) and \
                f.f_code.co_name not in ("read", "write"):
            return f"{Path(fn).stem}.{f.f_code.co_name}"
        f = f.f_back
    return "?"


def patch_engine() -> None:
    from sqlalchemy import Engine, event

    import blockyard.db.engine as eng

    def _sqlite_setup(engine: Engine) -> None:
        @event.listens_for(engine, "connect")
        def _on_connect(dbapi_conn: Any, _record: Any) -> None:
            dbapi_conn.isolation_level = None
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.close()

        open_txns: dict[int, tuple[float, str, bool]] = {}

        @event.listens_for(engine, "begin")
        def _on_begin(conn: Any) -> None:
            immediate = conn.get_execution_options().get("immediate", False)
            who = _caller()
            t0 = perf()
            conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")
            t1 = perf()
            record("db: BEGIN IMMEDIATE wait (write lock)" if immediate else "db: BEGIN (read)",
                   t1 - t0)
            if immediate:
                record(f"db: write-lock wait in {who}", t1 - t0)
            open_txns[id(conn.connection)] = (t1, who, immediate)

        dialect = engine.dialect
        do_commit, do_rollback = dialect.do_commit, dialect.do_rollback

        def _end(kind: str, fn: Any, dbapi_conn: Any) -> None:
            t0 = perf()
            fn(dbapi_conn)
            t1 = perf()
            opened = open_txns.pop(id(dbapi_conn), None)
            if opened is None:
                return
            began, who, immediate = opened
            if immediate:
                record(f"db: {kind} (write)", t1 - t0)
                record("db: write lock held (BEGIN IMMEDIATE → end)", t1 - began)
                record(f"db: write lock held by {who}", t1 - began)
            else:
                record(f"db: read txn open in {who}", t1 - began)

        dialect.do_commit = lambda c: _end("COMMIT", do_commit, c)  # type: ignore[method-assign]
        dialect.do_rollback = lambda c: _end("ROLLBACK", do_rollback, c)  # type: ignore

    eng._sqlite_setup = _sqlite_setup  # type: ignore[assignment]


def patch_threadpool() -> None:
    from starlette.concurrency import run_in_threadpool

    import blockyard.api.snapshots as asn
    import blockyard.api.volumes as av

    async def timed(fn: Any, *args: Any, **kwargs: Any) -> Any:
        name = getattr(fn, "__name__", "?")
        t0 = perf()
        marks: dict[str, float] = {}

        def inner() -> Any:
            marks["start"] = perf()
            try:
                return fn(*args, **kwargs)
            finally:
                marks["end"] = perf()

        try:
            return await run_in_threadpool(inner)
        finally:
            t3 = perf()
            if "start" in marks:
                record("threadpool: submit → thread starts", marks["start"] - t0)
                record(f"threadpool: in thread {name}", marks["end"] - marks["start"])
                record("threadpool: thread done → loop resumes", t3 - marks["end"])

    for mod in (av, asn):
        if hasattr(mod, "run_in_threadpool"):
            mod.run_in_threadpool = timed  # type: ignore[attr-defined]


def patch_tasks() -> None:
    from blockyard.backends.file import FileDriver
    from blockyard.service import tasks

    submitted: dict[int, float] = {}
    submit, execute_once = tasks.TaskRunner.submit, tasks.TaskRunner._execute_once

    def _submit(self: Any, task_id: int, backend: str) -> None:
        submitted[task_id] = perf()
        submit(self, task_id, backend)

    def _execute_once(self: Any, task_id: int) -> None:
        t0 = perf()
        if task_id in submitted:
            record("task: submit → worker starts", t0 - submitted.pop(task_id))
        try:
            execute_once(self, task_id)
        finally:
            record("task: whole task (claim, run, settle)", perf() - t0)

    tasks.TaskRunner.submit = _submit  # type: ignore[method-assign]
    tasks.TaskRunner._execute_once = _execute_once  # type: ignore[method-assign]

    for meth in ("create_volume", "extend_volume", "delete_volume"):
        orig = getattr(FileDriver, meth)

        def wrapped(self: Any, *a: Any, _orig: Any = orig, _m: str = meth, **kw: Any) -> Any:
            t0 = perf()
            try:
                return _orig(self, *a, **kw)
            finally:
                record(f"driver: FileDriver.{_m}", perf() - t0)

        setattr(FileDriver, meth, wrapped)


def patch_app() -> None:
    import blockyard.api.app as app_mod

    create_app = app_mod.create_app

    def _create_app(config: Any) -> Any:
        app = create_app(config)

        async def timed_app(scope: Any, receive: Any, send: Any) -> None:
            if scope["type"] != "http":
                await app(scope, receive, send)
                return
            if POOL:
                import anyio.to_thread

                anyio.to_thread.current_default_thread_limiter().total_tokens = POOL.pop()
            if FREEZE and FREEZE[0]:
                import gc

                FREEZE[0] = False
                gc.collect()
                gc.freeze()
            t0 = perf()
            try:
                await app(scope, receive, send)
            finally:
                path = scope["path"]
                parts = path.strip("/").split("/")
                if len(parts) >= 3 and parts[2] not in ("detail", "summary"):
                    parts[2] = "{id}"
                record(f"http: {scope['method']} /{'/'.join(parts)}", perf() - t0)

        timed_app.state = app.state  # type: ignore[attr-defined]
        return timed_app

    app_mod.create_app = _create_app  # type: ignore[assignment]


def patch_gc() -> None:
    """Record every garbage-collector pause, by generation."""
    import gc

    started: dict[str, float] = {}

    def callback(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            started["t"] = perf()
        elif "t" in started:
            record(f"gc: generation {info['generation']} pause", perf() - started.pop("t"))

    gc.callbacks.append(callback)


def apply_experiments(spec: str) -> None:
    """What-if switches, applied from outside the server code, to size a suggested change:

    writelock      one process-wide mutex around every write transaction (taken before
                   BEGIN IMMEDIATE), so writers queue on a lock that wakes them at once instead
                   of sleeping in SQLite's busy handler
    lazytypes      VolumeType.extra_specs/projects loaded on access instead of selectin, so
                   loading a volume no longer runs two extra SELECTs for its type
    switch=SECONDS sys.setswitchinterval (GIL hand-over; default 0.005)
    gcfreeze       gc.collect(); gc.freeze() once the app is up (first request), so the
                   start-up heap (SQLAlchemy, Alembic, the app) leaves the generation-2 scans
    pool=N         at most N request threads (anyio's default limiter; default 40)
    """
    for item in filter(None, spec.split(",")):
        name, _, value = item.partition("=")
        if name == "writelock":
            import contextlib

            import blockyard.db.engine as eng

            mutex = threading.Lock()
            write = eng.Database.write

            @contextlib.contextmanager
            def locked_write(self: Any, _mutex: Any = mutex, _write: Any = write) -> Any:
                t0 = perf()
                with _mutex:
                    record("experiment: writelock mutex wait", perf() - t0)
                    with _write(self) as s:
                        yield s

            eng.Database.write = locked_write  # type: ignore[method-assign]
        elif name == "lazytypes":
            from blockyard.db.models import VolumeType

            # before the mappers are configured (first query), so the strategy follows
            for key in ("extra_specs", "projects"):
                prop = VolumeType.__mapper__._props[key]
                prop.lazy = "select"  # type: ignore[attr-defined]
                prop.strategy_key = (("lazy", "select"),)  # type: ignore[attr-defined]
        elif name == "gcfreeze":
            FREEZE.append(True)
        elif name == "pool":
            POOL.append(int(value))
        elif name == "switch":
            sys.setswitchinterval(float(value))
        else:
            raise SystemExit(f"unknown experiment {name!r}")


def main() -> int:
    apply_experiments(os.environ.get("BLOCKYARD_BENCH_EXPERIMENTS", ""))
    patch_engine()
    patch_gc()
    patch_threadpool()
    patch_tasks()
    patch_app()
    from blockyard import cli

    try:
        return cli.main(sys.argv[1:])
    finally:
        out = os.environ.get("BLOCKYARD_BENCH_STATS")
        if out:
            with _lock:
                Path(out).write_text(json.dumps(STATS))


if __name__ == "__main__":
    sys.exit(main())
