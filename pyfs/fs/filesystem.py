"""The filesystem: POSIX operations over the engine's btrees, synchronous.

Every operation that changes several keys (create = inode + dirent + parent;
rename; unlink) is one transaction. Methods mirror what pyfuse3 needs and
raise FSError(errno). Lookup counts are kept exactly as the kernel keeps them:
lookup/create/mkdir/mknod/symlink/link each add one reference, forget drops
them. An inode whose last link goes while something can still reach it stays
as an orphan, indexed at inodes key (0, inum), and is deleted when the last
such reference goes, or at the next mount. For a directory that is any
kernel reference (a process's cwd can still stat it); for any other inode
only an open file: without one the kernel has no way left to reach it (its
name is gone), so it is deleted in the unlink's own transaction and only its
number stays held until the kernel forgets it (see inum.py).

Large deletions (a big file's extents) are split over several transactions,
bounded by the journal's entry size; the orphan index makes them restartable.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterator

from ..alloc.foreground import NoSpace, Watermark
from ..format import (
    BLOCK_SIZE,
    JSET_HDR_SIZE,
    BtreeId,
    Dirent,
    Extent,
    Inode,
    pack_key,
    unpack_key,
)
from . import acl
from . import dir as hashtab
from .data import EXT, DataIO
from .errors import FSError, enoent
from .inode import (
    FS_INFO_KEY,
    ID_MAX,
    LINK_MAX,
    MAX_FILE_SIZE,
    NAME_MAX,
    ORPHAN_DELETE,
    ORPHAN_TRUNCATE,
    RDEV_MAX,
    ROOT_INUM,
    SECTORS_PER_BLOCK,
    SYMLINK_MAX,
    Attr,
    InodeCache,
    clamp_time_ns,
    dtype_of,
    inode_key,
    is_dir,
    kill_priv_mode,
    new_inode,
    now_ns,
    orphan_key,
    orphan_val,
    pack_fs_info,
    unpack_fs_info,
)
from .inum import INUM_LIMIT, InumAllocator
from .xattr import Xattrs

INO = BtreeId.inodes
DIRENTS = BtreeId.dirents
RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2
WRITE_CHUNK_MAX = 256 * 1024    # bytes per write transaction (fewer on small journals)
READ_MAX = 128 << 20            # bytes one read returns at most (a short read, as POSIX allows)
END_BLOCK = MAX_FILE_SIZE // BLOCK_SIZE
GEN_BATCH = 1 << 16             # generations reserved per fs info update
RELATIME_NS = 24 * 3600 * 10**9
SYNC_SEQ_MAX = 1 << 16          # fsync table size before durable entries are pruned
MAX_DEPTH = 1 << 20             # parent-chain walk bound (a longer one is a loop: corruption)
SHRINK = Watermark.delete       # frees space or rewrites in place
# Btree bytes an empty file costs (inode and dirent records in nodes kept
# 3/8 to 3/4 full, with their share of interior nodes): statfs's estimate of
# how many more inodes fit. Measured: ~450 bytes per empty file.
INODE_BYTES = 512
COUNTERS = ("fs_lookups", "fs_creates", "fs_unlinks", "fs_renames", "fs_reads", "fs_writes",
            "fs_truncates", "fs_inodes_deleted", "fs_orphans_at_mount", "fs_forget_underflows")


class StatFs:
    __slots__ = ("f_bsize", "f_frsize", "f_blocks", "f_bfree", "f_bavail", "f_files",
                 "f_ffree", "f_favail", "f_namemax")

    def __init__(self, **kw):
        for k in self.__slots__:
            setattr(self, k, kw.get(k, 0))


def _check_id(v: int | None) -> None:
    if v is not None and not 0 <= v <= ID_MAX:
        raise FSError(errno.EINVAL, f"uid/gid {v} out of range")


class Op:
    """One transaction plus the inode records it changes. Inodes are packed
    once at commit; the cache and fsync table are updated only if it commits.

    wm says which reserve it may use: operations that free space or change
    records in place (SHRINK) still commit on a filesystem full to the user,
    so that deleting is always the way out of ENOSPC."""
    __slots__ = ("fs", "t", "inodes", "gen_limit", "ninodes", "info")

    def __init__(self, fs: Filesystem, wm: Watermark = Watermark.normal):
        self.fs = fs
        self.t = fs.eng.trans(wm)
        self.inodes: dict[int, Inode | None] = {}
        self.gen_limit = 0
        self.ninodes = 0            # inodes created minus inodes deleted
        self.info = False           # rewrite the fs info record even if neither changed

    def inode(self, inum: int) -> Inode:
        if inum in self.inodes:
            ino = self.inodes[inum]
            if ino is None:
                raise enoent()
            return ino
        return self.fs._inode(inum)

    def put(self, inum: int, ino: Inode) -> None:
        self.inodes[inum] = ino

    def create(self, inum: int, ino: Inode) -> None:
        self.inodes[inum] = ino
        self.ninodes += 1

    def drop(self, inum: int) -> None:
        self.inodes[inum] = None
        self.ninodes -= 1

    def commit(self) -> int:
        t = self.t
        fs = self.fs
        for inum, ino in self.inodes.items():
            if ino is None:
                t.delete(INO, inode_key(inum))
            else:
                t.set(INO, inode_key(inum), ino.pack())
        if self.gen_limit or self.ninodes or self.info:
            t.set(INO, FS_INFO_KEY, pack_fs_info(max(fs.gen_limit, self.gen_limit),
                                                 fs.ninodes + self.ninodes))
        try:
            seq = t.commit()
        except NoSpace:
            raise FSError(errno.ENOSPC) from None
        self.fs._committed(self, seq)
        return seq


class Filesystem:
    def __init__(self, eng):
        self.eng = eng
        self.bt = eng.btrees
        self.read_only = eng.read_only
        self.c = eng.counters
        for name in COUNTERS:
            self.c.setdefault(name, 0)
        j = eng.journal
        self.tx_budget = j.entry_max - JSET_HDR_SIZE - j.slack
        # Keys per transaction in chunked deletes, leaving room for triggers.
        self.chunk = max(8, self.tx_budget // 4 // 96)
        # A write chunk may split one extent per block it covers.
        self.write_chunk = max(4, min(WRITE_CHUNK_MAX // BLOCK_SIZE, self.chunk // 2)) * BLOCK_SIZE
        self.seed = eng.sb.hash_seed
        # A target is the inode record's tail: small nodes hold less than PATH_MAX.
        self.symlink_max = min(SYMLINK_MAX, eng.btrees.max_value - Inode.SIZE)
        self.inodes = InodeCache(eng.btrees)
        self.data = DataIO(eng)
        self.xattrs = Xattrs(eng, self.seed, self.tx_budget)
        self.acls = acl.Acls(self.xattrs)
        self.inums = InumAllocator(eng.btrees)
        self.lookups: dict[int, int] = {}
        self.opens: dict[int, int] = {}
        self.sync_seq: dict[int, int] = {}
        self._prune_at = SYNC_SEQ_MAX
        self.atime = True               # relatime; False for noatime
        self.gen_limit, ninodes = unpack_fs_info(self.bt.get(INO, FS_INFO_KEY))
        self.next_gen = self.gen_limit
        # Inode records in the inodes btree (statfs); a version 1 fs info
        # record has no count: count once and record it.
        self.ninodes = self._count_inodes() if ninodes is None else ninodes
        # Deletes and in-place updates commit at the delete watermark; while
        # mounting (recording the inode count, finishing orphans) everything
        # may be used, as the rest of mount may: a full image always mounts.
        self.shrink_wm = Watermark.btree
        if not self.read_only:
            if ninodes is None:
                op = Op(self, self.shrink_wm)
                op.info = True
                op.commit()
            self._ensure_root()
            self._process_orphans()
        self.shrink_wm = SHRINK

    # ------------------------------------------------------------ plumbing

    def _committed(self, op: Op, seq: int) -> None:
        cache = self.inodes
        ss = self.sync_seq
        for inum, ino in op.inodes.items():
            if ino is None:
                cache.drop(inum)
                ss.pop(inum, None)
            else:
                cache.put(inum, ino)
                ss[inum] = seq
        if op.gen_limit:
            self.gen_limit = max(self.gen_limit, op.gen_limit)
        self.ninodes += op.ninodes
        if len(ss) > self._prune_at:
            durable = self.eng.journal.durable_seq
            for k in [k for k, s in ss.items() if s <= durable]:
                del ss[k]
            # Amortised: without flushes nothing goes, so don't rescan each commit.
            self._prune_at = max(SYNC_SEQ_MAX, 2 * len(ss))

    def _inode(self, inum: int) -> Inode:
        ino = self.inodes.get(inum) if 0 < inum < INUM_LIMIT else None
        if ino is None:
            raise enoent(f"inode {inum}")
        return ino

    def _dir(self, inum: int) -> Inode:
        ino = self._inode(inum)
        if not is_dir(ino):
            raise FSError(errno.ENOTDIR)
        return ino

    def _writable(self) -> None:
        if self.read_only:
            raise FSError(errno.EROFS)

    def set_read_only(self) -> None:
        """errors=remount-ro or remount,ro: refuse every further change."""
        self.read_only = True

    def set_read_write(self) -> None:
        """remount,rw: changes are allowed again (the engine was thawed first)."""
        self.read_only = self.eng.read_only

    def _generation(self, op: Op) -> int:
        g = self.next_gen
        self.next_gen += 1
        if self.next_gen > max(self.gen_limit, op.gen_limit):
            op.gen_limit = g + GEN_BATCH        # recorded by op.commit
        return g

    def _count_inodes(self) -> int:
        return sum(1 for _ in self.bt.iter(INO, inode_key(1), pack_key((1 << 64) - 1, 0)))

    @staticmethod
    def _check_name(name: bytes) -> None:
        if not name or b"/" in name or b"\0" in name:
            raise FSError(errno.EINVAL, f"bad file name {name!r}")
        if len(name) > NAME_MAX:
            raise FSError(errno.ENAMETOOLONG)

    def _find(self, get, parent: int, name: bytes):
        home = hashtab.name_hash(self.seed, name)
        slot, val, free = hashtab.find(get, hashtab.DIRENTS, parent, home, name)
        return home, slot, val, free

    def _ref(self, inum: int) -> None:
        self.lookups[inum] = self.lookups.get(inum, 0) + 1

    def ref(self, inum: int) -> None:
        """Count a lookup reference the caller handed out (a readdirplus entry)."""
        self._ref(inum)

    def _reachable(self, inum: int, ino: Inode) -> bool:
        """Can the kernel still reach this unlinked inode? Only through an open
        file, or for a directory also as someone's cwd (a lookup reference)."""
        return bool(self.opens.get(inum) or (is_dir(ino) and self.lookups.get(inum)))

    # ------------------------------------------------------------ mount

    def _ensure_root(self) -> None:
        if self.inodes.get(ROOT_INUM) is not None:
            return
        op = Op(self)
        root = new_inode(stat.S_IFDIR | 0o755, 0, 0, parent=ROOT_INUM, nlink=2,
                         generation=self._generation(op))
        op.create(ROOT_INUM, root)
        op.commit()
        self._make(ROOT_INUM, b"lost+found", stat.S_IFDIR | 0o700, 0, 0, count=False)

    def shutdown(self) -> None:
        """Unmounted: the kernel's references are gone, so delete the orphans
        they kept alive now rather than at the next mount."""
        self.lookups.clear()
        self.opens.clear()
        self.inums.held.clear()
        if not self.read_only:
            self._process_orphans("fs_orphans_at_unmount")

    def _process_orphans(self, counter: str = "fs_orphans_at_mount") -> None:
        """Finish deletions and truncates a crash (or unmount) left pending."""
        todo = list(self.bt.iter(INO, pack_key(0, 1), pack_key(0, (1 << 64) - 1)))
        for k, v in todo:
            inum = unpack_key(k)[1]
            self.c[counter] = self.c.get(counter, 0) + 1
            ino = self.inodes.get(inum)
            if v[1:2] == ORPHAN_TRUNCATE and ino is not None:
                self._trim_beyond_eof(inum)
            elif ino is not None and ino.nlink == 0:
                self._destroy(inum)
                continue
            op = Op(self, self.shrink_wm)
            op.t.delete(INO, k)
            op.commit()

    # ------------------------------------------------------------ attributes

    def getattr(self, inum: int) -> Attr:
        return Attr(inum, self._inode(inum))

    def lookup(self, parent: int, name: bytes) -> Attr:
        self.c["fs_lookups"] += 1
        if name == b".":
            return self._lookup_self(parent)
        pino = self._dir(parent)
        if name == b"..":
            inum = pino.parent or ROOT_INUM
        else:
            self._check_name(name)
            _h, slot, val, _f = self._find(self.bt.get, parent, name)
            if slot is None:
                raise enoent()
            inum = Dirent.unpack(val).inum
        try:
            ino = self._inode(inum)
        except FSError:
            raise FSError(errno.EIO, f"dirent {name!r} points to missing inode {inum}") from None
        self._ref(inum)
        return Attr(inum, ino)

    def _lookup_self(self, inum: int) -> Attr:
        """lookup(inum, "."): how the kernel finds an uncached inode of any type
        from a file handle. ENOENT once the inode is gone; an unlinked inode
        still referenced (open) is found and gains a reference like any lookup."""
        ino = self._inode(inum)
        self._ref(inum)
        return Attr(inum, ino)

    def forget(self, inum: int, nlookup: int) -> None:
        n = self.lookups.get(inum, 0) - nlookup
        if n > 0:
            self.lookups[inum] = n
            return
        if n < 0:
            self.c["fs_forget_underflows"] += 1
        self.lookups.pop(inum, None)
        if not self.inums.release(inum):
            self._maybe_free(inum)

    def setattr(self, inum: int, *, mode: int | None = None, uid: int | None = None,
                gid: int | None = None, size: int | None = None, atime_ns: int | None = None,
                mtime_ns: int | None = None, ctime_ns: int | None = None,
                kill_priv: bool = False) -> Attr:
        """Change attributes; kill_priv says the caller lacks CAP_FSETID (a
        truncate then drops setuid/setgid, as a write would)."""
        self._writable()
        ino = self._inode(inum)
        for v in (uid, gid):
            _check_id(v)
        t = now_ns()
        ch: dict = {}
        if size is not None:
            self._check_truncate(ino, size)
            if mtime_ns is None:
                ch["mtime_ns"] = t
            if kill_priv:
                ch["mode"] = kill_priv_mode(ino.mode)
        if uid is not None or gid is not None:
            if not is_dir(ino) and mode is None:
                # Linux chown_common: any chown of a non-directory kills suid/sgid.
                ch["mode"] = kill_priv_mode(ch.get("mode", ino.mode))
            if uid is not None:
                ch["uid"] = uid
            if gid is not None:
                ch["gid"] = gid
        if mode is not None:
            ch["mode"] = stat.S_IFMT(ino.mode) | (mode & 0o7777)
        if atime_ns is not None:
            ch["atime_ns"] = clamp_time_ns(atime_ns)
        if mtime_ns is not None:
            ch["mtime_ns"] = clamp_time_ns(mtime_ns)
        ch["ctime_ns"] = t if ctime_ns is None else clamp_time_ns(ctime_ns)
        if size is not None and size != ino.size:
            self._truncate(inum, size, ch)
        else:
            op = Op(self, self.shrink_wm)
            if mode is not None:
                self.acls.chmod(op.t, inum, mode)
            op.put(inum, ino.replace(**ch))
            op.commit()
            return Attr(inum, self._inode(inum))
        if mode is not None:            # chmod with a truncate: the ACL after it
            op = Op(self, self.shrink_wm)
            self.acls.chmod(op.t, inum, mode)
            op.commit()
        return Attr(inum, self._inode(inum))

    # ------------------------------------------------------------ creating

    def _depth(self, inum: int) -> int:
        d = 1
        while inum != ROOT_INUM and d < 3:
            inum = self._inode(inum).parent or ROOT_INUM
            d += 1
        return d

    def _make(self, parent: int, name: bytes, mode: int, uid: int, gid: int, *,
              rdev: int = 0, tail: bytes = b"", count: bool = True) -> Attr:
        self._writable()
        self._check_name(name)
        if name in (b".", b".."):
            raise FSError(errno.EEXIST)
        _check_id(uid)
        _check_id(gid)
        pino = self._dir(parent)
        if pino.nlink == 0:
            raise enoent("directory was removed")
        home, slot, _v, free = self._find(self.bt.get, parent, name)
        if slot is not None:
            raise FSError(errno.EEXIST)
        mkdir = stat.S_ISDIR(mode)
        if mkdir and pino.nlink >= LINK_MAX:
            raise FSError(errno.EMLINK)
        if pino.mode & stat.S_ISGID:
            # BSD group semantics of a setgid directory, as Linux inode_init_owner.
            gid = pino.gid
            if mkdir:
                mode |= stat.S_ISGID
        inum = self.inums.alloc(parent, mkdir, self._depth(parent) if mkdir else 1)
        op = Op(self)
        mode = self.acls.inherit(op.t, parent, inum, mode)
        t = now_ns()
        ino = new_inode(mode, uid, gid, rdev=rdev, parent=parent, nlink=2 if mkdir else 1,
                        generation=self._generation(op), tail=tail, size=len(tail), t=t)
        op.t.set(DIRENTS, pack_key(parent, free),
                 Dirent(inum=inum, d_type=dtype_of(mode), hash=home, tail=name).pack())
        op.create(inum, ino)
        op.put(parent, pino.replace(mtime_ns=t, ctime_ns=t, size=pino.size + 1,
                                    nlink=pino.nlink + mkdir))
        op.commit()
        self.c["fs_creates"] += 1
        if count:
            self._ref(inum)
        return Attr(inum, ino)

    def mknod(self, parent: int, name: bytes, mode: int, rdev: int = 0, uid: int = 0,
              gid: int = 0) -> Attr:
        fmt = stat.S_IFMT(mode) or stat.S_IFREG
        if fmt == stat.S_IFDIR:
            raise FSError(errno.EPERM, "mknod of a directory")
        if fmt not in (stat.S_IFREG, stat.S_IFCHR, stat.S_IFBLK, stat.S_IFIFO, stat.S_IFSOCK):
            raise FSError(errno.EINVAL, f"mknod type {fmt:o}")
        if fmt not in (stat.S_IFCHR, stat.S_IFBLK):
            rdev = 0
        elif not 0 <= rdev <= RDEV_MAX:
            raise FSError(errno.EINVAL, f"device number {rdev} out of range")
        return self._make(parent, name, fmt | (mode & 0o7777), uid, gid, rdev=rdev)

    def mkdir(self, parent: int, name: bytes, mode: int, uid: int = 0, gid: int = 0) -> Attr:
        return self._make(parent, name, stat.S_IFDIR | (mode & 0o7777), uid, gid)

    def create(self, parent: int, name: bytes, mode: int, uid: int = 0, gid: int = 0) -> Attr:
        return self._make(parent, name, stat.S_IFREG | (mode & 0o7777), uid, gid)

    def symlink(self, parent: int, name: bytes, target: bytes, uid: int = 0,
                gid: int = 0) -> Attr:
        if not target:
            raise enoent("empty symlink target")
        if b"\0" in target:
            raise FSError(errno.EINVAL, "NUL in symlink target")
        if len(target) > self.symlink_max:
            raise FSError(errno.ENAMETOOLONG, "symlink target")
        return self._make(parent, name, stat.S_IFLNK | 0o777, uid, gid, tail=target)

    def readlink(self, inum: int) -> bytes:
        ino = self._inode(inum)
        if not stat.S_ISLNK(ino.mode):
            raise FSError(errno.EINVAL)
        return ino.tail

    def link(self, inum: int, new_parent: int, new_name: bytes) -> Attr:
        self._writable()
        self._check_name(new_name)
        ino = self._inode(inum)
        if is_dir(ino):
            raise FSError(errno.EPERM, "hard link to a directory")
        if ino.nlink == 0:
            raise enoent("inode was unlinked")
        if ino.nlink >= LINK_MAX:
            raise FSError(errno.EMLINK)
        pino = self._dir(new_parent)
        if pino.nlink == 0:
            raise enoent("directory was removed")
        home, slot, _v, free = self._find(self.bt.get, new_parent, new_name)
        if slot is not None or new_name in (b".", b".."):
            raise FSError(errno.EEXIST)
        op = Op(self)
        t = now_ns()
        op.t.set(DIRENTS, pack_key(new_parent, free),
                 Dirent(inum=inum, d_type=dtype_of(ino.mode), hash=home, tail=new_name).pack())
        ino = ino.replace(nlink=ino.nlink + 1, ctime_ns=t)
        op.put(inum, ino)
        op.put(new_parent, pino.replace(mtime_ns=t, ctime_ns=t, size=pino.size + 1))
        op.commit()
        self._ref(inum)
        return Attr(inum, ino)

    # ------------------------------------------------------------ removing

    def unlink(self, parent: int, name: bytes) -> None:
        self._remove(parent, name, want_dir=False)

    def rmdir(self, parent: int, name: bytes) -> None:
        if name == b".":
            raise FSError(errno.EINVAL)
        if name == b"..":
            raise FSError(errno.ENOTEMPTY)
        self._remove(parent, name, want_dir=True)

    def _remove(self, parent: int, name: bytes, want_dir: bool) -> None:
        self._writable()
        self._check_name(name)
        pino = self._dir(parent)
        _h, slot, val, _f = self._find(self.bt.get, parent, name)
        if slot is None:
            raise enoent()
        inum = Dirent.unpack(val).inum
        ino = self._inode(inum)
        if want_dir:
            if not is_dir(ino):
                raise FSError(errno.ENOTDIR)
            if not self._dir_empty(inum):
                raise FSError(errno.ENOTEMPTY)
        elif is_dir(ino):
            raise FSError(errno.EISDIR)
        op = Op(self, self.shrink_wm)
        t = now_ns()
        hashtab.remove(op.t, hashtab.DIRENTS, parent, slot)
        op.put(parent, pino.replace(mtime_ns=t, ctime_ns=t, size=pino.size - 1,
                                    nlink=pino.nlink - want_dir))
        ino = ino.replace(nlink=0 if want_dir else ino.nlink - 1, ctime_ns=t)
        op.put(inum, ino)
        destroy = self._unlinked(op, inum, ino)
        op.commit()
        self.c["fs_unlinks"] += 1
        if destroy:
            self._destroy(inum)

    def _dir_empty(self, inum: int) -> bool:
        for _k, v in self.bt.iter(DIRENTS, pack_key(inum, 0), pack_key(inum, (1 << 64) - 1)):
            if hashtab.DIRENTS.name_of(v) is not None:
                return False
        return True

    def _unlinked(self, op: Op, inum: int, ino: Inode) -> bool:
        """ino (as op leaves it) may have lost its last link. Delete it within op
        when unreferenced and small; else index it as an orphan. Returns True if
        the caller must run _destroy after committing op."""
        if ino.nlink:
            return False
        if not self._reachable(inum, ino):
            exts = self.data.all_keys(inum, self.chunk)
            xks = self.xattrs.keys(inum, self.chunk - len(exts))
            if len(exts) + len(xks) < self.chunk:
                for k, _v in exts:
                    op.t.delete(EXT, k)
                for k in xks:
                    op.t.delete(BtreeId.xattrs, k)
                op.drop(inum)
                self._forget_inum(inum)
                return False
        op.t.set(INO, orphan_key(inum), orphan_val(ORPHAN_DELETE))
        return not self._reachable(inum, ino)

    def _maybe_free(self, inum: int) -> None:
        if self.read_only:
            return
        ino = self.inodes.get(inum)
        if ino is not None and ino.nlink == 0 and not self._reachable(inum, ino):
            self._destroy(inum)

    def _forget_inum(self, inum: int) -> None:
        """inum's inode is deleted; while the kernel still holds references to
        the number, it must not name a new inode."""
        self.opens.pop(inum, None)
        if self.lookups.get(inum):
            self.inums.hold(inum)
        self.c["fs_inodes_deleted"] += 1

    def _destroy(self, inum: int) -> None:
        """Delete an unreferenced nlink-0 inode, its extents and xattrs, in
        journal-sized transactions; its orphan key goes with the last one."""
        while True:
            exts = self.data.all_keys(inum, self.chunk)
            xks = self.xattrs.keys(inum, self.chunk - len(exts))
            op = Op(self, self.shrink_wm)
            for k, _v in exts:
                op.t.delete(EXT, k)
            for k in xks:
                op.t.delete(BtreeId.xattrs, k)
            if len(exts) + len(xks) < self.chunk:
                op.drop(inum)
                op.t.delete(INO, orphan_key(inum))
                op.commit()
                self._forget_inum(inum)
                return
            ino = op.inode(inum)
            gone = sum(self._ext_blocks(v) for _k, v in exts) * SECTORS_PER_BLOCK
            op.put(inum, ino.replace(blocks=max(0, ino.blocks - gone)))
            op.commit()

    @staticmethod
    def _ext_blocks(val: bytes) -> int:
        return Extent.unpack(val).nblocks

    # ------------------------------------------------------------ rename

    def _check_not_ancestor(self, inum: int, start: int) -> None:
        """EINVAL if directory inum is start or one of its ancestors."""
        cur = start
        for _ in range(MAX_DEPTH):
            if cur == inum:
                raise FSError(errno.EINVAL, "would move a directory into itself")
            if cur == ROOT_INUM:
                return
            cur = self._inode(cur).parent or ROOT_INUM
        raise FSError(errno.EIO, f"parent chain from {start} does not reach the root")

    def rename(self, old_parent: int, old_name: bytes, new_parent: int, new_name: bytes,
               flags: int = 0) -> None:
        self._writable()
        if flags & ~(RENAME_NOREPLACE | RENAME_EXCHANGE) or flags == (
                RENAME_NOREPLACE | RENAME_EXCHANGE):
            raise FSError(errno.EINVAL, f"rename flags {flags:#x}")
        for n in (old_name, new_name):
            self._check_name(n)
            if n in (b".", b".."):
                raise FSError(errno.EBUSY if n == b".." else errno.EINVAL)
        opino = self._dir(old_parent)
        self._dir(new_parent)
        get = self.bt.get
        _sh, sslot, sval, _f = self._find(get, old_parent, old_name)
        if sslot is None:
            raise enoent()
        dh, dslot, dval, _f = self._find(get, new_parent, new_name)
        if dslot is None:
            if flags & RENAME_EXCHANGE:
                raise enoent()
            if self._inode(new_parent).nlink == 0:
                raise enoent("directory was removed")
        elif flags & RENAME_NOREPLACE:
            raise FSError(errno.EEXIST)
        sinum = Dirent.unpack(sval).inum
        sino = self._inode(sinum)
        if dval is not None and Dirent.unpack(dval).inum == sinum:
            return      # same inode under both names: POSIX says do nothing
        op = Op(self)
        t = now_ns()
        if flags & RENAME_EXCHANGE:
            self._exchange(op, t, old_parent, old_name, sslot, sinum, sino,
                           new_parent, new_name, dslot, Dirent.unpack(dval).inum)
            op.commit()
            self.c["fs_renames"] += 1
            return
        sdir = is_dir(sino)
        dinum = dino = None
        if dval is not None:
            dinum = Dirent.unpack(dval).inum
            dino = self._inode(dinum)
            if sdir and not is_dir(dino):
                raise FSError(errno.ENOTDIR)
            if not sdir and is_dir(dino):
                raise FSError(errno.EISDIR)
            if is_dir(dino) and not self._dir_empty(dinum):
                raise FSError(errno.ENOTEMPTY)
        if sdir and old_parent != new_parent:
            self._check_not_ancestor(sinum, new_parent)
            if dino is None and self._inode(new_parent).nlink >= LINK_MAX:
                raise FSError(errno.EMLINK)
        newd = Dirent(inum=sinum, d_type=dtype_of(sino.mode), hash=dh, tail=new_name)
        # Source out first, so a same-directory insert may reuse its slot.
        hashtab.remove(op.t, hashtab.DIRENTS, old_parent, sslot)
        if dslot is not None:
            op.t.set(DIRENTS, pack_key(new_parent, dslot), newd.pack())
        else:
            _s, _v, free = hashtab.find(op.t.get, hashtab.DIRENTS, new_parent, dh, new_name)
            op.t.set(DIRENTS, pack_key(new_parent, free), newd.pack())
        op.put(old_parent, opino.replace(mtime_ns=t, ctime_ns=t, size=opino.size - 1,
                                         nlink=opino.nlink - (sdir and old_parent != new_parent)))
        npino = op.inode(new_parent)
        nlink = npino.nlink + (sdir and old_parent != new_parent) - (dino is not None and sdir)
        op.put(new_parent, npino.replace(mtime_ns=t, ctime_ns=t, nlink=nlink,
                                         size=npino.size + (dino is None)))
        op.put(sinum, sino.replace(parent=new_parent, ctime_ns=t))
        destroy = False
        if dino is not None:
            dino = dino.replace(nlink=0 if sdir else dino.nlink - 1, ctime_ns=t)
            op.put(dinum, dino)
            destroy = self._unlinked(op, dinum, dino)
        op.commit()
        self.c["fs_renames"] += 1
        if destroy:
            self._destroy(dinum)

    def _exchange(self, op: Op, t: int, op_: int, oname: bytes, sslot: int, sinum: int,
                  sino: Inode, np_: int, nname: bytes, dslot: int, dinum: int) -> None:
        dino = self._inode(dinum)
        sdir, ddir = is_dir(sino), is_dir(dino)
        if op_ != np_:
            if sdir:
                self._check_not_ancestor(sinum, np_)
            if ddir:
                self._check_not_ancestor(dinum, op_)
        oh = hashtab.name_hash(self.seed, oname)
        nh = hashtab.name_hash(self.seed, nname)
        op.t.set(DIRENTS, pack_key(op_, sslot),
                 Dirent(inum=dinum, d_type=dtype_of(dino.mode), hash=oh, tail=oname).pack())
        op.t.set(DIRENTS, pack_key(np_, dslot),
                 Dirent(inum=sinum, d_type=dtype_of(sino.mode), hash=nh, tail=nname).pack())
        moved = op_ != np_ and sdir != ddir
        for pinum, delta in ((op_, ddir - sdir), (np_, sdir - ddir)):
            p = op.inode(pinum)
            nl = p.nlink + (delta if moved else 0)
            if nl > LINK_MAX:
                raise FSError(errno.EMLINK)
            op.put(pinum, p.replace(mtime_ns=t, ctime_ns=t, nlink=nl))
        op.put(sinum, sino.replace(parent=np_, ctime_ns=t))
        op.put(dinum, dino.replace(parent=op_, ctime_ns=t))

    # ------------------------------------------------------------ directories

    def opendir(self, inum: int) -> None:
        self._dir(inum)

    def readdir(self, inum: int, offset: int = 0) -> Iterator[tuple[bytes, Attr, int]]:
        """Entries after `offset` as (name, attrs, next offset). "." and ".."
        come first at offsets 1 and 2; an entry's offset is its slot + 1."""
        ino = self._dir(inum)
        if offset < hashtab.DOT_OFFSET:
            yield b".", Attr(inum, ino), hashtab.DOT_OFFSET
        if offset < hashtab.DOTDOT_OFFSET:
            pinum = ino.parent or ROOT_INUM
            yield b"..", Attr(pinum, self._inode(pinum)), hashtab.DOTDOT_OFFSET
        start = max(offset, hashtab.DOTDOT_OFFSET + 1)
        name_of = hashtab.DIRENTS.name_of
        for k, v in self.bt.iter(DIRENTS, pack_key(inum, start), pack_key(inum, (1 << 64) - 1)):
            name = name_of(v)
            if name is None:
                continue
            d = Dirent.unpack(v)
            try:
                child = self._inode(d.inum)
            except FSError:
                raise FSError(errno.EIO, f"dirent {name!r} points to missing inode") from None
            yield name, Attr(d.inum, child), unpack_key(k)[1] + 1

    # ------------------------------------------------------------ open files

    def open(self, inum: int, flags: int = os.O_RDONLY) -> Attr:
        ino = self._inode(inum)
        if (flags & os.O_TRUNC and flags & os.O_ACCMODE != os.O_RDONLY
                and stat.S_ISREG(ino.mode) and ino.size):
            self.setattr(inum, size=0)
        self.opens[inum] = self.opens.get(inum, 0) + 1
        return Attr(inum, self._inode(inum))

    def release(self, inum: int) -> None:
        n = self.opens.get(inum, 0) - 1
        if n > 0:
            self.opens[inum] = n
            return
        self.opens.pop(inum, None)
        self._maybe_free(inum)

    def fsync(self, inum: int) -> int:
        """The journal seq to wait for: the last commit that touched inum (0: none)."""
        return self.sync_seq.get(inum, 0)

    def sync(self, inum: int | None = None) -> int:
        """In-process fsync: make inum's (or all) committed changes durable."""
        seq = self.fsync(inum) if inum is not None else self.eng.journal.cur_seq
        if seq and self.eng.journal.durable_seq < seq:
            self.eng.flush()
        return self.eng.journal.durable_seq

    # ------------------------------------------------------------ data

    def read(self, inum: int, off: int, size: int) -> bytes:
        ino = self._inode(inum)
        if is_dir(ino):
            raise FSError(errno.EISDIR)
        if off < 0 or size < 0:
            raise FSError(errno.EINVAL)
        self.c["fs_reads"] += 1
        if off >= ino.size or not size:
            return b""
        size = min(size, ino.size - off, READ_MAX)
        first = off // BLOCK_SIZE
        end = -(-(off + size) // BLOCK_SIZE)
        # Only reads the caller asked for feed readahead: the read-modify-write
        # reads of writes and truncates would reset a sequential reader.
        self.data.readahead(inum, first, end)
        buf = self.data.read_blocks(inum, first, end)
        self._touch_atime(inum, ino)
        s = off - first * BLOCK_SIZE
        if s == 0 and len(buf) == size and isinstance(buf, bytes):
            return buf
        return bytes(buf[s:s + size])

    def _touch_atime(self, inum: int, ino: Inode) -> None:
        """relatime: update atime only if it is older than mtime/ctime or a day."""
        if self.read_only or not self.atime:
            return
        t = now_ns()
        a = ino.atime_ns
        if a <= ino.mtime_ns or a <= ino.ctime_ns or t - a > RELATIME_NS:
            op = Op(self, self.shrink_wm)
            op.put(inum, ino.replace(atime_ns=t))
            op.commit()

    def write(self, inum: int, off: int, data: bytes | bytearray | memoryview,
              kill_priv: bool = False) -> int:
        """Write data at off; returns bytes written (short only on ENOSPC)."""
        self._writable()
        ino = self._inode(inum)
        if not stat.S_ISREG(ino.mode):
            raise FSError(errno.EISDIR if is_dir(ino) else errno.EINVAL)
        if off < 0:
            raise FSError(errno.EINVAL)
        if not len(data):
            return 0
        if off >= MAX_FILE_SIZE:
            raise FSError(errno.EFBIG)
        view = memoryview(data).cast("B")[:MAX_FILE_SIZE - off]
        done = 0
        self.c["fs_writes"] += 1
        while done < len(view):
            pos = off + done
            n = min(len(view) - done, self.write_chunk - pos % BLOCK_SIZE)
            try:
                wrote = self._write_chunk(inum, pos, view[done:done + n], kill_priv)
            except FSError as e:
                if e.errno == errno.ENOSPC and done:
                    return done
                raise
            done += wrote
            if wrote < n:
                break
        return done

    def _write_chunk(self, inum: int, off: int, data: memoryview, kill_priv: bool) -> int:
        ino = self._inode(inum)
        n = len(data)
        first = off // BLOCK_SIZE
        end = -(-(off + n) // BLOCK_SIZE)
        head = off - first * BLOCK_SIZE
        buf = bytearray((end - first) * BLOCK_SIZE)
        rd = self.data.read_blocks
        if head and first * BLOCK_SIZE < ino.size:
            buf[:BLOCK_SIZE] = rd(inum, first, first + 1)
        if (off + n) % BLOCK_SIZE and (end - 1 > first or not head) \
                and (end - 1) * BLOCK_SIZE < ino.size:
            buf[-BLOCK_SIZE:] = rd(inum, end - 1, end)
        buf[head:head + n] = data
        new, refs = self.data.write_regions(inum, first, buf)
        try:
            got = sum(e.nblocks for _f, e in new)
            if got < end - first:
                end = first + got
                n = end * BLOCK_SIZE - off
            op = Op(self)
            removed = self.data.punch(op.t, inum, first, end)
            for f, e in new:
                op.t.set(EXT, pack_key(inum, f), e.pack())
            t = now_ns()
            op.put(inum, ino.replace(
                size=max(ino.size, off + n), mtime_ns=t, ctime_ns=t,
                blocks=ino.blocks + (got - removed) * SECTORS_PER_BLOCK,
                mode=kill_priv_mode(ino.mode) if kill_priv else ino.mode))
            op.commit()
        finally:
            for r in refs:
                r.release()
        return n

    # ------------------------------------------------------------ truncate

    def _check_truncate(self, ino: Inode, size: int) -> None:
        if is_dir(ino):
            raise FSError(errno.EISDIR)
        if not stat.S_ISREG(ino.mode) or size < 0:
            raise FSError(errno.EINVAL)
        if size > MAX_FILE_SIZE:
            raise FSError(errno.EFBIG)

    def _truncate(self, inum: int, size: int, changes: dict) -> None:
        """Set i_size (with the other attribute changes) and, when shrinking,
        drop the blocks past EOF and zero the tail of a partial last block."""
        self.c["fs_truncates"] += 1
        ino = self._inode(inum)
        if size >= ino.size:
            op = Op(self, self.shrink_wm)
            op.put(inum, ino.replace(size=size, **changes))
            op.commit()
            return
        keep = -(-size // BLOCK_SIZE)
        start = keep
        new, refs = [], []
        if size % BLOCK_SIZE:
            b = size // BLOCK_SIZE
            if self.data.extents(inum, b, b + 1):
                blk = bytearray(self.data.read_blocks(inum, b, b + 1))
                blk[size % BLOCK_SIZE:] = bytes(BLOCK_SIZE - size % BLOCK_SIZE)
                new, refs = self.data.write_regions(inum, b, blk, SHRINK)
                start = b
        try:
            op = Op(self, self.shrink_wm)
            exts = self.data.extents(inum, start, END_BLOCK, limit=self.chunk)
            removed = self.data.punch(op.t, inum, start, END_BLOCK, exts)
            for f, e in new:
                op.t.set(EXT, pack_key(inum, f), e.pack())
            more = len(exts) >= self.chunk
            if more:
                op.t.set(INO, orphan_key(inum), orphan_val(ORPHAN_TRUNCATE))
            got = sum(e.nblocks for _f, e in new)
            op.put(inum, ino.replace(size=size, **changes,
                                     blocks=ino.blocks + (got - removed) * SECTORS_PER_BLOCK))
            op.commit()
        finally:
            for r in refs:
                r.release()
        if more:
            self._trim_beyond_eof(inum)
            op = Op(self, self.shrink_wm)
            op.t.delete(INO, orphan_key(inum))
            op.commit()

    def _trim_beyond_eof(self, inum: int) -> None:
        """Drop extents past i_size's last block, a transaction per chunk."""
        while True:
            ino = self._inode(inum)
            keep = -(-ino.size // BLOCK_SIZE)
            exts = self.data.extents(inum, keep, END_BLOCK, limit=self.chunk)
            if not exts:
                return
            op = Op(self, self.shrink_wm)
            removed = self.data.punch(op.t, inum, keep, END_BLOCK, exts)
            op.put(inum, ino.replace(blocks=max(0, ino.blocks - removed * SECTORS_PER_BLOCK)))
            op.commit()

    # ------------------------------------------------------------ xattrs

    def setxattr(self, inum: int, name: bytes, value: bytes, flags: int = 0) -> None:
        self._writable()
        ino = self._inode(inum)
        op = Op(self)
        if name in acl.NAMES:
            ino = self.acls.set(op.t, inum, ino, name, value)
        else:
            self.xattrs.set(op.t, inum, name, value, flags)
        op.put(inum, ino.replace(ctime_ns=now_ns()))
        op.commit()

    def getxattr(self, inum: int, name: bytes) -> bytes:
        self._inode(inum)
        return self.xattrs.get(inum, name)

    def listxattr(self, inum: int) -> list[bytes]:
        self._inode(inum)
        return self.xattrs.list(inum)

    def removexattr(self, inum: int, name: bytes) -> None:
        self._writable()
        ino = self._inode(inum)
        op = Op(self, self.shrink_wm)
        self.xattrs.remove(op.t, inum, name)
        op.put(inum, ino.replace(ctime_ns=now_ns()))
        op.commit()

    # ------------------------------------------------------------ statfs

    def statfs(self) -> StatFs:
        """Capacity, live use and what users may still take (the reserves never
        count as available); inodes in use are counted exactly and free ones
        estimated from the available space (INODE_BYTES each)."""
        total, used, avail = self.eng.alloc.space()
        bavail = avail // BLOCK_SIZE
        ffree = avail // INODE_BYTES
        return StatFs(f_bsize=BLOCK_SIZE, f_frsize=BLOCK_SIZE, f_blocks=total // BLOCK_SIZE,
                      f_bfree=(total - used) // BLOCK_SIZE, f_bavail=bavail,
                      f_files=self.ninodes + ffree, f_ffree=ffree, f_favail=ffree,
                      f_namemax=NAME_MAX)


__all__ = ["RENAME_EXCHANGE", "RENAME_NOREPLACE", "Attr", "FSError", "Filesystem", "StatFs"]
