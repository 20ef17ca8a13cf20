"""Peers and workloads for bench/compare.py.

A *peer* is a filesystem under test on a fresh sparse image: pyfs (FUSE),
fuse2fs (Debian's ext4 over FUSE) or kernel ext4 on a loop device.  A
*workload* runs against a mounted peer and returns a dict of numbers.

Everything that touches a mount point runs in a child process with a
timeout (fs_mark, dd, rm, and this file's own worker modes for the Python
loops), so a hung filesystem never hangs the orchestrator; on a timeout the
child is killed and, if it is stuck inside a FUSE request, the connection of
the mount we made is aborted so that it can die.

Worker modes (run by the workloads below, not meant for people):

    python bench/workloads.py tree-create DIR FILES DIRS BYTES
    python bench/workloads.py fdatasync-lat FILE ITERATIONS
    python bench/workloads.py appends FILE COUNT
    python bench/workloads.py meta-lat DIR OPS
    python bench/workloads.py fsync-loop FILE
    python bench/workloads.py getxattr-lat FILE OPS CPU     (bench/requests.py; CPU -1: any)
    python bench/workloads.py fsmark-steps DIR FILES        (bench/requests.py)
    python bench/workloads.py walk DIR                      (bench/scale.py)
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

KiB = 1 << 10
MiB = 1 << 20
GiB = 1 << 30

HERE = Path(__file__).resolve().parent
REPO = HERE.parent


class BenchError(Exception):
    """A step of a benchmark failed; the run records it and goes on."""


# ---------------------------------------------------------------------------
# Processes


_LIVE_FUSE: dict[str, FusePeer] = {}   # our FUSE mounts not yet unmounted, by mount point


def _tail(text: str | bytes | None, lines: int = 6) -> str:
    """The first two and the last lines of some output, on one line."""
    if not text:
        return ""
    if isinstance(text, bytes):
        text = text.decode(errors="replace")
    rows = [r for r in text.strip().splitlines() if r.strip()]
    if len(rows) > lines:
        rows = rows[:2] + ["..."] + rows[-(lines - 2):]
    return " | ".join(r.strip() for r in rows)


def _kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL a child started with start_new_session, and its own children
    (e.g. the fsync loop of a meta-lat worker): its group is all ours."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except OSError:
        pass


def _reap(proc: subprocess.Popen) -> None:
    """Kill a child that overstayed; if it is stuck in a FUSE request of one
    of our mounts, abort those connections so that the kill can land."""
    _kill_group(proc)
    try:
        proc.wait(timeout=10)
        return
    except subprocess.TimeoutExpired:
        pass
    for peer in list(_LIVE_FUSE.values()):
        peer.force_down()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        pass                      # give up on it; never block the run forever


def run(cmd: list[str], *, timeout: float, check: bool = True,
        cwd: str | None = None) -> subprocess.CompletedProcess:
    """subprocess.run with a timeout that also copes with FUSE hangs."""
    try:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, cwd=cwd,
                                start_new_session=True)
    except OSError as e:
        raise BenchError(f"{cmd[0]}: {e.strerror or e}") from None
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        _reap(proc)
        raise BenchError(f"timed out after {timeout:.0f} s: {' '.join(cmd)}") from None
    except BaseException:           # Ctrl-C: do not leave the child behind
        _reap(proc)
        raise
    res = subprocess.CompletedProcess(cmd, proc.returncode, out, err)
    if check and proc.returncode != 0:
        raise BenchError(f"{' '.join(cmd)} exited {proc.returncode}: "
                         f"{_tail(err) or _tail(out)}")
    return res


def timed(cmd: list[str], *, timeout: float) -> tuple[float, subprocess.CompletedProcess]:
    t0 = time.perf_counter()
    res = run(cmd, timeout=timeout)
    return time.perf_counter() - t0, res


def worker(mode: str, *args, timeout: float) -> dict:
    """Run one of this file's worker modes in a child; return its JSON line."""
    res = run([sys.executable, str(Path(__file__).resolve()), mode, *map(str, args)],
              timeout=timeout)
    try:
        return json.loads(res.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        raise BenchError(f"worker {mode}: no JSON in output: {_tail(res.stdout)}") from None


def save_results(result: dict, results_dir: str | os.PathLike, name: str) -> Path:
    """Write result as <name>-<timestamp>.json and <name>-latest.json; print the path."""
    out = Path(results_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(result, indent=1, sort_keys=True))
    (out / f"{name}-latest.json").write_text(path.read_text())
    print(f"\nresults: {path}")
    return path


def is_root() -> bool:
    return os.geteuid() == 0


def sync_all(timeout: float = 120) -> None:
    try:
        run(["sync"], timeout=timeout)
    except BenchError:
        pass


def drop_caches() -> bool:
    """sync, then drop the page cache, dentries and inodes (root only)."""
    sync_all()
    try:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
        return True
    except OSError:
        return False


# ---------------------------------------------------------------------------
# Mount table


def _unescape(field: str) -> str:
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def _canon(path: str | os.PathLike) -> str:
    """realpath of the parent only: never stat a (maybe hung) mount point."""
    path = os.path.abspath(path)
    return os.path.join(os.path.realpath(os.path.dirname(path)), os.path.basename(path))


def mount_entry(mnt: str | os.PathLike) -> dict | None:
    """The /proc/self/mountinfo entry for a mount point (the last, topmost)."""
    want = _canon(mnt)
    found = None
    try:
        with open("/proc/self/mountinfo") as f:
            for line in f:
                parts = line.split()
                if len(parts) < 10 or _unescape(parts[4]) != want:
                    continue
                sep = parts.index("-", 6)
                found = {"dev": parts[2], "fstype": parts[sep + 1],
                         "source": _unescape(parts[sep + 2])}
    except OSError:
        return None
    return found


def mounts_under(path: str | os.PathLike) -> list[str]:
    root = _canon(path).rstrip("/") + "/"
    out = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            parts = line.split()
            if len(parts) > 4:
                mp = _unescape(parts[4])
                if (mp + "/").startswith(root):
                    out.append(mp)
    return out


def abort_fuse(mnt: str | os.PathLike) -> bool:
    """Abort the FUSE connection behind one of our own mount points."""
    ent = mount_entry(mnt)
    if not ent or not ent["fstype"].startswith("fuse"):
        return False
    minor = ent["dev"].split(":")[1]
    try:
        with open(f"/sys/fs/fuse/connections/{minor}/abort", "w") as f:
            f.write("1")
        return True
    except OSError:
        return False


def _wait_until(pred, timeout: float, step: float = 0.05) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(step)
    return pred()


# ---------------------------------------------------------------------------
# Peers


def pyfs_command() -> str:
    cand = Path(sys.executable).parent / "pyfs"
    if cand.exists():
        return str(cand)
    cand = REPO / ".venv" / "bin" / "pyfs"
    if cand.exists():
        return str(cand)
    return shutil.which("pyfs") or "pyfs"


def pyfs_has_mount() -> bool:
    try:
        res = run([pyfs_command(), "--help"], timeout=30, check=False)
    except BenchError:
        return False
    return re.search(r"^\s+mount\b", res.stdout, re.M) is not None


class Peer:
    """One filesystem on a fresh image under `workdir`.

    start() makes the image and mounts it at self.mnt; remount() unmounts and
    mounts again (a cold cache); stop() unmounts, detaches and deletes the
    image.  stop() is safe to call at any point, also after a failed start().
    """

    kind = "?"
    fuse = False

    def __init__(self, name: str, workdir: Path, size: int, opts: str = ""):
        self.name = name
        self.size = size
        self.opts = opts
        self.dir = workdir / name
        self.img = self.dir / "img"
        self.mnt = self.dir / "mnt"
        self.log = self.dir / "daemon.log"
        self.final_log = ""           # the daemon log's tail, kept when the dir goes
        self.mounted = False
        self.marks: list[tuple[str, dict]] = []    # (phase, counters) for pyfs
        self.stats_error: str | None = None

    # -- life cycle --------------------------------------------------------

    def start(self) -> None:
        if self.dir.exists():
            self._remove_dir()
        self.mnt.mkdir(parents=True)
        with open(self.img, "wb") as f:            # sparse
            f.truncate(self.size)
        self.mkfs()
        self.mount()

    def remount(self) -> None:
        self.mark("_unmount")            # a new daemon starts its counters from zero
        self.unmount()
        self.mount()
        self.mark("_mounted")

    def stop(self) -> None:
        errors = []
        try:
            self.unmount()
        except BenchError as e:
            errors.append(str(e))
        try:
            self.detach()
        except BenchError as e:
            errors.append(str(e))
        self._remove_dir()
        if errors:
            raise BenchError("; ".join(errors))

    def _remove_dir(self) -> None:
        if self.log.exists():
            self.final_log = _tail(self.log.read_bytes(), 20)
        if mounts_under(self.dir):
            # Never rmtree into a live mount; leave it for a human.
            print(f"warning: {self.dir} still has mounts, not removed", file=sys.stderr)
            return
        shutil.rmtree(self.dir, ignore_errors=True)

    # -- per kind ----------------------------------------------------------

    def mkfs(self) -> None:
        raise NotImplementedError

    def mount(self) -> None:
        raise NotImplementedError

    def unmount(self) -> None:
        raise NotImplementedError

    def detach(self) -> None:
        pass

    def stats(self) -> dict | None:
        return None

    def mark(self, phase: str) -> None:
        """Sample the counters at the end of a phase (pyfs only; a failure
        is remembered, never raised: the workload's figures still count)."""
        if self.stats_error is not None:
            return
        try:
            st = self.stats()
        except BenchError as e:
            self.stats_error = str(e)
            return
        if st is not None:
            self.marks.append((phase, st))

    def counter_deltas(self) -> tuple[dict, dict]:
        """(total, per phase) counter deltas between the marks; the interval
        across a remount ("_mounted") is skipped since counters restart."""
        total: dict = {}
        phases: dict = {}
        for (_, a), (name, b) in zip(self.marks, self.marks[1:]):
            if name == "_mounted":
                continue
            d = {k: b[k] - a[k] for k in b if k in a}
            if not name.startswith("_"):
                phases[name] = d
            for k, v in d.items():
                total[k] = total.get(k, 0) + v
        if len(phases) > 1:
            phases.pop("end", None)     # only the tail after the workload's last mark
        return total, phases

    def describe(self) -> dict:
        return {"kind": self.kind, "opts": self.opts}


def _progress(pid: int) -> tuple | None:
    """CPU ticks, I/O bytes and state of a process, to tell work from a hang."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        io = ()
        try:
            with open(f"/proc/{pid}/io") as f:
                io = tuple(line.split()[1] for line in f if line.startswith(("rchar", "wchar")))
        except OSError:
            pass
        return fields[0], int(fields[11]) + int(fields[12]), io
    except (OSError, IndexError, ValueError):
        return None


def _wait_daemon(proc: subprocess.Popen, limit: float, stall: float = 30.0) -> int | None:
    """Wait up to `limit` s for our daemon to exit; give up early if it is
    stopped or has used no CPU and done no I/O for `stall` s. Returns its
    exit status, or None if it is still running."""
    end = time.monotonic() + limit
    last, since = None, time.monotonic()
    while True:
        rc = proc.poll()
        if rc is not None:
            return rc
        now = time.monotonic()
        if now > end:
            return None
        cur = _progress(proc.pid)
        if cur is not None and cur[0] == "T":
            return None
        if cur != last:
            last, since = cur, now
        elif now - since > stall:
            return None
        time.sleep(0.1)


class FusePeer(Peer):
    """A FUSE daemon we start ourselves (in its own session, so Ctrl-C on the
    terminal reaches only us and the cleanup unmounts it in order)."""

    fuse = True
    mount_timeout = 120.0
    unmount_timeout = 300.0

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.proc: subprocess.Popen | None = None

    def mount_cmd(self) -> list[str]:
        raise NotImplementedError

    def unmount_cmd(self) -> list[str]:
        return ["fusermount3", "-u", str(self.mnt)]

    def mount(self) -> None:
        if self.mounted:
            return
        logf = open(self.log, "ab")
        try:
            self.proc = subprocess.Popen(self.mount_cmd(), stdin=subprocess.DEVNULL,
                                         stdout=logf, stderr=logf, start_new_session=True)
        except OSError as e:
            raise BenchError(f"{self.name}: cannot start: {e}") from None
        finally:
            logf.close()
        self.mounted = True             # from here on unmount() has something to undo
        _LIVE_FUSE[str(self.mnt)] = self
        end = time.monotonic() + self.mount_timeout
        while not mount_entry(self.mnt):
            rc = self.proc.poll()
            if rc is not None and rc != 0:
                self.proc = None
                self.mounted = False
                _LIVE_FUSE.pop(str(self.mnt), None)
                raise BenchError(f"{self.name}: mount failed (exit {rc}): {self._log_tail()}")
            if time.monotonic() > end:
                raise BenchError(f"{self.name}: not mounted after {self.mount_timeout:.0f} s: "
                                 f"{self._log_tail()}")
            time.sleep(0.05)
        # Being in the mount table is not yet serving: wait until a stat (in a child,
        # with a timeout) gets an answer, so that a daemon that never answers
        # FUSE_INIT fails here rather than in the middle of a workload.
        try:
            run(["stat", "-c", "%i", str(self.mnt)],
                timeout=max(5.0, end - time.monotonic()))
        except BenchError as e:
            raise BenchError(f"{self.name}: mounted but not answering: {e}; "
                             f"{self._log_tail()}") from None

    def unmount(self) -> None:
        if not self.mounted and self.proc is None:
            return
        err = None
        if mount_entry(self.mnt):
            try:
                run(self.unmount_cmd(), timeout=self.unmount_timeout)
            except BenchError as e:
                err = e
                # The daemon is our child: a plain FUSE unmount makes it
                # write back and exit just the same (unless it hangs).
                if "timed out" not in str(e) and mount_entry(self.mnt):
                    time.sleep(0.5)
                    run(["fusermount3", "-u", str(self.mnt)], timeout=60, check=False)
        still = mount_entry(self.mnt) is not None
        alive = False
        if self.proc is not None:
            # Unmounted: give it time to write back, as long as it makes
            # progress; still mounted: no point in waiting long.
            rc = _wait_daemon(self.proc, 5 if still else self.unmount_timeout)
            if rc is None:
                alive = True
                err = err or BenchError(f"{self.name}: daemon still running after unmount")
            elif rc != 0:
                err = err or BenchError(f"daemon exited with status {rc}: {self._log_tail()}")
        if still or alive:
            self.force_down()
        self.proc = None
        self.mounted = False
        _LIVE_FUSE.pop(str(self.mnt), None)
        if err:
            raise BenchError(f"{self.name}: unmount: {err}")

    def force_down(self) -> None:
        """The daemon hangs: abort its FUSE connection (or kill the daemon,
        ours, found by the unique mount path in its command line), then
        detach the mount lazily."""
        if not abort_fuse(self.mnt):
            for pid in self._our_pids():
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass
        if self.proc is not None:
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                pass
        if mount_entry(self.mnt):
            run(["fusermount3", "-u", "-z", str(self.mnt)], timeout=30, check=False)

    def _our_pids(self) -> list[int]:
        """Daemon processes serving our mount: our child, and anything whose
        command line names our (mkdtemp-unique) mount point or image."""
        pids = set()
        if self.proc is not None and self.proc.poll() is None:
            pids.add(self.proc.pid)
        # ("pyfs umount MNT" and "stat MNT" children match too; also ours.)
        marks = {str(self.mnt).encode(), str(self.img).encode()}
        for d in os.listdir("/proc"):
            if not d.isdigit() or int(d) == os.getpid():
                continue
            try:
                with open(f"/proc/{d}/cmdline", "rb") as f:
                    args = f.read().split(b"\0")
            except OSError:
                continue
            if any(a in marks for a in args):
                pids.add(int(d))
        return sorted(pids)

    def _log_tail(self, lines: int = 6) -> str:
        try:
            return _tail(self.log.read_bytes(), lines) or "(no output)"
        except OSError:
            return "(no log)"


class PyfsPeer(FusePeer):
    kind = "pyfs"

    def mkfs(self) -> None:
        run([pyfs_command(), "mkfs", str(self.img), "--size", str(self.size), "-q"],
            timeout=300)

    def mount_cmd(self) -> list[str]:
        # -f: serve in the foreground, so that the daemon is our child and
        # its log (stderr) lands in our daemon.log; the same code serves it.
        cmd = [pyfs_command(), "mount", "-f", str(self.img), str(self.mnt)]
        if self.opts:
            cmd += ["-o", self.opts]
        return cmd

    def unmount_cmd(self) -> list[str]:
        return [pyfs_command(), "umount", str(self.mnt)]

    def stats(self) -> dict | None:
        res = run([pyfs_command(), "stats", str(self.mnt), "--json"], timeout=60)
        try:
            data = json.loads(res.stdout)
        except ValueError:
            raise BenchError(f"pyfs stats: not JSON: {_tail(res.stdout)}") from None
        return {k: v for k, v in data.items()
                if isinstance(v, (int, float)) and not isinstance(v, bool)}


class Fuse2fsPeer(FusePeer):
    kind = "fuse2fs"

    def mkfs(self) -> None:
        run(["mkfs.ext4", "-q", "-F", str(self.img)], timeout=120)

    def mount_cmd(self) -> list[str]:
        # -f: stay in the foreground so that we own the daemon and can wait
        # for it to exit after fusermount3 -u (it writes back on exit).
        # fuse2fs itself adds kernel_cache,use_ino,attr_timeout=0,big_writes.
        cmd = ["fuse2fs", str(self.img), str(self.mnt), "-f"]
        opts = [o for o in self.opts.split(",") if o]
        if not is_root():
            opts.append("fakeroot")
        if opts:
            cmd += ["-o", ",".join(opts)]
        return cmd


class Ext4Peer(Peer):
    """Kernel ext4 on a loop device over the image: the physical reference."""

    kind = "ext4"

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.loop: str | None = None

    def mkfs(self) -> None:
        if not is_root():
            raise BenchError("ext4: needs root for losetup and mount")
        res = run(["losetup", "-f", "--show", str(self.img)], timeout=60)
        self.loop = res.stdout.strip()
        run(["mkfs.ext4", "-q", "-F", self.loop], timeout=120)

    def mount(self) -> None:
        if self.mounted:
            return
        # noinit_itable: no lazy inode-table zeroing thread writing behind
        # the benchmark's back on a freshly made filesystem.
        opts = ",".join(o for o in ["noinit_itable", self.opts] if o)
        run(["mount", "-t", "ext4", "-o", opts, self.loop, str(self.mnt)], timeout=60)
        self.mounted = True

    def unmount(self) -> None:
        if not self.mounted:
            return
        if mount_entry(self.mnt):
            res = run(["umount", str(self.mnt)], timeout=300, check=False)
            if res.returncode != 0:
                time.sleep(1)
                res = run(["umount", str(self.mnt)], timeout=300, check=False)
                if res.returncode != 0:
                    run(["umount", "-l", str(self.mnt)], timeout=60, check=False)
                    self.mounted = False
                    raise BenchError(f"ext4: umount: {_tail(res.stderr)}")
        self.mounted = False

    def detach(self) -> None:
        if self.loop:
            loop, self.loop = self.loop, None
            run(["losetup", "-d", loop], timeout=60)

    def describe(self) -> dict:
        return {"kind": self.kind, "opts": self.opts or "noinit_itable"}


PEER_KINDS = {
    # name -> (class, mount options)
    "pyfs": (PyfsPeer, ""),
    "pyfs-wb4096": (PyfsPeer, "node_dirty_bytes=4096"),
    "pyfs-stock": (PyfsPeer, "fuse_loop=stock"),     # pyfuse3's own session loop
    "fuse2fs": (Fuse2fsPeer, ""),
    "ext4": (Ext4Peer, ""),
}


def make_peer(name: str, workdir: Path, size: int) -> Peer:
    cls, opts = PEER_KINDS[name]
    return cls(name, workdir, size, opts)


# ---------------------------------------------------------------------------
# Workloads: each takes a started peer and a Scale, returns {metric: number}


@dataclass(frozen=True)
class Scale:
    fsmark_files: int = 1000         # -n, files per thread, with -S 1
    fsmark_files_nosync: int = 4000  # -n with -S 0 (fast enough to need more)
    tree_files: int = 10_000
    tree_dirs: int = 10
    tree_file_bytes: int = 1024
    seq_mib: int = 256
    lat_iters: int = 1000           # pwrite+fdatasync iterations
    appends: int = 20_000           # 4-byte appends to one open file
    meta_ops: int = 2000            # files created, stat'ed and unlinked
    timeout: float = 900.0          # per step

    @classmethod
    def quick(cls) -> Scale:
        return cls(fsmark_files=200, fsmark_files_nosync=200, tree_files=1000, tree_dirs=4,
                   seq_mib=16, lat_iters=100, appends=2000, meta_ops=200, timeout=300.0)


_FSMARK_ROW = re.compile(r"^\s*(\d+)\s+(\d+)\s+(\d+)\s+([\d.]+)\s+(\d+)\s*$", re.M)


def parse_fsmark(out: str) -> float:
    rows = _FSMARK_ROW.findall(out)
    if not rows:
        raise BenchError(f"fs_mark: no result row in output: {_tail(out)}")
    return float(rows[-1][3])        # Files/sec


def fsmark(peer: Peer, scale: Scale, sync: int, threads: int) -> dict:
    """fs_mark 4 KiB files, one directory per thread, then rm -rf the tree."""
    top = peer.mnt / "fsmark"
    run(["mkdir", str(top)], timeout=scale.timeout)   # fs_mark makes only the leaves
    files = scale.fsmark_files if sync else scale.fsmark_files_nosync
    cmd = ["fs_mark", "-S", str(sync), "-t", str(threads), "-n", str(files),
           "-s", "4096", "-L", "1", "-k", "-l", str(peer.dir / "fs_mark.log")]
    for t in range(threads):
        cmd += ["-d", f"t{t}"]
    # Relative -d with cwd in the mount: fs_mark wants directory names
    # shorter than 40 bytes.
    res = run(cmd, timeout=scale.timeout, cwd=str(top))
    peer.mark("fsmark")
    out = {"files_per_s": parse_fsmark(res.stdout), "files": threads * files}
    out["rm_s"], _ = timed(["rm", "-rf", str(top)], timeout=scale.timeout)
    peer.mark("rm")
    return out


def tree(peer: Peer, scale: Scale) -> dict:
    """Create a tree of small files in a few directories, then rm -rf it."""
    top = peer.mnt / "tree"
    res = worker("tree-create", top, scale.tree_files, scale.tree_dirs,
                 scale.tree_file_bytes, timeout=scale.timeout)
    peer.mark("create")
    rm_s, _ = timed(["rm", "-rf", str(top)], timeout=scale.timeout)
    peer.mark("rm")
    return {"create_s": res["create_s"], "rm_s": rm_s}


_DD_RATE = re.compile(r"(\d+) bytes .* copied, ([\d.e+-]+) s")


def _dd(cmd: list[str], timeout: float) -> float:
    res = run(cmd, timeout=timeout)
    m = _DD_RATE.search(res.stderr)
    if not m:
        raise BenchError(f"dd: cannot parse: {_tail(res.stderr)}")
    nbytes, secs = int(m.group(1)), float(m.group(2))
    return nbytes / MiB / max(secs, 1e-9)


def seq(peer: Peer, scale: Scale) -> dict:
    """dd write with fsync; then unmount, remount, drop caches, dd read."""
    f = peer.mnt / "seq"
    w = _dd(["dd", "if=/dev/zero", f"of={f}", "bs=1M", f"count={scale.seq_mib}",
             "conv=fsync"], scale.timeout)
    peer.mark("write")
    peer.remount()
    cold = drop_caches()
    r = _dd(["dd", f"if={f}", "of=/dev/null", "bs=1M"], scale.timeout)
    peer.mark("read")
    return {"write_mib_s": w, "read_mib_s": r, "caches_dropped": int(cold)}


def fdatasync_lat(peer: Peer, scale: Scale) -> dict:
    return worker("fdatasync-lat", peer.mnt / "lat", scale.lat_iters, timeout=scale.timeout)


def appends(peer: Peer, scale: Scale) -> dict:
    return worker("appends", peer.mnt / "log", scale.appends, timeout=scale.timeout)


def meta_lat(peer: Peer, scale: Scale) -> dict:
    return worker("meta-lat", peer.mnt / "meta", scale.meta_ops, timeout=scale.timeout)


# ---------------------------------------------------------------------------
# Worker modes (run in a child process by the workloads above)


def _pct(values: list[float], p: float) -> float:
    """Nearest-rank percentile."""
    s = sorted(values)
    k = max(0, min(len(s) - 1, int(round(p / 100 * len(s) + 0.5)) - 1))
    return s[k]


def _w_tree_create(top: str, files: int, dirs: int, nbytes: int) -> dict:
    data = b"x" * nbytes
    t0 = time.perf_counter()
    os.mkdir(top)
    per = -(-files // dirs)
    n = 0
    for d in range(dirs):
        sub = os.path.join(top, f"d{d:03d}")
        os.mkdir(sub)
        for i in range(min(per, files - n)):
            fd = os.open(os.path.join(sub, f"f{i:05d}"), os.O_WRONLY | os.O_CREAT | os.O_EXCL,
                         0o644)
            os.write(fd, data)
            os.close(fd)
            n += 1
    return {"create_s": time.perf_counter() - t0, "files": n}


def _w_fdatasync_lat(path: str, iters: int) -> dict:
    """4 KiB pwrite + fdatasync at random offsets of a 4 MiB file written
    and fsync'd beforehand (an in-place overwrite, as a database does)."""
    span = 4 * MiB
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        chunk = b"\0" * MiB
        for off in range(0, span, MiB):
            os.pwrite(fd, chunk, off)
        os.fsync(fd)
        rng = random.Random(4096)
        buf = os.urandom(4096)
        lat = []
        for _ in range(iters):
            off = rng.randrange(span // 4096) * 4096
            t0 = time.perf_counter_ns()
            os.pwrite(fd, buf, off)
            os.fdatasync(fd)
            lat.append((time.perf_counter_ns() - t0) / 1000)
    finally:
        os.close(fd)
    return {"p50_us": statistics.median(lat), "p99_us": _pct(lat, 99),
            "max_us": max(lat), "iters": iters}


def _meta_ops(top: str, n: int) -> dict[str, list[float]]:
    """Create n empty files, stat each, unlink each; per-op latency in us."""
    os.mkdir(top)
    names = [os.path.join(top, f"m{i:06d}") for i in range(n)]
    lat: dict[str, list[float]] = {"create": [], "stat": [], "unlink": []}
    clock = time.perf_counter_ns
    for p in names:
        t0 = clock()
        os.close(os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
        lat["create"].append((clock() - t0) / 1000)
    for p in names:
        t0 = clock()
        os.stat(p)
        lat["stat"].append((clock() - t0) / 1000)
    for p in names:
        t0 = clock()
        os.unlink(p)
        lat["unlink"].append((clock() - t0) / 1000)
    os.rmdir(top)
    return lat


def _w_appends(path: str, count: int) -> dict:
    """A log writer: open once, append 4 bytes per write(2), close; then read
    the file back cold to check it."""
    rec = b"abc\n"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_TRUNC, 0o644)
    try:
        t0 = time.perf_counter()
        for _ in range(count):
            os.write(fd, rec)
        dt = time.perf_counter() - t0
    finally:
        os.close(fd)
    if os.path.getsize(path) != count * len(rec):
        raise BenchError(f"appends: {path} has {os.path.getsize(path)} bytes, "
                         f"want {count * len(rec)}")
    return {"appends_per_s": count / dt, "count": count}


def _w_meta_lat(top: str, n: int) -> dict:
    """Metadata op latencies alone, then while another process fsyncs in a
    loop (seed 003: no process waits on metadata I/O it did not ask for)."""
    os.makedirs(top)
    out: dict[str, float] = {}
    for op, v in _meta_ops(os.path.join(top, "idle"), n).items():
        out[f"idle_{op}_p99_us"] = _pct(v, 99)
    loop = subprocess.Popen([sys.executable, os.path.abspath(__file__), "fsync-loop",
                             os.path.join(top, "fsync-file")],
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, text=True)
    try:
        line = loop.stdout.readline()           # "ready" after its first fsync
        if line.strip() != "ready":
            raise BenchError(f"fsync loop did not start: {line!r}")
        t0 = time.perf_counter()
        lat = _meta_ops(os.path.join(top, "busy"), n)
        busy_s = time.perf_counter() - t0
    finally:
        loop.send_signal(signal.SIGTERM)
        try:
            tail, _ = loop.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            loop.kill()
            tail, _ = loop.communicate()
    for op, v in lat.items():
        out[f"{op}_p50_us"] = statistics.median(v)
        out[f"{op}_p99_us"] = _pct(v, 99)
    try:
        fsyncs = int(tail.split()[0])
    except (ValueError, IndexError):
        fsyncs = 0
    out["bg_fsyncs_per_s"] = fsyncs / max(busy_s, 1e-9)
    return out


def _w_fsync_loop(path: str) -> None:
    stop = False

    def on_term(_sig, _frm):
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_term)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    buf = b"f" * 4096
    n = 0
    try:
        while not stop:
            os.pwrite(fd, buf, (n % 256) * 4096)
            os.fsync(fd)
            n += 1
            if n == 1:
                print("ready", flush=True)
    finally:
        os.close(fd)
    print(n - 1, flush=True)        # fsyncs after "ready"


FSMARK_STEPS = ("mkdir", "open", "write", "fsync", "close")


def _w_getxattr_lat(path: str, ops: int, cpu: int) -> dict:
    """Mean time of a getxattr of a missing name: one round trip, almost no work."""
    if cpu >= 0:
        os.sched_setaffinity(0, {cpu})

    def once() -> None:
        try:
            os.getxattr(path, "user.pyfs-bench-missing")
        except OSError:
            pass
    once()
    t = time.perf_counter()
    for _ in range(ops):
        once()
    return {"us": (time.perf_counter() - t) / ops * 1e6}


def _w_fsmark_steps(top: str, files: int) -> dict:
    """fs_mark -S 1's syscalls per file, each timed: mean us per step."""
    d = os.path.join(top, "s")
    os.makedirs(d, exist_ok=True)
    buf = bytes(4096)
    acc = dict.fromkeys(FSMARK_STEPS, 0.0)
    pc = time.perf_counter
    for i in range(files):
        t0 = pc()
        try:
            os.mkdir(d + "/")           # fs_mark does this before every file
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
        for name, a, b in zip(FSMARK_STEPS, (t0, t1, t2, t3, t4), (t1, t2, t3, t4, t5)):
            acc[name] += b - a
    return {k: v / files * 1e6 for k, v in acc.items()}


def _w_walk(top: str) -> dict:
    """os.scandir + lstat of every entry one level below top's directories."""
    t = time.perf_counter()
    n = 0
    for sub in os.scandir(top):
        if sub.is_dir(follow_symlinks=False) and sub.name != "lost+found":
            for e in os.scandir(sub.path):
                e.stat(follow_symlinks=False)
                n += 1
    return {"walked": n, "walk_s": time.perf_counter() - t}


def _worker_main(argv: list[str]) -> int:
    if not argv:
        print(__doc__, file=sys.stderr)
        return 2
    mode, args = argv[0], argv[1:]
    if mode == "fsync-loop":
        _w_fsync_loop(args[0])
        return 0
    if mode == "tree-create":
        res = _w_tree_create(args[0], int(args[1]), int(args[2]), int(args[3]))
    elif mode == "fdatasync-lat":
        res = _w_fdatasync_lat(args[0], int(args[1]))
    elif mode == "meta-lat":
        res = _w_meta_lat(args[0], int(args[1]))
    elif mode == "appends":
        res = _w_appends(args[0], int(args[1]))
    elif mode == "getxattr-lat":
        res = _w_getxattr_lat(args[0], int(args[1]), int(args[2]))
    elif mode == "fsmark-steps":
        res = _w_fsmark_steps(args[0], int(args[1]))
    elif mode == "walk":
        res = _w_walk(args[0])
    else:
        print(f"unknown worker mode {mode!r}", file=sys.stderr)
        return 2
    print(json.dumps(res))
    return 0


if __name__ == "__main__":
    sys.exit(_worker_main(sys.argv[1:]))
