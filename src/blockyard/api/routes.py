"""Routes that declare their policy rule: the only way the volume API builds a route.

Every route names the Cinder rule that governs it (`route`), one rule per action name for the
``POST .../action`` routes (`action_route`), or says it needs none (`public`: version
discovery). The rule is enforced before the endpoint reads the request (an action route reads
only the action's name first), with the caller's own project as target, as Cinder's default
target; the service then checks the resource it finds against its project (see
`blockyard.service.identity.authorize`, which learns the rule from `acting_under`).

tests/test_policy_matrix.py walks the route table: a route not built here fails it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from blockyard.api import wire
from blockyard.service import identity as ident

Endpoint = Callable[[Request], Awaitable[Response]]


class PolicyRoute(Route):
    """A route with its policy: `rule` (None: public), or `actions` (action name → rule)."""

    def __init__(self, path: str, endpoint: Endpoint, method: str, *, rule: str | None,
                 actions: Mapping[str, str] | None = None, target: str | None = None) -> None:
        self.rule = rule
        self.actions = dict(actions) if actions is not None else None
        #: the path parameter naming the target project (quotas), else the caller's own
        self.target = target
        self.method = method
        super().__init__(path, self._guard(endpoint), methods=[method])

    def _target(self, request: Request) -> dict[str, Any]:
        who = wire.identity(request)
        project = request.path_params[self.target] if self.target else who.project_id
        return {"project_id": project or None, "user_id": who.user_id}

    def _guard(self, endpoint: Endpoint) -> Endpoint:
        async def guarded(request: Request) -> Response:
            rule = self.rule
            if self.actions is not None:
                rule = self.actions.get(await _action_name(request) or "")
            ident.acting_under(rule)
            if rule is not None:
                ident.enforce(wire.identity(request), rule, self._target(request))
            return await endpoint(request)

        guarded.__name__ = getattr(endpoint, "__name__", "endpoint")
        guarded.__doc__ = endpoint.__doc__
        return guarded


async def _action_name(request: Request) -> str | None:
    """The one key of an action body (None when it is not one: the endpoint says why)."""
    body = await wire.json_body(request)
    return next(iter(body)) if len(body) == 1 else None


def route(path: str, endpoint: Endpoint, method: str, rule: str, *,
          target: str | None = None) -> PolicyRoute:
    """`method path` under `rule` (target: the caller's project, or the path parameter
    `target` that names one)."""
    return PolicyRoute(path, endpoint, method, rule=rule, target=target)


def action_route(path: str, endpoint: Endpoint, actions: Mapping[str, str]) -> PolicyRoute:
    """``POST path`` whose body names an action; each action its rule. A name not listed is
    passed to the endpoint unchecked, which must refuse it (a test holds the endpoints'
    action tables and these lists equal)."""
    return PolicyRoute(path, endpoint, "POST", rule=None, actions=actions)


def public(path: str, endpoint: Endpoint, method: str = "GET") -> PolicyRoute:
    """A route no policy rule governs: version discovery, and the reads Cinder checks no
    rule for (availability zones, extensions, group types). Authentication still applies
    where the edge requires it."""
    return PolicyRoute(path, endpoint, method, rule=None)
