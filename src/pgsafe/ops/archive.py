"""archive-push and archive-get: what PostgreSQL runs once per WAL segment.

Start-up matters here: this module imports only the config, the repository format,
the codec and the storage driver (no psycopg, no numpy).
"""

from __future__ import annotations

import mmap
import os
import time
from typing import Iterable, NamedTuple

import xxhash

from pgsafe import codec
from pgsafe.config import ClusterConfig, Config
from pgsafe.errors import (ArchiveConflict, ClusterMismatch, IntegrityError, NotFound, PgsafeError, StorageFailure,
                           UsageError)
from pgsafe.storage import StorageError
from pgsafe.pg import wal
from pgsafe.repo.repository import Repository, open_repository


class PushResult(NamedTuple):
    name: str
    size: int
    stored_size: int
    already_archived: bool
    seconds: float


class GetResult(NamedTuple):
    name: str
    repo: str
    size: int
    seconds: float


def _check_name(name: str) -> None:
    if not (wal.is_segment(name) or wal.is_partial(name) or wal.is_history(name) or wal.is_backup_history(name)):
        raise UsageError(f"{name!r} is not a WAL segment, .partial, .backup or .history file name")


def archive_push(config: Config, cluster: ClusterConfig, path: str) -> PushResult:
    """Store one WAL file durably in every repository, or fail so PostgreSQL retries.
    With archive_async, a background worker pushes ahead (see archive_async)."""
    if not cluster.archive_async:
        return push_sync(config, cluster, path)
    from pgsafe.ops import archive_async

    started = time.monotonic()
    result: list[PushResult] = []
    ahead = archive_async.push(config, cluster, path, lambda p: result.append(push_sync(config, cluster, p)))
    if result:
        return result[0]
    return PushResult(os.path.basename(path), os.path.getsize(path), 0, ahead, time.monotonic() - started)


def push_sync(config: Config, cluster: ClusterConfig, path: str) -> PushResult:
    """Every repository is checked for a conflicting copy before any is written."""
    started = time.monotonic()
    name = os.path.basename(path)
    _check_name(name)
    try:
        data = _read(path)
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror}") from None
    digest = xxhash.xxh3_128_hexdigest(data)
    repos = [open_repository(r) for r in config.repos]
    pending = []
    for repo in repos:
        _check_segment_identity(repo, cluster, name, data)
        state = _existing(repo, cluster.name, name, digest)
        if state != "same":
            pending.append(repo)
    stored = 0
    for repo in pending:
        blob, _ = repo.codec.encode(data)
        _write(repo, repo.wal_key(cluster.name, name), blob, digest, name)
        stored = max(stored, len(blob))
    return PushResult(name, len(data), stored, not pending, time.monotonic() - started)


def _read(path: str) -> bytes | mmap.mmap:
    """A segment is mapped, not read: no copy and no 16 MiB buffer to fault in, which is
    about a tenth of a push. PostgreSQL leaves the file alone until the push succeeds."""
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size < 1 << 20:
            return f.read()
        return mmap.mmap(f.fileno(), 0, flags=mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0),
                         prot=mmap.PROT_READ)


def _existing(repo: Repository, cluster: str, name: str, digest_hex: str) -> str:
    """'absent', 'same', or 'damaged' (replaced: it never matched anything); a copy
    with different content is a conflict."""
    key = repo.wal_key(cluster, name)
    try:
        blob = repo.storage.read(key)
    except FileNotFoundError:
        return "absent"
    try:
        content = repo.codec.decode(blob)
    except codec.CodecError:
        return "damaged"
    if xxhash.xxh3_128_hexdigest(content) != digest_hex:
        raise ArchiveConflict(
            f"{name} is already archived in repository {repo.name!r} with different content; "
            "refusing to overwrite (is another cluster archiving into the same repository?)"
        )
    return "same"


def _write(repo: Repository, key: str, blob: bytes, digest_hex: str, name: str) -> None:
    writer = repo.storage.writer(key)
    try:
        writer.write(blob)
        if writer.commit(overwrite=False):
            return
    except BaseException:
        writer.abort()
        raise
    # someone wrote it meanwhile (or a damaged copy is in the way): decide again
    try:
        content = repo.codec.decode(repo.storage.read(key))
    except codec.CodecError:
        content = None
    if content is None:
        writer = repo.storage.writer(key)
        writer.write(blob)
        writer.commit(overwrite=True)
    elif xxhash.xxh3_128_hexdigest(content) != digest_hex:
        raise ArchiveConflict(f"{name} was archived concurrently with different content in repository {repo.name!r}")


def _check_segment_identity(repo: Repository, cluster: ClusterConfig, name: str, data: bytes) -> None:
    """A segment carries its cluster's system identifier: refuse another cluster's WAL."""
    ident = repo.cluster_identity(cluster.name)
    if not (wal.is_segment(name) or wal.is_partial(name)):
        return
    try:
        header = wal.read_wal_header(data[:64])
    except ValueError as exc:
        raise UsageError(f"{name} is not a WAL segment: {exc}") from None
    if header.system_identifier != ident.system_identifier:
        raise ClusterMismatch(
            f"{name} belongs to system {header.system_identifier}, but repository {repo.name!r} "
            f"holds cluster {cluster.name!r} with system {ident.system_identifier}; "
            "archive_command points at the wrong config or cluster"
        )


def archive_get(config: Config, cluster: ClusterConfig, name: str, dest: str) -> GetResult:
    """Fetch one WAL file for recovery: exit 1 (NotFound) when no repository has it;
    the destination appears whole or not at all. With archive_async, segments are
    prefetched in the background (see archive_async)."""
    if not cluster.archive_async:
        return get_sync(config, cluster, name, dest)
    from pgsafe.ops import archive_async

    started = time.monotonic()
    _check_name(name)
    result: list[GetResult] = []
    archive_async.get(config, cluster, name, dest, lambda n, d: result.append(get_sync(config, cluster, n, d)))
    return result[0] if result else GetResult(name, "spool", os.path.getsize(dest), time.monotonic() - started)


def get_sync(config: Config, cluster: ClusterConfig, name: str, dest: str) -> GetResult:
    started = time.monotonic()
    _check_name(name)
    last_error: PgsafeError | None = None
    for repo_config in config.repos:
        try:
            repo = open_repository(repo_config)
            blob = repo.storage.read(repo.wal_key(cluster.name, name))
        except FileNotFoundError:
            continue
        except PgsafeError as exc:
            last_error = exc
            continue
        except (StorageError, OSError) as exc:
            last_error = StorageFailure(f"repository {repo_config.name!r}: {exc}")
            continue
        try:
            size = _write_atomically(dest, repo.codec.decode_chunks([blob]))
        except codec.CodecError as exc:
            last_error = IntegrityError(f"archived {name} in repository {repo.name!r} is damaged: {exc}")
            continue
        return GetResult(name, repo.name, size, time.monotonic() - started)
    if last_error is not None:
        raise last_error
    raise NotFound(f"{name} is not in the archive")


def _write_atomically(dest: str, chunks: Iterable[bytes]) -> int:
    """Write the content as it is decoded; it appears under `dest` only once whole and
    proven (the digest is checked at the end of the chunks). Not fsynced: PostgreSQL
    fsyncs a restored file when it keeps it, and after a crash it asks for it again."""
    tmp = f"{dest}.pgsafe-{os.getpid()}"
    size = 0
    try:
        with open(tmp, "wb") as f:
            for chunk in chunks:
                f.write(chunk)
                size += len(chunk)
        os.replace(tmp, dest)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return size
