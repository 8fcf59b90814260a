"""Exports outlive the control plane: restarting `blockyard serve` never interrupts a guest.

A real volume service exports file-backed volumes over NBD (qemu-nbd) and iSCSI (tgtd); a
real compute agent attaches them to a TCG guest (scripts/build-test-guest), in which a shell
loop per disk writes numbered 4 KiB blocks, each followed by an fsync, and logs every block
whose write and fsync succeeded (acknowledged). Meanwhile the service is restarted: SIGTERM,
kill -9, and once more kill -9 with the qemu-nbd killed too (QEMU's NBD client reconnects to
the one the service starts in its place). Afterwards every acknowledged block must be in the
volume's backing file, and the guest's kernel must have logged no I/O error.

Without a guest: a restart adopts the daemons (same processes, same connections), and exports
whose volume was detached behind the service's back are removed at the next start.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from blockyard.connectors import connector_for
from blockyard.exec import wait_until
from blockyard.model import ConnectionInfo, parse
from blockyard.targets.daemon import DaemonRecord
from blockyard.targets.tgt import TgtTarget
from tests.support.compute import (
    ComputeServer,
    GuestConsole,
    Nova,
    build_test_guest,
    compute_config,
    short_alias,
)
from tests.support.server import (
    BLOCKYARD,
    REPO,
    Api,
    Server,
    exported_backends_config,
    free_port,
)

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="tgtd needs root")

GiB = 1024**3
BLOCK = 4096
PROTOCOLS = ("nbd", "iscsi")


def _types(api: Api) -> None:
    for name in PROTOCOLS:
        r = api.post("/types", {"volume_type": {
            "name": name, "extra_specs": {"volume_backend_name": name}}})
        assert r.status_code == 200, r.text


def _volume(api: Api, protocol: str) -> str:
    r = api.post("/volumes", {"volume": {"size": 1, "volume_type": protocol}})
    assert r.status_code == 202, r.text
    return str(api.wait_volume(r.json()["volume"]["id"], "available")["id"])


def _backing(srv: Server, protocol: str, volume_id: str) -> Path:
    return srv.state_dir / "volumes" / protocol / f"volume-{volume_id}"


def _records(srv: Server) -> dict[str, DaemonRecord]:
    """The daemons the service recorded, by file name (tgtd.json, volume-<id>.json)."""
    found = {}
    for path in sorted((srv.state_dir / "targets").glob("*/*.json")):
        record = DaemonRecord.load(path)
        assert record is not None, path
        found[path.name] = record
    return found


def _run_dir(srv: Server) -> Path:
    """/run/blockyard/<hash> of the server (its NBD sockets live below)."""
    records = [r for name, r in _records(srv).items() if name.startswith("volume-")]
    sock = records[0].data["address"]["socket"]
    return Path(sock).parent.parent


# -------------------------------------------------------------------- a guest writing


class Writers:
    """One shell loop per disk in the guest: block N gets ``blk <N> <tag>`` (padded to 4 KiB)
    with dd conv=fsync; N goes to /tmp/acked-<tag> only once dd (write and fsync) succeeded."""

    def __init__(self, console: GuestConsole) -> None:
        self.console = console

    def start(self, tag: str, device: str) -> None:
        loop = (f"n=0; while [ ! -e /tmp/stop ]; do "
                f"printf 'blk %08d {tag}\\n' $n | "
                f"dd of={device} bs={BLOCK} seek=$n conv=sync,notrunc,fsync "
                f"2>>/tmp/dd-{tag} || {{ echo FAIL $n >>/tmp/acked-{tag}; break; }}; "
                f"echo $n >>/tmp/acked-{tag}; n=$((n+1)); done")
        self.console.check(f"rm -f /tmp/stop /tmp/acked-{tag} /tmp/ended-{tag}; "
                           f"touch /tmp/acked-{tag}; "
                           f"( {loop}; touch /tmp/ended-{tag} ) </dev/null >/dev/null 2>&1 &")

    def acked(self, tag: str) -> list[str]:
        return self.console.check(f"cat /tmp/acked-{tag}").split()

    def count(self, tag: str) -> int:
        return int(self.console.check(f"wc -l </tmp/acked-{tag}").strip())

    def wait_progress(self, tags: tuple[str, ...], more: int, timeout: float = 120.0) -> None:
        """Wait until every loop has acknowledged `more` blocks beyond where it is now."""
        goal = {tag: self.count(tag) + more for tag in tags}
        deadline = time.monotonic() + timeout
        while True:
            counts = {tag: self.count(tag) for tag in tags}
            for tag in tags:
                acked = self.acked(tag) if counts[tag] else []
                assert not acked or acked[-1] != "FAIL", f"{tag}: a write failed: {acked[-2:]}"
            if all(counts[t] >= goal[t] for t in tags):
                return
            assert time.monotonic() < deadline, f"writes stalled: {counts}, wanted {goal}"
            time.sleep(0.5)

    def stop(self, tags: tuple[str, ...]) -> None:
        """Ask every loop to stop, and wait until each has (its last block written)."""
        self.console.check("touch /tmp/stop")
        ended = " && ".join(f"test -e /tmp/ended-{tag}" for tag in tags)
        wait_until(lambda: self.console.run(ended)[0] == 0, 60.0,
                   what=f"the writers {tags} to stop")


@pytest.fixture
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, ComputeServer,
                                                                       Nova]]:
    tmp_path = short_alias(tmp_path_factory.mktemp("xr"))  # QEMU's sockets live below
    image = build_test_guest()
    agent_port = free_port()
    volumes = Server(tmp_path / "volumes", config=exported_backends_config(
        extra=f'[compute]\nurl = "http://127.0.0.1:{agent_port}/v2.1"\n')).start()
    _types(volumes.client())
    agent = ComputeServer(tmp_path / "agent", port=agent_port, config=compute_config(
        volumes.url, images={"tiny": image})).start()
    nova = agent.nova()
    try:
        yield volumes, agent, nova
    finally:
        for server in nova.request("GET", "/servers").json().get("servers", []):
            nova.delete(server["id"])
        nova.close()
        agent.stop()
        volumes.close()


def test_a_guest_writes_on_through_service_restarts(
        stack: tuple[Server, ComputeServer, Nova]) -> None:
    volumes, _, nova = stack
    api = volumes.client()
    server = nova.create("writer", "tiny")
    assert server["status"] == "ACTIVE", server
    console = GuestConsole(server["blockyard:console_socket"])
    writers = Writers(console)
    vids = {protocol: _volume(api, protocol) for protocol in PROTOCOLS}
    for protocol, vid in vids.items():
        r = nova.attach(server["id"], vid)
        assert r.status_code == 200, r.text
        writers.start(protocol, console.wait_disk(vid, size=GiB))
    writers.wait_progress(PROTOCOLS, 20)
    daemons = _records(volumes)
    assert sorted(daemons) == ["tgtd.json", f"volume-{vids['nbd']}.json"]

    volumes.stop()  # SIGTERM: the exports stay up, and the guest writes on meanwhile
    assert all(r.alive() for r in daemons.values())
    writers.wait_progress(PROTOCOLS, 10)
    volumes.start()
    writers.wait_progress(PROTOCOLS, 20)
    assert _records(volumes) == daemons  # adopted: the very same processes

    volumes.kill()  # kill -9
    writers.wait_progress(PROTOCOLS, 10)
    volumes.start()
    writers.wait_progress(PROTOCOLS, 20)
    assert _records(volumes) == daemons

    # the qemu-nbd dies with the service: the restarted service starts another one at the
    # same socket, and QEMU's NBD client reconnects to it (reconnect-delay)
    volumes.kill()
    nbd = daemons[f"volume-{vids['nbd']}.json"]
    os.kill(nbd.pid, signal.SIGKILL)
    wait_until(lambda: not nbd.alive(), 30.0, what=f"qemu-nbd (pid {nbd.pid}) to die")
    volumes.start()
    writers.wait_progress(PROTOCOLS, 20)
    replaced = _records(volumes)
    assert replaced["tgtd.json"] == daemons["tgtd.json"]
    assert replaced[f"volume-{vids['nbd']}.json"].pid != nbd.pid

    writers.stop(PROTOCOLS)
    errors = console.check("dmesg | grep -i -e 'I/O error' -e 'blk_update_request' "
                           "-e 'lost .* write' || true")
    assert errors.strip() == "", f"the guest saw I/O errors:\n{errors}"
    for protocol, vid in vids.items():
        acked = writers.acked(protocol)
        assert "FAIL" not in acked, f"{protocol}: {acked[-3:]}"
        assert len(acked) >= 100
        assert console.check(f"cat /tmp/dd-{protocol}").count("error") == 0
        nova.detach(server["id"], vid)
        api.wait_volume(vid, "available")
        data = _backing(volumes, protocol, vid).read_bytes()
        missing = [n for n in map(int, acked)
                   if not data[n * BLOCK:(n + 1) * BLOCK].startswith(
                       f"blk {n:08d} {protocol}\n".encode())]
        assert missing == [], f"{protocol}: acknowledged blocks not on the volume: {missing}"
    console.close()
    assert _records(volumes) == {"tgtd.json": daemons["tgtd.json"]}  # nothing exported


# -------------------------------------------------------------------- no guest


CONNECTOR = {"initiator": "iqn.2004-10.org.blockyard:survivor", "host": "survivor",
             "ip": "127.0.0.1", "platform": "x86_64", "os_type": "linux", "multipath": False}


def _attach(api: Api, volume_id: str) -> dict[str, Any]:
    r = api.post("/attachments", {"attachment": {
        "volume_uuid": volume_id, "instance_uuid": "11111111-2222-3333-4444-555555555555",
        "connector": CONNECTOR}})
    assert r.status_code == 200, r.text
    att: dict[str, Any] = r.json()["attachment"]
    assert api.post(f"/attachments/{att['id']}/action", {"os-complete": None}).status_code == 204
    return att


def _info(attachment: dict[str, Any]) -> ConnectionInfo:
    data = dict(attachment["connection_info"])
    return parse({"driver_volume_type": data.pop("driver_volume_type"), "data": data})


def _detach_behind_the_back(srv: Server, volume_id: str) -> None:
    """What the service would see had the volume been detached without it: no attachment,
    no persisted export, available."""
    with sqlite3.connect(srv.state_dir / "blockyard.db") as db:
        db.execute("delete from attachments where volume_id = ?", (volume_id,))
        db.execute("update volumes set provider_location = null, provider_auth = null, "
                   "status = 'available', attach_status = 'detached' where id = ?",
                   (volume_id,))


def test_restart_adopts_exports_and_removes_stale_ones(tmp_path: Path) -> None:
    srv = Server(tmp_path / "state", config=exported_backends_config())
    try:
        srv.start()
        api = srv.client()
        _types(api)
        vids = {protocol: _volume(api, protocol) for protocol in PROTOCOLS}
        stale = {protocol: _volume(api, protocol) for protocol in PROTOCOLS}
        atts = {p: _attach(api, vid) for p, vid in vids.items()}
        for vid in stale.values():
            _attach(api, vid)
        # a connection of each protocol, held open across the restarts
        handles = {}
        for p, att in atts.items():
            typed = _info(att)
            handles[p] = connector_for(typed, CONNECTOR, run_dir=str(tmp_path)).open(
                typed, "r+b")
        daemons = _records(srv)
        assert len(daemons) == 3  # tgtd and two qemu-nbd

        for restart in (srv.stop, srv.kill):
            restart()
            assert all(r.alive() for r in daemons.values())
            srv.start()
            assert _records(srv) == daemons
            for p, h in handles.items():
                h.seek(BLOCK * 7)
                h.write(f"after {restart.__name__} {p}".encode().ljust(BLOCK, b"\0"))
                h.flush()
        for h in handles.values():
            h.close()

        srv.stop()
        for vid in stale.values():
            _detach_behind_the_back(srv, vid)
        srv.start()
        api = srv.client()
        left = _records(srv)
        assert sorted(left) == ["tgtd.json", f"volume-{vids['nbd']}.json"]
        assert not daemons[f"volume-{stale['nbd']}.json"].alive()
        # the stale iSCSI target is gone from the adopted tgtd
        tgt = TgtTarget.recorded(str(srv.state_dir / "targets" / "iscsi"))
        assert tgt is not None
        assert tgt.exports() == [atts["iscsi"]["connection_info"]["target_iqn"]]
        for p, vid in vids.items():
            data = _backing(srv, p, vid).read_bytes()[BLOCK * 7:BLOCK * 8]
            assert data.rstrip(b"\0") == f"after kill {p}".encode()

        # detached as it should be: the last export goes, and with it the daemons and the
        # sockets' directory at the next stop
        run_dir = _run_dir(srv)
        assert run_dir.is_dir()
        for att in atts.values():
            assert api.delete(f"/attachments/{att['id']}").status_code == 200
        srv.stop()
        assert _records(srv) == {}
        assert not any(r.alive() for r in daemons.values())
        assert not run_dir.exists()
    finally:
        srv.close()


def test_stop_exports_is_the_full_stop(tmp_path: Path) -> None:
    """`blockyard stop-exports` ends what a stopped service left running; the next start
    exports the attached volumes again."""
    srv = Server(tmp_path / "state", config=exported_backends_config())
    try:
        srv.start()
        api = srv.client()
        _types(api)
        atts = {p: _attach(api, _volume(api, p)) for p in PROTOCOLS}
        daemons = _records(srv)
        run_dir = _run_dir(srv)
        srv.stop()
        assert all(r.alive() for r in daemons.values())
        done = subprocess.run([*BLOCKYARD, "stop-exports", "--config", str(srv.config_path),
                               "--state-dir", str(srv.state_dir)], cwd=REPO,
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        assert not any(r.alive() for r in daemons.values())
        assert _records(srv) == {} and not run_dir.exists()

        srv.start()
        assert sorted(_records(srv)) == ["tgtd.json", f"volume-{atts['nbd']['volume_id']}.json"]
        for att in atts.values():
            shown = srv.client().get(f"/attachments/{att['id']}").json()["attachment"]
            assert shown["status"] == "attached"
            typed = _info(att)  # the attacher's own copy: later views mask the secrets
            with connector_for(typed, CONNECTOR, run_dir=str(tmp_path)).open(typed, "rb") as h:
                assert h.size == GiB
    finally:
        srv.close()
