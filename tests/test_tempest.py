"""Tempest's volume API suite (`tempest.api.volume`) against a real `blockyard serve`.

Tempest runs once per module, through a Keystone v3 stand-in (tests/support/identity.py), with
the pre-provisioned accounts and configuration that real Cinder 29 passes 148 tests with
(tests/tempest_reference/). Each test of that reference list is then its own pytest item: it
fails with Tempest's traceback when the test failed here, was skipped, or never ran. The run's
passed/failed/skipped counts are printed.

Runtime: one `tempest run --concurrency 2` of the volume suite, about 3.5 minutes on 2 busy
cores. To look at a part only, BLOCKYARD_TEMPEST_REGEX narrows what Tempest runs (reference
tests outside it then fail here as not run); `--deselect tests/test_tempest.py` leaves it out.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.support.identity import Identity, load_accounts
from tests.support.server import Server
from tests.support.tempest import (
    ACCOUNTS,
    Run,
    deployment_facts,
    print_report,
    reference_tests,
    require_success,
    run_tempest,
    write_workspace,
)

REGEX = os.environ.get("BLOCKYARD_TEMPEST_REGEX", r"^tempest\.api\.volume\.")


@pytest.fixture(scope="module")
def tempest_run(tmp_path_factory: pytest.TempPathFactory,
                pytestconfig: pytest.Config) -> Iterator[Run]:
    root = tmp_path_factory.mktemp("tempest")
    server = Server(root / "state").start()
    identity = Identity(load_accounts(ACCOUNTS), server.url).start()
    try:
        api = server.client()
        pools = api.get("/scheduler-stats/get_pools", params={"detail": "true"})
        pools.raise_for_status()
        api.close()
        facts = deployment_facts(pools.json()["pools"])
        workspace = root / "workspace"
        conf = write_workspace(workspace, identity_uri=identity.uri_v3, facts=facts)
        run = run_tempest(workspace, conf, regex=REGEX)
        print_report(pytestconfig, run, label=f"tempest {REGEX!r} (noauth)", facts=facts,
                     workspace=workspace, server_log=server.log_path,
                     reference=reference_tests())
        yield run
    finally:
        identity.stop()
        server.stop()


@pytest.mark.parametrize("test_id", reference_tests(),
                         ids=lambda t: t.removeprefix("tempest.api.volume."))
def test_reference(tempest_run: Run, test_id: str) -> None:
    """A test real Cinder 29 passes passes here too (not failed, not skipped, not missing)."""
    require_success(tempest_run, test_id)
