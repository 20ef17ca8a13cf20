"""Reading files out of a filesystem: `pyfs ls`, `cat`, `cp-out` and `du`
(debugfs's ls/cat/rdump and du, next to e2fsprogs).

Given an image, they read it through the in-process API: a read-only Engine
(journal replayed in memory, nothing written, no lock taken) and a Filesystem
on top. Given the mount point of a pyfs mount, they read through the kernel
instead, like any program: the live contents, without disturbing the mount.
Both sides offer the same small interface (Tree), so every command works on
either.

Paths are inside the filesystem (`/dir/file`; `/` is the root). Symbolic
links in the middle of a path are followed inside the filesystem (an absolute
target starts at its root); the last component is followed by cat only.
"""

from __future__ import annotations

import errno
import os
import stat
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

MAX_SYMLINKS = 40           # as the kernel's ELOOP limit
READ_CHUNK = 1 << 20


class BrowseError(Exception):
    """One line naming the image or mount, the path and the cause."""


@dataclass
class Node:
    """A file found in a Tree: `ref` is what the tree reads it by, `attr` has
    st_ino, st_mode, st_nlink, st_uid, st_gid, st_size, st_blocks, st_rdev and
    st_atime_ns/st_mtime_ns."""
    path: str
    ref: Any
    attr: Any


class Tree:
    """Where the files come from; see ImageTree and MountTree."""
    name: str

    def root(self) -> Node:
        raise NotImplementedError

    def child(self, parent: Node, name: bytes) -> Node:
        raise NotImplementedError

    def children(self, d: Node) -> Iterator[Node]:
        raise NotImplementedError

    def read(self, f: Node, off: int, size: int) -> bytes:
        raise NotImplementedError

    def readlink(self, link: Node) -> bytes:
        raise NotImplementedError

    def close(self) -> None:
        pass

    # ------------------------------------------------------------ shared

    def error(self, path: str, err: int | str) -> BrowseError:
        why = os.strerror(err).lower() if isinstance(err, int) else err
        return BrowseError(f"{self.name}:{path}: {why}")

    def resolve(self, path: str, follow: bool = False) -> Node:
        """The node at path (named path, normalized); symlinks on the way are
        followed, the last one only with follow. `..` never leaves the root."""
        stack = [self.root()]
        parts = [p for p in path.split("/") if p]
        links = 0
        while parts:
            name = parts.pop(0)
            if name == ".":
                continue
            if name == "..":
                if len(stack) > 1:
                    stack.pop()
                continue
            if not stat.S_ISDIR(stack[-1].attr.st_mode):
                raise self.error(path, errno.ENOTDIR)
            nxt = self.child(stack[-1], os.fsencode(name))
            if stat.S_ISLNK(nxt.attr.st_mode) and (parts or follow):
                links += 1
                if links > MAX_SYMLINKS:
                    raise self.error(path, errno.ELOOP)
                target = os.fsdecode(self.readlink(nxt))
                if target.startswith("/"):
                    del stack[1:]
                parts = [p for p in target.split("/") if p] + parts
                continue
            stack.append(nxt)
        node = stack[-1]
        return Node("/" + "/".join(p for p in path.split("/") if p), node.ref, node.attr)

    def walk(self, top: Node) -> Iterator[tuple[Node, list[Node]]]:
        """(directory, its entries) for top and every directory below, parents first."""
        stack = [top]
        while stack:
            d = stack.pop()
            kids = sorted(self.children(d), key=lambda n: n.path)
            yield d, kids
            stack.extend(reversed([k for k in kids if stat.S_ISDIR(k.attr.st_mode)]))


def _join(parent: str, name: str) -> str:
    return parent.rstrip("/") + "/" + name


class ImageTree(Tree):
    """An image through a read-only Engine and Filesystem."""

    def __init__(self, image: str):
        from .fs import Filesystem, FSError
        from .tools import open_engine_readonly
        self.name = image
        self.eng = open_engine_readonly(image)
        self.fs = Filesystem(self.eng)
        self.FSError = FSError

    def _call(self, path: str, fn, *args):
        try:
            return fn(*args)
        except self.FSError as e:
            raise self.error(path, e.errno) from None

    def root(self) -> Node:
        from .fs.inode import ROOT_INUM
        return Node("/", ROOT_INUM, self._call("/", self.fs.getattr, ROOT_INUM))

    def child(self, parent: Node, name: bytes) -> Node:
        path = _join(parent.path, os.fsdecode(name))
        attr = self._call(path, self.fs.lookup, parent.ref, name)
        return Node(path, attr.st_ino, attr)

    def children(self, d: Node) -> Iterator[Node]:
        for name, attr, _off in self._call(d.path, lambda: list(self.fs.readdir(d.ref))):
            if name not in (b".", b".."):
                yield Node(_join(d.path, os.fsdecode(name)), attr.st_ino, attr)

    def read(self, f: Node, off: int, size: int) -> bytes:
        return self._call(f.path, self.fs.read, f.ref, off, size)

    def readlink(self, link: Node) -> bytes:
        return self._call(link.path, self.fs.readlink, link.ref)

    def close(self) -> None:
        self.eng.dev.close()


class MountTree(Tree):
    """A mounted pyfs through the kernel: refs are host paths."""

    def __init__(self, mountpoint: str):
        from .mount import require_pyfs_mount
        self.name = mountpoint
        self.top = require_pyfs_mount(mountpoint).mountpoint

    def _stat(self, path: str, host: str):
        try:
            return os.lstat(host)
        except OSError as e:
            raise self.error(path, e.errno) from None

    def root(self) -> Node:
        return Node("/", self.top, self._stat("/", self.top))

    def child(self, parent: Node, name: bytes) -> Node:
        path = _join(parent.path, os.fsdecode(name))
        host = os.path.join(parent.ref, os.fsdecode(name))
        return Node(path, host, self._stat(path, host))

    def children(self, d: Node) -> Iterator[Node]:
        try:
            with os.scandir(d.ref) as it:
                entries = [(e.name, e.path) for e in it]
        except OSError as e:
            raise self.error(d.path, e.errno) from None
        for name, host in entries:
            path = _join(d.path, name)
            yield Node(path, host, self._stat(path, host))

    def read(self, f: Node, off: int, size: int) -> bytes:
        try:
            with open(f.ref, "rb") as fh:
                return os.pread(fh.fileno(), size, off)
        except OSError as e:
            raise self.error(f.path, e.errno) from None

    def readlink(self, link: Node) -> bytes:
        try:
            return os.readlink(os.fsencode(link.ref))
        except OSError as e:
            raise self.error(link.path, e.errno) from None


def open_tree(target: str) -> Tree:
    """A mount point (a directory) reads through the kernel, anything else is an image."""
    from .mount import MountFailed
    if os.path.isdir(target):
        try:
            return MountTree(target)
        except MountFailed as e:
            raise BrowseError(str(e)) from None
    return ImageTree(target)


# --------------------------------------------------------------------------
# ls


def ls_line(tree: Tree, n: Node, name: str) -> str:
    a = n.attr
    mtime = time.strftime("%Y-%m-%d %H:%M", time.localtime(a.st_mtime_ns // 10**9))
    size = (f"{os.major(a.st_rdev)}, {os.minor(a.st_rdev)}"
            if stat.S_ISCHR(a.st_mode) or stat.S_ISBLK(a.st_mode) else str(a.st_size))
    line = (f"{stat.filemode(a.st_mode)} {a.st_nlink:>3} {a.st_uid:>5} {a.st_gid:>5} "
            f"{size:>10} {mtime} {name}")
    if stat.S_ISLNK(a.st_mode):
        line += " -> " + os.fsdecode(tree.readlink(n))
    return line


def ls(tree: Tree, path: str, long: bool) -> Iterator[str]:
    node = tree.resolve(path)
    if stat.S_ISDIR(node.attr.st_mode):
        entries = [(n, n.path.rsplit("/", 1)[-1])
                   for n in sorted(tree.children(node), key=lambda n: n.path)]
    else:
        entries = [(node, node.path)]
    for n, name in entries:
        yield ls_line(tree, n, printable(name)) if long else printable(name)


def printable(name: str) -> str:
    """Undecodable bytes as \\xNN, control characters escaped: one line per name."""
    return "".join(f"\\x{ord(c) - 0xDC00:02x}" if "\udc80" <= c <= "\udcff"
                   else (c if c.isprintable() else c.encode("unicode_escape").decode())
                   for c in name)


# --------------------------------------------------------------------------
# cat


def cat(tree: Tree, path: str, out) -> None:
    node = tree.resolve(path, follow=True)
    if stat.S_ISDIR(node.attr.st_mode):
        raise tree.error(path, errno.EISDIR)
    if not stat.S_ISREG(node.attr.st_mode):
        raise tree.error(path, "not a regular file")
    for chunk in _chunks(tree, node):
        out.write(chunk)


def _chunks(tree: Tree, f: Node) -> Iterator[bytes]:
    off = 0
    while True:
        chunk = tree.read(f, off, READ_CHUNK)
        if not chunk:
            return
        yield chunk
        off += len(chunk)


# --------------------------------------------------------------------------
# cp-out


@dataclass
class CopyOut:
    """Copy a file or a tree out of a filesystem, as `cp -a` would: modes,
    times, owners (as root), symlinks, hard links, fifos and device nodes (as
    root; skipped with a warning otherwise)."""
    tree: Tree
    warn: Any = None
    files: int = 0
    bytes: int = 0

    def __post_init__(self) -> None:
        self.linked: dict[int, str] = {}        # inode -> where it was copied first
        self.warn = self.warn or (lambda msg: print(msg, file=sys.stderr))
        self.root = os.geteuid() == 0

    def run(self, path: str, dest: str) -> None:
        node = self.tree.resolve(path)
        if os.path.isdir(dest) and node.path != "/":
            dest = os.path.join(dest, node.path.rsplit("/", 1)[-1])
        if not stat.S_ISDIR(node.attr.st_mode):
            self._one(node, dest)
            return
        dirs = []
        if not os.path.isdir(dest):
            os.mkdir(dest)                      # as cp: its parent must exist
        for d, kids in self.tree.walk(node):
            target = os.path.normpath(os.path.join(dest, os.path.relpath(d.path, node.path)))
            os.makedirs(target, exist_ok=True)
            dirs.append((d, target))
            for k in kids:
                if not stat.S_ISDIR(k.attr.st_mode):
                    self._one(k, os.path.join(target, k.path.rsplit("/", 1)[-1]))
        for d, target in reversed(dirs):        # after their contents changed them
            self._meta(d, target)

    def _one(self, n: Node, dest: str) -> None:
        a = n.attr
        first = self.linked.get(a.st_ino) if a.st_nlink > 1 else None
        if first is not None:
            _replace(dest)
            os.link(first, dest)
            self.files += 1
            return
        mode = a.st_mode
        if stat.S_ISREG(mode):
            with open(dest, "wb") as out:
                for chunk in _chunks(self.tree, n):
                    out.write(chunk)
                    self.bytes += len(chunk)
        elif stat.S_ISLNK(mode):
            _replace(dest)
            os.symlink(self.tree.readlink(n), dest)
        elif stat.S_ISFIFO(mode):
            _replace(dest)
            os.mkfifo(dest, 0o600)
        elif (stat.S_ISCHR(mode) or stat.S_ISBLK(mode)) and self.root:
            _replace(dest)
            os.mknod(dest, mode, a.st_rdev)
        else:
            self.warn(f"{self.tree.name}:{n.path}: {stat.filemode(mode)[0]} file not copied")
            return
        self.files += 1
        if a.st_nlink > 1:
            self.linked[a.st_ino] = dest
        self._meta(n, dest)

    def _meta(self, n: Node, dest: str) -> None:
        a = n.attr
        if self.root:
            os.lchown(dest, a.st_uid, a.st_gid)
        if not stat.S_ISLNK(a.st_mode):
            os.chmod(dest, stat.S_IMODE(a.st_mode))
        os.utime(dest, ns=(a.st_atime_ns, a.st_mtime_ns), follow_symlinks=False)


def _replace(dest: str) -> None:
    if os.path.lexists(dest) and not os.path.isdir(dest):
        os.unlink(dest)


# --------------------------------------------------------------------------
# du


def du(tree: Tree, path: str, apparent: bool = False) -> Iterator[tuple[int, str]]:
    """(bytes, directory) for every directory under path, children before their
    parent, totals including subdirectories (as du). A file with several
    links counts once; with apparent, sizes instead of allocated blocks."""
    top = tree.resolve(path)
    seen: set[int] = set()

    def size(a) -> int:
        return a.st_size if apparent else a.st_blocks * 512

    if not stat.S_ISDIR(top.attr.st_mode):
        yield size(top.attr), top.path
        return
    own: dict[str, int] = {}
    order: list[str] = []
    parent: dict[str, str] = {}
    for d, kids in tree.walk(top):
        order.append(d.path)
        own[d.path] = size(d.attr)
        for k in kids:
            if stat.S_ISDIR(k.attr.st_mode):
                parent[k.path] = d.path
            elif k.attr.st_nlink <= 1 or k.attr.st_ino not in seen:
                seen.add(k.attr.st_ino)
                own[d.path] += size(k.attr)
    total = dict(own)
    for p in reversed(order):               # children come after their parent in order
        if p in parent:
            total[parent[p]] += total[p]
    for p in reversed(order):
        yield total[p], p


# --------------------------------------------------------------------------
# The commands

def _target(p) -> None:
    p.add_argument("target", metavar="IMAGE|MOUNTPOINT",
                   help="image file or block device (read in-process, read-only), or the "
                        "mount point of a mounted pyfs (read through the kernel)")


def _run_on_tree(target: str, fn) -> int:
    from .cli import EXIT_OK, CliError
    try:
        tree = open_tree(target)
        try:
            fn(tree)
        finally:
            tree.close()
    except BrowseError as e:
        raise CliError(str(e)) from None
    return EXIT_OK


def _register() -> None:
    from .cli import command, human_size

    def setup_ls(p) -> None:
        _target(p)
        p.add_argument("path", nargs="?", default="/", help="directory or file (default /)")
        p.add_argument("-l", dest="long", action="store_true",
                       help="long format: mode, links, owner, size, mtime, link target")

    @command("ls", help="list a directory of an image or mounted pyfs (as debugfs ls)",
             setup=setup_ls)
    def run_ls(args) -> int:
        return _run_on_tree(args.target, lambda t: [print(line)
                                                    for line in ls(t, args.path, args.long)])

    def setup_cat(p) -> None:
        _target(p)
        p.add_argument("path", help="file to print")

    @command("cat", help="print a file of an image or mounted pyfs (as debugfs cat)",
             setup=setup_cat)
    def run_cat(args) -> int:
        out = sys.stdout.buffer
        code = _run_on_tree(args.target, lambda t: cat(t, args.path, out))
        out.flush()
        return code

    def setup_cp_out(p) -> None:
        _target(p)
        p.add_argument("path", help="file or directory to copy (a directory with everything "
                                    "below it)")
        p.add_argument("dest", help="where to put it; into it if it is a directory")
        p.add_argument("-v", dest="verbose", action="store_true", help="say what was copied")

    @command("cp-out", help="copy files out of an image or mounted pyfs, keeping modes, "
             "times, owners, links (as debugfs rdump)", setup=setup_cp_out)
    def run_cp_out(args) -> int:
        def go(t: Tree) -> None:
            c = CopyOut(t)
            c.run(args.path, args.dest)
            if args.verbose:
                print(f"copied {c.files} files, {human_size(c.bytes)}")
        return _run_on_tree(args.target, go)

    def setup_du(p) -> None:
        _target(p)
        p.add_argument("path", nargs="?", default="/", help="directory (default /)")
        p.add_argument("-s", dest="summary", action="store_true", help="only the total")
        p.add_argument("-H", "--human", action="store_true",
                       help="sizes in KiB/MiB/GiB (default: KiB, as du)")
        p.add_argument("--apparent-size", dest="apparent", action="store_true",
                       help="file sizes instead of the space allocated to them")

    @command("du", help="space used per directory of an image or mounted pyfs (as du)",
             setup=setup_du)
    def run_du(args) -> int:
        def go(t: Tree) -> None:
            rows = list(du(t, args.path, args.apparent))
            for n, path in rows[-1:] if args.summary else rows:
                shown = human_size(n) if args.human else str(-(-n // 1024))
                print(f"{shown}\t{printable(path)}")
        return _run_on_tree(args.target, go)


_register()
