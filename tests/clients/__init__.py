"""Real OpenStack clients (python-cinderclient, openstacksdk, the cinder and openstack CLIs)
driving a real blockyard server, with every body checked against Tempest's schemas."""

from __future__ import annotations

import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")

#: the two projects every scenario runs in: neither may ever see the other's volumes
PROJECTS = ("projA", "projB")

#: where the `cinder` and `openstack` console scripts are: beside the interpreter running the
#: tests (the venv's bin/), else wherever PATH finds them
BIN = Path(sys.executable).parent
if not (BIN / "openstack").exists() and shutil.which("openstack"):
    BIN = Path(str(shutil.which("openstack"))).parent


def poll(fetch: Callable[[], T], until: Callable[[T], bool], *, timeout: float = 30.0,
         what: str = "condition") -> T:
    """Call `fetch` until `until(result)` holds; fail with the last result after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        last = fetch()
        if until(last):
            return last
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached within {timeout}s; last: {last!r}")
        time.sleep(0.05)
