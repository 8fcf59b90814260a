"""``/v3/os-availability-zone``: the zones the configured backends are in
(``[backends.NAME] availability_zone``), every one available."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from blockyard.api import wire
from blockyard.api.routes import public
from blockyard.service import scheduler


async def availability_zones(request: Request) -> Response:
    zones = sorted(scheduler.availability_zones(wire.runtime(request)))
    return wire.ok({"availabilityZoneInfo": [
        {"zoneName": zone, "zoneState": {"available": True}} for zone in zones]})


routes = [
    public("/v3/os-availability-zone", availability_zones),
]
