"""Recovery: bringing an image's metadata up, one path for mount and fsck.

RECOVERY_PASSES declares every pass once, in the order they run: its name,
a stable id (never reused or renumbered: ids go into logs and bug reports),
where it runs (at every mount, only in fsck, or both) and the fsck pass
number it reports under. Mount runs the passes marked MOUNT; fsck runs all
of them, its checks (FSCK only) around the shared ones, which it runs
through the engine's own mount with a RecoveryPlan.

A RecoveryPlan is everything recovery may be told instead of finding out
for itself (mount finds everything itself): which journal chain to replay,
which btree roots to trust, which alloc keys to start the allocator from,
which buckets are in use, which btrees to refill before replay and which
journal keys replay must skip. fsck builds one from its journal and
topology checks; nothing replaces the engine's internals.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from .format import BTREE_ID_NR, SB_BLACKLIST_MAX, BtreeId, SbState, SeqBlacklist
from .journal.read import JournalScan, read_chain


class RunsAt(enum.Flag):
    MOUNT = 1
    FSCK = 2
    BOTH = MOUNT | FSCK


@dataclass(frozen=True)
class RecoveryPass:
    name: str
    stable_id: int
    runs_at: RunsAt
    fsck_pass: int      # the pass number fsck reports it under (docs/FSCK.md)
    what: str


_M, _F, _B = RunsAt.MOUNT, RunsAt.FSCK, RunsAt.BOTH
RECOVERY_PASSES: tuple[RecoveryPass, ...] = tuple(RecoveryPass(*row) for row in (
    ("check_superblock", 1, _F, 1, "both superblock copies, the layout"),
    ("journal_read", 2, _B, 2, "the chain of journal entries to replay"),
    ("check_journal", 3, _F, 2, "damaged, bogus and unacknowledged entries"),
    ("check_topology", 4, _F, 2, "every btree node reachable and sound; node scan "
                                 "rebuilds lost btrees"),
    ("journal_blacklist", 5, _B, 2, "seqs a crashed session reserved: never used again"),
    ("roots_read", 6, _B, 2, "the btree roots the newest entry records"),
    ("alloc_read", 7, _B, 2, "the allocator from alloc keys, journal keys over them"),
    ("roots_new", 8, _B, 2, "an empty root for every btree that has none"),
    ("journal_replay", 9, _B, 2, "journal keys into the btrees, interior levels first"),
    ("alloc_settle", 10, _B, 2, "buckets emptied before the crash wait for reuse"),
    ("mount_finish", 11, _B, 2, "superblock dirty, seqs reserved, staged writes out"),
    ("check_keys", 12, _F, 3, "every key valid for its type"),
    ("check_alloc", 13, _F, 4, "alloc keys recounted from extents and nodes"),
    ("check_backpointers", 14, _F, 5, "one backpointer per pointer, none extra"),
    ("check_inodes", 15, _F, 6, "inode fields"),
    ("check_extents", 16, _F, 7, "extents, sizes, overlaps, checksums"),
    ("check_dirents", 17, _F, 8, "directory entries and their hashes"),
    ("check_xattrs", 18, _F, 9, "xattrs and their hashes"),
    ("check_root", 19, _F, 10, "the root directory and lost+found"),
    ("check_dirs", 20, _F, 11, "every directory reachable exactly once"),
    ("check_nlinks", 21, _F, 12, "link counts and the orphan index"),
))

assert len({p.stable_id for p in RECOVERY_PASSES}) == len(RECOVERY_PASSES)
assert len({p.name for p in RECOVERY_PASSES}) == len(RECOVERY_PASSES)


def recovery_passes(runs_at: RunsAt) -> list[RecoveryPass]:
    """The passes that run where runs_at says, in order."""
    return [p for p in RECOVERY_PASSES if p.runs_at & runs_at]


@dataclass
class RecoveryPlan:
    """What recovery is told instead of finding out (fsck's choices)."""
    scan: JournalScan | None = None
    # Roots recovery may load; None: the ones the newest entry records.
    trusted_roots: dict[int, tuple[int, int, int]] | None = None
    # Alloc keys (bucket -> value) to start from instead of the btree's with
    # the journal's over them.
    alloc_seed: dict[int, bytes] | None = None
    # Buckets known to be in use (1 per bucket): never handed out meanwhile.
    taken: bytes | bytearray | None = None
    # Btrees rebuilt before replay: an empty root, refill(engine) fills them,
    # and replay skips their pointer updates.
    rebuild: frozenset[int] = frozenset()
    refill: Callable[[object], None] | None = None
    # Journal keys replay cannot apply: (seq, btree, key).
    skip_keys: set[tuple[int, int, bytes]] = field(default_factory=set)
    # Alloc sector counts may be low (fsck recounts them): clamp at zero.
    tolerate_undercount: bool = False


def _add_range(ranges: list[tuple[int, int]], a: int, b: int) -> list[tuple[int, int]]:
    """Add [a, b] to sorted disjoint ranges, merging any it overlaps."""
    out = []
    for x, y in ranges:
        if y < a - 1 or x > b + 1:
            out.append((x, y))
        else:
            a, b = min(a, x), max(b, y)
    out.append((a, b))
    return sorted(out)


class MountError(Exception):
    """The image cannot be mounted; the message says why."""


class Recovery:
    """The mount passes over one engine; a method per MOUNT pass of the table."""

    def __init__(self, eng, plan: RecoveryPlan | None = None):
        self.eng = eng
        self.plan = plan or RecoveryPlan()
        self.scan = JournalScan()
        self.blacklist: list[tuple[int, int]] = []
        self.next_seq = 1
        self.replayed_entries = 0
        self.replayed_keys = 0

    def run(self) -> None:
        for p in recovery_passes(RunsAt.MOUNT):
            getattr(self, p.name)()

    # ------------------------------------------------------------ journal

    def journal_read(self) -> None:
        eng, sb, plan = self.eng, self.eng.sb, self.plan
        if plan.scan is not None:
            self.scan = plan.scan
            newest = self.scan.newest
            # fsck chose this chain and reported how it disagrees with the
            # superblock (journal_roots_lost, journal_behind_clean).
            if newest is None:
                sb.clean_journal_seq = 0
            elif sb.clean_journal_seq > newest.seq:
                sb.clean_journal_seq = newest.seq
            return
        scan = read_chain(eng.dev, sb)
        if scan.damaged or scan.bogus:
            raise MountError(f"journal damaged ({scan.problems_text()}): run fsck")
        if scan.cut_missing_data is not None:
            eng.warnings.append(f"journal entries from {scan.cut_missing_data} on point at "
                                "data that never reached the disk; they were not "
                                "acknowledged: dropped")
            eng.counters["journal_dropped_entries"] = len(scan.dropped)
        self.scan = scan

    def journal_blacklist(self) -> None:
        """Seqs a crashed session reserved but never made durable are skipped for
        good: node bsets and journal entries carrying them never count."""
        eng, sb = self.eng, self.eng.sb
        newest = self.scan.newest
        durable = newest.seq if newest is not None else 0
        blacklist = list(sb.blacklist)
        self.next_seq = durable + 1
        if sb.state == SbState.dirty and sb.seq_reserved > durable:
            blacklist = _add_range(blacklist, durable + 1, sb.seq_reserved)
            self.next_seq = sb.seq_reserved + 1
            eng.counters["journal_blacklisted_ranges"] = len(blacklist)
        self.blacklist = blacklist
        eng.btrees.set_blacklist(SeqBlacklist(blacklist))
        j = eng.journal
        if newest is None:
            if sb.clean_journal_seq:
                raise MountError("journal is empty but the superblock says entries "
                                 f"up to {sb.clean_journal_seq} were written")
            j.resume([], 0, self.next_seq)
        else:
            if sb.state == SbState.clean and newest.seq < sb.clean_journal_seq:
                raise MountError(f"journal ends at {newest.seq} before the clean "
                                 f"unmount entry {sb.clean_journal_seq}")
            scan = self.scan
            j.resume([(e.seq, p, e.size, e.last_seq)
                      for e, p in zip(scan.entries, scan.positions)], scan.head, self.next_seq)
        if self.next_seq != durable + 1:
            # A new session after a crash starts on a fresh journal bucket, so
            # the mount scan's walk from the newest bucket never has to cross
            # into the crashed session's (blacklisted) seqs.
            j.start_new_bucket()

    # ------------------------------------------------------------ btrees

    def roots_read(self) -> None:
        newest = self.scan.newest
        if newest is None:
            return
        trusted = self.plan.trusted_roots
        for bid, level, offset, node_seq in newest.roots:
            if bid in self.plan.rebuild:
                continue
            if trusted is None or trusted.get(bid) == (level, offset, node_seq):
                self.eng.btrees.set_root(bid, level, offset, node_seq)

    def alloc_read(self) -> None:
        """The allocator works before replay: alloc keys in the btree with the
        newer ones of the journal over them (or what the plan seeds)."""
        eng, plan = self.eng, self.plan
        alloc = eng.alloc
        alloc.tolerate_undercount(plan.tolerate_undercount)
        seed = plan.alloc_seed
        if seed is None:
            seed = {int.from_bytes(k[8:], "big"): v for e in self.scan.entries
                    for bid, lv, k, v in e.keys if bid == BtreeId.alloc and not lv and v}
        alloc.build(seed, eng.journal.durable_seq)
        if plan.taken is not None:
            alloc.mark_taken(plan.taken)

    def roots_new(self) -> None:
        if self.eng.read_only:
            return
        bt = self.eng.btrees
        for bid in range(BTREE_ID_NR):
            if bt.roots[bid] is None:
                bt.new_root(bid)

    def journal_replay(self) -> None:
        eng, plan = self.eng, self.plan
        if plan.refill is not None:
            plan.refill(eng)
        entries = self.scan.entries
        if not self.scan.needs_replay():
            return
        bt = eng.btrees
        skip_bid = plan.rebuild
        levels = sorted({lv for e in entries for _b, lv, _k, _v in e.keys if lv}, reverse=True)
        for level in levels:
            for e in entries:
                for bid, lv, key, val in e.keys:
                    if lv == level and bid not in skip_bid:
                        bt.apply_interior(bid, lv, key, val, e.seq)
        skip = plan.skip_keys
        for e in entries:
            seq = e.seq
            for bid, lv, key, val in e.keys:
                if lv or (skip and (seq, bid, key) in skip):
                    continue
                if val:
                    bt.insert(bid, key, val, seq)
                else:
                    bt.delete(bid, key, seq)
                self.replayed_keys += 1
            self.replayed_entries += 1
        # Interior replay pinned nodes level by level: restore pin order.
        bt.sort_dirty_by_pin()
        eng.counters["journal_replayed_entries"] = self.replayed_entries
        eng.counters["journal_replayed_keys"] = self.replayed_keys

    # ------------------------------------------------------------ finish

    def alloc_settle(self) -> None:
        eng = self.eng
        eng.alloc.mount_done()
        if not eng.read_only:
            eng.alloc.apply_deferred(eng.journal.cur_seq)

    def mount_finish(self) -> None:
        eng, sb = self.eng, self.eng.sb
        if eng.read_only:
            return
        blacklist = self.blacklist
        if len(blacklist) > SB_BLACKLIST_MAX:
            eng.rewrite_stale_nodes()
            blacklist[:] = blacklist[-1:]
        sb.blacklist = list(blacklist)
        sb.state = SbState.dirty
        sb.mount_count += 1
        sb.mtime_ns = time.time_ns()
        eng.dev.commit()           # the mount worked: what it wrote goes to the image
        eng.reserve_seqs(self.next_seq)

