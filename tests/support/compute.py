"""A real `blockyard compute` process for tests, and a thin client of its Nova-style API."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx

from tests.support.server import Server


class ComputeServer(Server):
    """The compute agent: same life cycle as the volume service's `Server`."""

    command = "compute"

    @property
    def endpoint(self) -> str:
        return f"{self.url}/v2.1"

    def nova(self, project: str = "admin", user: str = "admin",
             version: str = "2.89") -> Nova:
        return Nova(self.endpoint, project=project, user=user, version=version)


def compute_config(volume_url: str, *, images: dict[str, dict[str, str]] | None = None,
                   detach_timeout: float = 5.0, detach_retries: int = 3) -> str:
    lines = [f'volume_url = "{volume_url}"', f"detach_timeout = {detach_timeout}",
             f"detach_retries = {detach_retries}", "", "[qemu]", 'accel = "tcg"', ""]
    for name, image in (images or {}).items():
        lines.append(f"[images.{name}]")
        lines += [f'{k} = "{v}"' for k, v in image.items()]
        lines.append("")
    return "\n".join(lines)


class Nova:
    """The compute API as `user:project`, with the waits the tests need."""

    def __init__(self, endpoint: str, *, project: str, user: str, version: str) -> None:
        self.http = httpx.Client(base_url=endpoint, timeout=120.0, headers={
            "X-Auth-Token": f"{user}:{project}",
            "OpenStack-API-Version": f"compute {version}",
        })

    def close(self) -> None:
        self.http.close()

    def request(self, method: str, path: str, body: Any = None) -> httpx.Response:
        return self.http.request(method, path, json=body)

    def adopt(self, name: str, qmp_socket: str | Path) -> str:
        r = self.request("POST", "/servers", {"server": {
            "name": name, "blockyard:qmp_socket": str(qmp_socket)}})
        assert r.status_code == 202, r.text
        return str(r.json()["server"]["id"])

    def create(self, name: str, image: str, flavor: str = "m1.tiny") -> dict[str, Any]:
        r = self.request("POST", "/servers", {"server": {
            "name": name, "imageRef": image, "flavorRef": flavor}})
        assert r.status_code == 202, r.text
        return self.show(r.json()["server"]["id"])

    def show(self, server_id: str) -> dict[str, Any]:
        r = self.request("GET", f"/servers/{server_id}")
        assert r.status_code == 200, r.text
        return dict(r.json()["server"])

    def attach(self, server_id: str, volume_id: str, **extra: Any) -> httpx.Response:
        return self.request("POST", f"/servers/{server_id}/os-volume_attachments",
                            {"volumeAttachment": {"volumeId": volume_id, **extra}})

    def attachments(self, server_id: str) -> list[dict[str, Any]]:
        r = self.request("GET", f"/servers/{server_id}/os-volume_attachments")
        assert r.status_code == 200, r.text
        return list(r.json()["volumeAttachments"])

    def detach(self, server_id: str, volume_id: str, *, wait: float = 60.0) -> None:
        """DELETE (202), then wait until the mapping is gone."""
        r = self.request("DELETE", f"/servers/{server_id}/os-volume_attachments/{volume_id}")
        assert r.status_code == 202, r.text
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if not any(a["volumeId"] == volume_id for a in self.attachments(server_id)):
                return
            time.sleep(0.02)
        raise AssertionError(f"volume {volume_id} still attached to {server_id}")

    def delete(self, server_id: str) -> None:
        r = self.request("DELETE", f"/servers/{server_id}")
        assert r.status_code in (204, 404), r.text
