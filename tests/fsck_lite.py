"""A lightweight consistency check of a mounted Engine, until pyfs/fsck exists.

check(eng) walks the inodes, dirents, extents and xattrs btrees and returns a
list of problems (empty when consistent):
- every dirent names an existing inode of the matching type, sits at or after
  its name's home slot with no gap in between, and names are unique per dir;
- link counts: non-directories have nlink == dirents naming them; directories
  have exactly one dirent (the root none), nlink == 2 + subdirectories,
  parent == the directory holding them, size == live entries;
- every inode is reachable from the root, unless it is an indexed orphan;
- extents don't overlap, stay inside their region, end within i_size's last
  block (unless a truncate orphan says a trim is pending), and add up to
  i_blocks; optionally every region's checksum is verified;
- xattrs belong to existing inodes and sit in valid probe chains.
"""

from __future__ import annotations

import stat
from collections import defaultdict

from pyfs.format import BLOCK_SIZE, BtreeId, Dirent, Extent, Inode, Xattr, checksum, unpack_key
from pyfs.fs import dir as hashtab
from pyfs.fs.inode import FIRST_INUM, ROOT_INUM, dtype_of


def check(eng, verify_data: bool = True) -> list[str]:
    bt = eng.btrees
    seed = int.from_bytes(eng.sb.uuid[:8], "little")
    problems: list[str] = []
    err = problems.append

    inodes: dict[int, Inode] = {}
    orphans: dict[int, bytes] = {}
    for k, v in bt.iter(BtreeId.inodes):
        hi, lo = unpack_key(k)
        if hi == 0:
            if lo:
                orphans[lo] = v[1:2]
            continue
        if lo != 0:
            err(f"inode key {hi}:{lo} has a non-zero low half")
            continue
        if hi != ROOT_INUM and hi < FIRST_INUM:
            err(f"inode {hi} is in the reserved range")
        inodes[hi] = Inode.unpack(v)
    if ROOT_INUM not in inodes:
        err("no root directory")
        return problems

    refs: dict[int, int] = defaultdict(int)
    subdirs: dict[int, int] = defaultdict(int)
    entries: dict[int, int] = defaultdict(int)
    children: dict[int, list[int]] = defaultdict(list)
    holder: dict[int, int] = {}
    _check_table(bt, BtreeId.dirents, hashtab.DIRENTS, seed, err)
    for k, v in bt.iter(BtreeId.dirents):
        d_inum, slot = unpack_key(k)
        d = Dirent.unpack(v)
        if d.inum == 0:
            continue
        name = d.tail
        where = f"dirent {d_inum}:{slot} {name!r}"
        dino = inodes.get(d_inum)
        if dino is None or not stat.S_ISDIR(dino.mode):
            err(f"{where}: its directory {d_inum} is missing or not a directory")
            continue
        target = inodes.get(d.inum)
        if target is None:
            err(f"{where}: points to missing inode {d.inum}")
            continue
        if d.d_type != dtype_of(target.mode):
            err(f"{where}: d_type {d.d_type} but inode mode {target.mode:o}")
        refs[d.inum] += 1
        entries[d_inum] += 1
        children[d_inum].append(d.inum)
        if stat.S_ISDIR(target.mode):
            subdirs[d_inum] += 1
            holder[d.inum] = d_inum

    for inum, ino in inodes.items():
        where = f"inode {inum}"
        if stat.S_ISDIR(ino.mode):
            want_refs = 0 if inum == ROOT_INUM else 1
            if ino.nlink == 0 and inum in orphans:
                want_refs = 0
            elif ino.nlink != 2 + subdirs[inum]:
                err(f"{where}: dir nlink {ino.nlink}, expected {2 + subdirs[inum]}")
            if refs[inum] != want_refs:
                err(f"{where}: directory has {refs[inum]} dirents")
            if ino.size != entries[inum]:
                err(f"{where}: dir size {ino.size} but {entries[inum]} entries")
            if inum != ROOT_INUM and inum in holder and ino.parent != holder[inum]:
                err(f"{where}: parent {ino.parent} but lives in {holder[inum]}")
        elif ino.nlink != refs[inum]:
            err(f"{where}: nlink {ino.nlink} but {refs[inum]} dirents")
        if ino.nlink == 0 and inum not in orphans:
            err(f"{where}: nlink 0 but not in the orphan index")
        if stat.S_ISLNK(ino.mode) and ino.size != len(ino.tail):
            err(f"{where}: symlink size {ino.size} vs target {len(ino.tail)}")
    for inum, kind in orphans.items():
        if inum not in inodes:
            err(f"orphan {inum}: no such inode")
        elif kind == b"D" and inodes[inum].nlink:
            err(f"orphan {inum}: marked for deletion but nlink {inodes[inum].nlink}")

    seen = {ROOT_INUM}
    stack = [ROOT_INUM]
    while stack:
        for c in children[stack.pop()]:
            if c not in seen:
                seen.add(c)
                if stat.S_ISDIR(inodes[c].mode):
                    stack.append(c)
    for inum, ino in inodes.items():
        if inum not in seen and not (ino.nlink == 0 and inum in orphans):
            err(f"inode {inum}: unreachable from the root")

    _check_extents(eng, inodes, orphans, verify_data, err)
    _check_table(bt, BtreeId.xattrs, hashtab.XATTRS, seed, err)
    for k, v in bt.iter(BtreeId.xattrs):
        inum, _slot = unpack_key(k)
        if inum not in inodes:
            err(f"xattr {inum}:{_slot}: no such inode")
        x = Xattr.unpack(v)
        if x.name_len > len(x.tail):
            err(f"xattr {inum}:{_slot}: name runs past the value")
    return problems


def _check_table(bt, bid, codec, seed: int, err) -> None:
    """Homes, probe chains and name uniqueness of a hashed table."""
    keys = {}
    for k, v in bt.iter(bid):
        keys[unpack_key(k)] = v
    names: dict[tuple[int, bytes], int] = {}
    for (owner, slot), v in keys.items():
        name = codec.name_of(v)
        if name is None:
            continue
        home = codec.home_of(v)
        where = f"{bid.name} {owner}:{slot} {name!r}"
        if home != hashtab.name_hash(seed, name):
            err(f"{where}: stored hash {home:#x} is not the name's hash")
        if slot < home:
            err(f"{where}: slot before its home {home:#x}")
        elif slot - home > 4096:
            err(f"{where}: probe chain of {slot - home}")
        else:
            for s in range(home, slot):
                if (owner, s) not in keys:
                    err(f"{where}: gap at slot {s} in its probe chain")
                    break
        if (owner, name) in names:
            err(f"{where}: duplicate name (also at slot {names[owner, name]})")
        names[owner, name] = slot


def _check_extents(eng, inodes, orphans, verify_data: bool, err) -> None:
    per: dict[int, list[tuple[int, Extent]]] = defaultdict(list)
    for k, v in eng.btrees.iter(BtreeId.extents):
        inum, fblk = unpack_key(k)
        per[inum].append((fblk, Extent.unpack(v)))
    for inum, exts in per.items():
        ino = inodes.get(inum)
        if ino is None:
            err(f"extents of missing inode {inum}")
            continue
        if not stat.S_ISREG(ino.mode):
            err(f"inode {inum}: extents on a non-regular file")
        prev_end = 0
        total = 0
        for fblk, e in exts:
            where = f"extent {inum}:{fblk}"
            if fblk < prev_end:
                err(f"{where}: overlaps the previous extent (ends at {prev_end})")
            if e.nblocks == 0 or e.live_offset + e.nblocks > e.region_blocks:
                err(f"{where}: live blocks {e.live_offset}+{e.nblocks} outside region "
                    f"of {e.region_blocks}")
            prev_end = fblk + e.nblocks
            total += e.nblocks
            if verify_data:
                buf = eng.dev.pread(e.region_blocks * BLOCK_SIZE, e.dev_offset)
                if checksum(buf) != e.csum:
                    err(f"{where}: region at {e.dev_offset} fails its checksum")
        eof_blocks = -(-ino.size // BLOCK_SIZE)
        if prev_end > eof_blocks and orphans.get(inum) != b"T" and ino.nlink:
            err(f"inode {inum}: extents reach block {prev_end} past EOF block {eof_blocks}")
        if ino.blocks != total * (BLOCK_SIZE // 512) and ino.nlink:
            err(f"inode {inum}: i_blocks {ino.blocks} but extents hold {total * 8}")
    for inum, ino in inodes.items():
        if inum not in per and ino.blocks:
            err(f"inode {inum}: i_blocks {ino.blocks} without extents")
