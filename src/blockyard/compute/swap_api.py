"""``PUT /servers/{server_id}/os-volume_attachments/{volume_id}``: Nova's volume attachment
update. Below 2.85 it only swaps the volume (``volumeId`` names the new one); from 2.85 it
also updates ``delete_on_termination`` and swaps only when ``volumeId`` differs from the
volume in the path. Answers 202 with no body; the swap goes on in the background
(`compute.swap`).

Policy, as Nova: a swap is checked against ``os-volumes-attachments:swap`` with an empty
target (the volume service calls it for volumes of any project); a 2.85 update that keeps
the volume against ``os-volumes-attachments:update`` on the server's project (the route's
rule, checked before the endpoint runs).
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from blockyard.rest import schema
from blockyard.rest.auth import identity as identity_of
from blockyard.rest.errors import ApiError

from . import policies, swap
from .routing import agent_of, authorize, json_of, version_of

UPDATE = schema.body("volumeAttachment", {"volumeId": schema.uuid}, required=("volumeId",))
UPDATE_V285 = schema.body("volumeAttachment", {
    "volumeId": schema.uuid,
    "id": schema.uuid,
    "serverId": schema.uuid,
    "device": {"type": ["string", "null"],
               "pattern": "(^/dev/x{0,1}[a-z]{0,1}d{0,1})([a-z]+)[0-9]*$"},
    "tag": {"type": "string", "minLength": 1, "maxLength": 60, "pattern": "^[^,/]*$"},
    "delete_on_termination": {"type": "boolean"},
}, required=("volumeId",))


async def update_attachment(request: Request) -> Response:
    agent = agent_of(request)
    identity = identity_of(request)
    v = version_of(request)
    raw = await json_of(request)
    schema.check(raw, UPDATE_V285 if v >= (2, 85) else UPDATE)
    body: dict[str, Any] = raw["volumeAttachment"]
    old_id, new_id = request.path_params["volume_id"], str(body["volumeId"])
    inst = agent.instance(identity, request.path_params["server_id"])
    swapping = v < (2, 85) or new_id != old_id
    if swapping:
        authorize(request, policies.ATTACHMENTS_SWAP, {})
    if v >= (2, 85):
        _update(request, inst.id, old_id, body)
    if swapping:
        await swap.begin(agent, identity, inst, old_id, new_id)
    return Response(status_code=202)


def _update(request: Request, instance_id: str, volume_id: str, body: dict[str, Any]) -> None:
    """Nova's 2.85 update: only delete_on_termination may change; the other fields, when
    given, must say what already is."""
    store = agent_of(request).store
    m = store.mapping_of(instance_id, volume_id)
    for key, current in (("id", m.volume_id), ("serverId", m.instance_id),
                         ("device", m.device_name), ("tag", m.tag)):
        if key in body and body[key] != current:
            raise ApiError(400, f"The {key} property is not mutable")
    if "delete_on_termination" in body:
        store.set_mapping(m.id, delete_on_termination=body["delete_on_termination"])
