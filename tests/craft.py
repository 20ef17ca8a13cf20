"""Making and damaging images on purpose: the fsck corpus and hostile tests.

Images are built in memory through the real engine and filesystem, with
node sequences and clocks made deterministic (deterministic()), so a corpus
case is reproducible byte for byte. Damage comes in two kinds: logical (a
key set or deleted through the engine with its triggers off, written with
valid checksums, as a bug would) and physical (bytes of a node, journal entry
or superblock changed; with checksums left bad, or re-packed so that the
structure validates and only its meaning is wrong).
"""

from __future__ import annotations

import contextlib
import random
import stat
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from pyfs.btree import cache as btree_cache
from pyfs.btree.io import encode_first, parse_node
from pyfs.device import MemDevice
from pyfs.engine import Engine
from pyfs.format import (
    BLOCK_SIZE,
    BTREE_ID_NR,
    NodeHeader,
    pack_key,
)
from pyfs.fs import Filesystem
from pyfs.fs import dir as hashtab
from pyfs.mkfs import format_device

MiB = 1 << 20
UUID = bytes.fromhex("5eedf5c3a11c0ffee0ddba11cafe0001")
T0 = 1_700_000_000 * 10**9


@contextlib.contextmanager
def deterministic(seed: int = 1) -> Iterator[None]:
    """Seeded node sequences and a fake clock, for byte-identical images."""
    rng = random.Random(seed)
    clock = [T0]

    class _Os:
        def __getattr__(self, name):
            import os
            return getattr(os, name)

        @staticmethod
        def urandom(n: int) -> bytes:
            return rng.randbytes(n)

    def fake_ns() -> int:
        clock[0] += 1000
        return clock[0]

    saved_os, saved_ns = btree_cache.os, time.time_ns
    btree_cache.os = _Os()
    time.time_ns = fake_ns
    try:
        yield
    finally:
        btree_cache.os = saved_os
        time.time_ns = saved_ns


def new_image(size: int = 16 * MiB, node_size: int = 16384, **fmt) -> MemDevice:
    dev = MemDevice(size)
    format_device(dev, uuid=UUID, now_ns=T0, btree_node_size=node_size, **fmt)
    return dev


def mount(dev) -> tuple[Engine, Filesystem]:
    eng = Engine(dev)
    return eng, Filesystem(eng)


@dataclass
class Tree:
    """Inode numbers of what populate() made."""
    docs: int
    deep: int
    big: int
    small: int
    empty: int
    link: int
    fifo: int
    many: int
    files: list[int]


def populate(fs: Filesystem, nfiles: int = 40, seed: int = 7) -> Tree:
    """A small tree: directories, files of assorted sizes, a hard link, a
    symlink, a fifo, xattrs, a file overwritten in the middle (split extents)."""
    rng = random.Random(seed)
    root = 1
    docs = fs.mkdir(root, b"docs", 0o755).st_ino
    deep = fs.mkdir(fs.mkdir(docs, b"a", 0o755).st_ino, b"b", 0o755).st_ino
    big = fs.create(docs, b"big.bin", 0o644).st_ino
    fs.write(big, 0, _data(rng, 40 * BLOCK_SIZE))
    fs.write(big, 8 * BLOCK_SIZE, _data(rng, 4 * BLOCK_SIZE))
    small = fs.create(deep, b"small.txt", 0o644).st_ino
    fs.write(small, 0, b"hello, fsck\n")
    empty = fs.create(root, b"empty", 0o600).st_ino
    link = fs.symlink(root, b"link", b"docs/big.bin").st_ino
    fifo = fs.mknod(root, b"fifo", stat.S_IFIFO | 0o644).st_ino
    fs.link(small, docs, b"small-link")
    fs.setxattr(big, b"user.origin", b"corpus")
    fs.setxattr(docs, b"user.note", b"x" * 100)
    many = fs.mkdir(root, b"many", 0o755).st_ino
    files = []
    for i in range(nfiles):
        f = fs.create(many, b"file-%03d" % i, 0o644).st_ino
        fs.write(f, 0, _data(rng, rng.randrange(1, 3 * BLOCK_SIZE)))
        files.append(f)
    return Tree(docs, deep, big, small, empty, link, fifo, many, files)


def _data(rng: random.Random, n: int) -> bytes:
    """n bytes that differ from file to file but compress well."""
    return (rng.randbytes(8).hex().encode() * (n // 16 + 1))[:n]


def base_image(nfiles: int = 40, **kw) -> tuple[MemDevice, Tree]:
    """A populated, cleanly unmounted image."""
    dev = new_image(**kw)
    eng, fs = mount(dev)
    tree = populate(fs, nfiles)
    eng.close()
    return dev, tree


# --------------------------------------------------------------------------
# Logical damage: keys changed through the engine, checksums valid


def edit(dev, fn: Callable[[Engine], None]) -> None:
    """Mount, run fn(eng) with the triggers off, unmount cleanly."""
    eng = Engine(dev)
    eng.alloc.state.flush_cache()
    with eng.committer.triggers_off():
        fn(eng)
    eng.close()


def set_key(dev, bid: int, key: bytes, val: bytes | None) -> None:
    def fn(eng):
        t = eng.trans()
        if val is None:
            t.delete(bid, key)
        else:
            t.set(bid, key, val)
        t.commit()
    edit(dev, fn)


def get_key(dev, bid: int, key: bytes) -> bytes | None:
    eng = Engine(dev, read_only=True)
    return eng.btrees.get(bid, key)


def keys_of(dev, bid: int, lo: bytes = bytes(16), hi: bytes = b"\xff" * 16
            ) -> list[tuple[bytes, bytes]]:
    eng = Engine(dev, read_only=True)
    return list(eng.btrees.iter(bid, lo, hi))


def dirent_slot(dev, owner: int, name: bytes) -> tuple[int, bytes] | None:
    for k, v in keys_of(dev, hashtab.DIRENTS.btree_id, pack_key(owner, 0),
                        pack_key(owner, (1 << 64) - 1)):
        if hashtab.DIRENTS.name_of(v) == name:
            return int.from_bytes(k[8:], "big"), v
    return None


def seed_of(dev) -> int:
    from pyfs.superblock import read_superblock
    return read_superblock(dev)[0].hash_seed


# --------------------------------------------------------------------------
# Physical damage


@dataclass
class NodeInfo:
    btree_id: int
    level: int
    offset: int
    node_seq: int
    min_key: bytes
    max_key: bytes


def nodes(dev, bid: int | None = None) -> list[NodeInfo]:
    """Every node of the btrees (as mount sees them), parents first."""
    eng = Engine(dev, read_only=True)
    out = []
    for b in range(BTREE_ID_NR) if bid is None else [bid]:
        for n in eng.btrees.walk(b):
            out.append(NodeInfo(b, n.level, n.offset, n.node_seq, n.min_key, n.max_key))
    return out


def node_size_of(dev) -> int:
    from pyfs.superblock import read_superblock
    return read_superblock(dev)[0].btree_node_size


def rewrite_node(dev, offset: int, fn) -> None:
    """Re-pack a node as one valid bset after fn(header fields dict, keys, vals)
    returns (fields, keys, vals): damage that passes every checksum."""
    ns = node_size_of(dev)
    buf = dev.pread(ns, offset)
    img = parse_node(buf, offset)
    h = img.header
    fields = dict(btree_id=h.btree_id, level=h.level, node_seq=h.node_seq,
                  min_key=h.min_key, max_key=h.max_key, gen=h.gen)
    fields, keys, vals = fn(fields, list(img.keys), list(img.vals))
    data = encode_first(NodeHeader(**fields), img.max_journal_seq, keys, vals)
    dev.pwrite(data.ljust(ns, b"\0")[:ns], offset)


def flip(dev, offset: int, mask: int = 0x01) -> None:
    b = dev.pread(1, offset)[0]
    dev.pwrite(bytes([b ^ mask]), offset)


def crash_copy(dev) -> MemDevice:
    """The device as a power cut now would leave it (MemDevice loses nothing)."""
    return MemDevice(dev.snapshot())
