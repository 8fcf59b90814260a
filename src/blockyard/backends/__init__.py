"""Backend drivers, registered by name in one literal table."""

from __future__ import annotations

from typing import Any

from blockyard.backends.base import DriverBase, VolumeDriver
from blockyard.backends.fake import FakeDriver
from blockyard.backends.file import FileDriver
from blockyard.backends.rbd import RbdDriver
from blockyard.errors import ConfigError
from blockyard.model import Target

DRIVERS: dict[str, type[DriverBase]] = {
    "file": FileDriver,
    "rbd": RbdDriver,
    #: in memory, for tests (backends/fake.py)
    "fake": FakeDriver,
}


def load(backend_name: str, driver: str, options: dict[str, Any],
         target: Target) -> VolumeDriver:
    """Instantiate the driver registered as `driver` for the backend `backend_name`, exporting
    through `target` (the service builds the targets and composes each driver with its own)."""
    try:
        cls = DRIVERS[driver]
    except KeyError:
        known = ", ".join(sorted(DRIVERS))
        raise ConfigError(
            f"backends.{backend_name}.driver", f"unknown driver {driver!r} (known: {known})"
        ) from None
    return cls(backend_name, options, target)  # type: ignore[return-value]
