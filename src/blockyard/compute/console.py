"""A server's console log: Nova's ``os-getConsoleOutput`` action (``openstack console log
show``), read from the log QEMU keeps of the serial console from boot on
(`launcher.console_log`).

Only the last `MAX_CONSOLE_BYTES` of the log are read, however long it grew (as Nova's
libvirt driver does): a guest that writes to its console for months must not make one
request load all of it. ``length`` is Nova's: the last N lines of that, all of it when
absent, null or -1.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from blockyard.rest import schema
from blockyard.rest.errors import ApiError

from . import launcher
from .store import Instance, InstanceStatus

#: how much of the log's end one request reads (Nova's libvirt: MAX_CONSOLE_BYTES, 100 KiB)
MAX_CONSOLE_BYTES = 100 * 1024

#: Nova's body schema: length an integer ≥ -1, as a number or a string of digits, or null
GET_CONSOLE_OUTPUT: dict[str, Any] = {
    "type": "object",
    "properties": {"os-getConsoleOutput": {
        "type": "object",
        "properties": {"length": {"type": ["integer", "string", "null"],
                                  "pattern": "^-?[0-9]+$", "minimum": -1}},
        "additionalProperties": False,
    }},
    "required": ["os-getConsoleOutput"],
    "additionalProperties": False,
}

#: control characters Nova strips from the output (all but tab and newline)
_CONTROL = re.compile("[\x00-\x08\x0b-\x1f]")


def tail(path: Path, lines: int | None, *, max_bytes: int = MAX_CONSOLE_BYTES) -> str:
    """The last `lines` lines (None: all) of the last `max_bytes` of the file at `path`;
    "" if there is no such file. A line cut by the byte bound is dropped, unless it is all
    there is."""
    try:
        with open(path, "rb") as f:
            size = f.seek(0, os.SEEK_END)
            start = max(0, size - max_bytes)
            f.seek(start)
            data = f.read(max_bytes)
    except FileNotFoundError:
        return ""
    if start > 0 and b"\n" in data:
        data = data[data.index(b"\n") + 1:]
    text = data.decode("utf-8", errors="replace")
    if lines is not None:
        text = "".join(text.splitlines(keepends=True)[-lines:]) if lines > 0 else ""
    return _CONTROL.sub("", text)


def length_of(body: Any) -> int | None:
    """The requested number of lines (None: all), or a 400 in Nova's words."""
    schema.check(body, GET_CONSOLE_OUTPUT)
    length = body["os-getConsoleOutput"].get("length")
    if length is None:
        return None
    number = int(length)
    return None if number == -1 else number


async def console_output(request: Request, inst: Instance, lines: int | None) -> Response:
    """The action's answer for `inst` (found, and the caller allowed by the action's rule)."""
    if inst.console_socket is None:  # an adopted guest: its console is not the agent's
        raise ApiError(404, "Guest does not have a console available.")
    if inst.status == InstanceStatus.BUILD:
        raise ApiError(409, f"Instance {inst.id} is not ready")
    output = tail(launcher.console_log(inst.console_socket), lines)
    return JSONResponse({"output": output})
