"""/v3/limits: the caller's absolute limits and usage, as Cinder's limits + used-limits views.

Rate limits do not exist (``rate`` is always empty, as in Cinder without the rate-limit
middleware). From microversion 3.39 an admin may ask for another project with
``?project_id=``.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from blockyard.api import wire
from blockyard.api.routes import route
from blockyard.service import quotas
from blockyard.service.identity import can_see_all
from blockyard.service.runtime import Runtime

#: (wire name, quota resource) of the limits, then of the used amounts, in Cinder's order
MAX_NAMES = (("maxTotalVolumes", "volumes"), ("maxTotalSnapshots", "snapshots"),
             ("maxTotalVolumeGigabytes", "gigabytes"), ("maxTotalBackups", "backups"),
             ("maxTotalBackupGigabytes", "backup_gigabytes"))
USED_NAMES = (("totalVolumesUsed", "volumes"), ("totalGigabytesUsed", "gigabytes"),
              ("totalSnapshotsUsed", "snapshots"), ("totalBackupsUsed", "backups"),
              ("totalBackupGigabytesUsed", "backup_gigabytes"))


def absolute(rt: Runtime, project_id: str) -> dict[str, int]:
    with rt.db.read() as s:
        body = {name: quotas.limit_of(s, rt.config.quotas, project_id, resource)
                for name, resource in MAX_NAMES}
        body.update({name: quotas.usage_of(s, project_id, resource)
                     for name, resource in USED_NAMES})
        return body


async def show(request: Request) -> Response:
    who = wire.identity(request)
    project_id = who.project_id
    asked = request.query_params.get("project_id")
    # as Cinder: from 3.39 an admin may name another project; anyone else's (and any before
    # 3.39) `project_id` is ignored, and they get their own limits
    if asked and wire.mv(request) >= 39 and can_see_all(who):
        project_id = asked
    values: dict[str, Any] = await wire.in_thread(absolute, wire.runtime(request),
                                                  project_id)
    return wire.ok({"limits": {"rate": [], "absolute": values}})


routes = [route("/v3/limits", show, "GET", "limits_extension:used_limits")]
