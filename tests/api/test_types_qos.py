"""Volume types, extra specs, type access and QoS specs over HTTP against a real server.

Bodies are checked against Tempest's schemas (the strictest public contract) and against the
shapes a real Cinder 29 returned (recorded facts are restated here, never read at run time).
"""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from tempest.lib.api_schema.response.volume import qos as qos_schema
from tempest.lib.api_schema.response.volume import volume_types as type_schema

from tests.support.checks import check, fault
from tests.support.server import Api, Server

ACCESS = "os-volume-type-access:is_public"


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def make_type(api: Api, name: str | None = None, *, public: bool | None = None,
              **spec: Any) -> dict[str, Any]:
    spec["name"] = name or unique("t")
    if public is not None:
        spec[ACCESS] = public
    body = check(type_schema.create_volume_type, api.post("/types", {"volume_type": spec}))
    return dict(body["volume_type"])


def all_type_names(api: Api) -> set[str]:
    r = api.get("/types", params={"is_public": "None"})
    return {t["name"] for t in r.json()["volume_types"]}


def make_qos(api: Api, **spec: Any) -> dict[str, Any]:
    spec.setdefault("name", unique("q"))
    body = check(qos_schema.show_qos, api.post("/qos-specs", {"qos_specs": spec}))
    return dict(body["qos_specs"])


def create_volume(api: Api, **spec: Any) -> dict[str, Any]:
    spec.setdefault("size", 1)
    r = api.post("/volumes", {"volume": spec})
    assert r.status_code == 202, r.text
    return api.wait_volume(r.json()["volume"]["id"], "available")


def delete_volume(api: Api, volume_id: str) -> None:
    assert api.delete(f"/volumes/{volume_id}").status_code == 202
    api.wait_volume(volume_id, "deleted")


# ---------------------------------------------------------------------------- types


def test_default_type_and_list_shapes(api: Api) -> None:
    default = check(type_schema.show_volume_type, api.get("/types/default"))["volume_type"]
    # Cinder 29: /types/default has qos_specs_id but not the access flag
    assert set(default) == {"id", "name", "is_public", "description", "extra_specs",
                            "qos_specs_id"}
    assert (default["name"], default["description"]) == ("__DEFAULT__", "Default Volume Type")
    types = check(type_schema.list_volume_types, api.get("/types"))["volume_types"]
    listed = next(t for t in types if t["id"] == default["id"])
    assert listed[ACCESS] is True and listed["qos_specs_id"] is None
    shown = check(type_schema.show_volume_type, api.get(f"/types/{default['id']}"))
    assert shown["volume_type"] == listed


def test_create_show_update_delete(api: Api) -> None:
    name = unique("gold")
    created = make_type(api, name, description="shiny", extra_specs={"k": "v"})
    # Cinder 29's create: the access flag, no qos_specs_id
    assert created == {"id": created["id"], "name": name, "is_public": True,
                       "description": "shiny", "extra_specs": {"k": "v"}, ACCESS: True}
    shown = check(type_schema.show_volume_type, api.get(f"/types/{created['id']}"))
    assert shown["volume_type"]["qos_specs_id"] is None
    # newest first, as Cinder sorts
    listed = api.get("/types").json()["volume_types"]
    assert listed[0]["id"] == created["id"]

    new_name = unique("platinum")
    r = api.put(f"/types/{created['id']}", {"volume_type": {"name": new_name,
                                                            "description": "better"}})
    updated = check(type_schema.update_volume_types, r)["volume_type"]
    assert (updated["name"], updated["description"]) == (new_name, "better")
    r = api.put(f"/types/{created['id']}", {"volume_type": {"is_public": "false"}})
    assert check(type_schema.update_volume_types, r)["volume_type"]["is_public"] is False

    check(type_schema.delete_volume_type, api.delete(f"/types/{created['id']}"))
    assert "could not be found" in fault(api.get(f"/types/{created['id']}"), 404)
    assert new_name not in all_type_names(api)


def test_cinderclient_request_shapes(api: Api) -> None:
    """What python-cinderclient sends for type-create and type-list."""
    name = unique("cc")
    r = api.post("/types", {"volume_type": {"name": name, "description": None, ACCESS: True}})
    check(type_schema.create_volume_type, r)
    r = api.get("/types", params={"name": name, "is_public": "None"})
    assert [t["name"] for t in check(type_schema.list_volume_types, r)["volume_types"]] == [name]


def test_duplicate_names_are_409(api: Api) -> None:
    first = make_type(api)
    assert "already exists" in fault(
        api.post("/types", {"volume_type": {"name": first["name"]}}), 409)
    other = make_type(api)
    fault(api.put(f"/types/{other['id']}", {"volume_type": {"name": first["name"]}}), 409)
    assert api.get(f"/types/{other['id']}").json()["volume_type"]["name"] == other["name"]


@pytest.mark.parametrize("spec", [
    {},
    {"name": ""},
    {"name": "   "},
    {"name": 5},
    {"name": "x" * 256},
    {"name": "ok", "bogus": 1},
    {"name": "ok", ACCESS: "maybe"},
    {"name": "ok", "extra_specs": {"k": 1}},
    {"name": "ok", "extra_specs": {"bad key!": "v"}},
    {"name": "ok", "extra_specs": ["k"]},
    {"name": "ok", "description": 7},
])
def test_bad_type_create_is_400_and_creates_nothing(api: Api, spec: dict[str, Any]) -> None:
    before = all_type_names(api)
    fault(api.post("/types", {"volume_type": spec}), 400)
    assert all_type_names(api) == before


@pytest.mark.parametrize("body", [
    {"volume_type": {}},
    {"volume_type": {"name": "  "}},
    {"volume_type": {"is_public": "maybe"}},
    {"volume_type": {"extra_specs": {}}},
    {"type": {"name": "x"}},
])
def test_bad_type_update_is_400(api: Api, body: dict[str, Any]) -> None:
    vt = make_type(api)
    fault(api.put(f"/types/{vt['id']}", body), 400)
    assert api.get(f"/types/{vt['id']}").json()["volume_type"]["name"] == vt["name"]


def test_lookup_is_by_id_like_cinder(api: Api) -> None:
    vt = make_type(api)
    assert fault(api.get(f"/types/{vt['name']}"), 404) == \
        f"Volume type {vt['name']} could not be found."
    fault(api.get(f"/types/{uuid.uuid4()}"), 404)
    fault(api.delete(f"/types/{uuid.uuid4()}"), 404)
    fault(api.get(f"/types/{uuid.uuid4()}/extra_specs"), 404)


def test_is_public_filter(api: Api) -> None:
    public = make_type(api)
    private = make_type(api, public=False)
    assert private["is_public"] is False and private[ACCESS] is False

    def names(**params: str) -> set[str]:
        r = api.get("/types", params=params)
        return {t["name"] for t in check(type_schema.list_volume_types, r)["volume_types"]}

    assert public["name"] in names() and private["name"] not in names()
    assert {public["name"], private["name"]} <= names(is_public="None")
    assert private["name"] in names(is_public="false")
    assert public["name"] not in names(is_public="false")
    assert public["name"] in names(is_public="True")
    assert fault(api.get("/types", params={"is_public": "maybe"}), 400) == \
        "Invalid is_public filter [maybe]"
    # a private type the project was given access to is listed among the public ones
    r = api.post(f"/types/{private['id']}/action",
                 {"addProjectAccess": {"project": "admin"}})
    assert r.status_code == 202
    assert private["name"] in names()


def test_filters_and_paging(api: Api) -> None:
    tag = uuid.uuid4().hex[:6]
    a = make_type(api, f"a-{tag}", extra_specs={"tier": tag})
    b = make_type(api, f"b-{tag}", description=f"desc-{tag}")
    assert [t["id"] for t in api.get("/types", params={"name": a["name"]}).json()[
        "volume_types"]] == [a["id"]]
    r = api.get("/types", params={"extra_specs": repr({"tier": tag})})
    assert [t["id"] for t in r.json()["volume_types"]] == [a["id"]]
    r = api.get("/types", params={"description": f"desc-{tag}"})
    assert [t["id"] for t in r.json()["volume_types"]] == [b["id"]]
    # a filter on something types do not have matches nothing, as in Cinder
    assert api.get("/types", params={"colour": "red"}).json()["volume_types"] == []
    fault(api.get("/types", params={"extra_specs": "not-a-dict"}), 400)

    r = api.get("/types", params={"limit": 1, "sort": "name:asc", "is_public": "None"})
    body = r.json()
    assert len(body["volume_types"]) == 1 and "volume_type_links" in body
    fault(api.get("/types", params={"sort": "colour:asc"}), 400)


def test_project_id_in_url(server: Server) -> None:
    api = server.client()
    project = uuid.uuid4().hex
    r = api.http.get(f"{server.endpoint}/{project}/types/default")
    assert r.status_code == 200 and r.json()["volume_type"]["name"] == "__DEFAULT__"
    api.close()


# ---------------------------------------------------------------------------- extra specs


def test_extra_specs_crud(api: Api) -> None:
    vt = make_type(api)
    base = f"/types/{vt['id']}/extra_specs"
    r = api.post(base, {"extra_specs": {"volume_backend_name": "fake", "a": "1"}})
    assert check(type_schema.create_volume_types_extra_specs, r) == {
        "extra_specs": {"volume_backend_name": "fake", "a": "1"}}
    r = api.get(base)
    assert check(type_schema.list_volume_types_extra_specs, r)["extra_specs"] == {
        "volume_backend_name": "fake", "a": "1"}
    assert check(type_schema.show_volume_types_extra_specs, api.get(f"{base}/a")) == {"a": "1"}
    r = api.put(f"{base}/a", {"a": "2"})
    assert check(type_schema.update_volume_type_extra_specs, r) == {"a": "2"}
    assert fault(api.put(f"{base}/a", {"b": "2"}), 400) == "Request body and URI mismatch"
    fault(api.put(f"{base}/a", {"a": "2", "b": "3"}), 400)
    fault(api.post(base, {"extra_specs": {"a": 5}}), 400)
    fault(api.post(base, {"extra_specs": {"with space": "x"}}), 400)
    fault(api.post(base, {"specs": {"a": "1"}}), 400)
    check(type_schema.delete_volume_types_extra_specs, api.delete(f"{base}/a"))
    assert fault(api.get(f"{base}/a"), 404) == \
        f"Volume Type {vt['id']} has no extra specs with key a."
    fault(api.delete(f"{base}/a"), 404)
    shown = api.get(f"/types/{vt['id']}").json()["volume_type"]
    assert shown["extra_specs"] == {"volume_backend_name": "fake"}


def test_type_in_use_cannot_change_or_go(api: Api) -> None:
    vt = make_type(api, extra_specs={"volume_backend_name": "default"})
    volume = create_volume(api, volume_type=vt["name"])
    assert volume["volume_type"] == vt["name"]
    assert fault(api.delete(f"/types/{vt['id']}"), 400) == "Target volume type is still in use."
    base = f"/types/{vt['id']}/extra_specs"
    assert fault(api.post(base, {"extra_specs": {"x": "y"}}), 400) == \
        "Volume Type is currently in use."
    fault(api.delete(f"{base}/volume_backend_name"), 400)
    delete_volume(api, volume["id"])
    check(type_schema.delete_volume_type, api.delete(f"/types/{vt['id']}"))


def test_default_type_cannot_be_deleted_or_renamed(api: Api) -> None:
    default = api.get("/types/default").json()["volume_type"]
    assert "default volume type" in fault(api.delete(f"/types/{default['id']}"), 400)
    fault(api.put(f"/types/{default['id']}", {"volume_type": {"name": "other"}}), 400)
    assert api.get("/types/default").json()["volume_type"]["name"] == "__DEFAULT__"


def test_unknown_backend_name_makes_an_error_volume_until_deleted(api: Api) -> None:
    """The scheduler finds no backend: as in Cinder, the volume exists in `error` (counted
    against quota like any volume until it is deleted) and a user message says why."""
    vt = make_type(api, extra_specs={"volume_backend_name": "nonexistent"})
    before = api.get("/os-quota-sets/admin", params={"usage": "true"}).json()["quota_set"]
    r = api.post("/volumes", {"volume": {"size": 1, "volume_type": vt["name"]}})
    assert r.status_code == 202, r.text
    vid = r.json()["volume"]["id"]
    assert api.wait_volume(vid, "error")["os-vol-host-attr:host"] is None
    during = api.get("/os-quota-sets/admin", params={"usage": "true"}).json()["quota_set"]
    assert during["volumes"]["in_use"] == before["volumes"]["in_use"] + 1
    assert during[f"volumes_{vt['name']}"]["in_use"] == 1
    assert api.delete(f"/volumes/{vid}").status_code == 202
    api.wait_volume(vid, "deleted")
    after = api.get("/os-quota-sets/admin", params={"usage": "true"}).json()["quota_set"]
    assert after["volumes"]["in_use"] == before["volumes"]["in_use"]
    assert after[f"volumes_{vt['name']}"]["in_use"] == 0


def test_rename_moves_per_type_quota(api: Api) -> None:
    vt = make_type(api)
    project = unique("p")
    r = api.put(f"/os-quota-sets/{project}", {"quota_set": {f"volumes_{vt['name']}": 3}})
    assert r.status_code == 200, r.text
    new = unique("renamed")
    assert api.put(f"/types/{vt['id']}", {"volume_type": {"name": new}}).status_code == 200
    quota_set = api.get(f"/os-quota-sets/{project}").json()["quota_set"]
    assert quota_set[f"volumes_{new}"] == 3
    assert f"volumes_{vt['name']}" not in quota_set


# ---------------------------------------------------------------------------- type access


def test_type_access(api: Api) -> None:
    vt = make_type(api, public=False)
    action = f"/types/{vt['id']}/action"
    listing = f"/types/{vt['id']}/os-volume-type-access"
    project = uuid.uuid4().hex
    r = check(type_schema.list_type_access, api.get(listing))
    assert r == {"volume_type_access": []}
    check(type_schema.add_type_access,
          api.post(action, {"addProjectAccess": {"project": project}}))
    r = check(type_schema.list_type_access, api.get(listing))
    assert r["volume_type_access"] == [{"volume_type_id": vt["id"], "project_id": project}]
    assert "already exists" in fault(
        api.post(action, {"addProjectAccess": {"project": project}}), 409)
    check(type_schema.remove_type_access,
          api.post(action, {"removeProjectAccess": {"project": project}}))
    fault(api.post(action, {"removeProjectAccess": {"project": project}}), 404)
    assert api.get(listing).json() == {"volume_type_access": []}
    fault(api.post(action, {"addProjectAccess": {}}), 400)
    fault(api.post(action, {"addProjectAccess": {"project": ""}}), 400)
    fault(api.post(action, {"fly": {"project": project}}), 400)

    public = make_type(api)
    assert fault(api.get(f"/types/{public['id']}/os-volume-type-access"), 404) == \
        "Access list not available for public volume types."
    fault(api.post(f"/types/{public['id']}/action",
                   {"addProjectAccess": {"project": project}}), 400)


def test_private_type_visible_only_with_access(server: Server) -> None:
    admin = server.client()
    vt = make_type(admin, public=False)
    project = unique("member")
    member = server.client(project=project, user=project)
    # noauth makes every caller an admin today; the visibility rule still holds for listing
    assert vt["name"] not in {t["name"] for t in member.get("/types").json()["volume_types"]}
    admin.post(f"/types/{vt['id']}/action", {"addProjectAccess": {"project": project}})
    assert vt["name"] in {t["name"] for t in member.get("/types").json()["volume_types"]}
    admin.close()
    member.close()


# ---------------------------------------------------------------------------- qos


def test_qos_create_list_show_shapes(api: Api) -> None:
    name = unique("q1")
    r = api.post("/qos-specs", {"qos_specs": {"name": name, "consumer": "back-end",
                                              "total_iops_sec": "100"}})
    body = check(qos_schema.show_qos, r)
    qid = body["qos_specs"]["id"]
    assert body["qos_specs"] == {"id": qid, "name": name, "consumer": "back-end",
                                 "specs": {"total_iops_sec": "100"}}
    assert [link["rel"] for link in body["links"]] == ["self", "bookmark"]
    assert body["links"][0]["href"].endswith(f"/v3/qos-specs/{qid}")
    assert "/v3/" not in body["links"][1]["href"]
    listed = check(qos_schema.list_qos, api.get("/qos-specs"))["qos_specs"]
    assert body["qos_specs"] in listed
    shown = check(qos_schema.show_qos, api.get(f"/qos-specs/{qid}"))
    assert shown["qos_specs"] == body["qos_specs"]
    # cinderclient's qos-create: no consumer → back-end; numbers are kept as text
    plain = make_qos(api, read_iops_sec=5)
    assert (plain["consumer"], plain["specs"]) == ("back-end", {"read_iops_sec": "5"})
    assert [q["id"] for q in api.get("/qos-specs", params={"name": name}).json()[
        "qos_specs"]] == [qid]


@pytest.mark.parametrize("spec", [
    {}, {"name": ""}, {"name": "  "}, {"name": "x", "consumer": "sideways"},
    {"name": "x", "k": ["list"]}, {"name": "x", "k": None},
])
def test_bad_qos_create_is_400(api: Api, spec: dict[str, Any]) -> None:
    before = len(api.get("/qos-specs").json()["qos_specs"])
    fault(api.post("/qos-specs", {"qos_specs": spec}), 400)
    assert len(api.get("/qos-specs").json()["qos_specs"]) == before


def test_qos_duplicate_name_is_409(api: Api) -> None:
    q = make_qos(api)
    assert "already exists" in fault(api.post("/qos-specs", {"qos_specs": {"name": q["name"]}}),
                                     409)


def test_qos_set_and_unset_keys(api: Api) -> None:
    q = make_qos(api, a="1", b="2")
    r = api.put(f"/qos-specs/{q['id']}", {"qos_specs": {"b": "3", "c": "4"}})
    assert check(qos_schema.set_qos_key, r) == {"qos_specs": {"b": "3", "c": "4"}}
    r = api.put(f"/qos-specs/{q['id']}", {"qos_specs": {"consumer": "front-end"}})
    assert r.status_code == 200
    shown = api.get(f"/qos-specs/{q['id']}").json()["qos_specs"]
    assert shown["specs"] == {"a": "1", "b": "3", "c": "4"}
    assert shown["consumer"] == "front-end"
    fault(api.put(f"/qos-specs/{q['id']}", {"qos_specs": {"consumer": "nowhere"}}), 400)
    # one missing key: nothing is removed
    message = fault(api.put(f"/qos-specs/{q['id']}/delete_keys", {"keys": ["a", "zz"]}), 404)
    assert message == f"QoS spec {q['id']} has no spec with key zz."
    check(qos_schema.unset_qos_key,
          api.put(f"/qos-specs/{q['id']}/delete_keys", {"keys": ["a", "c"]}))
    assert api.get(f"/qos-specs/{q['id']}").json()["qos_specs"]["specs"] == {"b": "3"}
    fault(api.put(f"/qos-specs/{q['id']}/delete_keys", {"keys": "a"}), 400)
    fault(api.put(f"/qos-specs/{q['id']}/delete_keys", {}), 400)


def test_qos_associations(api: Api) -> None:
    q = make_qos(api)
    vt = make_type(api)
    base = f"/qos-specs/{q['id']}"
    r = check(qos_schema.show_association_qos, api.get(f"{base}/associations"))
    assert r == {"qos_associations": []}
    check(qos_schema.associate_qos, api.get(f"{base}/associate",
                                            params={"vol_type_id": vt["id"]}))
    r = check(qos_schema.show_association_qos, api.get(f"{base}/associations"))
    assert r["qos_associations"] == [{"association_type": "volume_type", "name": vt["name"],
                                      "id": vt["id"]}]
    assert api.get(f"/types/{vt['id']}").json()["volume_type"]["qos_specs_id"] == q["id"]

    other = make_qos(api)
    assert "already associated" in fault(
        api.get(f"/qos-specs/{other['id']}/associate", params={"vol_type_id": vt["id"]}), 400)
    assert fault(api.get(f"{base}/associate"), 400) == "Volume Type id must not be None."
    fault(api.get(f"{base}/associate", params={"vol_type_id": str(uuid.uuid4())}), 404)

    assert fault(api.delete(base), 400) == "Qos specs still in use."
    check(qos_schema.disassociate_qos, api.get(f"{base}/disassociate",
                                               params={"vol_type_id": vt["id"]}))
    assert api.get(f"/types/{vt['id']}").json()["volume_type"]["qos_specs_id"] is None
    api.get(f"{base}/associate", params={"vol_type_id": vt["id"]})
    check(qos_schema.disassociate_all_qos, api.get(f"{base}/disassociate_all"))
    assert api.get(f"{base}/associations").json() == {"qos_associations": []}


def test_qos_delete(api: Api) -> None:
    q = make_qos(api)
    vt = make_type(api)
    api.get(f"/qos-specs/{q['id']}/associate", params={"vol_type_id": vt["id"]})
    fault(api.delete(f"/qos-specs/{q['id']}", params={"force": "maybe"}), 400)
    check(qos_schema.delete_qos, api.delete(f"/qos-specs/{q['id']}", params={"force": "True"}))
    assert fault(api.get(f"/qos-specs/{q['id']}"), 404) == f"No such QoS spec {q['id']}."
    assert api.get(f"/types/{vt['id']}").json()["volume_type"]["qos_specs_id"] is None
    plain = make_qos(api)
    check(qos_schema.delete_qos, api.delete(f"/qos-specs/{plain['id']}"))
    fault(api.delete(f"/qos-specs/{plain['id']}"), 404)
    fault(api.get(f"/qos-specs/{uuid.uuid4()}/associations"), 404)
    fault(api.get(f"/qos-specs/{uuid.uuid4()}/disassociate_all"), 404)


def test_openstacksdk_nested_specs_are_flattened(api: Api) -> None:
    r = api.post("/qos-specs", {"qos_specs": {"name": unique("sdk"), "consumer": "both",
                                              "specs": {"read_iops_sec": "5"}}})
    body = check(qos_schema.show_qos, r)
    assert body["qos_specs"]["specs"] == {"read_iops_sec": "5"}
