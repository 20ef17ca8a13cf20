"""Choosing inode numbers (Tux3's heuristics, seed 004).

The inode number is the allocation goal: files created together in one
directory get consecutive inums, so their inodes share btree leaves and
(through the allocator's goal) their data lies together.

- A file gets the last inum allocated in the same parent + 1 when free;
  without history (first file in a directory since mount) the goal is the
  parent's inum + 1. The goal is probed upward over a bounded run of used
  inums; past that, the high-water mark + 1 is always free.
- A directory gets a fresh region past the high-water mark, aligned to a
  stride that shrinks with path depth (top-level directories are spread
  widely, deep ones pack closer), so its files have room to follow it.

Nothing here is persistent: the high-water mark comes from the inodes btree
at mount (one descent), the per-directory history starts empty. An inum is
free iff the inodes btree has no key for it and it is not held: a file
deleted at unlink while the kernel still holds lookup references to its
number (fs layer, "Deleting") is held until the kernel forgets it, so the
kernel never sees one number name two inodes.
"""

from __future__ import annotations

import errno

from ..format import BtreeId, pack_key, unpack_key
from .errors import FSError
from .inode import FIRST_INUM

INUM_LIMIT = 1 << 48            # Tux3's inum space; ample, and leaves key room
PROBE_LIMIT = 256               # used inums walked over before giving up on a goal
DIR_STRIDES = (1 << 16, 1 << 12, 1 << 8)   # by depth 1, 2, deeper
HISTORY_MAX = 4096              # parents remembered


class InumAllocator:
    def __init__(self, btrees):
        self.btrees = btrees
        last = btrees.last_before(BtreeId.inodes, pack_key(INUM_LIMIT - 1, 0),
                                  pack_key(FIRST_INUM, 0))
        self.high = unpack_key(last[0])[0] if last else FIRST_INUM - 1
        self.last_in_dir: dict[int, int] = {}
        self.held: set[int] = set()     # deleted, but the kernel may still name them
        self.stats = {"inum_goal_hits": 0, "inum_probes": 0, "inum_fallbacks": 0}

    def alloc(self, parent: int, is_dir: bool, depth: int = 1) -> int:
        if is_dir:
            stride = DIR_STRIDES[min(depth, len(DIR_STRIDES)) - 1]
            goal = -(-(max(self.high, parent) + 1) // stride) * stride
            inum = self._probe(goal) or self._fallback()
        else:
            goal = max(self.last_in_dir.get(parent, parent) + 1, FIRST_INUM)
            inum = self._probe(goal) or self._fallback()
            self._remember(parent, inum)
        if inum > self.high:
            self.high = inum
        return inum

    def _remember(self, parent: int, inum: int) -> None:
        h = self.last_in_dir
        if parent not in h and len(h) >= HISTORY_MAX:
            del h[next(iter(h))]
        h[parent] = inum

    def _probe(self, goal: int) -> int | None:
        """The first free inum in [goal, goal + PROBE_LIMIT), or None."""
        if goal >= INUM_LIMIT:
            return None
        if goal > self.high:
            self.stats["inum_goal_hits"] += 1
            return goal
        end = min(goal + PROBE_LIMIT, INUM_LIMIT) - 1
        expect = goal
        for k, _v in self.btrees.iter(BtreeId.inodes, pack_key(goal, 0), pack_key(end, 0)):
            inum = unpack_key(k)[0]
            expect = self._skip_held(expect, inum)
            if inum != expect:
                break
            expect += 1
        else:
            expect = self._skip_held(expect, end + 1)
        if expect > end:
            return None
        self.stats["inum_probes" if expect > goal else "inum_goal_hits"] += 1
        return expect

    def _skip_held(self, inum: int, limit: int) -> int:
        held = self.held
        while inum < limit and inum in held:
            inum += 1
        return inum

    def hold(self, inum: int) -> None:
        self.held.add(inum)

    def release(self, inum: int) -> bool:
        """Forgotten by the kernel: free for reuse. False if it was not held."""
        try:
            self.held.remove(inum)
        except KeyError:
            return False
        return True

    def _fallback(self) -> int:
        self.stats["inum_fallbacks"] += 1
        if self.high + 1 >= INUM_LIMIT:
            raise FSError(errno.ENOSPC, "inode numbers exhausted")
        return self.high + 1
