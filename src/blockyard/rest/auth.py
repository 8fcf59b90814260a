"""Who is calling: the authentication edge both servers (volume API, compute agent) share.

Every request passes `Authenticate` before any endpoint runs; it stores the caller's
`Identity` in the request scope (``request.state.identity``) or answers 401 itself.

Two strategies, chosen in config (``[auth] strategy``):

* ``keystone``: the token is validated by keystonemiddleware's ``auth_token`` (the same code
  Cinder and Nova run, with the same ``[keystone_authtoken]`` options and token cache), and the
  identity is read from the headers it sets. ``X-Service-Token`` is validated the same way.
  blockyard does no token parsing of its own.
* ``noauth``: Cinder's convention for a single trusted user (token ``user:project``; every
  caller an admin). For local use and tests only: the CLI refuses to listen beyond loopback
  with it unless told so explicitly.

keystonemiddleware is WSGI code. Rather than wrap the whole ASGI app in a WSGI bridge, each
request's auth headers are put in a minimal WSGI environ and handed to ``AuthProtocol`` around
an inner app that only records what it was given: validation, caching, revocation checks and
the 401 with ``WWW-Authenticate`` stay keystonemiddleware's. It runs on a worker thread because
a cache miss is an HTTP call to Keystone.

What keystonemiddleware accepted is remembered (`_Accepted`) for no longer than its own token
cache would keep it (``token_cache_time``) and never past the token's expiry, so a repeated
token costs a dictionary lookup on the event loop instead of a thread hop and the middleware's
request parsing: the same revocation and expiry behaviour as its cache, at a fraction of the
cost per request.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from blockyard.config import paste_value
from blockyard.errors import ConfigError
from blockyard.identity import Identity, from_noauth
from blockyard.rest.errors import ApiError, fault

log = logging.getLogger(__name__)

NOAUTH, KEYSTONE = "noauth", "keystone"
STRATEGIES = (NOAUTH, KEYSTONE)

#: the longest user or project id a request may name (Keystone's are 64; the columns 255)
MAX_ID_LENGTH = 255

#: request headers keystonemiddleware reads; nothing else of the request reaches it
_TOKEN_HEADERS = ("x-auth-token", "x-service-token", "x-storage-token")

#: keystonemiddleware's default ``token_cache_time`` (seconds)
DEFAULT_TOKEN_CACHE_TIME = 300
#: at most this many accepted token pairs are remembered (least recently used go first)
ACCEPTED_SIZE = 4096

_Environ = dict[str, Any]


@dataclass(frozen=True)
class _Accepted:
    identity: Identity
    #: monotonic time after which the middleware must look at the token again
    until: float
_StartResponse = Callable[[str, list[tuple[str, str]]], Any]


class KeystoneValidator:
    """keystonemiddleware's ``auth_token`` used as a function: token headers in, the
    identity it vouches for (or the response it refuses with) out.

    `options` are ``[keystone_authtoken]`` options by keystonemiddleware's names (auth_url,
    www_authenticate_uri, auth_type, username, password, token_cache_time, ...). They are
    given to it as paste-deploy options on a private oslo.config object, so nothing touches
    the process-wide ``cfg.CONF``.
    """

    def __init__(self, options: Mapping[str, Any]) -> None:
        from keystonemiddleware import auth_token
        from keystonemiddleware import exceptions as ksm_exceptions
        from oslo_config import cfg

        conf = cfg.ConfigOpts()
        conf([], project="blockyard", default_config_files=[], default_config_dirs=[])
        values: dict[str, Any] = {k: paste_value(v) for k, v in options.items()}
        values["oslo_config_config"] = conf
        values.setdefault("delay_auth_decision", "false")
        # it warns of every auth-plugin option given this way as "not known" (it looks them up
        # later, through the plugin): noise at every start, not a problem
        logging.getLogger("keystonemiddleware._common.config").setLevel(logging.ERROR)
        self._cache_seconds = float(values.get("token_cache_time", DEFAULT_TOKEN_CACHE_TIME))
        self._accepted: OrderedDict[tuple[str | None, ...], _Accepted] = OrderedDict()
        self._lock = threading.Lock()
        try:
            self._protocol = auth_token.AuthProtocol(_record_environ, values)
        except (ksm_exceptions.ConfigurationError, cfg.Error, ValueError) as exc:
            raise ConfigError("keystone_authtoken", str(exc)) from None

    @staticmethod
    def _key(headers: Mapping[str, str]) -> tuple[str | None, ...]:
        return tuple(headers.get(name) for name in _TOKEN_HEADERS)

    def remembered(self, headers: Mapping[str, str]) -> Identity | None:
        """The identity keystonemiddleware gave these very tokens, while it would still hold
        it in its cache and the token has not expired; else None (ask `validate`)."""
        key = self._key(headers)
        with self._lock:
            found = self._accepted.get(key)
            if found is None:
                return None
            if time.monotonic() >= found.until:
                del self._accepted[key]
                return None
            self._accepted.move_to_end(key)
            return found.identity

    def _remember(self, key: tuple[str | None, ...], who: Identity, environ: _Environ) -> None:
        expires = _seconds_left(environ.get("keystone.token_info"))
        if self._cache_seconds <= 0 or expires is None or expires <= 0:
            return  # no cache configured, or a token only a service token let through
        until = time.monotonic() + min(self._cache_seconds, expires)
        with self._lock:
            self._accepted[key] = _Accepted(who, until)
            self._accepted.move_to_end(key)
            while len(self._accepted) > ACCEPTED_SIZE:
                self._accepted.popitem(last=False)

    def validate(self, headers: Mapping[str, str]) -> tuple[Identity | None, Response | None]:
        """Blocking: validate the tokens in `headers` (one HTTP call to Keystone on a cache
        miss). Returns the identity, or keystonemiddleware's own refusal."""
        environ: _Environ = {
            "REQUEST_METHOD": "GET",
            "PATH_INFO": "/",
            "SERVER_NAME": "blockyard",
            "SERVER_PORT": "80",
            "SERVER_PROTOCOL": "HTTP/1.1",
            "wsgi.url_scheme": "http",
            "wsgi.input": None,
            "HTTP_ACCEPT": "application/json",  # its refusals (503: Keystone down) as JSON
        }
        for name in _TOKEN_HEADERS:
            value = headers.get(name)
            if value is not None:
                environ["HTTP_" + name.upper().replace("-", "_")] = value
        status: list[str] = []
        response_headers: list[tuple[str, str]] = []

        def start_response(status_line: str, hdrs: list[tuple[str, str]], *_: Any) -> None:
            status.append(status_line)
            response_headers.extend(hdrs)

        body = b"".join(self._protocol(environ, start_response))
        if environ.get("blockyard.passed"):
            who = identity_from_headers(environ)
            self._remember(self._key(headers), who, environ)
            return who, None
        code = int(status[0].split(" ", 1)[0]) if status else 500
        kept = {k: v for k, v in response_headers
                if k.lower() in ("www-authenticate", "content-type")}
        return None, Response(body, status_code=code, headers=kept)


def _seconds_left(token_info: Any) -> float | None:
    """Seconds until the validated token (keystonemiddleware's ``keystone.token_info``)
    expires, or None when it does not say."""
    try:
        expires_at = token_info["token"]["expires_at"]
        expires = datetime.fromisoformat(str(expires_at).replace("Z", "+00:00"))
    except (KeyError, TypeError, ValueError):
        return None
    return (expires - datetime.now(expires.tzinfo)).total_seconds()


def _record_environ(environ: _Environ, start_response: _StartResponse) -> Iterable[bytes]:
    """The app keystonemiddleware guards: it only marks that the request got through."""
    environ["blockyard.passed"] = True
    start_response("204 No Content", [])
    return []


def _roles(value: str | None) -> frozenset[str]:
    return frozenset(r.strip() for r in (value or "").split(",") if r.strip())


def identity_from_headers(environ: Mapping[str, Any]) -> Identity:
    """The identity keystonemiddleware put in the environ's ``X-*`` headers for a valid
    token (the same headers Cinder's keystonecontext middleware reads)."""

    def get(name: str) -> str | None:
        value = environ.get("HTTP_" + name)
        return str(value) if value else None

    return Identity(
        user_id=get("X_USER_ID") or "",
        project_id=get("X_PROJECT_ID") or "",
        roles=_roles(get("X_ROLES")),
        user_domain_id=get("X_USER_DOMAIN_ID"),
        project_domain_id=get("X_PROJECT_DOMAIN_ID"),
        domain_id=get("X_DOMAIN_ID"),
        system_scope=get("OPENSTACK_SYSTEM_SCOPE"),
        is_admin_project=(get("X_IS_ADMIN_PROJECT") or "True").lower() == "true",
        service_user_id=get("X_SERVICE_USER_ID"),
        service_project_id=get("X_SERVICE_PROJECT_ID"),
        service_roles=_roles(get("X_SERVICE_ROLES")),
        auth_token=get("X_AUTH_TOKEN"),
    )


def identity(request: Request) -> Identity:
    """The caller of `request`, as `Authenticate` established it (both servers' endpoints
    ask this). A public route's endpoint asking is a bug: 401, not a guess."""
    found = getattr(request.state, "identity", None)
    if not isinstance(found, Identity):
        raise ApiError(401, "Authentication required")
    return found


def noauth_identity(headers: Headers) -> Identity:
    """Cinder's noauth identity, with the id lengths bounded (a 400, not a database error)."""
    who = from_noauth(headers.get("x-auth-token"), headers.get("x-user-id"),
                      headers.get("x-project-id"))
    if len(who.user_id) > MAX_ID_LENGTH or len(who.project_id) > MAX_ID_LENGTH:
        raise ValueError(f"Invalid input received: user and project ids may be at most "
                         f"{MAX_ID_LENGTH} characters.")
    return who


class Authenticate:
    """ASGI middleware: authenticate, then store ``state["identity"]`` for the endpoints.

    `public` says which requests need no identity (version discovery, as in Cinder's and
    Nova's paste pipelines, where the versions app sits before ``authtoken``).
    """

    def __init__(self, app: ASGIApp, validator: KeystoneValidator | None,
                 public: Callable[[str, str], bool]) -> None:
        self.app = app
        self.validator = validator
        self.public = public

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self.public(scope["method"], scope["path"]):
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        state = scope.setdefault("state", {})
        if self.validator is None:
            try:
                state["identity"] = noauth_identity(headers)
            except ValueError as exc:
                await fault(400, str(exc))(scope, receive, send)
                return
        else:
            who = self.validator.remembered(headers)
            if who is None:
                who, refusal = await run_in_threadpool(self.validator.validate, headers)
                if refusal is not None:
                    await refusal(scope, receive, send)
                    return
            state["identity"] = who
        await self.app(scope, receive, send)
