"""Shared fixtures: a real blockyard server per test module (or per test where needed).

Under pytest-xdist (scripts/test runs `-n 2 --dist loadgroup`), `pytest_collection_modifyitems`
below makes each module one unit of work, so its module-scoped servers start once."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.server import Api, Server


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """For `--dist loadgroup`: one xdist group per module (a module's tests share its
    module-scoped servers and guests, and some rely on running in file order). Without that
    option, nothing changes."""
    if config.getoption("dist", "no") != "loadgroup":
        return
    for item in items:
        if not any(item.iter_markers("xdist_group")):
            item.add_marker(pytest.mark.xdist_group(item.nodeid.split("::", 1)[0]))


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: Any, error: object) -> None:
    """On the xdist controller: print what a worker left to say (the Tempest run's counts,
    tests/test_tempest.py), which its own terminal output would have shown without xdist."""
    report = node.workeroutput.get("tempest_report") if hasattr(node, "workeroutput") else None
    if report:
        terminal = node.config.pluginmanager.get_plugin("terminalreporter")
        if terminal is not None:
            terminal.write_line("\n" + report)


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
