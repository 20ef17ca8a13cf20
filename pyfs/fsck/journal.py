"""Reading the journal for fsck: every valid entry in the ring, then the chain to replay.

Mount reads O(buckets) headers and walks from the newest bucket; fsck reads the
whole ring once so that it can tell a torn end (normal after a crash: the
journal simply ends there) from a damaged entry that a later, valid entry
proves was durable (its keys are lost; replay goes on around it).

The rule: the chain is last_seq..newest of the newest valid entry M. If an
entry N in it is missing or damaged, N was durable iff M.flushed_seq >= N
(M was sealed knowing N was on disk). Then N is damage (an error) and M stays
the newest. Otherwise N was never acknowledged: the journal ends at N - 1 and
the valid entries after it are an unacknowledged tail, ignored like mount
ignores a torn end (and erased by a repair, so they cannot reappear once new
entries reuse their sequence numbers).
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from dataclasses import dataclass, field

from ..format import (
    JSET_HDR_SIZE,
    SECTOR_SIZE,
    FormatError,
    JournalEntry,
    unpack_jset,
    unpack_jset_header,
)
from ..journal.read import first_entry_missing_data


@dataclass
class Found:
    """A valid entry's header fields and where it lies (ring offset)."""
    seq: int
    last_seq: int
    flushed_seq: int
    pos: int
    size: int


@dataclass
class JournalView:
    entries: list[JournalEntry] = field(default_factory=list)    # the chain, in seq order
    positions: list[int] = field(default_factory=list)
    head: int = 0
    damaged: list[tuple[int, str]] = field(default_factory=list)  # (seq, why): durable, lost
    dropped: list[Found] = field(default_factory=list)           # unacknowledged tail
    cut_missing_data: int | None = None                          # seq of the data cut
    bogus: list[tuple[Found, str]] = field(default_factory=list)  # valid csum, impossible fields

    @property
    def newest(self) -> JournalEntry | None:
        return self.entries[-1] if self.entries else None

    def needs_replay(self) -> bool:
        n = self.newest
        return n is not None and not (n.last_seq == n.seq and not n.keys)


class RingReader:
    """Reads a journal ring bucket by bucket and finds every valid entry."""

    def __init__(self, dev, sb, space: SeqSpace | None = None):
        self.dev = dev
        self.space = space or SeqSpace()
        self.bsize = sb.bucket_size
        self.start = sb.journal_bucket * sb.bucket_size
        self.nbuckets = sb.journal_nbuckets
        self.ring = self.bsize * self.nbuckets

    def bucket(self, b: int) -> bytes:
        return self.dev.pread(self.bsize, self.start + b * self.bsize)

    def scan(self) -> tuple[dict[int, Found], dict[int, int]]:
        """(seq -> valid entry, seq -> ring offset of a damaged entry claiming it)."""
        good: dict[int, Found] = {}
        bad: dict[int, int] = {}
        for b in range(self.nbuckets):
            buf = self.bucket(b)
            pos = 0
            while pos + SECTOR_SIZE <= self.bsize:
                h = unpack_jset_header(buf[pos:pos + JSET_HDR_SIZE], 0)
                if h is None:
                    pos += SECTOR_SIZE      # entries start on sectors (blocks in v1)
                    continue
                ring_pos = b * self.bsize + pos
                try:
                    e = unpack_jset(buf[pos:], self.start + ring_pos)
                except FormatError:
                    bad.setdefault(h[0], ring_pos)
                    pos += SECTOR_SIZE
                    continue
                if self.space.blacklisted(e.seq):
                    pos += e.size          # a crashed session's, never durable
                    continue
                if e.seq not in good:
                    good[e.seq] = Found(e.seq, e.last_seq, e.flushed_seq, ring_pos, e.size)
                pos += e.size
        return good, bad

    def entry(self, f: Found) -> JournalEntry:
        b, off = divmod(f.pos, self.bsize)
        buf = self.dev.pread(f.size, self.start + b * self.bsize + off)
        return unpack_jset(buf, self.start + f.pos)


class SeqSpace:
    """Journal sequence numbers, minus the superblock's blacklisted ranges (seqs a
    crashed session may have used but never made durable: never part of a chain)."""

    def __init__(self, blacklist=()):
        self.ranges = sorted((int(a), int(b)) for a, b in blacklist if a <= b)

    def blacklisted(self, seq: int) -> bool:
        return any(a <= seq <= b for a, b in self.ranges)

    def next(self, seq: int) -> int:
        n = seq + 1
        for a, b in self.ranges:
            if a <= n <= b:
                n = b + 1
        return n

    def count(self, lo: int, hi: int) -> int:
        """How many seqs of [lo, hi] are not blacklisted."""
        n = hi - lo + 1
        for a, b in self.ranges:
            n -= max(0, min(b, hi) - max(a, lo) + 1)
        return max(n, 0)

    def missing(self, seqs: list[int], lo: int, hi: int, limit: int | None = None) -> list[int]:
        """Seqs of the chain lo..hi absent from the sorted list seqs (callers bound
        the chain's length first)."""
        have = seqs[bisect_left(seqs, lo):bisect_right(seqs, hi)]
        out: list[int] = []
        expect = lo if not self.blacklisted(lo) else self.next(lo)
        i = 0
        while expect <= hi and (limit is None or len(out) < limit):
            if i < len(have) and have[i] == expect:
                i += 1
            else:
                out.append(expect)
            expect = self.next(expect)
        return out


def read_view(dev, sb) -> JournalView:
    """Find the journal chain fsck replays, classifying what it skips."""
    space = SeqSpace(getattr(sb, "blacklist", ()))
    r = RingReader(dev, sb, space)
    good, bad = r.scan()
    view = JournalView()
    max_chain = r.ring // SECTOR_SIZE
    seqs = _newest_chain_end(sorted(good), good, view, max_chain, space)
    _fill(view, r, good, bad, seqs, space)
    cut = _cut_missing_data(dev, view)
    if cut is not None:
        view.cut_missing_data = cut
        view.dropped.extend(good[s] for s in seqs if s >= cut)
        seqs = _newest_chain_end([s for s in seqs if s < cut], good, view, max_chain, space)
        _fill(view, r, good, bad, seqs, space)
    return view


def _newest_chain_end(seqs: list[int], good: dict[int, Found], view: JournalView,
                      max_chain: int, space: SeqSpace) -> list[int]:
    """Drop bogus entries and unacknowledged tails from the end of the sorted seqs."""
    while seqs:
        top = good[seqs[-1]]
        if space.count(top.last_seq, top.seq) > max_chain:
            view.bogus.append((top, f"entry {top.seq} claims to need entries from "
                                    f"{top.last_seq} on, more than the ring can hold"))
            seqs.pop()
            continue
        gaps = space.missing(seqs, top.last_seq, top.seq, 1)
        if not gaps or top.flushed_seq >= gaps[0]:
            break
        # The tail from the gap on was never acknowledged: the journal ends before it.
        i = bisect_left(seqs, gaps[0])
        view.dropped.extend(good[s] for s in seqs[i:])
        del seqs[i:]
    return seqs


def _fill(view: JournalView, r: RingReader, good: dict[int, Found], bad: dict[int, int],
          seqs: list[int], space: SeqSpace) -> None:
    view.entries, view.positions, view.damaged, view.head = [], [], [], 0
    if not seqs:
        return
    top = good[seqs[-1]]
    chain = seqs[bisect_left(seqs, top.last_seq):]
    for missing in space.missing(chain, top.last_seq, top.seq):
        view.damaged.append((missing, "damaged" if missing in bad else "missing"))
    for s in chain:
        view.entries.append(r.entry(good[s]))
        view.positions.append(good[s].pos)
    view.head = top.pos + top.size


def _cut_missing_data(dev, view: JournalView) -> int | None:
    """Mount's rule for ordered data, applied to fsck's view of the journal."""
    return first_entry_missing_data(dev, view.entries)


def erase_entries(dev, sb, found: list[Found]) -> None:
    """Zero the first sector of each entry (its header) so that no later scan
    finds it; the next entry may start in the sector after."""
    start = sb.journal_bucket * sb.bucket_size
    zero = bytes(SECTOR_SIZE)
    for f in found:
        dev.pwrite(zero, start + f.pos)
