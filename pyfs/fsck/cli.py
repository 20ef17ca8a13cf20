"""`pyfs fsck IMAGE` and `fsck.pyfs IMAGE`, with e2fsck's options and exit codes.

    -n  open read-only, answer no to everything: report, change nothing
    -y  answer yes: fix everything fixable
    -p  preen (-a too): fix what is safe without asking; exit 4 if more is wrong
    -f  check even a filesystem that was cleanly unmounted (without it, such
        a filesystem is skipped: "clean", exit 0, as e2fsck does)
    -v  verbose: pass names and normal events (journal replay, orphans)
    -c  read every extent's data and verify its checksum
    -C fd  progress for front ends: lines `pass done total device` on fd
        (e2fsck's format); -C 0 draws a progress bar on stdout

Without -n/-y/-p, fsck asks about each problem (y/n/a) when stdin is a
terminal; otherwise it behaves as -n (e2fsck refuses instead; a script that
forgot -y gets a report rather than an error). Exit status: 0 clean, 1 errors
corrected, 4 errors left uncorrected, 8 operational error, 16 usage error,
32 cancelled (SIGINT); bits combine as in e2fsck.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from ..cli import command, version_string
from ..device import open_device
from ..format import SB_READ_SIZE, FormatError, SbState, Superblock
from ..superblock import read_superblock
from . import FsckOptions, fsck_path
from .report import (
    EXIT_CANCELLED,
    EXIT_OK,
    EXIT_OPERATIONAL,
    EXIT_USAGE,
    MODE_ASK,
    MODE_NO,
    MODE_PREEN,
    MODE_YES,
)

PROG = "fsck.pyfs"


class UsageExit(SystemExit):
    pass


def _usage_error(p: argparse.ArgumentParser):
    def error(message: str):
        p.print_usage(sys.stderr)
        sys.stderr.write(f"{p.prog}: error: {message}\n")
        raise UsageExit(EXIT_USAGE)
    return error


def _strict(p: argparse.ArgumentParser):
    """parse_known_args that rejects leftovers itself (a subcommand's leftovers
    would otherwise be reported by the top-level parser with its exit code)."""
    orig = p.parse_known_args

    def parse_known_args(args=None, namespace=None):
        ns, extra = orig(args, namespace)
        if extra:
            p.error(f"unrecognized arguments: {' '.join(extra)}")
        return ns, extra
    return parse_known_args


def setup(p: argparse.ArgumentParser) -> None:
    p.add_argument("image", metavar="IMAGE", help="image file or block device")
    g = p.add_mutually_exclusive_group()
    g.add_argument("-n", dest="mode", action="store_const", const=MODE_NO,
                   help="open read-only and change nothing (answer no)")
    g.add_argument("-y", dest="mode", action="store_const", const=MODE_YES,
                   help="fix every problem (answer yes)")
    g.add_argument("-p", "-a", dest="mode", action="store_const", const=MODE_PREEN,
                   help="preen: fix only what is safe without asking")
    p.add_argument("-f", dest="force", action="store_true",
                   help="check even if the filesystem is marked clean")
    p.add_argument("-v", dest="verbose", action="store_true", help="verbose output")
    p.add_argument("-c", dest="check_data", action="store_true",
                   help="read all file data and verify its checksums")
    p.add_argument("-C", dest="progress_fd", type=int, metavar="FD",
                   help="progress lines `pass done total device` on file descriptor FD "
                        "(e2fsck's format, for front ends); 0: a progress bar on stdout")
    p.error = _usage_error(p)                       # type: ignore[method-assign]
    p.parse_known_args = _strict(p)                 # type: ignore[method-assign]


def run(args: argparse.Namespace) -> int:
    mode = args.mode
    if mode is None:
        mode = MODE_ASK if _tty(sys.stdin) else MODE_NO
    opts = FsckOptions(mode=mode, force=args.force, verbose=args.verbose,
                       check_data=args.check_data)
    progress, lines = sys.stderr if _tty(sys.stderr) else None, False
    if args.progress_fd is not None:
        progress, lines = _progress_stream(args.progress_fd)
        if progress is None:
            return EXIT_USAGE
    if os.path.isdir(args.image):
        return _refuse_directory(args.image)
    try:
        if not args.force and cleanly_unmounted(args.image):
            print(f"{args.image}: clean (cleanly unmounted; use -f to check anyway)")
            return EXIT_OK
        res = fsck_path(args.image, opts, progress_out=progress, progress_lines=lines)
    except KeyboardInterrupt:
        sys.stdout.flush()
        print(f"\n{PROG}: interrupted", file=sys.stderr)
        return EXIT_CANCELLED
    if not res.problems and res.exit_code:
        print(f"{PROG}: {res.summary}", file=sys.stderr)
    return res.exit_code


def _tty(stream) -> bool:
    """fsck -A runs checkers with stdin closed: no stream at all is no terminal."""
    return stream is not None and stream.isatty()


def _refuse_directory(path: str) -> int:
    """fsck checks images, never a mounted filesystem: say which image it is."""
    from ..mount import MountFailed, read_pid_file, require_pyfs_mount
    try:
        e = require_pyfs_mount(path)
        info = read_pid_file(e.mountpoint) or {}
        msg = (f"{path} is the mount point of {info.get('image') or e.source}; "
               "unmount it, then check the image")
    except MountFailed as err:
        msg = f"{path} is a directory, not an image ({err})"
    print(f"{PROG}: {msg}", file=sys.stderr)
    return EXIT_OPERATIONAL


def _progress_stream(fd: int):
    """(stream, lines?) for -C fd, or (None, False) after a usage error."""
    if fd == 0:
        return sys.stdout, False
    try:
        os.fstat(fd)
    except OSError:
        print(f"{PROG}: -C {fd}: not an open file descriptor", file=sys.stderr)
        return None, False
    return os.fdopen(fd, "w", closefd=False), True


def cleanly_unmounted(path: str) -> bool:
    """Clean superblock, both copies intact, nobody holding the image: what
    e2fsck needs to skip a filesystem. Anything else gets the full check
    (which also reports an image in use or unreadable)."""
    try:
        dev = open_device(path, read_only=True, exclusive=True)
    except OSError:
        return False
    with dev:
        try:
            sb, warnings = read_superblock(dev)
            backup = Superblock.unpack(dev.pread(SB_READ_SIZE, sb.backup_offset),
                                       sb.backup_offset, device_size=dev.size)
        except (FormatError, OSError):
            return False
    return not warnings and sb.state == SbState.clean and backup.state == SbState.clean


command("fsck", help="check and repair a pyfs filesystem", setup=setup, prog=PROG)(run)


def fsck_main(argv: Sequence[str] | None = None) -> int:
    """fsck.pyfs [-n|-y|-p] [-fvc] [-C fd] IMAGE"""
    parser = argparse.ArgumentParser(prog=PROG, description="check and repair a pyfs "
                                     "filesystem")
    parser.add_argument("--version", action="version", version=version_string())
    setup(parser)
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else EXIT_USAGE
    return run(args)


__all__ = ["EXIT_OK", "fsck_main", "run", "setup"]
