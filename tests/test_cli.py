"""`blockyard serve`: configuration errors, a taken port, clean shutdown."""

from __future__ import annotations

import contextlib
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from starlette.applications import Starlette

from tests.support.server import REPO, Server

SERVE = [sys.executable, "-m", "blockyard.cli", "serve"]


def _run(args: list[str], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*SERVE, "--state-dir", str(tmp_path / "state"), *args], cwd=REPO,
                          capture_output=True, text=True, timeout=30)


@pytest.mark.parametrize(
    ("config", "key"),
    [
        ("listen = 'nowhere'", "listen"),
        ("[backends.fast]\npath = '/tmp/x'", "backends.fast.driver"),
        ("[backends.fast]\ndriver = 'floppy'", "backends.fast.driver"),
        ("[backends.fast]\ndriver = 'file'\nworkers = 0", "backends.fast.workers"),
        ("[quota]\nvolumes = 'ten'", "quota.volumes"),
        ("[quota]\nbananas = 1", "quota.bananas"),
        ("colour = 'blue'", "colour"),
        ("this is not toml", "--config"),
        ("[auth]\nstrategy = 'trust-me'", "auth.strategy"),
        ("[keystone_authtoken]\nauth_url = 'http://k/v3'", "keystone_authtoken"),
        ("[auth]\nstrategy = 'keystone'", "keystone_authtoken.www_authenticate_uri"),
        ("[auth]\nstrategy = 'keystone'\n[keystone_authtoken]\nwww_authenticate_uri = "
         "'http://k/v3'\nauth_url = 'http://k/v3'\nusername = 'u'\npassword = 'p'\n"
         "projet_name = 'service'", "keystone_authtoken.projet_name"),
        ("[auth]\nstrategy = 'keystone'\n[keystone_authtoken]\nwww_authenticate_uri = "
         "'http://k/v3'\nauth_url = 'http://k/v3'\nusername = 'u'\npassword = 'p'\n"
         "auth_type = 'telepathy'", "keystone_authtoken.auth_type"),
        ("[auth]\nstrategy = 'keystone'\n[keystone_authtoken]\nwww_authenticate_uri = "
         "'http://k/v3'\nauth_url = 'http://k/v3'\nusername = 'u'\npassword = 'p'",
         "keystone_authtoken.project_name"),
        ("[auth]\npolicy_file = '/nonexistent/policy.yaml'", "auth.policy_file"),
        ("[auth]\nstrategy = 'keystone'\n[keystone_authtoken]\nwww_authenticate_uri = "
         "'http://k/v3'\nauth_url = 'http://k/v3'\nusername = 'u'\npassword = 'p'\n"
         "project_name = 's'\ntoken_cache_time = 'five minutes'",
         "keystone_authtoken.token_cache_time"),
    ],
)
def test_bad_config_is_one_line_naming_the_key(tmp_path: Path, config: str, key: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(config)
    result = _run(["--config", str(path)], tmp_path)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert key in lines[0]
    assert "Traceback" not in result.stderr


def test_noauth_refuses_a_network_address(tmp_path: Path) -> None:
    """noauth makes every caller an admin: not on a non-loopback address by accident."""
    result = _run(["--listen", "0.0.0.0:0"], tmp_path)
    assert result.returncode == 2
    assert "refusing to listen on 0.0.0.0 without authentication" in result.stderr
    assert "--insecure-noauth-on-network" in result.stderr


def test_noauth_on_the_network_only_with_the_insecure_flag(tmp_path: Path) -> None:
    proc = subprocess.Popen([*SERVE, "--state-dir", str(tmp_path / "state"), "--listen",
                             "0.0.0.0:0", "--insecure-noauth-on-network"], cwd=REPO,
                            stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stderr is not None
        seen = [proc.stderr.readline() for _ in range(2)]
        assert any("without authentication" in line for line in seen), seen
        assert any("serving the Cinder v3 API on http://0.0.0.0:" in line for line in seen), seen
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_missing_config_file(tmp_path: Path) -> None:
    result = _run(["--config", str(tmp_path / "absent.toml")], tmp_path)
    assert result.returncode == 2
    assert "no such file" in result.stderr


def test_taken_port_is_a_clear_message(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        result = _run(["--listen", f"127.0.0.1:{port}"], tmp_path)
    assert result.returncode == 1
    assert f"127.0.0.1:{port} is already in use" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_shuts_down_cleanly(tmp_path: Path, sig: signal.Signals) -> None:
    srv = Server(tmp_path / "state").start()
    assert srv.proc is not None
    srv.proc.send_signal(sig)
    assert srv.wait_exit(20) == 0
    assert "Traceback" not in srv.log()


def test_config_file_declares_backends_and_listen(tmp_path: Path) -> None:
    srv = Server(tmp_path / "state", config=(
        "[backends.alpha]\ndriver = 'file'\navailability_zone = 'az1'\n"
        f"[backends.beta]\ndriver = 'file'\npath = '{tmp_path / 'beta'}'\n"
        "availability_zone = 'az2'\n"
    )).start()
    try:
        api = srv.client()
        r = api.post("/volumes", {"volume": {"size": 1, "availability_zone": "az2"}})
        assert r.status_code == 202, r.text
        vol = api.wait_volume(r.json()["volume"]["id"], "available")
        assert vol["os-vol-host-attr:host"].endswith("@beta#beta")
        assert (tmp_path / "beta" / f"volume-{vol['id']}").stat().st_size == 1024**3
    finally:
        srv.stop()


# -- start-up, in-process: what happens before anything is served ------------------------------


class _NeverServes:
    """Stands in for uvicorn's server where serving must not happen."""

    started = False

    async def serve(self, sockets: list[socket.socket]) -> None:
        raise AssertionError("served")


def _app_starting_with(action: Callable[[], None]) -> tuple[Starlette, list[str]]:
    """An app whose start-up runs `action`; `events` records its start and its stop."""
    events: list[str] = []

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        events.append("start")
        action()
        try:
            yield
        finally:
            events.append("stop")

    return Starlette(lifespan=lifespan), events


def test_a_signal_while_starting_stops_after_the_start_without_serving() -> None:
    import asyncio
    import os

    from blockyard import cli

    app, events = _app_starting_with(lambda: os.kill(os.getpid(), signal.SIGTERM))
    with cli._signals_held() as stop_requested, socket.socket() as sock:
        code = asyncio.run(cli._lifetime(app, _NeverServes(), sock, stop_requested))
    assert code == 0
    assert events == ["start", "stop"]  # the start finished, then was undone


def test_a_failed_start_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    import asyncio

    from blockyard import cli
    from blockyard.errors import BackendError, ConfigError

    def fail(exc: Exception) -> None:
        raise exc

    for exc, code, line in [
        (BackendError("tgtd exited while starting"), 1,
         "blockyard: cannot start: tgtd exited while starting"),
        (PermissionError(13, "Permission denied"), 1,
         "blockyard: cannot start: PermissionError: [Errno 13] Permission denied"),
        (ConfigError("targets.nbd.port_range", "no port is free"), 2,
         "blockyard: bad configuration: targets.nbd.port_range: no port is free"),
    ]:
        app, events = _app_starting_with(lambda exc=exc: fail(exc))
        with socket.socket() as sock:
            assert asyncio.run(cli._lifetime(app, _NeverServes(), sock, lambda: False)) == code
        assert capsys.readouterr().err.splitlines() == [line]
        assert events == ["start"]
