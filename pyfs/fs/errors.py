"""Errors of the filesystem layer: an errno the FUSE edge hands to the kernel."""

from __future__ import annotations

import errno
import os


class FSError(OSError):
    """A failed filesystem operation; `.errno` is what the caller sees."""

    def __init__(self, err: int, detail: str | None = None):
        msg = os.strerror(err)
        super().__init__(err, f"{msg}: {detail}" if detail else msg)


def enoent(detail: str | None = None) -> FSError:
    return FSError(errno.ENOENT, detail)
