"""openstacksdk against a real server, without Keystone.

`auth_type='none'` is the documented way in (its token is the fixed 'notused'); a project of
one's choice is `auth_type='admin_token'` with the noauth token 'admin:PROJECT', which is how the
two-project scenario runs. Bodies are fetched through the SDK's own adapter (same session,
same headers) and validated against Tempest's schemas.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import openstack
import pytest
from openstack import exceptions as sdk_exc

from tests.clients import PROJECTS, schemas
from tests.support.server import Server
from tests.support.waits import poll

MV = "3.71"

# openstacksdk's notices about its own future releases (InfluxDB, internal deprecations)
pytestmark = pytest.mark.filterwarnings("ignore::openstack.warnings._RemovedInSDKWarning")


def connect(server: Server, project: str) -> Any:
    return openstack.connect(
        auth_type="admin_token",
        auth={"token": f"admin:{project}", "endpoint": server.endpoint},
        block_storage_endpoint_override=server.endpoint,
    )


def raw(bs: Any, path: str, schema: dict[str, Any], version: str = MV) -> Any:
    """GET `path` through the SDK's block-storage adapter; check and return the body."""
    r = bs.get(path, microversion=version, raise_exc=False)
    body = r.json() if r.content else None
    schemas.validate(schema, r.status_code, body)
    return body


def wait(bs: Any, resource: Any, status: str = "available") -> Any:
    return bs.wait_for_status(resource, status, failures=["error"], interval=0.05, wait=30)


def gone(bs: Any, path: str) -> None:
    """Poll GET `path` through the SDK until it answers 404."""
    poll(lambda: bs.get(path, raise_exc=False).status_code, lambda code: code == 404,
         what=f"{path} deleted")


@pytest.fixture(scope="module")
def conns(server: Server) -> Iterator[dict[str, Any]]:
    made = {p: connect(server, p) for p in PROJECTS}
    yield made
    for c in made.values():
        c.close()


def test_auth_type_none_as_documented(server: Server) -> None:
    conn = openstack.connect(auth_type="none", block_storage_endpoint_override=server.endpoint)
    try:
        bs = conn.block_storage
        assert str(bs.get_endpoint()).rstrip("/") == server.endpoint
        v = wait(bs, bs.create_volume(size=1, name="sdk-none"))
        assert (v.size, v.name, v.status) == (1, "sdk-none", "available")
        assert v.id in {x.id for x in bs.volumes()}
        assert bs.find_volume("sdk-none", ignore_missing=False).id == v.id
        bs.delete_volume(v)
        bs.wait_for_delete(v, interval=0.05, wait=30)
        assert v.id not in {x.id for x in bs.volumes()}
    finally:
        conn.close()


class Project:
    def __init__(self, name: str, conn: Any) -> None:
        self.name = name
        self.bs = conn.block_storage
        self.vol: dict[str, str] = {}
        self.snap_id = ""
        self.gone: set[str] = set()

    def ids(self) -> set[str]:
        return set(self.vol.values())

    def show(self, volume_id: str, version: str = MV) -> dict[str, Any]:
        body = raw(self.bs, f"/volumes/{volume_id}", schemas.volumes(version).show_volume,
                   version)
        return dict(body["volume"])


def _build(p: Project) -> None:
    bs, n = p.bs, p.name
    base = bs.create_volume(size=1, name=f"{n}-3", description="base",
                            metadata={"tier": "gold"})
    assert (base.size, base.name) == (1, f"{n}-3")
    base = wait(bs, base)
    p.vol["base"] = base.id
    assert (base.size, base.metadata, base.project_id) == (1, {"tier": "gold"}, n)
    got = p.show(base.id)
    assert (got["status"], got["os-vol-tenant-attr:tenant_id"]) == ("available", n)
    assert p.show(base.id, "3.0")["size"] == 1

    snap = wait(bs, bs.create_snapshot(volume_id=base.id, name=f"{n}-snap"))
    p.snap_id = snap.id
    assert (snap.volume_id, snap.size, snap.status) == (base.id, 1, "available")
    s = raw(bs, f"/snapshots/{snap.id}", schemas.snapshots(MV).show_snapshot)["snapshot"]
    assert s["os-extended-snapshot-attributes:project_id"] == n

    from_snap = wait(bs, bs.create_volume(size=2, snapshot_id=snap.id, name=f"{n}-1"))
    clone = wait(bs, bs.create_volume(size=1, source_volume_id=base.id, name=f"{n}-2"))
    p.vol["from_snap"], p.vol["clone"] = from_snap.id, clone.id
    assert (from_snap.size, from_snap.snapshot_id) == (2, snap.id)
    assert (clone.size, clone.source_volume_id) == (1, base.id)

    bs.extend_volume(base, 3)
    extended = poll(lambda: bs.get_volume(base.id), lambda v: v.size == 3
                    and v.status == "available", what="extended to 3 GiB")
    assert extended.size == 3

    bs.set_volume_metadata(base, k1="v1", k2="v2")
    meta = raw(bs, f"/volumes/{base.id}/metadata", schemas.volumes(MV).show_volume_metadata)
    assert meta == {"metadata": {"tier": "gold", "k1": "v1", "k2": "v2"}}
    bs.delete_volume_metadata(base, keys=["k1"])
    assert bs.fetch_volume_metadata(base).metadata == {"tier": "gold", "k2": "v2"}

    plain = bs.create_volume(size=1, name=f"{n}-4")
    broken = bs.create_volume(size=1, name=f"{n}-5")
    p.vol["plain"], p.vol["broken"] = plain.id, broken.id
    wait(bs, plain)
    wait(bs, broken)
    bs.reset_volume_status(broken, status="error", attach_status=None, migration_status=None)
    assert bs.get_volume(broken.id).status == "error"


def _check_lists(p: Project, other: Project) -> None:
    bs, n = p.bs, p.name
    listed = {v.id for v in bs.volumes()}
    assert listed == p.ids()
    assert not listed & (other.ids() | other.gone)
    assert {v.id for v in bs.volumes(details=False)} == p.ids()
    # the SDK follows the next links itself: pages of 2 still yield all 5
    assert {v.id for v in bs.volumes(limit=2)} == p.ids()

    ordered = [f"{n}-{i}" for i in range(1, 6)]
    page = raw(bs, "/volumes/detail?limit=2&sort=name:asc",
               schemas.volumes(MV).list_volumes_with_detail)
    assert [v["name"] for v in page["volumes"]] == ordered[:2]
    marker = page["volumes"][-1]["id"]
    page = raw(bs, f"/volumes/detail?limit=2&sort=name:asc&marker={marker}",
               schemas.volumes(MV).list_volumes_with_detail)
    assert [v["name"] for v in page["volumes"]] == ordered[2:4]
    page = raw(bs, "/volumes?sort=name:desc", schemas.volumes(MV).list_volumes_no_detail)
    assert [v["name"] for v in page["volumes"]] == ordered[::-1]

    assert [v.id for v in bs.volumes(name=f"{n}-2")] == [p.vol["clone"]]
    assert list(bs.volumes(name=f"{other.name}-2")) == []
    assert {v.id for v in bs.volumes(status="available")} == p.ids() - {p.vol["broken"]}
    assert [v.id for v in bs.volumes(status="error")] == [p.vol["broken"]]
    # name lookups: GET /volumes/{name} must 404 before the SDK tries ?name=
    assert bs.find_volume(f"{n}-4", ignore_missing=False).id == p.vol["plain"]
    assert bs.find_volume(f"{other.name}-4", ignore_missing=True) is None

    assert [s.id for s in bs.snapshots()] == [p.snap_id]
    snaps = raw(bs, "/snapshots/detail", schemas.snapshots(MV).list_snapshots_with_detail)
    assert [s["id"] for s in snaps["snapshots"]] == [p.snap_id]


def _tear_down(p: Project) -> None:
    bs = p.bs
    with pytest.raises(sdk_exc.BadRequestException):
        bs.delete_volume(p.vol["base"])
    for role in ("from_snap", "clone", "plain", "broken"):
        bs.delete_volume(p.vol[role])
    bs.delete_snapshot(p.snap_id)
    gone(bs, f"/snapshots/{p.snap_id}")
    bs.delete_volume(p.vol["base"])
    for vid in p.ids():
        gone(bs, f"/volumes/{vid}")
    assert list(bs.volumes()) == []
    assert list(bs.snapshots()) == []
    with pytest.raises(sdk_exc.NotFoundException):
        bs.get_volume(p.vol["base"])
    p.gone, p.vol = p.ids(), {}


def test_lifecycle_in_two_projects(conns: dict[str, Any]) -> None:
    a, b = (Project(name, conns[name]) for name in PROJECTS)
    for p in (a, b):
        _build(p)
    _check_lists(a, b)
    _check_lists(b, a)
    _tear_down(a)
    assert {v.id for v in b.bs.volumes()} == b.ids()
    _check_lists(b, a)
    _tear_down(b)
