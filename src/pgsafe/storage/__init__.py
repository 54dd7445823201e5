"""Storage drivers, listed in one place."""

from __future__ import annotations

from pgsafe.storage.base import Capabilities, ObjectInfo, ObjectWriter, Storage, StorageError

__all__ = ["Capabilities", "ObjectInfo", "ObjectWriter", "Storage", "StorageError", "open_storage"]


def open_storage(kind: str, location: str) -> Storage:
    """The driver for a repository type; imported lazily to keep start-up lean."""
    if kind == "posix":
        from pgsafe.storage.posix import PosixStorage

        return PosixStorage(location)
    raise StorageError(f"unknown storage type {kind!r}")
