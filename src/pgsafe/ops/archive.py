"""archive-push and archive-get: what PostgreSQL runs once per WAL segment.

Start-up matters here: this module imports only the config, the repository format,
the codec and the storage driver (no psycopg, no numpy).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

from pgsafe import codec
from pgsafe.config import ClusterConfig, Config
from pgsafe.errors import ArchiveConflict, ClusterMismatch, IntegrityError, NotFound, RepositoryError, UsageError
from pgsafe.pg import wal
from pgsafe.repo.repository import Repository, open_repository


@dataclass(frozen=True)
class PushResult:
    name: str
    size: int
    stored_size: int
    already_archived: bool
    seconds: float


@dataclass(frozen=True)
class GetResult:
    name: str
    repo: str
    size: int
    seconds: float


def _check_name(name: str) -> None:
    if not (wal.is_segment(name) or wal.is_partial(name) or wal.is_history(name) or wal.is_backup_history(name)):
        raise UsageError(f"{name!r} is not a WAL segment, .partial, .backup or .history file name")


def archive_push(config: Config, cluster: ClusterConfig, path: str) -> PushResult:
    """Store one WAL file durably in every repository, or fail so PostgreSQL retries."""
    started = time.monotonic()
    name = os.path.basename(path)
    _check_name(name)
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror}") from None
    blob, digest_hex = codec.encode(data, *_compression(config))
    stored = 0
    already = True
    for repo_config in config.repos:
        repo = open_repository(repo_config)
        _check_segment_identity(repo, cluster, name, data)
        pushed = _push_one(repo, cluster.name, name, blob, digest_hex)
        already = already and not pushed
        stored = len(blob)
    return PushResult(name, len(data), stored, already, time.monotonic() - started)


def _compression(config: Config) -> tuple[str, int]:
    repo = config.repos[0]
    return repo.compression, repo.compression_level


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


def _push_one(repo: Repository, cluster: str, name: str, blob: bytes, digest_hex: str) -> bool:
    """True when written now, False when identical content was already archived."""
    key = repo.wal_key(cluster, name)
    if repo.storage.stat(key) is None:
        writer = repo.storage.writer(key)
        try:
            writer.write(blob)
            if writer.commit(overwrite=False):
                return True
        except BaseException:
            writer.abort()
            raise
    # the name is taken: identical content is a success, anything else changes nothing
    try:
        existing = codec.read_header(repo.storage.read(key, 0, codec.HEADER_SIZE))
    except codec.CodecError as exc:
        raise IntegrityError(f"archived {name} in repository {repo.name!r} is damaged: {exc}") from None
    if existing.digest is None or existing.digest.hex() != digest_hex:
        raise ArchiveConflict(
            f"{name} is already archived in repository {repo.name!r} with different content; "
            "refusing to overwrite (is another cluster archiving into the same repository?)"
        )
    return False


def archive_get(config: Config, cluster: ClusterConfig, name: str, dest: str) -> GetResult:
    """Fetch one WAL file for recovery: exit 1 (NotFound) when no repository has it;
    the destination appears whole or not at all."""
    started = time.monotonic()
    _check_name(name)
    last_error: Exception | None = None
    for repo_config in config.repos:
        try:
            repo = open_repository(repo_config)
            blob = repo.storage.read(repo.wal_key(cluster.name, name))
        except FileNotFoundError:
            continue
        except RepositoryError as exc:
            last_error = exc
            continue
        try:
            data = codec.decode(blob)
        except codec.CodecError as exc:
            last_error = IntegrityError(f"archived {name} in repository {repo.name!r} is damaged: {exc}")
            continue
        _write_atomically(dest, data)
        return GetResult(name, repo.name, len(data), time.monotonic() - started)
    if last_error is not None:
        raise last_error
    raise NotFound(f"{name} is not in the archive")


def _write_atomically(dest: str, data: bytes) -> None:
    tmp = f"{dest}.pgsafe-{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, dest)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
