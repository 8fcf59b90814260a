"""Unit tests of boot from volume's pure parts: the mapping rules (`boot.parse`) and the
sparse copy of an image into a volume (`boot.copy_image`, through the local connector).

The whole flow, with a real guest booting from the volume, is tests/test_compute_bfv.py."""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

from blockyard.compute import boot, policies
from blockyard.compute import config as compute_config
from blockyard.compute.api import create_app
from blockyard.compute.config import Flavor, Image, QemuConfig
from blockyard.compute.launcher import argv, listening
from blockyard.connectors import LocalConnector
from blockyard.model import LocalInfo
from blockyard.rest.errors import ApiError

VOL = "6f1c5bd2-3f0e-4f55-9d7e-1f0e8f3c9a10"
LATEST = (2, 89)


@pytest.fixture
def images(tmp_path: Path) -> dict[str, Image]:
    disk = tmp_path / "disk.raw"
    disk.write_bytes(b"x" * 4096)
    return {"disk": Image("disk", disk=str(disk)), "tiny": Image("tiny", kernel="/k")}


def _parse(images: dict[str, Image], bdms: Any, version: tuple[int, int] = LATEST,
           **server: Any) -> boot.Plan:
    return boot.parse({"block_device_mapping_v2": bdms, **server}, images.get, version)


def test_a_volume_boots_and_others_follow_in_boot_order(images: dict[str, Image]) -> None:
    plan = _parse(images, [
        {"source_type": "blank", "destination_type": "volume", "volume_size": 2},
        {"source_type": "image", "uuid": "disk", "destination_type": "volume",
         "volume_size": "1", "boot_index": "1"},
        {"source_type": "volume", "uuid": VOL.upper(), "boot_index": 0,
         "delete_on_termination": "yes"},
    ])
    assert plan.image is None and plan.from_volume
    blank, image, volume = plan.devices
    assert (volume.uuid, volume.device_name, volume.delete_on_termination) == \
        (VOL, "/dev/vda", True)
    assert (image.volume_size, image.boot_index, image.created) == (1, 1, True)
    assert (blank.boot_index, blank.delete_on_termination, blank.uuid) == (None, False, None)
    assert plan.in_boot_order() == [2, 1, 0]


def test_the_image_root_mapping_clients_send_is_the_image_boot(
        images: dict[str, Image]) -> None:
    """`openstack server create --image tiny` sends its image as a local boot_index 0."""
    plan = _parse(images, [{"source_type": "image", "uuid": "tiny", "boot_index": 0,
                            "destination_type": "local", "delete_on_termination": True}],
                  imageRef="tiny")
    assert plan == boot.Plan("tiny", ())


def test_an_image_boot_with_extra_volumes(images: dict[str, Image]) -> None:
    """imageRef boots when no mapping has boot_index 0 (Nova wants the client to add the
    image's own mapping, as above; without it the image is index 0 all the same)."""
    plan = _parse(images, [{"source_type": "volume", "uuid": VOL, "boot_index": -1}],
                  imageRef="tiny")
    assert plan.image == "tiny" and not plan.from_volume
    assert plan.devices[0].device_name is None
    with pytest.raises(ApiError, match="Boot sequence"):  # then volumes start at 1
        _parse(images, [{"source_type": "volume", "uuid": VOL, "boot_index": 2}],
               imageRef="tiny")


def test_a_volume_with_boot_index_0_boots_whatever_the_imageref(
        images: dict[str, Image]) -> None:
    """As Nova: with a boot_index 0 mapping the imageRef boots nothing."""
    plan = _parse(images, [{"source_type": "volume", "uuid": VOL, "boot_index": 0}],
                  imageRef="tiny")
    assert plan.image is None and plan.from_volume


@pytest.mark.parametrize("bdms, server, message", [
    ([{"source_type": "volume", "uuid": VOL, "boot_index": 1}], {},
     "Boot sequence for the instance"),
    ([{"source_type": "volume", "uuid": VOL}], {}, "Boot sequence for the instance"),
    ([{"source_type": "volume", "uuid": VOL, "boot_index": -1}], {"imageRef": "nope"},
     "Image nope could not be found."),
    ([{"source_type": "volume", "uuid": "not-a-uuid", "boot_index": 0}], {},
     "failed to get volume not-a-uuid."),
    ([{"source_type": "volume", "uuid": VOL, "boot_index": 0},
      {"source_type": "volume", "uuid": VOL, "boot_index": 1}], {}, "mapped more than once"),
    ([{"source_type": "image", "uuid": "tiny", "destination_type": "volume",
       "volume_size": 1, "boot_index": 0}], {}, "image tiny has no disk"),
    ([{"volume_size": 1, "boot_index": 0}], {}, "Unrecognized legacy format."),
    ([{"source_type": "volume", "uuid": VOL, "boot_index": "first"}], {},
     "Invalid input for field/attribute boot_index."),
])
def test_refusals(images: dict[str, Image], bdms: Any, server: dict[str, Any],
                  message: str) -> None:
    with pytest.raises(ApiError) as err:
        _parse(images, bdms, **server)
    assert err.value.status == 400 and message in err.value.message


def test_an_image_larger_than_its_volume_is_refused(tmp_path: Path) -> None:
    big = tmp_path / "big.raw"
    with open(big, "wb") as f:
        f.truncate(boot.GiB + 1)
    with pytest.raises(ApiError, match="Volume is smaller than the minimum size"):
        _parse({"big": Image("big", disk=str(big))}, [
            {"source_type": "image", "uuid": "big", "destination_type": "volume",
             "volume_size": 1, "boot_index": 0}])


def test_the_legacy_volume_id_form(images: dict[str, Image]) -> None:
    plan = _parse(images, [{"volume_id": VOL, "boot_index": 0}])
    assert plan.devices[0].source_type == "volume" and plan.devices[0].uuid == VOL


def test_copy_image_skips_holes_and_zeros(tmp_path: Path) -> None:
    """Data lands where it was in the image; holes and zero chunks are not written (the
    volume stays sparse there)."""
    image, volume = tmp_path / "image.raw", tmp_path / "volume"
    chunk = boot.COPY_CHUNK
    with open(image, "wb") as f:
        f.write(b"boot" * 128)                      # data at 0
        f.seek(3 * chunk)
        f.write(bytes(chunk))                       # written zeros: skipped too
        f.seek(5 * chunk)
        f.write(b"tail")                            # data after a hole
    with open(volume, "wb") as f:
        f.truncate(16 * chunk)
    written = boot.copy_image(LocalConnector(), LocalInfo(str(volume), "v"), image)
    assert 516 <= written <= 2 * 65536  # the blocks around the two pieces of data, no more
    data = volume.read_bytes()
    assert data[:512] == b"boot" * 128
    assert data[5 * chunk:5 * chunk + 4] == b"tail"
    assert data.count(0) == len(data) - 516
    assert os.stat(volume).st_blocks * 512 < 4 * chunk  # still sparse


def test_copy_image_refuses_an_image_larger_than_the_volume(tmp_path: Path) -> None:
    image, volume = tmp_path / "image.raw", tmp_path / "volume"
    image.write_bytes(b"x" * 8192)
    volume.write_bytes(bytes(4096))
    with pytest.raises(Exception, match="does not fit"):
        boot.copy_image(LocalConnector(), LocalInfo(str(volume), "v"), image)


def test_a_volume_boot_has_no_kernel_and_starts_paused() -> None:
    args = argv(QemuConfig(), None, Flavor("f"), name="n", qmp_socket="/q",
                console_socket="/c", accel="tcg", paused=True)
    assert "-S" in args and "-kernel" not in args and "-blockdev" not in args
    image_args = argv(QemuConfig(), Image("tiny", kernel="/k"), Flavor("f"), name="n",
                      qmp_socket="/q", console_socket="/c", accel="tcg")
    assert "-S" not in image_args and "-kernel" in image_args


def test_a_socket_counts_as_started_once_it_listens(tmp_path: Path) -> None:
    """launch waits for this: a bound socket that does not listen yet refuses connects."""
    path = str(tmp_path / "qmp.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.bind(path)
        assert os.path.exists(path) and not listening(path)
        s.listen(1)
        assert listening(path)


def test_creating_a_server_with_volumes_has_its_own_rule(tmp_path: Path) -> None:
    """Nova's os_compute_api:servers:create:attach_volume, checked before anything else."""
    rules = tmp_path / "policy.yaml"
    rules.write_text(f'"{policies.SERVERS_CREATE_ATTACH_VOLUME}": "!"\n')
    config = compute_config.build({"state_dir": str(tmp_path / "agent"),
                                   "auth": {"policy_file": str(rules)}})
    with TestClient(create_app(config)) as tc:
        r = tc.post("/v2.1/servers", headers={"X-Auth-Token": "admin:admin"}, json={
            "server": {"name": "x", "flavorRef": "m1.tiny", "block_device_mapping_v2": [
                {"source_type": "volume", "uuid": VOL, "boot_index": 0}]}})
        assert r.status_code == 403, r.text
        assert policies.SERVERS_CREATE_ATTACH_VOLUME in r.text
