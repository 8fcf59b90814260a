"""Volumes and snapshots the API tests make over HTTP and wait for until `available`."""

from __future__ import annotations

from typing import Any

from tests.support.server import Api


def available_volume(api: Api, **spec: Any) -> dict[str, Any]:
    """Create a volume (1 GB unless `spec` says otherwise) and return it once available."""
    r = api.post("/volumes", {"volume": {"size": 1, **spec}})
    assert r.status_code == 202, r.text
    return api.wait_volume(r.json()["volume"]["id"], "available")


def available_snapshot(api: Api, volume_id: str, **spec: Any) -> dict[str, Any]:
    """Snapshot `volume_id` and return the snapshot once available."""
    r = api.post("/snapshots", {"snapshot": {"volume_id": volume_id, **spec}})
    assert r.status_code == 202, r.text
    return api.wait_snapshot(r.json()["snapshot"]["id"], "available")
