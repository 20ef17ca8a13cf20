"""Errors of the filesystem layer: an errno the FUSE edge hands to the kernel."""

from __future__ import annotations

import errno
import os

from ..btree.cache import BtreeError
from ..format import FormatError
from ..trans import EngineFailed


class FSError(OSError):
    """A failed filesystem operation; `.errno` is what the caller sees."""

    def __init__(self, err: int, detail: str | None = None):
        msg = os.strerror(err)
        super().__init__(err, f"{msg}: {detail}" if detail else msg)


def enoent(detail: str | None = None) -> FSError:
    return FSError(errno.ENOENT, detail)


# What means the device or the image cannot be trusted any more: writing
# must stop. OSError covers device I/O errors (an FSError is an errno the fs
# layer chose, never fatal).
_FATAL = (OSError, BtreeError, FormatError, EngineFailed)


def stops_writes(exc: BaseException, eng) -> bool:
    """Whether an exception out of the fs layer must stop all writing: a device
    error, on-disk corruption, or an engine that stopped (a commit failed part
    way). Anything else left nothing half-done, since every commit is whole
    or not at all: only the request that hit it fails."""
    if isinstance(exc, FSError):
        return False
    return eng.failed is not None or isinstance(exc, _FATAL)
