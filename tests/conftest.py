"""Shared fixtures: in-memory images with an Engine and a Filesystem on top.

`fsenv` gives a fresh 64 MiB image mounted as env.fs; after the test it is
remounted (replaying the journal) and checked with tests/fsck_lite.py, so
every t3 test ends with a consistency check of what it left on disk.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator

import pytest

from pyfs.device import MemDevice, open_device
from pyfs.engine import Engine
from pyfs.fs import Filesystem
from pyfs.mkfs import format_device

sys.path.insert(0, os.path.dirname(__file__))
import fsck_lite  # noqa: E402

MiB = 1 << 20


class FsEnv:
    """An image on a MemDevice, mounted (eng, fs) and remountable."""

    def __init__(self, size: int = 64 * MiB, **fmt):
        self.dev = MemDevice(size)
        format_device(self.dev, **fmt)
        self.eng = Engine(self.dev)
        self.fs = Filesystem(self.eng)

    def remount(self, clean: bool = True) -> Filesystem:
        """Unmount (cleanly, or as a crash after the last flush) and mount again."""
        if clean:
            self.eng.close()
        self.eng = Engine(self.dev)
        self.fs = Filesystem(self.eng)
        return self.fs

    def crash(self) -> Filesystem:
        """Mount a copy of the device as it is now, without unmounting: a power
        cut after everything written so far reached the disk (flush first to
        make the journal hold it; MemDevice loses no writes)."""
        snap = self.dev.snapshot()
        self.dev = MemDevice(snap)
        return self.remount(clean=False)

    def fsck(self) -> list[str]:
        return fsck_lite.check(self.eng)

    def close(self) -> None:
        self.eng.close()


@pytest.fixture
def make_fsenv():
    """Factory for images of other sizes/geometries; each is fsck'd at teardown."""
    envs: list[FsEnv] = []

    def make(size: int = 64 * MiB, **fmt) -> FsEnv:
        env = FsEnv(size, **fmt)
        envs.append(env)
        return env

    yield make
    for env in envs:
        env.remount()
        problems = env.fsck()
        env.close()
        assert not problems, "\n".join(problems)


@pytest.fixture
def fsenv(make_fsenv) -> FsEnv:
    return make_fsenv()


# --------------------------------------------------------------------------
# Loop devices

@pytest.fixture
def loop_device(tmp_path) -> Iterator[tuple[str, str]]:
    """(loop device, backing file) of 8 MiB, or skip when loop devices are
    unavailable; in CI that is a failure unless PYFS_SKIP_LOOP=1 says so."""
    backing = tmp_path / "backing"
    open_device(str(backing), create_size=8 * MiB).close()
    try:
        res = subprocess.run(["losetup", "-f", "--show", str(backing)],
                             capture_output=True, text=True, timeout=30)
        reason = res.stderr.strip() or f"exit status {res.returncode}"
        loop = res.stdout.strip() if res.returncode == 0 else None
    except (OSError, subprocess.TimeoutExpired) as e:
        reason, loop = str(e), None
    if loop is None:
        msg = f"loop devices unavailable ({reason}); BLKGETSIZE64 is covered by the mocked test"
        if os.environ.get("CI") == "true" and os.environ.get("PYFS_SKIP_LOOP") != "1":
            pytest.fail(f"{msg}; in CI set PYFS_SKIP_LOOP=1 to skip deliberately")
        pytest.skip(msg)
    try:
        yield loop, str(backing)
    finally:
        subprocess.run(["losetup", "-d", loop], check=False, timeout=30)


# --------------------------------------------------------------------------
# Real mounts (tests/t4_*): `pyfs mount` in a subprocess, always unmounted.

FUSE_OK = os.path.exists("/dev/fuse")


def require_fuse() -> None:
    """t4 tests run wherever /dev/fuse exists; under CI=true they must never skip."""
    if os.environ.get("CI") == "true":
        assert FUSE_OK, "CI=true but /dev/fuse is missing"
        assert os.geteuid() == 0, "CI=true: t4 tests run as root"
        return
    if not FUSE_OK:
        pytest.skip("/dev/fuse is missing")
    if os.geteuid() != 0:
        pytest.skip("t4 tests run as root")


def pyfs_cli(*args: str, check: bool = True, timeout: float = 120,
             ) -> subprocess.CompletedProcess:
    r = subprocess.run([sys.executable, "-m", "pyfs.cli", *args], capture_output=True,
                       text=True, timeout=timeout)
    if check and r.returncode:
        raise AssertionError(f"pyfs {' '.join(args)} failed ({r.returncode}): {r.stderr}")
    return r


class Mount:
    """A pyfs image mounted through the kernel; the mountpoint is world-traversable
    (tests switch to other uids)."""

    def __init__(self, image: str, path: str, options: str = "allow_other"):
        self.image = image
        self.path = path
        self.options = options
        self.mounted = False

    def mount(self, *extra: str) -> subprocess.CompletedProcess:
        r = pyfs_cli("mount", self.image, self.path, "-o", self.options, *extra)
        self.mounted = True
        return r

    def umount(self) -> None:
        pyfs_cli("umount", self.path)
        self.mounted = False

    def remount(self) -> None:
        self.umount()
        self.mount()

    def p(self, *parts: str) -> str:
        return os.path.join(self.path, *parts)

    def daemon_pid(self) -> int | None:
        from pyfs.mount import read_pid_file
        info = read_pid_file(self.path)
        return info["pid"] if info else None

    def force_unmount(self) -> None:
        """Teardown of last resort: never leave a mount behind."""
        from pyfs.mount import _alive, is_mounted
        pid = self.daemon_pid()
        if is_mounted(self.path):
            r = pyfs_cli("umount", "--timeout", "60", self.path, check=False)
            if r.returncode and is_mounted(self.path):
                subprocess.run(["fusermount3", "-u", "-z", self.path], capture_output=True)
        if pid and _alive(pid):
            deadline = time.monotonic() + 30
            while _alive(pid) and time.monotonic() < deadline:
                time.sleep(0.05)
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
                while _alive(pid):
                    time.sleep(0.05)
        self.mounted = False

    def fsck(self) -> list[str]:
        from pyfs.device import open_device
        eng = Engine(open_device(self.image))
        try:
            return fsck_lite.check(eng)
        finally:
            eng.close()


@pytest.fixture
def mnt(tmp_path):
    """A fresh 1 GiB (sparse) image mounted with allow_other; fsck'd after umount."""
    require_fuse()
    image = str(tmp_path / "img")
    pyfs_cli("mkfs", "-q", "--size", "1G", image)
    path = tempfile.mkdtemp(prefix="pyfs-t4-", dir="/tmp")
    os.chmod(path, 0o755)
    m = Mount(image, path)
    try:
        m.mount()
        yield m
    finally:
        m.force_unmount()
        os.rmdir(path)
    problems = m.fsck()
    assert not problems, "\n".join(problems)
