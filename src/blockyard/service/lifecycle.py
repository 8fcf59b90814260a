"""Start-up and shut-down of the volume service's runtime.

Start-up order matters for crash recovery: migrate the schema, make sure the default type
exists, set up every backend, sweep backend objects no row accounts for, then re-run every task
a previous process left unfinished.
"""

from __future__ import annotations

import logging
import re

from sqlalchemy import select

from blockyard.backends.base import SnapshotRef, VolumeRef
from blockyard.config import Config
from blockyard.db.engine import Database
from blockyard.db.models import Snapshot, Volume
from blockyard.errors import BlockyardError, NotSupported
from blockyard.service import attachments, compute_events
from blockyard.service import group_clones as _group_clones  # noqa: F401  (task handlers)
from blockyard.service import group_snapshots as _group_snapshots  # noqa: F401  (task handlers)
from blockyard.service import groups as _groups  # noqa: F401  (registers task handlers)
from blockyard.service import migration as _migration  # noqa: F401  (registers task handlers)
from blockyard.service import snapshots as _snapshots  # noqa: F401  (registers task handlers)
from blockyard.service import types as vtypes
from blockyard.service import volumes as _volumes  # noqa: F401  (registers task handlers)
from blockyard.service.runtime import Runtime, build_backends, build_targets
from blockyard.service.tasks import TaskRunner

log = logging.getLogger(__name__)

_OBJECT = re.compile(r"^(volume|snapshot)-([0-9a-f-]{36})$")


def sweep_orphans(rt: Runtime) -> int:
    """Remove backend objects that no volume or snapshot row names; returns how many."""
    removed = 0
    with rt.db.read() as s:
        volume_names = {f"volume-{name_id or vid}" for vid, name_id, in
                        s.execute(select(Volume.id, Volume.name_id))}
        snapshot_names = {f"snapshot-{sid}" for sid, in s.execute(select(Snapshot.id))}
    for backend in rt.backends.values():
        try:
            names = backend.driver.list_volume_names()
        except NotSupported:
            continue
        for name in sorted(names):
            m = _OBJECT.match(name)
            if m is None or name in volume_names or name in snapshot_names:
                continue
            kind, ident = m.groups()
            log.warning("backend %s: removing %s, which no %s row accounts for", backend.name,
                        name, kind)
            if kind == "volume":
                backend.driver.delete_volume(VolumeRef(id=ident, size_gb=0))
            else:
                backend.driver.delete_snapshot(
                    SnapshotRef(id=ident, volume=VolumeRef(id=ident, size_gb=0), size_gb=0))
            removed += 1
    return removed


def build_runtime(config: Config) -> Runtime:
    config.state_dir.mkdir(parents=True, exist_ok=True)
    db = Database(config.database_url)
    db.migrate()
    with db.write() as s:
        vtypes.ensure_default_type(s, config.default_volume_type)
    db.start_checkpoints()
    compute_events.announce(config.compute)
    built = build_targets(config)
    rt = Runtime(config=config, db=db, backends=build_backends(config, built), targets=built)
    for backend in rt.backends.values():  # the first report is the only one waited for
        try:
            backend.stats()
        except BlockyardError as exc:
            log.warning("backend %s: %s", backend.name, exc)
    runner = TaskRunner(rt)
    sweep_orphans(rt)
    attachments.reconcile(rt)
    resumed = runner.recover()
    if resumed:
        log.info("resumed %d unfinished task(s)", resumed)
    return rt


def close_runtime(rt: Runtime) -> None:
    runner = rt.tasks
    if isinstance(runner, TaskRunner):
        runner.shutdown()
    for target in rt.targets.values():
        try:
            target.stop()
        except Exception:  # noqa: BLE001 - stop the others all the same
            log.exception("stopping the %s target failed", target.protocol)
    rt.db.dispose()
