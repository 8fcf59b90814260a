"""Summarise a py-spy raw (collapsed-stack) profile: where the sampled time goes.

    .venv/bin/python bench/spy_summary.py PROFILE.txt [--top 30] [--thread-filter WORD]

Prints the total samples, the split by thread kind (event loop, request thread pool, task
workers), the inclusive share of a few buckets that matter for blockyard (SQL execution in
SQLite, ORM loading, selectin loads, transactions, JSON rendering, Starlette/uvicorn), and the
top functions by self and by inclusive samples.
"""

from __future__ import annotations

import argparse
import re
from collections import Counter

FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")

#: bucket → substrings of a frame "func (file:line)"; a stack counts once per bucket
BUCKETS: list[tuple[str, tuple[str, ...]]] = [
    ("sqlite3 C calls (do_execute / fetch / commit)",
     ("do_execute (", "do_executemany (", "do_commit (", "do_rollback (",
      "fetchall (sqlalchemy/engine/cursor", "fetchone (sqlalchemy/engine/cursor",
      "do_begin (")),
    ("BEGIN / BEGIN IMMEDIATE (engine 'begin' event)", ("_on_begin (blockyard",)),
    ("COMMIT", ("do_commit (",)),
    ("new pool connection / checkout", ("_ConnectionFairy._checkout", "QueuePool._do_get")),
    ("SQL compilation (compile / cache key)", ("compile (sqlalchemy", "_generate_cache_key",
                                               "_compiler (sqlalchemy", "Compiled.__init__")),
    ("ORM selectin loads", ("_SelectInLoader",)),
    ("ORM joined/eager loading / instances()", ("instances (sqlalchemy/orm/loading",)),
    ("Session.flush", ("Session.flush (",)),
    ("Session.refresh", ("Session.refresh (",)),
    ("quotas.consume", ("consume (blockyard/service/quotas",)),
    ("tasks.enqueue", ("enqueue (blockyard/service/tasks",)),
    ("rendering views.volume_detail", ("volume_detail (blockyard",)),
    ("JSONResponse.render (json.dumps)", ("JSONResponse.render",)),
    ("run_in_threadpool machinery (anyio)", ("run_sync_in_worker_thread", "to_thread.run_sync",
                                             "BlockingPortal", "_threadpool")),
    ("uvicorn/httptools protocol", ("httptools_impl",)),
    ("file backend driver", ("blockyard/backends/",)),
    ("os.fsync", ("fsync",)),
    ("logging", ("logging/__init__",)),
]


def parse(path: str, thread_filter: str | None) -> list[tuple[list[str], int]]:
    stacks = []
    with open(path) as fh:
        for line in fh:
            line = line.rstrip("\n")
            if not line:
                continue
            stack_text, _, count = line.rpartition(" ")
            frames = stack_text.split(";")
            if thread_filter and thread_filter not in stack_text:
                continue
            stacks.append((frames, int(count)))
    return stacks


def thread_kind(frames: list[str]) -> str:
    text = ";".join(frames)
    if "task-" in frames[0] or "TaskRunner._execute" in text:
        return "task workers (TaskRunner._execute)"
    if "WorkerThread.run (anyio" in text:
        return "request thread pool (anyio worker threads)"
    if "uvicorn" in text or "asyncio" in text or "uvloop" in text or "Server.run" in text:
        return "event loop thread"
    return "other"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("profile")
    parser.add_argument("--top", type=int, default=30)
    parser.add_argument("--thread-filter")
    args = parser.parse_args()
    stacks = parse(args.profile, args.thread_filter)
    total = sum(c for _, c in stacks)
    print(f"{total} samples")
    kinds: Counter[str] = Counter()
    for frames, c in stacks:
        kinds[thread_kind(frames)] += c
    print("\nby thread kind:")
    for k, c in kinds.most_common():
        print(f"  {c / total * 100:5.1f}%  {k}")
    print("\nbuckets (inclusive; a stack may fall in several):")
    for name, needles in BUCKETS:
        c = sum(cnt for frames, cnt in stacks if any(n in f for f in frames for n in needles))
        print(f"  {c / total * 100:5.1f}%  {name}")
    self_: Counter[str] = Counter()
    incl: Counter[str] = Counter()
    for frames, c in stacks:
        self_[_strip(frames[-1])] += c
        for f in {_strip(f) for f in frames}:
            incl[f] += c
    print(f"\ntop {args.top} self:")
    for f, c in self_.most_common(args.top):
        print(f"  {c / total * 100:5.1f}%  {f}")
    print(f"\ntop {args.top} inclusive (blockyard / starlette / sqlalchemy frames):")
    shown = 0
    for f, c in incl.most_common():
        if any(p in f for p in ("blockyard/", "starlette/", "sqlalchemy/", "anyio/",
                                "uvicorn/", "json/")):
            print(f"  {c / total * 100:5.1f}%  {f}")
            shown += 1
            if shown >= args.top:
                break


def _strip(frame: str) -> str:
    """Drop the line number so one function is one entry."""
    m = FRAME.match(frame)
    if m is None:
        return frame
    return f"{m.group('func')} ({m.group('file')})"


if __name__ == "__main__":
    main()
