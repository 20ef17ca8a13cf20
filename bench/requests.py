"""What one FUSE request costs: pyfs beside fuse2fs, per syscall.

    .venv/bin/python bench/requests.py [--ops N] [--files N] [--quick] [--results-dir DIR]

For each peer (pyfs, fuse2fs) on a fresh 1 GiB image, a client process
(a bench/workloads.py worker, timing each syscall) measures:

1. `getxattr` of a missing name on one file: one round trip through the
   kernel and the daemon that does almost no filesystem work. Measured three
   ways: with client and daemon free to run anywhere, both pinned to CPU 0,
   and pinned to different CPUs (on machines with two or more CPUs), which
   separates the daemon's own cost from the cost of a cross-CPU wake-up.
2. fs_mark `-S 1`'s sequence per file, syscall by syscall: `mkdir` of the
   existing directory (fs_mark does it for every file; one LOOKUP),
   `open(O_CREAT|O_TRUNC)` (LOOKUP + CREATE), a 4 KiB `write` (the kernel's
   `security.capability` GETXATTR + WRITE), `fsync`, `close`.

Ratios are fuse2fs time / pyfs time (above 1: pyfs is faster). Results: a
table, and bench/results/requests-<timestamp>.json (and requests-latest.json).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import workloads as wl  # noqa: E402

PEERS = ("pyfs", "fuse2fs")
STEPS = wl.FSMARK_STEPS


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ops", type=int, default=5000, help="getxattr round trips per placement")
    p.add_argument("--files", type=int, default=1000, help="files for the fs_mark sequence")
    p.add_argument("--quick", action="store_true", help="smoke run: 300 ops, 100 files")
    p.add_argument("--results-dir", default=str(HERE / "results"))
    a = p.parse_args(argv)
    if a.quick:
        a.ops, a.files = 300, 100
    return a


# ---------------------------------------------------------------------------
# Orchestrator


def pin_daemon(pid: int, cpus: set[int]) -> None:
    """Pin every thread of the daemon (the flush thread too)."""
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            os.sched_setaffinity(int(tid), cpus)
        except OSError:
            pass        # a thread that just ended


def placements() -> list[tuple[str, int, int]]:
    """(name, client CPU, daemon CPU); -1: anywhere."""
    out = [("anywhere", -1, -1), ("same CPU", 0, 0)]
    if len(os.sched_getaffinity(0)) >= 2 and {0, 1} <= os.sched_getaffinity(0):
        out.append(("different CPUs", 1, 0))
    return out


def measure(kind: str, workdir: Path, args) -> dict:
    cls = wl.PyfsPeer if kind == "pyfs" else wl.Fuse2fsPeer
    peer = cls(kind, workdir, 1 << 30)
    out: dict = {"getxattr_us": {}}
    try:
        peer.start()
        f = peer.mnt / "x"
        f.write_bytes(b"x")
        everywhere = os.sched_getaffinity(0)
        for name, ccpu, dcpu in placements():
            pin_daemon(peer.proc.pid, {dcpu} if dcpu >= 0 else everywhere)
            out["getxattr_us"][name] = wl.worker("getxattr-lat", f, args.ops, ccpu,
                                                 timeout=600)["us"]
        pin_daemon(peer.proc.pid, everywhere)
        out["steps_us"] = wl.worker("fsmark-steps", peer.mnt, args.files, timeout=600)
        out["steps_us"]["total"] = sum(out["steps_us"][s] for s in STEPS)
    finally:
        peer.stop()
    return out


def report(res: dict) -> str:
    mine, peer = res["pyfs"], res["fuse2fs"]
    lines = ["one getxattr round trip (us)",
             f"  {'placement':16} {'pyfs':>8} {'fuse2fs':>8} {'fuse2fs/pyfs':>13}"]
    for name, v in mine["getxattr_us"].items():
        p = peer["getxattr_us"][name]
        lines.append(f"  {name:16} {v:8.1f} {p:8.1f} {p / v:12.2f}x")
    lines += ["", "fs_mark -S 1 sequence, per file (us)",
              f"  {'syscall':16} {'pyfs':>8} {'fuse2fs':>8} {'fuse2fs/pyfs':>13}"]
    for s in (*STEPS, "total"):
        v, p = mine["steps_us"][s], peer["steps_us"][s]
        lines.append(f"  {s:16} {v:8.1f} {p:8.1f} {p / v:12.2f}x")
    lines.append("  (above 1: pyfs is faster)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    parent = os.environ.get("PYFS_BENCH_DIR") or None
    if parent:
        os.makedirs(parent, exist_ok=True)
    res: dict = {"when": time.strftime("%Y-%m-%d %H:%M:%S"), "args": vars(args)}
    with tempfile.TemporaryDirectory(prefix="pyfs-requests-", dir=parent) as tmp:
        try:
            for kind in PEERS:
                print(f"{kind} ...", flush=True)
                res[kind] = measure(kind, Path(tmp), args)
        finally:
            for peer in list(wl._LIVE_FUSE.values()):
                peer.stop()
    print()
    print(report(res))
    wl.save_results(res, args.results_dir, "requests")
    return 0


if __name__ == "__main__":
    sys.exit(main())
