#!/usr/bin/env bash
# One-shot set-up of pyfs on Debian 12, as root:
#   1. apt packages (skipped when all are already installed),
#   2. .venv with pyfs installed editable plus the test and bench extras, and
#      the mount(8)/fsck(8)/mkfs(8) helpers linked into /sbin,
#   3. pyfs's main job on the default image images/pyfs.img.
# --install-only stops after step 2 (used by scripts/test.sh and .ci/run).
# Safe to re-run: every step skips work that is already done.
set -euo pipefail

usage() {
    echo "usage: $0 [--install-only]" >&2
    exit 2
}

INSTALL_ONLY=0
for arg in "$@"; do
    case "$arg" in
        --install-only) INSTALL_ONLY=1 ;;
        -h | --help) usage ;;
        *) echo "setup.sh: unknown argument: $arg" >&2; usage ;;
    esac
done

cd "$(dirname "$(readlink -f "$0")")/.."
REPO=$PWD
PYTHON=${PYTHON:-python3}
VENV=$REPO/.venv
IMAGE=images/pyfs.img
IMAGE_SIZE=1G

say() { printf '==> %s\n' "$*"; }
die() { printf 'setup.sh: error: %s\n' "$*" >&2; exit 1; }

# ---------------------------------------------------------------------------
# 1. System packages

# FUSE runtime and headers (pyfuse3 compiles against libfuse3 via pkg-config),
# plus the tools the tests and benchmarks drive.
APT_PACKAGES=(fuse3 libfuse3-dev pkg-config fsmark fuse2fs e2fsprogs xz-utils util-linux acl rsync)

is_installed() {
    dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'
}

python_ok() {
    "$PYTHON" -c "$1" >/dev/null 2>&1
}

install_system_packages() {
    command -v "$PYTHON" >/dev/null || APT_PACKAGES+=(python3)
    # Debian's python3 splits venv/ensurepip and the C headers into their own
    # packages; a python that already has them (e.g. pyenv) needs neither.
    python_ok 'import venv, ensurepip' || APT_PACKAGES+=(python3-venv)
    python_ok 'import os, sys, sysconfig
sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")))' ||
        APT_PACKAGES+=(python3-dev)
    command -v gcc >/dev/null || APT_PACKAGES+=(gcc)

    if ! command -v dpkg-query >/dev/null; then
        say "not a Debian system: skipping apt; make sure these are installed: ${APT_PACKAGES[*]}"
        return
    fi
    local missing=()
    for pkg in "${APT_PACKAGES[@]}"; do
        is_installed "$pkg" || missing+=("$pkg")
    done
    if ((${#missing[@]} == 0)); then
        say "system packages already installed"
        return
    fi
    local sudo=()
    if ((EUID != 0)); then
        command -v sudo >/dev/null || die "need root (or sudo) to install: ${missing[*]}"
        sudo=(sudo)
    fi
    say "installing system packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    "${sudo[@]}" apt-get update -q
    "${sudo[@]}" apt-get install -y -q --no-install-recommends "${missing[@]}"
}

# ---------------------------------------------------------------------------
# 2. Python environment

install_python_env() {
    if [[ ! -x $VENV/bin/python ]]; then
        say "creating $VENV"
        "$PYTHON" -m venv "$VENV"
    fi
    "$VENV/bin/python" -c 'import sys; assert sys.version_info >= (3, 11)' ||
        die "$VENV has Python < 3.11; remove it and re-run"
    # Re-install only when the package metadata changed since the last install.
    local stamp=$VENV/.pyfs-install-stamp
    local want
    want=$(sha256sum pyproject.toml | cut -d' ' -f1)
    if [[ -f $stamp && $(cat "$stamp") == "$want" && -x $VENV/bin/pyfs ]]; then
        say "pyfs already installed in $VENV"
        return
    fi
    say "installing pyfs (editable, extras test+bench) into $VENV"
    "$VENV/bin/python" -m pip install -q -e '.[test,bench]'
    echo "$want" >"$stamp"
}

# ---------------------------------------------------------------------------
# 2b. The helpers mount(8), fsck(8) and mkfs(8) look for in /sbin:
# mount.pyfs (mount -t pyfs), mount.fuse.pyfs (mount -t fuse.pyfs and fstab
# lines of that type), fsck.pyfs, fsck.fuse.pyfs (fsck -A on such lines) and
# mkfs.pyfs, linked to this .venv.

install_helpers() {
    local sudo=()
    if ((EUID != 0)); then
        if ! command -v sudo >/dev/null; then
            say "not root: skipping the mount(8)/fsck(8)/mkfs(8) helpers in /sbin"
            return
        fi
        sudo=(sudo)
    fi
    say "linking mount.pyfs, mount.fuse.pyfs, fsck.pyfs, fsck.fuse.pyfs and mkfs.pyfs into /sbin"
    "${sudo[@]}" "$VENV/bin/pyfs" install-helpers --dir /sbin -q
}

install_system_packages
install_python_env
install_helpers
if ((INSTALL_ONLY)); then
    say "install done"
    exit 0
fi

# ---------------------------------------------------------------------------
# 3. Main job: the default image

mkdir -p images
if [[ -e $IMAGE ]]; then
    say "using existing $IMAGE"
else
    say "creating $IMAGE ($IMAGE_SIZE, sparse)"
    "$VENV/bin/pyfs" mkfs "$IMAGE" --size "$IMAGE_SIZE" -q
fi

# >>> MAIN JOB >>> ------------------------------------------------------------
# Mount the default image at $MOUNTPOINT (override with PYFS_MOUNTPOINT). An
# image already mounted there is left as it is, so re-running is harmless.
MOUNTPOINT=${PYFS_MOUNTPOINT:-/mnt/pyfs}
mkdir -p "$MOUNTPOINT"
if mountpoint -q "$MOUNTPOINT"; then
    say "$MOUNTPOINT is already mounted"
else
    say "mounting $IMAGE at $MOUNTPOINT"
    "$VENV/bin/pyfs" mount "$IMAGE" "$MOUNTPOINT"
fi
df -h "$MOUNTPOINT"
say "pyfs is mounted at $MOUNTPOINT; unmount with: $VENV/bin/pyfs umount $MOUNTPOINT"
# <<< MAIN JOB <<< ------------------------------------------------------------

say "set-up done"
