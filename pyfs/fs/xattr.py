"""Extended attributes: key (inum, slot) -> Xattr(name_len, hash, tail=name+value).

Slots are hashed and probed like directory entries (see dir.py). Names carry
their namespace prefix and are stored whole; values are opaque, except POSIX
ACLs, which acl.py validates and keeps in step with the mode.
"""

from __future__ import annotations

import errno

from ..format import JSET_KEY_SIZE, Xattr, pack_key
from . import dir as hashtab
from .errors import FSError

XATTR_CREATE = 1
XATTR_REPLACE = 2
XATTR_NAME_MAX = 255
XATTR_SIZE_MAX = 65536
NAMESPACES = (b"user.", b"trusted.", b"security.")
SYSTEM_NAMES = (b"system.posix_acl_access", b"system.posix_acl_default")
INODE_HEADROOM = 512            # journal room kept for the inode update beside it


def check_name(name: bytes) -> None:
    """Linux's rules: empty or > 255 bytes is ERANGE; unknown namespace EOPNOTSUPP."""
    if not name or len(name) > XATTR_NAME_MAX:
        raise FSError(errno.ERANGE, "xattr name length")
    if name in SYSTEM_NAMES:
        return
    for ns in NAMESPACES:
        if name.startswith(ns):
            if len(name) == len(ns):
                raise FSError(errno.EINVAL, "empty xattr name after namespace")
            return
    raise FSError(errno.EOPNOTSUPP, f"xattr namespace of {name!r}")


class Xattrs:
    def __init__(self, eng, seed: int, tx_budget: int):
        self.bt = eng.btrees
        self.seed = seed
        self.max_record = min(eng.btrees.max_value, tx_budget - JSET_KEY_SIZE - INODE_HEADROOM)

    def value_max(self, name: bytes) -> int:
        return max(0, min(XATTR_SIZE_MAX, self.max_record - Xattr.SIZE - len(name)))

    def _find(self, get, inum: int, name: bytes):
        return hashtab.find(get, hashtab.XATTRS, inum, hashtab.name_hash(self.seed, name), name)

    def get(self, inum: int, name: bytes) -> bytes:
        check_name(name)
        slot, val, _free = self._find(self.bt.get, inum, name)
        if slot is None:
            raise FSError(errno.ENODATA)
        return self.value_of(val, name)

    @staticmethod
    def value_of(rec: bytes, name: bytes) -> bytes:
        """The value in a stored record of name."""
        return rec[Xattr.SIZE + len(name):]

    def list(self, inum: int) -> list[bytes]:
        out = []
        for _k, v in self.bt.iter(hashtab.XATTRS.btree_id, pack_key(inum, 0),
                                  pack_key(inum, (1 << 64) - 1)):
            n = v[1]
            if n:
                out.append(v[Xattr.SIZE:Xattr.SIZE + n])
        return out

    def set(self, t, inum: int, name: bytes, value: bytes, flags: int) -> None:
        check_name(name)
        if flags & ~(XATTR_CREATE | XATTR_REPLACE):
            raise FSError(errno.EINVAL, "xattr flags")
        if len(value) > self.value_max(name):
            raise FSError(errno.E2BIG, f"xattr value of {len(value)} bytes")
        home = hashtab.name_hash(self.seed, name)
        slot, _val, free = hashtab.find(t.get, hashtab.XATTRS, inum, home, name)
        if slot is not None and flags & XATTR_CREATE:
            raise FSError(errno.EEXIST)
        if slot is None and flags & XATTR_REPLACE:
            raise FSError(errno.ENODATA)
        rec = Xattr(name_len=len(name), hash=home, tail=name + value).pack()
        t.set(hashtab.XATTRS.btree_id, pack_key(inum, free if slot is None else slot), rec)

    def remove(self, t, inum: int, name: bytes) -> None:
        check_name(name)
        slot, _v, _f = hashtab.find(t.get, hashtab.XATTRS, inum,
                                    hashtab.name_hash(self.seed, name), name)
        if slot is None:
            raise FSError(errno.ENODATA)
        hashtab.remove(t, hashtab.XATTRS, inum, slot)

    def keys(self, inum: int, limit: int) -> list[bytes]:
        """Up to limit keys (tombstones included) of inum's xattrs."""
        out: list[bytes] = []
        if limit <= 0:
            return out
        for k, _v in self.bt.iter(hashtab.XATTRS.btree_id, pack_key(inum, 0),
                                  pack_key(inum, (1 << 64) - 1)):
            out.append(k)
            if len(out) >= limit:
                break
        return out
