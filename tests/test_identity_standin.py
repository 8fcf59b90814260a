"""The Keystone v3 stand-in Tempest authenticates through (tests/support/identity.py), checked
with keystoneauth, the library every OpenStack client authenticates with."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from keystoneauth1 import exceptions as ks_exc
from keystoneauth1 import session as ks_session
from keystoneauth1.identity import v3

from tests.support.identity import Identity, load_accounts
from tests.support.server import Server
from tests.support.tempest import ACCOUNTS


@pytest.fixture(scope="module")
def identity(server: Server) -> Iterator[Identity]:
    ident = Identity(load_accounts(ACCOUNTS), server.url).start()
    yield ident
    ident.stop()


def password_session(identity: Identity, user: str, project: str,
                     password: str = "secret") -> ks_session.Session:
    auth = v3.Password(auth_url=identity.uri_v3, username=user, password=password,
                       project_name=project, user_domain_name="Default",
                       project_domain_name="Default")
    return ks_session.Session(auth=auth)


def test_token_is_noauth_user_project_and_catalog_finds_the_volume_api(
        identity: Identity) -> None:
    sess = password_session(identity, "demo1_reader", "demo1")
    account = next(a for a in identity.accounts if a.username == "demo1_reader")
    assert sess.get_token() == f"{account.user_id}:{account.project_id}"
    assert sess.get_project_id() == account.project_id
    for service_type in ("block-storage", "volumev3"):
        for interface in ("public", "internal", "admin"):
            url = sess.get_endpoint(service_type=service_type, interface=interface,
                                    region_name="RegionOne")
            assert url == f"{identity.volume_url}/v3/{account.project_id}"
    access = sess.auth.get_access(sess)
    assert sorted(access.role_names) == ["reader"]


def test_volume_api_sees_the_token_project(identity: Identity) -> None:
    sess = password_session(identity, "alt2", "alt2")
    url = sess.get_endpoint(service_type="block-storage", interface="public")
    created = sess.post(f"{url}/volumes", json={"volume": {"size": 1, "name": "via-identity"}},
                        headers={"OpenStack-API-Version": "volume 3.71"})
    assert created.status_code == 202
    volume = created.json()["volume"]
    shown = sess.get(f"{url}/volumes/{volume['id']}",
                     headers={"OpenStack-API-Version": "volume 3.71"}).json()["volume"]
    assert shown["os-vol-tenant-attr:tenant_id"] == sess.get_project_id()
    assert shown["user_id"] == sess.get_user_id()


@pytest.mark.parametrize(("user", "project", "password"), [
    ("alt2", "alt2", "wrong"),       # bad password
    ("alt2", "demo2", "secret"),     # a project the user is not in
    ("nobody", "alt2", "secret"),    # no such user
])
def test_bad_credentials_are_401(identity: Identity, user: str, project: str,
                                 password: str) -> None:
    with pytest.raises(ks_exc.Unauthorized):
        password_session(identity, user, project, password).get_token()


def test_version_discovery(identity: Identity) -> None:
    r = httpx.get(identity.uri_v3)
    assert r.status_code == 200
    assert r.json()["version"]["id"].startswith("v3")
    assert httpx.get(identity.url + "/").status_code == 300


def test_projects_made_and_removed_by_an_admin_token(identity: Identity) -> None:
    sess = password_session(identity, "admin", "admin")
    domains = sess.get(f"{identity.uri_v3}/domains", params={"name": "Default"}).json()
    assert [d["id"] for d in domains["domains"]] == ["default"]
    made = sess.post(f"{identity.uri_v3}/projects",
                     json={"project": {"name": "fresh", "domain_id": "default"}})
    assert made.status_code == 201
    project_id = made.json()["project"]["id"]
    assert sess.delete(f"{identity.uri_v3}/projects/{project_id}").status_code == 204
    again = sess.delete(f"{identity.uri_v3}/projects/{project_id}", raise_exc=False)
    assert again.status_code == 404
    anonymous = httpx.post(f"{identity.uri_v3}/projects", json={"project": {"name": "x"}})
    assert anonymous.status_code == 401
