"""A real single-node Ceph cluster on loopback, for the rbd backend's tests.

`CephCluster(workdir)` bootstraps one monitor, one manager and one BlueStore OSD in `workdir`
and runs them as children of the test process, in the foreground (``-f``): PID 1 here does not
reap orphans, so nothing is ever daemonized, and `stop()` kills and reaps every process it
started. Use it as a context manager or call `start()`/`stop()` from a session fixture.

What the tests (and blockyard's rbd driver) get: `conf` (a ceph.conf naming the monitor),
`client_keyring` for ``client.<client_id>`` (a non-admin cephx user whose caps cover only
`pool`, as in a real deployment), and `admin_keyring` for the tests' own checks.

Facts this relies on (measured on Debian 12's Ceph 16.2): the OSD binds 0.0.0.0 unless
``public_addr``/``cluster_addr`` say otherwise; ``bdev_aio_poll_ms=10`` saves ~2 s per start;
a size-1 pool needs ``mon_allow_pool_size_one``; and I/O to a PG that is not active yet hangs
forever, so readiness is a real object write and read under a short ``rados_osd_op_timeout``.
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
from pathlib import Path
from types import TracebackType
from typing import Any

import pytest

#: the binaries a cluster needs; tests skip (with this list as the reason) when one is missing
BINARIES = ("ceph-mon", "ceph-osd", "ceph-mgr", "ceph-authtool", "monmaptool")


def missing_packages() -> str | None:
    """Why a cluster cannot run here (None: it can): a missing binary or Python binding."""
    missing = [b for b in BINARIES if shutil.which(b) is None]
    try:
        import rados  # type: ignore[import-not-found]  # noqa: F401
        import rbd  # type: ignore[import-not-found]  # noqa: F401
    except ImportError:
        missing.append("python3-rados/python3-rbd")
    if missing:
        return f"ceph packages missing ({', '.join(missing)}): run scripts/setup.sh"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class CephError(RuntimeError):
    """The cluster did not come up; the message carries the daemons' log tails."""


class CephCluster:
    """One mon, one mgr, one OSD on a sparse file; a pool and a cephx client for it."""

    def __init__(self, workdir: Path, *, pool: str = "volumes", client_id: str = "blockyard",
                 osd_size_gb: int = 64) -> None:
        self.dir = Path(workdir)
        self.pool = pool
        self.client_id = client_id
        self.osd_size_gb = osd_size_gb
        self.fsid = str(uuid.uuid4())
        self.conf = self.dir / "ceph.conf"
        self.admin_keyring = self.dir / "ceph.client.admin.keyring"
        self.client_keyring = self.dir / f"ceph.client.{client_id}.keyring"
        self.mon_port_v2 = 0
        self.mon_port_v1 = 0
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        #: seconds the last start() took, and the last stop()
        self.start_seconds = 0.0
        self.stop_seconds = 0.0
        self._admin: Any = None
        self._bootstrapped = False
        #: how each daemon is started: name → argv (without -f and -c)
        self._daemons: dict[str, tuple[str, ...]] = {}

    # ------------------------------------------------------------------ public

    @property
    def mon_host(self) -> str:
        return f"127.0.0.1:{self.mon_port_v1}"

    def client_key(self) -> str:
        """The client's cephx key (base64), as its keyring holds it."""
        for line in self.client_keyring.read_text().splitlines():
            key, _, value = line.strip().partition("=")
            if key.strip() == "key":
                return value.strip()
        raise CephError(f"no key in {self.client_keyring}")

    def driver_options(self) -> dict[str, Any]:
        """Options of an ``rbd`` backend using this cluster as the non-admin client."""
        return {"pool": self.pool, "user": self.client_id, "conf": str(self.conf),
                "keyring": str(self.client_keyring), "rados_connect_timeout": 10}

    def backend_config(self, name: str = "rbd", target: str = "rbd") -> str:
        """A ``[backends.NAME]`` table of a volume service config on this cluster."""
        o = self.driver_options()
        return (f'[backends.{name}]\ndriver = "rbd"\ntarget = "{target}"\n'
                f'pool = "{o["pool"]}"\nuser = "{o["user"]}"\nconf = "{o["conf"]}"\n'
                f'keyring = "{o["keyring"]}"\n')

    def pids(self) -> list[int]:
        return [p.pid for p in self.procs.values()]

    def start(self, timeout: float = 60.0) -> CephCluster:
        """Create the cluster on first start; later starts run the same daemons on the same
        data and ports (what a host reboot does)."""
        t0 = time.monotonic()
        try:
            if self._bootstrapped:
                for name, argv in self._daemons.items():
                    self._spawn(name, *argv)
            else:
                self._bootstrap()
                self._bootstrapped = True
            self._wait_ready(t0 + timeout)
        except BaseException:
            self.stop()
            raise
        self.start_seconds = time.monotonic() - t0
        return self

    def stop(self) -> None:
        """SIGTERM every daemon, then SIGKILL what is left after a few seconds; reap all."""
        t0 = time.monotonic()
        if self._admin is not None:
            try:
                self._admin.shutdown()
            except Exception:  # noqa: BLE001 - the cluster is going away anyway
                pass
            self._admin = None
        for proc in reversed(self.procs.values()):  # OSD first: it may tell the mon
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 5.0
        for proc in self.procs.values():
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        self.procs.clear()
        self.stop_seconds = time.monotonic() - t0

    def __enter__(self) -> CephCluster:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def admin(self) -> Any:
        """A connected admin `rados.Rados` (for test checks and bootstrap commands)."""
        if self._admin is None:
            import rados

            cluster = rados.Rados(conffile=str(self.conf), name="client.admin",
                                  conf={"keyring": str(self.admin_keyring),
                                        "rados_osd_op_timeout": "10",
                                        "rados_mon_op_timeout": "10",
                                        "client_mount_timeout": "10"})
            cluster.connect(timeout=10)
            self._admin = cluster
        return self._admin

    def mon_command(self, prefix: str, inbuf: bytes = b"", **args: Any) -> bytes:
        ret, out, err = self.admin().mon_command(
            json.dumps({"prefix": prefix, "format": "json", **args}), inbuf, timeout=20)
        if ret != 0:
            raise CephError(f"ceph {prefix} {args}: {ret} {err}")
        return bytes(out)

    def logs(self) -> str:
        """The tails of the daemons' logs, for failure messages."""
        parts = []
        for log in sorted((self.dir / "log").glob("*.log")):
            lines = log.read_text(errors="replace").splitlines()[-15:]
            parts.append(f"--- {log.name}\n" + "\n".join(lines))
        for name, proc in self.procs.items():
            if proc.poll() is not None:
                parts.append(f"--- {name} exited with {proc.returncode}")
        return "\n".join(parts)

    # ------------------------------------------------------------------ bootstrap

    def _tool(self, *argv: str) -> None:
        done = subprocess.run(argv, capture_output=True, timeout=60)
        if done.returncode != 0:
            raise CephError(f"{' '.join(argv)} failed ({done.returncode}): "
                            f"{done.stderr.decode(errors='replace')}\n{self.logs()}")

    def _spawn(self, name: str, *argv: str) -> None:
        self._daemons[name] = argv
        out = open(self.dir / "log" / f"{name}.stdout", "ab")
        try:
            self.procs[name] = subprocess.Popen(
                [*argv, "-f", "-c", str(self.conf)], stdout=out, stderr=out,
                stdin=subprocess.DEVNULL)
        finally:
            out.close()

    def _write_conf(self) -> None:
        d = self.dir
        self.conf.write_text(f"""[global]
fsid = {self.fsid}
mon_host = [v2:127.0.0.1:{self.mon_port_v2},v1:127.0.0.1:{self.mon_port_v1}]
public_addr = 127.0.0.1
cluster_addr = 127.0.0.1
ms_bind_ipv4 = true
ms_bind_ipv6 = false
auth_cluster_required = cephx
auth_service_required = cephx
auth_client_required = cephx
run_dir = {d}/run
admin_socket = {d}/run/$name.asok
log_file = {d}/log/$name.log
pid_file = {d}/run/$name.pid
crash_dir = {d}/crash
log_to_stderr = false
err_to_stderr = false
osd_pool_default_size = 1
osd_pool_default_min_size = 1
mon_allow_pool_size_one = true
osd_pool_default_pg_autoscale_mode = off
osd_crush_chooseleaf_type = 0
mon_data_avail_warn = 2
mon_data_avail_crit = 1
mon_warn_on_pool_no_redundancy = false
rbd_default_features = 61

[client]
# a client whose OSD restarted keeps knocking at the old address until its op is "laggy"
# (objecter_timeout, 10 s, checked every objecter_tick_interval, 5 s) and it asks the mon for
# the new map: the first call after a cluster restart would wait ~12 s
objecter_timeout = 1
objecter_tick_interval = 0.5

[client.admin]
keyring = {self.admin_keyring}

[mon]
mon_data = {d}/mon/$cluster-$id
mon_allow_pool_delete = true
mon_osd_down_out_interval = 0
# new snapshot ids are osdmap changes: proposed every second by default, which would make
# every snapshot (and so every clone of a volume) take a second
paxos_propose_interval = 0.01
paxos_min_wait = 0.01

[mgr]
mgr_data = {d}/mgr/$cluster-$id
mgr_initial_modules = iostat

[osd]
osd_data = {d}/osd/$cluster-$id
osd_objectstore = bluestore
bluestore_block_path = {d}/osd-block-$id
bluestore_block_create = true
bluestore_block_size = {self.osd_size_gb << 30}
bluestore_fsck_on_mkfs = false
bdev_aio_poll_ms = 10
osd_memory_target = 1073741824
bluestore_cache_autotune = false
bluestore_cache_size = 134217728
osd_max_object_name_len = 256
osd_max_object_namespace_len = 64
osd_op_num_shards = 2
osd_op_num_threads_per_shard = 1
osd_fast_shutdown_notify_mon = false
# a killed client's watch on an image (a crashed QEMU) keeps it "in use" this long
osd_client_watch_timeout = 5
osd_mon_shutdown_timeout = 0.5
""")

    def _bootstrap(self) -> None:
        d = self.dir
        for sub in ("run", "log", "crash", "mon", "mgr/ceph-x", "osd/ceph-0"):
            (d / sub).mkdir(parents=True, exist_ok=True)
        self.mon_port_v2, self.mon_port_v1 = _free_port(), _free_port()
        self._write_conf()
        mon_keyring = d / "mon.keyring"
        self._tool("ceph-authtool", "--create-keyring", str(mon_keyring), "--gen-key",
                   "-n", "mon.", "--cap", "mon", "allow *")
        self._tool("ceph-authtool", "--create-keyring", str(self.admin_keyring), "--gen-key",
                   "-n", "client.admin", "--cap", "mon", "allow *", "--cap", "osd", "allow *",
                   "--cap", "mds", "allow *", "--cap", "mgr", "allow *")
        self._tool("ceph-authtool", str(mon_keyring), "--import-keyring",
                   str(self.admin_keyring))
        monmap = d / "monmap"
        self._tool("monmaptool", "--create", "--fsid", self.fsid, "--addv", "a",
                   f"[v2:127.0.0.1:{self.mon_port_v2},v1:127.0.0.1:{self.mon_port_v1}]",
                   str(monmap))
        self._tool("ceph-mon", "--mkfs", "-i", "a", "--monmap", str(monmap), "--keyring",
                   str(mon_keyring), "-c", str(self.conf))
        self._spawn("mon.a", "ceph-mon", "-i", "a")

        # the mgr: capacity stats (pool and cluster usage) come from its digest
        mgr_key = self.mon_command("auth get-or-create", entity="mgr.x",
                                   caps=["mon", "allow profile mgr", "osd", "allow *",
                                         "mds", "allow *"])
        (d / "mgr/ceph-x/keyring").write_text(_keyring_text("mgr.x", mgr_key))
        self._spawn("mgr.x", "ceph-mgr", "-i", "x")

        # the OSD: registered with its own key, then its BlueStore made on a sparse file
        osd_uuid = str(uuid.uuid4())
        secret = _gen_key()
        osd_id = json.loads(self.mon_command(
            "osd new", inbuf=json.dumps({"cephx_secret": secret}).encode(),
            uuid=osd_uuid))["osdid"]
        assert osd_id == 0, osd_id
        (d / "osd/ceph-0/keyring").write_text(f"[osd.0]\n\tkey = {secret}\n")
        self._tool("ceph-osd", "-i", "0", "--mkfs", "--osd-uuid", osd_uuid, "-c",
                   str(self.conf))
        self._spawn("osd.0", "ceph-osd", "-i", "0")

        # the pool and the non-admin client that blockyard runs as
        self.mon_command("osd pool create", pool=self.pool, pg_num=8, pgp_num=8)
        self.mon_command("osd pool application enable", pool=self.pool, app="rbd")
        client_key = self.mon_command(
            "auth get-or-create", entity=f"client.{self.client_id}",
            caps=["mon", "profile rbd", "osd", f"profile rbd pool={self.pool}",
                  "mgr", f"profile rbd pool={self.pool}"])
        self.client_keyring.write_text(_keyring_text(f"client.{self.client_id}", client_key))
        self.client_keyring.chmod(0o600)

    def _wait_ready(self, deadline: float) -> None:
        """Until a real object round trip works in the pool, as the client (short timeouts:
        I/O to a PG that is not active yet would hang forever)."""
        import rados

        last: Exception | None = None
        while time.monotonic() < deadline:
            for name, proc in self.procs.items():
                if proc.poll() is not None:
                    raise CephError(f"{name} exited with {proc.returncode}\n{self.logs()}")
            cluster = rados.Rados(conffile=str(self.conf), rados_id=self.client_id,
                                  conf={"keyring": str(self.client_keyring),
                                        "rados_osd_op_timeout": "2",
                                        "rados_mon_op_timeout": "2",
                                        "client_mount_timeout": "2"})
            try:
                cluster.connect(timeout=2)
                with cluster.open_ioctx(self.pool) as ioctx:
                    ioctx.write_full("blockyard-ready", b"ok")
                    if ioctx.read("blockyard-ready") == b"ok":
                        ioctx.remove_object("blockyard-ready")
                        self._wait_stats(cluster, deadline)
                        return
            except rados.Error as exc:
                last = exc
            finally:
                cluster.shutdown()
            time.sleep(0.2)
        raise CephError(f"cluster not ready in time ({last})\n{self.logs()}")

    def _wait_stats(self, cluster: Any, deadline: float) -> None:
        """Until the mgr reports capacity (get_cluster_stats is all zeros before its first
        digest), so the first get_stats of a backend is meaningful."""
        while time.monotonic() < deadline:
            if cluster.get_cluster_stats()["kb"] > 0:
                return
            time.sleep(0.2)
        raise CephError(f"the mgr reported no capacity in time\n{self.logs()}")


def _gen_key() -> str:
    """A cephx secret: base64 of a 12-byte header (type 1, created 0) and 16 random bytes."""
    import base64
    import struct

    raw = os.urandom(16)
    return base64.b64encode(struct.pack("<hiih", 1, 0, 0, len(raw)) + raw).decode()


def _keyring_text(entity: str, out: bytes) -> str:
    """A keyring file for `entity` from ``auth get-or-create``'s JSON reply."""
    reply = json.loads(out)
    key = reply[0]["key"] if isinstance(reply, list) else reply["key"]
    return f"[{entity}]\n\tkey = {key}\n"


# ---------------------------------------------------------------------- pytest

#: the one cluster of a test session, shared by every module that uses the `ceph` fixture
_shared: CephCluster | None = None


def _stop_shared() -> None:
    global _shared
    if _shared is not None:
        _shared.stop()
        _shared = None


@pytest.fixture(scope="session")
def ceph(request: pytest.FixtureRequest,
         tmp_path_factory: pytest.TempPathFactory) -> CephCluster:
    """The session's cluster, started on first use and stopped when pytest ends.

    Import this fixture into a test module. Skips (saying which) only when the Ceph packages
    are missing; a cluster that fails to start fails the test.
    """
    global _shared
    reason = missing_packages()
    if reason is not None:
        pytest.skip(reason)
    if _shared is None:
        cluster = CephCluster(tmp_path_factory.mktemp("ceph"))
        request.config.add_cleanup(_stop_shared)  # after the last test of every module
        atexit.register(_stop_shared)  # and if pytest dies before its cleanups
        cluster.start()
        print(f"\nceph: started in {cluster.start_seconds:.1f} s")
        _shared = cluster
    return _shared
