"""``POST /servers/{server_id}/action``: Nova's one route for many server actions, each named
by its body's key and guarded by its own policy rule.

An action is registered in `ACTIONS` as a `ServerAction`: how its body is checked, its rule,
and what it does. The order of the answers is Nova's: an unknown action or a bad body is 400
before anything is looked up, then another project's server is 404, then the rule is 403.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from blockyard.rest.auth import identity as identity_of
from blockyard.rest.errors import ApiError

from . import console, policies
from .routing import agent_of, authorize, json_of, route
from .store import Instance


@dataclass(frozen=True)
class ServerAction:
    #: Nova's policy rule for the action, checked against the server's project
    rule: str
    #: the checked arguments from the whole body (raises ApiError 400)
    parse: Callable[[Any], Any]
    #: the action on a found server the caller may act on, with the parsed arguments
    run: Callable[[Request, Instance, Any], Awaitable[Response]]


ACTIONS: dict[str, ServerAction] = {
    "os-getConsoleOutput": ServerAction(policies.CONSOLE_OUTPUT, console.length_of,
                                        console.console_output),
}


async def server_action(request: Request) -> Response:
    body = await json_of(request)
    if not isinstance(body, dict) or not body:
        raise ApiError(400, "Malformed request body")
    name = next((key for key in body if key in ACTIONS), None)
    if name is None:
        raise ApiError(400, f"There is no such action: {next(iter(body))!s:.100}")
    action = ACTIONS[name]
    args = action.parse(body)
    inst = agent_of(request).instance(identity_of(request), request.path_params["server_id"])
    authorize(request, action.rule, {"project_id": inst.project_id, "user_id": inst.user_id})
    return await action.run(request, inst, args)


#: no rule on the route: each action checks its own (`ACTIONS`)
ROUTES: list[Route] = [*route("/v2.1/servers/{server_id}/action", server_action, "POST", None)]
