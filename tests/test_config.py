"""Configuration: every key of `blockyard serve` and `blockyard compute` is checked before
anything starts. A bad value, a wrong type or an unknown key (usually a typo) is one line on
stderr naming the full dotted key, exit 2, and nothing is served; a failure only start-up can
see (a portal taken) is one line too. The parser's own behaviour is tested in-process below."""

from __future__ import annotations

import inspect
import socket
from pathlib import Path
from typing import Any

import pytest

from blockyard import config
from blockyard.backends import DRIVERS
from blockyard.compute import config as compute_config
from blockyard.errors import ConfigError
from blockyard.targets import TARGETS
from tests.support.compute import ComputeServer
from tests.support.server import Server, free_port, free_tgt_control_port

# (TOML text, the full key the one line must name)
SERVE_CASES: list[tuple[str, str]] = [
    # top level
    ("colour = 'blue'", "colour"),
    ("listen = 'nowhere'", "listen"),
    ("listen = '127.0.0.1:70000'", "listen"),
    ("state_dir = 5", "state_dir"),
    ("database_url = 'not a url'", "database_url"),
    ("host = 'store@1'", "host"),
    ("default_volume_type = ''", "default_volume_type"),
    ("max_volume_size_gb = 0", "max_volume_size_gb"),
    ("[quota]\nvolumes = 'ten'", "quota.volumes"),
    ("[quota]\nbananas = 1", "quota.bananas"),
    ("this is not toml", "--config"),
    # backends
    ("[backends.'a#b']\ndriver = 'file'", "backends.a#b"),
    ("[backends.fast]\npath = '/tmp/x'", "backends.fast.driver"),
    ("[backends.fast]\ndriver = 'floppy'", "backends.fast.driver"),
    ("[backends.fast]\ndriver = 'file'\nworkers = '4'", "backends.fast.workers"),
    ("[backends.fast]\ndriver = 'file'\ntarget = 'udp'", "backends.fast.target"),
    ("[backends.fast]\ndriver = 'file'\nvolume_backend_name = ''",
     "backends.fast.volume_backend_name"),
    ("[backends.fast]\ndriver = 'file'\npth = '/srv'", "backends.fast.pth"),
    ("[backends.fast]\ndriver = 'file'\nreserved_percentage = 101",
     "backends.fast.reserved_percentage"),
    ("[backends.ceph]\ndriver = 'rbd'", "backends.ceph.pool"),
    ("[backends.ceph]\ndriver = 'rbd'\npool = 'p'\nrados_connect_timeout = 0",
     "backends.ceph.rados_connect_timeout"),
    ("[backends.ceph]\ndriver = 'rbd'\npool = 'p'\ntarget = 'iscsi'", "backends.ceph.target"),
    # targets
    ("[targets.fc]\nx = 1", "targets.fc"),
    ("[targets.local]\nx = 1", "targets.local.x"),
    ("[targets.iscsi]\ncontrol_port = 40000", "targets.iscsi.control_port"),
    ("[targets.iscsi]\ncontrol_port = '23457'", "targets.iscsi.control_port"),
    ("[backends.b]\ndriver = 'file'\ntarget = 'iscsi'", "targets.iscsi.control_port"),
    ("[targets.iscsi]\ncontrol_port = 1\nportal = '127.0.0.1'", "targets.iscsi.portal"),
    ("[targets.iscsi]\ncontrol_port = 1\nportal = 'storage.example:3260'",
     "targets.iscsi.portal"),
    ("[targets.iscsi]\ncontrol_port = 1\nportal = '127.0.0.1:70000'", "targets.iscsi.portal"),
    ("[targets.iscsi]\ncontrol_port = 1\niqn_prefix = 'volumes:'", "targets.iscsi.iqn_prefix"),
    ("[targets.iscsi]\ncontrol_port = 1\nchap = 'yes'", "targets.iscsi.chap"),
    ("[targets.iscsi]\ncontrol_port = 1\nprotal = '127.0.0.1:3260'", "targets.iscsi.protal"),
    ("[targets.nbd]\nmode = 'udp'", "targets.nbd.mode"),
    ("[targets.nbd]\nport_range = [10809]", "targets.nbd.port_range"),
    ("[targets.nbd]\nport_range = [10908, 10809]", "targets.nbd.port_range"),
    ("[targets.nbd]\nbind = 'not a host!'", "targets.nbd.bind"),
    ("[targets.nbd]\nbind = '0.0.0.0'", "targets.nbd.advertise_host"),
    ("[targets.nbd]\ntls = 1", "targets.nbd.tls"),
    ("[targets.nbd]\ncache = 'sometimes'", "targets.nbd.cache"),
    ("[targets.nbd]\nmax_clients = 0", "targets.nbd.max_clients"),
    # [compute]: where volume-extended events go
    ("[compute]\nurl = 'ftp://nova'", "compute.url"),
    ("[compute]\ntimeout = 0", "compute.timeout"),
    ("[compute]\nuri = 'http://nova'", "compute.uri"),

]
#: more values of the same keys, checked in-process only (a process each is slow)
SERVE_MORE_CASES: list[tuple[str, str]] = [
    ("[quota]\ngigabytes = 99999999999999", "quota.gigabytes"),
    ("[targets.iscsi]\ncontrol_port = 1\ntimeout = nan", "targets.iscsi.timeout"),
    ("[backends.fast]\ndriver = 'file'\ntotal_capacity_gb = inf",
     "backends.fast.total_capacity_gb"),
    ("lisen = '127.0.0.1:1'", "lisen"),
    ("listen = 8776", "listen"),
    ("max_volume_size_gb = '10'", "max_volume_size_gb"),
    ("quota = 3", "quota"),
    ("[quota]\nvolumes = -2", "quota.volumes"),
    ("backends = 'file'", "backends"),
    ("[backends.fast]\ndriver = 3", "backends.fast.driver"),
    ("[backends.fast]\ndriver = 'file'\nworkers = 0", "backends.fast.workers"),
    ("[backends.fast]\ndriver = 'file'\ntarget = 'rbd'", "backends.fast.target"),
    ("[backends.fast]\ndriver = 'file'\navailability_zone = 1",
     "backends.fast.availability_zone"),
    ("[backends.fast]\ndriver = 'file'\npath = 5", "backends.fast.path"),
    ("[backends.fast]\ndriver = 'file'\ntotal_capacity_gb = -1",
     "backends.fast.total_capacity_gb"),
    ("[backends.fast]\ndriver = 'file'\nreserved_percentage = '5'",
     "backends.fast.reserved_percentage"),
    ("[backends.fast]\ndriver = 'file'\nmax_over_subscription_ratio = 0.5",
     "backends.fast.max_over_subscription_ratio"),
    ("[backends.ceph]\ndriver = 'rbd'\npool = 'a/b'", "backends.ceph.pool"),
    ("[backends.ceph]\ndriver = 'rbd'\npool = 'p'\nuser = 'client admin'", "backends.ceph.user"),
    ("[backends.ceph]\ndriver = 'rbd'\npool = 'p'\nconf = ''", "backends.ceph.conf"),
    ("[backends.ceph]\ndriver = 'rbd'\npool = 'p'\nkeyring = 1", "backends.ceph.keyring"),
    ("[backends.ceph]\ndriver = 'rbd'\npool = 'p'\npath = '/srv'", "backends.ceph.path"),
    ("[targets.rbd]\nx = 1", "targets.rbd.x"),
    ("[targets.iscsi]\ncontrol_port = 0", "targets.iscsi.control_port"),
    ("[targets.iscsi]\nportal = '127.0.0.1:3260'", "targets.iscsi.control_port"),
    ("[targets.iscsi]\ncontrol_port = 1\nportal = '0.0.0.0:3260'", "targets.iscsi.portal"),
    ("[targets.iscsi]\ncontrol_port = 1\nportal = '::1:3260'", "targets.iscsi.portal"),
    ("[targets.iscsi]\ncontrol_port = 1\ntimeout = 0", "targets.iscsi.timeout"),
    ("[targets.nbd]\nport_range = '10809-10908'", "targets.nbd.port_range"),
    ("[targets.nbd]\nport_range = [0, 10]", "targets.nbd.port_range"),
    ("[targets.nbd]\nport_range = [10809, 'x']", "targets.nbd.port_range"),
    ("[targets.nbd]\nadvertise_host = ''", "targets.nbd.advertise_host"),
    ("[targets.nbd]\nqemu_nbd = ''", "targets.nbd.qemu_nbd"),
    ("[targets.nbd]\nstart_timeout = -1", "targets.nbd.start_timeout"),
    ("[targets.nbd]\nstop_timeout = 'soon'", "targets.nbd.stop_timeout"),
    ("[targets.nbd]\nmod = 'tcp'", "targets.nbd.mod"),
    ("[compute]\nurl = 'http://nova:99999'", "compute.url"),
    ("[compute]\nurl = 'http://127.0.0.1:8774'", "compute.url"),  # the root, not /v2.1
    ("[compute]\nurl = 'http://nova/v2.1/os-server-external-events'", "compute.url"),]

COMPUTE_CASES: list[tuple[str, str]] = [
    ("colour = 'blue'", "colour"),
    ("listen = 'nowhere'", "listen"),
    ("state_dir = 1", "state_dir"),
    ("host = ''", "host"),
    ("volume_url = 'localhost:8776'", "volume_url"),
    ("detach_timeout = 0", "detach_timeout"),
    ("detach_retries = '3'", "detach_retries"),
    ("[qemu]\naccel = 'xen'", "qemu.accel"),
    ("[qemu]\nbinary = 5", "qemu.binary"),
    ("[qemu]\nmachine = ''", "qemu.machine"),
    ("[qemu]\nmemory = 1", "qemu.memory"),
    ("[images.tiny]\nappend = 'quiet'", "images.tiny"),
    ("[images.tiny]\ninitrd = '/i'\ndisk = '/d'", "images.tiny.initrd"),
    ("[images.tiny]\nkernal = '/k'", "images.tiny.kernal"),
    ("[images.'a b']\nkernel = '/k'", "images.a b"),
    # files the guests need, checked at start (wiring mistakes: one line, not a server ERROR)
    ("[images.tiny]\nkernel = '/nonexistent/vmlinuz'", "images.tiny.kernel"),
    ("[images.tiny]\ndisk = '/nonexistent/disk.raw'", "images.tiny.disk"),
    ("[qemu]\nbinary = 'qemu-system-nowhere'", "qemu.binary"),
    ("[flavors.small]\nram_mb = 0", "flavors.small.ram_mb"),
    ("[flavors.small]\nvcpus = '1'", "flavors.small.vcpus"),
    ("[flavors.small]\ndisk_gb = 1", "flavors.small.disk_gb"),
    ("this is not toml", "--config"),
]


def _assert_refused(result: Any, key: str, code: int = 2) -> str:
    """Exit `code`, exactly one line on stderr, naming `key` first; nothing served."""
    assert result.returncode == code, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert "serving" not in result.stderr + result.stdout
    return str(lines[0])


@pytest.mark.parametrize(("text", "key"), SERVE_CASES, ids=[k for _, k in SERVE_CASES])
def test_serve_refuses_bad_key(tmp_path: Path, text: str, key: str) -> None:
    line = _assert_refused(Server(tmp_path / "state", config=text).run_to_exit(), key)
    assert line.startswith(f"blockyard: bad configuration: {key}: "), line
    assert not (tmp_path / "state").exists()  # refused before anything was created


@pytest.mark.parametrize(("text", "key"), COMPUTE_CASES, ids=[k for _, k in COMPUTE_CASES])
def test_compute_refuses_bad_key(tmp_path: Path, text: str, key: str) -> None:
    line = _assert_refused(ComputeServer(tmp_path / "state", config=text).run_to_exit(), key)
    assert line.startswith(f"blockyard: bad configuration: {key}: "), line


def test_messages_say_what_is_wrong(tmp_path: Path) -> None:
    def line(text: str) -> str:
        return _assert_refused(Server(tmp_path / "s", config=text).run_to_exit(), "")

    assert line("[targets.iscsi]\ncontrol_port = 40000").endswith(
        "targets.iscsi.control_port: must be 1..32767 (the tgtd control socket number, not a "
        "TCP port), got 40000")
    assert "must be an integer, got '23457' (a string)" in line(
        "[targets.iscsi]\ncontrol_port = '23457'")
    assert "did you mean 'control_port'?" in line("[targets.iscsi]\ncontrol_prot = 1")
    assert "backends.b exports through iscsi" in line(
        "[backends.b]\ndriver = 'file'\ntarget = 'iscsi'")


def test_a_portal_taken_is_one_line_and_nothing_served(tmp_path: Path) -> None:
    """tgtd cannot be told apart from a good start until it runs: still one line, exit 1."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = Server(tmp_path / "state", config=(
            "[backends.b]\ndriver = 'file'\ntarget = 'iscsi'\n[targets.iscsi]\n"
            f"portal = '127.0.0.1:{port}'\ncontrol_port = {free_tgt_control_port()}\n"
        )).run_to_exit()
    line = _assert_refused(result, "", code=1)
    assert line.startswith("blockyard: cannot start: "), line
    assert f"127.0.0.1:{port}" in line


def test_serving_is_said_once_when_the_targets_are_up(tmp_path: Path) -> None:
    control_port = free_tgt_control_port()
    srv = Server(tmp_path / "state", config=(
        "[backends.b]\ndriver = 'file'\ntarget = 'iscsi'\n[targets.iscsi]\n"
        f"portal = '127.0.0.1:{free_port()}'\ncontrol_port = {control_port}\n"))
    srv.start()
    try:
        said = [ln for ln in srv.log().splitlines() if "serving" in ln]
        assert said == [f"blockyard: serving the Cinder v3 API on {srv.endpoint}"]
        assert Path(f"/var/run/tgtd/socket.{control_port}").exists()  # tgtd was up before
    finally:
        assert srv.stop() == 0
    assert "Traceback" not in srv.log()


# -- the parser, in-process ---------------------------------------------------------------------


@pytest.mark.parametrize(("text", "key"),
                         [c for c in SERVE_CASES + SERVE_MORE_CASES if c[1] != "--config"])
def test_build_names_the_key(text: str, key: str) -> None:
    import tomllib

    with pytest.raises(ConfigError) as err:
        config.build(tomllib.loads(text), state_dir="/tmp/unused")
    assert err.value.key == key


def test_a_full_configuration_is_read_and_normalised(tmp_path: Path) -> None:
    cfg = config.build({
        "listen": "[::1]:9000",
        "host": "storage1",
        "max_volume_size_gb": 100,
        "quota": {"volumes": -1},
        "backends": {
            "fast": {"driver": "file", "target": "iscsi", "reserved_percentage": 5,
                     "max_over_subscription_ratio": 2},
            "slow": {"driver": "file", "target": "nbd", "volume_backend_name": "cheap"},
            "ceph": {"driver": "rbd", "pool": "volumes", "target": "rbd"},
        },
        "targets": {
            "iscsi": {"portal": "[::1]:3260", "control_port": 32767, "chap": False,
                      "iqn_prefix": "iqn.2010-10.org.openstack:", "timeout": 5},
            "nbd": {"mode": "tcp", "bind": "0.0.0.0", "advertise_host": "storage1.example",
                    "port_range": [20000, 20000], "tls": True},
        },
        "compute": {"url": "http://127.0.0.1:8774/v2.1", "timeout": 3},
    }, state_dir=str(tmp_path))
    assert (cfg.listen_host, cfg.listen_port) == ("::1", 9000)
    assert cfg.quotas["volumes"] == -1 and cfg.quotas["snapshots"] == 10
    fast, slow, ceph = cfg.backends
    assert fast.options == {"reserved_percentage": 5, "max_over_subscription_ratio": 2.0,
                            "path": str(tmp_path / "volumes" / "fast")}
    assert isinstance(fast.options["max_over_subscription_ratio"], float)
    assert (slow.volume_backend_name, fast.volume_backend_name) == ("cheap", "fast")
    assert ceph.options == {"pool": "volumes"}
    assert cfg.targets["nbd"]["port_range"] == (20000, 20000)
    assert cfg.targets["iscsi"]["timeout"] == 5.0
    assert set(cfg.targets) == {"iscsi", "nbd", "rbd"}
    assert cfg.compute == config.ComputeEndpoint("http://127.0.0.1:8774/v2.1", 3.0)


def test_defaults_and_command_line_values() -> None:
    cfg = config.build({"listen": "127.0.0.1:1"}, state_dir="/srv/by", listen="0.0.0.0:0")
    assert (cfg.listen_host, cfg.listen_port) == ("0.0.0.0", 0)
    assert cfg.database_url == "sqlite:////srv/by/blockyard.db"
    assert [(b.name, b.driver, b.target) for b in cfg.backends] == [("default", "file", "local")]
    assert cfg.targets == {"local": {}}
    with pytest.raises(ConfigError) as err:
        config.build({}, listen="nowhere")
    assert err.value.key == "--listen"


#: target constructor arguments the service fills in itself, never from the config file
INTERNAL = {"run_dir"}


@pytest.mark.parametrize("protocol", sorted(TARGETS))
def test_target_options_are_the_target_constructor(protocol: str) -> None:
    """TARGET_OPTIONS declares exactly the keyword arguments each target class takes, and
    every default of the class passes its own option's check."""
    params = {name: p for name, p in inspect.signature(TARGETS[protocol]).parameters.items()
              if p.kind is inspect.Parameter.KEYWORD_ONLY and name not in INTERNAL}
    schema = config.TARGET_OPTIONS[protocol]
    assert set(schema) == set(params)
    for name, option in schema.items():
        default = params[name].default
        assert option.required is (default is inspect.Parameter.empty), name
        if default not in (inspect.Parameter.empty, None):
            value = list(default) if isinstance(default, tuple) else default
            assert config.checked(value, option, name) == default


def test_driver_options_cover_every_registered_driver() -> None:
    assert set(config.DRIVER_OPTIONS) == set(DRIVERS) == set(config.DRIVER_TARGETS)


def test_compute_agent_reads_its_tables() -> None:
    cfg = compute_config.build({
        "listen": "127.0.0.1:9774", "volume_url": "http://127.0.0.1:8776/",
        "detach_timeout": 2, "detach_retries": 0,
        "qemu": {"accel": "tcg"},
        "images": {"tiny": {"kernel": "/k", "initrd": "/i"}},
        "flavors": {"big": {"ram_mb": 1024, "vcpus": 2}},
    })
    assert cfg.listen_port == 9774 and cfg.volume_url == "http://127.0.0.1:8776"
    assert cfg.detach_timeout == 2.0 and isinstance(cfg.detach_timeout, float)
    assert cfg.qemu.accel == "tcg" and cfg.images["tiny"].initrd == "/i"
    assert set(cfg.flavors) == {"m1.tiny", "big"}


def test_a_compute_url_without_the_version_says_what_to_write() -> None:
    with pytest.raises(ConfigError) as err:
        config.build({"compute": {"url": "http://127.0.0.1:8774/"}})
    assert "should be 'http://127.0.0.1:8774/v2.1'" in str(err.value)
    # Nova's catalog forms: behind a path prefix, with a project id, the legacy /v2
    for url in ("http://proxy/compute/v2.1", "http://nova:8774/v2.1/3f2a", "http://nova/v2/"):
        assert config.build({"compute": {"url": url}}).compute.url == url
