"""Extending attached volumes: the volume-extended events to compute, and the refusals.

A real server extends in-use volumes at microversion 3.42 and tells the compute API named by
``[compute] url`` — here a small stdlib HTTP server standing in for Nova — with one POST to
``/os-server-external-events`` holding a ``volume-extended`` event per attached instance. The
event is best effort: compute down, slow or refusing never fails the extend. Backends whose
target cannot show an attached consumer a bigger disk (nbd, iscsi) refuse up front.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from blockyard import config as configuration
from blockyard.errors import ConfigError
from blockyard.service import compute_events
from tests.support.consistency import assert_consistent, read_db
from tests.support.resources import available_volume
from tests.support.server import Api, Server, exported_backends_config, free_port
from tests.support.waits import poll

INSTANCE_A = "11111111-2222-3333-4444-555555555555"
INSTANCE_B = "66666666-7777-8888-9999-000000000000"
#: the instance of the volume whose event marks "everything sent before has arrived"
BARRIER = "99999999-8888-7777-6666-555555555555"
CONNECTOR = {"initiator": "iqn.1993-08.org.debian:01:abc", "host": "h1", "ip": "127.0.0.1",
             "platform": "x86_64", "os_type": "linux", "multipath": False}


# ---------------------------------------------------------------------------- a fake compute


@dataclass
class Received:
    path: str
    #: by lower-case name (header names are case-insensitive)
    headers: dict[str, str]
    body: Any


@dataclass
class FakeCompute:
    """An HTTP server recording every POST; `status`, `answer` and `delay` say how it replies."""

    status: int = 200
    answer: Any = None
    delay: float = 0.0
    received: list[Received] = field(default_factory=list)
    _arrived: threading.Condition = field(default_factory=threading.Condition)
    _httpd: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        assert self._httpd is not None
        return f"http://127.0.0.1:{self._httpd.server_address[1]}/v2.1"

    def start(self) -> FakeCompute:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with fake._arrived:
                    fake.received.append(Received(
                        self.path, {k.lower(): v for k, v in self.headers.items()},
                        json.loads(raw)))
                    fake._arrived.notify_all()
                time.sleep(fake.delay)
                out = json.dumps(fake.answer if fake.answer is not None
                                 else json.loads(raw)).encode()
                try:
                    self.send_response(fake.status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(out)))
                    self.end_headers()
                    self.wfile.write(out)
                except OSError:
                    pass  # the client gave up (timeout)

            def log_message(self, format: str, *args: Any) -> None:
                """Quiet."""

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        threading.Thread(target=self._httpd.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()

    def reset(self, *, status: int = 200, answer: Any = None, delay: float = 0.0) -> None:
        with self._arrived:
            self.received.clear()
        self.status, self.answer, self.delay = status, answer, delay

    def wait_for_instance(self, instance: str, timeout: float = 10.0,
                          count: int = 1) -> list[Received]:
        """Wait until `count` POSTs with an event for `instance` arrived; returns every POST
        so far."""

        def came() -> bool:
            return sum(any(e.get("server_uuid") == instance for e in r.body.get("events", []))
                       for r in self.received) >= count

        with self._arrived:
            assert self._arrived.wait_for(came, timeout), \
                f"fewer than {count} event(s) for {instance} among {len(self.received)} POST(s)"
            return list(self.received)

    def sent_before_barrier(self, api: Api, volume_type: str | None = None) -> list[Received]:
        """The POSTs that arrived before a known last one, instead of a sleep waiting for
        "nothing more came": a volume attached to the BARRIER instance is extended and its
        event awaited. Whatever an earlier request made the service send was on its way
        before this extend was even asked for, so it arrived first."""
        vol = available_volume(api, volume_type=volume_type)
        att = _attach(api, vol["id"], BARRIER, dict(CONNECTOR, host="barrier"))
        assert _extend(api, vol["id"], 2)["size"] == 2
        received = self.wait_for_instance(BARRIER)
        assert api.delete(f"/attachments/{att}").status_code == 200
        assert api.delete(f"/volumes/{vol['id']}").status_code == 202  # quota: 10 volumes
        api.wait_volume(vol["id"], "deleted")
        [last] = [i for i, r in enumerate(received)
                  if any(e.get("server_uuid") == BARRIER for e in r.body.get("events", []))]
        return received[:last]


@pytest.fixture(scope="module")
def compute() -> Iterator[FakeCompute]:
    fake = FakeCompute().start()
    yield fake
    fake.stop()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, compute: FakeCompute) -> Iterator[Server]:
    """The default file backend (local target), telling the fake compute."""
    srv = Server(tmp_path_factory.mktemp("extend") / "state", config=f"""
[compute]
url = "{compute.url}/"
timeout = 1
""").start()
    r = srv.client().post("/types", {"volume_type": {
        "name": "multi", "extra_specs": {"multiattach": "<is> True"}}})
    assert r.status_code == 200, r.text
    yield srv
    srv.close()


@pytest.fixture
def fake(compute: FakeCompute) -> FakeCompute:
    compute.reset()
    return compute


# ---------------------------------------------------------------------------- helpers


def _attach(api: Api, volume_id: str, instance: str | None,
            connector: dict[str, Any]) -> str:
    body: dict[str, Any] = {"volume_uuid": volume_id, "connector": connector}
    if instance is not None:
        body["instance_uuid"] = instance
    r = api.post("/attachments", {"attachment": body})
    assert r.status_code == 200, r.text
    att_id = str(r.json()["attachment"]["id"])
    assert api.post(f"/attachments/{att_id}/action", {"os-complete": None}).status_code == 204
    return att_id


def _extend(api: Api, volume_id: str, new_size: int) -> dict[str, Any]:
    r = api.post(f"/volumes/{volume_id}/action", {"os-extend": {"new_size": new_size}})
    assert r.status_code == 202, r.text
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        vol: dict[str, Any] = api.get(f"/volumes/{volume_id}").json()["volume"]
        if vol["status"] != "extending":
            return vol
        time.sleep(0.02)
    raise AssertionError(f"volume {volume_id} stayed extending")


def _gigabytes_in_use(api: Api) -> int:
    r = api.get("/os-quota-sets/admin", params={"usage": "True"})
    assert r.status_code == 200, r.text
    return int(r.json()["quota_set"]["gigabytes"]["in_use"])


def _wait_log(srv: Server, *needles: str, timeout: float = 10.0) -> str:
    return poll(srv.log, lambda log: all(n in log for n in needles), timeout=timeout,
                what=f"{needles} all in the server log")


# ---------------------------------------------------------------------------- the events


def test_extend_attached_volume_sends_one_event_per_instance(server: Server,
                                                             fake: FakeCompute) -> None:
    api = server.client()
    vol = available_volume(api, volume_type="multi")
    ids = [_attach(api, vol["id"], INSTANCE_A, dict(CONNECTOR, host="h1")),
           _attach(api, vol["id"], INSTANCE_B, dict(CONNECTOR, host="h2")),
           # an attachment without an instance (a host's) gets no event
           _attach(api, vol["id"], None, dict(CONNECTOR, host="h3"))]
    assert api.get(f"/volumes/{vol['id']}").json()["volume"]["status"] == "in-use"
    used = _gigabytes_in_use(api)

    shown = _extend(api, vol["id"], 3)
    assert (shown["status"], shown["size"]) == ("in-use", 3)
    assert _gigabytes_in_use(api) == used + 2

    [post] = fake.sent_before_barrier(api)
    assert post.path == "/v2.1/os-server-external-events"
    assert post.headers["x-auth-token"] == "admin:admin"
    assert post.headers["x-openstack-nova-api-version"] == "2.51"
    assert post.headers["content-type"] == "application/json"
    assert set(post.body) == {"events"}
    assert sorted(post.body["events"], key=lambda e: e["server_uuid"]) == [
        {"name": "volume-extended", "server_uuid": INSTANCE_A, "tag": vol["id"]},
        {"name": "volume-extended", "server_uuid": INSTANCE_B, "tag": vol["id"]},
    ]
    for att_id in ids:
        assert api.delete(f"/attachments/{att_id}").status_code == 200
    assert_consistent(server.state_dir, api, log=server.log())


def test_extend_of_a_detached_volume_sends_nothing(server: Server, fake: FakeCompute) -> None:
    api = server.client()
    vol = available_volume(api)
    shown = _extend(api, vol["id"], 2)
    assert (shown["status"], shown["size"]) == ("available", 2)
    assert fake.sent_before_barrier(api) == []


def test_extend_attached_before_3_42_is_refused_and_sends_nothing(server: Server,
                                                                  fake: FakeCompute) -> None:
    api = server.client()
    vol = available_volume(api)
    att = _attach(api, vol["id"], INSTANCE_A, CONNECTOR)
    old = server.client(version="3.41")
    r = old.post(f"/volumes/{vol['id']}/action", {"os-extend": {"new_size": 2}})
    assert r.status_code == 400, r.text
    shown = api.get(f"/volumes/{vol['id']}").json()["volume"]
    assert (shown["status"], shown["size"]) == ("in-use", 1)
    assert fake.sent_before_barrier(api) == []
    assert api.delete(f"/attachments/{att}").status_code == 200


@pytest.mark.parametrize(
    ("status", "answer", "delay", "logged"),
    [
        (500, {"computeFault": {"code": 500, "message": "boom"}}, 0.0, "answered 500"),
        (404, {"itemNotFound": {"code": 404, "message": "No instances found"}}, 0.0,
         "answered 404"),
        (207, {"events": [{"name": "volume-extended", "server_uuid": INSTANCE_A,
                           "tag": "x", "code": 422, "status": "failed"}]}, 0.0,
         "refused the volume-extended event for instance " + INSTANCE_A),
        (200, None, 3.0, "timed out"),  # longer than [compute] timeout = 1
    ],
    ids=["500", "404", "207", "timeout"],
)
def test_compute_failures_never_fail_the_extend(server: Server, fake: FakeCompute,
                                                status: int, answer: Any, delay: float,
                                                logged: str) -> None:
    fake.reset(status=status, answer=answer, delay=delay)
    api = server.client()
    vol = available_volume(api)
    att = _attach(api, vol["id"], INSTANCE_A, CONNECTOR)
    used = _gigabytes_in_use(api)
    shown = _extend(api, vol["id"], 2)
    assert (shown["status"], shown["size"]) == ("in-use", 2)
    assert _gigabytes_in_use(api) == used + 1
    assert len(fake.sent_before_barrier(api)) == 1
    _wait_log(server, f"volume {vol['id']}", INSTANCE_A, logged)
    # the volume works on: a second extend, and a detach
    assert _extend(api, vol["id"], 3)["size"] == 3
    fake.wait_for_instance(INSTANCE_A, count=2)  # its event too: none may reach the next
    # test's fake
    assert api.delete(f"/attachments/{att}").status_code == 200
    assert_consistent(server.state_dir, api, log=server.log())


def test_compute_down_extend_still_completes(make_server: Callable[..., Server]) -> None:
    nowhere = free_port()  # nothing listens there
    srv = make_server(config=f'[compute]\nurl = "http://127.0.0.1:{nowhere}/v2.1"\n').start()
    api = srv.client()
    vol = available_volume(api)
    att = _attach(api, vol["id"], INSTANCE_A, CONNECTOR)
    used = _gigabytes_in_use(api)
    shown = _extend(api, vol["id"], 4)
    assert (shown["status"], shown["size"]) == ("in-use", 4)
    assert _gigabytes_in_use(api) == used + 3
    _wait_log(srv, f"volume {vol['id']}: could not send the volume-extended event",
              INSTANCE_A, "Connection refused")
    assert api.delete(f"/attachments/{att}").status_code == 200
    assert_consistent(srv.state_dir, api, log=srv.log())


def test_no_compute_configured_extend_attached_works(make_server: Callable[..., Server]) -> None:
    srv = make_server().start()
    api = srv.client()
    vol = available_volume(api)
    att = _attach(api, vol["id"], INSTANCE_A, CONNECTOR)
    shown = _extend(api, vol["id"], 2)
    assert (shown["status"], shown["size"]) == ("in-use", 2)
    assert api.delete(f"/attachments/{att}").status_code == 200
    assert "Traceback" not in srv.log()


# ---------------------------------------------------------------------------- refusals



@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory, compute: FakeCompute) -> Iterator[Server]:
    """File backends exported over tgt (iscsi) and qemu-nbd (nbd), with a compute url; and
    a local one, which extends attached volumes (for `sent_before_barrier`)."""
    srv = Server(tmp_path_factory.mktemp("exported") / "state",
                 config=exported_backends_config(
                     local=True, extra=f'[compute]\nurl = "{compute.url}"\n')).start()
    api = srv.client()
    for name in ("iscsi", "nbd", "local"):
        r = api.post("/types", {"volume_type": {
            "name": name, "extra_specs": {"volume_backend_name": name}}})
        assert r.status_code == 200, r.text
    yield srv
    srv.close()


@pytest.mark.parametrize(("protocol", "why"), [
    ("nbd", "QEMU cannot grow an NBD disk"),
    ("iscsi", "tgt reports a LUN's size only as of when the LUN was created"),
])
def test_attached_volume_over_nbd_or_iscsi_is_not_extended(exported: Server, fake: FakeCompute,
                                                          protocol: str, why: str) -> None:
    api = exported.client()
    vol = available_volume(api, volume_type=protocol)
    connector = dict(CONNECTOR, host=f"host-{uuid.uuid4().hex[:8]}",
                     initiator=f"iqn.2004-10.org.blockyard:{uuid.uuid4().hex[:8]}")
    r = api.post("/attachments", {"attachment": {
        "volume_uuid": vol["id"], "instance_uuid": INSTANCE_A, "connector": connector}})
    assert r.status_code == 200, r.text
    att = r.json()["attachment"]
    assert att["connection_info"]["driver_volume_type"] == protocol  # a real export
    assert api.post(f"/attachments/{att['id']}/action", {"os-complete": None}).status_code == 204
    before = read_db(exported.state_dir)

    r = api.post(f"/volumes/{vol['id']}/action", {"os-extend": {"new_size": 2}})
    assert r.status_code == 400, r.text
    assert r.json() == {"badRequest": {"code": 400, "message": (
        f"Invalid volume: volumes exported over {protocol} cannot be extended while attached "
        f"({why}); detach it first.")}}

    shown = api.get(f"/volumes/{vol['id']}").json()["volume"]
    assert (shown["status"], shown["size"]) == ("in-use", 1)
    after = read_db(exported.state_dir)
    assert after.tasks == []
    assert after.usages == before.usages
    assert after.volumes[vol["id"]] == before.volumes[vol["id"]]
    assert fake.sent_before_barrier(api, volume_type="local") == []

    # detached, it extends
    assert api.delete(f"/attachments/{att['id']}").status_code == 200
    shown = _extend(api, vol["id"], 2)
    assert (shown["status"], shown["size"]) == ("available", 2)
    assert_consistent(exported.state_dir, api, log=exported.log())


# ---------------------------------------------------------------------------- units


def test_compute_config_defaults_and_values() -> None:
    cfg = configuration.build({})
    assert cfg.compute == configuration.ComputeEndpoint(url=None, timeout=10.0)
    cfg = configuration.build({"compute": {"url": "https://nova.example:8774/v2.1",
                                           "timeout": 2.5}})
    assert (cfg.compute.url, cfg.compute.timeout) == ("https://nova.example:8774/v2.1", 2.5)
    assert configuration.build({"compute": {"timeout": 3}}).compute.timeout == 3.0


@pytest.mark.parametrize(
    ("table", "key"),
    [
        ("nope", "compute"),
        ({"url": 8774}, "compute.url"),
        ({"url": ""}, "compute.url"),
        ({"url": "127.0.0.1:8774/v2.1"}, "compute.url"),
        ({"url": "ftp://127.0.0.1/v2.1"}, "compute.url"),
        ({"url": "http:///v2.1"}, "compute.url"),
        ({"url": "http://127.0.0.1:99999/v2.1"}, "compute.url"),
        ({"url": "http://127.0.0.1:8774/v2.1?x=1"}, "compute.url"),
        ({"timeout": 0}, "compute.timeout"),
        ({"timeout": -1.5}, "compute.timeout"),
        ({"timeout": "10"}, "compute.timeout"),
        ({"timeout": True}, "compute.timeout"),
        ({"timeout": float("inf")}, "compute.timeout"),
        ({"timeout": float("nan")}, "compute.timeout"),
        ({"endpoint": "http://x"}, "compute.endpoint"),
    ],
)
def test_bad_compute_config_names_the_key(table: Any, key: str) -> None:
    with pytest.raises(ConfigError) as err:
        configuration.build({"compute": table})
    assert err.value.key == key
    assert "\n" not in str(err.value)
    assert str(err.value).startswith(f"{key}: ")


def test_bad_compute_url_stops_the_start(make_server: Callable[..., Server]) -> None:
    srv = make_server(config='[compute]\nurl = "localhost:8774"\n')
    with pytest.raises(RuntimeError, match=r"compute\.url"):
        srv.start(timeout=15)


def test_start_up_says_where_events_go(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger=compute_events.__name__):
        compute_events.announce(configuration.ComputeEndpoint())
        compute_events.announce(configuration.ComputeEndpoint(url="http://c:8774/v2.1/"))
    assert [r.getMessage() for r in caplog.records] == [
        "no [compute] url: attached volumes that are extended are not announced to a compute "
        "service (guests see the new size only after re-attaching)",
        "volume-extended events go to http://c:8774/v2.1/os-server-external-events",
    ]


def test_volume_extended_without_instances_or_url_sends_nothing() -> None:
    assert compute_events.volume_extended(configuration.ComputeEndpoint(url="http://127.0.0.1:1"),
                                          "v", []) is True
    assert compute_events.volume_extended(configuration.ComputeEndpoint(), "v", ["i"]) is False


def test_events_go_to_compute_directly_whatever_proxy_the_environment_names(
        fake: FakeCompute, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.setenv(name, f"http://127.0.0.1:{free_port()}")  # nothing listens there
    monkeypatch.delenv("no_proxy", raising=False)
    monkeypatch.delenv("NO_PROXY", raising=False)
    endpoint = configuration.ComputeEndpoint(url=fake.url, timeout=5.0)
    assert compute_events.volume_extended(endpoint, "vol-1", [INSTANCE_A]) is True
    [got] = fake.wait_for_instance(INSTANCE_A)
    assert got.path == "/v2.1" + compute_events.EVENTS_PATH
    assert got.headers["x-openstack-nova-api-version"] == compute_events.MICROVERSION
    assert got.body == compute_events.body("vol-1", [INSTANCE_A])
