"""The scheduler's filters and weighing, on backends with made-up capacity."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest

from blockyard.backends.base import BackendStats, PoolStats
from blockyard.config import BackendConfig
from blockyard.db.models import VolumeType, VolumeTypeExtraSpec
from blockyard.errors import Invalid
from blockyard.service import scheduler
from blockyard.service.runtime import Backend


@dataclass
class _StatsDriver:
    pool: PoolStats
    broken: bool = False
    calls: list[str] = field(default_factory=list)

    def get_stats(self) -> BackendStats:
        if self.broken:
            raise OSError("backend unreachable")
        return BackendStats("x", "test", "1", "local", (self.pool,))


@dataclass
class _Runtime:
    backends: dict[str, Backend]


def _backend(name: str, *, free: float, total: float = 100.0, provisioned: float = 0.0,
             zone: str = "nova", backend_name: str | None = None, thin: bool = True,
             broken: bool = False) -> Backend:
    pool = PoolStats(name=name, total_capacity_gb=total, free_capacity_gb=free,
                     provisioned_capacity_gb=provisioned, thin_provisioning_support=thin,
                     max_over_subscription_ratio=2.0)
    config = BackendConfig(name=name, driver="file", availability_zone=zone,
                           volume_backend_name=backend_name or name)
    return Backend(config, _StatsDriver(pool, broken), f"host@{name}")  # type: ignore[arg-type]


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
