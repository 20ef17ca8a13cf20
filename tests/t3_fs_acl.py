"""POSIX ACLs at the Filesystem API: validation of the xattr format, the mode
kept in step with the access ACL both ways, default ACLs inherited by new
inodes (Linux's posix_acl_update_mode / posix_acl_chmod / posix_acl_create)."""

from __future__ import annotations

import errno
import stat
import struct

import pytest

from pyfs.fs import FSError
from pyfs.fs.acl import (
    ACCESS,
    DEFAULT,
    GROUP,
    GROUP_OBJ,
    MASK,
    OTHER,
    UNDEFINED_ID,
    USER,
    USER_OBJ,
    pack,
    parse,
)
from pyfs.fs.inode import ROOT_INUM

ROOT = ROOT_INUM
U = UNDEFINED_ID


def raises(err: int, fn, *args):
    with pytest.raises(FSError) as ei:
        fn(*args)
    assert ei.value.errno == err, f"{ei.value} is not {errno.errorcode[err]}"


def acl(*entries) -> bytes:
    return pack(list(entries))


def perms(mode: int) -> int:
    return stat.S_IMODE(mode)


# ---------------------------------------------------------------- the format

@pytest.mark.parametrize("value, err", [
    (b"", errno.EINVAL),
    (b"\x02\0\0", errno.EINVAL),
    (b"\x02\0\0\0acl", errno.EINVAL),                         # not whole entries
    (b"\x01\0\0\0" + struct.pack("<HHI", USER_OBJ, 6, U), errno.EOPNOTSUPP),  # version
    (acl((USER_OBJ, 6, U), (OTHER, 4, U)), errno.EINVAL),      # no group entry
    (acl((GROUP_OBJ, 4, U), (USER_OBJ, 6, U), (OTHER, 4, U)), errno.EINVAL),  # order
    (acl((USER_OBJ, 8, U), (GROUP_OBJ, 4, U), (OTHER, 4, U)), errno.EINVAL),  # perm
    (acl((USER_OBJ, 6, U), (USER, 4, 7), (GROUP_OBJ, 4, U), (OTHER, 4, U)),
     errno.EINVAL),                                            # named entry, no mask
    (acl((USER_OBJ, 6, U), (USER, 4, U), (GROUP_OBJ, 4, U), (MASK, 4, U), (OTHER, 4, U)),
     errno.EINVAL),                                            # named entry, no id
    (acl((USER_OBJ, 6, U), (GROUP_OBJ, 4, U), (OTHER, 4, U), (OTHER, 4, U)),
     errno.EINVAL),                                            # two others
    (acl((USER_OBJ, 6, U), (GROUP_OBJ, 4, U), (0x40, 4, U), (OTHER, 4, U)), errno.EINVAL),
])
def test_malformed_values_refused(fsenv, value, err):
    fs = fsenv.fs
    f = fs.create(ROOT, b"f", 0o640).st_ino
    raises(err, fs.setxattr, f, ACCESS, value)
    assert perms(fs.getattr(f).st_mode) == 0o640
    raises(errno.ENODATA, fs.getxattr, f, ACCESS)


def test_parse_ignores_ids_of_unnamed_entries():
    assert parse(acl((USER_OBJ, 7, 5), (GROUP_OBJ, 5, 6), (OTHER, 0, 7))) == [
        (USER_OBJ, 7, U), (GROUP_OBJ, 5, U), (OTHER, 0, U)]
    assert parse(b"\x02\0\0\0") is None


# ---------------------------------------------------------------- mode <-> ACL

def test_equivalent_acl_sets_mode_and_is_not_stored(fsenv):
    fs = fsenv.fs
    f = fs.create(ROOT, b"f", 0o600 | stat.S_ISUID).st_ino
    fs.setxattr(f, ACCESS, acl((USER_OBJ, 6, U), (GROUP_OBJ, 4, U), (OTHER, 4, U)))
    assert fs.getattr(f).st_mode == stat.S_IFREG | stat.S_ISUID | 0o644
    raises(errno.ENODATA, fs.getxattr, f, ACCESS)
    assert fs.listxattr(f) == []


def test_extended_acl_is_stored_and_its_mask_is_the_group_bits(fsenv):
    fs = fsenv.fs
    f = fs.create(ROOT, b"f", 0o600).st_ino
    value = acl((USER_OBJ, 7, U), (USER, 6, 1000), (GROUP_OBJ, 4, U), (GROUP, 7, 50),
                (MASK, 6, U), (OTHER, 1, U))
    fs.setxattr(f, ACCESS, value)
    assert perms(fs.getattr(f).st_mode) == 0o761
    assert fs.getxattr(f, ACCESS) == value
    assert fs.listxattr(f) == [ACCESS]
    # chmod: owner, mask and other follow; the group entry and named entries stay.
    fs.setattr(f, mode=0o540)
    assert parse(fs.getxattr(f, ACCESS)) == [
        (USER_OBJ, 5, U), (USER, 6, 1000), (GROUP_OBJ, 4, U), (GROUP, 7, 50),
        (MASK, 4, U), (OTHER, 0, U)]
    assert perms(fs.getattr(f).st_mode) == 0o540
    # Back to the minimal ACL (setfacl -b): stored ACL gone, mode from it.
    fs.setxattr(f, ACCESS, acl((USER_OBJ, 6, U), (GROUP_OBJ, 0, U), (OTHER, 0, U)))
    assert perms(fs.getattr(f).st_mode) == 0o600
    raises(errno.ENODATA, fs.getxattr, f, ACCESS)
    fs2 = fsenv.remount()
    assert perms(fs2.getattr(f).st_mode) == 0o600


def test_mask_without_named_entries_is_kept(fsenv):
    fs = fsenv.fs
    f = fs.create(ROOT, b"f", 0o644).st_ino
    fs.setxattr(f, ACCESS, acl((USER_OBJ, 6, U), (GROUP_OBJ, 7, U), (MASK, 4, U),
                               (OTHER, 0, U)))
    assert perms(fs.getattr(f).st_mode) == 0o640
    fs.setattr(f, mode=0o600)
    assert parse(fs.getxattr(f, ACCESS)) == [
        (USER_OBJ, 6, U), (GROUP_OBJ, 7, U), (MASK, 0, U), (OTHER, 0, U)]


def test_removing_the_access_acl_keeps_the_mode(fsenv):
    fs = fsenv.fs
    f = fs.create(ROOT, b"f", 0o600).st_ino
    fs.setxattr(f, ACCESS, acl((USER_OBJ, 6, U), (USER, 7, 3), (GROUP_OBJ, 0, U),
                               (MASK, 5, U), (OTHER, 0, U)))
    fs.removexattr(f, ACCESS)
    assert perms(fs.getattr(f).st_mode) == 0o650
    fs.setattr(f, mode=0o600)                     # no ACL left to update
    raises(errno.ENODATA, fs.getxattr, f, ACCESS)
    fs.setxattr(f, ACCESS, b"\x02\0\0\0")         # an empty ACL removes (none here)


def test_where_acls_may_not_go(fsenv):
    fs = fsenv.fs
    f = fs.create(ROOT, b"f", 0o644).st_ino
    ln = fs.symlink(ROOT, b"ln", b"f").st_ino
    minimal = acl((USER_OBJ, 7, U), (GROUP_OBJ, 5, U), (OTHER, 5, U))
    raises(errno.EACCES, fs.setxattr, f, DEFAULT, minimal)
    raises(errno.EOPNOTSUPP, fs.setxattr, ln, ACCESS, minimal)
    raises(errno.EOPNOTSUPP, fs.setxattr, ln, DEFAULT, minimal)


# ---------------------------------------------------------------- inheritance

def test_default_acl_inherited_by_new_inodes(fsenv):
    fs = fsenv.fs
    d = fs.mkdir(ROOT, b"d", 0o755).st_ino
    default = acl((USER_OBJ, 7, U), (USER, 7, 1000), (GROUP_OBJ, 5, U), (MASK, 7, U),
                  (OTHER, 0, U))
    fs.setxattr(d, DEFAULT, default)
    assert fs.getxattr(d, DEFAULT) == default
    assert perms(fs.getattr(d).st_mode) == 0o755          # a default ACL leaves the mode
    f = fs.create(d, b"f", 0o664)
    assert perms(f.st_mode) == 0o660                      # other masked by the ACL
    assert parse(fs.getxattr(f.st_ino, ACCESS)) == [
        (USER_OBJ, 6, U), (USER, 7, 1000), (GROUP_OBJ, 5, U), (MASK, 6, U), (OTHER, 0, U)]
    raises(errno.ENODATA, fs.getxattr, f.st_ino, DEFAULT)
    sub = fs.mkdir(d, b"sub", 0o750)
    assert perms(sub.st_mode) == 0o750
    assert fs.getxattr(sub.st_ino, DEFAULT) == default    # directories pass it on
    assert parse(fs.getxattr(sub.st_ino, ACCESS))[3] == (MASK, 5, U)
    deeper = fs.create(sub.st_ino, b"g", 0o600)
    assert perms(deeper.st_mode) == 0o600
    fifo = fs.mknod(d, b"p", stat.S_IFIFO | 0o666)
    assert perms(fifo.st_mode) == 0o660
    ln = fs.symlink(d, b"ln", b"f")
    assert perms(ln.st_mode) == 0o777
    assert fs.listxattr(ln.st_ino) == []
    fs2 = fsenv.remount()
    assert fs2.getxattr(sub.st_ino, DEFAULT) == default


def test_equivalent_inherited_acl_only_masks_the_mode(fsenv):
    fs = fsenv.fs
    d = fs.mkdir(ROOT, b"d", 0o777).st_ino
    fs.setxattr(d, DEFAULT, acl((USER_OBJ, 7, U), (GROUP_OBJ, 5, U), (OTHER, 0, U)))
    f = fs.create(d, b"f", 0o666)
    assert perms(f.st_mode) == 0o640
    assert fs.listxattr(f.st_ino) == []
    sub = fs.mkdir(d, b"s", 0o777)
    assert perms(sub.st_mode) == 0o750
    assert fs.listxattr(sub.st_ino) == [DEFAULT]
    fs.removexattr(d, DEFAULT)
    assert perms(fs.create(d, b"g", 0o666).st_mode) == 0o666


def test_acls_go_with_the_inode(fsenv):
    fs = fsenv.fs
    d = fs.mkdir(ROOT, b"d", 0o755).st_ino
    fs.setxattr(d, DEFAULT, acl((USER_OBJ, 7, U), (GROUP_OBJ, 5, U), (GROUP, 7, 9),
                                (MASK, 7, U), (OTHER, 5, U)))
    f = fs.create(d, b"f", 0o644).st_ino
    assert fs.listxattr(f) == [ACCESS]
    fs.forget(f, 1)
    fs.unlink(d, b"f")
    raises(errno.ENOENT, fs.getattr, f)
    fs.rmdir(ROOT, b"d")
