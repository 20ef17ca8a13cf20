"""What one FUSE request costs: pyfs beside fuse2fs, per syscall.

    .venv/bin/python bench/requests.py [--ops N] [--files N] [--quick] [--results-dir DIR]

For each peer (pyfs, fuse2fs) on a fresh 1 GiB image, a client process
(a worker child, timed with perf_counter around each syscall) measures:

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
import json
import os
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import workloads as wl  # noqa: E402

PEERS = ("pyfs", "fuse2fs")
STEPS = ("mkdir", "open", "write", "fsync", "close")


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
# Client side (a child process: a hung mount never hangs the orchestrator)


def client_getxattr(path: str, ops: int) -> dict:
    try:
        os.getxattr(path, "user.pyfs-bench-missing")
    except OSError:
        pass
    t = time.perf_counter()
    for _ in range(ops):
        try:
            os.getxattr(path, "user.pyfs-bench-missing")
        except OSError:
            pass
    return {"us": (time.perf_counter() - t) / ops * 1e6}


def client_steps(top: str, files: int) -> dict:
    d = os.path.join(top, "s")
    os.makedirs(d, exist_ok=True)
    buf = bytes(4096)
    acc = dict.fromkeys(STEPS, 0.0)
    pc = time.perf_counter
    for i in range(files):
        t0 = pc()
        try:
            os.mkdir(d + "/")
        except FileExistsError:
            pass
        t1 = pc()
        fd = os.open(f"{d}/file-{i:08d}-padding-to-fs_mark-length",
                     os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
        t2 = pc()
        os.write(fd, buf)
        t3 = pc()
        os.fsync(fd)
        t4 = pc()
        os.close(fd)
        t5 = pc()
        for name, a, b in zip(STEPS, (t0, t1, t2, t3, t4), (t1, t2, t3, t4, t5)):
            acc[name] += b - a
    return {k: v / files * 1e6 for k, v in acc.items()}


def _client_main(argv: list[str]) -> int:
    mode, path, n = argv[0], argv[1], int(argv[2])
    cpu = int(argv[3]) if len(argv) > 3 else -1
    if cpu >= 0:
        os.sched_setaffinity(0, {cpu})
    res = client_getxattr(path, n) if mode == "getxattr" else client_steps(path, n)
    print(json.dumps(res))
    return 0


def client(mode: str, path: Path, n: int, cpu: int = -1, timeout: float = 600) -> dict:
    res = wl.run([sys.executable, __file__, "--client", mode, str(path), str(n), str(cpu)],
                 timeout=timeout)
    return json.loads(res.stdout.strip().splitlines()[-1])


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
            out["getxattr_us"][name] = client("getxattr", f, args.ops, ccpu)["us"]
        pin_daemon(peer.proc.pid, everywhere)
        out["steps_us"] = client("steps", peer.mnt, args.files)
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
    if sys.argv[1:2] == ["--client"]:
        sys.exit(_client_main(sys.argv[2:]))
    sys.exit(main())
