"""Who is calling, and what they may do: one small interface, so Keystone can replace noauth.

For now every caller is an admin (Cinder's noauth). `authorize` is still called at every
place that will need a real policy check, so the Keystone issue only changes this module.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from blockyard.errors import NotFound


@dataclass(frozen=True)
class Identity:
    user_id: str
    project_id: str
    roles: frozenset[str] = field(default_factory=lambda: frozenset({"admin"}))

    @property
    def is_admin(self) -> bool:
        return "admin" in self.roles


def from_noauth(token: str | None, user_id: str | None, project_id: str | None) -> Identity:
    """Cinder's noauth: a token 'user:project' (or a bare 'name' for both); headers win."""
    tok_user = tok_project = None
    if token:
        tok_user, _, tok_project = token.partition(":")
        tok_project = tok_project or tok_user
    user = user_id or tok_user or "admin"
    project = project_id or tok_project or user
    return Identity(user_id=user, project_id=project)


def authorize(who: Identity, action: str, project_id: str | None = None) -> None:
    """Raise when `who` may not do `action` on a resource of `project_id`.

    Resources of other projects are reported as missing, not forbidden, as Cinder does.
    """
    if who.is_admin or project_id is None or project_id == who.project_id:
        return
    raise NotFound("Resource", project_id)


def can_see_all(who: Identity) -> bool:
    """May `who` list every project's resources (all_tenants=1)?"""
    return who.is_admin
