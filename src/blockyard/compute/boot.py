"""Servers created with volumes: Nova's ``block_device_mapping_v2`` on ``POST /servers``.

Each entry names a volume the server gets before its first instruction runs:

    source_type volume   an existing, available volume
    source_type blank    a new empty volume of ``volume_size`` GiB the agent creates
    source_type image    a new volume of ``volume_size`` GiB the agent creates and fills with
                         the ``disk`` file of one of its configured images

``boot_index`` 0 is the disk the guest boots from (the firmware boots it: no ``-kernel``,
and the server's ``image`` is ""); other indexes, -1 and none are extra disks. Without a
boot_index 0 an ``imageRef`` boots the guest as usual and the volumes are extra disks.
``delete_on_termination`` (default false, as Nova's) makes server delete delete the volume.

`parse` checks the request as Nova does (its schema, then `nova.block_device`'s and the
compute API's rules) and words refusals in Nova's sentences; `check_sources` asks the volume
service about the existing volumes. Both run before anything is created: bad input is a 400
and leaves nothing behind. `build` then runs in the background while the server is BUILD:

    1. create the image and blank volumes, wait until they are available   undo: delete them
    2. fill each image volume: attachment on this host, connect_volume, copy the image's
       disk (holes and zero blocks are skipped: a new volume reads as zeros), flush,
       disconnect, attachment delete                                  undo: the same teardown
    3. start QEMU paused (``-S``)                                      undo: stop it
    4. attach every volume to the paused guest (`Agent._attach_steps`), the boot volume
       first with bootindex 0                        undo: the attach's own undo (after 3's)
    5. ``system_reset`` (the firmware's boot order is made at reset), ``cont``: the
       firmware finds its boot disk

A failure anywhere undoes every earlier step, newest first (QEMU stops before its disks are
unplugged: a paused guest never acknowledges an unplug), and the server ends in ERROR with
the failure as its fault, as Nova's does. The server's lock is held from its creation to the
end of the build (a delete waits for it); a restart that finds the server still BUILD undoes
the build from what the rows recorded (`Agent._abandon_build`: the instance's
``build_volumes``, its mappings, the attachments made for it).

This is one of the agent's workflows kept in a module of its own: it works with the
`Agent`'s internals (instance locks, guests, background tasks, the attach steps) as
manager.py's own workflows do.
"""

from __future__ import annotations

import asyncio
import dataclasses
import errno
import logging
import os
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from blockyard import failpoints
from blockyard.connectors import VolumeConnector, connector_for
from blockyard.errors import Invalid
from blockyard.exec import stop
from blockyard.identity import Identity
from blockyard.model import ConnectionInfo
from blockyard.model import parse as parse_info
from blockyard.rest import schema
from blockyard.rest.errors import ApiError

from . import launcher
from .config import Image
from .manager import Agent
from .store import Instance, InstanceStatus
from .undo import Undo
from .volume_api import Caller, VolumeApiError, VolumeView

log = logging.getLogger(__name__)

#: seconds a volume the agent created may take to become available (Nova waits
#: block_device_allocate_retries (60) x block_device_allocate_retries_interval (3 s))
VOLUME_TIMEOUT = 180.0
#: bytes copied per read when filling a volume from an image
COPY_CHUNK = 1024 * 1024
#: disks one server can be created with: vda to vdz
MAX_DEVICES = 26
GiB = 1024**3
#: the device name of the boot volume unless the request names one
ROOT_DEVICE = "/dev/vda"

# Nova's block_device_mapping_v2 item (schemas/block_device_mapping.py and its legacy base;
# tag from 2.32, volume_type from 2.67): facts, written here in this module's form
_BDM_ITEM: dict[str, Any] = {
    "type": "object",
    "properties": {
        "source_type": {"type": "string", "enum": ["volume", "image", "snapshot", "blank"]},
        "uuid": {"type": "string", "minLength": 1, "maxLength": 255,
                 "pattern": "^[a-zA-Z0-9._-]*$"},
        "image_id": {"type": "string"},
        "destination_type": {"type": "string", "enum": ["local", "volume"]},
        "guest_format": {"type": "string", "maxLength": 255},
        "device_type": {"type": "string", "maxLength": 255},
        "disk_bus": {"type": "string", "maxLength": 255},
        "boot_index": {"type": ["integer", "string", "null"], "pattern": "^-?[0-9]+$"},
        "virtual_name": {"type": "string", "maxLength": 255},
        "volume_id": schema.uuid,
        "snapshot_id": {"type": "string"},
        "volume_size": {"type": ["integer", "string", "null"], "pattern": "^[0-9]+$",
                        "minimum": 0, "maximum": schema.DB_MAX_INT},
        "device_name": {"type": "string", "minLength": 1, "maxLength": 255,
                        "pattern": "^[a-zA-Z0-9._/-]*$"},
        "delete_on_termination": schema.boolean,
        "no_device": {},
        "connection_info": {"type": "string", "maxLength": 16777215},
        "tag": {"type": "string", "minLength": 1, "maxLength": 60, "pattern": "^[^,/]*$"},
        "volume_type": {"type": ["string", "null"], "minLength": 0, "maxLength": 255},
    },
    "additionalProperties": False,
}


def _bdm_schema(*, tag: bool, volume_type: bool) -> dict[str, Any]:
    item = dict(_BDM_ITEM, properties={
        k: v for k, v in _BDM_ITEM["properties"].items()
        if (k != "tag" or tag) and (k != "volume_type" or volume_type)})
    return {"type": "object",
            "properties": {"block_device_mapping_v2": {"type": "array", "items": item}}}


#: by microversion, as Nova's: tag at 2.32, gone 2.33-2.41, back at 2.42; volume_type at 2.67
_SCHEMAS = {(tag, vt): _bdm_schema(tag=tag, volume_type=vt)
            for tag in (False, True) for vt in (False, True)}


def bdm_schema(version: tuple[int, int]) -> dict[str, Any]:
    tag = version == (2, 32) or version >= (2, 42)
    return _SCHEMAS[(tag, version >= (2, 67))]

_TRUE = {"true", "1", "on", "yes", "y", "t"}


def _invalid(details: str) -> ApiError:
    """Nova's InvalidBDM* family: a 400 that starts with the same words."""
    return ApiError(400, f"Block Device Mapping is Invalid: {details}")


@dataclass(frozen=True)
class BlockDevice:
    """One checked entry of block_device_mapping_v2."""

    source_type: str
    #: the volume's id (volume), the image's name (image); None for blank
    uuid: str | None
    #: 0 boots; None: not a boot device (Nova's -1 and null)
    boot_index: int | None
    #: GiB of the volume the agent creates (image, blank); None for an existing volume
    volume_size: int | None
    delete_on_termination: bool
    device_name: str | None
    tag: str | None
    #: the type of the volume the agent creates (2.67); None: the volume service's default
    volume_type: str | None = None

    @property
    def created(self) -> bool:
        """The agent creates this volume (and deletes it again if the server fails)."""
        return self.source_type != "volume"


@dataclass(frozen=True)
class Plan:
    """What `build` will do: the image that boots (None: a volume boots) and the disks."""

    image: str | None
    devices: tuple[BlockDevice, ...]

    @property
    def from_volume(self) -> bool:
        return any(d.boot_index == 0 for d in self.devices)

    def in_boot_order(self) -> list[int]:
        """The positions of `devices`: the boot disk first (so it is also the first disk the
        firmware scans), then the other boot indexes, then the rest in request order."""
        order = range(len(self.devices))
        booting = sorted((i for i in order if self.devices[i].boot_index is not None),
                         key=lambda i: self.devices[i].boot_index or 0)
        return booting + [i for i in order if self.devices[i].boot_index is None]


def parse(server: dict[str, Any], find_image: Callable[[str], Image | None],
          version: tuple[int, int]) -> Plan:
    """The checked plan of a create-server body that has block_device_mapping_v2, or a 400
    in Nova's words. `find_image`: the agent's configured image a reference names (the
    imageRef, an image source's uuid), or None; the plan names images by their name.
    `version`: the request's microversion (which keys an entry may have)."""
    schema.check({"block_device_mapping_v2": server.get("block_device_mapping_v2")},
                 bdm_schema(version))
    raw: list[dict[str, Any]] = server["block_device_mapping_v2"]
    image_ref = server.get("imageRef")
    if image_ref is not None and not isinstance(image_ref, str):
        raise ApiError(400, f"Invalid input for field/attribute imageRef. Value: {image_ref!r}.")
    image = image_ref or None
    devices = [d for d in (_device(item, image) for item in raw) if d is not None]
    devices = [_with_image(d, find_image) if d.source_type == "image" else d
               for d in devices]
    # the boot volume is the guest's first disk, as Nova names a root disk
    devices = [dataclasses.replace(d, device_name=ROOT_DEVICE)
               if d.boot_index == 0 and d.device_name is None else d for d in devices]
    if len(devices) > MAX_DEVICES:
        raise _invalid(f"A server can be created with at most {MAX_DEVICES} volumes.")
    _check_boot_sequence(devices, image)
    seen: set[str] = set()
    for d in devices:
        if d.source_type == "volume":
            assert d.uuid is not None
            if d.uuid in seen:
                raise _invalid(f"Volume {d.uuid} is mapped more than once.")
            seen.add(d.uuid)
    names = [d.device_name for d in devices if d.device_name is not None]
    if len(names) != len(set(names)):
        raise _invalid("The same device name is given to two block devices.")
    plan = Plan(None, tuple(devices))
    if plan.from_volume:
        return plan
    assert image is not None  # without one, the boot sequence had no 0
    found = find_image(image)
    if found is None:
        raise ApiError(400, f"Image {image} could not be found.")
    return Plan(found.name, tuple(devices))


def _device(item: dict[str, Any], image: str | None) -> BlockDevice | None:
    """One entry, as nova.block_device.BlockDeviceDict.from_api judges it; None for an entry
    that maps nothing (no_device, or the server's own image as its local root)."""
    if item.get("no_device"):
        return None
    source = item.get("source_type")
    if source is None:
        if item.get("volume_id"):  # the legacy form names the volume by itself
            source, item = "volume", dict(item, uuid=item["volume_id"])
        else:
            raise _invalid("Unrecognized legacy format.")
    device_uuid = item.get("uuid")
    destination = item.get("destination_type", "volume" if source == "volume" else None)
    boot_index = _boot_index(item.get("boot_index"))
    if source == "blank" and device_uuid:
        raise _invalid("Invalid device UUID.")
    if source != "blank" and not device_uuid:
        raise _invalid("Missing device UUID.")
    if source == "snapshot":
        raise _invalid("source_type snapshot is not supported: this agent boots from volumes, "
                       "images and blank volumes.")
    if source == "image" and destination == "local":
        if image is not None and device_uuid == image and boot_index == 0:
            return None  # the imageRef itself, as clients spell it: Nova's image boot
        raise _invalid("Mapping image to local is not supported.")
    if destination != "volume":
        raise _invalid(f"destination_type {destination or 'local'} is not supported: this "
                       f"agent has no local disks, only volumes (destination_type volume).")
    size = item.get("volume_size")
    size = int(size) if size not in (None, "") else None
    if source == "image" and not size:
        raise ApiError(400, "Images with destination_type 'volume' need to have a non-zero "
                            "size specified")
    if source == "blank" and not size:
        raise ApiError(400, "Blank volumes (source: 'blank', dest: 'volume') need to have "
                            "non-zero size")
    if source == "volume":
        device_uuid = _volume_uuid(str(device_uuid))
        size = None
    return BlockDevice(
        source_type=source, uuid=device_uuid, boot_index=boot_index, volume_size=size,
        delete_on_termination=str(item.get("delete_on_termination", False)).lower() in _TRUE,
        device_name=_device_name(item.get("device_name")), tag=item.get("tag"),
        volume_type=item.get("volume_type") or None)


def _boot_index(value: Any) -> int | None:
    if value is None or value == "":
        return None
    index = int(value)
    return index if index >= 0 else None


def _volume_uuid(value: str) -> str:
    try:
        return str(uuid.UUID(value))
    except ValueError:
        raise _invalid(f"failed to get volume {value}.") from None


def _device_name(value: Any) -> str | None:
    """Nova stores device names with /dev/ in front; the agent's slots are /dev/vdX."""
    if not value:
        return None
    name = value if str(value).startswith("/dev/") else f"/dev/{value}"
    if len(name) > 32 or not all(c.isalnum() or c in "/" for c in name):
        raise ApiError(400, f"The supplied device path ({value}) is invalid.")
    return name


def _check_boot_sequence(devices: list[BlockDevice], image: str | None) -> None:
    """Nova: boot indexes start at 0 and have no gaps; an imageRef that boots is index 0."""
    indexes = sorted(d.boot_index for d in devices if d.boot_index is not None)
    if image is not None and 0 not in indexes:
        indexes = [0, *indexes]
    if not indexes or indexes != list(range(len(indexes))):
        raise _invalid("Boot sequence for the instance and image/block device mapping "
                       "combination is not valid.")


def _with_image(d: BlockDevice, find_image: Callable[[str], Image | None]) -> BlockDevice:
    """An image source checked (it exists, has a disk, fits the volume), named by name."""
    assert d.uuid is not None and d.volume_size is not None
    found = find_image(d.uuid)
    if found is None:
        raise _invalid(f"failed to get image {d.uuid}.")
    if not found.disk:
        raise _invalid(f"image {d.uuid} has no disk to copy into a volume.")
    try:
        size = os.path.getsize(found.disk)
    except OSError as exc:
        raise _invalid(f"failed to get image {d.uuid}: {exc.strerror}.") from None
    if size > d.volume_size * GiB:
        raise ApiError(400, f"Volume is smaller than the minimum size specified in image "
                            f"metadata. Volume size is {d.volume_size * GiB} bytes, minimum "
                            f"size is {size} bytes.")
    return dataclasses.replace(d, uuid=found.name)


async def check_sources(agent: Agent, caller: Caller,
                        plan: Plan) -> dict[str, VolumeView]:
    """Every existing volume the plan names, asked of the volume service: it must exist for
    the caller and be available (Nova checks the same before it accepts the request)."""
    found: dict[str, VolumeView] = {}
    for d in plan.devices:
        if d.source_type != "volume":
            continue
        assert d.uuid is not None
        try:
            volume = await agent.volumes.volume(caller, d.uuid)
        except VolumeApiError as exc:
            if exc.status == 404:
                raise _invalid(f"failed to get volume {d.uuid}.") from None
            raise
        if volume.status != "available":
            raise ApiError(400, f"Invalid volume: volume '{d.uuid}' status must be "
                                f"'available'. Currently in '{volume.status}'")
        found[d.uuid] = volume
    return found


# ---------------------------------------------------------------------- create
async def create_server(agent: Agent, identity: Identity, name: str, flavor: str,
                        plan: Plan) -> Instance:
    """Check the plan's volumes, then add the server (BUILD) and build it in the background;
    the server is returned at once, as Nova answers 202 before the build."""
    if flavor not in agent.config.flavors:
        raise Invalid(f"Flavor {flavor} could not be found.")
    caller = Caller.of(identity)
    sources = await check_sources(agent, caller, plan)
    instance_id = str(uuid.uuid4())
    directory = agent.config.state_dir / "instances" / instance_id
    inst = agent.store.add_instance(Instance(
        id=instance_id, name=name, project_id=identity.project_id,
        user_id=identity.user_id, status=InstanceStatus.BUILD, image=plan.image, flavor=flavor,
        qmp_socket=str(directory / "qmp.sock"),
        console_socket=str(directory / "console.sock")))
    lock = agent._instance_locks[instance_id]
    await lock.acquire()  # nobody knows the id yet: held from here until the build ended
    agent._spawn(_build_and_release(agent, inst, caller, plan, sources, directory, lock))
    return inst


async def _build_and_release(agent: Agent, inst: Instance, caller: Caller, plan: Plan,
                             sources: dict[str, VolumeView], directory: Path,
                             lock: asyncio.Lock) -> None:
    undo = Undo()
    try:
        await build(agent, inst, caller, plan, sources, directory, undo)
    except Exception as exc:
        log.error("server %s failed to build: %s", inst.id, exc)
        fault = str(exc)
        if undo.failures:  # what may be left behind, said where the user looks
            fault += "; not undone: " + "; ".join(str(f) for f in undo.failures)
        agent.store.set_instance(inst.id, status=InstanceStatus.ERROR, fault=fault[:1000])
    else:
        agent.store.set_instance(inst.id, status=InstanceStatus.ACTIVE)
    finally:
        lock.release()


async def build(agent: Agent, inst: Instance, caller: Caller, plan: Plan,
                sources: dict[str, VolumeView], directory: Path, undo: Undo) -> None:
    """Steps 1-5 of the module's docstring; everything is undone (on `undo`, whose
    `failures` then say what could not be) if one fails."""
    async with undo:
        # 1. the volumes the agent creates
        volumes: list[str] = []  # the volume of each device, in the plan's order
        created: list[str] = []  # what a restart must delete if the build is cut short
        for d in plan.devices:
            if d.created:
                assert d.volume_size is not None
                # named as Nova names its blank volumes: <server id>-blank-vol
                spec: dict[str, Any] = {"size": d.volume_size,
                                        "name": f"{inst.id}-{d.source_type}-vol"}
                if d.volume_type is not None:
                    spec["volume_type"] = d.volume_type
                vid = str((await agent.volumes.create_volume(caller, spec))["id"])
                undo.push(agent.volumes.delete_volume, caller, vid)
                created.append(vid)
                agent.store.set_instance(inst.id, build_volumes=list(created))
                volumes.append(vid)
            else:
                assert d.uuid is not None
                volumes.append(d.uuid)
        failpoints.hit("compute.boot.volumes_created")
        for d, vid in zip(plan.devices, volumes, strict=True):
            if d.created:
                sources[vid] = await agent.volumes.wait_available(caller, vid,
                                                                  timeout=VOLUME_TIMEOUT)
        # 2. fill the image volumes
        for d, vid in zip(plan.devices, volumes, strict=True):
            if d.source_type == "image":
                assert d.uuid is not None
                disk = agent.config.images[d.uuid].disk
                assert disk is not None
                await fill(agent, caller, inst.id, vid, Path(disk))
        # 3. the guest, paused; its disks' undo runs after it stopped (`plugs` is pushed first)
        plugs = Undo()
        undo.push(plugs.rollback)
        image = agent.config.images[plan.image] if plan.image is not None else None
        launched = await asyncio.to_thread(
            launcher.launch, agent.config.qemu, image, agent.config.flavors[inst.flavor or ""],
            name=inst.id, directory=directory, accel=agent.accel, paused=True)
        agent._processes[inst.id] = launched.process
        agent.store.set_instance(inst.id, pid=launched.pid)
        undo.push(stop_guest, agent, inst.id)
        # 4. its disks, the boot disk first
        for i in plan.in_boot_order():
            d = plan.devices[i]
            await agent._attach_steps(
                inst, caller, sources[volumes[i]], plugs, device=d.device_name, tag=d.tag,
                delete_on_termination=d.delete_on_termination, boot_index=d.boot_index,
                source_type=d.source_type)
        failpoints.hit("compute.boot.plugged")
        # 5. run (after a reset: only then does the firmware's boot order have the disks)
        hv = await agent.guest(agent.store.instance(inst.id))
        await hv.system_reset()
        await hv.cont()
        undo.commit()
        plugs.commit()


async def stop_guest(agent: Agent, instance_id: str) -> None:
    """Stop the QEMU of a server that failed to build, and forget its pid (so that a later
    delete never signals a pid the system gave to someone else)."""
    hv = agent._guests.get(instance_id)
    if hv is not None:
        try:
            await hv.quit()
        except Exception as exc:  # it is killed below anyway
            log.warning("quit of %s: %s", instance_id, exc)
    await agent._drop_guest(instance_id)
    proc = agent._processes.pop(instance_id, None)
    if proc is not None:
        await asyncio.to_thread(stop, proc, launcher.STOP_TIMEOUT)
    agent.store.set_instance(instance_id, pid=None)


# ---------------------------------------------------------------------- image → volume
async def fill(agent: Agent, caller: Caller, instance_id: str, volume_id: str,
               disk: Path) -> None:
    """Copy the image file `disk` into the new volume through this host's connection: the
    attachment (for `instance_id`, the server being built), connect_volume, the copy, and
    the same teardown on success as on failure (disconnect, attachment delete)."""
    async with Undo() as undo:
        attachment_id = await agent.volumes.create_attachment(caller, volume_id, instance_id)
        undo.push(agent.volumes.delete_attachment, caller, attachment_id)
        info = parse_info(await agent.volumes.update_attachment(
            caller, attachment_id, agent.connector_properties))
        connector = connector_for(info, agent.connector_properties)
        device = await asyncio.to_thread(connector.connect_volume, info)
        undo.push(asyncio.to_thread, connector.disconnect_volume, info, device)
        failpoints.hit("compute.boot.image_connected")
        await asyncio.to_thread(copy_image, connector, info, disk)
        failpoints.hit("compute.boot.image_copied")
        await undo.rollback()  # the teardown
        if undo.failures:
            raise undo.failures[0]


def copy_image(connector: VolumeConnector, info: ConnectionInfo, disk: Path) -> int:
    """Write the image's data into the volume; holes and all-zero chunks are skipped (a new
    volume reads as zeros). Flushed before it returns; the bytes written."""
    written = 0
    with open(disk, "rb") as src, connector.open(info, "r+b") as dst:
        size = os.fstat(src.fileno()).st_size
        if size > dst.size:
            raise Invalid(f"The image ({size} bytes) does not fit in volume "
                          f"{info.volume_id} ({dst.size} bytes).")
        zeros = bytes(COPY_CHUNK)
        for start, end in _data_ranges(src.fileno(), size):
            for offset in range(start, end, COPY_CHUNK):
                chunk = os.pread(src.fileno(), min(COPY_CHUNK, end - offset), offset)
                if chunk == zeros[:len(chunk)]:
                    continue
                dst.seek(offset)
                dst.write(chunk)
                written += len(chunk)
        dst.flush()
    return written


def _data_ranges(fd: int, size: int) -> Iterator[tuple[int, int]]:
    """(start, end) of the parts of the file that hold data (SEEK_DATA/SEEK_HOLE; the whole
    file where the filesystem cannot tell)."""
    pos = 0
    while pos < size:
        try:
            start = os.lseek(fd, pos, os.SEEK_DATA)
        except OSError as exc:
            if exc.errno == errno.ENXIO:  # only a hole is left
                return
            if exc.errno == errno.EINVAL:  # no SEEK_DATA here: all of it is data
                yield pos, size
                return
            raise
        end = min(os.lseek(fd, start, os.SEEK_HOLE), size)
        yield start, end
        pos = end
