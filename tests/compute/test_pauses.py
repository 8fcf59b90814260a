"""Pauses for assisted snapshots, against a real QEMU (no guest OS: stop/cont need none), and
the ``os-assisted-volume-snapshots`` endpoint's input checks and policy.

The end-to-end check (a writing guest, the volume service taking the snapshot) is
tests/test_compute_snapshots.py.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

from blockyard.compute import config as compute_config
from blockyard.compute.api import create_app
from blockyard.compute.hypervisor import Hypervisor
from blockyard.compute.manager import Agent
from blockyard.compute.pauses import PauseBusy, PauseExpired, Pauses
from blockyard.compute.store import Instance, InstanceStatus, Store
from blockyard.errors import Conflict, NotFound
from tests.support.daemons import Qemu, qemu, short_dir  # noqa: F401  (fixtures)

VOLUME = "0b6f1c52-54a1-4d0e-9f43-3c1c7a4f8e21"
OTHER_VOLUME = "5a9d3e7b-2f6c-4b1a-8e0d-6c2b9f1a7d34"


def _snap() -> str:
    return str(uuid.uuid4())


def _instance(store: Store, qmp: str, *volumes: str) -> Instance:
    """An instance row over `qmp` with `volumes` attached (rows only)."""
    inst = store.add_instance(Instance(
        id=str(uuid.uuid4()), name="g", project_id="p", user_id="u",
        status=InstanceStatus.ACTIVE, qmp_socket=qmp, adopted=True))
    for volume_id in volumes:
        m = store.reserve(inst, volume_id, None)
        assert store.finish_mapping(m.id, "attach")
    return inst


Body = Callable[[Pauses, Hypervisor, Store], Awaitable[None]]


def _run(tmp_path: Path, qmp: str, body: Body) -> None:
    """`body` with Pauses over one running QEMU that has VOLUME and OTHER_VOLUME."""
    async def main() -> None:
        store = Store(tmp_path / "compute.sqlite")
        _instance(store, qmp, VOLUME, OTHER_VOLUME)
        hv = await Hypervisor.connect(qmp, timeout=5)
        try:
            await hv.cont()  # the fixture's QEMU starts with -S

            async def guest(inst: Instance) -> Hypervisor:
                return hv
            await body(Pauses(store, guest, tmp_path / "paused"), hv, store)
        finally:
            await hv.close()
            store.close()
    asyncio.run(main())


def test_pause_then_resume(tmp_path: Path, qemu: Qemu) -> None:  # noqa: F811
    async def body(pauses: Pauses, hv: Hypervisor, store: Store) -> None:
        snap = _snap()
        await pauses.pause(VOLUME, snap)
        assert await hv.status() == "paused"
        assert (tmp_path / "paused" / f"{snap}.json").exists()
        assert await pauses.pause(VOLUME, snap) is not None  # the same snapshot again: fine
        with pytest.raises(Conflict):  # the same snapshot id for another volume: not fine
            await pauses.pause(OTHER_VOLUME, snap)
        done = await pauses.resume(VOLUME, snap)
        assert await hv.status() == "running"
        assert done.outcome == "resumed" and done.paused_ms is not None
        assert not (tmp_path / "paused" / f"{snap}.json").exists()
        with pytest.raises(NotFound):
            await pauses.resume(VOLUME, _snap())
    _run(tmp_path, qemu.qmp, body)


def test_the_watchdog_resumes_and_a_late_resume_is_refused(tmp_path: Path,
                                                            qemu: Qemu) -> None:  # noqa: F811
    async def body(pauses: Pauses, hv: Hypervisor, store: Store) -> None:
        snap = _snap()
        await pauses.pause(VOLUME, snap, max_pause_ms=200)
        assert await hv.status() == "paused"
        for _ in range(100):
            if await hv.status() == "running":
                break
            await asyncio.sleep(0.05)
        assert await hv.status() == "running"
        with pytest.raises(PauseExpired):
            await pauses.resume(VOLUME, snap)
    _run(tmp_path, qemu.qmp, body)


def test_a_second_snapshot_waits_for_the_first(tmp_path: Path, qemu: Qemu) -> None:  # noqa: F811
    async def body(pauses: Pauses, hv: Hypervisor, store: Store) -> None:
        first, second = _snap(), _snap()
        await pauses.pause(VOLUME, first, max_pause_ms=5000)
        waiting = asyncio.ensure_future(pauses.pause(OTHER_VOLUME, second))
        await asyncio.sleep(0.3)
        assert not waiting.done()
        await pauses.resume(VOLUME, first)
        await waiting  # paused again, for the second one
        assert await hv.status() == "paused"
        await pauses.resume(OTHER_VOLUME, second)
        assert await hv.status() == "running"
    _run(tmp_path, qemu.qmp, body)


def test_a_second_snapshot_gives_up_when_the_first_never_ends(tmp_path: Path,
                                                              qemu: Qemu) -> None:  # noqa: F811
    async def body(pauses: Pauses, hv: Hypervisor, store: Store) -> None:
        first = _snap()
        await pauses.pause(VOLUME, first, max_pause_ms=200)
        pause = pauses._active[first]
        assert pause.watchdog is not None
        pause.watchdog.cancel()  # a watchdog that never comes: the wait is bounded anyway
        with pytest.raises(PauseBusy):
            await pauses.pause(OTHER_VOLUME, _snap())
        await pauses.resume(VOLUME, first)
    _run(tmp_path, qemu.qmp, body)


def test_no_guest_with_the_volume_and_a_guest_not_running(tmp_path: Path,
                                                          qemu: Qemu) -> None:  # noqa: F811
    async def body(pauses: Pauses, hv: Hypervisor, store: Store) -> None:
        with pytest.raises(NotFound):
            await pauses.pause(str(uuid.uuid4()), _snap())
        await hv.stop()  # paused by someone else: not ours to resume later
        with pytest.raises(Conflict):
            await pauses.pause(VOLUME, _snap())
        assert not list((tmp_path / "paused").glob("*.json"))
    _run(tmp_path, qemu.qmp, body)


def test_a_restarted_agent_resumes_what_it_left_paused(tmp_path: Path,
                                                       qemu: Qemu) -> None:  # noqa: F811
    async def body(pauses: Pauses, hv: Hypervisor, store: Store) -> None:
        snap = _snap()
        await pauses.pause(VOLUME, snap, max_pause_ms=60_000)
        pause = pauses._active[snap]
        assert pause.watchdog is not None
        pause.watchdog.cancel()  # the agent died: no watchdog, the marker stays
        assert await hv.status() == "paused"
        marker = json.loads((tmp_path / "paused" / f"{snap}.json").read_text())
        assert marker["instances"] == pause.instance_ids

        async def guest(inst: Instance) -> Hypervisor:
            return hv
        await Pauses(store, guest, tmp_path / "paused").reconcile()
        assert await hv.status() == "running"
        assert not (tmp_path / "paused" / f"{snap}.json").exists()
    _run(tmp_path, qemu.qmp, body)


# ---------------------------------------------------------------------- the endpoint
PATH = "/v2.1/os-assisted-volume-snapshots"


def _body(**info: Any) -> dict[str, Any]:
    create_info = {"snapshot_id": str(uuid.uuid4()), "type": "blockyard-pause", **info}
    return {"snapshot": {"volume_id": VOLUME, "create_info": create_info}}


@pytest.mark.parametrize("body", [
    None,
    {"snapshot": {"volume_id": VOLUME}},
    _body(type="qcow2"),
    _body(type="blockyard-freeze"),
    _body(max_pause_ms=0),
    _body(max_pause_ms=10 ** 9),
    _body(max_pause_ms="100"),
    _body(new_file="x.qcow2"),
    _body(snapshot_id="../../etc"),
    {"snapshot": {"volume_id": "not-a-uuid", "create_info": _body()["snapshot"]["create_info"]}},
])
def test_bad_requests_are_400(tmp_path: Path, body: Any) -> None:
    with TestClient(create_app(compute_config.build({"state_dir": str(tmp_path)}))) as tc:
        r = tc.post(PATH, json=body, headers={"X-Auth-Token": "admin:admin"})
        assert r.status_code == 400, r.text
        assert r.json()["badRequest"]["code"] == 400
        assert not (tmp_path / "paused").exists()


def test_unknown_volume_is_404_and_resume_of_nothing_too(tmp_path: Path) -> None:
    with TestClient(create_app(compute_config.build({"state_dir": str(tmp_path)}))) as tc:
        r = tc.post(PATH, json=_body(), headers={"X-Auth-Token": "admin:admin"})
        assert r.status_code == 404, r.text
        assert "No instance on this host has volume" in r.json()["itemNotFound"]["message"]
        r = tc.post(PATH, json=_body(type="blockyard-resume"),
                    headers={"X-Auth-Token": "admin:admin"})
        assert r.status_code == 404, r.text


def test_the_rule_is_enforced(tmp_path: Path) -> None:
    """Nova's own default (the service role only) in a policy file: the noauth admin is
    refused before anything happens."""
    policy = tmp_path / "policy.yaml"
    policy.write_text('"os_compute_api:os-assisted-volume-snapshots:create": "role:service"\n')
    config = compute_config.build({"state_dir": str(tmp_path),
                                   "auth": {"policy_file": str(policy)}})
    with TestClient(create_app(config)) as tc:
        agent: Agent = tc.app.state.agent  # type: ignore[attr-defined]
        assert agent.pauses is not None
        r = tc.post(PATH, json=_body(), headers={"X-Auth-Token": "admin:admin"})
        assert r.status_code == 403, r.text
        assert "os-assisted-volume-snapshots:create" in r.json()["forbidden"]["message"]
