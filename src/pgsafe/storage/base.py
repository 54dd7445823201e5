"""The small storage interface every driver implements.

A driver stores immutable objects under slash-separated keys. It knows nothing of
PostgreSQL or of the repository format. Retry, throttling and logging wrap a driver;
they are never written into one.
"""

from __future__ import annotations

from typing import BinaryIO, Iterator, NamedTuple, Protocol


class ObjectInfo(NamedTuple):
    key: str
    size: int
    mtime: float


class Capabilities(NamedTuple):
    # a new object can be created without replacing an existing one, atomically
    exclusive_create: bool
    # keys map to real files on this machine (locks can use flock, restores can reflink...)
    local_files: bool


class ObjectWriter(Protocol):
    """An object being written. Nothing is visible under its key until `commit`."""

    def write(self, data: bytes | memoryview) -> None: ...

    def tell(self) -> int: ...

    def commit(self, overwrite: bool = True) -> bool:
        """Make the object durable and visible. With overwrite=False, returns False
        (and discards the upload) when the key already exists."""
        ...

    def abort(self) -> None: ...


class Storage(Protocol):
    capabilities: Capabilities
    location: str

    def writer(self, key: str) -> ObjectWriter: ...

    def read(self, key: str, offset: int = 0, length: int | None = None) -> bytes: ...

    def open(self, key: str) -> BinaryIO: ...

    def stat(self, key: str) -> ObjectInfo | None: ...

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        """Every object whose key starts with `prefix` (recursive), in no particular order."""
        ...

    def remove(self, key: str) -> None: ...

    def local_path(self, key: str) -> str:
        """A local file path for the key; only for drivers with `local_files`."""
        ...


class StorageError(Exception):
    """A driver could not carry out an operation; the message says which and why."""
