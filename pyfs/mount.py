"""Mounting: options, the daemon, its background tasks, signals, umount, stats.

`pyfs mount IMAGE DIR` forks a daemon and returns once the filesystem is
mounted and serving (the daemon reports "ready" or an error through a pipe);
`-f` keeps it in the foreground. The daemon records itself in a runtime file
(/run/pyfs/<hash of the mountpoint>.pid, JSON) that `pyfs umount` uses to wait
until the daemon has written everything back and exited. SIGTERM/SIGINT/SIGHUP
unmount cleanly.

Background tasks (trio, on the same thread as the FUSE handlers, so engine
calls never interleave): the journal flush timer (every flush_delay_ms when
something committed is not yet durable), journal reclaim when the ring is
more than half full, node cache eviction, discards, and copygc.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger("pyfs.mount")

HOUSEKEEPING_S = 0.2            # reclaim / evict / discard / copygc cadence
DISCARDS_PER_TICK = 256
UMOUNT_TIMEOUT_S = 120.0
FSTYPE = "fuse.pyfs"            # what the kernel calls a pyfs mount (subtype=pyfs)
FUSE_LOOPS = ("lean", "stock")  # see pyfs/fuse_loop.py


class MountFailed(Exception):
    """Mounting or unmounting failed; the message says why (one line)."""


# --------------------------------------------------------------------------
# Options

# Generic flags libfuse's mount accepts: handed through to the kernel mount.
FUSE_FLAGS = {"nosuid", "suid", "nodev", "dev", "noexec", "exec", "async", "sync",
              "dirsync", "allow_root", "auto_unmount"}
# mount.fuse3's ignore list plus what mount(8) and fstab add: nothing to do.
IGNORED = {"defaults", "auto", "noauto", "user", "nouser", "users", "owner", "group",
           "_netdev", "nofail", "default_permissions"}
# Generic flags libfuse rejects (its mount fails with them), answered here:
# pyfs updates atimes itself (relatime, on file reads; never on directories,
# so [no]diratime changes nothing), and timestamps reach the disk with the
# journal like every other change, which is what lazytime asks for.
ATIME_FLAGS = {"atime", "relatime", "strictatime", "norelatime", "nostrictatime"}
NO_EFFECT = {"lazytime", "nolazytime", "diratime", "nodiratime"}
# What errors= accepts (ro: the old name of remount-ro).
ERRORS = {"continue": "continue", "remount-ro": "remount-ro", "ro": "remount-ro"}
# Options a remount can change; the rest of what mount(8) hands a remount
# helper (the options in mountinfo and fstab) is left as it is.
REMOUNT_CHANGES = {"ro", "rw", "noatime", "errors"} | ATIME_FLAGS


@dataclass
class MountOptions:
    ro: bool = False
    allow_other: bool = False
    debug: bool = False
    flush_delay_ms: int = 1000
    node_dirty_bytes: int | None = None     # None: half a node (the btree's default)
    cache_nodes: int | None = None      # None: the node cache default (32 MiB of nodes)
    fsname: str | None = None
    noatime: bool = False
    discard: bool = True
    foreground: bool = False
    errors: str = "remount-ro"
    fuse_loop: str = "lean"             # or "stock": pyfuse3's own (see fuse_loop.py)
    passthrough: list[str] = field(default_factory=list)

    def fuse_options(self, image: str) -> set[str]:
        opts = {"default_permissions", "subtype=pyfs",
                "fsname=" + (self.fsname or os.path.abspath(image)).replace(",", "_")}
        if self.allow_other:
            opts.add("allow_other")
        if self.ro:
            opts.add("ro")
        if self.debug:
            opts.add("debug")
        if self.noatime:
            opts.add("noatime")
        if os.geteuid() == 0:
            # Like a kernel filesystem mounted by root (libfuse's default is
            # nosuid,nodev); nosuid/nodev in the options still win.
            for flag in ("suid", "dev"):
                if "no" + flag not in self.passthrough:
                    opts.add(flag)
        opts.update(self.passthrough)
        return opts


def _int_opt(name: str, val: str, lo: int) -> int:
    try:
        n = int(val, 0)
    except ValueError:
        raise MountFailed(f"mount option {name}={val}: not a number") from None
    if n < lo:
        raise MountFailed(f"mount option {name}={val}: must be at least {lo}")
    return n


def _choice_opt(name: str, val: str, choices: tuple[str, ...]) -> str:
    if val not in choices:
        raise MountFailed(f"mount option {name}={val}: one of {', '.join(choices)}")
    return val


def _size_opt(name: str, val: str) -> int:
    from .cli import CliError, parse_size
    try:
        return parse_size(val, name)
    except CliError as e:
        raise MountFailed(f"mount option {name}: {e}") from None


def _errors_opt(val: str) -> str:
    if val == "panic":
        raise MountFailed("mount option errors=panic is not supported: a FUSE filesystem "
                          "cannot panic the kernel; use errors=remount-ro or errors=continue")
    if val not in ERRORS:
        raise MountFailed(f"mount option errors={val}: expected continue or remount-ro")
    return ERRORS[val]


def _flag(o: MountOptions, name: str) -> bool:
    """Apply a valueless option; False if it is not one."""
    if name in ("ro", "rw"):
        o.ro = name == "ro"
    elif name in ("discard", "nodiscard"):
        o.discard = name == "discard"
    elif name in ("allow_other", "debug", "foreground"):
        setattr(o, name, True)
    elif name == "noatime":
        o.noatime = True
    elif name in ATIME_FLAGS:
        o.noatime = False
    elif name in FUSE_FLAGS:
        o.passthrough.append(name)
    else:
        return name in NO_EFFECT or name in IGNORED
    return True


def _valued(o: MountOptions, name: str, val: str) -> bool:
    """Apply a name=value option; False if it is not one."""
    if name == "flush_delay_ms":
        o.flush_delay_ms = _int_opt(name, val, 1)
    elif name == "cache_nodes":
        o.cache_nodes = _int_opt(name, val, 16)
    elif name in ("node_dirty_bytes", "btree_write_buffer"):
        # btree_write_buffer: the old name, kept for one release (in bcachefs a
        # "write buffer" is another mechanism: batched backpointer updates).
        if name == "btree_write_buffer":
            log.warning("mount option btree_write_buffer is now node_dirty_bytes")
        o.node_dirty_bytes = _size_opt(name, val)
    elif name == "fsname":
        o.fsname = val
    elif name == "errors":
        o.errors = _errors_opt(val)
    elif name == "fuse_loop":
        o.fuse_loop = _choice_opt(name, val, FUSE_LOOPS)
    else:
        return False
    return True


def split_options(texts: list[str] | str | None) -> list[str]:
    """'a,b' strings (one per -o) -> the list of non-empty items."""
    if isinstance(texts, str):
        texts = [texts]
    return [s.strip() for text in texts or [] for s in text.split(",") if s.strip()]


def parse_options(texts: list[str] | str | None, sloppy: bool = False) -> MountOptions:
    """Parse -o option strings ("ro,flush_delay_ms=500"); unknown ones are
    errors (ignored with sloppy, as mount -s asks)."""
    o = MountOptions()
    for item in split_options(texts):
        name, eq, val = item.partition("=")
        if name.startswith("x-") or name == "comment":
            continue
        known = _valued(o, name, val) if eq else _flag(o, name)
        if not known and not sloppy:
            raise MountFailed(f"unknown mount option {item!r}")
    return o


def parse_remount_options(items: list[str]) -> dict:
    """What a remount changes: {"ro": bool, "errors": str, "noatime": bool},
    each only if asked for. mount(8) hands the helper the mount's current
    options too (user_id=, allow_other, fstab's own); those cannot change and
    are left alone."""
    changes: dict = {}
    for item in items:
        name, eq, val = item.partition("=")
        if name not in REMOUNT_CHANGES:
            continue
        o = MountOptions()
        if eq:
            _valued(o, name, val)
            changes["errors"] = o.errors
        elif name in ("ro", "rw"):
            changes["ro"] = name == "ro"
        else:
            _flag(o, name)
            changes["noatime"] = o.noatime
    return changes


# --------------------------------------------------------------------------
# Runtime files

def runtime_dir() -> Path:
    if os.geteuid() == 0:
        d = Path("/run/pyfs")
    else:
        base = os.environ.get("XDG_RUNTIME_DIR") or f"/tmp/pyfs-{os.getuid()}"
        d = Path(base) / "pyfs"
    d.mkdir(parents=True, exist_ok=True, mode=0o755)
    return d


def _key(mountpoint: str) -> str:
    return hashlib.sha1(os.path.realpath(mountpoint).encode()).hexdigest()[:16]


def pid_file(mountpoint: str) -> Path:
    return runtime_dir() / f"{_key(mountpoint)}.pid"


def log_file(mountpoint: str) -> Path:
    return runtime_dir() / f"{_key(mountpoint)}.log"


def read_pid_file(mountpoint: str) -> dict | None:
    try:
        return json.loads(pid_file(mountpoint).read_text())
    except (OSError, ValueError):
        return None


@dataclass
class MountEntry:
    """One line of /proc/self/mountinfo."""
    mountpoint: str
    fstype: str
    source: str
    options: list[str]          # per-mount options, then the superblock's


def mount_entry(path: str) -> MountEntry | None:
    """The topmost mount on path (a mount point, not a path inside one)."""
    target = os.path.realpath(path)
    found = None
    try:
        with open("/proc/self/mountinfo") as f:
            for line in f:
                fields, _sep, tail = line.partition(" - ")
                parts, rest = fields.split(), tail.split()
                if len(parts) > 5 and len(rest) > 2 and _unescape(parts[4]) == target:
                    found = MountEntry(target, rest[0], _unescape(rest[1]),
                                       parts[5].split(",") + rest[2].split(","))
    except OSError:
        pass
    return found


def is_mounted(mountpoint: str) -> bool:
    return mount_entry(mountpoint) is not None


def require_pyfs_mount(path: str) -> MountEntry:
    """The pyfs mount on path, or MountFailed saying what path is instead."""
    e = mount_entry(path)
    if e is None:
        what = "not mounted" if os.path.isdir(path) else "not a directory"
        raise MountFailed(f"{path} is {what}; expected the mount point of a pyfs filesystem")
    if e.fstype != FSTYPE:
        raise MountFailed(f"{path} is not a pyfs mount: it is a {e.fstype} mount of "
                          f"{e.source}; refusing to touch it")
    return e


def _unescape(path: str) -> str:
    """mountinfo escapes space, tab, newline and backslash as octal."""
    if "\\" not in path:
        return path
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m[1], 8)), path)


# --------------------------------------------------------------------------
# Mounting

def mount(image: str, mountpoint: str, opts: MountOptions) -> None:
    """Mount image on mountpoint; return once it serves (or raise MountFailed).
    With opts.foreground, serve here until unmounted."""
    if not os.path.exists(image):
        raise MountFailed(f"{image}: no such file or device")
    if not os.path.isdir(mountpoint):
        raise MountFailed(f"mount point {mountpoint} is not a directory")
    info = read_pid_file(mountpoint)
    if info is not None and _alive(info.get("pid", 0)) and is_mounted(mountpoint):
        raise MountFailed(f"{mountpoint} is already a pyfs mount (of {info.get('image')})")
    if opts.foreground:
        code = serve(image, mountpoint, opts, notify_fd=None)
        if code:
            raise MountFailed("filesystem failed; see the log above")
        return
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:                                    # the daemon
        os.close(r)
        code = 1
        try:
            os.setsid()
            _detach_stdio()
            code = serve(image, mountpoint, opts, notify_fd=w)
        except BaseException as e:                  # never return into the caller's code
            _notify(w, f"error: {e}")
        finally:
            os._exit(code)
    os.close(w)
    msg = _read_line(r)
    os.close(r)
    if msg == "ready":
        return
    _pid, status = os.waitpid(pid, 0)
    if msg.startswith("error: "):
        raise MountFailed(msg[7:])
    raise MountFailed(f"mount daemon died ({_status_text(status)}); see {log_file(mountpoint)}")


def _status_text(status: int) -> str:
    if os.WIFSIGNALED(status):
        return f"killed by signal {os.WTERMSIG(status)}"
    return f"exit status {os.waitstatus_to_exitcode(status)}"


def _read_line(fd: int) -> str:
    buf = b""
    while not buf.endswith(b"\n"):
        chunk = os.read(fd, 4096)
        if not chunk:
            break
        buf += chunk
    return buf.decode(errors="replace").strip()


def _notify(fd: int | None, msg: str) -> None:
    if fd is None:
        if msg.startswith("error: "):
            print(f"pyfs mount: {msg[7:]}", file=sys.stderr)
        return
    try:
        os.write(fd, (msg.replace("\n", " ") + "\n").encode())
        os.close(fd)
    except OSError:
        pass


def _detach_stdio() -> None:
    fd = os.open(os.devnull, os.O_RDWR)
    for i in (0, 1, 2):
        os.dup2(fd, i)
    if fd > 2:
        os.close(fd)


class _Worst(logging.Handler):
    """Remembers the most severe level logged (a clean session's log is dropped)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.worst = 0

    def emit(self, record: logging.LogRecord) -> None:
        self.worst = max(self.worst, record.levelno)


def _setup_logging(mountpoint: str, opts: MountOptions, foreground: bool) -> _Worst:
    root = logging.getLogger()
    root.handlers.clear()
    if foreground:
        h: logging.Handler = logging.StreamHandler(sys.stderr)
    else:
        h = logging.FileHandler(log_file(mountpoint))
    h.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s: %(message)s"))
    root.addHandler(h)
    worst = _Worst()
    root.addHandler(worst)
    root.setLevel(logging.DEBUG if opts.debug else logging.INFO)
    return worst


def serve(image: str, mountpoint: str, opts: MountOptions, notify_fd: int | None) -> int:
    """Open, mount and serve until unmounted. Returns an exit code."""
    import pyfuse3
    import trio

    from . import fuse_loop
    from .device import DeviceBusy, open_device
    from .engine import Engine
    from .fs import Filesystem
    from .fuse import Operations
    from .group_commit import Flusher, FlushThread

    logf = log_file(mountpoint)
    keep_log = notify_fd is None or (logf.exists() and logf.stat().st_size > 0)
    worst = _setup_logging(mountpoint, opts, notify_fd is None)
    mountpoint = os.path.realpath(mountpoint)
    try:
        dev = open_device(image, read_only=opts.ro, exclusive=True)
    except DeviceBusy:
        _notify(notify_fd, f"error: {image} is in use (mounted, or opened by fsck or "
                           "another pyfs tool)")
        return 1
    except OSError as e:
        _notify(notify_fd, f"error: {e.strerror or e}")
        return 1
    try:
        eng = Engine(dev, background=True, write_buffer=opts.node_dirty_bytes,
                     cache_nodes=opts.cache_nodes, read_only=opts.ro, discard=opts.discard)
        fs = Filesystem(eng)
    except Exception as e:
        dev.close()
        log.exception("mount of %s failed", image)
        _notify(notify_fd, f"error: cannot mount {image}: {e}")
        return 1
    for w in eng.warnings:
        log.warning("%s", w)
    fs.atime = not opts.noatime
    # Paths first: once mounted, resolving the mountpoint would ask ourselves.
    pidf = pid_file(mountpoint)
    flush_thread = FlushThread()
    flusher = Flusher(eng, run_sync=flush_thread.run_sync, before_wait=fuse_loop.handoff)
    ops = Operations(fs, flusher, errors=opts.errors)
    try:
        pyfuse3.init(ops, mountpoint, opts.fuse_options(image))
    except Exception as e:
        flush_thread.stop()
        eng.close()
        _notify(notify_fd, f"error: FUSE mount on {mountpoint} failed: {e}")
        return 1
    pidf.write_text(json.dumps({"pid": os.getpid(), "image": os.path.abspath(image),
                                "mountpoint": mountpoint, "log": str(logf)}))
    log.info("mounted %s on %s (pid %d)", image, mountpoint, os.getpid())
    try:
        trio.run(_main, ops, opts, lambda: _notify(notify_fd, "ready"))
    except BaseException as e:
        ops.fatal(e)
    finally:
        pyfuse3.close(unmount=True)
        flush_thread.stop()             # trio.run has returned: no flush is in flight
        code = _shutdown(ops)
        pidf.unlink(missing_ok=True)
        if not keep_log and worst.worst < logging.WARNING:
            logf.unlink(missing_ok=True)        # nothing worth keeping
    return code


def _shutdown(ops) -> int:
    """Unmounted: write everything back (clean), or leave it to replay (failed)."""
    eng = ops.eng
    if ops.failed is None and not eng.read_only:
        try:
            ops.fs.shutdown()
            eng.close()
            log.info("unmounted cleanly")
            return 0
        except Exception as e:
            log.exception("clean unmount failed")
            ops.failed = e
    eng.close(clean=False)
    if ops.failed is not None:
        log.error("unmounted after a fatal error; the next mount replays the journal")
        return 1
    return 0


async def _main(ops, opts: MountOptions, ready) -> None:
    import pyfuse3
    import trio

    from .fuse_loop import session_loop
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_signals)
        nursery.start_soon(_background, ops, opts)
        ready()
        with session_loop(pyfuse3, opts.fuse_loop, ops.eng.counters):
            await pyfuse3.main()
        nursery.cancel_scope.cancel()


async def _signals() -> None:
    import pyfuse3
    import trio
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as sigs:
        async for sig in sigs:
            log.info("signal %d: unmounting", sig)
            pyfuse3.terminate()


async def _background(ops, opts: MountOptions) -> None:
    import trio
    eng = ops.eng
    flusher = ops.flusher
    delay = opts.flush_delay_ms / 1000
    last_flush = time.monotonic()
    while True:
        await trio.sleep(min(delay, HOUSEKEEPING_S))
        if ops.failed is not None or eng.read_only:
            continue
        try:
            if time.monotonic() - last_flush >= delay:
                last_flush = time.monotonic()
                if flusher.dirty():
                    await flusher.flush()
            _housekeeping(eng)
        except trio.Cancelled:
            raise
        except Exception as e:
            ops.error(e)            # fatal only for device errors and corruption


def _housekeeping(eng) -> None:
    if eng.journal.fill_ratio() > 0.5:
        eng.reclaim()
    if len(eng.btrees.cache) > eng.btrees.cache_nodes:
        eng.btrees.maybe_evict()
    st = eng.alloc.state
    if st.discard_ready:
        st.do_discards(DISCARDS_PER_TICK)
    copygc = getattr(eng, "maybe_copygc", None)
    if copygc is not None:
        copygc()


# --------------------------------------------------------------------------
# Unmounting and stats

def umount(mountpoint: str, timeout: float = UMOUNT_TIMEOUT_S, lazy: bool = False) -> None:
    """Unmount, then wait until the daemon has written everything back and exited."""
    mnt = os.path.realpath(mountpoint)
    info = read_pid_file(mnt)
    entry = mount_entry(mnt)
    if entry is None:
        if info is None or not _alive(info.get("pid", 0)):
            raise MountFailed(f"{mountpoint} is not mounted")
    else:
        require_pyfs_mount(mnt)                 # never unmount what is not ours
        _unmount(mnt, lazy)
    if info is None:
        return
    pid = info.get("pid", 0)
    deadline = time.monotonic() + timeout
    while _alive(pid):
        if time.monotonic() > deadline:
            raise MountFailed(f"the pyfs daemon (pid {pid}) has not finished writing back "
                              f"after {timeout:g} s; it is still running")
        time.sleep(0.05)
    _check_released(info.get("image"), mnt)


def _unmount(mnt: str, lazy: bool) -> None:
    cmd = ["fusermount3", "-u"] + (["-z"] if lazy else []) + [mnt]
    try:
        r = subprocess.run(cmd, capture_output=True, text=True)
    except FileNotFoundError:
        r = subprocess.run(["umount"] + (["-l"] if lazy else []) + [mnt],
                           capture_output=True, text=True)
    if r.returncode:
        msg = (r.stderr or r.stdout).strip().splitlines()
        raise MountFailed(msg[-1] if msg else f"unmounting {mnt} failed")


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")      # a zombie has finished (nobody may reap it)


def _check_released(image: str | None, mnt: str) -> None:
    """The daemon is gone: its image lock must be free and its superblock clean."""
    if not image:
        return
    from .device import DeviceBusy, open_device
    from .format import SbState
    from .superblock import read_superblock
    try:
        dev = open_device(image, read_only=True, exclusive=True)
    except DeviceBusy:
        raise MountFailed(f"{image} is still in use after the daemon exited") from None
    except OSError:
        return
    with dev:
        try:
            sb, _w = read_superblock(dev)
        except Exception:
            return
    if sb.state != SbState.clean:
        raise MountFailed(f"{image} was not unmounted cleanly (see {log_file(mnt)}); "
                          "the next mount will replay its journal")


def _root_xattr(mountpoint: str, name: bytes) -> dict:
    require_pyfs_mount(mountpoint)
    try:
        raw = os.getxattr(mountpoint, name.decode())
    except OSError as e:
        if e.errno in (errno.ENODATA, errno.EOPNOTSUPP, errno.ENOTSUP):
            raise MountFailed(f"{mountpoint} is not the root of a pyfs mount") from None
        raise MountFailed(f"{mountpoint}: {e.strerror}") from None
    try:
        return json.loads(raw)
    except ValueError:
        raise MountFailed(f"{mountpoint}: the daemon sent no JSON in {name.decode()}") from None


def read_stats(mountpoint: str) -> dict:
    from .fuse import STATS_XATTR
    return _root_xattr(mountpoint, STATS_XATTR)


def read_state(mountpoint: str) -> dict:
    from .fuse import STATE_XATTR
    return _root_xattr(mountpoint, STATE_XATTR)


def format_stats(stats: dict) -> str:
    width = max(map(len, stats), default=0)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in sorted(stats.items()))


# --------------------------------------------------------------------------
# Remounting and other commands to a running daemon

_CONTROL_ERRORS = {
    errno.EROFS: "it was mounted read-only (ro), its image is open read-only; unmount it "
                 "and mount it again without ro",
    errno.EIO: "the filesystem stopped after an error (see `pyfs stats`); unmount it, "
               "run fsck and mount it again",
    errno.EPERM: "only root may remount a pyfs filesystem",
}


def control(mountpoint: str, command: str) -> None:
    """Write a command to the daemon (see pyfs/fuse.py, pyfs.control)."""
    from .fuse import CONTROL_XATTR
    try:
        os.setxattr(mountpoint, CONTROL_XATTR.decode(), command.encode())
    except OSError as e:
        why = _CONTROL_ERRORS.get(e.errno, e.strerror)
        raise MountFailed(f"{mountpoint}: cannot {command}: {why}") from None


def sync(mountpoint: str) -> None:
    """Make everything the daemon has committed durable (before reading the
    image from outside). A read-only mount has nothing to write."""
    from .fuse import CONTROL_XATTR
    try:
        os.setxattr(mountpoint, CONTROL_XATTR.decode(), b"sync")
    except OSError as e:
        if e.errno != errno.EROFS:
            raise MountFailed(f"{mountpoint}: cannot sync: {e.strerror}") from None


def remount(mountpoint: str, options: list[str]) -> None:
    """mount -o remount,...: the kernel does not tell a FUSE daemon about a
    remount, so tell the daemon (it writes back and stops writing, or resumes)
    while the kernel mount is writable, and remount the kernel's side."""
    e = require_pyfs_mount(mountpoint)
    mnt = e.mountpoint
    changes = parse_remount_options(options)
    kernel_ro = e.options[0] == "ro"
    want_ro = changes.get("ro", kernel_ro)
    if not want_ro:
        _kernel_remount(mnt, options, ro=False)
    if not (kernel_ro and want_ro):             # pyfs.control needs a writable mount
        if "errors" in changes:
            control(mnt, f"errors={changes['errors']}")
        if "noatime" in changes:
            control(mnt, "noatime" if changes["noatime"] else "atime")
    if want_ro:
        control(mnt, "ro")
        try:
            _kernel_remount(mnt, options, ro=True)
        except MountFailed:
            if not kernel_ro:
                control(mnt, "rw")
            raise
        return
    try:
        control(mnt, "rw")
    except MountFailed:
        if kernel_ro:
            _kernel_remount(mnt, options, ro=True)
        raise


def _kernel_remount(mnt: str, options: list[str], ro: bool) -> None:
    """The VFS side of a remount, by mount(8) itself (-i: no helper, so not us
    again), with the options mount(8) gave us: it keeps nosuid, nodev, ..."""
    opts = [o for o in options if o not in ("ro", "rw", "remount")] + ["remount"]
    opts.append("ro" if ro else "rw")
    r = subprocess.run(["mount", "-i", "-o", ",".join(opts), mnt], capture_output=True,
                       text=True)
    if r.returncode:
        msg = (r.stderr or r.stdout).strip().splitlines()    # then a hint about dmesg
        raise MountFailed(msg[0].strip() if msg else f"remounting {mnt} failed")
