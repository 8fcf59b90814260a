"""What a server is made of, read-only: the agent's flavors and images, in the shapes the
clients resolve ``--flavor NAME`` and ``--image NAME`` against.

- Flavors: Nova's ``/v2.1/flavors[/detail]`` and ``/flavors/{flavor_id}``, from the
  configured ``[flavors.*]`` (m1.tiny built in). A flavor's id is its name: Nova's flavor
  ids are strings, and a name is what an operator writes in the configuration.
- Images: openstacksdk finds images through the *image* service, so the agent serves the
  small read-only part of Glance v2 the clients use, under ``/image`` (clouds.yaml:
  ``image_endpoint_override: http://AGENT/image``): version discovery, ``GET
  /image/v2/images`` with Glance's filters and paging, ``GET /image/v2/images/{image_id}``.
  Plus Nova's deprecated image proxy ``/v2.1/images``, which ends at 2.35 as Nova's does.
  An image's id is derived from its name (`config.Image.id`), stable across restarts.

No policy rule guards these, as in Nova and Glance (any authenticated caller reads them);
flavors carry their extra specs from 2.61 to callers who pass
``os_compute_api:os-flavor-extra-specs:index``.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from blockyard.rest.auth import identity as identity_of
from blockyard.rest.errors import ApiError

from . import policies
from .config import Flavor, Image
from .routing import (
    MAX_PROXY_VERSION,
    agent_of,
    links,
    page,
    query_int,
    route,
    timestamp,
    version_of,
)

#: where the Glance subset is mounted on the agent
IMAGE_ROOT = "/image"
#: Glance's API version the subset answers as (v2 has no microversions; any v2.x client works)
GLANCE_VERSION = "v2.16"


def _is_true(value: str, what: str) -> bool | None:
    """oslo's strict bool_from_string, plus Nova's 'none' (= both)."""
    text = value.strip().lower()
    if text == "none":
        return None
    if text in ("1", "t", "true", "on", "y", "yes"):
        return True
    if text in ("0", "f", "false", "off", "n", "no"):
        return False
    raise ApiError(400, f"Invalid {what} filter [{value}]")


# ---------------------------------------------------------------------- flavors
def flavor_view(request: Request, flavor: Flavor, *, detail: bool) -> dict[str, Any]:
    v = version_of(request)
    view: dict[str, Any] = {"id": flavor.name, "name": flavor.name,
                            "links": links(request, "flavors", flavor.name)}
    if detail:
        view.update({"ram": flavor.ram_mb, "disk": 0, "swap": 0 if v >= (2, 75) else "",
                     "OS-FLV-EXT-DATA:ephemeral": 0, "OS-FLV-DISABLED:disabled": False,
                     "vcpus": flavor.vcpus, "os-flavor-access:is_public": True,
                     "rxtx_factor": 1.0})
        if v >= (2, 61) and agent_of(request).policy.check(
                identity_of(request), policies.FLAVOR_EXTRA_SPECS_INDEX,
                {"project_id": identity_of(request).project_id}):
            view["extra_specs"] = {}
    if v >= (2, 55):
        view["description"] = None
    return view


def _flavor(request: Request) -> Flavor:
    flavor_id = request.path_params["flavor_id"]
    flavor = agent_of(request).config.flavors.get(flavor_id)
    if flavor is None:
        raise ApiError(404, f"Flavor {flavor_id} could not be found.")
    return flavor


def _flavors(request: Request) -> list[Flavor]:
    """The flavors the query selects: every configured flavor is public and enabled."""
    q = request.query_params
    found = sorted(agent_of(request).config.flavors.values(), key=lambda f: f.name)
    sort_key = q.get("sort_key", "flavorid")
    keys: dict[str, Callable[[Flavor], Any]] = {
        "flavorid": lambda f: f.name, "name": lambda f: f.name, "id": lambda f: f.name,
        "memory_mb": lambda f: f.ram_mb, "vcpus": lambda f: f.vcpus,
        "root_gb": lambda f: 0, "ephemeral_gb": lambda f: 0, "swap": lambda f: 0,
        "rxtx_factor": lambda f: 1.0, "disabled": lambda f: False,
        "is_public": lambda f: True, "created_at": lambda f: f.name}
    if sort_key not in keys:
        raise ApiError(400, f"Invalid sort_key [{sort_key}]")
    sort_dir = q.get("sort_dir", "asc")
    if sort_dir not in ("asc", "desc"):
        raise ApiError(400, f"Invalid sort_dir [{sort_dir}]")
    found.sort(key=keys[sort_key], reverse=sort_dir == "desc")
    if "is_public" in q and agent_of(request).policy.is_admin(identity_of(request)) and \
            _is_true(q["is_public"], "is_public") is False:
        found = []  # only an admin may ask for private flavors, and there are none
    min_ram, min_disk = query_int(request, "minRam"), query_int(request, "minDisk")
    if min_ram is not None:
        found = [f for f in found if f.ram_mb >= min_ram]
    if min_disk is not None and min_disk > 0:
        found = []  # no flavor has a root disk
    if "name" in q:
        found = [f for f in found if f.name == q["name"]]
    return page(request, found, lambda f: f.name)


async def list_flavors(request: Request) -> Response:
    return JSONResponse({"flavors": [flavor_view(request, f, detail=False)
                                     for f in _flavors(request)]})


async def list_flavors_detail(request: Request) -> Response:
    return JSONResponse({"flavors": [flavor_view(request, f, detail=True)
                                     for f in _flavors(request)]})


async def show_flavor(request: Request) -> Response:
    return JSONResponse({"flavor": flavor_view(request, _flavor(request), detail=True)})


async def flavor_extra_specs(request: Request) -> Response:
    _flavor(request)
    return JSONResponse({"extra_specs": {}})


# ---------------------------------------------------------------------- images: facts
def _files(image: Image) -> list[Path]:
    return [Path(p) for p in (image.disk, image.kernel, image.initrd) if p]


def image_size(image: Image) -> int | None:
    """Bytes of the image's files (disk, or kernel and initrd); None if one is missing."""
    try:
        return sum(p.stat().st_size for p in _files(image))
    except OSError:
        return None


def image_time(image: Image) -> datetime:
    """When the image was made: its newest file's mtime (the epoch if none can be read)."""
    times = []
    for p in _files(image):
        try:
            times.append(p.stat().st_mtime)
        except OSError:
            continue
    return datetime.fromtimestamp(max(times, default=0), UTC)


def disk_format(image: Image) -> str:
    """qcow2 or raw for a disk image; a kernel (with its initrd) is Glance's 'aki'."""
    if image.disk:
        return "qcow2" if image.disk.endswith(".qcow2") else "raw"
    return "aki"


def _images(request: Request) -> list[Image]:
    return sorted(agent_of(request).config.images.values(), key=lambda i: i.name)


def _image(request: Request) -> Image:
    image_id = request.path_params["image_id"]
    image = agent_of(request).config.image(image_id)
    if image is None or image.id != image_id:  # Glance and Nova find images by id only
        raise ApiError(404, f"No image found with ID {image_id}")
    return image


# ---------------------------------------------------------------------- images: Glance v2
def glance_view(image: Image) -> dict[str, Any]:
    fmt = disk_format(image)
    made = timestamp(image_time(image))
    return {
        "id": image.id, "name": image.name, "status": "active", "visibility": "public",
        "protected": True, "os_hidden": False, "owner": None, "tags": [],
        "disk_format": fmt, "container_format": "aki" if fmt == "aki" else "bare",
        "size": image_size(image), "virtual_size": None, "min_disk": 0, "min_ram": 0,
        "checksum": None, "os_hash_algo": None, "os_hash_value": None,
        "created_at": made, "updated_at": made,
        "self": f"/v2/images/{image.id}", "file": f"/v2/images/{image.id}/file",
        "schema": "/v2/schemas/image",
    }


#: Glance's list filters the subset honours: equality on these fields
_GLANCE_FILTERS = ("id", "name", "status", "visibility", "disk_format", "container_format")


async def glance_versions(request: Request) -> Response:
    base = str(request.base_url).rstrip("/") + IMAGE_ROOT
    return JSONResponse({"versions": [{"id": GLANCE_VERSION, "status": "CURRENT", "links": [
        {"rel": "self", "href": f"{base}/v2/"}]}]}, 300)


async def glance_list_images(request: Request) -> Response:
    q = request.query_params
    views = [glance_view(i) for i in _images(request)]
    for key in _GLANCE_FILTERS:
        if key in q:
            wanted = q[key]
            if key == "visibility" and wanted == "all":
                continue
            views = [v for v in views if v[key] == wanted]
    if q.get("sort_dir", "asc") not in ("asc", "desc"):
        raise ApiError(400, f"Invalid sort direction: {q['sort_dir']}")
    if q.get("os_hidden", "false").lower() == "true":
        views = []
    shown = page(request, views, lambda v: str(v["id"]))
    body: dict[str, Any] = {"images": shown, "first": "/v2/images",
                            "schema": "/v2/schemas/images"}
    if shown and shown[-1] is not views[-1]:  # Glance's link to the next page
        body["next"] = f"/v2/images?marker={shown[-1]['id']}&limit={len(shown)}"
    return JSONResponse(body)


async def glance_show_image(request: Request) -> Response:
    return JSONResponse(glance_view(_image(request)))


# ---------------------------------------------------------------------- images: Nova proxy
def nova_image_view(request: Request, image: Image, *, detail: bool) -> dict[str, Any]:
    view: dict[str, Any] = {"id": image.id, "name": image.name,
                            "links": links(request, "images", image.id)}
    if detail:
        made = timestamp(image_time(image))
        view.update({"status": "ACTIVE", "progress": 100, "minDisk": 0, "minRam": 0,
                     "metadata": {}, "created": made, "updated": made,
                     "OS-EXT-IMG-SIZE:size": image_size(image)})
    return view


def _nova_images(request: Request) -> list[Image]:
    q = request.query_params
    found = _images(request)
    if "name" in q:
        found = [i for i in found if i.name == q["name"]]
    if "status" in q and q["status"].upper() != "ACTIVE":
        found = []
    for key in ("minRam", "minDisk"):
        if (query_int(request, key) or 0) > 0:
            found = []  # no image asks for any
    return page(request, found, lambda i: i.id)


async def nova_list_images(request: Request) -> Response:
    return JSONResponse({"images": [nova_image_view(request, i, detail=False)
                                    for i in _nova_images(request)]})


async def nova_list_images_detail(request: Request) -> Response:
    return JSONResponse({"images": [nova_image_view(request, i, detail=True)
                                    for i in _nova_images(request)]})


async def nova_show_image(request: Request) -> Response:
    try:
        image = _image(request)
    except ApiError:
        raise ApiError(404, "Image not found.") from None
    return JSONResponse({"image": nova_image_view(request, image, detail=True)})


PROXY = MAX_PROXY_VERSION
ROUTES: list[Route] = [
    *route("/v2.1/flavors", list_flavors, "GET", None, slash=True),
    *route("/v2.1/flavors/detail", list_flavors_detail, "GET", None, slash=True),
    *route("/v2.1/flavors/{flavor_id}", show_flavor, "GET", None),
    *route("/v2.1/flavors/{flavor_id}/os-extra_specs", flavor_extra_specs, "GET",
           policies.FLAVOR_EXTRA_SPECS_INDEX, slash=True),
    *route("/v2.1/images", nova_list_images, "GET", None, slash=True, max_version=PROXY),
    *route("/v2.1/images/detail", nova_list_images_detail, "GET", None, slash=True,
           max_version=PROXY),
    *route("/v2.1/images/{image_id}", nova_show_image, "GET", None, max_version=PROXY),
    *route(IMAGE_ROOT, glance_versions, "GET", None, slash=True),
    *route(f"{IMAGE_ROOT}/versions", glance_versions, "GET", None),
    *route(f"{IMAGE_ROOT}/v2/images", glance_list_images, "GET", None, slash=True),
    *route(f"{IMAGE_ROOT}/v2/images/{{image_id}}", glance_show_image, "GET", None),
]

#: what answers without authentication: Glance's version discovery
PUBLIC_PATHS = frozenset({IMAGE_ROOT, IMAGE_ROOT + "/", IMAGE_ROOT + "/versions"})
