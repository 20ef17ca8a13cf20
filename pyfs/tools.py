"""Inspection commands that read a whole filesystem: `pyfs usage`."""

from __future__ import annotations

import argparse
import json

from .cli import EXIT_OK, CliError, command, human_size
from .device import open_device
from .engine import Engine, MountError
from .format import DataType


def open_engine_readonly(path: str) -> Engine:
    """Open an image (or a pyfs mount point's) for inspection: read-only, no
    lock, journal replayed in memory (see pyfs/inspect.py)."""
    from .inspect import InspectError, image_of
    try:
        path = image_of(path)
    except InspectError as e:
        raise CliError(str(e)) from None
    try:
        dev = open_device(path, read_only=True, exclusive=False)
    except OSError as e:
        raise CliError(f"{path}: {e.strerror or e}") from None
    try:
        return Engine(dev, read_only=True)
    except MountError as e:
        dev.close()
        raise CliError(f"{path}: not a usable pyfs filesystem: {e}") from None


def usage_report(eng: Engine) -> dict:
    """Buckets by data type, free/waiting/need-discard counts and fragmentation."""
    alloc = eng.alloc
    st = alloc.state
    sb = eng.sb
    by_type = {t.name: 0 for t in DataType}
    sectors = {t.name: 0 for t in DataType}
    by_type["superblock"] = 1 + (alloc.end < sb.nbuckets)
    by_type["journal"] = sb.journal_nbuckets
    partial = 0
    bucket_sectors = sb.bucket_size // 512
    for b in range(alloc.first, alloc.end):
        if alloc.index.is_free(b):
            by_type["free"] += 1
            continue
        a = st.get(b)
        name = DataType(a.data_type).name
        by_type[name] += 1
        sectors[name] += a.dirty_sectors
        if a.data_type in (DataType.user, DataType.btree) and a.dirty_sectors < bucket_sectors:
            partial += 1
    used = by_type["user"] + by_type["btree"]
    live = sectors["user"] + sectors["btree"]
    return {
        "buckets": sb.nbuckets, "bucket_size": sb.bucket_size,
        "by_type": by_type, "live_bytes": live * 512,
        "free_buckets": alloc.index.count, "waiting_on_journal": st.nwaiting,
        "need_discard": len(st.discard_ready) + st.nwaiting,
        "partially_used_buckets": partial,
        "fragmentation": round(1 - live / (used * bucket_sectors), 4) if used else 0.0,
        "counters": {k: v for k, v in eng.counters.items()
                     if k.startswith(("alloc_", "discard"))},
    }


def _setup_usage(p: argparse.ArgumentParser) -> None:
    p.add_argument("image", metavar="IMAGE|MOUNTPOINT",
                   help="image file or block device, or the mount point of a mounted pyfs")
    p.add_argument("--json", action="store_true", help="print one JSON object")


@command("usage", help="show space usage by bucket type (like df)", setup=_setup_usage)
def run_usage(args: argparse.Namespace) -> int:
    eng = open_engine_readonly(args.image)
    try:
        rep = usage_report(eng)
    finally:
        eng.dev.close()
    if args.json:
        print(json.dumps(rep))
        return EXIT_OK
    bs = rep["bucket_size"]
    print(f"{'Buckets:':<26}{rep['buckets']} x {human_size(bs)}")
    for name, n in rep["by_type"].items():
        if n:
            print(f"  {name + ':':<24}{n:>10} buckets {human_size(n * bs):>12}")
    print(f"{'Live data + metadata:':<26}{human_size(rep['live_bytes'])}")
    print(f"{'Free:':<26}{rep['free_buckets']} buckets ({human_size(rep['free_buckets'] * bs)})")
    print(f"{'Waiting on journal:':<26}{rep['waiting_on_journal']}")
    print(f"{'Needing discard:':<26}{rep['need_discard']}")
    print(f"{'Partially used buckets:':<26}{rep['partially_used_buckets']}")
    print(f"{'Fragmentation:':<26}{rep['fragmentation']:.1%}")
    return EXIT_OK
