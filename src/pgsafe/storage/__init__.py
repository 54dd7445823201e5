"""Storage drivers, listed in one place."""

from __future__ import annotations

from typing import Any

from pgsafe.storage.base import Capabilities, ObjectInfo, ObjectWriter, Storage, StorageError

__all__ = ["Capabilities", "ObjectInfo", "ObjectWriter", "Storage", "StorageError", "open_storage"]


def open_storage(repo: Any) -> Storage:
    """The driver for a repository's configuration (a RepoConfig); every driver is
    listed here and imported lazily to keep start-up lean."""
    if repo.type == "posix":
        from pgsafe.storage.posix import PosixStorage

        return PosixStorage(repo.path)
    if repo.type == "s3":
        from pgsafe.storage.retry import RetryingStorage
        from pgsafe.storage.s3 import S3Storage

        return RetryingStorage(S3Storage(repo))
    raise StorageError(f"unknown storage type {repo.type!r}")
