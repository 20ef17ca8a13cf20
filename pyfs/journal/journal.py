"""The journal: a ring of buckets holding checksummed, sequenced entries.

Transactions add their keys to the open entry (sequence `cur_seq`). An entry
is sealed when it is full, when someone wants durability, or by the flush
timer; sealing captures the btree roots and `last_seq` (the oldest entry whose
keys are not all in written btree nodes) consistently with the keys it holds.
Sealed entries are written in order; a device flush makes every written entry
durable at once, so every waiter covered by one write + flush shares it
(group commit).

Ordering: a journal entry may point at btree nodes (roots, pointer changes) or
advance last_seq past keys that now live only in node writes. An entry that
points at nodes (it holds pointer changes, or roots other than the entry
before it) is written only after a device flush that covers every node
written before it was sealed (a preflush, as REQ_PREFLUSH in the kernel). An
entry sealed while node writes are unflushed records no last_seq newer than
the one the last flush made safe, so the plain writes of reclaim and eviction
never cost a flush of their own.

Space: an entry's space may be overwritten only once a durable entry records
a last_seq beyond it. When the ring is full the caller reclaims (writes the
nodes pinning the oldest sequences) and flushes; see Engine.make_journal_space.

Acknowledged means written (write_committed): before the daemon answers a
request that changed anything, the open entry is sealed and written, without
a device flush, so a dead daemon loses nothing (the host kernel keeps every
pwrite). Entries are immutable once written and start on 512-byte sectors,
so an entry per request burst costs a sector or two of ring, not a block.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

from ..format import (
    BTREE_ID_NR,
    JSET_HDR_SIZE,
    JSET_KEY_SIZE,
    JSET_ROOT_SIZE,
    pack_jset,
    pack_jset_key,
    pack_jset_roots,
)

COUNTERS = (
    "journal_writes", "journal_write_bytes", "journal_flushes", "journal_preflushes",
    "journal_seals", "journal_full_waits", "journal_flush_waiters",
)

DEFAULT_ENTRY_MAX = 256 * 1024


class JournalFull(Exception):
    """No ring space for the next entry until reclaim advances the tail."""


class Journal:
    def __init__(self, dev, *, start: int, bucket_size: int, nbuckets: int, counters: dict,
                 roots_fn: Callable[[], list], last_seq_fn: Callable[[int], int],
                 entry_max: int = DEFAULT_ENTRY_MAX):
        self.dev = dev
        self.start = start                  # device byte offset of journal bucket 0
        self.bucket_size = bucket_size
        self.ring = bucket_size * nbuckets
        # Small rings take small entries, so several always fit in the reserve.
        self.entry_max = max(16 * 1024, min(entry_max, bucket_size, self.ring // 8))
        self.reserve_bytes = 3 * self.entry_max
        # Interior pointer changes and roots ride along with any entry: keep room.
        self.slack = BTREE_ID_NR * JSET_ROOT_SIZE + 64 * (JSET_KEY_SIZE + 32)
        self.c = counters
        for name in COUNTERS:
            counters.setdefault(name, 0)
        self.roots_fn = roots_fn
        self.last_seq_fn = last_seq_fn
        self.on_durable: list[Callable[[int], None]] = []
        # Ring state, in unwrapped byte positions (ring offset = pos % ring).
        self.head = 0
        self.entries: deque[tuple[int, int, int, int]] = deque()  # (seq, pos, size, last_seq)
        # Sequences.
        self.cur_seq = 1
        self.written_seq = 0
        self.durable_seq = 0
        self.durable_last_seq = 0
        # The newest durable seq found at mount. Btree bsets that earlier
        # sessions wrote with a newer seq never became durable.
        self.mount_seq = 0
        # The open entry.
        self.recs: list[bytes] = []
        self.nkeys = 0
        self.nbytes = 0
        self.sealed: deque[tuple[int, int, bytes]] = deque()  # (seq, last_seq, data)
        # Node writes issued vs. covered by a completed device flush.
        self.node_gen = 0
        self.flushed_node_gen = 0
        # The newest last_seq that flushed node writes support: what an entry
        # sealed while node writes are unflushed may record at most.
        self.safe_last_seq = 0
        # The open entry points at nodes (pointer changes); the roots the last
        # sealed entry recorded, and their packed form.
        self.open_points_at_nodes = False
        self.last_roots: list | None = None
        self.root_bytes = b""
        # After an engine failure nothing more is written (see Engine.fail).
        self.frozen = False
        # Seqs past seq_limit need a new reservation in the superblock first.
        self.seq_limit: int | None = None
        self.on_seq_limit: Callable[[int], None] | None = None

    # ------------------------------------------------------------ mount state

    def resume(self, entries: list[tuple[int, int, int, int]], head: int, next_seq: int) -> None:
        """Continue after the entries found at mount: (seq, ring pos, size, last_seq)."""
        prev = None
        base = 0
        self.entries.clear()
        for seq, pos, size, last in entries:
            if prev is not None and pos < prev:
                base += self.ring
            self.entries.append((seq, base + pos, size, last))
            prev = pos
        if self.entries:
            s, p, z, last = self.entries[-1]
            self.head = p + z
            self.durable_last_seq = last
        else:
            self.head = head
        self.cur_seq = next_seq
        self.written_seq = self.durable_seq = self.mount_seq = next_seq - 1
        # Nothing to replay yet: this session's first entry is a safe last_seq.
        self.safe_last_seq = self.durable_last_seq or next_seq

    def start_new_bucket(self) -> None:
        """The next entry goes to the start of the next bucket: mount finds a
        bucket's entries from its first one, so a session that must not follow
        on from what is in the current bucket (after a crash or a repair)
        starts a fresh one."""
        self.head += -self.head % self.bucket_size

    # ------------------------------------------------------------ adding keys

    def reserve(self, nbytes: int) -> int:
        """Make room in the open entry for nbytes of key records; return its seq."""
        if self.nbytes + nbytes > self.entry_max - JSET_HDR_SIZE - self.slack and self.nkeys:
            self.seal()
        if nbytes > self.entry_max - JSET_HDR_SIZE - self.slack:
            raise ValueError(f"transaction of {nbytes} bytes exceeds a journal entry")
        return self.cur_seq

    def add(self, btree_id: int, key: bytes, val: bytes, level: int = 0) -> None:
        self.recs.append(pack_jset_key(btree_id, level, key, len(val)))
        self.recs.append(val)
        self.nkeys += 1
        self.nbytes += JSET_KEY_SIZE + len(val)

    def mark(self) -> tuple[int, int, int, int]:
        """Where the open entry stands now (see truncate_open)."""
        return self.cur_seq, len(self.recs), self.nkeys, self.nbytes

    def truncate_open(self, mark: tuple[int, int, int, int]) -> None:
        """Drop the key records added to the open entry since mark (all of them
        if it was sealed since): what a failed commit left half-added."""
        seq, nrecs, nkeys, nbytes = mark
        if seq != self.cur_seq:
            nrecs = nkeys = nbytes = 0
        del self.recs[nrecs:]
        self.nkeys = nkeys
        self.nbytes = nbytes

    def add_interior(self, btree_id: int, level: int, key: bytes, val: bytes) -> None:
        self.add(btree_id, key, val, level)
        self.open_points_at_nodes = True

    def node_written(self) -> None:
        self.node_gen += 1

    # ------------------------------------------------------------ sealing

    def seal(self, force: bool = False) -> int | None:
        """Close the open entry (with roots and last_seq as of now); start the next."""
        if not self.nkeys and not force:
            return None
        seq = self.cur_seq
        if self.seq_limit is not None and seq >= self.seq_limit and self.on_seq_limit:
            self.on_seq_limit(seq + 1)
        last = self.last_seq_fn(seq)
        unflushed = self.node_gen != self.flushed_node_gen
        if unflushed:
            last = min(last, max(self.safe_last_seq, self.durable_last_seq))
        roots = self.roots_fn()
        if roots != self.last_roots:
            self.last_roots = roots
            self.root_bytes = pack_jset_roots(roots)
            points = True
        else:
            points = self.open_points_at_nodes
        data = pack_jset(seq, last, roots, self.nkeys, b"".join(self.recs),
                         min(self.durable_seq, seq - 1), self.root_bytes)
        # (seq, last_seq, data, the node writes it must follow: 0 if none)
        self.sealed.append((seq, last, data, self.node_gen if points and unflushed else 0))
        self.open_points_at_nodes = False
        self.recs = []
        self.nkeys = 0
        self.nbytes = 0
        self.cur_seq = seq + 1
        self.c["journal_seals"] += 1
        return seq

    @property
    def open_empty(self) -> bool:
        return not self.nkeys

    def unwritten(self) -> bool:
        """Committed keys the image does not hold yet (a dead daemon would lose)."""
        return bool(self.nkeys or self.sealed)

    def write_committed(self) -> int:
        """Seal the open entry and write every sealed one, without a device
        flush: what a dead daemon must not lose (a power cut may: only a flush
        makes it durable). Preflushes like write_sealed if nodes were written
        since the last device flush. Returns the last written seq."""
        self.seal()
        return self.write_sealed()

    # ------------------------------------------------------------ writing

    def needs_preflush(self) -> bool:
        """Whether writing what is committed must wait for a device flush: a
        sealed entry, or the open one once sealed, points at nodes written
        since the last flush."""
        if self.node_gen == self.flushed_node_gen:
            return False
        if self.open_points_at_nodes or self.roots_fn() != self.last_roots:
            return True
        return any(dep > self.flushed_node_gen for _s, _l, _d, dep in self.sealed)

    def _place(self, size: int) -> int:
        pos = self.head
        if pos % self.bucket_size + size > self.bucket_size:
            pos += -pos % self.bucket_size
        tail = self._tail()
        if tail is not None and pos + size - tail > self.ring:
            raise JournalFull(f"journal ring full: tail {tail} head {pos} ring {self.ring}")
        return pos

    def _tail(self) -> int | None:
        """Start of the bucket holding the oldest entry still needed for replay.

        Space is reused by whole buckets: the mount scan finds that entry
        through the first entry of its bucket, so the head must never wrap
        into the bucket and overwrite its start while the entry is needed."""
        ents = self.entries
        while ents and ents[0][0] < self.durable_last_seq:
            ents.popleft()
        if not ents:
            return None
        pos = ents[0][1]
        return pos - pos % self.bucket_size

    def space_free(self) -> int:
        """Ring bytes free once the sealed entries are written."""
        tail = self._tail()
        used = 0 if tail is None else self.head - tail
        return self.ring - used - sum(len(d) for _s, _l, d, _dep in self.sealed)

    def needs_space(self) -> bool:
        return self.space_free() < self.reserve_bytes

    def fill_ratio(self) -> float:
        return 1.0 - self.space_free() / self.ring

    def write_sealed(self) -> int:
        """Write sealed entries in order (preflushing if nodes were written).

        Raises JournalFull, leaving unwritten entries sealed, if the ring has
        no room. Returns the last written seq."""
        if self.frozen:
            raise OSError(5, "journal stopped after an engine failure")
        if any(dep > self.flushed_node_gen for _s, _l, _d, dep in self.sealed):
            self.device_flush()
            self.c["journal_preflushes"] += 1
        while self.sealed:
            seq, last, data, _dep = self.sealed[0]
            pos = self._place(len(data))
            self.dev.pwrite(data, self.start + pos % self.ring)
            self.sealed.popleft()
            self.entries.append((seq, pos, len(data), last))
            self.head = pos + len(data)
            self.written_seq = seq
            self.c["journal_writes"] += 1
            self.c["journal_write_bytes"] += len(data)
        return self.written_seq

    def device_flush(self) -> None:
        """fdatasync; everything written before it started becomes durable."""
        if self.frozen:
            raise OSError(5, "journal stopped after an engine failure")
        token = self.flush_token()
        self.dev.flush()
        self.flush_done(token)

    def flush_token(self) -> tuple[int, int, int]:
        """What a device flush starting now covers (for flush_done)."""
        return self.node_gen, self.written_seq, self.last_seq_fn(self.cur_seq)

    def flush_done(self, token: tuple[int, int, int]) -> None:
        node_gen, written_seq, last_seq = token
        self.c["journal_flushes"] += 1
        self.flushed_node_gen = max(self.flushed_node_gen, node_gen)
        self.safe_last_seq = max(self.safe_last_seq, last_seq)
        if written_seq >= self.durable_seq:
            self.durable_seq = written_seq
            for seq, _pos, _size, last in reversed(self.entries):
                if seq <= written_seq:
                    self.durable_last_seq = max(self.durable_last_seq, last)
                    break
            for fn in self.on_durable:
                fn(written_seq)

    def record_advance(self) -> None:
        """Make the node writes done so far durable, then seal, write and flush
        an entry recording how far they reach (last_seq): the ring space before
        it comes back. (An entry sealed while node writes are unflushed records
        no such advance, see seal.)"""
        self.device_flush()
        self.seal(force=True)
        self.write_sealed()
        self.device_flush()

    def flush(self) -> int:
        """Make everything committed so far durable (synchronous). Returns durable seq."""
        self.seal()
        self.write_sealed()
        self.device_flush()
        return self.durable_seq

    def to_text(self) -> str:
        return (f"journal: cur_seq {self.cur_seq} written {self.written_seq} durable "
                f"{self.durable_seq} last_seq {self.durable_last_seq} head {self.head} "
                f"free {self.space_free()}/{self.ring} open keys {self.nkeys} "
                f"sealed {len(self.sealed)}")

