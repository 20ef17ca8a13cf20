"""lookup(ino, "."), the request the kernel sends to resolve a file handle of
an uncached inode: every inode type, counted like any lookup, ENOENT once gone."""

from __future__ import annotations

import errno
import os
import stat

import pytest

from pyfs.fs import FSError
from pyfs.fs.inode import ROOT_INUM

ROOT = ROOT_INUM


def raises(err: int, fn, *args):
    with pytest.raises(FSError) as ei:
        fn(*args)
    assert ei.value.errno == err, f"{ei.value} is not {errno.errorcode[err]}"


def test_dot_lookup_of_every_type(fsenv):
    fs = fsenv.fs
    made = [fs.create(ROOT, b"f", 0o644), fs.mkdir(ROOT, b"d", 0o755),
            fs.symlink(ROOT, b"l", b"target"),
            fs.mknod(ROOT, b"p", stat.S_IFIFO | 0o644),
            fs.mknod(ROOT, b"s", stat.S_IFSOCK | 0o644),
            fs.mknod(ROOT, b"c", stat.S_IFCHR | 0o644, os.makedev(1, 3))]
    for a in made:
        got = fs.lookup(a.st_ino, b".")
        assert (got.st_ino, got.st_mode, got.generation) == (a.st_ino, a.st_mode, a.generation)
        assert fs.lookups[a.st_ino] == 2            # the create's reference and this one
    raises(errno.ENOTDIR, fs.lookup, made[0].st_ino, b"..")
    raises(errno.ENOTDIR, fs.lookup, made[0].st_ino, b"x")


def test_dot_lookup_counts_like_any_lookup(fsenv):
    fs = fsenv.fs
    a = fs.create(ROOT, b"a", 0o644)
    fs.write(a.st_ino, 0, b"data")
    fs.forget(a.st_ino, 1)                          # the kernel evicted it
    fs.open(a.st_ino, os.O_RDONLY)
    fs.unlink(ROOT, b"a")                           # open: kept as an orphan
    assert fs.lookup(a.st_ino, b".").st_nlink == 0  # found by handle
    fs.open(a.st_ino, os.O_RDONLY)                  # opened by handle
    fs.release(a.st_ino)
    assert fs.read(a.st_ino, 0, 10) == b"data"      # one open left keeps it
    fs.release(a.st_ino)                            # no open left: deleted
    raises(errno.ENOENT, fs.getattr, a.st_ino)
    raises(errno.ENOENT, fs.lookup, a.st_ino, b".")  # the handle is stale now
    assert a.st_ino in fs.inums.held                # until the kernel forgets it
    fs.forget(a.st_ino, 1)
    assert a.st_ino not in fs.lookups and a.st_ino not in fs.inums.held
