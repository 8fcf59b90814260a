"""The volume service, as the agent sees it: its public Cinder v3 API, with the caller's token.

Nova talks to Cinder only through that API, and so does the agent: attachments (3.27+,
complete at 3.44, mode at 3.54), the volume itself, and the legacy begin/roll detaching
actions Nova still uses around a detach. An error reply becomes a `VolumeApiError` carrying
the status and Cinder's message, so the agent can report it to its own caller unchanged.

Whose token goes with a call (`Caller`):

- under Keystone (the agent has a `ServiceAuth`), a call on a user's behalf carries the
  user's token as ``X-Auth-Token`` and the agent's service token as ``X-Service-Token``, as
  Nova does with ``[service_user] send_service_user_token``; work nobody asked for (reconcile
  after a restart, releasing the volumes of a deleted server) carries the service token alone;
- under noauth, the caller's ``user:project`` token and ``X-Project-Id``, and the noauth
  admin of the volume's project for the agent's own work.
"""

from __future__ import annotations

import asyncio
import urllib.parse
from dataclasses import dataclass, field
from typing import Any

import httpx

from blockyard.errors import BlockyardError
from blockyard.identity import Identity
from blockyard.service_auth import ServiceAuth, ServiceTokenError

#: the microversion every call is made at: attachments API with complete and mode
MICROVERSION = "3.54"


class VolumeApiError(BlockyardError):
    """The volume service refused a call (or could not be reached: status 0)."""

    def __init__(self, status: int, message: str, call: str) -> None:
        super().__init__(message)
        self.status = status
        self.call = call


@dataclass(frozen=True)
class Caller:
    """On whose behalf a call is made: a user's (their token), or the agent's own."""

    project_id: str
    #: the user's token; None for the agent's own work (its service token, or noauth's admin)
    token: str | None = field(default=None, repr=False)

    @classmethod
    def of(cls, identity: Identity) -> Caller:
        """The user of the request being served (noauth: 'user:project' when no token came)."""
        token = identity.auth_token or f"{identity.user_id}:{identity.project_id}"
        return cls(project_id=identity.project_id, token=token)

    @classmethod
    def agent(cls, project_id: str) -> Caller:
        """The agent itself, working on a volume of `project_id`."""
        return cls(project_id=project_id)


@dataclass(frozen=True)
class VolumeView:
    id: str
    status: str
    size: int
    multiattach: bool
    #: "migrating", "success", ... while the volume service moves the volume; None otherwise
    migration_status: str | None = None
    #: the servers the volume is attached to (one entry per attachment)
    attached_to: tuple[str, ...] = ()


class VolumeApi:
    """A small async client; one per agent, shared by every request (one connection pool)."""

    def __init__(self, base_url: str, *, service: ServiceAuth | None = None,
                 timeout: float = 30.0) -> None:
        self._client = httpx.AsyncClient(base_url=base_url.rstrip("/") + "/v3",
                                         timeout=timeout)
        #: the agent's service user under Keystone; None under noauth
        self.service = service

    async def close(self) -> None:
        await self._client.aclose()

    async def auth_headers(self, caller: Caller) -> dict[str, str]:
        """The identity headers of a call for `caller` (see the module's docstring)."""
        if self.service is None:
            # the project travels in X-Project-Id, so any project name works (Cinder's URL
            # form /v3/{project_id}/... takes only Keystone-style hex ids)
            return {"X-Auth-Token": caller.token or f"admin:{caller.project_id}",
                    "X-Project-Id": caller.project_id}
        service = self.service
        try:
            if caller.token is None:
                return await asyncio.to_thread(service.own_headers)
            token = caller.token
            return await asyncio.to_thread(service.headers_for, token)
        except ServiceTokenError as exc:
            raise VolumeApiError(503, f"The agent has no service token: {exc}",
                                 "service token") from exc

    async def _call(self, caller: Caller, method: str, path: str, body: Any = None,
                    *, ok: tuple[int, ...] = (200, 202, 204)) -> Any:
        what = f"{method} {path}"
        for attempt in (1, 2):
            headers = _raw({**await self.auth_headers(caller),
                            "OpenStack-API-Version": f"volume {MICROVERSION}"}, what)
            try:
                r = await self._client.request(method, path, json=body, headers=headers)
            except httpx.HTTPError as exc:
                raise VolumeApiError(0, f"The volume service could not be reached: {exc}",
                                     what) from exc
            if r.status_code == 401 and self.service is not None and caller.token is None \
                    and attempt == 1:
                # the agent's own token was refused (revoked before it expired): fetch a new
                # one, once (not on a user's 401: their token is the likelier culprit, and a
                # stream of bad user tokens must not become a stream of logins to Keystone)
                self.service.invalidate()
                continue
            break
        if r.status_code not in ok:
            raise VolumeApiError(r.status_code, _message(r), what)
        return r.json() if r.content else None

    async def volume(self, caller: Caller, volume_id: str) -> VolumeView:
        v = (await self._call(caller, "GET", f"/volumes/{volume_id}"))["volume"]
        return VolumeView(id=v["id"], status=v["status"], size=int(v["size"]),
                          multiattach=bool(v.get("multiattach")),
                          migration_status=v.get("migration_status") or None,
                          attached_to=tuple(str(a.get("server_id"))
                                            for a in v.get("attachments") or ()))

    async def create_attachment(self, caller: Caller, volume_id: str, instance_id: str,
                                mode: str = "rw") -> str:
        body = {"attachment": {"volume_uuid": volume_id, "instance_uuid": instance_id,
                               "mode": mode}}
        return str((await self._call(caller, "POST", "/attachments", body))["attachment"]["id"])

    async def update_attachment(self, caller: Caller, attachment_id: str,
                                connector: dict[str, Any]) -> dict[str, Any]:
        """Send the host's connector; the reply carries the connection info."""
        body = {"attachment": {"connector": connector}}
        att = (await self._call(caller, "PUT", f"/attachments/{attachment_id}",
                                body))["attachment"]
        info = att.get("connection_info")
        if not isinstance(info, dict) or not info:
            raise VolumeApiError(502, f"attachment {attachment_id} came back without "
                                      f"connection info", "PUT /attachments")
        return _nested(info)

    async def attachment_connection_info(self, caller: Caller,
                                         attachment_id: str) -> dict[str, Any] | None:
        att = (await self._call(caller, "GET", f"/attachments/{attachment_id}"))["attachment"]
        info = att.get("connection_info")
        return _nested(info) if isinstance(info, dict) and info else None

    async def complete_attachment(self, caller: Caller, attachment_id: str) -> None:
        await self._call(caller, "POST", f"/attachments/{attachment_id}/action",
                         {"os-complete": None})

    async def delete_attachment(self, caller: Caller, attachment_id: str) -> None:
        """Delete; an attachment that is gone already counts as deleted."""
        await self._call(caller, "DELETE", f"/attachments/{attachment_id}",
                         ok=(200, 202, 204, 404))

    async def begin_detaching(self, caller: Caller, volume_id: str) -> None:
        await self._call(caller, "POST", f"/volumes/{volume_id}/action",
                         {"os-begin_detaching": None})

    async def roll_detaching(self, caller: Caller, volume_id: str) -> None:
        await self._call(caller, "POST", f"/volumes/{volume_id}/action",
                         {"os-roll_detaching": None})

    async def migrate_volume_completion(self, caller: Caller, volume_id: str,
                                        new_volume_id: str, *, error: bool) -> str:
        """End a swap (Nova's swap_volume): the id the guest's disk is known by from now
        on, the new volume's for a plain swap, `volume_id` when the volume service was
        migrating it (it swapped the two volumes' identities)."""
        body = {"os-migrate_volume_completion": {"new_volume": new_volume_id,
                                                 "error": error}}
        reply = await self._call(caller, "POST", f"/volumes/{volume_id}/action", body)
        return str(reply["save_volume_id"])

    # -- volumes and snapshots themselves, for Nova's proxies (os-volumes, os-snapshots) --------
    async def list_volumes(self, caller: Caller) -> list[dict[str, Any]]:
        """The caller's project's volumes, detailed (Cinder's first page)."""
        return list((await self._call(caller, "GET", "/volumes/detail"))["volumes"])

    async def get_volume(self, caller: Caller, volume_id: str) -> dict[str, Any]:
        return dict((await self._call(caller, "GET", f"/volumes/{_quoted(volume_id)}"))["volume"])

    async def create_volume(self, caller: Caller, volume: dict[str, Any]) -> dict[str, Any]:
        """POST /volumes with `volume` as the body's ``volume`` (Cinder's field names)."""
        return dict((await self._call(caller, "POST", "/volumes", {"volume": volume}))["volume"])

    async def delete_volume(self, caller: Caller, volume_id: str) -> None:
        await self._call(caller, "DELETE", f"/volumes/{_quoted(volume_id)}")

    async def list_snapshots(self, caller: Caller) -> list[dict[str, Any]]:
        return list((await self._call(caller, "GET", "/snapshots/detail"))["snapshots"])

    async def get_snapshot(self, caller: Caller, snapshot_id: str) -> dict[str, Any]:
        return dict((await self._call(caller, "GET",
                                      f"/snapshots/{_quoted(snapshot_id)}"))["snapshot"])

    async def create_snapshot(self, caller: Caller, snapshot: dict[str, Any]) -> dict[str, Any]:
        """POST /snapshots with `snapshot` as the body's ``snapshot`` (Cinder's field names)."""
        return dict((await self._call(caller, "POST", "/snapshots",
                                      {"snapshot": snapshot}))["snapshot"])

    async def delete_snapshot(self, caller: Caller, snapshot_id: str) -> None:
        await self._call(caller, "DELETE", f"/snapshots/{_quoted(snapshot_id)}")


    async def instance_attachments(self, caller: Caller, instance_id: str) -> list[str]:
        """The ids of the attachments made for `instance_id` (3.27's attachment list)."""
        found = await self._call(caller, "GET", f"/attachments?instance_id={_quoted(instance_id)}")
        return [str(a["id"]) for a in found["attachments"]]

    async def wait_available(self, caller: Caller, volume_id: str, *, timeout: float,
                             interval: float = 0.2) -> VolumeView:
        """Poll until the volume is `available`; VolumeApiError if it ends in `error` or is
        not available within `timeout` seconds (Nova's block_device_allocate_retries)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            volume = await self.volume(caller, volume_id)
            if volume.status == "available":
                return volume
            if volume.status.startswith("error"):
                raise VolumeApiError(500, f"Volume {volume_id} did not become available: "
                                          f"its status is {volume.status}.", "GET /volumes")
            if loop.time() > deadline:
                raise VolumeApiError(500, f"Volume {volume_id} is still {volume.status} "
                                          f"after {timeout:g} s.", "GET /volumes")
            await asyncio.sleep(interval)


def _raw(headers: dict[str, str], what: str) -> dict[bytes, bytes]:
    """The headers as the bytes they arrived as: a caller's token is passed on unchanged
    (HTTP headers are latin-1; httpx would take text as ASCII only and fail on a stray
    byte such as \x80, which the volume service may well accept)."""
    try:
        return {k.encode("latin-1"): v.encode("latin-1") for k, v in headers.items()}
    except UnicodeEncodeError:
        raise VolumeApiError(400, "The request's credentials cannot be passed on to the "
                                  "volume service.", what) from None


def _quoted(ident: str) -> str:
    """An id as one path segment: nothing in it may become a query or another path."""
    return urllib.parse.quote(ident, safe="")


def _nested(flat: dict[str, Any]) -> dict[str, Any]:
    """The attachments API folds the protocol into the data ({"driver_volume_type": ..,
    "target_iqn": .., "attachment_id": ..}); connectors take the nested form, as Nova
    makes it (nova.volume.cinder._translate_attachment_ref)."""
    if "data" in flat and isinstance(flat["data"], dict):
        return flat
    data = {k: v for k, v in flat.items() if k not in ("driver_volume_type", "attachment_id")}
    return {"driver_volume_type": flat.get("driver_volume_type"), "data": data}


def _message(r: httpx.Response) -> str:
    """Cinder's fault body is {"badRequest": {"message": ..., "code": ...}}; take the message."""
    try:
        body = r.json()
        fault = next(iter(body.values()))
        return str(fault["message"])
    except Exception:  # not Cinder's shape: say what came back
        return f"volume service answered {r.status_code}: {r.text[:200]}"

