"""Filesystem-level repairs that keep fsck's model in step: creating inodes,
linking into and unlinking from directories (lost+found included)."""

from __future__ import annotations

import stat
import time

from ..alloc.foreground import Watermark
from ..format import Dirent, Inode, pack_key
from ..fs import dir as hashtab
from ..fs.inode import ROOT_INUM, dtype_of, inode_key
from .context import Ctx, Rec
from .repair import DIRENTS, INO, add_dirent, unique_name


def new_gen(ctx: Ctx) -> int:
    m = ctx.model
    g = max(m.gen_limit, m.maxg + 1)
    m.maxg = g
    return g


def create_inode(ctx: Ctx, inum: int, mode: int, *, nlink: int, parent: int = 0,
                 size: int = 0, blocks: int = 0, t=None) -> Rec:
    """Write a new inode (in transaction t, or its own) and add it to the model."""
    now = time.time_ns()
    gen = new_gen(ctx)
    ino = Inode(mode=mode, uid=0, gid=0, nlink=nlink, flags=0, size=size, blocks=blocks,
                atime_ns=now, mtime_ns=now, ctime_ns=now, btime_ns=now, generation=gen,
                rdev=0, parent=parent)
    own = t is None
    if own:
        t = ctx.eng.trans(Watermark.btree)
    t.set(INO, inode_key(inum), ino.pack())
    if own:
        t.commit()
    rec = Rec(mode, nlink, size, blocks, parent, gen, created=True)
    ctx.model.inodes[inum] = rec
    return rec


def _update(t, inum: int, **fields) -> None:
    v = t.get(INO, inode_key(inum))
    if v is not None:
        t.set(INO, inode_key(inum), Inode.unpack(v).replace(**fields).pack())


def count_entry(ctx: Ctx, owner: int, slot: int, name: bytes, target: int) -> None:
    """Account one live entry of owner naming target in the model."""
    m = ctx.model
    m.refs[target] += 1
    m.entries[owner] += 1
    trec = m.inodes.get(target)
    if trec is not None and stat.S_ISDIR(trec.mode):
        m.subdirs[owner] += 1
        m.holders[target].append((owner, slot))
        m.children[owner].append(target)
        m.dir_names.setdefault(target, name)
    if owner == ROOT_INUM:
        m.root_names[name] = (slot, target)


def uncount_entry(ctx: Ctx, owner: int, slot: int, target: int) -> None:
    m = ctx.model
    m.refs[target] -= 1
    m.entries[owner] -= 1
    if (owner, slot) in m.holders.get(target, []):
        m.holders[target].remove((owner, slot))
        m.subdirs[owner] -= 1
        if target in m.children.get(owner, []):
            m.children[owner].remove(target)
    if owner == ROOT_INUM:
        for n, (s, _t) in list(m.root_names.items()):
            if s == slot:
                del m.root_names[n]


def link_into(ctx: Ctx, dir_inum: int, name: bytes, target: int) -> bytes:
    """Add an entry dir/name -> target (name made unique), updating the directory's
    size and link count and, for a directory target, its parent. Returns the name."""
    m = ctx.model
    trec = m.inodes[target]
    drec = m.inodes[dir_inum]
    is_dir = stat.S_ISDIR(trec.mode)
    t = ctx.eng.trans(Watermark.btree)
    name = unique_name(t, ctx.seed, dir_inum, name)
    slot = add_dirent(t, ctx.seed, dir_inum, name, target, dtype_of(trec.mode))
    drec.size += 1
    drec.nlink += is_dir
    _update(t, dir_inum, size=drec.size, nlink=drec.nlink)
    if is_dir:
        trec.parent = dir_inum
        _update(t, target, parent=dir_inum)
    t.commit()
    count_entry(ctx, dir_inum, slot, name, target)
    return name


def unlink_entry(ctx: Ctx, owner: int, slot: int, *, counted: bool = True) -> None:
    """Remove the entry at owner/slot, updating the directory's size and link count
    (and the model, if the entry was counted in it)."""
    v = ctx.bt.get(DIRENTS, pack_key(owner, slot))
    if v is None:
        return
    target = Dirent.unpack(v).inum
    trec = ctx.model.inodes.get(target)
    is_dir = trec is not None and stat.S_ISDIR(trec.mode)
    drec = ctx.model.inodes.get(owner)
    t = ctx.eng.trans(Watermark.btree)
    hashtab.remove(t, hashtab.DIRENTS, owner, slot)
    if drec is not None:
        drec.size = max(0, drec.size - 1)
        drec.nlink = max(0, drec.nlink - is_dir)
        _update(t, owner, size=drec.size, nlink=drec.nlink)
    t.commit()
    if counted:
        uncount_entry(ctx, owner, slot, target)
