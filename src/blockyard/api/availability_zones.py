"""``/v3/os-availability-zone``: the zones the configured backends are in
(``[backends.NAME] availability_zone``), every one available."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from blockyard.api import wire


async def availability_zones(request: Request) -> Response:
    rt = wire.runtime(request)
    zones = sorted({b.config.availability_zone for b in rt.backends.values()})
    return wire.ok({"availabilityZoneInfo": [
        {"zoneName": zone, "zoneState": {"available": True}} for zone in zones]})


routes = [
    Route("/v3/os-availability-zone", availability_zones, methods=["GET"]),
]
