"""Start-up and shut-down of the volume service's runtime.

Start-up order matters for crash recovery: migrate the schema, make sure the default type
exists, set up every backend (adopting the target daemons a previous process left running),
sweep backend objects no row accounts for, settle attachments and their exports, remove the
exports no volume accounts for, then re-run every task a previous process left unfinished.

Shutting down leaves the target daemons that serve attached volumes running: a guest's I/O
goes through them, and the next start adopts them (`blockyard.targets.teardown` is the
deliberate full stop).
"""

from __future__ import annotations

import logging
import re

from sqlalchemy import select

from blockyard.backends.exports import load_export
from blockyard.config import Config
from blockyard.db.engine import Database
from blockyard.db.models import Snapshot, Volume
from blockyard.errors import BlockyardError, NotSupported
from blockyard.model import Export, SnapshotRef, VolumeRef
from blockyard.service import attachments, compute_events, policies, services
from blockyard.service import group_clones as _group_clones  # noqa: F401  (task handlers)
from blockyard.service import group_snapshots as _group_snapshots  # noqa: F401  (task handlers)
from blockyard.service import groups as _groups  # noqa: F401  (registers task handlers)
from blockyard.service import migration as _migration  # noqa: F401  (registers task handlers)
from blockyard.service import snapshots as _snapshots  # noqa: F401  (registers task handlers)
from blockyard.service import types as vtypes
from blockyard.service import volumes as _volumes  # noqa: F401  (registers task handlers)
from blockyard.service.runtime import Runtime, build_backends, build_targets
from blockyard.service.tasks import TaskRunner
from blockyard.service.volume_ops import volume_ref

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


def prune_exports(rt: Runtime) -> int:
    """Remove the exports the (adopted) target daemons hold that no volume's persisted export
    accounts for any more; returns how many. An export of a volume whose backend is not
    configured is kept by every target: which one serves it cannot be told."""
    kept: dict[str, list[Export]] = {protocol: [] for protocol in rt.targets}
    with rt.db.read() as s:
        for v in s.execute(select(Volume).where(Volume.provider_location.is_not(None))
                           ).scalars():
            backend = rt.backends.get(v.backend)
            # the driver reads its own provider_location; with no driver configured, only
            # the format every target-exporting driver persists (backends.exports) can be read
            export = (backend.driver.export_of(volume_ref(v)) if backend
                      else load_export(volume_ref(v)))
            if export is None:
                continue
            for protocol in [backend.config.target] if backend else list(kept):
                kept.setdefault(protocol, []).append(export)
    removed = 0
    for protocol, target in rt.targets.items():
        try:
            gone = target.prune(kept[protocol])
        except BlockyardError as exc:
            log.warning("could not prune the %s target's exports: %s", protocol, exc)
            continue
        for name in gone:
            log.warning("%s target: removed export %s, which no volume accounts for",
                        protocol, name)
        removed += len(gone)
    return removed


def build_runtime(config: Config) -> Runtime:
    config.state_dir.mkdir(parents=True, exist_ok=True)
    # Cinder's rule defaults under the operator's policy file, built now rather than by the
    # first request (a broken file stops the start, naming it)
    if config.auth.policy_file is not None:
        policies.load(str(config.auth.policy_file))
    policies.engine()
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
    services.register(rt)
    rt.heartbeat = services.Heartbeat(rt).start()
    runner = TaskRunner(rt)
    sweep_orphans(rt)
    attachments.reconcile(rt)
    prune_exports(rt)
    resumed = runner.recover()
    if resumed:
        log.info("resumed %d unfinished task(s)", resumed)
    return rt


def close_runtime(rt: Runtime) -> None:
    if rt.heartbeat is not None:
        rt.heartbeat.stop()
    runner = rt.tasks
    if isinstance(runner, TaskRunner):
        runner.shutdown()
    for target in rt.targets.values():  # exports of attached volumes keep running
        try:
            target.stop()
        except Exception:  # noqa: BLE001 - let go of the others all the same
            log.exception("letting go of the %s target failed", target.protocol)
    rt.db.dispose()
