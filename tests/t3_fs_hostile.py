"""Hostile requests against the Filesystem API (no kernel), checked against a model.

A hypothesis state machine drives random operations with extreme arguments
(offsets and sizes up to 2^63-1, names of 0/255/256 bytes and with "/" or NUL,
symlink targets near PATH_MAX, xattr names and values past their limits,
uids near 2^32, timestamps past what 64-bit nanoseconds hold, renames into
one's own subtree) on a small image that also runs out of space. Whatever
happens, an operation either succeeds or raises FSError with an errno Linux
would give; the filesystem never stops writing; what it holds matches the
model, before and after a remount; and fsck finds nothing wrong.
"""

from __future__ import annotations

import errno
import stat

import hypothesis.strategies as st
from conftest import FsEnv
from hypothesis import HealthCheck, settings
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from pyfs.fs import FSError
from pyfs.fs.filesystem import READ_MAX
from pyfs.fs.inode import MAX_FILE_SIZE, ROOT_INUM, TIME_MAX_NS, TIME_MIN_NS

MiB = 1 << 20
MODEL_BYTES = 1 << 20       # file contents are modelled up to here
ERRNOS = {errno.ENOENT, errno.EEXIST, errno.ENOTDIR, errno.EISDIR, errno.ENOTEMPTY,
          errno.EINVAL, errno.ENAMETOOLONG, errno.EFBIG, errno.E2BIG, errno.ERANGE,
          errno.ENOSPC, errno.EMLINK, errno.ENODATA, errno.EOPNOTSUPP, errno.EPERM,
          errno.EBUSY}

names = st.one_of(
    st.sampled_from([b"a", b"b", b"c", b"d", b".", b"..", b"", b"x/y", b"n\0ul",
                     b"L" * 255, b"L" * 256]),
    st.binary(min_size=1, max_size=8).filter(lambda n: b"/" not in n and b"\0" not in n))
offsets = st.one_of(st.integers(0, 3 * 4096 + 17),
                    st.sampled_from([MAX_FILE_SIZE - 1, MAX_FILE_SIZE, (1 << 63) - 1, -1]))
sizes = st.one_of(st.integers(0, 5 * 4096 + 3),
                  st.sampled_from([MAX_FILE_SIZE, MAX_FILE_SIZE + 1, (1 << 63) - 1, -5]))
times = st.one_of(st.integers(-(2 << 63), 2 << 63),
                  st.sampled_from([10**19 - 1, -(10**19), TIME_MAX_NS, TIME_MIN_NS,
                                   10_413_792_000 * 10**9]))
ids = st.one_of(st.integers(0, 70000), st.sampled_from([(1 << 32) - 1, 1 << 32, -1]))
xnames = st.one_of(st.sampled_from([b"user.a", b"user.b", b"trusted.t", b"security.s",
                                    b"user.", b"bogus.x", b"", b"user." + b"n" * 250,
                                    b"user." + b"n" * 251]),
                   st.binary(min_size=1, max_size=6).map(lambda b: b"user." + b))
xvalues = st.one_of(st.binary(max_size=64),
                    st.sampled_from([b"v" * 65536, b"v" * 65537, b"w" * 20000]))


def clamp(t: int) -> int:
    return min(max(t, TIME_MIN_NS), TIME_MAX_NS)


class Node:
    def __init__(self, kind: str, inum: int):
        self.kind = kind            # dir, file, symlink, fifo
        self.inum = inum
        self.children: dict[bytes, Node] = {}
        self.data = bytearray()     # modelled prefix of a file
        self.size = 0
        self.target = b""
        self.xattrs: dict[bytes, bytes] = {}
        self.times: tuple[int, int] | None = None
        self.owner: tuple[int, int] = (0, 0)
        self.nlink = 1


class HostileFs(RuleBasedStateMachine):
    def __init__(self):
        super().__init__()
        self.env = FsEnv(16 * MiB)
        self.root = Node("dir", ROOT_INUM)
        lf = self.fs.lookup(ROOT_INUM, b"lost+found").st_ino
        self.forget_all(lf)
        self.root.children[b"lost+found"] = Node("dir", lf)
        self.nodes = {ROOT_INUM: self.root, lf: self.root.children[b"lost+found"]}

    @property
    def fs(self):
        return self.env.fs

    def teardown(self):
        self.check_model()
        self.env.remount()
        self.check_model()
        problems = self.env.fsck()
        self.env.close()
        assert not problems, problems

    # ------------------------------------------------------------ helpers

    def call(self, fn, *args, **kw):
        """Run an operation; anything but an FSError with a known errno fails."""
        try:
            return fn(*args, **kw), None
        except FSError as e:
            assert e.errno in ERRNOS, f"{fn.__name__}{args}: unexpected errno {e}"
            return None, e.errno

    def dirs(self) -> list[Node]:
        return [n for n in self.nodes.values() if n.kind == "dir"]

    def pick(self, data, kind: str | None = None) -> Node | None:
        cands = sorted((n for n in self.nodes.values() if kind is None or n.kind == kind),
                       key=lambda n: n.inum)
        return data.draw(st.sampled_from(cands)) if cands else None

    @staticmethod
    def touch(*nodes: Node | None) -> None:
        """The operation may have changed these nodes' atime or mtime."""
        for n in nodes:
            if n is not None:
                n.times = None

    def forget_all(self, inum: int) -> None:
        """Drop the lookup references the calls so far handed out for inum."""
        n = self.fs.lookups.get(inum, 0)
        if n:
            self.fs.forget(inum, n)

    def add(self, parent: Node, name: bytes, kind: str, attr) -> Node:
        node = Node(kind, attr.st_ino)
        parent.children[name] = node
        self.nodes[node.inum] = node
        self.forget_all(node.inum)
        return node

    # ------------------------------------------------------------ namespace

    @rule(data=st.data(), name=names, kind=st.sampled_from(["file", "dir", "fifo"]),
          uid=ids, gid=ids)
    def make(self, data, name, kind, uid, gid):
        parent = self.pick(data, "dir")
        fn = {"file": self.fs.create, "dir": self.fs.mkdir,
              "fifo": lambda p, n, m, uid, gid: self.fs.mknod(p, n, stat.S_IFIFO | m, 0,
                                                               uid, gid)}[kind]
        attr, err = self.call(fn, parent.inum, name, 0o640, uid=uid, gid=gid)
        self.touch(parent)
        if err is None:
            assert name not in parent.children
            node = self.add(parent, name, kind, attr)
            node.owner = (uid, gid)
            if kind == "dir":
                parent.nlink += 1
        elif err == errno.EEXIST:
            assert name in parent.children or name in (b".", b"..")

    @rule(data=st.data(), name=names,
          dest=st.one_of(st.sampled_from([b"t" * 4095, b"t" * 4096, b"", b"a\0b"]),
                         st.binary(min_size=1, max_size=20).filter(lambda t: b"\0" not in t)))
    def symlink(self, data, name, dest):
        parent = self.pick(data, "dir")
        attr, err = self.call(self.fs.symlink, parent.inum, name, dest)
        self.touch(parent)
        if err is None:
            self.add(parent, name, "symlink", attr).target = dest
            assert len(dest) <= 4095

    @rule(data=st.data(), name=names)
    def unlink(self, data, name):
        parent = self.pick(data, "dir")
        child = parent.children.get(name)
        _r, err = self.call(self.fs.unlink if child is None or child.kind != "dir"
                            else self.fs.rmdir, parent.inum, name)
        self.touch(parent)
        if err is None:
            del parent.children[name]
            child.nlink -= 1
            if child.kind == "dir":
                parent.nlink -= 1
            if child.nlink <= (1 if child.kind == "dir" else 0):
                del self.nodes[child.inum]
        else:
            assert child is None or child.kind == "dir", (name, err)

    @rule(data=st.data(), name=names)
    def link(self, data, name):
        node = self.pick(data)
        parent = self.pick(data, "dir")
        attr, err = self.call(self.fs.link, node.inum, parent.inum, name)
        self.touch(parent)
        if err is None:
            assert node.kind != "dir"
            parent.children[name] = node
            node.nlink += 1
            self.forget_all(node.inum)

    @rule(data=st.data(), old=names, new=names, flags=st.sampled_from([0, 0, 1, 2, 3, 8]))
    def rename(self, data, old, new, flags):
        sp = self.pick(data, "dir")
        dp = self.pick(data, "dir")
        _r, err = self.call(self.fs.rename, sp.inum, old, dp.inum, new, flags)
        self.touch(sp, dp)
        if err is not None:
            return
        src = sp.children[old]
        dst = dp.children.get(new)
        if src is dst:
            return
        if flags & 2:
            sp.children[old], dp.children[new] = dst, src
            if sp is not dp and (src.kind == "dir") != (dst.kind == "dir"):
                delta = 1 if src.kind == "dir" else -1
                dp.nlink += delta
                sp.nlink -= delta
            return
        del sp.children[old]
        dp.children[new] = src
        if src.kind == "dir" and sp is not dp:
            sp.nlink -= 1
            dp.nlink += 1
        if dst is not None:
            dst.nlink -= 1
            if dst.kind == "dir":
                dp.nlink -= 1
            if dst.nlink <= (1 if dst.kind == "dir" else 0):
                del self.nodes[dst.inum]

    # ------------------------------------------------------------ data

    @rule(data=st.data(), off=offsets, n=st.sampled_from([0, 1, 4095, 4096, 9000, 70000]),
          fill=st.integers(1, 255))
    def write(self, data, off, n, fill):
        node = self.pick(data)
        buf = bytes([fill]) * n
        done, err = self.call(self.fs.write, node.inum, off, buf)
        self.touch(node)
        if err is None:
            assert node.kind == "file" and off >= 0
            end = off + done
            assert done == n or err == errno.ENOSPC or end == MAX_FILE_SIZE or done < n
            self._model_write(node, off, buf[:done])
        elif err in (errno.EISDIR, errno.EINVAL):
            assert node.kind != "file" or off < 0

    def _model_write(self, node: Node, off: int, buf: bytes) -> None:
        if not buf:
            return                  # a write of nothing changes nothing (not even the size)
        node.size = max(node.size, off + len(buf))
        if off < MODEL_BYTES:
            end = min(off + len(buf), MODEL_BYTES)
            if len(node.data) < end:
                node.data.extend(bytes(end - len(node.data)))
            node.data[off:end] = buf[:end - off]

    @rule(data=st.data(), size=sizes)
    def truncate(self, data, size):
        node = self.pick(data)
        _a, err = self.call(self.fs.setattr, node.inum, size=size)
        self.touch(node)
        if err is None:
            assert node.kind == "file"
            node.size = size
            del node.data[size:]

    @rule(data=st.data(), off=offsets, size=sizes)
    def read(self, data, off, size):
        node = self.pick(data, "file")
        if node is None:
            return
        buf, err = self.call(self.fs.read, node.inum, off, size)
        self.touch(node)
        if err is not None:
            assert off < 0 or size < 0, err
            return
        want = max(0, min(size, node.size - off, READ_MAX))
        assert len(buf) == want
        if off < MODEL_BYTES:
            model = bytes(node.data[off:off + min(want, MODEL_BYTES - off)])
            model += bytes(min(want, MODEL_BYTES - off) - len(model))
            assert buf[:len(model)] == model

    # ------------------------------------------------------------ attributes

    @rule(data=st.data(), atime=times, mtime=times)
    def utimes(self, data, atime, mtime):
        node = self.pick(data)
        attr, err = self.call(self.fs.setattr, node.inum, atime_ns=atime, mtime_ns=mtime)
        if err is not None:
            assert err == errno.ENOSPC
            return
        node.times = (clamp(atime), clamp(mtime))
        assert (attr.st_atime_ns, attr.st_mtime_ns) == node.times

    @rule(data=st.data(), uid=ids, gid=ids)
    def chown(self, data, uid, gid):
        node = self.pick(data)
        _a, err = self.call(self.fs.setattr, node.inum, uid=uid, gid=gid)
        if err is None:
            node.owner = (uid, gid)
        elif err == errno.EINVAL:
            assert not (0 <= uid < 1 << 32 and 0 <= gid < 1 << 32)

    @rule(data=st.data(), name=xnames, value=xvalues, flags=st.sampled_from([0, 0, 1, 2, 4]))
    def setxattr(self, data, name, value, flags):
        node = self.pick(data)
        _r, err = self.call(self.fs.setxattr, node.inum, name, value, flags)
        if err is None:
            node.xattrs[name] = value
        elif err == errno.EEXIST:
            assert name in node.xattrs
        elif err == errno.ENODATA:
            assert name not in node.xattrs

    @rule(data=st.data(), name=xnames)
    def removexattr(self, data, name):
        node = self.pick(data)
        _r, err = self.call(self.fs.removexattr, node.inum, name)
        if err is None:
            del node.xattrs[name]
        elif err == errno.ENODATA:
            assert name not in node.xattrs

    @rule(data=st.data(), n=st.integers(1, 200))
    def many_xattrs(self, data, n):
        node = self.pick(data)
        for i in range(n):
            name = b"user.many%05d" % i
            _r, err = self.call(self.fs.setxattr, node.inum, name, b"%d" % i)
            if err is not None:
                assert err == errno.ENOSPC
                break
            node.xattrs[name] = b"%d" % i

    @rule(data=st.data(), name=names)
    def lookup(self, data, name):
        parent = self.pick(data)
        attr, err = self.call(self.fs.lookup, parent.inum, name)
        if err is None:
            if name not in (b".", b".."):
                assert parent.children[name].inum == attr.st_ino
            self.forget_all(attr.st_ino)

    # ------------------------------------------------------------ checks

    @invariant()
    def still_writable(self):
        assert self.env.eng.failed is None
        assert not self.fs.read_only

    def check_model(self):
        fs = self.fs
        for node in self.nodes.values():
            a = fs.getattr(node.inum)
            if node.kind == "file":
                assert a.st_size == node.size, (node.inum, a.st_size, node.size)
            if node.kind == "symlink":
                assert fs.readlink(node.inum) == node.target
            if node.times is not None:
                assert (a.st_atime_ns, a.st_mtime_ns) == node.times
            assert (a.st_uid, a.st_gid) == node.owner
            assert a.st_nlink == (2 + sum(c.kind == "dir" for c in node.children.values())
                                  if node.kind == "dir" else node.nlink)
            assert sorted(fs.listxattr(node.inum)) == sorted(node.xattrs)
            for name, v in node.xattrs.items():
                assert fs.getxattr(node.inum, name) == v
            if node.kind == "dir":
                listed = {n: a.st_ino for n, a, _o in fs.readdir(node.inum)
                          if n not in (b".", b"..")}
                assert listed == {n: c.inum for n, c in node.children.items()}
        s = fs.statfs()
        assert s.f_files - s.f_ffree == len(self.nodes)


TestHostileFs = HostileFs.TestCase
TestHostileFs.settings = settings(max_examples=50, stateful_step_count=50, deadline=None,
                                  suppress_health_check=list(HealthCheck))
