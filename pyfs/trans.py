"""Transactions: a set of btree updates committed atomically through the journal.

A Trans collects updates (set/delete) and reads through them. At commit the
engine runs triggers (an update of one btree may add updates to others, e.g.
alloc keys and backpointers for an extent), reserves journal space, adds every
key to the open journal entry (so the transaction is never split across
entries) and applies the keys to the in-memory btree nodes, pinning the
entry's sequence on each node it dirties. Commit never waits for I/O; use
Engine.flush / wait for a sequence to make it durable.

A commit is admitted only if its watermark's reserve still holds (else
NoSpace, before anything is applied); node splits, merges and writes its
keys call for run after it is applied, outside the commit, so nothing
inside a commit allocates (docs/DESIGN.md, "Full is not fatal").
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from .alloc.foreground import Watermark
from .format import MAX_KEY, ZERO_KEY

# A trigger: fn(trans, btree_id, key, old_value_or_None, new_value_or_None).
Trigger = Callable[["Trans", int, bytes, "bytes | None", "bytes | None"], None]


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
        return self.engine.commit(self)

    def to_text(self) -> str:
        from .format import BtreeId, key_to_text, value_to_text
        return "\n".join(f"{BtreeId(b).name} {key_to_text(k)} -> "
                         f"{value_to_text(v) if v else 'delete'}"
                         for (b, k), v in self.updates.items())
