"""A test-only Keystone v3 stand-in: just enough identity for Tempest's pre-provisioned accounts.

Tempest authenticates each account with `POST /v3/auth/tokens` (password, project scope) and
finds the volume API in the token's catalog; one test also makes and removes a project
(`GET /v3/domains?name=Default`, `POST /v3/projects`, `DELETE /v3/projects/{id}`).
blockyard runs Cinder's noauth scheme, which takes a token `USER:PROJECT`, so the tokens issued
here are exactly `user_id:project_id` and the volume service needs no callback to us. Users and
projects come from Tempest's accounts file; their ids are stable hex uuids derived from their
names, shaped like Keystone's.

Served by the standard library's threaded HTTP server on a loopback port, in a thread of the
test process (`Identity.start()`), or on its own::

    python -m tests.support.identity --accounts accounts.yaml --volume-url http://127.0.0.1:8776
"""

from __future__ import annotations

import argparse
import json
import threading
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import yaml

REGION = "RegionOne"
DOMAIN = {"id": "default", "name": "Default"}
#: the volume service is listed under both names Tempest and the SDKs look for
VOLUME_SERVICE_TYPES = ("block-storage", "volumev3")
_NAMESPACE = uuid.UUID("6f0e1c4e-3b1a-4d0a-9a57-6c6f636b7964")


def stable_id(kind: str, name: str) -> str:
    """Keystone-shaped id (32 hex digits) that is the same in every run."""
    return uuid.uuid5(_NAMESPACE, f"{kind}:{name}").hex


@dataclass(frozen=True)
class Account:
    username: str
    password: str
    project_name: str
    roles: tuple[str, ...]

    @property
    def user_id(self) -> str:
        return stable_id("user", self.username)

    @property
    def project_id(self) -> str:
        return stable_id("project", self.project_name)

    @property
    def token(self) -> str:
        """What blockyard's noauth reads: `USER:PROJECT`."""
        return f"{self.user_id}:{self.project_id}"


def load_accounts(path: Path) -> list[Account]:
    """Tempest's `test_accounts_file` (a YAML list of username/password/project_name/roles)."""
    entries = yaml.safe_load(path.read_text())
    return [Account(username=e["username"], password=str(e["password"]),
                    project_name=e["project_name"], roles=tuple(e.get("roles", ())))
            for e in entries]


class Identity:
    """The stand-in server; `start()` binds a free loopback port, `stop()` shuts it down."""

    def __init__(self, accounts: list[Account], volume_url: str, *, host: str = "127.0.0.1",
                 port: int = 0) -> None:
        self.accounts = accounts
        self.volume_url = volume_url.rstrip("/")
        self.tokens: dict[str, Account] = {}
        #: projects made through `POST /v3/projects` (Tempest's quota class test makes one)
        self.projects: dict[str, dict[str, Any]] = {}
        self.httpd = ThreadingHTTPServer((host, port), _handler_for(self))
        self.httpd.daemon_threads = True
        self.thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host!s}:{port}"

    @property
    def uri_v3(self) -> str:
        return f"{self.url}/v3"

    def start(self) -> Identity:
        self.thread = threading.Thread(target=self.httpd.serve_forever, name="identity",
                                       daemon=True)
        self.thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    # ------------------------------------------------------------------ what Keystone answers

    def authenticate(self, body: Any) -> Account | None:
        """The account a password-method, project-scoped auth request names, if it checks out."""
        try:
            ident = body["auth"]["identity"]
            if "password" not in ident["methods"]:
                return None
            user = ident["password"]["user"]
            scope = body["auth"].get("scope", {}).get("project", {})
        except (KeyError, TypeError):
            return None
        for acct in self.accounts:
            if user.get("id", acct.user_id) != acct.user_id:
                continue
            if user.get("name", acct.username) != acct.username:
                continue
            if user.get("password") != acct.password:
                continue
            if scope.get("id", acct.project_id) != acct.project_id:
                continue
            if scope.get("name", acct.project_name) != acct.project_name:
                continue
            return acct
        return None

    def token_body(self, acct: Account) -> dict[str, Any]:
        now = datetime.now(UTC)
        stamp = "%Y-%m-%dT%H:%M:%S.%fZ"
        return {"token": {
            "methods": ["password"],
            "user": {"id": acct.user_id, "name": acct.username, "domain": DOMAIN,
                     "password_expires_at": None},
            "project": {"id": acct.project_id, "name": acct.project_name, "domain": DOMAIN},
            "is_domain": False,
            "roles": [{"id": stable_id("role", r), "name": r} for r in acct.roles],
            "catalog": self.catalog(acct.project_id),
            "audit_ids": [uuid.uuid4().hex[:22]],
            "issued_at": now.strftime(stamp),
            "expires_at": (now + timedelta(hours=12)).strftime(stamp),
        }}

    def catalog(self, project_id: str) -> list[dict[str, Any]]:
        def service(kind: str, name: str, url: str) -> dict[str, Any]:
            return {"type": kind, "name": name, "id": stable_id("service", kind),
                    "endpoints": [{"id": stable_id("endpoint", f"{kind}/{iface}"),
                                   "interface": iface, "region": REGION, "region_id": REGION,
                                   "url": url}
                                  for iface in ("public", "internal", "admin")]}

        volume = f"{self.volume_url}/v3/{project_id}"
        return [*(service(kind, "cinder", volume) for kind in VOLUME_SERVICE_TYPES),
                service("identity", "keystone", self.uri_v3)]

    def create_project(self, spec: Any) -> dict[str, Any]:
        """A project that exists only here (nothing can log in to it): enough for a test that
        needs a fresh project id, such as the quota class defaults of a new project."""
        spec = spec if isinstance(spec, dict) else {}
        project_id = uuid.uuid4().hex
        project = {"id": project_id, "name": str(spec.get("name", project_id)),
                   "description": str(spec.get("description", "")),
                   "domain_id": DOMAIN["id"], "enabled": True, "is_domain": False,
                   "parent_id": DOMAIN["id"], "tags": [],
                   "links": {"self": f"{self.uri_v3}/projects/{project_id}"}}
        self.projects[project_id] = project
        return project

    def version(self) -> dict[str, Any]:
        return {"id": "v3.14", "status": "stable", "updated": "2020-04-07T00:00:00Z",
                "links": [{"rel": "self", "href": f"{self.uri_v3}/"}],
                "media-types": [{"base": "application/json",
                                 "type": "application/vnd.openstack.identity-v3+json"}]}


def _handler_for(identity: Identity) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib's name
            pass  # quiet: Tempest logs every request on its side

        def reply(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(data)

        def error(self, status: int, title: str, message: str) -> None:
            self.reply(status, {"error": {"code": status, "title": title, "message": message}})

        def unauthorized(self) -> None:
            self.error(401, "Unauthorized",
                       "The request you have made requires authentication.")

        def do_GET(self) -> None:
            path = self.path.split("?")[0].rstrip("/")
            if path == "":
                self.reply(300, {"versions": {"values": [identity.version()]}})
            elif path == "/v3":
                self.reply(200, {"version": identity.version()})
            elif path == "/v3/domains":
                if not self.authorized():
                    return
                name = parse_qs(urlsplit(self.path).query).get("name", [None])[0]
                domain = {**DOMAIN, "enabled": True, "description": "", "tags": [],
                          "links": {"self": f"{identity.uri_v3}/domains/default"}}
                wanted = name is None or name == DOMAIN["name"]
                self.reply(200, {"domains": [domain] if wanted else [],
                                 "links": {"self": f"{identity.uri_v3}/domains",
                                           "next": None, "previous": None}})
            elif path == "/v3/auth/tokens":
                acct = identity.tokens.get(self.headers.get("X-Subject-Token", ""))
                if acct is None or self.headers.get("X-Auth-Token") not in identity.tokens:
                    self.error(404, "Not Found", "Could not find token.")
                    return
                self.reply(200, identity.token_body(acct),
                           {"X-Subject-Token": acct.token})
            else:
                self.error(404, "Not Found", f"{path} is not served by this stand-in.")

        def do_HEAD(self) -> None:
            if self.path.split("?")[0].rstrip("/") == "/v3/auth/tokens" \
                    and self.headers.get("X-Subject-Token") in identity.tokens:
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()
            else:
                self.send_response(404)
                self.send_header("Content-Length", "0")
                self.end_headers()

        def authorized(self) -> bool:
            """Is the caller's token one we issued (else answer 401)?"""
            if self.headers.get("X-Auth-Token") in identity.tokens:
                return True
            self.unauthorized()
            return False

        def do_DELETE(self) -> None:
            path = self.path.split("?")[0].rstrip("/")
            project_id = path.removeprefix("/v3/projects/")
            if project_id == path:
                self.error(404, "Not Found", f"{path} is not served by this stand-in.")
            elif self.authorized():
                if identity.projects.pop(project_id, None) is None:
                    self.error(404, "Not Found", f"Could not find project: {project_id}.")
                else:
                    self.send_response(204)
                    self.send_header("Content-Length", "0")
                    self.end_headers()

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length)
            path = self.path.split("?")[0].rstrip("/")
            if path not in ("/v3/auth/tokens", "/v3/projects"):
                self.error(404, "Not Found", f"{self.path} is not served by this stand-in.")
                return
            try:
                body = json.loads(raw)
            except ValueError:
                self.error(400, "Bad Request", "Malformed request body.")
                return
            if path == "/v3/projects":
                if self.authorized():
                    self.reply(201, {"project": identity.create_project(body.get("project"))})
                return
            acct = identity.authenticate(body)
            if acct is None:
                self.unauthorized()
                return
            identity.tokens[acct.token] = acct
            self.reply(201, identity.token_body(acct), {"X-Subject-Token": acct.token})

    return Handler


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--accounts", type=Path, required=True)
    p.add_argument("--volume-url", required=True, help="the volume API, e.g. http://host:8776")
    p.add_argument("--port", type=int, default=5000)
    args = p.parse_args()
    server = Identity(load_accounts(args.accounts), args.volume_url, port=args.port)
    print(f"identity at {server.uri_v3}", flush=True)
    server.httpd.serve_forever()


if __name__ == "__main__":
    main()
