"""Shared fixtures: in-memory images with an Engine and a Filesystem on top.

`fsenv` gives a fresh 64 MiB image mounted as env.fs; after the test it is
remounted (replaying the journal) and checked with tests/fsck_lite.py, so
every t3 test ends with a consistency check of what it left on disk.
"""

from __future__ import annotations

import os
import sys

import pytest

from pyfs.device import MemDevice
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
