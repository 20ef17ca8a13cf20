"""Rebuilding damaged btrees keeps what can be kept, and nothing that was deleted.

A tall image sees files created, then many deleted and overwritten (nodes
split, merge and compact, leaving retired leaves in their old regions); then
an interior node's pointers are damaged. fsck -y rebuilds the btree from the
readable leaves, finding the leaves of lost subtrees by scanning the btree
buckets, newest first: afterwards the filesystem holds exactly the files it
held before the damage, with their data, and a second fsck is clean.
"""

from __future__ import annotations

import io
import random

import pytest
from craft import MiB, deterministic, mount, new_image, nodes, rewrite_node

from pyfs.btree.cache import BtreeError
from pyfs.engine import Engine
from pyfs.format import BtreeId, pack_btree_ptr, unpack_btree_ptr
from pyfs.fs import Filesystem
from pyfs.fsck import FsckOptions, fsck_device


def _contents(dev) -> dict[bytes, bytes]:
    eng = Engine(dev, read_only=True)
    fs = Filesystem(eng)
    out = {}
    todo = [(1, b"")]
    while todo:
        d, path = todo.pop()
        for name, attr, _off in fs.readdir(d):
            if name in (b".", b"..") or name == b"lost+found":
                continue
            p = path + b"/" + name
            if attr.st_mode & 0o40000:
                todo.append((attr.st_ino, p))
            else:
                out[p] = fs.read(attr.st_ino, 0, attr.st_size)
    return out


def _aged_image():
    with deterministic(11):
        dev = new_image(size=16 * MiB)
        eng, fs = mount(dev)
        rng = random.Random(11)
        d = fs.mkdir(1, b"aged", 0o755).st_ino
        inos = {}
        for i in range(1200):             # enough names for two levels of dirents
            a = fs.create(d, b"n%04d" % i, 0o644)
            fs.write(a.st_ino, 0, b"%d;" % i * rng.randrange(1, 900))
            inos[i] = a.st_ino
        for i in rng.sample(range(1200), 700):
            fs.unlink(d, b"n%04d" % i)
            fs.forget(inos[i], 1)
        for i in range(0, 1200, 7):
            try:
                fs.write(fs.lookup(d, b"n%04d" % i).st_ino, 100, b"overwritten")
            except OSError:
                pass
        eng.close()
    return dev


@pytest.mark.parametrize("bid", [BtreeId.inodes, BtreeId.dirents, BtreeId.extents])
def test_lost_subtree_is_found_by_scanning(bid):
    dev = _aged_image()
    before = _contents(dev)
    interior = [n for n in nodes(dev, bid) if n.level == 1]
    assert interior, "the aged image must give this btree an interior node"

    def damage(f, keys, vals):      # every other child pointer points off by a block
        for i in range(0, len(vals), 2):
            off, seq = unpack_btree_ptr(vals[i])
            vals[i] = pack_btree_ptr(off + 4096, seq)
        return f, keys, vals
    rewrite_node(dev, interior[0].offset, damage)
    with pytest.raises((BtreeError, Exception)):
        _contents(dev)
    out = io.StringIO()
    res = fsck_device(dev, FsckOptions(mode="yes", force=True), out=out)
    assert res.exit_code == 1, out.getvalue()
    assert "[25 btree_ptr_bad]" in out.getvalue()
    res2 = fsck_device(dev, FsckOptions(mode="no", force=True), out=io.StringIO())
    assert res2.exit_code == 0
    assert _contents(dev) == before
