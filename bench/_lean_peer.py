"""A second comparison peer for api_lifecycle.py: the same lifecycle, the same durable-task
protocol, schema, SQLAlchemy engine set-up and file driver as blockyard, written lean.

    python bench/_lean_peer.py PORT STATE_DIR

It is a feasibility sketch of the changes suggested in bench/README.md, not a second
implementation to maintain. What it keeps from blockyard:

* blockyard's own schema (its Alembic migrations) and `Database` engine (SQLite WAL,
  synchronous=NORMAL, BEGIN IMMEDIATE for writes);
* every change in one transaction with its task row: quota usage (the same four conditional
  increments), the task row, the volume row; the task runs `FileDriver` (fsync and all) on a
  4-thread pool and settles status, quota and task deletion in one transaction;
* compare-and-swap status changes, quota limits checked in the UPDATE, per-project scoping,
  blockyard's CinderMiddleware (microversions, request ids), the same response body.

What it does differently (the suggestions being sized):

* SQLAlchemy Core statements built once at import, run on a Connection, no ORM, no Session,
  no selectin loads; the type name comes from a cache; responses are rendered from the values
  just written instead of re-reading the row;
* one process-wide lock serialises write transactions (no busy-handler sleeps);
* reads (show, list) run on the event loop thread, no thread-pool hop; writes go to the pool;
* the task is not "claimed" in a transaction of its own (attempts=1 on insert);
* attachments are not queried for detached volumes;
* gc.freeze() after start-up.
"""

from __future__ import annotations

import gc
import sys
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import uvicorn  # noqa: E402
from sqlalchemy import bindparam, delete, exists, insert, select, update  # noqa: E402
from starlette.applications import Starlette  # noqa: E402
from starlette.concurrency import run_in_threadpool  # noqa: E402
from starlette.middleware import Middleware  # noqa: E402
from starlette.requests import Request  # noqa: E402
from starlette.responses import JSONResponse, Response  # noqa: E402
from starlette.routing import Route  # noqa: E402

from blockyard.api.wire import CinderMiddleware  # noqa: E402
from blockyard.backends.file import FileDriver  # noqa: E402
from blockyard.db.engine import Database  # noqa: E402
from blockyard.db.models import (  # noqa: E402
    QuotaUsage,
    Snapshot,
    Task,
    Volume,
    VolumeMetadata,
    utcnow,
)
from blockyard.model import VolumeRef  # noqa: E402
from blockyard.service import types as vtypes  # noqa: E402
from blockyard.targets.local import LocalTarget  # noqa: E402

V, T, Q, M, S = (Volume.__table__, Task.__table__, QuotaUsage.__table__,
                 VolumeMetadata.__table__, Snapshot.__table__)

SEL_VOLUME = select(V).where(V.c.id == bindparam("vid"))
SEL_META = select(M.c.key, M.c.value).where(M.c.volume_id == bindparam("vid"))
SEL_META_MANY = select(M.c.volume_id, M.c.key, M.c.value).where(
    M.c.volume_id.in_(bindparam("vids", expanding=True)))
SEL_LIST = (select(V).where(V.c.project_id == bindparam("pid"))
            .order_by(V.c.created_at.desc(), V.c.id.desc()).limit(1001))
INS_TASK = insert(T)
INS_VOLUME = insert(V)
DEL_TASK = delete(T).where(T.c.id == bindparam("tid"))
QUOTA_ADD = (update(Q).where(Q.c.project_id == bindparam("qp"), Q.c.resource == bindparam("qr"),
                            Q.c.in_use + bindparam("qd") <= bindparam("ql"))
             .values(in_use=Q.c.in_use + bindparam("qd")))
#: the bench's quota (api_lifecycle.CONFIG): a cached limit, checked in the UPDATE as blockyard
#: does
LIMITS = {"volumes": 1_000_000, "gigabytes": 100_000_000}
QUOTA_ROW = insert(Q)
SEL_QUOTA_ROW = select(Q.c.in_use).where(Q.c.project_id == bindparam("qp"),
                                         Q.c.resource == bindparam("qr"))
CAS_EXTEND = (update(V).where(V.c.id == bindparam("vid"), V.c.status == "available",
                              V.c.task_id.is_(None), V.c.size == bindparam("old"))
              .values(status="extending", previous_status=V.c.status, task_id=bindparam("tid"),
                      updated_at=bindparam("now")))
CAS_DELETE = (update(V).where(
    V.c.id == bindparam("vid"),
    V.c.status.in_(["available", "error", "error_restoring", "error_extending",
                    "error_managing"]),
    V.c.task_id.is_(None), V.c.pins == 0, V.c.attach_status == "detached",
    ~exists().where(S.c.volume_id == bindparam("vid2")))
    .values(status="deleting", previous_status=V.c.status, task_id=bindparam("tid"),
            updated_at=bindparam("now")))
SETTLE_CREATE = (update(V).where(V.c.id == bindparam("vid"), V.c.task_id == bindparam("tid"))
                 .values(status="available", task_id=None, updated_at=bindparam("now")))
SETTLE_EXTEND = (update(V).where(V.c.id == bindparam("vid"), V.c.task_id == bindparam("tid"))
                 .values(status=V.c.previous_status, size=bindparam("new"), task_id=None,
                         updated_at=bindparam("now")))
SETTLE_DELETE = delete(V).where(V.c.id == bindparam("vid"), V.c.task_id == bindparam("tid"))


class Abort(Exception):
    """Roll the write transaction back and answer with `status`."""

    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status


class Lean:
    def __init__(self, state: Path) -> None:
        state.mkdir(parents=True, exist_ok=True)
        self.db = Database(f"sqlite:///{state / 'blockyard.db'}")
        self.db.migrate()
        with self.db.write() as s:
            vt = vtypes.ensure_default_type(s, "__DEFAULT__")
            self.type_id, self.type_name = vt.id, vt.name
        self.writer = self.db.engine.execution_options(immediate=True)
        self.write_lock = threading.Lock()
        self.driver = FileDriver("default", {"path": str(state / "volumes" / "default")},
                                 LocalTarget())
        self.driver.do_setup()
        self.pool = ThreadPoolExecutor(4, thread_name_prefix="task-default")

    # ------------------------------------------------------------------ transactions

    def _quota(self, c: Any, project: str, deltas: dict[str, int]) -> None:
        for res, d in sorted(deltas.items()):
            limit = LIMITS.get(res, 2**62) if d > 0 else 2**62
            if c.execute(QUOTA_ADD, {"qp": project, "qr": res, "qd": d,
                                     "ql": limit}).rowcount == 1:
                continue
            if c.execute(SEL_QUOTA_ROW, {"qp": project, "qr": res}).first() is not None:
                raise Abort(413)
            c.execute(QUOTA_ROW, {"project_id": project, "resource": res, "in_use": max(d, 0)})

    def _deltas(self, count: int, gb: int) -> dict[str, int]:
        return {"volumes": count, f"volumes_{self.type_name}": count, "gigabytes": gb,
                f"gigabytes_{self.type_name}": gb}

    def create(self, project: str, user: str, size: int, name: str | None) -> dict[str, Any]:
        """(Abort from the quota check is not caught: the bench stays under its quota.)"""
        vid, now = str(uuid.uuid4()), utcnow()
        row = {"id": vid, "project_id": project, "user_id": user, "name": name,
               "description": None, "size": size, "status": "creating",
               "previous_status": None, "attach_status": "detached",
               "availability_zone": "nova", "volume_type_id": self.type_id,
               "backend": "default", "snapshot_id": None, "source_volid": None,
               "bootable": False, "readonly": False, "multiattach": False,
               "provider_location": None, "provider_auth": None, "name_id": None,
               "migration_status": None, "pins": 0, "created_at": now, "updated_at": None}
        with self.write_lock, self.writer.begin() as c:
            self._quota(c, project, self._deltas(1, size))
            tid = c.execute(INS_TASK, {"kind": "create_volume", "backend": "default",
                                       "resource_id": vid, "payload": {}, "attempts": 1,
                                       "created_at": now}).inserted_primary_key[0]
            row["task_id"] = tid
            c.execute(INS_VOLUME, row)
        self.pool.submit(self._task, "create", tid, vid, size, None)
        return row

    def extend(self, project: str, vid: str, new: int) -> int:
        try:
            return self._extend(project, vid, new)
        except Abort as exc:
            return exc.status

    def _extend(self, project: str, vid: str, new: int) -> int:
        with self.write_lock, self.writer.begin() as c:
            v = c.execute(SEL_VOLUME, {"vid": vid}).first()
            if v is None or v.project_id != project:
                raise Abort(404)
            if new <= v.size:
                raise Abort(400)
            tid = c.execute(INS_TASK, {"kind": "extend_volume", "backend": "default",
                                       "resource_id": vid, "payload": {"new_size": new},
                                       "attempts": 1, "created_at": utcnow()}
                            ).inserted_primary_key[0]
            if c.execute(CAS_EXTEND, {"vid": vid, "old": v.size, "tid": tid,
                                      "now": utcnow()}).rowcount != 1:
                raise Abort(400)
            self._quota(c, project, {"gigabytes": new - v.size,
                                     f"gigabytes_{self.type_name}": new - v.size})
        self.pool.submit(self._task, "extend", tid, vid, v.size, new)
        return 202

    def delete(self, project: str, vid: str) -> int:
        try:
            return self._delete(project, vid)
        except Abort as exc:
            return exc.status

    def _delete(self, project: str, vid: str) -> int:
        with self.write_lock, self.writer.begin() as c:
            v = c.execute(SEL_VOLUME, {"vid": vid}).first()
            if v is None or v.project_id != project:
                raise Abort(404)
            tid = c.execute(INS_TASK, {"kind": "delete_volume", "backend": "default",
                                       "resource_id": vid, "payload": {}, "attempts": 1,
                                       "created_at": utcnow()}).inserted_primary_key[0]
            if c.execute(CAS_DELETE, {"vid": vid, "vid2": vid, "tid": tid,
                                      "now": utcnow()}).rowcount != 1:
                raise Abort(400)
        self.pool.submit(self._task, "delete", tid, vid, v.size, None)
        return 202

    def _task(self, kind: str, tid: int, vid: str, size: int, new: int | None) -> None:
        ref = VolumeRef(id=vid, size_gb=size)
        if kind == "create":
            self.driver.create_volume(ref)
        elif kind == "extend":
            self.driver.extend_volume(ref, int(new))  # type: ignore[arg-type]
        else:
            self.driver.remove_export(ref)
            self.driver.delete_volume(ref)
        now = utcnow()
        with self.write_lock, self.writer.begin() as c:
            if kind == "create":
                c.execute(SETTLE_CREATE, {"vid": vid, "tid": tid, "now": now})
            elif kind == "extend":
                c.execute(SETTLE_EXTEND, {"vid": vid, "tid": tid, "new": new, "now": now})
            else:
                v = c.execute(SEL_VOLUME, {"vid": vid}).first()
                if c.execute(SETTLE_DELETE, {"vid": vid, "tid": tid}).rowcount == 1:
                    self._quota(c, v.project_id, self._deltas(-1, -v.size))
            c.execute(DEL_TASK, {"tid": tid})

    # ------------------------------------------------------------------ reads

    def show(self, vid: str) -> tuple[Any, dict[str, str]] | None:
        with self.db.engine.connect() as c:
            v = c.execute(SEL_VOLUME, {"vid": vid}).first()
            if v is None:
                return None
            return v, dict(c.execute(SEL_META, {"vid": vid}).all())

    def list(self, project: str) -> list[tuple[Any, dict[str, str]]]:
        with self.db.engine.connect() as c:
            rows = c.execute(SEL_LIST, {"pid": project}).all()
            meta: dict[str, dict[str, str]] = {}
            if rows:
                for vid, k, val in c.execute(SEL_META_MANY, {"vids": [r.id for r in rows]}):
                    meta.setdefault(vid, {})[k] = val
            return [(r, meta.get(r.id, {})) for r in rows]


def render(request: Request, lean: Lean, v: Any, meta: dict[str, str]) -> dict[str, Any]:
    get = v.get if isinstance(v, dict) else v._mapping.get
    base = str(request.base_url).rstrip("/")
    vid = get("id")
    created, updated = get("created_at"), get("updated_at")
    return {
        "id": vid, "status": get("status"), "size": get("size"),
        "availability_zone": get("availability_zone"),
        "created_at": created.isoformat(timespec="microseconds"),
        "updated_at": updated.isoformat(timespec="microseconds") if updated else None,
        "name": get("name"), "description": get("description"),
        "volume_type": lean.type_name, "snapshot_id": get("snapshot_id"),
        "source_volid": get("source_volid"), "metadata": meta,
        "links": [{"rel": "self", "href": f"{base}/v3/volumes/{vid}"},
                  {"rel": "bookmark", "href": f"{base}/volumes/{vid}"}],
        "user_id": get("user_id"), "bootable": "true" if get("bootable") else "false",
        "encrypted": False, "replication_status": None, "consistencygroup_id": None,
        "multiattach": get("multiattach"), "attachments": [],
        "migration_status": get("migration_status"), "group_id": None, "provider_id": None,
        "shared_targets": False, "service_uuid": lean.type_id, "cluster_name": None,
        "volume_type_id": get("volume_type_id"), "consumes_quota": True,
        "os-vol-tenant-attr:tenant_id": get("project_id"),
        "os-vol-mig-status-attr:migstat": get("migration_status"),
        "os-vol-mig-status-attr:name_id": get("name_id"),
        "os-vol-host-attr:host": "lean@default#default",
    }


def build(state: Path) -> Starlette:
    lean = Lean(state)

    def who(request: Request) -> tuple[str, str]:
        user, _, project = request.headers.get("x-auth-token", "admin").partition(":")
        return user, project or user

    def not_found() -> Response:
        return JSONResponse({"itemNotFound": {"code": 404, "message": "not found"}}, 404)

    async def root(request: Request) -> Response:
        return JSONResponse({"versions": []}, 300)

    async def create(request: Request) -> Response:
        spec = (await request.json())["volume"]
        user, project = who(request)
        row = await run_in_threadpool(lean.create, project, user, int(spec["size"]),
                                      spec.get("name"))
        return JSONResponse({"volume": render(request, lean, row, {})}, 202)

    async def detail(request: Request) -> Response:
        _, project = who(request)
        return JSONResponse({"volumes": [render(request, lean, v, m)
                                         for v, m in lean.list(project)]})

    async def show(request: Request) -> Response:
        found = lean.show(request.path_params["id"])
        if found is None or found[0].project_id != who(request)[1]:
            return not_found()
        return JSONResponse({"volume": render(request, lean, *found)})

    async def action(request: Request) -> Response:
        body = await request.json()
        status = await run_in_threadpool(lean.extend, who(request)[1],
                                         request.path_params["id"],
                                         int(body["os-extend"]["new_size"]))
        return Response(status_code=status)

    async def remove(request: Request) -> Response:
        status = await run_in_threadpool(lean.delete, who(request)[1],
                                         request.path_params["id"])
        return Response(status_code=status)

    return Starlette(routes=[
        Route("/", root),
        Route("/v3/volumes", create, methods=["POST"]),
        Route("/v3/volumes/detail", detail),
        Route("/v3/volumes/{id}", show),
        Route("/v3/volumes/{id}", remove, methods=["DELETE"]),
        Route("/v3/volumes/{id}/action", action, methods=["POST"]),
    ], middleware=[Middleware(CinderMiddleware)])


def main() -> None:
    port, state = int(sys.argv[1]), Path(sys.argv[2])
    app = build(state)
    gc.collect()
    gc.freeze()
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
