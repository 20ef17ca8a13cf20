"""Pass 3: every key valid for its btree and type.

Each btree's keys are decoded and range-checked; what is wrong is decided for
the whole btree first, then repaired, invalid entries of the hashed tables
first (they become tombstones, which keep probe chains intact), then renames
(which probe through those tables). The extents trigger is off: the alloc and
backpointer passes recount after this one.
"""

from __future__ import annotations

from bisect import bisect_left

from ..alloc.foreground import Watermark
from ..format import (
    BLOCK_SIZE,
    BTREE_ID_NR,
    MAX_BTREE_DEPTH,
    Alloc,
    Backpointer,
    BtreeId,
    Dirent,
    Extent,
    Inode,
    KeyType,
    Xattr,
    field_reader,
    key_to_text,
    pack_key,
    unpack_key,
)
from ..fs import dir as hashtab
from ..fs.inode import (
    FIRST_INUM,
    MAX_FILE_SIZE,
    NAME_MAX,
    ORPHAN_DELETE,
    ORPHAN_TRUNCATE,
    ROOT_INUM,
)
from ..fs.inum import INUM_LIMIT
from ..fs.xattr import XATTR_SIZE_MAX, check_name
from .context import Ctx
from .errors import Err
from .repair import add_dirent, apply, show, unique_name

END_BLOCK = MAX_FILE_SIZE // BLOCK_SIZE
HOME_LO, HOME_HI = hashtab.HOME_BIT, 1 << 62
EXPECTED_TYPE = {
    BtreeId.extents: KeyType.extent, BtreeId.dirents: KeyType.dirent,
    BtreeId.xattrs: KeyType.xattr, BtreeId.alloc: KeyType.alloc,
    BtreeId.backpointers: KeyType.backpointer,
}
FS_INFO_MIN = 13
CHECKED = (BtreeId.inodes, BtreeId.dirents, BtreeId.extents, BtreeId.xattrs, BtreeId.alloc,
           BtreeId.backpointers)


FIRST_INODE_KEY = pack_key(1, 0)    # inodes btree: below it the fs info and orphans


def valid_inum(n: int) -> bool:
    return n == ROOT_INUM or FIRST_INUM <= n < INUM_LIMIT


def pass3(ctx: Ctx) -> None:
    with ctx.eng.committer.triggers_off():
        for bid in CHECKED:
            _check_btree(ctx, bid)


def _check_btree(ctx: Ctx, bid: int) -> None:
    check = CHECKERS[bid]
    drops: list[tuple[Err, str, bytes, bytes | None]] = []    # replace with value or drop
    renames: list[tuple[Err, str, bytes, bytes]] = []
    # Hoisted out of the per-key loop: its cost is the fsck's cost per file.
    bname = BtreeId(bid).name
    label = f"{bname} keys"
    ok_types = _allowed_types(bid)
    progress = ctx.rep.progress
    n = inode_keys = 0
    for keys, vals in ctx.bt.leaves(bid):
        before, n = n, n + len(keys)
        if n >> 12 != before >> 12:
            progress(label, n, 0)
        if bid == BtreeId.inodes:
            # what the fs info's inode count should say: keys of inodes sort
            # after those of the fs info and orphans (inode number 0)
            inode_keys += len(keys) - bisect_left(keys, FIRST_INODE_KEY)
        for k, v in zip(keys, vals):
            if ok_types is not None and v[0] not in ok_types:
                drops.append((Err.key_wrong_type, f"{bname} key {key_to_text(k)}: value of "
                              f"type {_type_name(v[0])} in the {bname} btree", k,
                              _tombstone(bid, k)))
                continue
            res = check(ctx, k, v)
            if res is not None:
                _found(ctx, bid, f"{bname} key {key_to_text(k)}", k, v, res, drops, renames)
    ctx.model.inode_keys += inode_keys
    for err, msg, k, val in drops:
        if not ctx.rep.problem(err, msg, lambda k=k, val=val: apply(ctx.eng, [(bid, k, val)])):
            ctx.bad_keys.add((bid, k))
    for err, msg, k, v in renames:
        ctx.rep.problem(err, msg, lambda k=k, v=v: _rename_dirent(ctx, k, v))


def _allowed_types(bid: int) -> tuple[int, ...] | None:
    """The value types a btree may hold (None: any)."""
    if bid == BtreeId.inodes:
        return (KeyType.inode, KeyType.raw)
    exp = EXPECTED_TYPE.get(bid)
    return None if exp is None else (exp,)


def _found(ctx: Ctx, bid: int, where: str, k: bytes, v: bytes, res: tuple,
           drops: list, renames: list) -> None:
    """A key its checker objected to: to rename, to rewrite (fs info), to drop or replace."""
    err, why, action = res
    msg = f"{where}: {why}"
    if action == "rename":
        renames.append((err, msg, k, v))
    elif action == "fsinfo":
        ctx.rep.problem(err, msg, lambda: setattr(ctx.model, "fs_info_rewrite", True))
        ctx.bad_keys.add((bid, k))
    else:
        drops.append((err, msg, k, action))


def _type_name(t: int) -> str:
    return KeyType(t).name if t in KeyType._value2member_map_ else str(t)


def _tombstone(bid: int, k: bytes) -> bytes | None:
    """What replaces a bad entry: a tombstone in a hashed table (when the slot is a
    legal one, so a probe chain may run through it), else nothing."""
    if bid not in (BtreeId.dirents, BtreeId.xattrs):
        return None
    owner, slot = unpack_key(k)
    if not (valid_inum(owner) and HOME_LO <= slot <= hashtab.MAX_SLOT):
        return None
    codec = hashtab.DIRENTS if bid == BtreeId.dirents else hashtab.XATTRS
    return codec.tombstone(min(slot, HOME_HI - 1))


# --------------------------------------------------------------------------
# Per-btree checks: (err, why, action) with action None (drop), bytes
# (replace) or "rename"; None when the key is fine.

def _inode(ctx: Ctx, k: bytes, v: bytes):
    hi, lo = unpack_key(k)
    if hi == 0:
        return _inode_special(ctx, lo, v)
    if lo != 0:
        return Err.inode_key_bad, f"inode key with low half {lo}", None
    if not valid_inum(hi):
        return Err.inode_key_bad, f"inode number {hi} is reserved or too large", None
    if v[0] != KeyType.inode:
        return Err.key_wrong_type, f"value of type {_type_name(v[0])} in the inodes btree", None
    if len(v) < Inode.SIZE:
        return Err.inode_key_bad, f"inode value of {len(v)} bytes does not decode", None
    return None


def _inode_special(ctx: Ctx, lo: int, v: bytes):
    if lo == 0:
        if v[0] != KeyType.raw or len(v) < FS_INFO_MIN:
            return Err.fs_info_bad, "filesystem info record does not decode", "fsinfo"
        return None
    if not valid_inum(lo):
        return Err.orphan_key_bad, f"orphan entry for impossible inode {lo}", None
    if v[0] != KeyType.raw or len(v) != 2 or v[1:2] not in (ORPHAN_DELETE, ORPHAN_TRUNCATE):
        return Err.orphan_key_bad, "orphan entry of unknown kind", None
    return None


_dirent_inum = field_reader(Dirent, "inum")
BAD_NAMES = (b".", b"..")


def _dirent(ctx: Ctx, k: bytes, v: bytes):
    owner, slot = unpack_key(k)
    if not valid_inum(owner) or not HOME_LO <= slot <= hashtab.MAX_SLOT:
        return Err.dirent_bad, "directory or slot out of range", None
    if len(v) < Dirent.SIZE:
        return Err.dirent_bad, f"value of {len(v)} bytes does not decode", _tombstone(
            BtreeId.dirents, k)
    # Only the target and the name are checked: no full decode.
    inum = _dirent_inum(v)[0]
    if inum == 0:
        return None
    name = v[Dirent.SIZE:]
    if not valid_inum(inum):
        return (Err.dirent_bad, f"entry {show(name)}: target inode {inum} is reserved or "
                f"too large", _tombstone(BtreeId.dirents, k))
    if not name or len(name) > NAME_MAX or b"/" in name or b"\0" in name or name in BAD_NAMES:
        return Err.dirent_name_bad, f"bad name {show(name)} ({len(name)} bytes)", "rename"
    return None


def _extent(ctx: Ctx, k: bytes, v: bytes):
    inum, fblk = unpack_key(k)
    if not valid_inum(inum):
        return Err.extent_bad, f"inode number {inum} is reserved or too large", None
    if len(v) != Extent.SIZE:
        return Err.extent_bad, f"value of {len(v)} bytes does not decode", None
    e = Extent.unpack(v)
    bs = ctx.bs
    alloc = ctx.eng.alloc
    if not e.region_blocks or not e.nblocks:
        return Err.extent_bad, "empty region or no live blocks", None
    if e.dev_offset % BLOCK_SIZE:
        return Err.extent_bad, f"region at byte {e.dev_offset} is not block aligned", None
    b = e.dev_offset // bs
    if not alloc.first <= b < alloc.end:
        return Err.extent_bad, f"region at byte {e.dev_offset} is outside the data buckets", None
    if e.dev_offset + e.region_blocks * BLOCK_SIZE > (b + 1) * bs:
        return (Err.extent_bad, f"region of {e.region_blocks} blocks at byte {e.dev_offset} "
                f"crosses the end of bucket {b}", None)
    if e.live_offset >= e.region_blocks:
        return Err.extent_bad, f"live blocks start past the region of {e.region_blocks}", None
    if fblk + e.nblocks > END_BLOCK:
        return Err.extent_bad, f"file blocks {fblk}+{e.nblocks} beyond the maximum file size", None
    if e.live_offset + e.nblocks > e.region_blocks:
        n = e.region_blocks - e.live_offset
        nxt = ctx.bt.first(BtreeId.extents, pack_key(inum, fblk + 1), pack_key(inum, fblk + n - 1))
        if nxt is not None:
            n = unpack_key(nxt[0])[1] - fblk
        return (Err.extent_live_range, f"live blocks {e.live_offset}+{e.nblocks} run past the "
                f"region of {e.region_blocks}; trimmed to {n}", e.replace(nblocks=n).pack())
    return None


def _xattr(ctx: Ctx, k: bytes, v: bytes):
    owner, slot = unpack_key(k)
    if not valid_inum(owner) or not HOME_LO <= slot <= hashtab.MAX_SLOT:
        return Err.xattr_bad, "inode or slot out of range", None
    tomb = _tombstone(BtreeId.xattrs, k)
    if len(v) < Xattr.SIZE:
        return Err.xattr_bad, f"value of {len(v)} bytes does not decode", tomb
    x = Xattr.unpack(v)
    if x.name_len == 0:
        return None
    if not HOME_LO <= x.hash < HOME_HI:
        return Err.xattr_bad, f"hash {x.hash:#x} out of range", tomb
    if x.name_len > len(x.tail):
        return Err.xattr_bad, f"name of {x.name_len} bytes runs past the value", tomb
    name = x.tail[:x.name_len]
    try:
        check_name(name)
    except OSError:
        return Err.xattr_bad, f"name {show(name)} is not a valid xattr name", tomb
    if len(x.tail) - x.name_len > XATTR_SIZE_MAX:
        return Err.xattr_bad, f"value of {len(x.tail) - x.name_len} bytes is too big", tomb
    return None


def _alloc(ctx: Ctx, k: bytes, v: bytes):
    hi, b = unpack_key(k)
    a = ctx.eng.alloc
    if hi != 0 or not a.first <= b < a.end:
        return Err.alloc_key_bad, "not the key of a data bucket", None
    if len(v) != Alloc.SIZE:
        return Err.alloc_key_bad, f"value of {len(v)} bytes does not decode", None
    return None


def _backpointer(ctx: Ctx, k: bytes, v: bytes):
    b, off = unpack_key(k)
    a = ctx.eng.alloc
    if not a.first <= b < a.end or off >= ctx.bs or off % BLOCK_SIZE:
        return Err.backpointer_bad, "not a block of a data bucket", None
    if len(v) != Backpointer.SIZE:
        return Err.backpointer_bad, f"value of {len(v)} bytes does not decode", None
    bp = Backpointer.unpack(v)
    if bp.btree_id >= BTREE_ID_NR or bp.level > MAX_BTREE_DEPTH + 1:
        return Err.backpointer_bad, f"btree {bp.btree_id} level {bp.level} out of range", None
    return None


CHECKERS = {
    BtreeId.inodes: _inode, BtreeId.dirents: _dirent, BtreeId.extents: _extent,
    BtreeId.xattrs: _xattr, BtreeId.alloc: _alloc, BtreeId.backpointers: _backpointer,
}


def _sanitize(name: bytes, inum: int) -> bytes:
    name = name.replace(b"/", b"_").replace(b"\0", b"_")[:NAME_MAX]
    if not name or name in (b".", b".."):
        name = b"#%d" % inum
    return name


def _rename_dirent(ctx: Ctx, k: bytes, v: bytes) -> None:
    owner, slot = unpack_key(k)
    d = Dirent.unpack(v)
    t = ctx.eng.trans(Watermark.btree)
    hashtab.remove(t, hashtab.DIRENTS, owner, slot)
    name = unique_name(t, ctx.seed, owner, _sanitize(d.tail, d.inum))
    add_dirent(t, ctx.seed, owner, name, d.inum, d.d_type)
    t.commit()


