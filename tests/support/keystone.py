"""A real Keystone (OpenStack Identity, 30.0.0) on a loopback port, for the tests that need
true tokens: keystonemiddleware validating them, policies reading their roles and scopes,
revocation, expiry, the service catalog.

Keystone lives in a venv of its own (`.venv-keystone` beside the project's `.venv`, made by
scripts/setup.sh from scripts/keystone-requirements.txt: its pins clash with the project's)
and runs under gunicorn (one worker with one thread: SQLite behind it refuses concurrent
writers with "database is locked", and Keystone's cache lives in that worker's memory, which a
second worker would not see invalidated) as a child of the test
process, in a private directory: SQLite database, fernet token and credential keys, config, log.

A start is ~3 s: `keystone-manage db_sync` and `bootstrap` (each ~3-5 s, most of it imports)
run once per Keystone version into a template database, cached under ~/.cache/blockyard
(a lock keeps concurrent pytest-xdist workers from building it twice), which each start copies.
The template's bootstrap made the admin user (password `ADMIN_PASSWORD`) and project, the roles
admin → member → reader (each implying the next) and manager, region RegionOne and the
identity service; its endpoints (public, internal, admin: keystonemiddleware looks for the
internal one by default) are pointed at the real port after start. The `service` project and
role, which devstack gives the services' own users, are made by the first `service_user`.

Users, projects, roles and grants are made through Keystone's API as the admin, on demand
(`project`, `user`, `persona`, `service_user`); `register_endpoint` puts a service into the
catalog. Passwords are hashed with bcrypt at its lowest cost (4 rounds), so a login costs
milliseconds instead of the default's quarter second.

Use it as a context manager, or through the session fixture `keystone` (a pytest plugin that
tests/conftest.py loads; one Keystone per xdist worker). A test that needs its own settings
(a token lifetime of a few seconds, for expiry) starts its own::

    with Keystone(tmp_path, token_expiration=5) as ks:
        token = ks.persona("p1", "member")[1]
"""

from __future__ import annotations

import atexit
import base64
import fcntl
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx
import pytest

from tests.support import daemons

KEYSTONE_VERSION = "30.0.0"
ADMIN_PASSWORD = "admin-secret"
REGION = "RegionOne"
DEFAULT_DOMAIN = "default"
#: the project and role of the services' own users (devstack's names)
SERVICE_PROJECT = "service"
SERVICE_ROLE = "service"
#: the bcrypt cost: Keystone's lowest allowed (its default, 12, is ~0.25 s per login)
HASH_ROUNDS = 4
#: the identity endpoint's URL in the template, replaced by the real one after each start
_PLACEHOLDER_URL = "http://127.0.0.1:9/v3"
#: bump when what the template holds changes (bootstrap arguments, config it depends on)
_TEMPLATE_FORMAT = 2

#: the WSGI module gunicorn loads: Keystone's application parses sys.argv with oslo.config,
#: which rejects gunicorn's own arguments, so they are dropped first
_APP_MODULE = """import sys
sys.argv = sys.argv[:1]
from keystone.wsgi.api import application  # noqa: E402,F401
"""


class KeystoneError(RuntimeError):
    """Keystone did not start, or an admin call to it failed; the message says what and,
    for a start, carries the tail of its log."""


def keystone_venv() -> Path:
    """Where Keystone's venv is: $BLOCKYARD_KEYSTONE_VENV, else `.venv-keystone` beside the
    venv running the tests (scripts/setup.sh's layout), else in the repository's root."""
    env = os.environ.get("BLOCKYARD_KEYSTONE_VENV")
    if env:
        return Path(env)
    beside = Path(sys.prefix).parent / ".venv-keystone"
    if beside.exists():
        return beside
    return Path(__file__).resolve().parents[2] / ".venv-keystone"


def missing_keystone(venv: Path | None = None) -> str | None:
    """Why Keystone cannot run here (None: it can)."""
    venv = venv or keystone_venv()
    for tool in ("keystone-manage", "gunicorn"):
        if not (venv / "bin" / tool).is_file():
            return f"Keystone not installed ({venv}/bin/{tool} missing): run scripts/setup.sh"
    return None


def _cache_dir() -> Path:
    env = os.environ.get("BLOCKYARD_CACHE_DIR")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "blockyard"


def _fernet_key() -> bytes:
    """A fernet key as `keystone-manage fernet_setup` writes one: 32 random bytes, base64."""
    return base64.urlsafe_b64encode(os.urandom(32))


def _key_repository(path: Path) -> None:
    """A fernet key repository with a staged key (0) and a primary one (1), as
    fernet_setup/credential_setup leave it (without their ~3 s of imports each)."""
    path.mkdir(mode=0o700)
    for index in (0, 1):
        key = path / str(index)
        key.write_bytes(_fernet_key())
        key.chmod(0o600)


def _password_auth(user: str, password: str) -> dict[str, Any]:
    return {"methods": ["password"],
            "password": {"user": {"name": user, "domain": {"id": DEFAULT_DOMAIN},
                                  "password": password}}}


class Keystone:
    """One Keystone server in `workdir` (made if missing; its files stay for post-mortems)."""

    def __init__(self, workdir: Path, *, token_expiration: int = 3600,
                 venv: Path | None = None, cache_dir: Path | None = None) -> None:
        self.dir = Path(workdir)
        self.token_expiration = token_expiration
        self.venv = venv or keystone_venv()
        self.cache_dir = cache_dir or _cache_dir()
        self.conf = self.dir / "keystone.conf"
        self.log = self.dir / "keystone.log"
        self.port = 0
        self.admin_password = ADMIN_PASSWORD
        #: seconds the last start() took, and whether it had to build the template first
        self.start_seconds = 0.0
        self.built_template = False
        self._proc: subprocess.Popen[bytes] | None = None
        self._http: httpx.Client | None = None
        self._admin: tuple[str, float] | None = None  # token, when issued (monotonic)
        self._projects: dict[str, str] = {}
        self._users: dict[str, str] = {}
        self._roles: dict[str, str] = {}
        self._passwords: dict[str, str] = {}

    # ------------------------------------------------------------------ lifecycle

    @property
    def url(self) -> str:
        """The identity API's v3 URL (what auth_url and www_authenticate_uri take)."""
        return f"http://127.0.0.1:{self.port}/v3"

    def start(self, timeout: float = 60.0) -> Keystone:
        t0 = time.monotonic()
        reason = missing_keystone(self.venv)
        if reason is not None:
            raise KeystoneError(reason)
        self.dir.mkdir(parents=True, exist_ok=True)
        try:
            template = self._template()
            shutil.copyfile(template, self.dir / "keystone.db")
            self._write_conf(self.dir)
            (self.dir / "keystone_app.py").write_text(_APP_MODULE)
            self._spawn()
            self._wait_ready(t0 + timeout)
            self._finish_bootstrap()
        except BaseException:
            self.stop()
            raise
        self.start_seconds = time.monotonic() - t0
        return self

    def stop(self) -> None:
        """SIGINT gunicorn (its quick shutdown: SIGTERM's graceful one waits out idle
        keep-alive connections), SIGKILL after 10 s; always reaped."""
        if self._http is not None:
            self._http.close()
            self._http = None
        proc, self._proc = self._proc, None
        if proc is not None:
            daemons.stop(proc, signal.SIGINT)

    def __enter__(self) -> Keystone:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    # ------------------------------------------------------------------ tokens

    def token(self, user: str, password: str | None = None, project: str | None = None,
              *, system: bool = False) -> str:
        """A token for `user` (a name in the Default domain), scoped to `project` (a name),
        to the system (`system=True`), or unscoped. The password defaults to the one `user()`
        made the user with."""
        auth: dict[str, Any] = {"identity": _password_auth(user, self._password(user, password))}
        if system:
            auth["scope"] = {"system": {"all": True}}
        elif project is not None:
            auth["scope"] = {"project": {"name": project, "domain": {"id": DEFAULT_DOMAIN}}}
        reply = self._client().post(f"{self.url}/auth/tokens", json={"auth": auth})
        if reply.status_code != 201:
            scope = "system" if system else project or "unscoped"
            raise KeystoneError(f"token for {user} ({scope}): {reply.status_code} {reply.text}")
        return str(reply.headers["X-Subject-Token"])

    def admin_token(self) -> str:
        """A token of the bootstrap admin scoped to the `admin` project (devstack's admin
        credentials: Keystone's policies let it manage users, projects and the catalog, and
        Cinder's, whose rules are project-scoped, see an admin), re-issued once half its life
        is gone."""
        now = time.monotonic()
        if self._admin is None or now - self._admin[1] > self.token_expiration / 2:
            self._admin = (self.token("admin", self.admin_password, "admin"), now)
        return self._admin[0]

    def admin_credentials(self) -> dict[str, str]:
        """The bootstrap admin's password credentials, scoped to the `admin` project (for
        Tempest's admin account, or any client that logs in by itself)."""
        return {"auth_url": self.url, "username": "admin", "password": self.admin_password,
                "project_name": "admin", "user_domain_name": "Default",
                "project_domain_name": "Default"}

    def system_token(self, user: str = "admin", password: str | None = None) -> str:
        """A system-scoped token (``system: all``) of `user` (by default the bootstrap admin,
        who holds the admin role on the system)."""
        if user == "admin" and password is None:
            password = self.admin_password
        return self.token(user, password, system=True)

    def validate(self, token: str) -> dict[str, Any] | None:
        """The token's body as Keystone shows it (`GET /v3/auth/tokens`), or None when
        Keystone no longer accepts it (revoked, expired, malformed: 404 or 401)."""
        reply = self._client().get(f"{self.url}/auth/tokens",
                                   headers={"X-Auth-Token": self.admin_token(),
                                            "X-Subject-Token": token})
        if reply.status_code in (401, 404):
            return None
        if reply.status_code != 200:
            raise KeystoneError(f"validate: {reply.status_code} {reply.text}")
        body: dict[str, Any] = reply.json()["token"]
        return body

    def revoke(self, token: str) -> None:
        """Revoke one token (`DELETE /v3/auth/tokens`); every validation fails from now on."""
        self.admin_request("DELETE", "/auth/tokens", headers={"X-Subject-Token": token},
                           expect=(204,))

    def catalog(self, token: str) -> list[dict[str, Any]]:
        """The service catalog as `token` sees it (`GET /v3/auth/catalog`)."""
        reply = self._client().get(f"{self.url}/auth/catalog",
                                   headers={"X-Auth-Token": token})
        if reply.status_code != 200:
            raise KeystoneError(f"catalog: {reply.status_code} {reply.text}")
        entries: list[dict[str, Any]] = reply.json()["catalog"]
        return entries

    # ------------------------------------------------------------------ identities

    def project(self, name: str) -> str:
        """The id of project `name` in the Default domain, made if missing."""
        if name not in self._projects:
            found = self.admin_request("GET", "/projects",
                                       params={"name": name, "domain_id": DEFAULT_DOMAIN})
            projects = found.json()["projects"]
            if projects:
                self._projects[name] = projects[0]["id"]
            else:
                made = self.admin_request(
                    "POST", "/projects", expect=(201,),
                    json={"project": {"name": name, "domain_id": DEFAULT_DOMAIN}})
                self._projects[name] = made.json()["project"]["id"]
        return self._projects[name]

    def role(self, name: str) -> str:
        """The id of global role `name`, made if missing."""
        if name not in self._roles:
            found = self.admin_request("GET", "/roles", params={"name": name}).json()["roles"]
            if found:
                self._roles[name] = found[0]["id"]
            else:
                made = self.admin_request("POST", "/roles", expect=(201,),
                                          json={"role": {"name": name}})
                self._roles[name] = made.json()["role"]["id"]
        return self._roles[name]

    def user(self, name: str, password: str | None = None, project: str | None = None,
             roles: Iterable[str] = ()) -> str:
        """The id of user `name` in the Default domain (made if missing, with `password`,
        default ``<name>-password``), granted each of `roles` on `project` (a name, made if
        missing; roles alone need a project). Granting again is harmless."""
        if name not in self._users:
            password = password or f"{name}-password"
            found = self.admin_request("GET", "/users",
                                       params={"name": name, "domain_id": DEFAULT_DOMAIN})
            users = found.json()["users"]
            if users:
                self._users[name] = users[0]["id"]
            else:
                body: dict[str, Any] = {"name": name, "domain_id": DEFAULT_DOMAIN,
                                        "password": password}
                made = self.admin_request("POST", "/users", expect=(201,),
                                          json={"user": body})
                self._users[name] = made.json()["user"]["id"]
            self._passwords[name] = password
        user_id = self._users[name]
        roles = list(roles)
        if roles:
            if project is None:
                raise ValueError("roles are granted on a project: name one")
            project_id = self.project(project)
            for role in roles:
                self.admin_request(
                    "PUT", f"/projects/{project_id}/users/{user_id}/roles/{self.role(role)}",
                    expect=(204,))
        return user_id

    def persona(self, project: str, role: str) -> tuple[str, str]:
        """(user id, project-scoped token) of a user holding `role` on `project` alone, named
        ``<project>-<role>``: "the reader / member / admin of project X". Each call issues a
        fresh token (the user is made once)."""
        name = f"{project}-{role}"
        user_id = self.user(name, project=project, roles=[role])
        return user_id, self.token(name, project=project)

    def service_user(self, name: str) -> dict[str, str]:
        """keystoneauth1 password credentials of a service's own user `name` (roles `service`
        and `admin` on the `service` project, as devstack makes Nova's and Cinder's), with the
        option names of keystonemiddleware's [keystone_authtoken] and [service_user]."""
        password = f"{name}-password"
        self.user(name, password, project=SERVICE_PROJECT, roles=[SERVICE_ROLE, "admin"])
        return {"auth_url": self.url, "username": name, "password": self._password(name, None),
                "project_name": SERVICE_PROJECT, "user_domain_name": "Default",
                "project_domain_name": "Default"}

    def _password(self, user: str, password: str | None) -> str:
        if password is not None:
            return password
        if user == "admin":
            return self.admin_password
        try:
            return self._passwords[user]
        except KeyError:
            raise KeystoneError(f"no password known for {user}: pass one") from None

    # ------------------------------------------------------------------ catalog

    def register_endpoint(self, service_type: str, service_name: str, url: str,
                          interfaces: Iterable[str] = ("public",)) -> str:
        """Put a service into the catalog (made if missing, found by type and name) with `url`
        (templated as Keystone's are, e.g. ``http://127.0.0.1:8776/v3/%(project_id)s``) on
        each of `interfaces` in RegionOne; an endpoint already there gets the new URL.
        Other services of the same type go: the session's Keystone is shared by the test
        modules of a worker, and a client must not find an earlier module's stopped server
        first. Returns the service's id."""
        services = self.admin_request("GET", "/services",
                                      params={"type": service_type}).json()["services"]
        for other in services:
            if other.get("name") != service_name:
                self.admin_request("DELETE", f"/services/{other['id']}", expect=(204,))
        ids = [s["id"] for s in services if s.get("name") == service_name]
        if ids:
            service_id = ids[0]
        else:
            made = self.admin_request(
                "POST", "/services", expect=(201,),
                json={"service": {"type": service_type, "name": service_name,
                                  "enabled": True}})
            service_id = made.json()["service"]["id"]
        existing = {e["interface"]: e["id"] for e in self.admin_request(
            "GET", "/endpoints", params={"service_id": service_id}).json()["endpoints"]}
        for interface in interfaces:
            if interface in existing:
                self.admin_request("PATCH", f"/endpoints/{existing[interface]}",
                                   json={"endpoint": {"url": url}})
            else:
                self.admin_request(
                    "POST", "/endpoints", expect=(201,),
                    json={"endpoint": {"service_id": service_id, "interface": interface,
                                       "url": url, "region_id": REGION, "enabled": True}})
        return str(service_id)

    # ------------------------------------------------------------------ HTTP

    def admin_request(self, method: str, path: str, *, expect: Iterable[int] = (200,),
                      **kw: Any) -> httpx.Response:
        """`method` on ``<url><path>`` with the admin's token; a status not in `expect`
        raises KeystoneError with Keystone's answer."""
        headers = {"X-Auth-Token": self.admin_token(), **kw.pop("headers", {})}
        reply = self._client().request(method, f"{self.url}{path}", headers=headers, **kw)
        if reply.status_code not in tuple(expect):
            raise KeystoneError(f"{method} {path}: {reply.status_code} {reply.text}")
        return reply

    def _client(self) -> httpx.Client:
        if self._http is None:
            self._http = httpx.Client(timeout=30.0)
        return self._http

    # ------------------------------------------------------------------ start-up

    def _write_conf(self, base: Path) -> Path:
        """keystone.conf in `base`, for the database and fresh key repositories there."""
        path, database, keys = base / "keystone.conf", base / "keystone.db", base / "fernet-keys"
        _key_repository(keys)
        _key_repository(base / "credential-keys")
        path.write_text(f"""[DEFAULT]
debug = false
use_stderr = true

[database]
connection = sqlite:///{database}?timeout=30

[token]
provider = fernet
expiration = {self.token_expiration}

[fernet_tokens]
key_repository = {keys}

[fernet_receipts]
key_repository = {keys}

[credential]
key_repository = {base / "credential-keys"}

[identity]
password_hash_algorithm = bcrypt
password_hash_rounds = {HASH_ROUNDS}

[cache]
# in the one worker's memory: token validations cost ~3x less; revocations and grants
# invalidate it in the same process, so it is never stale (a second worker would be)
enabled = true
backend = dogpile.cache.memory
""")
        return path

    def _spawn(self) -> None:
        sock = socket.socket()
        try:
            sock.bind(("127.0.0.1", 0))
            sock.listen(128)
            self.port = int(sock.getsockname()[1])
            env = {k: v for k, v in os.environ.items()
                   if not k.startswith(("OS_", "PYTHON"))}
            env["OS_KEYSTONE_CONFIG_FILES"] = str(self.conf)
            with open(self.log, "ab") as log:
                # gunicorn serves on the socket bound here (fd://): no port race between
                # picking a free port and binding it
                self._proc = subprocess.Popen(
                    [str(self.venv / "bin" / "gunicorn"), "--no-control-socket",
                     "--bind", f"fd://{sock.fileno()}", "--workers", "1", "--threads", "1",
                     "--graceful-timeout", "3", "--pythonpath", str(self.dir),
                     "--chdir", str(self.dir), "keystone_app:application"],
                    stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env,
                    pass_fds=(sock.fileno(),))
        finally:
            sock.close()

    def _wait_ready(self, deadline: float) -> None:
        last = ""
        while time.monotonic() < deadline:
            if self._proc is None or self._proc.poll() is not None:
                code = None if self._proc is None else self._proc.returncode
                raise KeystoneError(f"keystone exited ({code}) before it served\n"
                                    f"{self.log_tail()}")
            try:
                reply = self._client().get(self.url, timeout=2.0)
                if reply.status_code == 200:
                    return
                last = f"{reply.status_code} {reply.text[:200]}"
            except httpx.HTTPError as exc:
                last = repr(exc)
            time.sleep(0.05)
        raise KeystoneError(f"keystone did not serve {self.url} in time ({last})\n"
                            f"{self.log_tail()}")

    def _finish_bootstrap(self) -> None:
        """Point the identity endpoints (the template's only ones) at this port. (The service
        project and role are made on first use, by `service_user`.)"""
        for endpoint in self.admin_request("GET", "/endpoints").json()["endpoints"]:
            self.admin_request("PATCH", f"/endpoints/{endpoint['id']}",
                               json={"endpoint": {"url": self.url}})

    # ------------------------------------------------------------------ template

    def _template(self) -> Path:
        """The synced, bootstrapped template database for this Keystone (built on first use,
        under an exclusive lock, and moved into place whole, so readers never see half)."""
        version = self._installed_version()
        digest = hashlib.sha256(
            f"{version}|{_TEMPLATE_FORMAT}|{ADMIN_PASSWORD}|{HASH_ROUNDS}|{REGION}|"
            f"{_PLACEHOLDER_URL}".encode()).hexdigest()[:12]
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        template = self.cache_dir / f"keystone-{version}-{digest}.db"
        if template.exists():
            return template
        with open(self.cache_dir / "keystone-template.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if not template.exists():
                self._build_template(template)
                self.built_template = True
        return template

    def _installed_version(self) -> str:
        found = sorted(self.venv.glob("lib/python*/site-packages/keystone-*.dist-info"))
        if not found:
            raise KeystoneError(f"no keystone package in {self.venv}: run scripts/setup.sh")
        return found[-1].name.removeprefix("keystone-").removesuffix(".dist-info")

    def _build_template(self, template: Path) -> None:
        with tempfile.TemporaryDirectory(dir=self.cache_dir, prefix="keystone-build-") as tmp:
            build = Path(tmp)
            database = build / "keystone.db"
            conf = self._write_conf(build)
            manage = str(self.venv / "bin" / "keystone-manage")
            self._manage(manage, "--config-file", str(conf), "db_sync")
            self._manage(manage, "--config-file", str(conf), "bootstrap",
                         "--bootstrap-password", ADMIN_PASSWORD,
                         "--bootstrap-username", "admin",
                         "--bootstrap-project-name", "admin",
                         "--bootstrap-role-name", "admin",
                         "--bootstrap-region-id", REGION,
                         "--bootstrap-public-url", _PLACEHOLDER_URL,
                         "--bootstrap-internal-url", _PLACEHOLDER_URL,
                         "--bootstrap-admin-url", _PLACEHOLDER_URL)
            os.replace(database, template)

    @staticmethod
    def _manage(*argv: str) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("OS_", "PYTHON"))}
        done = subprocess.run(argv, capture_output=True, timeout=300, env=env,
                              stdin=subprocess.DEVNULL)
        if done.returncode != 0:
            tail = "\n".join(done.stderr.decode(errors="replace").splitlines()[-30:])
            raise KeystoneError(f"{' '.join(argv[1:])} failed ({done.returncode}):\n{tail}")


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    return json.dumps(str(value))  # a TOML basic string: JSON's escapes are TOML's


def authtoken_config(ks: Keystone, service_user: str, **options: object) -> str:
    """blockyard config tables (TOML) for ``[auth] strategy = "keystone"`` against `ks`:
    [keystone_authtoken] with the credentials of service user `service_user` (made if
    missing, see `Keystone.service_user`), plus any other keystonemiddleware `options`
    (``token_cache_time=2``). Append it to a config of one's own, or use it alone."""
    table: dict[str, object] = {"www_authenticate_uri": ks.url, "auth_type": "password",
                                **ks.service_user(service_user), **options}
    lines = ["", "[auth]", 'strategy = "keystone"', "", "[keystone_authtoken]"]
    lines += [f"{key} = {_toml_value(value)}" for key, value in table.items()]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------- pytest

@pytest.fixture(scope="session")
def keystone(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Keystone]:
    """The session's Keystone (one per xdist worker), started on first use and stopped when
    the session ends. Skips only when Keystone is not installed and this is not CI (CI runs
    scripts/setup.sh, which installs it: there a missing Keystone fails)."""
    reason = missing_keystone()
    if reason is not None:
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    ks = Keystone(tmp_path_factory.mktemp("keystone"))
    atexit.register(ks.stop)  # if pytest dies before the teardown below
    ks.start()
    print(f"\nkeystone: started in {ks.start_seconds:.1f} s"
          f"{' (built the template database first)' if ks.built_template else ''}")
    yield ks
    ks.stop()
    atexit.unregister(ks.stop)
