"""Shared fixtures: a real blockyard server per test module (or per test where needed); and
the markers of the layers (`ceph`, `keystone`, `qemu`, `slow`), given by what a test uses, so
that ``pytest -m "not slow and not ceph and not qemu"`` runs the fast layer.

Under pytest-xdist (scripts/test runs `-n 2 --dist loadfile`), each module is one unit of work,
so its module-scoped servers start once; `pytest_collection_modifyitems` below orders them."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.server import Api, Server

#: fixtures every module gets by name: real qemu-nbd, tgtd and QEMU processes; a real Keystone
pytest_plugins = ["tests.support.daemons", "tests.support.keystone"]

#: markers by fixture: a test using one (directly or through another fixture) is marked
MARKS_BY_FIXTURE = {
    "ceph": ("ceph",),  # tests/support/ceph.py: the session's cluster
    "keystone": ("keystone",),  # tests/support/keystone.py: the session's real Keystone
    "qemu": ("qemu",),  # a stopped QEMU (tests/support/daemons.py)
    "guest": ("qemu", "slow"),  # a booted test guest
    "nbd_tls": ("qemu",),
    "nbd_export": ("qemu",),
    "iscsi_target": ("qemu",),  # tgtd, and the iSCSI connector's qemu-nbd bridge
}

#: markers by module (or by directory, ending in "/"), for those whose every test needs the
#: same (a shared server stack, a real client's command line)
MARKS_BY_MODULE = {
    "tests/clients/": ("slow",),  # each step runs a real client (a Python process) or CLI
    "tests/test_compute.py": ("qemu", "slow"),  # guests under a real compute agent
    "tests/test_compute_catalog.py": ("qemu", "slow"),
    "tests/test_exports_outlive_restarts.py": ("qemu", "slow"),
    "tests/test_attach_targets.py": ("qemu",),  # connectors over qemu-nbd exports
    "tests/targets/test_qemu_nbd.py": ("qemu",),
    "tests/test_tempest.py": ("slow",),
    "tests/test_tempest_keystone.py": ("slow",),
    "tests/api/test_hostile.py": ("slow",),
    "tests/test_crash.py": ("slow",),
    "tests/test_attach_crash.py": ("slow",),
    "tests/test_group_crash.py": ("slow",),
    "tests/test_migration.py": ("slow",),  # a crash matrix, and copies of 1 and 4 GiB
    # a crash matrix, and attached volumes exported by qemu-nbd and tgt
    "tests/test_migration_attached.py": ("qemu", "slow"),
    "tests/test_compute_livemig.py": ("qemu", "slow"),  # guests under a real compute agent
    "tests/test_compute_swap.py": ("qemu", "slow"),
    "tests/test_compute_bfv.py": ("qemu", "slow"),
    "tests/test_compute_snapshots.py": ("qemu", "slow"),
    "tests/test_readme_walkthrough.py": ("qemu", "slow"),  # both services, two guests, the CLI
    "tests/test_races.py": ("slow",),  # many rounds of concurrent requests
}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark the tests (`_mark_layers`), then, on an xdist worker, order them
    (`_longest_modules_first`)."""
    _mark_layers(items)
    _longest_modules_first(config, items)


def _mark_layers(items: list[pytest.Item]) -> None:
    """Mark each test by the fixtures and the module it uses (see the two tables above)."""
    for item in items:
        names: set[str] = set()
        for fixture in getattr(item, "fixturenames", ()):
            names.update(MARKS_BY_FIXTURE.get(fixture, ()))
        module = item.nodeid.split("::", 1)[0]
        for where, marks in MARKS_BY_MODULE.items():
            if module == where or (where.endswith("/") and module.startswith(where)):
                names.update(marks)
        for name in sorted(names - {m.name for m in item.iter_markers()}):
            item.add_marker(name)


def _longest_modules_first(config: pytest.Config, items: list[pytest.Item]) -> None:
    """On a pytest-xdist worker (scripts/test: `--dist loadfile --no-loadscope-reorder`, each
    module one unit of work, handed out in collection order): the longest units first, so
    that none starts last. The Tempest run first, then the modules using the session's Ceph
    cluster one after another (so mostly one worker starts a cluster), then the real clients'
    (tests/clients: their CLIs hold the longest single test), then the others by their number
    of tests. A run without xdist keeps pytest's order."""
    if not hasattr(config, "workerinput"):
        return
    module_of = {item: item.nodeid.split("::", 1)[0] for item in items}
    size = Counter(module_of.values())
    tempest = {module_of[item] for item in items if "tempest_run" in item.fixturenames}
    ceph = {module_of[item] for item in items if "ceph" in item.fixturenames}

    def rank(item: pytest.Item) -> tuple[int, int]:
        module = module_of[item]
        slow_clis = module.startswith("tests/clients/")  # one CLI process per step
        return (0 if module in tempest else 1 if module in ceph else 2 if slow_clis else 3,
                -size[module])

    items.sort(key=rank)  # stable: a module's tests keep their order


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
