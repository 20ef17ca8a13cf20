"""Hostile images: fsck and mount on thousands of damaged images.

Small images are made in process, then damaged: random byte flips in btree
nodes, journal entries and superblocks with their checksums left bad; the
same structures re-packed with a field or value changed so that every
checksum passes; zeroed nodes; truncated images; keys set or deleted through
the engine. For each: fsck -n must change nothing, fsck -y must repair, a
second fsck must find nothing (or exit 8 again if the image is beyond repair),
the repaired image must mount and take a write, and none of it may raise,
hang (a SIGALRM guard) or exhaust memory (the workers run under RLIMIT_AS).

Mutation ids are reproducible: `python tests/t5_hostile.py ID...` replays
them with details. PYFS_FUZZ_N sets how many run (default 2000), over two
worker processes.
"""

from __future__ import annotations

import dataclasses
import io
import os
import random
import resource
import signal
import stat
import struct
import sys
import time
import traceback
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context

import pytest
from craft import (
    MiB,
    crash_copy,
    deterministic,
    edit,
    mount,
    new_image,
    nodes,
    populate,
    rewrite_node,
)

from pyfs.btree.cache import BtreeError
from pyfs.btree.io import parse_node
from pyfs.device import DeviceError, MemDevice
from pyfs.engine import Engine
from pyfs.format import (
    BLOCK_SIZE,
    BTREE_ID_NR,
    SB_OFFSET,
    SB_SIZE,
    BtreeId,
    FormatError,
    Superblock,
    pack_jset,
    unpack_jset,
)
from pyfs.fs import Filesystem
from pyfs.fsck import FsckOptions, fsck_device
from pyfs.fsck.errors import Err
from pyfs.fsck.journal import read_view
from pyfs.recovery import MountError
from pyfs.superblock import read_superblock

N_DEFAULT = 2000
TIMEOUT_S = 30
MEM_LIMIT = 3 << 30
CLEAN_MOUNT_ERRORS = (MountError, BtreeError, FormatError, DeviceError)


class FuzzTimeout(BaseException):
    """Raised by the SIGALRM guard (a BaseException: fsck must not swallow it)."""


# --------------------------------------------------------------------------
# Base images and what lies where in them


class Base:
    def __init__(self, name: str, img: bytes):
        self.name = name
        self.img = img
        dev = MemDevice(img)
        self.sb = read_superblock(dev)[0]
        self.nodes = nodes(dev)
        view = read_view(dev, self.sb)
        jstart = self.sb.journal_bucket * self.sb.bucket_size
        self.entries = [(jstart + p, e.size) for p, e in zip(view.positions, view.entries)]


def _basic() -> MemDevice:
    dev = new_image(size=4 * MiB)
    eng, fs = mount(dev)
    populate(fs, 12)
    eng.close()
    return dev


def _crashed() -> MemDevice:
    dev = new_image(size=4 * MiB)
    eng, fs = mount(dev)
    t = populate(fs, 8)
    eng.flush()
    a = fs.create(1, b"open-unlinked", 0o644)
    fs.write(a.st_ino, 0, b"o" * 6000)
    fs.open(a.st_ino)
    fs.unlink(1, b"open-unlinked")
    fs.rename(t.docs, b"big.bin", 1, b"moved.bin")
    fs.write(t.small, 100, b"appended" * 600)
    eng.flush()
    return crash_copy(dev)


def _tall() -> MemDevice:
    dev = new_image(size=8 * MiB)
    eng, fs = mount(dev)
    populate(fs, 300)
    eng.close()
    return dev


BUILDERS = {"basic": _basic, "crashed": _crashed, "tall": _tall}
BASES: dict[str, Base] = {}


def bases() -> dict[str, Base]:
    if not BASES:
        for name, fn in BUILDERS.items():
            with deterministic(len(name)):
                BASES[name] = Base(name, fn().snapshot())
    return BASES


# --------------------------------------------------------------------------
# Mutations


def _flip_bytes(buf: bytearray, lo: int, hi: int, rng: random.Random, n: int) -> None:
    for _ in range(n):
        i = rng.randrange(lo, max(lo + 1, hi))
        buf[i] ^= 1 << rng.randrange(8)


def _rand_key(rng: random.Random) -> bytes:
    return struct.pack(">QQ", rng.choice([0, 1, rng.randrange(1 << 20), rng.getrandbits(64)]),
                       rng.choice([0, rng.randrange(1 << 16), rng.getrandbits(64)]))


def _mutate_value(v: bytes, rng: random.Random) -> bytes:
    r = rng.random()
    if r < 0.35 and v:
        b = bytearray(v)
        _flip_bytes(b, 0, len(b), rng, rng.randint(1, 3))
        return bytes(b)
    if r < 0.5:
        return v[:rng.randrange(len(v) + 1)] or bytes([rng.randrange(11)])
    if r < 0.6:
        return v + rng.randbytes(rng.randint(1, 64))
    if r < 0.75 and len(v) > 1:
        b = bytearray(v)      # a plausible field change: a u32 or u64 somewhere in it
        pos = rng.randrange(1, len(b))
        w = rng.choice([1, 4, 8])
        b[pos:pos + w] = rng.randbytes(w)[:len(b) - pos]
        return bytes(b)
    if r < 0.85:
        return bytes([rng.randrange(11)]) + rng.randbytes(rng.randint(0, 120))
    return bytes([rng.randrange(1, 11)]) + v[1:]


def _edit_node(rng: random.Random):
    def fn(f, keys, vals):
        r = rng.random()
        if r < 0.25:
            field = rng.choice(["btree_id", "level", "node_seq", "min_key", "max_key"])
            if field in ("min_key", "max_key"):
                f[field] = _rand_key(rng)
            elif field == "node_seq":
                f[field] ^= 1 << rng.randrange(64)
            else:
                f[field] = rng.randrange(BTREE_ID_NR + 2 if field == "btree_id" else 10)
        elif r < 0.4 and keys:
            i = rng.randrange(len(keys))
            del keys[i]
            del vals[i]
        elif r < 0.5 and keys:
            i = rng.randrange(len(keys))
            keys.insert(i, keys[i])
            vals.insert(i, vals[i])
        elif r < 0.6 and keys:
            i = rng.randrange(len(keys))
            keys[i] = _rand_key(rng)
        elif keys:
            i = rng.randrange(len(keys))
            vals[i] = _mutate_value(vals[i], rng)
        return f, keys, vals
    return fn


def _mutate(base: Base, kind: str, rng: random.Random) -> tuple[MemDevice, str]:
    img = bytearray(base.img)
    sb = base.sb
    ns = sb.btree_node_size
    if kind == "node_flip":
        n = rng.choice(base.nodes)
        span = rng.choice([64, 512, BLOCK_SIZE, ns])
        _flip_bytes(img, n.offset, n.offset + span, rng, rng.randint(1, 6))
        return MemDevice(img), f"flip node {n.btree_id}/L{n.level}@{n.offset}"
    if kind == "node_zero":
        n = rng.choice(base.nodes)
        img[n.offset:n.offset + ns] = bytes(ns)
        return MemDevice(img), f"zero node {n.btree_id}/L{n.level}@{n.offset}"
    if kind == "node_repack":
        n = rng.choice(base.nodes)
        dev = MemDevice(img)
        try:
            parse_node(dev.pread(ns, n.offset), n.offset)
            rewrite_node(dev, n.offset, _edit_node(rng))
        except (FormatError, ValueError, struct.error):
            pass
        return dev, f"repack node {n.btree_id}/L{n.level}@{n.offset}"
    if kind == "journal_flip":
        off, size = rng.choice(base.entries)
        _flip_bytes(img, off, off + size, rng, rng.randint(1, 4))
        return MemDevice(img), f"flip journal entry @{off}"
    if kind == "journal_repack":
        return _journal_repack(img, base, rng)
    if kind == "sb_flip":
        offs = rng.choice([[SB_OFFSET], [sb.backup_offset], [SB_OFFSET, sb.backup_offset]])
        for o in offs:
            _flip_bytes(img, o, o + SB_SIZE, rng, rng.randint(1, 3))
        return MemDevice(img), f"flip superblock {offs}"
    if kind == "sb_repack":
        return _sb_repack(img, base, rng)
    if kind == "keys":
        return _key_edits(img, rng)
    if kind == "truncate":
        size = rng.choice([rng.randrange(len(img)), len(img) - BLOCK_SIZE,
                           rng.randrange(len(img) // 2, len(img)) // BLOCK_SIZE * BLOCK_SIZE])
        return MemDevice(img[:max(size, 0)]), f"truncate to {size}"
    raise ValueError(kind)


def _journal_repack(img: bytearray, base: Base, rng: random.Random) -> tuple[MemDevice, str]:
    off, size = rng.choice(base.entries)
    try:
        e = unpack_jset(bytes(img[off:off + size]), off)
    except FormatError:
        return MemDevice(img), "journal repack (entry unreadable)"
    seq, last, flushed = e.seq, e.last_seq, e.flushed_seq
    roots = list(e.roots)
    keys = list(e.keys)
    r = rng.random()
    if r < 0.15:
        seq = rng.choice([seq + 1, seq + rng.randrange(1, 1000), rng.getrandbits(63), 0])
    elif r < 0.25:
        last = rng.choice([0, seq, rng.randrange(seq + 1)])
    elif r < 0.3:
        flushed = rng.randrange(seq)
    elif r < 0.45 and roots:
        i = rng.randrange(len(roots))
        b, lv, o, nseq = roots[i]
        roots[i] = rng.choice([(b, rng.randrange(9), o, nseq), (b, lv, o + ns_of(base), nseq),
                               (b, lv, o, nseq ^ 1), (rng.randrange(BTREE_ID_NR), lv, o, nseq)])
    elif not keys:
        keys.append((rng.randrange(BTREE_ID_NR), 0, _rand_key(rng),
                     bytes([rng.randrange(1, 11)]) + rng.randbytes(rng.randrange(40))))
    else:
        i = rng.randrange(len(keys))
        b, lv, k, v = keys[i]
        rr = rng.random()
        if rr < 0.3:
            keys[i] = (b, lv, k, _mutate_value(v, rng) if v else v)
        elif rr < 0.45:
            keys[i] = (rng.randrange(BTREE_ID_NR), lv, k, v)
        elif rr < 0.6:
            keys[i] = (b, rng.randrange(3), k, v)
        elif rr < 0.75:
            keys[i] = (b, lv, _rand_key(rng), v)
        elif rr < 0.9:
            del keys[i]
        else:
            keys.append((rng.randrange(BTREE_ID_NR), 0, _rand_key(rng),
                         bytes([rng.randrange(1, 11)]) + rng.randbytes(rng.randrange(40))))
    from pyfs.format import encode_jset_keys
    data = pack_jset(seq, min(last, seq), roots, len(keys), encode_jset_keys(keys),
                     flushed if flushed < seq else 0)
    room = base.sb.bucket_size - (off - base.sb.journal_bucket * base.sb.bucket_size) \
        % base.sb.bucket_size
    img[off:off + min(len(data), room)] = data[:room]
    return MemDevice(img), f"repack journal entry {e.seq}@{off}"


LOGICAL = (BtreeId.inodes, BtreeId.dirents, BtreeId.extents, BtreeId.xattrs, BtreeId.alloc,
           BtreeId.backpointers)


def _key_edits(img: bytearray, rng: random.Random) -> tuple[MemDevice, str]:
    """Keys set, copied or deleted through the engine (valid checksums), as a bug would."""
    dev = MemDevice(img)
    what = []

    def fn(eng):
        t = eng.trans()
        for _ in range(rng.randint(1, 4)):
            bid = rng.choice(LOGICAL)
            items = list(eng.btrees.iter(bid))
            if not items:
                continue
            k, v = rng.choice(items)
            r = rng.random()
            if r < 0.45:
                t.set(bid, k, _mutate_value(v, rng))
                what.append(f"set {bid}:{k.hex()}")
            elif r < 0.65:
                t.delete(bid, k)
                what.append(f"del {bid}:{k.hex()}")
            elif r < 0.85:
                k2, _v2 = rng.choice(items)
                nk = bytearray(k2)
                nk[rng.randrange(8, 16)] ^= 1 << rng.randrange(8)
                t.set(bid, bytes(nk), v)
                what.append(f"copy {bid}:{k.hex()} -> {bytes(nk).hex()}")
            else:
                k2, v2 = rng.choice(items)
                t.set(bid, k, v2)
                what.append(f"swap {bid}:{k.hex()} <- {k2.hex()}")
        t.commit()
    try:
        edit(dev, fn)
    except Exception as e:      # the engine itself refused (e.g. a trigger): no damage
        return MemDevice(img), f"key edits refused: {type(e).__name__}"
    return dev, "keys " + ", ".join(what)


def ns_of(base: Base) -> int:
    return base.sb.btree_node_size


def _sb_repack(img: bytearray, base: Base, rng: random.Random) -> tuple[MemDevice, str]:
    sb = Superblock.unpack(bytes(img[SB_OFFSET:SB_OFFSET + SB_SIZE]))
    fields = [f.name for f in dataclasses.fields(sb) if isinstance(getattr(sb, f.name), int)]
    f = rng.choice(fields)
    old = getattr(sb, f)
    new = rng.choice([old + 1, max(old - 1, 0), old * 2, rng.getrandbits(32), 0])
    setattr(sb, f, new)
    try:
        raw = sb.pack()
    except struct.error:
        return MemDevice(img), f"superblock {f} -> {new} (unpackable)"
    where = rng.choice([[SB_OFFSET], [base.sb.backup_offset], [SB_OFFSET, base.sb.backup_offset]])
    for o in where:
        img[o:o + len(raw)] = raw
    return MemDevice(img), f"superblock {f}: {old} -> {new} at {where}"


KINDS = ["node_flip", "node_flip", "node_repack", "node_repack", "node_repack", "node_zero",
         "journal_flip", "journal_repack", "journal_repack", "sb_flip", "sb_repack",
         "truncate", "multi", "keys", "keys", "keys"]


def mutation(mid: int) -> tuple[MemDevice, str]:
    rng = random.Random(mid)
    bs = bases()
    base = bs[rng.choice(sorted(bs))]
    kind = rng.choice(KINDS)
    if kind == "multi":
        dev = None
        what = []
        img = base.img
        for _ in range(rng.randint(2, 3)):
            k = rng.choice(["node_flip", "node_repack", "journal_flip", "journal_repack",
                            "node_zero", "sb_flip", "keys"])
            b = Base.__new__(Base)
            b.__dict__.update(base.__dict__)
            b.img = img
            dev, w = _mutate(b, k, rng)
            img = dev.snapshot()
            what.append(w)
        return MemDevice(img), f"{base.name}: " + "; ".join(what)
    dev, what = _mutate(base, kind, rng)
    return dev, f"{base.name}: {what}"


# --------------------------------------------------------------------------
# Checking one mutation


def _alarm(_sig, _frame):
    raise FuzzTimeout(f"no result within {TIMEOUT_S} s")


def _fsck(dev, mode: str):
    out = io.StringIO()
    res = fsck_device(dev, FsckOptions(mode=mode, force=True), out=out)
    if any(p.err == Err.internal_error for p in res.problems):
        raise AssertionError(f"fsck -{mode[0]} crashed:\n{out.getvalue()}")
    return res, out.getvalue()


def check_mutation(mid: int) -> tuple[str | None, str | None]:
    """(failure or None, engine finding or None) for mutation mid."""
    dev, what = mutation(mid)
    signal.signal(signal.SIGALRM, _alarm)
    signal.setitimer(signal.ITIMER_REAL, TIMEOUT_S)
    finding = None
    try:
        before = dev.snapshot()
        res1, out1 = _fsck(dev, "no")
        if dev.snapshot() != before:
            return f"{mid} [{what}]: fsck -n changed the image", None
        finding = _mount_original(dev, what, mid)
        res2, out2 = _fsck(dev, "yes")
        res3, out3 = _fsck(dev, "no")
        if res2.exit_code & 8:
            if not res3.exit_code & 8:
                return f"{mid} [{what}]: -y said unrecoverable, then -n exit {res3.exit_code}", None
            return None, finding
        if res3.exit_code != 0:
            return (f"{mid} [{what}]: second fsck exit {res3.exit_code} after -y exit "
                    f"{res2.exit_code}\n--- first -y:\n{out2}--- second:\n{out3}"), finding
        _use_repaired(dev)
    except FuzzTimeout as e:
        return f"{mid} [{what}]: {e}", finding
    except Exception:
        return f"{mid} [{what}]: {traceback.format_exc()}", finding
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
    return None, finding


def _mount_original(dev, what: str, mid: int) -> str | None:
    """Mounting the damaged image: only clean errors are acceptable, and a
    read-write mount that fails leaves the image exactly as it found it."""
    before = dev.snapshot()
    for read_only in (True, False):
        copy = MemDevice(before)
        try:
            Engine(copy, read_only=read_only)
        except CLEAN_MOUNT_ERRORS:
            if copy.snapshot() != before:
                return f"{mid} [{what}]: a failed mount (read_only={read_only}) wrote the image"
        except FuzzTimeout:
            raise
        except Exception as e:
            return f"{mid} [{what}]: mount raised {type(e).__name__}: {e}"
    return None


def _use_repaired(dev) -> None:
    """The repaired image mounts, every directory lists, every inode stats, a
    write goes through."""
    eng = Engine(dev)
    fs = Filesystem(eng)
    todo, seen = [1], {1}
    while todo:
        d = todo.pop()
        for name, attr, _off in fs.readdir(d):
            if name in (b".", b".."):
                continue
            fs.getattr(attr.st_ino)
            if stat.S_ISDIR(attr.st_mode) and attr.st_ino not in seen:
                seen.add(attr.st_ino)
                todo.append(attr.st_ino)
    a = fs.create(1, b"after-fsck", 0o644)
    fs.write(a.st_ino, 0, b"ok" * 3000)
    eng.close()


def _run_chunk(ids: list[int]) -> tuple[list[str], list[str], int]:
    fails, findings = [], []
    for mid in ids:
        f, g = check_mutation(mid)
        if f:
            fails.append(f)
        if g:
            findings.append(g)
    return fails, findings, len(ids)


def _limit_memory() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    if hard == resource.RLIM_INFINITY or hard > MEM_LIMIT:
        resource.setrlimit(resource.RLIMIT_AS, (MEM_LIMIT, hard))
    bases()


# --------------------------------------------------------------------------
# The test


def test_hostile_images():
    n = int(os.environ.get("PYFS_FUZZ_N", N_DEFAULT))
    start = int(os.environ.get("PYFS_FUZZ_START", 0))
    ids = list(range(start, start + n))
    chunks = [ids[i::8] for i in range(8)]
    t0 = time.time()
    fails: list[str] = []
    findings: list[str] = []
    done = 0
    with ProcessPoolExecutor(max_workers=2, mp_context=get_context("fork"),
                             initializer=_limit_memory) as ex:
        for f, g, k in ex.map(_run_chunk, chunks):
            fails += f
            findings += g
            done += k
    took = time.time() - t0
    print(f"\nhostile images: {done} mutations in {took:.1f} s, {len(fails)} failures, "
          f"{len(findings)} mount findings")
    for g in findings[:10]:
        print("  mount finding:", g)
    assert not fails, (f"{len(fails)} of {done} mutations failed (replay: python "
                       f"tests/t5_hostile.py ID):\n" + "\n\n".join(fails[:5]))


def test_journal_entry_with_a_huge_seq():
    """Regression: a valid entry with seq 20,000,000 and last_seq 1, first in its
    bucket, made mount build a 20-million-element range (8 s, 2 GB)."""
    import tracemalloc
    base = bases()["basic"]
    dev = MemDevice(base.img)
    sb = base.sb
    e = read_view(dev, sb).entries[-1]
    off, size = base.entries[-1]
    nxt = (off // sb.bucket_size + 1) * sb.bucket_size
    dev.pwrite(pack_jset(20_000_000, 1, e.roots, 0, b"", 0), nxt)
    tracemalloc.start()
    t0 = time.time()
    try:
        Engine(MemDevice(dev.snapshot()), read_only=True)
    except CLEAN_MOUNT_ERRORS:
        pass
    res, _out = _fsck(dev, "yes")
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert time.time() - t0 < 10 and peak < 200 << 20
    assert _fsck(dev, "no")[0].exit_code == 0


@pytest.mark.parametrize("kind", ["node_flip", "node_repack", "journal_repack", "sb_repack"])
def test_mutations_change_something(kind):
    """The mutators do damage (a fuzzer that changes nothing proves nothing)."""
    base = bases()["basic"]
    rng = random.Random(99)
    changed = 0
    for _ in range(20):
        dev, _w = _mutate(base, kind, rng)
        changed += dev.snapshot() != base.img
    assert changed >= 10


if __name__ == "__main__":
    for arg in sys.argv[1:]:
        dev, what = mutation(int(arg))
        print(f"{arg}: {what}")
        os.environ["PYFS_FSCK_DEBUG"] = "1"
        fail, finding = check_mutation(int(arg))
        print(fail or "ok", finding or "")
