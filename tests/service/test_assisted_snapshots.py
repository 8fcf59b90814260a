"""The volume service's half of assisted snapshots (`service.assisted_snapshots`): what it
asks compute and what it does with each answer, against a small HTTP stand-in for compute
that answers as scripted (the real agent is in tests/test_compute_snapshots.py)."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from blockyard.config import AuthConfig, ComputeEndpoint
from blockyard.service.assisted_snapshots import PauseFailed, guests_paused

VOLUME, SNAPSHOT = "vol-1", "snap-1"


class Compute:
    """Answers each create_info type with a scripted (status, body); records the requests."""

    def __init__(self) -> None:
        self.answers: dict[str, tuple[int, dict[str, Any]]] = {}
        self.asked: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        #: seconds to wait before answering, per type
        self.delays: dict[str, float] = {}


@pytest.fixture
def compute() -> Iterator[tuple[Compute, ComputeEndpoint]]:
    stub = Compute()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            stub.asked.append(body)
            stub.headers.append(dict(self.headers))
            kind = body["snapshot"]["create_info"]["type"]
            time.sleep(stub.delays.get(kind, 0.0))
            status, answer = stub.answers[kind]
            raw = json.dumps(answer).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(raw)))
            self.end_headers()
            self.wfile.write(raw)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield stub, ComputeEndpoint(url=f"http://127.0.0.1:{server.server_port}/v2.1",
                                    timeout=1.0)
    finally:
        server.shutdown()
        server.server_close()


def _types(stub: Compute) -> list[str]:
    return [a["snapshot"]["create_info"]["type"] for a in stub.asked]


PAUSED = (200, {"snapshot": {"id": SNAPSHOT, "volumeId": VOLUME}})
RESUMED = (200, {"snapshot": {"id": SNAPSHOT, "volumeId": VOLUME, "blockyard:paused_ms": 7.5}})


def test_the_body_runs_between_pause_and_resume(compute: tuple[Compute, ComputeEndpoint],
                                                caplog: pytest.LogCaptureFixture) -> None:
    stub, endpoint = compute
    stub.answers = {"blockyard-pause": PAUSED, "blockyard-resume": RESUMED}
    with caplog.at_level(logging.INFO), \
            guests_paused(endpoint, AuthConfig(), VOLUME, SNAPSHOT, ["inst-1"]):
        assert _types(stub) == ["blockyard-pause"]
    assert _types(stub) == ["blockyard-pause", "blockyard-resume"]
    pause = stub.asked[0]["snapshot"]
    assert pause["volume_id"] == VOLUME and pause["create_info"]["snapshot_id"] == SNAPSHOT
    assert pause["create_info"]["max_pause_ms"] > 0
    assert stub.headers[0]["X-Auth-Token"] == "admin:admin"  # noauth: the admin
    assert "paused 7.5 ms" in caplog.text


@pytest.mark.parametrize("status", [404, 400])
def test_unknown_to_compute_is_a_copy_as_before(compute: tuple[Compute, ComputeEndpoint],
                                                caplog: pytest.LogCaptureFixture,
                                                status: int) -> None:
    """404: no guest there has the volume; 400: a Nova, whose one type is qcow2."""
    stub, endpoint = compute
    stub.answers = {"blockyard-pause": (status, {"x": {"code": status, "message": "x"}})}
    ran = False
    with guests_paused(endpoint, AuthConfig(), VOLUME, SNAPSHOT, ["inst-1"]):
        ran = True
    assert ran and _types(stub) == ["blockyard-pause"]
    assert "not point-in-time" in caplog.text


def test_no_compute_url_or_no_instance_asks_nothing(caplog: pytest.LogCaptureFixture) -> None:
    with guests_paused(ComputeEndpoint(url=None), AuthConfig(), VOLUME, SNAPSHOT, ["i"]):
        pass
    assert "no [compute] url" in caplog.text
    with guests_paused(ComputeEndpoint(url="http://127.0.0.1:9/v2.1"), AuthConfig(), VOLUME,
                       SNAPSHOT, []):
        pass  # not attached: nothing to pause, nobody asked (port 9 would refuse)


@pytest.mark.parametrize("status", [409, 500])
def test_a_refused_pause_fails_and_still_resumes(compute: tuple[Compute, ComputeEndpoint],
                                                 status: int) -> None:
    stub, endpoint = compute
    stub.answers = {"blockyard-pause": (status, {"x": {"code": status, "message": "no"}}),
                    "blockyard-resume": (404, {})}
    with pytest.raises(PauseFailed, match=str(status)), \
            guests_paused(endpoint, AuthConfig(), VOLUME, SNAPSHOT, ["inst-1"]):
        pytest.fail("the snapshot was taken without a pause")
    assert _types(stub) == ["blockyard-pause", "blockyard-resume"]


def test_a_failed_snapshot_resumes_and_keeps_its_error(
        compute: tuple[Compute, ComputeEndpoint]) -> None:
    stub, endpoint = compute
    stub.answers = {"blockyard-pause": PAUSED, "blockyard-resume": RESUMED}
    with pytest.raises(OSError, match="disk full"), \
            guests_paused(endpoint, AuthConfig(), VOLUME, SNAPSHOT, ["inst-1"]):
        raise OSError("disk full")
    assert _types(stub) == ["blockyard-pause", "blockyard-resume"]


def test_a_late_resume_fails_the_snapshot(compute: tuple[Compute, ComputeEndpoint]) -> None:
    """The watchdog was first: the guest wrote again before the snapshot was done."""
    stub, endpoint = compute
    stub.answers = {"blockyard-pause": PAUSED, "blockyard-resume": (409, {
        "conflictingRequest": {"code": 409, "message": "not point-in-time"}})}
    with pytest.raises(PauseFailed, match="409"), \
            guests_paused(endpoint, AuthConfig(), VOLUME, SNAPSHOT, ["inst-1"]):
        pass


def test_compute_not_answering_fails() -> None:
    with pytest.raises(PauseFailed, match="did not answer"), \
            guests_paused(ComputeEndpoint(url="http://127.0.0.1:9/v2.1", timeout=2.0),
                          AuthConfig(), VOLUME, SNAPSHOT, ["inst-1"]):
        pytest.fail("the snapshot was taken without a pause")


def test_a_pause_that_times_out_is_followed_by_a_resume(
        compute: tuple[Compute, ComputeEndpoint]) -> None:
    """No answer in time: the guests may be paused all the same; do not leave them so."""
    stub, endpoint = compute
    stub.answers = {"blockyard-pause": PAUSED, "blockyard-resume": RESUMED}
    stub.delays = {"blockyard-pause": 1.5}
    with pytest.raises(PauseFailed, match="did not answer"), \
            guests_paused(endpoint, AuthConfig(), VOLUME, SNAPSHOT, ["inst-1"]):
        pytest.fail("the snapshot was taken without a pause")
    assert _types(stub) == ["blockyard-pause", "blockyard-resume"]
