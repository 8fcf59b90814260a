"""Shared pieces of the API benchmarks: a server process on a free port, /proc readings,
percentiles and a keep-alive HTTP client that is cheap on the client side.

Not a benchmark itself; `api_lifecycle.py` and `list_large.py` import it.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
TICKS = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Process:
    """A server subprocess (blockyard or the peer) that answers HTTP on 127.0.0.1:port."""

    def __init__(self, argv: list[str], port: int, log_path: Path, ready_path: str = "/",
                 ready_status: int = 300, env: dict[str, str] | None = None) -> None:
        self.argv = argv
        self.env = dict(os.environ, **(env or {}))
        self.port = port
        self.log_path = log_path
        self.ready_path = ready_path
        self.ready_status = ready_status
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self, timeout: float = 60.0) -> Process:
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(self.argv, stdout=log, stderr=log, cwd=REPO,
                                     env=self.env)
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.argv[:4]} exited with {self.proc.returncode}:\n"
                                   f"{self.log_path.read_text(errors='replace')}")
            try:
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=1.0)
                conn.request("GET", self.ready_path)
                status = conn.getresponse().status
                conn.close()
                if status == self.ready_status:
                    return self
            except OSError:
                pass
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"{self.argv[:4]} did not answer within {timeout}s")

    def stop(self) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        return self.proc.returncode


def blockyard_server(state_dir: Path, port: int | None = None, config: str | None = None,
                     instrument: Path | None = None, experiments: str = "") -> Process:
    """`blockyard serve` on a fresh port (not started yet).

    With `instrument`, the server runs under bench/_instrumented_server.py, which writes its
    wait/hold timers to that JSON file on exit (see `print_instrumented`)."""
    port = port or free_port()
    if instrument is None:
        argv = [sys.executable, "-m", "blockyard.cli"]
        env = None
    else:
        argv = [sys.executable, str(Path(__file__).resolve().parent / "_instrumented_server.py")]
        env = {"BLOCKYARD_BENCH_STATS": str(instrument),
               "BLOCKYARD_BENCH_EXPERIMENTS": experiments}
    argv += ["serve", "--state-dir", str(state_dir), "--listen", f"127.0.0.1:{port}"]
    if config is not None:
        cfg = state_dir.parent / f"{state_dir.name}.toml"
        cfg.write_text(config)
        argv += ["--config", str(cfg)]
    return Process(argv, port, state_dir.parent / f"{state_dir.name}.log", env=env)


def print_instrumented(path: Path, title: str = "server-side timers") -> None:
    """The table of an instrumented server's timers: n, p50, p95, p99, max, sum."""
    data: dict[str, list[float]] = json.loads(path.read_text())
    print(f"\n{title} (ms; sum in s):")
    print(f"  {'timer':<58}{'n':>8}{'p50':>9}{'p95':>9}{'p99':>9}{'max':>9}{'sum s':>8}")
    for name in sorted(data):
        v = data[name]
        print(f"  {name[:58]:<58}{len(v):>8}{percentile(v, 50) * 1e3:9.2f}"
              f"{percentile(v, 95) * 1e3:9.2f}{percentile(v, 99) * 1e3:9.2f}"
              f"{max(v) * 1e3:9.2f}{sum(v):8.2f}")


# ---------------------------------------------------------------------------- /proc


def proc_status(pid: int, key: str) -> int:
    """A kB field of /proc/<pid>/status (VmHWM: peak RSS, VmRSS: current RSS)."""
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all threads), in seconds."""
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def machine_busy_seconds() -> float:
    """CPU seconds all processes on the machine have used since boot (/proc/stat, not idle or
    iowait): the difference over a run minus our own processes is the load of everything else,
    which on a shared 2-core machine skews every number."""
    with open("/proc/stat") as fh:
        fields = [int(x) for x in fh.readline().split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
    return (user + nice + system + irq + softirq + steal) / TICKS


def thread_count(pid: int) -> int:
    return proc_status(pid, "Threads")


# ---------------------------------------------------------------------------- numbers


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile; nan for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, int(round(q / 100.0 * len(ordered) + 0.5)) - 1))
    return ordered[k]


def ms(seconds: float) -> str:
    return f"{seconds * 1000:8.2f}"


# ---------------------------------------------------------------------------- HTTP


class Client:
    """One keep-alive connection (http.client: far cheaper per call than httpx, which matters
    when the client shares two cores with the server)."""

    def __init__(self, port: int, token: str, version: str = "3.71") -> None:
        self.port = port
        self.headers = {
            "X-Auth-Token": token,
            "OpenStack-API-Version": f"volume {version}",
            "Accept": "application/json",
            "Content-Type": "application/json",
        }
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        self.reconnects = 0

    def call(self, method: str, path: str, body: Any = None) -> tuple[int, Any, float, int]:
        """(status, parsed JSON or None, seconds, response bytes)."""
        data = None if body is None else json.dumps(body).encode()
        for attempt in (0, 1):
            t0 = time.perf_counter()
            try:
                self.conn.request(method, path, body=data, headers=self.headers)
                resp = self.conn.getresponse()
                raw = resp.read()
            except (http.client.HTTPException, ConnectionError):
                if attempt:
                    raise
                self.conn.close()
                self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
                self.reconnects += 1
                continue
            dt = time.perf_counter() - t0
            parsed = json.loads(raw) if raw and resp.getheader("content-type", "").startswith(
                "application/json") else None
            return resp.status, parsed, dt, len(raw)
        raise AssertionError("unreachable")

    def close(self) -> None:
        self.conn.close()
