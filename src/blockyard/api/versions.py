"""The versions documents: GET / (300 Multiple Choices) and GET /v3/ (200)."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from blockyard.api import wire
from blockyard.api.routes import public

UPDATED = "2023-08-31T00:00:00Z"


def _document(request: Request) -> dict[str, object]:
    return {
        "versions": [
            {
                "id": "v3.0",
                "status": "CURRENT",
                "version": wire.MAX_VERSION,
                "min_version": wire.MIN_VERSION,
                "updated": UPDATED,
                "links": [
                    {"rel": "describedby", "type": "text/html",
                     "href": "https://docs.openstack.org/"},
                    {"rel": "self", "href": f"{wire.base_url(request)}/v3/"},
                ],
                "media-types": [
                    {"base": "application/json",
                     "type": "application/vnd.openstack.volume+json;version=3"}
                ],
            }
        ]
    }


async def root(request: Request) -> Response:
    return wire.ok(_document(request), 300)


async def v3(request: Request) -> Response:
    return wire.ok(_document(request))


routes = [
    public("/", root),
    public("/v3/", v3),
]
