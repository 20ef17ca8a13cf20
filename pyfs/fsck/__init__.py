"""pyfs fsck: find every inconsistency of an image and repair what can be repaired.

Ordered passes (docs/FSCK.md): 1 superblock and layout, 2 journal and btree
topology (on disk, before mounting), then on the mounted engine 3 keys valid
for their type, 4 alloc info, 5 backpointers, 6 inodes, 7 extents, 8
directory entries, 9 xattrs, 10 root and lost+found, 11 directory structure,
12 link counts and the orphan index.

API:
    fsck_device(dev, FsckOptions(mode="yes")) -> FsckResult   (an open Device)
    fsck_path(path, options)                                    (opens it exclusively)
    check_engine(eng) -> list[str]                              (a live engine, no changes)

Anything unexpected inside a pass becomes an internal_error report (exit 8)
instead of a traceback; set PYFS_FSCK_DEBUG=1 to see the traceback too.
"""

from __future__ import annotations

import gc
import io
import os
import stat
import sys
import traceback
from contextlib import contextmanager
from dataclasses import dataclass

from ..device import DeviceBusy, OverlayDevice, StagedDevice, open_device
from ..engine import Engine
from ..format import SbState
from ..recovery import RunsAt, recovery_passes
from .alloc import pass4, pass5
from .context import Ctx, FsckOptions
from .errors import ERROR_TABLE, INFO, PASS_NAMES, Err
from .journal import erase_entries, read_view
from .keys import pass3
from .mount import describe_key, repair_plan, unreplayable_keys
from .names import pass8, pass9
from .passes import pass6, pass7
from .repair import plural
from .report import (
    EXIT_OPERATIONAL,
    MODE_ASK,
    MODE_NO,
    MODE_PREEN,
    MODE_YES,
    FsckAbort,
    Problem,
    Reporter,
)
from .sb import check_superblock
from .structure import pass10, pass11, pass12
from .topology import TopologyCheck

__all__ = ["ERROR_TABLE", "Err", "FsckOptions", "FsckResult", "MODE_ASK", "MODE_NO",
           "MODE_PREEN", "MODE_YES", "check_engine", "fsck_device", "fsck_path"]

# The checks that run on the mounted engine, by their recovery pass name.
ENGINE_CHECKS = {"check_keys": pass3, "check_alloc": pass4, "check_backpointers": pass5,
                 "check_inodes": pass6, "check_extents": pass7, "check_dirents": pass8,
                 "check_xattrs": pass9, "check_root": pass10, "check_dirs": pass11,
                 "check_nlinks": pass12}


@dataclass
class FsckResult:
    exit_code: int
    problems: list[Problem]
    summary: str

    def errors(self) -> list[Problem]:
        return [p for p in self.problems if INFO[p.err].severity != "info"]


class Run:
    """One fsck run over an open device."""

    def __init__(self, dev, opts: FsckOptions, rep: Reporter, name: str):
        self.dev = dev
        self.opts = opts
        self.rep = rep
        self.name = name
        self.ctx: Ctx | None = None
        self.sb = None
        self.view = None
        self.pre = None
        self.eng: Engine | None = None
        self.overlay = False
        self.skipped = False

    def go(self) -> None:
        """The recovery passes fsck runs, in the table's order: its own checks,
        and the passes it shares with mount run by the engine's mount."""
        for p in recovery_passes(RunsAt.FSCK):
            if p.runs_at & RunsAt.MOUNT and p.name != "journal_read":
                if self.eng is None:
                    self.mount()
                continue
            if p.fsck_pass != self.rep.pass_no:
                self.rep.start_pass(p.fsck_pass)
            if p.name in ENGINE_CHECKS:
                ENGINE_CHECKS[p.name](self.ctx)
            else:
                getattr(self, p.name)()
            if self.skipped:
                return
        self.rep.end_pass()
        if not self.overlay:
            # The journal goes on from a fresh bucket: mount finds a bucket's
            # entries through its first one, which may be one fsck skipped.
            self.eng.sync_all()
            self.eng.journal.start_new_bucket()
            self.eng.close(clean=True)

    def check_superblock(self) -> None:
        rep = self.rep
        self.sb = sb = check_superblock(self.dev, rep)
        if (rep.mode == MODE_PREEN and not self.opts.force and sb.state == SbState.clean
                and not rep.problems):
            self.skipped = True

    def journal_read(self) -> None:
        self.view = read_view(self.dev, self.sb)

    def check_journal(self) -> None:
        self._journal(self.sb, self.view)

    def check_topology(self) -> None:
        sb, view = self.sb, self.view
        roots_lost = view.newest is None and bool(sb.clean_journal_seq)
        self.pre = TopologyCheck(self.dev, sb, view, self.rep, roots_lost=roots_lost).run()

    def mount(self) -> None:
        """Mount through the engine's recovery passes with fsck's plan; with -n
        (or when a structural repair was declined) on a copy-on-write overlay."""
        rep, sb, view, pre = self.rep, self.sb, self.view, self.pre
        skip = self._unreplayable(sb, view, pre)
        declined = any(not p.fixed for p in rep.problems
                       if INFO[p.err].severity == "error" and p.pass_no == 2)
        if declined and rep.mode != MODE_NO:
            rep.mode = MODE_NO      # no rebuild, no repair on top of a broken structure
        self.overlay = rep.mode == MODE_NO
        edev = OverlayDevice(self.dev) if self.overlay else self.dev
        self.eng = eng = Engine(edev, discard=False, plan=repair_plan(view, pre, skip))
        self.ctx = ctx = Ctx(self.dev, eng.sb, eng, rep, self.opts, pre, overlay=self.overlay)
        # Until pass 4 trusts the alloc info: no bucket pass 2 saw in use is
        # handed out, nothing is freed or discarded, copygc stays off.
        eng.alloc.hold(pre.used)
        ctx.alloc_frozen = True
        if pre.rebuild and not self.overlay:
            eng.sync_all()      # rebuilt btrees reach the disk before any repair

    def _journal(self, sb, view) -> None:
        rep = self.rep
        newest = view.newest
        if newest is None and sb.clean_journal_seq:
            # Mount's rule: an empty journal is a filesystem whose first session
            # never made an entry durable (nothing it did was acknowledged as
            # durable, so it is empty) unless a clean unmount recorded entries.
            # Then the roots are lost: pass 2 rebuilds every btree from a node
            # scan (in memory with -n).
            rep.problem(Err.journal_roots_lost, "the journal holds no valid entry but the "
                        f"superblock says entries up to {sb.clean_journal_seq} were written: "
                        "the btree roots are lost; every btree is rebuilt from the nodes on "
                        "the device", lambda: None)
        for f, why in view.bogus:
            rep.problem(Err.journal_entry_bad, f"journal entry {f.seq} at ring offset "
                        f"{f.pos}: {why}; erased", lambda f=f: erase_entries(self.dev, sb, [f]))
        for seq, why in view.damaged:
            rep.problem(Err.journal_entry_bad, f"journal entry {seq} is {why} but a later "
                        f"entry says it was durable; its keys are lost", lambda: None)
        if view.dropped:
            seqs = sorted(f.seq for f in view.dropped)
            why = (f" (their data never reached the disk from {view.cut_missing_data})"
                   if view.cut_missing_data is not None else "")
            what = plural(len(seqs), "unacknowledged journal entry")
            rep.problem(Err.journal_tail_dropped, f"{what} ({seqs[0]}..{seqs[-1]}) after the "
                        f"end of the journal{why}",
                        lambda: erase_entries(self.dev, sb, view.dropped))
        if newest is None:
            return
        if sb.state == SbState.clean and newest.seq < sb.clean_journal_seq:
            rep.problem(Err.journal_behind_clean, f"the superblock says clean at journal "
                        f"entry {sb.clean_journal_seq}, the journal ends at {newest.seq}",
                        lambda: None)
        if view.needs_replay():
            nkeys = sum(len(e.keys) for e in view.entries)
            what = plural(len(view.entries), "journal entry")
            rep.problem(Err.journal_replayed, f"replayed {what} ({view.entries[0].seq}.."
                        f"{newest.seq}, {plural(nkeys, 'key')})", lambda: None)

    def _unreplayable(self, sb, view, pre) -> set:
        max_value = sb.btree_node_size // 2 - 4096
        skip = set()
        for seq, bid, key, why in unreplayable_keys(view, max_value):
            skip.add((seq, bid, key))
            self.rep.problem(Err.journal_key_bad, f"journal entry {seq}: key "
                             f"{describe_key(bid, key)}: {why}; skipped", lambda: None)
        return skip

    def summary(self) -> str:
        rep = self.rep
        if self.skipped:
            return f"{self.name}: clean (use -f to check anyway)"
        nerr, fixed, unfixed = rep.counts()
        if any(INFO[p.err].severity == "fatal" for p in rep.problems):
            status = "check aborted"
        elif not nerr:
            status = "clean"
        elif not unfixed:
            status = f"{nerr} errors, all fixed"
        else:
            status = f"{nerr} errors, {fixed} fixed, {unfixed} NOT fixed"
        stats = ""
        if self.ctx is not None and self.rep.pass_no >= 12:
            m = self.ctx.model
            ndirs = sum(1 for r in m.inodes.values() if stat.S_ISDIR(r.mode))
            stats = (f"; {len(m.inodes)} inodes ({ndirs} directories), {m.nextents} extents, "
                     f"{self.pre.nodes} btree nodes")
        return f"{self.name}: {status}{stats}"


@contextmanager
def fewer_gc_passes(young: int = 50_000):
    """The passes build one small record per inode that lives as long as the run;
    the default thresholds would have the collector traverse them again and again
    (a tenth of the run on a million files). Cycles are still collected, only
    after more allocations."""
    old = gc.get_threshold()
    gc.set_threshold(max(young, old[0]), *old[1:])
    try:
        yield
    finally:
        gc.set_threshold(*old)


def fsck_device(dev, opts: FsckOptions | None = None, *, name: str = "image",
                out=None, ask_in=None, progress_out=None,
                progress_lines: bool = False) -> FsckResult:
    """Check (and, by opts.mode, repair) the filesystem on an open device.
    progress_out gets a progress bar, or with progress_lines e2fsck's -C lines."""
    opts = opts or FsckOptions()
    out = out if out is not None else sys.stdout
    rep = Reporter(mode=opts.mode, verbose=opts.verbose, out=out, ask_in=ask_in,
                   progress_out=progress_out, progress_lines=progress_lines, device=name)
    # Repairs are staged and written only if the check runs to its end: an
    # fsck that cannot finish leaves the image as it found it.
    staged = StagedDevice(dev) if opts.mode != MODE_NO else None
    run = Run(staged or dev, opts, rep, name)
    finished = False
    try:
        with fewer_gc_passes():
            run.go()
        finished = True
    except FsckAbort:
        pass
    except Exception as e:
        if os.environ.get("PYFS_FSCK_DEBUG"):
            traceback.print_exc()
        rep._record(Problem(Err.internal_error, f"pass {rep.pass_no} "
                            f"({PASS_NAMES[rep.pass_no]}) failed: {type(e).__name__}: {e}",
                            False, rep.pass_no))
    finally:
        rep.end_pass()
        rep.clear_progress()
    summary = run.summary()
    if staged is not None:
        if finished:
            staged.commit()
        else:
            dropped = len(staged.stage.blocks) if staged.stage is not None else 0
            staged.abort()
            rep.undo_fixes()
            if dropped:
                summary += "; nothing was written (the image is as it was)"
    out.write(summary + "\n")
    out.flush()
    return FsckResult(rep.exit_code(), rep.problems, summary)


def fsck_path(path: str, opts: FsckOptions, *, out=None, ask_in=None,
              progress_out=None, progress_lines: bool = False) -> FsckResult:
    """Open path exclusively (read-only for -n) and check it."""
    out = out if out is not None else sys.stdout
    try:
        dev = open_device(path, read_only=opts.mode == MODE_NO, exclusive=True)
    except DeviceBusy:
        msg = f"{path} is in use (mounted?); refusing to check/repair it"
        return FsckResult(EXIT_OPERATIONAL, [], msg)
    except OSError as e:
        return FsckResult(EXIT_OPERATIONAL, [], f"cannot open {path}: {e.strerror or e}"
                          if not e.strerror or path not in e.strerror else e.strerror)
    try:
        return fsck_device(dev, opts, name=path, out=out, ask_in=ask_in,
                           progress_out=progress_out, progress_lines=progress_lines)
    finally:
        dev.close()


def check_engine(eng, verify_data: bool = False) -> list[str]:
    """Passes 3..12 over a live, mounted engine, changing nothing: the problems
    found, one line each (the t3 tests run this after every workload)."""
    rep = Reporter(mode=MODE_NO, out=io.StringIO())
    ctx = Ctx(eng.dev, eng.sb, eng, rep, FsckOptions(check_data=verify_data))
    try:
        for p in recovery_passes(RunsAt.FSCK):
            if p.name in ENGINE_CHECKS:
                rep.start_pass(p.fsck_pass)
                ENGINE_CHECKS[p.name](ctx)
    except Exception as e:
        return [f"[{int(Err.internal_error)} internal_error] pass {rep.pass_no}: "
                f"{type(e).__name__}: {e}"]
    return [p.line() for p in rep.problems if INFO[p.err].severity != "info"]
