"""`blockyard migrate`: move a volume to another backend and watch it go.

A client of the public API only (what `cinder migrate` sends, plus the waiting `cinder` does
not do): ``os-migrate_volume`` to ``host@backend#pool``, then volume show until
``migration_status`` is ``success`` or ``error``, drawing the copy's progress from the
``blockyard:migration_progress`` metadata key the service shows while it copies.

Exit status: 0 on success, 1 when the service refused or the migration failed, 2 on a bad
command line.
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from typing import TYPE_CHECKING, Any, TextIO

from blockyard.statuses import MigrationStatus

if TYPE_CHECKING:  # imported where used: `blockyard serve` should not pay for it
    import httpx

PROGRESS_KEY = "blockyard:migration_progress"
_PERCENT = re.compile(r"^(\d+)%")
BAR = 30


def add_parser(sub: Any) -> None:
    p = sub.add_parser("migrate", help="migrate a volume to another backend, with progress")
    p.add_argument("volume", help="volume id")
    p.add_argument("host", help="destination host@backend#pool (as get_pools shows it)")
    p.add_argument("--url", default="http://127.0.0.1:8776/v3",
                   help="the volume service's v3 endpoint (default %(default)s)")
    p.add_argument("--token", default="admin:admin", help="noauth token USER:PROJECT")
    p.add_argument("--lock-volume", action="store_true",
                   help="keep the volume in maintenance while it moves")
    p.add_argument("--no-wait", action="store_true", help="only start the migration")
    p.add_argument("--timeout", type=float, default=3600.0, help="seconds to wait at most")


def bar(percent: int) -> str:
    filled = BAR * max(0, min(percent, 100)) // 100
    return f"[{'#' * filled}{' ' * (BAR - filled)}] {percent:3d}%"


def run(args: argparse.Namespace, out: TextIO = sys.stderr) -> int:
    import httpx

    headers = {"X-Auth-Token": args.token, "OpenStack-API-Version": "volume 3.71"}
    with httpx.Client(base_url=args.url.rstrip("/"), headers=headers, timeout=30.0) as http:
        try:
            r = http.post(f"/volumes/{args.volume}/action", json={"os-migrate_volume": {
                "host": args.host, "lock_volume": bool(args.lock_volume)}})
        except httpx.HTTPError as exc:
            print(f"blockyard migrate: cannot reach {args.url}: {exc}", file=out)
            return 1
        if r.status_code != 202:
            print(f"blockyard migrate: {_message(r)}", file=out)
            return 1
        if args.no_wait:
            print(f"migration of {args.volume} to {args.host} started", file=out)
            return 0
        return _watch(http, args, out)


def _watch(http: httpx.Client, args: argparse.Namespace, out: TextIO) -> int:
    deadline = time.monotonic() + args.timeout
    shown = -1
    tty = out.isatty()
    while time.monotonic() < deadline:
        r = http.get(f"/volumes/{args.volume}")
        if r.status_code != 200:
            print(f"\nblockyard migrate: {_message(r)}", file=out)
            return 1
        volume = r.json()["volume"]
        status = volume.get("migration_status")
        progress = (volume.get("metadata") or {}).get(PROGRESS_KEY)
        percent = shown
        if status == MigrationStatus.SUCCESS:
            percent = 100
        elif progress and (m := _PERCENT.match(progress)):
            percent = int(m.group(1))
        if percent != shown:  # a line per change without a terminal, one line redrawn with one
            print(("\r" if tty else "") + bar(max(percent, 0)), end="" if tty else "\n",
                  file=out, flush=True)
            shown = percent
        if status == MigrationStatus.SUCCESS:
            print(f"\nmigrated {args.volume} to {volume.get('os-vol-host-attr:host')}",
                  file=out)
            return 0
        if status == MigrationStatus.ERROR:
            print(f"\nblockyard migrate: the migration of {args.volume} failed; the volume "
                  f"stays where it was", file=out)
            return 1
        time.sleep(0.2)
    print(f"\nblockyard migrate: still migrating after {args.timeout:g} s", file=out)
    return 1


def _message(r: httpx.Response) -> str:
    try:
        return str(next(iter(r.json().values()))["message"])
    except Exception:  # not Cinder's fault body
        return f"HTTP {r.status_code}: {r.text[:200]}"
