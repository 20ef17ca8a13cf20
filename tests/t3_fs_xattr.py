"""Extended attributes: namespaces, flags, limits, a 64 KiB value, deletion."""

from __future__ import annotations

import errno
import os

import pytest

from pyfs.format import BtreeId, pack_key
from pyfs.fs import FSError
from pyfs.fs.acl import GROUP_OBJ, MASK, OTHER, UNDEFINED_ID, USER, USER_OBJ, pack
from pyfs.fs.inode import ROOT_INUM
from pyfs.fs.xattr import XATTR_CREATE, XATTR_REPLACE

ROOT = ROOT_INUM


def raises(err: int, fn, *args, **kw):
    with pytest.raises(FSError) as ei:
        fn(*args, **kw)
    assert ei.value.errno == err, f"{ei.value} is not {errno.errorcode[err]}"


def test_set_get_list_remove(fsenv):
    fs = fsenv.fs
    f = fs.create(ROOT, b"f", 0o644).st_ino
    assert fs.listxattr(f) == []
    fs.setxattr(f, b"user.a", b"1")
    fs.setxattr(f, b"trusted.b", b"")
    fs.setxattr(f, b"security.selinux", b"ctx\0")
    acl = pack([(USER_OBJ, 6, UNDEFINED_ID), (USER, 4, 1000), (GROUP_OBJ, 4, UNDEFINED_ID),
                (MASK, 4, UNDEFINED_ID), (OTHER, 4, UNDEFINED_ID)])
    fs.setxattr(f, b"system.posix_acl_access", acl)      # tests/t3_fs_acl.py: the rules
    assert fs.getxattr(f, b"user.a") == b"1"
    assert fs.getxattr(f, b"trusted.b") == b""
    assert sorted(fs.listxattr(f)) == sorted([b"user.a", b"trusted.b", b"security.selinux",
                                               b"system.posix_acl_access"])
    fs.setxattr(f, b"user.a", b"two")
    assert fs.getxattr(f, b"user.a") == b"two"
    fs.removexattr(f, b"user.a")
    raises(errno.ENODATA, fs.getxattr, f, b"user.a")
    raises(errno.ENODATA, fs.removexattr, f, b"user.a")
    fs.setxattr(ROOT, b"user.on_dir", b"d")
    fs2 = fsenv.remount()
    assert fs2.getxattr(f, b"security.selinux") == b"ctx\0"
    assert fs2.getxattr(ROOT, b"user.on_dir") == b"d"


def test_flags(fsenv):
    fs = fsenv.fs
    f = fs.create(ROOT, b"f", 0o644).st_ino
    raises(errno.ENODATA, fs.setxattr, f, b"user.x", b"v", XATTR_REPLACE)
    fs.setxattr(f, b"user.x", b"v", XATTR_CREATE)
    raises(errno.EEXIST, fs.setxattr, f, b"user.x", b"w", XATTR_CREATE)
    fs.setxattr(f, b"user.x", b"w", XATTR_REPLACE)
    assert fs.getxattr(f, b"user.x") == b"w"
    raises(errno.EINVAL, fs.setxattr, f, b"user.x", b"w", 4)


def test_names(fsenv):
    fs = fsenv.fs
    f = fs.create(ROOT, b"f", 0o644).st_ino
    fs.setxattr(f, b"user." + b"n" * 250, b"max")
    raises(errno.ERANGE, fs.setxattr, f, b"user." + b"n" * 251, b"x")
    raises(errno.ERANGE, fs.getxattr, f, b"user." + b"n" * 251)
    raises(errno.ERANGE, fs.setxattr, f, b"", b"x")
    raises(errno.EOPNOTSUPP, fs.setxattr, f, b"bogus.name", b"x")
    raises(errno.EOPNOTSUPP, fs.setxattr, f, b"system.other", b"x")
    raises(errno.EINVAL, fs.setxattr, f, b"user.", b"x")
    assert fs.getxattr(f, b"user." + b"n" * 250) == b"max"


def test_value_limit_small_nodes(fsenv):
    fs = fsenv.fs
    f = fs.create(ROOT, b"f", 0o644).st_ino
    limit = fs.xattrs.value_max(b"user.big")
    assert 0 < limit < 65536            # 128 KiB nodes cannot hold 64 KiB values
    fs.setxattr(f, b"user.big", b"v" * limit)
    raises(errno.E2BIG, fs.setxattr, f, b"user.big2", b"v" * (limit + 1))
    assert len(fs.getxattr(f, b"user.big")) == limit


def test_64k_value(make_fsenv):
    env = make_fsenv(256 << 20, bucket_size=256 << 10, btree_node_size=256 << 10)
    fs = env.fs
    f = fs.create(ROOT, b"f", 0o644).st_ino
    assert fs.xattrs.value_max(b"user.big") == 65536
    big = os.urandom(65536)
    fs.setxattr(f, b"user.big", big)
    raises(errno.E2BIG, fs.setxattr, f, b"user.big2", big + b"x")
    for i in range(5):
        fs.setxattr(f, b"user.more%d" % i, os.urandom(65536))
    assert fs.getxattr(f, b"user.big") == big
    fs2 = env.remount()
    assert fs2.getxattr(f, b"user.big") == big
    assert len(fs2.listxattr(f)) == 6


def test_xattrs_deleted_with_inode(fsenv):
    fs, eng = fsenv.fs, fsenv.eng
    f = fs.create(ROOT, b"f", 0o644).st_ino
    for i in range(20):
        fs.setxattr(f, b"user.k%d" % i, b"v" * 100)
    fs.forget(f, 1)
    fs.unlink(ROOT, b"f")
    assert eng.btrees.first(BtreeId.xattrs, pack_key(f, 0), pack_key(f, 2**64 - 1)) is None


def test_xattr_on_missing_inode(fsenv):
    fs = fsenv.fs
    raises(errno.ENOENT, fs.getxattr, 424242, b"user.x")
    raises(errno.ENOENT, fs.setxattr, 424242, b"user.x", b"")
