"""Volume type encryption specs over HTTP, checked with Tempest's response schemas: the
create/show/show-key/update/delete cycle, Cinder's refusals (unknown type, specs twice, bad
bodies) and the rule that specs do not change while a volume has the type."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from tempest.lib.api_schema.response.volume import encryption_types as schema

from tests.support.checks import check
from tests.support.server import Api

SPECS = {"provider": "LuksEncryptor", "key_size": 256, "cipher": "aes-xts-plain64",
         "control_location": "front-end"}


def _type(api: Api) -> str:
    r = api.post("/types", {"volume_type": {"name": f"enc-{uuid.uuid4().hex[:8]}"}})
    assert r.status_code == 200, r.text
    return str(r.json()["volume_type"]["id"])


def _create(api: Api, type_id: str, **specs: Any) -> dict[str, Any]:
    body = check(schema.create_encryption_type,
                 api.post(f"/types/{type_id}/encryption", {"encryption": specs or SPECS}))
    encryption: dict[str, Any] = body["encryption"]
    return encryption


def test_create_show_update_delete(api: Api) -> None:
    type_id = _type(api)
    assert check(schema.show_encryption_type, api.get(f"/types/{type_id}/encryption")) == {}

    created = _create(api, type_id)
    assert {k: created[k] for k in SPECS} == SPECS
    assert created["volume_type_id"] == type_id
    encryption_id = created["encryption_id"]
    uuid.UUID(encryption_id)

    shown = check(schema.show_encryption_type, api.get(f"/types/{type_id}/encryption"))
    assert {k: shown[k] for k in SPECS} == SPECS
    assert shown["encryption_id"] == encryption_id and shown["deleted"] is False
    assert shown["updated_at"] is None and shown["deleted_at"] is None

    change = {"key_size": 128, "provider": "SomeProvider", "cipher": "aes-xts-plain64",
              "control_location": "back-end"}
    r = api.put(f"/types/{type_id}/encryption/{encryption_id}", {"encryption": change})
    assert check(schema.update_encryption_type, r) == {"encryption": change}
    shown = api.get(f"/types/{type_id}/encryption").json()
    assert {k: shown[k] for k in change} == change and shown["updated_at"] is not None
    # an update may name a subset of the fields
    partial = api.put(f"/types/{type_id}/encryption/{encryption_id}",
                      {"encryption": {"cipher": None}})
    assert partial.status_code == 200
    assert api.get(f"/types/{type_id}/encryption").json()["cipher"] is None

    item = api.get(f"/types/{type_id}/encryption/provider")
    assert check(schema.show_encryption_specs_item, item) == {"provider": "SomeProvider"}
    assert api.get(f"/types/{type_id}/encryption/nonsense").status_code == 404

    check(schema.delete_encryption_type,
          api.delete(f"/types/{type_id}/encryption/{encryption_id}"))
    assert api.get(f"/types/{type_id}/encryption").json() == {}
    again = api.delete(f"/types/{type_id}/encryption/{encryption_id}")
    assert again.status_code == 404
    assert again.json()["itemNotFound"]["message"] == (
        f"Volume type encryption for type {type_id} does not exist.")
    assert api.delete(f"/types/{type_id}").status_code == 202


def test_unknown_type_and_specs_twice(api: Api) -> None:
    missing = str(uuid.uuid4())
    assert api.get(f"/types/{missing}/encryption").status_code == 404
    r = api.post(f"/types/{missing}/encryption", {"encryption": SPECS})
    assert r.status_code == 404
    assert r.json()["itemNotFound"]["message"] == f"Volume type {missing} could not be found."
    type_id = _type(api)
    assert api.put(f"/types/{type_id}/encryption/x", {"encryption": SPECS}).status_code == 404
    _create(api, type_id)
    twice = api.post(f"/types/{type_id}/encryption", {"encryption": SPECS})
    assert twice.status_code == 400
    assert twice.json()["badRequest"]["message"] == (
        f"Volume type encryption for type {type_id} already exists.")


def test_key_size_as_string_is_an_integer(api: Api) -> None:
    type_id = _type(api)
    created = _create(api, type_id, provider="p", control_location="back-end", key_size="512")
    assert created["key_size"] == 512
    assert api.get(f"/types/{type_id}/encryption").json()["key_size"] == 512


@pytest.mark.parametrize("body", [
    {"encryption": {"control_location": "front-end"}},
    {"encryption": {"provider": "p"}},
    {"encryption": {"provider": "p", "control_location": "middle"}},
    {"encryption": {"provider": "p", "control_location": "front-end", "key_size": "big"}},
    {"encryption": {"provider": "p", "control_location": "front-end", "key_size": -1}},
    {"encryption": {"provider": "p", "control_location": "front-end", "cipher": 5}},
    {"encryption": {"provider": "x" * 256, "control_location": "front-end"}},
    {"encryption": SPECS, "extra": 1},
    {"encryption": "LuksEncryptor"},
    {"specs": SPECS},
])
def test_bad_bodies_are_400_and_create_nothing(api: Api, body: Any) -> None:
    type_id = _type(api)
    r = api.post(f"/types/{type_id}/encryption", body)
    assert r.status_code == 400, r.text
    assert list(r.json()) == ["badRequest"]
    assert api.get(f"/types/{type_id}/encryption").json() == {}


def test_specs_do_not_change_while_a_volume_has_the_type(api: Api) -> None:
    type_id = _type(api)
    encryption_id = _create(api, type_id)["encryption_id"]
    r = api.post("/volumes", {"volume": {"size": 1, "volume_type": type_id}})
    assert r.status_code == 202, r.text
    vid = r.json()["volume"]["id"]
    api.wait_volume(vid, "available")

    for verb, request in (
        ("update", lambda: api.put(f"/types/{type_id}/encryption/{encryption_id}",
                                   {"encryption": {"provider": "other"}})),
        ("delete", lambda: api.delete(f"/types/{type_id}/encryption/{encryption_id}")),
    ):
        refused = request()
        assert refused.status_code == 400
        assert refused.json()["badRequest"]["message"] == (
            f"Cannot {verb} encryption specs. Volume type in use.")
    assert api.get(f"/types/{type_id}/encryption").json()["provider"] == "LuksEncryptor"

    other = _type(api)
    r = api.post("/volumes", {"volume": {"size": 1, "volume_type": other}})
    used = r.json()["volume"]["id"]
    api.wait_volume(used, "available")
    create = api.post(f"/types/{other}/encryption", {"encryption": SPECS})
    assert create.status_code == 400
    assert create.json()["badRequest"]["message"] == (
        "Cannot create encryption specs. Volume type in use.")

    for volume_id in (vid, used):
        assert api.delete(f"/volumes/{volume_id}").status_code == 202
        api.wait_volume(volume_id, "deleted")
    # once no volume has the type, the specs may go, and the type with them
    assert api.delete(f"/types/{type_id}/encryption/{encryption_id}").status_code == 202
    _create(api, type_id)
    assert api.delete(f"/types/{type_id}").status_code == 202
    assert api.get(f"/types/{type_id}/encryption").status_code == 404
