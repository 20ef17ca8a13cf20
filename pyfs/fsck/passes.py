"""Passes 6 and 7: inodes and extents, and the list of all passes.

Pass 6 reads every inode into fsck's model (mode, links, size, blocks,
parent, generation) after checking its fields: a mode with an unknown file
type is inferred from what the inode owns (entries: a directory; inline
bytes: a symlink; else a regular file), symlink sizes match their targets.

Pass 7 reads each file's extents together: extents of a missing inode get a
regular file recreated to hold them (it is reattached in lost+found later),
extents of a non-file are dropped, overlapping extents are resolved (the one
with the higher file offset wins, the earlier is trimmed or split around
it), with -c every region's checksum is verified, then size and i_blocks are
checked against the extents. A truncate the orphan index says is pending is
finished here, as mount would.
"""

from __future__ import annotations

import stat
from bisect import bisect_left, bisect_right

from ..format import (
    BLOCK_SIZE,
    Extent,
    Inode,
    KeyType,
    checksum,
    field_reader,
    pack_key,
    unpack_key,
)
from ..fs.inode import (
    MAX_FILE_SIZE,
    ORPHAN_DELETE,
    ORPHAN_TRUNCATE,
    ROOT_INUM,
    SYMLINK_MAX,
    orphan_key,
    unpack_fs_info,
)
from .alloc import region_ok
from .context import Ctx, Model, Rec
from .errors import Err
from .fsops import create_inode
from .repair import (
    DIRENTS,
    EXT,
    INO,
    apply,
    delete_inode,
    delete_owned,
    owns_any,
    plural,
    put_inode,
)

VALID_TYPES = {stat.S_IFREG, stat.S_IFDIR, stat.S_IFLNK, stat.S_IFCHR, stat.S_IFBLK,
               stat.S_IFIFO, stat.S_IFSOCK}
TYPE_NAMES = {stat.S_IFREG: "regular file", stat.S_IFDIR: "directory",
              stat.S_IFLNK: "symlink"}


# --------------------------------------------------------------------------
# Pass 6


# What pass 6 keeps of an inode, read straight from the value (no Inode
# object): mode, nlink, size, blocks, generation and parent, at byte 1.
_REC_FIELDS = field_reader(Inode, "mode", "nlink", "size", "blocks", "generation", "parent")
_S_IFMT = 0o170000
# Modes whose inode no field check can object to (the common case, decided
# without decoding): a known type other than a symlink, no stray bits.
_PLAIN_TYPES = frozenset(t for t in VALID_TYPES if t != stat.S_IFLNK)


def pass6(ctx: Ctx) -> None:
    m = ctx.model
    inodes = m.inodes
    progress = ctx.rep.progress
    maxg = m.maxg
    n = 0
    for keys, vals in ctx.leaves(INO):
        before, n = n, n + len(keys)
        if n >> 12 != before >> 12:
            progress("inodes", n, 0)
        for k, v in zip(keys, vals):
            hi, lo = unpack_key(k)
            if hi == 0:
                _special(m, lo, v)
                continue
            rec = _plain_inode(hi, v)
            if rec is None:
                m.maxg = maxg
                rec = _checked_inode(ctx, hi, v)
                maxg = m.maxg
                if rec is None:
                    continue
            inodes[hi] = rec
            if rec.gen > maxg:
                maxg = rec.gen
    m.maxg = maxg


def _special(m: Model, lo: int, v: bytes) -> None:
    """The fs info record (key 0:0) or an orphan entry (0:inum)."""
    if lo == 0:
        m.gen_limit, m.ninodes = unpack_fs_info(v)
    else:
        m.orphans[lo] = v[1:2]


def _checked_inode(ctx: Ctx, inum: int, v: bytes) -> Rec | None:
    """The full check of an inode; its record as it now is (None: deleted)."""
    ino = _check_inode(ctx, inum, Inode.unpack(v))
    if ino is None:
        return None
    return Rec(ino.mode, ino.nlink, ino.size, ino.blocks, ino.parent, ino.generation)


def _plain_inode(inum: int, v: bytes) -> Rec | None:
    """The model's record of an inode _check_inode would pass unchanged, else None
    (the full check then decodes it): no tail, a known non-symlink type, the
    root a directory, a size in range (none on special files)."""
    if len(v) != Inode.SIZE or v[0] != KeyType.inode:
        return None
    mode, nlink, size, blocks, gen, parent = _REC_FIELDS(v)
    fmt = mode & _S_IFMT
    if fmt not in _PLAIN_TYPES or mode & ~0o177777:
        return None
    if fmt == stat.S_IFREG:
        if size > MAX_FILE_SIZE:
            return None
    elif fmt != stat.S_IFDIR and size:      # a special file
        return None
    if inum == ROOT_INUM and fmt != stat.S_IFDIR:
        return None
    return Rec(mode, nlink, size, blocks, parent, gen)


def _check_inode(ctx: Ctx, inum: int, ino: Inode) -> Inode | None:
    """Check one inode's fields; return it as it now is (None: deleted)."""
    where = f"inode {inum}"
    fmt = stat.S_IFMT(ino.mode)
    if fmt not in VALID_TYPES or ino.mode & ~0o177777:
        new = _infer_type(ctx, inum, ino)
        if ctx.rep.problem(Err.inode_mode_bad, f"{where}: mode {ino.mode:o} is not valid; it "
                           f"becomes a {TYPE_NAMES[stat.S_IFMT(new.mode)]}",
                           lambda: put_inode(ctx.eng, inum, new)):
            ino = new
        fmt = stat.S_IFMT(ino.mode)
    if inum == ROOT_INUM and fmt in VALID_TYPES and fmt != stat.S_IFDIR:
        new = ino.replace(mode=stat.S_IFDIR | 0o755, tail=b"")
        if ctx.rep.problem(Err.root_not_dir, f"{where}: the root has mode {ino.mode:o}",
                           lambda: put_inode(ctx.eng, inum, new)):
            ino = new
            fmt = stat.S_IFDIR
    if fmt == stat.S_IFLNK:
        return _check_symlink(ctx, inum, ino)
    if ino.tail:
        new = ino.replace(tail=b"")
        if ctx.rep.problem(Err.inode_tail_bad, f"{where}: {len(ino.tail)} inline bytes on a "
                           f"{TYPE_NAMES.get(fmt, 'special file')}",
                           lambda: put_inode(ctx.eng, inum, new)):
            ino = new
    if fmt == stat.S_IFREG and ino.size > MAX_FILE_SIZE:
        ctx.rep.problem(Err.inode_size_bad, f"{where}: size {ino.size} beyond the maximum; "
                        f"it becomes the end of its data",
                        lambda: ctx.model.size_recompute.add(inum))
    elif fmt in (stat.S_IFCHR, stat.S_IFBLK, stat.S_IFIFO, stat.S_IFSOCK) and ino.size:
        new = ino.replace(size=0)
        if ctx.rep.problem(Err.inode_size_bad, f"{where}: size {ino.size} on a special file",
                           lambda: put_inode(ctx.eng, inum, new)):
            ino = new
    return ino


def _infer_type(ctx: Ctx, inum: int, ino: Inode) -> Inode:
    perm = ino.mode & 0o7777
    if inum == ROOT_INUM or owns_any(ctx.eng, DIRENTS, inum):
        return ino.replace(mode=stat.S_IFDIR | perm, tail=b"")
    if ino.tail and not owns_any(ctx.eng, EXT, inum):
        return ino.replace(mode=stat.S_IFLNK | 0o777, size=len(ino.tail))
    return ino.replace(mode=stat.S_IFREG | perm, tail=b"")


def _check_symlink(ctx: Ctx, inum: int, ino: Inode) -> Inode | None:
    where = f"inode {inum}"
    if not ino.tail or len(ino.tail) > SYMLINK_MAX:
        if ctx.rep.problem(Err.symlink_bad, f"{where}: symlink target of {len(ino.tail)} "
                           f"bytes; the symlink is deleted",
                           lambda: delete_inode(ctx.eng, inum)):
            return None
        return ino
    if ino.size != len(ino.tail):
        new = ino.replace(size=len(ino.tail))
        if ctx.rep.problem(Err.symlink_bad, f"{where}: symlink size {ino.size}, target has "
                           f"{len(ino.tail)} bytes", lambda: put_inode(ctx.eng, inum, new)):
            return new
    return ino


# --------------------------------------------------------------------------
# Pass 7


def pass7(ctx: Ctx) -> None:
    cur = None
    buf: list[tuple[int, Extent]] = []
    for k, v in ctx.items(EXT):
        inum, fblk = unpack_key(k)
        if inum != cur:
            if cur is not None:
                _file(ctx, cur, buf)
            cur, buf = inum, []
        buf.append((fblk, Extent.unpack(v)))
        ctx.model.nextents += 1
        if ctx.model.nextents % 4096 == 0:
            ctx.rep.progress("extents", ctx.model.nextents, 0)
    if cur is not None:
        _file(ctx, cur, buf)
    m = ctx.model
    with_extents, recompute = m.with_extents, m.size_recompute
    for inum in sorted(m.inodes):
        # Without extents only i_blocks (and a size to recompute) can be wrong.
        if inum not in with_extents and (m.inodes[inum].blocks or inum in recompute):
            _size_and_blocks(ctx, inum, [])
    for inum, kind in sorted(m.orphans.items()):
        if kind == ORPHAN_TRUNCATE and inum in m.inodes:
            ctx.rep.problem(Err.truncate_completed, f"inode {inum}: truncate to "
                            f"{m.inodes[inum].size} bytes finished",
                            lambda inum=inum: _drop_orphan(ctx, inum))


def _drop_orphan(ctx: Ctx, inum: int) -> None:
    apply(ctx.eng, [(INO, orphan_key(inum), None)])
    ctx.model.orphans.pop(inum, None)


def _file(ctx: Ctx, inum: int, exts: list[tuple[int, Extent]]) -> None:
    m = ctx.model
    rec = m.inodes.get(inum)
    where = f"inode {inum}"
    if rec is None:
        end = max(f + e.nblocks for f, e in exts)
        blocks = sum(e.nblocks for _f, e in exts) * ctx.block_sectors
        if not ctx.rep.problem(Err.extent_no_inode, f"{where}: {plural(len(exts), 'extent')} "
                               f"but no inode; a regular file is recreated",
                               lambda: create_inode(ctx, inum, stat.S_IFREG | 0o600, nlink=1,
                                                    size=end * BLOCK_SIZE, blocks=blocks)):
            return
        rec = m.inodes[inum]
    fmt = stat.S_IFMT(rec.mode)
    if fmt not in (stat.S_IFREG, stat.S_IFLNK):
        ctx.rep.problem(Err.extent_bad_owner, f"{where}: {plural(len(exts), 'extent')} on a "
                        f"{TYPE_NAMES.get(fmt, 'special file')}; dropped",
                        lambda: delete_owned(ctx.eng, EXT, inum))
        return
    m.with_extents.add(inum)
    exts = _overlaps(ctx, inum, exts)
    if ctx.opts.check_data:
        _verify(ctx, inum, exts)
    _size_and_blocks(ctx, inum, exts)


def _overlaps(ctx: Ctx, inum: int, exts: list[tuple[int, Extent]]) -> list[tuple[int, Extent]]:
    if all(f + e.nblocks <= g for (f, e), (g, _x) in zip(exts, exts[1:])):
        return exts
    pieces = resolve_overlaps(exts)
    pairs = [(f, f + e.nblocks, g) for (f, e), (g, _x) in zip(exts, exts[1:])
             if f + e.nblocks > g]
    desc = ", ".join(f"{a}..{b - 1} over {c}" for a, b, c in pairs[:3])
    more = f" (and {len(pairs) - 3} more)" if len(pairs) > 3 else ""
    old = {f: e.pack() for f, e in exts}
    new = {f: e.pack() for f, e in pieces}
    ups = [(EXT, pack_key(inum, f), None) for f in old if f not in new]
    ups += [(EXT, pack_key(inum, f), v) for f, v in new.items() if old.get(f) != v]
    if ctx.rep.problem(Err.extent_overlap, f"inode {inum}: extents overlap at file blocks "
                       f"{desc}{more}", lambda: apply(ctx.eng, ups)):
        return pieces
    return exts


def resolve_overlaps(exts: list[tuple[int, Extent]]) -> list[tuple[int, Extent]]:
    """Non-overlapping pieces: each extent (in key order) punches its range out of
    the pieces before it, trimming or splitting them (as a write would)."""
    starts: list[int] = []
    pieces: list[tuple[int, Extent]] = []
    for f, e in exts:
        s, t = f, f + e.nblocks
        i = max(bisect_right(starts, s) - 1, 0)
        j = bisect_left(starts, t)
        repl: list[tuple[int, Extent]] = []
        for pf, pe in pieces[i:j]:
            pend = pf + pe.nblocks
            if pend <= s or pf >= t:
                repl.append((pf, pe))
                continue
            if pf < s:
                repl.append((pf, pe.replace(nblocks=s - pf)))
            if pend > t:
                repl.append((t, pe.replace(live_offset=pe.live_offset + t - pf,
                                           nblocks=pend - t)))
        repl.append((s, e))
        repl.sort(key=lambda p: p[0])
        pieces[i:j] = repl
        starts[i:j] = [p[0] for p in repl]
    return pieces


def _verify(ctx: Ctx, inum: int, exts: list[tuple[int, Extent]]) -> None:
    seen: dict[tuple[int, int, int], bool] = {}
    for _f, e in exts:
        ck = (e.dev_offset, e.region_blocks, e.csum)
        if ck in seen:
            continue
        seen[ck] = ok = region_ok(ctx, e)
        if ok:
            continue
        ctx.rep.problem(Err.extent_csum_bad, f"inode {inum}: data region of {e.region_blocks} "
                        f"blocks at byte {e.dev_offset} fails its checksum",
                        lambda ck=ck: _rechecksum(ctx, inum, ck))


def _rechecksum(ctx: Ctx, inum: int, ck: tuple[int, int, int]) -> None:
    off, nblk, _old = ck
    csum = checksum(ctx.eng.dev.pread(nblk * BLOCK_SIZE, off))
    ups = []
    for k, v in ctx.items(EXT, pack_key(inum, 0), pack_key(inum, (1 << 64) - 1)):
        e = Extent.unpack(v)
        if (e.dev_offset, e.region_blocks, e.csum) == ck:
            ups.append((EXT, k, e.replace(csum=csum).pack()))
    apply(ctx.eng, ups)


def _size_and_blocks(ctx: Ctx, inum: int, exts: list[tuple[int, Extent]]) -> None:
    m = ctx.model
    rec = m.inodes[inum]
    fmt = stat.S_IFMT(rec.mode)
    end = max((f + e.nblocks for f, e in exts), default=0)
    if fmt == stat.S_IFREG:
        eof = -(-rec.size // BLOCK_SIZE)
        kind = m.orphans.get(inum)
        if inum in m.size_recompute:
            _set(ctx, inum, size=end * BLOCK_SIZE)
        elif end > eof and kind == ORPHAN_TRUNCATE:
            exts = _trim(ctx, inum, exts, eof)
        elif end > eof and not (kind == ORPHAN_DELETE and rec.nlink == 0):
            ctx.rep.problem(Err.extent_past_eof, f"inode {inum}: extents reach block {end}, "
                            f"size {rec.size} ends at block {eof}; the size grows",
                            lambda: _set(ctx, inum, size=end * BLOCK_SIZE))
    blocks = sum(e.nblocks for _f, e in exts) * ctx.block_sectors
    if rec.blocks != blocks:
        ctx.rep.problem(Err.inode_blocks_wrong, f"inode {inum}: i_blocks {rec.blocks}, its "
                        f"extents hold {blocks}", lambda: _set(ctx, inum, blocks=blocks))


def _trim(ctx: Ctx, inum: int, exts: list[tuple[int, Extent]], eof: int
          ) -> list[tuple[int, Extent]]:
    """Finish a truncate: drop what lies past EOF (normal operation, no error); a
    consistent i_blocks follows, an inconsistent one is left to the check."""
    if ctx.rep.mode == "no":
        return exts
    before = sum(e.nblocks for _f, e in exts) * ctx.block_sectors
    keep, ups = [], []
    for f, e in exts:
        if f >= eof:
            ups.append((EXT, pack_key(inum, f), None))
        elif f + e.nblocks > eof:
            e = e.replace(nblocks=eof - f)
            ups.append((EXT, pack_key(inum, f), e.pack()))
            keep.append((f, e))
        else:
            keep.append((f, e))
    apply(ctx.eng, ups)
    if ctx.model.inodes[inum].blocks == before:
        _set(ctx, inum, blocks=sum(e.nblocks for _f, e in keep) * ctx.block_sectors)
    return keep


def _set(ctx: Ctx, inum: int, **fields) -> None:
    rec = ctx.model.inodes[inum]
    v = ctx.bt.get(INO, pack_key(inum, 0))
    if v is None:
        return
    put_inode(ctx.eng, inum, Inode.unpack(v).replace(**fields))
    for k, val in fields.items():
        setattr(rec, k, val)
