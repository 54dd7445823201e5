"""Retry with backoff around any storage driver.

Drivers raise `TransientStorageError` for failures that may pass if tried again (a
connection refused or reset, a timeout, a server error); everything else (access
denied, a missing object, a bad key) is final and goes straight to the caller.

The S3 driver already retries each HTTP request a few times inside obstore; this layer
retries the whole operation once more after a longer pause, which covers a store that
restarts. Writers are passed through untouched: a stream the caller has already handed
over cannot be replayed, so their requests are retried by the driver alone.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from typing import Any, BinaryIO, Callable, Iterator, TypeVar

from pgsafe.storage.base import ObjectInfo, ObjectWriter, Storage, StorageError

T = TypeVar("T")


class TransientStorageError(StorageError):
    """An operation failed in a way that may pass if it is tried again."""


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 3  # in all, the first one included
    first_delay: float = 1.0  # seconds, doubled after each failure, with jitter
    max_delay: float = 8.0


class RetryingStorage:
    """A Storage that retries the idempotent operations of another one."""

    def __init__(self, inner: Storage, policy: RetryPolicy = RetryPolicy(),
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.inner = inner
        self.policy = policy
        self.capabilities = inner.capabilities
        self.location = inner.location
        self._sleep = sleep

    def _call(self, operation: Callable[..., T], *args: Any) -> T:
        delay = self.policy.first_delay
        for attempt in range(1, self.policy.attempts + 1):
            try:
                return operation(*args)
            except TransientStorageError:
                if attempt >= self.policy.attempts:
                    raise
            self._sleep(delay * random.uniform(0.5, 1.0))
            delay = min(delay * 2, self.policy.max_delay)
        raise AssertionError("unreachable")

    def writer(self, key: str) -> ObjectWriter:
        return self.inner.writer(key)

    def read(self, key: str, offset: int = 0, length: int | None = None) -> bytes:
        return self._call(self.inner.read, key, offset, length)

    def open(self, key: str) -> BinaryIO:
        return self._call(self.inner.open, key)

    def stat(self, key: str) -> ObjectInfo | None:
        return self._call(self.inner.stat, key)

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        # Retried until the first object arrives; a failure after that is raised, as
        # starting again would repeat objects already yielded.
        def first() -> tuple[Iterator[ObjectInfo], ObjectInfo | None]:
            it = iter(self.inner.list(prefix))
            return it, next(it, None)

        it, head = self._call(first)
        if head is None:
            return
        yield head
        yield from it

    def remove(self, key: str) -> None:
        self._call(self.inner.remove, key)

    def local_path(self, key: str) -> str:
        return self.inner.local_path(key)

    def __getattr__(self, name: str) -> Any:
        # optional driver extras (remove_prefix, makedirs, ...) exist here only when
        # the driver has them, as callers probe them with getattr
        if name == "inner":  # not yet set (copy, pickle)
            raise AttributeError(name)
        attr = getattr(self.inner, name)
        if name == "remove_prefix":
            return lambda prefix: self._call(attr, prefix)
        return attr
