"""The pyfs command line: `pyfs COMMAND ...` plus mkfs.pyfs/fsck.pyfs/mount.pyfs.

Subcommands live in a registry so other modules can add their own:

    def setup(p: argparse.ArgumentParser) -> None: p.add_argument("IMAGE")

    @command("frob", help="frob an image", setup=setup, prog="frob.pyfs")
    def run_frob(args: argparse.Namespace) -> int: ...

A run function returns an exit code or raises CliError; either way the user
sees one line prefixed with the command's prog name, never a traceback.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import uuid as uuidlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

from pyfs.device import Device, DeviceBusy, DeviceError, FileDevice, open_device
from pyfs.format import FORMAT_VERSION, MAX_LABEL, FormatError, Superblock
from pyfs.mkfs import MkfsError, check_label, choose_layout, detect_signature, format_device
from pyfs.superblock import read_superblock

EXIT_OK, EXIT_ERROR, EXIT_USAGE = 0, 1, 2


class CliError(Exception):
    """A failure to report as one line on stderr; code is the exit status."""

    def __init__(self, msg: str, code: int = EXIT_ERROR):
        super().__init__(msg)
        self.code = code


@dataclass(frozen=True)
class Command:
    name: str
    help: str
    setup: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]
    prog: str                      # prefix of error messages, e.g. "mkfs.pyfs"


COMMANDS: dict[str, Command] = {}


def command(name: str, *, help: str, setup: Callable[[argparse.ArgumentParser], None],
            prog: str | None = None):
    """Decorator registering run(args) -> int as `pyfs NAME` (later wins on reuse)."""
    def register(run: Callable[[argparse.Namespace], int]):
        COMMANDS[name] = Command(name, help, setup, run, prog or f"pyfs {name}")
        return run
    return register


# --------------------------------------------------------------------------
# Shared helpers

_SIZE_RE = re.compile(r"(\d+(?:\.\d*)?|\.\d+)\s*([kmgtpe]?)(i?b)?", re.IGNORECASE)
_UNITS = "kmgtpe"


def parse_size(text: str, what: str = "size") -> int:
    """Parse '4096', '512K', '1.5GiB', '2mb' (binary units) into a positive byte count."""
    m = _SIZE_RE.fullmatch(text.strip())
    # "5iB" (no unit letter) is nonsense even though the regex allows it.
    if not m or (m[3] and m[3].lower() == "ib" and not m[2]):
        raise CliError(f"bad {what} {text!r}: expected a number of bytes, optionally "
                       f"followed by K, M, G or T (e.g. 512M)")
    n = Fraction(m[1]) * (1 << (10 * (_UNITS.index(m[2].lower()) + 1) if m[2] else 0))
    if n.denominator != 1:
        raise CliError(f"bad {what} {text!r}: not a whole number of bytes")
    if n <= 0:
        raise CliError(f"bad {what} {text!r}: must be greater than zero")
    return int(n)


def human_size(n: int) -> str:
    for unit, shift in (("TiB", 40), ("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if n >= 1 << shift:
            return f"{n / (1 << shift):.4g} {unit}"
    return f"{n} B"


def _an(noun: str) -> str:
    """'an ext4 filesystem', 'a swap area' (good enough for our signature names)."""
    return ("an " if noun[:1] in "aeiox" else "a ") + noun


def version_string() -> str:
    return f"pyfs {_package_version()} (on-disk format {FORMAT_VERSION})"


def _package_version() -> str:
    from importlib import metadata
    try:
        return metadata.version("pyfs")
    except metadata.PackageNotFoundError:
        pass
    # Running from a source tree that was never installed.
    import tomllib
    try:
        with open(Path(__file__).resolve().parent.parent / "pyproject.toml", "rb") as f:
            return tomllib.load(f)["project"]["version"]
    except (OSError, KeyError, tomllib.TOMLDecodeError):
        return "unknown"


def _open_error(path: str, err: OSError) -> CliError:
    if isinstance(err, DeviceBusy):
        return CliError(f"{path} is in use (mounted, or opened by another pyfs tool)")
    if isinstance(err, DeviceError) and err.strerror:
        return CliError(err.strerror)           # already names the path
    return CliError(f"cannot open {path}: {err.strerror or err}")


# --------------------------------------------------------------------------
# Running commands

# Modules whose commands register themselves with @command when imported.
COMMAND_MODULES = ["pyfs.tools", "pyfs.browse", "pyfs.fsck.cli"]


def _load_commands() -> None:
    import importlib
    for name in COMMAND_MODULES:
        importlib.import_module(name)


def build_parser() -> argparse.ArgumentParser:
    _load_commands()
    parser = argparse.ArgumentParser(
        prog="pyfs", description="A bcachefs-style filesystem in Python over FUSE.")
    parser.add_argument("--version", action="version", version=version_string())
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for cmd in COMMANDS.values():
        sp = sub.add_parser(cmd.name, help=cmd.help, description=cmd.help)
        cmd.setup(sp)
        sp.set_defaults(_command=cmd)
    return parser


def _parse(parser: argparse.ArgumentParser, argv: Sequence[str] | None):
    """Parse argv; return the namespace, or the exit code argparse wanted (2, or 0 for --help)."""
    try:
        return parser.parse_args(argv)
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else EXIT_USAGE


def _run(cmd: Command, args: argparse.Namespace) -> int:
    from pyfs.mount import MountFailed
    try:
        return cmd.run(args)
    except CliError as e:
        msg, code = str(e), e.code
    except (MkfsError, FormatError, MountFailed) as e:
        msg, code = str(e), EXIT_ERROR
    except BrokenPipeError:
        _stdout_gone()          # `pyfs ... | head`: the reader went away, not an error
        return EXIT_OK
    except OSError as e:
        name = f"{e.filename}: " if e.filename else ""
        msg, code = f"{name}{e.strerror or e}", EXIT_ERROR
    except KeyboardInterrupt:
        msg, code = "interrupted", 130
    print(f"{cmd.prog}: {msg}", file=sys.stderr)
    return code


def main(argv: Sequence[str] | None = None) -> int:
    """`pyfs COMMAND ...`; returns the exit code."""
    args = _parse(build_parser(), argv)
    if isinstance(args, int):
        return args
    return _run(args._command, args)


def command_main(name: str, argv: Sequence[str] | None = None) -> int:
    """Run one registered command as its own program (mkfs.pyfs IMAGE ...)."""
    _load_commands()
    cmd = COMMANDS[name]
    parser = argparse.ArgumentParser(prog=cmd.prog, description=cmd.help)
    parser.add_argument("--version", action="version", version=version_string())
    cmd.setup(parser)
    args = _parse(parser, argv)
    if isinstance(args, int):
        return args
    return _run(cmd, args)


def mkfs_main(argv: Sequence[str] | None = None) -> int:
    return command_main("mkfs", argv)


def fsck_main(argv: Sequence[str] | None = None) -> int:
    from pyfs.fsck.cli import fsck_main as run_fsck_main
    return run_fsck_main(argv)


def mount_main(argv: Sequence[str] | None = None) -> int:
    """mount.pyfs IMAGE DIR [-sfnv] [-o OPTIONS], as mount(8) runs helpers."""
    return _mount_helper_main(argv)


# --------------------------------------------------------------------------
# pyfs mkfs

def _setup_mkfs(p: argparse.ArgumentParser) -> None:
    p.add_argument("image", metavar="IMAGE", help="image file or block device")
    p.add_argument("--size", metavar="SIZE",
                   help="create IMAGE with this size, or resize an existing image file "
                        "(bytes, or with a K/M/G/T suffix)")
    p.add_argument("--bucket-size", metavar="SIZE",
                   help="allocation unit, a power of two from 128K to 2M "
                        "(default: scales with the device)")
    p.add_argument("--btree-node-size", metavar="SIZE",
                   help="btree node size, a power of two from 16K to the bucket size "
                        "(default: 256K or the bucket size if smaller)")
    p.add_argument("-L", "--label", default="", help=f"volume label (at most {MAX_LABEL} bytes)")
    p.add_argument("-U", "--uuid", help="filesystem UUID (default: random)")
    p.add_argument("-f", "--force", action="store_true",
                   help="overwrite an existing filesystem or partition table")
    p.add_argument("-q", "--quiet", action="store_true", help="print nothing on success")


def _optional_size(text: str | None, what: str) -> int | None:
    return None if text is None else parse_size(text, what)


def _parse_uuid(text: str | None) -> uuidlib.UUID | None:
    if text is None:
        return None
    try:
        return uuidlib.UUID(text)
    except ValueError:
        raise CliError(f"bad UUID {text!r}") from None


def _resize(dev: Device, path: str, size: int) -> None:
    """Resize an image file through the fd that holds its lock, so a mount
    cannot slip in between the resize and the format."""
    if dev.is_block or not isinstance(dev, FileDevice):
        raise CliError(f"--size can only resize an image file; {path} is a block device")
    os.ftruncate(dev.fd, size)
    dev.size = size


def _check_creatable(path: str) -> None:
    parent = os.path.dirname(path) or "."
    if not os.path.isdir(parent):
        raise CliError(f"cannot create {path}: directory {parent} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise CliError(f"cannot create {path}: directory {parent} is not writable")


def _open_for_mkfs(path: str, size: int | None) -> tuple[Device, bool]:
    """Open (creating if needed) path exclusively; return it and whether we created it."""
    existed = os.path.lexists(path)
    if not existed and size is None:
        raise CliError(f"{path} does not exist; give --size to create it")
    if not existed:
        _check_creatable(path)
    try:
        dev = open_device(path, create_size=None if existed else size, exclusive=True)
    except OSError as e:
        raise _open_error(path, e) from None
    return dev, not existed


def _print_summary(path: str, sb: Superblock) -> None:
    bs = sb.bucket_size
    groups = -(-sb.nbuckets // sb.group_buckets)
    rows = [
        ("UUID", str(uuidlib.UUID(bytes=sb.uuid))),
        ("Label", sb.label or "(none)"),
        ("Size", f"{human_size(sb.device_size)} ({sb.device_size} bytes)"),
        ("Buckets", f"{sb.nbuckets} x {human_size(bs)}"),
        ("Btree node size", human_size(sb.btree_node_size)),
        ("Journal", f"{sb.journal_nbuckets} buckets ({human_size(sb.journal_nbuckets * bs)})"),
        ("First data bucket", sb.first_data_bucket),
        ("Allocation groups", f"{groups} of {sb.group_buckets} buckets"),
    ]
    print(f"Created a pyfs filesystem on {path}")
    for k, v in rows:
        print(f"  {k + ':':<19}{v}")


def run_mkfs(args: argparse.Namespace) -> int:
    size = _optional_size(args.size, "size")
    geometry = {"bucket_size": _optional_size(args.bucket_size, "bucket size"),
                "btree_node_size": _optional_size(args.btree_node_size, "btree node size")}
    uuid = _parse_uuid(args.uuid)
    check_label(args.label)
    if size is not None:
        choose_layout(size, **geometry)          # fail before creating or resizing anything
    dev, created = _open_for_mkfs(args.image, size)
    try:
        if not created:
            sig = detect_signature(dev)
            if sig and not args.force:
                raise CliError(f"{args.image} contains {_an(sig)}; "
                               "use --force to overwrite it")
            if size is not None and size != dev.size:
                _resize(dev, args.image, size)
        sb = format_device(dev, label=args.label, uuid=uuid, **geometry)
    except BaseException:
        dev.close()
        if created:
            # Do not leave a half-made image behind.
            Path(args.image).unlink(missing_ok=True)
        raise
    dev.close()
    if not args.quiet:
        _print_summary(args.image, sb)
    return EXIT_OK


command("mkfs", help="make a new pyfs filesystem", setup=_setup_mkfs,
        prog="mkfs.pyfs")(run_mkfs)


# --------------------------------------------------------------------------
# pyfs show-super

def _setup_show_super(p: argparse.ArgumentParser) -> None:
    p.add_argument("image", metavar="IMAGE|MOUNTPOINT",
                   help="image file or block device, or the mount point of a mounted pyfs")


@command("show-super", help="print the superblock of an image", setup=_setup_show_super)
def run_show_super(args: argparse.Namespace) -> int:
    from pyfs.inspect import InspectError, image_of
    try:
        image = image_of(args.image)
    except InspectError as e:
        raise CliError(str(e)) from None
    try:
        # Inspection only: fine on a mounted image, so no exclusive lock.
        dev = open_device(image, read_only=True, exclusive=False)
    except OSError as e:
        raise _open_error(image, e) from None
    with dev:
        try:
            sb, warnings = read_superblock(dev)
        except FormatError as e:
            raise CliError(f"{image}: not a usable pyfs filesystem: {e}") from None
    for w in warnings:
        print(f"pyfs show-super: warning: {w}", file=sys.stderr)
    print(sb.to_text())
    return EXIT_OK


# --------------------------------------------------------------------------
# pyfs version

@command("version", help="print the pyfs version", setup=lambda p: None)
def run_version(args: argparse.Namespace) -> int:
    print(version_string())
    return EXIT_OK


# --------------------------------------------------------------------------
# pyfs install-helpers: what mount(8), fsck(8) and mkfs(8) look for in /sbin

# /sbin name -> the console script of this environment it links to.
HELPERS = {"mount.pyfs": "mount.pyfs", "mount.fuse.pyfs": "mount.pyfs",
           "fsck.pyfs": "fsck.pyfs", "fsck.fuse.pyfs": "fsck.pyfs", "mkfs.pyfs": "mkfs.pyfs"}


def _setup_install_helpers(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dir", default="/sbin", help="where to link them (default: /sbin)")
    p.add_argument("-q", "--quiet", action="store_true", help="print nothing on success")


@command("install-helpers", help="link mount.pyfs, mount.fuse.pyfs, fsck.pyfs, fsck.fuse.pyfs "
         "and mkfs.pyfs into /sbin, so that mount -t pyfs|fuse.pyfs, fstab lines, fsck -t pyfs, "
         "fsck -A and mkfs -t pyfs work",
         setup=_setup_install_helpers)
def run_install_helpers(args: argparse.Namespace) -> int:
    # The console scripts start with this environment's python (an absolute
    # path), so the links work whatever PATH mount(8) runs them with.
    bindir = Path(sys.executable).parent
    for name, script in HELPERS.items():
        src = bindir / script
        if not src.exists():
            raise CliError(f"{src} is missing: pyfs is not installed in {bindir.parent} "
                           "(run scripts/setup.sh --install-only)")
        dst = Path(args.dir) / name
        if dst.exists() and not dst.is_symlink():
            raise CliError(f"{dst} exists and is not a symbolic link; not replacing it")
        tmp = dst.with_name(f".{name}.tmp")
        tmp.unlink(missing_ok=True)
        tmp.symlink_to(src)
        os.replace(tmp, dst)
        if not args.quiet:
            print(f"{dst} -> {src}")
    return EXIT_OK


# --------------------------------------------------------------------------
# pyfs mount / umount / stats, and mount.pyfs (implemented in pyfs/mount.py)

def _setup_mount(p: argparse.ArgumentParser) -> None:
    p.add_argument("image", metavar="IMAGE", help="image file or block device")
    p.add_argument("mountpoint", metavar="MOUNTPOINT", help="directory to mount on")
    p.add_argument("-o", dest="options", action="append", default=[], metavar="OPTIONS",
                   help="comma-separated mount options: ro, rw, allow_other, debug, noatime, "
                        "errors=remount-ro|continue, flush_delay_ms=N, node_dirty_bytes=SIZE, "
                        "cache_nodes=N, fsname=NAME, nodiscard, remount (with ro or rw), "
                        "and the generic nosuid/nodev/noexec/lazytime/...")
    p.add_argument("-f", "--foreground", action="store_true",
                   help="serve in the foreground instead of as a daemon")


def _do_mount(image: str, mountpoint: str, options: list[str], foreground: bool,
              sloppy: bool = False) -> int:
    from pyfs.mount import mount, parse_options, remount, split_options
    items = split_options(options)
    if "remount" in items:
        remount(mountpoint, items)
        return EXIT_OK
    opts = parse_options(items, sloppy=sloppy)
    opts.foreground = opts.foreground or foreground
    mount(image, mountpoint, opts)
    return EXIT_OK


@command("mount", help="mount a pyfs image (or remount one: -o remount,ro)", setup=_setup_mount)
def run_mount(args: argparse.Namespace) -> int:
    return _do_mount(args.image, args.mountpoint, args.options, args.foreground)


# mount(8)'s RETURN CODES, which its helpers follow.
MOUNT_USAGE, MOUNT_FAILED, MOUNT_INTERRUPTED = 1, 32, 8
# Where mount(8) and fsck(8) may run a helper with (almost) no PATH: the
# daemon and remount still need fusermount3 and mount.
SYSTEM_PATH = ("/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin")


def _setup_mount_helper(p: argparse.ArgumentParser) -> None:
    p.add_argument("image", metavar="IMAGE")
    p.add_argument("mountpoint", metavar="DIR")
    p.add_argument("-o", dest="options", action="append", default=[], metavar="OPTIONS")
    p.add_argument("-f", dest="fake", action="store_true", help="do everything but mount")
    p.add_argument("-s", dest="sloppy", action="store_true",
                   help="ignore mount options pyfs does not know")
    for flag in ("-n", "-v"):               # no mtab, verbose: nothing to do
        p.add_argument(flag, action="store_true", help=argparse.SUPPRESS)
    p.add_argument("-t", dest="fstype", help=argparse.SUPPRESS)
    p.add_argument("-N", dest="namespace", help=argparse.SUPPRESS)


def run_mount_helper(args: argparse.Namespace) -> int:
    if args.fake:
        return EXIT_OK
    return _do_mount(args.image, args.mountpoint, args.options, False, args.sloppy)


def with_system_path() -> None:
    """Make sure PATH holds the system directories (mount(8) and fsck(8)
    may run helpers with a minimal environment)."""
    path = [d for d in os.environ.get("PATH", "").split(":") if d]
    os.environ["PATH"] = ":".join(path + [d for d in SYSTEM_PATH if d not in path])


def _mount_helper_main(argv: Sequence[str] | None) -> int:
    # Not a `pyfs` subcommand: mount(8) runs it as mount.pyfs or mount.fuse.pyfs.
    with_system_path()
    prog = os.path.basename(sys.argv[0]) if argv is None else "mount.pyfs"
    if not prog.startswith("mount."):
        prog = "mount.pyfs"
    cmd = Command(prog, "mount a pyfs image (mount(8) helper)", _setup_mount_helper,
                  run_mount_helper, prog)
    parser = argparse.ArgumentParser(prog=cmd.prog, description=cmd.help)
    parser.add_argument("--version", action="version", version=version_string())
    cmd.setup(parser)
    args = _parse(parser, argv)
    if isinstance(args, int):
        return MOUNT_USAGE if args else EXIT_OK
    code = _run(cmd, args)
    if code == 130:
        return MOUNT_INTERRUPTED
    return MOUNT_FAILED if code else EXIT_OK


def _setup_umount(p: argparse.ArgumentParser) -> None:
    p.add_argument("mountpoint", metavar="MOUNTPOINT")
    p.add_argument("--timeout", type=float, default=120.0, metavar="SECONDS",
                   help="how long to wait for the daemon to write back and exit")
    p.add_argument("-l", "--lazy", action="store_true",
                   help="detach now even if busy (the daemon exits when it is released)")


@command("umount", help="unmount and wait until the image is clean", setup=_setup_umount)
def run_umount(args: argparse.Namespace) -> int:
    from pyfs.mount import umount
    umount(args.mountpoint, timeout=args.timeout, lazy=args.lazy)
    return EXIT_OK


def _setup_sync(p: argparse.ArgumentParser) -> None:
    p.add_argument("mountpoint", metavar="MOUNTPOINT")


@command("sync", help="make everything a mounted pyfs has done durable (device flush), "
                      "and wait", setup=_setup_sync)
def run_sync(args: argparse.Namespace) -> int:
    from pyfs.mount import require_pyfs_mount, sync
    require_pyfs_mount(args.mountpoint)
    sync(args.mountpoint)
    return EXIT_OK


def _setup_stats(p: argparse.ArgumentParser) -> None:
    p.add_argument("mountpoint", metavar="MOUNTPOINT")
    p.add_argument("--json", action="store_true", help="print one flat JSON object")


@command("stats", help="print the state and live counters of a mounted pyfs",
         setup=_setup_stats)
def run_stats(args: argparse.Namespace) -> int:
    import json

    from pyfs.mount import format_stats, read_state, read_stats
    stats = read_stats(args.mountpoint)
    if args.json:
        print(json.dumps(stats, sort_keys=True))
        return EXIT_OK
    print(stats_summary(args.mountpoint, read_state(args.mountpoint)))
    print("\nCounters:")
    print(format_stats(stats))
    return EXIT_OK


def stats_summary(mountpoint: str, state: dict) -> str:
    """What an admin looks at first: state, space, journal, write-back lag."""
    from pyfs.mount import log_file, mount_entry, read_pid_file
    info = read_pid_file(mountpoint) or {}
    entry = mount_entry(mountpoint)
    image = info.get("image") or (entry.source if entry else "?")
    mode = "read-write"
    if state["read_only"]:
        mode = f"read-only: {state['read_only_reason'] or 'read-only'}"
    errors = f"errors={state['errors']}, {state['errors_seen']} errors"
    if state["last_error"]:
        errors += f" (last: {state['last_error']})"
    st = os.statvfs(mountpoint)
    total, avail = st.f_blocks * st.f_frsize, st.f_bavail * st.f_frsize
    used = 1 - avail / total if total else 0.0
    flushed = state["last_flush_ns"]
    ago = (f"{(state['time_ns'] - flushed) / 1e9:.1f} s ago" if flushed
           else "none since mount")
    rows = [("State", mode), ("Image", image), ("Daemon", f"pid {info.get('pid', '?')}"),
            ("Errors", errors),
            ("Free space", f"{human_size(avail)} of {human_size(total)} ({used:.0%} used)"),
            ("Journal", f"{state['journal_fill']:.0%} full of "
                        f"{human_size(state['journal_ring_bytes'])}"),
            ("Dirty btree nodes", str(state["dirty_nodes"])), ("Last journal flush", ago)]
    log = Path(info.get("log") or log_file(mountpoint))
    if log.exists() and log.stat().st_size:
        rows.append(("Log", str(log)))
    return "\n".join(f"{k + ':':<20}{v}" for k, v in rows)


# --------------------------------------------------------------------------
# pyfs dump, pyfs journal: offline inspection (pyfs/inspect.py)

IMAGE_OR_MOUNT = "image file or block device, or the mount point of a mounted pyfs"


def _setup_dump(p: argparse.ArgumentParser) -> None:
    p.add_argument("image", metavar="IMAGE|MOUNTPOINT", help=IMAGE_OR_MOUNT)
    p.add_argument("--btree", "-b", required=True, metavar="NAME",
                   help="btree to list: extents, inodes, dirents, xattrs, alloc, "
                        "backpointers, freespace or lru")
    p.add_argument("--start", metavar="HI:LO", help="first key (default 0:0)")
    p.add_argument("--end", metavar="HI:LO", help="last key (default max:max)")
    p.add_argument("--nodes", action="store_true",
                   help="print the btree's node tree instead of its keys")
    p.add_argument("--raw", action="store_true",
                   help="print values' fields as stored (mode=33188, times in ns, ...)")


@command("dump", help="list a btree's keys (journal replayed in memory)", setup=_setup_dump)
def run_dump(args: argparse.Namespace) -> int:
    from pyfs import inspect as pi
    from pyfs.format import MAX_KEY, ZERO_KEY
    try:
        bid = pi.btree_id(args.btree)
        start = pi.parse_pos(args.start) if args.start else ZERO_KEY
        end = pi.parse_pos(args.end) if args.end else MAX_KEY
        dev = pi.open_image(args.image)
        try:
            eng = pi.mount_readonly(dev)
            if args.nodes:
                print(pi.dump_nodes(eng, bid))
            else:
                for line in pi.dump_keys(eng, bid, start, end, args.raw):
                    print(line)
        finally:
            dev.close()
    except pi.InspectError as e:
        raise CliError(str(e)) from None
    except BrokenPipeError:
        _stdout_gone()
    return EXIT_OK


def _setup_journal(p: argparse.ArgumentParser) -> None:
    p.add_argument("image", metavar="IMAGE|MOUNTPOINT", help=IMAGE_OR_MOUNT)
    p.add_argument("-v", "--verbose", action="store_true", help="list every key of each entry")
    p.add_argument("--raw", action="store_true", help="with -v: values' fields as stored")


@command("journal", help="list the journal entries a mount would replay",
         setup=_setup_journal)
def run_journal(args: argparse.Namespace) -> int:
    from pyfs import inspect as pi
    try:
        dev = pi.open_image(args.image)
        try:
            for line in pi.journal_lines(dev, args.verbose, args.raw):
                print(line)
        finally:
            dev.close()
    except pi.InspectError as e:
        raise CliError(str(e)) from None
    except BrokenPipeError:
        _stdout_gone()
    return EXIT_OK


def _stdout_gone() -> None:
    """The reader went away (`pyfs dump ... | head`): not an error. Point
    stdout at /dev/null so flushing it at exit does not fail again."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


if __name__ == "__main__":
    # Run through the imported module: commands in COMMAND_MODULES register
    # with pyfs.cli, not with this __main__ copy of it.
    from pyfs.cli import main as _main
    raise SystemExit(_main())
