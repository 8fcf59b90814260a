"""Who is calling, and what they may do: one small interface, so Keystone can replace noauth.

For now every caller is an admin (Cinder's noauth). `authorize` is still called at every
place that will need a real policy check, so the Keystone issue only changes this module.
"""

from __future__ import annotations

from blockyard.errors import NotFound
from blockyard.identity import Identity, from_noauth

__all__ = ["Identity", "authorize", "can_see_all", "from_noauth"]


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
