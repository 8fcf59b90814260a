"""Who is calling, and what they may do with a resource they name.

The API checks each route's rule before it reads the request, with the caller's own project
as the target (Cinder's default target). What the route acts on is only known here, in the
service, once the resource is read; `authorize` then checks it with the resource's project:

* a resource of another project is missing (404, as Cinder's database queries filter by
  project) unless the caller may act across projects (`context_is_admin`): no existence leak;
* else the request's rule (the route's, set by the API with `acting_under`) is enforced with
  the resource's project as target (403 when denied), as Cinder authorizes against the volume
  object itself.
"""

from __future__ import annotations

import contextvars
from typing import Any

from blockyard.errors import NotFound
from blockyard.identity import Identity, from_noauth
from blockyard.service import policies

__all__ = ["Identity", "acting_under", "allowed", "authorize", "can_see_all", "enforce",
           "from_noauth"]

#: the policy rule of the request being served (its route's, or its action's)
_RULE: contextvars.ContextVar[str | None] = contextvars.ContextVar("policy_rule", default=None)


def acting_under(rule: str | None) -> None:
    """Record the rule the current request was admitted under (the API's route check)."""
    _RULE.set(rule)


def can_cross_projects(who: Identity) -> bool:
    """May `who` see and act on other projects' resources at all?"""
    return policies.engine().check(who, policies.CROSS_PROJECT)


def authorize(who: Identity, action: str, project_id: str | None = None,
              hidden: NotFound | None = None) -> None:
    """Raise unless `who` may do the request's action on a resource of `project_id`.

    `action` names the rule to check when no request rule is set (a service call made
    outside a request); `hidden` is the NotFound to raise for another project's resource
    (the same a missing one gets, so nothing tells them apart).
    """
    if project_id is None:
        return
    if project_id != who.project_id and not can_cross_projects(who):
        raise hidden or NotFound("Resource", "", "The resource could not be found.")
    rule = _RULE.get() or (action if action in policies.engine().names else None)
    if rule is not None:
        policies.engine().enforce(who, rule, {"project_id": project_id,
                                              "user_id": who.user_id})


def allowed(who: Identity, rule: str, target: dict[str, Any] | None = None) -> bool:
    """Does `rule` allow `who` this (target: the caller's project unless given)?"""
    return policies.engine().check(who, rule, target)


def enforce(who: Identity, rule: str, target: dict[str, Any] | None = None) -> None:
    """Raise Forbidden (403) unless `rule` allows `who` this."""
    policies.engine().enforce(who, rule, target)


def can_see_all(who: Identity) -> bool:
    """May `who` list every project's resources (all_tenants=1)? Cinder: `context.is_admin`."""
    return can_cross_projects(who)
