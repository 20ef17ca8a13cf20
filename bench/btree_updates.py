"""Random btree key updates per second through the full transaction commit path.

Each transaction updates UPDATES_PER_TRANS random keys of the extents btree
(random 16-byte keys, 24-byte values); the figure counts updates, as seed 001
does for bcachefs's bch2_trans_commit(). Runs on one core against an
in-memory device, so it measures CPU cost, not the disk; `updates_per_cpu_s`
divides by the process's CPU time instead of elapsed time, which a loaded
machine inflates less. Last line: JSON.

    .venv/bin/python bench/btree_updates.py [--updates N] [--per-trans K] [--write-buffer B]
"""

from __future__ import annotations

import argparse
import json
import random
import time

from pyfs.device import MemDevice
from pyfs.engine import Engine
from pyfs.format import KeyType, pack_key
from pyfs.mkfs import format_device


def run(n: int, per_trans: int, keyspace: int, write_buffer: int | None, size: int) -> dict:
    dev = MemDevice(size)
    format_device(dev)
    eng = Engine(dev, write_buffer=write_buffer)
    rng = random.Random(42)
    keys = [pack_key(rng.randrange(1 << 20), rng.randrange(1 << 40)) for _ in range(keyspace)]
    val = bytes([KeyType.raw]) + bytes(23)
    picks = [keys[rng.randrange(keyspace)] for _ in range(n)]
    t0 = time.perf_counter()
    c0 = time.process_time()
    for i in range(0, n, per_trans):
        t = eng.trans()
        for k in picks[i:i + per_trans]:
            t.set(0, k, val)
        t.commit()
    eng.flush()
    dt = time.perf_counter() - t0
    cpu = time.process_time() - c0
    st = eng.stats()
    return {
        "updates": n, "per_trans": per_trans, "keyspace": keyspace, "seconds": round(dt, 3),
        "updates_per_s": round(n / dt), "cpu_seconds": round(cpu, 3),
        "updates_per_cpu_s": round(n / cpu),
        "btree_node_writes": st["btree_node_writes"],
        "btree_node_write_bytes": st["btree_node_write_bytes"],
        "journal_writes": st["journal_writes"], "journal_write_bytes": st["journal_write_bytes"],
        "journal_flushes": st["journal_flushes"], "btree_splits": st["btree_splits"],
        "btree_compactions": st["btree_compactions"],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--updates", type=int, default=400_000)
    ap.add_argument("--per-trans", type=int, default=8)
    ap.add_argument("--keyspace", type=int, default=100_000)
    ap.add_argument("--write-buffer", type=int, default=None)
    ap.add_argument("--size", type=int, default=1 << 30)
    a = ap.parse_args()
    r = run(a.updates, a.per_trans, a.keyspace, a.write_buffer, a.size)
    for k, v in r.items():
        print(f"{k:>24}: {v}")
    print(f"{'target ratio':>24}: {r['updates_per_s'] / 450_000:.2f} of 450,000/s")
    print(json.dumps(r))


if __name__ == "__main__":
    main()
