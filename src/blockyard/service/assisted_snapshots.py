"""Point-in-time snapshots of attached volumes: compute pauses the guests around the snapshot.

A snapshot of an in-use volume (``force``) is taken while a guest may be writing it: an RBD
snapshot then catches whatever the guest's cache had sent so far, a file copy even blocks
of different instants. So the snapshot task has compute (``[compute] url``, Nova's
``os-assisted-volume-snapshots`` with blockyard's types, see `blockyard.compute.assisted`)
pause the guests that have the volume, takes the backend snapshot, and has them resumed::

    POST /os-assisted-volume-snapshots  create_info.type "blockyard-pause"   → 200 paused
    driver.create_snapshot(...)
    POST /os-assisted-volume-snapshots  create_info.type "blockyard-resume"  → 200, paused_ms

QEMU stops a guest only after its requests in flight completed and were flushed, so the
snapshot holds exactly the writes the guest was told are done before the pause.

When that cannot be had the snapshot is what it was before, a copy of a volume in use, and
the log says so: no ``[compute] url``, compute knows no guest with the volume (404: it is
attached to something else), or compute does not know blockyard's types (400: a Nova).
Any other failure fails the snapshot, and the guest is never left paused: a failed pause is
followed by a resume, and compute resumes the guest by itself after `MAX_PAUSE_MS` whatever
happens here (then the late resume is refused, 409, and the snapshot fails: it may hold
writes of after its instant).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import httpx

from blockyard.config import AuthConfig, ComputeEndpoint
from blockyard.errors import BackendError
from blockyard.service import compute_events
from blockyard.service_auth import ServiceAuth, ServiceTokenError

log = logging.getLogger(__name__)

PATH = "/os-assisted-volume-snapshots"
MICROVERSION = "2.1"
#: how long compute lets the guests stay paused if no resume comes (its watchdog)
MAX_PAUSE_MS = 2000


class PauseFailed(BackendError):
    """Compute could not pause or resume the guests of the volume."""


@contextmanager
def guests_paused(compute: ComputeEndpoint, auth: AuthConfig, volume_id: str,
                  snapshot_id: str, instances: Sequence[str]) -> Iterator[None]:
    """Run the body with the guests of `volume_id` (attached to `instances`) paused, when
    compute can do it; see the module docstring. Raises PauseFailed."""
    if not instances:
        yield
        return
    names = ", ".join(instances)
    if compute.url is None:
        log.warning("snapshot %s: volume %s is attached to %s and no [compute] url is "
                    "configured: the snapshot is a copy of a volume in use, not "
                    "point-in-time", snapshot_id, volume_id, names)
        yield
        return
    service = compute_events.service_auth(auth)
    started = time.monotonic()
    try:
        answer = _ask(compute, service, volume_id, snapshot_id, "blockyard-pause",
                      max_pause_ms=MAX_PAUSE_MS)
    except PauseFailed:  # e.g. timed out: the guests may be paused all the same
        _resume_quietly(compute, service, volume_id, snapshot_id)
        raise
    if answer.status_code == 404:
        log.warning("snapshot %s: compute has no guest with volume %s (attached to %s): the "
                    "snapshot is a copy of a volume in use, not point-in-time", snapshot_id,
                    volume_id, names)
        yield
        return
    if answer.status_code == 400:  # a Nova: its one type is qcow2
        log.warning("snapshot %s: compute at %s does not take blockyard's assisted snapshots "
                    "(%s): the snapshot of volume %s is a copy of a volume in use, not "
                    "point-in-time", snapshot_id, compute.url, _text(answer), volume_id)
        yield
        return
    try:
        if answer.status_code != 200:
            raise PauseFailed(f"Compute could not pause the guests of volume {volume_id}: "
                              f"{answer.status_code} {_text(answer)}")
        instant = time.monotonic()
        yield
        instant = time.monotonic() - instant
    except BaseException:
        _resume_quietly(compute, service, volume_id, snapshot_id)
        raise
    answer = _ask(compute, service, volume_id, snapshot_id, "blockyard-resume")
    if answer.status_code != 200:
        raise PauseFailed(f"Compute could not resume the guests of volume {volume_id}: "
                          f"{answer.status_code} {_text(answer)}")
    try:
        paused_ms = float(answer.json()["snapshot"]["blockyard:paused_ms"])
    except (ValueError, KeyError, TypeError):
        paused_ms = float("nan")
    log.info("snapshot %s of volume %s: guests %s paused %.1f ms (%.1f ms from the pause "
             "request to the resume's answer, %.1f ms of them the snapshot itself)",
             snapshot_id, volume_id, names, paused_ms, (time.monotonic() - started) * 1000,
             instant * 1000)


def _ask(compute: ComputeEndpoint, service: ServiceAuth | None, volume_id: str, snapshot_id: str,
         kind: str, **extra: int) -> httpx.Response:
    body = {"snapshot": {"volume_id": volume_id,
                         "create_info": {"snapshot_id": snapshot_id, "type": kind, **extra}}}
    try:
        return compute_events.call(compute, "POST", PATH, body,
                                   auth=service,
                                   microversion=MICROVERSION)
    except (httpx.HTTPError, httpx.InvalidURL, ServiceTokenError) as exc:
        raise PauseFailed(f"Compute at {compute.url} did not answer the {kind} of volume "
                          f"{volume_id}: {str(exc) or type(exc).__name__}", exc) from exc


def _resume_quietly(compute: ComputeEndpoint, service: ServiceAuth | None, volume_id: str,
                    snapshot_id: str) -> None:
    """After a failure: do not leave the guests paused until the watchdog comes."""
    try:
        answer = _ask(compute, service, volume_id, snapshot_id, "blockyard-resume")
    except PauseFailed as exc:
        log.error("snapshot %s: %s (compute resumes the guests by itself within %d ms)",
                  snapshot_id, exc, MAX_PAUSE_MS)
        return
    if answer.status_code not in (200, 404):  # 404: no pause was made
        log.error("snapshot %s: compute answered %s to the resume of volume %s: %s",
                  snapshot_id, answer.status_code, volume_id, _text(answer))


def _text(response: httpx.Response, limit: int = 300) -> str:
    return response.content.decode(errors="replace").strip()[:limit]
