"""A real `blockyard serve` process for tests: free loopback port, temp state dir, real kill."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[2]
BLOCKYARD = [sys.executable, "-m", "blockyard.cli"]


def free_tgt_control_port() -> int:
    """A tgtd control port (tgtd takes at most 32767) whose unix socket no tgtd has."""
    import random

    while True:
        port = random.randint(10000, 32000)
        if not Path(f"/var/run/tgtd/socket.{port}").exists():
            return port


def exported_backends_config(*, local: bool = False, control_port: int | None = None,
                             extra: str = "") -> str:
    """A volume service config with file backends named after their export: `iscsi` (tgt on
    a free portal and control port), `nbd` (qemu-nbd), and `local` when asked; `extra` is
    appended (quota, compute, more backends)."""
    local_backend = '[backends.local]\ndriver = "file"\n' if local else ""
    return f"""{local_backend}[backends.iscsi]
driver = "file"
target = "iscsi"
[backends.nbd]
driver = "file"
target = "nbd"
[targets.iscsi]
portal = "127.0.0.1:{free_port()}"
control_port = {control_port or free_tgt_control_port()}
{extra}"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    """One server process. `start()` waits until the API answers; `kill()` is a real SIGKILL."""

    #: the `blockyard` subcommand this process runs
    command = "serve"

    def __init__(self, state_dir: Path, *, config: str | None = None,
                 env: dict[str, str] | None = None, port: int | None = None) -> None:
        self.state_dir = state_dir
        self.port = port or free_port()
        self.config_path: Path | None = None
        if config is not None:
            self.config_path = state_dir.parent / f"{state_dir.name}.toml"
            self.config_path.write_text(config)
        self.env = dict(os.environ, **(env or {}))
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = state_dir.parent / f"{state_dir.name}.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def endpoint(self) -> str:
        return f"{self.url}/v3"

    def start(self, *, env: dict[str, str] | None = None, timeout: float = 30.0) -> Server:
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(self._argv(), stdout=log, stderr=log, cwd=REPO,
                                     env=dict(self.env, **(env or {})))
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log()}")
            try:
                if httpx.get(self.url + "/", timeout=1.0).status_code == 300:  # versions
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"server did not answer within {timeout}s:\n{self.log()}")

    def run_to_exit(self, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
        """Run the process in the foreground until it exits by itself (a refused
        configuration, a failed start); stdout and stderr are kept apart."""
        return subprocess.run(self._argv(), cwd=REPO, env=self.env, capture_output=True,
                              text=True, timeout=timeout)

    def _argv(self) -> list[str]:
        argv = [*BLOCKYARD, self.command, "--state-dir", str(self.state_dir), "--listen",
                f"127.0.0.1:{self.port}"]
        if self.config_path is not None:
            argv += ["--config", str(self.config_path)]
        return argv

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def kill(self) -> None:
        """kill -9, as a crash would."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        return self.proc.returncode

    def close(self) -> int | None:
        """The end of a test: stop the process and then every export daemon it left running
        for its attached volumes (tgtd, qemu-nbd outlive a stop, as they must for guests)."""
        code = self.stop()
        if self.command == "serve":
            from blockyard.targets import teardown

            teardown(self.state_dir)
        return code

    def wait_exit(self, timeout: float = 30.0) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def client(self, project: str = "admin", user: str = "admin",
               version: str = "3.71", token: str | None = None) -> Api:
        return Api(self.endpoint, project=project, user=user, version=version, token=token)


class Api:
    """A thin httpx client speaking the v3 API as `user:project` (noauth), or with a
    Keystone `token`."""

    def __init__(self, endpoint: str, *, project: str, user: str, version: str,
                 token: str | None = None) -> None:
        self.endpoint = endpoint
        self.http = httpx.Client(base_url=endpoint, timeout=30.0, headers={
            "X-Auth-Token": token or f"{user}:{project}",
            "OpenStack-API-Version": f"volume {version}",
            "Accept": "application/json",
        })

    def request(self, method: str, path: str, **kw: Any) -> httpx.Response:
        return self.http.request(method, path, **kw)

    def get(self, path: str, **kw: Any) -> httpx.Response:
        return self.http.get(path, **kw)

    def post(self, path: str, body: Any = None, **kw: Any) -> httpx.Response:
        return self.http.post(path, json=body, **kw)

    def put(self, path: str, body: Any = None, **kw: Any) -> httpx.Response:
        return self.http.put(path, json=body, **kw)

    def delete(self, path: str, **kw: Any) -> httpx.Response:
        return self.http.delete(path, **kw)

    def wait_volume(self, volume_id: str, statuses: set[str] | str,
                    timeout: float = 30.0) -> dict[str, Any]:
        """Poll until the volume reaches one of `statuses` ("deleted": until it 404s)."""
        return self.wait_status(f"/volumes/{volume_id}", "volume", statuses, timeout)

    def wait_snapshot(self, snapshot_id: str, statuses: set[str] | str,
                      timeout: float = 30.0) -> dict[str, Any]:
        return self.wait_status(f"/snapshots/{snapshot_id}", "snapshot", statuses, timeout)

    def wait_status(self, path: str, key: str, statuses: set[str] | str,
                    timeout: float = 30.0) -> dict[str, Any]:
        """Poll `path` until its `key` has one of `statuses` ("deleted": until it 404s)."""
        wanted = {statuses} if isinstance(statuses, str) else statuses
        deadline = time.monotonic() + timeout
        last: dict[str, Any] = {}
        while time.monotonic() < deadline:
            r = self.get(path)
            if r.status_code == 404 and "deleted" in wanted:
                return {"status": "deleted"}
            r.raise_for_status()
            last = r.json()[key]
            if last["status"] in wanted:
                return last
            time.sleep(0.02)
        raise AssertionError(f"{path} stayed {last.get('status')}, wanted {wanted}")

    def close(self) -> None:
        self.http.close()
