"""os-services (heartbeat, enable/disable with a reason, freeze/thaw), os-hosts and
capabilities/{host} over HTTP, checked against Tempest's response schemas; and the scheduler
steered by a type's `storage_protocol` on a server with one backend per export target.

The default server has one file backend "default" at ``<hostname>@default``.
"""

from __future__ import annotations

import socket
import time
import uuid
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import httpx
import pytest
from tempest.lib.api_schema.response.volume import capabilities as capabilities_schema
from tempest.lib.api_schema.response.volume import hosts as hosts_schema
from tempest.lib.api_schema.response.volume import scheduler_stats as pools_schema
from tempest.lib.api_schema.response.volume import services as services_schema
from tempest.lib.api_schema.response.volume.v3_7 import services as services_schema_3_7

from tests.support.checks import check, fault
from tests.support.server import Api, Server, exported_backends_config

HOST = socket.gethostname()
BACKEND = f"{HOST}@default"
VOLUME = "cinder-volume"


def unschedulable(api: Api, r: httpx.Response) -> None:
    """A create no backend can take: accepted (202) as in Cinder, then `error` on no host;
    the volume is deleted again so it does not hold quota."""
    assert r.status_code == 202, r.text
    volume = api.wait_volume(r.json()["volume"]["id"], "error")
    assert volume["os-vol-host-attr:host"] is None
    assert api.delete(f"/volumes/{volume['id']}").status_code == 202


def _service(api: Api, host: str, binary: str = VOLUME) -> dict[str, Any]:
    services = api.get("/os-services", params={"host": host, "binary": binary}).json()
    (found,) = services["services"]
    return dict(found)


@pytest.fixture
def volume_service_restored(api: Api) -> Iterator[None]:
    """Whatever a test does to the default backend's service, it is enabled and thawed after."""
    yield
    api.put("/os-services/thaw", {"host": BACKEND})
    api.put("/os-services/enable", {"host": BACKEND, "binary": VOLUME})


# ---------------------------------------------------------------------------- listing


def test_services_have_a_heartbeat(api: Api) -> None:
    services = check(services_schema_3_7.list_services, api.get("/os-services"))["services"]
    assert [(s["binary"], s["host"], s["state"]) for s in services] == [
        ("cinder-scheduler", HOST, "up"), (VOLUME, BACKEND, "up")]
    # "up" is the server's own judgement that the heartbeat in `updated_at` is recent; that
    # the heartbeat keeps a service up is test_scheduler's test_state_follows_the_heartbeat
    for s in services:
        assert datetime.fromisoformat(s["updated_at"]) > datetime(2000, 1, 1)
    # Tempest's lookups: by the host part of a volume's host, by binary, by both
    r = api.post("/volumes", {"volume": {"size": 1}})
    volume = api.wait_volume(r.json()["volume"]["id"], "available")
    host = volume["os-vol-host-attr:host"].split("@")[0]
    found = api.get("/os-services", params={"host": host, "binary": VOLUME}).json()["services"]
    assert [s["host"] for s in found] == [BACKEND]
    api.delete(f"/volumes/{volume['id']}")


# ---------------------------------------------------------------------------- enable/disable


@pytest.mark.usefixtures("volume_service_restored")
def test_disable_with_a_reason_keeps_the_scheduler_away(api: Api) -> None:
    r = api.put("/os-services/disable-log-reason",
                {"host": BACKEND, "binary": VOLUME, "disabled_reason": "new disks"})
    assert check(services_schema.disable_log_reason, r) == {
        "host": BACKEND, "service": "", "binary": VOLUME, "status": "disabled",
        "disabled": True, "disabled_reason": "new disks"}
    shown = _service(api, BACKEND)
    assert (shown["status"], shown["disabled_reason"], shown["state"]) == (
        "disabled", "new disks", "up")
    # no pool to schedule to, and the host is gone from os-hosts
    assert api.get("/scheduler-stats/get_pools").json() == {"pools": []}
    hosts = check(hosts_schema.list_hosts, api.get("/os-hosts"))["hosts"]
    assert [h["host_name"] for h in hosts] == [HOST]
    unschedulable(api, api.post("/volumes", {"volume": {"size": 1}}))

    r = api.put("/os-services/enable", {"host": BACKEND, "binary": VOLUME})
    assert check(services_schema.enable_service, r)["status"] == "enabled"
    shown = _service(api, BACKEND)
    assert (shown["status"], shown["disabled_reason"]) == ("enabled", None)
    r = api.post("/volumes", {"volume": {"size": 1}})
    volume = api.wait_volume(r.json()["volume"]["id"], "available")
    api.delete(f"/volumes/{volume['id']}")

    r = api.put("/os-services/disable", {"host": BACKEND, "service": VOLUME})
    assert check(services_schema.disable_service, r) == {
        "host": BACKEND, "service": VOLUME, "binary": "", "status": "disabled",
        "disabled": True}
    assert _service(api, BACKEND)["status"] == "disabled"


@pytest.mark.parametrize(("path", "body", "status", "words"), [
    # Tempest's negative tests
    ("enable", {"host": "invalid_host", "binary": VOLUME}, 404,
     "Service cinder-volume could not be found on host invalid_host."),
    ("disable", {"host": BACKEND, "binary": "invalid_binary"}, 404, "invalid_binary"),
    ("disable-log-reason", {"host": BACKEND, "binary": VOLUME, "disabled_reason": None}, 400,
     "disabled_reason"),
    ("freeze", {"host": "invalid_host"}, 400, "No service found with host=invalid_host"),
    ("thaw", {"host": "invalid_host"}, 400, "No service found with host=invalid_host"),
    # and Cinder's schemas
    ("enable", {"binary": VOLUME}, 400, "Host field is missing."),
    ("enable", {"host": BACKEND}, 400, "is not valid"),
    ("disable", {"host": BACKEND, "binary": VOLUME, "colour": "red"}, 400, "colour"),
    ("disable", {"host": "a b", "binary": VOLUME}, 400, "host"),
    ("disable-log-reason", {"host": BACKEND, "binary": VOLUME, "disabled_reason": "x" * 256},
     400, "disabled_reason"),
    ("disable-log-reason", {"host": BACKEND, "binary": VOLUME, "disabled_reason": "  "}, 400,
     "minimum character requirement of 1"),
    ("freeze", {}, 400, "One and only one of cluster and host must be set."),
    ("freeze", {"cluster": "c1"}, 400, "No service found with cluster=c1"),
    ("thaw", {"host": BACKEND, "binary": VOLUME}, 400, "binary"),
    ("failover_host", {"host": BACKEND}, 400, "must be ['enabled', 'failed-over']"),
    ("reboot", {"host": BACKEND}, 404, "Unknown action"),
])
def test_service_updates_refused(api: Api, path: str, body: dict[str, Any], status: int,
                                 words: str) -> None:
    assert words in fault(api.put(f"/os-services/{path}", body), status)
    shown = _service(api, BACKEND)
    assert (shown["status"], shown["frozen"]) == ("enabled", False)


# ---------------------------------------------------------------------------- freeze/thaw


@pytest.mark.usefixtures("volume_service_restored")
def test_a_frozen_backend_refuses_management_operations(api: Api) -> None:
    r = api.post("/volumes", {"volume": {"size": 1}})
    volume = api.wait_volume(r.json()["volume"]["id"], "available")
    r = api.post("/snapshots", {"snapshot": {"volume_id": volume["id"]}})
    snapshot = api.wait_snapshot(r.json()["snapshot"]["id"], "available")

    r = api.put("/os-services/freeze", {"host": BACKEND})
    assert check(services_schema.freeze_host, r) is None
    assert _service(api, BACKEND)["frozen"] is True
    assert "No service could be changed: frozen in" in fault(
        api.put("/os-services/freeze", {"host": BACKEND}), 400)
    frozen = "Modification operations are not allowed on frozen storage backends."
    assert frozen in fault(api.delete(f"/volumes/{volume['id']}"), 400)
    assert frozen in fault(api.delete(f"/snapshots/{snapshot['id']}"), 400)
    assert frozen in fault(api.post("/snapshots", {"snapshot": {"volume_id": volume["id"]}}),
                           400)
    unschedulable(api, api.post("/volumes", {"volume": {"size": 1}}))
    # what does not change the backend's data still works
    assert api.put(f"/volumes/{volume['id']}", {"volume": {"name": "cold"}}).status_code == 200
    assert api.get(f"/snapshots/{snapshot['id']}").json()["snapshot"]["status"] == "available"

    assert check(services_schema.thaw_host, api.put("/os-services/thaw", {"host": BACKEND})) \
        is None
    assert _service(api, BACKEND)["frozen"] is False
    assert api.delete(f"/snapshots/{snapshot['id']}").status_code == 202
    api.wait_snapshot(snapshot["id"], "deleted")
    assert api.delete(f"/volumes/{volume['id']}").status_code == 202
    api.wait_volume(volume["id"], "deleted")


# ---------------------------------------------------------------------------- os-hosts


def test_hosts_list_and_usage(api: Api) -> None:
    hosts = check(hosts_schema.list_hosts, api.get("/os-hosts"))["hosts"]
    assert [(h["host_name"], h["service"], h["service-state"], h["service-status"])
            for h in hosts] == [(HOST, "cinder-scheduler", "enabled", "available"),
                                (BACKEND, VOLUME, "enabled", "available")]
    assert api.get("/os-hosts", params={"zone": "elsewhere"}).json() == {"hosts": []}

    project = f"p-{uuid.uuid4().hex[:8]}"
    before = check(hosts_schema.show_host, api.get(f"/os-hosts/{BACKEND}"))["host"]
    total = before[0]["resource"]
    assert (total["host"], total["project"]) == (BACKEND, "(total)")
    user = api.__class__(api.endpoint, project=project, user="u", version="3.71")
    r = user.post("/volumes", {"volume": {"size": 2}})
    volume = user.wait_volume(r.json()["volume"]["id"], "available")
    r = user.post("/snapshots", {"snapshot": {"volume_id": volume["id"]}})
    snapshot = user.wait_snapshot(r.json()["snapshot"]["id"], "available")
    after = check(hosts_schema.show_host, api.get(f"/os-hosts/{BACKEND}"))["host"]
    mine = next(e["resource"] for e in after if e["resource"]["project"] == project)
    assert mine == {"host": BACKEND, "project": project, "volume_count": "1",
                    "total_volume_gb": "2", "snapshot_count": "1", "total_snapshot_gb": "2"}
    assert int(after[0]["resource"]["volume_count"]) == int(total["volume_count"]) + 1
    # the host part finds the backend too; an unknown host is a 404
    assert api.get(f"/os-hosts/{HOST}").status_code == 200
    assert "could not be found on host nowhere" in fault(api.get("/os-hosts/nowhere"), 404)
    user.delete(f"/snapshots/{snapshot['id']}")
    user.wait_snapshot(snapshot["id"], "deleted")
    user.delete(f"/volumes/{volume['id']}")
    user.close()


# ---------------------------------------------------------------------------- capabilities


def test_capabilities_match_the_pools(api: Api) -> None:
    (pool,) = api.get("/scheduler-stats/get_pools", params={"detail": "true"}).json()["pools"]
    # as Tempest asks: by pool name, whose "#pool" an HTTP client drops as a fragment
    r = api.get(f"/capabilities/{pool['name']}")
    body = check(capabilities_schema.show_backend_capabilities, r)
    assert body["namespace"] == f"OS::Storage::Capabilities::{BACKEND}"
    wanted = ("vendor_name", "volume_backend_name", "storage_protocol", "driver_version")
    assert {k: body[k] for k in wanted} == {k: pool["capabilities"][k] for k in wanted}
    assert set(body["properties"]) == {"thin_provisioning", "compression", "qos",
                                       "replication_enabled"}
    assert check(capabilities_schema.show_backend_capabilities,
                 api.get(f"/capabilities/{HOST}"))["namespace"].endswith(BACKEND)
    assert "Can't find service: nowhere" in fault(api.get("/capabilities/nowhere"), 404)
    assert fault(api.get(f"/capabilities/{BACKEND}%23default"), 404)  # pool level: exact only


# ---------------------------------------------------------------------------- protocols


def test_storage_protocol_is_the_target_and_steers_the_scheduler(
        make_server: type[Server]) -> None:
    server = make_server("state", config=exported_backends_config(local=True)).start()
    api = server.client()
    pools = check(pools_schema.get_pools_with_detail,
                  api.get("/scheduler-stats/get_pools", params={"detail": "true"}))["pools"]
    protocols = {p["name"]: p["capabilities"]["storage_protocol"] for p in pools}
    assert protocols == {f"{HOST}@iscsi#iscsi": "iSCSI", f"{HOST}@local#local": "local",
                         f"{HOST}@nbd#nbd": "nbd"}
    for name in ("iscsi", "local", "nbd"):
        body = api.get(f"/capabilities/{HOST}@{name}").json()
        assert body["storage_protocol"] == protocols[f"{HOST}@{name}#{name}"]
    services = api.get("/os-services", params={"binary": VOLUME}).json()["services"]
    assert [s["host"] for s in services] == [f"{HOST}@iscsi", f"{HOST}@local", f"{HOST}@nbd"]

    for type_name, spec, backend in [("t-iscsi", "iSCSI", "iscsi"), ("t-nbd", "nbd", "nbd"),
                                     ("t-scoped", "<in> SCS", "iscsi"),
                                     ("t-local", "<or> ceph <or> local", "local")]:
        key = "capabilities:storage_protocol" if type_name == "t-scoped" else "storage_protocol"
        r = api.post("/types", {"volume_type": {"name": type_name, "extra_specs": {key: spec}}})
        assert r.status_code == 200, r.text
        r = api.get("/scheduler-stats/get_pools", params={"volume_type": type_name})
        assert r.json() == {"pools": [{"name": f"{HOST}@{backend}#{backend}"}]}
        for _ in range(2):  # not a coincidence of free space
            r = api.post("/volumes", {"volume": {"size": 1, "volume_type": type_name}})
            volume = api.wait_volume(r.json()["volume"]["id"], "available")
            assert volume["os-vol-host-attr:host"] == f"{HOST}@{backend}#{backend}"
            api.delete(f"/volumes/{volume['id']}")
    # a retype to a type the backend cannot serve moves the volume; one it can stays put
    r = api.post("/volumes", {"volume": {"size": 1, "volume_type": "t-iscsi"}})
    volume = api.wait_volume(r.json()["volume"]["id"], "available")
    r = api.post(f"/volumes/{volume['id']}/action", {"os-retype": {
        "new_type": "t-scoped", "migration_policy": "never"}})
    assert r.status_code == 202, r.text
    assert api.wait_volume(volume["id"], "available")["volume_type"] == "t-scoped"
    r = api.post(f"/volumes/{volume['id']}/action", {"os-retype": {
        "new_type": "t-nbd", "migration_policy": "on-demand"}})
    assert r.status_code == 202, r.text
    deadline = time.monotonic() + 60
    while (moved := api.get(f"/volumes/{volume['id']}").json()["volume"])[
            "os-vol-mig-status-attr:migstat"] not in ("success", "error"):
        assert time.monotonic() < deadline, moved
        time.sleep(0.1)
    assert (moved["os-vol-host-attr:host"], moved["volume_type"]) == (f"{HOST}@nbd#nbd",
                                                                      "t-nbd")
    api.delete(f"/volumes/{volume['id']}")
    api.post("/types", {"volume_type": {"name": "t-ceph",
                                        "extra_specs": {"storage_protocol": "ceph"}}})
    unschedulable(api, api.post("/volumes", {"volume": {"size": 1, "volume_type": "t-ceph"}}))
    api.close()
