"""Benchmark the free-space index: build time, memory and operation rate.

Usage: .venv/bin/python bench/freespace_index.py [--ops N] [--no-seed-unit]

Prints one line per configuration, then the figures as JSON on the last line.
The design note's target is ~1 MB of search structure per TB above the bottom
bitmap for 4 KiB units and a build under a second; pyfs indexes buckets
(128 KiB - 2 MiB), so its structure is far smaller. The 4 KiB row is there
only to compare with the note's figure.
"""

from __future__ import annotations

import argparse
import json
import random
import time

from pyfs.alloc.freespace import FreeSpaceIndex

TiB = 1 << 40
CONFIGS = [  # (name, device bytes, bucket bytes)
    ("1TiB/2MiB", TiB, 2 << 20),
    ("16TiB/2MiB", 16 * TiB, 2 << 20),
    ("1TiB/128KiB", TiB, 128 << 10),
]
SEED_UNIT = ("1TiB/4KiB", TiB, 4 << 10)


def timed(fn, *args):
    t = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - t


def measure_build(name: str, device: int, bucket: int, rng: random.Random) -> dict:
    n = device // bucket
    _, t_fill = timed(lambda: FreeSpaceIndex(n, free=True))  # freshly formatted device
    bitmap = rng.randbytes((n + 7) // 8)  # ~half free, scattered: the worst case to build
    idx, t_bytes = timed(FreeSpaceIndex.from_bytes, bitmap, n)
    mem = idx.memory_breakdown()
    tib = device / TiB
    return {
        "config": name, "buckets": n, "levels": idx.levels,
        "build_fill_s": round(t_fill, 4), "build_from_bytes_s": round(t_bytes, 4),
        "bottom_bytes": mem["bottom"], "upper_bytes": mem["upper"],
        "group_bytes": mem["groups"], "upper_bytes_per_tib": round(mem["upper"] / tib),
        "build_s_per_tib": round(t_bytes / tib, 4),
    }


def measure_ops(n: int, ops: int, rng: random.Random) -> dict:
    """find_free from random hints, and take + set_free pairs, on a ~half-full index."""
    idx = FreeSpaceIndex.from_bytes(rng.randbytes((n + 7) // 8), n)
    hints = [rng.randrange(n) for _ in range(ops)]
    t = time.perf_counter()
    for h in hints:
        idx.find_free(h)
    t_find = time.perf_counter() - t
    t = time.perf_counter()
    for h in hints:
        idx.set_free(idx.take(h))  # find + set_used + set_free
    t_cycle = time.perf_counter() - t
    # A nearly full device: searches must climb the levels to find space.
    sparse = FreeSpaceIndex(n)
    for b in range(0, n, 100_003):
        sparse.set_free(b)
    t = time.perf_counter()
    for h in hints:
        sparse.find_free(h)
    t_sparse = time.perf_counter() - t
    return {
        "ops_buckets": n,
        "find_per_s": round(ops / t_find),
        "find_sparse_per_s": round(ops / t_sparse),
        "take_and_free_per_s": round(ops / t_cycle),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ops", type=int, default=200_000, help="operations per rate test")
    ap.add_argument("--no-seed-unit", action="store_true", help="skip the 4 KiB comparison row")
    args = ap.parse_args()
    rng = random.Random(42)
    configs = CONFIGS if args.no_seed_unit else [*CONFIGS, SEED_UNIT]
    builds = []
    for name, device, bucket in configs:
        r = measure_build(name, device, bucket, rng)
        builds.append(r)
        print(f"{name:>12}: {r['buckets']:>10} buckets {r['levels']} levels | build "
              f"fill {r['build_fill_s'] * 1e3:8.1f} ms, from_bytes "
              f"{r['build_from_bytes_s'] * 1e3:8.1f} ms | bottom {r['bottom_bytes']:>10} B, "
              f"upper {r['upper_bytes']:>8} B ({r['upper_bytes_per_tib']} B/TiB), "
              f"groups {r['group_bytes']} B")
    ops = measure_ops(CONFIGS[1][1] // CONFIGS[1][2], args.ops, rng)
    print(f"ops on {ops['ops_buckets']} buckets: find_free {ops['find_per_s']:,}/s "
          f"(nearly full: {ops['find_sparse_per_s']:,}/s), "
          f"take+set_free {ops['take_and_free_per_s']:,}/s")
    print(json.dumps({"bench": "freespace_index", "builds": builds, "ops": ops}))


if __name__ == "__main__":
    main()
