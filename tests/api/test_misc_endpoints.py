"""Availability zones, services, extensions and scheduler pools over HTTP.

The default server has one file backend named "default" in zone "nova"; a second server with
two backends in two zones checks that everything is derived from the configuration.
"""

from __future__ import annotations

import shutil
import socket
import uuid
from datetime import UTC, datetime

import pytest
from tempest.lib.api_schema.response.volume import extensions as extensions_schema
from tempest.lib.api_schema.response.volume import scheduler_stats as pools_schema
from tempest.lib.api_schema.response.volume import services as services_schema
from tempest.lib.api_schema.response.volume.v3_7 import services as services_schema_3_7

from tests.support.checks import check
from tests.support.server import Api, Server

TWO_BACKENDS = """
host = "storage1"

[backends.fast]
driver = "file"
availability_zone = "az-a"
volume_backend_name = "fastpool"
total_capacity_gb = 100
reserved_percentage = 5

[backends.slow]
driver = "file"
availability_zone = "az-b"
"""


def at(server: Server, version: str) -> Api:
    return server.client(version=version)


# ---------------------------------------------------------------------------- zones


def test_availability_zones(api: Api) -> None:
    r = api.get("/os-availability-zone")
    assert r.status_code == 200
    assert r.json() == {"availabilityZoneInfo": [
        {"zoneName": "nova", "zoneState": {"available": True}}]}


# ---------------------------------------------------------------------------- services


def test_services_latest(api: Api) -> None:
    services = check(services_schema_3_7.list_services, api.get("/os-services"))["services"]
    scheduler, volume = services
    host = socket.gethostname()
    # the field sets Cinder 29 returns at 3.71
    assert scheduler == {"binary": "cinder-scheduler", "host": host, "zone": "nova",
                         "status": "enabled", "state": "up",
                         "updated_at": scheduler["updated_at"], "cluster": None,
                         "disabled_reason": None}
    assert volume == {"binary": "cinder-volume", "host": f"{host}@default", "zone": "nova",
                      "status": "enabled", "state": "up", "updated_at": volume["updated_at"],
                      "backend_state": "up", "cluster": None, "disabled_reason": None,
                      "replication_status": "disabled", "active_backend_id": None,
                      "frozen": False}
    age = datetime.now(UTC).replace(tzinfo=None) - datetime.fromisoformat(volume["updated_at"])
    assert abs(age.total_seconds()) < 60


@pytest.mark.parametrize(("version", "cluster", "backend_state"), [
    ("3.0", False, False), ("3.7", True, False), ("3.32", True, False), ("3.49", True, True)])
def test_services_microversions(server: Server, version: str, cluster: bool,
                                backend_state: bool) -> None:
    api = at(server, version)
    schema = services_schema_3_7 if cluster else services_schema
    services = check(schema.list_services, api.get("/os-services"))["services"]
    for s in services:
        assert ("cluster" in s) is cluster
    volume = next(s for s in services if s["binary"] == "cinder-volume")
    assert ("backend_state" in volume) is backend_state
    api.close()


def test_services_filters(api: Api) -> None:
    host = socket.gethostname()
    by_binary = api.get("/os-services", params={"binary": "cinder-volume"}).json()["services"]
    assert [s["host"] for s in by_binary] == [f"{host}@default"]
    # a host finds its backends too (Cinder's host-level match); a backend only itself
    by_host = api.get("/os-services", params={"host": host}).json()["services"]
    assert [s["binary"] for s in by_host] == ["cinder-scheduler", "cinder-volume"]
    by_backend = api.get("/os-services", params={"host": f"{host}@default"}).json()
    assert [s["binary"] for s in by_backend["services"]] == ["cinder-volume"]
    legacy = api.get("/os-services", params={"service": "cinder-scheduler"}).json()
    assert [s["binary"] for s in legacy["services"]] == ["cinder-scheduler"]
    assert api.get("/os-services", params={"host": "nowhere"}).json() == {"services": []}


# ---------------------------------------------------------------------------- extensions


def test_extensions(api: Api) -> None:
    extensions = check(extensions_schema.list_extensions, api.get("/extensions"))["extensions"]
    aliases = {e["alias"] for e in extensions}
    assert {"os-quota-sets", "qos-specs", "os-volume-type-access", "os-types-extra-specs",
            "scheduler-stats", "os-availability-zone", "os-services"} <= aliases
    assert len(extensions) == 32


# ---------------------------------------------------------------------------- pools


def test_pools(api: Api) -> None:
    host = socket.gethostname()
    body = check(pools_schema.get_pools_no_detail, api.get("/scheduler-stats/get_pools"))
    assert body == {"pools": [{"name": f"{host}@default#default"}]}
    r = api.get("/scheduler-stats/get_pools", params={"detail": "True"})
    (pool,) = check(pools_schema.get_pools_with_detail, r)["pools"]
    caps = pool["capabilities"]
    assert pool["name"] == f"{host}@default#default"
    assert caps["pool_name"] == "default" and caps["volume_backend_name"] == "default"
    assert 0 < caps["free_capacity_gb"] <= caps["total_capacity_gb"]
    assert caps["allocated_capacity_gb"] >= 0 and caps["provisioned_capacity_gb"] >= 0
    assert caps["thin_provisioning_support"] is True
    assert caps["thick_provisioning_support"] is False
    assert caps["max_over_subscription_ratio"] == 20.0
    assert caps["reserved_percentage"] == 0
    assert caps["QoS_support"] is False and caps["multiattach"] is True
    assert (caps["storage_protocol"], caps["vendor_name"]) == ("local", "blockyard")
    assert isinstance(caps["driver_version"], str) and caps["timestamp"]
    # a volume's host attribute names its pool
    r = api.post("/volumes", {"volume": {"size": 1}})
    volume = api.wait_volume(r.json()["volume"]["id"], "available")
    assert volume["os-vol-host-attr:host"] == pool["name"]
    api.delete(f"/volumes/{volume['id']}")


def test_pool_filters(server: Server, api: Api) -> None:
    host = socket.gethostname()
    r = api.get("/scheduler-stats/get_pools", params={"name": f"{host}@default#default"})
    assert len(r.json()["pools"]) == 1
    assert api.get("/scheduler-stats/get_pools", params={"name": "x@y#z"}).json() == {
        "pools": []}
    r = api.get("/scheduler-stats/get_pools", params={"detail": "maybe"})
    assert r.status_code == 400 and list(r.json()) == ["badRequest"]
    r = api.get("/scheduler-stats/get_pools", params={"colour": "red"})
    assert r.status_code == 400 and "colour" in r.json()["badRequest"]["message"]
    old = at(server, "3.32")  # before 3.33 unknown filters are ignored
    assert len(old.get("/scheduler-stats/get_pools", params={"colour": "red"}).json()[
        "pools"]) == 1
    old.close()
    name = f"t-{uuid.uuid4().hex[:8]}"
    api.post("/types", {"volume_type": {"name": name,
                                        "extra_specs": {"volume_backend_name": "other"}}})
    assert api.get("/scheduler-stats/get_pools", params={"volume_type": name}).json() == {
        "pools": []}
    r = api.get("/scheduler-stats/get_pools", params={"volume_type": "__DEFAULT__"})
    assert len(r.json()["pools"]) == 1
    r = api.get("/scheduler-stats/get_pools", params={"volume_type": "no-such-type"})
    assert r.status_code == 404


# ---------------------------------------------------------------------------- configured


def test_everything_follows_the_configuration(make_server: type[Server]) -> None:
    server = make_server("state", config=TWO_BACKENDS).start()
    api = server.client()
    zones = api.get("/os-availability-zone").json()["availabilityZoneInfo"]
    assert [z["zoneName"] for z in zones] == ["az-a", "az-b"]
    services = api.get("/os-services").json()["services"]
    assert [(s["binary"], s["host"], s["zone"]) for s in services] == [
        ("cinder-scheduler", "storage1", "az-a"),
        ("cinder-volume", "storage1@fast", "az-a"),
        ("cinder-volume", "storage1@slow", "az-b")]
    pools = api.get("/scheduler-stats/get_pools", params={"detail": "true"}).json()["pools"]
    assert [p["name"] for p in pools] == ["storage1@fast#fast", "storage1@slow#slow"]
    fast = pools[0]["capabilities"]
    assert (fast["total_capacity_gb"], fast["reserved_percentage"],
            fast["volume_backend_name"]) == (100.0, 5, "fastpool")
    assert 0 < fast["free_capacity_gb"] <= 100.0

    r = api.post("/types", {"volume_type": {
        "name": "fast", "extra_specs": {"volume_backend_name": "fastpool"}}})
    assert r.status_code == 200, r.text
    r = api.get("/scheduler-stats/get_pools", params={"volume_type": "fast"})
    assert r.json() == {"pools": [{"name": "storage1@fast#fast"}]}
    r = api.post("/volumes", {"volume": {"size": 1, "volume_type": "fast"}})
    volume = api.wait_volume(r.json()["volume"]["id"], "available")
    assert volume["os-vol-host-attr:host"] == "storage1@fast#fast"
    assert volume["availability_zone"] == "az-a"
    r = api.post("/volumes", {"volume": {"size": 1, "availability_zone": "az-b"}})
    volume = api.wait_volume(r.json()["volume"]["id"], "available")
    assert volume["os-vol-host-attr:host"] == "storage1@slow#slow"
    # the type pins the backend, the zone rules it out: no valid backend, so (as in Cinder)
    # the volume is in error on no host, and a user message says why
    r = api.post("/volumes", {"volume": {"size": 1, "volume_type": "fast",
                                         "availability_zone": "az-b"}})
    assert r.status_code == 202, r.text
    volume = api.wait_volume(r.json()["volume"]["id"], "error")
    assert volume["os-vol-host-attr:host"] is None and volume["availability_zone"] == "az-b"
    [message] = [m for m in api.get("/messages").json()["messages"]
                 if m["resource_uuid"] == volume["id"]]
    assert message["event_id"] == "VOLUME_VOLUME_001_003"
    api.close()


def test_a_backend_that_cannot_report_is_down(make_server: type[Server]) -> None:
    server = make_server("state", config=TWO_BACKENDS).start()
    shutil.rmtree(server.state_dir / "volumes" / "slow")
    api = server.client()
    services = api.get("/os-services").json()["services"]
    states = {s["host"]: s.get("backend_state") for s in services}
    assert states == {"storage1": None, "storage1@fast": "up", "storage1@slow": "down"}
    pools = api.get("/scheduler-stats/get_pools").json()["pools"]
    assert pools == [{"name": "storage1@fast#fast"}]
    api.close()
