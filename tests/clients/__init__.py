"""Real OpenStack clients (python-cinderclient, openstacksdk, the cinder and openstack CLIs)
driving a real blockyard server, with every body checked against Tempest's schemas."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

#: the two projects every scenario runs in: neither may ever see the other's volumes
PROJECTS = ("projA", "projB")

#: where the `cinder` and `openstack` console scripts are: beside the interpreter running the
#: tests (the venv's bin/), else wherever PATH finds them
BIN = Path(sys.executable).parent
if not (BIN / "openstack").exists() and shutil.which("openstack"):
    BIN = Path(str(shutil.which("openstack"))).parent

