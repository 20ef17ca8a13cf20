"""Mounting an image for fsck: the engine's own recovery passes, told fsck's choices.

fsck hands the engine a RecoveryPlan (pyfs/recovery.py): the journal chain
its journal pass chose, the roots its topology pass validated, the alloc
keys that decode (salvaged ones for a rebuilt alloc btree), every bucket
pass 2 saw in use (so nothing allocated during the repair lands on live
data while the alloc info is not trusted yet), the btrees to rebuild and a
refill that puts their salvaged keys in before the journal is replayed
over them, and the journal keys replay must skip.
"""

from __future__ import annotations

from ..format import BtreeId, DataType, key_to_text
from ..journal.read import JournalScan
from ..recovery import RecoveryPlan
from .topology import Prescan, _alloc_ok


def repair_plan(view: JournalScan, pre: Prescan, skip_keys: set) -> RecoveryPlan:
    return RecoveryPlan(scan=view, trusted_roots=dict(pre.roots),
                        alloc_seed=_alloc_seed(view, pre), taken=pre.used,
                        rebuild=frozenset(pre.rebuild),
                        refill=(lambda eng: _refill(eng, pre)) if pre.rebuild else None,
                        skip_keys=skip_keys, tolerate_undercount=True)


def _alloc_seed(view: JournalScan, pre: Prescan) -> dict[int, bytes]:
    """Alloc keys the allocator starts from: salvaged ones if the alloc btree is
    rebuilt, with the journal's newer ones (those that decode) over them."""
    seed: dict[int, bytes] = {}
    for ts in pre.trees:
        if ts.bid == BtreeId.alloc and ts.salvage is not None:
            for k, (_seq, v) in ts.salvage.items():
                seed[int.from_bytes(k[8:], "big")] = v
    for e in view.entries:
        for bid, lv, k, v in e.keys:
            if bid == BtreeId.alloc and not lv and v and _alloc_ok(v):
                seed[int.from_bytes(k[8:], "big")] = v
    return seed


def _refill(eng, pre: Prescan) -> None:
    """The rebuilt btrees get their salvaged keys; the regions of their old nodes
    are freed first (their keys are in memory, and a big rebuild may need the
    space: nothing reaches the image before the whole repair has succeeded,
    as fsck stages its writes)."""
    _free_old_nodes(eng, pre)
    bt = eng.btrees
    seq = eng.journal.cur_seq
    for ts in pre.trees:
        if ts.salvage is None or ts.bid not in pre.rebuild:
            continue
        for k in sorted(ts.salvage):
            v = ts.salvage[k][1]
            if 0 < len(v) <= bt.max_value:
                bt.insert(ts.bid, k, v, seq)


def _free_old_nodes(eng, pre: Prescan) -> None:
    """The regions of the btrees being rebuilt are free now (as a node retired by
    a merge is), when their alloc keys agree; pass 4 fixes the others."""
    alloc = eng.alloc
    bucket_size = eng.sb.bucket_size
    sectors = eng.node_size // 512
    done: set[int] = set()
    for ts in pre.trees:
        if ts.bid not in pre.rebuild:
            continue
        for off in ts.regions:
            b = off // bucket_size
            if off in done or not alloc.first <= b < alloc.end:
                continue
            a = alloc.state.get(b)
            if a.data_type == DataType.btree and a.dirty_sectors >= sectors:
                alloc.free_node(off, eng.journal.cur_seq)
                done.add(off)


def unreplayable_keys(view: JournalScan, max_value: int) -> list[tuple[int, int, bytes, str]]:
    """Journal keys replay cannot apply: (seq, btree, key, why)."""
    out = []
    for e in view.entries:
        for bid, lv, key, val in e.keys:
            if lv:
                continue
            if len(val) > max_value:
                out.append((e.seq, bid, key, f"value of {len(val)} bytes exceeds the "
                                             f"{max_value} byte limit"))
            elif bid == BtreeId.alloc and val and not _alloc_ok(val):
                out.append((e.seq, bid, key, "alloc value does not decode"))
    return out


def describe_key(bid: int, key: bytes) -> str:
    return f"{BtreeId(bid).name} {key_to_text(key)}"
