"""Transactions: a set of btree updates committed atomically through the journal.

A Trans collects updates (set/delete) and reads through them. At commit the
engine's Committer runs triggers (an update of one btree may add updates to
others, e.g. alloc keys and backpointers for an extent), reserves journal
space, adds every key to the open journal entry (so the transaction is never
split across entries) and applies the keys to the in-memory btree nodes,
pinning the entry's sequence on each node it dirties. Commit never waits for
I/O; use Engine.flush / wait for a sequence to make it durable.

A commit is admitted only if its watermark's reserve still holds (else
NoSpace, before anything is applied); node splits, merges and writes its
keys call for run after it is applied, outside the commit, so nothing
inside a commit allocates (docs/DESIGN.md, "Full is not fatal").
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from .alloc.foreground import NoSpace, Watermark
from .btree.write import BtreeSpaceError
from .format import JSET_KEY_SIZE, MAX_KEY, ZERO_KEY, pack_jset_key

# A trigger: fn(trans, btree_id, key, old_value_or_None, new_value_or_None).
Trigger = Callable[["Trans", int, bytes, "bytes | None", "bytes | None"], None]
# A commit hook: fn(trans, seq), after every key of the transaction is applied.
CommitHook = Callable[["Trans", int], None]

# Journal bytes a trigger may derive from one update (two backpointer changes).
DERIVED_ESTIMATE = 2 * (JSET_KEY_SIZE + 32)
# Reclaim starts when the journal ring is this full, and writes nodes pinning
# the oldest half of the live journal.
RECLAIM_WATERMARK = 0.5


class EngineFailed(Exception):
    """A commit failed part way; the engine stopped writing (as if the power
    was cut at that moment) and refuses changes until it is mounted again."""


class Trans:
    __slots__ = ("engine", "updates", "extra", "watermark")

    def __init__(self, engine, watermark: Watermark = Watermark.normal):
        self.engine = engine
        # Which reserves the commit may dip into (deletes go below foreground's).
        self.watermark = watermark
        self.extra: dict = {}           # state gathered by triggers for commit hooks
        # (btree_id, key) -> new value, or None for a delete; last update wins.
        self.updates: dict[tuple[int, bytes], bytes | None] = {}

    def get(self, btree_id: int, key: bytes) -> bytes | None:
        u = self.updates
        if u:
            k = (btree_id, key)
            if k in u:
                return u[k]
        return self.engine.btrees.get(btree_id, key)

    def set(self, btree_id: int, key: bytes, val: bytes) -> None:
        if not val:
            raise ValueError("a value needs at least its key type byte")
        self.updates[(btree_id, key)] = val

    def delete(self, btree_id: int, key: bytes) -> None:
        self.updates[(btree_id, key)] = None

    def iter(self, btree_id: int, start: bytes = ZERO_KEY, end: bytes = MAX_KEY
             ) -> Iterator[tuple[bytes, bytes]]:
        """Live pairs in [start, end] as this transaction would leave them."""
        mine = sorted((k, v) for (b, k), v in self.updates.items()
                      if b == btree_id and start <= k <= end)
        base = self.engine.btrees.iter(btree_id, start, end)
        if not mine:
            yield from base
            return
        i = 0
        for k, v in base:
            while i < len(mine) and mine[i][0] < k:
                if mine[i][1] is not None:
                    yield mine[i]
                i += 1
            if i < len(mine) and mine[i][0] == k:
                if mine[i][1] is not None:
                    yield mine[i]
                i += 1
            else:
                yield k, v
        for k, v in mine[i:]:
            if v is not None:
                yield k, v

    def commit(self) -> int:
        """Commit atomically; return the journal sequence that makes it durable."""
        return self.engine.committer.commit(self)

    def to_text(self) -> str:
        from .format import BtreeId, key_to_text, value_to_text
        return "\n".join(f"{BtreeId(b).name} {key_to_text(k)} -> "
                         f"{value_to_text(v) if v else 'delete'}"
                         for (b, k), v in self.updates.items())


class Committer:
    """Commits one engine's transactions: the triggers and commit hooks that
    derive updates, admission, the journal reservation, the keys into the open
    journal entry and the btrees, and the housekeeping after each commit.

    The engine owns the parts (journal, btrees, allocator) and the lifecycle:
    the committer reads its failed/read_only state and calls its stop, fail,
    reclaim and make_journal_space."""

    def __init__(self, engine):
        self.engine = engine
        # The parts are fixed for the engine's life: bound once, not per commit.
        self.journal = engine.journal
        self.btrees = engine.btrees
        self.alloc = engine.alloc
        self.counters = engine.counters
        self.triggers: dict[int, list[Trigger]] = {}
        self.hooks: list[CommitHook] = []

    def add_trigger(self, btree_id: int, fn: Trigger) -> None:
        self.triggers.setdefault(btree_id, []).append(fn)

    @contextmanager
    def triggers_off(self) -> Iterator[None]:
        """Commits inside apply their updates only, deriving nothing (fsck, while
        the alloc info it would derive from is not trusted yet)."""
        saved, self.triggers = self.triggers, {}
        try:
            yield
        finally:
            self.triggers = saved

    def commit(self, t: Trans) -> int:
        """Journal and apply t's updates, then what its triggers derive, atomically.

        Triggers run after each update is applied, with the old value the
        apply found (no second lookup). They put derived updates (e.g.
        backpointers) in t.extra["derived"] and per-bucket deltas for the
        commit hooks; all of it lands in the same journal entry.

        Nothing inside the commit allocates: it is admitted only while its
        watermark's reserve holds (NoSpace otherwise, with nothing applied),
        and the splits, merges and node writes its keys call for run after it
        (_maintain), where they may wait for space."""
        if self.engine.failed is not None:
            raise EngineFailed(f"filesystem stopped after an error: {self.engine.failed}")
        if self.engine.read_only:
            raise PermissionError("read-only engine")
        if not self.alloc.admits(t.watermark):
            self.counters["commit_enospc"] = self.counters.get("commit_enospc", 0) + 1
            raise NoSpace(f"no space for a commit above the {t.watermark.name} reserve")
        ups = t.updates
        j = self.journal
        trig = self.triggers
        est = 0
        limit = self.btrees.max_value
        for (bid, _k), v in ups.items():
            if v is not None and len(v) > limit:
                # Checked before anything is applied: a commit is all or nothing.
                raise ValueError(f"value of {len(v)} bytes exceeds the {limit} limit")
            est += JSET_KEY_SIZE + (len(v) if v else 0) + (DERIVED_ESTIMATE if bid in trig else 0)
        seq = j.reserve(est)
        mark = j.mark()
        self.btrees.defer()
        try:
            self._apply(t, ups, seq, trig)
            derived = t.extra.pop("derived", None)
            if derived:
                self._apply(t, derived, seq, None)
            for hook in self.hooks:
                hook(t, seq)
            self.alloc.apply_deferred(seq)
        except BaseException as e:
            # Part of the transaction is applied in memory and in the open
            # journal entry: nothing of it may reach the disk, everything
            # committed before it should (the tree's shape did not change).
            self.btrees.deferred = None
            j.truncate_open(mark)
            self.engine.stop(e)
            raise
        self._maintain()
        self._after_commit()
        return seq

    def _apply(self, t: Trans, ups: dict, seq: int, trig: dict | None) -> None:
        # The hot loop of every commit: Journal.add inlined (its counts are
        # added once at the end; a failure part way is undone by truncate_open
        # from the record count).
        j = self.journal
        append = j.recs.append
        pack = pack_jset_key
        bt = self.btrees
        insert, delete = bt.insert, bt.delete
        nbytes = 0
        for (bid, key), val in ups.items():
            if val is None:
                append(pack(bid, 0, key, 0))
                old = delete(bid, key, seq)
            else:
                n = len(val)
                nbytes += n
                append(pack(bid, 0, key, n))
                append(val)
                old = insert(bid, key, val, seq)
            if trig:
                fns = trig.get(bid)
                if fns:
                    for fn in fns:
                        fn(t, bid, key, old, val)
        j.nkeys += len(ups)
        j.nbytes += JSET_KEY_SIZE * len(ups) + nbytes

    def _maintain(self) -> None:
        """The structure changes the last commit called for: splits, merges and
        node writes, with the node backpointers they derive. Each is whole or
        not done (no space: it waits); anything else that goes wrong here
        leaves the btrees half-changed, so the engine stops writing."""
        try:
            self.btrees.run_deferred()
            self.alloc.apply_deferred(self.journal.cur_seq)
        except BtreeSpaceError as e:
            raise NoSpace(str(e)) from e
        except BaseException as e:
            self.engine.fail(e)     # a split half done: not even the journal may be written
            raise

    def _after_commit(self) -> None:
        try:
            self._housekeep()
        except BtreeSpaceError as e:
            # Nothing is half-done (a node that cannot be split or rewritten is
            # left dirty); the reserves exist so that this does not happen.
            raise NoSpace(str(e)) from e

    def _housekeep(self) -> None:
        # self.engine only in the branches: this runs after every commit.
        j = self.journal
        if j.sealed and (not self.engine.background or not j.needs_preflush()):
            j.write_sealed()
        free = j.space_free()       # one tail walk per commit, not two
        if 1.0 - free / j.ring > RECLAIM_WATERMARK:
            self.engine.reclaim()
            free = j.space_free()   # reclaim's key-cache flush may seal an entry
        if free < j.reserve_bytes:
            self.engine.make_journal_space()
        if len(self.btrees.cache) > self.btrees.cache_nodes:
            self.btrees.maybe_evict()
            self.alloc.apply_deferred(j.cur_seq)
        if self.alloc.state.discard_ready and not self.engine.background:
            self.alloc.state.do_discards()
