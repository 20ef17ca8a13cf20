"""The FUSE edge: pyfuse3 Operations over the synchronous Filesystem.

Each handler decodes the request, calls Filesystem on the trio thread (the
engine is single-threaded; its calls never wait for I/O) and maps FSError to
FUSEError. The slow waits run off the event loop: fsync awaits durability of
the inode's last commit through the Flusher (group commit: one device flush
serves every waiter whose commit it covers).

Direct I/O and the page cache: see DirectIO.

Errors: a request that raises something other than an errno answers EIO.
Device I/O errors and on-disk corruption are filesystem errors: with
errors=remount-ro (the default) the filesystem turns read-only (writes get
EROFS), stops writing the journal and unmounts without the clean flag, so the
next mount replays the last durable state; errors=continue fails only the
request. Any other exception (a bug) fails only its request either way, since
every commit is whole or not at all. But once a commit failed part way (the
engine stopped) or a journal flush failed, nothing more may be written,
whatever the policy.

Virtual xattrs of the mount root: `pyfs.stats` (counters) and `pyfs.state`
(read-only or not and why, errors policy, journal fill, last flush) are read
by `pyfs stats`; root writes `pyfs.control` to remount (`ro`, `rw`,
`errors=...`, `atime`, `noatime`) and to make everything committed durable
(`sync`), since the kernel does not tell a FUSE daemon about a remount.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import time
from collections.abc import Callable

import pyfuse3
import trio

from .alloc.foreground import NoSpace
from .fs import Attr, Filesystem, FSError, stops_writes
from .group_commit import Flusher, FlushingStopped

log = logging.getLogger("pyfs.fuse")

# We are the only writer and the kernel sees every change through us, so
# what it caches only goes stale by our own relatime atime updates: long
# timeouts are safe, and spare a getattr/lookup round trip per access.
ENTRY_TIMEOUT = 60.0
ATTR_TIMEOUT = 60.0
STATS_XATTR = b"pyfs.stats"
STATE_XATTR = b"pyfs.state"
CONTROL_XATTR = b"pyfs.control"
ERRORS_POLICIES = ("remount-ro", "continue")


def entry(attr: Attr) -> pyfuse3.EntryAttributes:
    e = pyfuse3.EntryAttributes()
    e.st_ino = attr.st_ino
    e.generation = attr.generation
    e.entry_timeout = ENTRY_TIMEOUT
    e.attr_timeout = ATTR_TIMEOUT
    e.st_mode = attr.st_mode
    e.st_nlink = attr.st_nlink
    e.st_uid = attr.st_uid
    e.st_gid = attr.st_gid
    e.st_rdev = attr.st_rdev
    e.st_size = attr.st_size
    e.st_blksize = 4096
    e.st_blocks = attr.st_blocks
    e.st_atime_ns = attr.st_atime_ns
    e.st_mtime_ns = attr.st_mtime_ns
    e.st_ctime_ns = attr.st_ctime_ns
    e.st_birthtime_ns = attr.st_birthtime_ns
    return e


def negative_entry() -> pyfuse3.EntryAttributes:
    """ENOENT the kernel may cache (inode 0 with a timeout: a negative dentry)."""
    e = pyfuse3.EntryAttributes()
    e.st_ino = 0
    e.entry_timeout = ENTRY_TIMEOUT
    return e


def stats_dict(eng) -> dict[str, int]:
    """The counters `pyfs stats` prints, with the short names it promises."""
    s = eng.stats()
    s["dev_discards"] = s.get("dev_discards", 0)
    s["discards"] = s["dev_discards"]
    s.setdefault("bounces", 0)
    return {k: v for k, v in s.items() if isinstance(v, (int, float))}


class DirectIO:
    """Keeps the kernel's page cache of a file right after O_DIRECT writes.

    The kernel drops a file's cached pages before a direct write and, for a
    synchronous one, again after it; for an asynchronous one (io_submit; libfuse
    3 negotiates FUSE_ASYNC_DIO) it skips the second pass, and a buffered read
    that raced with the write leaves the old data cached, past the write's
    completion. So after a write through an O_DIRECT handle the daemon, before
    replying, invalidates the inode's pages (and attributes) itself, if a
    buffered read or write may have filled them since the O_DIRECT open or the
    last invalidation. Only inodes with O_DIRECT opens are tracked; buffered
    workloads pay one dictionary lookup per read or write.

    The invalidation runs in a worker thread: it waits for pages locked by
    reads in flight, which only the event loop can answer. fcntl(F_SETFL,
    O_DIRECT) on an open file is not seen by the daemon (the open flags are)."""

    def __init__(self, counters: dict):
        self.handles: set[int] = set()          # fhs opened with O_DIRECT
        self.opens: dict[int, int] = {}         # inum -> O_DIRECT opens
        self.cached: set[int] = set()           # of those, inums whose pages may be cached
        self.busy: dict[int, int] = {}          # inum -> invalidations in flight
        self.c = counters
        counters.setdefault("fuse_dio_invalidations", 0)

    def opened(self, fh: int, inum: int, flags: int) -> None:
        if flags & os.O_DIRECT:
            self.handles.add(fh)
            self.opens[inum] = self.opens.get(inum, 0) + 1
            self.cached.add(inum)               # pages from before the open

    def released(self, fh: int, inum: int) -> None:
        if fh in self.handles:
            self.handles.discard(fh)
            n = self.opens[inum] - 1
            if n:
                self.opens[inum] = n
            else:
                del self.opens[inum]
                self.cached.discard(inum)

    def buffered_io(self, inum: int) -> None:
        """A read or write through the page cache of inum was served."""
        if inum in self.opens:
            self.cached.add(inum)

    async def wrote(self, fh: int, inum: int) -> None:
        """A write through fh committed: drop the pages it may have made stale."""
        if fh not in self.handles:
            self.buffered_io(inum)
            return
        # An invalidation still in flight for an earlier write may not yet have
        # dropped pages this write made stale: then this write needs its own.
        if inum not in self.cached and not self.busy.get(inum):
            return
        self.cached.discard(inum)               # reads served from now on see the write
        self.busy[inum] = self.busy.get(inum, 0) + 1
        self.c["fuse_dio_invalidations"] += 1
        try:
            await trio.to_thread.run_sync(pyfuse3.invalidate_inode, inum)
        except OSError as e:
            if e.errno != errno.ENOENT:         # ENOENT: the kernel caches nothing of it
                log.warning("page cache invalidation of inode %d failed: %s", inum, e)
        finally:
            n = self.busy.pop(inum) - 1
            if n:
                self.busy[inum] = n


class Operations(pyfuse3.Operations):
    supports_dot_lookup = True
    enable_writeback_cache = False
    enable_acl = True          # FUSE_POSIX_ACL: the kernel checks ACLs, we keep them (fs/acl.py)

    def __init__(self, fs: Filesystem, flusher: Flusher, *,
                 on_fatal: Callable[[BaseException], None] | None = None,
                 errors: str = "remount-ro"):
        super().__init__()
        self.fs = fs
        self.eng = fs.eng
        self.flusher = flusher
        self.on_fatal = on_fatal
        self.errors = errors
        self.failed: BaseException | None = None
        self.last_error: str | None = None
        self.mounted_ro = fs.read_only
        self.ro_reason: str | None = "mounted read-only (-o ro)" if fs.read_only else None
        self.files: dict[int, tuple[int, int]] = {}      # fh -> (inum, opener uid)
        self.dio = DirectIO(self.eng.counters)
        self.dirs: dict[int, int] = {}                   # fh -> inum
        self.next_fh = 1
        for name in ("fuse_flush_requests", "fs_errors", "fs_remounts"):
            self.eng.counters.setdefault(name, 0)

    # ------------------------------------------------------------ plumbing

    def _call(self, fn, *args, **kw):
        try:
            return fn(*args, **kw)
        except FSError as e:
            raise pyfuse3.FUSEError(e.errno) from None
        except NoSpace:
            raise pyfuse3.FUSEError(errno.ENOSPC) from None
        except pyfuse3.FUSEError:
            raise
        except Exception as e:
            self.error(e)
            raise pyfuse3.FUSEError(errno.EIO) from None

    def error(self, exc: BaseException) -> None:
        """An unexpected exception in a request or a background task. Only device
        errors and corruption are filesystem errors (errors= decides); anything
        else left nothing half-done, as every commit is whole or not at all.
        A commit that failed part way (the engine stopped) or a failed journal
        flush stops all writing whatever the policy."""
        self.eng.counters["fs_errors"] += 1
        self.last_error = repr(exc)
        must_stop = self.eng.failed is not None or self.flusher.failed is not None
        if not must_stop and (self.errors == "continue" or not stops_writes(exc, self.eng)):
            log.error("pyfs: request failed (the filesystem stays writable): %r", exc,
                      exc_info=exc)
            return
        self.fatal(exc)

    def fatal(self, exc: BaseException) -> None:
        """errors=remount-ro: log, stop changes and journal writes."""
        if self.failed is None:
            self.failed = exc
            log.critical("pyfs: fatal error, filesystem is now read-only: %r", exc,
                         exc_info=exc)
            self.eng.counters["fs_fatal_errors"] = 1
            self.ro_reason = f"stopped after an error: {exc!r}"
            # Everything committed is written and flushed first, if the device
            # still allows it (the engine did so already if a commit failed).
            self.eng.stop(exc)
        self.fs.set_read_only()
        self.flusher.stop()
        if self.on_fatal is not None:
            self.on_fatal(exc)

    def _fh(self, inum: int, uid: int, flags: int) -> int:
        fh = self.next_fh
        self.next_fh += 1
        self.files[fh] = (inum, uid)
        self.dio.opened(fh, inum, flags)
        return fh

    async def _change(self, fn, *args, **kw):
        """_call for a request that may commit: what it committed is on the image
        before the answer goes out (an error answer too: part of an operation
        may have committed)."""
        try:
            return self._call(fn, *args, **kw)
        finally:
            await self._ack()

    async def _ack(self) -> None:
        """Acknowledged means written: everything committed goes to the image
        (pwrite, no device flush), so a dead daemon loses nothing the kernel
        was told. A journal write that points at nodes written since the last
        device flush waits for one first (in the flush thread), as it would
        for a power cut."""
        eng = self.eng
        j = eng.journal
        if eng.failed is not None or self.fs.read_only or not j.unwritten():
            return
        for _ in range(3):
            if not j.needs_preflush():
                break
            try:
                await self.flusher.preflush()
            except Exception as e:
                self.error(e)
                return
        try:
            eng.persist()
        except Exception as e:
            self.error(e)

    async def _sync(self, inum: int) -> None:
        seq = self._call(self.fs.fsync, inum)
        if seq and self.eng.journal.durable_seq < seq:
            try:
                await self.flusher.wait(seq)
            except (FSError, FlushingStopped) as e:
                raise pyfuse3.FUSEError(e.errno) from None
            except trio.Cancelled:
                raise
            except Exception as e:
                self.fatal(e)
                raise pyfuse3.FUSEError(errno.EIO) from None

    # ------------------------------------------------------------ names

    async def lookup(self, parent_inode, name, ctx=None):
        try:
            return entry(self._call(self.fs.lookup, parent_inode, name))
        except pyfuse3.FUSEError as e:
            if e.errno == errno.ENOENT:
                return negative_entry()
            raise

    async def forget(self, inode_list):
        # No reply to send: errors are logged (fatal ones already switched to ro).
        for inum, n in inode_list:
            try:
                self._call(self.fs.forget, inum, n)     # the last one deletes an orphan
            except pyfuse3.FUSEError as e:
                log.warning("forget of inode %d failed: %s", inum, e)
        await self._ack()

    async def getattr(self, inode, ctx=None):
        return entry(self._call(self.fs.getattr, inode))

    async def setattr(self, inode, attr, fields, fh, ctx):
        kw = {}
        if fields.update_size:
            kw["size"] = attr.st_size
            kw["kill_priv"] = ctx.uid != 0
        if fields.update_mode:
            kw["mode"] = attr.st_mode
        if fields.update_uid:
            kw["uid"] = attr.st_uid
        if fields.update_gid:
            kw["gid"] = attr.st_gid
        if fields.update_atime:
            kw["atime_ns"] = attr.st_atime_ns
        if fields.update_mtime:
            kw["mtime_ns"] = attr.st_mtime_ns
        if fields.update_ctime:
            kw["ctime_ns"] = attr.st_ctime_ns
        return entry(await self._change(self.fs.setattr, inode, **kw))

    async def readlink(self, inode, ctx):
        return self._call(self.fs.readlink, inode)

    async def mknod(self, parent_inode, name, mode, rdev, ctx):
        return entry(await self._change(self.fs.mknod, parent_inode, name, mode, rdev, ctx.uid,
                                        ctx.gid))

    async def mkdir(self, parent_inode, name, mode, ctx):
        return entry(await self._change(self.fs.mkdir, parent_inode, name, mode, ctx.uid, ctx.gid))

    async def unlink(self, parent_inode, name, ctx):
        await self._change(self.fs.unlink, parent_inode, name)

    async def rmdir(self, parent_inode, name, ctx):
        await self._change(self.fs.rmdir, parent_inode, name)

    async def symlink(self, parent_inode, name, target, ctx):
        return entry(await self._change(self.fs.symlink, parent_inode, name, target, ctx.uid,
                                        ctx.gid))

    async def rename(self, parent_inode_old, name_old, parent_inode_new, name_new, flags, ctx):
        await self._change(self.fs.rename, parent_inode_old, name_old, parent_inode_new,
                           name_new, flags)

    async def link(self, inode, new_parent_inode, new_name, ctx):
        return entry(await self._change(self.fs.link, inode, new_parent_inode, new_name))

    # ------------------------------------------------------------ files

    async def open(self, inode, flags, ctx):
        await self._change(self.fs.open, inode, flags)      # O_TRUNC commits
        return pyfuse3.FileInfo(fh=self._fh(inode, ctx.uid, flags))

    async def create(self, parent_inode, name, mode, flags, ctx):
        attr = await self._change(self.fs.create, parent_inode, name, mode, ctx.uid, ctx.gid)
        self._call(self.fs.open, attr.st_ino, flags & ~os.O_TRUNC)
        return pyfuse3.FileInfo(fh=self._fh(attr.st_ino, ctx.uid, flags)), entry(attr)

    async def read(self, fh, off, size):
        inum = self.files[fh][0]
        if fh not in self.dio.handles:
            self.dio.buffered_io(inum)
        return await self._change(self.fs.read, inum, off, size)     # atime (relatime)

    async def write(self, fh, off, buf):
        inum, uid = self.files[fh]
        n = await self._change(self.fs.write, inum, off, buf, uid != 0)
        await self.dio.wrote(fh, inum)
        return n

    async def flush(self, fh):
        # close(2) promises no durability and we keep no per-open write state,
        # so there is nothing to do: ENOSYS tells the kernel never to send
        # FLUSH again, sparing every close(2) a round trip to the daemon.
        self.eng.counters["fuse_flush_requests"] += 1
        raise pyfuse3.FUSEError(errno.ENOSYS)

    async def release(self, fh):
        inum, _uid = self.files.pop(fh)
        self.dio.released(fh, inum)
        await self._change(self.fs.release, inum)       # the last close of an unlinked file

    async def fsync(self, fh, datasync):
        await self._sync(self.files[fh][0])

    # ------------------------------------------------------------ directories

    async def opendir(self, inode, ctx):
        self._call(self.fs.opendir, inode)
        fh = self.next_fh
        self.next_fh += 1
        self.dirs[fh] = inode
        return fh

    async def readdir(self, fh, start_id, token):
        inum = self.dirs[fh]
        it = self._call(self.fs.readdir, inum, start_id)
        while True:
            item = self._call(next, it, None)
            if item is None:
                return
            name, attr, off = item
            if not pyfuse3.readdir_reply(token, name, entry(attr), off):
                return
            if name not in (b".", b".."):
                # readdirplus: the kernel holds a lookup on every entry it
                # accepted, except the dot entries.
                self.fs.ref(attr.st_ino)

    async def releasedir(self, fh):
        self.dirs.pop(fh, None)

    async def fsyncdir(self, fh, datasync):
        await self._sync(self.dirs[fh])

    # ------------------------------------------------------------ misc

    async def statfs(self, ctx):
        s = self._call(self.fs.statfs)
        out = pyfuse3.StatvfsData()
        for k in ("f_bsize", "f_frsize", "f_blocks", "f_bfree", "f_bavail", "f_files",
                  "f_ffree", "f_favail", "f_namemax"):
            setattr(out, k, getattr(s, k))
        return out

    async def access(self, inode, mode, ctx):
        return True         # default_permissions: the kernel checks

    async def setxattr(self, inode, name, value, ctx):
        if inode == pyfuse3.ROOT_INODE and name in (STATS_XATTR, STATE_XATTR):
            raise pyfuse3.FUSEError(errno.EPERM)
        if inode == pyfuse3.ROOT_INODE and name == CONTROL_XATTR:
            if ctx.uid != 0 and bytes(value) != b"sync":     # sync(2) is anyone's
                raise pyfuse3.FUSEError(errno.EPERM)
            await self.control(bytes(value).decode(errors="replace"))
            return
        await self._change(self.fs.setxattr, inode, name, value)

    async def getxattr(self, inode, name, ctx):
        if inode == pyfuse3.ROOT_INODE and name == STATS_XATTR:
            return self.stats_json().encode()
        if inode == pyfuse3.ROOT_INODE and name == STATE_XATTR:
            return json.dumps(self.state(), sort_keys=True).encode()
        return self._call(self.fs.getxattr, inode, name)

    async def listxattr(self, inode, ctx):
        return self._call(self.fs.listxattr, inode)

    async def removexattr(self, inode, name, ctx):
        await self._change(self.fs.removexattr, inode, name)

    def stats_json(self) -> str:
        s = stats_dict(self.eng)
        s["fs_read_only"] = int(self.fs.read_only)
        s["time_ns"] = time.time_ns()
        return json.dumps(s, sort_keys=True)

    def state(self) -> dict:
        """What `pyfs stats` summarises beside the counters."""
        j = self.eng.journal
        return {"read_only": self.fs.read_only, "read_only_reason": self.ro_reason,
                "errors": self.errors, "errors_seen": self.eng.counters["fs_errors"],
                "last_error": self.last_error, "journal_fill": round(j.fill_ratio(), 4),
                "journal_ring_bytes": j.ring,
                "dirty_nodes": len(self.eng.btrees.dirty),
                "last_flush_ns": self.flusher.last_flush_ns, "atime": self.fs.atime,
                "time_ns": time.time_ns()}

    # ------------------------------------------------------------ remount

    async def control(self, cmd: str) -> None:
        """A command written to pyfs.control by `mount -o remount` or `pyfs`."""
        if cmd == "sync":
            if not self.fs.read_only:
                await self.flusher.flush()
        elif cmd == "ro":
            await self.freeze()
        elif cmd == "rw":
            self.thaw()
        elif cmd in ("atime", "noatime"):
            self.fs.atime = cmd == "atime"
        elif cmd.startswith("errors=") and cmd[7:] in ERRORS_POLICIES:
            self.errors = cmd[7:]
        else:
            raise pyfuse3.FUSEError(errno.EINVAL)

    async def freeze(self) -> None:
        """remount,ro: write everything back, leave the image clean, then
        refuse changes (EROFS) until thaw()."""
        if self.fs.read_only:
            return
        while self.flusher.running is not None:
            await self.flusher.running.wait()
        # No await from here on: no request can slip in between.
        try:
            self.eng.freeze()
        except Exception as e:
            self.fatal(e)
            raise pyfuse3.FUSEError(errno.EIO) from None
        self.fs.set_read_only()
        self.flusher.last_flush_ns = time.time_ns()
        self.ro_reason = "remounted read-only"
        self.eng.counters["fs_remounts"] += 1
        log.info("remounted read-only; the image is clean")

    def thaw(self) -> None:
        """remount,rw: EIO after a fatal error, EROFS for a mount made with ro
        (its device is open read-only)."""
        if self.failed is not None:
            raise pyfuse3.FUSEError(errno.EIO)
        if self.mounted_ro:
            raise pyfuse3.FUSEError(errno.EROFS)
        if not self.fs.read_only:
            return
        try:
            self.eng.thaw()
        except Exception as e:
            self.fatal(e)
            raise pyfuse3.FUSEError(errno.EIO) from None
        self.fs.set_read_write()
        self.ro_reason = None
        self.eng.counters["fs_remounts"] += 1
        log.info("remounted read-write")
