"""Paged volume listing against 100,000 volumes.

1. A fresh state directory; the server is started once (migrations, default volume type) and
   stopped.
2. 100,000 volume rows are bulk-inserted with the server's own SQLAlchemy tables (executemany in
   batches): `available`, type __DEFAULT__, backend "default"; 10,000 in the admin's own
   project ``admin`` (the token ``admin:admin`` lists those without all_tenants) and 9,000 in
   each of ten more projects, interleaved in time, with quota usages to match.
3. The server is started again and every scenario — ``GET /v3/volumes/detail?limit=100``
   alone, with a marker deep in the list, sorted by name, with all_tenants=1, with
   with_count=true, and combinations — is requested `--requests` times, sequentially on one
   keep-alive connection; p50/p95/max are printed. Target: p50 < 20 ms.

With `--instrument` the server runs under bench/_instrumented_server.py and its timers (GC
pauses, thread-pool hops, per-route times) are printed. With `--explain` the same listings are
also run in-process through the service layer (blockyard.service.volumes.list_volumes) to split
database+ORM time from the HTTP request, and SQLite's EXPLAIN QUERY PLAN of each statement is
printed.

    .venv/bin/python bench/list_large.py [--volumes 100000] [--requests 200] [--explain]
                                         [--instrument] [--dir /var/tmp] [--keep]
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import sys
import tempfile
import time
import uuid
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import (  # noqa: E402
    Client,
    blockyard_server,
    cpu_seconds,
    machine_busy_seconds,
    percentile,
    print_instrumented,
    proc_status,
)
from sqlalchemy import insert, select, text  # noqa: E402

from blockyard.db.engine import Database  # noqa: E402
from blockyard.db.models import QuotaUsage, Volume, VolumeType  # noqa: E402

TARGET_P50_MS = 20.0
ADMIN_PROJECT = "admin"
OTHER_PROJECTS = [f"project-{i:02d}" for i in range(10)]
BATCH = 10_000
#: a listing of one project could otherwise hit the default quota in later manual tests
CONFIG = """
[quota]
volumes = 10000000
gigabytes = 1000000000
"""


# ---------------------------------------------------------------------------- data


def populate(state_dir: Path, total: int, admin_share: int, seed: int) -> dict[str, Any]:
    """Bulk-insert `total` volumes; returns timings and the markers the scenarios need."""
    rng = random.Random(seed)
    db = Database(f"sqlite:///{state_dir / 'blockyard.db'}")
    with db.read() as s:
        type_id = s.execute(select(VolumeType.id).where(VolumeType.name == "__DEFAULT__")
                            ).scalar_one()
    others = total - admin_share
    projects = [ADMIN_PROJECT] * admin_share + [OTHER_PROJECTS[i % len(OTHER_PROJECTS)]
                                                for i in range(others)]
    rng.shuffle(projects)
    base = datetime(2024, 1, 1)
    t0 = time.perf_counter()
    table = Volume.__table__
    usage: dict[tuple[str, str], int] = {}
    with db.engine.begin() as conn:
        for start in range(0, total, BATCH):
            rows = []
            for i in range(start, min(start + BATCH, total)):
                project = projects[i]
                size = rng.randint(1, 100)
                # every 50th volume has no name (sorting by name must cope with NULLs); a few
                # timestamps repeat (ties are broken by id)
                created = base + timedelta(seconds=i - (i % 7 == 0))
                rows.append({
                    "id": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
                    "project_id": project,
                    "user_id": "admin" if project == ADMIN_PROJECT else f"user-{project}",
                    "name": None if i % 50 == 0 else f"vol-{rng.getrandbits(40):010x}",
                    "description": None,
                    "size": size,
                    "status": "available",
                    "previous_status": None,
                    "attach_status": "detached",
                    "availability_zone": "nova",
                    "volume_type_id": type_id,
                    "backend": "default",
                    "snapshot_id": None,
                    "source_volid": None,
                    "bootable": False,
                    "readonly": False,
                    "multiattach": False,
                    "provider_location": None,
                    "provider_auth": None,
                    "name_id": None,
                    "migration_status": None,
                    "task_id": None,
                    "pins": 0,
                    "created_at": created,
                    "updated_at": created if i % 3 == 0 else None,
                })
                for res, amount in (("volumes", 1), ("gigabytes", size),
                                    ("volumes___DEFAULT__", 1), ("gigabytes___DEFAULT__", size)):
                    usage[(project, res)] = usage.get((project, res), 0) + amount
            conn.execute(insert(table), rows)
        conn.execute(insert(QuotaUsage.__table__), [
            {"project_id": p, "resource": r, "in_use": n} for (p, r), n in usage.items()])
    t_insert = time.perf_counter() - t0
    t0 = time.perf_counter()
    with db.engine.connect() as conn:
        conn.exec_driver_sql("ANALYZE")
        conn.commit()
    t_analyze = time.perf_counter() - t0

    def one(sql: str, **params: Any) -> str:
        with db.engine.connect() as conn:
            return str(conn.execute(text(sql), params).scalar_one())

    markers = {
        "admin_deep": one("SELECT id FROM volumes WHERE project_id = :p "
                          "ORDER BY created_at DESC, id DESC LIMIT 1 OFFSET :n",
                          p=ADMIN_PROJECT, n=admin_share // 2),
        "admin_name_deep": one("SELECT id FROM volumes WHERE project_id = :p "
                               "ORDER BY coalesce(name, '') ASC, id ASC LIMIT 1 OFFSET :n",
                               p=ADMIN_PROJECT, n=admin_share // 2),
        "all_deep": one("SELECT id FROM volumes ORDER BY created_at DESC, id DESC "
                        "LIMIT 1 OFFSET :n", n=total * 9 // 10),
    }
    db.dispose()
    return {"insert_s": t_insert, "analyze_s": t_analyze, "markers": markers,
            "type_id": type_id}


# ---------------------------------------------------------------------------- scenarios


def scenarios(m: dict[str, str], total: int, admin_share: int) -> list[tuple[str, str, int]]:
    """(label, query string, expected count or -1)."""
    return [
        ("limit=100 (own project, 10k)", "limit=100", -1),
        ("+ marker deep (5,000 in)", f"limit=100&marker={m['admin_deep']}", -1),
        ("+ sort=name:asc", "limit=100&sort=name:asc", -1),
        ("+ sort=name:asc + marker deep", f"limit=100&sort=name:asc&marker="
                                          f"{m['admin_name_deep']}", -1),
        ("+ with_count=true", "limit=100&with_count=true", admin_share),
        ("all_tenants=1 (100k)", "limit=100&all_tenants=1", -1),
        ("all_tenants=1 + marker deep (90,000 in)", f"limit=100&all_tenants=1&marker="
                                                    f"{m['all_deep']}", -1),
        ("all_tenants=1 + sort=name:asc", "limit=100&all_tenants=1&sort=name:asc", -1),
        ("all_tenants=1 + with_count=true", "limit=100&all_tenants=1&with_count=true", total),
        ("all_tenants=1 + project_id filter", "limit=100&all_tenants=1&project_id=project-03",
         -1),
        ("summary list /volumes?limit=100", "limit=100", -1),
    ]


def run_http(port: int, cases: list[tuple[str, str, int]], n: int) -> list[dict[str, Any]]:
    client = Client(port, "admin:admin", version="3.71")
    results = []
    for label, query, expected_count in cases:
        path = ("/v3/volumes?" if label.startswith("summary") else "/v3/volumes/detail?") + query
        status, body, _, size = client.call("GET", path)
        if status != 200:
            raise SystemExit(f"{path}: {status} {body}")
        if len(body["volumes"]) != 100 or "volumes_links" not in body:
            raise SystemExit(f"{path}: {len(body['volumes'])} volumes, links: "
                             f"{'volumes_links' in body}")
        if expected_count >= 0 and body.get("count") != expected_count:
            raise SystemExit(f"{path}: count {body.get('count')}, expected {expected_count}")
        for _ in range(5):
            client.call("GET", path)
        times = []
        for _ in range(n):
            status, _, dt, _ = client.call("GET", path)
            assert status == 200
            times.append(dt)
        results.append({"label": label, "path": path, "times": times, "bytes": size})
    client.close()
    return results


# ---------------------------------------------------------------------------- in-process


def explain(state_dir: Path, cases: list[tuple[str, str, int]], n: int) -> None:
    """Run each listing through the service layer in-process; print its time and plans."""
    from sqlalchemy import event
    from starlette.datastructures import QueryParams

    from blockyard import config as configuration
    from blockyard.service import volumes as vsvc
    from blockyard.service.identity import Identity
    from blockyard.service.listing import MAX_LIMIT, ListParams
    from blockyard.service.runtime import Runtime

    cfg = configuration.build({}, state_dir=str(state_dir), listen="127.0.0.1:0")
    db = Database(cfg.database_url)
    rt = Runtime(config=cfg, db=db, backends={})
    who = Identity("admin", ADMIN_PROJECT)
    captured: list[tuple[str, Any]] = []

    def grab(conn: Any, cursor: Any, statement: str, parameters: Any, *a: Any) -> None:
        captured.append((statement, parameters))

    print("\nin-process service call (blockyard.service.volumes.list_volumes: query + ORM "
          "load, no HTTP, no rendering)")
    for label, query, _ in cases:
        q = QueryParams(query)
        limit = int(q.get("limit", "0"))
        sort = tuple((k, (d or "desc")) for k, _, d in
                     (p.partition(":") for p in q["sort"].split(","))) if "sort" in q else ()
        filters = {k: v for k, v in q.items() if k not in
                   ("limit", "marker", "sort", "with_count", "all_tenants")}
        params = ListParams(limit=min(limit, MAX_LIMIT), marker=q.get("marker"), sort=sort,
                            with_count=q.get("with_count") == "true", filters=filters)
        all_projects = q.get("all_tenants") == "1"

        def call(params: ListParams = params, all_projects: bool = all_projects) -> Any:
            return vsvc.list_volumes(rt, who, params, all_projects=all_projects,
                                     like_allowed=True)

        call()
        times = []
        for _ in range(n):
            t0 = time.perf_counter()
            call()
            times.append(time.perf_counter() - t0)
        captured.clear()
        event.listen(db.engine, "before_cursor_execute", grab)
        call()
        event.remove(db.engine, "before_cursor_execute", grab)
        print(f"\n  {label}: p50 {percentile(times, 50) * 1e3:.2f} ms, "
              f"p95 {percentile(times, 95) * 1e3:.2f} ms, {len(captured)} statements")
        raw = db.engine.raw_connection()
        try:
            for statement, parameters in captured:
                if statement.lstrip().upper().startswith("BEGIN"):
                    continue
                t0 = time.perf_counter()
                cur = raw.cursor()
                cur.execute(statement, parameters)
                cur.fetchall()
                alone = time.perf_counter() - t0
                cur.execute("EXPLAIN QUERY PLAN " + statement, parameters)
                plan = "; ".join(r[3] for r in cur.fetchall())
                short = " ".join(statement.split())
                print(f"    [{alone * 1e3:6.2f} ms raw sqlite3] {short[:150]}"
                      f"{'...' if len(short) > 150 else ''}")
                print(f"        plan: {plan}")
        finally:
            raw.close()
    db.dispose()


# ---------------------------------------------------------------------------- main


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--volumes", type=int, default=100_000)
    parser.add_argument("--admin-share", type=int, default=10_000,
                        help="how many of them are in the admin's own project")
    parser.add_argument("--requests", type=int, default=200, help="per scenario")
    parser.add_argument("--explain", action="store_true",
                        help="also time each listing in-process and print the query plans")
    parser.add_argument("--instrument", action="store_true",
                        help="run the server under bench/_instrumented_server.py and print "
                             "its timers (thread-pool hops, GC pauses, per-route times)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--dir", default="/var/tmp")
    parser.add_argument("--keep", action="store_true", help="keep the state directory")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="blockyard-list-", dir=args.dir))
    state = work / "state"
    try:
        t0 = time.perf_counter()
        blockyard_server(state, config=CONFIG).start().stop()
        print(f"fresh state in {state}: first start (migrations, default type) "
              f"{time.perf_counter() - t0:.2f} s")
        info = populate(state, args.volumes, args.admin_share, args.seed)
        print(f"bulk insert of {args.volumes:,} volumes ({args.admin_share:,} in project "
              f"'{ADMIN_PROJECT}', the rest over {len(OTHER_PROJECTS)} projects): "
              f"{info['insert_s']:.2f} s ({args.volumes / info['insert_s']:,.0f} rows/s, "
              f"batches of {BATCH:,}); ANALYZE {info['analyze_s']:.2f} s")
        t0 = time.perf_counter()
        stats_file = work / "timers.json" if args.instrument else None
        srv = blockyard_server(state, config=CONFIG, instrument=stats_file).start()
        print(f"server start on the full database: {time.perf_counter() - t0:.2f} s "
              f"(pid {srv.pid})")
        cases = scenarios(info["markers"], args.volumes, args.admin_share)
        try:
            t0, busy0, own0 = time.perf_counter(), machine_busy_seconds(), sum(os.times()[:2])
            srv0 = cpu_seconds(srv.pid)
            results = run_http(srv.port, cases, args.requests)
            elapsed = time.perf_counter() - t0
            others = (machine_busy_seconds() - busy0 - (sum(os.times()[:2]) - own0)
                      - (cpu_seconds(srv.pid) - srv0))
            hwm = proc_status(srv.pid, "VmHWM")
        finally:
            srv.stop()
        print(f"\nGET /v3/volumes/detail as admin:admin, one keep-alive connection, "
              f"{args.requests} sequential requests per row (after 5 warm-up), microversion "
              f"3.71\n")
        print(f"  {'scenario':<42}{'p50 ms':>9}{'p95 ms':>9}{'max ms':>9}{'KiB':>8}  target")
        ok = True
        for r in results:
            p50 = percentile(r["times"], 50) * 1e3
            passed = p50 < TARGET_P50_MS
            ok = ok and passed
            print(f"  {r['label']:<42}{p50:9.2f}{percentile(r['times'], 95) * 1e3:9.2f}"
                  f"{max(r['times']) * 1e3:9.2f}{r['bytes'] / 1024:8.1f}  "
                  f"{'PASS' if passed else 'MISS'} (< {TARGET_P50_MS:g})")
        print(f"\n  server peak RSS (VmHWM): {hwm / 1024:.1f} MiB; other processes on the "
              f"machine used {max(0.0, others) / elapsed * 100:.0f}% of one core meanwhile")
        if stats_file is not None and stats_file.exists():
            print_instrumented(stats_file, "server-side timers (bench/_instrumented_server.py)")
        if args.explain:
            explain(state, cases, max(20, args.requests // 4))
    finally:
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
