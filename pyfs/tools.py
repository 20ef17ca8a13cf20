"""Commands that read or change a whole filesystem: `pyfs usage`, `pyfs tune`,
`pyfs resize`."""

from __future__ import annotations

import argparse
import json
import os
import uuid as uuidlib

from .cli import EXIT_OK, EXIT_USAGE, CliError, _open_error, command, human_size, parse_size
from .device import open_device
from .engine import Engine
from .format import MAX_LABEL, DataType
from .recovery import MountError


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
        raise _open_error(path, e) from None
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
        "allocator": alloc.usage(),
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
    print("Allocator:")
    for k, v in rep["allocator"].items():
        if "reserve" in k and isinstance(v, int):        # reserves are counted in buckets
            v = f"{v} buckets ({human_size(v * bs)})"
        print(f"  {k + ':':<24}{v}")
    return EXIT_OK


# --------------------------------------------------------------------------
# pyfs tune, pyfs resize (pyfs/resize.py)

def _open_unmounted(path: str):
    """Open read-write and exclusively: a mounted image is refused."""
    from .device import DeviceBusy
    if os.path.isdir(path):
        raise CliError(f"{path} is a directory; give the image (it must not be mounted)")
    try:
        return open_device(path, exclusive=True)
    except DeviceBusy:
        raise CliError(f"{path} is in use (mounted, or opened by another pyfs tool); "
                       "unmount it first") from None
    except OSError as e:
        raise CliError(e.strerror if e.strerror and path in e.strerror
                       else f"cannot open {path}: {e.strerror or e}") from None


def _setup_tune(p: argparse.ArgumentParser) -> None:
    p.add_argument("image", metavar="IMAGE", help="image file or block device (unmounted)")
    p.add_argument("-L", "--label", help=f"new volume label (at most {MAX_LABEL} bytes)")
    p.add_argument("-U", "--uuid", help="new UUID, or 'random'")


@command("tune", help="change the label or UUID of an unmounted filesystem (as tune2fs)",
         setup=_setup_tune)
def run_tune(args: argparse.Namespace) -> int:
    from .mkfs import MkfsError, check_label
    from .resize import ResizeError, parse_uuid, tune
    if args.label is None and args.uuid is None:
        raise CliError("nothing to change: give --label and/or --uuid", EXIT_USAGE)
    try:
        if args.label is not None:
            check_label(args.label)
        new_uuid = parse_uuid(args.uuid) if args.uuid is not None else None
    except (MkfsError, ResizeError) as e:
        raise CliError(str(e), EXIT_USAGE) from None
    with _open_unmounted(args.image) as dev:
        try:
            old, new = tune(dev, args.label, new_uuid)
        except ResizeError as e:
            raise CliError(str(e)) from None
    print(f"{args.image}: label {new.label or '(none)'!s}, UUID {uuidlib.UUID(bytes=new.uuid)}"
          + ("" if (old.label, old.uuid) != (new.label, new.uuid) else " (unchanged)"))
    return EXIT_OK


def _setup_resize(p: argparse.ArgumentParser) -> None:
    p.add_argument("image", metavar="IMAGE", help="image file or block device (unmounted)")
    p.add_argument("--size", metavar="SIZE",
                   help="new size (K/M/G/T suffixes); an image file is extended to it "
                        "(default: the size of the file or device)")


@command("resize", help="grow an unmounted filesystem (as resize2fs; shrinking is refused)",
         setup=_setup_resize)
def run_resize(args: argparse.Namespace) -> int:
    from .resize import ResizeError, grow
    size = parse_size(args.size) if args.size is not None else None
    with _open_unmounted(args.image) as dev:
        try:
            old, new = grow(dev, size)
        except ResizeError as e:
            raise CliError(str(e)) from None
    if old.device_size == new.device_size:
        print(f"{args.image} is already {human_size(new.device_size)} "
              f"({new.device_size} bytes): nothing to do")
    else:
        print(f"{args.image}: grown from {human_size(old.device_size)} ({old.nbuckets} "
              f"buckets) to {human_size(new.device_size)} ({new.nbuckets} buckets)")
    return EXIT_OK
