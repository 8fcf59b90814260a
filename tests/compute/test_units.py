"""Unit tests of the agent's small parts: config, undo stack, mapping slots, microversions."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from pathlib import Path

import pytest
from sqlalchemy import create_engine

from blockyard.compute import config as compute_config
from blockyard.compute.api import _negotiate
from blockyard.compute.store import (
    MAPPING_TRANSITIONS,
    Instance,
    MappingStatus,
    Store,
    add_missing_columns,
)
from blockyard.compute.undo import Undo
from blockyard.errors import ConfigError, Conflict, Invalid, InvalidState, NotFound
from blockyard.rest.errors import ApiError


def test_config_defaults_and_images(tmp_path: Path) -> None:
    cfg = compute_config.build({
        "listen": "127.0.0.1:9999", "volume_url": "http://127.0.0.1:8776/",
        "images": {"tiny": {"kernel": "/k", "initrd": "/i", "append": "console=ttyS0"}},
        "flavors": {"big": {"ram_mb": 512, "vcpus": 2}},
    })
    assert (cfg.listen_host, cfg.listen_port) == ("127.0.0.1", 9999)
    assert cfg.volume_url == "http://127.0.0.1:8776"
    assert cfg.images["tiny"].kernel == "/k"
    assert set(cfg.flavors) == {"m1.tiny", "big"} and cfg.flavors["big"].vcpus == 2


@pytest.mark.parametrize("raw, key", [
    ({"bogus": 1}, "bogus"),
    ({"images": {"x": {"initrd": "/i"}}}, "images.x"),
    ({"images": {"x": {"kernel": "/k", "colour": "red"}}}, "images.x.colour"),
    ({"flavors": {"f": {"ram_mb": 0}}}, "flavors.f.ram_mb"),
    ({"qemu": {"accel": "xen"}}, "qemu.accel"),
    ({"volume_url": "ftp://x"}, "volume_url"),
    # the versioned endpoint where the root belongs: every call would go to /v3/v3/...
    ({"volume_url": "http://127.0.0.1:8776/v3"}, "volume_url"),
    ({"volume_url": "http://127.0.0.1:8776/v3/"}, "volume_url"),
    ({"volume_url": "http://storage/cinder/v3/0123abcd"}, "volume_url"),
    ({"detach_retries": "3"}, "detach_retries"),
])
def test_config_errors_name_the_key(raw: dict[str, object], key: str) -> None:
    """A wrong key or value is a ConfigError naming it (the CLI prints it as one line)."""
    with pytest.raises(ConfigError) as err:
        compute_config.build(raw)
    assert err.value.key == key


def test_undo_runs_newest_first_and_survives_a_failing_step() -> None:
    done: list[str] = []

    async def async_step(name: str) -> None:
        done.append(name)

    def failing() -> None:
        done.append("failing")
        raise RuntimeError("undo broke")

    async def run() -> Undo:
        undo = Undo()
        with pytest.raises(ValueError):
            async with undo:
                undo.push(done.append, "first")
                undo.push(failing)
                undo.push(async_step, "third")
                raise ValueError("step 4 failed")
        return undo

    undo = asyncio.run(run())
    assert done == ["third", "failing", "first"]
    assert [str(e) for e in undo.failures] == ["undo broke"]


def test_undo_commit_keeps_everything() -> None:
    done: list[str] = []

    async def run() -> None:
        async with Undo() as undo:
            undo.push(done.append, "undone")
            undo.commit()

    asyncio.run(run())
    assert done == []


def _instance(store: Store, ident: str = "i1") -> Instance:
    return store.add_instance(Instance(id=ident, name=ident, project_id="p", user_id="u",
                                       status="ACTIVE", qmp_socket=f"/tmp/{ident}.sock"))


def test_slots_are_handed_out_in_order_and_never_twice(tmp_path: Path) -> None:
    store = Store(tmp_path / "c.sqlite")
    inst = _instance(store)
    a = store.reserve(inst, "v-a", None)
    b = store.reserve(inst, "v-b", None)
    assert (a.device_name, b.device_name) == ("/dev/vdb", "/dev/vdc")
    assert a.status == MappingStatus.ATTACHING
    with pytest.raises(Invalid):
        store.reserve(inst, "v-a", None)  # one volume once per instance
    with pytest.raises(Conflict):
        store.reserve(inst, "v-c", "/dev/vdb")  # a taken slot
    store.remove_mapping(a.id)
    assert store.reserve(inst, "v-c", None).device_name == "/dev/vdb"
    assert len(a.node_name) <= 31 and a.serial == "v-a"


def test_mapping_table_names_mapping_statuses() -> None:
    known = set(MappingStatus)
    for name, t in MAPPING_TRANSITIONS.items():
        assert set(t.allowed) | {t.busy} <= known, name
        assert {t.ok, t.error} <= known | {None}, name


def test_mapping_statuses_move_only_as_the_table_says(tmp_path: Path) -> None:
    store = Store(tmp_path / "c.sqlite")
    m = store.reserve(_instance(store), "v-a", None)
    with pytest.raises(InvalidState) as info:  # not attached yet: no detach
        store.begin_mapping(m.id, "detach")
    assert info.value.current == "attaching"
    assert not store.fail_mapping(m.id, "detach")
    assert store.mapping(m.id).status == MappingStatus.ATTACHING
    assert store.finish_mapping(m.id, "attach")
    assert not store.finish_mapping(m.id, "attach")  # once
    store.begin_mapping(m.id, "detach")
    assert store.mapping(m.id).status == MappingStatus.DETACHING
    assert store.fail_mapping(m.id, "detach")  # the guest kept the disk
    assert store.mapping(m.id).status == MappingStatus.ATTACHED
    with pytest.raises(ValueError):
        store.finish_mapping(m.id, "detach")  # a detach ends by removing the row
    with pytest.raises(ValueError):
        store.set_mapping(m.id, status=MappingStatus.DETACHING)
    with pytest.raises(NotFound):
        store.begin_mapping("nope", "detach")


def test_racing_detaches_of_a_mapping_exactly_one_wins(tmp_path: Path) -> None:
    store = Store(tmp_path / "c.sqlite")
    m = store.reserve(_instance(store), "v-a", None)
    store.finish_mapping(m.id, "attach")
    start = threading.Barrier(2)
    lost: list[InvalidState] = []

    def detach() -> None:
        start.wait()
        try:
            store.begin_mapping(m.id, "detach")
        except InvalidState as exc:
            lost.append(exc)

    threads = [threading.Thread(target=detach) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(lost) == 1 and lost[0].current == "detaching"
    assert store.mapping(m.id).status == MappingStatus.DETACHING


@pytest.mark.parametrize("wanted, expected", [
    (None, (2, 1)), ("2.1", (2, 1)), ("2.79", (2, 79)), ("latest", (2, 89)),
])
def test_microversions(wanted: str | None, expected: tuple[int, int]) -> None:
    assert _negotiate(wanted) == expected


@pytest.mark.parametrize("wanted, status", [("2.200", 406), ("1.0", 406), ("two", 400)])
def test_bad_microversions(wanted: str, status: int) -> None:
    with pytest.raises(ApiError) as err:
        _negotiate(wanted)
    assert err.value.status == status


def test_a_volume_url_with_the_version_says_what_to_write() -> None:
    with pytest.raises(ConfigError) as err:
        compute_config.build({"volume_url": "http://127.0.0.1:8776/v3"})
    assert "should be 'http://127.0.0.1:8776'" in str(err.value)
    # a root behind a path prefix (a proxy) is a root
    assert compute_config.build({"volume_url": "http://proxy/volume/"}).volume_url == \
        "http://proxy/volume"


#: the agent's tables as the first released agent (before issue 13) created them
_OLD_SCHEMA = [
    """CREATE TABLE instances (id VARCHAR(36) NOT NULL, name VARCHAR(255) NOT NULL,
       project_id VARCHAR(255) NOT NULL, user_id VARCHAR(255) NOT NULL,
       status VARCHAR(16) NOT NULL, image VARCHAR(255), flavor VARCHAR(255),
       qmp_socket VARCHAR(1024) NOT NULL, console_socket VARCHAR(1024), pid INTEGER,
       adopted BOOLEAN NOT NULL, fault VARCHAR(1024), created_at DATETIME NOT NULL,
       updated_at DATETIME NOT NULL, PRIMARY KEY (id))""",
    """CREATE TABLE block_device_mappings (id VARCHAR(36) NOT NULL,
       instance_id VARCHAR(36) NOT NULL, volume_id VARCHAR(36) NOT NULL,
       project_id VARCHAR(255) NOT NULL, device_name VARCHAR(32) NOT NULL,
       status VARCHAR(16) NOT NULL, attachment_id VARCHAR(36), protocol VARCHAR(16),
       connected BOOLEAN NOT NULL, device JSON, tag VARCHAR(60),
       delete_on_termination BOOLEAN NOT NULL, created_at DATETIME NOT NULL,
       PRIMARY KEY (id), UNIQUE (instance_id, volume_id), UNIQUE (instance_id, device_name),
       FOREIGN KEY(instance_id) REFERENCES instances (id) ON DELETE CASCADE)""",
    """INSERT INTO instances VALUES ('i1', 'vm', 'p', 'u', 'ACTIVE', 'tiny', 'm1.tiny',
       '/run/q.sock', NULL, 42, 0, NULL, '2026-01-01 00:00:00', '2026-01-01 00:00:00')""",
    """INSERT INTO block_device_mappings VALUES ('m1', 'i1', 'v1', 'p', '/dev/vdb',
       'attached', 'a1', 'local', 1, NULL, NULL, 0, '2026-01-01 00:00:00')""",
]


def test_a_state_file_of_the_first_release_gets_the_new_columns(tmp_path: Path) -> None:
    """An upgraded agent keeps its instances and mappings: the columns added since (swap,
    boot from volume) are added, nullable, and the rows read as before."""
    path = tmp_path / "compute.sqlite"
    with sqlite3.connect(path) as db:
        for statement in _OLD_SCHEMA:
            db.execute(statement)
    store = Store(path)
    try:
        m = store.mapping("m1")
        assert (m.volume_id, m.status, m.attachment_id) == ("v1", "attached", "a1")
        assert (m.node, m.swap, m.boot_index, m.node_name) == (None, None, None,
                                                               "bv" + "m1")
        assert store.instance("i1").build_volumes is None
        store.set_mapping("m1", boot_index=0)  # the new columns take values
        assert store.mapping("m1").boot_index == 0
    finally:
        store.close()
    # a second start finds nothing left to add
    assert add_missing_columns(create_engine(f"sqlite:///{path}")) == []
