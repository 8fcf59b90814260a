"""python-cinderclient against a real server: its Python API (noauth plugin, microversion 3.71)
for the full lifecycle in two projects, and the `cinder` CLI binary as an operator types it.

Every body the client received, and every body fetched raw where the client hides it, is
validated against Tempest's schema for the microversion it was asked at.
"""

from __future__ import annotations

import os
import re
import subprocess
from typing import Any

import httpx
import pytest
from cinderclient import api_versions  # type: ignore[import-untyped]
from cinderclient import client as cinder_client
from cinderclient import exceptions as cinder_exc
from cinderclient.contrib.noauth import CinderNoAuthPlugin  # type: ignore[import-untyped]
from keystoneauth1 import session as ks_session

from tests.clients import BIN, PROJECTS, schemas
from tests.support.server import Api, Server
from tests.support.waits import poll

MV = "3.71"
UUID = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"


def cinder(server: Server, project: str, version: str = MV) -> Any:
    """A cinderclient v3 client as `admin` in `project`, the way `cinder --os-auth-type noauth`
    builds one (token 'admin:project', X-Project-Id, endpoint override)."""
    auth = CinderNoAuthPlugin(user_id="admin", project_id=project, endpoint=server.endpoint)
    return cinder_client.Client(version, session=ks_session.Session(auth=auth),
                                os_endpoint=server.endpoint)


def show(api: Api, volume_id: str, version: str = MV) -> dict[str, Any]:
    """GET /volumes/{id} at `version`, checked against Tempest's show_volume."""
    r = api.get(f"/volumes/{volume_id}",
                headers={"OpenStack-API-Version": f"volume {version}"})
    return dict(schemas.check(schemas.volumes(version).show_volume, r)["volume"])


def show_snapshot(api: Api, snapshot_id: str, version: str = MV) -> dict[str, Any]:
    r = api.get(f"/snapshots/{snapshot_id}",
                headers={"OpenStack-API-Version": f"volume {version}"})
    return dict(schemas.check(schemas.snapshots(version).show_snapshot, r)["snapshot"])


def available(api: Api, volume_id: str) -> dict[str, Any]:
    api.wait_volume(volume_id, "available")
    return show(api, volume_id)


def names(volumes: list[Any]) -> list[str]:
    return [v.name for v in volumes]


# ------------------------------------------------------------------------------ versions


def test_version_discovery_and_documents(server: Server) -> None:
    cs = cinder(server, "projA", "3.0")
    assert api_versions.discover_version(cs, api_versions.APIVersion(MV)) == \
        api_versions.APIVersion(MV)
    root = schemas.check(schemas.versions.list_versions, httpx.get(server.url + "/"))
    v3 = schemas.check(schemas.versions.volume_api_version_details,
                       httpx.get(server.endpoint + "/"))
    for doc in (root, v3):
        (version,) = doc["versions"]
        assert (version["id"], version["min_version"], version["version"]) == \
            ("v3.0", "3.0", MV)


@pytest.mark.parametrize("version", ["3.0", "3.13", "3.47", "3.48", "3.60", "3.61", "3.62",
                                     "3.63", "3.64", "3.65", "3.68", "3.69", "3.71"])
def test_volume_bodies_at_each_microversion(server: Server, version: str) -> None:
    """Create, show, update and list through a client pinned at `version`: each body matches
    Tempest's schema for that microversion, with exactly the fields that version adds."""
    cs = cinder(server, "mvproj", version)
    api = server.client(project="mvproj", version=version)
    v = cs.volumes.create(1, name=f"mv-{version}")
    try:
        mod = schemas.volumes(version)
        schemas.validate(mod.create_volume, 202, {"volume": v._info})
        api.wait_volume(v.id, "available")
        _, body = cs.client.get(f"/volumes/{v.id}")
        schemas.validate(mod.show_volume, 200, body)
        got = body["volume"]
        mv = schemas.minor(version)
        for field, since in (("group_id", 13), ("provider_id", 21), ("service_uuid", 48),
                             ("shared_targets", 48), ("cluster_name", 61),
                             ("volume_type_id", 63), ("consumes_quota", 65)):
            assert (field in got) == (mv >= since), (field, version)
        assert (got["size"], got["name"], got["status"]) == (1, f"mv-{version}", "available")
        body = cs.volumes.update(v.id, name=f"mv-{version}-renamed")
        schemas.validate(schemas.update_volume(version), 200, dict(body))
        assert body["volume"]["name"] == f"mv-{version}-renamed"
        _, listed = cs.client.get("/volumes/detail")
        schemas.validate(mod.list_volumes_with_detail, 200, listed)
        assert [x["id"] for x in listed["volumes"]] == [v.id]
        _, listed = cs.client.get("/volumes")
        schemas.validate(mod.list_volumes_no_detail, 200, listed)
    finally:
        cs.volumes.delete(v.id)
        api.wait_volume(v.id, "deleted")
        api.close()


# ------------------------------------------------------------------------------ lifecycle


class Project:
    """One project's client, raw API and the volumes the scenario made in it."""

    def __init__(self, server: Server, name: str) -> None:
        self.name = name
        self.cs = cinder(server, name)
        self.api = server.client(project=name)
        self.vol: dict[str, Any] = {}  # role → volume id
        self.snap_id = ""
        self.gone: set[str] = set()  # ids of volumes deleted by the scenario

    def ids(self) -> set[str]:
        return set(self.vol.values())


def _create(p: Project, size: int, name: str, **kw: Any) -> str:
    v = p.cs.volumes.create(size, name=name, **kw)
    # the exact body the client received
    schemas.validate(schemas.volumes(MV).create_volume, 202, {"volume": v._info})
    assert (v.size, v.name) == (size, name)
    assert v.status in ("creating", "available")
    return str(v.id)


def _build(p: Project) -> None:
    """base (size 1, then extended to 3) → snapshot → from-snapshot (2) and clone (1),
    plus two plain volumes; names sort as the role order of the listing checks."""
    n = p.name
    base = _create(p, 1, f"{n}-3", description="base volume", metadata={"tier": "gold"})
    got = available(p.api, base)
    assert got["size"] == 1
    assert got["metadata"] == {"tier": "gold"}
    assert got["os-vol-tenant-attr:tenant_id"] == n
    assert got["user_id"] == "admin"
    assert (got["snapshot_id"], got["source_volid"], got["bootable"]) == (None, None, "false")
    p.vol["base"] = base
    # the same object at 3.0, where Tempest's base schema applies
    old = show(p.api, base, "3.0")
    assert "volume_type_id" not in old and "consumes_quota" not in old
    assert old["size"] == 1

    snap = p.cs.volume_snapshots.create(base, name=f"{n}-snap", description="s",
                                        metadata={"taken": "1"})
    schemas.validate(schemas.snapshots(MV).create_snapshot, 202, {"snapshot": snap._info})
    p.snap_id = snap.id
    p.api.wait_snapshot(snap.id, "available")
    s = show_snapshot(p.api, snap.id)
    assert (s["volume_id"], s["size"], s["name"]) == (base, 1, f"{n}-snap")
    assert s["metadata"] == {"taken": "1"}
    assert s["os-extended-snapshot-attributes:project_id"] == n
    s_old = show_snapshot(p.api, snap.id, "3.0")
    assert "user_id" not in s_old and s_old["id"] == snap.id
    assert p.cs.volume_snapshots.get(snap.id).status == "available"
    body = p.cs.volume_snapshots.update(snap.id, description="taken by the test")
    schemas.validate(schemas.snapshots(MV).update_snapshot, 200, dict(body))
    assert body["snapshot"]["description"] == "taken by the test"
    p.cs.volume_snapshots.set_metadata(snap.id, {"extra": "x"})
    p.cs.volume_snapshots.delete_metadata(snap.id, ["taken"])
    meta = schemas.check(schemas.snapshots(MV).show_snapshot_metadata,
                         p.api.get(f"/snapshots/{snap.id}/metadata"))
    assert meta == {"metadata": {"extra": "x"}}

    p.vol["from_snap"] = _create(p, 2, f"{n}-1", snapshot_id=snap.id)
    p.vol["clone"] = _create(p, 1, f"{n}-2", source_volid=base)
    got = available(p.api, p.vol["from_snap"])
    assert (got["size"], got["snapshot_id"], got["source_volid"]) == (2, snap.id, None)
    got = available(p.api, p.vol["clone"])
    assert (got["size"], got["source_volid"], got["snapshot_id"]) == (1, base, None)

    # extend the base (it has a snapshot and a clone: still allowed)
    p.cs.volumes.extend(base, 3)
    got = poll(lambda: show(p.api, base), lambda v: v["status"] == "available"
               and v["size"] == 3, what=f"{base} extended to 3 GiB")
    assert p.cs.volumes.get(base).size == 3

    # metadata: set two keys, unset one (cinderclient ≥3.15 does GET + PUT with If-Match)
    p.cs.volumes.set_metadata(base, {"k1": "v1", "k2": "v2"})
    meta = schemas.check(schemas.volumes(MV).show_volume_metadata,
                         p.api.get(f"/volumes/{base}/metadata"))["metadata"]
    assert meta == {"tier": "gold", "k1": "v1", "k2": "v2"}
    p.cs.volumes.delete_metadata(base, ["k1"])
    assert p.cs.volumes.get(base).metadata == {"tier": "gold", "k2": "v2"}
    item = schemas.check(schemas.volumes(MV).show_volume_metadata_item,
                         p.api.get(f"/volumes/{base}/metadata/k2"))
    assert item == {"meta": {"k2": "v2"}}

    # update: the client returns the whole body
    body = p.cs.volumes.update(base, description="the base")
    schemas.validate(schemas.update_volume(MV), 200, dict(body))
    assert body["volume"]["description"] == "the base"
    assert body["volume"]["size"] == 3

    p.vol["plain"] = _create(p, 1, f"{n}-4")
    p.vol["broken"] = _create(p, 1, f"{n}-5")
    available(p.api, p.vol["plain"])
    available(p.api, p.vol["broken"])
    p.cs.volumes.reset_state(p.vol["broken"], "error")
    assert show(p.api, p.vol["broken"])["status"] == "error"


def _check_lists(p: Project, other: Project) -> None:
    n, cs, api = p.name, p.cs, p.api
    everything = cs.volumes.list()
    assert {v.id for v in everything} == p.ids()
    assert not {v.id for v in everything} & (other.ids() | other.gone)
    assert {v.id for v in cs.volumes.list(detailed=False)} == p.ids()

    detail = schemas.check(schemas.volumes(MV).list_volumes_with_detail,
                           api.get("/volumes/detail"))
    assert {v["id"] for v in detail["volumes"]} == p.ids()
    assert {v["os-vol-tenant-attr:tenant_id"] for v in detail["volumes"]} == {n}
    summary = schemas.check(schemas.volumes(MV).list_volumes_no_detail, api.get("/volumes"))
    assert {v["id"] for v in summary["volumes"]} == p.ids()
    old = api.get("/volumes/detail", headers={"OpenStack-API-Version": "volume 3.0"})
    assert {v["id"] for v in schemas.check(schemas.volumes("3.0").list_volumes_with_detail,
                                           old)["volumes"]} == p.ids()

    # sort by name, both ways
    ordered = [f"{n}-{i}" for i in range(1, 6)]
    assert names(cs.volumes.list(sort="name:asc")) == ordered
    assert names(cs.volumes.list(sort="name:desc")) == ordered[::-1]

    # pages of 2 by name: limit + marker, through the client and raw (with the next link)
    page1 = cs.volumes.list(limit=2, sort="name:asc")
    assert names(page1) == ordered[:2]
    page2 = cs.volumes.list(limit=2, marker=page1[-1].id, sort="name:asc")
    assert names(page2) == ordered[2:4]
    page3 = cs.volumes.list(limit=2, marker=page2[-1].id, sort="name:asc")
    assert names(page3) == ordered[4:]
    raw = schemas.check(schemas.volumes(MV).list_volumes_with_detail,
                        api.get("/volumes/detail", params={"limit": 2,
                                                           "sort": "name:asc"}))
    assert [v["name"] for v in raw["volumes"]] == ordered[:2]
    (link,) = raw["volumes_links"]
    assert link["rel"] == "next"
    assert f"marker={page1[-1].id}" in link["href"]
    nxt = schemas.check(schemas.volumes(MV).list_volumes_with_detail,
                        api.get(link["href"].split("/v3", 1)[1]))
    assert [v["name"] for v in nxt["volumes"]] == ordered[2:4]
    first_two, count = cs.volumes.list(search_opts={"with_count": True}, limit=2,
                                       sort="name:asc")
    assert (names(first_two), count) == (ordered[:2], 5)
    counted = schemas.check(schemas.volumes(MV).list_volumes_with_detail,
                            api.get("/volumes/detail", params={"with_count": "true",
                                                               "status": "available"}))
    assert counted["count"] == 4 and len(counted["volumes"]) == 4
    summary_page = schemas.check(
        schemas.volumes(MV).list_volumes_no_detail,
        api.get("/volumes", params={"limit": 3, "sort": "name:desc"}))
    assert [v["name"] for v in summary_page["volumes"]] == ordered[::-1][:3]

    # filters: name, status (the broken one is in error)
    assert [v.id for v in cs.volumes.list(search_opts={"name": f"{n}-2"})] == \
        [p.vol["clone"]]
    assert cs.volumes.list(search_opts={"name": f"{other.name}-2"}) == []
    assert {v.id for v in cs.volumes.list(search_opts={"status": "available"})} == \
        p.ids() - {p.vol["broken"]}
    assert [v.id for v in cs.volumes.list(search_opts={"status": "error"})] == \
        [p.vol["broken"]]

    # an admin may still ask for every project
    assert p.ids() | other.ids() <= {
        v.id for v in cs.volumes.list(search_opts={"all_tenants": 1})}

    s = cs.volumes.summary(all_tenants=False)
    assert (s["volume-summary"]["total_count"], s["volume-summary"]["total_size"]) == \
        (5, 3 + 2 + 1 + 1 + 1)
    schemas.check(schemas.volumes(MV).show_volume_summary, api.get("/volumes/summary"))

    # snapshots
    assert [s.id for s in cs.volume_snapshots.list()] == [p.snap_id]
    snaps = schemas.check(schemas.snapshots(MV).list_snapshots_with_detail,
                          api.get("/snapshots/detail"))
    assert [s["id"] for s in snaps["snapshots"]] == [p.snap_id]
    snaps = schemas.check(schemas.snapshots(MV).list_snapshots_no_detail,
                          api.get("/snapshots"))
    assert [s["id"] for s in snaps["snapshots"]] == [p.snap_id]
    snaps = schemas.check(schemas.snapshots("3.0").list_snapshots_with_detail,
                          api.get("/snapshots/detail",
                                  headers={"OpenStack-API-Version": "volume 3.0"}))
    assert [s["id"] for s in snaps["snapshots"]] == [p.snap_id]


def _tear_down(p: Project) -> None:
    cs, api = p.cs, p.api
    # a volume with a snapshot cannot go
    with pytest.raises(cinder_exc.BadRequest):
        cs.volumes.delete(p.vol["base"])
    assert show(api, p.vol["base"])["status"] == "available"
    for role in ("from_snap", "clone", "plain", "broken"):
        cs.volumes.delete(p.vol[role])
    cs.volume_snapshots.delete(p.snap_id)
    api.wait_snapshot(p.snap_id, "deleted")
    r = api.delete(f"/volumes/{p.vol['base']}")
    schemas.validate(schemas.volumes(MV).delete_volume, r.status_code,
                     r.json() if r.content else None)
    for vid in p.ids():
        api.wait_volume(vid, "deleted")
    assert cs.volumes.list() == []
    assert cs.volume_snapshots.list() == []
    with pytest.raises(cinder_exc.NotFound):
        cs.volumes.get(p.vol["base"])
    p.gone, p.vol = p.ids(), {}


def test_lifecycle_in_two_projects(server: Server) -> None:
    a, b = (Project(server, name) for name in PROJECTS)
    try:
        for p in (a, b):
            _build(p)
        _check_lists(a, b)
        _check_lists(b, a)
        _tear_down(a)
        # b is untouched by a's clean-up
        assert {v.id for v in b.cs.volumes.list()} == b.ids()
        _check_lists(b, a)
        _tear_down(b)
    finally:
        for p in (a, b):
            p.api.close()


# ------------------------------------------------------------------------------ the CLI


def _cinder_cli(server: Server, project: str, *args: str) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OS_", "CINDER_"))}
    argv = [str(BIN / "cinder"), "--os-auth-type", "noauth", "--os-endpoint", server.endpoint,
            "--os-user-id", "admin", "--os-project-id", project, *args]
    done = subprocess.run(argv, env=env, stdin=subprocess.DEVNULL, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, f"{' '.join(args)} → rc {done.returncode}:\n{done.stderr}"
    return done.stdout


def _field(table: str, name: str) -> str:
    m = re.search(rf"^\|\s*{re.escape(name)}\s*\|\s*(.*?)\s*\|$", table, re.M)
    assert m, f"no {name} in\n{table}"
    return m.group(1)


def _listed_ids(table: str) -> list[str]:
    return re.findall(rf"^\|\s*({UUID})\s*\|", table, re.M)


def test_cinder_cli(server: Server) -> None:
    project = "cliproj"
    api = server.client(project=project)
    try:
        assert "3.71" in _cinder_cli(server, project, "version-list")
        ids = {}
        for name in ("cli-b", "cli-a", "cli-c"):
            out = _cinder_cli(server, project, "create", "--name", name, "1")
            assert _field(out, "name") == name and _field(out, "size") == "1"
            ids[name] = _field(out, "id")
            api.wait_volume(ids[name], "available")

        out = _cinder_cli(server, project, "list")
        assert set(_listed_ids(out)) == set(ids.values())
        out = _cinder_cli(server, project, "--os-volume-api-version", MV, "list", "--limit", "2",
                          "--sort", "name:asc", "--filters", "status=available")
        assert _listed_ids(out) == [ids["cli-a"], ids["cli-b"]]
        assert _cinder_cli(server, "someone-else", "list").count("cli-") == 0

        _cinder_cli(server, project, "extend", ids["cli-a"], "2")
        poll(lambda: show(api, ids["cli-a"]),
             lambda v: v["size"] == 2 and v["status"] == "available", what="extended")
        _cinder_cli(server, project, "metadata", ids["cli-a"], "set", "k=v", "x=y")
        _cinder_cli(server, project, "metadata", ids["cli-a"], "unset", "x")
        out = _cinder_cli(server, project, "show", ids["cli-a"])
        assert _field(out, "size") == "2"
        assert _field(out, "status") == "available"
        assert show(api, ids["cli-a"])["metadata"] == {"k": "v"}

        out = _cinder_cli(server, project, "snapshot-create", "--name", "cli-s", ids["cli-a"])
        snap_id = _field(out, "id")
        assert _field(out, "volume_id") == ids["cli-a"]
        api.wait_snapshot(snap_id, "available")
        assert _listed_ids(_cinder_cli(server, project, "snapshot-list")) == [snap_id]
        _cinder_cli(server, project, "snapshot-delete", snap_id)
        api.wait_snapshot(snap_id, "deleted")

        out = _cinder_cli(server, project, "delete", *ids.values())
        assert out.count("has been accepted") == 3
        for vid in ids.values():
            api.wait_volume(vid, "deleted")
        assert _listed_ids(_cinder_cli(server, project, "list")) == []
    finally:
        api.close()
