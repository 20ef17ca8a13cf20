"""Passes 10 to 12: root and lost+found, directory structure, link counts.

Pass 10 makes sure the root is a directory and /lost+found exists. Pass 11
gives every directory exactly one entry (the one matching its parent field,
else the first), walks from the root with a visited set, and reattaches the
top of every detached subtree in lost+found as #INUM, cutting a loop first if
the subtree is one; inodes in no directory are reattached the same way
(empty ones deleted), unless they are unlinked inodes the orphan index says
are pending deletion. Pass 12 sets link counts (files: their entries;
directories: 2 + subdirectories), directory sizes (live entries) and parent
fields, finishes the deletions the orphan index holds (as mount would),
removes orphan entries that no longer apply and keeps the generation limit
above every inode's generation.
"""

from __future__ import annotations

import stat
from collections import deque

from ..format import pack_key
from ..fs.inode import (
    FS_INFO_KEY,
    ORPHAN_DELETE,
    ROOT_INUM,
    inode_key,
    orphan_key,
    pack_fs_info,
)
from ..fs.inum import InumAllocator
from .context import Ctx
from .errors import Err
from .fsops import create_inode, link_into, unlink_entry
from .repair import INO, apply, delete_inode

GEN_RESERVE = 1 << 16       # generations reserved per limit raise, as the fs layer does


def _is_dir(ctx: Ctx, inum: int) -> bool:
    r = ctx.model.inodes.get(inum)
    return r is not None and stat.S_ISDIR(r.mode)


def pending_delete(ctx: Ctx, inum: int) -> bool:
    """An unlinked inode the orphan index says is to be deleted (normal after a crash)."""
    m = ctx.model
    r = m.inodes.get(inum)
    return (r is not None and m.orphans.get(inum) == ORPHAN_DELETE and r.nlink == 0
            and not m.refs.get(inum) and not m.entries.get(inum))


# --------------------------------------------------------------------------
# Pass 10


def pass10(ctx: Ctx) -> None:
    m = ctx.model
    if not m.inodes and not m.entries:
        return      # as mkfs left it: the first mount creates the root and lost+found
    if ROOT_INUM not in m.inodes:
        ctx.rep.problem(Err.root_missing, "the root directory (inode 1) does not exist; "
                        "recreated", lambda: create_inode(ctx, ROOT_INUM, stat.S_IFDIR | 0o755,
                                                          nlink=2, parent=ROOT_INUM))
    if not _is_dir(ctx, ROOT_INUM):
        return
    ent = m.root_names.get(b"lost+found")
    if ent is not None:
        slot, target = ent
        if _is_dir(ctx, target):
            m.lost_found = target
            return
        if not ctx.rep.problem(Err.lost_found_not_dir, f"/lost+found (inode {target}) is not "
                               f"a directory; unlinked, a directory is created in its place",
                               lambda: unlink_entry(ctx, ROOT_INUM, slot)):
            return
    ctx.rep.problem(Err.lost_found_missing, "/lost+found does not exist; created",
                    lambda: _make_lost_found(ctx))


def _make_lost_found(ctx: Ctx) -> None:
    inum = InumAllocator(ctx.bt).alloc(ROOT_INUM, True, 1)
    create_inode(ctx, inum, stat.S_IFDIR | 0o700, nlink=2, parent=ROOT_INUM)
    link_into(ctx, ROOT_INUM, b"lost+found", inum)
    ctx.model.lost_found = inum


def reattach(ctx: Ctx, inum: int) -> bool:
    lf = ctx.model.lost_found
    if lf is None or not _is_dir(ctx, lf):
        return False
    link_into(ctx, lf, b"#%d" % inum, inum)
    return True


# --------------------------------------------------------------------------
# Pass 11


def pass11(ctx: Ctx) -> None:
    m = ctx.model
    dirs = sorted(i for i, r in m.inodes.items() if stat.S_ISDIR(r.mode))
    for d in dirs:
        hs = m.holders.get(d, [])
        if d == ROOT_INUM or len(hs) < 2:
            continue
        parent = m.inodes[d].parent
        keep = next((h for h in sorted(hs) if h[0] == parent), min(hs))
        for owner, slot in sorted(hs):
            if (owner, slot) != keep:
                ctx.rep.problem(Err.dir_multiple_parents, f"directory {d} ({ctx.path(d)}): also "
                                f"entered in directory {owner} (slot {slot:#x}); kept only in "
                                f"{keep[0]}",
                                lambda o=owner, s=slot: unlink_entry(ctx, o, s))
    reach = _walk(ctx, [ROOT_INUM], set())
    for d in dirs:
        if d in reach or d == ROOT_INUM or pending_delete(ctx, d):
            continue
        top, loop = _top(ctx, d, reach)
        if top in reach:
            continue
        if loop:
            victim = _cut_point(ctx, loop)
            owner, slot = m.holders[victim][0]
            ctx.rep.problem(Err.dir_loop, f"directory {victim}: part of a loop of directories "
                            f"({', '.join(map(str, sorted(loop)))}) detached from the root; its "
                            f"entry in directory {owner} is removed, it goes to lost+found",
                            lambda v=victim, o=owner, s=slot: _cut_and_reattach(ctx, v, o, s))
            top = victim
        else:
            ctx.rep.problem(Err.dir_unreachable, f"directory {top}: not reachable from the "
                            f"root; reattached in lost+found", lambda t=top: reattach(ctx, t))
        _walk(ctx, [top], reach)
    # Inodes no entry names, listed first (one cheap test per inode, no set of
    # a million): a repair below changes only the references of its own inode.
    refs = m.refs
    unnamed = [i for i in m.inodes if not refs.get(i)]
    for inum in sorted(unnamed):
        r = m.inodes[inum]
        if stat.S_ISDIR(r.mode) or pending_delete(ctx, inum):
            continue
        empty = (not r.size and inum not in m.with_extents and inum not in m.with_xattrs
                 and not stat.S_ISLNK(r.mode))
        if empty:
            ctx.rep.problem(Err.inode_unattached_empty, f"inode {inum}: empty and in no "
                            f"directory; deleted", lambda i=inum: _delete(ctx, i))
        else:
            ctx.rep.problem(Err.inode_unattached, f"inode {inum}: in no directory "
                            f"({r.size} bytes); reattached in lost+found",
                            lambda i=inum: reattach(ctx, i))


def _walk(ctx: Ctx, start: list[int], reach: set[int]) -> set[int]:
    """Add every directory reachable from start to reach (visited set: no loops)."""
    q = deque(d for d in start if d not in reach)
    reach.update(q)
    children = ctx.model.children
    while q:
        d = q.popleft()
        for c in children.get(d, ()):
            if c not in reach and _is_dir(ctx, c):
                reach.add(c)
                q.append(c)
    return reach


def _top(ctx: Ctx, d: int, reach: set[int]) -> tuple[int, list[int] | None]:
    """Follow the entries holding d upwards: (the top of its subtree, None), or
    (d, the directories of the loop it hangs from)."""
    m = ctx.model
    path = [d]
    where = {d: 0}
    cur = d
    while True:
        hs = m.holders.get(cur)
        if not hs:
            return cur, None
        p = hs[0][0]
        if p in reach:
            return p, None
        if p in where:
            return d, path[where[p]:]
        if not _is_dir(ctx, p):
            return cur, None
        where[p] = len(path)
        path.append(p)
        cur = p


def _cut_point(ctx: Ctx, loop: list[int]) -> int:
    """The loop member whose entry disagrees with its parent field (the entry a
    corruption most likely added), else the lowest inode number."""
    m = ctx.model
    odd = [i for i in loop if m.holders[i][0][0] != m.inodes[i].parent]
    return min(odd) if odd else min(loop)


def _cut_and_reattach(ctx: Ctx, top: int, owner: int, slot: int) -> bool:
    unlink_entry(ctx, owner, slot)
    return reattach(ctx, top)


def _delete(ctx: Ctx, inum: int) -> None:
    delete_inode(ctx.eng, inum)
    ctx.model.inodes.pop(inum, None)
    ctx.model.orphans.pop(inum, None)


# --------------------------------------------------------------------------
# Pass 12


def pass12(ctx: Ctx) -> None:
    m = ctx.model
    inodes, orphans, refs_of = m.inodes, m.orphans, m.refs
    for inum in sorted(inodes):
        # pending_delete needs an orphan entry: most inodes have none
        if inum in orphans and pending_delete(ctx, inum):
            ctx.rep.problem(Err.orphan_completed, f"inode {inum}: unlinked, deletion finished",
                            lambda i=inum: _delete(ctx, i))
            continue
        r = inodes[inum]
        if r.mode & 0o170000 == stat.S_IFDIR:
            _dir_counts(ctx, inum)
        elif refs_of.get(inum) and r.nlink != refs_of[inum]:
            refs = refs_of[inum]
            ctx.rep.problem(Err.nlink_wrong, f"inode {inum}: link count {r.nlink}, {refs} "
                            f"entries name it", lambda i=inum, n=refs: _set(ctx, i, nlink=n))
    for inum, kind in sorted(m.orphans.items()):
        r = m.inodes.get(inum)
        if r is None:
            why = "no such inode"
        elif kind == ORPHAN_DELETE and r.nlink:
            why = f"marked for deletion but it has {r.nlink} links"
        else:
            continue
        ctx.rep.problem(Err.orphan_bad, f"orphan entry for inode {inum}: {why}; removed",
                        lambda i=inum: _drop_orphan(ctx, i))
    _fs_info(ctx)


def _dir_counts(ctx: Ctx, inum: int) -> None:
    m = ctx.model
    r = m.inodes[inum]
    nlink = 2 + m.subdirs.get(inum, 0)
    if r.nlink != nlink:
        ctx.rep.problem(Err.dir_nlink_wrong, f"directory {inum} ({ctx.path(inum)}): link "
                        f"count {r.nlink}, expected {nlink}", lambda: _set(ctx, inum, nlink=nlink))
    size = m.entries.get(inum, 0)
    if r.size != size:
        ctx.rep.problem(Err.dir_size_wrong, f"directory {inum} ({ctx.path(inum)}): size "
                        f"{r.size}, it has {size} entries", lambda: _set(ctx, inum, size=size))
    hs = m.holders.get(inum)
    parent = ROOT_INUM if inum == ROOT_INUM else (hs[0][0] if hs else None)
    if parent is not None and r.parent != parent and r.created:
        if ctx.rep.mode != "no":
            _set(ctx, inum, parent=parent)      # recreated by fsck: its parent is news
    elif parent is not None and r.parent != parent:
        ctx.rep.problem(Err.dir_parent_wrong, f"directory {inum} ({ctx.path(inum)}): parent "
                        f"{r.parent}, it is in directory {parent}",
                        lambda: _set(ctx, inum, parent=parent))


def _set(ctx: Ctx, inum: int, **fields) -> None:
    from .passes import _set as set_fields
    set_fields(ctx, inum, **fields)


def _drop_orphan(ctx: Ctx, inum: int) -> None:
    apply(ctx.eng, [(INO, orphan_key(inum), None)])
    ctx.model.orphans.pop(inum, None)


def _fs_info(ctx: Ctx) -> None:
    """Generations below the limit may have been handed out; all must be below it.
    The inode count must be the number of inode records pass 3 found (a version
    1 record has none: it is added, as the next read-write mount would); the
    record is rewritten with the count fsck's own repairs leave."""
    m = ctx.model
    created = max((r.gen for r in m.inodes.values() if r.created), default=-1)
    found = max((r.gen for r in m.inodes.values() if not r.created), default=-1)
    want = max(created, found) + 1 + GEN_RESERVE
    key = FS_INFO_KEY

    def rewrite(gen_limit: int) -> None:
        ninodes = sum(1 for _ in ctx.eng.btrees.iter(INO, inode_key(1),
                                                     pack_key((1 << 64) - 1, 0)))
        apply(ctx.eng, [(INO, key, pack_fs_info(gen_limit, ninodes))])

    if found >= m.gen_limit:
        ctx.rep.problem(Err.inode_gen_limit, f"inode generation {found} is not below the "
                        f"limit {m.gen_limit}; raised to {want}", lambda: rewrite(want))
        return
    # Inodes fsck created may have taken generations past the limit.
    limit = max(want, m.gen_limit) if (m.fs_info_rewrite or created >= m.gen_limit) \
        else m.gen_limit
    if m.ninodes is not None and m.ninodes != m.inode_keys:
        ctx.rep.problem(Err.inode_count_wrong, f"the filesystem info says {m.ninodes} "
                        f"inodes, there are {m.inode_keys}", lambda: rewrite(limit))
    elif ctx.rep.mode != "no" and (limit != m.gen_limit or m.ninodes is None
                                   or ctx.changed_anything()):
        rewrite(limit)
