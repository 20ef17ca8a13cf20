"""Filesystem semantics over the engine: inodes, directories, file data, xattrs.

Synchronous and free of FUSE: `Filesystem(engine)` is usable in-process by
tests and tools; pyfs/fuse.py is a thin async edge over it.
"""

from .errors import FSError, stops_writes
from .filesystem import Filesystem
from .inode import Attr

__all__ = ["Attr", "FSError", "Filesystem", "stops_writes"]
