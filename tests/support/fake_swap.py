"""A fake compute agent for the migration of attached volumes: it answers the volume service's
swap request (``PUT /servers/{instance}/os-volume_attachments/{volume}``) with 202 and then
does, against the real volume service, what the compute agent's swap does (the contract in
`blockyard.service.migration`): attach the temporary volume (create, connector, complete),
"mirror" the disk (here: copy the old export's file into the new one), complete the migration,
and delete the old attachment. Every call is retried while the volume service is down, as the
real agent keeps trying, so a crash test can kill the service anywhere in between.

`mode` picks what it does with a swap: ``swap`` (all of it), ``fail`` (gives up after
attaching: deletes its attachment and completes with ``error``), ``refuse`` (answers 400),
``silent`` (answers 202 and does nothing).
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any

import httpx

from tests.support.recording import RecordingServer

#: the connector the fake agent's host attaches with
CONNECTOR = {"host": "fake-compute", "initiator": "iqn.1993-08.org.debian:01:fake",
             "mountpoint": "/dev/vdb"}


@dataclass
class Swap:
    """One swap the fake agent was asked for, and how it went."""

    instance: str
    volume: str
    new_volume: str
    body: dict[str, Any]
    new_attachment: str | None = None
    old_attachment: str | None = None
    completion: dict[str, Any] | None = None
    error: str | None = None
    #: the new attachment's connection info, with its secrets (as the mirror got it)
    new_info: dict[str, Any] | None = None
    done: threading.Event = field(default_factory=threading.Event)


#: the fake's mirror: (the swap, the old attachment as shown, the new connection info with
#: its secrets) → copies the guest's disk onto the new volume
Mirror = Callable[[Swap, dict[str, Any], dict[str, Any]], None]


def mirror_local_files(swap: Swap, old: dict[str, Any], new_info: dict[str, Any]) -> None:
    """The mirror between two local exports: their files."""
    copy_data(old["connection_info"]["device_path"], new_info["device_path"])


@dataclass
class FakeSwapCompute(RecordingServer):
    volume_endpoint: str
    mode: str = "swap"
    mirror: Mirror = mirror_local_files
    #: how long each call to the volume service is retried while it does not answer
    patience: float = 120.0
    swaps: list[Swap] = field(default_factory=list)

    def start(self) -> FakeSwapCompute:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_PUT(self) -> None:  # noqa: N802 - http.server's name
                seen = fake.record(self)
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"] or 0)))
                parts = self.path.split("/")
                if fake.mode == "refuse":
                    seen.status = 400
                    self._answer(400, {"badRequest": {"code": 400, "message": "no swapping"}})
                    return
                swap = Swap(instance=parts[-3], volume=parts[-1],
                            new_volume=body["volumeAttachment"]["volumeId"], body=body)
                fake.swaps.append(swap)
                seen.status = 202
                self._answer(202, None)
                if fake.mode != "silent":
                    threading.Thread(target=fake._swap, args=(swap,), daemon=True).start()

            def _answer(self, status: int, payload: Any) -> None:
                raw = json.dumps(payload).encode() if payload is not None else b""
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

            def log_message(self, *args: Any) -> None:
                pass

        self.serve(Handler)
        return self

    def asked(self, timeout: float = 120.0) -> Swap:
        """The first swap compute was asked for."""
        deadline = time.monotonic() + timeout
        while not self.swaps and time.monotonic() < deadline:
            time.sleep(0.05)
        assert self.swaps, "compute was never asked to swap"
        return self.swaps[0]

    def wait(self, timeout: float = 120.0) -> Swap:
        """The first swap, once the fake agent finished with it."""
        swap = self.asked(timeout)
        assert swap.done.wait(timeout), "the swap hangs"
        return swap

    # what the agent does, as the volume service's caller (the noauth admin)

    def _call(self, http: httpx.Client, method: str, path: str,
              body: Any = None) -> httpx.Response:
        deadline = time.monotonic() + self.patience
        while True:
            try:
                r = http.request(method, path, json=body)
                if r.status_code < 500:
                    return r
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"the volume service did not answer {method} {path}")
            time.sleep(0.2)

    def _swap(self, swap: Swap) -> None:
        http = httpx.Client(base_url=self.volume_endpoint, timeout=30.0, headers={
            "X-Auth-Token": "admin:admin", "OpenStack-API-Version": "volume 3.44"})
        try:
            self._do_swap(http, swap)
        except Exception as exc:  # noqa: BLE001 - the test reads it
            swap.error = repr(exc)
        finally:
            http.close()
            swap.done.set()

    def _do_swap(self, http: httpx.Client, swap: Swap) -> None:
        r = self._call(http, "GET", f"/attachments?volume_id={swap.volume}")
        assert r.status_code == 200, r.text
        old = [a["id"] for a in r.json()["attachments"] if a["instance"] == swap.instance]
        assert len(old) == 1, r.text
        swap.old_attachment = old[0]
        old_info = self._call(http, "GET", f"/attachments/{old[0]}").json()["attachment"]
        r = self._call(http, "POST", "/attachments", {"attachment": {
            "volume_uuid": swap.new_volume, "instance_uuid": swap.instance}})
        assert r.status_code == 200, r.text
        new = swap.new_attachment = r.json()["attachment"]["id"]
        r = self._call(http, "PUT", f"/attachments/{new}",
                       {"attachment": {"connector": CONNECTOR}})
        assert r.status_code == 200, r.text
        new_info = swap.new_info = r.json()["attachment"]["connection_info"]
        r = self._call(http, "POST", f"/attachments/{new}/action", {"os-complete": None})
        assert r.status_code == 204, r.text
        if self.mode == "fail":
            assert self._call(http, "DELETE", f"/attachments/{new}").status_code == 200
            self._complete(http, swap, error=True)
            return
        self.mirror(swap, old_info, new_info)  # the guest's disk, onto the new volume
        self._complete(http, swap, error=False)
        r = self._call(http, "DELETE", f"/attachments/{old[0]}")
        assert r.status_code == 200, r.text

    def _complete(self, http: httpx.Client, swap: Swap, *, error: bool) -> None:
        r = self._call(http, "POST", f"/volumes/{swap.volume}/action", {
            "os-migrate_volume_completion": {"new_volume": swap.new_volume, "error": error}})
        assert r.status_code == 200, r.text
        swap.completion = r.json()


def copy_data(src: str, dst: str) -> None:
    """Copy the data extents of file `src` into file `dst` at the same offsets (holes stay)."""
    with open(src, "rb") as f, open(dst, "r+b") as g:
        for offset, length in data_extents(src):
            f.seek(offset)
            g.seek(offset)
            g.write(f.read(length))


def data_extents(path: str | os.PathLike[str]) -> list[tuple[int, int]]:
    """(offset, length) of each run of data in the sparse file `path`."""
    out = []
    with open(path, "rb") as f:
        end, pos = os.fstat(f.fileno()).st_size, 0
        while pos < end:
            try:
                start = os.lseek(f.fileno(), pos, os.SEEK_DATA)
            except OSError:  # only a hole up to the end
                break
            pos = os.lseek(f.fileno(), start, os.SEEK_HOLE)
            out.append((start, pos - start))
    return out
