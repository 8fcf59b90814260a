"""The NBD target: one qemu-nbd process per exported volume.

Each exported volume gets its own ``qemu-nbd`` serving the volume's backing file (or device)
as the export ``volume-<id>``, with ``--persistent --shared=N`` so that several clients
(multiattach, reconnects) may connect, ``--discard=unmap``, and ``--cache=none --aio=native``
where the path takes O_DIRECT (``--cache=writeback --aio=threads`` elsewhere, e.g. tmpfs).

A qemu-nbd outlives the service: guests do their I/O through it, so a restart of `blockyard
serve` (SIGTERM or kill -9) must not end it. It is started with `blockyard.exec.spawn` (a
session of its own) and recorded at once (`blockyard.targets.daemon`: pid, argv, start
time, address); the next service adopts it when the record still describes the live process
and its socket answers, and starts a new one only when it is gone. `stop` therefore leaves
running exports alone; `teardown` is the deliberate full stop, `prune` ends the exports no
persisted export accounts for. qemu-nbd writes its pid file only once its socket listens, so
the pid file holding the child's pid is the readiness signal. Files live in two places:

    <state_dir>/volume-<id>.json      the record (durable: the state directory)
    <state_dir>/volume-<id>.pid       the pid file (qemu-nbd keeps it locked while it runs)
    <state_dir>/volume-<id>.log       qemu-nbd's output
    <state_dir>/volume-<id>.tls/keys.psk  the TLS-PSK identities allowed in (tls only)
    <run_dir>/volume-<id>.sock        the Unix socket (mode "unix"; a short path, as
                                      sun_path holds 107 bytes; removed when empty)

What protects an export (NBD itself has no initiator ACL):

* mode "unix": the socket sits in `run_dir`, a directory of mode 0700, so only the
  service's user (root) on this host can connect. `connectors` is bookkeeping here: any
  process of that user can reach every export, whichever connector it was exported to.
* mode "tcp": qemu-nbd listens on `bind` (loopback by default) on a port picked from
  `port_range`. Without tls anyone who can reach that address can read and write the volume.
  A port is free when it can be bound the way QEMU binds (SO_REUSEADDR): one in TIME_WAIT is.
* tls: TLS-PSK is required before the export is visible. Every connector (host name) gets its
  own identity (the host name) and its own 256-bit key, one ``identity:hexkey`` line in the
  volume's ``keys.psk``; `connection_info` gives a connector only its own key. GnuTLS reads
  the psk file at every handshake, so `export` and `unexport` take effect for the next
  connection without restarting qemu-nbd. A connection already established when its
  connector is unexported stays up until the client disconnects (qemu-nbd cannot drop a
  single client); `remove` ends all of them.

`Export.secrets` holds one entry per connector: ``"tls_psk_key:<host>": hexkey``.
"""

from __future__ import annotations

import logging
import os
import re
import secrets
import shutil
import socket
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from blockyard.errors import BackendError, ConfigError, Invalid
from blockyard.exec import Child, WaitTimeout, process_cmdline, spawn, stop, wait_until
from blockyard.model import Connector, Export, NbdInfo, VolumeRef
from blockyard.targets.daemon import DaemonRecord

log = logging.getLogger(__name__)

PROTOCOL = "nbd"
#: seconds between checks while qemu-nbd starts or stops (each takes a few tens of ms)
POLL = 0.002
SECRET_PREFIX = "tls_psk_key:"

Mode = Literal["unix", "tcp"]
Cache = Literal["auto", "none", "writeback"]

_SAFE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


@dataclass(frozen=True)
class _Running:
    """A live qemu-nbd of ours, as its command line tells."""

    pid: int
    address: dict[str, Any]
    tls: bool


class QemuNbdTarget:
    """Export volumes over NBD, one qemu-nbd per volume (see the module docstring)."""

    protocol = PROTOCOL
    #: an NBD export's size is negotiated once, at connect, and QEMU cannot grow an NBD node
    online_resize = False
    online_resize_blocker = "QEMU cannot grow an NBD disk"

    def __init__(
        self,
        state_dir: str | os.PathLike[str],
        *,
        run_dir: str | os.PathLike[str] | None = None,
        mode: Mode = "unix",
        bind: str = "127.0.0.1",
        advertise_host: str | None = None,
        port_range: tuple[int, int] = (10809, 10908),
        tls: bool = False,
        cache: Cache = "auto",
        max_clients: int = 16,
        qemu_nbd: str = "qemu-nbd",
        start_timeout: float = 10.0,
        stop_timeout: float = 5.0,
    ) -> None:
        if mode not in ("unix", "tcp"):
            raise ConfigError("targets.nbd.mode", f"must be 'unix' or 'tcp', not {mode!r}")
        if cache not in ("auto", "none", "writeback"):
            raise ConfigError("targets.nbd.cache",
                              f"must be 'auto', 'none' or 'writeback', not {cache!r}")
        low, high = port_range
        if not 0 < low <= high < 65536:
            raise ConfigError("targets.nbd.port_range",
                              f"{port_range!r} is not a range of TCP ports")
        if max_clients < 1:
            raise ConfigError("targets.nbd.max_clients", "must be at least 1")
        #: records, pid files, logs and TLS keys (durable)
        self.dir = Path(state_dir)
        #: the Unix sockets (a short path; the state dir itself when not given)
        self.run_dir = Path(run_dir) if run_dir is not None else self.dir
        self.mode: Mode = mode
        self.bind = bind
        self.advertise_host = advertise_host or bind
        self.port_range = (low, high)
        self.tls = tls
        self.cache: Cache = cache
        self.max_clients = max_clients
        self.qemu_nbd = qemu_nbd
        self.start_timeout = start_timeout
        self.stop_timeout = stop_timeout
        self._children: dict[str, Child] = {}
        #: guards the table of per-export locks, and stop()
        self._lock = threading.RLock()
        #: one lock per export: starting or stopping one qemu-nbd (tens of ms) never makes
        #: another volume's attach wait
        self._export_locks: dict[str, threading.RLock] = {}

    def _export_lock(self, name: str) -> threading.RLock:
        with self._lock:
            return self._export_locks.setdefault(name, threading.RLock())

    # the Target protocol

    def start(self) -> None:
        """Create the directories; running qemu-nbd processes are adopted as found."""
        for where in (self.dir, self.run_dir):
            where.mkdir(parents=True, exist_ok=True)
            os.chmod(where, 0o700)

    def stop(self) -> None:
        """Let go of the qemu-nbd processes: they serve attached volumes and keep running (the
        next start adopts them). Only what no live process uses is cleaned up, down to the
        socket directory itself when nothing is exported any more."""
        with self._lock:
            for name in self._names():
                with self._export_lock(name):
                    if self._running(name) is None:
                        self._forget(name)
            self._children.clear()
            self._remove_run_dir()

    def teardown(self) -> None:
        """Stop every qemu-nbd recorded here and remove their files: a deliberate full stop
        (attached consumers lose their disks)."""
        with self._lock:
            for name in self._names():
                with self._export_lock(name):
                    self._stop(name)
                    self._forget(name)
                    _unlink(self._log(name))
                    shutil.rmtree(self._tls_dir(name), ignore_errors=True)
            self._remove_run_dir()

    def prune(self, keep: Iterable[Export]) -> list[str]:
        """Remove the exports running here that none of `keep` (the persisted exports)
        describes; returns their names."""
        wanted = {e.data.get("export_name") for e in keep if e.protocol == PROTOCOL}
        gone = []
        for name in self._names():
            if name not in wanted:
                with self._export_lock(name):
                    self._discard(name)
                gone.append(name)
        return gone

    def validate_connector(self, connector: Connector) -> None:
        if not connector.host:
            raise Invalid("An NBD connector needs a host.")
        if not _SAFE.fullmatch(connector.host):
            raise Invalid(f"NBD connector host {connector.host!r} is not a plain host name "
                          "(letters, digits, '.', '_', '-').")

    def export(self, volume: VolumeRef, path: str, connector: Connector,
               existing: Export | None) -> Export:
        self.validate_connector(connector)
        host = str(connector.host)
        name = _export_name(volume, existing)
        with self._export_lock(name):
            self.start()
            running = self._adoptable(name)
            if running is not None:
                tls = running.tls
            elif existing is not None:
                tls = bool(existing.data.get("tls"))
            else:
                tls = self.tls
            keys = dict(existing.secrets) if existing else {}
            if tls:
                if existing is None:  # adopt what a crash may have left unpersisted
                    keys = {**self._read_psk(name), **keys}
                keys.setdefault(SECRET_PREFIX + host, secrets.token_hex(32))
                self._write_psk(name, keys)
            address = self._advertise(running) if running else self._serve(
                name, path, tls, existing.data if existing else None)
            connectors = list(existing.connectors) if existing else []
            if host not in connectors:
                connectors.append(host)
            return Export(PROTOCOL, {"export_name": name, **address, "tls": tls},
                          keys if tls else {}, tuple(connectors))

    def ensure(self, volume: VolumeRef, path: str, export: Export) -> Export:
        """Adopt the qemu-nbd still serving the export (a restart of the service leaves it
        running); start one at the persisted address only when it is gone."""
        name = _export_name(volume, export)
        tls = bool(export.data.get("tls"))
        with self._export_lock(name):
            self.start()
            if tls:
                self._write_psk(name, export.secrets)
            running = self._adoptable(name)
            if running is not None:
                log.info("adopted qemu-nbd %s (pid %d)", name, running.pid)
            address = self._advertise(running) if running else self._serve(
                name, path, tls, export.data)
            return Export(PROTOCOL, {**export.data, **address, "export_name": name},
                          dict(export.secrets), export.connectors)

    def unexport(self, volume: VolumeRef, export: Export, connector: Connector | None) -> Export:
        name = _export_name(volume, export)
        gone = set(export.connectors) if connector is None else {connector.host}
        connectors = tuple(c for c in export.connectors if c not in gone)
        keys = {k: v for k, v in export.secrets.items()
                if k.removeprefix(SECRET_PREFIX) not in gone}
        with self._export_lock(name):
            if self._tls_dir(name).is_dir():
                self._write_psk(name, keys)
        return Export(export.protocol, dict(export.data), keys, connectors)

    def remove(self, volume: VolumeRef, export: Export) -> None:
        name = _export_name(volume, export)
        with self._export_lock(name):
            self._discard(name)

    def connection_info(self, volume: VolumeRef, export: Export,
                        connector: Connector) -> NbdInfo:
        host = connector.host
        if host not in export.connectors:
            raise Invalid(f"Volume {volume.id} is not exported to {host!r}.")
        tls = bool(export.data.get("tls"))
        psk = None
        if tls:
            psk = export.secrets.get(SECRET_PREFIX + str(host))
            if psk is None:
                raise Invalid(f"Volume {volume.id} has no TLS key for {host!r}.")
        return NbdInfo(export_name=export.data["export_name"],
                       socket=export.data.get("socket"), host=export.data.get("host"),
                       port=export.data.get("port"), tls=tls,
                       tls_psk_identity=host if tls else None, tls_psk_key=psk,
                       volume_id=volume.id, access_mode="rw")

    def exports(self) -> list[str]:
        return [name for name in self._names() if self._running(name)]

    # paths

    def _sock(self, name: str) -> Path:
        return self.run_dir / f"{name}.sock"

    def _record(self, name: str) -> Path:
        return self.dir / f"{name}.json"

    def _pid(self, name: str) -> Path:
        return self.dir / f"{name}.pid"

    def _log(self, name: str) -> Path:
        return self.dir / f"{name}.log"

    def _tls_dir(self, name: str) -> Path:
        return self.dir / f"{name}.tls"

    def _names(self) -> list[str]:
        """The exports with a record here (their qemu-nbd running or not)."""
        if not self.dir.is_dir():
            return []
        return sorted(p.stem for p in self.dir.glob("volume-*.json"))

    def _forget(self, name: str) -> None:
        """Drop the record, pid file and socket of an export whose qemu-nbd is gone."""
        for path in (self._record(name), self._pid(name), self._sock(name)):
            _unlink(path)

    def _discard(self, name: str) -> None:
        """End the export entirely: its qemu-nbd (and every client), and all its files."""
        self._stop(name)
        self._forget(name)
        _unlink(self._log(name))
        shutil.rmtree(self._tls_dir(name), ignore_errors=True)

    def _remove_run_dir(self) -> None:
        """Remove the socket directory (and its per-state-dir parent) once empty."""
        if self.run_dir == self.dir:
            return
        for where in (self.run_dir, self.run_dir.parent):
            try:
                where.rmdir()
            except OSError:  # not empty (a live export, another target), or gone already
                return

    # processes

    def _running(self, name: str) -> _Running | None:
        """The live qemu-nbd serving `name`, as its record describes it: the recorded pid,
        still with the recorded command line and start time (a reused pid is not ours)."""
        record = DaemonRecord.load(self._record(name))
        if record is None or not record.alive():
            return None
        return _Running(record.pid, dict(record.data.get("address", {})),
                        bool(record.data.get("tls")))

    def _adoptable(self, name: str) -> _Running | None:
        """`_running`, and answering on its socket; a recorded qemu-nbd that is alive but
        does not answer is stopped (a new one takes its place)."""
        running = self._running(name)
        if running is None:
            return None
        if _answers(running.address):
            return running
        log.warning("qemu-nbd %s (pid %d) does not answer on %s; replacing it", name,
                    running.pid, running.address)
        self._stop(name)
        return None

    def _advertise(self, running: _Running) -> dict[str, Any]:
        """The address clients are given for a running qemu-nbd."""
        if "socket" in running.address:
            return {"socket": running.address["socket"]}
        bind = running.address["bind"]
        host = self.advertise_host if bind == self.bind else bind
        return {"host": host, "port": int(running.address["port"])}

    def _serve(self, name: str, path: str, tls: bool,
               wanted: dict[str, Any] | None) -> dict[str, Any]:
        """Start qemu-nbd for `name` at the `wanted` address (the persisted one), else at a
        new one; return the address it listens on."""
        self._stop(name)
        self._forget(name)
        if wanted and "socket" in wanted or not wanted and self.mode == "unix":
            sock = self._sock(name)
            if len(os.fsencode(sock)) > 107:  # sun_path holds 108 bytes with the NUL
                raise BackendError(f"Unix socket path {sock} is too long; use a shorter "
                                   "state_dir.")
            if not self._spawn(name, path, tls, [f"--socket={sock}"], {"socket": str(sock)}):
                raise BackendError(f"qemu-nbd for {name}: {sock} is in use.")
            return {"socket": str(sock)}
        ports = list(self._free_ports())
        if wanted and "port" in wanted:
            ports.insert(0, int(wanted["port"]))
        for port in ports:
            if self._spawn(name, path, tls, [f"--bind={self.bind}", f"--port={port}"],
                           {"bind": self.bind, "port": port}):
                return {"host": self.advertise_host, "port": port}
        low, high = self.port_range
        raise BackendError(f"No free port for {name} in {low}-{high} on {self.bind}.")

    def _spawn(self, name: str, path: str, tls: bool, listen: list[str],
               address: dict[str, Any]) -> bool:
        """Run qemu-nbd in a session of its own (it outlives the service), record it, and
        wait until it listens. False when its port was taken."""
        pid_file = self._pid(name)
        argv = [self.qemu_nbd, "--format=raw", *self._cache_args(path), "--discard=unmap",
                "--persistent", f"--shared={self.max_clients}", f"--export-name={name}",
                *listen, f"--pid-file={pid_file}"]
        if tls:
            argv += ["--object", f"tls-creds-psk,id=tls0,endpoint=server,"
                     f"dir={self._tls_dir(name)}", "--tls-creds=tls0"]
        argv.append(path)
        log_path = self._log(name)
        _unlink(log_path)
        proc: Child = spawn(argv, log_path=str(log_path))
        self._children[name] = proc
        # recorded before it is even ready: a crash from here on leaves a process the next
        # start can find (and adopt, or stop)
        DaemonRecord.of(proc.pid, argv, {"address": address, "tls": tls}).save(
            self._record(name))
        try:
            wait_until(lambda: _read_pid(pid_file) == proc.pid or proc.poll() is not None,
                       self.start_timeout, POLL, f"qemu-nbd for {name} to listen")
        except WaitTimeout:
            self._stop(name)
            self._forget(name)
            raise BackendError(f"qemu-nbd for {name} did not listen within "
                               f"{self.start_timeout} s: {_tail(log_path)}") from None
        if _read_pid(pid_file) != proc.pid:  # it exited without listening
            self._children.pop(name, None)
            self._forget(name)
            output = _tail(log_path)
            if "Address already in use" in output:
                return False
            raise BackendError(f"qemu-nbd for {name} exited with {proc.poll()}: {output}")
        log.info("qemu-nbd %s serves %s (pid %d)", name, path, proc.pid)
        return True

    def _cache_args(self, path: str) -> list[str]:
        direct = self.cache == "none" or self.cache == "auto" and _takes_o_direct(path)
        if direct:
            return ["--cache=none", "--aio=native"]
        return ["--cache=writeback", "--aio=threads"]

    def _free_ports(self) -> Iterator[int]:
        used = {r.address.get("port") for r in map(self._running, self._names()) if r}
        low, high = self.port_range
        for port in range(low, high + 1):
            if port not in used and _port_free(self.bind, port):
                yield port

    def _stop(self, name: str) -> None:
        """SIGTERM the qemu-nbd of `name`, SIGKILL it after `stop_timeout`; reap our child.
        Our child and an adopted qemu-nbd go the same way (`DaemonRecord.terminate`)."""
        record = DaemonRecord.load(self._record(name)) or self._unrecorded(name)
        child = self._children.pop(name, None)
        if record is not None:
            record.terminate(self.stop_timeout)
        if child is not None and (record is None or record.pid != child.pid):  # not recorded
            stop(child, self.stop_timeout, interval=POLL)  # unreaped, so its pid is still ours
        if child is not None:  # a zombie leader may still have threads exiting: reap it
            wait_until(lambda: child.poll() is not None, self.stop_timeout, POLL,
                       f"qemu-nbd for {name} (pid {child.pid}) to be reaped")

    def _unrecorded(self, name: str) -> DaemonRecord | None:
        """A qemu-nbd of `name` that no record names: the service died between spawning and
        recording it (so no export was handed out). It names itself in its pid file once it
        listens; the pid counts only while that process was started with this pid file."""
        pid = _read_pid(self._pid(name))
        argv = process_cmdline(pid) if pid is not None else []
        if pid is None or f"--pid-file={self._pid(name)}" not in argv:
            return None
        return DaemonRecord.of(pid, argv)

    # TLS-PSK

    def _read_psk(self, name: str) -> dict[str, str]:
        try:
            text = (self._tls_dir(name) / "keys.psk").read_text()
        except FileNotFoundError:
            return {}
        pairs = (line.split(":", 1) for line in text.splitlines() if ":" in line)
        return {SECRET_PREFIX + ident: key for ident, key in pairs}

    def _write_psk(self, name: str, keys: dict[str, str]) -> None:
        """Replace the volume's keys.psk atomically: one ``identity:hexkey`` per connector."""
        tls_dir = self._tls_dir(name)
        tls_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        lines = "".join(f"{k.removeprefix(SECRET_PREFIX)}:{v}\n"
                        for k, v in sorted(keys.items()) if k.startswith(SECRET_PREFIX))
        tmp = tls_dir / "keys.psk.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(lines)
        os.replace(tmp, tls_dir / "keys.psk")


def _export_name(volume: VolumeRef, export: Export | None = None) -> str:
    """The export's name: the one it was made under when it exists (it moves with the export
    when a migration of an attached volume swaps two volumes' identities), else one of the
    volume's id."""
    if export is not None and export.data.get("export_name"):
        return str(export.data["export_name"])
    if not _SAFE.fullmatch(volume.id):
        raise Invalid(f"Volume id {volume.id!r} cannot name an NBD export.")
    return f"volume-{volume.id}"


def _read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (FileNotFoundError, ValueError):
        return None


def _answers(address: dict[str, Any], timeout: float = 2.0) -> bool:
    """Does an NBD server answer at `address` (a socket path, or the bind address and port)?

    Connecting is the test; the server's greeting ("NBDMAGIC") is read when it comes, and
    anything else answering there is not our qemu-nbd. A server that has all its clients
    (``--shared``) accepts the connection but greets no one: that is still an answer.
    """
    if "socket" in address:
        family, where = socket.AF_UNIX, address["socket"]
    else:
        host = str(address["bind"])
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        where = (host, int(address["port"]))
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.settimeout(timeout)
        try:
            probe.connect(where)
        except OSError:
            return False
        try:
            greeting = probe.recv(8)
        except TimeoutError:
            return True
        except OSError:
            return False
    return greeting == b"NBDMAGIC"


def _takes_o_direct(path: str) -> bool:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECT)
    except OSError:
        return False
    os.close(fd)
    return True


def _port_free(host: str, port: int) -> bool:
    """Could qemu-nbd listen on `port`? Probed as QEMU binds (SO_REUSEADDR), so a port whose
    last connection is in TIME_WAIT counts as free, as it is for qemu-nbd."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True


def _unlink(path: Path) -> None:
    path.unlink(missing_ok=True)


def _tail(path: Path, size: int = 2000) -> str:
    try:
        return path.read_text(errors="replace")[-size:].strip()
    except FileNotFoundError:
        return ""
