"""The compute agent's configuration: a TOML file, or defaults good for one host.

Example::

    listen = "127.0.0.1:8774"
    state_dir = "/var/lib/blockyard-compute"
    host = "compute1"                       # the connector's host (default: this machine)
    volume_url = "http://127.0.0.1:8776"    # the blockyard volume service (Cinder v3 API)

    [qemu]
    binary = "qemu-system-x86_64"
    machine = "pc"                          # i440fx: virtio-blk-pci hot-plugs onto pci.0
    accel = "auto"                          # kvm where /dev/kvm runs guests, else tcg

    [images.tiny]                           # what POST /servers' imageRef may name
    kernel = "/srv/images/vmlinuz"
    initrd = "/srv/images/initrd.img"
    append = "console=ttyS0 quiet"
    # disk = "/srv/images/root.qcow2"       # a disk image instead of (or with) a kernel

    [flavors.small]                         # what flavorRef may name (m1.tiny is built in)
    ram_mb = 128
    vcpus = 1

Every error names the key it is about (`ConfigError.key`), as in `blockyard.config`.
"""

from __future__ import annotations

import socket
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from blockyard.config import _expect, parse_listen
from blockyard.errors import ConfigError

DEFAULT_LISTEN = "127.0.0.1:8774"
DEFAULT_VOLUME_URL = "http://127.0.0.1:8776"
_TOP_KEYS = {"listen", "state_dir", "host", "volume_url", "qemu", "images", "flavors",
             "detach_timeout", "detach_retries"}
_QEMU_KEYS = {"binary", "machine", "accel"}
_IMAGE_KEYS = {"kernel", "initrd", "append", "disk"}
_FLAVOR_KEYS = {"ram_mb", "vcpus"}


@dataclass(frozen=True)
class Image:
    name: str
    kernel: str | None = None
    initrd: str | None = None
    append: str = ""
    disk: str | None = None


@dataclass(frozen=True)
class Flavor:
    name: str
    ram_mb: int = 128
    vcpus: int = 1


@dataclass(frozen=True)
class QemuConfig:
    binary: str = "qemu-system-x86_64"
    machine: str = "pc"
    #: "auto" (kvm where it works, else tcg), "kvm" or "tcg"
    accel: str = "auto"


@dataclass(frozen=True)
class ComputeConfig:
    listen_host: str = "127.0.0.1"
    listen_port: int = 8774
    state_dir: Path = Path("var/compute")
    host: str = field(default_factory=socket.gethostname)
    volume_url: str = DEFAULT_VOLUME_URL
    qemu: QemuConfig = QemuConfig()
    images: dict[str, Image] = field(default_factory=dict)
    flavors: dict[str, Flavor] = field(
        default_factory=lambda: {"m1.tiny": Flavor("m1.tiny", 128, 1)})
    #: how long one device_del waits for the guest, and how often it is sent again after the
    #: first (Nova: 8 requests, 20 s each)
    detach_timeout: float = 20.0
    detach_retries: int = 7

    @property
    def database_path(self) -> Path:
        return self.state_dir / "compute.sqlite"


def _unknown(table: dict[str, Any], allowed: set[str], prefix: str) -> None:
    for key in table:
        if key not in allowed:
            raise ConfigError(f"{prefix}{key}", "is not a known key")


def _image(name: str, table: Any) -> Image:
    key = f"images.{name}"
    _expect(table, dict, key)
    _unknown(table, _IMAGE_KEYS, key + ".")
    values = {k: _expect(v, str, f"{key}.{k}") for k, v in table.items()}
    if not values.get("kernel") and not values.get("disk"):
        raise ConfigError(key, "needs a kernel or a disk")
    if values.get("initrd") and not values.get("kernel"):
        raise ConfigError(f"{key}.initrd", "needs a kernel")
    return Image(name=name, **values)


def _flavor(name: str, table: Any) -> Flavor:
    key = f"flavors.{name}"
    _expect(table, dict, key)
    _unknown(table, _FLAVOR_KEYS, key + ".")
    values = {k: _expect(v, int, f"{key}.{k}") for k, v in table.items()}
    for k, v in values.items():
        if v < 1:
            raise ConfigError(f"{key}.{k}", "must be at least 1")
    return Flavor(name=name, **values)


def build(raw: dict[str, Any], *, state_dir: str | None = None,
          listen: str | None = None) -> ComputeConfig:
    """A `ComputeConfig` from a parsed TOML table; command-line values win over the file."""
    _unknown(raw, _TOP_KEYS, "")
    host, port = parse_listen(listen or raw.get("listen", DEFAULT_LISTEN))
    qemu_raw = _expect(raw.get("qemu", {}), dict, "qemu")
    _unknown(qemu_raw, _QEMU_KEYS, "qemu.")
    qemu = QemuConfig(**{k: _expect(v, str, f"qemu.{k}") for k, v in qemu_raw.items()})
    if qemu.accel not in ("auto", "kvm", "tcg"):
        raise ConfigError("qemu.accel", "must be auto, kvm or tcg")
    images = {name: _image(name, t)
              for name, t in _expect(raw.get("images", {}), dict, "images").items()}
    flavors = ComputeConfig().flavors
    flavors.update({name: _flavor(name, t)
                    for name, t in _expect(raw.get("flavors", {}), dict, "flavors").items()})
    optional: dict[str, Any] = {}
    if "host" in raw:
        optional["host"] = _expect(raw["host"], str, "host")
    if "detach_timeout" in raw:
        optional["detach_timeout"] = float(_expect(raw["detach_timeout"], (int, float),
                                                   "detach_timeout"))
    if "detach_retries" in raw:
        optional["detach_retries"] = _expect(raw["detach_retries"], int, "detach_retries")
    volume_url = _expect(raw.get("volume_url", DEFAULT_VOLUME_URL), str, "volume_url")
    if not volume_url.startswith(("http://", "https://")):
        raise ConfigError("volume_url", "must be an http:// or https:// URL")
    return ComputeConfig(
        listen_host=host, listen_port=port,
        state_dir=Path(state_dir or _expect(raw.get("state_dir", "var/compute"), str,
                                            "state_dir")),
        volume_url=volume_url.rstrip("/"), qemu=qemu, images=images, flavors=flavors,
        **optional)


def load(path: str | None, *, state_dir: str | None = None,
         listen: str | None = None) -> ComputeConfig:
    raw: dict[str, Any] = {}
    if path:
        try:
            raw = tomllib.loads(Path(path).read_text())
        except OSError as exc:
            raise ConfigError(path, f"cannot read: {exc.strerror}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(path, f"is not valid TOML: {exc}") from None
    return build(raw, state_dir=state_dir, listen=listen)
