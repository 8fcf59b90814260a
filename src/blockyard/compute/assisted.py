"""Nova's ``os-assisted-volume-snapshots``, for point-in-time snapshots of attached volumes.

The volume service calls it (policy ``os_compute_api:os-assisted-volume-snapshots:create``,
service or admin) around the snapshot it takes of an in-use volume::

    POST /v2.1/os-assisted-volume-snapshots
    {"snapshot": {"volume_id": V, "create_info": {"snapshot_id": S, "type": T}}}
    → 200 {"snapshot": {"id": S, "volumeId": V}}

Nova's one type, ``qcow2`` (a new overlay file the hypervisor switches to), has no meaning
for volumes that are not files on a shared filesystem. blockyard's types pause and resume
the guests that have the volume (`blockyard.compute.pauses`):

- ``blockyard-pause``: answers once every guest here with V attached is stopped and its
  disks flushed; ``max_pause_ms`` (optional, default 2000) arms the watchdog that resumes
  them by itself. 404 when no guest here has V attached (the volume service then copies as
  before), 409 while they are paused for another snapshot.
- ``blockyard-resume``: resumes them; the answer carries ``blockyard:paused_ms``, how long
  the guests were stopped. 409 when the watchdog resumed them first: the snapshot is not
  point-in-time and must not be reported as such.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from blockyard.rest import schema

from .pauses import DEFAULT_MAX_PAUSE_MS, MAX_PAUSE_MS
from .routing import agent_of, json_of, uuid_of

PAUSE = "blockyard-pause"
RESUME = "blockyard-resume"

CREATE = schema.body("snapshot", {
    "volume_id": {"type": "string", "minLength": 1},
    "create_info": {
        "type": "object",
        "properties": {
            "snapshot_id": {"type": "string", "minLength": 1},
            "type": {"type": "string", "enum": [PAUSE, RESUME]},
            "max_pause_ms": {"type": "integer", "minimum": 1, "maximum": MAX_PAUSE_MS},
        },
        "required": ["snapshot_id", "type"],
        "additionalProperties": False,
    },
}, required=("volume_id", "create_info"))


async def create(request: Request) -> Response:
    """Pause or resume the guests of a volume for one snapshot (see the module docstring)."""
    raw = await json_of(request)
    schema.check(raw, CREATE)
    body: dict[str, Any] = raw["snapshot"]
    info: dict[str, Any] = body["create_info"]
    volume_id = uuid_of(body["volume_id"], "volume_id")
    snapshot_id = uuid_of(info["snapshot_id"], "snapshot_id")
    pauses = agent_of(request).pauses
    answer: dict[str, Any] = {"id": snapshot_id, "volumeId": volume_id}
    if info["type"] == PAUSE:
        await pauses.pause(volume_id, snapshot_id,
                           int(info.get("max_pause_ms", DEFAULT_MAX_PAUSE_MS)))
    else:
        pause = await pauses.resume(volume_id, snapshot_id)
        answer["blockyard:paused_ms"] = round(pause.paused_ms or 0.0, 3)
    return JSONResponse({"snapshot": answer})
