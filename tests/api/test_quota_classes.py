"""Quota classes over HTTP: the `default` class is every project's defaults, shown by the
quota-set endpoints and enforced; other classes are stored and shown; bad updates write
nothing. This module has a server of its own, since the default class is server-wide."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from tempest.lib.api_schema.response.volume import quota_classes as class_schema

from tests.support.checks import check, fresh_project
from tests.support.server import Api, Server

DEFAULTS = {"volumes": 10, "per_volume_gigabytes": -1, "snapshots": 10, "gigabytes": 1000,
            "backups": 10, "backup_gigabytes": 1000, "groups": 10}


@pytest.fixture
def project(server: Server) -> Iterator[tuple[str, Api]]:
    """A fresh project and a client speaking as it."""
    yield from fresh_project(server)


def _class(api: Api, name: str = "default") -> dict[str, Any]:
    body = check(class_schema.show_quota_classes, api.get(f"/os-quota-class-sets/{name}"))
    quota_class_set: dict[str, Any] = body["quota_class_set"]
    assert quota_class_set.pop("id") == name
    return quota_class_set


def _set_class(api: Api, name: str = "default", **limits: Any) -> dict[str, Any]:
    r = api.put(f"/os-quota-class-sets/{name}", {"quota_class_set": limits})
    quota_class_set: dict[str, Any] = check(class_schema.update_quota_classes,
                                            r)["quota_class_set"]
    assert "id" not in quota_class_set  # Cinder's update answers the set without it
    return quota_class_set


def _volume(api: Api, **spec: Any) -> httpx.Response:
    return api.post("/volumes", {"volume": {"size": 1, **spec}})


def test_default_class_is_every_projects_defaults(
        api: Api, project: tuple[str, Api]) -> None:
    name, client = project
    assert {k: _class(api)[k] for k in DEFAULTS} == DEFAULTS
    try:
        updated = _set_class(api, volumes=2, snapshots="4")
        assert updated["volumes"] == 2 and updated["snapshots"] == 4
        assert updated["gigabytes"] == DEFAULTS["gigabytes"]
        assert _class(api)["volumes"] == 2
        defaults = api.get(f"/os-quota-sets/{name}/defaults").json()["quota_set"]
        assert defaults["volumes"] == 2 and defaults["snapshots"] == 4
        assert api.get(f"/os-quota-sets/{name}").json()["quota_set"]["volumes"] == 2

        # enforced: the third volume is over the class's limit
        for _ in range(2):
            r = _volume(client)
            assert r.status_code == 202, r.text
            client.wait_volume(r.json()["volume"]["id"], "available")
        over = _volume(client)
        assert over.status_code == 413
        assert "Maximum number of volumes allowed (2) exceeded" in \
            over.json()["overLimit"]["message"]

        # a project's own limit wins over the class; deleting it falls back to the class
        r = api.put(f"/os-quota-sets/{name}", {"quota_set": {"volumes": 3}})
        assert r.status_code == 200 and r.json()["quota_set"]["volumes"] == 3
        third = _volume(client)
        assert third.status_code == 202
        client.wait_volume(third.json()["volume"]["id"], "available")
        assert api.delete(f"/os-quota-sets/{name}").status_code == 200
        assert api.get(f"/os-quota-sets/{name}").json()["quota_set"]["volumes"] == 2
        assert _volume(client).status_code == 413
    finally:
        _set_class(api, volumes=DEFAULTS["volumes"], snapshots=DEFAULTS["snapshots"])
    assert {k: _class(api)[k] for k in DEFAULTS} == DEFAULTS


def test_other_classes_are_stored_and_fall_back_to_default(
        api: Api, project: tuple[str, Api]) -> None:
    name, _client = project
    gold = f"gold-{uuid.uuid4().hex[:6]}"
    assert {k: _class(api, gold)[k] for k in DEFAULTS} == DEFAULTS
    assert _set_class(api, gold, gigabytes=7, backups=-1)["gigabytes"] == 7
    shown = _class(api, gold)
    assert shown["gigabytes"] == 7 and shown["backups"] == -1
    assert shown["volumes"] == DEFAULTS["volumes"]
    # the default class and the projects are not touched by another class
    assert _class(api)["gigabytes"] == DEFAULTS["gigabytes"]
    assert api.get(f"/os-quota-sets/{name}").json()["quota_set"]["gigabytes"] == 1000
    # an empty update changes nothing and answers the class
    assert _set_class(api, gold)["gigabytes"] == 7


@pytest.mark.parametrize("body", [
    {"quota_class_set": {"bogus": 1}},
    {"quota_class_set": {"volumes": 1, "bogus": 1}},
    {"quota_class_set": {"volumes": "-1"}},
    {"quota_class_set": {"volumes": -2}},
    {"quota_class_set": {"volumes": 2**31}},
    {"quota_class_set": {"volumes": 1.5}},
    {"quota_class_set": {"volumes": "many"}},
    {"quota_class_set": {"volumes": None}},
    {"quota_class_set": {"volumes": 1}, "extra": {}},
    {"quota_class_set": []},
    {"quota_set": {"volumes": 1}},
])
def test_bad_class_updates_are_400_and_write_nothing(api: Api, body: Any) -> None:
    before = _class(api)
    r = api.put("/os-quota-class-sets/default", body)
    assert r.status_code == 400, r.text
    assert list(r.json()) == ["badRequest"]
    assert _class(api) == before


def test_bad_key_is_named(api: Api) -> None:
    r = api.put("/os-quota-class-sets/default", {"quota_class_set": {"bogus": 1}})
    assert r.json()["badRequest"]["message"] == (
        "Invalid input received: Bad key(s) in quota class set: bogus")


def test_per_type_class_limit_is_enforced_and_goes_with_the_type(
        api: Api, project: tuple[str, Api]) -> None:
    _name, client = project
    type_name = f"t-{uuid.uuid4().hex[:8]}"
    r = api.post("/types", {"volume_type": {"name": type_name}})
    assert r.status_code == 200, r.text
    type_id = r.json()["volume_type"]["id"]
    key = f"volumes_{type_name}"
    assert _class(api)[key] == -1
    assert _set_class(api, **{key: 1})[key] == 1

    first = _volume(client, volume_type=type_name)
    assert first.status_code == 202, first.text
    vid = first.json()["volume"]["id"]
    client.wait_volume(vid, "available")
    assert _volume(client, volume_type=type_name).status_code == 413

    assert client.delete(f"/volumes/{vid}").status_code == 202
    client.wait_volume(vid, "deleted")
    # a rename carries the class's per-type limit along, as the project limits
    renamed = f"{type_name}-r"
    assert api.put(f"/types/{type_id}",
                   {"volume_type": {"name": renamed}}).status_code == 200
    shown = _class(api)
    assert shown[f"volumes_{renamed}"] == 1 and key not in shown
    assert api.put(f"/types/{type_id}",
                   {"volume_type": {"name": type_name}}).status_code == 200
    assert _class(api)[key] == 1
    assert api.delete(f"/types/{type_id}").status_code == 202
    # a later type of the same name starts from the configured default, not the old class row
    again = api.post("/types", {"volume_type": {"name": type_name}})
    assert again.status_code == 200
    assert _class(api)[key] == -1
    assert api.delete(f"/types/{again.json()['volume_type']['id']}").status_code == 202
