"""Recount allocation from extents and btree nodes and compare with alloc keys.

Used by tests after every workload, and by fsck as its alloc/backpointer
pass. Sector counts are compared per bucket first; only mismatched buckets
would need a closer look. Returns human-readable problems; empty means clean.
"""

from __future__ import annotations

from ..format import (
    BLOCK_SIZE,
    BTREE_ID_NR,
    SECTOR_SIZE,
    Backpointer,
    BtreeId,
    DataType,
    Extent,
    KeyType,
    unpack_key,
)
from .foreground import backpointer_key


def expected_usage(eng) -> tuple[dict[int, tuple[int, int]], dict[bytes, tuple]]:
    """(bucket -> (data_type, sectors), backpointer key -> (btree, level, pos, length))."""
    bs = eng.sb.bucket_size
    usage: dict[int, tuple[int, int]] = {}
    bps: dict[bytes, tuple] = {}
    node_sectors = eng.node_size // SECTOR_SIZE
    for bid in range(BTREE_ID_NR):
        for node in eng.btrees.walk(bid):
            b = node.offset // bs
            dt, s = usage.get(b, (DataType.btree, 0))
            usage[b] = (DataType.btree, s + node_sectors)
            bps[backpointer_key(b, node.offset - b * bs)] = (bid, node.level + 1, node.min_key,
                                                             node_sectors)
    for k, v in eng.btrees.iter(BtreeId.extents):
        if v[0] != KeyType.extent:
            continue
        e = Extent.unpack(v)
        start = e.dev_offset + e.live_offset * BLOCK_SIZE
        b = start // bs
        n = e.nblocks * BLOCK_SIZE // SECTOR_SIZE
        dt, s = usage.get(b, (DataType.user, 0))
        usage[b] = (DataType.user, s + n)
        bps[backpointer_key(b, start - b * bs)] = (BtreeId.extents, 0, k, n)
    return usage, bps


def check_alloc(eng, *, backpointers: bool = True) -> list[str]:
    problems: list[str] = []
    usage, want_bps = expected_usage(eng)
    st = eng.alloc.state
    alloc = eng.alloc
    for b in range(alloc.first, alloc.end):
        a = st.get(b)
        dt, sectors = usage.get(b, (DataType.free, 0))
        if a.dirty_sectors != sectors:
            problems.append(f"bucket {b}: alloc key has {a.dirty_sectors} sectors, "
                            f"extents/nodes use {sectors}")
        elif sectors and a.data_type != dt:
            problems.append(f"bucket {b}: data type {DataType(a.data_type).name}, "
                            f"expected {DataType(dt).name}")
        in_use = sectors or b in st.open_refs or a.data_type == DataType.need_discard
        if in_use and alloc.index.is_free(b):
            problems.append(f"bucket {b}: in use but marked free in the free-space index")
        if not in_use and a.data_type == DataType.free and not alloc.index.is_free(b):
            problems.append(f"bucket {b}: free but missing from the free-space index")
    if backpointers and alloc.backpointers:
        have = {}
        for k, v in eng.btrees.iter(BtreeId.backpointers):
            bp = Backpointer.unpack(v)
            have[k] = (bp.btree_id, bp.level, bp.pos, bp.length)
        for k, want in want_bps.items():
            if have.get(k) != want:
                b, off = unpack_key(k)
                problems.append(f"backpointer bucket {b} offset {off}: have {have.get(k)}, "
                                f"expected {want}")
        for k in have.keys() - want_bps.keys():
            b, off = unpack_key(k)
            problems.append(f"backpointer bucket {b} offset {off}: points at nothing "
                            f"({have[k]})")
    return problems
