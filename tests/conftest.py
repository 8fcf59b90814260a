"""Shared fixtures: a real blockyard server per test module (or per test where needed)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.server import Api, Server


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A server on the embedded default, shared by the tests of one module."""
    srv = Server(tmp_path_factory.mktemp("srv") / "state").start()
    yield srv
    srv.close()


@pytest.fixture
def api(server: Server) -> Iterator[Api]:
    client = server.client()
    yield client
    client.close()


@pytest.fixture
def make_server(tmp_path: Path) -> Iterator[type[Server]]:
    """Build servers of one's own (configs, fail points); all are stopped afterwards."""
    made: list[Server] = []

    class _Server(Server):
        def __init__(self, name: str = "state", **kw: object) -> None:
            super().__init__(tmp_path / name, **kw)  # type: ignore[arg-type]
            made.append(self)

    yield _Server
    for srv in made:
        srv.close()
