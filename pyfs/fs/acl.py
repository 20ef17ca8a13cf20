"""POSIX ACLs: the xattrs system.posix_acl_access / system.posix_acl_default.

Values are the kernel's posix_acl_xattr format: a little-endian u32 version
(2), then 8-byte entries (u16 tag, u16 perm, u32 id), validated as Linux's
posix_acl_valid does. The rules tying an ACL to the mode are Linux's:

- the access ACL's owner, group (the mask when there is one) and other
  entries are the mode's permission bits: setting the ACL sets them, chmod sets
  the entries; an ACL the mode says exactly (no mask, no named entries) is not
  stored (posix_acl_equiv_mode / posix_acl_update_mode, posix_acl_chmod);
- a new inode in a directory with a default ACL gets it as its access ACL,
  masked by the create mode, and the mode masked by it; a new directory also
  keeps it as its default (posix_acl_create). Symlinks have no ACLs.

Permission checks are the kernel's (FUSE_POSIX_ACL: it reads and caches the
access ACL through getxattr).
"""

from __future__ import annotations

import errno
import stat
import struct

from ..format import Inode
from . import dir as hashtab
from .errors import FSError
from .xattr import Xattrs

ACCESS = b"system.posix_acl_access"
DEFAULT = b"system.posix_acl_default"
NAMES = (ACCESS, DEFAULT)

VERSION = 2
USER_OBJ, USER, GROUP_OBJ, GROUP, MASK, OTHER = 0x01, 0x02, 0x04, 0x08, 0x10, 0x20
UNDEFINED_ID = 0xFFFFFFFF
# The kernel reads a FUSE filesystem's ACL into one page.
MAX_ENTRIES = (4096 - 4) // 8

_HDR = struct.Struct("<I")
_ENTRY = struct.Struct("<HHI")

Entry = tuple[int, int, int]        # (tag, perm, id)


def _einval(why: str) -> FSError:
    return FSError(errno.EINVAL, f"ACL: {why}")


def parse(value: bytes) -> list[Entry] | None:
    """Decode and validate an ACL xattr value; None for an empty ACL (the
    header alone), which Linux takes as removing the ACL."""
    if len(value) < _HDR.size or (len(value) - _HDR.size) % _ENTRY.size:
        raise _einval(f"value of {len(value)} bytes")
    (version,) = _HDR.unpack_from(value)
    if version != VERSION:
        raise FSError(errno.EOPNOTSUPP, f"ACL version {version}")
    count = (len(value) - _HDR.size) // _ENTRY.size
    if count == 0:
        return None
    if count > MAX_ENTRIES:
        raise FSError(errno.E2BIG, f"ACL of {count} entries")
    entries = []
    for i in range(count):
        tag, perm, eid = _ENTRY.unpack_from(value, _HDR.size + i * _ENTRY.size)
        if tag in (USER, GROUP):
            if eid == UNDEFINED_ID:
                raise _einval("named entry without an id")
        else:
            eid = UNDEFINED_ID
        entries.append((tag, perm, eid))
    _validate(entries)
    return entries


def _validate(entries: list[Entry]) -> None:
    """Linux's posix_acl_valid: one owner, named users, one group, named groups,
    a mask (required with named entries), one other, in that order."""
    state = USER_OBJ
    needs_mask = False
    for tag, perm, _id in entries:
        if perm & ~0o7:
            raise _einval(f"permissions {perm:#o}")
        if tag == USER_OBJ and state == USER_OBJ:
            state = USER
        elif tag == USER and state == USER:
            needs_mask = True
        elif tag == GROUP_OBJ and state == USER:
            state = GROUP
        elif tag == GROUP and state == GROUP:
            needs_mask = True
        elif tag == MASK and state == GROUP:
            state = OTHER
        elif tag == OTHER and (state == OTHER or (state == GROUP and not needs_mask)):
            state = 0
        else:
            raise _einval(f"entry tag {tag:#x} out of place")
    if state != 0:
        raise _einval("missing entries")


def pack(entries: list[Entry]) -> bytes:
    return _HDR.pack(VERSION) + b"".join(_ENTRY.pack(*e) for e in entries)


def from_mode(mode: int) -> list[Entry]:
    """The minimal ACL the mode's permission bits say."""
    return [(USER_OBJ, mode >> 6 & 7, UNDEFINED_ID), (GROUP_OBJ, mode >> 3 & 7, UNDEFINED_ID),
            (OTHER, mode & 7, UNDEFINED_ID)]


def mode_of(entries: list[Entry]) -> tuple[int, bool]:
    """(permission bits the ACL gives the mode, whether the mode says it all)."""
    u = g = o = 0
    mask = None
    equivalent = True
    for tag, perm, _id in entries:
        if tag == USER_OBJ:
            u = perm
        elif tag == GROUP_OBJ:
            g = perm
        elif tag == OTHER:
            o = perm
        else:
            equivalent = False
            if tag == MASK:
                mask = perm
    return u << 6 | (g if mask is None else mask) << 3 | o, equivalent


def chmod(entries: list[Entry], mode: int) -> list[Entry]:
    """The access ACL after chmod: owner, other and the mask (or the group
    entry when there is no mask) take the new bits; named entries stay."""
    has_mask = any(tag == MASK for tag, _p, _i in entries)
    group_tag = MASK if has_mask else GROUP_OBJ
    bits = {USER_OBJ: mode >> 6 & 7, group_tag: mode >> 3 & 7, OTHER: mode & 7}
    return [(tag, bits.get(tag, perm), eid) for tag, perm, eid in entries]


def create_masq(default: list[Entry], mode: int) -> tuple[list[Entry], int, bool]:
    """Linux's posix_acl_create_masq: a new inode's access ACL from its parent's
    default ACL and the create mode; returns (ACL, mode, equivalent)."""
    u, g, o = mode >> 6 & 7, mode >> 3 & 7, mode & 7
    has_mask = any(tag == MASK for tag, _p, _i in default)
    group_tag = MASK if has_mask else GROUP_OBJ
    out = []
    for tag, perm, eid in default:
        if tag == USER_OBJ:
            perm &= u
            u = perm
        elif tag == OTHER:
            perm &= o
            o = perm
        elif tag == group_tag:
            perm &= g
            g = perm
        out.append((tag, perm, eid))
    _bits, equivalent = mode_of(out)
    return out, (mode & ~0o777) | u << 6 | g << 3 | o, equivalent


class Acls:
    """ACL xattrs of inodes, kept in step with their modes inside the caller's
    transaction."""

    def __init__(self, xattrs: Xattrs):
        self.xattrs = xattrs
        self.homes = {n: hashtab.name_hash(xattrs.seed, n) for n in NAMES}

    def _find(self, get, inum: int, name: bytes) -> tuple[int | None, bytes | None]:
        slot, val, _free = hashtab.find(get, hashtab.XATTRS, inum, self.homes[name], name)
        return slot, val

    def _get(self, get, inum: int, name: bytes) -> list[Entry] | None:
        """The stored ACL; one that does not decode (stored opaque by an older
        pyfs through the in-process API) counts as none."""
        _slot, val = self._find(get, inum, name)
        if val is None:
            return None
        try:
            return parse(self.xattrs.value_of(val, name))
        except FSError:
            return None

    def _put(self, t, inum: int, name: bytes, entries: list[Entry] | None) -> None:
        """Store entries under name, or remove the ACL (None) if it is stored."""
        if entries is not None:
            self.xattrs.set(t, inum, name, pack(entries), 0)
            return
        slot, _val = self._find(t.get, inum, name)
        if slot is not None:
            hashtab.remove(t, hashtab.XATTRS, inum, slot)

    def set(self, t, inum: int, ino: Inode, name: bytes, value: bytes) -> Inode:
        """setxattr of an ACL name: returns the inode with the mode it implies.
        XATTR_CREATE/REPLACE do not apply, as for Linux's ACL handlers."""
        if stat.S_ISLNK(ino.mode):
            raise FSError(errno.EOPNOTSUPP, "symlinks have no ACLs")
        entries = parse(value)
        if name == DEFAULT:
            if not stat.S_ISDIR(ino.mode):
                raise FSError(errno.EACCES, "default ACL on a non-directory")
            self._put(t, inum, DEFAULT, entries)
            return ino
        if entries is None:
            self._put(t, inum, ACCESS, None)
            return ino
        bits, equivalent = mode_of(entries)
        self._put(t, inum, ACCESS, None if equivalent else entries)
        return ino.replace(mode=(ino.mode & ~0o777) | bits)

    def chmod(self, t, inum: int, mode: int) -> None:
        """Carry a mode change into the access ACL, if the inode has one."""
        entries = self._get(t.get, inum, ACCESS)
        if entries is not None:
            self._put(t, inum, ACCESS, chmod(entries, mode))

    def inherit(self, t, parent: int, inum: int, mode: int) -> int:
        """A new inode's ACLs from its parent's default ACL; returns its mode."""
        if stat.S_ISLNK(mode):
            return mode
        default = self._get(t.get, parent, DEFAULT)
        if default is None:
            return mode
        access, mode, equivalent = create_masq(default, mode)
        if not equivalent:
            self._put(t, inum, ACCESS, access)
        if stat.S_ISDIR(mode):
            self._put(t, inum, DEFAULT, default)
        return mode
