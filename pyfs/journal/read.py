"""Reading the journal: one reader for mount and fsck.

Entries never cross a bucket boundary and start on 512-byte sectors (4 KiB
blocks in version 1). A bucket scan finds every valid entry of a bucket,
and every damaged one (a header whose entry fails its checksum). fsck scans
the whole ring; mount scans only the buckets from the one holding the
newest entry's last_seq to the one after the newest entry (found from one
header read per bucket), so mount reads O(buckets) headers plus the live
journal, not the whole ring. Both apply the same rule to what they found.

The rule: the chain to replay is last_seq..newest of the newest valid entry
M. If an entry N of it is missing or damaged, N was durable iff
M.flushed_seq >= N (M was sealed knowing N was on disk). Then N is damage:
its keys are lost (fsck reports it; mount refuses and says to run fsck).
Otherwise N was never acknowledged: entries written without a flush between
them reach the disk in any order, so the journal ends at N - 1 and the
valid entries after it are an unacknowledged tail, ignored (fsck erases
them, so they cannot reappear once new entries reuse their seqs). Then
ordered data: entries past the newest's flushed_seq whose extents' data is
not on disk were never acknowledged either; the journal ends before them.
"""

from __future__ import annotations

from bisect import bisect_left
from dataclasses import dataclass, field

from ..format import (
    BLOCK_SIZE,
    JSET_HDR_SIZE,
    SECTOR_SIZE,
    BtreeId,
    Extent,
    FormatError,
    JournalEntry,
    KeyType,
    SeqBlacklist,
    checksum,
    unpack_jset,
    unpack_jset_header,
)


@dataclass
class Found:
    """A valid entry's header fields and where it lies (ring offset)."""
    seq: int
    last_seq: int
    flushed_seq: int
    pos: int
    size: int


@dataclass
class JournalScan:
    entries: list[JournalEntry] = field(default_factory=list)   # the chain, last_seq..newest
    positions: list[int] = field(default_factory=list)          # their ring offsets
    head: int = 0                                               # ring offset after newest
    damaged: list[tuple[int, str]] = field(default_factory=list)  # (seq, why): durable, lost
    dropped: list[Found] = field(default_factory=list)           # unacknowledged tail
    cut_missing_data: int | None = None                          # seq of the data cut
    bogus: list[tuple[Found, str]] = field(default_factory=list)  # valid csum, impossible fields
    end_reason: str = "empty"   # why the chain ends: empty, end, bad (torn), gap (tail dropped)

    @property
    def newest(self) -> JournalEntry | None:
        return self.entries[-1] if self.entries else None

    def needs_replay(self) -> bool:
        n = self.newest
        return n is not None and not (n.last_seq == n.seq and not n.keys)

    def problems_text(self) -> str:
        out = [f"entry {seq} {why} although a later entry says it was durable"
               for seq, why in self.damaged[:3]]
        out += [why for _f, why in self.bogus[:3]]
        return "; ".join(out)


class RingReader:
    """Finds the valid (and the damaged) entries of journal buckets."""

    def __init__(self, dev, sb, space: SeqBlacklist | None = None):
        self.dev = dev
        self.space = space if space is not None else sb.seq_blacklist()
        self.bsize = sb.bucket_size
        self.start = sb.journal_bucket * sb.bucket_size
        self.nbuckets = sb.journal_nbuckets
        self.ring = self.bsize * self.nbuckets
        self.good: dict[int, Found] = {}
        self.bad: dict[int, int] = {}        # seq -> ring offset of a damaged entry
        self.scanned: set[int] = set()

    def first_seqs(self) -> list[tuple[int, int]]:
        """(seq, bucket) of every bucket whose first block looks like an entry of
        a seq that is not blacklisted, oldest first."""
        out = []
        for b in range(self.nbuckets):
            h = unpack_jset_header(self.dev.pread(BLOCK_SIZE, self.start + b * self.bsize), 0)
            if h is not None and not self.space.blacklisted(h[0]):
                out.append((h[0], b))
        return sorted(out)

    def scan(self, buckets) -> None:
        for b in buckets:
            if b not in self.scanned:
                self.scanned.add(b)
                self._scan_bucket(b)

    def _scan_bucket(self, b: int) -> None:
        buf = self.dev.pread(self.bsize, self.start + b * self.bsize)
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
                self.bad.setdefault(h[0], ring_pos)
                pos += SECTOR_SIZE
                continue
            if self.space.blacklisted(e.seq):
                pos += e.size          # a crashed session's, never durable
                continue
            if e.seq not in self.good:
                self.good[e.seq] = Found(e.seq, e.last_seq, e.flushed_seq, ring_pos, e.size)
            pos += e.size

    def entry(self, f: Found) -> JournalEntry:
        b, off = divmod(f.pos, self.bsize)
        buf = self.dev.pread(f.size, self.start + b * self.bsize + off)
        return unpack_jset(buf, self.start + f.pos)

    def window(self, firsts: list[tuple[int, int]], top: Found) -> list[int]:
        """Buckets in ring order from the one holding top.last_seq to the one
        after top's: where the chain and what could follow it lie."""
        i = bisect_left(firsts, (top.last_seq + 1, -1)) - 1
        first = firsts[i][1] if i >= 0 else top.pos // self.bsize
        n = (top.pos // self.bsize - first) % self.nbuckets + 2
        return [(first + k) % self.nbuckets for k in range(min(n, self.nbuckets))]


def read_chain(dev, sb, *, whole_ring: bool = False) -> JournalScan:
    """Find the chain of entries to replay (module docstring), classifying what
    it leaves out. whole_ring: scan every bucket (fsck), not only the window
    the chain lies in (mount)."""
    r = RingReader(dev, sb)
    if whole_ring:
        firsts = []
        r.scan(range(r.nbuckets))
    else:
        firsts = r.first_seqs()
        if not firsts:
            return JournalScan()
        top_bucket = firsts[-1][1]
        r.scan([top_bucket, (top_bucket + 1) % r.nbuckets])
    cut = None
    while True:
        found = sorted(s for s in r.good if cut is None or s < cut)
        if found and not whole_ring:
            # Judge the chain only once every bucket it may lie in is read:
            # an entry not scanned yet is not a missing one.
            want = r.window(firsts, r.good[found[-1]])
            if not r.scanned.issuperset(want):
                r.scan(want)
                continue
        scan = JournalScan()
        seqs = _chain_end(found, r, scan)
        if not seqs and not whole_ring:
            # Nothing valid (or only an unacknowledged tail) in the newest
            # buckets: the journal ends in an older one.
            older = [b for _s, b in reversed(firsts) if b not in r.scanned]
            if older:
                r.scan(older[:1])
                continue
        if seqs and not whole_ring:
            want = r.window(firsts, r.good[seqs[-1]])
            if not r.scanned.issuperset(want):
                r.scan(want)
                continue
        _fill(scan, r, seqs)
        new_cut = first_entry_missing_data(dev, scan.entries)
        if new_cut is None:
            break
        cut = new_cut
    if cut is not None:
        scan.cut_missing_data = cut
        scan.dropped.extend(r.good[s] for s in sorted(r.good) if s >= cut)
    scan.end_reason = _end_reason(scan, r)
    return scan


def _chain_end(seqs: list[int], r: RingReader, scan: JournalScan) -> list[int]:
    """Drop bogus entries and unacknowledged tails from the end of the sorted seqs."""
    space, good = r.space, r.good
    max_chain = r.ring // SECTOR_SIZE
    while seqs:
        top = good[seqs[-1]]
        if space.count(top.last_seq, top.seq) > max_chain:
            scan.bogus.append((top, f"entry {top.seq} claims to need entries from "
                                    f"{top.last_seq} on, more than the ring can hold"))
            seqs.pop()
            continue
        gaps = space.missing(seqs, top.last_seq, top.seq, 1)
        if not gaps or top.flushed_seq >= gaps[0]:
            break
        # The tail from the gap on was never acknowledged: the journal ends before it.
        i = bisect_left(seqs, gaps[0])
        scan.dropped.extend(good[s] for s in seqs[i:])
        del seqs[i:]
    return seqs


def _fill(scan: JournalScan, r: RingReader, seqs: list[int]) -> None:
    if not seqs:
        return
    top = r.good[seqs[-1]]
    chain = seqs[bisect_left(seqs, top.last_seq):]
    for missing in r.space.missing(chain, top.last_seq, top.seq):
        scan.damaged.append((missing, "damaged" if missing in r.bad else "missing"))
    for s in chain:
        scan.entries.append(r.entry(r.good[s]))
        scan.positions.append(r.good[s].pos)
    scan.head = top.pos + top.size


def _end_reason(scan: JournalScan, r: RingReader) -> str:
    newest = scan.newest
    if newest is None:
        return "empty"
    if scan.dropped:
        return "gap"
    return "bad" if r.space.next(newest.seq) in r.bad else "end"


def first_entry_missing_data(dev, entries: list[JournalEntry]) -> int | None:
    """The first unacknowledged entry whose new extents' data is not on disk.

    Journal writes are not preceded by a flush of the file data they point
    at; one device flush covers both. So entries newer than the newest one's
    flushed_seq (never known durable) may have reached the disk without their
    data. Their extents still live at the end of the journal are verified and
    the journal is cut before the first failure (None: no cut). An
    acknowledged entry always verifies: its flush covered its data, and a
    bucket is reused only after the extent leaving it is durable. Cutting may
    revive an extent whose deletion was cut, so this repeats until stable.
    Values that do not decode are left to the key checks (fsck)."""
    if not entries:
        return None
    marker = entries[-1].flushed_seq
    cut = None
    while True:
        bad = _unverified(dev, entries, marker, cut)
        if bad is None:
            return cut
        cut = bad


def _unverified(dev, ents: list[JournalEntry], marker: int, before: int | None) -> int | None:
    final: dict[bytes, tuple[int, bytes]] = {}
    for e in ents:
        if e.seq > marker and (before is None or e.seq < before):
            for bid, lv, k, v in e.keys:
                if bid == BtreeId.extents and not lv:
                    final[k] = (e.seq, v)
    for seq, v in sorted(final.values()):
        if not v or v[0] != KeyType.extent:
            continue
        try:
            x = Extent.unpack(v)
        except FormatError:
            continue
        n = x.region_blocks * BLOCK_SIZE
        if not n or x.dev_offset % BLOCK_SIZE or x.dev_offset + n > dev.size or n > 1 << 26:
            continue
        if checksum(dev.pread(n, x.dev_offset)) != x.csum:
            return seq
    return None
