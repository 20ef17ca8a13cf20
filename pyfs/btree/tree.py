"""The btrees: roots, descent, updates, splits, merges, node cache, node writes.

One BtreeSet holds every btree of a filesystem (one root per BtreeId) and the
node cache they share. It knows nothing of what keys mean. It relies on two
collaborators passed in by the engine:

  journal: .cur_seq (the open entry's sequence, which pins dirty nodes),
           .durable_seq, .mount_seq (the newest durable seq found at mount),
           .add_interior(btree_id, level, key, val) to journal
           a pointer change, and .node_written() to note a node write that
           the next journal write must be ordered after.
  space:   .alloc_node() -> byte offset of a free region,
           .free_node(offset, seq): the region may be reused once seq is durable,
           and .ensure_nodes(n) -> whether n nodes can be allocated now: every
           structure change asks first, so none fails half-done.

Node writes: dirty keys are buffered in memory and a node is written when
journal reclaim asks (the normal path), when the cache must evict it, when its
dirty bytes exceed `write_buffer`, or at once when the node is new (a split,
merge or compaction made it and a pointer to it is about to be journaled).
"""

from __future__ import annotations

from ..format import BTREE_ID_NR, MAX_KEY, NODE_HDR_SIZE, ZERO_KEY, SeqBlacklist, pack_btree_ptr
from .cache import NODE_CACHE_BYTES, CacheMixin
from .interior import InteriorMixin
from .lookup import LookupMixin
from .node import Node
from .update import UpdateMixin
from .write import WriteMixin

COUNTERS = (
    "btree_node_reads", "btree_node_read_bytes",
    "btree_node_writes", "btree_node_write_bytes", "btree_bsets_written",
    "btree_node_writes_reclaim", "btree_node_writes_evict", "btree_node_writes_buffer",
    "btree_node_writes_new", "btree_node_writes_flush", "btree_node_writes_copygc",
    "btree_whiteouts_written", "btree_whiteouts_avoided",
    "btree_compactions", "btree_splits", "btree_merges",
    "btree_cache_hits", "btree_cache_misses", "btree_cache_evictions",
    "btree_updates",
)


class BtreeSet(CacheMixin, LookupMixin, UpdateMixin, InteriorMixin, WriteMixin):
    """Every btree of a filesystem. Its jobs live in one module each, as
    mixins over the state set up here: the node cache (cache.py), descent
    and lookups (lookup.py), key updates (update.py), splits and merges
    (interior.py), node writes and reclaim (write.py). Mixins rather than
    helper objects: a method found through the class costs what it did when
    it was defined here, and the hot paths (insert, get, iter) stay one call."""

    def __init__(self, dev, node_size: int, space, journal, counters: dict,
                 *, write_buffer: int | None = None, cache_nodes: int | None = None):
        self.dev = dev
        self.node_size = node_size
        self.space = space
        self.journal = journal
        self.c = counters
        for name in COUNTERS:
            counters.setdefault(name, 0)
        # Bound on dirty bytes per node; 4096 reproduces write-every-4-KiB.
        self.write_buffer = write_buffer or node_size // 2
        self.split_bytes = node_size * 3 // 4 - NODE_HDR_SIZE
        # Merge a node under 1/3 full with a sibling when the two fit in 7/12
        # of a node (bcachefs's threshold and hysteresis): deletes give space
        # back, and a fresh split (two 3/8 halves) never merges straight back.
        self.merge_bytes = node_size // 3
        self.merged_max = node_size * 7 // 12
        # A value must fit a node whatever it is split beside.
        self.max_value = node_size // 2 - 4096
        if cache_nodes is None:
            cache_nodes = max(64, NODE_CACHE_BYTES // node_size)
        self.cache_nodes = max(cache_nodes, 16)
        self.roots: list[Node | None] = [None] * BTREE_ID_NR
        self.roots_gen = 0                     # bumped whenever a root changes
        self._records: tuple[int, list] = (-1, [])
        self.cache: dict[bytes, Node] = {}
        self.dirty: dict[Node, None] = {}      # insertion order == pin order
        self.frozen = False                    # set by Engine.fail: write nothing more
        # Journal seqs a crashed session used but never made durable (the
        # superblock's blacklist): bsets carrying them are ignored.
        self.seq_blacklisted = None
        # Regions written by this session. Their bsets are all good however
        # new: the journal-seq cut-off when reading applies only to bsets an
        # earlier session wrote (see _read).
        self.written_regions: set[int] = set()
        self.tick = 0
        # While a commit applies its keys, nodes that need a split, merge or
        # write collect here instead (see defer()): nothing inside a commit
        # allocates, so a commit can never fail half-applied for want of space.
        self.deferred: dict[Node, None] | None = None
        # Nodes whose deferred change found no space; retried at the next chance.
        self.retry: dict[Node, None] = {}

    # ------------------------------------------------------------ roots

    def new_root(self, btree_id: int) -> Node:
        """An empty leaf root, written at once so a journal entry may point at it."""
        node = self._new_node(btree_id, 0, ZERO_KEY, MAX_KEY)
        self.roots[btree_id] = node
        self.roots_gen += 1
        self.write_node(node, "new")
        return node

    def set_root(self, btree_id: int, level: int, offset: int, node_seq: int) -> None:
        ptr = pack_btree_ptr(offset, node_seq)
        self.roots[btree_id] = self._node(ptr, btree_id, level, ZERO_KEY, MAX_KEY)
        self.roots_gen += 1

    def root_records(self) -> list[tuple[int, int, int, int]]:
        """(btree, level, offset, node_seq) of every root; the same list object
        until a root changes (every journal entry asks)."""
        gen, records = self._records
        if gen != self.roots_gen:
            records = [(r.btree_id, r.level, r.offset, r.node_seq)
                       for r in self.roots if r is not None]
            self._records = (self.roots_gen, records)
        return records

    # ------------------------------------------------------------ state

    def sort_dirty_by_pin(self) -> None:
        """Restore the dirty list's pin order (replay pins level by level)."""
        self.dirty = dict.fromkeys(sorted(self.dirty, key=lambda n: n.pin_seq))

    def set_blacklist(self, space: SeqBlacklist) -> None:
        """Journal seqs whose bsets are ignored (a crashed session's)."""
        self.seq_blacklisted = space.blacklisted if space else None

    def to_text(self, btree_id: int) -> str:
        return "\n".join(("  " * (self.roots[btree_id].level - n.level)) + n.to_text()
                         for n in self.walk(btree_id))
