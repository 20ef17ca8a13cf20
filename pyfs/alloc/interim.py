"""Compatibility name: the interim allocator is gone; NoSpace lives in foreground."""

from .foreground import NoSpace

__all__ = ["NoSpace"]
