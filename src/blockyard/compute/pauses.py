"""Pausing guests so that a snapshot of their volume is point-in-time (crash-consistent).

The volume service takes the snapshot itself (an RBD snapshot, a copy of a file); what only
the agent can do is keep the guest from writing meanwhile. So an assisted snapshot is, seen
from here, two requests around the backend's work:

    pause(volume, snapshot)   QMP ``stop`` of every guest on this host that has the volume
                              attached: QEMU stops the vCPUs, waits for the guest's requests
                              in flight and flushes before it answers, so the volume then
                              holds exactly what the guest was told is written
    resume(volume, snapshot)  QMP ``cont``; answers how long the guest was paused

A guest must never stay paused because the other side went away:

* every pause arms a watchdog that resumes the guest by itself after ``max_pause_ms``; a
  resume that comes later is refused (`PauseExpired`): the snapshot may have been taken while
  the guest was writing again, and the service must not call it point-in-time;
* before the first ``stop`` a marker file (``<state_dir>/paused/<snapshot_id>.json``) names
  the guests, and it goes only after they run again, so an agent that crashed in between
  resumes them when it starts (`reconcile`).

A guest is paused for one snapshot at a time: a second pause (of another volume of the same
guest) waits until the first ended, at most as long as the first may last (its watchdog), and
is then refused (`PauseBusy`, 409) if the guest is still paused. The same snapshot asking
again (a restarted volume service re-running its task) gets the pause it already has.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

from blockyard.errors import Conflict, NotFound

from .hypervisor import Hypervisor, HypervisorError
from .store import Instance, MappingStatus, Store
from .undo import Undo

log = logging.getLogger(__name__)

#: how long a guest may stay paused when the caller does not say
DEFAULT_MAX_PAUSE_MS = 2000
#: the most a caller may ask for: a snapshot that needs longer is not worth a frozen guest
MAX_PAUSE_MS = 60_000
#: how many ended pauses are remembered, to tell a late resume why it is refused
_REMEMBERED = 256


class PauseBusy(Conflict):
    """The guest is paused for another snapshot, and stayed so while we waited."""


class PauseExpired(Conflict):
    """The watchdog resumed the guest before the snapshot's resume came."""


@dataclass
class Pause:
    """One snapshot's pause of the guests that have its volume."""

    snapshot_id: str
    volume_id: str
    instance_ids: list[str]
    max_pause_ms: int
    #: time.monotonic() just before the first ``stop`` was sent
    started: float
    #: set once every guest runs again
    ended: asyncio.Event = field(default_factory=asyncio.Event)
    #: None while paused, then "resumed" or "expired"
    outcome: str | None = None
    paused_ms: float | None = None
    watchdog: asyncio.Task[None] | None = None


Guest = Callable[[Instance], Awaitable[Hypervisor]]


class Pauses:
    """The agent's pauses: at most one per guest; see the module docstring."""

    def __init__(self, store: Store, guest: Guest, directory: Path) -> None:
        self._store = store
        self._guest = guest
        self._dir = directory
        self._active: dict[str, Pause] = {}       # by snapshot id
        self._by_instance: dict[str, Pause] = {}
        self._ended: dict[str, Pause] = {}        # by snapshot id, the latest few
        self._lock = asyncio.Lock()

    # ------------------------------------------------------------------ pause
    async def pause(self, volume_id: str, snapshot_id: str,
                    max_pause_ms: int = DEFAULT_MAX_PAUSE_MS) -> Pause:
        """Pause every guest here that has `volume_id` attached, for `snapshot_id`; returns
        once they are stopped and their disks flushed. NotFound when no guest here has it."""
        while True:
            async with self._lock:
                mine = self._active.get(snapshot_id)
                if mine is not None and mine.volume_id == volume_id:
                    return mine
                if mine is not None:
                    raise Conflict(f"Snapshot {snapshot_id} paused the guests of volume "
                                   f"{mine.volume_id}, not of {volume_id}.")
                instances = self._instances_with(volume_id)
                busy = [self._by_instance[i.id] for i in instances if i.id in self._by_instance]
                if not busy:
                    return await self._stop_all(volume_id, snapshot_id, instances,
                                                max_pause_ms)
            await self._wait_for(busy[0], snapshot_id)

    async def _wait_for(self, other: Pause, snapshot_id: str) -> None:
        """Wait until `other` ended: no longer than its watchdog lets it last (and a second)."""
        left = other.max_pause_ms / 1000 - (time.monotonic() - other.started) + 1.0
        try:
            async with asyncio.timeout(max(left, 0.0)):
                await other.ended.wait()
        except TimeoutError:
            raise PauseBusy(f"Instance(s) {', '.join(other.instance_ids)} are paused for "
                            f"snapshot {other.snapshot_id}; snapshot {snapshot_id} cannot "
                            f"pause them now.") from None

    def _instances_with(self, volume_id: str) -> list[Instance]:
        ids = sorted({m.instance_id for m in self._store.mappings()
                      if m.volume_id == volume_id and m.status == MappingStatus.ATTACHED})
        if not ids:
            raise NotFound("Volume attachment", volume_id,
                           f"No instance on this host has volume {volume_id} attached.")
        return [self._store.instance(i) for i in ids]

    async def _stop_all(self, volume_id: str, snapshot_id: str, instances: list[Instance],
                        max_pause_ms: int) -> Pause:
        guests = [(inst, await self._guest(inst)) for inst in instances]
        for inst, hv in guests:
            status = await hv.status()
            if status != "running":
                raise Conflict(f"Cannot pause instance {inst.id} for snapshot "
                               f"{snapshot_id} while it is {status}.")
        pause = Pause(snapshot_id, volume_id, [i.id for i in instances], max_pause_ms,
                      time.monotonic())
        self._write_marker(pause)
        async with Undo() as undo:
            undo.push(self._remove_marker, snapshot_id)
            pause.started = time.monotonic()
            for inst, hv in guests:
                # first the undo: a stop that timed out may still take effect
                undo.push(_cont_quietly, hv, inst.id)
                await hv.stop()
            undo.commit()
        self._active[snapshot_id] = pause
        for inst in instances:
            self._by_instance[inst.id] = pause
        pause.watchdog = asyncio.get_running_loop().create_task(self._expire(pause))
        log.info("paused instance(s) %s for snapshot %s of volume %s (at most %d ms)",
                 ", ".join(pause.instance_ids), snapshot_id, volume_id, max_pause_ms)
        return pause

    # ------------------------------------------------------------------ resume
    async def resume(self, volume_id: str, snapshot_id: str) -> Pause:
        """Resume what `pause` paused for `snapshot_id`; the returned pause has `paused_ms`.
        PauseExpired when the watchdog was first; NotFound when there is no such pause."""
        pause = self._active.get(snapshot_id) or self._ended.get(snapshot_id)
        if pause is None or pause.volume_id != volume_id:
            raise NotFound("Snapshot", snapshot_id,
                           f"No pause of volume {volume_id} for snapshot {snapshot_id}.")
        await self._end(pause, "resumed")
        if pause.outcome == "expired":
            raise PauseExpired(f"The pause for snapshot {snapshot_id} ended after "
                               f"{pause.max_pause_ms} ms, before it was resumed: the "
                               f"snapshot is not point-in-time.")
        return pause

    async def _expire(self, pause: Pause) -> None:
        await asyncio.sleep(pause.max_pause_ms / 1000)
        log.warning("snapshot %s did not resume instance(s) %s within %d ms: resuming them",
                    pause.snapshot_id, ", ".join(pause.instance_ids), pause.max_pause_ms)
        await self._end(pause, "expired")

    async def _end(self, pause: Pause, outcome: str) -> None:
        """Resume the pause's guests, once (the watchdog and a resume may meet here)."""
        if pause.outcome is not None:
            await pause.ended.wait()
            return
        pause.outcome = outcome
        watchdog = pause.watchdog
        if watchdog is not None and watchdog is not asyncio.current_task():
            watchdog.cancel()
        try:
            for instance_id in pause.instance_ids:
                try:
                    hv = await self._guest(self._store.instance(instance_id))
                    await hv.cont()
                except (HypervisorError, NotFound, OSError) as exc:
                    log.error("could not resume instance %s after snapshot %s: %s",
                              instance_id, pause.snapshot_id, exc)
            pause.paused_ms = (time.monotonic() - pause.started) * 1000
            self._remove_marker(pause.snapshot_id)
        finally:
            self._active.pop(pause.snapshot_id, None)
            for instance_id in pause.instance_ids:
                if self._by_instance.get(instance_id) is pause:
                    del self._by_instance[instance_id]
            self._ended[pause.snapshot_id] = pause
            while len(self._ended) > _REMEMBERED:
                del self._ended[next(iter(self._ended))]
            pause.ended.set()
        log.info("instance(s) %s resumed (%s) after %.1f ms paused for snapshot %s",
                 ", ".join(pause.instance_ids), outcome, pause.paused_ms or 0.0,
                 pause.snapshot_id)

    # ------------------------------------------------------------------ lifecycle
    async def close(self) -> None:
        """The agent stops: no guest stays paused for a snapshot nobody can finish."""
        for pause in list(self._active.values()):
            await self._end(pause, "expired")

    async def reconcile(self) -> None:
        """After a (re)start: resume the guests a crashed agent left paused (their marker
        files say which), and forget the markers."""
        if not self._dir.is_dir():
            return
        for marker in sorted(self._dir.glob("*.json")):
            try:
                instance_ids = [str(i) for i in json.loads(marker.read_text())["instances"]]
            except (OSError, ValueError, KeyError, TypeError) as exc:
                log.error("unreadable pause marker %s: %s", marker, exc)
                instance_ids = []
            for instance_id in instance_ids:
                try:
                    hv = await self._guest(self._store.instance(instance_id))
                    if await hv.status() == "paused":
                        await hv.cont()
                        log.warning("resumed instance %s, left paused for snapshot %s by "
                                    "an agent that stopped", instance_id, marker.stem)
                except (HypervisorError, NotFound, OSError) as exc:
                    log.warning("instance %s (paused for snapshot %s): %s", instance_id,
                                marker.stem, exc)
            marker.unlink(missing_ok=True)

    # ------------------------------------------------------------------ markers
    def _marker(self, snapshot_id: str) -> Path:
        return self._dir / f"{snapshot_id}.json"

    def _write_marker(self, pause: Pause) -> None:
        self._dir.mkdir(parents=True, exist_ok=True)
        self._marker(pause.snapshot_id).write_text(json.dumps(
            {"volume_id": pause.volume_id, "instances": pause.instance_ids}))

    def _remove_marker(self, snapshot_id: str) -> None:
        self._marker(snapshot_id).unlink(missing_ok=True)


async def _cont_quietly(hv: Hypervisor, instance_id: str) -> None:
    try:
        await hv.cont()
    except HypervisorError as exc:
        log.error("could not resume instance %s after a failed pause: %s", instance_id, exc)
