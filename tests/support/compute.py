"""A real `blockyard compute` process for tests, and a thin client of its Nova-style API."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from tests.support.server import Server


class ComputeServer(Server):
    """The compute agent: same life cycle as the volume service's `Server`."""

    command = "compute"

    @property
    def endpoint(self) -> str:
        return f"{self.url}/v2.1"

    def nova(self, project: str = "admin", user: str = "admin",
             version: str = "2.89") -> Nova:
        return Nova(self.endpoint, project=project, user=user, version=version)


def compute_config(volume_url: str, *, images: dict[str, dict[str, str]] | None = None,
                   detach_timeout: float = 5.0, detach_retries: int = 3) -> str:
    lines = [f'volume_url = "{volume_url}"', f"detach_timeout = {detach_timeout}",
             f"detach_retries = {detach_retries}", "", "[qemu]", 'accel = "tcg"', ""]
    for name, image in (images or {}).items():
        lines.append(f"[images.{name}]")
        lines += [f'{k} = "{v}"' for k, v in image.items()]
        lines.append("")
    return "\n".join(lines)


class Nova:
    """The compute API as `user:project`, with the waits the tests need."""

    def __init__(self, endpoint: str, *, project: str, user: str, version: str) -> None:
        self.http = httpx.Client(base_url=endpoint, timeout=120.0, headers={
            "X-Auth-Token": f"{user}:{project}",
            "OpenStack-API-Version": f"compute {version}",
        })

    def close(self) -> None:
        self.http.close()

    def request(self, method: str, path: str, body: Any = None) -> httpx.Response:
        return self.http.request(method, path, json=body)

    def adopt(self, name: str, qmp_socket: str | Path) -> str:
        r = self.request("POST", "/servers", {"server": {
            "name": name, "blockyard:qmp_socket": str(qmp_socket)}})
        assert r.status_code == 202, r.text
        return str(r.json()["server"]["id"])

    def create(self, name: str, image: str, flavor: str = "m1.tiny") -> dict[str, Any]:
        r = self.request("POST", "/servers", {"server": {
            "name": name, "imageRef": image, "flavorRef": flavor}})
        assert r.status_code == 202, r.text
        return self.show(r.json()["server"]["id"])

    def show(self, server_id: str) -> dict[str, Any]:
        r = self.request("GET", f"/servers/{server_id}")
        assert r.status_code == 200, r.text
        return dict(r.json()["server"])

    def attach(self, server_id: str, volume_id: str, **extra: Any) -> httpx.Response:
        return self.request("POST", f"/servers/{server_id}/os-volume_attachments",
                            {"volumeAttachment": {"volumeId": volume_id, **extra}})

    def attachments(self, server_id: str) -> list[dict[str, Any]]:
        r = self.request("GET", f"/servers/{server_id}/os-volume_attachments")
        assert r.status_code == 200, r.text
        return list(r.json()["volumeAttachments"])

    def detach(self, server_id: str, volume_id: str, *, wait: float = 60.0) -> None:
        """DELETE (202), then wait until the mapping is gone."""
        r = self.request("DELETE", f"/servers/{server_id}/os-volume_attachments/{volume_id}")
        assert r.status_code == 202, r.text
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if not any(a["volumeId"] == volume_id for a in self.attachments(server_id)):
                return
            time.sleep(0.02)
        raise AssertionError(f"volume {volume_id} still attached to {server_id}")

    def delete(self, server_id: str) -> None:
        r = self.request("DELETE", f"/servers/{server_id}")
        assert r.status_code in (204, 404), r.text


def clouds_yaml(agent: ComputeServer, volumes: Server) -> str:
    """The README's noauth clouds.yaml entry for both services. Its auth endpoint is the
    volume API: the CLI discovers an identity v3 there for commands that insist on one
    (`server list`, `volume list`), which the agent's /v2.1 is not."""
    return f"""clouds:
  blockyard:
    auth_type: admin_token
    auth:
      token: "admin:admin"
      endpoint: {volumes.endpoint}
    compute_endpoint_override: {agent.endpoint}
    image_endpoint_override: {agent.url}/image
    block_storage_endpoint_override: {volumes.endpoint}
    volume_endpoint_override: {volumes.endpoint}
    compute_api_version: "2.89"
    volume_api_version: "3"
"""


def openstack(agent: ComputeServer, volumes: Server, *args: str,
              timeout: float = 120.0) -> str:
    """The real `openstack` CLI against both services, through `clouds_yaml` (noauth, the
    form the README shows); its stdout, or an AssertionError with its stderr."""
    clouds = agent.state_dir.parent / "clouds.yaml"
    clouds.write_text(clouds_yaml(agent, volumes))
    env = {k: v for k, v in os.environ.items() if not k.startswith("OS_")}
    env.update(OS_CLIENT_CONFIG_FILE=str(clouds), OS_CLOUD="blockyard")
    done = subprocess.run([str(Path(sys.executable).parent / "openstack"), *args],
                          capture_output=True, text=True, env=env, timeout=timeout)
    assert done.returncode == 0, f"openstack {' '.join(args)}: {done.stderr}"
    return done.stdout


GUEST_DIR = Path(__file__).resolve().parents[2] / "var" / "test-guest"


def build_test_guest() -> dict[str, str]:
    """The tiny guest of scripts/build-test-guest, as an image table for the agent's config."""
    import subprocess

    script = Path(__file__).resolve().parents[2] / "scripts" / "build-test-guest"
    subprocess.run([str(script), str(GUEST_DIR)], check=True, capture_output=True)
    # acpi=noirq: without it the guest spends ~170 ms routing each hot-plugged disk's
    # interrupt through ACPI (a plug takes 0.2-0.6 s instead of ~0.03 s); cryptomgr.notests
    # skips the kernel's crypto self-tests (~0.3 s of boot)
    return {"kernel": str(GUEST_DIR / "vmlinuz"), "initrd": str(GUEST_DIR / "initrd.img"),
            "append": "console=ttyS0 quiet panic=-1 cryptomgr.notests acpi=noirq"}


def build_test_guest_disk() -> dict[str, str]:
    """The same guest as a disk a BIOS boots (scripts/build-test-guest's disk.raw: FAT with
    syslinux, the kernel and initrd, the same kernel command line), as an image for the
    agent's config: ``{"disk": ...}``, what block_device_mapping_v2's source_type image
    copies into a volume. Apart from `build_test_guest` so that the kernel-booted guests of
    the other tests keep having no root disk."""
    build_test_guest()
    return {"disk": str(GUEST_DIR / "disk.raw")}


class GuestConsole:
    """The test guest's serial console: a line protocol (see scripts/build-test-guest).

    `run(cmd)` sends one command line and returns (exit status, output); the guest ends each
    command's output with ``GUEST-DONE <status>``."""

    def __init__(self, path: str, *, boot_timeout: float = 60.0) -> None:
        import socket

        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        deadline = time.monotonic() + 10
        while True:
            try:
                self._sock.connect(path)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        self._buf = b""
        self._read_until(b"GUEST-READY\n", boot_timeout)

    def close(self) -> None:
        self._sock.close()

    def _read_until(self, marker: bytes, timeout: float) -> bytes:
        self._sock.settimeout(timeout)
        deadline = time.monotonic() + timeout
        while marker not in self._buf:
            if time.monotonic() > deadline:
                raise TimeoutError(f"guest console: no {marker!r} in {self._buf[-500:]!r}")
            chunk = self._sock.recv(65536)
            if not chunk:
                raise ConnectionError("guest console closed")
            self._buf += chunk
        head, _, self._buf = self._buf.partition(marker)
        return head

    def run(self, command: str, timeout: float = 60.0) -> tuple[int, str]:
        self._sock.sendall(command.encode() + b"\n")
        out = self._read_until(b"GUEST-DONE ", timeout)
        status = self._read_until(b"\n", timeout)
        return int(status), out.decode(errors="replace")

    def check(self, command: str, timeout: float = 60.0) -> str:
        status, out = self.run(command, timeout)
        assert status == 0, f"{command!r} exited {status}: {out}"
        return out

    def disks(self) -> dict[str, tuple[str, int]]:
        """serial → (name, size in bytes) of the guest's virtio disks."""
        found = {}
        for line in self.check("lsblk-serial").splitlines():
            name, size, *serial = line.split()
            found[serial[0] if serial else ""] = (name, int(size))
        return found

    def wait_disk(self, serial: str, *, size: int | None = None,
                  timeout: float = 30.0) -> str:
        """Poll until the guest has a disk with `serial` (and `size`); its /dev name."""
        deadline = time.monotonic() + timeout
        while True:
            disk = self.disks().get(serial[:20])
            if disk and (size is None or disk[1] == size):
                return f"/dev/{disk[0]}"
            if time.monotonic() > deadline:
                raise AssertionError(f"guest has no disk {serial} (size {size}): "
                                     f"{self.disks()}")
            time.sleep(0.05)

    def wait_disk_gone(self, serial: str, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while serial[:20] in self.disks():
            if time.monotonic() > deadline:
                raise AssertionError(f"guest still has disk {serial}")
            time.sleep(0.05)


def short_alias(path: Path) -> Path:
    """A short path to the directory `path` (a symlink in /tmp, removed at exit), to put an
    agent's state dir under: its guests' QMP and console sockets live below it, a Unix socket
    path holds at most 107 bytes, and pytest's temporary directories (one level deeper under
    pytest-xdist, popen-gwN/) leave too little room for `agent/instances/<uuid>/console.sock`."""
    import atexit
    import shutil
    import tempfile

    holder = Path(tempfile.mkdtemp(prefix="by-", dir="/tmp"))
    atexit.register(shutil.rmtree, holder, ignore_errors=True)
    link = holder / "d"
    link.symlink_to(path, target_is_directory=True)
    return link
