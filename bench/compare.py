"""pyfs beside its peers, in one run, interleaved so machine noise hits all alike.

    .venv/bin/python bench/compare.py [--reps N] [--size 2G] [--quick]
        [--peers pyfs,pyfs-wb4096,fuse2fs,ext4] [--workloads fsmark_s1_t1,...]
        [--results-dir DIR]

Peers: pyfs (default mount options), pyfs-wb4096 (pyfs with
-o node_dirty_bytes=4096, the old write-a-node-every-4-KiB behaviour; run
for the fs_mark workloads only), fuse2fs (Debian's ext4 over FUSE) and ext4
(kernel ext4 on a loop device, the physical reference).  Every peer gets a
fresh sparse image of the same size for every workload run, under a temp dir
(PYFS_BENCH_DIR chooses where).

For each repetition, for each workload, each peer runs in turn, the order
rotated per repetition.  Reported figures are medians over repetitions; the
ratios are direction-aware (>1 means pyfs is better).  For pyfs runs the
counters of `pyfs stats --json` are sampled before and after each workload
and between its phases (fs_mark / rm -rf, create / rm -rf, write / read).

Writes bench/results/compare-<timestamp>.{json,png} and latest.{json,png},
and prints a table with the targets marked PASS/MISS.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import workloads as wl  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
BASE = "fuse2fs"               # the peer the targets are set against
REF = "ext4"
PYFS = "pyfs"
WB = "pyfs-wb4096"
STOCK = "pyfs-stock"           # pyfs on pyfuse3's stock session loop (not run by default)
ALL_PEERS = [PYFS, WB, BASE, REF]
KNOWN_PEERS = [PYFS, STOCK, WB, BASE, REF]


@dataclass(frozen=True)
class Metric:
    key: str
    label: str
    unit: str
    higher_better: bool
    target: float | None = None      # minimum ratio against fuse2fs


@dataclass(frozen=True)
class Workload:
    name: str
    title: str
    run: object                      # callable(peer, scale) -> dict
    metrics: tuple[Metric, ...]
    wb_variant: bool = False         # also run pyfs-wb4096


def _fsmark(sync: int, threads: int):
    return lambda peer, scale: wl.fsmark(peer, scale, sync, threads)


def _fsmark_workload(sync: int, threads: int, target: float) -> Workload:
    tag = f"fs_mark -S {sync} -t {threads}"
    return Workload(
        f"fsmark_s{sync}_t{threads}", f"{tag}, 4 KiB files", _fsmark(sync, threads),
        (Metric("files_per_s", tag, "files/s", True, target),
         Metric("rm_s", "rm -rf of that tree", "s", False, 1.0)),
        wb_variant=True)


WORKLOADS: dict[str, Workload] = {w.name: w for w in [
    _fsmark_workload(1, 1, 1.5),
    _fsmark_workload(1, 2, 2.0),
    _fsmark_workload(0, 1, 1.0),
    _fsmark_workload(0, 2, 1.0),
    Workload("tree", "small-file tree", wl.tree,
             (Metric("create_s", "create tree", "s", False, 1.0),
              Metric("rm_s", "rm -rf tree", "s", False, 1.0))),
    Workload("seq", "sequential 1 MiB dd", wl.seq,
             (Metric("write_mib_s", "dd write conv=fsync", "MiB/s", True, 1.0),
              Metric("read_mib_s", "dd cold read", "MiB/s", True, 1.0))),
    Workload("fdatasync", "4 KiB pwrite+fdatasync", wl.fdatasync_lat,
             (Metric("p50_us", "pwrite+fdatasync p50", "us", False, 1.0),
              Metric("p99_us", "pwrite+fdatasync p99", "us", False, 1.0))),
    Workload("appends", "4-byte appends to one open file", wl.appends,
             (Metric("appends_per_s", "4-byte appends", "1/s", True, 1.0),)),
    Workload("meta_fsync", "metadata ops while another process fsyncs", wl.meta_lat,
             (Metric("create_p99_us", "create p99 (fsync load)", "us", False, 1.0),
              Metric("stat_p99_us", "stat p99 (fsync load)", "us", False, 1.0),
              Metric("unlink_p99_us", "unlink p99 (fsync load)", "us", False, 1.0),
              Metric("idle_create_p99_us", "create p99 (idle)", "us", False),
              Metric("bg_fsyncs_per_s", "background fsyncs/s", "1/s", True))),
]}

STAT_KEYS = ["btree_node_writes", "btree_node_write_bytes", "journal_writes",
             "journal_write_bytes", "journal_flushes", "discards", "bounces"]
NODE_WRITES_TARGET = 80.0          # % fewer btree node writes than pyfs-wb4096
INTERNALS_WORKLOAD = "fsmark_s1_t1"


# ---------------------------------------------------------------------------
# Arguments


def parse_size(text: str) -> int:
    t = text.strip().upper().removesuffix("B").removesuffix("I")
    mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
    if t and t[-1] in mult:
        return int(float(t[:-1]) * mult[t[-1]])
    return int(t)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="workloads: " + ", ".join(WORKLOADS))
    p.add_argument("--reps", type=int, default=3, help="repetitions (default 3)")
    p.add_argument("--size", default=None,
                   help="image size of every peer (default 2G; 512M with --quick)")
    p.add_argument("--quick", action="store_true",
                   help="tiny workloads (fs_mark 200 files, 1,000-file tree, 16 MiB dd)")
    p.add_argument("--peers", default=",".join(ALL_PEERS),
                   help=f"comma-separated, from {','.join(KNOWN_PEERS)} "
                        f"(default {','.join(ALL_PEERS)})")
    p.add_argument("--workloads", default=",".join(WORKLOADS),
                   help="comma-separated workload names (default all)")
    p.add_argument("--results-dir", default=str(RESULTS),
                   help="where the JSON and PNG go (default bench/results)")
    p.add_argument("--no-chart", action="store_true", help="skip the PNG")
    args = p.parse_args(argv)
    args.peers = [x.strip() for x in args.peers.split(",") if x.strip()]
    args.workloads = [x.strip() for x in args.workloads.split(",") if x.strip()]
    for x in args.peers:
        if x not in wl.PEER_KINDS:
            p.error(f"unknown peer {x!r} (known: {', '.join(wl.PEER_KINDS)})")
    for x in args.workloads:
        if x not in WORKLOADS:
            p.error(f"unknown workload {x!r} (known: {', '.join(WORKLOADS)})")
    if args.reps < 1:
        p.error("--reps must be at least 1")
    args.size_bytes = parse_size(args.size or ("512M" if args.quick else "2G"))
    return args


# ---------------------------------------------------------------------------
# Running


class Interrupted(Exception):
    pass


def _on_signal(signum, _frame):
    raise KeyboardInterrupt(f"signal {signum}")


def peers_for(w: Workload, peers: list[str]) -> list[str]:
    return [p for p in peers if p != WB or w.wb_variant]


def rotated(seq: list[str], k: int) -> list[str]:
    if not seq:
        return seq
    k %= len(seq)
    return seq[k:] + seq[:k]


def run_one(peer_name: str, w: Workload, scale: wl.Scale, workdir: Path,
            size: int) -> dict:
    rec: dict = {"peer": peer_name, "workload": w.name, "metrics": {}, "error": None}
    t0 = time.perf_counter()
    peer = wl.make_peer(peer_name, workdir, size)
    try:
        peer.start()
        peer.mark("start")
        rec["metrics"] = w.run(peer, scale)
        peer.mark("end")
    except wl.BenchError as e:
        rec["error"] = str(e)
    finally:
        try:
            peer.stop()
        except wl.BenchError as e:
            # The figures were measured; a failed unmount is reported, not
            # held against them.
            rec["cleanup_error"] = str(e)
        if (rec["error"] or rec.get("cleanup_error")) and peer.final_log:
            rec["daemon_log"] = peer.final_log
        if peer.marks:
            rec["stats_delta"], rec["stats_phases"] = peer.counter_deltas()
        if peer.stats_error:
            rec["stats_error"] = peer.stats_error
        rec["elapsed_s"] = round(time.perf_counter() - t0, 3)
    return rec


def run_all(args, scale: wl.Scale, workdir: Path, log) -> tuple[list[dict], bool]:
    runs: list[dict] = []
    interrupted = False
    try:
        for rep in range(args.reps):
            for wname in args.workloads:
                w = WORKLOADS[wname]
                order = rotated(peers_for(w, args.peers), rep)
                for pos, peer_name in enumerate(order):
                    log(f"[rep {rep + 1}/{args.reps}] {wname:<13} {peer_name:<12} ", end="")
                    rec = run_one(peer_name, w, scale, workdir, args.size_bytes)
                    rec.update(rep=rep, position=pos)
                    runs.append(rec)
                    if rec["error"]:
                        log(f"ERROR {rec['error'][:150]}")
                    elif rec.get("cleanup_error"):
                        log(f"{rec['elapsed_s']:6.1f}s CLEANUP ERROR "
                            f"{rec['cleanup_error'][:150]}")
                    else:
                        shown = {k: round(v, 1) for k, v in rec["metrics"].items()
                                 if k in {m.key for m in w.metrics}}
                        log(f"{rec['elapsed_s']:6.1f}s {shown}")
    except KeyboardInterrupt:
        interrupted = True
        log("\ninterrupted: cleaned up; writing partial results")
    return runs, interrupted


# ---------------------------------------------------------------------------
# Summaries


def _median(values):
    vals = [v for v in values if isinstance(v, (int, float))]
    return statistics.median(vals) if vals else None


def summarize(runs: list[dict], args) -> dict:
    medians: dict[str, dict[str, dict[str, float | None]]] = {}
    stat_medians: dict[str, dict[str, dict[str, float | None]]] = {}
    phase_medians: dict[str, dict[str, dict[str, dict[str, float | None]]]] = {}
    for wname in args.workloads:
        w = WORKLOADS[wname]
        for peer in peers_for(w, args.peers):
            rs = [r for r in runs if r["peer"] == peer and r["workload"] == wname
                  and not r["error"]]
            keys = sorted({k for r in rs for k in r["metrics"]} |
                          {m.key for m in w.metrics})
            medians.setdefault(peer, {})[wname] = {
                k: _median(r["metrics"].get(k) for r in rs) for k in keys}
            deltas = [r["stats_delta"] for r in rs if r.get("stats_delta")]
            if deltas:
                stat_medians.setdefault(peer, {})[wname] = _median_dict(deltas)
            phases = sorted({p for r in rs for p in r.get("stats_phases", {})})
            for ph in phases:
                ds = [r["stats_phases"][ph] for r in rs if ph in r.get("stats_phases", {})]
                phase_medians.setdefault(peer, {}).setdefault(wname, {})[ph] = \
                    _median_dict(ds)

    ratios: dict = {}
    targets: list[dict] = []
    for wname in args.workloads:
        w = WORKLOADS[wname]
        for m in w.metrics:
            mine = medians.get(PYFS, {}).get(wname, {}).get(m.key)
            for other in (BASE, REF):
                theirs = medians.get(other, {}).get(wname, {}).get(m.key)
                r = ratio(mine, theirs, m.higher_better)
                ratios.setdefault(wname, {}).setdefault(m.key, {})[other] = r
            if m.target is not None and PYFS in args.peers and BASE in args.peers:
                r = ratios[wname][m.key][BASE]
                targets.append({
                    "what": f"{m.label} vs {BASE}", "workload": wname, "metric": m.key,
                    "value": r, "target": m.target, "unit": "x",
                    "status": "PASS" if r is not None and r >= m.target else "MISS"})

    internals = internals_summary(phase_medians, medians, args)
    targets += internals.pop("targets")
    return {"medians": medians, "ratios": ratios, "stats_medians": stat_medians,
            "stats_phase_medians": phase_medians, "pyfs_internals": internals,
            "targets": targets}


def _median_dict(dicts: list[dict]) -> dict:
    keys = sorted({k for d in dicts for k in d})
    return {k: _median(d.get(k) for d in dicts) for k in keys}


def ratio(mine, theirs, higher_better: bool):
    """>1 means pyfs is better: throughput pyfs/peer, time peer/pyfs."""
    if mine is None or theirs is None:
        return None
    if higher_better:
        return mine / theirs if theirs else None
    return theirs / mine if mine else None


def _reduction(a, b):
    return 100.0 * (1 - a / b) if a is not None and b else None


def internals_summary(phase_medians: dict, medians: dict, args) -> dict:
    """pyfs vs pyfs-wb4096 on the fs_mark workloads: counters of the fs_mark
    phase (and of the rm -rf phase), node-write reduction, rm -rf speed."""
    out: dict = {"workloads": {}, "targets": []}
    rm_sum = {PYFS: 0.0, WB: 0.0}
    rm_ok = True
    for wname in args.workloads:
        if not WORKLOADS[wname].wb_variant:
            continue
        row: dict = {}
        for peer in (PYFS, WB):
            ph = phase_medians.get(peer, {}).get(wname, {})
            s, rm = ph.get("fsmark"), ph.get("rm", {})
            if s:
                files = medians.get(peer, {}).get(wname, {}).get("files")
                row[peer] = {k: s.get(k) for k in STAT_KEYS}
                if files and s.get("btree_node_writes") is not None:
                    row[peer]["node_writes_per_file"] = s["btree_node_writes"] / files
                row[peer]["rm_btree_node_writes"] = rm.get("btree_node_writes")
                row[peer]["rm_whiteouts_written"] = rm.get("btree_whiteouts_written")
            rm_s = medians.get(peer, {}).get(wname, {}).get("rm_s")
            if rm_s is None:
                rm_ok = False
            else:
                rm_sum[peer] += rm_s
        a, b = row.get(PYFS, {}), row.get(WB, {})
        row["node_writes_reduction_pct"] = _reduction(a.get("btree_node_writes"),
                                                      b.get("btree_node_writes"))
        if all(x.get(k) is not None for x in (a, b)
               for k in ("journal_write_bytes", "btree_node_write_bytes")):
            row["metadata_bytes_reduction_pct"] = _reduction(
                a["journal_write_bytes"] + a["btree_node_write_bytes"],
                b["journal_write_bytes"] + b["btree_node_write_bytes"])
        rm_a = medians.get(PYFS, {}).get(wname, {}).get("rm_s")
        rm_b = medians.get(WB, {}).get(wname, {}).get("rm_s")
        if rm_a and rm_b:
            row["rm_speed_vs_wb4096"] = rm_b / rm_a
        out["workloads"][wname] = row

    if PYFS in args.peers and WB in args.peers and INTERNALS_WORKLOAD in args.workloads:
        red = out["workloads"].get(INTERNALS_WORKLOAD, {}).get("node_writes_reduction_pct")
        out["targets"].append({
            "what": f"btree node writes during {INTERNALS_WORKLOAD}: % fewer than {WB}",
            "workload": INTERNALS_WORKLOAD, "metric": "node_writes_reduction_pct",
            "value": red, "target": NODE_WRITES_TARGET, "unit": "%",
            "status": "PASS" if red is not None and red >= NODE_WRITES_TARGET else "MISS"})
        rs = rm_sum[WB] / rm_sum[PYFS] if rm_ok and rm_sum[PYFS] else None
        out["rm_speed_vs_wb4096"] = rs
        out["targets"].append({
            "what": f"rm -rf of the fs_mark trees (sum of medians) not slower than {WB}",
            "workload": "fsmark_*", "metric": "rm_speed_vs_wb4096",
            "value": rs, "target": 1.0, "unit": "x",
            "status": "PASS" if rs is not None and rs >= 1.0 else "MISS"})
    return out


# ---------------------------------------------------------------------------
# Output


def fmt(v, digits: int = 1) -> str:
    if v is None:
        return "ERR"
    if isinstance(v, float) and v.is_integer() and abs(v) >= 1:
        v = int(v)
    if isinstance(v, float):
        if abs(v) >= 1000:
            return f"{v:,.0f}"
        if abs(v) >= 100:
            return f"{v:.0f}"
        return f"{v:.{digits}f}" if abs(v) >= 10 else f"{v:.{digits + 1}f}"
    return f"{v:,}" if isinstance(v, int) else str(v)


def rfmt(r: float) -> str:
    if r >= 10:
        return f"{r:.0f}x"
    return f"{r:.2f}x" if r >= 0.1 else f"{r:.2g}x"


def table(rows: list[list[str]], right_from: int = 1) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = []
    for n, r in enumerate(rows):
        cells = [c.ljust(widths[i]) if i < right_from else c.rjust(widths[i])
                 for i, c in enumerate(r)]
        lines.append("  ".join(cells).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def report(summary: dict, args) -> str:
    med, rat = summary["medians"], summary["ratios"]
    peers = [p for p in KNOWN_PEERS if p in args.peers]
    head = ["workload / metric", "unit", *peers]
    if PYFS in peers:
        head += [f"{PYFS}/{o}" for o in (BASE, REF) if o in peers]
    head += ["target", "status"]
    tstatus = {(t["workload"], t["metric"]): t for t in summary["targets"]}
    rows = [head]
    for wname in args.workloads:
        w = WORKLOADS[wname]
        for m in w.metrics:
            r = [f"{wname}: {m.label}", m.unit + (" ^" if m.higher_better else " v")]
            for p in peers:
                if p == WB and not w.wb_variant:
                    r.append("-")
                else:
                    r.append(fmt(med.get(p, {}).get(wname, {}).get(m.key)))
            if PYFS in peers:
                for o in (BASE, REF):
                    if o in peers:
                        v = rat.get(wname, {}).get(m.key, {}).get(o)
                        r.append("ERR" if v is None else rfmt(v))
            t = tstatus.get((wname, m.key))
            r += [f">={m.target:g}x" if t else "", t["status"] if t else ""]
            rows.append(r)
    out = [table(rows, right_from=2),
           "  (^ higher is better, v lower is better; ratios > 1 mean pyfs is better)"]

    internals = summary["pyfs_internals"]["workloads"]
    if internals:
        irows = [["pyfs counters, fs_mark phase", "variant", "node writes", "node bytes",
                  "journal writes", "journal bytes", "journal flushes", "nodes/file",
                  "node writes -%", "rm: node writes", "rm: whiteouts", "rm speed"]]

        def vs_wb(v, show) -> str:
            """The reduction and rm speed compare with the wb4096 variant: "-"
            when it was not run, ERR only when a run of it failed."""
            if WB not in peers:
                return "-"
            return show(v) if v else "ERR"

        for wname, row in internals.items():
            for peer in (PYFS, WB):
                s = row.get(peer)
                if not s:
                    continue
                first = peer == PYFS
                rs = row.get("rm_speed_vs_wb4096")
                irows.append([wname, peer, fmt(s.get("btree_node_writes")),
                              fmt(s.get("btree_node_write_bytes")),
                              fmt(s.get("journal_writes")), fmt(s.get("journal_write_bytes")),
                              fmt(s.get("journal_flushes")),
                              fmt(s.get("node_writes_per_file"), 2),
                              vs_wb(row.get("node_writes_reduction_pct"), fmt) if first else "",
                              fmt(s.get("rm_btree_node_writes")),
                              fmt(s.get("rm_whiteouts_written")),
                              vs_wb(rs, rfmt) if first else ""])
        if len(irows) > 1:
            out += ["", table(irows, right_from=2),
                    "  (deltas of `pyfs stats` over the fs_mark run and over its rm -rf; node "
                    "writes deferred past\n   the run, e.g. to the unmount, are not counted; "
                    "rm speed = wb4096 time / default time)"]

    extra = [t for t in summary["targets"] if t["unit"] == "%" or
             t["metric"] == "rm_speed_vs_wb4096"]
    if extra:
        out.append("")
        for t in extra:
            v = "n/a" if t["value"] is None else f"{t['value']:.1f}{t['unit']}"
            out.append(f"{t['what']}: {v} (target >= {t['target']:g}{t['unit']}) "
                       f"{t['status']}")
    passed = sum(t["status"] == "PASS" for t in summary["targets"])
    out.append(f"\ntargets: {passed}/{len(summary['targets'])} PASS")
    return "\n".join(out)


PEER_COLORS = {PYFS: "#1f77b4", STOCK: "#9467bd", WB: "#aec7e8", BASE: "#ff7f0e", REF: "#7f7f7f"}


def chart(summary: dict, args, path: Path, title: str) -> str | None:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:
        return f"no chart: {e}"
    med, rat = summary["medians"], summary["ratios"]
    panels = [(WORKLOADS[w], m) for w in args.workloads for m in WORKLOADS[w].metrics
              if m.target is not None]
    internals = summary["pyfs_internals"]["workloads"]
    has_nodes = any(r.get(PYFS) and r.get(WB) for r in internals.values())
    n = len(panels) + (1 if has_nodes else 0)
    if n == 0:
        return "no chart: nothing to plot"
    cols = 4
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.3 * rows), squeeze=False)
    peers = [p for p in KNOWN_PEERS if p in args.peers]
    for ax, (w, m) in zip(axes.flat, panels):
        names, vals = [], []
        for p in peers:
            if p == WB and not w.wb_variant:
                continue
            names.append(p)
            vals.append(med.get(p, {}).get(w.name, {}).get(m.key))
        heights = [v or 0 for v in vals]
        bars = ax.bar(range(len(names)), heights, color=[PEER_COLORS[p] for p in names])
        top = max(heights) if any(heights) else 1
        for b, p, v in zip(bars, names, vals):
            if v is None:
                ax.text(b.get_x() + b.get_width() / 2, 0, "ERR", ha="center", va="bottom",
                        color="red", fontsize=8)
                continue
            label = fmt(v)
            r = rat.get(w.name, {}).get(m.key, {}).get(p) if p in (BASE, REF) else None
            if r is not None:
                label += f"\npyfs {rfmt(r)}"
            ax.text(b.get_x() + b.get_width() / 2, b.get_height() + top * 0.02, label,
                    ha="center", va="bottom", fontsize=7)
        ax.set_xticks(range(len(names)), names, fontsize=7)
        ax.set_ylim(0, top * 1.35)
        arrow = "higher is better" if m.higher_better else "lower is better"
        ax.set_title(f"{w.name}: {m.label}", fontsize=8)
        ax.set_ylabel(f"{m.unit} ({arrow})", fontsize=7)
        ax.tick_params(axis="y", labelsize=7)
    used = len(panels)
    if has_nodes:
        ax = axes.flat[used]
        used += 1
        wnames = [w for w, r in internals.items() if r.get(PYFS) and r.get(WB)]
        x = range(len(wnames))
        for i, p in enumerate((PYFS, WB)):
            vals = [internals[w][p].get("btree_node_writes") or 0 for w in wnames]
            ax.bar([j + (i - 0.5) * 0.4 for j in x], vals, width=0.4, color=PEER_COLORS[p],
                   label=p)
        for j, w in enumerate(wnames):
            red = internals[w].get("node_writes_reduction_pct")
            if red is not None:
                ax.text(j, max(internals[w][WB].get("btree_node_writes") or 0, 1) * 1.02,
                        f"-{red:.0f}%", ha="center", va="bottom", fontsize=7)
        ax.set_xticks(list(x), [w.removeprefix("fsmark_") for w in wnames], fontsize=7)
        ax.set_title("pyfs btree node writes during fs_mark (stats delta)", fontsize=8)
        ax.legend(fontsize=7)
        ax.tick_params(axis="y", labelsize=7)
    for ax in list(axes.flat)[used:]:
        ax.axis("off")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return None


def _version(cmd: list[str]) -> str:
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=20)
        return (res.stdout or res.stderr).strip().splitlines()[0]
    except (OSError, subprocess.TimeoutExpired, IndexError):
        return "?"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    scale = wl.Scale.quick() if args.quick else wl.Scale()
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _on_signal)

    def log(msg: str = "", end: str = "\n") -> None:
        print(msg, end=end, flush=True)

    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    meta = {
        "timestamp": stamp, "argv": sys.argv[1:] if argv is None else argv,
        "reps": args.reps, "size": args.size_bytes, "quick": args.quick,
        "peers": args.peers, "workloads": args.workloads, "scale": scale.__dict__,
        "host": platform.node(), "kernel": platform.release(), "cpus": os.cpu_count(),
        "root": wl.is_root(), "pyfs_has_mount": wl.pyfs_has_mount(),
        "versions": {"fs_mark": "fsmark 3.3 (Debian)",
                     "fuse2fs": _version(["fuse2fs", "-V"]),
                     "pyfs": _version([wl.pyfs_command(), "version"])},
        "peer_setup": {p: wl.make_peer(p, Path("/"), 0).describe() for p in args.peers},
    }
    if PYFS in args.peers and not meta["pyfs_has_mount"]:
        log("note: `pyfs mount` does not exist yet; pyfs runs will be recorded as errors")
    base = os.environ.get("PYFS_BENCH_DIR") or None
    if base:
        os.makedirs(base, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="pyfs-compare-", dir=base))
    log(f"compare: {args.reps} rep(s), image {args.size_bytes >> 20} MiB, "
        f"peers {','.join(args.peers)}, workdir {workdir}")
    t0 = time.perf_counter()
    try:
        runs, interrupted = run_all(args, scale, workdir, log)
    finally:
        if wl.mounts_under(workdir):
            log(f"warning: mounts left under {workdir}: {wl.mounts_under(workdir)}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    meta["elapsed_s"] = round(time.perf_counter() - t0, 1)
    meta["interrupted"] = interrupted

    summary = summarize(runs, args)
    result = {"meta": meta, **summary, "runs": runs,
              "errors": [{"rep": r["rep"], "workload": r["workload"], "peer": r["peer"],
                          "error": r["error"] or f"cleanup: {r['cleanup_error']}"}
                         for r in runs if r["error"] or r.get("cleanup_error")]}
    out_dir = Path(args.results_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    jpath = out_dir / f"compare-{stamp}.json"
    jpath.write_text(json.dumps(result, indent=1) + "\n")
    shutil.copyfile(jpath, out_dir / "latest.json")
    text = report(summary, args)
    log("")
    log(text)
    if not args.no_chart:
        ppath = out_dir / f"compare-{stamp}.png"
        why = chart(summary, args, ppath,
                    f"pyfs vs peers, medians of {args.reps} rep(s), {stamp}"
                    + (" (quick)" if args.quick else ""))
        if why:
            log(why)
        else:
            shutil.copyfile(ppath, out_dir / "latest.png")
            log(f"chart: {ppath}")
    if result["errors"]:
        log(f"{len(result['errors'])} run(s) failed; see 'errors' in the JSON")
    log(f"results: {jpath} ({meta['elapsed_s']:.0f} s)")
    return 130 if interrupted else 0


if __name__ == "__main__":
    sys.exit(main())
