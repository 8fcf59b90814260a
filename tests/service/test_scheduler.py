"""The scheduler's filters and weighing, on backends with made-up capacity and capabilities,
and the services table (disabled and frozen backends) in a real database."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import delete, update

from blockyard.backends.base import BackendStats, PoolStats
from blockyard.config import BackendConfig
from blockyard.db.engine import Database
from blockyard.db.models import Service, VolumeType, VolumeTypeExtraSpec
from blockyard.errors import Invalid
from blockyard.service import capabilities, scheduler, services
from blockyard.service.runtime import Backend


@dataclass
class _StatsDriver:
    pool: PoolStats
    broken: bool = False
    protocol: str = "local"
    vendor: str = "test"
    calls: list[str] = field(default_factory=list)

    def get_stats(self) -> BackendStats:
        if self.broken:
            raise OSError("backend unreachable")
        return BackendStats("x", self.vendor, "1", self.protocol, (self.pool,))


@pytest.fixture(scope="module")
def db(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Database]:
    database = Database(f"sqlite:///{tmp_path_factory.mktemp('db') / 'b.sqlite'}")
    database.migrate()
    yield database
    database.dispose()


#: the database of the running test, which every `_Runtime` uses
_DB: list[Database] = []


@pytest.fixture(autouse=True)
def _fresh_services(db: Database) -> None:
    """Each test starts with no service rows (so nothing is disabled or frozen)."""
    with db.write() as s:
        s.execute(delete(Service))
    _DB[:] = [db]


@dataclass
class _Config:
    host: str = "host"


@dataclass
class _Runtime:
    backends: dict[str, Backend]
    db: Database = field(default_factory=lambda: _DB[-1])
    config: _Config = field(default_factory=_Config)


def _backend(name: str, *, free: float, total: float = 100.0, provisioned: float = 0.0,
             zone: str = "nova", backend_name: str | None = None, thin: bool = True,
             broken: bool = False, protocol: str = "local", vendor: str = "test") -> Backend:
    pool = PoolStats(name=name, total_capacity_gb=total, free_capacity_gb=free,
                     provisioned_capacity_gb=provisioned, thin_provisioning_support=thin,
                     max_over_subscription_ratio=2.0)
    config = BackendConfig(name=name, driver="file", availability_zone=zone,
                           volume_backend_name=backend_name or name)
    driver = _StatsDriver(pool, broken, protocol, vendor)
    return Backend(config, driver, f"host@{name}")  # type: ignore[arg-type]


def _type(**specs: str) -> VolumeType:
    vt = VolumeType(id="t", name="t", is_public=True)
    vt.extra_specs = [VolumeTypeExtraSpec(key=k, value=v) for k, v in specs.items()]
    return vt


def _pick(backends: list[Backend], vt: VolumeType, size: int, zone: str | None = None) -> str:
    rt: Any = _Runtime({b.name: b for b in backends})
    return scheduler.pick(rt, vt, size, zone).name


def test_most_free_capacity_wins() -> None:
    assert _pick([_backend("a", free=10), _backend("b", free=50)], _type(), 1) == "b"


def test_volume_backend_name_filters() -> None:
    backends = [_backend("a", free=10, backend_name="gold"), _backend("b", free=50)]
    assert _pick(backends, _type(volume_backend_name="gold"), 1) == "a"
    with pytest.raises(scheduler.NoValidBackend):
        _pick(backends, _type(volume_backend_name="silver"), 1)


def test_zone_filters_and_unknown_zone_is_invalid() -> None:
    backends = [_backend("a", free=10, zone="az1"), _backend("b", free=50, zone="az2")]
    assert _pick(backends, _type(), 1, "az1") == "a"
    with pytest.raises(Invalid):
        _pick(backends, _type(), 1, "az9")


def test_capacity_filters_thick_and_thin() -> None:
    thick = _backend("thick", free=5, thin=False)
    with pytest.raises(scheduler.NoValidBackend):
        _pick([thick], _type(), 6)
    assert _pick([thick], _type(), 5) == "thick"
    # thin: 100 GiB total at ratio 2 with 190 provisioned leaves 10 GiB of virtual room
    thin = _backend("thin", free=80, provisioned=190)
    assert _pick([thin], _type(), 10) == "thin"
    with pytest.raises(scheduler.NoValidBackend):
        _pick([thin], _type(), 11)


def test_a_backend_that_cannot_report_is_skipped() -> None:
    assert _pick([_backend("a", free=90, broken=True), _backend("b", free=5)], _type(), 1) == "b"


# ---------------------------------------------------------------------------- capabilities


def test_storage_protocol_spec_picks_the_backend_with_that_target() -> None:
    backends = [_backend("i", free=10, protocol="iSCSI"), _backend("n", free=50, protocol="nbd")]
    assert _pick(backends, _type(storage_protocol="iSCSI"), 1) == "i"
    assert _pick(backends, _type(storage_protocol="iscsi"), 1) == "i"  # Cinder's variants
    assert _pick(backends, _type(storage_protocol="<in> nb"), 1) == "n"
    assert _pick(backends, _type(**{"capabilities:storage_protocol": "nbd"}), 1) == "n"
    assert _pick(backends, _type(storage_protocol="<or> ceph <or> iSCSI"), 1) == "i"
    with pytest.raises(scheduler.NoValidBackend):
        _pick(backends, _type(storage_protocol="ceph"), 1)


def test_fits_is_the_same_match_for_one_backend() -> None:
    iscsi = _backend("i", free=10, protocol="iSCSI")
    assert scheduler.fits(iscsi, _type(storage_protocol="<in> SCSI", volume_backend_name="i"))
    assert not scheduler.fits(iscsi, _type(storage_protocol="nbd"))
    assert not scheduler.fits(_backend("b", free=10, broken=True), _type())


def test_other_scopes_are_ignored_and_unknown_capabilities_refused() -> None:
    backends = [_backend("a", free=10)]
    assert _pick(backends, _type(**{"vendor:compression": "on", "RESKEY:x": "y"}), 1) == "a"
    with pytest.raises(scheduler.NoValidBackend):
        _pick(backends, _type(colour="blue"), 1)
    with pytest.raises(scheduler.NoValidBackend):
        _pick(backends, _type(**{"capabilities:colour": "blue"}), 1)


def test_operators_on_reported_capabilities() -> None:
    backends = [_backend("small", free=10, total=20, vendor="Acme"),
                _backend("big", free=50, total=500, vendor="Zeta")]
    assert _pick(backends, _type(total_capacity_gb="<= 100"), 1) == "small"
    assert _pick(backends, _type(total_capacity_gb=">= 100"), 1) == "big"
    assert _pick(backends, _type(total_capacity_gb="== 20"), 1) == "small"
    assert _pick(backends, _type(total_capacity_gb="!= 20"), 1) == "big"
    assert _pick(backends, _type(total_capacity_gb="= 30"), 1) == "big"
    assert _pick(backends, _type(vendor_name="s< B"), 1) == "small"
    assert _pick(backends, _type(vendor_name="s== Acme"), 1) == "small"
    assert _pick(backends, _type(vendor_name="s!= Acme"), 1) == "big"
    assert _pick(backends, _type(vendor_name="Zeta"), 1) == "big"
    assert _pick(backends, _type(multiattach="<is> True", thin_provisioning_support="<is> t"),
                 1) == "big"
    with pytest.raises(scheduler.NoValidBackend):
        _pick(backends, _type(multiattach="<is> False"), 1)


@pytest.mark.parametrize(("value", "requirement", "expected"), [
    (None, None, True), ("x", None, False), (None, "x", False), ("x", "x", True),
    (10, ">= 5", True), ("ten", ">= 5", False), (10, ">=", False), ("abc", "<in> b", True),
    (True, "<in> b", False), ("b", "<or>", False), ("b", "<or> a <or> b", True),
    ("c", "<or> a <or> b", False), (False, "<is> False", True), ("on", "<is> True", True),
])
def test_match(value: Any, requirement: str | None, expected: bool) -> None:
    assert capabilities.match(value, requirement) is expected


# ---------------------------------------------------------------------------- services


def _register(backends: list[Backend]) -> Any:
    rt: Any = _Runtime({b.name: b for b in backends})
    services.register(rt)
    return rt


def test_a_disabled_or_frozen_backend_is_not_chosen() -> None:
    backends = [_backend("a", free=10), _backend("b", free=50)]
    rt = _register(backends)
    assert scheduler.pick(rt, _type(), 1, None).name == "b"
    services.set_disabled(rt, "host@b", services.VOLUME, True, "maintenance")
    assert scheduler.pick(rt, _type(), 1, None).name == "a"
    services.set_frozen(rt, "host@a", True)
    with pytest.raises(scheduler.NoValidBackend):
        scheduler.pick(rt, _type(), 1, None)
    services.set_frozen(rt, "host@a", False)
    services.set_disabled(rt, "host@b", services.VOLUME, False)
    assert scheduler.pick(rt, _type(), 1, None).name == "b"


def test_freeze_twice_and_unknown_hosts_are_refused() -> None:
    rt = _register([_backend("a", free=10), _backend("b", free=50)])
    services.set_frozen(rt, "host@a", True)
    with pytest.raises(Invalid, match=r"No service could be changed: frozen in \['host@a'\] "
                                      r"must be False"):
        services.set_frozen(rt, "host@a", True)
    with pytest.raises(Invalid, match="No service found with host=elsewhere"):
        services.set_frozen(rt, "elsewhere", True)
    with pytest.raises(Invalid, match="different clusters"):  # host level: both backends
        services.set_frozen(rt, "host", True)


def test_host_matching_levels() -> None:
    assert services.host_matches("h@b", "h") and services.host_matches("h", "h")
    assert services.host_matches("h@b", "h@b") and services.host_matches("h@b#p", "h@b")
    assert not services.host_matches("h@b", "h@b#p")
    assert not services.host_matches("hx@b", "h") and not services.host_matches("h@bx", "h@b")


def test_a_service_left_behind_by_a_host_rename_does_not_stand_for_the_backend() -> None:
    rt = _register([_backend("a", free=10)])
    services.set_disabled(rt, "host@a", services.VOLUME, True)
    rt.config.host = "renamed"
    rt.backends["a"].service_host = "renamed@a"
    services.register(rt)
    assert scheduler.pick(rt, _type(), 1, None).name == "a"
    shown = {(v.host, v.backend, v.disabled) for v in services.listing(rt, binary=services.VOLUME)}
    assert shown == {("host@a", None, True), ("renamed@a", "a", False)}


def test_state_follows_the_heartbeat() -> None:
    rt = _register([_backend("a", free=10)])
    assert all(v.is_up for v in services.listing(rt))
    long_ago = datetime.now(UTC).replace(tzinfo=None) - timedelta(minutes=5)
    with rt.db.write() as s:
        s.execute(update(Service).values(updated_at=long_ago))
    assert not any(v.is_up for v in services.listing(rt))
    beat = services.Heartbeat(rt, interval=0.05).start()
    try:
        deadline = time.monotonic() + 10
        while not all(v.is_up for v in services.listing(rt)):
            assert time.monotonic() < deadline
            time.sleep(0.05)
    finally:
        beat.stop()
