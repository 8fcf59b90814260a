"""The README's walk-through, run as a new user would paste it: from nothing to a guest with a
volume, snapshotted, extended and migrated while attached, and a second guest booted from a
volume, with nothing but the `openstack` CLI.

The block after ``<!-- walkthrough -->`` runs under ``bash -euo pipefail`` (each command must
succeed) in a directory of its own that links to this checkout's scripts and venvs, with its
own HOME (for ~/.config/openstack) and free ports instead of 8776 and 8774; nothing else of it
is changed. Afterwards the services it left running are asked what became of everything.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
from pathlib import Path

import httpx
import pytest

from blockyard.exec import stop
from tests.support.compute import GUEST_DIR, build_test_guest_disk, short_alias
from tests.support.daemons import processes_mentioning
from tests.support.server import free_port

ROOT = Path(__file__).resolve().parents[1]
LINKED = ("scripts", ".venv")

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the walk-through is run as root")


def walkthrough() -> str:
    """The shell block the README marks as the walk-through."""
    text = (ROOT / "README.md").read_text()
    found = re.search(r"<!-- walkthrough -->\n```sh\n(.*?)```", text, re.S)
    assert found, "README.md has no <!-- walkthrough --> block"
    return found[1]


def test_the_readme_walkthrough_works_as_written(tmp_path: Path) -> None:
    build_test_guest_disk()  # the guest it builds is then up to date: no download here
    # short: the guests' unix sockets live under $PWD/var/compute (at most 107 bytes)
    work = short_alias(tmp_path) / "w"
    (work / "var").mkdir(parents=True)
    for name in LINKED:
        if (ROOT / name).exists():
            (work / name).symlink_to(ROOT / name)
    (work / "var" / "test-guest").symlink_to(GUEST_DIR)
    volumes_port, compute_port = free_port(), free_port()
    script = (walkthrough().replace("127.0.0.1:8776", f"127.0.0.1:{volumes_port}")
              .replace("127.0.0.1:8774", f"127.0.0.1:{compute_port}"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("OS_")}
    env.update(HOME=str(tmp_path / "home"), PWD=str(work))  # PWD: bash keeps the short path
    # its output to a file: the services it leaves running hold their end open
    output = tmp_path / "walkthrough.log"
    with open(output, "wb") as sink:
        shell = subprocess.Popen(["bash", "-euxo", "pipefail", "-c", script], cwd=work,
                                 env=env, stdout=sink, stderr=subprocess.STDOUT,
                                 start_new_session=True)
    try:
        shell.wait(timeout=900)
        out = output.read_text(errors="replace")
        assert shell.returncode == 0, f"the walk-through failed:\n{out[-6000:]}"
        api = httpx.Client(base_url=f"http://127.0.0.1:{volumes_port}/v3",
                           headers={"X-Auth-Token": "admin:admin",
                                    "OpenStack-API-Version": "volume 3.71"}, timeout=30)
        volumes = api.get("/volumes/detail").json()["volumes"]
        # data1 outlived its guest: detached, grown, on the other backend; vm2's boot volume
        # went with vm2 (delete_on_termination)
        assert [(v["name"], v["status"], v["size"]) for v in volumes] == \
            [("data1", "available", 2)], volumes
        assert "@slow" in volumes[0]["os-vol-host-attr:host"]
        snaps = api.get("/snapshots").json()["snapshots"]
        assert [(s["name"], s["status"]) for s in snaps] == [("snap1", "available")]
        nova = httpx.Client(base_url=f"http://127.0.0.1:{compute_port}/v2.1",
                            headers={"X-Auth-Token": "admin:admin"}, timeout=30)
        assert nova.get("/servers").json()["servers"] == []
    finally:
        if shell.poll() is None:
            os.killpg(shell.pid, signal.SIGKILL)
        # the services it started in the background share its process group
        with_group = subprocess.run(["pgrep", "-g", str(shell.pid)], capture_output=True,
                                    text=True).stdout.split()
        for pid in with_group:
            stop(int(pid), 10.0)
        # guests run in sessions of their own: a walk-through that failed may leave some
        guests = processes_mentioning(str(work), "qemu-system")
        for pid in guests:
            stop(pid, 10.0)
    assert not guests, "a guest outlived the walk-through"
