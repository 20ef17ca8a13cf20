"""The metadata engine: one mounted image's device, superblock, journal and btrees.

Mount runs the recovery passes (pyfs/recovery.py): read the journal chain,
load the btree roots its newest entry records, build the allocator, replay
the keys of entries last_seq..newest and mark the superblock dirty.
Unmount: write every dirty node, write a final journal entry recording that
nothing needs replay, flush, mark clean.

The engine owns these parts and the lifecycle (mount, reclaim, flush,
freeze, close, fail); transactions commit through its Committer
(pyfs/trans.py), without waiting for I/O. Journal reclaim writes the nodes
pinning the oldest sequences when the ring fills past a watermark; that is
the normal trigger of btree node writes.
"""

from __future__ import annotations

from .alloc.copygc import Copygc
from .alloc.foreground import Allocator, Watermark
from .btree.tree import BtreeSet
from .device import OverlayDevice, StagedDevice
from .format import BTREE_ID_NR, BtreeId, SbState
from .journal.journal import Journal
from .recovery import MountError, Recovery, RecoveryPlan
from .superblock import read_superblock, write_superblock
from .trans import Committer, Trans

# Journal seqs a session reserves in the superblock at a time.
SEQ_RESERVE_WINDOW = 1 << 24


class Engine:
    def __init__(self, dev, *, write_buffer: int | None = None, cache_nodes: int | None = None,
                 read_only: bool = False, background: bool = False, backpointers: bool = True,
                 discard: bool = True, plan: RecoveryPlan | None = None):
        if read_only and not isinstance(dev, OverlayDevice):
            # Replay may split or compact nodes: keep those writes in memory so
            # a read-only mount, fsck -n or an inspection never touches the image.
            dev = OverlayDevice(dev)
        elif not read_only:
            # What mounting writes (replay's node writes, new roots) is staged
            # and goes to the image only once the mount has succeeded: a mount
            # that fails leaves the image exactly as it found it.
            dev = StagedDevice(dev)
        self.dev = dev
        self.read_only = read_only
        # With a background flusher (the mount daemon), commits leave journal
        # writes that need a preflush to it; otherwise they are done inline.
        self.background = background
        self.counters: dict[str, int] = {}
        self.warnings: list[str] = []
        try:
            self.sb, warns = read_superblock(dev)
        except Exception as e:
            raise MountError(str(e)) from e
        self.warnings += warns
        sb = self.sb
        self.node_size = sb.btree_node_size
        self.journal = Journal(dev, start=sb.journal_bucket * sb.bucket_size,
                               bucket_size=sb.bucket_size, nbuckets=sb.journal_nbuckets,
                               counters=self.counters, roots_fn=self._roots,
                               last_seq_fn=self._last_seq)
        self.btrees = BtreeSet(dev, self.node_size, None, self.journal, self.counters,
                               write_buffer=write_buffer, cache_nodes=cache_nodes)
        self.alloc = Allocator(sb, self.btrees, self.journal, dev, self.counters,
                               backpointers=backpointers)
        self.alloc.state.discard_enabled = discard
        self.alloc.on_need_space = self._need_space
        self.copygc = Copygc(self)
        self.alloc.on_low_space = self._low_space
        self.btrees.space = self.alloc
        self.journal.on_durable.append(self.alloc.durable)
        # Transactions commit through this (pyfs/trans.py), with what the
        # allocator derives from extents.
        self.committer = Committer(self)
        self.committer.add_trigger(BtreeId.extents, self.alloc.extent_trigger)
        self.committer.hooks.append(self.alloc.commit_hook)
        self.plan = plan
        self.replayed_keys = 0
        self.replayed_entries = 0
        self.failed: BaseException | None = None
        try:
            self._mount()
        except MountError:
            self._abort_mount()
            raise
        except Exception as e:
            self._abort_mount()
            # An image is untrusted input: whatever a damaged one trips over
            # while mounting, the caller gets one clear error (fsck repairs).
            raise MountError(f"cannot mount: {type(e).__name__}: {e} (run fsck)") from e

    # ------------------------------------------------------------ mount

    def _roots(self) -> list:
        return self.btrees.root_records()

    def _last_seq(self, seq: int) -> int:
        """The oldest seq whose keys are not all in written nodes (pins: 0 = none)."""
        a = self.btrees.oldest_pin() or seq
        b = self.alloc.state.oldest_pin() or seq
        return min(a, b, seq)

    def _mount(self) -> None:
        self.recovery = Recovery(self, self.plan)
        self.recovery.run()
        self.scan = self.recovery.scan
        self.replayed_keys = self.recovery.replayed_keys
        self.replayed_entries = self.recovery.replayed_entries

    def _abort_mount(self) -> None:
        if isinstance(self.dev, StagedDevice):
            self.dev.abort()

    def reserve_seqs(self, seq: int) -> None:
        """Record in the superblock, durably, that this session may use journal
        seqs up to seq + SEQ_RESERVE_WINDOW: after a crash, the next mount
        blacklists what was not durable of that window."""
        self.sb.seq_reserved = seq + SEQ_RESERVE_WINDOW
        write_superblock(self.dev, self.sb)
        self.journal.seq_limit = self.sb.seq_reserved
        self.journal.on_seq_limit = self.reserve_seqs

    def rewrite_stale_nodes(self) -> None:
        """Move every node that still holds bsets of a blacklisted seq to a
        fresh region, so that none is reachable any more and the superblock
        can drop old blacklist ranges."""
        moved = self.btrees.mark_stale_for_rewrite(self.journal.cur_seq)
        self.sync_all()
        c = self.counters
        c["btree_stale_rewrites"] = c.get("btree_stale_rewrites", 0) + 1
        c["btree_stale_nodes_moved"] = c.get("btree_stale_nodes_moved", 0) + moved

    # ------------------------------------------------------------ transactions

    def trans(self, watermark: Watermark = Watermark.normal) -> Trans:
        return Trans(self, watermark)

    def stop(self, err: BaseException) -> None:
        """Stop writing after an error, once everything committed is written
        and flushed (if the device still allows it): the caller has made sure
        the open journal entry holds only whole transactions."""
        if self.failed is None and not self.read_only:
            j = self.journal
            try:
                j.seal()
                j.write_sealed()
                j.device_flush()
            except Exception as e:      # the device is gone too: what is durable stays
                self.warnings.append(f"could not flush before stopping: {e!r}")
        self.fail(err)

    def fail(self, err: BaseException) -> None:
        """Stop writing anything, as if power were cut now; the durable state
        on disk stays consistent and the next mount replays it."""
        if self.failed is None:
            self.failed = err
            self.counters["engine_failures"] = self.counters.get("engine_failures", 0) + 1
        self.journal.frozen = True
        self.btrees.frozen = True

    def persist(self) -> bool:
        """Write everything committed that the image does not hold yet (pwrite,
        no device flush): what a dead daemon must not lose. Returns whether
        anything was written."""
        j = self.journal
        if self.failed is not None or not j.unwritten():
            return False
        j.write_committed()
        return True

    # ------------------------------------------------------------ reclaim/flush

    def reclaim(self) -> int:
        """Write the nodes pinning the oldest half of the live journal."""
        j = self.journal
        lo = j.durable_last_seq
        target = lo + max(1, (j.cur_seq - lo) // 2)
        self.alloc.state.flush_cache(target)
        n = self.btrees.reclaim(target)
        self.alloc.apply_deferred(j.cur_seq)
        return n

    def _low_space(self) -> None:
        """Allocation is down to the reserves: move data out of fragmented buckets
        (synchronously: resource exhaustion) and make the emptied buckets reusable."""
        if self.copygc.run():
            self._need_space()
        elif self.alloc.state.waiting or self.alloc.state.discard_ready:
            self._need_space()

    def maybe_copygc(self, max_buckets: int = 4) -> int:
        """Background step (mount daemon): copygc when free buckets run low."""
        if not self.copygc.wanted():
            return 0
        n = self.copygc.run(max_buckets)
        return n

    def _need_space(self) -> None:
        """Allocation found nothing free but buckets wait on the journal: flush."""
        self.flush()
        self.alloc.state.do_discards()

    def make_journal_space(self) -> None:
        """The ring is nearly full: write the oldest pinned nodes and flush."""
        self.counters["journal_full_waits"] += 1
        self.reclaim()
        self.journal.record_advance()

    def flush(self) -> int:
        """Make every committed transaction durable; return the durable seq."""
        return self.journal.flush()

    async def flush_async(self, run_sync) -> int:
        """flush() for an event loop: device flushes go through run_sync (e.g.
        trio.to_thread.run_sync) so other operations proceed meanwhile.
        Everything committed before the call is durable when it returns."""
        j = self.journal
        j.seal()
        while j.sealed and j.needs_preflush():
            token = j.flush_token()
            await run_sync(self.dev.flush)
            j.flush_done(token)
            self.counters["journal_preflushes"] += 1
        j.write_sealed()
        token = j.flush_token()
        await run_sync(self.dev.flush)
        j.flush_done(token)
        return j.durable_seq

    def sync_all(self) -> None:
        """Write every dirty node and flush the journal (sync(2) semantics and more)."""
        st = self.alloc.state
        for _ in range(16):
            st.flush_cache()
            self.alloc.apply_deferred(self.journal.cur_seq)
            self.btrees.flush_all()
            self.alloc.apply_deferred(self.journal.cur_seq)
            if not st.cache and not self.btrees.dirty and not self.alloc.pending_bp:
                break
        self.journal.record_advance()

    def close(self, clean: bool = True) -> None:
        """Unmount: with clean, write everything and mark the superblock clean."""
        if not self.read_only and clean and self.failed is None:
            self._write_back_clean()
        self.dev.close()

    def freeze(self) -> None:
        """remount,ro: what a clean unmount writes (the image is clean from
        here on), then refuse commits until thaw()."""
        self._write_back_clean()
        self.read_only = True

    def thaw(self) -> None:
        """remount,rw after freeze(): dirty again, with a fresh reservation of
        journal seqs (as a mount takes)."""
        self.read_only = False
        self.sb.state = SbState.dirty
        self.reserve_seqs(self.journal.cur_seq)

    def _write_back_clean(self) -> None:
        self.alloc.release_all()
        self.sync_all()
        if self.alloc.state.do_discards():      # emptied buckets made durable just now
            self.sync_all()
        # A last, keyless entry: the next mount finds nothing to replay.
        self.journal.seal(force=True)
        self.journal.write_sealed()
        self.journal.device_flush()
        sb = self.sb
        sb.state = SbState.clean
        sb.clean_journal_seq = self.journal.durable_seq
        write_superblock(self.dev, sb)

    # ------------------------------------------------------------ inspection

    def stats(self) -> dict[str, int]:
        out = dict(self.counters)
        out.update({f"dev_{k}": v for k, v in self.dev.counters.items()})
        j = self.journal
        out.update(journal_seq=j.cur_seq, journal_durable_seq=j.durable_seq,
                   journal_last_seq=j.durable_last_seq, journal_free_bytes=j.space_free(),
                   btree_cache_nodes=len(self.btrees.cache),
                   btree_dirty_nodes=len(self.btrees.dirty),
                   bounces=self.counters.get("alloc_bounces", 0),
                   discards=self.counters.get("discards", 0))
        out.update({f"alloc_{k}": v for k, v in self.alloc.usage().items()})
        return out

    def to_text(self) -> str:
        lines = [self.journal.to_text()]
        for bid in range(BTREE_ID_NR):
            r = self.btrees.roots[bid]
            if r is not None:
                lines.append(f"{BtreeId(bid).name}: root L{r.level} @{r.offset}")
        return "\n".join(lines)
