"""Passes 8 and 9: directory entries and xattrs, one owner at a time.

Both are hashed tables with linear probing (pyfs/fs/dir.py): an entry named N
must sit at or after home = name_hash(N), with every slot from home up to it
occupied (live or tombstone), and carry home as its hash. A misplaced entry
is moved (removed the way the fs removes, then inserted where a lookup finds
it); a second entry with a name already seen is renamed (dirents: name~N) or
removed (xattrs). Directory entries must also name an existing inode (not
the root) with the matching d_type; they are counted into fsck's model for
the structure and link count passes.
"""

from __future__ import annotations

import stat
from bisect import bisect_left
from collections.abc import Iterator

from ..alloc.foreground import Watermark
from ..format import Dirent, KeyType, Xattr, field_reader, pack_key, unpack_key
from ..fs import dir as hashtab
from ..fs.inode import ROOT_INUM, dtype_of
from .context import Ctx
from .errors import Err
from .fsops import _update, count_entry, create_inode
from .passes import TYPE_NAMES
from .repair import (
    DIRENTS,
    XATTRS,
    add_dirent,
    delete_owned,
    plural,
    show,
    unique_name,
)

MAX_U64 = (1 << 64) - 1


class Tx:
    """One owner's repairs, committed in journal-sized transactions."""

    def __init__(self, ctx: Ctx):
        self.ctx = ctx
        self.t = None
        self.ops = 0
        self.limit = max(4, ctx.chunk // 8)

    def get(self):
        if self.t is None:
            self.t = self.ctx.eng.trans(Watermark.btree)
        self.ops += 1
        return self.t

    def maybe_commit(self) -> None:
        if self.ops >= self.limit:
            self.commit()

    def commit(self) -> None:
        if self.t is not None and self.t.updates:
            self.t.commit()
        self.t = None
        self.ops = 0


def owner_runs(ctx: Ctx, bid: int) -> Iterator[tuple[int, list[bytes], list[bytes]]]:
    """(owner, keys, values) of each owner in key order. Keys are big-endian with
    the owner in their first 8 bytes: a bisect per owner cuts the leaves."""
    owner = None
    ks: list[bytes] = []
    vs: list[bytes] = []
    for keys, vals in ctx.leaves(bid):
        i, n = 0, len(keys)
        while i < n:
            o = unpack_key(keys[i])[0]
            j = n if o == MAX_U64 else bisect_left(keys, pack_key(o + 1, 0), i)
            if o == owner:                  # continued from the previous leaf
                ks += keys[i:j]
                vs += vals[i:j]
            else:
                if owner is not None:
                    yield owner, ks, vs
                owner, ks, vs = o, keys[i:j], vals[i:j]
            i = j
    if owner is not None:
        yield owner, ks, vs


def slots(keys: list[bytes], vals: list[bytes]) -> list[tuple[int, bytes]]:
    """An owner's (slot, value) pairs."""
    return [(unpack_key(k)[1], v) for k, v in zip(keys, vals)]


def by_owner(ctx: Ctx, bid: int) -> Iterator[tuple[int, list[tuple[int, bytes]]]]:
    for owner, keys, vals in owner_runs(ctx, bid):
        yield owner, slots(keys, vals)


# --------------------------------------------------------------------------
# Pass 8


def pass8(ctx: Ctx) -> None:
    # Directories are recreated before any entry is checked, so that entries
    # naming them are not dangling.
    inodes = ctx.model.inodes
    missing = [o for o, _k, _v in owner_runs(ctx, DIRENTS) if o not in inodes]
    for owner in missing:
        entries = slots(*_owned(ctx, owner))
        _recreate_dir(ctx, owner, entries)
    n = 0
    for owner, keys, vals in owner_runs(ctx, DIRENTS):
        n += len(keys)
        ctx.rep.progress("directory entries", n, 0)
        if not _plain_directory(ctx, owner, keys, vals):
            _directory(ctx, owner, slots(keys, vals))


def _owned(ctx: Ctx, owner: int) -> tuple[list[bytes], list[bytes]]:
    keys: list[bytes] = []
    vals: list[bytes] = []
    for ks, vs in ctx.leaves(DIRENTS, pack_key(owner, 0), pack_key(owner, MAX_U64)):
        keys += ks
        vals += vs
    return keys, vals


_DIRENT_HEAD = field_reader(Dirent, "inum", "d_type", "hash")
_S_IFMT = 0o170000


def _plain_directory(ctx: Ctx, owner: int, keys: list[bytes], vals: list[bytes]) -> bool:
    """The common case, decided cheaply: owner is a directory and every live entry
    is found by lookup where it is, names an existing inode other than the root
    with its d_type, and has a name of its own. Then the entries are counted into
    the model and True returned; else nothing is done (_directory decides)."""
    rec = ctx.model.inodes.get(owner)
    if rec is None or rec.mode & _S_IFMT != stat.S_IFDIR:
        return False
    inodes = ctx.model.inodes
    seed = ctx.seed
    names: set[bytes] = set()
    files: list[int] = []                           # targets counted inline
    others: list[tuple[int, bytes, int]] = []       # through count_entry
    root = owner == ROOT_INUM
    run_start = prev = -2
    for k, v in zip(keys, vals):
        slot = unpack_key(k)[1]
        if slot != prev + 1:
            run_start = slot
        prev = slot
        if len(v) < Dirent.SIZE or v[0] != KeyType.dirent:
            return False
        inum, d_type, h = _DIRENT_HEAD(v)
        if not inum:
            continue                # a tombstone
        name = v[Dirent.SIZE:]
        target = inodes.get(inum)
        if (target is None or inum == ROOT_INUM or name in names
                or not run_start <= h <= slot or h != hashtab.name_hash(seed, name)):
            return False
        fmt = target.mode & _S_IFMT
        if d_type != fmt >> 12:     # dtype_of
            return False
        names.add(name)
        if fmt == stat.S_IFDIR or root:
            others.append((slot, name, inum))
        else:
            files.append(inum)
    _count_plain(ctx, owner, files, others)
    return True


def _count_plain(ctx: Ctx, owner: int, files: list[int],
                 others: list[tuple[int, bytes, int]]) -> None:
    """What count_entry does for each entry: for a file in a directory other
    than the root (most entries) only its reference and the owner's entry count."""
    refs = ctx.model.refs
    for inum in files:
        refs[inum] += 1
    if files:
        ctx.model.entries[owner] += len(files)
    for slot, name, inum in others:
        count_entry(ctx, owner, slot, name, inum)


def _directory(ctx: Ctx, owner: int, entries: list[tuple[int, bytes]]) -> None:
    m = ctx.model
    live = [e for e in entries if hashtab.DIRENTS.entry(e[1])[0] is not None]
    rec = m.inodes.get(owner)
    if rec is None:
        return
    if not stat.S_ISDIR(rec.mode):
        if live:
            kind = TYPE_NAMES.get(stat.S_IFMT(rec.mode), "special file")
            ctx.rep.problem(Err.dirent_owner_not_dir, f"inode {owner} ({kind}): "
                            f"{plural(len(live), 'directory entry')}; removed",
                            lambda: delete_owned(ctx.eng, DIRENTS, owner))
        return
    plan = _parse_entries(ctx, entries)
    keepers = _keepers(plan)
    tx = Tx(ctx)
    removed = [0, 0]        # entries, of which directories
    todo = []
    for e in plan:
        if _first_phase(ctx, tx, owner, e, keepers, removed):
            todo.append(e)
        tx.maybe_commit()
    for e in todo:
        _second_phase(ctx, tx, owner, e)
        tx.maybe_commit()
    if removed[0]:
        rec.size = max(0, rec.size - removed[0])
        rec.nlink = max(0, rec.nlink - removed[1])
        _update(tx.get(), owner, size=rec.size, nlink=rec.nlink)
    tx.commit()


def _recreate_dir(ctx: Ctx, owner: int, entries: list[tuple[int, bytes]]) -> None:
    """Entries whose directory inode is gone: recreate the directory (before any
    entry is checked, so that entries naming it are not dangling)."""
    live = [e for e in entries if hashtab.DIRENTS.entry(e[1])[0] is not None]
    if not live:
        return
    root = owner == ROOT_INUM
    err = Err.root_missing if root else Err.dir_missing
    subdirs = sum(1 for _s, v in live if v[9] == 4)   # d_type DT_DIR
    ctx.rep.problem(err, f"directory {owner}: {plural(len(live), 'entry')} but no inode; "
                    f"the directory is recreated",
                    lambda: create_inode(ctx, owner, stat.S_IFDIR | (0o755 if root else 0o700),
                                         nlink=2 + subdirs, parent=ROOT_INUM if root else 0,
                                         size=len(live)))


class Entry:
    """A live directory entry being checked, and where it ends up."""
    __slots__ = ("slot", "d", "placed", "home", "final_slot", "final_name", "moved")

    def __init__(self, slot: int, d: Dirent, placed: bool, home: int):
        self.slot = slot
        self.d = d
        self.placed = placed
        self.home = home
        self.final_slot = slot
        self.final_name = d.tail
        self.moved = False

    def where(self, owner: int) -> str:
        return f"dirent {owner}:{self.slot} {show(self.d.tail)} -> {self.d.inum}"


def _with_run_start(entries: list[tuple[int, bytes]]):
    """(slot, value, first slot of its run of occupied slots), in slot order: a
    lookup finds an entry only if its home lies in that run, at or before it."""
    run_start = prev = -2
    for slot, v in entries:
        if slot != prev + 1:
            run_start = slot
        prev = slot
        yield slot, v, run_start


def _parse_entries(ctx: Ctx, entries: list[tuple[int, bytes]]) -> list[Entry]:
    """The live entries, each with whether a lookup of its name finds it where it is
    (the right hash, at or after its home with no empty slot in between)."""
    out = []
    for slot, v, run_start in _with_run_start(entries):
        d = Dirent.unpack(v)
        if d.inum:
            home = hashtab.name_hash(ctx.seed, d.tail)
            out.append(Entry(slot, d, d.hash == home and run_start <= home <= slot, home))
    return out


def _keepers(plan: list[Entry]) -> dict[bytes, Entry]:
    """For each name, the entry that keeps it: the first found by lookup, else the first."""
    keep: dict[bytes, Entry] = {}
    for e in plan:
        k = keep.get(e.d.tail)
        if k is None or (e.placed and not k.placed):
            keep[e.d.tail] = e
    return keep


def _first_phase(ctx: Ctx, tx: Tx, owner: int, e: Entry, keepers: dict[bytes, Entry],
                 removed: list[int]) -> bool:
    """Entries to remove (dangling, naming the root, a duplicate of the same inode)
    and duplicate names to rename. Returns whether e stays for the second phase."""
    d = e.d
    where = e.where(owner)
    target = ctx.model.inodes.get(d.inum)

    def remove(is_dir: bool) -> None:
        hashtab.remove(tx.get(), hashtab.DIRENTS, owner, e.slot)
        removed[0] += 1
        removed[1] += is_dir

    if target is None:
        if ctx.rep.problem(Err.dirent_dangling, f"{where}: no such inode",
                           lambda: remove(False)):
            return False
    elif d.inum == ROOT_INUM:
        if ctx.rep.problem(Err.dirent_to_root, f"{where}: names the root directory",
                           lambda: remove(True)):
            return False
    keeper = keepers[d.tail]
    if keeper is e:
        return True
    if keeper.d.inum == d.inum:
        is_dir = target is not None and stat.S_ISDIR(target.mode)
        return not ctx.rep.problem(Err.dirent_dup_name, f"{where}: a second entry of this name "
                                   f"for the same inode; removed", lambda: remove(is_dir))

    def rename() -> None:
        t = tx.get()
        hashtab.remove(t, hashtab.DIRENTS, owner, e.slot)
        e.final_name = unique_name(t, ctx.seed, owner, d.tail)
        e.final_slot = add_dirent(t, ctx.seed, owner, e.final_name, d.inum, _want_dt(ctx, d))
        e.moved = True
    ctx.rep.problem(Err.dirent_dup_name, f"{where}: a second entry of this name; renamed",
                    rename)
    return True


def _want_dt(ctx: Ctx, d: Dirent) -> int:
    target = ctx.model.inodes.get(d.inum)
    return dtype_of(target.mode) if target is not None else d.d_type


def _second_phase(ctx: Ctx, tx: Tx, owner: int, e: Entry) -> None:
    """Move misplaced entries, fix d_types, count what stays in the model."""
    d = e.d
    where = e.where(owner)
    want_dt = _want_dt(ctx, d)
    if not e.moved and not e.placed:
        def move() -> None:
            t = tx.get()
            hashtab.remove(t, hashtab.DIRENTS, owner, e.slot)
            e.final_slot = add_dirent(t, ctx.seed, owner, d.tail, d.inum, want_dt)
            e.moved = True
        why = (f"stored hash {d.hash:#x} is not the name's {e.home:#x}" if d.hash != e.home
               else f"not reachable from its home slot {e.home:#x}")
        ctx.rep.problem(Err.dirent_slot_wrong, f"{where}: {why}", move)
    if d.d_type != want_dt:
        def fix_dtype() -> None:
            t = tx.get()
            k = pack_key(owner, e.final_slot)
            cur = Dirent.unpack(t.get(DIRENTS, k))
            t.set(DIRENTS, k, cur.replace(d_type=want_dt).pack())
        ctx.rep.problem(Err.dirent_dtype_wrong, f"{where}: d_type {d.d_type}, the inode's "
                        f"type says {want_dt}", fix_dtype)
    count_entry(ctx, owner, e.final_slot, e.final_name, d.inum)


# --------------------------------------------------------------------------
# Pass 9


def pass9(ctx: Ctx) -> None:
    for owner, entries in by_owner(ctx, XATTRS):
        _xattrs(ctx, owner, entries)


def _xattrs(ctx: Ctx, owner: int, entries: list[tuple[int, bytes]]) -> None:
    live = [e for e in entries if hashtab.XATTRS.entry(e[1])[0] is not None]
    if not live:
        return
    if owner not in ctx.model.inodes:
        ctx.rep.problem(Err.xattr_no_inode, f"inode {owner}: {plural(len(live), 'xattr')} but "
                        f"no inode; removed", lambda: delete_owned(ctx.eng, XATTRS, owner))
        return
    ctx.model.with_xattrs.add(owner)
    plan = []           # (slot, xattr, name, home, found by lookup)
    for slot, v, run_start in _with_run_start(entries):
        x = Xattr.unpack(v)
        if x.name_len:
            name = x.tail[:x.name_len]
            home = hashtab.name_hash(ctx.seed, name)
            plan.append((slot, x, name, home, x.hash == home and run_start <= home <= slot))
    keep: dict[bytes, tuple] = {}
    for p in plan:
        k = keep.get(p[2])
        if k is None or (p[4] and not k[4]):
            keep[p[2]] = p
    tx = Tx(ctx)
    for p in plan:          # duplicates go first, so that a move cannot land on one
        slot, _x, name, _home, _ok = p
        if keep[name] is not p:
            ctx.rep.problem(Err.xattr_dup_name, f"xattr {owner}:{slot} {show(name)}: a second "
                            f"xattr of this name; removed",
                            lambda slot=slot: hashtab.remove(tx.get(), hashtab.XATTRS, owner, slot))
            tx.maybe_commit()
    for p in keep.values():
        slot, x, name, home, ok = p
        if ok:
            continue

        def move(slot=slot, x=x, name=name, home=home) -> None:
            t = tx.get()
            hashtab.remove(t, hashtab.XATTRS, owner, slot)
            _s, _v, free = hashtab.find(t.get, hashtab.XATTRS, owner, home, name)
            t.set(XATTRS, pack_key(owner, free), x.replace(hash=home).pack())
        ctx.rep.problem(Err.xattr_slot_wrong, f"xattr {owner}:{slot} {show(name)}: not where "
                        f"its name hashes to", move)
        tx.maybe_commit()
    tx.commit()
