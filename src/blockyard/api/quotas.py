"""/v3/os-quota-sets: project limits, their defaults and usage (quota classes: quota_classes.py).

A quota set lists the base resources, then ``volumes_/gigabytes_/snapshots_<type>`` for every
volume type (newest type first), then ``groups``, as Cinder 29 does. Limits and usage come from
`blockyard.service.quotas` (the same functions enforcement uses), so what is shown is what is
enforced. An update is checked completely (unknown keys, integers, not below what is in use for a
resource that already has a limit of the project's own, as Cinder's
``_validate_existing_resource``) before the first row is written, in one transaction.
"""

from __future__ import annotations

import re
from typing import Any

from sqlalchemy import delete as sql_delete
from sqlalchemy import insert, select
from sqlalchemy import update as sql_update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session
from starlette.requests import Request
from starlette.responses import Response

from blockyard.api import validate, wire
from blockyard.api.routes import route
from blockyard.db.models import Quota
from blockyard.rest.errors import ApiError
from blockyard.service import quotas, type_admin
from blockyard.service.runtime import Runtime

#: Cinder's QUOTAS resources before the per-type ones, and its GROUP_QUOTAS after them
BASE_RESOURCES = ("volumes", "per_volume_gigabytes", "snapshots", "gigabytes", "backups",
                  "backup_gigabytes")
GROUP_RESOURCES = ("groups",)
#: keys clients send in a quota set that are not quotas (cinderclient sends tenant_id)
NON_QUOTA_KEYS = ("tenant_id", "id")



def resources(session: Session) -> list[str]:
    per_type = [f"{base}_{name}" for name in type_admin.type_names(session)
                for base in ("volumes", "gigabytes", "snapshots")]
    return [*BASE_RESOURCES, *per_type, *GROUP_RESOURCES]


def limits(session: Session, rt: Runtime, project_id: str,
           names: list[str]) -> dict[str, int]:
    return {r: quotas.limit_of(session, rt.config.quotas, project_id, r) for r in names}


def usage(session: Session, rt: Runtime, project_id: str,
          names: list[str]) -> dict[str, dict[str, int]]:
    return {r: {"limit": quotas.limit_of(session, rt.config.quotas, project_id, r),
                "in_use": quotas.usage_of(session, project_id, r), "reserved": 0}
            for r in names}


def _check_project(project_id: str) -> None:
    if len(project_id) > 255:
        raise ApiError(400, "Invalid input received: quota_set_name has more than 255 "
                            "characters.")


# ---------------------------------------------------------------------------- reads


def _show(rt: Runtime, project_id: str, with_usage: bool) -> dict[str, Any]:
    with rt.db.read() as s:
        names = resources(s)
        if with_usage:
            return dict(usage(s, rt, project_id, names))
        return dict(limits(s, rt, project_id, names))


def _defaults(rt: Runtime) -> dict[str, Any]:
    """A project's defaults: the default quota class, else the configured values."""
    with rt.db.read() as s:
        return dict(quotas.class_limits(s, rt.config.quotas, quotas.DEFAULT_CLASS,
                                        resources(s)))


async def show(request: Request) -> Response:
    project_id = request.path_params["project"]
    with_usage = validate.query_bool(request.query_params.get("usage"), "usage")
    quota_set = await wire.in_thread(_show, wire.runtime(request), project_id, with_usage)
    quota_set["id"] = project_id
    return wire.ok({"quota_set": quota_set})


async def defaults(request: Request) -> Response:
    project_id = request.path_params["project"]
    quota_set = await wire.in_thread(_defaults, wire.runtime(request))
    quota_set["id"] = project_id
    return wire.ok({"quota_set": quota_set})


# ---------------------------------------------------------------------------- writes


def _integer(key: str, value: Any) -> int:
    """Cinder's ``utils.validate_integer(value, key, min_value=-1, max_value=MAX_INT)``."""
    if isinstance(value, bool) or value is None:
        raise ApiError(400, f"{key} must be an integer.")
    if isinstance(value, float):
        if not value.is_integer():
            raise ApiError(400, f"{key} must be an integer.")
        value = int(value)
    if isinstance(value, str):
        # ASCII only: int() would also take "٣" and "1_000"
        if not re.fullmatch(r"[-+]?[0-9]{1,20}", value.strip()):
            raise ApiError(400, f"{key} must be an integer.")
        value = int(value.strip())
    if not isinstance(value, int):
        raise ApiError(400, f"{key} must be an integer.")
    if value < -1:
        raise ApiError(400, f"{key} must be >= -1")
    if value > validate.MAX_INT:
        raise ApiError(400, f"{key} must be <= {validate.MAX_INT}")
    return value


def _update(rt: Runtime, project_id: str, requested: dict[str, Any]) -> dict[str, int]:
    with rt.db.write() as s:
        names = resources(s)
        known = set(names)
        bad: list[str] = []
        wanted: dict[str, int] = {}
        for key, value in requested.items():
            if key in NON_QUOTA_KEYS:
                continue
            if key not in known:
                bad.append(key)
                continue
            wanted[key] = _integer(key, value)
        if bad:
            raise ApiError(400, f"Invalid input received: Bad key(s) in quota set: "
                                f"{', '.join(bad)}")
        # Cinder compares with usage only the resources that already have a limit of the
        # project's own (it reads the project's quotas with defaults=False): the first limit
        # set on a resource is taken even below what is in use, and only blocks new growth
        own = set(s.execute(select(Quota.resource).where(Quota.project_id == project_id))
                  .scalars())
        for key, value in wanted.items():
            if key == "per_volume_gigabytes" or value == -1 or key not in own:
                continue
            in_use = quotas.usage_of(s, project_id, key)
            if value < in_use:
                raise ApiError(400, f"Quota {key} limit must be equal or greater than "
                                    f"existing resources. Current usage is {in_use} and the "
                                    f"requested limit is {value}.")
        for key, value in wanted.items():
            _set_limit(s, project_id, key, value)
        return limits(s, rt, project_id, names)


def _set_limit(session: Session, project_id: str, resource: str, value: int) -> None:
    """Upsert one limit; a concurrent first insert of the same row (PostgreSQL) is taken over
    by updating it, never reported as an error."""
    row = (Quota.project_id == project_id, Quota.resource == resource)
    stmt = sql_update(Quota).where(*row).values(hard_limit=value) \
        .execution_options(synchronize_session=False)
    if session.execute(stmt).rowcount == 1:  # type: ignore[attr-defined]
        return
    try:
        with session.begin_nested():
            session.execute(insert(Quota).values(project_id=project_id, resource=resource,
                                                 hard_limit=value))
    except IntegrityError:
        session.execute(stmt)


def _delete(rt: Runtime, project_id: str) -> None:
    with rt.db.write() as s:
        s.execute(sql_delete(Quota).where(Quota.project_id == project_id)
                  .execution_options(synchronize_session=False))


async def update(request: Request) -> Response:
    project_id = request.path_params["project"]
    _check_project(project_id)
    body = await wire.json_body(request)
    requested = validate.section(body, "quota_set")
    validate.no_extra_keys(body, {"quota_set"})
    if not requested:
        raise validate.invalid("quota_set", requested, "{} does not have enough properties")
    quota_set = await wire.in_thread(_update, wire.runtime(request), project_id, requested)
    return wire.ok({"quota_set": quota_set})


async def delete(request: Request) -> Response:
    project_id = request.path_params["project"]
    _check_project(project_id)
    await wire.in_thread(_delete, wire.runtime(request), project_id)
    return Response(status_code=200)


routes = [
    route("/v3/os-quota-sets/{project}/defaults", defaults, "GET",
          "volume_extension:quotas:show", target="project"),
    route("/v3/os-quota-sets/{project}", show, "GET",
          "volume_extension:quotas:show", target="project"),
    route("/v3/os-quota-sets/{project}", update, "PUT",
          "volume_extension:quotas:update", target="project"),
    route("/v3/os-quota-sets/{project}", delete, "DELETE",
          "volume_extension:quotas:delete", target="project"),
]
