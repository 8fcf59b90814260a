"""Hostile input against every route of the volume API and of the compute agent.

The property (`test_route_survives_hostile_requests`): whatever a client sends, the answer is
below 500; an error answer is a Cinder/Nova fault body (``{"<faultName>": {"code": N,
"message": "..."}}``); the keep-alive connection it came on stays usable; and a refused
request changes nothing (listings of volumes, snapshots, types, QoS specs, quotas and
servers are the same before and after).

One parametrized case per (path, method) of ``blockyard.api.app.ROUTES`` and
``blockyard.compute.api.ROUTES``, so routes added later are covered without touching this
file. Each case runs `EXAMPLES_PER_ROUTE` Hypothesis examples (15 in CI; more with
BLOCKYARD_HOSTILE_EXAMPLES=N): with the 133 cases of this writing (118 volume API, 15 compute
agent) that is 1,995 hostile requests, each followed by a keep-alive probe and, when refused,
a snapshot of the listings. Every example combines a
body (random JSON, bodies shaped like the API's with wrong types and hostile values, deep
nesting, invalid UTF-8, lone surrogates, NUL, huge numbers, an oversized body), a query
string (huge, negative, non-ASCII digits, filter literals), path parameters (existing ids,
unknown ids, hostile text) and headers (microversions, content types, tokens).

`test_route_refuses_every_known_hostile_input` then sends every raw body, hostile query
string and hostile header below to every route, exhaustively (about 2,500 requests, 25 s),
so the known classes of hostile input never depend on sampling luck.

The named regressions at the end pin the 500s found in issue 10 and the requests Cinder's
JSON schemas refuse that used to be accepted.
"""

from __future__ import annotations

import http.client
import json
import os
import time
import uuid
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote, urlencode

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.routing import Route

from blockyard.api.app import ROUTES as VOLUME_ROUTES
from blockyard.compute.api import ROUTES as COMPUTE_ROUTES
from blockyard.rest.guard import MAX_BODY_BYTES
from tests.support.compute import ComputeServer, compute_config
from tests.support.server import Server, free_port

#: examples per route in CI; set BLOCKYARD_HOSTILE_EXAMPLES for a deeper run by hand
EXAMPLES_PER_ROUTE = int(os.environ.get("BLOCKYARD_HOSTILE_EXAMPLES", "15"))
#: a connection unused this long is replaced before use (uvicorn closes it after 5 s idle)
IDLE_SECONDS = 3.0

# ---------------------------------------------------------------------------- the servers


class Stack:
    """A volume service and a compute agent, seeded with one resource of each kind."""

    def __init__(self, volumes: Server, agent: ComputeServer) -> None:
        self.volumes, self.agent = volumes, agent
        self.api = volumes.client()
        self.agent_http = httpx.Client(base_url=agent.endpoint, timeout=30,
                                       headers={"X-Auth-Token": "admin:admin"})
        self.conn = {"volume": Conn(volumes.port), "compute": Conn(agent.port)}
        self.seed: dict[str, str] = {}
        self.baseline: dict[str, Any] = {}

    def close(self) -> None:
        for conn in self.conn.values():
            conn.close()
        self.agent_http.close()
        self.api.close()

    def seed_resources(self) -> None:
        api = self.api
        r = api.post("/volumes", {"volume": {"size": 1, "name": "seed",
                                             "metadata": {"k": "v"}}})
        assert r.status_code == 202, r.text
        vol = api.wait_volume(r.json()["volume"]["id"], "available")
        r = api.post("/snapshots", {"snapshot": {"volume_id": vol["id"], "name": "seed"}})
        assert r.status_code == 202, r.text
        snap = api.wait_snapshot(r.json()["snapshot"]["id"], "available")
        r = api.post("/types", {"volume_type": {"name": "seed-type",
                                                "extra_specs": {"k": "v"}}})
        assert r.status_code == 200, r.text
        vtype = r.json()["volume_type"]
        r = api.post("/qos-specs", {"qos_specs": {"name": "seed-qos", "read_iops_sec": "1"}})
        assert r.status_code == 200, r.text
        qos = r.json()["qos_specs"]
        self.seed = {"volumes": vol["id"], "snapshots": snap["id"], "types": vtype["id"],
                     "qos-specs": qos["id"], "os-quota-sets": "admin",
                     "os-quota-class-sets": "default", "metadata-key": "k",
                     **self.seed_groups_and_transfers()}
        self.baseline = settled(self)

    def seed_groups_and_transfers(self) -> dict[str, str]:
        """A group type (spec ``k``), a group with a member and a group snapshot of it, an
        open transfer, a user message and the backend's host: so that hostile requests on
        those routes reach a real resource, not only the not-found path."""
        api = self.api
        r = api.post("/types", {"volume_type": {"name": "seed-group-member"}})
        assert r.status_code == 200, r.text
        type_id = r.json()["volume_type"]["id"]
        r = api.post("/group_types", {"group_type": {"name": "seed-gt",
                                                     "group_specs": {"k": "v"}}})
        assert r.status_code == 202, r.text
        group_type = r.json()["group_type"]["id"]
        r = api.post("/groups", {"group": {"name": "seed", "group_type": group_type,
                                           "volume_types": [type_id]}})
        assert r.status_code == 202, r.text
        group = r.json()["group"]["id"]
        r = api.post("/volumes", {"volume": {"size": 1, "volume_type": type_id,
                                             "group_id": group}})
        assert r.status_code == 202, r.text
        api.wait_volume(r.json()["volume"]["id"], "available")
        r = api.post("/group_snapshots", {"group_snapshot": {"group_id": group}})
        assert r.status_code == 202, r.text
        group_snapshot = r.json()["group_snapshot"]["id"]
        r = api.post("/volumes", {"volume": {"size": 1}})
        assert r.status_code == 202, r.text
        offered = api.wait_volume(r.json()["volume"]["id"], "available")["id"]
        r = api.post("/volume-transfers", {"transfer": {"volume_id": offered}})
        assert r.status_code == 202, r.text
        transfer = r.json()["transfer"]["id"]
        # a create no backend can take fails asynchronously: that records a user message
        r = api.post("/types", {"volume_type": {"name": "seed-nowhere", "extra_specs": {
            "volume_backend_name": "nowhere"}}})
        assert r.status_code == 200, r.text
        r = api.post("/volumes", {"volume": {"size": 1, "volume_type": "seed-nowhere"}})
        assert r.status_code == 202, r.text
        api.wait_volume(r.json()["volume"]["id"], "error")
        messages = api.get("/messages").json()["messages"]
        assert messages, "no user message for a create that failed"
        host = next(s["host"] for s in api.get("/os-services").json()["services"]
                    if s["binary"] == "cinder-volume")
        return {"group_types": group_type, "groups": group, "group_snapshots": group_snapshot,
                "volume-transfers": transfer, "os-volume-transfer": transfer,
                "messages": messages[0]["id"], "os-hosts": host, "capabilities": host,
                "os-services": "enable"}


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    base = tmp_path_factory.mktemp("hostile")
    volumes = Server(base / "volumes").start()
    agent = ComputeServer(base / "agent", port=free_port(),
                          config=compute_config(volumes.url))
    try:
        agent.start()
        s = Stack(volumes, agent)
        s.seed_resources()
        yield s
        s.close()
    finally:
        agent.stop()
        volumes.stop()


# ---------------------------------------------------------------------------- one request


class Conn:
    """One keep-alive connection; `send` fails the test when the server drops it."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.http = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        self.http.connect()
        self.used = time.monotonic()

    def send(self, method: str, path: str, headers: dict[str, str],
             body: bytes | None) -> tuple[int, dict[str, str], bytes]:
        if time.monotonic() - self.used > IDLE_SECONDS:
            self.reset()  # the server drops idle connections (uvicorn: after 5 s)
        assert self.http.sock is not None, "the server closed the previous connection"
        local = self.http.sock.getsockname()
        try:
            self.http.putrequest(method, path, skip_accept_encoding=True)
            for name, value in headers.items():
                # raw bytes: latin-1 where it can (a lone \xff), else UTF-8
                raw = value.encode("latin-1") if max(value, default=" ") <= "\xff" else \
                    value.encode("utf-8", "surrogatepass")
                self.http.putheader(name, raw)
            if body is not None:
                self.http.putheader("Content-Length", str(len(body)))
            self.http.endheaders(body)
            r = self.http.getresponse()
            data = r.read()
            self.used = time.monotonic()
        except Exception:
            self.reset()
            raise
        closed = self.http.sock is None or self.http.sock.getsockname() != local or \
            (r.getheader("connection") or "").lower() == "close"
        if closed:
            self.reset()
        assert not closed, f"{method} {path}: the server closed the connection after {r.status}"
        return r.status, {k.lower(): v for k, v in r.getheaders()}, data

    def reset(self) -> None:
        """A fresh connection after a failed example, so the next one starts clean."""
        self.http.close()
        self.http = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        self.http.connect()
        self.used = time.monotonic()

    def close(self) -> None:
        self.http.close()


def assert_fault(status: int, data: bytes, what: str) -> None:
    """A Cinder/Nova error body: one fault name → {"code": status, "message": text}."""
    body = json.loads(data)
    assert isinstance(body, dict) and len(body) == 1, f"{what}: {data[:300]!r}"
    (inner,) = body.values()
    assert isinstance(inner, dict) and inner.get("code") == status, f"{what}: {data[:300]!r}"
    assert isinstance(inner.get("message"), str), f"{what}: {data[:300]!r}"


# ---------------------------------------------------------------------------- state


_VOLATILE = ("updated_at", "os-vol-mig-status-attr:migstat")
_BUSY = ("creating", "deleting", "extending", "attaching", "detaching", "migrating",
         "retyping", "downloading", "uploading", "backing-up", "restoring-backup")


def _strip(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _strip(v) for k, v in value.items() if k not in _VOLATILE}
    if isinstance(value, list):
        return [_strip(v) for v in value]
    return value


def state_of(stack: Stack) -> dict[str, Any]:
    """What refused requests must leave alone, as the admin lists it."""
    api = stack.api
    seen: dict[str, Any] = {}
    for key, path in (("volumes", "/volumes/detail?all_tenants=1"),
                      ("snapshots", "/snapshots/detail?all_tenants=1"),
                      ("volume_types", "/types?is_public=None"),
                      ("qos_specs", "/qos-specs"),
                      ("quota_set", "/os-quota-sets/admin"),
                      ("quota_class_set", "/os-quota-class-sets/default"),
                      ("group_types", "/group_types?is_public=None"),
                      ("groups", "/groups/detail?all_tenants=1&list_volume=True"),
                      ("group_snapshots", "/group_snapshots/detail?all_tenants=1"),
                      ("transfers", "/volume-transfers/detail?all_tenants=1"),
                      ("messages", "/messages")):
        r = api.get(path)
        assert r.status_code == 200, f"{path}: {r.status_code} {r.text[:300]}"
        seen[key] = _strip(r.json()[key])
    r = stack.agent_http.get("/servers/detail?all_tenants=1")
    assert r.status_code == 200, r.text
    seen["servers"] = _strip(r.json()["servers"])
    return seen


def settled(stack: Stack, timeout: float = 10.0) -> dict[str, Any]:
    """The state once background work started by an accepted request is over: nothing in a
    busy status, and two reads in a row the same. It sleeps only while something changes,
    not a fixed time after every request."""
    deadline = time.monotonic() + timeout
    last = state_of(stack)
    while True:
        now = state_of(stack)
        busy = [o for key in ("volumes", "snapshots", "groups", "group_snapshots")
                for o in now[key] if o.get("status") in _BUSY]
        if (now == last and not busy) or time.monotonic() > deadline:
            return now
        last = now
        time.sleep(0.05)


# ---------------------------------------------------------------------------- strategies

HOSTILE_TEXT = ["", " ", "\x00", "a\x00b", "\ud800", "x\udfffy", "²", "٣", "--5", "-1", "0",
                "9" * 5000, "9223372036854775808", "1e400", "NaN", "{[]: 1}", "[" * 2000,
                "x" * 300, "target:" + str(uuid.UUID(int=1)), "true", "None", "%s%n",
                "../../etc/passwd", "<script>", "ǅ", "\u2028", "\U0001f600"]
HOSTILE_NUMBERS = [0, -1, 1, 2**31, 2**63, 10**20, -(2**63) - 1, 1.5, 1e308, -0.0]
FIELD_NAMES = ["volume", "snapshot", "attachment", "volume_type", "qos_specs", "quota_set",
               "quota_class_set", "metadata", "meta", "extra_specs", "keys", "connector",
               "name", "description", "display_name", "size", "new_size", "status",
               "attach_status", "migration_status", "volume_id", "volume_uuid", "snapshot_id",
               "source_volid", "instance_uuid", "host_name", "mountpoint", "mode", "host",
               "new_type", "migration_policy", "bootable", "readonly", "force", "project",
               "os-extend", "os-reset_status", "os-attach", "os-detach", "os-force_detach",
               "os-initialize_connection", "os-terminate_connection", "os-set_bootable",
               "os-update_readonly_flag", "os-retype", "os-migrate_volume",
               "os-migrate_volume_completion", "os-force_delete", "os-reserve",
               "os-complete", "addProjectAccess", "removeProjectAccess", "volumes",
               "gigabytes", "snapshots", "server", "volumeAttachment", "volumeId", "device",
               "events", "server_uuid", "tag", "imageRef", "flavorRef",
               "blockyard:qmp_socket", "is_public", "os-volume-type-access:is_public",
               "consumer", "specs", "group", "transfer", "auth_key", "encryption",
               "provider", "cipher", "key_size", "control_location", "service", "reason"]

scalars = st.one_of(
    st.none(), st.booleans(), st.sampled_from(HOSTILE_NUMBERS),
    st.integers(min_value=-(2**70), max_value=2**70), st.sampled_from(HOSTILE_TEXT),
    st.text(max_size=20), st.just(str(uuid.uuid4())))
json_values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(st.one_of(st.sampled_from(FIELD_NAMES), st.text(max_size=10)),
                        inner, max_size=4)),
    max_leaves=12)
shaped = st.dictionaries(
    st.sampled_from(FIELD_NAMES),
    st.one_of(st.none(), st.dictionaries(st.sampled_from(FIELD_NAMES), json_values,
                                         max_size=5), json_values),
    min_size=1, max_size=2)


def _encode(value: Any, ascii_only: bool) -> bytes:
    return json.dumps(value, ensure_ascii=ascii_only).encode("utf-8", "surrogatepass")


RAW_BODIES = [b"[" * 100000, b"{" * 50 + b"}" * 50, b'{"volume": {"name": "\\ud800"}}',
              b'{"volume": {"name": "\\u0000"}}', b'{"a": "\xff\xfe"}', b"\xef\xbb\xbf{}",
              b'{"a": ' + b"9" * 5000 + b"}", b'{"a": NaN}', b'{"a": Infinity}', b'{"a": 1e400}',
              b"", b"null", b"[]", b'"x"', b"{", b"x" * (MAX_BODY_BYTES + 1),
              b'{"volume": {"size": 1}' + b" " * MAX_BODY_BYTES + b"}"]
bodies = st.one_of(
    st.none(), st.sampled_from(RAW_BODIES),
    st.builds(_encode, shaped, st.booleans()),
    st.builds(_encode, json_values, st.booleans()))

QUERY_KEYS = ["limit", "offset", "marker", "sort", "sort_key", "sort_dir", "with_count",
              "all_tenants", "metadata", "size", "name", "name~", "status", "is_public",
              "usage", "force", "cascade", "detail", "volume_type", "vol_type_id",
              "project_id", "host", "binary", "extra_specs", "volume_id", "all_projects"]
query_values = st.one_of(st.sampled_from(HOSTILE_TEXT), st.text(max_size=12),
                         st.integers(min_value=-(2**70), max_value=2**70).map(str))
queries = st.lists(st.tuples(st.one_of(st.sampled_from(QUERY_KEYS), st.text(max_size=8)),
                             query_values), max_size=4)

# latin-1 text without control characters: what an HTTP header can carry
header_text = st.text(st.characters(min_codepoint=0x20, max_codepoint=0xFF,
                                    exclude_characters="\x7f"), max_size=30)


def _versions(service: str, latest: str) -> Any:
    return st.one_of(st.sampled_from([f"{service} {latest}"] * 4 + [
        f"{service} 3.0", f"{service} 2.1", f"{service} latest", f"{service} 3.99",
        f"{service} abc", f"{service} 3.", f"{service} ٣.٠", "", f"{service}"]),
        header_text.map(lambda t: f"{service} {t}"))


def path_value(stack: Stack, collection: str) -> Any:
    known = stack.seed.get(collection)
    return st.one_of(
        st.just(known) if known else st.just(str(uuid.uuid4())),
        st.just(str(uuid.uuid4())),
        st.sampled_from(HOSTILE_TEXT + ["default", "detail", "admin", "k"])
        .map(lambda t: quote(t.encode("utf-8", "surrogatepass"), safe="")))


# ---------------------------------------------------------------------------- the property


def _route_cases() -> list[Any]:
    cases = []
    for service, routes in (("volume", VOLUME_ROUTES), ("compute", COMPUTE_ROUTES)):
        for route in routes:
            if not isinstance(route, Route):  # a Mount or websocket route: not an endpoint
                continue
            for method in sorted(route.methods or ()):
                if method != "HEAD":
                    cases.append(pytest.param(service, route.path, method,
                                              id=f"{service}:{method}:{route.path}"))
    return cases


def _fill(stack: Stack, path: str, data: st.DataObject) -> str:
    parts = path.split("/")
    collection = parts[2] if len(parts) > 2 else ""
    out = []
    for part in parts:
        if part.startswith("{") and part.endswith("}"):
            name = part[1:-1]
            target = {"key": "metadata-key", "volume_id": "volumes",
                      "server_id": "servers"}.get(name, collection)
            out.append(data.draw(path_value(stack, target), label=name))
        else:
            out.append(part)
    return "/".join(out)


@pytest.mark.parametrize(("service", "path", "method"), _route_cases())
@settings(max_examples=EXAMPLES_PER_ROUTE, deadline=None, database=None,
          suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_route_survives_hostile_requests(stack: Stack, service: str, path: str,
                                         method: str, data: st.DataObject) -> None:
    version_header = "OpenStack-API-Version"
    versions = _versions("volume", "3.71") if service == "volume" else \
        _versions("compute", "2.89")
    url = _fill(stack, path, data)
    query = data.draw(queries, label="query")
    if query:
        url += "?" + urlencode([(k.encode("utf-8", "surrogatepass"),
                                 v.encode("utf-8", "surrogatepass")) for k, v in query])
    headers = {version_header: data.draw(versions, label="version"),
               "X-Auth-Token": data.draw(st.one_of(
                   st.sampled_from(["admin:admin", "admin:admin", "user:other", "", ":"]),
                   header_text), label="token")}
    content_type = data.draw(st.sampled_from(
        ["application/json", "application/json", "text/plain", None]), label="content-type")
    if content_type:
        headers["Content-Type"] = content_type
    body = data.draw(bodies, label="body") if method in ("POST", "PUT") else None

    before = stack.baseline
    conn = stack.conn[service]
    status, _, answer = conn.send(method, url, headers, body)
    what = f"{method} {url} {headers} {body[:200] if body else body!r}"
    assert status < 500, f"{what} → {status} {answer[:300]!r}"
    # the connection is still good for the next request
    check, _, _ = conn.send("GET", "/", {}, None)
    assert check in (200, 300), what
    if status >= 400:
        assert_fault(status, answer, what)
        after = state_of(stack)
        if after != before:  # background work of an earlier request may still be ending
            after = settled(stack)
        assert after == before, f"{what} → {status} changed the state"
    else:
        stack.baseline = settled(stack)


HOSTILE_QUERIES = ["offset=9223372036854775808", "limit=0", "limit=-1", "limit=%D9%A3",
                   "size=" + "1" * 21, "size=%C2%B2", "metadata=%7B%5B%5D%3A+1%7D",
                   "metadata=" + "%5B" * 300, "sort=" + "x" * 300 + ":up", "marker=%00",
                   "all_tenants=%F0%9F%98%80", "with_count=maybe", "name=%ED%A0%80",
                   "extra_specs=%7B%5B%5D%3A+1%7D", "extra_specs=" + "%7B" * 300,
                   "is_public=%C2%B2"]


HOSTILE_HEADERS = [{"OpenStack-API-Version": "volume \xff"},
                   {"OpenStack-API-Version": "compute \xff"},
                   {"X-OpenStack-Nova-API-Version": "\xff"},
                   {"X-Auth-Token": "\xff:\xfe"}, {"X-Auth-Token": ":"},
                   {"X-Auth-Token": "u:" + "p" * 300}, {"X-Project-Id": "\xff" * 300},
                   {"Content-Type": "text/plain; charset=\xff"}]


@pytest.mark.parametrize(("service", "path", "method"), _route_cases())
def test_route_refuses_every_known_hostile_input(stack: Stack, service: str, path: str,
                                                  method: str) -> None:
    """The sweep the property samples from, done exhaustively: every raw body and every
    hostile query string above on this route (with the seeded ids in the path)."""
    conn = stack.conn[service]
    version = "volume 3.71" if service == "volume" else "compute 2.89"
    url = "/".join(stack.seed.get("metadata-key" if p == "{key}" else
                                  ("volumes" if p == "{volume_id}" else path.split("/")[2]),
                                  str(uuid.uuid4())) if p.startswith("{") else p
                   for p in path.split("/"))
    headers = {"OpenStack-API-Version": version, "X-Auth-Token": "admin:admin",
               "Content-Type": "application/json"}
    requests = [(f"{url}?{q}", None, headers) for q in HOSTILE_QUERIES]
    if method in ("POST", "PUT"):
        requests += [(url, body, headers) for body in RAW_BODIES]
    requests += [(url, None, {**headers, **extra}) for extra in HOSTILE_HEADERS]
    for target, body, sent in requests:
        status, _, answer = conn.send(method, target, sent, body)
        what = f"{method} {target} {sent} {body[:100] if body else body!r}"
        assert status < 500, f"{what} → {status} {answer[:300]!r}"
        if status >= 400:
            assert_fault(status, answer, what)
    stack.baseline = settled(stack)


# ---------------------------------------------------------------------------- named regressions


def _raw(stack: Stack, method: str, path: str, body: bytes | None = None,
         version: str = "3.71") -> tuple[int, dict[str, Any]]:
    """One request on the kept connection; returns the status and the JSON answer (a fault
    body is checked for shape)."""
    headers = {"OpenStack-API-Version": f"volume {version}", "X-Auth-Token": "admin:admin",
               "Content-Type": "application/json"}
    status, _, data = stack.conn["volume"].send(method, "/v3" + path, headers, body)
    if status >= 400:
        assert_fault(status, data, f"{method} {path}")
    return status, json.loads(data) if data else {}


def _message(answer: dict[str, Any]) -> str:
    (inner,) = answer.values()
    return str(inner["message"])


def _refused(stack: Stack, method: str, path: str, body: bytes | None = None,
             status: int = 400,
             version: str = "3.71") -> str:
    """`body` gets `status` and changes nothing; returns the fault message."""
    before = state_of(stack)
    got, answer = _raw(stack, method, path, body, version)
    assert got == status, answer
    assert state_of(stack) == before
    return _message(answer)


def test_deep_nesting_is_refused_not_a_recursion_error(stack: Stack) -> None:
    for body in (b"[" * 100000, b'{"volume": ' * 5000 + b"1" + b"}" * 5000):
        assert "nested" in _refused(stack, "POST", "/volumes", body)


@pytest.mark.parametrize("escape", ["\\ud800", "\\udfff", "\\u0000"])
def test_nul_and_lone_surrogates_are_refused_everywhere(stack: Stack, escape: str) -> None:
    seed = stack.seed
    cases = [
        ("POST", "/volumes", '{"volume": {"size": 1, "name": "a%sb"}}'),
        ("POST", "/volumes", '{"volume": {"size": 1, "description": "%s"}}'),
        ("POST", "/volumes", '{"volume": {"size": 1, "metadata": {"k": "%s"}}}'),
        ("PUT", f"/volumes/{seed['volumes']}", '{"volume": {"name": "%s"}}'),
        ("POST", f"/volumes/{seed['volumes']}/metadata", '{"metadata": {"%s": "v"}}'),
        ("PUT", f"/qos-specs/{seed['qos-specs']}", '{"qos_specs": {"k": "%s"}}'),
        ("PUT", f"/qos-specs/{seed['qos-specs']}", '{"qos_specs": {"%s": "v"}}'),
        ("PUT", "/os-quota-sets/admin", '{"quota_set": {"%s": 1}}'),
        ("POST", f"/volumes/{seed['volumes']}/action", '{"os-reset_status": {"status": "%s"}}'),
        ("POST", "/types", '{"volume_type": {"name": "%s"}}'),
    ]
    for method, path, template in cases:
        _refused(stack, method, path, (template % escape).encode())
    # the QoS listing that a stored surrogate used to break for every caller
    assert stack.api.get("/qos-specs").status_code == 200


def test_invalid_utf8_is_refused(stack: Stack) -> None:
    _refused(stack, "POST", "/volumes", b'{"volume": {"size": 1, "name": "\xff\xfe"}}')
    _refused(stack, "POST", "/volumes", b'{"volume": {"size": 1, "name": "\xed\xa0\x80"}}')


@pytest.mark.parametrize("size", ["²", "٣", "--5", "9" * 5000, "1e400", "0"])
def test_sizes_are_ascii_bounded_integers(stack: Stack, size: str) -> None:
    for value in (json.dumps(size), size if size.isascii() and size[0].isdigit() else None):
        if value is None:
            continue
        _refused(stack, "POST", "/volumes", f'{{"volume": {{"size": {value}}}}}'.encode())
        _refused(stack, "POST", f"/volumes/{stack.seed['volumes']}/action",
                 f'{{"os-extend": {{"new_size": {value}}}}}'.encode())


@pytest.mark.parametrize("query", ["offset=9223372036854775808", "offset=-1", "limit=-1",
                                   "limit=%D9%A3", "size=100000000000000000000",
                                   "size=%C2%B2", "metadata=%7B%5B%5D%3A+1%7D",
                                   "metadata=" + "%5B" * 1000])
def test_query_integers_and_literals_are_checked(stack: Stack, query: str) -> None:
    for collection in ("/volumes", "/volumes/detail", "/snapshots/detail"):
        if "size" in query and collection.startswith("/snapshots"):
            continue
        status, _ = _raw(stack, "GET", f"{collection}?{query}")
        assert status == 400, (collection, query)


@pytest.mark.parametrize("collection", ["volumes", "volumes/detail", "snapshots",
                                        "snapshots/detail", "types", "qos-specs"])
def test_limit_zero_is_an_empty_page(stack: Stack, collection: str) -> None:
    status, answer = _raw(stack, "GET", f"/{collection}?limit=0")
    assert status == 200
    (items,) = [v for k, v in answer.items() if not k.endswith("_links")]
    assert items == []


def test_nul_in_the_url_is_refused(stack: Stack) -> None:
    _refused(stack, "GET", "/volumes/%00")
    _refused(stack, "GET", "/volumes?name=%00")


def test_body_over_the_limit_is_413_before_parsing(stack: Stack) -> None:
    huge = b'{"volume": {"size": 1, "name": "' + b"x" * MAX_BODY_BYTES + b'"}}'
    _refused(stack, "POST", "/volumes", huge, status=413)
    # a chunked body is counted as it arrives
    conn = stack.conn["volume"]
    conn.http.putrequest("POST", "/v3/volumes")
    for name, value in (("X-Auth-Token", "admin:admin"), ("Transfer-Encoding", "chunked"),
                        ("Content-Type", "application/json")):
        conn.http.putheader(name, value)
    conn.http.endheaders()
    chunk = b"x" * 65536
    for _ in range(3):
        conn.http.send(b"%x\r\n%s\r\n" % (len(chunk), chunk))
    conn.http.send(b"0\r\n\r\n")
    r = conn.http.getresponse()
    assert r.status == 413
    assert_fault(413, r.read(), "chunked")
    assert _raw(stack, "GET", "/volumes")[0] == 200  # same connection


def test_reset_status_takes_only_cinders_statuses(stack: Stack) -> None:
    # a volume of its own: the property above may have deleted the seeded one
    r = stack.api.post("/volumes", {"volume": {"size": 1}})
    assert r.status_code == 202, r.text
    vid = stack.api.wait_volume(r.json()["volume"]["id"], "available")["id"]
    path = f"/volumes/{vid}/action"
    for args in ({"migration_status": f"target:{uuid.uuid4()}"},
                 {"migration_status": "bogus"}, {"status": "bogus"},
                 {"attach_status": "bogus"}, {}, {"status": None},
                 {"status": {"a": 1}}, {"status": "available", "extra": 1}):
        _refused(stack, "POST", path, json.dumps({"os-reset_status": args}).encode())
    status, answer = _raw(stack, "GET", "/volumes")
    assert vid in [v["id"] for v in answer["volumes"]]


@pytest.mark.parametrize("version", ["3.0", "3.52", "3.53", "3.71"])
def test_extend_refuses_extra_keys_at_every_version(stack: Stack, version: str) -> None:
    """Cinder's os-extend schema has additionalProperties false from 3.0 on."""
    message = _refused(stack, "POST", f"/volumes/{stack.seed['volumes']}/action",
                       b'{"os-extend": {"new_size": 2, "extra": 1}}', version=version)
    assert "Additional properties are not allowed ('extra' was unexpected)" in message


@pytest.mark.parametrize("args", [
    {"instance_uuid": str(uuid.uuid4())},                               # no mountpoint
    {"host_name": "h" * 300, "mountpoint": "/dev/vdb"},                 # too long
    {"host_name": {"a": 1}, "mountpoint": "/dev/vdb"},                  # not a string
    {"instance_uuid": str(uuid.uuid4()), "mountpoint": {"a": 1}},
    {"instance_uuid": str(uuid.uuid4()), "mountpoint": ""},
    {"instance_uuid": "not-a-uuid", "mountpoint": "/dev/vdb"},
    {"mountpoint": "/dev/vdb"},                                         # no target
    {"instance_uuid": str(uuid.uuid4()), "mountpoint": "/dev/vdb", "mode": "rx"},
    {"instance_uuid": str(uuid.uuid4()), "mountpoint": "/dev/vdb", "extra": 1},
])
def test_attach_follows_cinders_schema(stack: Stack, args: dict[str, Any]) -> None:
    _refused(stack, "POST", f"/volumes/{stack.seed['volumes']}/action",
             json.dumps({"os-attach": args}).encode())


def test_an_unexpected_error_is_a_500_fault_and_not_re_raised() -> None:
    """`CatchAll` answers and swallows the exception: uvicorn closes the keep-alive
    connection only when an exception reaches it (Starlette's own handler re-raises)."""
    import asyncio

    from starlette.applications import Starlette
    from starlette.middleware import Middleware
    from starlette.requests import Request

    from blockyard.rest.guard import CatchAll, RequestLimits

    async def broken(request: Request) -> Any:
        raise RuntimeError("boom")

    app = Starlette(routes=[Route("/", broken)],
                    middleware=[Middleware(CatchAll), Middleware(RequestLimits)])
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "GET", "path": "/", "raw_path": b"/",
             "query_string": b"", "headers": [], "app": app}
    asyncio.run(app(scope, receive, send))  # no exception comes out
    assert sent[0]["status"] == 500
    assert_fault(500, b"".join(m.get("body", b"") for m in sent[1:]), "boom")


@pytest.mark.parametrize("connector", [
    {"host": {"a": 1}}, {"mountpoint": {"b": 2}}, {"initiator": ["iqn"]}, {"host": "h" * 300},
    {"multipath": {"a": 1}}])
def test_connector_text_fields_must_be_text(stack: Stack, connector: dict[str, Any]) -> None:
    """The connector keys blockyard records (host, mountpoint...) used to reach the
    database as dicts (a sqlite binding error, a 500)."""
    vid = stack.seed["volumes"]
    _refused(stack, "POST", "/attachments", json.dumps(
        {"attachment": {"volume_uuid": vid, "connector": connector}}).encode())
    _refused(stack, "POST", f"/volumes/{vid}/action", json.dumps(
        {"os-initialize_connection": {"connector": connector}}).encode())


@pytest.mark.parametrize("query", ["extra_specs=%7B%5B%5D%3A+1%7D",
                                   "extra_specs=" + "%7B" * 1000])
def test_type_filter_literals_are_checked(stack: Stack, query: str) -> None:
    assert _raw(stack, "GET", f"/types?{query}")[0] == 400


def test_text_that_cannot_be_utf8_is_still_rendered() -> None:
    """Rows written before input was checked (a lone surrogate in a QoS spec) must not make
    every later listing a 500: such text goes out \\u-escaped."""
    from blockyard.rest.errors import SafeJSONResponse, fault

    assert SafeJSONResponse({"specs": {"k": "\ud800"}}).body == b'{"specs":{"k":"\\ud800"}}'
    assert json.loads(fault(400, "Value: \udfff").body) == \
        {"badRequest": {"code": 400, "message": "Value: \udfff"}}
