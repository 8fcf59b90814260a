"""Quota sets, quota classes and limits over HTTP, including enforcement end to end.

Each test works in a project of its own (the server is shared by the module), so usage and
limits never leak between tests.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from tempest.lib.api_schema.response.volume import limits as limits_schema
from tempest.lib.api_schema.response.volume import quota_classes as class_schema
from tempest.lib.api_schema.response.volume import quotas as quota_schema

from tests.support.checks import check, fault, fresh_project
from tests.support.server import Api, Server

#: Cinder 29's order of a quota set (per-type keys sit between backup_gigabytes and groups)
BASE_ORDER = ["volumes", "per_volume_gigabytes", "snapshots", "gigabytes", "backups",
              "backup_gigabytes"]
DEFAULTS = {"volumes": 10, "per_volume_gigabytes": -1, "snapshots": 10, "gigabytes": 1000,
            "backups": 10, "backup_gigabytes": 1000, "groups": 10}


@pytest.fixture
def project(server: Server) -> Iterator[tuple[str, Api]]:
    """A fresh project and a client speaking as it."""
    yield from fresh_project(server)


def make_type(api: Api) -> str:
    name = f"t-{uuid.uuid4().hex[:8]}"
    r = api.post("/types", {"volume_type": {"name": name}})
    assert r.status_code == 200, r.text
    return name


def create_volume(api: Api, **spec: Any) -> httpx.Response:
    spec.setdefault("size", 1)
    return api.post("/volumes", {"volume": spec})


def created(api: Api, **spec: Any) -> dict[str, Any]:
    r = create_volume(api, **spec)
    assert r.status_code == 202, r.text
    return api.wait_volume(r.json()["volume"]["id"], "available")


# ---------------------------------------------------------------------------- shapes


def test_defaults_shape(api: Api) -> None:
    gold = make_type(api)
    r = api.get("/os-quota-sets/admin/defaults")
    quota_set = check(quota_schema.show_quota_set, r)["quota_set"]
    keys = list(quota_set)
    assert keys[:6] == BASE_ORDER and keys[-2:] == ["groups", "id"]
    assert quota_set["id"] == "admin"
    assert {k: quota_set[k] for k in DEFAULTS} == DEFAULTS
    # every type has its three per-type keys, unlimited by default, newest type first
    assert keys[6:9] == [f"volumes_{gold}", f"gigabytes_{gold}", f"snapshots_{gold}"]
    assert quota_set["volumes___DEFAULT__"] == -1
    assert quota_set["snapshots___DEFAULT__"] == -1


def test_show_with_and_without_usage(project: tuple[str, Api], api: Api) -> None:
    name, client = project
    volume = created(client, size=2)
    for value in ("true", "True"):
        r = api.get(f"/os-quota-sets/{name}", params={"usage": value})
        quota_set = check(quota_schema.show_quota_set_usage, r)["quota_set"]
        assert quota_set["volumes"] == {"limit": 10, "in_use": 1, "reserved": 0}
        assert quota_set["gigabytes"] == {"limit": 1000, "in_use": 2, "reserved": 0}
        assert quota_set["volumes___DEFAULT__"] == {"limit": -1, "in_use": 1, "reserved": 0}
        assert quota_set["groups"]["in_use"] == 0
    # cinderclient's quota-show
    r = api.get(f"/os-quota-sets/{name}", params={"usage": "False"})
    quota_set = check(quota_schema.show_quota_set, r)["quota_set"]
    assert quota_set["volumes"] == 10 and quota_set["id"] == name
    assert check(quota_schema.show_quota_set, api.get(f"/os-quota-sets/{name}"))[
        "quota_set"] == quota_set
    fault(api.get(f"/os-quota-sets/{name}", params={"usage": "maybe"}), 400)
    # a project may read its own quotas
    assert client.get(f"/os-quota-sets/{name}").status_code == 200
    client.delete(f"/volumes/{volume['id']}")


def test_update_and_delete(project: tuple[str, Api], api: Api) -> None:
    name, _ = project
    gold = make_type(api)
    # what cinderclient's quota-update sends
    r = api.put(f"/os-quota-sets/{name}", {"quota_set": {"tenant_id": name, "volumes": 20}},
                params={"skip_validation": "False"})
    quota_set = check(quota_schema.update_quota_set, r)["quota_set"]
    assert "id" not in quota_set
    assert quota_set["volumes"] == 20 and quota_set["snapshots"] == 10
    r = api.put(f"/os-quota-sets/{name}", {"quota_set": {
        f"gigabytes_{gold}": "50", "snapshots": -1, "per_volume_gigabytes": 5}})
    quota_set = check(quota_schema.update_quota_set, r)["quota_set"]
    assert (quota_set[f"gigabytes_{gold}"], quota_set["snapshots"],
            quota_set["per_volume_gigabytes"]) == (50, -1, 5)
    shown = api.get(f"/os-quota-sets/{name}").json()["quota_set"]
    assert shown["volumes"] == 20 and shown[f"gigabytes_{gold}"] == 50

    check(quota_schema.delete_quota_set, api.delete(f"/os-quota-sets/{name}"))
    shown = api.get(f"/os-quota-sets/{name}").json()["quota_set"]
    assert {k: shown[k] for k in DEFAULTS} == DEFAULTS
    assert shown[f"gigabytes_{gold}"] == -1


@pytest.mark.parametrize(("quota_set", "words"), [
    ({"volumes": 5, "bogus": 1}, "Bad key(s) in quota set: bogus"),
    ({"volumes_no_such_type": 1}, "Bad key(s) in quota set: volumes_no_such_type"),
    ({"volumes": "many"}, "volumes must be an integer."),
    ({"volumes": 1.5}, "volumes must be an integer."),
    ({"volumes": True}, "volumes must be an integer."),
    ({"volumes": None}, "volumes must be an integer."),
    ({"volumes": -2}, "volumes must be >= -1"),
    ({"volumes": 2**31}, "volumes must be <= 2147483647"),
    ({"snapshots": 3, "gigabytes": -5}, "gigabytes must be >= -1"),
    ({}, "does not have enough properties"),
])
def test_bad_update_is_400_and_writes_nothing(project: tuple[str, Api], api: Api,
                                              quota_set: dict[str, Any], words: str) -> None:
    name, _ = project
    before = api.get(f"/os-quota-sets/{name}").json()
    assert words in fault(api.put(f"/os-quota-sets/{name}", {"quota_set": quota_set}), 400)
    assert api.get(f"/os-quota-sets/{name}").json() == before


def test_bad_update_bodies(api: Api) -> None:
    fault(api.put("/os-quota-sets/x", {"quota_set": {"volumes": 1}, "extra": 1}), 400)
    fault(api.put("/os-quota-sets/x", {"quota": {"volumes": 1}}), 400)
    fault(api.put("/os-quota-sets/x", {"quota_set": [1]}), 400)
    fault(api.request("PUT", "/os-quota-sets/x", content=b"{nope"), 400)


def test_limit_below_usage_is_refused_like_cinder(project: tuple[str, Api],
                                                  api: Api) -> None:
    name, client = project
    created(client)
    created(client)
    # Cinder checks usage only where the project already has a limit of its own: the first
    # limit below usage is taken (and blocks new volumes), a later one is refused
    first = api.put(f"/os-quota-sets/{name}", {"quota_set": {"volumes": 1}})
    assert first.status_code == 200 and first.json()["quota_set"]["volumes"] == 1
    fault(create_volume(client), 413)
    message = fault(api.put(f"/os-quota-sets/{name}", {"quota_set": {"volumes": 0}}), 400)
    assert message == ("Quota volumes limit must be equal or greater than existing resources. "
                       "Current usage is 2 and the requested limit is 0.")
    for value in (2, -1):
        r = api.put(f"/os-quota-sets/{name}", {"quota_set": {"volumes": value}})
        assert r.status_code == 200, r.text


def test_quota_class_default(api: Api) -> None:
    r = api.get("/os-quota-class-sets/default")
    quota_class_set = check(class_schema.show_quota_classes, r)["quota_class_set"]
    assert quota_class_set["id"] == "default"
    assert {k: quota_class_set[k] for k in DEFAULTS} == DEFAULTS


# ---------------------------------------------------------------------------- enforcement


def test_volumes_quota_enforced(project: tuple[str, Api], api: Api) -> None:
    name, client = project
    assert api.put(f"/os-quota-sets/{name}", {"quota_set": {"volumes": 1}}).status_code == 200
    created(client)
    r = create_volume(client)
    assert "Maximum number of volumes allowed (1) exceeded" in fault(r, 413)
    assert len(client.get("/volumes").json()["volumes"]) == 1
    usage = api.get(f"/os-quota-sets/{name}", params={"usage": "true"}).json()["quota_set"]
    assert usage["volumes"] == {"limit": 1, "in_use": 1, "reserved": 0}


def test_gigabytes_quota_enforced(project: tuple[str, Api], api: Api) -> None:
    name, client = project
    assert api.put(f"/os-quota-sets/{name}",
                   {"quota_set": {"gigabytes": 3}}).status_code == 200
    created(client, size=2)
    assert "gigabytes quota" in fault(create_volume(client, size=2), 413)
    created(client, size=1)


def test_per_type_quota_enforced(project: tuple[str, Api], api: Api) -> None:
    name, client = project
    bronze = make_type(api)
    r = api.put(f"/os-quota-sets/{name}", {"quota_set": {f"volumes_{bronze}": 1}})
    assert r.status_code == 200, r.text
    created(client, volume_type=bronze)
    message = fault(create_volume(client, volume_type=bronze), 413)
    assert f"volumes_{bronze}" in message
    created(client)  # the default type is not limited
    usage = api.get(f"/os-quota-sets/{name}", params={"usage": "true"}).json()["quota_set"]
    assert usage[f"volumes_{bronze}"]["in_use"] == 1
    assert usage["volumes"]["in_use"] == 2


def test_per_volume_gigabytes(project: tuple[str, Api], api: Api) -> None:
    name, client = project
    api.put(f"/os-quota-sets/{name}", {"quota_set": {"per_volume_gigabytes": 1}})
    fault(create_volume(client, size=2), 400)
    created(client, size=1)


# ---------------------------------------------------------------------------- limits


def test_limits(project: tuple[str, Api], api: Api) -> None:
    name, client = project
    body = check(limits_schema.show_limits, client.get("/limits"))
    assert body["limits"]["rate"] == []
    assert body["limits"]["absolute"] == {
        "maxTotalVolumes": 10, "maxTotalSnapshots": 10, "maxTotalVolumeGigabytes": 1000,
        "maxTotalBackups": 10, "maxTotalBackupGigabytes": 1000, "totalVolumesUsed": 0,
        "totalGigabytesUsed": 0, "totalSnapshotsUsed": 0, "totalBackupsUsed": 0,
        "totalBackupGigabytesUsed": 0}
    assert list(body["limits"]["absolute"])[:2] == ["maxTotalVolumes", "maxTotalSnapshots"]
    api.put(f"/os-quota-sets/{name}", {"quota_set": {"volumes": 4}})
    created(client, size=3)
    absolute = check(limits_schema.show_limits, client.get("/limits"))["limits"]["absolute"]
    assert (absolute["maxTotalVolumes"], absolute["totalVolumesUsed"],
            absolute["totalGigabytesUsed"]) == (4, 1, 3)
    # from 3.39 an admin may look at another project
    r = api.get("/limits", params={"project_id": name})
    assert check(limits_schema.show_limits, r)["limits"]["absolute"]["totalVolumesUsed"] == 1
    # before 3.39 the parameter is ignored: the caller's own limits
    old = server_client(api, "3.38")
    assert old.get("/limits", params={"project_id": name}).json() == api.get("/limits").json()
    old.close()


def server_client(api: Api, version: str) -> Api:
    """A client like `api` (same endpoint and identity) at another microversion."""
    endpoint = str(api.http.base_url).rstrip("/")
    return Api(endpoint, project="admin", user="admin", version=version)
