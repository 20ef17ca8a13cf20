"""In-memory btree node: at most three sorted key sets plus a whiteout area.

A node on disk is an append-only sequence of bsets (see format.py). In memory
it keeps, as parallel lists searched with bisect:

  w   the written, constant set: every key live on disk, merged once when the
      node is read or written. The sorted list itself is its lookup structure.
  o   an older unwritten set, made when the newest set grew too big for cheap
      inserts (seed 003: a new set instead of a write).
  n   the newest unwritten set, small, taking every insert.

Beside them `idx` maps every live key to its newest value: point lookups
(get, and the old value an insert or delete returns) cost one dict probe
instead of a bisect in each set. In a leaf of a few thousand keys a bisect
touches a dozen key objects scattered in memory; with random keys that made
an insert cost 4-5 times a dict probe.

Live sets never hold whiteouts. Deleting a key that exists on disk removes it
from the live sets and records it in `whiteouts`, a separate area written with
the next bset and then dropped. Deleting a key that was never written emits no
whiteout, unless it had itself overwritten a written key (it is still on disk).

Values are bytes whose first byte is the KeyType; b"" never appears as a live
value.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right

from ..format import KEY_LEN

# Entry overhead in an encoded bset: key + u32 value length.
ENTRY_OVERHEAD = KEY_LEN + 4
# Newest set size at which inserts start a new set instead of growing it.
NEWEST_SET_MAX = 256
# Results of Node.delete.
NOT_FOUND, DELETED_NO_WHITEOUT, DELETED_WHITEOUT = 0, 1, 2


class Node:
    __slots__ = (
        "btree_id", "level", "min_key", "max_key", "offset", "node_seq", "ptr",
        "wk", "wv", "ok", "ov", "nk", "nv", "idx", "whiteouts",
        "written_bytes", "dirty_bytes", "live_bytes", "nlive",
        "pin_seq", "max_seq", "last_used", "view", "new", "rewrite", "gen",
    )

    def __init__(self, btree_id: int, level: int, min_key: bytes, max_key: bytes,
                 offset: int, node_seq: int, ptr: bytes):
        self.btree_id = btree_id
        self.level = level
        self.min_key = min_key
        self.max_key = max_key          # inclusive
        self.offset = offset            # byte offset of the node's region
        self.node_seq = node_seq        # random id shared by all bsets of this region
        self.ptr = ptr                  # packed btree pointer: the node cache key
        self.wk: list[bytes] = []
        self.wv: list[bytes] = []
        self.ok: list[bytes] = []
        self.ov: list[bytes] = []
        self.nk: list[bytes] = []
        self.nv: list[bytes] = []
        self.idx: dict[bytes, bytes] = {}       # every live key -> its newest value
        self.whiteouts: set[bytes] = set()
        self.written_bytes = 0          # bytes of the region used on disk
        self.dirty_bytes = 0            # encoded size of unwritten keys and whiteouts
        self.live_bytes = 0             # encoded size of all live keys
        self.nlive = 0
        self.pin_seq = 0                # oldest journal seq of unwritten changes; 0 = clean
        self.max_seq = 0                # newest journal seq of any change in this node
        self.last_used = 0
        self.view: tuple[list[bytes], list[bytes]] | None = None  # merged view (interior nodes)
        self.new = True                 # region has never been written
        self.rewrite = False            # region has a stale tail: never append to it
        self.gen = 1                    # lineage generation (format.NodeHeader.gen)

    # ----------------------------------------------------------------- lookup

    def get(self, key: bytes) -> bytes | None:
        return self.idx.get(key)

    def merged(self) -> tuple[list[bytes], list[bytes]]:
        """All live keys in order, newest version winning; cached until changed."""
        v = self.view
        if v is None:
            if not self.ok and not self.nk:
                v = (self.wk, self.wv)
            else:
                d = dict(zip(self.wk, self.wv))
                d.update(zip(self.ok, self.ov))
                d.update(zip(self.nk, self.nv))
                keys = sorted(d)
                v = (keys, [d[k] for k in keys])
            self.view = v
        return v

    def floor(self, key: bytes) -> bytes:
        """Value of the greatest key <= key (interior nodes: the child covering key)."""
        keys, vals = self.merged()
        i = bisect_right(keys, key) - 1
        if i < 0:
            raise KeyError(key)
        return vals[i]

    def items(self, start: bytes, end: bytes) -> list[tuple[bytes, bytes]]:
        """Live (key, value) pairs with start <= key <= end, in order."""
        if not self.ok and not self.nk:
            wk = self.wk
            i = bisect_left(wk, start)
            j = bisect_right(wk, end)
            return list(zip(wk[i:j], self.wv[i:j]))
        keys, vals = self.merged_range(start, end)
        return list(zip(keys, vals))

    def range_lists(self, start: bytes, end: bytes) -> tuple[list[bytes], list[bytes]]:
        """Live keys with start <= key <= end and their values, in order (copies)."""
        if not self.ok and not self.nk:
            wk = self.wk
            i = bisect_left(wk, start)
            j = bisect_right(wk, end)
            return wk[i:j], self.wv[i:j]
        return self.merged_range(start, end)

    def merged_range(self, start: bytes, end: bytes) -> tuple[list[bytes], list[bytes]]:
        d: dict[bytes, bytes] = {}
        for keys, vals in ((self.wk, self.wv), (self.ok, self.ov), (self.nk, self.nv)):
            i = bisect_left(keys, start)
            j = bisect_right(keys, end)
            if i < j:
                d.update(zip(keys[i:j], vals[i:j]))
        ks = sorted(d)
        return ks, [d[k] for k in ks]

    def last_le(self, key: bytes, lo: bytes) -> tuple[bytes, bytes] | None:
        """The greatest live (key, value) with lo <= key' <= key: one bisect per
        set. A live key is in at least one set and a deleted one in none, so
        the greatest candidate is the answer; get() gives its newest value."""
        best = None
        for keys in (self.nk, self.ok, self.wk):
            i = bisect_right(keys, key) - 1
            if i >= 0:
                k = keys[i]
                if k >= lo and (best is None or k > best):
                    best = k
        return None if best is None else (best, self.get(best))

    def first_key(self) -> bytes | None:
        c = [s[0] for s in (self.wk, self.ok, self.nk) if s]
        return min(c) if c else None

    # ---------------------------------------------------------------- updates

    def insert(self, key: bytes, val: bytes) -> bytes | None:
        """Insert or overwrite key in the newest set; return the old value."""
        idx = self.idx
        old = idx.get(key)
        idx[key] = val
        nk = self.nk
        i = bisect_left(nk, key)
        if old is not None and i < len(nk) and nk[i] == key:
            self.nv[i] = val
            self.live_bytes += len(val) - len(old)
            self.dirty_bytes += len(val) - len(old)
        else:
            if old is None:
                self.live_bytes += ENTRY_OVERHEAD + len(val)
                self.nlive += 1
            else:
                self.live_bytes += len(val) - len(old)
            nk.insert(i, key)
            self.nv.insert(i, val)
            self.dirty_bytes += ENTRY_OVERHEAD + len(val)
            if len(nk) > NEWEST_SET_MAX:
                self._start_new_set()
        self.view = None
        return old

    def delete(self, key: bytes) -> int:
        """Delete key; say whether it was found and whether it needs a whiteout."""
        if self.pop(key) is None:
            return NOT_FOUND
        return DELETED_WHITEOUT if key in self.whiteouts else DELETED_NO_WHITEOUT

    def pop(self, key: bytes) -> bytes | None:
        """Delete key and return its live value (None if absent).

        A key live on disk leaves a whiteout in the whiteout area; a key
        re-inserted after a delete whose whiteout is still pending keeps that
        whiteout (its old version is on disk)."""
        found = self.idx.pop(key, None)
        if found is None:
            return None         # live keys are all in idx: no set holds it
        self.live_bytes -= ENTRY_OVERHEAD + len(found)
        self.nlive -= 1
        for keys, vals in ((self.nk, self.nv), (self.ok, self.ov)):
            i = bisect_left(keys, key)
            if i < len(keys) and keys[i] == key:
                self.dirty_bytes -= ENTRY_OVERHEAD + len(vals[i])
                del keys[i]
                del vals[i]
        wk = self.wk
        i = bisect_left(wk, key)
        if i < len(wk) and wk[i] == key:
            del wk[i]
            del self.wv[i]
            self.whiteouts.add(key)
            self.dirty_bytes += ENTRY_OVERHEAD
        self.view = None
        return found

    def _start_new_set(self) -> None:
        """Fold the newest set into the older unwritten set and start an empty one."""
        if self.ok:
            d = dict(zip(self.ok, self.ov))
            d.update(zip(self.nk, self.nv))
            keys = sorted(d)
            self.ok = keys
            self.ov = [d[k] for k in keys]
        else:
            self.ok, self.ov = self.nk, self.nv
        self.nk, self.nv = [], []

    # ------------------------------------------------------------ write side

    def unwritten(self) -> tuple[list[bytes], list[bytes]]:
        """The next bset's entries: unwritten live keys plus needed whiteouts."""
        d = dict(zip(self.ok, self.ov))
        d.update(zip(self.nk, self.nv))
        for k in self.whiteouts:
            if k not in d:
                d[k] = b""
        keys = sorted(d)
        return keys, [d[k] for k in keys]

    def all_live(self) -> tuple[list[bytes], list[bytes]]:
        keys, vals = self.merged()
        return list(keys), list(vals)

    def mark_written(self) -> None:
        """Fold the unwritten sets into the written set after a bset write."""
        if self.ok or self.nk:
            keys, vals = self.merged()
            self.wk, self.wv = list(keys), list(vals)
        self.ok, self.ov, self.nk, self.nv = [], [], [], []
        self.whiteouts = set()
        self.dirty_bytes = 0
        self.pin_seq = 0
        self.view = None
        self.new = False

    def set_written(self, keys: list[bytes], vals: list[bytes]) -> None:
        """Install the merged content read from disk as the written set."""
        self.wk, self.wv = keys, vals
        self.idx = dict(zip(keys, vals))
        self.nlive = len(keys)
        self.live_bytes = ENTRY_OVERHEAD * len(keys) + sum(map(len, vals))
        self.view = None

    @property
    def dirty(self) -> bool:
        return self.pin_seq != 0

    def nsets(self) -> int:
        return 1 + bool(self.ok) + bool(self.nk)

    def to_text(self) -> str:
        from ..format import BtreeId, key_to_text
        return (f"{BtreeId(self.btree_id).name} L{self.level} node@{self.offset} "
                f"seq {self.node_seq:#x} [{key_to_text(self.min_key)} .. "
                f"{key_to_text(self.max_key)}] live {self.nlive} keys/{self.live_bytes}B "
                f"sets {len(self.wk)}+{len(self.ok)}+{len(self.nk)} whiteouts "
                f"{len(self.whiteouts)} written {self.written_bytes}B dirty "
                f"{self.dirty_bytes}B pin {self.pin_seq}")
