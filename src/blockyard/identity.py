"""Who is calling: the identity a request carries, whichever way it was authenticated.

Both servers (the volume API and the compute agent) build an `Identity` at their HTTP edge
(`blockyard.rest.auth`): from a Keystone token validated by keystonemiddleware, or from
Cinder's noauth convention for local use. Everything below the edge sees only this value, so
the policy checks read the same fields whichever strategy made it.

It lives in the bottom layer because the service (resource checks), the REST edge and the
compute agent all need it and none of them may import the others.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

#: Keystone's default roles, weakest first; a token lists the implied ones too
#: (admin implies member implies reader)
READER, MEMBER, ADMIN = "reader", "member", "admin"
#: the role OpenStack services hold for service-to-service calls (Nova's and Cinder's
#: `service` role)
SERVICE = "service"


@dataclass(frozen=True)
class Identity:
    """The caller, as a policy check needs it (the fields oslo.context gives oslo.policy).

    `project_id` is empty for a system- or domain-scoped token (oslo.policy is given None).
    `service_*` describe the service token (`X-Service-Token`) that came with the user's,
    when one did.
    """

    user_id: str
    project_id: str
    roles: frozenset[str] = field(default_factory=lambda: frozenset({ADMIN, MEMBER, READER}))
    user_domain_id: str | None = None
    project_domain_id: str | None = None
    domain_id: str | None = None
    system_scope: str | None = None
    is_admin_project: bool = True
    service_user_id: str | None = None
    service_project_id: str | None = None
    service_roles: frozenset[str] = frozenset()
    #: the caller's token, passed on when a service calls another on its behalf;
    #: never logged or rendered (excluded from repr)
    auth_token: str | None = field(default=None, repr=False, compare=False)

    @property
    def is_admin(self) -> bool:
        """Cinder's `context_is_admin` default: the admin role, in any scope."""
        return ADMIN in self.roles

    @property
    def is_service(self) -> bool:
        """Did a service (its own token, or a service token beside the user's) make this call?"""
        return SERVICE in self.roles or SERVICE in self.service_roles

    def policy_credentials(self) -> dict[str, Any]:
        """What oslo.policy checks rules against (oslo.context's `to_policy_values`, plus
        Cinder's `is_admin`)."""
        return {
            "user_id": self.user_id,
            "user_domain_id": self.user_domain_id,
            "project_id": self.project_id or None,
            "project_domain_id": self.project_domain_id,
            "domain_id": self.domain_id,
            "system_scope": self.system_scope,
            "system": self.system_scope,  # what oslo.policy's scope check reads
            "roles": sorted(self.roles),
            "is_admin_project": self.is_admin_project,
            "is_admin": self.is_admin,
            "service_user_id": self.service_user_id,
            "service_project_id": self.service_project_id,
            "service_roles": sorted(self.service_roles),
        }


def from_noauth(token: str | None, user_id: str | None, project_id: str | None) -> Identity:
    """Cinder's noauth: a token 'user:project' (or a bare 'name' for both); headers win.

    Every noauth caller is an admin, as in Cinder: noauth is for a single trusted user on
    loopback (`blockyard serve` refuses other addresses under it unless told otherwise).
    """
    tok_user = tok_project = None
    if token:
        tok_user, _, tok_project = token.partition(":")
        tok_project = tok_project or tok_user
    user = user_id or tok_user or "admin"
    project = project_id or tok_project or user
    return Identity(user_id=user, project_id=project, auth_token=token)
