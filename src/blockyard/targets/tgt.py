"""iSCSI through tgt (the Linux SCSI target framework), as Cinder's `TgtAdm` target does it.

blockyard runs its own tgtd (``tgtd -f --control-port N --iscsi portal=ADDR:PORT``) and talks
to it with ``tgtadm -C N``, so it never touches a system tgtd or another blockyard's. One
volume is one target ``<iqn_prefix>volume-<id>`` with LUN 1 backed by the volume's path (tgtd
puts its controller on LUN 0), one CHAP account of its own, and one ACL per allowed initiator
name; never ``ALL``.

tgtd outlives the service: it runs in a session of its own and is recorded (pid, argv, start
time: `blockyard.targets.daemon`) in the state dir, `stop` leaves it running while it serves
targets, and the next `start` adopts it with its targets and the initiators' sessions, so a
restart of `blockyard serve` never interrupts a guest's I/O. `teardown` is the full stop.
tgtd itself keeps nothing across its own restart (a reboot), so the persisted `Export` is the
source of truth and `ensure` rebuilds a target from it: the same IQN, CHAP credentials and
ACLs, and the same tid when it is free; `prune` deletes the targets no persisted export
describes.

Facts about tgt 1.0.85 this module relies on (each was checked against the real daemon):

* tgtadm exits 22 (EINVAL) for every error tgtd reports, whatever it is; only the message on
  stderr says which ("can't find the target", "this account already exists", ...). It exits
  107 (ENOTCONN) when no tgtd listens on the control port.
* tgtd ignores SIGTERM, SIGINT and SIGQUIT. It exits on ``tgtadm --op delete --mode system``,
  which it refuses while any target exists; SIGKILL is the last resort.
* When tgtd cannot bind the portal it was given (the port is taken) it does not fail: it
  listens on 0.0.0.0:3260 and [::]:3260 instead. `start` therefore checks the portals tgtd
  reports and refuses to run a tgtd that is not on exactly the configured portal.
* tgtadm only takes a CHAP password on its command line (``--password``); it has no way to
  read it from stdin or a file. The password is therefore visible in ``ps`` for the few
  milliseconds tgtadm runs, the one place blockyard breaks exec's "no secrets in argv" rule.
  exec.run masks it (``redact``) in everything it logs, raises and returns.
* Deleting an account also unbinds it from every target.
"""

from __future__ import annotations

import logging
import os
import re
import secrets
import string
import threading
from collections.abc import Callable, Iterable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

from blockyard.errors import BackendError, Invalid
from blockyard.exec import (
    CommandFailed,
    Process,
    WaitTimeout,
    exited,
    process_gone,
    run,
    spawn,
    stop,
    wait_until,
)
from blockyard.model import Connector, Export, IscsiInfo, VolumeRef
from blockyard.targets.daemon import DaemonRecord, find_process

if TYPE_CHECKING:  # the handle exec.spawn returns; commands run only through blockyard.exec
    import subprocess

log = logging.getLogger(__name__)

PROTOCOL = "iscsi"
#: Cinder's default iscsi_target_prefix
DEFAULT_IQN_PREFIX = "iqn.2010-10.org.openstack:"
#: tgtd gives LUN 0 to its controller; the volume is LUN 1, as with Cinder's tgt target
VOLUME_LUN = 1

#: tgtadm's exit code for every error tgtd reports; the message tells them apart
TGTADM_EINVAL = 22
#: tgtadm's exit code when nothing listens on the control port
TGTADM_ENOTCONN = 107

_GONE_MESSAGES = (
    "can't find the target",
    "can't find the account",
    "can't find the logical unit",
    "this access control rule does not exist",
)
_EXISTS_MESSAGES = ("already exists",)

_USERNAME_LENGTH = 20  # as Cinder's generate_username
_PASSWORD_LENGTH = 16  # as Cinder's generate_password; CHAP initiators accept 12 to 16
_ALPHABET = string.ascii_letters + string.digits

#: what an initiator name may be (RFC 3720 iqn./eui./naa. forms); no commas or blanks, which
#: would split tgtadm's "key=value,key=value" request
_INITIATOR_NAME = re.compile(
    r"^(iqn\.\d{4}-\d{2}\.[^\s,]+|eui\.[0-9A-Fa-f]{16}|naa\.[0-9A-Fa-f]{16,32})$")

#: where tgtd puts its control socket and lock (``socket.N``, ``socket.N.lock``); it never
#: removes them itself
_IPC_DIR = "/var/run/tgtd"

#: the record of our tgtd (blockyard.targets.daemon), in the target's state dir
_RECORD = "tgtd.json"

_START_TIMEOUT = 10.0
_STOP_TIMEOUT = 10.0


# -- exit codes, named ------------------------------------------------------------------------


def _is_gone(exc: CommandFailed) -> bool:
    """tgtd says the target, account, LUN or ACL we are removing does not exist (anymore)."""
    return exc.returncode == TGTADM_EINVAL and any(m in exc.stderr for m in _GONE_MESSAGES)


def _already_exists(exc: CommandFailed) -> bool:
    """tgtd says the target, LUN, account, binding or ACL we are adding is already there."""
    return exc.returncode == TGTADM_EINVAL and any(m in exc.stderr for m in _EXISTS_MESSAGES)


def _no_daemon(exc: CommandFailed) -> bool:
    """No tgtd answers on the control port (not started yet, or gone)."""
    return exc.returncode == TGTADM_ENOTCONN


# -- one argv builder per tgtadm call -----------------------------------------------------------


def _tgtadm(control_port: int, *args: str) -> list[str]:
    return ["tgtadm", "--control-port", str(control_port), "--lld", "iscsi", *args]


def show_system_argv(port: int) -> list[str]:
    return _tgtadm(port, "--op", "show", "--mode", "system")


def show_portals_argv(port: int) -> list[str]:
    return _tgtadm(port, "--op", "show", "--mode", "portal")


def delete_system_argv(port: int) -> list[str]:
    return _tgtadm(port, "--op", "delete", "--mode", "system")


def show_targets_argv(port: int) -> list[str]:
    return _tgtadm(port, "--op", "show", "--mode", "target")


def new_target_argv(port: int, tid: int, iqn: str) -> list[str]:
    return _tgtadm(port, "--op", "new", "--mode", "target", "--tid", str(tid),
                   "--targetname", iqn)


def delete_target_argv(port: int, tid: int) -> list[str]:
    """--force: delete even with sessions logged in (a leftover session must not keep it)."""
    return _tgtadm(port, "--op", "delete", "--mode", "target", "--tid", str(tid), "--force")


def new_lun_argv(port: int, tid: int, path: str) -> list[str]:
    """A disk LUN served by plain pread/pwrite on the file or block device (bstype rdwr)."""
    return _tgtadm(port, "--op", "new", "--mode", "logicalunit", "--tid", str(tid),
                   "--lun", str(VOLUME_LUN), "--backing-store", path, "--bstype", "rdwr",
                   "--device-type", "disk")


def new_account_argv(port: int, user: str, password: str) -> list[str]:
    """The only tgtadm call with a secret on argv: tgtadm cannot take it any other way."""
    return _tgtadm(port, "--op", "new", "--mode", "account", "--user", user,
                   "--password", password)


def delete_account_argv(port: int, user: str) -> list[str]:
    return _tgtadm(port, "--op", "delete", "--mode", "account", "--user", user)


def show_accounts_argv(port: int) -> list[str]:
    return _tgtadm(port, "--op", "show", "--mode", "account")


def bind_account_argv(port: int, tid: int, user: str) -> list[str]:
    return _tgtadm(port, "--op", "bind", "--mode", "account", "--tid", str(tid), "--user", user)


def bind_initiator_argv(port: int, tid: int, initiator: str) -> list[str]:
    return _tgtadm(port, "--op", "bind", "--mode", "target", "--tid", str(tid),
                   "--initiator-name", initiator)


def unbind_initiator_argv(port: int, tid: int, initiator: str) -> list[str]:
    return _tgtadm(port, "--op", "unbind", "--mode", "target", "--tid", str(tid),
                   "--initiator-name", initiator)


def tgtd_argv(control_port: int, portal: str) -> list[str]:
    return ["tgtd", "--foreground", "--control-port", str(control_port),
            "--iscsi", f"portal={portal}"]


# -- what tgtd shows ----------------------------------------------------------------------------


@dataclass(frozen=True)
class LiveTarget:
    """One target as ``tgtadm --op show --mode target`` describes it."""

    tid: int
    iqn: str
    luns: dict[int, str] = field(default_factory=dict)  # LUN -> backing store path
    accounts: tuple[str, ...] = ()
    acls: tuple[str, ...] = ()
    initiators: tuple[str, ...] = ()  # of the sessions logged in (I_T nexus)


_TARGET_LINE = re.compile(r"^Target (\d+): (\S+)$")


def parse_targets(text: str) -> dict[str, LiveTarget]:
    """Parse the target listing into IQN -> LiveTarget.

    The listing nests by indentation: ``Target N: IQN`` at column 0, section headers
    ("LUN information:", "Account information:", "ACL information:", "I_T nexus
    information:") at 4, their entries at 8 and deeper.
    """
    found: dict[str, LiveTarget] = {}
    blocks = re.split(r"(?m)^(?=Target \d+: )", text)
    for block in blocks:
        lines = block.splitlines()
        match = _TARGET_LINE.match(lines[0]) if lines else None
        if match:
            target = _parse_target_block(int(match.group(1)), match.group(2), lines[1:])
            found[target.iqn] = target
    return found


def _parse_target_block(tid: int, iqn: str, lines: list[str]) -> LiveTarget:
    section = ""
    luns: dict[int, str] = {}
    lun: int | None = None
    accounts: list[str] = []
    acls: list[str] = []
    initiators: list[str] = []
    for line in lines:
        indent = len(line) - len(line.lstrip(" "))
        text = line.strip()
        if indent == 4:
            section = text
        elif section == "LUN information:" and text.startswith("LUN: "):
            lun = int(text.split(":", 1)[1])
            luns[lun] = ""
        elif section == "LUN information:" and text.startswith("Backing store path: "):
            if lun is not None:
                luns[lun] = text.split(": ", 1)[1]
        elif section == "Account information:" and indent == 8 and text:
            accounts.append(text.split()[0])
        elif section == "ACL information:" and indent == 8 and text:
            acls.append(text)
        elif section == "I_T nexus information:" and text.startswith("Initiator: "):
            initiators.append(text.split()[1])
    return LiveTarget(tid, iqn, luns, tuple(accounts), tuple(acls), tuple(initiators))


def parse_accounts(text: str) -> list[str]:
    """Parse ``Account list:`` and its indented user names."""
    return [line.strip() for line in text.splitlines()[1:] if line.strip()]


def parse_portals(text: str) -> list[str]:
    """Parse ``Portal: 127.0.0.1:3260,1`` lines into ``127.0.0.1:3260``."""
    return [line.split(None, 1)[1].rsplit(",", 1)[0]
            for line in text.splitlines() if line.startswith("Portal: ")]


# -- the target ---------------------------------------------------------------------------------


def _random(length: int) -> str:
    return "".join(secrets.choice(_ALPHABET) for _ in range(length))


class TgtTarget:
    """iSCSI exports served by a tgtd this object supervises (see the module docstring)."""

    protocol = PROTOCOL
    #: tgtd reads a LUN's size once, when the LUN is created, and reports that size to
    #: initiators for as long as the LUN exists
    online_resize = False
    online_resize_blocker = "tgt reports a LUN's size only as of when the LUN was created"

    def __init__(self, state_dir: str, *, control_port: int, portal: str = "127.0.0.1:3260",
                 iqn_prefix: str = DEFAULT_IQN_PREFIX,
                 chap: bool = True, timeout: float = 30.0) -> None:
        self.state_dir = state_dir
        self.portal = portal
        self.control_port = control_port
        self.iqn_prefix = iqn_prefix
        self.chap = chap
        self.timeout = timeout
        self.record_path = os.path.join(state_dir, _RECORD)
        self.log_path = os.path.join(state_dir, "tgtd.log")
        self._proc: subprocess.Popen[bytes] | None = None
        # tid allocation reads then writes tgtd's state: one change at a time per daemon
        self._lock = threading.Lock()

    # -- the daemon ---------------------------------------------------------------------------

    @classmethod
    def recorded(cls, state_dir: str) -> TgtTarget | None:
        """The target whose tgtd the record in `state_dir` describes (control port and
        portal as it was started), whatever the configuration says now; None without one."""
        record = DaemonRecord.load(Path(state_dir) / _RECORD)
        if record is None or "control_port" not in record.data:
            return None
        return cls(state_dir, control_port=int(record.data["control_port"]),
                   portal=str(record.data.get("portal", "")))

    def start(self) -> None:
        """Start our tgtd, or adopt the one our record names (a restart of the service leaves
        it running, with its targets and sessions), and wait until it answers on the control
        port and listens on exactly the configured portal."""
        os.makedirs(self.state_dir, exist_ok=True)
        pid = self._running_pid()
        if pid is None and self._answers():
            pid = self._adopt_unrecorded()
        if pid is None:
            pid = self._spawn()
            self._wait_ready(pid)
            self._check_portal()
            return
        wanted = tgtd_argv(self.control_port, self.portal)
        if self._recorded_argv() != tuple(wanted):
            # never stopped here: it may serve attached volumes
            raise BackendError(
                f"the tgtd of this state dir (pid {pid}) runs as "
                f"{' '.join(self._recorded_argv())!r}, not as configured "
                f"({' '.join(wanted)!r}); stop it first (blockyard stop-exports)")
        log.info("adopted tgtd (pid %d) on control port %d", pid, self.control_port)
        self._wait_ready(pid)

    def stop(self) -> None:
        """Let go of our tgtd at service shutdown. While it serves targets (attached volumes)
        it keeps running, and the next `start` adopts it; with none it is stopped."""
        pid = self._running_pid()
        if pid is None:
            self._forget()
            return
        try:
            serving = self._live_targets()
        except BackendError as exc:
            log.warning("tgtd (pid %d) did not list its targets; leaving it running: %s",
                        pid, exc.message)
            return
        if serving:
            log.info("leaving tgtd (pid %d) running: it serves %d target(s)", pid,
                     len(serving))
            self._proc = None
            return
        self.teardown()

    def teardown(self) -> None:
        """Stop our tgtd, whatever it serves. It exits only once it has no targets, so delete
        them first; it ignores SIGTERM, so SIGKILL is what remains when it does not exit in
        time."""
        pid = self._running_pid()
        if pid is not None:
            self._shut_down(pid)
        self._forget()

    def prune(self, keep: Iterable[Export]) -> list[str]:
        """Delete the targets (and their CHAP accounts) that none of `keep` describes."""
        wanted = {e.data.get("target_iqn") for e in keep if e.protocol == PROTOCOL}
        with self._lock:
            stale = {iqn: t for iqn, t in self._live_targets().items() if iqn not in wanted}
            for target in stale.values():
                self._delete_target(target.tid)
                for user in target.accounts:
                    self._delete_account(user)
        return sorted(stale)

    def _forget(self) -> None:
        for leftover in (f"socket.{self.control_port}", f"socket.{self.control_port}.lock"):
            Path(_IPC_DIR, leftover).unlink(missing_ok=True)
        self._proc = None
        Path(self.record_path).unlink(missing_ok=True)

    def _running_pid(self) -> int | None:
        """The pid in our record when that process is still the tgtd recorded (same command
        line and start time: a reused pid is not ours)."""
        record = DaemonRecord.load(Path(self.record_path))
        if record is None or not record.alive():
            return None
        return record.pid

    def _adopt_unrecorded(self) -> int:
        """A tgtd answers on our control port, but no record names it: ours when it runs
        exactly as we would start it (the service died between spawning and recording it),
        and then recorded; anyone else's is refused."""
        argv = tgtd_argv(self.control_port, self.portal)
        found = find_process(argv, {"control_port": self.control_port, "portal": self.portal})
        if found is None:
            raise BackendError(f"another tgtd already uses control port "
                               f"{self.control_port}; blockyard will not share it")
        found.save(Path(self.record_path))
        return found.pid

    def _recorded_argv(self) -> tuple[str, ...]:
        record = DaemonRecord.load(Path(self.record_path))
        return record.argv if record is not None else ()

    def _spawn(self) -> int:
        argv = tgtd_argv(self.control_port, self.portal)
        self._proc = spawn(argv, log_path=self.log_path)
        DaemonRecord.of(self._proc.pid, argv, {"control_port": self.control_port,
                                               "portal": self.portal}).save(
            Path(self.record_path))
        return self._proc.pid

    def _answers(self) -> bool:
        try:
            run(show_system_argv(self.control_port), timeout=self.timeout)
        except CommandFailed as exc:
            if _no_daemon(exc):
                return False
            raise
        return True

    def _wait_ready(self, pid: int) -> None:
        def ready() -> bool:
            if process_gone(pid):
                raise BackendError(f"tgtd exited while starting: {self._log_tail()}")
            return self._answers()

        try:
            wait_until(ready, _START_TIMEOUT, what=f"tgtd on control port {self.control_port}")
        except WaitTimeout as exc:
            raise BackendError(f"{exc.message}: {self._log_tail()}", exc) from None

    def _check_portal(self) -> None:
        portals = parse_portals(self._tgtadm(show_portals_argv(self.control_port)))
        if portals != [self.portal]:
            self.teardown()
            raise BackendError(
                f"tgtd could not listen on {self.portal} (listened on {', '.join(portals)} "
                f"instead; is the port taken?); stopped it: {self._log_tail()}")

    def _shut_down(self, pid: int) -> None:
        # our own child is reaped through its Popen, so Popen never reports it running
        proc: Process = self._proc if self._proc is not None and self._proc.pid == pid else pid
        try:
            self._ask_to_exit()
        except BackendError as exc:  # a wedged tgtd: SIGKILL below still ends it
            log.warning("tgtd (pid %s) did not take a clean shutdown: %s", pid, exc.message)
        try:
            wait_until(lambda: exited(proc), _STOP_TIMEOUT, what=f"tgtd (pid {pid}) to exit")
        except WaitTimeout:
            if not stop(proc, _STOP_TIMEOUT, force=True):  # it ignores SIGTERM
                raise BackendError(f"tgtd (pid {pid}) did not exit after SIGKILL") from None

    def _ask_to_exit(self) -> None:
        """``--op delete --mode system``, which tgtd refuses while it has targets."""
        for target in self._live_targets().values():
            self._delete_target(target.tid)
        self._tolerating(_no_daemon, delete_system_argv(self.control_port))

    def _log_tail(self, lines: int = 5) -> str:
        try:
            with open(self.log_path, errors="replace") as f:
                return " | ".join(f.read().splitlines()[-lines:])
        except FileNotFoundError:
            return "(no log)"

    # -- the contract ---------------------------------------------------------------------------

    def validate_connector(self, connector: Connector) -> None:
        """An iSCSI export is granted to an initiator name: without one there is nothing to
        put in the ACL (and tgt's "ALL" is never an option)."""
        if not connector.initiator:
            raise Invalid("The connector has no iSCSI initiator name ('initiator').")
        if not _INITIATOR_NAME.match(connector.initiator):
            raise Invalid(f"Invalid iSCSI initiator name: {connector.initiator!r}.")

    def export(self, volume: VolumeRef, path: str, connector: Connector,
               existing: Export | None) -> Export:
        """Create the target on first use, then allow `connector`'s initiator name."""
        self.validate_connector(connector)
        assert connector.initiator is not None  # validate_connector said so
        with self._lock:
            if existing is None:
                current = self._create(volume, path)
            else:
                current = self._rebuild(path, existing)
            return self._allow(current, connector.initiator)

    def ensure(self, volume: VolumeRef, path: str, export: Export) -> Export:
        """Re-create what tgtd forgot (all of it after a restart): same IQN and credentials,
        same tid when free, every persisted ACL."""
        with self._lock:
            current = self._rebuild(path, export)
            for initiator in current.connectors:
                self._bind_initiator(int(current.data["tid"]), initiator)
            return current

    def unexport(self, volume: VolumeRef, export: Export, connector: Connector | None) -> Export:
        """Drop `connector`'s ACL (None: every ACL). Sessions already logged in stay up until
        the initiator logs out; only new logins are refused."""
        with self._lock:
            live = self._live_targets().get(export.data["target_iqn"])
            if connector is None:
                leaving = set(export.connectors) | set(live.acls if live else ())
            else:
                leaving = {connector.initiator} if connector.initiator else set()
            if live is not None:
                for initiator in sorted(leaving & set(live.acls)):
                    self._unbind_initiator(live.tid, initiator)
            remaining = tuple(i for i in export.connectors if i not in leaving)
            return replace(export, connectors=remaining)

    def remove(self, volume: VolumeRef, export: Export) -> None:
        """Delete the target (even with sessions) and its CHAP account; gone already is fine."""
        with self._lock:
            live = self._live_targets().get(export.data["target_iqn"])
            users = set(live.accounts) if live else set()
            if export.secrets.get("auth_username"):
                users.add(export.secrets["auth_username"])
            if live is not None:
                self._delete_target(live.tid)
            for user in sorted(users):
                self._delete_account(user)

    def connection_info(self, volume: VolumeRef, export: Export,
                        connector: Connector) -> IscsiInfo:
        """Format the persisted export as Cinder's iSCSI connection_info; no tgtadm call."""
        secrets = export.secrets
        return IscsiInfo(target_iqn=export.data["target_iqn"],
                         target_portal=export.data["target_portal"],
                         target_lun=export.data["target_lun"], volume_id=volume.id,
                         access_mode="rw", auth_method=secrets.get("auth_method"),
                         auth_username=secrets.get("auth_username"),
                         auth_password=secrets.get("auth_password"))

    def exports(self) -> list[str]:
        """IQNs of the targets our tgtd has now."""
        return sorted(self._live_targets())

    # -- steps ----------------------------------------------------------------------------------

    def iqn_for(self, volume: VolumeRef) -> str:
        return f"{self.iqn_prefix}{volume.name}"

    def _create(self, volume: VolumeRef, path: str) -> Export:
        """First export of `volume`. A target with its IQN that no persisted Export describes
        (a crash came between tgtadm and the database) is discarded with its account: its
        credentials were never handed out."""
        iqn = self.iqn_for(volume)
        stale = self._live_targets().get(iqn)
        if stale is not None:
            self._delete_target(stale.tid)
            for user in stale.accounts:
                self._delete_account(user)
        creds: dict[str, str] = {}
        if self.chap:
            creds = {"auth_method": "CHAP", "auth_username": _random(_USERNAME_LENGTH),
                     "auth_password": _random(_PASSWORD_LENGTH)}
        draft = Export(PROTOCOL, {"target_iqn": iqn, "target_portal": self.portal,
                                  "target_lun": VOLUME_LUN, "tid": None}, creds)
        return self._rebuild(path, draft)

    def _rebuild(self, path: str, export: Export) -> Export:
        """Make tgtd hold the target `export` describes (target, LUN 1, CHAP account), adding
        only the pieces that are missing. ACLs are the caller's business. Returns `export`
        with the tid tgtd uses. A target created here is deleted again if a later step fails.
        """
        if "," in path:
            raise Invalid(f"tgt cannot export a path with a comma in it: {path!r}")
        iqn = export.data["target_iqn"]
        live = self._live_targets()
        with ExitStack() as undo:
            target = live.get(iqn)
            if target is None:
                tid = self._free_tid(live, export.data.get("tid"))
                self._tgtadm(new_target_argv(self.control_port, tid, iqn))
                undo.callback(self._delete_target, tid)
                target = LiveTarget(tid, iqn)
            tid = target.tid
            if VOLUME_LUN not in target.luns:
                self._tgtadm(new_lun_argv(self.control_port, tid, path))
            elif target.luns[VOLUME_LUN] != path:
                raise BackendError(f"target {iqn} serves {target.luns[VOLUME_LUN]}, "
                                   f"not {path}")
            user = export.secrets.get("auth_username")
            if user and user not in target.accounts:
                if self._add_account(user, export.secrets["auth_password"]):
                    undo.callback(self._delete_account, user)
                self._tgtadm(bind_account_argv(self.control_port, tid, user))
            undo.pop_all()
        return replace(export, data={**export.data, "tid": tid})

    def _allow(self, export: Export, initiator: str) -> Export:
        self._bind_initiator(int(export.data["tid"]), initiator)
        if initiator in export.connectors:
            return export
        return replace(export, connectors=(*export.connectors, initiator))

    @staticmethod
    def _free_tid(live: dict[str, LiveTarget], preferred: object) -> int:
        used = {t.tid for t in live.values()}
        if isinstance(preferred, int) and preferred > 0 and preferred not in used:
            return preferred
        return next(tid for tid in range(1, len(used) + 2) if tid not in used)

    def _live_targets(self) -> dict[str, LiveTarget]:
        return parse_targets(self._tgtadm(show_targets_argv(self.control_port)))

    def live_accounts(self) -> list[str]:
        """The CHAP account names our tgtd has (for leak checks)."""
        return parse_accounts(self._tgtadm(show_accounts_argv(self.control_port)))

    def _add_account(self, user: str, password: str) -> bool:
        """Create a CHAP account; False when it exists already (an earlier attempt of this
        very step made it, with the same password). The password is on tgtadm's argv (it
        has no other way in): `redact` keeps it out of every log line and error."""
        try:
            run(new_account_argv(self.control_port, user, password), timeout=self.timeout,
                redact=(password,))
            return True
        except CommandFailed as exc:
            if _already_exists(exc):
                return False
            raise

    def _bind_initiator(self, tid: int, initiator: str) -> None:
        self._tolerating(_already_exists, bind_initiator_argv(self.control_port, tid, initiator))

    def _unbind_initiator(self, tid: int, initiator: str) -> None:
        self._tolerating(_is_gone, unbind_initiator_argv(self.control_port, tid, initiator))

    def _delete_target(self, tid: int) -> None:
        self._tolerating(_is_gone, delete_target_argv(self.control_port, tid))

    def _delete_account(self, user: str) -> None:
        self._tolerating(_is_gone, delete_account_argv(self.control_port, user))

    def _tgtadm(self, argv: Sequence[str]) -> str:
        return run(argv, timeout=self.timeout).stdout

    def _tolerating(self, fine: Callable[[CommandFailed], bool], argv: Sequence[str]) -> None:
        """Run `argv`; a failure `fine` accepts means the work is done already."""
        try:
            self._tgtadm(argv)
        except CommandFailed as exc:
            if not fine(exc):
                raise

