"""Cinder's services: one ``cinder-scheduler`` at the host and one ``cinder-volume`` per backend
at ``host@backend``, each a row of the ``services`` table.

The process writes every service's heartbeat (`updated_at`) each `REPORT_INTERVAL` seconds; a
service whose heartbeat is older than `SERVICE_DOWN_TIME` is shown "down" (the process died
or hangs). An admin may disable a service (the scheduler then leaves that backend alone) and
freeze a backend (management operations on its volumes and snapshots are refused until it is
thawed), as with Cinder's ``os-services`` API.

Hosts are matched the way Cinder's database layer matches them: ``host`` finds the host and
all its backends and pools, ``host@backend`` the backend and its pools, ``host@backend#pool``
only itself.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from blockyard.db.models import Service, Snapshot, Volume, utcnow
from blockyard.errors import Invalid, NotFound
from blockyard.service.runtime import Runtime

log = logging.getLogger(__name__)

SCHEDULER = "cinder-scheduler"
VOLUME = "cinder-volume"
#: seconds between two heartbeats (Cinder's report_interval)
REPORT_INTERVAL = 10.0
#: a heartbeat older than this shows the service down (Cinder's service_down_time)
SERVICE_DOWN_TIME = timedelta(seconds=60)

FROZEN = ("Invalid input received: Modification operations are not allowed on frozen "
          "storage backends.")


@dataclass(frozen=True)
class ServiceView:
    """One service row as the API shows it."""

    host: str
    binary: str
    backend: str | None
    zone: str
    disabled: bool
    disabled_reason: str | None
    frozen: bool
    replication_status: str
    active_backend_id: str | None
    updated_at: datetime | None
    is_up: bool


def host_matches(service_host: str, value: str) -> bool:
    """Cinder's host filter: the level of `value` (host, host@backend, host@backend#pool)
    decides how much of a service host below it also matches."""
    if service_host == value:
        return True
    if "#" in value:
        return False
    if service_host.startswith(value + "#"):
        return True
    return "@" not in value and service_host.startswith(value + "@")


def backend_host(value: str) -> str:
    """``host@backend`` of a ``host@backend#pool`` (Cinder's extract_host at backend level)."""
    return value.partition("#")[0]


def _view(row: Service, now: datetime) -> ServiceView:
    beat = row.updated_at or row.created_at
    return ServiceView(
        host=row.host, binary=row.binary, backend=row.backend, zone=row.availability_zone,
        disabled=row.disabled, disabled_reason=row.disabled_reason, frozen=row.frozen,
        replication_status=row.replication_status, active_backend_id=row.active_backend_id,
        updated_at=row.updated_at, is_up=abs(now - beat) <= SERVICE_DOWN_TIME)


# ---------------------------------------------------------------------------- registration


def _ours(rt: Runtime) -> list[tuple[str, str, str | None, str]]:
    """(host, binary, backend, zone) of every service this process runs."""
    backends = [rt.backends[name] for name in sorted(rt.backends)]
    zone = backends[0].config.availability_zone if backends else "nova"
    ours: list[tuple[str, str, str | None, str]] = [(rt.config.host, SCHEDULER, None, zone)]
    ours += [(b.service_host, VOLUME, b.name, b.config.availability_zone) for b in backends]
    return ours


def register(rt: Runtime) -> None:
    """Create (or take over) the rows of this process's services and beat once. Rows of
    services no longer configured stay, and show "down", as Cinder's do; they no longer
    stand for a backend (its volumes belong to whichever service now runs it)."""
    now = utcnow()
    ours = _ours(rt)
    with rt.db.write() as s:
        rows = {(r.host, r.binary): r for r in s.execute(select(Service)).scalars()}
        current = {(host, binary) for host, binary, _, _ in ours}
        for key, stale in rows.items():
            if key not in current:
                stale.backend = None
        for host, binary, backend, zone in ours:
            row = rows.get((host, binary))
            if row is None:
                s.add(Service(host=host, binary=binary, backend=backend,
                              availability_zone=zone, disabled=False, frozen=False,
                              replication_status="disabled", created_at=now, updated_at=now))
            else:
                row.backend, row.availability_zone, row.updated_at = backend, zone, now


def beat(rt: Runtime) -> None:
    """Write the heartbeat of every service this process runs."""
    keys = [(host, binary) for host, binary, _, _ in _ours(rt)]
    now = utcnow()
    with rt.db.write() as s:
        for host, binary in keys:
            s.execute(update(Service).where(Service.host == host, Service.binary == binary)
                      .values(updated_at=now))


class Heartbeat:
    """A thread that beats every `interval` seconds until stopped."""

    def __init__(self, rt: Runtime, interval: float = REPORT_INTERVAL) -> None:
        self._rt, self._interval = rt, interval
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="heartbeat", daemon=True)

    def start(self) -> Heartbeat:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        if self._thread.is_alive():
            self._thread.join(10)

    def _run(self) -> None:
        while not self._stopping.wait(self._interval):
            try:
                beat(self._rt)
            except Exception:  # noqa: BLE001 - a missed beat is retried at the next one
                log.warning("service heartbeat failed", exc_info=True)


# ---------------------------------------------------------------------------- queries


def listing(rt: Runtime, host: str | None = None, binary: str | None = None) -> list[ServiceView]:
    """Every service, scheduler first, then by host; optionally filtered as Cinder filters."""
    now = utcnow()
    with rt.db.read() as s:
        rows = s.execute(select(Service).order_by(Service.id)).scalars().all()
        views = [_view(r, now) for r in rows]
    if host is not None:
        views = [v for v in views if host_matches(v.host, host)]
    if binary is not None:
        views = [v for v in views if v.binary == binary]
    return sorted(views, key=lambda v: (v.binary != SCHEDULER, v.host))


def usage_by_project(rt: Runtime, backend: str) -> tuple[dict[str, tuple[int, int]],
                                                         dict[str, tuple[int, int]]]:
    """What `backend` holds per project (os-hosts show): (count, GB) of its volumes, and of
    the snapshots of its volumes."""
    with rt.db.read() as s:
        volume_rows = s.execute(
            select(Volume.project_id, func.count(Volume.id),
                   func.coalesce(func.sum(Volume.size), 0))
            .where(Volume.backend == backend).group_by(Volume.project_id)).all()
        snapshot_rows = s.execute(
            select(Snapshot.project_id, func.count(Snapshot.id),
                   func.coalesce(func.sum(Snapshot.size), 0))
            .join(Volume, Volume.id == Snapshot.volume_id)
            .where(Volume.backend == backend).group_by(Snapshot.project_id)).all()
    return ({p: (int(c), int(g)) for p, c, g in volume_rows},
            {p: (int(c), int(g)) for p, c, g in snapshot_rows})


def unschedulable(rt: Runtime) -> set[str]:
    """Backends the scheduler must leave alone: their service is disabled or frozen."""
    with rt.db.read() as s:
        return {b for b, in s.execute(
            select(Service.backend).where(Service.binary == VOLUME,
                                          Service.backend.is_not(None),
                                          Service.disabled | Service.frozen))
            if b is not None}


def assert_not_frozen(session: Session, backend: str) -> None:
    """Refuse a management operation on a volume or snapshot of a frozen backend."""
    frozen = session.execute(select(Service.id).where(
        Service.binary == VOLUME, Service.backend == backend, Service.frozen)).first()
    if frozen is not None:
        raise Invalid(FROZEN)


# ---------------------------------------------------------------------------- changes


def set_disabled(rt: Runtime, host: str, binary: str, disabled: bool,
                 reason: str | None = None) -> ServiceView:
    """Enable or disable the first service `binary` at `host` (404 when there is none).
    Enabling clears the reason; disabling keeps the old one unless a new one is given."""
    values: dict[str, object] = {"disabled": disabled}
    if not disabled:
        values["disabled_reason"] = None
    elif reason:
        values["disabled_reason"] = reason
    with rt.db.write() as s:
        rows = s.execute(select(Service).where(Service.binary == binary)
                         .order_by(Service.id)).scalars().all()
        row = next((r for r in rows if host_matches(r.host, host)), None)
        if row is None:
            raise NotFound("Service", binary,
                           f"Service {binary} could not be found on host {host}.")
        s.execute(update(Service).where(Service.id == row.id).values(**values))
        s.refresh(row)
        return _view(row, utcnow())


def set_frozen(rt: Runtime, host: str, frozen: bool) -> None:
    """Freeze (or thaw) the backend at `host`: one conditional update from the other value,
    worded as Cinder words its refusals (400s)."""
    with rt.db.write() as s:
        rows = [r for r in s.execute(select(Service).where(Service.binary == VOLUME)
                                     .order_by(Service.id)).scalars()
                if host_matches(r.host, host)]
        if not rows:
            raise Invalid(f"Invalid input received: No service found with host={host}")
        if any(r.host != rows[0].host for r in rows):
            raise Invalid("Services from different clusters found.")
        changed = s.execute(update(Service)
                            .where(Service.id.in_([r.id for r in rows]),
                                   Service.frozen == (not frozen))
                            .values(frozen=frozen)).rowcount  # type: ignore[attr-defined]
        if not changed:
            hosts = [r.host for r in rows]
            raise Invalid(f"Invalid input received: No service could be changed: frozen in "
                          f"{hosts} must be {not frozen} to failover.")
