"""Passes 4 and 5: alloc keys and backpointers against a recount of extents and nodes.

Memory stays bounded by arrays indexed by bucket. Pass 4 recounts every
bucket's live sectors and data type (btree node regions, found through the
interior nodes only, and extents) and compares with the alloc keys; an extent
whose generation is not its bucket's has its data verified: if the data is
gone the extent is stale and dropped, if it verifies the generation is what
is wrong (the bucket's when the bucket's other extents agree with the key,
else the bucket takes its extents' generation).

Pass 5 compares, per bucket, the count and a sum of hashes of the expected
backpointers with those of the backpointers btree; only buckets that differ
are rescanned in detail, in batches of bounded size. A final ordered walk of
the backpointers finds regions claimed twice (an extent over a node or over
another extent's data): the copy that fails its checksum is dropped, a
verified one copied to new space.
"""

from __future__ import annotations

from array import array
from collections import Counter
from collections.abc import Iterator

import xxhash

from ..alloc.backpointers import at, extent_backpointer, extent_use, node_backpointer
from ..alloc.buckets import NEED_DISCARD, alloc_key
from ..alloc.foreground import NoSpace, Watermark
from ..format import (
    BLOCK_SIZE,
    BTREE_ID_NR,
    SECTOR_SIZE,
    Alloc,
    Backpointer,
    BtreeId,
    DataType,
    Extent,
    checksum,
    key_to_text,
    pack_key,
    unpack_key,
)
from .context import Ctx
from .errors import Err
from .repair import apply

ALLOC = BtreeId.alloc
EXT = BtreeId.extents
BP = BtreeId.backpointers
HAS_BTREE, HAS_USER = 1, 2
DETAIL_BATCH = 1 << 17          # backpointers examined in detail per rescan
M64 = (1 << 64) - 1
EMPTY_OK_TYPES = (DataType.free, DataType.need_discard, DataType.cached)


def _dt_name(t: int) -> str:
    return DataType(t).name if t in DataType._value2member_map_ else f"type {t}"


class AllocKeys:
    """Every data bucket's alloc key, as arrays (absent key = free, gen 0)."""

    def __init__(self, ctx: Ctx):
        nb = ctx.sb.nbuckets
        self.present = bytearray(nb)
        self.gen = array("I", bytes(4 * nb))
        self.dtype = bytearray(nb)
        self.flags = bytearray(nb)
        self.dirty = array("I", bytes(4 * nb))
        self.cached = array("I", bytes(4 * nb))
        self.jseq = array("Q", bytes(8 * nb))
        for k, v in ctx.items(ALLOC):
            self._put(unpack_key(k)[1], Alloc.unpack(v))
        for b, (a, _pin) in list(ctx.eng.alloc.state.cache.items()):
            self._put(b, a)

    def _put(self, b: int, a: Alloc) -> None:
        if not 0 <= b < len(self.present):
            return
        self.present[b] = 1
        self.gen[b] = a.gen
        self.dtype[b] = a.data_type
        self.flags[b] = a.flags
        self.dirty[b] = a.dirty_sectors
        self.cached[b] = a.cached_sectors
        self.jseq[b] = a.journal_seq

    def text(self, b: int) -> str:
        if not self.present[b]:
            return "no alloc key"
        return (f"gen {self.gen[b]} {_dt_name(self.dtype[b])} flags {self.flags[b]} "
                f"dirty {self.dirty[b]} cached {self.cached[b]}")


# --------------------------------------------------------------------------
# Pass 4


def pass4(ctx: Ctx) -> None:
    keys = AllocKeys(ctx)
    nb = ctx.sb.nbuckets
    sectors = array("I", bytes(4 * nb))
    kind = bytearray(nb)
    node_sectors = ctx.eng.node_size // SECTOR_SIZE
    for bid in range(BTREE_ID_NR):
        for _lv, off, _k in ctx.bt.node_pointers(bid):
            b = off // ctx.bs
            sectors[b] += node_sectors
            kind[b] |= HAS_BTREE
    mism: dict[int, list[bytes]] = {}
    match = bytearray(nb)
    n = 0
    bs = ctx.bs
    for k, v in ctx.items(EXT):
        e = Extent.unpack(v)
        b, _bp, used = extent_use(e, bs)
        n += 1
        if n % 4096 == 0:
            ctx.rep.progress("extents", n, 0)
        if e.gen == keys.gen[b]:
            sectors[b] += used
            kind[b] |= HAS_USER
            match[b] = 1
        else:
            mism.setdefault(b, []).append(k)
    gens = _resolve_gens(ctx, keys, mism, match, sectors, kind)
    _compare(ctx, keys, sectors, kind, gens)


def _resolve_gens(ctx: Ctx, keys: AllocKeys, mism: dict[int, list[bytes]], match: bytearray,
                  sectors: array, kind: bytearray) -> dict[int, int]:
    """Decide each mismatched extent (stale or wrong gen) and each bucket's gen."""
    gens: dict[int, int] = {}
    verified_cache: dict[tuple[int, int, int], bool] = {}
    for b in sorted(mism):
        verified: list[tuple[bytes, Extent]] = []
        for k in mism[b]:
            v = ctx.value(EXT, k)
            if v is None:
                continue
            e = Extent.unpack(v)
            if region_ok(ctx, e, verified_cache):
                verified.append((k, e))
                continue
            ctx.rep.problem(Err.extent_stale, f"extent {key_to_text(k)} in bucket {b}: "
                            f"generation {e.gen}, bucket's {keys.gen[b]}, and its data fails "
                            f"its checksum", lambda k=k: _drop_extent(ctx, k))
        if not verified:
            continue
        target = keys.gen[b]
        if not match[b]:
            count = Counter(e.gen for _k, e in verified)
            target = max(count, key=lambda g: (count[g], g))
            gens[b] = target
        for k, e in verified:
            if e.gen == target:
                sectors[b] += extent_use(e, ctx.bs).sectors
                kind[b] |= HAS_USER
                continue
            if ctx.rep.problem(Err.extent_gen_wrong, f"extent {key_to_text(k)} in bucket {b}: "
                               f"generation {e.gen}, bucket's {target}; its data verifies",
                               lambda k=k, e=e, g=target: _set_extent(ctx, k, e.replace(gen=g))):
                sectors[b] += extent_use(e, ctx.bs).sectors
                kind[b] |= HAS_USER
    return gens


def region_ok(ctx: Ctx, e: Extent, cache: dict | None = None) -> bool:
    """Whether the extent's region reads back with its checksum."""
    ck = (e.dev_offset, e.region_blocks, e.csum)
    if cache is not None and ck in cache:
        return cache[ck]
    n = e.region_blocks * BLOCK_SIZE
    ok = e.dev_offset + n <= ctx.dev.size and checksum(ctx.eng.dev.pread(n, e.dev_offset)) == e.csum
    if cache is not None:
        if len(cache) > 4096:
            cache.clear()
        cache[ck] = ok
    return ok


def _drop_extent(ctx: Ctx, k: bytes) -> None:
    with ctx.eng.committer.triggers_off():
        apply(ctx.eng, [(EXT, k, None)])


def _set_extent(ctx: Ctx, k: bytes, e: Extent) -> None:
    with ctx.eng.committer.triggers_off():
        apply(ctx.eng, [(EXT, k, e.pack())])


def _compare(ctx: Ctx, keys: AllocKeys, sectors: array, kind: bytearray,
             gens: dict[int, int]) -> None:
    alloc = ctx.eng.alloc
    st = alloc.state
    fixes: list[tuple[int, bytes, bytes | None]] = []
    for b in range(alloc.first, alloc.end):
        res = _expected_key(ctx, keys, b, sectors[b], kind[b], gens.get(b), b in st.open_refs)
        if res is None:
            continue
        err, why, new = res
        ctx.rep.problem(err, f"bucket {b}: {why} (alloc key: {keys.text(b)})",
                        lambda b=b, new=new: fixes.append((ALLOC, alloc_key(b), new.pack())))
    if fixes:
        st.flush_cache()
        apply(ctx.eng, fixes)
    if ctx.alloc_frozen or fixes:
        alloc.trust()
        ctx.alloc_frozen = False
    else:
        alloc.tolerate_undercount(False)


def _expected_key(ctx: Ctx, keys: AllocKeys, b: int, s: int, k: int, new_gen: int | None,
                  is_open: bool) -> tuple[Err, str, Alloc] | None:
    gen = keys.gen[b] if new_gen is None else new_gen
    if s:
        dt = DataType.btree if k & HAS_BTREE else DataType.user
        want = Alloc(gen=gen, data_type=dt, flags=0, dirty_sectors=s, cached_sectors=0,
                     journal_seq=keys.jseq[b])
        if not keys.present[b] or keys.dirty[b] != s:
            return Err.alloc_sectors_wrong, f"{s} sectors in use ({dt.name})", want
        if keys.dtype[b] != dt or keys.flags[b] or keys.cached[b]:
            return Err.alloc_type_wrong, f"holds {dt.name} data", want
        if new_gen is not None and new_gen != keys.gen[b]:
            return (Err.alloc_gen_wrong, f"its extents (data verified) have generation "
                    f"{new_gen}", want)
        return None
    if is_open or not keys.present[b]:
        return None
    dt, fl = keys.dtype[b], keys.flags[b]
    if not keys.dirty[b] and (
            (dt == DataType.free and not fl and not keys.cached[b])
            or (dt == DataType.need_discard and fl == NEED_DISCARD and not keys.cached[b])
            or (dt == DataType.cached and not fl)):
        return None
    want = Alloc(gen=(keys.gen[b] + 1) & 0xFFFFFFFF, data_type=DataType.need_discard,
                 flags=NEED_DISCARD, dirty_sectors=0, cached_sectors=0,
                 journal_seq=ctx.eng.journal.cur_seq)
    if keys.dirty[b]:
        return Err.alloc_sectors_wrong, "nothing lives here", want
    return Err.alloc_type_wrong, "empty, but its state says otherwise", want


# --------------------------------------------------------------------------
# Pass 5


def _h(key: bytes, val: bytes) -> int:
    return xxhash.xxh3_64_intdigest(key + val)


def expected_bps(ctx: Ctx, only: set[int] | None = None
                 ) -> Iterator[tuple[int, bytes, bytes]]:
    """(bucket, backpointer key, value) of every node and extent (of `only` buckets)."""
    bs = ctx.bs
    st = ctx.eng.alloc.state
    node_sectors = ctx.eng.node_size // SECTOR_SIZE
    for bid in range(BTREE_ID_NR):
        for lv, off, mk in ctx.bt.node_pointers(bid):
            b, bp_key, _n = at(off, node_sectors, bs)
            if only is None or b in only:
                yield b, bp_key, node_backpointer(bid, lv, mk, node_sectors, st.get(b).gen)
    for k, v in ctx.items(EXT):
        e = Extent.unpack(v)
        b, bp_key, _n = extent_use(e, bs)
        if only is None or b in only:
            yield b, bp_key, extent_backpointer(EXT, k, e)


def pass5(ctx: Ctx) -> None:
    nb = ctx.sb.nbuckets
    ecnt, esum = array("I", bytes(4 * nb)), array("Q", bytes(8 * nb))
    acnt, asum = array("I", bytes(4 * nb)), array("Q", bytes(8 * nb))
    for b, k, v in expected_bps(ctx):
        ecnt[b] += 1
        esum[b] = (esum[b] + _h(k, v)) & M64
    for k, v in ctx.items(BP):
        b = unpack_key(k)[0]
        acnt[b] += 1
        asum[b] = (asum[b] + _h(k, v)) & M64
    bad = [b for b in range(nb) if ecnt[b] != acnt[b] or esum[b] != asum[b]]
    batch: list[int] = []
    size = 0
    for b in bad:
        batch.append(b)
        size += ecnt[b] + acnt[b]
        if size >= DETAIL_BATCH:
            _detail(ctx, batch)
            batch, size = [], 0
    if batch:
        _detail(ctx, batch)
    _overlaps(ctx)


def _detail(ctx: Ctx, buckets: list[int]) -> None:
    want: dict[bytes, list[bytes]] = {}
    for _b, k, v in expected_bps(ctx, set(buckets)):
        want.setdefault(k, []).append(v)
    have: dict[bytes, bytes] = {}
    for b in buckets:
        have.update(ctx.items(BP, pack_key(b, 0), pack_key(b, ctx.bs - 1)))
    conflicts = [(k, vs) for k, vs in want.items() if len(vs) > 1]
    if conflicts:
        for k, vs in conflicts:
            _conflict(ctx, k, [Backpointer.unpack(v) for v in vs])
        want = {}
        for _b, k, v in expected_bps(ctx, set(buckets)):
            want.setdefault(k, []).append(v)
        have = {}
        for b in buckets:
            have.update(ctx.items(BP, pack_key(b, 0), pack_key(b, ctx.bs - 1)))
    fixes: list[tuple[int, bytes, bytes | None]] = []
    for k in sorted(want.keys() | have.keys()):
        vs = want.get(k, [])
        exp = vs[-1] if vs else None
        cur = have.get(k)
        if exp == cur:
            continue
        where = f"backpointer bucket {unpack_key(k)[0]} offset {unpack_key(k)[1]}"
        if cur is None:
            err, why = Err.backpointer_missing, f"missing for {_bp_text(exp)}"
        elif exp is None:
            err, why = Err.backpointer_dangling, f"{_bp_text(cur)} points at nothing"
        else:
            err, why = Err.backpointer_wrong, f"says {_bp_text(cur)}, expected {_bp_text(exp)}"
        ctx.rep.problem(err, f"{where}: {why}",
                        lambda k=k, exp=exp: fixes.append((BP, k, exp)))
    if fixes:
        apply(ctx.eng, fixes)


def _bp_text(v: bytes) -> str:
    bp = Backpointer.unpack(v)
    what = "node" if bp.level else "extent"
    bname = BtreeId(bp.btree_id).name if bp.btree_id < BTREE_ID_NR else str(bp.btree_id)
    lv = f" level {bp.level - 1}" if bp.level else ""
    return f"{bname}{lv} {what} {key_to_text(bp.pos)} ({bp.length} sectors, gen {bp.gen})"


def _overlaps(ctx: Ctx) -> None:
    """Regions claimed twice: consecutive backpointers of a bucket that overlap."""
    prev_b, prev_end, prev = -1, 0, None
    found: list[tuple[bytes, Backpointer, Backpointer]] = []
    for k, v in ctx.items(BP):
        b, off = unpack_key(k)
        bp = Backpointer.unpack(v)
        if b == prev_b and off < prev_end and prev is not None:
            found.append((k, prev, bp))
        if b != prev_b or off + bp.length * SECTOR_SIZE > prev_end:
            prev_end = off + bp.length * SECTOR_SIZE
            prev = bp
        prev_b = b
    for k, a, b in found:
        if not _same_file_overlap(ctx, a, b):
            _conflict(ctx, k, [a, b])


def _same_file_overlap(ctx: Ctx, a: Backpointer, b: Backpointer) -> bool:
    """Two extents of one file whose file ranges overlap as well: pass 7 trims the
    earlier around the later, which ends the overlap of their data too."""
    if a.level or b.level or a.btree_id != EXT or b.btree_id != EXT:
        return False
    (ia, fa), (ib, fb) = unpack_key(a.pos), unpack_key(b.pos)
    va, vb = ctx.value(EXT, a.pos), ctx.value(EXT, b.pos)
    if ia != ib or va is None or vb is None:
        return False
    na, nb = Extent.unpack(va).nblocks, Extent.unpack(vb).nblocks
    return fa < fb + nb and fb < fa + na


def _conflict(ctx: Ctx, k: bytes, items: list[Backpointer]) -> None:
    """Several extents/nodes claim overlapping bytes of one bucket."""
    b, off = unpack_key(k)
    desc = " and ".join(_bp_text(bp.pack()) for bp in items)
    losers = []
    extents = [bp for bp in items if not bp.level and bp.btree_id == EXT]
    has_node = any(bp.level for bp in items)
    keep_one = not has_node
    for bp in extents:
        v = ctx.value(EXT, bp.pos)
        if v is None:
            continue
        e = Extent.unpack(v)
        if not region_ok(ctx, e) or has_node:
            losers.append(("drop", bp.pos))
        elif keep_one:
            keep_one = False
        else:
            losers.append(("copy", bp.pos))
    if not losers:
        return
    ctx.rep.problem(Err.region_conflict, f"bucket {b} offset {off}: claimed by {desc}",
                    lambda: _resolve(ctx, losers))


def _resolve(ctx: Ctx, losers: list[tuple[str, bytes]]) -> bool:
    ok = True
    for action, key in losers:
        if action == "drop":
            apply(ctx.eng, [(EXT, key, None)])
        elif not copy_extent(ctx, key):
            ok = False
    return ok


def copy_extent(ctx: Ctx, key: bytes) -> bool:
    """Give an extent its own copy of its live blocks (a region it shared)."""
    v = ctx.value(EXT, key)
    if v is None:
        return False
    e = Extent.unpack(v)
    inum, fblk = unpack_key(key)
    data = ctx.eng.dev.pread(e.nblocks * BLOCK_SIZE, e.dev_offset + e.live_offset * BLOCK_SIZE)
    alloc = ctx.eng.alloc
    done = 0
    t = ctx.eng.trans(Watermark.btree)
    refs = []
    try:
        while done < e.nblocks:
            try:
                off, n, gen, ref = alloc.alloc_data(inum, fblk + done, e.nblocks - done)
            except NoSpace:
                return False
            refs.append(ref)
            chunk = data[done * BLOCK_SIZE:(done + n) * BLOCK_SIZE]
            ctx.eng.dev.pwrite(chunk, off)
            t.set(EXT, pack_key(inum, fblk + done),
                  Extent(dev_offset=off, region_blocks=n, csum=checksum(chunk), live_offset=0,
                         nblocks=n, gen=gen).pack())
            done += n
        t.commit()
    finally:
        for r in refs:
            r.release()
    return True
