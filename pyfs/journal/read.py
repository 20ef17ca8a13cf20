"""Finding and validating journal entries at mount.

Entries never cross a bucket boundary, so every journal bucket in use starts
with an entry. Mount reads one header block per bucket to find the bucket
holding the newest entries, walks forward from it to the newest valid entry
E (a torn or bad-checksum entry, or a sequence break, ends the journal
cleanly), then walks again from the bucket holding E.last_seq to collect the
entries to replay. Reading is O(buckets) header reads plus the entries
replayed, not the whole ring.

Entries written without a flush between them may reach the disk in any
order, so E may follow a hole. If the first missing entry is newer than E's
flushed_seq (never known durable), the journal ends before the hole;
otherwise durable entries are lost and reading fails (JournalError).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..format import (
    BLOCK_SIZE,
    JSET_HDR_SIZE,
    BtreeId,
    Extent,
    FormatError,
    JournalEntry,
    KeyType,
    checksum,
    unpack_jset,
    unpack_jset_header,
)


class JournalError(Exception):
    """The journal is damaged in a way that loses durable entries."""


@dataclass
class JournalScan:
    entries: list[JournalEntry] = field(default_factory=list)   # last_seq .. newest
    positions: list[int] = field(default_factory=list)          # ring offsets of entries
    head: int = 0                                               # ring offset after newest
    end_reason: str = "empty"    # why the walk stopped: empty, end, bad, dropped, gap
    bad_offset: int | None = None                               # offset of a torn/bad entry

    @property
    def newest(self) -> JournalEntry | None:
        return self.entries[-1] if self.entries else None


class _Reader:
    def __init__(self, dev, start: int, bucket_size: int, nbuckets: int):
        self.dev = dev
        self.start = start
        self.bsize = bucket_size
        self.nbuckets = nbuckets
        self.ring = bucket_size * nbuckets
        self.cache: dict[int, bytes] = {}
        self.blacklist: list[tuple[int, int]] = []

    def bucket(self, b: int) -> bytes:
        buf = self.cache.get(b)
        if buf is None:
            if len(self.cache) > 8:
                self.cache.clear()
            buf = self.dev.pread(self.bsize, self.start + b * self.bsize)
            self.cache[b] = buf
        return buf

    def first_seqs(self) -> list[tuple[int, int]]:
        """(seq, bucket) of every bucket whose first block looks like an entry."""
        out = []
        for b in range(self.nbuckets):
            h = unpack_jset_header(self.dev.pread(BLOCK_SIZE, self.start + b * self.bsize), 0)
            if h is not None:
                out.append((h[0], b))
        return out

    def entry_at(self, pos: int) -> JournalEntry | None | FormatError:
        """The entry at ring offset pos: None if no entry header, an error if damaged."""
        b, off = divmod(pos, self.bsize)
        buf = self.bucket(b)
        if off + JSET_HDR_SIZE > self.bsize:
            return None
        h = unpack_jset_header(buf[off:off + JSET_HDR_SIZE], 0)
        if h is None:
            return None
        try:
            return unpack_jset(buf[off:], self.start + pos)
        except FormatError as e:
            return e

    def walk(self, bucket: int):
        """Yield (pos, entry) of consecutive entries starting at a bucket's first one.

        The walk ends at a sequence break, a torn entry or an empty block;
        it yields ("end", reason, offset) last."""
        pos = bucket * self.bsize
        expect = None
        visited = 0
        while visited <= self.ring:
            e = self.entry_at(pos % self.ring)
            if isinstance(e, JournalEntry) and (expect is None or e.seq == expect) and not (
                    expect is None and self.blacklisted(e.seq)):
                yield pos % self.ring, e
                expect = self.next_seq(e.seq)
                visited += e.size
                pos += e.size
                continue
            # Nothing (or an older lap) here: the next entry may start the next bucket.
            nxt = pos + (-pos % self.bsize or self.bsize) if pos % self.bsize else None
            if nxt is not None and expect is not None:
                e2 = self.entry_at(nxt % self.ring)
                if isinstance(e2, JournalEntry) and e2.seq == expect:
                    visited += nxt - pos
                    pos = nxt
                    continue
                if isinstance(e2, FormatError) and self._claims(nxt, expect):
                    e = e2
            if isinstance(e, FormatError) and (expect is None or self._claims(pos, expect)):
                yield ("end", "bad", e.offset)
            else:
                yield ("end", "end", None)
            return
        yield ("end", "end", None)

    def blacklisted(self, seq: int) -> bool:
        return any(a <= seq <= b for a, b in self.blacklist)

    def next_seq(self, seq: int) -> int:
        """The sequence after seq, skipping blacklisted ranges (sorted, disjoint)."""
        n = seq + 1
        for a, b in self.blacklist:
            if a <= n <= b:
                n = b + 1
        return n

    def _claims(self, pos: int, seq: int) -> bool:
        b, off = divmod(pos % self.ring, self.bsize)
        h = unpack_jset_header(self.bucket(b)[off:off + JSET_HDR_SIZE], 0)
        return h is not None and h[0] == seq


def read_journal(dev, start: int, bucket_size: int, nbuckets: int,
                 stop_before: int | None = None, blacklist=()) -> JournalScan:
    """Find the journal's valid entries; with stop_before, entries from that seq
    on are treated as never written (mount drops an unflushed tail this way).
    Entries whose seq is in a blacklisted range (a crashed session's, never
    durable) are ignored, and sequence continuity skips those ranges."""
    r = _Reader(dev, start, bucket_size, nbuckets)
    r.blacklist = sorted(blacklist)
    firsts = sorted(((s, b) for s, b in r.first_seqs() if not r.blacklisted(s)), reverse=True)
    scan = JournalScan()
    newest = None
    for _seq, b in firsts:
        last_pos = None
        for item in r.walk(b):
            if item[0] == "end":
                scan.end_reason, scan.bad_offset = item[1], item[2]
                break
            if stop_before is not None and item[1].seq >= stop_before:
                scan.end_reason, scan.bad_offset = "dropped", item[1].offset
                break
            last_pos, newest_cand = item
        if last_pos is not None:
            newest = newest_cand
            scan.head = last_pos + newest.size
            break
    if newest is None:
        return scan
    # Collect last_seq .. newest, starting at the bucket holding last_seq.
    want = newest.last_seq
    starts = [b for s, b in sorted(firsts) if s <= want]
    if not starts:
        raise JournalError(f"journal: no bucket holds entry {want} (needed for replay)")
    for item in r.walk(starts[-1]):
        if item[0] == "end":
            break
        pos, e = item
        if e.seq < want:
            continue
        scan.entries.append(e)
        scan.positions.append(pos)
        if e.seq == newest.seq:
            break
    seqs = [e.seq for e in scan.entries]
    missing = _first_missing(seqs, want, newest.seq, r.next_seq)
    if missing:
        if missing[0] > newest.flushed_seq:
            # Entries written back to back without a flush reach the disk in
            # any order: a later one can survive a crash that lost an earlier
            # one. Nothing from the first missing entry on was known durable
            # (it is past the newest entry's flushed_seq), so the journal ends
            # before it.
            cut = missing[0] if stop_before is None else min(stop_before, missing[0])
            tail = read_journal(dev, start, bucket_size, nbuckets, stop_before=cut,
                                blacklist=blacklist)
            tail.end_reason, tail.bad_offset = "gap", None
            return tail
        raise JournalError(f"journal: entries {want}..{newest.seq} incomplete; "
                           f"missing {missing[:5]}")
    return scan


def _first_missing(seqs: list[int], lo: int, hi: int, next_seq, limit: int = 5) -> list[int]:
    """Up to limit seqs of the chain lo..hi (next_seq steps over blacklisted
    ranges) absent from seqs, in order. Work is bounded by len(seqs) + limit,
    however large hi - lo is (a hostile entry's seq can be huge)."""
    have = set(seqs)
    out = []
    s = lo
    while s <= hi and len(out) < limit:
        if s not in have:
            out.append(s)
        s = next_seq(s)
    return out


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
