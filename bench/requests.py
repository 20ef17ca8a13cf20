"""What one FUSE request costs: pyfs beside fuse2fs, per syscall.

    .venv/bin/python bench/requests.py [--ops N] [--files N] [--reps N]
        [--peers pyfs,fuse2fs] [--trace] [--quick] [--results-dir DIR]

For each peer (default pyfs and fuse2fs; also pyfs-stock, pyfs on pyfuse3's
stock session loop, and fuse2fs-dp, fuse2fs with the kernel's
default_permissions) on a fresh 1 GiB image, a client process (a
bench/workloads.py worker, timing each syscall) measures:

1. `getxattr` of a missing name on one file: one round trip through the
   kernel and the daemon that does almost no filesystem work. Measured three
   ways: with client and daemon free to run anywhere, both pinned to CPU 0,
   and pinned to different CPUs (on machines with two or more CPUs), which
   separates the daemon's own cost from the cost of a cross-CPU wake-up.
2. fs_mark `-S 1`'s sequence per file, syscall by syscall: `mkdir` of the
   existing directory (fs_mark does it for every file; one LOOKUP),
   `open(O_CREAT|O_TRUNC)` (LOOKUP + CREATE), a 4 KiB `write` (the kernel's
   `security.capability` GETXATTR + WRITE), `fsync`, `close`.

--reps N repeats everything for every peer, the peer order rotated per
repetition, and reports medians. Ratios are fuse2fs time / pyfs time (above 1: pyfs is
faster).

--trace (root; mounts tracefs if needed) also counts the FUSE requests the
kernel sends each peer per file, from the `fuse/fuse_request_send`
tracepoint in a private tracefs instance filtered by the connection, for
fs_mark -S 1 (1 thread), the `rm -rf` of its directory, a tree create
(files of 1 KiB in 4 directories) and its `rm -rf`, with each phase's time.

Results: a table, and bench/results/requests-<timestamp>.json (and
requests-latest.json).
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import workloads as wl  # noqa: E402

PEER_KINDS = {**wl.PEER_KINDS, "fuse2fs-dp": (wl.Fuse2fsPeer, "default_permissions")}
BASE = "fuse2fs"
STEPS = wl.FSMARK_STEPS
TRACE_DIRS = 4


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ops", type=int, default=5000, help="getxattr round trips per placement")
    p.add_argument("--files", type=int, default=1000,
                   help="files for the fs_mark sequence and the traced workloads")
    p.add_argument("--reps", type=int, default=1, help="interleaved repetitions (medians)")
    p.add_argument("--peers", default="pyfs,fuse2fs",
                   help=f"comma-separated, from {','.join(PEER_KINDS)}")
    p.add_argument("--trace", action="store_true",
                   help="count FUSE requests per file through tracefs")
    p.add_argument("--quick", action="store_true", help="smoke run: 300 ops, 100 files")
    p.add_argument("--results-dir", default=str(HERE / "results"))
    a = p.parse_args(argv)
    if a.quick:
        a.ops, a.files = 300, 100
    a.peers = [x.strip() for x in a.peers.split(",") if x.strip()]
    for x in a.peers:
        if x not in PEER_KINDS:
            p.error(f"unknown peer {x!r} (known: {', '.join(PEER_KINDS)})")
    if a.reps < 1 or a.files < TRACE_DIRS:
        p.error(f"--reps must be at least 1 and --files at least {TRACE_DIRS}")
    return a


def make_peer(name: str, workdir: Path) -> wl.Peer:
    cls, opts = PEER_KINDS[name]
    return cls(name, workdir, 1 << 30, opts)


# ---------------------------------------------------------------------------
# Round trips and fs_mark's syscalls


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


class DaemonCPU:
    """CPU time a daemon uses between two points: the sum of its threads'
    schedstat run times (ns), unless a thread ended meanwhile (libfuse's
    workers come and go) and took its time along: then the process's
    utime + stime, which keep the time of ended threads, in clock ticks.
    Unlike elapsed time, machine load does not inflate it."""

    TICK_NS = 1e9 / os.sysconf("SC_CLK_TCK")

    def __init__(self, pid: int):
        self.pid = pid
        self.threads, self.ticks = self._sample()

    def _sample(self) -> tuple[dict[str, int], int]:
        threads = {}
        for tid in os.listdir(f"/proc/{self.pid}/task"):
            try:
                with open(f"/proc/{self.pid}/task/{tid}/schedstat") as f:
                    threads[tid] = int(f.read().split()[0])
            except (OSError, ValueError, IndexError):
                pass        # a thread that just ended
        with open(f"/proc/{self.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return threads, int(fields[11]) + int(fields[12])

    def us(self) -> float:
        """Microseconds of CPU since construction."""
        threads, ticks = self._sample()
        if self.threads.keys() <= threads.keys():
            return (sum(threads.values()) - sum(self.threads.values())) / 1e3
        return (ticks - self.ticks) * self.TICK_NS / 1e3


def measure(peer: wl.Peer, args) -> dict:
    out: dict = {"getxattr_us": {}, "getxattr_cpu_us": {}}
    pid = peer.proc.pid
    f = peer.mnt / "x"
    f.write_bytes(b"x")
    everywhere = os.sched_getaffinity(0)
    for name, ccpu, dcpu in placements():
        pin_daemon(pid, {dcpu} if dcpu >= 0 else everywhere)
        cpu = DaemonCPU(pid)
        out["getxattr_us"][name] = wl.worker("getxattr-lat", f, args.ops, ccpu,
                                             timeout=600)["us"]
        out["getxattr_cpu_us"][name] = cpu.us() / args.ops
    pin_daemon(pid, everywhere)
    cpu = DaemonCPU(pid)
    out["steps_us"] = wl.worker("fsmark-steps", peer.mnt, args.files, timeout=600)
    out["steps_us"]["total"] = sum(out["steps_us"][s] for s in STEPS)
    out["steps_us"]["daemon CPU"] = cpu.us() / args.files
    return out


# ---------------------------------------------------------------------------
# FUSE requests per file, from the kernel's tracepoint


class TraceError(Exception):
    pass


_OPCODE = re.compile(r"opcode \d+ \((\w+)\)")
_ENTRIES = re.compile(r"entries-in-buffer/entries-written: (\d+)/(\d+)")


def tracefs_root() -> Path:
    for root in (Path("/sys/kernel/tracing"), Path("/sys/kernel/debug/tracing")):
        if (root / "instances").is_dir():
            return root
    root = Path("/sys/kernel/tracing")
    res = subprocess.run(["mount", "-t", "tracefs", "nodev", str(root)],
                         capture_output=True, text=True)
    if res.returncode or not (root / "instances").is_dir():
        raise TraceError(f"no tracefs at {root}: {res.stderr.strip() or 'mount failed'}")
    return root


class FuseTrace:
    """Counts the requests the kernel sends one FUSE connection, by opcode,
    in a tracefs instance of our own (other tracing on the machine is left
    alone)."""

    BUFFER_KB = 16384               # per CPU; an event takes about 40 bytes

    def __init__(self, mnt: Path):
        event = tracefs_root() / "events" / "fuse" / "fuse_request_send"
        if not event.is_dir():
            raise TraceError("the kernel has no fuse/fuse_request_send tracepoint")
        self.inst = tracefs_root() / "instances" / f"pyfs-requests-{os.getpid()}"
        self.inst.mkdir()
        self.event = self.inst / "events" / "fuse" / "fuse_request_send"
        try:
            (self.inst / "buffer_size_kb").write_text(str(self.BUFFER_KB))
            dev = os.stat(mnt).st_dev      # the connection id: the superblock's dev_t
            (self.event / "filter").write_text(
                f"connection == {os.major(dev) << 20 | os.minor(dev)}")
        except OSError as e:
            self.inst.rmdir()
            raise TraceError(f"cannot set up {self.inst}: {e}") from None

    def close(self) -> None:
        (self.event / "enable").write_text("0")
        self.inst.rmdir()

    def count(self, fn) -> tuple[Counter, float]:
        """Run fn(); return the requests sent meanwhile and its seconds."""
        (self.inst / "trace").write_text("")
        (self.event / "enable").write_text("1")
        t0 = time.perf_counter()
        try:
            fn()
        finally:
            secs = time.perf_counter() - t0
            (self.event / "enable").write_text("0")
        text = (self.inst / "trace").read_text()
        m = _ENTRIES.search(text)
        if m and m.group(1) != m.group(2):
            raise TraceError(f"trace buffer overrun ({m.group(1)} of {m.group(2)} events)")
        return Counter(_OPCODE.findall(text)), secs


def _fsmark(top: Path, files: int, timeout: float) -> None:
    top.mkdir()
    wl.run(["fs_mark", "-S", "1", "-t", "1", "-n", str(files), "-s", "4096", "-L", "1",
            "-k", "-d", "t0", "-l", str(top.parent / "fs_mark.log")],
           timeout=timeout, cwd=str(top))


def trace_phases(peer: wl.Peer, files: int) -> dict:
    """FUSE requests per file and seconds of each phase."""
    timeout = 600.0
    fsm, tree = peer.mnt / "fsmark", peer.mnt / "tree"
    phases = [
        ("fs_mark -S 1", lambda: _fsmark(fsm, files, timeout)),
        ("rm -rf fs_mark", lambda: wl.run(["rm", "-rf", str(fsm)], timeout=timeout)),
        ("tree create", lambda: wl.worker("tree-create", tree, files, TRACE_DIRS, 1024,
                                          timeout=timeout)),
        ("rm -rf tree", lambda: wl.run(["rm", "-rf", str(tree)], timeout=timeout)),
    ]
    out = {}
    tr = FuseTrace(peer.mnt)
    try:
        for name, fn in phases:
            meter = DaemonCPU(peer.proc.pid)
            ops, secs = tr.count(fn)
            cpu = meter.us()
            out[name] = {"seconds": secs, "files": files, "cpu_us_per_file": cpu / files,
                         "cpu_us_per_request": cpu / max(1, sum(ops.values())),
                         "per_file": sum(ops.values()) / files,
                         "requests": dict(ops.most_common())}
    finally:
        tr.close()
    return out


# ---------------------------------------------------------------------------
# Runs and report


def run_peer(name: str, workdir: Path, args, trace: bool) -> dict:
    peer = make_peer(name, workdir)
    try:
        peer.start()
        if trace:
            return trace_phases(peer, args.files)
        return measure(peer, args)
    finally:
        peer.stop()


def medians(runs: list[dict]) -> dict:
    out: dict = {}
    for key in ("getxattr_us", "getxattr_cpu_us", "steps_us"):
        out[key] = {k: statistics.median(r[key][k] for r in runs) for k in runs[0][key]}
    return out


def trace_medians(runs: list[dict]) -> dict:
    """The first run's request counts; the medians of the times."""
    out = {}
    for phase, first in runs[0].items():
        out[phase] = dict(first)
        for key in ("seconds", "cpu_us_per_file", "cpu_us_per_request"):
            out[phase][key] = statistics.median(r[phase][key] for r in runs)
    return out


def _ratio_cols(peers: list[str]) -> list[str]:
    return [p for p in peers if p != BASE] if BASE in peers else []


def report(res: dict, peers: list[str]) -> str:
    cols = _ratio_cols(peers)
    names = [f"{BASE}/{p}" for p in cols]
    head = f"  {'':22}" + "".join(f"{p:>12}" for p in peers) + \
        "".join(f"{n:>{len(n) + 2}}" for n in names)

    def row(label: str, vals: dict[str, float]) -> str:
        return f"  {label:22}" + "".join(f"{vals[p]:12.1f}" for p in peers) + \
            "".join(f"{vals[BASE] / vals[p]:{len(n) + 1}.2f}x" for p, n in zip(cols, names))

    lines = ["one getxattr round trip (us), and the daemon's CPU time for it", head]
    for name in res[peers[0]]["getxattr_us"]:
        lines.append(row(name, {p: res[p]["getxattr_us"][name] for p in peers}))
    for name in res[peers[0]]["getxattr_cpu_us"]:
        lines.append(row(f"  CPU, {name}", {p: res[p]["getxattr_cpu_us"][name] for p in peers}))
    lines += ["", "fs_mark -S 1 sequence, per file (us)", head]
    for s in (*STEPS, "total", "daemon CPU"):
        lines.append(row(s, {p: res[p]["steps_us"][s] for p in peers}))
    if cols:
        lines.append("  (ratios above 1: that peer is faster than fuse2fs)")
    return "\n".join(lines)


def trace_report(traces: dict, peers: list[str]) -> str:
    lines = ["FUSE requests per file (tracefs); the phase's seconds; daemon CPU us per request"]
    for phase in traces[peers[0]]:
        lines.append(f"  {phase}")
        for p in peers:
            t = traces[p][phase]
            n = t["files"]
            each = ", ".join(f"{op.removeprefix('FUSE_')} {c / n:.2f}"
                             for op, c in t["requests"].items() if c / n >= 0.005)
            lines.append(f"    {p:12} {t['per_file']:6.2f}/file {t['seconds']:7.2f} s "
                         f"{t['cpu_us_per_request']:6.1f} us   {each}")
    return "\n".join(lines)


def rotated(seq: list[str], k: int) -> list[str]:
    k %= len(seq)
    return seq[k:] + seq[:k]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    parent = os.environ.get("PYFS_BENCH_DIR") or None
    if parent:
        os.makedirs(parent, exist_ok=True)
    res: dict = {"when": time.strftime("%Y-%m-%d %H:%M:%S"), "args": vars(args), "runs": [],
                 "trace_runs": []}
    runs: dict[str, list[dict]] = {p: [] for p in args.peers}
    traces: dict[str, list[dict]] = {p: [] for p in args.peers}
    with tempfile.TemporaryDirectory(prefix="pyfs-requests-", dir=parent) as tmp:
        try:
            for rep in range(args.reps):
                for name in rotated(args.peers, rep):
                    print(f"rep {rep + 1}: {name} ...", flush=True)
                    runs[name].append(run_peer(name, Path(tmp), args, trace=False))
                    res["runs"].append({"rep": rep, "peer": name, **runs[name][-1]})
                    if args.trace:
                        traces[name].append(run_peer(name, Path(tmp), args, trace=True))
                        res["trace_runs"].append({"rep": rep, "peer": name,
                                                  **traces[name][-1]})
        except TraceError as e:
            print(f"requests.py: --trace: {e}", file=sys.stderr)
            return 1
        finally:
            for peer in list(wl._LIVE_FUSE.values()):
                peer.stop()
    for name in args.peers:
        res[name] = medians(runs[name])
    if args.trace:
        res["trace"] = {name: trace_medians(traces[name]) for name in args.peers}
    print()
    print(report(res, args.peers))
    if args.trace:
        print()
        print(trace_report(res["trace"], args.peers))
    wl.save_results(res, args.results_dir, "requests")
    return 0


if __name__ == "__main__":
    sys.exit(main())
