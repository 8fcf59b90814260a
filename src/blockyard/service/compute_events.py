"""Tell the compute service that attached volumes grew (Nova's external-events API).

Extending an attached volume only grows the backend's file or device: the guest keeps seeing
the old size until the hypervisor resizes its disk (QEMU's ``block_resize``). Cinder has Nova
do that by posting one ``volume-extended`` event per instance the volume is attached to::

    POST <compute url>/os-server-external-events
    X-OpenStack-Nova-API-Version: 2.51        (the microversion that added volume-extended)
    {"events": [{"name": "volume-extended", "server_uuid": <instance>, "tag": <volume id>}]}

and blockyard does the same towards the API named by ``[compute] url`` (blockyard's compute
agent, or a Nova). Under Keystone the volume service authenticates with its own
``[service_user]`` token (a `blockyard.service_auth.ServiceAuth`: cached, renewed before it
expires, fetched again once if compute answers 401); Nova's default policy takes the events
only from the ``service`` role (or admin). Under noauth it is the admin of the noauth scheme
both speak (``X-Auth-Token: admin:admin``). It is best effort, as in Cinder: the extend is
complete whether or not the event gets through, and a failure (nothing listening, a timeout,
an HTTP error, an instance compute does not know, no token from Keystone) is only logged,
naming the volume and the instances. The events are sent from the task runner's thread once
the extend has settled (see `volumes._settle_extend`), never inside a transaction or on a
request's path.

`call` is the one way the volume service sends anything to compute (these events, the swap
that moves an attached volume, assisted snapshots): same endpoint, same token, same retry.

The compute API is a peer on the service network: requests go to it directly, whatever
``http_proxy`` the environment sets.
"""

from __future__ import annotations

import functools
import json
import logging
import ssl
from collections.abc import Sequence
from typing import Any

import httpx

from blockyard.config import AuthConfig, ComputeEndpoint
from blockyard.service_auth import ServiceAuth, ServiceTokenError, ServiceUser

log = logging.getLogger(__name__)

EVENTS_PATH = "/os-server-external-events"
#: the compute API microversion that added the volume-extended event
MICROVERSION = "2.51"
#: the noauth token of the admin (user "admin" of project "admin")
TOKEN = "admin:admin"
EVENT = "volume-extended"


def announce(config: ComputeEndpoint) -> None:
    """Say once, at start-up, where volume-extended events go (or that none will)."""
    if config.url is None:
        log.info("no [compute] url: attached volumes that are extended are not announced to "
                 "a compute service (guests see the new size only after re-attaching)")
    else:
        log.info("volume-extended events go to %s%s", config.url.rstrip("/"), EVENTS_PATH)
        _tls()  # the CA store takes ~0.5 s to load: not on the first call's path


def service_auth(auth: AuthConfig) -> ServiceAuth | None:
    """The volume service's own token source under keystone (None under noauth): one per
    service user, so every event shares its cached token."""
    if not auth.keystone or auth.service_user is None:
        return None
    return _service_auth(ServiceUser.of(auth.service_user))


@functools.cache
def _service_auth(user: ServiceUser) -> ServiceAuth:
    return ServiceAuth(user)


def body(volume_id: str, instance_uuids: Sequence[str]) -> dict[str, Any]:
    """The request body: one event per instance, tagged with the volume."""
    return {"events": [{"name": EVENT, "server_uuid": uuid, "tag": volume_id}
                       for uuid in instance_uuids]}


def volume_extended(config: ComputeEndpoint, volume_id: str,
                    instance_uuids: Sequence[str], *, auth: ServiceAuth | None = None) -> bool:
    """Tell compute that `volume_id` grew under `instance_uuids`; True when every event was
    accepted. `auth`: the volume service's service user under Keystone (None: noauth).
    Never raises: failures are logged."""
    if not instance_uuids:
        return True
    if config.url is None:
        return False
    instances = ", ".join(instance_uuids)
    try:
        response = call(config, "POST", EVENTS_PATH, body(volume_id, instance_uuids),
                        auth=auth, microversion=MICROVERSION)
    except (httpx.HTTPError, httpx.InvalidURL, ServiceTokenError) as exc:
        # refused, timed out, not a URL, no token from Keystone...
        log.warning("volume %s: could not send the volume-extended event for instance(s) %s "
                    "to %s: %s", volume_id, instances, config.url,
                    str(exc) or type(exc).__name__)
        return False
    if not response.is_success:
        log.warning("volume %s: compute answered %s to the volume-extended event for "
                    "instance(s) %s: %s", volume_id, response.status_code, instances,
                    _text(response.content) or response.reason_phrase)
        return False
    if response.status_code == 207:  # some events failed (e.g. an instance compute does not know)
        return _partial(volume_id, response.content)
    log.info("volume %s: compute told of its new size (instance(s) %s)", volume_id, instances)
    return True


def call(config: ComputeEndpoint, method: str, path: str, payload: Any = None, *,
         auth: ServiceAuth | None, microversion: str) -> httpx.Response:
    """One request to the compute API at ``[compute] url`` + `path`, as the volume service:
    its service token under Keystone (`auth`; a 401 fetches a new one, once: the token was
    revoked before it expired), the noauth admin otherwise. Raises httpx.HTTPError (refused,
    timed out, not a URL) and ServiceTokenError; an HTTP error status is the caller's to read.
    Every request the volume service makes of compute goes through here."""
    if config.url is None:
        raise httpx.InvalidURL("no [compute] url is configured")
    response = _send(config, method, path, payload, auth, microversion)
    if response.status_code == 401 and auth is not None:
        auth.invalidate()
        response = _send(config, method, path, payload, auth, microversion)
    return response


def _send(config: ComputeEndpoint, method: str, path: str, payload: Any,
          auth: ServiceAuth | None, microversion: str) -> httpx.Response:
    assert config.url is not None
    identity = auth.own_headers() if auth is not None else {"X-Auth-Token": TOKEN}
    content = json.dumps(payload).encode() if payload is not None else None
    # trust_env=False: no proxies from the environment; the system's CA store for https
    with httpx.Client(timeout=config.timeout, trust_env=False, verify=_tls()) as client:
        return client.request(
            method, config.url.rstrip("/") + path, content=content,
            headers={"Content-Type": "application/json", "Accept": "application/json",
                     **identity, "X-OpenStack-Nova-API-Version": microversion,
                     "OpenStack-API-Version": f"compute {microversion}"})


@functools.cache
def _tls() -> ssl.SSLContext:
    """The system's CA store, as urllib used it; loaded once (it takes a while), so an event
    goes out as soon as its extend settles."""
    return ssl.create_default_context()


def _partial(volume_id: str, raw: bytes) -> bool:
    """Log each event compute refused in a 207 (multi-status) answer; returns False."""
    try:
        events = [e for e in json.loads(raw)["events"] if isinstance(e, dict)]
    except (ValueError, KeyError, TypeError):
        events = []
    refused = [e for e in events if e.get("code") != 200]
    if not refused:
        log.warning("volume %s: compute accepted only some volume-extended events: %s",
                    volume_id, _text(raw))
    for event in refused:
        log.warning("volume %s: compute refused the volume-extended event for instance %s: "
                    "%s %s", volume_id, event.get("server_uuid"), event.get("code"),
                    event.get("status"))
    return False


def _text(raw: bytes, limit: int = 300) -> str:
    return raw.decode(errors="replace").strip()[:limit]

