"""Crash states of a recorded workload are consistent: fsck finds nothing.

A workload (fs_mark-like creates and fsyncs, appends, overwrites, renames,
unlinks of open and closed files, truncates, xattrs, mkdir/rmdir) runs
through a RecordingDevice; the images a power cut could leave (after each
flush, plus random subsets of the writes in flight, some torn) are checked
with fsck -n: journal replay, finishing deletions and truncates are normal,
anything else is either an engine bug (a crash state that is really
inconsistent) or an fsck false positive. Then fsck -y and a mount must work.
PYFS_CRASH_SAMPLES sets the random states per flush point (default 2).
"""

from __future__ import annotations

import io
import os
import random

import pytest
from craft import MiB, deterministic, mount, new_image, populate

from pyfs.device import RecordingDevice
from pyfs.engine import Engine
from pyfs.fs import Filesystem
from pyfs.fsck import FsckOptions, fsck_device


def workload(fs: Filesystem, rng: random.Random, steps: int) -> None:
    d = fs.mkdir(1, b"work", 0o755).st_ino
    live: list[bytes] = []
    opened: list[int] = []
    for i in range(steps):
        r = rng.random()
        if r < 0.35 or not live:
            name = b"f%04d" % i
            a = fs.create(d, name, 0o644)
            fs.write(a.st_ino, 0, bytes([i % 251]) * rng.randrange(1, 20000))
            if rng.random() < 0.5:
                fs.sync(a.st_ino)
            live.append(name)
        elif r < 0.5:
            name = rng.choice(live)
            ino = fs.lookup(d, name).st_ino
            fs.write(ino, rng.randrange(0, 30000), b"w" * rng.randrange(1, 9000))
        elif r < 0.6:
            name = live.pop(rng.randrange(len(live)))
            ino = fs.lookup(d, name).st_ino
            if rng.random() < 0.5:
                fs.open(ino)
                opened.append(ino)
            fs.unlink(d, name)
        elif r < 0.7:
            old = rng.choice(live)
            new = b"r%04d" % i
            fs.rename(d, old, d, new)
            live[live.index(old)] = new
        elif r < 0.78:
            ino = fs.lookup(d, rng.choice(live)).st_ino
            fs.setattr(ino, size=rng.randrange(0, 12000))
        elif r < 0.86:
            ino = fs.lookup(d, rng.choice(live)).st_ino
            fs.setxattr(ino, b"user.k%d" % (i % 3), b"v" * rng.randrange(1, 300))
        elif r < 0.93:
            sub = fs.mkdir(d, b"d%04d" % i, 0o755).st_ino
            fs.create(sub, b"inner", 0o644)
            if rng.random() < 0.5:
                fs.unlink(sub, b"inner")
                fs.rmdir(d, b"d%04d" % i)
        elif opened:
            fs.release(opened.pop())
        if rng.random() < 0.15:
            fs.sync()


def _record(seed: int, steps: int):
    with deterministic(seed):
        rec = RecordingDevice(new_image(size=8 * MiB))
        eng, fs = mount(rec)
        populate(fs, 6)
        eng.flush()
        start = len(rec.log)
        workload(fs, random.Random(seed), steps)
        eng.flush()
    return rec, start


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_crash_states_are_clean(seed):
    rec, start = _record(seed, 60)
    samples = int(os.environ.get("PYFS_CRASH_SAMPLES", 2))
    bad = []
    n = 0
    for sid, upto, extra in rec.crash_states(random.Random(seed), samples):
        if upto < start:
            continue
        n += 1
        dev = rec.materialize(upto, extra)
        out = io.StringIO()
        res = fsck_device(dev, FsckOptions(mode="no", force=True), out=out)
        if res.exit_code:
            bad.append(f"{sid}: exit {res.exit_code}\n{out.getvalue()}")
            continue
        res = fsck_device(dev, FsckOptions(mode="yes", force=True), out=io.StringIO())
        assert res.exit_code == 0, sid
        eng = Engine(dev)
        Filesystem(eng)
        eng.close()
    assert n > 10
    assert not bad, f"{len(bad)} of {n} crash states are not clean:\n" + "\n".join(bad[:3])


def test_first_mount_crash_states_are_clean():
    """A power cut at any point of a fresh image's first mount (before, during
    and after its roots, superblock and first journal writes): fsck agrees
    with mount that there is nothing to repair, and the image mounts."""
    with deterministic(11):
        rec = RecordingDevice(new_image(size=8 * MiB))
        eng, fs = mount(rec)
        a = fs.create(1, b"first", 0o644)
        fs.write(a.st_ino, 0, b"x" * 5000)
        fs.sync(a.st_ino)
        fs.mkdir(1, b"second", 0o755)
        eng.close()
    bad = []
    n = 0
    for upto in range(len(rec.log) + 1):            # after every write, not only flushes
        n += 1
        dev = rec.materialize(upto)
        out = io.StringIO()
        res = fsck_device(dev, FsckOptions(mode="no", force=True), out=out)
        if res.exit_code:
            bad.append(f"u{upto} ({rec.log[upto - 1][0] if upto else 'mkfs'}): "
                       f"exit {res.exit_code}\n{out.getvalue()}")
            continue
        eng = Engine(dev)
        fs = Filesystem(eng)
        eng.close()
    assert n > 10
    assert not bad, f"{len(bad)} of {n} crash states are not clean:\n" + "\n".join(bad[:3])


def test_states_after_every_write_keep_what_was_fsynced():
    """The daemon writes the journal after every operation without a flush
    (acknowledged means written). The images a power cut could leave after
    any single write, and random subsets of the unflushed writes, must all be
    clean for fsck, and every file whose fsync returned must read back."""
    with deterministic(23):
        rec = RecordingDevice(new_image(size=8 * MiB))
        eng, fs = mount(rec)
        start = len(rec.log)
        rng = random.Random(23)
        d = fs.mkdir(1, b"w", 0o755).st_ino
        synced: list[tuple[int, bytes, bytes]] = []     # (log index, name, content)
        scratch = []
        for i in range(160):
            if rng.random() < 0.4:
                name = b"s%03d" % i
                body = bytes([i]) * rng.randrange(1, 30000)
                a = fs.create(d, name, 0o644)
                fs.write(a.st_ino, 0, body)
                fs.sync(a.st_ino)
                synced.append((len(rec.log), name, body))
            elif scratch and rng.random() < 0.3:
                fs.unlink(d, scratch.pop(rng.randrange(len(scratch))))
            else:
                name = b"t%03d" % i
                a = fs.create(d, name, 0o644)
                fs.write(a.st_ino, rng.randrange(0, 9000), b"x" * rng.randrange(1, 9000))
                fs.setxattr(a.st_ino, b"user.k", b"v" * rng.randrange(1, 200))
                scratch.append(name)
            eng.persist()                   # what the daemon does before answering
        eng.flush()
    bad, n = [], 0
    samples = int(os.environ.get("PYFS_CRASH_SAMPLES", 2))
    points = range(start, len(rec.log) + 1)
    subsets = [(sid, upto, extra) for sid, upto, extra in
               rec.crash_states(random.Random(5), samples) if extra and upto >= start]
    for sid, upto, extra in [(f"u{u}", u, []) for u in points] + subsets:
        n += 1
        dev = rec.materialize(upto, extra)
        out = io.StringIO()
        res = fsck_device(dev, FsckOptions(mode="no", force=True), out=out)
        if res.exit_code:
            bad.append(f"{sid}: exit {res.exit_code}\n{out.getvalue()}")
            continue
        eng2 = Engine(dev, read_only=True)
        fs2 = Filesystem(eng2)
        w = fs2.lookup(1, b"w").st_ino if upto > start + 2 else None
        for at, name, body in synced:
            if at <= upto:
                got = fs2.read(fs2.lookup(w, name).st_ino, 0, len(body) + 1)
                if got != body:
                    bad.append(f"{sid}: fsync'd {name!r} reads back wrong")
    print("states", n)
    assert n > 100
    assert not bad, f"{len(bad)} of {n} crash states are wrong:\n" + "\n".join(bad[:3])
