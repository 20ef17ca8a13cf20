#!/usr/bin/env python3
"""Make the fsck corpus: images/fsck/<case>/ as e2fsprogs' tests/f_* directories.

Each case is a small image damaged in one way (image.xz), the output and exit
status of a first `fsck -y` (expect.1) and of a second one (expect.2, clean
unless the image is beyond repair), and optionally `args` (the fsck options,
default -y). Images are made deterministically (fixed uuid, seeds and clock),
so running this again reproduces the corpus byte for byte.

    scripts/make_fsck_corpus.py                 # every case
    scripts/make_fsck_corpus.py CASE...         # some
    scripts/make_fsck_corpus.py --list
    scripts/make_fsck_corpus.py --check         # compare instead of writing
"""

from __future__ import annotations

import argparse
import io
import lzma
import stat
import sys
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))     # craft.py: images damaged on purpose

from craft import (  # noqa: E402
    base_image,
    crash_copy,
    deterministic,
    dirent_slot,
    edit,
    flip,
    get_key,
    keys_of,
    mount,
    new_image,
    node_size_of,
    nodes,
    populate,
    rewrite_node,
    seed_of,
    set_key,
)

from pyfs.device import MemDevice, RecordingDevice  # noqa: E402
from pyfs.engine import Engine  # noqa: E402
from pyfs.format import (  # noqa: E402
    BLOCK_SIZE,
    SB_OFFSET,
    Alloc,
    Backpointer,
    BtreeId,
    Dirent,
    Extent,
    Inode,
    KeyType,
    Xattr,
    encode_jset_keys,
    pack_btree_ptr,
    pack_jset,
    pack_key,
    unpack_btree_ptr,
    unpack_key,
)
from pyfs.fs import dir as hashtab  # noqa: E402
from pyfs.fs.inode import (  # noqa: E402
    FS_INFO_KEY,
    inode_key,
    orphan_key,
    orphan_val,
    pack_fs_info,
    unpack_fs_info,
)
from pyfs.fsck import FsckOptions, fsck_device  # noqa: E402
from pyfs.fsck.journal import read_view  # noqa: E402
from pyfs.superblock import read_superblock  # noqa: E402

CORPUS = ROOT / "images" / "fsck"
INO, DIR, EXT, XAT = BtreeId.inodes, BtreeId.dirents, BtreeId.extents, BtreeId.xattrs
ALLOC, BP = BtreeId.alloc, BtreeId.backpointers

CASES: dict[str, tuple[str, Callable[[], MemDevice], str]] = {}


def case(name: str, what: str, args: str = "-y"):
    def reg(fn):
        CASES[name] = (what, fn, args)
        return fn
    return reg


def _inode(dev, inum: int) -> Inode:
    return Inode.unpack(get_key(dev, INO, inode_key(inum)))


def _set_inode(dev, inum: int, **fields) -> None:
    set_key(dev, INO, inode_key(inum), _inode(dev, inum).replace(**fields).pack())


def _dirent_val(dev, owner: int, name: bytes, inum: int, d_type: int = 8) -> tuple[bytes, bytes]:
    """(key, value) of a correctly placed new entry owner/name -> inum."""
    home = hashtab.name_hash(seed_of(dev), name)
    slot = home
    while get_key(dev, DIR, pack_key(owner, slot)) is not None:
        slot += 1
    return pack_key(owner, slot), Dirent(inum=inum, d_type=d_type, hash=home, tail=name).pack()


def _add_entry(dev, owner: int, name: bytes, inum: int, d_type: int = 8, *,
               link: bool = False) -> None:
    """Add owner/name -> inum where a lookup finds it, counting it in the directory
    (and, with link, in the target's link count) as the fs would."""
    k, v = _dirent_val(dev, owner, name, inum, d_type)

    def fn(eng):
        tr = eng.trans()
        tr.set(DIR, k, v)
        p = Inode.unpack(tr.get(INO, inode_key(owner)))
        tr.set(INO, inode_key(owner), p.replace(size=p.size + 1,
                                                nlink=p.nlink + (d_type == 4)).pack())
        if link:
            t = Inode.unpack(tr.get(INO, inode_key(inum)))
            tr.set(INO, inode_key(inum), t.replace(nlink=t.nlink + 1).pack())
        tr.commit()
    edit(dev, fn)


def _extents(dev, inum: int) -> list[tuple[bytes, Extent]]:
    return [(k, Extent.unpack(v)) for k, v in keys_of(dev, EXT, pack_key(inum, 0),
                                                      pack_key(inum, (1 << 64) - 1))]


def _bucket_of(dev, e: Extent) -> int:
    return e.dev_offset // read_superblock(dev)[0].bucket_size


# --------------------------------------------------------------------------
# Sound images: fsck must say clean (exit 0)


@case("clean", "a cleanly unmounted image")
def c_clean():
    return base_image()[0]


def _recording(nfiles: int = 10):
    """An image being written through a RecordingDevice, populated and flushed."""
    rec = RecordingDevice(new_image())
    eng, fs = mount(rec)
    populate(fs, nfiles)
    eng.flush()
    return rec, eng, fs


@case("crash_replay", "a crash in the middle of an fs_mark-like workload: the journal is "
      "replayed, nothing is wrong", "-y -v")
def c_crash_replay():
    rec, eng, fs = _recording()
    start = len(rec.log)
    _fs_mark(fs, 40)
    fps = [f for f in rec.flush_points() if f > start]
    upto = fps[len(fps) // 2] + 1
    extra = [(i, None) for i in rec.unflushed_writes(upto)[::2]]
    return rec.materialize(upto, extra)


def _fs_mark(fs, n: int) -> None:
    """fs_mark's loop: create, write, fsync, close; some deletes."""
    d = fs.mkdir(1, b"fsmark", 0o755).st_ino
    made = []
    for i in range(n):
        a = fs.create(d, b"f%05d" % i, 0o644)
        fs.write(a.st_ino, 0, bytes([i % 251]) * (4096 + 97 * i))
        fs.sync(a.st_ino)
        made.append(b"f%05d" % i)
        if i % 7 == 6:
            fs.unlink(d, made.pop(0))


@case("journal_torn_end", "the newest journal entry was torn by the crash: the journal "
      "ends before it (exit 0)")
def c_journal_torn_end():
    rec, eng, fs = _recording(8)
    a = fs.create(1, b"late", 0o644)
    fs.write(a.st_ino, 0, b"x" * 5000)
    eng.journal.seal(force=True)
    eng.journal.write_sealed()
    last = max(i for i, op in enumerate(rec.log) if op[0] == "write")
    upto = rec.flush_points()[-1] + 1
    extra = [(i, None) for i in rec.unflushed_writes(upto) if i != last] + [(last, 1)]
    return rec.materialize(upto, extra)


@case("journal_tail_dropped", "a crash tore one journal entry while the next, never "
      "acknowledged either, landed whole: the journal ends before the torn one (exit 0)",
      "-y -v")
def c_journal_tail_dropped():
    rec, eng, fs = _recording(8)
    j = eng.journal
    fs.create(1, b"first", 0o644)
    j.seal(force=True)
    j.write_sealed()
    torn = max(i for i, op in enumerate(rec.log) if op[0] == "write")
    fs.create(1, b"second", 0o644)
    j.seal(force=True)
    j.write_sealed()
    whole = max(i for i, op in enumerate(rec.log) if op[0] == "write")
    upto = rec.flush_points()[-1] + 1
    return rec.materialize(upto, [(torn, 1), (whole, None)])


@case("journal_bad_csum_end", "the newest journal entry fails its checksum: the journal "
      "ends before it (exit 0)")
def c_journal_bad_csum_end():
    dev = new_image()
    eng, fs = mount(dev)
    populate(fs, 8)
    eng.flush()
    a = fs.create(1, b"late", 0o644)
    fs.write(a.st_ino, 0, b"y" * 3000)
    eng.flush()
    dev = crash_copy(dev)
    sb = read_superblock(dev)[0]
    view = read_view(dev, sb)
    flip(dev, sb.journal_bucket * sb.bucket_size + view.positions[-1] + 200)
    return dev


# --------------------------------------------------------------------------
# Pass 1: superblock


@case("sb_primary_bad", "the primary superblock fails its checksum")
def c_sb_primary_bad():
    dev = base_image()[0]
    flip(dev, SB_OFFSET + 40)
    return dev


@case("sb_backup_bad", "the backup superblock is zeroed")
def c_sb_backup_bad():
    dev = base_image()[0]
    sb = read_superblock(dev)[0]
    dev.pwrite(bytes(BLOCK_SIZE), sb.backup_offset)
    return dev


@case("sb_copies_differ", "the backup superblock is valid but has another group size")
def c_sb_copies_differ():
    dev = base_image()[0]
    sb = read_superblock(dev)[0]
    sb.group_buckets += 1
    dev.pwrite(sb.pack().ljust(BLOCK_SIZE, b"\0"), sb.backup_offset)
    return dev


@case("sb_none", "both superblocks destroyed: nothing can be done (exit 8 twice)")
def c_sb_none():
    dev = base_image()[0]
    sb = read_superblock(dev)[0]
    dev.pwrite(bytes(BLOCK_SIZE), SB_OFFSET)
    dev.pwrite(bytes(BLOCK_SIZE), sb.backup_offset)
    return dev


# --------------------------------------------------------------------------
# Pass 2: journal


def _flushed_chain():
    """A crashed image whose journal holds a chain of small flushed entries."""
    dev = new_image()
    eng, fs = mount(dev)
    populate(fs, 8)
    eng.flush()
    d = fs.mkdir(1, b"chain", 0o755).st_ino
    for i in range(10):
        a = fs.create(d, b"c%d" % i, 0o644)
        fs.write(a.st_ino, 0, b"%d" % i * 1000)
        eng.flush()
    return crash_copy(dev)


@case("journal_entry_bad", "a journal entry in the middle fails its checksum although later "
      "entries say it was durable: its keys are lost, fsck repairs around them")
def c_journal_entry_bad():
    dev = _flushed_chain()
    sb = read_superblock(dev)[0]
    view = read_view(dev, sb)
    i = len(view.entries) - 4
    flip(dev, sb.journal_bucket * sb.bucket_size + view.positions[i] + 100)
    return dev


@case("journal_behind_clean", "the superblock says clean at the last journal entry, which "
      "is damaged")
def c_journal_behind_clean():
    dev = base_image()[0]
    sb = read_superblock(dev)[0]
    view = read_view(dev, sb)
    flip(dev, sb.journal_bucket * sb.bucket_size + view.positions[-1] + 60)
    return dev


@case("journal_key_bad", "a journal entry (valid checksum) holds an oversized value and an "
      "alloc value that does not decode")
def c_journal_key_bad():
    dev = base_image()[0]
    sb = read_superblock(dev)[0]
    view = read_view(dev, sb)
    newest = view.entries[-1]
    keys = [(DIR, 0, pack_key(1, 1 << 61), bytes([KeyType.dirent]) + b"z" * 6000),
            (ALLOC, 0, pack_key(0, sb.first_data_bucket + 3), bytes([KeyType.alloc, 1]))]
    data = pack_jset(newest.seq + 1, newest.seq + 1, newest.roots, len(keys),
                     encode_jset_keys(keys), newest.seq)
    pos = view.head
    if pos % sb.bucket_size + len(data) > sb.bucket_size:
        pos += -pos % sb.bucket_size
    ring = sb.bucket_size * sb.journal_nbuckets
    dev.pwrite(data, sb.journal_bucket * sb.bucket_size + pos % ring)
    return dev


@case("journal_roots_lost", "the whole journal is zeroed: the btree roots are gone; every "
      "btree is rebuilt from a node scan")
def c_journal_roots_lost():
    dev = base_image()[0]
    sb = read_superblock(dev)[0]
    dev.pwrite(bytes(sb.journal_nbuckets * sb.bucket_size), sb.journal_bucket * sb.bucket_size)
    return dev


# --------------------------------------------------------------------------
# Pass 2: btree topology (images with two-level btrees)


def _big():
    return base_image(nfiles=400)[0]


def _first(dev, bid: int, level: int, index: int = 0):
    return [n for n in nodes(dev, bid) if n.level == level][index]


@case("btree_root_bad", "the inodes btree's root node header fails its checksum; its bsets "
      "are good and everything is salvaged")
def c_btree_root_bad():
    dev = _big()
    flip(dev, _first(dev, INO, 1).offset + 20)
    return dev


@case("btree_root_destroyed", "the inodes btree's root (an interior node) is zeroed: a node "
      "scan finds its leaves and every inode comes back")
def c_btree_root_destroyed():
    dev = _big()
    root = _first(dev, INO, 1)
    dev.pwrite(bytes(node_size_of(dev)), root.offset)
    return dev


def _deep() -> MemDevice:
    """An xattrs btree three levels deep (2,000 values of 2 KiB on one file)."""
    dev = new_image(size=32 << 20)
    eng, fs = mount(dev)
    populate(fs, 20)
    a = fs.create(1, b"many-xattrs", 0o644)
    for i in range(2000):
        fs.setxattr(a.st_ino, b"user.x%05d" % i, bytes([i % 251]) * 2048)
    eng.close()
    return dev


@case("btree_interior_destroyed", "a level-1 interior node of a three-level xattrs btree is "
      "zeroed: a node scan finds the leaves below it and every xattr comes back")
def c_btree_interior_destroyed():
    dev = _deep()
    inner = [n for n in nodes(dev, XAT) if n.level == 1]
    assert len(inner) >= 2 and max(n.level for n in nodes(dev, XAT)) == 2, "not deep enough"
    dev.pwrite(bytes(node_size_of(dev)), inner[len(inner) // 2].offset)
    return dev


@case("journal_zeroed_many_files", "a cleanly unmounted filesystem with 2,000 files whose "
      "journal is zeroed: every btree is rebuilt from a node scan, nothing is lost")
def c_journal_zeroed_many_files():
    dev = base_image(nfiles=2000, size=64 << 20)[0]
    sb = read_superblock(dev)[0]
    dev.pwrite(bytes(sb.journal_nbuckets * sb.bucket_size), sb.journal_bucket * sb.bucket_size)
    return dev


@case("btree_node_bad", "a dirents leaf fails its bset checksum: its entries are lost, the "
      "files they named go to lost+found")
def c_btree_node_bad():
    dev = _big()
    flip(dev, _first(dev, DIR, 0, 1).offset + 200)
    return dev


@case("btree_node_mismatch", "an extents leaf (valid checksums) has another node sequence "
      "than its pointer: its extents are lost")
def c_btree_node_mismatch():
    dev = _big()
    n = _first(dev, EXT, 0, 1)
    rewrite_node(dev, n.offset, lambda f, k, v: ({**f, "node_seq": f["node_seq"] ^ 0xFF00}, k, v))
    return dev


@case("btree_node_range", "an inodes leaf (valid checksums) claims a smaller key range than "
      "its parent gives it; its keys are kept")
def c_btree_node_range():
    dev = _big()
    n = _first(dev, INO, 0, 0)

    def fn(f, k, v):
        return {**f, "max_key": k[-1]}, k, v
    rewrite_node(dev, n.offset, fn)
    return dev


@case("btree_key_range", "an xattrs leaf holds a key outside its range (valid checksums)")
def c_btree_key_range():
    dev = _big()
    n = _first(dev, INO, 0, 1)

    def fn(f, k, v):
        return f, [pack_key(1, 0)] + k, [v[0]] + v
    rewrite_node(dev, n.offset, fn)
    return dev


@case("btree_ptr_bad", "an interior node's child pointer is not node aligned (valid checksums)")
def c_btree_ptr_bad():
    dev = _big()
    n = _first(dev, BP, 1)

    def fn(f, k, v):
        off, seq = unpack_btree_ptr(v[-1])
        return f, k, v[:-1] + [pack_btree_ptr(off + 4096, seq)]
    rewrite_node(dev, n.offset, fn)
    return dev


@case("btree_region_twice", "two pointers of an interior node lead to the same child")
def c_btree_region_twice():
    dev = _big()
    n = _first(dev, BP, 1)
    rewrite_node(dev, n.offset, lambda f, k, v: (f, k, v[:-1] + [v[0]]))
    return dev


@case("btree_level_bad", "an inodes leaf's header says level 1 (valid checksums)")
def c_btree_level_bad():
    dev = _big()
    n = _first(dev, INO, 0, 1)
    rewrite_node(dev, n.offset, lambda f, k, v: ({**f, "level": 1}, k, v))
    return dev


@case("btree_interior_empty", "the backpointers btree's root has no children")
def c_btree_interior_empty():
    dev = _big()
    n = _first(dev, BP, 1)
    rewrite_node(dev, n.offset, lambda f, k, v: (f, [], []))
    return dev


# --------------------------------------------------------------------------
# Pass 3: keys valid for their type (set through the engine: checksums valid)


def _basic():
    return base_image()


@case("key_wrong_type", "a dirent value stored in the extents btree")
def c_key_wrong_type():
    dev, t = _basic()
    set_key(dev, EXT, pack_key(t.small, 100), Dirent(inum=t.small, d_type=8, hash=1 << 61,
                                                      tail=b"x").pack())
    return dev


@case("inode_key_bad", "an inode key with its low half set, and an inode value too short to "
      "decode")
def c_inode_key_bad():
    dev, t = _basic()
    set_key(dev, INO, pack_key(t.empty, 5), _inode(dev, t.empty).pack())
    set_key(dev, INO, pack_key(t.files[3], 0), bytes([KeyType.inode]) + bytes(20))
    return dev


@case("fs_info_bad", "the filesystem info record is truncated")
def c_fs_info_bad():
    dev, _t = _basic()
    set_key(dev, INO, FS_INFO_KEY, bytes([KeyType.raw, 1, 0]))
    return dev


@case("orphan_key_bad", "an orphan index entry of an unknown kind")
def c_orphan_key_bad():
    dev, t = _basic()
    set_key(dev, INO, orphan_key(t.small), bytes([KeyType.raw]) + b"Q")
    return dev


@case("dirent_bad", "a directory entry names a reserved inode number")
def c_dirent_bad():
    dev, t = _basic()
    slot, v = dirent_slot(dev, t.docs, b"big.bin")
    set_key(dev, DIR, pack_key(t.docs, slot), Dirent.unpack(v).replace(inum=7).pack())
    return dev


@case("dirent_dtype_bad", "a directory entry with an impossible d_type")
def c_dirent_dtype_bad():
    dev, t = _basic()
    slot, v = dirent_slot(dev, t.docs, b"big.bin")
    set_key(dev, DIR, pack_key(t.docs, slot), Dirent.unpack(v).replace(d_type=99).pack())
    return dev


@case("dirent_name_bad", "a directory entry whose name contains '/'")
def c_dirent_name_bad():
    dev, t = _basic()
    k, v = _dirent_val(dev, t.docs, b"bad/name", t.files[0])
    set_key(dev, DIR, k, v)
    return dev


@case("extent_bad", "an extent whose region crosses the end of its bucket")
def c_extent_bad():
    dev, t = _basic()
    k, e = _extents(dev, t.files[5])[0]
    bs = read_superblock(dev)[0].bucket_size
    set_key(dev, EXT, k, e.replace(dev_offset=(e.dev_offset // bs + 1) * bs - BLOCK_SIZE,
                                   region_blocks=2, live_offset=0, nblocks=2).pack())
    return dev


@case("extent_live_range", "an extent's live blocks run past its region")
def c_extent_live_range():
    dev, t = _basic()
    k, e = _extents(dev, t.big)[0]
    set_key(dev, EXT, k, e.replace(nblocks=e.region_blocks + 3).pack())
    return dev


@case("xattr_bad", "an xattr whose name has no namespace")
def c_xattr_bad():
    dev, t = _basic()
    k, v = keys_of(dev, XAT, pack_key(t.big, 0), pack_key(t.big, (1 << 64) - 1))[0]
    x = Xattr.unpack(v)
    set_key(dev, XAT, k, x.replace(tail=b"nonamespace"[:x.name_len].ljust(x.name_len, b"x")
                                   + x.tail[x.name_len:]).pack())
    return dev


@case("alloc_key_bad", "an alloc key for bucket 0 (the superblock's)")
def c_alloc_key_bad():
    dev, _t = _basic()
    set_key(dev, ALLOC, pack_key(0, 0), Alloc(gen=1, data_type=4, flags=0, dirty_sectors=8,
                                              cached_sectors=0, journal_seq=0).pack())
    return dev


@case("backpointer_bad", "a backpointer at an offset that is not block aligned")
def c_backpointer_bad():
    dev, _t = _basic()
    k, v = keys_of(dev, BP)[-1]
    b, off = unpack_key(k)
    set_key(dev, BP, pack_key(b, off + 100), v)
    return dev


# --------------------------------------------------------------------------
# Passes 4 and 5: alloc info and backpointers


def _user_bucket(dev, t) -> tuple[int, bytes, Alloc]:
    k, e = _extents(dev, t.big)[0]
    b = _bucket_of(dev, e)
    key = pack_key(0, b)
    return b, key, Alloc.unpack(get_key(dev, ALLOC, key))


@case("alloc_sectors_wrong", "a bucket's alloc key counts the wrong number of sectors")
def c_alloc_sectors_wrong():
    dev, t = _basic()
    _b, key, a = _user_bucket(dev, t)
    set_key(dev, ALLOC, key, a.replace(dirty_sectors=a.dirty_sectors + 8).pack())
    return dev


@case("alloc_type_wrong", "a user data bucket's alloc key says btree")
def c_alloc_type_wrong():
    dev, t = _basic()
    _b, key, a = _user_bucket(dev, t)
    set_key(dev, ALLOC, key, a.replace(data_type=3).pack())
    return dev


@case("alloc_gen_wrong", "a bucket's generation changed under the extents living in it")
def c_alloc_gen_wrong():
    dev, t = _basic()
    _b, key, a = _user_bucket(dev, t)
    set_key(dev, ALLOC, key, a.replace(gen=a.gen + 5).pack())
    return dev


@case("extent_stale", "an extent whose generation and checksum are wrong: its bucket was "
      "reused")
def c_extent_stale():
    dev, t = _basic()
    k, e = _extents(dev, t.files[7])[0]
    set_key(dev, EXT, k, e.replace(gen=e.gen + 1, csum=e.csum ^ 1).pack())
    return dev


@case("extent_gen_wrong", "an extent's generation is wrong, its data is intact")
def c_extent_gen_wrong():
    dev, t = _basic()
    k, e = _extents(dev, t.files[7])[0]
    set_key(dev, EXT, k, e.replace(gen=e.gen + 2).pack())
    return dev


@case("region_conflict", "a second file's extent points at the same data as another's")
def c_region_conflict():
    dev, t = _basic()
    k, e = _extents(dev, t.files[9])[0]
    set_key(dev, EXT, pack_key(t.files[10], 50), e.pack())
    return dev


@case("backpointer_missing", "a backpointer was deleted")
def c_backpointer_missing():
    dev, _t = _basic()
    k, _v = keys_of(dev, BP)[-3]
    set_key(dev, BP, k, None)
    return dev


@case("backpointer_dangling", "a backpointer to an empty place")
def c_backpointer_dangling():
    dev, _t = _basic()
    k, v = keys_of(dev, BP)[-1]
    b, _off = unpack_key(k)
    set_key(dev, BP, pack_key(b + 3, 0), v)
    return dev


@case("backpointer_wrong", "a backpointer with the wrong length")
def c_backpointer_wrong():
    dev, _t = _basic()
    k, v = keys_of(dev, BP)[-2]
    bp = Backpointer.unpack(v)
    set_key(dev, BP, k, bp.replace(length=bp.length + 8).pack())
    return dev


# --------------------------------------------------------------------------
# Passes 6 and 7: inodes and extents


@case("inode_mode_bad", "an inode's mode has no file type (a directory by what it holds)")
def c_inode_mode_bad():
    dev, t = _basic()
    _set_inode(dev, t.deep, mode=0o755)
    return dev


@case("root_not_dir", "the root inode says it is a regular file")
def c_root_not_dir():
    dev, _t = _basic()
    _set_inode(dev, 1, mode=stat.S_IFREG | 0o644)
    return dev


@case("symlink_bad", "a symlink's size differs from its target")
def c_symlink_bad():
    dev, t = _basic()
    _set_inode(dev, t.link, size=3)
    return dev


@case("inode_tail_bad", "a regular file carries inline bytes")
def c_inode_tail_bad():
    dev, t = _basic()
    _set_inode(dev, t.small, tail=b"stray")
    return dev


@case("inode_size_bad", "a fifo has a size")
def c_inode_size_bad():
    dev, t = _basic()
    _set_inode(dev, t.fifo, size=4096)
    return dev


@case("extent_no_inode", "a file's inode is gone, its extents are not")
def c_extent_no_inode():
    dev, t = _basic()
    set_key(dev, INO, inode_key(t.files[11]), None)
    return dev


@case("extent_bad_owner", "extents owned by a directory")
def c_extent_bad_owner():
    dev, t = _basic()
    k, e = _extents(dev, t.files[12])[0]
    set_key(dev, EXT, k, None)
    set_key(dev, EXT, pack_key(t.deep, 0), e.pack())
    return dev


@case("extent_overlap", "a file's first extent grew over its second (its region allows it)")
def c_extent_overlap():
    dev, t = _basic()
    k, e = _extents(dev, t.big)[0]
    set_key(dev, EXT, k, e.replace(nblocks=e.nblocks + 2).pack())
    return dev


@case("extent_csum_bad", "a byte of a file's data is flipped (found with -c)", "-y -c")
def c_extent_csum_bad():
    dev, t = _basic()
    _k, e = _extents(dev, t.files[2])[0]
    flip(dev, e.dev_offset + 10)
    return dev


@case("extent_past_eof", "a file's size is smaller than its extents")
def c_extent_past_eof():
    dev, t = _basic()
    _set_inode(dev, t.big, size=3 * BLOCK_SIZE)
    return dev


@case("inode_blocks_wrong", "a file's i_blocks is wrong")
def c_inode_blocks_wrong():
    dev, t = _basic()
    _set_inode(dev, t.big, blocks=_inode(dev, t.big).blocks + 8)
    return dev


@case("truncate_completed", "a crash in the middle of a chunked truncate: fsck finishes it "
      "(exit 0)", "-y -v")
def c_truncate_completed():
    dev, t = _basic()
    ino = _inode(dev, t.big)

    def fn(eng):
        tr = eng.trans()
        tr.set(INO, inode_key(t.big), ino.replace(size=5 * BLOCK_SIZE).pack())
        tr.set(INO, orphan_key(t.big), orphan_val(b"T"))
        tr.commit()
        eng.flush()
    eng = Engine(dev)
    eng.alloc.state.flush_cache()
    fn(eng)
    return crash_copy(dev)


# --------------------------------------------------------------------------
# Passes 8 and 9: directory entries and xattrs


@case("dirent_dangling", "the inode an entry names is gone")
def c_dirent_dangling():
    dev, t = _basic()
    set_key(dev, INO, inode_key(t.empty), None)
    return dev


@case("dirent_dtype_wrong", "a directory entry's d_type says directory for a file")
def c_dirent_dtype_wrong():
    dev, t = _basic()
    slot, v = dirent_slot(dev, t.deep, b"small.txt")
    set_key(dev, DIR, pack_key(t.deep, slot), Dirent.unpack(v).replace(d_type=4).pack())
    return dev


@case("dirent_slot_wrong", "a directory entry sits past a gap after its home slot")
def c_dirent_slot_wrong():
    dev, t = _basic()
    slot, v = dirent_slot(dev, t.docs, b"big.bin")
    set_key(dev, DIR, pack_key(t.docs, slot), None)
    set_key(dev, DIR, pack_key(t.docs, slot + 5), v)
    return dev


@case("dirent_dup_name", "two entries of a directory have the same name")
def c_dirent_dup_name():
    dev, t = _basic()
    _add_entry(dev, t.docs, b"big.bin", t.files[1], link=True)
    return dev


@case("dirent_owner_not_dir", "directory entries keyed under a regular file")
def c_dirent_owner_not_dir():
    dev, t = _basic()
    k, v = _dirent_val(dev, t.small, b"inside-a-file", t.files[0])
    set_key(dev, DIR, k, v)
    return dev


@case("dir_missing", "a directory's inode is gone, its entries are not")
def c_dir_missing():
    dev, t = _basic()
    set_key(dev, INO, inode_key(t.deep), None)
    return dev


@case("dirent_to_root", "a directory entry names the root")
def c_dirent_to_root():
    dev, t = _basic()
    _add_entry(dev, t.docs, b"up", 1, 4)
    return dev


@case("xattr_no_inode", "xattrs of an inode that does not exist")
def c_xattr_no_inode():
    dev, t = _basic()
    k, v = keys_of(dev, XAT, pack_key(t.big, 0), pack_key(t.big, (1 << 64) - 1))[0]
    set_key(dev, XAT, pack_key(888888, unpack_key(k)[1]), v)
    return dev


@case("xattr_slot_wrong", "an xattr's stored hash is not its name's")
def c_xattr_slot_wrong():
    dev, t = _basic()
    k, v = keys_of(dev, XAT, pack_key(t.big, 0), pack_key(t.big, (1 << 64) - 1))[0]
    x = Xattr.unpack(v)
    set_key(dev, XAT, k, x.replace(hash=x.hash - 1).pack())
    return dev


@case("xattr_dup_name", "an inode has two xattrs of the same name")
def c_xattr_dup_name():
    dev, t = _basic()
    k, v = keys_of(dev, XAT, pack_key(t.big, 0), pack_key(t.big, (1 << 64) - 1))[0]
    o, slot = unpack_key(k)
    set_key(dev, XAT, pack_key(o, slot + 1), v)
    return dev


# --------------------------------------------------------------------------
# Passes 10 to 12: root, lost+found, structure, link counts


@case("root_missing", "the root inode is gone")
def c_root_missing():
    dev, _t = _basic()
    set_key(dev, INO, inode_key(1), None)
    return dev


@case("lost_found_missing", "/lost+found was removed")
def c_lost_found_missing():
    dev, _t = _basic()
    slot, v = dirent_slot(dev, 1, b"lost+found")

    def fn(eng):
        tr = eng.trans()
        tr.delete(DIR, pack_key(1, slot))
        tr.delete(INO, inode_key(Dirent.unpack(v).inum))
        root = Inode.unpack(tr.get(INO, inode_key(1)))
        tr.set(INO, inode_key(1), root.replace(size=root.size - 1, nlink=root.nlink - 1).pack())
        tr.commit()
    edit(dev, fn)
    return dev


@case("lost_found_not_dir", "/lost+found names a regular file")
def c_lost_found_not_dir():
    dev, t = _basic()
    slot, v = dirent_slot(dev, 1, b"lost+found")

    def fn(eng):
        tr = eng.trans()
        tr.set(DIR, pack_key(1, slot), Dirent.unpack(v).replace(inum=t.empty, d_type=8).pack())
        tr.delete(INO, inode_key(Dirent.unpack(v).inum))
        eslot, _ev = dirent_slot_in(tr, 1, b"empty")
        tr.delete(DIR, pack_key(1, eslot))
        root = Inode.unpack(tr.get(INO, inode_key(1)))
        tr.set(INO, inode_key(1), root.replace(size=root.size - 1, nlink=root.nlink - 1).pack())
        tr.commit()
    edit(dev, fn)
    return dev


def dirent_slot_in(tr, owner: int, name: bytes):
    for k, v in tr.iter(DIR, pack_key(owner, 0), pack_key(owner, (1 << 64) - 1)):
        if hashtab.DIRENTS.name_of(v) == name:
            return unpack_key(k)[1], v
    return None


def _unlink_raw(dev, owner: int, name: bytes, *, fix_parent: bool = True) -> int:
    """Remove owner/name's entry only; returns the inode it named."""
    slot, v = dirent_slot(dev, owner, name)
    d = Dirent.unpack(v)

    def fn(eng):
        tr = eng.trans()
        tr.delete(DIR, pack_key(owner, slot))
        if fix_parent:
            p = Inode.unpack(tr.get(INO, inode_key(owner)))
            isdir = d.d_type == 4
            tr.set(INO, inode_key(owner), p.replace(size=p.size - 1,
                                                    nlink=p.nlink - isdir).pack())
        tr.commit()
    edit(dev, fn)
    return d.inum


@case("dir_unreachable", "a directory's only entry was removed")
def c_dir_unreachable():
    dev, t = _basic()
    _unlink_raw(dev, t.docs, b"a")
    return dev


@case("dir_loop", "two directories name each other, detached from the root")
def c_dir_loop():
    dev, t = _basic()
    a = _unlink_raw(dev, t.docs, b"a")
    _add_entry(dev, t.deep, b"back-to-a", a, 4)
    return dev


@case("dir_multiple_parents", "a directory also has an entry in a second directory")
def c_dir_multiple_parents():
    dev, t = _basic()
    _add_entry(dev, t.many, b"deep-again", t.deep, 4)
    return dev


@case("inode_unattached", "a file with data lost its only entry")
def c_inode_unattached():
    dev, t = _basic()
    _unlink_raw(dev, t.many, b"file-004")
    return dev


@case("inode_unattached_empty", "an empty file lost its only entry")
def c_inode_unattached_empty():
    dev, _t = _basic()
    _unlink_raw(dev, 1, b"empty")
    return dev


@case("nlink_wrong", "a hard-linked file's link count says 1")
def c_nlink_wrong():
    dev, t = _basic()
    _set_inode(dev, t.small, nlink=1)
    return dev


@case("dir_nlink_wrong", "a directory's link count is off by one")
def c_dir_nlink_wrong():
    dev, t = _basic()
    _set_inode(dev, t.docs, nlink=_inode(dev, t.docs).nlink + 1)
    return dev


@case("dir_size_wrong", "a directory's size is not its number of entries")
def c_dir_size_wrong():
    dev, t = _basic()
    _set_inode(dev, t.many, size=7)
    return dev


@case("dir_parent_wrong", "a directory's parent field names another directory")
def c_dir_parent_wrong():
    dev, t = _basic()
    _set_inode(dev, t.deep, parent=t.many)
    return dev


@case("orphan_bad", "the orphan index marks a linked file for deletion")
def c_orphan_bad():
    dev, t = _basic()
    set_key(dev, INO, orphan_key(t.files[20]), orphan_val(b"D"))
    return dev


@case("orphan_completed", "a crash while an unlinked file was still open: fsck finishes the "
      "deletion as mount would (exit 0)", "-y -v")
def c_orphan_completed():
    dev = new_image()
    eng, fs = mount(dev)
    populate(fs, 8)
    a = fs.create(1, b"tmpfile", 0o644)
    fs.write(a.st_ino, 0, b"t" * 9000)
    fs.open(a.st_ino)
    fs.unlink(1, b"tmpfile")
    eng.flush()
    return crash_copy(dev)


@case("inode_gen_limit", "the generation limit is below the inodes' generations")
def c_inode_gen_limit():
    dev, _t = _basic()
    _gen, ninodes = unpack_fs_info(get_key(dev, INO, FS_INFO_KEY))
    set_key(dev, INO, FS_INFO_KEY, pack_fs_info(3, ninodes))
    return dev


@case("inode_count_wrong", "the filesystem info record counts 5 inodes more than there are")
def c_inode_count_wrong():
    dev, _t = _basic()
    gen, ninodes = unpack_fs_info(get_key(dev, INO, FS_INFO_KEY))
    set_key(dev, INO, FS_INFO_KEY, pack_fs_info(gen, ninodes + 5))
    return dev


# --------------------------------------------------------------------------


def run_fsck(img: bytes, args: str) -> str:
    """fsck on a copy of img; its output and exit status, as an expect file holds them."""
    opts = FsckOptions(mode="yes", verbose="-v" in args.split(), check_data="-c" in args.split())
    out = io.StringIO()
    dev = MemDevice(img)
    res = fsck_device(dev, opts, name="IMAGE", out=out)
    return out.getvalue() + f"exit status {res.exit_code}\n", dev.snapshot()


def build(name: str) -> bytes:
    _what, fn, _args = CASES[name]
    with deterministic(sum(name.encode())):
        dev = fn()
    return dev.snapshot()


def make(name: str, check: bool = False) -> bool:
    what, _fn, args = CASES[name]
    img = build(name)
    out1, img2 = run_fsck(img, args)
    out2, _img3 = run_fsck(img2, args)
    d = CORPUS / name
    files = {"expect.1": out1.encode(), "expect.2": out2.encode(),
             "README": (what + "\n").encode()}
    if args != "-y":
        files["args"] = (args + "\n").encode()
    if check:
        ok = all((d / f).exists() and (d / f).read_bytes() == v for f, v in files.items())
        ok = ok and (d / "image.xz").exists() and lzma.decompress(
            (d / "image.xz").read_bytes()) == img
        print(f"{name}: {'ok' if ok else 'DIFFERS'}")
        return ok
    d.mkdir(parents=True, exist_ok=True)
    for f, v in files.items():
        (d / f).write_bytes(v)
    if not (d / "args").exists() or args == "-y":
        (d / "args").unlink(missing_ok=True)
    (d / "image.xz").write_bytes(lzma.compress(img, preset=9 | lzma.PRESET_EXTREME))
    size = (d / "image.xz").stat().st_size
    print(f"{name}: {size // 1024} KiB; {out1.splitlines()[-1]} / {out2.splitlines()[-1]}")
    return True


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("cases", nargs="*")
    ap.add_argument("--list", action="store_true")
    ap.add_argument("--check", action="store_true", help="compare with the corpus on disk")
    a = ap.parse_args(argv)
    if a.list:
        for n, (what, _f, args) in CASES.items():
            print(f"{n:28} {args:8} {what}")
        return 0
    names = a.cases or list(CASES)
    unknown = [n for n in names if n not in CASES]
    if unknown:
        ap.error(f"unknown cases: {unknown}")
    ok = True
    for n in names:
        ok &= make(n, a.check)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
