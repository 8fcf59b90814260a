"""Migration and retype of attached (in-use) volumes: the volume service's half of Cinder's flow.

A real `blockyard serve` with two file backends `a` and `b` (local exports, so the volumes are
files), and a fake compute agent (tests/support/fake_swap.py) that does what the real one's
swap does against the real service: attach the temporary volume, copy the disk, complete the
migration, delete the old attachment. Checked: the data moves and the volume keeps its id,
its status (in-use) and an attachment to the same instance; the old object and the temporary
row go; compute giving up, refusing, unreachable or silent leave the source as it was; the
API's refusals; and a kill -9 of the service at every step of the flow.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from blockyard.connectors import connector_for
from blockyard.exec import process_cmdline
from blockyard.model import parse
from tests.support.consistency import assert_consistent, backend_dir, read_db, volume_file
from tests.support.daemons import processes_mentioning
from tests.support.fake_swap import CONNECTOR, FakeSwapCompute, data_extents
from tests.support.server import (
    Api,
    Server,
    exported_backends_config,
    free_port,
    free_tgt_control_port,
)
from tests.test_migration import (
    FP_ENV,
    MiB,
    create,
    file_sha,
    host_of,
    migrate,
    scatter,
    show,
    wait_migrated,
)

INSTANCE = "0b6c6a2e-8f51-4c36-9c3b-2a6f1c1f6f01"
OLD_CONNECTOR = CONNECTOR  # the same compute host swaps the disk


def config(compute_url: str, swap_timeout: float = 60) -> str:
    return f"""
[backends.a]
driver = "file"
volume_backend_name = "a"

[backends.b]
driver = "file"
volume_backend_name = "b"

[compute]
url = "{compute_url}"
timeout = 5
swap_timeout = {swap_timeout}
"""


class Stack:
    """The volume service and its fake compute, started together."""

    def __init__(self, make_server: type[Server], mode: str = "swap",
                 swap_timeout: float = 60, compute_url: str | None = None) -> None:
        port = free_port()
        self.compute = FakeSwapCompute(f"http://127.0.0.1:{port}/v3", mode=mode).start()
        self.srv: Server = make_server(config=config(
            compute_url or f"{self.compute.url}/v2.1", swap_timeout), port=port)
        self.mode = mode

    def start(self, **env: str) -> Api:
        self.srv.start(env=env)
        return self.srv.client()

    def close(self) -> None:
        self.compute.stop()


@pytest.fixture
def stack(make_server: type[Server]) -> Iterator[Stack]:
    made: list[Stack] = []

    def make(**kw: Any) -> Stack:
        s = Stack(make_server, **kw)
        made.append(s)
        return s

    yield make  # type: ignore[misc]
    for s in made:
        s.close()


def attach(c: Api, vid: str, instance: str = INSTANCE) -> str:
    """Attach as compute does (attachments API): returns the attachment's id."""
    r = c.post("/attachments", {"attachment": {"volume_uuid": vid, "instance_uuid": instance,
                                               "connector": OLD_CONNECTOR}},
               headers={"OpenStack-API-Version": "volume 3.44"})
    assert r.status_code == 200, r.text
    att = str(r.json()["attachment"]["id"])
    r = c.post(f"/attachments/{att}/action", {"os-complete": None},
               headers={"OpenStack-API-Version": "volume 3.44"})
    assert r.status_code == 204, r.text
    c.wait_volume(vid, "in-use")
    return att


def wait_settled(c: Api, vid: str) -> dict[str, Any]:
    """The volume once its migration settled: back in-use, migration_status final."""
    return wait_migrated(c, vid, status="in-use")


def prepare(c: Api, state_dir: Path) -> tuple[str, str, str, str]:
    """An attached volume on `a` with data: (id, old attachment, sha256, host of b)."""
    vid = create(c, 1)
    path = volume_file(state_dir, vid, "a")
    scatter(path, 16 * MiB, seed=11)
    att = attach(c, vid)
    return vid, att, file_sha(path), host_of(c, "b")


def check_moved(stack: Stack, c: Api, vid: str, old_att: str, sha: str) -> dict[str, Any]:
    v = wait_settled(c, vid)
    assert v["migration_status"] == "success", (v, stack.srv.log()[-3000:])
    assert v["id"] == vid and v["status"] == "in-use"
    assert v["os-vol-host-attr:host"].endswith("@b#b")
    swap = stack.compute.wait()
    assert swap.error is None, swap.error
    assert swap.completion == {"save_volume_id": vid}
    # the volume's attachment is compute's new one, to the same instance
    assert [(a["attachment_id"], a["server_id"]) for a in v["attachments"]] == [
        (swap.new_attachment, INSTANCE)]
    assert swap.old_attachment == old_att
    name_id = v["os-vol-mig-status-attr:name_id"]
    assert name_id == swap.new_volume
    assert file_sha(backend_dir(stack.srv.state_dir, "b") / f"volume-{name_id}") == sha
    st = assert_consistent(stack.srv.state_dir, c, log=stack.srv.log())
    assert list(st.volumes) == [vid], "the temporary row is left"
    assert list(backend_dir(stack.srv.state_dir, "a").iterdir()) == [], "old object left"
    return v


def check_untouched(stack: Stack, c: Api, vid: str, old_att: str, sha: str) -> dict[str, Any]:
    v = wait_settled(c, vid)
    assert v["migration_status"] == "error", v
    assert v["status"] == "in-use" and v["os-vol-host-attr:host"].endswith("@a#a")
    assert v["os-vol-mig-status-attr:name_id"] is None
    assert [a["attachment_id"] for a in v["attachments"]] == [old_att]
    assert file_sha(volume_file(stack.srv.state_dir, vid, "a")) == sha
    st = assert_consistent(stack.srv.state_dir, c, log=stack.srv.log())
    assert list(st.volumes) == [vid], "the temporary row is left"
    assert list(backend_dir(stack.srv.state_dir, "b").iterdir()) == [], "destination left"
    return v


def start(stack: Any, **kw: Any) -> tuple[Stack, Api]:
    """A new stack (the `stack` fixture's factory), started, with a type per backend."""
    s: Stack = stack(**kw)
    c = s.start()
    add_types(c)
    return s, c


def add_types(c: Api) -> None:
    for name in ("a", "b"):
        r = c.post("/types", {"volume_type": {
            "name": f"on-{name}", "extra_specs": {"volume_backend_name": name}}})
        assert r.status_code == 200, r.text


# ---------------------------------------------------------------------------- outcomes


def test_in_use_migration_moves_the_data_and_keeps_the_id(stack: Any) -> None:
    s, c = start(stack)
    vid, old_att, sha, b = prepare(c, s.srv.state_dir)
    r = migrate(c, vid, b)
    assert r.status_code == 202, r.text
    check_moved(s, c, vid, old_att, sha)
    # compute was asked once, as Nova's swap volume, with the service's identity
    (put,) = s.compute.seen
    swap = s.compute.swaps[0]
    assert put.path == f"/v2.1/servers/{INSTANCE}/os-volume_attachments/{vid}"
    assert swap.body == {"volumeAttachment": {"volumeId": swap.new_volume}}
    assert put.headers["x-openstack-nova-api-version"] == "2.1"
    assert put.headers["x-auth-token"] == "admin:admin"
    # the volume works on its new backend: detach, then delete removes the right file
    r = c.delete(f"/attachments/{swap.new_attachment}",
                 headers={"OpenStack-API-Version": "volume 3.44"})
    assert r.status_code == 200, r.text
    c.wait_volume(vid, "available")
    assert c.delete(f"/volumes/{vid}").status_code == 202
    c.wait_volume(vid, "deleted")
    assert list(backend_dir(s.srv.state_dir, "b").iterdir()) == []
    assert_consistent(s.srv.state_dir, c, log=s.srv.log())


def test_in_use_retype_on_demand_migrates_through_compute(stack: Any) -> None:
    s, c = start(stack)
    vid, old_att, sha, _b = prepare(c, s.srv.state_dir)
    r = c.post(f"/volumes/{vid}/action", {"os-retype": {"new_type": "on-b",
                                                        "migration_policy": "on-demand"}})
    assert r.status_code == 202, r.text
    assert show(c, vid)["status"] in ("retyping", "in-use")
    v = check_moved(s, c, vid, old_att, sha)
    assert v["volume_type"] == "on-b"


def test_compute_giving_up_leaves_the_source(stack: Any) -> None:
    s, c = start(stack, mode="fail")
    vid, old_att, sha, b = prepare(c, s.srv.state_dir)
    assert migrate(c, vid, b).status_code == 202
    check_untouched(s, c, vid, old_att, sha)
    swap = s.compute.wait()
    assert swap.error is None, swap.error
    assert swap.completion == {"save_volume_id": vid}


@pytest.mark.parametrize("how", ["refuse", "down", "silent"])
def test_compute_refusing_unreachable_or_silent_fails_the_migration(stack: Any,
                                                                    how: str) -> None:
    kw: dict[str, Any] = {"mode": "refuse" if how == "refuse" else "silent"}
    if how == "down":
        kw["compute_url"] = f"http://127.0.0.1:{free_port()}/v2.1"
    if how == "silent":
        kw["swap_timeout"] = 3
    s, c = start(stack, **kw)
    vid, old_att, sha, b = prepare(c, s.srv.state_dir)
    assert migrate(c, vid, b).status_code == 202
    check_untouched(s, c, vid, old_att, sha)
    log = s.srv.log()
    if how == "refuse":
        assert "compute refused to swap the disk of instance" in log
    elif how == "down":
        assert "could not be asked to swap" in log
    else:
        assert "did not complete the swap in 3 seconds" in log
    # the failure is told to the project, and the volume can migrate again
    r = c.get("/messages")
    assert any(m["resource_uuid"] == vid for m in r.json()["messages"]), r.text
    if how == "refuse":
        s.compute.mode = "swap"
        assert migrate(c, vid, b).status_code == 202
        s.compute.swaps.clear()
        v = wait_settled(c, vid)
        assert v["migration_status"] == "success", v


def test_neither_side_of_a_running_migration_can_be_deleted(stack: Any) -> None:
    """While compute swaps, the source and the temporary destination (which compute is
    attaching) refuse delete and force-delete, as Cinder refuses volumes that migrate."""
    s, c = start(stack, mode="silent", swap_timeout=20)
    vid, old_att, sha, b = prepare(c, s.srv.state_dir)
    assert migrate(c, vid, b).status_code == 202
    swap = s.compute.asked()
    for target in (vid, swap.new_volume):
        r = c.delete(f"/volumes/{target}")
        assert r.status_code == 400, r.text
        r = c.post(f"/volumes/{target}/action", {"os-force_delete": {}})
        assert r.status_code == 400, r.text
    check_untouched(s, c, vid, old_att, sha)  # compute never finished: it fails in the end


# ---------------------------------------------------------------------------- refusals


def test_refusals(stack: Any, make_server: type[Server]) -> None:
    s, c = start(stack)
    b = host_of(c, "b")
    # a multiattach volume attached twice: Nova cannot swap it
    r = c.post("/types", {"volume_type": {"name": "multi", "extra_specs": {
        "multiattach": "<is> True", "volume_backend_name": "a"}}})
    assert r.status_code == 200, r.text
    multi = create(c, 1, "multi")
    attach(c, multi)
    attach(c, multi, "0b6c6a2e-8f51-4c36-9c3b-2a6f1c1f6f02")
    before = show(c, multi)
    r = migrate(c, multi, b)
    assert r.status_code == 400, r.text
    assert r.json()["badRequest"]["message"] == (
        "Invalid volume: Swapping multi-attach volumes with more than one read/write "
        "attachment is not supported.")
    after = show(c, multi)
    assert (after["status"], after["migration_status"]) == (
        before["status"], before["migration_status"])
    # with a snapshot: still refused
    vid = create(c, 1)
    r = c.post("/snapshots", {"snapshot": {"volume_id": vid}})
    assert r.status_code == 202, r.text
    c.wait_snapshot(r.json()["snapshot"]["id"], "available")
    attach(c, vid)
    r = migrate(c, vid, b)
    assert r.status_code == 400 and "must not have snapshots" in r.text, r.text
    # attached without an instance (legacy os-attach to a host only)
    bare = create(c, 1)
    assert c.post(f"/volumes/{bare}/action", {"os-reserve": None}).status_code == 202
    r = c.post(f"/volumes/{bare}/action", {"os-attach": {"host_name": "h1",
                                                         "mountpoint": "/dev/vdc"}})
    assert r.status_code == 202, r.text
    r = migrate(c, bare, b)
    assert r.status_code == 400 and "not attached to an instance" in r.text, r.text
    assert not s.compute.seen
    assert_consistent(s.srv.state_dir, c, log=s.srv.log())
    # a service with no [compute] url cannot move an attached volume
    plain = make_server("plain", config=config("http://x/v2.1").replace(
        'url = "http://x/v2.1"\n', ""))
    plain.start()
    p = plain.client()
    add_types(p)
    one = create(p, 1)
    attach(p, one)
    r = migrate(p, one, host_of(p, "b"))
    assert r.status_code == 400, r.text
    assert "[compute] url is not configured" in r.json()["badRequest"]["message"]
    r = p.post(f"/volumes/{one}/action", {"os-retype": {"new_type": "on-b",
                                                        "migration_policy": "on-demand"}})
    assert r.status_code == 400 and "[compute] url is not configured" in r.text, r.text
    assert show(p, one)["status"] == "in-use"
    p.close()


def test_completion_checks(stack: Any) -> None:
    """os-migrate_volume_completion of an attached pair: only compute's, once asked."""
    s, c = start(stack, mode="silent", swap_timeout=30)
    vid, old_att, sha, b = prepare(c, s.srv.state_dir)
    assert migrate(c, vid, b).status_code == 202
    dest = s.compute.asked(30).new_volume
    # the temporary volume is hidden from lists, but found by id
    assert dest not in [v["id"] for v in c.get("/volumes").json()["volumes"]]
    assert c.get(f"/volumes/{dest}").json()["volume"]["status"] == "available"
    # the wrong way round
    r = c.post(f"/volumes/{dest}/action", {"os-migrate_volume_completion": {
        "new_volume": vid}})
    assert r.status_code == 400, r.text
    assert "Destination has migration_status" in r.text or "not mid-migration" in r.text
    # compute fails it: the source stays, the answer is the source's id, and again the same
    for _ in range(2):
        r = c.post(f"/volumes/{vid}/action", {"os-migrate_volume_completion": {
            "new_volume": dest, "error": True}})
        assert r.status_code == 200, r.text
        assert r.json() == {"save_volume_id": vid}
    # a success after the failure is refused
    r = c.post(f"/volumes/{vid}/action", {"os-migrate_volume_completion": {
        "new_volume": dest, "error": False}})
    assert r.status_code == 400, r.text
    assert "no longer waiting for compute" in r.text
    check_untouched(s, c, vid, old_att, sha)


# ---------------------------------------------------------------------------- crashes

#: fail point → how the migration ends after the restart
CRASH_POINTS = {
    "migrate_volume.before_run": "success",
    "migrate_volume.destination_ready": "success",
    "migrate_volume.before_swap": "error",  # compute never asked: the wait runs out
    "migrate_volume.swap_requested": "success",
    "migrate_volume.completed": "success",
    "migrate_volume.swap_completed": "success",
    "migrate_volume.after_settle": "success",
}


@pytest.mark.parametrize("point", list(CRASH_POINTS))
def test_crash(stack: Any, point: str) -> None:
    s, c = start(stack, swap_timeout=8)
    vid, old_att, sha, b = prepare(c, s.srv.state_dir)
    c.close()
    assert s.srv.stop() == 0
    c = s.start(**{FP_ENV: point})
    try:
        migrate(c, vid, b)
    except httpx.TransportError:
        pass
    s.srv.wait_exit(120)
    c.close()
    c = s.start()
    if CRASH_POINTS[point] == "success":
        check_moved(s, c, vid, old_att, sha)
    else:
        check_untouched(s, c, vid, old_att, sha)
    db = read_db(s.srv.state_dir)
    assert not db.tasks
    c.close()


# ---------------------------------------------------------------------------- exports


def _tgt_targets(control_port: int) -> str:
    return subprocess.run(
        ["tgtadm", "--control-port", str(control_port), "--lld", "iscsi", "--op", "show",
         "--mode", "target"], capture_output=True, text=True, check=True).stdout


def _nbd_servers(state_dir: Path) -> list[str]:
    """The volume file each live qemu-nbd of this service serves."""
    return sorted(os.path.basename(process_cmdline(pid)[-1])
                  for pid in processes_mentioning(str(state_dir), "qemu-nbd"))


@pytest.mark.parametrize("src,dst", [("nbd", "iscsi"), ("iscsi", "nbd2"), ("nbd", "nbd2")])
def test_in_use_migration_between_exports(make_server: type[Server], tmp_path: Path,
                                          src: str, dst: str) -> None:
    """The guest's connections are real exports (qemu-nbd, tgt): after the swap only the new
    object's export is left, under the volume, and its detach removes it."""
    port, control = free_port(), free_tgt_control_port()
    run_dir = tmp_path / "run"
    run_dir.mkdir()

    def mirror(swap: Any, old: dict[str, Any], new_info: dict[str, Any]) -> None:
        data = dict(new_info)
        info = parse({"driver_volume_type": data.pop("driver_volume_type"), "data": data})
        source = backend_dir(srv.state_dir, src) / f"volume-{swap.volume}"
        with connector_for(info, CONNECTOR, run_dir=str(run_dir)).open(info, "r+b") as h, \
                open(source, "rb") as f:
            for offset, length in data_extents(source):
                f.seek(offset)
                h.seek(offset)
                h.write(f.read(length))
            h.flush()

    compute = FakeSwapCompute(f"http://127.0.0.1:{port}/v3", mirror=mirror).start()
    try:
        srv = make_server(port=port, config=exported_backends_config(
            control_port=control, extra=f"""
[backends.nbd2]
driver = "file"
target = "nbd"
[compute]
url = "{compute.url}/v2.1"
swap_timeout = 60
"""))
        srv.start()
        c = srv.client()
        for name in ("iscsi", "nbd", "nbd2"):
            r = c.post("/types", {"volume_type": {"name": f"on-{name}", "extra_specs": {
                "volume_backend_name": name}}})
            assert r.status_code == 200, r.text
        vid = create(c, 1, f"on-{src}")
        path = backend_dir(srv.state_dir, src) / f"volume-{vid}"
        scatter(path, 8 * MiB, seed=12)
        sha = file_sha(path)
        old_att = attach(c, vid)
        assert _nbd_servers(srv.state_dir) == ([f"volume-{vid}"] if src == "nbd" else [])
        assert migrate(c, vid, host_of(c, dst)).status_code == 202
        v = wait_settled(c, vid)
        assert v["migration_status"] == "success", (v, srv.log()[-3000:])
        swap = compute.wait()
        assert swap.error is None, swap.error
        assert swap.old_attachment == old_att
        new_file = f"volume-{swap.new_volume}"
        assert file_sha(backend_dir(srv.state_dir, dst) / new_file) == sha
        assert not path.exists()
        # only the new object's export is left: the old one went with the old attachment
        assert _nbd_servers(srv.state_dir) == ([new_file] if dst.startswith("nbd") else [])
        targets = _tgt_targets(control)
        assert f"volume-{vid}" not in targets
        assert (f"volume-{swap.new_volume}" in targets) == (dst == "iscsi")
        assert_consistent(srv.state_dir, c, log=srv.log())
        # the guest's connection still reads the data (the export survived the swap)
        data = dict(swap.new_info)
        info = parse({"driver_volume_type": data.pop("driver_volume_type"), "data": data})
        with connector_for(info, CONNECTOR, run_dir=str(run_dir)).open(info, "rb") as h, \
                open(backend_dir(srv.state_dir, dst) / new_file, "rb") as f:
            for offset, length in data_extents(backend_dir(srv.state_dir, dst) / new_file):
                h.seek(offset)
                f.seek(offset)
                assert h.read(length) == f.read(length)
        # the volume's detach removes the new export
        r = c.delete(f"/attachments/{swap.new_attachment}",
                     headers={"OpenStack-API-Version": "volume 3.44"})
        assert r.status_code == 200, r.text
        c.wait_volume(vid, "available")
        assert _nbd_servers(srv.state_dir) == []
        assert "volume-" not in _tgt_targets(control)
        assert c.delete(f"/volumes/{vid}").status_code == 202
        c.wait_volume(vid, "deleted")
        assert_consistent(srv.state_dir, c, log=srv.log())
        c.close()
    finally:
        compute.stop()

