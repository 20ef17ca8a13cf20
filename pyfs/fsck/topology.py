"""Pass 2: btree topology, checked on disk before anything is mounted.

The roots come from the newest journal entry and the journal's pointer
updates are laid over the interior nodes exactly as mount replays them (a
BtreeSet with a stand-in journal does that), so what is checked is the tree
mount would see. Every node is then read once, depth first, with a visited
set and a node budget derived from the device size: checksums, key order,
header against pointer (sequence, btree, level, key range), children tiling
their parent's range, interior nodes not empty, no region reached twice.

A btree with any such problem is rebuilt: the keys of every readable leaf
(and of the good bsets of a node that fails validation) within the range its
parent gave it are salvaged, newest node first on overlap, and mount creates
the btree anew from them (pyfs/fsck/mount.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..btree.io import parse_node, round_up
from ..btree.lookup import key_before
from ..btree.node_scan import newest_cover, node_slots, scan_nodes
from ..btree.tree import BtreeSet
from ..format import (
    BLOCK_SIZE,
    BTREE_ID_NR,
    BTREE_PTR_SIZE,
    MAX_BTREE_DEPTH,
    MAX_KEY,
    NODE_HDR_SIZE,
    ZERO_KEY,
    Alloc,
    BtreeId,
    DataType,
    Extent,
    FormatError,
    KeyType,
    NodeHeader,
    key_to_text,
    unpack_bset,
    unpack_bset_header,
    unpack_btree_ptr,
)
from ..journal.read import JournalScan
from .errors import Err

# A lost subtree's leaves are searched for in every node slot of the data
# buckets up to this many slots; beyond, only in the buckets the alloc keys
# say hold btree nodes.
SCAN_ALL_SLOTS = 1 << 16


class StubJournal:
    """What a BtreeSet needs from a journal to read nodes and apply pointer updates."""

    def __init__(self, seq: int):
        self.cur_seq = seq + 1
        self.durable_seq = self.mount_seq = seq

    def add_interior(self, *_args) -> None:
        pass

    def node_written(self) -> None:
        pass


@dataclass
class NodeView:
    """What the walk needs of a node: where it is and its merged keys."""
    level: int
    min_key: bytes
    max_key: bytes
    keys: list[bytes]
    vals: list[bytes]
    offset: int
    max_seq: int = 0


@dataclass
class TreeState:
    bid: int
    nodes: int = 0
    damaged: bool = False
    salvage: dict[bytes, tuple[int, bytes]] | None = None    # key -> (node seq, value)
    lost_subtrees: int = 0
    salvaged_leaves: int = 0
    regions: list[int] = field(default_factory=list)    # node regions this btree owns
    lost: list[tuple[bytes, bytes]] = field(default_factory=list)   # key ranges not reached
    found_by_scan: int = 0


@dataclass
class Prescan:
    """Results of pass 2 that mount and the later passes use."""
    trees: list[TreeState] = field(default_factory=list)
    used: bytearray = field(default_factory=bytearray)      # bucket -> 1 if anything lives there
    rebuild: set[int] = field(default_factory=set)          # btrees to recreate
    roots: dict[int, tuple[int, int, int]] = field(default_factory=dict)  # valid root records
    bad_alloc_journal: set[bytes] = field(default_factory=set)

    @property
    def nodes(self) -> int:
        return sum(t.nodes for t in self.trees)


class TopologyCheck:
    def __init__(self, dev, sb, view: JournalScan, rep, *, roots_lost: bool = False):
        self.dev = dev
        self.sb = sb
        self.view = view
        self.rep = rep
        self.bs = sb.bucket_size
        self.node_size = sb.btree_node_size
        self.first = sb.first_data_bucket
        self.end = min(sb.nbuckets, sb.backup_offset // sb.bucket_size)
        self.roots_lost = roots_lost
        # Bsets newer than the newest journal entry never became durable; with
        # no journal at all (roots lost) whatever the nodes hold is the best
        # there is.
        self.limit = view.newest.seq if view.newest else (None if roots_lost else 0)
        self.replay_from = view.entries[0].seq if view.entries else 0
        space = sb.seq_blacklist()
        # Bsets of blacklisted seqs (a crashed session's, never durable) do not count.
        self.blacklisted = space.blacklisted if space.ranges else None
        self.max_nodes = max(16, (self.end - self.first) * (self.bs // self.node_size))
        self.result = Prescan(used=bytearray(sb.nbuckets))
        self.bt = BtreeSet(dev, self.node_size, None, StubJournal(self.limit or 0), {},
                           cache_nodes=1 << 30)
        self.bt.set_blacklist(space)
        self.btree_buckets: set[int] = set()
        self.budget = self.max_nodes
        self.root_regions: dict[int, int] = {}
        self.journal_extents = self._newest_journal_extents()

    # ------------------------------------------------------------ entry point

    def run(self) -> Prescan:
        roots = self._load_roots()
        if self.view.needs_replay():
            self._overlay_interior(roots)
        if self.roots_lost:
            self.result.rebuild.update(range(BTREE_ID_NR))
        for bid in range(BTREE_ID_NR):
            ts = TreeState(bid)
            self.result.trees.append(ts)
            if bid in self.root_regions:
                ts.regions.append(self.root_regions[bid])
            if bid in roots:
                self._check_tree(ts, roots[bid])
            if bid in self.result.rebuild:
                ts.damaged = True
        for ts in self.result.trees:
            if ts.damaged:
                self._salvage_tree(ts, roots.get(ts.bid))
        self._journal_extent_buckets()
        return self.result

    # ------------------------------------------------------------ helpers

    def where(self, bid: int, level: int, off: int) -> str:
        return (f"btree {BtreeId(bid).name} level {level} node at byte {off} "
                f"(bucket {off // self.bs})")

    def _damage(self, err: Err, bid: int, msg: str) -> None:
        self.rep.problem(err, msg, lambda: self.result.rebuild.add(bid))
        self.result.rebuild.add(bid)     # needed to go on at all; -n rebuilds in memory

    def _ptr_ok(self, off: int) -> str | None:
        if off % self.node_size:
            return f"offset {off} is not aligned to the node size {self.node_size}"
        b = off // self.bs
        if not self.first <= b < self.end:
            return f"offset {off} is outside the data buckets"
        return None

    def _mark(self, off: int) -> None:
        b = off // self.bs
        if 0 <= b < len(self.result.used):
            self.result.used[b] = 1

    def _parse(self, buf: bytes, off: int):
        if self.blacklisted is None:
            return parse_node(buf, off, self.limit)
        return parse_node(buf, off, self.limit, self.blacklisted)

    def _read(self, off: int):
        """(NodeImage, None) or (None, reason). A bset that fails its checksum after
        good ones ends a node normally (a torn append, its keys still in the
        journal), unless the journal no longer holds its keys: then it was durable
        and is damaged."""
        buf = self.dev.pread(self.node_size, off)
        try:
            img = self._parse(buf, off)
        except FormatError as e:
            return None, e.what
        if img.stop_reason == "torn":
            bh = unpack_bset_header(buf, img.written_bytes)
            if bh is not None and bh.node_seq == img.header.node_seq \
                    and bh.journal_seq < self.replay_from:
                return None, (f"bset at byte {off + img.written_bytes} fails its checksum and "
                              f"its keys (journal seq {bh.journal_seq}) are no longer in the "
                              f"journal")
        return img, None

    # ------------------------------------------------------------ roots

    def _load_roots(self) -> dict[int, NodeView]:
        newest = self.view.newest
        roots: dict[int, NodeView] = {}
        if newest is None:
            return roots
        recs = {bid: (lv, off, nseq) for bid, lv, off, nseq in newest.roots}
        for bid in range(BTREE_ID_NR):
            rec = recs.get(bid)
            if rec is None:
                self._damage(Err.btree_root_bad, bid, f"btree {BtreeId(bid).name}: the "
                             f"newest journal entry ({newest.seq}) records no root")
                continue
            lv, off, nseq = rec
            why = self._ptr_ok(off)
            if why is None:
                self._mark(off)
                img, why = self._read(off)
                if img is not None:
                    why = self._header_mismatch(img.header, bid, lv, nseq, ZERO_KEY, MAX_KEY)
                if img is None or (img.header.btree_id, img.header.node_seq) == (bid, nseq):
                    self.root_regions[bid] = off
            if why is not None:
                self._damage(Err.btree_root_bad, bid, f"{self.where(bid, lv, off)}: root "
                             f"unreadable: {why}")
                continue
            self.bt.set_root(bid, lv, off, nseq)
            self.result.roots[bid] = (lv, off, nseq)
            r = self.bt.roots[bid]
            roots[bid] = NodeView(r.level, ZERO_KEY, MAX_KEY, *r.merged(), off, img.max_journal_seq)
        return roots

    @staticmethod
    def _header_mismatch(h: NodeHeader, bid: int, level: int, nseq: int, lo: bytes,
                         hi: bytes) -> str | None:
        if h.btree_id != bid:
            return f"header says btree {h.btree_id}"
        if h.node_seq != nseq:
            return f"node sequence {h.node_seq:#x}, pointer expects {nseq:#x}"
        if h.level != level:
            return f"header says level {h.level}, expected {level}"
        if (h.min_key, h.max_key) != (lo, hi):
            return (f"covers {key_to_text(h.min_key)}..{key_to_text(h.max_key)}, parent "
                    f"expects {key_to_text(lo)}..{key_to_text(hi)}")
        return None

    def _overlay_interior(self, roots: dict[int, NodeView]) -> None:
        """Lay the journal's pointer updates over the interior nodes, as mount does."""
        ents = self.view.entries
        levels = sorted({lv for e in ents for _b, lv, _k, _v in e.keys if lv}, reverse=True)
        failed: dict[int, str] = {}
        for level in levels:
            for e in ents:
                for bid, lv, key, val in e.keys:
                    if lv != level or bid not in roots or bid in failed:
                        continue
                    if val and (len(val) != BTREE_PTR_SIZE or val[0] != KeyType.btree_ptr):
                        failed[bid] = (f"journal entry {e.seq} sets a pointer at "
                                       f"{key_to_text(key)} to a malformed value")
                        continue
                    try:
                        self.bt.apply_interior(bid, lv, key, val, e.seq)
                    except Exception as ex:     # a bad node on the way: the walk names it
                        failed[bid] = (f"journal pointer update at {key_to_text(key)} "
                                       f"(entry {e.seq}) cannot be applied: {ex}")
        for bid, why in sorted(failed.items()):
            self._damage(Err.btree_ptr_bad, bid, f"btree {BtreeId(bid).name}: {why}")
        for bid, nv in roots.items():
            r = self.bt.roots[bid]
            nv.keys, nv.vals = r.merged()

    # ------------------------------------------------------------ the check walk

    def _check_tree(self, ts: TreeState, root: NodeView) -> None:
        bid = ts.bid
        seen = {root.offset}
        stack = [root]
        ts.nodes = 1
        while stack:
            node = stack.pop()
            self.rep.progress("btree nodes", self.max_nodes - self.budget, 0)
            if node.level == 0:
                self._scan_leaf(bid, node)
                continue
            if not node.keys:
                self._damage(Err.btree_interior_empty, bid,
                             f"{self.where(bid, node.level, node.offset)}: interior node "
                             f"has no children")
                continue
            if node.keys[0] != node.min_key:
                self._damage(Err.btree_node_range, bid,
                             f"{self.where(bid, node.level, node.offset)}: first child starts "
                             f"at {key_to_text(node.keys[0])}, after the node's min key "
                             f"{key_to_text(node.min_key)}")
            children = []
            for i in range(len(node.keys)):
                child = self._check_child(ts, node, i, seen)
                if child is not None:
                    ts.nodes += 1
                    children.append(child)
            stack.extend(reversed(children))

    def _check_child(self, ts: TreeState, parent: NodeView, i: int, seen: set[int]
                     ) -> NodeView | None:
        bid = ts.bid
        lo = parent.keys[i]
        hi = key_before(parent.keys[i + 1]) if i + 1 < len(parent.keys) else parent.max_key
        ptr = parent.vals[i]
        level = parent.level - 1
        pw = self.where(bid, parent.level, parent.offset)
        try:
            off, nseq = unpack_btree_ptr(ptr)
        except FormatError:
            self._damage(Err.btree_ptr_bad, bid, f"{pw}: child pointer at "
                         f"{key_to_text(lo)} is malformed")
            return None
        why = self._ptr_ok(off)
        if why:
            self._damage(Err.btree_ptr_bad, bid, f"{pw}: child pointer at {key_to_text(lo)}: "
                         f"{why}")
            return None
        if off in seen:
            self._damage(Err.btree_region_twice, bid, f"{self.where(bid, level, off)}: reached "
                         f"a second time (from {pw}, key {key_to_text(lo)})")
            return None
        seen.add(off)
        self._mark(off)
        self.budget -= 1
        if self.budget < 0:
            self._damage(Err.btree_region_twice, bid, f"{pw}: more nodes than the device "
                         f"can hold ({self.max_nodes})")
            return None
        cached = self.bt.cache.get(ptr)
        if cached is not None:
            ts.regions.append(off)
            return NodeView(cached.level, lo, hi, *cached.merged(), off, cached.max_seq)
        img, why = self._read(off)
        where = self.where(bid, level, off)
        if img is None or (img.header.btree_id, img.header.node_seq) == (bid, nseq):
            ts.regions.append(off)
        if img is None:
            err = Err.btree_key_range if "outside the node's range" in why else Err.btree_node_bad
            self._damage(err, bid, f"{where}: {why}")
            return None
        h = img.header
        if h.btree_id != bid or h.node_seq != nseq:
            self._damage(Err.btree_node_mismatch, bid, f"{where}: does not match its pointer: "
                         f"{self._header_mismatch(h, bid, level, nseq, lo, hi)}")
            return None
        if h.level != level:
            self._damage(Err.btree_level_bad, bid, f"{where}: header says level {h.level}, "
                         f"its parent is at level {parent.level}")
            return None
        if (h.min_key, h.max_key) != (lo, hi):
            self._damage(Err.btree_node_range, bid, f"{where}: "
                         f"{self._header_mismatch(h, bid, level, nseq, lo, hi)}")
            return None
        return NodeView(level, lo, hi, img.keys, img.vals, off, img.max_journal_seq)

    def _scan_leaf(self, bid: int, node: NodeView) -> None:
        """Leaf keys mount depends on: alloc values must decode (the allocator reads
        them before anything else runs), extents name the buckets in use."""
        if bid == BtreeId.alloc:
            for k, v in zip(node.keys, node.vals):
                if not _alloc_ok(v):
                    self._damage(Err.alloc_key_bad, bid, f"alloc key {key_to_text(k)} in "
                                 f"{self.where(bid, 0, node.offset)} does not decode")
                elif v[5] == DataType.btree:
                    self.btree_buckets.add(int.from_bytes(k[8:], "big"))
        elif bid == BtreeId.extents:
            replaced = self.journal_extents
            for k, v in zip(node.keys, node.vals):
                if k not in replaced:
                    self._mark_extent(v)

    def _mark_extent(self, v: bytes) -> None:
        if not v or v[0] != KeyType.extent:
            return
        try:
            e = Extent.unpack(v)
        except FormatError:
            return
        b = e.dev_offset // self.bs
        if 0 <= b < len(self.result.used):
            self.result.used[b] = 1

    def _newest_journal_extents(self) -> dict[bytes, bytes | None]:
        """Each extent key's value after replay as far as the journal decides it
        (None: deleted). The node values of these keys are replaced, so their
        buckets are not in use on the nodes' account: on a full filesystem
        after an rm storm the journal deletes many extents the nodes still
        hold, and counting them would leave fsck's mount no room. Values that
        do not decode are left out: what they would overwrite still counts."""
        newest: dict[bytes, bytes | None] = {}
        for e in self.view.entries:
            for bid, lv, k, v in e.keys:
                if bid == BtreeId.extents and not lv and (not v or _extent_ok(v)):
                    newest[k] = v or None
        return newest

    def _journal_extent_buckets(self) -> None:
        for v in self.journal_extents.values():
            if v is not None:
                self._mark_extent(v)
        for e in self.view.entries:
            for bid, lv, k, v in e.keys:
                if bid == BtreeId.alloc and not lv and v and not _alloc_ok(v):
                    self.result.bad_alloc_journal.add(k)

    # ------------------------------------------------------------ salvage

    def _salvage_tree(self, ts: TreeState, root: NodeView | None) -> None:
        """Collect the keys of every leaf that can be read, for a rebuild."""
        ts.salvage = {}
        if root is None:
            root = self._salvage_root(ts)
        seen = {root.offset} if root is not None else set()
        stack = [root] if root is not None else []
        budget = self.max_nodes
        while stack and budget > 0:
            node = stack.pop()
            budget -= 1
            if node.level and not node.keys:
                self._lose(ts, node.min_key, node.max_key)
                continue
            if node.level == 0 or not _all_ptrs(node.vals):
                self._take_leaf(ts, node)
                continue
            for i in range(len(node.keys)):
                lo = node.keys[i]
                hi = key_before(node.keys[i + 1]) if i + 1 < len(node.keys) else node.max_key
                child = self._salvage_child(ts, node, lo, hi, node.vals[i], seen)
                if child is not None:
                    stack.append(child)
        if ts.lost:
            self._scan_lost(ts, set(ts.regions))

    def _salvage_root(self, ts: TreeState) -> NodeView | None:
        newest = self.view.newest
        if newest is None:
            self._lose(ts, ZERO_KEY, MAX_KEY)      # the whole btree is found by the scan
            return None
        n = len(ts.lost)
        for bid, lv, off, nseq in newest.roots:
            if bid == ts.bid and self._ptr_ok(off) is None:
                nv = self._salvage_node(ts, off, nseq, ZERO_KEY, MAX_KEY, lv)
                if nv is not None:
                    return nv
        del ts.lost[n:]
        self._lose(ts, ZERO_KEY, MAX_KEY)
        return None

    def _salvage_child(self, ts: TreeState, parent: NodeView, lo: bytes, hi: bytes,
                       ptr: bytes, seen: set[int]) -> NodeView | None:
        try:
            off, nseq = unpack_btree_ptr(ptr)
        except FormatError:
            self._lose(ts, lo, hi)
            return None
        if self._ptr_ok(off) is not None or off in seen:
            self._lose(ts, lo, hi)
            return None
        seen.add(off)
        return self._salvage_node(ts, off, nseq, lo, hi, parent.level - 1)

    def _salvage_node(self, ts: TreeState, off: int, nseq: int, lo: bytes, hi: bytes,
                      level: int) -> NodeView | None:
        cached = self.bt.cache.get(_ptr_bytes(off, nseq))
        if cached is not None:
            keys, vals = cached.merged()
            return _clip(NodeView(cached.level, lo, hi, keys, vals, off, cached.max_seq))
        buf = self.dev.pread(self.node_size, off)
        try:
            img = self._parse(buf, off)
        except FormatError:
            img = None
        if img is not None and img.header.btree_id == ts.bid and img.header.node_seq == nseq \
                and img.header.level < MAX_BTREE_DEPTH + 1:
            ts.regions.append(off)
            return _clip(NodeView(img.header.level, lo, hi, img.keys, img.vals, off,
                                  img.max_journal_seq))
        live, max_seq = salvage_bsets(buf, off, nseq, self.limit, self.blacklisted)
        if not live:
            self._lose(ts, lo, hi)
            return None
        ts.regions.append(off)
        keys = sorted(live)
        vals = [live[k] for k in keys]
        return _clip(NodeView(level if _all_ptrs(vals) else 0, lo, hi, keys, vals, off, max_seq))

    @staticmethod
    def _lose(ts: TreeState, lo: bytes, hi: bytes) -> None:
        ts.lost_subtrees += 1
        ts.lost.append((lo, hi))

    def _scan_lost(self, ts: TreeState, taken_regions: set[int]) -> None:
        """Find the leaves of lost subtrees on the device (pyfs/btree/node_scan.py):
        every node slot of the btree buckets (all data buckets when the alloc
        info is not to be trusted) holding a leaf of this btree inside a lost
        range. Leaves retired since (a split, a compaction) may still be there:
        the newest of overlapping candidates wins, whole, and the others are
        ignored."""
        slots = [off for off in self._scan_slots() if off not in taken_regions]

        def lost_leaf(h: NodeHeader) -> bool:
            return h.btree_id == ts.bid and h.level == 0 and any(
                lo <= h.min_key and h.max_key <= hi for lo, hi in ts.lost)
        found = scan_nodes(self.dev, slots, self.node_size, limit=self.limit,
                           blacklisted=self.blacklisted, want=lost_leaf)
        for n in newest_cover(found):
            ts.found_by_scan += 1
            ts.regions.append(n.offset)
            self._take_leaf(ts, NodeView(0, n.min_key, n.max_key, n.keys, n.vals, n.offset,
                                         n.max_seq))

    def _scan_slots(self) -> list[int]:
        buckets = sorted(self.btree_buckets)
        alloc_ok = BtreeId.alloc not in self.result.rebuild and buckets
        nslots = (self.end - self.first) * (self.bs // self.node_size)
        if not alloc_ok or nslots <= SCAN_ALL_SLOTS:
            buckets = None
        return node_slots(self.first, self.end, self.bs, self.node_size, buckets)

    def _take_leaf(self, ts: TreeState, node: NodeView) -> None:
        ts.salvaged_leaves += 1
        sal = ts.salvage
        for k, v in zip(node.keys, node.vals):
            if ts.bid == BtreeId.alloc and not _alloc_ok(v):
                continue
            old = sal.get(k)
            if old is None or old[0] <= node.max_seq:
                sal[k] = (node.max_seq, v)
            if ts.bid == BtreeId.extents and k not in self.journal_extents:
                self._mark_extent(v)


def salvage_bsets(buf: bytes, offset: int, node_seq: int, limit: int | None,
                  blacklisted=None) -> tuple[dict[bytes, bytes], int]:
    """Keys of the good bsets of a node region that fails validation as a whole:
    every block boundary is tried for a bset of this node, in order, newest
    winning and whiteouts deleting. Returns (live keys, newest journal seq)."""
    live: dict[bytes, bytes] = {}
    max_seq = 0
    pos = NODE_HDR_SIZE
    while pos + BLOCK_SIZE <= len(buf) or pos == NODE_HDR_SIZE:
        bh = unpack_bset_header(buf, pos)
        step = BLOCK_SIZE - pos % BLOCK_SIZE
        if (bh is not None and bh.node_seq == node_seq
                and (limit is None or bh.journal_seq <= limit)
                and not (blacklisted is not None and blacklisted(bh.journal_seq))):
            try:
                keys, vals = unpack_bset(buf, pos, bh, offset + pos)
            except FormatError:
                keys = None
            if keys is not None:
                for k, v in zip(keys, vals):
                    if v:
                        live[k] = v
                    else:
                        live.pop(k, None)
                max_seq = max(max_seq, bh.journal_seq)
                step = round_up(pos + bh.size) - pos
        pos += step
    return live, max_seq


def _ptr_bytes(off: int, nseq: int) -> bytes:
    from ..format import pack_btree_ptr
    return pack_btree_ptr(off, nseq)


def _all_ptrs(vals: list[bytes]) -> bool:
    return bool(vals) and all(len(v) == BTREE_PTR_SIZE and v[0] == KeyType.btree_ptr
                              for v in vals)


def _clip(nv: NodeView) -> NodeView:
    """Keep only the keys inside the range the parent gave the node."""
    pairs = [(k, v) for k, v in zip(nv.keys, nv.vals) if nv.min_key <= k <= nv.max_key]
    nv.keys = [k for k, _ in pairs]
    nv.vals = [v for _, v in pairs]
    return nv


def _alloc_ok(v: bytes) -> bool:
    if not v or v[0] != KeyType.alloc or len(v) != Alloc.SIZE:
        return False
    try:
        Alloc.unpack(v)
    except FormatError:
        return False
    return True


def _extent_ok(v: bytes) -> bool:
    if v[0] != KeyType.extent:
        return False
    try:
        Extent.unpack(v)
    except FormatError:
        return False
    return True
