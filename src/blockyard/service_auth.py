"""A service's own Keystone token: what one blockyard server shows another.

Both servers call each other: the compute agent calls the volume service (on a user's behalf,
or on its own for recovery work), and the volume service posts ``volume-extended`` events to
the agent. Under Keystone each proves it is a service with a token of its ``[service_user]``
(keystoneauth1's password plugin, the options Nova and Cinder read from the same section):

- on a user's behalf it sends the user's token as ``X-Auth-Token`` and its own beside it as
  ``X-Service-Token`` (Nova's ``send_service_user_token``), so the receiver can tell the call
  came through a service and an expiring user token is still honoured;
- on its own (nobody asked: reconcile after a restart, clean-up of a deleted server, events)
  it sends its own token as ``X-Auth-Token``.

keystoneauth1's session caches the token and fetches a new one shortly before it expires
(``MIN_TOKEN_LIFE_SECONDS``), under a lock, so one `ServiceAuth` serves a whole process and
every thread. Its calls block (they may go to Keystone): async code runs them in a thread.

This module is in the bottom layer and knows nothing of blockyard's configuration: a caller
hands it the ``[service_user]`` values as a mapping (or any object with those attributes).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from keystoneauth1 import exceptions as ks_exceptions
from keystoneauth1 import session as ks_session
from keystoneauth1.identity import generic

#: the ``[service_user]`` options (keystoneauth1's password plugin), required ones first
REQUIRED = ("auth_url", "username", "password", "project_name")
OPTIONAL = ("user_domain_name", "project_domain_name")
KEYS = REQUIRED + OPTIONAL
DEFAULT_DOMAIN = "Default"


class ServiceTokenError(Exception):
    """The service user's token could not be had (Keystone down, wrong password...)."""


@dataclass(frozen=True)
class ServiceUser:
    """The credentials of a service's own Keystone user (its ``[service_user]`` section)."""

    auth_url: str
    username: str
    password: str = field(repr=False)
    project_name: str
    user_domain_name: str = DEFAULT_DOMAIN
    project_domain_name: str = DEFAULT_DOMAIN

    @classmethod
    def of(cls, values: Mapping[str, Any] | object) -> ServiceUser:
        """From a mapping of the section's options, or an object with them as attributes
        (the configuration's own dataclass); a missing required one is a KeyError naming it."""
        def get(name: str) -> Any:
            if isinstance(values, Mapping):
                return values.get(name)
            return getattr(values, name, None)

        for name in REQUIRED:
            if not get(name):
                raise KeyError(name)
        return cls(**{name: str(get(name)) for name in KEYS if get(name)})


class ServiceAuth:
    """One service user's token, cached and renewed by keystoneauth1; thread-safe."""

    def __init__(self, user: ServiceUser, *, timeout: float = 30.0,
                 session: ks_session.Session | None = None) -> None:
        self.user = user
        self._plugin = generic.Password(
            auth_url=user.auth_url, username=user.username, password=user.password,
            project_name=user.project_name, user_domain_name=user.user_domain_name,
            project_domain_name=user.project_domain_name)
        self._session = session or ks_session.Session(auth=self._plugin, timeout=timeout)

    def token(self) -> str:
        """The current token; blocks while a new one is fetched (first use, near expiry)."""
        try:
            token = self._plugin.get_token(self._session)
        except ks_exceptions.ClientException as exc:
            raise ServiceTokenError(f"could not get a token for service user "
                                    f"{self.user.username!r} from {self.user.auth_url}: "
                                    f"{exc}") from exc
        if not token:
            raise ServiceTokenError(f"{self.user.auth_url} gave service user "
                                    f"{self.user.username!r} no token")
        return token

    def own_headers(self) -> dict[str, str]:
        """For a call the service makes on its own: its token is the caller's."""
        return {"X-Auth-Token": self.token()}

    def headers_for(self, user_token: str) -> dict[str, str]:
        """For a call on a user's behalf: the user's token, the service's beside it."""
        return {"X-Auth-Token": user_token, "X-Service-Token": self.token()}

    def invalidate(self) -> None:
        """Forget the cached token (the receiver refused it: revoked); the next call fetches
        a new one."""
        self._plugin.invalidate()
