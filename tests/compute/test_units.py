"""Unit tests of the agent's small parts: config, undo stack, mapping slots, microversions."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pytest

from blockyard.compute import config as compute_config
from blockyard.compute.api import _negotiate
from blockyard.compute.store import MAPPING_TRANSITIONS, Instance, MappingStatus, Store
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
