"""/v3/os-quota-class-sets/{class}: show and update a quota class.

The class ``default`` holds the defaults of every project (see
`blockyard.service.quota_classes`). A class set lists the same resources as a project's quota
set, each the class's own limit or else the default one. An update takes any subset of those
resources, as Cinder's ``quota_class_set`` schema does (integers or digit strings, -1 for
unlimited), and writes them in one transaction.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from blockyard.api import wire
from blockyard.api.quotas import resources
from blockyard.api.routes import route
from blockyard.rest import schema
from blockyard.rest.errors import ApiError
from blockyard.service import quota_classes, quotas
from blockyard.service.runtime import Runtime

#: Cinder's update_quota_class body (parameter_types.quota_class_set)
UPDATE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "quota_class_set": {
            "type": "object",
            "patternProperties": {
                "^[a-zA-Z0-9-_:. ]{1,300}$": {
                    "type": ["integer", "string"], "pattern": "^[0-9]*$", "minimum": -1,
                    "minLength": 1, "maximum": schema.DB_MAX_INT,
                },
            },
            "additionalProperties": False,
        },
    },
    "required": ["quota_class_set"],
    "additionalProperties": False,
}


def _check_class_name(name: str) -> None:
    if not 1 <= len(name) <= 255:
        raise ApiError(400, "Invalid input received: quota_class_name has more than 255 "
                            "characters.")


def _show(rt: Runtime, class_name: str) -> dict[str, int]:
    with rt.db.read() as s:
        return quotas.class_limits(s, rt.config.quotas, class_name, resources(s))


def _update(rt: Runtime, class_name: str, requested: dict[str, Any]) -> dict[str, int]:
    with rt.db.write() as s:
        names = resources(s)
        bad = [key for key in requested if key not in names]
        if bad:
            raise ApiError(400, f"Invalid input received: Bad key(s) in quota class set: "
                                f"{', '.join(bad)}")
        quota_classes.set_class_limits(s, class_name,
                                       {k: int(v) for k, v in requested.items()})
        return quotas.class_limits(s, rt.config.quotas, class_name, names)


async def show(request: Request) -> Response:
    class_name = request.path_params["name"]
    quota_set: dict[str, Any] = await wire.in_thread(_show, wire.runtime(request),
                                                     class_name)
    quota_set["id"] = class_name
    return wire.ok({"quota_class_set": quota_set})


async def update(request: Request) -> Response:
    class_name = request.path_params["name"]
    _check_class_name(class_name)
    body = await wire.json_body(request)
    schema.check(body, UPDATE_SCHEMA)
    quota_set = await wire.in_thread(_update, wire.runtime(request), class_name,
                                     body["quota_class_set"])
    return wire.ok({"quota_class_set": quota_set})


routes = [
    route("/v3/os-quota-class-sets/{name}", show, "GET", "volume_extension:quota_classes:get"),
    route("/v3/os-quota-class-sets/{name}", update, "PUT", "volume_extension:quota_classes:update"),
]
