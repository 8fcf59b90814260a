"""The volumes API over HTTP against a real server: wire format, errors, lifecycle details."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import jsonschema
import pytest
from tempest.lib.api_schema.response.volume import volumes as schema_3_0
from tempest.lib.api_schema.response.volume.v3_69 import volumes as schema_3_69

from tests.support.checks import fault
from tests.support.server import Api, Server


def _create(api: Api, **spec: Any) -> dict[str, Any]:
    spec.setdefault("size", 1)
    r = api.post("/volumes", {"volume": spec})
    assert r.status_code == 202, r.text
    return api.wait_volume(r.json()["volume"]["id"], "available")


def _count(api: Api) -> int:
    return len(api.get("/volumes").json()["volumes"])


def test_version_headers_and_request_ids(api: Api) -> None:
    r = api.get("/volumes")
    assert r.headers["OpenStack-API-Version"] == "volume 3.71"
    assert r.headers["Vary"] == "OpenStack-API-Version"
    assert r.headers["X-OpenStack-Request-Id"].startswith("req-")
    assert r.headers["X-Compute-Request-Id"] == r.headers["X-OpenStack-Request-Id"]


def test_versions_documents(server: Server) -> None:
    root = httpx.get(server.url + "/")
    assert root.status_code == 300
    assert root.headers["OpenStack-API-Version"] == "volume 3.0"
    (version,) = root.json()["versions"]
    assert (version["id"], version["version"], version["min_version"]) == \
        ("v3.0", "3.71", "3.0")
    assert httpx.get(server.url + "/v3/").json() == root.json()
    # the SDK asks for /v3 without the slash first
    assert httpx.get(server.url + "/v3", follow_redirects=True).status_code == 200


@pytest.mark.parametrize(
    ("header", "status"),
    [("volume abc", 400), ("volume 3.99", 406), ("volume 4.0", 406), ("volume 3.", 400)],
)
def test_bad_microversions(server: Server, header: str, status: int) -> None:
    r = httpx.get(server.endpoint + "/volumes", headers={"OpenStack-API-Version": header})
    fault(r, status)  # 400 badRequest, 406 computeFault
    assert r.headers["Vary"] == "OpenStack-API-Version"


def test_latest_and_no_header(server: Server) -> None:
    latest = httpx.get(server.endpoint + "/volumes",
                       headers={"OpenStack-API-Version": "volume latest"})
    assert latest.headers["OpenStack-API-Version"] == "volume 3.71"
    plain = httpx.get(server.endpoint + "/volumes")
    assert plain.headers["OpenStack-API-Version"] == "volume 3.0"


def test_bodies_match_tempest_schemas(server: Server) -> None:
    for version, schema in (("3.0", schema_3_0), ("3.71", schema_3_69)):
        api = server.client(version=version)
        r = api.post("/volumes", {"volume": {"size": 1, "name": "schema",
                                             "metadata": {"a": "b"}}})
        assert r.status_code == 202
        body = r.json()
        if version == "3.0":  # the 3.69 create schema lacks the 3.61+ fields
            jsonschema.validate(body, schema.create_volume["response_body"])
        vid = body["volume"]["id"]
        api.wait_volume(vid, "available")
        jsonschema.validate(api.get(f"/volumes/{vid}").json(),
                            schema.show_volume["response_body"])
        jsonschema.validate(api.get("/volumes/detail").json(),
                            schema.list_volumes_with_detail["response_body"])
        jsonschema.validate(api.get("/volumes?limit=1").json(),
                            schema.list_volumes_no_detail["response_body"])
        updated = api.put(f"/volumes/{vid}", {"volume": {"name": "n"}}).json()
        if version == "3.0":  # like create, Tempest's 3.69 update schema lacks 3.61+ fields
            jsonschema.validate(updated, schema.update_volume["response_body"])
        jsonschema.validate(api.get(f"/volumes/{vid}/metadata").json(),
                            schema.show_volume_metadata["response_body"])
        jsonschema.validate(api.get("/volumes/summary").json(),
                            schema.show_volume_summary["response_body"]) \
            if version != "3.0" else None
        assert api.delete(f"/volumes/{vid}").status_code == 202
        api.wait_volume(vid, "deleted")


def test_microversion_gated_fields(server: Server) -> None:
    old, new = server.client(version="3.0"), server.client(version="3.71")
    vol = _create(new)
    shown_old = old.get(f"/volumes/{vol['id']}").json()["volume"]
    shown_new = new.get(f"/volumes/{vol['id']}").json()["volume"]
    for key in ("group_id", "provider_id", "service_uuid", "shared_targets", "cluster_name",
                "volume_type_id", "consumes_quota"):
        assert key not in shown_old
        assert key in shown_new
    assert shown_new["os-vol-host-attr:host"].count("@") == 1
    assert "#" in shown_new["os-vol-host-attr:host"]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"{not json", "Malformed request body"),
        (b"[1, 2]", "Malformed request body"),
        (b"", "Missing request body"),
    ],
)
def test_malformed_bodies(api: Api, body: bytes, message: str) -> None:
    before = _count(api)
    r = api.request("POST", "/volumes", content=body,
                    headers={"Content-Type": "application/json"})
    assert fault(r, 400) == message
    assert _count(api) == before


@pytest.mark.parametrize(
    "spec",
    [
        {"size": -1}, {"size": 0}, {"size": "abc"}, {"size": 1.5}, {"size": True},
        {"size": None}, {"size": 2**40}, {"size": [1]}, {"size": {}},
        {"size": 1, "name": 5}, {"size": 1, "name": "x" * 256},
        {"size": 1, "metadata": "k=v"}, {"size": 1, "metadata": {"k": 1}},
        {"size": 1, "snapshot_id": "not-a-uuid"}, {"size": 1, "source_volid": 7},
        {"size": 1, "imageRef": "0f4a2b1c-0000-4000-8000-000000000000"},
        {"size": 1, "volume_type": 42},
        {"size": 1, "availability_zone": "mars"},
        {"size": 1, "nonsense": True},
        {"size": 1, "multiattach": "not-a-bool"},
        {},
    ],
)
def test_bad_create_input_is_400_and_creates_nothing(api: Api, spec: dict[str, Any]) -> None:
    before = _count(api)
    r = api.post("/volumes", {"volume": spec})
    assert r.status_code == 400, (spec, r.status_code, r.text)
    assert "badRequest" in r.json()
    assert _count(api) == before


def test_size_error_words_as_cinder(api: Api) -> None:
    r = api.post("/volumes", {"volume": {"size": -1}})
    assert fault(r, 400) == \
        "Invalid input for field/attribute size. Value: -1. -1 is less than the minimum of 1"


def test_unknown_keys_are_accepted_before_3_53(server: Server) -> None:
    api = server.client(version="3.52")
    r = api.post("/volumes", {"volume": {"size": 1, "nonsense": True}})
    assert r.status_code == 202
    api.wait_volume(r.json()["volume"]["id"], "available")


def test_missing_references_are_404(api: Api) -> None:
    ghost = str(uuid.uuid4())
    for spec in ({"snapshot_id": ghost}, {"source_volid": ghost}):
        fault(api.post("/volumes", {"volume": {"size": 1, **spec}}), 404)
    fault(api.post("/volumes", {"volume": {"size": 1, "volume_type": "nope"}}), 404)


def test_show_by_name_is_404_like_cinder(api: Api) -> None:
    _create(api, name="g1")
    r = api.get("/volumes/g1")
    assert fault(r, 404) == "Volume g1 could not be found."
    ghost = "00000000-0000-0000-0000-000000000000"
    assert fault(api.get(f"/volumes/{ghost}"), 404) == \
        f"Volume {ghost} could not be found."


def test_project_id_in_url(server: Server) -> None:
    api = server.client(project="0123abcd")
    r = httpx.post(server.endpoint + "/0123abcd/volumes",
                   json={"volume": {"size": 1, "name": "g2", "metadata": {"k": "v"}}},
                   headers={"X-Auth-Token": "admin:0123abcd",
                            "OpenStack-API-Version": "volume 3.71"})
    assert r.status_code == 202, r.text
    vol = r.json()["volume"]
    assert vol["links"][0]["href"].endswith(f"/v3/0123abcd/volumes/{vol['id']}")
    assert vol["links"][1]["href"].endswith(f"/0123abcd/volumes/{vol['id']}")
    assert api.wait_volume(vol["id"], "available")["metadata"] == {"k": "v"}
    not_hex = httpx.post(server.endpoint + "/admin/volumes", json={"volume": {"size": 1}})
    assert not_hex.status_code == 404


def test_unknown_action(api: Api) -> None:
    vol = _create(api)
    r = api.post(f"/volumes/{vol['id']}/action", {"os-nonsense": {}})
    assert fault(r, 400) == (
        "There is no such action: os-nonsense. Verify the request body and Content-Type "
        "header and try again.")


def test_extend_and_shrink(api: Api) -> None:
    vol = _create(api)
    assert api.post(f"/volumes/{vol['id']}/action",
                    {"os-extend": {"new_size": "2"}}).status_code == 202
    assert api.wait_volume(vol["id"], "available")["size"] == 2
    r = api.post(f"/volumes/{vol['id']}/action", {"os-extend": {"new_size": 1}})
    assert fault(r, 400) == (
        "Invalid input received: New size for extend must be greater than current size. "
        "(current: 2, extended: 1).")
    for bad in ({"new_size": -3}, {"new_size": "x"}, {}, None, "str"):
        r = api.post(f"/volumes/{vol['id']}/action", {"os-extend": bad})
        assert r.status_code == 400, (bad, r.text)


def test_action_values_null_empty_and_string_booleans(api: Api) -> None:
    vol = _create(api)
    path = f"/volumes/{vol['id']}/action"
    assert api.post(path, {"os-set_bootable": {"bootable": "True"}}).status_code == 200
    assert api.get(f"/volumes/{vol['id']}").json()["volume"]["bootable"] == "true"
    assert api.post(path, {"os-set_bootable": {"bootable": "False"}}).status_code == 200
    assert api.get(f"/volumes/{vol['id']}").json()["volume"]["bootable"] == "false"
    assert api.post(path, {"os-set_bootable": {"bootable": "maybe"}}).status_code == 400
    assert api.post(path, {"os-update_readonly_flag": {"readonly": True}}).status_code == 202
    assert api.get(f"/volumes/{vol['id']}").json()["volume"]["metadata"]["readonly"] == "True"
    assert api.post(path, {"os-force_delete": None}).status_code == 202
    api.wait_volume(vol["id"], "deleted")
    other = _create(api)
    assert api.post(f"/volumes/{other['id']}/action", {"os-force_delete": {}}).status_code \
        == 202
    api.wait_volume(other["id"], "deleted")


def test_reset_status(api: Api) -> None:
    vol = _create(api)
    path = f"/volumes/{vol['id']}/action"
    assert api.post(path, {"os-reset_status": {"status": "error",
                                               "attach_status": "detached"}}).status_code == 202
    assert api.get(f"/volumes/{vol['id']}").json()["volume"]["status"] == "error"
    assert api.post(path, {"os-reset_status": {"status": "bogus"}}).status_code == 400
    assert api.post(path, {"os-reset_status": {"attach_status": "bogus"}}).status_code == 400
    assert api.post(path, {"os-reset_status": {}}).status_code == 400
    assert api.post(path, {"os-reset_status": {"status": "available"}}).status_code == 202
    assert api.get(f"/volumes/{vol['id']}").json()["volume"]["status"] == "available"


def test_delete_with_snapshot_then_cascade(api: Api) -> None:
    vol = _create(api)
    r = api.post("/snapshots", {"snapshot": {"volume_id": vol["id"], "name": "s"}})
    assert r.status_code == 202
    snap = api.wait_snapshot(r.json()["snapshot"]["id"], "available")
    msg = fault(api.delete(f"/volumes/{vol['id']}"), 400)
    assert msg.startswith("Invalid volume: Volume status must be available or error")
    assert api.delete(f"/volumes/{vol['id']}?cascade=true").status_code == 202
    api.wait_volume(vol["id"], "deleted")
    assert api.get(f"/snapshots/{snap['id']}").status_code == 404


def test_metadata_endpoints(api: Api) -> None:
    vol = _create(api, metadata={"a": "1"})
    base = f"/volumes/{vol['id']}/metadata"
    assert api.post(base, {"metadata": {"b": "2"}}).json() == {"metadata": {"a": "1", "b": "2"}}
    assert api.put(base, {"metadata": {"c": "3"}}).json() == {"metadata": {"c": "3"}}
    assert api.get(f"{base}/c").json() == {"meta": {"c": "3"}}
    assert api.put(f"{base}/c", {"meta": {"c": "4"}}).json() == {"meta": {"c": "4"}}
    assert api.put(f"{base}/c", {"meta": {"d": "4"}}).status_code == 400
    assert api.delete(f"{base}/c").status_code == 200
    assert api.get(f"{base}/c").status_code == 404
    assert api.delete(f"{base}/c").status_code == 404
    assert api.get(base).json() == {"metadata": {}}


def test_list_paging_sorting_filters(server: Server) -> None:
    api = server.client(project="lister")
    ids = [_create(api, name=f"v{i}", metadata={"n": str(i % 2)})["id"] for i in range(5)]
    names = [v["name"] for v in
             api.get("/volumes/detail?sort=display_name:asc").json()["volumes"]]
    assert names == ["v0", "v1", "v2", "v3", "v4"]
    seen, marker = [], None
    while True:
        q = "/volumes?limit=2&sort=name:desc" + (f"&marker={marker}" if marker else "")
        body = api.get(q).json()
        seen += [v["name"] for v in body["volumes"]]
        if "volumes_links" not in body:
            break
        marker = body["volumes_links"][0]["href"].rsplit("marker=", 1)[1]
    assert seen == ["v4", "v3", "v2", "v1", "v0"]
    assert [v["name"] for v in api.get("/volumes?name=v3").json()["volumes"]] == ["v3"]
    assert len(api.get("/volumes?name~=v").json()["volumes"]) == 5
    odd = api.get('/volumes/detail?metadata={"n": "1"}').json()["volumes"]
    assert sorted(v["name"] for v in odd) == ["v1", "v3"]
    counted = api.get("/volumes?limit=1&with_count=true").json()
    assert counted["count"] == 5 and len(counted["volumes"]) == 1
    assert api.get("/volumes?status=error").json()["volumes"] == []
    assert api.get("/volumes?sort=bogus:asc").status_code == 400
    assert api.get("/volumes?limit=-1").status_code == 400
    # an unknown marker is Cinder's VolumeNotFound from its lookup of the marker row
    missing = uuid.uuid4()
    gone = api.get(f"/volumes?marker={missing}")
    assert gone.status_code == 404
    assert gone.json()["itemNotFound"]["message"] == f"Volume {missing} could not be found."
    assert api.get("/volumes?limit=0").json() == {"volumes": []}
    summary = api.get("/volumes/summary").json()["volume-summary"]
    assert summary["total_count"] == 5 and summary["total_size"] == 5
    assert summary["metadata"] == {"n": ["0", "1"]} or \
        sorted(summary["metadata"]["n"]) == ["0", "1"]
    for vid in ids:
        api.delete(f"/volumes/{vid}")


def test_projects_do_not_see_each_other(server: Server) -> None:
    a, b = server.client(project="proj-a"), server.client(project="proj-b")
    va = _create(a, name="mine")
    assert va["id"] not in {v["id"] for v in b.get("/volumes").json()["volumes"]}
    assert va["id"] in {v["id"] for v in a.get("/volumes").json()["volumes"]}
    everyone = b.get("/volumes?all_tenants=1").json()["volumes"]
    assert va["id"] in {v["id"] for v in everyone}
