"""Hashed name tables: directory entries and xattrs (bcachefs str_hash style).

An entry named N of owner O (a directory, or the inode owning an xattr)
lives at key (O, slot) where slot is the first free slot at or after
home = name_hash(N): linear probing. Homes lie in [2**61, 2**62), so slots
are >= 2 and < 2**63: FUSE readdir offsets are signed 64-bit, 0 means
"start", and offsets 1 and 2 are left for "." and "..".

Deletion keeps probe chains intact: a slot is emptied only if no live entry
after it in its run (the occupied slots up to the next empty one) has its
home at or before it; otherwise it becomes a tombstone (a Dirent with inum 0,
an Xattr with name_len 0). Emptying a slot also drops the tombstones right
before it, which nothing can need any more. Entries never move, so a slot is
a stable readdir position.
"""

from __future__ import annotations

import struct
from collections.abc import Callable

import xxhash

from ..format import BtreeId, Dirent, KeyType, Xattr, pack_key

HOME_BIT = 1 << 61
DOT_OFFSET = 1          # readdir offset after "."
DOTDOT_OFFSET = 2       # readdir offset after ".."
MAX_SLOT = (1 << 63) - 1

_u64 = struct.Struct("<Q")


def name_hash(seed: int, name: bytes) -> int:
    """Home slot of a name: a 61-bit hash with bit 61 set."""
    return xxhash.xxh3_64_intdigest(name, seed) >> 3 | HOME_BIT


class Codec:
    """How a table's values expose name and home without a full decode. The
    one implementation of the table rules: the fs layer and fsck's repairs
    both probe and remove through it."""

    def __init__(self, btree_id: int, key_type: int, min_size: int,
                 name_of: Callable[[bytes], bytes | None],
                 home_of: Callable[[bytes], int], tombstone: Callable[[int], bytes]):
        self.btree_id = btree_id
        self.key_type = key_type
        self.min_size = min_size
        self.name_of = name_of          # None for a tombstone
        self.home_of = home_of
        self.tombstone = tombstone

    def entry(self, v: bytes) -> tuple[bytes | None, int | None]:
        """(name or None for a tombstone, home or None) of a value read from an
        untrusted image: one that does not decode counts as a live entry of
        unknown home, which probes and removals step over as if it probed
        through every slot before it."""
        if len(v) < self.min_size or v[0] != self.key_type:
            return b"", None
        name = self.name_of(v)
        return (None, None) if name is None else (name, self.home_of(v))


# Dirent value: type byte, u64 inum, u8 d_type, u64 hash, name.
_DIRENT_NAME = Dirent.SIZE


def _dirent_name(v: bytes) -> bytes | None:
    return None if v[1:9] == b"\0" * 8 else v[_DIRENT_NAME:]


DIRENTS = Codec(
    BtreeId.dirents, KeyType.dirent, Dirent.SIZE, _dirent_name,
    lambda v: _u64.unpack_from(v, 10)[0],
    lambda home: Dirent(inum=0, d_type=0, hash=home).pack())


# Xattr value: type byte, u8 name_len, u64 hash, name, value.
_XATTR_NAME = Xattr.SIZE


def _xattr_name(v: bytes) -> bytes | None:
    if len(v) < _XATTR_NAME:
        return b""                      # does not decode: never a match
    n = v[1]
    return v[_XATTR_NAME:_XATTR_NAME + n] if n else None


XATTRS = Codec(
    BtreeId.xattrs, KeyType.xattr, Xattr.SIZE, _xattr_name,
    lambda v: _u64.unpack_from(v, 2)[0],
    lambda home: Xattr(name_len=0, hash=home).pack())


def find(get, codec: Codec, owner: int, home: int, name: bytes
         ) -> tuple[int | None, bytes | None, int]:
    """Probe for name: (slot, value) of the match or (None, None), and the slot an
    insert of name should take (the first tombstone or the terminating empty slot)."""
    bid = codec.btree_id
    name_of = codec.name_of
    slot = home
    free = None
    while True:
        v = get(bid, pack_key(owner, slot))
        if v is None:
            return None, None, slot if free is None else free
        n = name_of(v)
        if n is None:
            if free is None:
                free = slot
        elif n == name:
            return slot, v, slot if free is None else free
        slot += 1
        if slot > MAX_SLOT:
            raise OverflowError("hash table probe ran off the key space")


def remove(t, codec: Codec, owner: int, slot: int) -> None:
    """Delete the entry at slot in transaction t, keeping probe chains intact.
    Values that do not decode (fsck repairing an image) are kept as entries
    that probe through the slot."""
    bid = codec.btree_id
    entry = codec.entry
    s = slot + 1
    while True:
        v = t.get(bid, pack_key(owner, s))
        if v is None:
            break
        name, home = entry(v)
        if name is not None and (home is None or home <= slot):
            # A later entry probes through this slot: leave a tombstone.
            old = t.get(bid, pack_key(owner, slot))
            old_home = entry(old)[1] if old is not None else None
            t.set(bid, pack_key(owner, slot),
                  codec.tombstone(old_home if old_home is not None else slot))
            return
        s += 1
    t.delete(bid, pack_key(owner, slot))
    s = slot - 1
    while True:
        v = t.get(bid, pack_key(owner, s))
        if v is None or entry(v)[0] is not None:
            return
        t.delete(bid, pack_key(owner, s))
        s -= 1
