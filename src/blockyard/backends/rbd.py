"""The Ceph RBD backend: every volume is an RBD image in one pool, through librados/librbd.

Layout, as Cinder's RBD driver has it: a volume is the image ``volume-<name_id or id>``; a
snapshot is the RBD snapshot ``snapshot-<id>`` of its volume's image (so it has no image of its
own, and `list_volume_names` lists images only); a clone of a volume is a protected snapshot
``<clone name>.clone_snap`` of the source plus a copy-on-write child. Volumes from snapshots
and clones are RBD layering clones: O(1), whatever the size.

Deleting what has children flattens the children first, then removes it (never refuses): a
snapshot with volumes made from it, or a volume whose clone snapshots have children. A
flatten copies the parent's data into each child, so such a delete costs what the parent
holds; deleting a child costs nothing extra, and also drops its ``.clone_snap`` from the
parent once no other child uses it.

Connections are native (``driver_volume_type: rbd``, what QEMU's rbd driver opens): no export
work, no target daemon. blockyard has no libvirt secret store, so `initialize_connection`
puts the cephx key (read from the configured keyring) into the connection info it returns
to the attaching caller, as the iSCSI target hands out CHAP passwords; it is never stored
with the volume (provider_auth stays empty) and never logged.

One cluster connection per driver, opened by `do_setup` (or the first call); librados
handles are thread-safe, and each call opens its own ioctx and images. Every mutating call
is idempotent, as the contract requires.
"""

from __future__ import annotations

import io
import logging
import os
import re
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from blockyard.backends.base import BackendStats, DriverBase, DriverInfo, PoolStats
from blockyard.errors import BackendError, ConfigError, Invalid
from blockyard.model import (
    Connector,
    GiB,
    ModelUpdate,
    OpenMode,
    RbdInfo,
    SnapshotRef,
    Target,
    VolumeRef,
)
from blockyard.rbdimage import CONNECTION_CONF, RbdHandle

try:  # Debian's python3-rados/python3-rbd (scripts/setup.sh)
    import rados  # type: ignore[import-not-found]
    import rbd  # type: ignore[import-not-found]
except ImportError:  # pragma: no cover - the packages are part of the setup
    rados = rbd = None

log = logging.getLogger(__name__)

#: the suffix of the snapshot a clone of a volume hangs off (``<clone name>.clone_snap``)
CLONE_SNAP = ".clone_snap"
#: how long a delete waits for other clients to close an image (or the OSD to expire a
#: crashed client's watch: osd_client_watch_timeout, 30 s by default)
BUSY_SECONDS = 45.0
#: export targets this driver accepts: its own connections are native, so "local" (the
#: default) and "rbd" only mean "no export work"
_TARGETS = ("local", "rbd")
_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")


class RbdDriver(DriverBase):
    """Volumes as RBD images in `pool`, used as the cephx user `user`.

    Options: ``pool`` (required), ``user`` (cephx id without ``client.``, default
    ``admin``), ``conf`` (ceph.conf path, default /etc/ceph/ceph.conf), ``keyring`` (path;
    default: the conf's), ``rados_connect_timeout`` (seconds, default 10), plus
    ``reserved_percentage`` and ``max_over_subscription_ratio`` for get_pools.
    """

    def __init__(self, backend_name: str, options: dict[str, Any],
                 target: Target) -> None:
        super().__init__(backend_name, options, target)
        known = {"pool", "user", "conf", "keyring", "rados_connect_timeout",
                 "reserved_percentage", "max_over_subscription_ratio"}
        unknown = sorted(set(options) - known)
        if unknown:
            raise ConfigError(self._key(unknown[0]), "unknown option of the rbd driver")
        self.pool = self._name("pool", None)
        self.user = self._name("user", "admin")
        self.conf = self._path("conf", "/etc/ceph/ceph.conf")
        self.keyring = self._path("keyring", None) if options.get("keyring") else None
        self.connect_timeout = self._number("rados_connect_timeout", 10.0, 0.1)
        self.reserved_percentage = int(self._number("reserved_percentage", 0, 0.0, 100.0))
        self.max_over_subscription_ratio = self._number("max_over_subscription_ratio", 20.0, 1.0)
        if self.target.protocol not in _TARGETS:
            raise ConfigError(self._key("target"), f"the rbd driver connects natively; use "
                                                   f"target = \"rbd\", not "
                                                   f"{self.target.protocol!r}")
        self._cluster: Any = None
        self._lock = threading.Lock()

    # configuration helpers

    def _key(self, option: str) -> str:
        return f"backends.{self.backend_name}.{option}"

    def _name(self, option: str, default: str | None) -> str:
        value = self.options.get(option, default)
        if value is None:
            raise ConfigError(self._key(option), "is required")
        if not isinstance(value, str) or not _NAME.match(value):
            raise ConfigError(self._key(option), f"must be a name of letters, digits, '_', "
                                                 f"'.', '-', got {value!r}")
        return value

    def _path(self, option: str, default: str | None) -> str:
        value = self.options.get(option, default)
        if not isinstance(value, str) or not value:
            raise ConfigError(self._key(option), f"must be a file path, got {value!r}")
        return os.path.abspath(value)

    def _number(self, option: str, default: float, minimum: float | None = None,
                maximum: float | None = None) -> float:
        raw = self.options.get(option, default)
        try:
            if isinstance(raw, bool):
                raise TypeError
            value = float(raw)
        except (TypeError, ValueError):
            raise ConfigError(self._key(option), f"must be a number, got {raw!r}") from None
        if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
            raise ConfigError(self._key(option),
                              f"must be within [{minimum}, {maximum}], got {value}")
        return value

    # the cluster

    def _connect(self) -> Any:
        """The driver's one cluster connection (made on first use, under a lock)."""
        with self._lock:
            if self._cluster is not None:
                return self._cluster
            if rados is None:
                raise BackendError("the rbd driver needs python3-rados and python3-rbd")
            # Rados.connect ignores its timeout argument: client_mount_timeout bounds it
            seconds = str(max(1, round(self.connect_timeout)))
            conf = {"rados_mon_op_timeout": seconds, "client_mount_timeout": seconds,
                    **CONNECTION_CONF}  # its handles do the copies of migrations
            if self.keyring:
                conf["keyring"] = self.keyring
            try:
                cluster = rados.Rados(conffile=self.conf, rados_id=self.user, conf=conf)
            except rados.Error as exc:
                raise BackendError(f"Backend {self.backend_name}: cannot read {self.conf}: "
                                   f"{exc}", exc) from exc
            try:
                cluster.connect(timeout=self.connect_timeout)
            except rados.Error as exc:
                cluster.shutdown()
                raise BackendError(f"Backend {self.backend_name}: cannot connect to Ceph as "
                                   f"client.{self.user}: {exc}", exc) from exc
            self._cluster = cluster
            return cluster

    @contextmanager
    def _ioctx(self) -> Iterator[Any]:
        try:
            ioctx = self._connect().open_ioctx(self.pool)
        except rados.Error as exc:
            raise BackendError(f"Backend {self.backend_name}: cannot open pool {self.pool}: "
                               f"{exc}", exc) from exc
        try:
            yield ioctx
        finally:
            ioctx.close()

    @contextmanager
    def _image(self, ioctx: Any, name: str, what: str = "Volume", *,
               read_only: bool = False) -> Iterator[Any]:
        try:
            image = rbd.Image(ioctx, name, read_only=read_only)
        except rbd.ImageNotFound as exc:
            raise BackendError(f"{what} image {self.pool}/{name} does not exist.", exc) from exc
        try:
            yield image
        finally:
            image.close()

    def close(self) -> None:
        """Drop the cluster connection (the next call reconnects)."""
        with self._lock:
            if self._cluster is not None:
                self._cluster.shutdown()
                self._cluster = None

    # the contract

    def info(self) -> DriverInfo:
        return DriverInfo(online_extend=True, multiattach=True, protocols=("rbd",), thin=True)

    def do_setup(self) -> None:
        """Connect, and check the pool is there (a missing pool is a configuration error
        found at start, not at the first create)."""
        with self._ioctx():
            pass

    def get_stats(self) -> BackendStats:
        """Raw cluster capacity and this pool's usage; provisioned = the images' sizes."""
        cluster = self._connect()
        try:
            cstats = cluster.get_cluster_stats()
        except rados.Error as exc:
            raise BackendError(f"Backend {self.backend_name}: no cluster stats: {exc}",
                               exc) from exc
        provisioned = 0
        with self._ioctx() as ioctx:
            used = int(ioctx.get_stats()["num_bytes"])
            for name in rbd.RBD().list(ioctx):
                try:
                    with self._image(ioctx, name, read_only=True) as image:
                        provisioned += int(image.size())
                except BackendError:  # removed while we listed
                    continue
        pool = PoolStats(
            name=self.pool,
            total_capacity_gb=_gb(int(cstats["kb"]) * 1024),
            free_capacity_gb=_gb(int(cstats["kb_avail"]) * 1024),
            allocated_capacity_gb=_gb(used),
            provisioned_capacity_gb=_gb(provisioned),
            thin_provisioning_support=True,
            thick_provisioning_support=False,
            max_over_subscription_ratio=self.max_over_subscription_ratio,
            reserved_percentage=self.reserved_percentage,
            multiattach=True,
        )
        return BackendStats(volume_backend_name=self.backend_name, vendor_name="Ceph",
                            driver_version="1.0", storage_protocol="ceph", pools=(pool,))

    def create_volume(self, volume: VolumeRef) -> ModelUpdate | None:
        """A new image of the volume's size; an existing one (an interrupted attempt) is
        replaced, so the volume never shows older data."""
        with self._ioctx() as ioctx:
            self._remove_image(ioctx, volume.name)
            rbd.RBD().create(ioctx, volume.name, volume.size_bytes, old_format=False,
                             features=self._features())
        return None

    def delete_volume(self, volume: VolumeRef) -> None:
        with self._ioctx() as ioctx:
            self._remove_image(ioctx, volume.name)

    def extend_volume(self, volume: VolumeRef, new_size_gb: int) -> None:
        """Resize in place (attached librbd clients see it at once); never shrinks."""
        with self._ioctx() as ioctx, self._image(ioctx, volume.name) as image:
            if new_size_gb * GiB > image.size():
                image.resize(new_size_gb * GiB)

    def create_snapshot(self, snapshot: SnapshotRef) -> ModelUpdate | None:
        """An RBD snapshot of the volume's image: point-in-time and O(1)."""
        with self._ioctx() as ioctx, self._image(ioctx, snapshot.volume.name) as image:
            if not _has_snap(image, snapshot.name):
                image.create_snap(snapshot.name)
        return None

    @contextmanager
    def staged_snapshot(self, snapshot: SnapshotRef) -> Iterator[Callable[[], None]]:
        """The pool and image opened (and the snapshot looked for) before the instant, so
        only the RBD snapshot itself is taken at it."""
        with self._ioctx() as ioctx, self._image(ioctx, snapshot.volume.name) as image:
            exists = _has_snap(image, snapshot.name)

            def take() -> None:
                if not exists:
                    image.create_snap(snapshot.name)
            yield take

    def delete_snapshot(self, snapshot: SnapshotRef) -> None:
        """Flatten the volumes cloned from it, then remove it."""
        with self._ioctx() as ioctx:
            try:
                image = rbd.Image(ioctx, snapshot.volume.name)
            except rbd.ImageNotFound:
                return  # the volume is gone, and its snapshots with it
            try:
                if _has_snap(image, snapshot.name):
                    self._remove_snap(ioctx, image, snapshot.name)
            finally:
                image.close()

    def create_volume_from_snapshot(self, volume: VolumeRef,
                                    snapshot: SnapshotRef) -> ModelUpdate | None:
        with self._ioctx() as ioctx:
            self._clone(ioctx, snapshot.volume.name, snapshot.name, volume, "Snapshot")
        return None

    def create_cloned_volume(self, volume: VolumeRef, source: VolumeRef) -> ModelUpdate | None:
        """Snapshot the source (``<clone>.clone_snap``) and clone that: O(1)."""
        snap = volume.name + CLONE_SNAP
        with self._ioctx() as ioctx:
            # a rerun: the old clone goes first, and with it the snapshot it hung off
            self._remove_image(ioctx, volume.name)
            with self._image(ioctx, source.name) as image:
                if not _has_snap(image, snap):
                    image.create_snap(snap)
            self._clone(ioctx, source.name, snap, volume, "Volume")
        return None

    def list_volume_names(self) -> set[str]:
        """The pool's images named like volumes (snapshots live inside them)."""
        with self._ioctx() as ioctx:
            return {n for n in rbd.RBD().list(ioctx) if n.startswith("volume-")}

    # exports: native, nothing to set up

    def initialize_connection(self, volume: VolumeRef, connector: Connector) -> RbdInfo:
        """Cinder's RBD connection info, plus the cephx key for the attaching caller only
        (`RbdInfo.to_wire` adds a keyring holding it)."""
        return RbdInfo(pool=self.pool, image=volume.name, monitors=self._monitors(),
                       auth_enabled=True, auth_username=self.user, key=self._key_of_user(),
                       cluster_name="ceph", discard=True, volume_id=volume.id,
                       access_mode="rw")

    def _monitors(self) -> tuple[tuple[str, int], ...]:
        """The monitors' msgr v1 addresses from the connection's mon_host (what QEMU's
        ``server`` list and os-brick expect; v2-only monitors are given as they are)."""
        raw = str(self._connect().conf_get("mon_host") or "")
        monitors: list[tuple[str, int]] = []
        for group in re.findall(r"\[[^\]]*\]|[^\s,;\[\]]+", raw):
            addrs = [a for a in group.strip("[]").split(",") if a]
            v1 = [a[3:] for a in addrs if a.startswith("v1:")]
            plain = [a for a in addrs if not a.startswith(("v1:", "v2:"))]
            v2 = [a[3:] for a in addrs if a.startswith("v2:")]
            pick = (v1 or plain or v2 or [None])[0]
            if pick is None:
                continue
            host, _, port = pick.rpartition(":")
            if not host or not port.isdigit():
                host, port = pick, "6789"
            monitors.append((host.strip("[]"), int(port)))
        if not monitors:
            raise BackendError(f"Backend {self.backend_name}: no monitor address in mon_host "
                               f"{raw!r}")
        return tuple(monitors)

    def _key_of_user(self) -> str | None:
        """The cephx key of our user, from the keyring this driver authenticates with."""
        paths = [self.keyring] if self.keyring else [
            p.strip() for p in str(self._connect().conf_get("keyring") or "").split(",")]
        section = f"[client.{self.user}]"
        for path in paths:
            try:
                with open(os.path.expandvars(path)) as fh:
                    lines = fh.read().splitlines()
            except OSError:
                continue
            current = None
            for line in lines:
                line = line.strip()
                if line.startswith("["):
                    current = line
                elif current == section and line.partition("=")[0].strip() == "key":
                    return line.partition("=")[2].strip()
        return None

    # data access

    def open_volume(self, volume: VolumeRef, mode: OpenMode = "rb") -> io.RawIOBase:
        """An `RbdHandle` over the image; it owns its ioctx, the cluster stays the driver's."""
        if mode not in ("rb", "r+b"):
            raise Invalid(f"Unsupported open mode {mode!r}.")
        writable = mode == "r+b"
        try:
            ioctx = self._connect().open_ioctx(self.pool)
        except rados.Error as exc:
            raise BackendError(f"cannot open pool {self.pool}: {exc}", exc) from exc
        try:
            image = rbd.Image(ioctx, volume.name, read_only=not writable)
        except rbd.ImageNotFound as exc:
            ioctx.close()
            raise BackendError(f"Volume image {self.pool}/{volume.name} does not exist.",
                               exc) from exc
        return RbdHandle(image, writable, f"rbd:{self.pool}/{volume.name}", (ioctx.close,))

    def close_volume(self, volume: VolumeRef, handle: io.RawIOBase) -> None:
        """Close; close flushes first, so a copy is durable once this returns."""
        handle.close()

    # layering

    def _features(self) -> int:
        """Layering for clones; exclusive-lock, object-map and fast-diff so that extents and
        stats need no per-object scan; deep-flatten so flattened children drop their
        parent's snapshots too."""
        return int(rbd.RBD_FEATURE_LAYERING | rbd.RBD_FEATURE_EXCLUSIVE_LOCK
                   | rbd.RBD_FEATURE_OBJECT_MAP | rbd.RBD_FEATURE_FAST_DIFF
                   | rbd.RBD_FEATURE_DEEP_FLATTEN)

    def _clone(self, ioctx: Any, parent: str, snap: str, volume: VolumeRef, what: str) -> None:
        """Make `volume` a COW child of `parent@snap` (protected first), grown to its size."""
        self._remove_image(ioctx, volume.name)  # what an interrupted attempt left
        try:
            image = rbd.Image(ioctx, parent)
        except rbd.ImageNotFound as exc:
            raise BackendError(f"{what} image {self.pool}/{parent} does not exist.",
                               exc) from exc
        try:
            if not _has_snap(image, snap):
                raise BackendError(f"{what} snapshot {self.pool}/{parent}@{snap} does not "
                                   f"exist.")
            size = image.size()
            if volume.size_bytes < size:
                raise Invalid(f"Requested size {volume.size_gb} GiB is smaller than the "
                              f"source ({size / GiB:g} GiB).")
            if not image.is_protected_snap(snap):
                image.protect_snap(snap)
        finally:
            image.close()
        rbd.RBD().clone(ioctx, parent, snap, ioctx, volume.name, features=self._features())
        if volume.size_bytes > size:
            with self._image(ioctx, volume.name) as child:
                child.resize(volume.size_bytes)

    def _remove_snap(self, ioctx: Any, image: Any, snap: str) -> None:
        """Remove `snap` of `image`, flattening its children first (again, if a child
        appeared meanwhile: unprotecting a snapshot with children is refused as busy)."""
        def attempt() -> None:
            if image.is_protected_snap(snap):
                image.set_snap(snap)
                try:
                    children = list(image.list_children2())
                finally:
                    image.set_snap(None)
                for child in children:
                    if not child.get("trash"):
                        self._flatten(child["pool"], child["image"])
                image.unprotect_snap(snap)
            image.remove_snap(snap)

        self._while_busy(attempt, f"snapshot {self.pool}/{image.get_name()}@{snap}")

    def _while_busy(self, action: Callable[[], None], what: str) -> None:
        """Run `action`, again while librbd says busy, for up to `BUSY_SECONDS`.

        Concurrent tasks of one family of images open each other briefly (a delete flattens
        the children of its snapshots, a child's delete drops its snapshot on the parent),
        and a crashed client's watch lasts until the OSD times it out; both pass.
        """
        deadline = time.monotonic() + BUSY_SECONDS
        pause = 0.05
        while True:
            try:
                action()
                return
            except rbd.ImageBusy as exc:
                if time.monotonic() >= deadline:
                    raise BackendError(f"The {what} is in use by another client; it cannot "
                                       f"be deleted now.", exc) from exc
            time.sleep(pause)
            pause = min(1.0, pause * 2)

    def _flatten(self, pool: str, name: str) -> None:
        log.info("backend %s: flattening %s/%s to free its parent", self.backend_name, pool,
                 name)
        try:
            ioctx = self._connect().open_ioctx(pool)
        except rados.ObjectNotFound:
            return
        try:
            with rbd.Image(ioctx, name) as child:
                child.flatten()
        except rbd.ImageNotFound:
            pass
        finally:
            ioctx.close()

    def _remove_image(self, ioctx: Any, name: str) -> None:
        """Remove image `name` (missing: done): its snapshots first (children flattened),
        then the image, then its ``.clone_snap`` on the parent it was cloned from."""
        try:
            image = rbd.Image(ioctx, name)
        except rbd.ImageNotFound:
            return
        try:
            try:
                parent = image.get_parent_image_spec()
            except rbd.ImageNotFound:
                parent = None
            for snap in list(image.list_snaps()):
                self._remove_snap(ioctx, image, snap["name"])
        finally:
            image.close()

        def remove() -> None:
            try:
                rbd.RBD().remove(ioctx, name)
            except rbd.ImageNotFound:
                pass

        self._while_busy(remove, f"image {self.pool}/{name}")
        if parent and parent.get("snap_name") == name + CLONE_SNAP:
            self._drop_clone_snap(parent["pool_name"], parent["image_name"],
                                  parent["snap_name"])

    def _drop_clone_snap(self, pool: str, parent: str, snap: str) -> None:
        """Remove a clone's snapshot from its parent, unless another child still uses it."""
        try:
            ioctx = self._connect().open_ioctx(pool)
        except rados.ObjectNotFound:
            return
        try:
            with rbd.Image(ioctx, parent) as image:
                if not _has_snap(image, snap):
                    return
                image.set_snap(snap)
                try:
                    busy = any(not c.get("trash") for c in image.list_children2())
                finally:
                    image.set_snap(None)
                if not busy:
                    if image.is_protected_snap(snap):
                        image.unprotect_snap(snap)
                    image.remove_snap(snap)
        except rbd.ImageNotFound:
            pass
        except rbd.ImageBusy:  # a new child meanwhile: the snapshot stays, and goes with
            log.info("backend %s: %s/%s@%s still has children; kept", self.backend_name,
                     pool, parent, snap)  # the parent's own delete
        finally:
            ioctx.close()


def _has_snap(image: Any, name: str) -> bool:
    return any(s["name"] == name for s in image.list_snaps())


def _gb(nbytes: int) -> float:
    return round(nbytes / GiB, 2)
