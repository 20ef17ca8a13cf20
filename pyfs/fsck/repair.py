"""Repair primitives shared by the passes: transactions, inodes, hashed tables.

Every change goes through the engine's transactions, so it is journaled and
atomic like any other update. Before the alloc pass has made the allocation
info trustworthy, changes run with the extents trigger off (Committer.triggers_off) and
the alloc pass recounts afterwards; from then on the triggers keep alloc keys
and backpointers right, exactly as in normal operation.
"""

from __future__ import annotations

import stat
import struct

from ..alloc.foreground import Watermark
from ..format import (
    JSET_HDR_SIZE,
    BtreeId,
    Dirent,
    Inode,
    pack_key,
)
from ..fs import dir as hashtab
from ..fs.inode import inode_key, orphan_key

INO = BtreeId.inodes
EXT = BtreeId.extents
DIRENTS = BtreeId.dirents
XATTRS = BtreeId.xattrs
MAX_LO = (1 << 64) - 1
_u64 = struct.Struct("<Q")


def chunk_keys(eng) -> int:
    """Keys per transaction for bulk deletes: a quarter of a journal entry."""
    j = eng.journal
    return max(8, (j.entry_max - JSET_HDR_SIZE - j.slack) // 4 // 96)


def apply(eng, updates: list[tuple[int, bytes, bytes | None]]) -> None:
    """Commit (btree, key, value or None) updates in journal-sized transactions."""
    n = chunk_keys(eng)
    for i in range(0, len(updates), n):
        t = eng.trans(Watermark.btree)
        for bid, key, val in updates[i:i + n]:
            if val is None:
                t.delete(bid, key)
            else:
                t.set(bid, key, val)
        t.commit()


def get_inode(eng, inum: int) -> Inode | None:
    v = eng.btrees.get(INO, inode_key(inum))
    return Inode.unpack(v) if v is not None else None


def update_inode(eng, inum: int, **fields) -> None:
    ino = get_inode(eng, inum)
    if ino is None:
        return
    t = eng.trans(Watermark.btree)
    t.set(INO, inode_key(inum), ino.replace(**fields).pack())
    t.commit()


def put_inode(eng, inum: int, ino: Inode) -> None:
    t = eng.trans(Watermark.btree)
    t.set(INO, inode_key(inum), ino.pack())
    t.commit()


def owned_keys(eng, bid: int, owner: int, limit: int) -> list[bytes]:
    out = []
    for k, _v in eng.btrees.iter(bid, pack_key(owner, 0), pack_key(owner, MAX_LO)):
        out.append(k)
        if len(out) >= limit:
            break
    return out


def owns_any(eng, bid: int, owner: int) -> bool:
    return eng.btrees.first(bid, pack_key(owner, 0), pack_key(owner, MAX_LO)) is not None


def delete_owned(eng, bid: int, owner: int) -> int:
    """Delete every key of owner in btree bid, a transaction per chunk."""
    n = chunk_keys(eng)
    total = 0
    while True:
        keys = owned_keys(eng, bid, owner, n)
        if not keys:
            return total
        apply(eng, [(bid, k, None) for k in keys])
        total += len(keys)


def delete_inode(eng, inum: int) -> None:
    """Delete an inode with its extents, xattrs and orphan entry (not its dirents)."""
    delete_owned(eng, EXT, inum)
    delete_owned(eng, XATTRS, inum)
    t = eng.trans(Watermark.btree)
    t.delete(INO, inode_key(inum))
    if eng.btrees.get(INO, orphan_key(inum)) is not None:
        t.delete(INO, orphan_key(inum))
    t.commit()


# --------------------------------------------------------------------------
# Hashed tables (dirents, xattrs): through the fs layer's own rules (pyfs/fs/dir.py)


def unique_name(t, seed: int, owner: int, base: bytes) -> bytes:
    """base, or base~N for the first N that makes it unique in directory owner."""
    name = base[:255]
    n = 0
    while True:
        slot, _v, _free = hashtab.find(t.get, hashtab.DIRENTS, owner,
                                       hashtab.name_hash(seed, name), name)
        if slot is None:
            return name
        n += 1
        suffix = b"~%d" % n
        name = base[:255 - len(suffix)] + suffix


def add_dirent(t, seed: int, owner: int, name: bytes, inum: int, d_type: int) -> int:
    """Insert a dirent (name must be unique in owner); returns its slot."""
    home = hashtab.name_hash(seed, name)
    _slot, _v, free = hashtab.find(t.get, hashtab.DIRENTS, owner, home, name)
    t.set(DIRENTS, pack_key(owner, free),
          Dirent(inum=inum, d_type=d_type, hash=home, tail=name).pack())
    return free


def is_dir_mode(mode: int) -> bool:
    return stat.S_ISDIR(mode)


def show(name: bytes, limit: int = 48) -> str:
    """A name for a message: repr of its bytes, shortened."""
    if len(name) > limit:
        return repr(name[:limit])[:-1] + "...'"
    return repr(name)


def plural(n: int, noun: str) -> str:
    if n == 1:
        return f"{n} {noun}"
    return f"{n} {noun[:-1]}ies" if noun.endswith("y") else f"{n} {noun}s"
