"""Scale: mount time and memory of big images, and after 1,000,000 files.

    .venv/bin/python bench/scale.py [--files N] [--sizes 1G,1T,16T] [--quick]
        [--no-peer] [--no-fsck] [--no-e2fsck] [--opts MOUNT_OPTIONS]
        [--results-dir DIR]

1. Empty sparse images of 1 GiB, 1 TiB and 16 TiB (16 TiB less 2 MiB when the
   host file system cannot hold a 16 TiB file): mkfs, then `pyfs mount` as a
   real daemon. Reported: wall time from exec until the mount answers a stat,
   the daemon's RSS then (VmRSS), and the engine's own mount time measured
   in-process (superblock, journal scan, replay, free-space index). fuse2fs
   on an ext4 image of the same size is measured the same way for 1 GiB and
   1 TiB (mkfs.ext4 of 16 TiB writes gigabytes of metadata).
2. N files (default 1,000,000, empty, 1,000 per directory), created
   in-process through the Filesystem API (the FUSE round trips would add
   ten minutes and measure nothing new), then the image is mounted as a
   daemon: mount time and RSS; a full walk of the tree (os.scandir and a
   stat of every entry, in a child process) with the daemon's RSS after it
   and its peak (VmHWM); unmount time; and `pyfs fsck -f -n` of the image
   (wall time and peak RSS). Beside it, e2fsck: an ext4 image of the same
   size holding the same tree (`mkfs.ext4 -d` from a staging copy of the tree
   on the host, with inodes enough for it) is checked with `e2fsck -f -n`,
   timed the same way; the report gives both and their ratio. Without
   mkfs.ext4 or e2fsck (or with --no-e2fsck) its figures are '-'.

3. Mount after a crash with a full journal (`--crash-files`, default 200,000
   files on a 4 GiB image): files are created in-process until the journal
   ring is as full as reclaim lets it get, the process then stops without
   unmounting (every entry written, nodes as reclaim left them). Reported:
   the journal's fill, the engine's mount time with the replay (read-only:
   replayed in memory; read-write: replayed and written), the entries and
   keys replayed, and a clean mount of the same image afterwards.

Targets (seed 002 and issue 9): a 1 TiB image mounts in under 1 s with under
100 MiB RSS. Results: a table, and JSON under bench/results/ (scale-*.json).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

import workloads as wl  # noqa: E402

from pyfs.device import open_device  # noqa: E402
from pyfs.engine import Engine  # noqa: E402
from pyfs.fs import Filesystem  # noqa: E402

MiB = 1 << 20
GiB = 1 << 30
TiB = 1 << 40
SIZES = {"1G": GiB, "1T": TiB, "16T": 16 * TiB}
FILES_PER_DIR = 1000
MOUNT_TARGET_S = 1.0
RSS_TARGET_MIB = 100.0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--files", type=int, default=1_000_000, help="files for part 2 (0: skip)")
    p.add_argument("--sizes", default="1G,1T,16T", help="image sizes for part 1")
    p.add_argument("--quick", action="store_true",
                   help="smoke run: 1G and 1T, 2,000 files, no fuse2fs")
    p.add_argument("--no-peer", action="store_true", help="skip fuse2fs")
    p.add_argument("--no-fsck", action="store_true", help="skip fsck of the populated image")
    p.add_argument("--no-e2fsck", action="store_true",
                   help="skip e2fsck of an ext4 image with the same tree")
    p.add_argument("--crash-files", type=int, default=200_000,
                   help="files before the crash of part 3 (0: skip)")
    p.add_argument("--opts", default="", help="pyfs mount options, e.g. cache_nodes=128")
    p.add_argument("--results-dir", default=str(HERE / "results"))
    a = p.parse_args(argv)
    if a.quick:
        a.sizes, a.files, a.no_peer, a.crash_files = "1G,1T", 2000, True, 2000
    for s in a.sizes.split(","):
        if s not in SIZES:
            p.error(f"--sizes: {s!r} is not one of {', '.join(SIZES)}")
    return a


def proc_status(pid: int) -> dict[str, float]:
    """VmRSS and VmHWM of a process, in MiB."""
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(rest.split()[0]) / 1024
    return out


def fit_size(workdir: Path, size: int) -> int:
    """size, or 2 MiB less if the host file system cannot hold it (ext4: 16 TiB)."""
    probe = workdir / "size-probe"
    try:
        with open(probe, "wb") as f:
            try:
                f.truncate(size)
                return size
            except OSError:
                return size - 2 * MiB
    finally:
        probe.unlink(missing_ok=True)


def engine_mount_s(img: Path) -> float:
    """The engine's own mount, read-only and in-process (no FUSE, no Python start)."""
    t = time.perf_counter()
    eng = Engine(open_device(str(img), read_only=True), read_only=True)
    took = time.perf_counter() - t
    eng.close()
    return took


def mounted(peer: wl.FusePeer) -> dict:
    """Mount (timed from exec to the first answered stat), then its RSS."""
    t = time.perf_counter()
    peer.mount()
    out = {"mount_s": time.perf_counter() - t}
    out.update(proc_status(peer.proc.pid))
    return out


def unmount_s(peer: wl.FusePeer) -> float:
    t = time.perf_counter()
    peer.unmount()
    return time.perf_counter() - t


def empty_image(kind: str, label: str, size: int, workdir: Path, opts: str) -> dict:
    cls = wl.PyfsPeer if kind == "pyfs" else wl.Fuse2fsPeer
    peer = cls(f"{kind}-{label}", workdir, size, opts if kind == "pyfs" else "")
    try:
        peer.dir.mkdir(parents=True)
        peer.mnt.mkdir()
        with open(peer.img, "wb") as f:
            f.truncate(size)
        t = time.perf_counter()
        peer.mkfs()
        row = {"peer": kind, "size": label, "bytes": size, "mkfs_s": time.perf_counter() - t}
        row.update(mounted(peer))
        row["umount_s"] = unmount_s(peer)
        if kind == "pyfs":
            row["engine_mount_s"] = engine_mount_s(peer.img)
        row["image_kib_on_disk"] = os.stat(peer.img).st_blocks // 2
        return row
    finally:
        peer.stop()


def tree(files: int):
    """The populated tree: (directory name, its file names), FILES_PER_DIR files
    per directory under the root (pyfs and its ext4 twin get the same)."""
    d = 0
    while files > 0:
        n = min(FILES_PER_DIR, files)
        yield b"d%05d" % d, [b"file-%07d" % i for i in range(n)]
        files -= n
        d += 1


def populate(img: Path, files: int, log) -> dict:
    """files empty files, FILES_PER_DIR per directory, through the Filesystem API."""
    eng = Engine(open_device(str(img)))
    fs = Filesystem(eng)
    t0 = time.perf_counter()
    made = 0
    d = 0
    for dname, names in tree(files):
        dino = fs.mkdir(1, dname, 0o755).st_ino
        for name in names:
            ino = fs.create(dino, name, 0o644).st_ino
            fs.forget(ino, 1)              # as the kernel would, eventually
            made += 1
        fs.forget(dino, 1)
        eng.flush()                        # the daemon flushes every few ms
        d += 1
        if d % 100 == 0:
            log(f"  {made:,} files, {made / (time.perf_counter() - t0):,.0f}/s")
    fs.shutdown()
    eng.close()
    took = time.perf_counter() - t0
    return {"files": made, "dirs": d, "create_s": took, "creates_per_s": made / took}


# Runs a command as its child and reports its wall time and peak RSS. The
# child's ru_maxrss counts the RSS of the process it was forked from (the
# kernel keeps the old address space's peak across exec): from this small
# launcher that is a few MiB, from the bench process it would be its own peak.
_LAUNCH = """\
import os, sys, time
t = time.perf_counter()
pid = os.fork()
if pid == 0:
    os.execvp(sys.argv[1], sys.argv[1:])
_, status, ru = os.wait4(pid, 0)
print(f"measured: {time.perf_counter() - t} {ru.ru_maxrss}", file=sys.stderr)
sys.exit(os.waitstatus_to_exitcode(status))
"""


def measured(cmd: list[str], timeout: float) -> dict:
    """Exit code, wall time and peak RSS (MiB) of one command."""
    res = wl.run([sys.executable, "-S", "-c", _LAUNCH, *cmd], timeout=timeout, check=False)
    line = [r for r in res.stderr.splitlines() if r.startswith("measured: ")][-1]
    took, kib = line.split()[1:]
    return {"exit": res.returncode, "s": float(took), "rss_mib": int(kib) / 1024}


def ext4_tools() -> bool:
    return bool(shutil.which("mkfs.ext4") and shutil.which("e2fsck"))


def e2fsck_twin(files: int, size: int, workdir: Path, log) -> dict:
    """e2fsck -f -n of an ext4 image of `size` bytes holding tree(files), made by
    mkfs.ext4 -d from a staging copy of the tree on the host."""
    stage, img = workdir / "ext4-tree", workdir / "ext4.img"
    log(f"ext4 twin: staging {files:,} files, mkfs.ext4 -d ...")
    try:
        ndirs = 0
        for dname, names in tree(files):
            d = stage / dname.decode()
            d.mkdir(parents=True)
            for name in names:
                os.close(os.open(d / name.decode(), os.O_CREAT | os.O_WRONLY, 0o644))
            ndirs += 1
        with open(img, "wb") as f:
            f.truncate(size)
        t = time.perf_counter()
        wl.run(["mkfs.ext4", "-q", "-F", "-N", str(files + ndirs + 1024), "-d", str(stage),
                str(img)], timeout=max(600.0, files / 200))
        out = {"ext4_mkfs_s": time.perf_counter() - t}
        shutil.rmtree(stage)
        res = measured(["e2fsck", "-f", "-n", str(img)], timeout=max(600.0, files / 100))
        out.update({"e2fsck_s": res["s"], "e2fsck_rss_mib": res["rss_mib"],
                    "e2fsck_exit": res["exit"]})
        return out
    finally:
        shutil.rmtree(stage, ignore_errors=True)
        img.unlink(missing_ok=True)


def many_files(files: int, workdir: Path, fsck: bool, e2fsck: bool, opts: str, log) -> dict:
    size = max(4 * GiB, files * 8 * 1024)         # room for the btrees, with slack
    peer = wl.PyfsPeer("pyfs-files", workdir, size, opts)
    try:
        peer.dir.mkdir(parents=True)
        peer.mnt.mkdir()
        with open(peer.img, "wb") as f:
            f.truncate(size)
        peer.mkfs()
        log(f"populating {files:,} files in-process ...")
        row = {"peer": "pyfs", "size": f"{size // GiB}G"}
        row.update(populate(peer.img, files, log))
        row["engine_mount_s"] = engine_mount_s(peer.img)
        row.update(mounted(peer))
        row["mount_rss_mib"] = row.pop("VmRSS")
        row.pop("VmHWM", None)
        # os.scandir + stat of every file, in a child: a hung mount cannot hang us
        row.update(wl.worker("walk", peer.mnt, timeout=max(600.0, files / 200)))
        st = proc_status(peer.proc.pid)
        row["walk_rss_mib"], row["peak_rss_mib"] = st["VmRSS"], st["VmHWM"]
        row["umount_s"] = unmount_s(peer)
        row["image_mib_on_disk"] = os.stat(peer.img).st_blocks / 2048
        if fsck:
            res = measured([wl.pyfs_command(), "fsck", "-f", "-n", str(peer.img)],
                           timeout=max(600.0, files / 100))
            row["fsck_s"], row["fsck_rss_mib"] = res["s"], res["rss_mib"]
            row["fsck_exit"] = res["exit"]
    finally:
        peer.stop()
    if fsck and e2fsck and ext4_tools():
        row.update(e2fsck_twin(files, size, workdir, log))
    return row


def crash_mount(files: int, workdir: Path, log) -> dict:
    """Part 3: mount time after a crash with the journal as full as reclaim lets it be."""
    img = workdir / "crash.img"
    size = 4 * GiB
    with open(img, "wb") as f:
        f.truncate(size)
    wl.run([wl.pyfs_command(), "mkfs", str(img), "--size", str(size), "-q"], timeout=120)
    dev = open_device(str(img))
    eng = Engine(dev)
    fs = Filesystem(eng)
    made, fill, d = 0, 0.0, 0
    log(f"crash: creating up to {files:,} files, then stopping without unmounting ...")
    while made < files:
        dino = fs.mkdir(1, b"c%05d" % d, 0o755).st_ino
        for i in range(min(FILES_PER_DIR, files - made)):
            fs.forget(fs.create(dino, b"f-%07d" % i, 0o644).st_ino, 1)
            made += 1
        fs.forget(dino, 1)
        eng.flush()
        fill = max(fill, eng.journal.fill_ratio())
        d += 1
    row = {"files": made, "journal_fill_peak": fill,
           "journal_fill": eng.journal.fill_ratio(),
           "journal_mib": eng.journal.ring / MiB}
    dev.close()                 # the crash: no unmount, nothing more written
    t = time.perf_counter()
    ro = Engine(open_device(str(img), read_only=True), read_only=True)
    row["ro_mount_s"] = time.perf_counter() - t
    row["replayed_entries"], row["replayed_keys"] = ro.replayed_entries, ro.replayed_keys
    ro.close()
    t = time.perf_counter()
    rw = Engine(open_device(str(img)))
    row["rw_mount_s"] = time.perf_counter() - t
    rw.close()
    row["clean_mount_s"] = engine_mount_s(img)
    return row


def fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:,.3f}" if v < 10 else f"{v:,.1f}"
    return f"{v:,}" if isinstance(v, int) else str(v)


def report(result: dict) -> str:
    lines = ["Empty images (mount: exec until the mount answers; RSS of the daemon then)",
             f"{'peer':8} {'size':>5} {'mkfs s':>8} {'mount s':>8} {'engine s':>9} "
             f"{'RSS MiB':>8} {'umount s':>9} {'on disk KiB':>12}"]
    for r in result["images"]:
        lines.append(f"{r['peer']:8} {r['size']:>5} {fmt(r['mkfs_s']):>8} "
                     f"{fmt(r['mount_s']):>8} {fmt(r.get('engine_mount_s', '-')):>9} "
                     f"{fmt(r['VmRSS']):>8} {fmt(r['umount_s']):>9} "
                     f"{fmt(r['image_kib_on_disk']):>12}")
    for t in result["targets"]:
        lines.append(f"  {t['what']}: {fmt(t['value'])} (target {fmt(t['target'])}, "
                     f"ratio {t['ratio']:.1f}x) {'PASS' if t['pass'] else 'MISS'}")
    for r in result["images"]:
        if r["peer"] == "fuse2fs":
            mine = next((p for p in result["images"]
                         if p["peer"] == "pyfs" and p["size"] == r["size"]), None)
            if mine:
                lines.append(f"  {r['size']} vs fuse2fs (fuse2fs/pyfs, above 1 pyfs is better): "
                             f"mount time {r['mount_s'] / mine['mount_s']:.2f}x, "
                             f"RSS {r['VmRSS'] / mine['VmRSS']:.2f}x")
    m = result.get("files")
    if m:
        lines += ["", f"{m['files']:,} files in {m['dirs']:,} directories "
                  f"({m['size']} image, {fmt(m['image_mib_on_disk'])} MiB on disk)"]
        for key, label in (("creates_per_s", "in-process creates/s"),
                           ("engine_mount_s", "engine mount s"),
                           ("mount_s", "daemon mount s (exec to first answer)"),
                           ("mount_rss_mib", "RSS after mount MiB"),
                           ("walk_s", "walk (scandir + stat of every file) s"),
                           ("walk_rss_mib", "RSS after the walk MiB"),
                           ("peak_rss_mib", "peak RSS (VmHWM) MiB"),
                           ("umount_s", "umount s")):
            if key in m:
                lines.append(f"  {label:40} {fmt(m[key]):>12}")
        if "fsck_s" in m:
            lines += fsck_lines(m)
    c = result.get("crash")
    if c:
        lines += ["", f"Mount after a crash: {c['files']:,} files created, journal of "
                  f"{fmt(c['journal_mib'])} MiB {c['journal_fill']:.0%} full "
                  f"(peak {c['journal_fill_peak']:.0%})"]
        for key, label in (("replayed_entries", "journal entries replayed"),
                           ("replayed_keys", "keys replayed"),
                           ("ro_mount_s", "engine mount, read-only s"),
                           ("rw_mount_s", "engine mount, read-write s"),
                           ("clean_mount_s", "engine mount after a clean unmount s")):
            lines.append(f"  {label:40} {fmt(c[key]):>12}")
    return "\n".join(lines)


def fsck_lines(m: dict) -> list[str]:
    """pyfs fsck -f -n beside e2fsck -f -n of the same tree on ext4 ('-': not run)."""
    def cell(key: str) -> str:
        return fmt(m[key]) if key in m else "-"

    def ratio(a: str, b: str) -> str:
        return f"{m[a] / m[b]:.1f}x" if a in m and b in m and m[b] > 0 else "-"

    return [f"  {'check -f -n of the same tree':40} {'pyfs':>12} {'e2fsck':>12} "
            f"{'pyfs/e2fsck':>12}",
            f"  {'  wall s':40} {cell('fsck_s'):>12} {cell('e2fsck_s'):>12} "
            f"{ratio('fsck_s', 'e2fsck_s'):>12}",
            f"  {'  peak RSS MiB':40} {cell('fsck_rss_mib'):>12} {cell('e2fsck_rss_mib'):>12} "
            f"{ratio('fsck_rss_mib', 'e2fsck_rss_mib'):>12}",
            f"  {'  exit code':40} {cell('fsck_exit'):>12} {cell('e2fsck_exit'):>12}"]


def targets(images: list[dict]) -> list[dict]:
    out = []
    for r in images:
        if r["peer"] == "pyfs" and r["size"] == "1T":
            for what, value, target in (("1 TiB mount s", r["mount_s"], MOUNT_TARGET_S),
                                        ("1 TiB mount RSS MiB", r["VmRSS"], RSS_TARGET_MIB)):
                out.append({"what": what, "value": value, "target": target,
                            "ratio": target / value, "pass": value < target})
    return out


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)

    def log(msg: str) -> None:
        print(msg, flush=True)

    parent = os.environ.get("PYFS_BENCH_DIR") or None
    if parent:
        os.makedirs(parent, exist_ok=True)
    result: dict = {"when": time.strftime("%Y-%m-%d %H:%M:%S"), "args": vars(args),
                    "images": []}
    with tempfile.TemporaryDirectory(prefix="pyfs-scale-", dir=parent) as tmp:
        workdir = Path(tmp)
        try:
            for label in args.sizes.split(","):
                size = fit_size(workdir, SIZES[label])
                kinds = ["pyfs"] + ([] if args.no_peer or label == "16T" else ["fuse2fs"])
                for kind in kinds:
                    log(f"{kind} {label}: mkfs, mount, umount ...")
                    result["images"].append(empty_image(kind, label, size, workdir, args.opts))
            if args.files:
                result["files"] = many_files(args.files, workdir, not args.no_fsck,
                                             not args.no_e2fsck, args.opts, log)
            if args.crash_files:
                result["crash"] = crash_mount(args.crash_files, workdir, log)
        finally:
            for peer in list(wl._LIVE_FUSE.values()):
                peer.stop()
    result["targets"] = targets(result["images"])
    text = report(result)
    print()
    print(text)
    wl.save_results(result, args.results_dir, "scale")
    return 0


if __name__ == "__main__":
    sys.exit(main())
