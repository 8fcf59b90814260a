"""Starting and stopping the QEMU processes of the instances the agent owns.

A guest is a plain `qemu-system-*` child with a QMP unix socket and its serial console on
another unix socket, both in the instance's directory. Everything the guest writes to its
console also goes to ``console.log`` beside them, from the first byte of boot on, whether or
not anyone is connected to the socket (`console_log`: Nova's ``os-getConsoleOutput``).

A guest runs in a session of its own, so that the agent can stop, crash or restart without
taking its guests along; a restarted agent finds them again by their QMP socket. QEMU is
never daemonized (``-daemonize``): the agent keeps the child and reaps it.

Acceleration: KVM where this host can run guests with it, else TCG (see `kvm_usable`).
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

from blockyard.exec import WaitTimeout, stop, wait_until

from .config import Flavor, Image, QemuConfig

#: the console's log in the instance's directory (appended to: it survives a relaunch)
CONSOLE_LOG = "console.log"
#: how long a guest gets to exit after SIGTERM, and again after SIGKILL (`blockyard.exec.stop`)
STOP_TIMEOUT = 5.0


@dataclass(frozen=True)
class Launched:
    pid: int
    qmp_socket: str
    console_socket: str
    process: subprocess.Popen[bytes]


def kvm_usable() -> bool:
    """KVM runs guests only with hardware virtualization: /dev/kvm must open read-write *and*
    the CPU must advertise vmx or svm. Nested paravirtual hosts (PVM) offer a /dev/kvm that
    QEMU accepts but whose guests do not run, and they show neither flag."""
    try:
        fd = os.open("/dev/kvm", os.O_RDWR | os.O_CLOEXEC)
    except OSError:
        return False
    os.close(fd)
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return " vmx" in flags or " svm" in flags


def accelerator(qemu: QemuConfig) -> str:
    if qemu.accel == "auto":
        return "kvm" if kvm_usable() else "tcg"
    return qemu.accel


def console_log(console_socket: str) -> Path:
    """Where the console of the guest whose console socket is `console_socket` is logged."""
    return Path(console_socket).parent / CONSOLE_LOG


def argv(qemu: QemuConfig, image: Image | None, flavor: Flavor, *, name: str,
         qmp_socket: str, console_socket: str, accel: str, paused: bool = False) -> list[str]:
    """QEMU's command line for one guest. Nothing secret is ever on it: volumes arrive
    later over QMP, with their credentials as QEMU secret objects. The serial console is a
    socket chardev (clients connect to it when they like) that also logs to a file.

    Without `image` the guest boots from a volume: no kernel, the firmware (SeaBIOS) boots
    the disk plugged with bootindex 0. `paused` (``-S``): the CPUs wait for ``cont``, so
    that the volumes plugged over QMP are there when the firmware looks for them."""
    args = [
        qemu.binary, "-name", f"guest={name}", "-machine", f"{qemu.machine},accel={accel}",
        "-m", str(flavor.ram_mb), "-smp", str(flavor.vcpus),
        "-nodefaults", "-display", "none", "-no-user-config",
        "-qmp", f"unix:{qmp_socket},server=on,wait=off",
        "-chardev", f"socket,id=console,path={_escape(console_socket)},server=on,wait=off,"
                    f"logfile={_escape(str(console_log(console_socket)))},logappend=on",
        "-serial", "chardev:console",
    ]
    if accel == "kvm":
        args += ["-cpu", "host"]
    if paused:
        args += ["-S"]
    if image is None:
        return args
    if image.kernel:
        args += ["-kernel", image.kernel]
        if image.initrd:
            args += ["-initrd", image.initrd]
        if image.append:
            args += ["-append", image.append]
    if image.disk:
        args += ["-blockdev", f"driver=file,filename={_escape(image.disk)},node-name=root-file,"
                 "read-only=on",
                 "-blockdev", "driver=qcow2,file=root-file,node-name=root,read-only=on"
                 if image.disk.endswith(".qcow2") else
                 "driver=raw,file=root-file,node-name=root,read-only=on",
                 "-device", "virtio-blk-pci,drive=root,id=root"]
    return args


def listening(path: str) -> bool:
    """A unix socket listens at `path` (/proc/net/unix: flag __SO_ACCEPTCON). The file
    alone is not enough: QEMU binds before it listens, and a connect in between is refused
    (seen on a loaded host as "QMP connect: Connection refused" right after start)."""
    try:
        with open("/proc/net/unix") as table:
            for line in table:
                fields = line.split()
                if len(fields) >= 8 and fields[7] == path and int(fields[3], 16) & 0x10000:
                    return True
    except OSError:
        return os.path.exists(path)
    return False


def _escape(value: str) -> str:
    return value.replace(",", ",,")


def launch(qemu: QemuConfig, image: Image | None, flavor: Flavor, *, name: str,
           directory: Path, accel: str, paused: bool = False,
           timeout: float = 10.0) -> Launched:
    """Start the guest and wait until its QMP socket listens.
    `image` None and `paused`: see `argv`."""
    directory.mkdir(parents=True, exist_ok=True)
    qmp, console = directory / "qmp.sock", directory / "console.sock"
    for stale in (qmp, console):
        stale.unlink(missing_ok=True)
    log = open(directory / "qemu.log", "ab")
    try:
        proc = subprocess.Popen(
            argv(qemu, image, flavor, name=name, qmp_socket=str(qmp),
                 console_socket=str(console), accel=accel, paused=paused),
            stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True)
    finally:
        log.close()
    with contextlib.suppress(WaitTimeout):
        wait_until(lambda: listening(str(qmp)) or proc.poll() is not None, timeout, 0.01)
    if not listening(str(qmp)):
        stop(proc, STOP_TIMEOUT)
        tail = (directory / "qemu.log").read_text(errors="replace")[-2000:]
        raise RuntimeError(f"QEMU did not start: {tail.strip() or 'no output'}")
    return Launched(proc.pid, str(qmp), str(console), proc)
