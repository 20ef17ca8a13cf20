"""Allocator figures: throughput, free-space index scale, and aging quality.

    .venv/bin/python bench/alloc.py [--quick]

1. allocations+frees per second: small files written through the engine's
   data path (alloc_data, extent commit, release) and deleted again, with and
   without backpointers (seed 001 asks what the extra btree update costs).
2. free-space index memory and build time at mount for 1 TiB and 16 TiB
   sparse images (seed 002: ~1 MB of search structure per TB above the
   bottom bitmap; build under 1 s per TB).
3. aging: fill the device several times over with creates, deletes and
   rewrites; report average bounces per allocation, extents per file,
   discards, copygc throughput (MiB moved per second) and write
   amplification ((user bytes + bytes copygc moved) / user bytes), and an
   fsck-style consistency check at the end.
Last line: JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path

from pyfs.alloc.foreground import NoSpace
from pyfs.alloc.freespace import FreeSpaceIndex
from pyfs.device import MemDevice, open_device
from pyfs.engine import Engine
from pyfs.mkfs import format_device

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from enginekit import check_alloc, delete_file, file_extents, write_file  # noqa: E402

GiB = 1 << 30
TiB = 1 << 40


def alloc_rate(n: int, backpointers: bool) -> float:
    dev = MemDevice(256 << 20)
    format_device(dev)
    eng = Engine(dev, backpointers=backpointers)
    data = os.urandom(4096)
    t0 = time.perf_counter()
    for i in range(n):
        write_file(eng, 1000 + i, data)
        if i >= 64:
            delete_file(eng, 1000 + i - 64)
        if i % 512 == 0:
            eng.flush()
    dt = time.perf_counter() - t0
    eng.close()
    return 2 * n / dt          # one allocation and one free per file


def mount_scale(size: int) -> dict:
    """mkfs + mount a sparse image; report index build time and memory."""
    with tempfile.TemporaryDirectory(dir=os.environ.get("PYFS_BENCH_DIR")) as d:
        path = os.path.join(d, "big.img")
        try:
            dev = open_device(path, create_size=size)
        except OSError as e:
            return {"size": size, "error": str(e)}
        format_device(dev)
        t0 = time.perf_counter()
        eng = Engine(dev)
        mount_s = time.perf_counter() - t0
        idx = eng.alloc.index
        mem = idx.memory_breakdown() if hasattr(idx, "memory_breakdown") else {}
        nb = eng.sb.nbuckets
        eng.close()
    t0 = time.perf_counter()
    FreeSpaceIndex(nb, eng.sb.group_buckets, free=True)
    build_s = time.perf_counter() - t0
    return {"size": size, "buckets": nb, "mount_s": round(mount_s, 4),
            "index_build_s": round(build_s, 4), "index_memory": mem}


def aging(size: int, rounds: int, seed: int = 1) -> dict:
    """Creates, deletes and rewrites until `rounds` times the device was written."""
    dev = MemDevice(size)
    format_device(dev)
    eng = Engine(dev)
    rng = random.Random(seed)
    live: dict[int, int] = {}
    written = 0
    nxt = 100
    enospc = 0
    target = rounds * size
    while written < target:
        r = rng.random()
        if live and (r < 0.3 or enospc):
            victim = rng.choice(list(live))
            delete_file(eng, victim)
            del live[victim]
            enospc = 0
            continue
        nbytes = rng.choice((4096, 16384, 65536, 262144, 1 << 20))
        inum = rng.choice(list(live)) if live and r < 0.45 else nxt
        if inum == nxt:
            nxt += 1
        else:
            delete_file(eng, inum)      # rewrite: the file moves, its goal stays
        try:
            write_file(eng, inum, rng.randbytes(nbytes))
        except NoSpace:
            enospc += 1
            live.pop(inum, None)
            delete_file(eng, inum)
            continue
        live[inum] = nbytes
        written += nbytes
    exts = [len(file_extents(eng, i)) for i in live]
    c = eng.counters
    problems = check_alloc(eng)
    out = {
        "device": size, "written": written, "files_live": len(live),
        "avg_bounces_per_request": round(c["alloc_bounces"] / max(1, c["alloc_requests"]), 3),
        "alloc_requests": c["alloc_requests"], "alloc_linear": c["alloc_linear"],
        "extents_per_file": round(sum(exts) / max(1, len(exts)), 3),
        "max_extents_per_file": max(exts, default=0),
        "discards": c["discards"], "buckets_emptied": c["alloc_buckets_emptied"],
        "alloc_journal_waits": c["alloc_journal_waits"], "consistency_problems": len(problems),
        "copygc_buckets_evacuated": c["copygc_buckets_evacuated"],
        "copygc_mib_moved": round(c["copygc_bytes_moved"] / (1 << 20), 2),
        "copygc_mib_per_s": round(c["copygc_bytes_moved"] / (1 << 20)
                                  / max(c["copygc_ns"] / 1e9, 1e-9), 1),
        "write_amplification": round((written + c["copygc_bytes_moved"]) / written, 3),
    }
    eng.close()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small sizes (smoke test)")
    a = ap.parse_args()
    n = 2000 if a.quick else 20000
    res: dict = {}
    with_bp = alloc_rate(n, True)
    without_bp = alloc_rate(n, False)
    res["alloc_free_per_s"] = round(with_bp)
    res["alloc_free_per_s_no_backpointers"] = round(without_bp)
    res["backpointer_cost_ratio"] = round(without_bp / with_bp, 3)
    print(f"allocations+frees/s: {with_bp:,.0f} with backpointers, {without_bp:,.0f} "
          f"without ({without_bp / with_bp:.2f}x)")
    # ext4 (the usual host) caps a file at 16 TiB - 4 KiB: the "16 TiB" image
    # is 2 MiB (one bucket) short of it.
    sizes = [GiB] if a.quick else [GiB, TiB, 16 * TiB - (2 << 20)]
    res["scale"] = []
    for size in sizes:
        r = mount_scale(size)
        res["scale"].append(r)
        print(f"{size / GiB:>8.0f} GiB: {r}")
    res["aging"] = aging(32 << 20 if a.quick else 128 << 20, 2 if a.quick else 4)
    for k, v in res["aging"].items():
        print(f"{'aging ' + k:>32}: {v}")
    print(json.dumps(res))


if __name__ == "__main__":
    main()
