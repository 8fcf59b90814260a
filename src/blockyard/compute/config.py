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

    [auth]
    strategy = "keystone"                   # or "noauth" (the default: local use only)
    policy_file = "/etc/blockyard/compute-policy.yaml"   # overrides of Nova's rule defaults

    [keystone_authtoken]                    # keystonemiddleware's options, as in nova.conf
    www_authenticate_uri = "http://keystone:5000"
    auth_url = "http://keystone:5000"
    username = "nova"
    password = "secret"
    project_name = "service"

    [service_user]                          # the agent's own user (keystoneauth1 password):
    auth_url = "http://keystone:5000"       # its token goes beside the user's (X-Service-Token)
    username = "nova"                       # and alone for work nobody asked for (recovery);
    password = "secret"                     # it needs the service role, and admin (or a policy
    project_name = "service"                # granting it) to clean up other projects' volumes

Every error names the key it is about (`ConfigError.key`), as in `blockyard.config`.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import urllib.parse
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from blockyard.config import (
    HOST_NAME,
    AuthConfig,
    Option,
    Schema,
    a_path,
    above,
    between,
    http_url,
    listen_address,
    named_tables,
    one_of,
    parse_listen,
    read_auth,
    read_table,
    read_toml,
    text,
)
from blockyard.errors import ConfigError
from blockyard.service_auth import ServiceUser

DEFAULT_LISTEN = "127.0.0.1:8774"
DEFAULT_VOLUME_URL = "http://127.0.0.1:8776"

#: a path ending in the API version (and perhaps a project): the versioned endpoint, not the root
_VERSIONED = re.compile(r"/v[1-3](\.\d+)?(/[^/]+)?/?$")


def volume_root_url(value: str) -> str:
    """The volume service's root URL: the agent appends ``/v3/...`` itself, so a URL that
    already ends in the API version would make every call go to ``/v3/v3/...`` (404)."""
    value = http_url(value)
    path = urllib.parse.urlsplit(value).path
    if _VERSIONED.search(path):
        root = value[:len(value) - len(path)] + _VERSIONED.sub("", path)
        raise ValueError(f"is the volume service's root URL, without the API version (the "
                         f"agent adds /v3/...): {value!r} should be {root!r}")
    return value


TOP: Schema = {
    "listen": Option(str, listen_address),
    "state_dir": Option(str, a_path),
    "host": HOST_NAME,  # the connector's host: an NBD export's allowed client
    "volume_url": Option(str, volume_root_url),
    "qemu": Option(dict, default={}),
    "images": Option(dict, default={}),
    "flavors": Option(dict, default={}),
    "detach_timeout": Option(float, above(0)),
    "detach_retries": Option(int, between(0, 100)),
    # [auth], [keystone_authtoken], [service_user]: as the volume service reads them
    "auth": Option(dict),
    "keystone_authtoken": Option(dict),
    "service_user": Option(dict),
}
QEMU: Schema = {
    "binary": Option(str, a_path),
    "machine": Option(str, text()),
    "accel": Option(str, one_of("auto", "kvm", "tcg")),
}
IMAGE: Schema = {
    "kernel": Option(str, a_path),
    "initrd": Option(str, a_path),
    "append": Option(str),
    "disk": Option(str, a_path),
}
FLAVOR: Schema = {
    "ram_mb": Option(int, between(16, 1 << 20)),
    "vcpus": Option(int, between(1, 255)),
}


#: the namespace of image ids: an image's id is derived from its name, so it is the same on
#: every start and every host with the same configuration
IMAGE_NAMESPACE = uuid.UUID("5b0e3f52-7a86-4f0c-9a57-1c1b0c4e8d21")


@dataclass(frozen=True)
class Image:
    name: str
    kernel: str | None = None
    initrd: str | None = None
    append: str = ""
    disk: str | None = None

    @property
    def id(self) -> str:
        """The image's stable id (clients resolve ``--image NAME`` to it, then send it)."""
        return str(uuid.uuid5(IMAGE_NAMESPACE, self.name))


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
    #: [auth] (strategy, policy file of Nova rule overrides), [keystone_authtoken],
    #: [service_user]: read as the volume service reads them (`blockyard.config.read_auth`)
    auth: AuthConfig = field(default_factory=AuthConfig)

    @property
    def service_user(self) -> ServiceUser | None:
        """The agent's own Keystone user, under keystone ([service_user], else the
        credentials of [keystone_authtoken])."""
        if not self.auth.keystone or self.auth.service_user is None:
            return None
        return ServiceUser.of(self.auth.service_user)

    def image(self, ref: str) -> Image | None:
        """The image `ref` names: its name or its id (`Image.id`)."""
        found = self.images.get(ref)
        if found is None:
            found = next((i for i in self.images.values() if i.id == ref), None)
        return found

    @property
    def database_path(self) -> Path:
        return self.state_dir / "compute.sqlite"


def _image(name: str, table: dict[str, Any]) -> Image:
    key = f"images.{name}"
    values = read_table(table, IMAGE, key)
    if not values.get("kernel") and not values.get("disk"):
        raise ConfigError(key, "needs a kernel or a disk")
    if values.get("initrd") and not values.get("kernel"):
        raise ConfigError(f"{key}.initrd", "needs a kernel")
    return Image(name=name, **values)


def build(raw: dict[str, Any], *, state_dir: str | None = None,
          listen: str | None = None) -> ComputeConfig:
    """A `ComputeConfig` from a parsed TOML table; command-line values win over the file."""
    top = read_table(raw, TOP, "")
    if listen is not None:
        host, port = parse_listen(listen, "--listen")
    else:
        host, port = top.get("listen") or parse_listen(DEFAULT_LISTEN)
    qemu = QemuConfig(**read_table(top["qemu"], QEMU, "qemu"))
    images = {name: _image(name, t) for name, t in named_tables(top["images"], "images").items()}
    flavors = ComputeConfig().flavors
    flavors.update({name: Flavor(name=name, **read_table(t, FLAVOR, f"flavors.{name}"))
                    for name, t in named_tables(top["flavors"], "flavors").items()})
    optional = {k: top[k] for k in ("host", "detach_timeout", "detach_retries") if k in top}
    return ComputeConfig(
        listen_host=host, listen_port=port,
        state_dir=Path(state_dir or top.get("state_dir", "var/compute")),
        volume_url=top.get("volume_url", DEFAULT_VOLUME_URL).rstrip("/"), qemu=qemu,
        images=images, flavors=flavors, auth=read_auth(top), **optional)


def check_files(config: ComputeConfig) -> None:
    """What the agent will start guests with is there: each image's files and the QEMU
    binary. Checked when the agent starts, not when a config is built (tests and tools build
    configs of files elsewhere): a typo is then one line naming the key, not a server that
    ends in ERROR at its first boot."""
    if shutil.which(config.qemu.binary) is None:
        raise ConfigError("qemu.binary", f"no such program: {config.qemu.binary}")
    for image in config.images.values():
        for key in ("kernel", "initrd", "disk"):
            path = getattr(image, key)
            if path is not None and not os.path.isfile(path):
                raise ConfigError(f"images.{image.name}.{key}", f"no such file: {path}")


def load(path: str | None, *, state_dir: str | None = None,
         listen: str | None = None) -> ComputeConfig:
    raw = read_toml(path) if path else {}
    return build(raw, state_dir=state_dir, listen=listen)
