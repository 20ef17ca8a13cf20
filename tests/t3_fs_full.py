"""Full is not fatal (API level, no kernel): fill small images until ENOSPC with
each kind of thing users create, then delete on the full filesystem, create
again, unmount, check with fsck -f -n, and remount to find exactly what was
created. The mounted variant is tests/t4_full.py.
"""

from __future__ import annotations

import errno
import io
import os

import pytest

from pyfs.device import MemDevice
from pyfs.engine import Engine
from pyfs.fs import Filesystem, FSError
from pyfs.fs.inode import ROOT_INUM
from pyfs.fsck import FsckOptions, fsck_device
from pyfs.mkfs import format_device

MiB = 1 << 20
PER_DIR = 1000


def fsck_clean(dev) -> None:
    out = io.StringIO()
    res = fsck_device(MemDevice(dev.snapshot()), FsckOptions(mode="no", force=True),
                      name="image", out=out)
    assert res.exit_code == 0, out.getvalue()


class Filler:
    """Creates things until ENOSPC, remembering (dir, name) -> kind. Each lookup
    reference a create hands out is dropped at once, as the kernel would."""

    def __init__(self, fs: Filesystem):
        self.fs = fs
        self.dirs: list[int] = []
        self.made: dict[tuple[int, bytes], str] = {}
        self.n = 0

    def _dir(self) -> int:
        if self.n % PER_DIR == 0:
            name = b"d%d" % (self.n // PER_DIR)
            self.dirs.append(self._made(self.fs.mkdir(ROOT_INUM, name, 0o755)))
            self.made[(ROOT_INUM, name)] = "dir"
        return self.dirs[-1]

    def _made(self, attr) -> int:
        self.fs.forget(attr.st_ino, 1)
        return attr.st_ino

    def one(self, kind: str) -> None:
        fs = self.fs
        d = self._dir()
        name = b"%s%d" % (kind.encode(), self.n)
        if kind == "file":
            self._made(fs.create(d, name, 0o644))
        elif kind == "dir":
            self._made(fs.mkdir(d, name, 0o755))
        elif kind == "symlink":
            self._made(fs.symlink(d, name, b"target/" * 20 + name))
        elif kind in ("xattr", "data"):
            inum = self._made(fs.create(d, name, 0o644))
            self.made[(d, name)] = "file"
            self.n += 1
            if kind == "data":
                fs.write(inum, 0, os.urandom(MiB))
            for i in range(50 if kind == "xattr" else 0):
                fs.setxattr(inum, b"user.x%d" % i, b"v" * 200)
            return
        self.made[(d, name)] = "dir" if kind == "dir" else kind.replace("symlink", "link")
        self.n += 1

    def until_full(self, kind: str) -> int:
        start = self.n
        with pytest.raises(FSError) as ei:
            while True:
                self.one(kind)
        assert ei.value.errno == errno.ENOSPC, ei.value
        return self.n - start


def check_listing(fs: Filesystem, made: dict) -> None:
    want: dict[int, set[bytes]] = {}
    for (d, name), _kind in made.items():
        want.setdefault(d, set()).add(name)
    for d, names in want.items():
        got = {n for n, _a, _o in fs.readdir(d)} - {b".", b".."}
        if d == ROOT_INUM:
            got.discard(b"lost+found")
        assert got == names, (d, len(got), len(names))


@pytest.mark.parametrize("size,kind", [(16, "file"), (16, "dir"), (16, "symlink"),
                                       (16, "xattr"), (16, "data"), (64, "file")])
def test_fill_delete_refill(size, kind):
    dev = MemDevice(size * MiB)
    format_device(dev)
    eng = Engine(dev)
    fs = Filesystem(eng)
    f = Filler(fs)
    n = f.until_full(kind)
    if kind == "data":
        n += f.until_full("file")       # then small files into what is left
    assert n > 10
    assert eng.failed is None and not fs.read_only
    full = fs.statfs()
    assert full.f_bavail * 4096 <= eng.alloc.bucket_size, "df must say full at ENOSPC"
    # Deleting always works on the full filesystem and gives space back.
    victims = [k for k in f.made if k[0] != ROOT_INUM][: max(10, len(f.made) // 3)]
    for d, name in victims:
        if f.made.pop((d, name)) == "dir":
            fs.rmdir(d, name)
        else:
            fs.unlink(d, name)
    assert fs.statfs().f_bavail > full.f_bavail
    f.until_full("file")                # and creating works again
    assert eng.failed is None and not fs.read_only
    s = fs.statfs()
    assert s.f_files - s.f_ffree == fs.ninodes
    eng.close()
    fsck_clean(dev)
    eng = Engine(dev)
    fs = Filesystem(eng)
    check_listing(fs, f.made)
    assert fs.statfs().f_files - fs.statfs().f_ffree == len(f.made) + 2   # root, lost+found
    eng.close()


def test_delete_everything_on_a_full_filesystem():
    """rm -rf of all of it, with the kernel's lookup references held (the
    orphan path), on a filesystem with no space left for users."""
    dev = MemDevice(16 * MiB)
    format_device(dev)
    eng = Engine(dev)
    fs = Filesystem(eng)
    f = Filler(fs)
    f.until_full("file")
    for (d, name), kind in sorted(f.made.items(), key=lambda kv: kv[1] == "dir"):
        a = fs.lookup(d, name)          # the kernel looks up before it unlinks
        (fs.rmdir if kind == "dir" else fs.unlink)(d, name)
        fs.forget(a.st_ino, 1)
    s = fs.statfs()
    assert s.f_files - s.f_ffree == 2
    assert s.f_blocks - s.f_bfree < s.f_blocks // 8, "deleted space came back"
    eng.close()
    fsck_clean(dev)


def test_statfs_counts_live_bytes_and_inodes(fsenv):
    fs = fsenv.fs
    s0 = fs.statfs()
    assert s0.f_files - s0.f_ffree == 2                 # root and lost+found
    assert s0.f_bavail < s0.f_bfree <= s0.f_blocks      # the reserves are not available
    a = fs.create(ROOT_INUM, b"f", 0o644)
    fs.write(a.st_ino, 0, b"x" * (3 * MiB))
    s1 = fs.statfs()
    assert s1.f_files - s1.f_ffree == 3
    used = (s1.f_bfree and (s0.f_bfree - s1.f_bfree)) * 4096
    assert 3 * MiB <= used < 3 * MiB + 4 * fsenv.eng.node_size
    fs.unlink(ROOT_INUM, b"f")
    fs.forget(a.st_ino, 1)
    s2 = fs.statfs()
    assert s2.f_files - s2.f_ffree == 2
    assert s2.f_bfree >= s1.f_bfree + 3 * MiB // 4096 - 64


def test_a_failed_create_leaves_nothing_behind():
    dev = MemDevice(16 * MiB)
    format_device(dev)
    eng = Engine(dev)
    fs = Filesystem(eng)
    f = Filler(fs)
    f.until_full("file")
    before = fs.ninodes
    d = f.dirs[-1]
    names = {n for n, _a, _o in fs.readdir(d)}
    for kind in ("create", "mkdir", "symlink"):
        with pytest.raises(FSError) as ei:
            if kind == "create":
                fs.create(d, b"late", 0o644)
            elif kind == "mkdir":
                fs.mkdir(d, b"late", 0o755)
            else:
                fs.symlink(d, b"late", b"t")
        assert ei.value.errno == errno.ENOSPC
    assert {n for n, _a, _o in fs.readdir(d)} == names
    assert fs.ninodes == before
    eng.close()
    fsck_clean(dev)
