"""Durable tasks: long work that survives `kill -9`.

A task row is inserted in the same transaction that moves its resource into a busy status
(and stamps the row with the task's id). A worker thread of the resource's backend then

1. runs the handler's `run` — the driver work, which is idempotent by contract;
2. in one transaction, calls the handler's `settle` (success or failure status, quota, rows to
   remove), records a user message when the task failed (`blockyard.service.messages`) and
   deletes the task row;
3. runs the follow-up `settle` may return (telling another service, e.g. compute, what
   happened) once that transaction has committed. Follow-ups are best effort: they run at
   most once, a failure is logged and changes nothing, and a crash before one runs loses it.

A crash anywhere before step 2 commits leaves the task row in place, and `recover()` at the next
start runs it again from step 1. A crash after it leaves nothing to do. So a resource is never
stuck in a busy status, and the backend never keeps an object the database does not know or
misses one the database promises.

Fail points (`blockyard.failpoints`) sit between the steps above: ``KIND.before_run``,
``KIND.after_run`` and ``KIND.after_settle`` (and ``api.after_commit`` after the submitting
transaction); the crash tests kill the server exactly there.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from sqlalchemy import delete, insert, select, update
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from blockyard import failpoints
from blockyard.db.models import Base, Task, utcnow
from blockyard.service import messages
from blockyard.service.request_context import current_request_id
from blockyard.service.runtime import Runtime

log = logging.getLogger(__name__)

#: a task that was started this many times without settling is failed instead of re-run
MAX_ATTEMPTS = 3
#: how often a transient database error while settling is retried before giving up until restart
SETTLE_TRIES = 5

@dataclass(frozen=True)
class TaskView:
    """A task row detached from its session."""

    id: int
    kind: str
    backend: str
    resource_id: str
    payload: dict[str, Any]
    attempts: int


#: what `settle` may hand back: work for after its transaction commits (step 3 above)
FollowUp = Callable[[], None]


@dataclass(frozen=True)
class Handler:
    """How to carry out one kind of task.

    `run` does the backend work and returns a result for `settle` (or raises); `settle`
    writes the outcome in the transaction that also deletes the task row; `error` is None on
    success. `settle` may return a `FollowUp`, called on the worker thread after that
    transaction commits, outside any transaction (it reads what it needs in `settle`).
    """

    run: Callable[[Runtime, TaskView], Any]
    settle: Callable[[Session, Runtime, TaskView, Any, BaseException | None], FollowUp | None]


HANDLERS: dict[str, Handler] = {}


def register(kind: str, handler: Handler) -> None:
    HANDLERS[kind] = handler


#: prebuilt, so that queueing a task builds no statement (values come as parameters)
_INSERT_TASK = insert(Base.metadata.tables["tasks"])


def enqueue(session: Session, kind: str, backend: str, resource_id: str,
            payload: dict[str, Any] | None = None) -> TaskView:
    """Insert a task row in the caller's transaction; submit it after that commits.

    The row counts as started once (attempts = 1): `recover` adds one for every restart that
    finds it, so a task that keeps killing the process is failed instead of re-run forever.
    """
    payload = dict(payload or {})
    request_id = current_request_id()
    if request_id is not None:  # for a user message, should the task fail
        payload.setdefault("request_id", request_id)
    result = session.connection().execute(_INSERT_TASK, {
        "kind": kind, "backend": backend, "resource_id": resource_id, "payload": payload,
        "attempts": 1, "created_at": utcnow()})
    task_id = int(result.inserted_primary_key[0])  # type: ignore[index]
    return TaskView(task_id, kind, backend, resource_id, dict(payload), 1)


def start(rt: Runtime, task: TaskView) -> None:
    """Hand a task to its backend's workers; call after the enqueuing transaction commits."""
    failpoints.hit("api.after_commit")
    assert rt.tasks is not None
    rt.tasks.submit(task)


class TaskRunner:
    """Runs task rows on one thread pool per backend."""

    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self._pools = {
            name: ThreadPoolExecutor(b.config.workers, thread_name_prefix=f"task-{name}")
            for name, b in rt.backends.items()
        }
        self._idle = threading.Condition()
        self._running = 0
        rt.tasks = self

    def submit(self, task: TaskView) -> None:
        with self._idle:
            self._running += 1
        try:
            self._pools[task.backend].submit(self._execute, task)
        except Exception:
            self._done()
            raise

    def recover(self) -> int:
        """Submit every task left by a previous run of the process; returns how many."""
        with self.rt.db.write() as s:
            s.execute(update(Task).values(attempts=Task.attempts + 1))
            rows = s.execute(select(Task).order_by(Task.id)).scalars().all()
            left = [TaskView(r.id, r.kind, r.backend, r.resource_id, dict(r.payload),
                             r.attempts) for r in rows]
        count = 0
        for task in left:
            if task.backend not in self._pools:
                log.error("task %s belongs to backend %s, which is not configured", task.id,
                          task.backend)
                continue
            self.submit(task)
            count += 1
        return count

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Block until no task is running (tests and shutdown)."""
        with self._idle:
            return self._idle.wait_for(lambda: self._running == 0, timeout)

    def shutdown(self) -> None:
        for pool in self._pools.values():
            pool.shutdown(wait=True, cancel_futures=False)

    def _done(self) -> None:
        with self._idle:
            self._running -= 1
            self._idle.notify_all()

    def _execute(self, task: TaskView) -> None:
        try:
            self._execute_once(task)
        except Exception:
            log.exception("task %s could not be settled; it will be re-run at the next start",
                          task.id)
        finally:
            self._done()

    def _execute_once(self, task: TaskView) -> None:
        handler = HANDLERS[task.kind]
        result: Any = None
        error: BaseException | None = None
        if task.attempts > MAX_ATTEMPTS:
            error = RuntimeError(f"gave up after {MAX_ATTEMPTS} interrupted attempts")
        else:
            failpoints.hit(f"{task.kind}.before_run")
            try:
                result = handler.run(self.rt, task)
            except Exception as exc:
                log.warning("task %s (%s of %s) failed: %s", task.id, task.kind,
                            task.resource_id, exc)
                error = exc
            failpoints.hit(f"{task.kind}.after_run")
        follow_up: FollowUp | None = None
        for attempt in range(SETTLE_TRIES):
            follow_up = None  # only the attempt that commits counts
            try:
                with self.rt.db.write() as s:
                    # deleting the row first makes settling happen at most once
                    gone = s.connection().execute(delete(Task).where(Task.id == task.id))
                    if gone.rowcount == 1:
                        follow_up = handler.settle(s, self.rt, task, result, error)
                        if error is not None:  # tell the project, in the same transaction
                            messages.record_task_failure(s, self.rt, task.kind,
                                                         task.resource_id, task.payload, error)
                break
            except OperationalError:
                if attempt == SETTLE_TRIES - 1:
                    raise
                log.warning("task %s: settling failed, retrying", task.id, exc_info=True)
                time.sleep(0.1 * 2**attempt)
        failpoints.hit(f"{task.kind}.after_settle")
        if follow_up is not None:
            try:
                follow_up()
            except Exception:
                log.exception("task %s (%s of %s): its follow-up failed", task.id, task.kind,
                              task.resource_id)
