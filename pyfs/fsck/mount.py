"""Mounting an image for fsck: the normal engine when the journal and btrees are
sound, a repair mount when they are not, and a copy-on-write overlay for -n.

RepairEngine is the engine with a tolerant mount: it replays the journal
chain fsck chose (pyfs/fsck/journal.py) instead of mount's, recreates the
btrees pass 2 found damaged from their salvaged keys (inserted before the
journal is replayed over them), skips journal keys that cannot be replayed,
and marks every bucket pass 2 saw in use as taken before anything is
allocated, so no repair can overwrite live data while the alloc info is not
yet trusted.
"""

from __future__ import annotations

from ..engine import Engine
from ..format import (
    BtreeId,
    DataType,
    key_to_text,
)
from ..journal.read import JournalError, JournalScan, read_journal
from .journal import JournalView
from .topology import Prescan, _alloc_ok


def tolerate_alloc(eng) -> None:
    """Until pass 4 has recounted them, alloc keys may claim fewer sectors than a
    bucket holds; a node freed meanwhile (a merge, a compaction) must not trip the
    allocator's sanity check. Sector counts are clamped at zero instead; pass 4
    puts the keys right and trust_alloc() removes the clamp."""
    st = eng.alloc.state
    if "add_sectors" in st.__dict__:
        return
    orig = st.add_sectors

    def add_sectors(b: int, delta: int, data_type: int, gen: int) -> None:
        a = st.get(b)
        if a.gen == gen and a.dirty_sectors + delta < 0:
            delta = -a.dirty_sectors
        orig(b, delta, data_type, gen)
    st.add_sectors = add_sectors


def trust_alloc(eng) -> None:
    eng.alloc.state.__dict__.pop("add_sectors", None)


class RepairEngine(Engine):
    """The engine, mounted from fsck's journal chain with damaged btrees rebuilt."""

    def __init__(self, dev, view: JournalView, pre: Prescan, skip_keys: set, **kw):
        self._fsck_view = view
        self._fsck_pre = pre
        self._fsck_skip = skip_keys
        super().__init__(dev, **kw)

    def _mount(self) -> None:
        """The engine's own mount, with fsck's choices swapped in where it reads
        the journal, loads roots, builds the allocator and replays: what the
        engine does around them (sequence reservations, superblock updates)
        stays the engine's."""
        import pyfs.engine as engine_mod
        sb = self.sb
        view = self._fsck_view
        tolerate_alloc(self)
        if view.newest is None:
            sb.clean_journal_seq = 0        # journal_roots_lost, reported: a fresh journal
        elif sb.clean_journal_seq > view.newest.seq:
            sb.clean_journal_seq = view.newest.seq      # journal_behind_clean, reported
        self._first_entry_missing_data = lambda scan: None   # fsck's chain is already cut
        bt_set_root = self.btrees.set_root
        build = self.alloc.build
        self.btrees.set_root = self._set_root(bt_set_root)
        self.alloc.build = self._build(build)
        saved = engine_mod.read_journal
        engine_mod.read_journal = self._read_journal
        try:
            super()._mount()
        finally:
            engine_mod.read_journal = saved
            self.btrees.set_root = bt_set_root
            self.alloc.build = build
            del self._first_entry_missing_data

    def _read_journal(self, *_args, **_kw) -> JournalScan:
        view = self._fsck_view
        return JournalScan(entries=list(view.entries), positions=list(view.positions),
                           head=view.head, end_reason="fsck")

    def _set_root(self, orig):
        pre = self._fsck_pre

        def set_root(bid: int, level: int, offset: int, node_seq: int) -> None:
            """Only the roots pass 2 validated, and none of a btree being rebuilt."""
            if bid not in pre.rebuild and pre.roots.get(bid) == (level, offset, node_seq):
                orig(bid, level, offset, node_seq)
        return set_root

    def _build(self, orig):
        def build(_overlay: dict[int, bytes], durable_seq: int) -> None:
            """Alloc keys that decode only; then every bucket pass 2 saw in use is
            taken, so nothing allocated during mount lands on live data."""
            orig(self._alloc_overlay(), durable_seq)
            used = self._fsck_pre.used
            idx = self.alloc.index
            for b in range(self.alloc.first, self.alloc.end):
                if used[b]:
                    idx.set_used(b)
        return build

    def _alloc_overlay(self) -> dict[int, bytes]:
        """Alloc keys the allocator starts from: salvaged ones if the alloc btree is
        rebuilt, with the journal's newer ones over them."""
        overlay: dict[int, bytes] = {}
        for ts in self._fsck_pre.trees:
            if ts.bid == BtreeId.alloc and ts.salvage is not None:
                for k, (_seq, v) in ts.salvage.items():
                    overlay[int.from_bytes(k[8:], "big")] = v
        for e in self._fsck_view.entries:
            for bid, lv, k, v in e.keys:
                if bid == BtreeId.alloc and not lv and v and _alloc_ok(v):
                    overlay[int.from_bytes(k[8:], "big")] = v
        return overlay

    def _insert_salvage(self) -> None:
        bt = self.btrees
        seq = self.journal.cur_seq
        for ts in self._fsck_pre.trees:
            if ts.salvage is None or ts.bid not in self._fsck_pre.rebuild:
                continue
            for k in sorted(ts.salvage):
                v = ts.salvage[k][1]
                if 0 < len(v) <= bt.max_value:
                    bt.insert(ts.bid, k, v, seq)

    def _free_old_nodes(self) -> None:
        """The regions of the btrees just rebuilt are free now (as a node retired by
        a merge is), when their alloc keys agree; pass 4 fixes the others."""
        st = self.alloc.state
        sectors = self.node_size // 512
        done: set[int] = set()
        for ts in self._fsck_pre.trees:
            if ts.bid not in self._fsck_pre.rebuild:
                continue
            for off in ts.regions:
                b = off // self.sb.bucket_size
                if off in done or not self.alloc.first <= b < self.alloc.end:
                    continue
                a = st.get(b)
                if a.data_type == DataType.btree and a.dirty_sectors >= sectors:
                    self.alloc.free_node(off, self.journal.cur_seq)
                    done.add(off)

    def _replay(self, scan) -> None:
        """Salvaged keys into the new btrees first, then the journal over them,
        skipping what cannot be replayed and the pointer updates of rebuilt trees."""
        # The old regions first: their keys are in memory (salvaged), and a big
        # rebuild may need their space (nothing reaches the image before the
        # whole repair has succeeded: fsck stages its writes).
        self._free_old_nodes()
        self._insert_salvage()
        view = self._fsck_view
        if not view.needs_replay():
            return
        bt = self.btrees
        rebuild = self._fsck_pre.rebuild
        skip = self._fsck_skip
        ents = view.entries
        levels = sorted({lv for e in ents for _b, lv, _k, _v in e.keys if lv}, reverse=True)
        for level in levels:
            for e in ents:
                for bid, lv, key, val in e.keys:
                    if lv == level and bid not in rebuild:
                        bt.apply_interior(bid, lv, key, val, e.seq)
        for e in ents:
            for bid, lv, key, val in e.keys:
                if lv or (e.seq, bid, key) in skip:
                    continue
                if val:
                    bt.insert(bid, key, val, e.seq)
                else:
                    bt.delete(bid, key, e.seq)
                self.replayed_keys += 1
            self.replayed_entries += 1
        bt.dirty = dict.fromkeys(sorted(bt.dirty, key=lambda n: n.pin_seq))


def unreplayable_keys(view: JournalView, max_value: int) -> list[tuple[int, int, bytes, str]]:
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


def journal_agrees(dev, sb, view: JournalView) -> bool:
    """Whether mount's own journal reading finds the chain fsck chose."""
    try:
        scan = read_journal(dev, sb.journal_bucket * sb.bucket_size, sb.bucket_size,
                            sb.journal_nbuckets)
    except (JournalError, Exception):
        return False
    return [e.seq for e in scan.entries] == [e.seq for e in view.entries] or (
        view.cut_missing_data is not None and bool(scan.entries)
        and [e.seq for e in scan.entries if e.seq < view.cut_missing_data]
        == [e.seq for e in view.entries])


def describe_key(bid: int, key: bytes) -> str:
    return f"{BtreeId(bid).name} {key_to_text(key)}"
