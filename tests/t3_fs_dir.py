"""Directories: hashed slots, probing and tombstones, readdir offsets, rename."""

from __future__ import annotations

import errno
import os
import random
import stat

import pytest

import pyfs.fs.dir as hashtab
from pyfs.format import BtreeId, Dirent, pack_key, unpack_key
from pyfs.fs import FSError
from pyfs.fs.filesystem import RENAME_EXCHANGE, RENAME_NOREPLACE
from pyfs.fs.inode import ROOT_INUM

ROOT = ROOT_INUM


def raises(err: int, fn, *args, **kw):
    with pytest.raises(FSError) as ei:
        fn(*args, **kw)
    assert ei.value.errno == err, f"{ei.value} is not {errno.errorcode[err]}"


def listing(fs, inum: int, offset: int = 0) -> list[bytes]:
    return [n for n, _a, _o in fs.readdir(inum, offset)]


def dirent_keys(eng, inum: int) -> dict[int, Dirent]:
    return {unpack_key(k)[1]: Dirent.unpack(v) for k, v in
            eng.btrees.iter(BtreeId.dirents, pack_key(inum, 0), pack_key(inum, 2**64 - 1))}


@pytest.fixture
def collide(monkeypatch):
    """Every name starting with b"c" hashes to one home slot; others spread."""
    real = hashtab.name_hash

    def fake(seed: int, name: bytes) -> int:
        return hashtab.HOME_BIT | 1000 if name.startswith(b"c") else real(seed, name)
    monkeypatch.setattr(hashtab, "name_hash", fake)
    return hashtab.HOME_BIT | 1000


# ---------------------------------------------------------------- slots and readdir

def test_slots_are_in_range(fsenv):
    fs = fsenv.fs
    d = fs.mkdir(ROOT, b"d", 0o755)
    for i in range(200):
        fs.create(d.st_ino, b"f%d" % i, 0o644)
    offs = [o for _n, _a, o in fs.readdir(d.st_ino)]
    assert offs[:2] == [1, 2]
    assert all(2**61 < o < 2**63 for o in offs[2:])
    assert offs == sorted(offs)


def test_readdir_resume_from_every_offset(fsenv):
    fs = fsenv.fs
    d = fs.mkdir(ROOT, b"d", 0o755)
    want = {b"n%03d" % i for i in range(60)}
    for n in want:
        fs.create(d.st_ino, n, 0o644)
    full = list(fs.readdir(d.st_ino))
    assert {n for n, _a, _o in full[2:]} == want
    for i, (_n, _a, off) in enumerate(full):
        assert [n for n, _a, _o in fs.readdir(d.st_ino, off)] == [n for n, _a, _o in full[i + 1:]]
    attrs = {n: a for n, a, _o in full}
    assert attrs[b"."].st_ino == d.st_ino and attrs[b".."].st_ino == ROOT
    assert stat.S_ISREG(attrs[b"n000"].st_mode)


def test_readdir_offsets_stable_under_changes(fsenv):
    """Entries present throughout a listing are returned exactly once even when
    others are created and removed between readdir calls (resuming by offset)."""
    fs = fsenv.fs
    d = fs.mkdir(ROOT, b"d", 0o755)
    rng = random.Random(5)
    stable = {b"s%03d" % i for i in range(80)}
    for n in stable:
        fs.create(d.st_ino, n, 0o644)
    churn: set[bytes] = set()
    seen: list[bytes] = []
    off = 0
    while True:
        batch = []
        for n, _a, o in fs.readdir(d.st_ino, off):
            batch.append(n)
            off = o
            if len(batch) == 7:
                break
        if not batch:
            break
        seen += batch
        for _ in range(5):
            if churn and rng.random() < 0.5:
                victim = rng.choice(sorted(churn))
                fs.unlink(d.st_ino, victim)
                churn.discard(victim)
            else:
                n = b"x%06d" % rng.randrange(10**6)
                if n not in churn:
                    fs.create(d.st_ino, n, 0o644)
                    churn.add(n)
    got = [n for n in seen if n.startswith(b"s")]
    assert sorted(got) == sorted(stable) and len(got) == len(set(got))
    assert seen[:2] == [b".", b".."]


def test_collisions_probe_and_tombstones(collide, fsenv):
    home = collide
    fs, eng = fsenv.fs, fsenv.eng
    d = fs.mkdir(ROOT, b"d", 0o755)
    for i in range(5):
        fs.create(d.st_ino, b"c%d" % i, 0o644)
    slots = dirent_keys(eng, d.st_ino)
    assert sorted(slots) == list(range(home, home + 5))
    # Deleting a middle entry keeps the chain: a tombstone stays.
    fs.unlink(d.st_ino, b"c1")
    slots = dirent_keys(eng, d.st_ino)
    assert slots[home + 1].inum == 0
    for i in (0, 2, 3, 4):
        assert fs.lookup(d.st_ino, b"c%d" % i).st_ino
    raises(errno.ENOENT, fs.lookup, d.st_ino, b"c1")
    # A new colliding name reuses the tombstone.
    fs.create(d.st_ino, b"c9", 0o644)
    assert dirent_keys(eng, d.st_ino)[home + 1].tail == b"c9"
    # Deleting the end of the chain drops it, and the tombstones before it.
    fs.unlink(d.st_ino, b"c2")
    fs.unlink(d.st_ino, b"c3")
    assert {s: e.inum == 0 for s, e in dirent_keys(eng, d.st_ino).items()
            if s >= home} == {home: False, home + 1: False, home + 2: True, home + 3: True,
                              home + 4: False}
    fs.unlink(d.st_ino, b"c4")
    assert sorted(s for s in dirent_keys(eng, d.st_ino) if s >= home) == [home, home + 1]
    for n in (b"c0", b"c9"):
        fs.unlink(d.st_ino, n)
    assert dirent_keys(eng, d.st_ino) == {}
    fs.rmdir(ROOT, b"d")


def test_collisions_random_model(collide, fsenv):
    """Random creates/unlinks of colliding and ordinary names against a set."""
    fs = fsenv.fs
    d = fs.mkdir(ROOT, b"d", 0o755).st_ino
    rng = random.Random(11)
    model: set[bytes] = set()
    pool = [b"c%d" % i for i in range(12)] + [b"o%d" % i for i in range(12)]
    for _ in range(400):
        n = rng.choice(pool)
        if n in model:
            fs.unlink(d, n)
            model.discard(n)
        else:
            fs.create(d, n, 0o644)
            model.add(n)
        if rng.random() < 0.1:
            assert set(listing(fs, d)[2:]) == model
    for n in pool:
        if n in model:
            assert fs.lookup(d, n)
        else:
            raises(errno.ENOENT, fs.lookup, d, n)
    assert fs.getattr(d).st_size == len(model)


# ---------------------------------------------------------------- rename

def test_rename_simple_and_across_dirs(fsenv):
    fs = fsenv.fs
    a = fs.mkdir(ROOT, b"a", 0o755)
    b = fs.mkdir(ROOT, b"b", 0o755)
    f = fs.create(a.st_ino, b"f", 0o644)
    fs.write(f.st_ino, 0, b"payload")
    fs.rename(a.st_ino, b"f", a.st_ino, b"g")
    assert listing(fs, a.st_ino)[2:] == [b"g"]
    fs.rename(a.st_ino, b"g", b.st_ino, b"h")
    assert listing(fs, a.st_ino)[2:] == [] and listing(fs, b.st_ino)[2:] == [b"h"]
    h = fs.lookup(b.st_ino, b"h")
    assert h.st_ino == f.st_ino and fs.read(h.st_ino, 0, 100) == b"payload"
    assert fs.getattr(a.st_ino).st_size == 0 and fs.getattr(b.st_ino).st_size == 1
    raises(errno.ENOENT, fs.rename, a.st_ino, b"nope", b.st_ino, b"x")
    raises(errno.ENOTDIR, fs.rename, a.st_ino, b"x", h.st_ino, b"x")


def test_rename_replaces_file(fsenv):
    fs = fsenv.fs
    x = fs.create(ROOT, b"x", 0o644)
    y = fs.create(ROOT, b"y", 0o644)
    fs.write(y.st_ino, 0, b"old y")
    fs.forget(y.st_ino, 1)
    fs.rename(ROOT, b"x", ROOT, b"y")
    assert fs.lookup(ROOT, b"y").st_ino == x.st_ino
    raises(errno.ENOENT, fs.lookup, ROOT, b"x")
    raises(errno.ENOENT, fs.getattr, y.st_ino)       # unreferenced: deleted
    assert fs.getattr(ROOT).st_size == 2              # lost+found, y


def test_rename_replaced_but_open_stays_until_release(fsenv):
    fs = fsenv.fs
    fs.create(ROOT, b"x", 0o644)
    y = fs.create(ROOT, b"y", 0o644)
    fs.write(y.st_ino, 0, b"old y")
    fs.open(y.st_ino, os.O_RDONLY)
    fs.rename(ROOT, b"x", ROOT, b"y")
    assert fs.getattr(y.st_ino).st_nlink == 0
    assert fs.read(y.st_ino, 0, 10) == b"old y"
    fs.release(y.st_ino)
    raises(errno.ENOENT, fs.getattr, y.st_ino)      # gone; its number held
    assert y.st_ino in fs.inums.held
    fs.forget(y.st_ino, 1)
    assert y.st_ino not in fs.inums.held


def test_rename_directories_update_links(fsenv):
    fs = fsenv.fs
    a = fs.mkdir(ROOT, b"a", 0o755)
    b = fs.mkdir(ROOT, b"b", 0o755)
    s = fs.mkdir(a.st_ino, b"s", 0o755)
    fs.create(s.st_ino, b"inner", 0o644)
    fs.rename(a.st_ino, b"s", b.st_ino, b"t")
    assert fs.getattr(a.st_ino).st_nlink == 2 and fs.getattr(b.st_ino).st_nlink == 3
    assert fs.lookup(s.st_ino, b"..").st_ino == b.st_ino
    assert fs.lookup(s.st_ino, b"inner")
    # Replace an empty directory.
    e = fs.mkdir(a.st_ino, b"e", 0o755)
    fs.forget(e.st_ino, 1)
    fs.rename(b.st_ino, b"t", a.st_ino, b"e")
    assert fs.getattr(a.st_ino).st_nlink == 3 and fs.getattr(b.st_ino).st_nlink == 2
    raises(errno.ENOENT, fs.getattr, e.st_ino)
    # Non-empty target, type mismatches.
    fs.mkdir(b.st_ino, b"full", 0o755)
    fs.create(fs.lookup(b.st_ino, b"full").st_ino, b"x", 0o644)
    fs.mkdir(a.st_ino, b"m", 0o755)
    raises(errno.ENOTEMPTY, fs.rename, a.st_ino, b"m", b.st_ino, b"full")
    fs.create(b.st_ino, b"file", 0o644)
    raises(errno.ENOTDIR, fs.rename, a.st_ino, b"m", b.st_ino, b"file")
    raises(errno.EISDIR, fs.rename, b.st_ino, b"file", a.st_ino, b"m")


def test_rename_into_own_subtree_is_einval(fsenv):
    fs = fsenv.fs
    a = fs.mkdir(ROOT, b"a", 0o755)
    b = fs.mkdir(a.st_ino, b"b", 0o755)
    c = fs.mkdir(b.st_ino, b"c", 0o755)
    raises(errno.EINVAL, fs.rename, ROOT, b"a", c.st_ino, b"a2")
    raises(errno.EINVAL, fs.rename, ROOT, b"a", a.st_ino, b"a2")
    raises(errno.ENOENT, fs.rename, ROOT, b"a", c.st_ino, b"x", RENAME_EXCHANGE)
    fs.create(c.st_ino, b"x", 0o644)
    raises(errno.EINVAL, fs.rename, ROOT, b"a", c.st_ino, b"x", RENAME_EXCHANGE)
    fs.rename(a.st_ino, b"b", ROOT, b"b2")        # moving up is fine
    assert fs.lookup(b.st_ino, b"..").st_ino == ROOT


def test_rename_noreplace(fsenv):
    fs = fsenv.fs
    fs.create(ROOT, b"x", 0o644)
    fs.create(ROOT, b"y", 0o644)
    raises(errno.EEXIST, fs.rename, ROOT, b"x", ROOT, b"y", RENAME_NOREPLACE)
    fs.rename(ROOT, b"x", ROOT, b"z", RENAME_NOREPLACE)
    assert fs.lookup(ROOT, b"z")
    raises(errno.EINVAL, fs.rename, ROOT, b"z", ROOT, b"w", 3)
    raises(errno.EINVAL, fs.rename, ROOT, b"z", ROOT, b"w", 8)


def test_rename_exchange(fsenv):
    fs = fsenv.fs
    a = fs.mkdir(ROOT, b"a", 0o755)
    f = fs.create(ROOT, b"f", 0o644)
    sub = fs.mkdir(a.st_ino, b"sub", 0o755)
    raises(errno.ENOENT, fs.rename, ROOT, b"f", ROOT, b"missing", RENAME_EXCHANGE)
    # file <-> dir across directories: nlink of both parents follows the dir.
    n_root = fs.getattr(ROOT).st_nlink
    fs.rename(ROOT, b"f", a.st_ino, b"sub", RENAME_EXCHANGE)
    assert fs.lookup(ROOT, b"f").st_ino == sub.st_ino
    assert fs.lookup(a.st_ino, b"sub").st_ino == f.st_ino
    assert fs.getattr(ROOT).st_nlink == n_root + 1
    assert fs.getattr(a.st_ino).st_nlink == 2
    assert fs.lookup(sub.st_ino, b"..").st_ino == ROOT
    d_types = {n: a_.st_mode for n, a_, _o in fs.readdir(ROOT)}
    assert stat.S_ISDIR(d_types[b"f"])
    # Same-directory exchange of two files.
    g = fs.create(ROOT, b"g", 0o644)
    h = fs.create(ROOT, b"h", 0o644)
    fs.rename(ROOT, b"g", ROOT, b"h", RENAME_EXCHANGE)
    assert fs.lookup(ROOT, b"g").st_ino == h.st_ino and fs.lookup(ROOT, b"h").st_ino == g.st_ino


def test_rename_hardlinks_to_same_inode_is_noop(fsenv):
    fs = fsenv.fs
    a = fs.create(ROOT, b"a", 0o644)
    fs.link(a.st_ino, ROOT, b"b")
    fs.rename(ROOT, b"a", ROOT, b"b")
    assert fs.lookup(ROOT, b"a").st_ino == fs.lookup(ROOT, b"b").st_ino
    assert fs.getattr(a.st_ino).st_nlink == 2
    fs.rename(ROOT, b"a", ROOT, b"a")


def test_rename_with_collisions(collide, fsenv):
    fs = fsenv.fs
    d = fs.mkdir(ROOT, b"d", 0o755).st_ino
    for i in range(4):
        fs.create(d, b"c%d" % i, 0o644)
    fs.rename(d, b"c1", d, b"c7")            # same chain: out of one slot, into another
    fs.rename(d, b"c0", d, b"c3")            # replace within the chain
    fs.rename(d, b"c2", ROOT, b"c2")
    assert sorted(listing(fs, d)[2:]) == [b"c3", b"c7"]
    for n in (b"c3", b"c7"):
        assert fs.lookup(d, n)
    assert fs.lookup(ROOT, b"c2")


def test_rename_persists(fsenv):
    fs = fsenv.fs
    a = fs.mkdir(ROOT, b"a", 0o755)
    fs.mkdir(a.st_ino, b"x", 0o755)
    fs.rename(a.st_ino, b"x", ROOT, b"y")
    fs2 = fsenv.remount()
    y = fs2.lookup(ROOT, b"y")
    assert fs2.lookup(y.st_ino, b"..").st_ino == ROOT
    assert listing(fs2, a.st_ino)[2:] == []
