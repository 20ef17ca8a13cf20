"""A dead daemon loses nothing: kill -9 of the mount daemon, no fsync anywhere.

A client process runs random operations (creates, writes, truncates, renames,
hard links, unlinks, mkdir/rmdir, xattrs) on the mount and logs each one
outside it: its intent before the syscall, "done" once the syscall returned.
The daemon is killed at a random moment. Then `pyfs fsck -f -n` must find
nothing to repair (journal replay is normal operation), and after a remount
the tree must be exactly what the done operations made, give or take the one
operation whose syscall was in flight. The same image goes on to the next
round, so later rounds start from what earlier kills left.

PYFS_KILL_ROUNDS sets the number of kills (default 6; thousands in a long
run). A failure prints the round's seed.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

from conftest import require_fuse

ROOT = Path(__file__).resolve().parent.parent
PYFS = [sys.executable, "-m", "pyfs.cli"]
ROUNDS = int(os.environ.get("PYFS_KILL_ROUNDS", "6"))
PAGE = 4096

CLIENT = r"""
import errno, hashlib, json, os, random, sys
mnt, log, seed = sys.argv[1], sys.argv[2], int(sys.argv[3])
state = json.loads(sys.argv[4])         # what the tree holds now: {files, dirs}
rng = random.Random(seed)
out = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
files, dirs = set(state["files"]), set(state["dirs"])

def note(**rec):
    os.write(out, (json.dumps(rec) + "\n").encode())

def data(i, n):
    return (hashlib.sha256(f"{seed}-{i}".encode()).digest() * (n // 32 + 1))[:n]

for i in range(1_000_000):
    d = rng.choice(sorted(dirs))
    path = f"{d}/f{rng.randrange(12)}"
    r = rng.random()
    if r < 0.25:
        op = ["create", path, rng.choice([0, 100, 5000, 70000])]
    elif r < 0.45 and files:
        op = ["write", rng.choice(sorted(files)), rng.randrange(0, 90000),
              rng.choice([1, 3000, 4096, 20000])]
    elif r < 0.52 and files:
        op = ["truncate", rng.choice(sorted(files)), rng.randrange(0, 80000)]
    elif r < 0.62 and files:
        op = ["rename", rng.choice(sorted(files)), path]
    elif r < 0.67 and files:
        op = ["link", rng.choice(sorted(files)), path]
    elif r < 0.77 and files:
        op = ["unlink", rng.choice(sorted(files))]
    elif r < 0.82:
        op = ["mkdir", f"w/d{rng.randrange(4)}"]
    elif r < 0.85:
        op = ["rmdir", f"w/d{rng.randrange(4)}"]
    elif r < 0.95 and files:
        op = ["setxattr", rng.choice(sorted(files)), f"user.k{rng.randrange(3)}",
              rng.randrange(1, 300)]
    elif files:
        op = ["removexattr", rng.choice(sorted(files)), f"user.k{rng.randrange(3)}"]
    else:
        continue
    note(i=i, op=op)
    kind, p = op[0], f"{mnt}/{op[1]}"
    n = None                                # bytes a write wrote (a kill can cut it short)
    try:
        if kind == "create":
            fd = os.open(p, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            try:
                if op[2]:
                    note(i=i, created=True)         # the create itself is done
                    n = os.write(fd, data(i, op[2]))
            finally:
                os.close(fd)
            files.add(op[1])
        elif kind == "write":
            fd = os.open(p, os.O_WRONLY)
            try:
                n = os.pwrite(fd, data(i, op[3]), op[2])
            finally:
                os.close(fd)
        elif kind == "truncate":
            os.truncate(p, op[2])
        elif kind == "rename":
            same = os.path.exists(f"{mnt}/{op[2]}") and os.path.samefile(p, f"{mnt}/{op[2]}")
            os.rename(p, f"{mnt}/{op[2]}")
            if not same:                    # renaming one link onto another does nothing
                files.discard(op[1])
            files.add(op[2])
        elif kind == "link":
            os.link(p, f"{mnt}/{op[2]}")
            files.add(op[2])
        elif kind == "unlink":
            os.unlink(p)
            files.discard(op[1])
        elif kind == "mkdir":
            os.mkdir(p)
            dirs.add(op[1])
        elif kind == "rmdir":
            os.rmdir(p)
            dirs.discard(op[1])
        elif kind == "setxattr":
            os.setxattr(p, op[2], data(i, op[3]))
        elif kind == "removexattr":
            os.removexattr(p, op[2])
    except OSError as e:
        if e.errno in (errno.ENOTCONN, errno.ECONNABORTED, errno.EIO):
            raise SystemExit(0)                     # the daemon is gone
        note(i=i, err=e.errno)
        continue
    note(i=i, done=True, n=n)
"""


def data(seed: int, i: int, n: int) -> bytes:
    return (hashlib.sha256(f"{seed}-{i}".encode()).digest() * (n // 32 + 1))[:n]


class Model:
    """The tree the done operations made: paths -> inode, inode -> content, xattrs."""

    def __init__(self):
        self.dirs = {"w"}
        self.paths: dict[str, int] = {}
        self.content: dict[int, bytearray] = {}
        self.xattrs: dict[int, dict[str, bytes]] = {}
        self.next = 0

    def copy(self) -> Model:
        m = Model()
        m.dirs = set(self.dirs)
        m.paths = dict(self.paths)
        m.content = {k: bytearray(v) for k, v in self.content.items()}
        m.xattrs = {k: dict(v) for k, v in self.xattrs.items()}
        m.next = self.next
        return m

    def state(self) -> dict:
        return {"files": sorted(self.paths), "dirs": sorted(self.dirs)}

    def apply(self, seed: int, i: int, op: list, created_only: bool = False,
              short: int | None = None) -> None:
        """Apply op; short: the bytes a write really wrote (a kill of the daemon
        between the pages of one write(2) makes the kernel return a short count)."""
        kind = op[0]
        if kind == "create":
            ino = self.next
            self.next += 1
            self.paths[op[1]] = ino
            self.content[ino] = bytearray(b"" if created_only else data(seed, i, op[2]))
            self.xattrs[ino] = {}
        elif kind == "write":
            c = self.content[self.paths[op[1]]]
            n = op[3] if short is None else short
            end = op[2] + n
            if n and len(c) < end:
                c.extend(bytes(end - len(c)))
            c[op[2]:end] = data(seed, i, op[3])[:n]
        elif kind == "truncate":
            c = self.content[self.paths[op[1]]]
            del c[op[2]:]
            c.extend(bytes(op[2] - len(c)))
        elif kind == "rename":
            if self.paths[op[1]] != self.paths.get(op[2]):   # two links of one file: no-op
                self.paths[op[2]] = self.paths.pop(op[1])
        elif kind == "link":
            self.paths[op[2]] = self.paths[op[1]]
        elif kind == "unlink":
            del self.paths[op[1]]
        elif kind == "mkdir":
            self.dirs.add(op[1])
        elif kind == "rmdir":
            self.dirs.discard(op[1])
        elif kind == "setxattr":
            self.xattrs[self.paths[op[1]]][op[2]] = data(seed, i, op[3])
        elif kind == "removexattr":
            self.xattrs[self.paths[op[1]]].pop(op[2], None)

    def snapshot(self) -> tuple:
        files = {p: (bytes(self.content[ino]), tuple(sorted(self.xattrs[ino].items())))
                 for p, ino in self.paths.items()}
        return files, frozenset(self.dirs)


def replay_log(model: Model, log: str, seed: int) -> tuple[Model, list[Model]]:
    """Apply the done operations; return the model and the alternatives the
    operations in flight at the kill may have left (with them, or part)."""
    recs = [json.loads(line) for line in Path(log).read_text().splitlines()]
    ops: dict[int, list] = {}
    pending = None
    cut = None
    for r in recs:
        if "op" in r:
            ops[r["i"]] = r["op"]
            pending = (r["i"], False)
        elif r.get("created"):
            model.apply(seed, r["i"], ops[r["i"]], created_only=True)
            pending = (r["i"], True)
        elif r.get("done"):
            i = r["i"]
            op = ops[i]
            n = r.get("n")
            if op[0] == "create" and pending == (i, True):
                op = ["write", op[1], 0, op[2]]
            model.apply(seed, i, op, short=n)
            # A write that came back short was cut by the kill: the kernel had
            # sent it as several WRITEs, the one in flight failed.
            cut = (i, op, n) if op[0] == "write" and n is not None and n < op[3] else None
            pending = None
        elif "err" in r:
            pending = None          # failed: changed nothing (a create's empty file stays)
    bases = [model]
    if cut is not None:
        i, op, n = cut
        bases += [_applied(model, seed, i, op, short=m)
                  for m in page_prefixes(op[2], op[3]) if m > n]
    alts = bases[1:]
    if pending is not None:
        for base in bases:
            alts += _in_flight(base, seed, ops, *pending)
    return model, alts


def _applied(model: Model, seed: int, i: int, op: list, **kw) -> Model:
    alt = model.copy()
    alt.apply(seed, i, op, **kw)
    return alt


def _in_flight(model: Model, seed: int, ops: dict, i: int, created: bool) -> list[Model]:
    """What the operation in flight at the kill may have left."""
    op = ops[i]
    if op[0] == "create" and created:
        op = ["write", op[1], 0, op[2]]
    try:
        if op[0] == "create":                               # created, nothing written
            return [_applied(model, seed, i, op, created_only=True)]
        if op[0] == "write":
            # The kernel sends a write(2) as one WRITE per page or so: a
            # kill between them leaves any page-aligned prefix written.
            return [_applied(model, seed, i, op, short=n) for n in page_prefixes(op[2], op[3])]
        return [_applied(model, seed, i, op)]
    except (KeyError, IndexError):
        return []                                       # the op would have failed anyway


def page_prefixes(offset: int, length: int) -> list[int]:
    """Byte counts of a write that end on a page boundary, and the whole."""
    ends = range((offset // PAGE + 1) * PAGE, offset + length, PAGE)
    return [e - offset for e in ends] + [length]


def actual(mnt: str) -> tuple:
    files, dirs = {}, set()
    base = Path(mnt)
    for d, _subdirs, names in os.walk(base / "w"):
        rel = os.path.relpath(d, mnt)
        dirs.add(rel)
        for n in names:
            p = Path(d) / n
            xs = tuple(sorted((x, os.getxattr(p, x)) for x in os.listxattr(p)))
            files[f"{rel}/{n}"] = (p.read_bytes(), xs)
    return files, frozenset(dirs)


def pyfs(*args, check=True, timeout=120):
    return subprocess.run([*PYFS, *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, check=check)


class Daemon:
    def __init__(self, image: str, mnt: str):
        self.mnt = mnt
        self.proc = subprocess.Popen([*PYFS, "mount", image, mnt, "-f"], cwd=ROOT,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 30
        while not os.path.ismount(mnt):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"mount failed: {self.proc.stderr.read()!r}")
            time.sleep(0.02)

    def kill9(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)
        subprocess.run(["fusermount3", "-u", "-z", self.mnt], capture_output=True)

    def umount(self) -> None:
        pyfs("umount", self.mnt)
        self.proc.wait(timeout=60)


def check_tree(mnt: str, model: Model, alts: list[Model], seed: int) -> None:
    got = actual(mnt)
    want = [model.snapshot()] + [a.snapshot() for a in alts]
    if got in want:
        return
    files, dirs = got
    wfiles, wdirs = want[0]
    missing = sorted(set(wfiles) - set(files))[:5]
    extra = sorted(set(files) - set(wfiles))[:5]
    differ = sorted(p for p in set(files) & set(wfiles) if files[p] != wfiles[p])[:5]
    for p in differ[:1]:
        (a, ax), (b, bx) = files[p], wfiles[p]
        at = next((k for k in range(min(len(a), len(b))) if a[k] != b[k]), min(len(a), len(b)))
        differ.append(f"{p}: {len(a)} bytes, want {len(b)}, first difference at {at}; "
                      f"xattrs {[x for x, _ in ax]} want {[x for x, _ in bx]}")
    raise AssertionError(f"seed {seed}: after kill -9 the tree is not what was acknowledged: "
                         f"missing {missing}, extra {extra}, different {differ}, "
                         f"dirs {sorted(dirs ^ wdirs)}")


def test_replay_counts_the_unacknowledged_rest_of_a_cut_write(tmp_path):
    """A write(2) the kill cut short (the kernel sent it as two WRITEs, the
    daemon died in the second) may have left the second one on the image; the
    operation the client started next may have reached the daemon or not."""
    log = tmp_path / "ops.log"
    recs = [{"i": 1, "op": ["create", "w/f", 0]}, {"i": 1, "created": True},
            {"i": 1, "done": True, "n": 0},
            {"i": 2, "op": ["write", "w/f", 4000, 3000]}, {"i": 2, "done": True, "n": 96},
            {"i": 3, "op": ["setxattr", "w/f", "user.k0", 5]}]
    log.write_text("".join(json.dumps(r) + "\n" for r in recs))
    model, alts = replay_log(Model(), str(log), 9)
    snap = model.snapshot()[0]["w/f"]
    assert len(snap[0]) == 4096 and snap[1] == ()          # what was acknowledged
    got = sorted((len(a.snapshot()[0]["w/f"][0]), len(a.snapshot()[0]["w/f"][1])) for a in alts)
    # the rest landed or not, times the setxattr in flight or not
    assert got == [(4096, 1), (7000, 0), (7000, 1)]


def test_kill9_loses_nothing_acknowledged(tmp_path):
    require_fuse()
    image, mnt = str(tmp_path / "img"), str(tmp_path / "mnt")
    os.mkdir(mnt)
    pyfs("mkfs", image, "--size", "256M", "-q")
    d = Daemon(image, mnt)
    os.mkdir(f"{mnt}/w")
    model = Model()
    ops_checked = 0
    try:
        for rnd in range(ROUNDS):
            seed = 7919 * rnd + 1
            log = str(tmp_path / f"ops{rnd}.log")
            client = subprocess.Popen([sys.executable, "-c", CLIENT, mnt, log, str(seed),
                                       json.dumps(model.state())])
            time.sleep(random.Random(seed).uniform(0.05, 0.8))
            d.kill9()
            client.wait(timeout=60)
            fsck = pyfs("fsck", "-f", "-n", image, check=False)
            assert fsck.returncode == 0, (f"seed {seed}: fsck -n after kill -9 found "
                                          f"problems:\n{fsck.stdout}{fsck.stderr}")
            model, alts = replay_log(model, log, seed)
            ops_checked += sum(1 for line in Path(log).read_text().splitlines()
                               if '"done"' in line)
            d = Daemon(image, mnt)
            try:
                check_tree(mnt, model, alts, seed)
            except AssertionError as e:
                tail = Path(log).read_text().splitlines()[-6:]
                raise AssertionError(f"{e}\nlast operations logged:\n" + "\n".join(tail)) \
                    from None
            if alts and actual(mnt) != model.snapshot():
                model = next(a for a in alts if a.snapshot() == actual(mnt))
        assert ops_checked > 50 * ROUNDS // 6, ops_checked
        print(f"{ROUNDS} kills, {ops_checked} acknowledged operations checked, 0 lost")
    finally:
        if os.path.ismount(mnt):
            d.umount()
    r = pyfs("fsck", "-f", "-n", image, check=False)
    assert r.returncode == 0, r.stdout


def test_pyfs_sync_then_kill(tmp_path):
    """`pyfs sync` returns once everything is on stable storage: its exit code,
    and the data on the image after a kill."""
    require_fuse()
    image, mnt = str(tmp_path / "img"), str(tmp_path / "mnt")
    os.mkdir(mnt)
    pyfs("mkfs", image, "--size", "128M", "-q")
    d = Daemon(image, mnt)
    try:
        for i in range(20):
            Path(mnt, f"s{i}").write_bytes(b"%d" % i * 1000)
        flushes = json.loads(pyfs("stats", mnt, "--json").stdout)["journal_flushes"]
        r = pyfs("sync", mnt, check=False)
        assert r.returncode == 0, r.stderr
        assert json.loads(pyfs("stats", mnt, "--json").stdout)["journal_flushes"] > flushes
        state = json.loads(pyfs("stats", mnt, "--json").stdout)
        assert state["journal_durable_seq"] >= state["journal_seq"] - 1
    finally:
        d.kill9()
    bad = pyfs("sync", str(tmp_path), check=False)
    assert bad.returncode != 0 and "not mounted" in bad.stderr
    d = Daemon(image, mnt)
    try:
        for i in range(20):
            assert Path(mnt, f"s{i}").read_bytes() == b"%d" % i * 1000
    finally:
        d.umount()

