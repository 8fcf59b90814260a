"""The running service's parts, built once at start-up and passed to every service function."""

from __future__ import annotations

import logging
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from blockyard import backends, targets
from blockyard.backends.base import BackendStats, VolumeDriver
from blockyard.config import BackendConfig, Config
from blockyard.db.engine import Database
from blockyard.errors import BackendError
from blockyard.model import Target

if TYPE_CHECKING:
    from blockyard.service.tasks import TaskView

log = logging.getLogger(__name__)

#: how long get_stats results are reused before the driver is asked again
STATS_TTL = 5.0


@dataclass
class Backend:
    """One configured backend: its driver plus the identity the API shows for it."""

    config: BackendConfig
    driver: VolumeDriver
    #: "host@backend", Cinder's service host of the volume manager
    service_host: str
    _stats: BackendStats | None = None
    _stats_at: float = 0.0
    _refreshing: bool = False
    _error: Exception | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def pool_host(self) -> str:
        """"host@backend#pool", what os-vol-host-attr:host shows (one pool per backend)."""
        return f"{self.service_host}#{self.config.name}"

    @property
    def service_uuid(self) -> str:
        return str(uuid.uuid5(uuid.NAMESPACE_URL, f"blockyard:{self.service_host}"))

    def stats(self, *, fresh: bool = False) -> BackendStats:
        """The driver's stats, cached for STATS_TTL seconds.

        Only the first call (or `fresh`) waits for the driver; later ones answer from the
        cache at once and, once it is stale, refresh it on a background thread, so that
        scheduling a volume never waits for a backend to count its space. While the last
        attempt failed, this raises BackendError (the backend is down).
        """
        with self._lock:
            if not fresh and self._stats_at:
                if time.monotonic() - self._stats_at > STATS_TTL and not self._refreshing:
                    self._refreshing = True
                    threading.Thread(target=self._refresh, name=f"stats-{self.name}",
                                     daemon=True).start()
                return self._answer()
        self._refreshing = True
        self._refresh()
        with self._lock:
            return self._answer()

    def _answer(self) -> BackendStats:
        if self._error is not None or self._stats is None:
            raise BackendError(f"Backend {self.name} cannot report its capacity: "
                               f"{self._error}", self._error)
        return self._stats

    def _refresh(self) -> None:
        stats: BackendStats | None = None
        error: Exception | None = None
        try:
            stats = self.driver.get_stats()
        except Exception as exc:  # noqa: BLE001 - any failure means the backend is down
            log.warning("backend %s: get_stats failed: %s", self.name, exc)
            error = exc
        with self._lock:
            if stats is not None:
                self._stats = stats
            self._error, self._stats_at, self._refreshing = error, time.monotonic(), False


@dataclass
class Runtime:
    config: Config
    db: Database
    backends: dict[str, Backend]
    #: set by blockyard.service.tasks.TaskRunner when it is created
    tasks: TaskSubmitter | None = None
    #: the export targets in use, by protocol (their daemons run while the service does)
    targets: dict[str, Target] = field(default_factory=dict)
    #: the services' heartbeat (blockyard.service.services.Heartbeat), stopped at shutdown
    heartbeat: Stoppable | None = None

    def backend(self, name: str) -> Backend:
        try:
            return self.backends[name]
        except KeyError:
            raise BackendError(f"Backend {name} is not configured on this service.") from None

    def target_of(self, backend: str) -> Target:
        """The export target through which `backend` offers its volumes."""
        protocol = self.backend(backend).config.target
        try:
            return self.targets[protocol]
        except KeyError:
            raise BackendError(f"Backend {backend}: its {protocol} target is not running.") \
                from None


class Stoppable(Protocol):
    """A background activity the runtime stops when it closes."""

    def stop(self) -> None: ...


class TaskSubmitter(Protocol):
    """What service functions need of the task runner: hand over a committed task row."""

    def submit(self, task: TaskView) -> None: ...


def build_targets(config: Config) -> dict[str, Target]:
    """One target per export protocol some backend uses, its daemons started."""
    built: dict[str, Target] = {}
    for protocol in sorted({bc.target for bc in config.backends}):
        target = targets.build(protocol, config.state_dir, config.targets.get(protocol, {}))
        target.start()
        built[protocol] = target
    return built


def build_backends(config: Config, built_targets: dict[str, Target]) -> dict[str, Backend]:
    result = {}
    for bc in config.backends:
        driver = backends.load(bc.name, bc.driver, bc.options, built_targets[bc.target])
        driver.do_setup()
        result[bc.name] = Backend(bc, driver, f"{config.host}@{bc.name}")
    return result
