#!/usr/bin/env bash
# Install whatever blockyard needs that is missing, on Debian 12 as root; safe to re-run.
#
#   1. Debian packages (APT_PACKAGES below): `apt-get update` runs once, only if one is missing.
#   2. .venv in the repo root, from /usr/bin/python3 with --system-site-packages (so Debian's
#      python3-* bindings are importable), recreated if it is missing or was made otherwise.
#   3. `pip install -e '.[test]'`, skipped while pyproject.toml is unchanged since the last
#      successful install (its hash is kept in .venv/.blockyard-installed).
#   4. .venv-keystone beside it: Keystone for the tests (tests/support/keystone.py) in a venv of
#      its own (its pins clash with the project's), from scripts/keystone-requirements.txt,
#      skipped while that file is unchanged (hash in .venv-keystone/.blockyard-installed).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV="$ROOT/.venv"
STAMP="$VENV/.blockyard-installed"
PYTHON=/usr/bin/python3
KS_VENV="$ROOT/.venv-keystone"
KS_REQS="$ROOT/scripts/keystone-requirements.txt"
KS_STAMP="$KS_VENV/.blockyard-installed"

# Debian packages the project needs, one per line.
APT_PACKAGES=(
    python3-venv
    python3-pip
    tgt                 # iSCSI target daemon (tgtd, tgtadm)
    qemu-utils          # qemu-nbd, qemu-img
    qemu-block-extra    # qemu's iscsi block driver (userspace iSCSI initiator)
    python3-libnbd      # NBD client bindings for /usr/bin/python3
    qemu-system-x86     # guests the compute agent runs (KVM where it can, TCG otherwise)
    ceph-mon            # the rbd backend's test cluster (tests/support/ceph.py): monitor,
    ceph-osd            #   one BlueStore OSD on a sparse file,
    ceph-mgr            #   and the manager (pool capacity stats need it)
    ceph-common         # ceph-authtool/monmaptool to bootstrap that cluster; the ceph CLI
    python3-rados       # librados bindings: the rbd driver's cluster connection
    python3-rbd         # librbd bindings: images, snapshots, clones, I/O
)

say() { echo "setup: $*" >&2; }

# run a command with its output kept aside, shown only if it fails
quietly() {
    local log rc=0
    log=$(mktemp)
    "$@" </dev/null >"$log" 2>&1 || rc=$?
    if [ $rc -ne 0 ]; then
        cat "$log" >&2
        say "failed (exit $rc): $*"
    fi
    rm -f "$log"
    return $rc
}

as_root() {
    if [ "$(id -u)" -eq 0 ]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo "$@"
    else
        say "need root to run: $*"
        return 1
    fi
}

installed() {
    [ "$(dpkg-query -W -f='${db:Status-Status}' "$1" 2>/dev/null)" = installed ]
}

apt_install() {
    local missing=() pkg
    for pkg in "${APT_PACKAGES[@]}"; do
        installed "$pkg" || missing+=("$pkg")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    say "installing Debian packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    quietly as_root apt-get update -q
    quietly as_root apt-get install -y -q --no-install-recommends "${missing[@]}"
}

venv_ok() {
    local cfg="$VENV/pyvenv.cfg"
    [ -x "$VENV/bin/python" ] && [ -f "$cfg" ] \
        && grep -Eq '^home = /usr/bin$' "$cfg" \
        && grep -Eq '^include-system-site-packages = true$' "$cfg" \
        && "$VENV/bin/python" -c 'import pip' 2>/dev/null
}

make_venv() {
    venv_ok && return 0
    say "creating $VENV (from $PYTHON, with system site packages)"
    rm -rf "$VENV"
    "$PYTHON" -m venv --system-site-packages "$VENV"
}

pip_install() {
    local want
    want=$(sha256sum "$ROOT/pyproject.toml" | cut -d' ' -f1)
    if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ] && [ -x "$VENV/bin/blockyard" ]; then
        return 0
    fi
    say "pip install -e '.[test]' (pyproject.toml changed or first run)"
    rm -f "$STAMP"
    PIP_NO_INPUT=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
        quietly "$VENV/bin/python" -m pip install -e "$ROOT[test]"
    echo "$want" >"$STAMP"
}

# Keystone's venv: no system site packages (Debian's python3-* must not leak into its pins)
keystone_install() {
    local want
    want=$(sha256sum "$KS_REQS" | cut -d' ' -f1)
    if [ -f "$KS_STAMP" ] && [ "$(cat "$KS_STAMP")" = "$want" ] \
        && [ -x "$KS_VENV/bin/keystone-manage" ] && [ -x "$KS_VENV/bin/gunicorn" ]; then
        return 0
    fi
    say "installing Keystone into $KS_VENV (scripts/keystone-requirements.txt changed or first run)"
    rm -f "$KS_STAMP"
    if ! [ -x "$KS_VENV/bin/python" ] || ! grep -Eq '^home = /usr/bin$' "$KS_VENV/pyvenv.cfg"; then
        rm -rf "$KS_VENV"
        "$PYTHON" -m venv "$KS_VENV"
    fi
    PIP_NO_INPUT=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
        quietly "$KS_VENV/bin/python" -m pip install -r "$KS_REQS"
    echo "$want" >"$KS_STAMP"
}

apt_install
make_venv
pip_install
keystone_install
