"""The lean FUSE session loop (pyfs/fuse_loop.py) mounted: concurrent clients,
a handler that blocks (fsync waiting for a device flush) while other requests
are served, shutdown with requests in flight (SIGTERM, umount, a lazy
fusermount -u under an fsync), and the stock loop chosen by mount option."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
from conftest import pyfs_cli
from t4_mount_daemon import sb_state, wait_gone

from pyfs.format import SbState
from pyfs.mount import MountFailed, _alive, is_mounted, parse_options, read_stats

MiB = 1 << 20

# A client process: `hammer DIR N TAG` creates, writes, stats, reads back and
# getxattrs N files of its own in the shared DIR and prints how many matched;
# `getxattr FILE [PAUSE]` sends getxattr round trips (PAUSE seconds apart)
# until SIGTERM, printing the CLOCK_MONOTONIC time each one ended. Errors
# (the mount going away) end both.
CLIENT = r"""
import os, signal, sys, time
mode, path = sys.argv[1], sys.argv[2]
if mode == "hammer":
    n, tag, ok = int(sys.argv[3]), sys.argv[4], 0
    for i in range(n):
        name = os.path.join(path, f"{tag}-{i}")
        data = f"{tag} file {i} ".encode() * (1 + i % 300)
        with open(name, "wb") as f:
            f.write(data)
        st = os.stat(name)
        with open(name, "rb") as f:
            got = f.read()
        try:
            os.getxattr(name, "user.missing")
        except OSError:
            pass
        ok += st.st_size == len(data) and got == data
    print(ok)
elif mode == "getxattr":
    stop = []
    signal.signal(signal.SIGTERM, lambda *a: stop.append(1))
    ends, pause = [], float(sys.argv[3]) if len(sys.argv) > 3 else 0
    while not stop:
        try:
            os.getxattr(path, "user.missing")
        except OSError as e:
            if e.errno not in (61, 95):         # ENODATA / ENOTSUP: the answer
                break
        ends.append(time.monotonic())
        if pause:
            time.sleep(pause)
    print(" ".join(f"{t:.6f}" for t in ends))
"""


def client(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", CLIENT, *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def finish(p: subprocess.Popen, timeout: float = 60) -> str:
    out, err = p.communicate(timeout=timeout)
    return out


@pytest.mark.parametrize("loop", ["lean", "stock"])
def test_concurrent_clients(mnt, loop):
    if loop != "lean":
        mnt.umount()
        mnt.options += f",fuse_loop={loop}"
        mnt.mount()
    os.mkdir(mnt.p("shared"))
    n, nclients = 150, 4
    procs = [client("hammer", mnt.p("shared"), str(n), f"c{k}") for k in range(nclients)]
    results = [finish(p) for p in procs]
    assert all(p.returncode == 0 for p in procs), [p.stderr.read() for p in procs]
    assert [int(r) for r in results] == [n] * nclients
    assert len(os.listdir(mnt.p("shared"))) == n * nclients
    st = read_stats(mnt.path)
    if loop == "lean":
        assert st["fuse_loop_lean"] == 1
        assert st["fuse_loop_parks"] > 0
        assert st["fuse_loop_fast_reads"] > 0      # requests were queued: read without a park
    else:
        assert st["fuse_loop_lean"] == 0
        assert st.get("fuse_loop_fast_reads", 0) == 0


def write_dirty(path: str, mib: int, chunk: bytes = b"") -> int:
    """Open path and write mib MiB that the host has not written back yet."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    chunk = chunk or os.urandom(MiB)
    for _ in range(mib):
        os.write(fd, chunk)
    return fd


def test_requests_are_served_while_fsync_waits_for_the_flush(mnt):
    """fsync's handler waits for the device flush of 32 MiB of dirty image
    (tens of ms): a spare reader must answer the getxattrs meanwhile."""
    with open(mnt.p("probe"), "w"):
        pass
    before = read_stats(mnt.path)["fuse_loop_handoffs"]
    windows = []
    g = client("getxattr", mnt.p("probe"))
    try:
        time.sleep(0.3)                                 # the client is looping
        for i in range(3):
            fd = write_dirty(mnt.p(f"big{i}"), 32)
            t0 = time.monotonic()
            os.fsync(fd)
            windows.append((t0, time.monotonic()))
            os.close(fd)
    finally:
        g.terminate()
    ends = [float(t) for t in finish(g).split()]
    assert len(ends) > 100, "the getxattr client did not run"
    for t0, t1 in windows:
        served = sum(t0 < t < t1 for t in ends)
        # Without a hand-off nothing is read while the handler waits: at most
        # the request in flight when the fsync arrived completes inside it.
        assert served >= 2 or t1 - t0 < 0.005, (t1 - t0, served)
    assert max(t1 - t0 for t0, t1 in windows) >= 0.005, "no fsync lasted long enough"
    assert read_stats(mnt.path)["fuse_loop_handoffs"] > before


def hammer_until_gone(mnt, nclients: int = 3) -> list[subprocess.Popen]:
    os.makedirs(mnt.p("h"), exist_ok=True)
    procs = [client("hammer", mnt.p("h"), "100000", f"c{k}") for k in range(nclients)]
    time.sleep(0.5)                                      # all of them in full swing
    assert all(p.poll() is None for p in procs)
    return procs


def test_sigterm_with_requests_in_flight(mnt):
    pid = mnt.daemon_pid()
    procs = hammer_until_gone(mnt)
    os.kill(pid, signal.SIGTERM)
    wait_gone(pid, timeout=60)
    for p in procs:
        finish(p)
        assert p.returncode != 0                # the mount went away under it
    assert not is_mounted(mnt.path)
    assert sb_state(mnt.image) == SbState.clean
    mnt.mounted = False


def test_umount_with_requests_in_flight(mnt):
    """umount between the requests of clients that hold nothing open (a path
    walk in progress makes it EBUSY), with the RELEASEs and FORGETs of the
    files just closed still queued: they need no mount reference."""
    with open(mnt.p("probe"), "w"):
        pass
    for i in range(300):
        with open(mnt.p(f"f{i}"), "w") as f:
            f.write("x")
    pid = mnt.daemon_pid()
    procs = [client("getxattr", mnt.p("probe"), "0.002") for _ in range(2)]
    time.sleep(0.5)
    deadline = time.monotonic() + 30
    while True:
        try:
            mnt.umount()                        # fusermount3 -u, then waits for the daemon
            break
        except AssertionError as e:
            assert "busy" in str(e).lower() and time.monotonic() < deadline, e
            time.sleep(0.05)
    assert not is_mounted(mnt.path) and not _alive(pid)
    for p in procs:                             # they hit the bare directory: ENOENT
        finish(p)
    assert sb_state(mnt.image) == SbState.clean


def test_lazy_fusermount_during_fsync(mnt):
    """fusermount -u -z while an fsync is in flight and clients are reading:
    the fsync completes, the daemon exits once the last file is closed, and
    the data is there after the next mount."""
    pid = mnt.daemon_pid()
    procs = hammer_until_gone(mnt, 2)
    chunk = os.urandom(MiB)
    fd = write_dirty(mnt.p("big"), 32, chunk)
    lazy = subprocess.Popen(["fusermount3", "-u", "-z", mnt.path])
    os.fsync(fd)                                # in flight while the mount is detached
    assert lazy.wait(timeout=30) == 0
    os.close(fd)
    for p in procs:
        finish(p)
    wait_gone(pid, timeout=60)
    assert sb_state(mnt.image) == SbState.clean
    mnt.mounted = False
    mnt.mount()
    with open(mnt.p("big"), "rb") as f:
        assert f.read() == chunk * 32


def test_fuse_loop_option():
    assert parse_options(None).fuse_loop == "lean"
    assert parse_options("fuse_loop=stock").fuse_loop == "stock"
    with pytest.raises(MountFailed, match="fuse_loop=fast: one of lean, stock"):
        parse_options("fuse_loop=fast")
    r = pyfs_cli("mount", "/nonexistent", "/tmp", "-o", "fuse_loop=fast", check=False)
    assert r.returncode != 0 and "fuse_loop=fast: one of lean, stock" in r.stderr
