"""Online full backup: read PGDATA and every tablespace directly, in parallel,
checksummed and compressed in one streaming pass, between pg_backup_start and
pg_backup_stop on one connection; complete once its WAL is in the repository."""

from __future__ import annotations

import os
import threading
import time
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable

from pgsafe import codec
from pgsafe.config import ClusterConfig, RepoConfig
from pgsafe.errors import BackupFailed, IntegrityError
from pgsafe.pg import backup_api, page, wal
from pgsafe.pg.conn import ServerInfo, connect, server_info
from pgsafe.pg.datadir import SourceFile, scan_data_directory
from pgsafe.repo.repository import ClusterIdentity, Repository, open_repository

Progress = Callable[[int, int], None]


@dataclass
class BackupResult:
    id: str
    type: str
    size: int
    stored_size: int
    file_count: int
    start_lsn: str
    stop_lsn: str
    wal_start: str
    wal_stop: str
    duration: float
    checksum_errors: list[dict[str, Any]] = field(default_factory=list)
    removed_leftovers: list[str] = field(default_factory=list)


@dataclass
class _Stored:
    """A file as recorded in the manifest."""

    path: str
    size: int
    mode: int
    mtime: int
    checksum: str
    object: int
    offset: int
    length: int

    def as_dict(self) -> dict[str, Any]:
        return self.__dict__.copy()


def run_backup(
    cluster: ClusterConfig,
    repo_config: RepoConfig,
    *,
    backup_type: str = "full",
    jobs: int | None = None,
    fast_checkpoint: bool = True,
    progress: Progress | None = None,
) -> BackupResult:
    started = time.monotonic()
    repo = open_repository(repo_config)
    with repo.lock(cluster.name, "backup"):
        # who we are backing up, and is it the cluster this repository knows
        conn = connect(cluster.conninfo_kwargs(), "pgsafe backup")
        try:
            info = server_info(conn)
            ident = ClusterIdentity(info.system_identifier, info.version_num, info.wal_segment_size, info.block_size)
            repo.check_cluster(cluster.name, ident)
            _check_pgdata(cluster, info)
            # leftovers of killed runs go before anything new is written
            removed = repo.collect_garbage(cluster.name)
            backup_id = _new_backup_id(repo, cluster.name, backup_type)
            copier = _Copier(repo, repo_config, cluster.name, backup_id, info, jobs or os.cpu_count() or 2, progress)
            start = backup_api.start_backup(conn, f"pgsafe {backup_id}", info.version_num, fast_checkpoint)
            try:
                # copy every file while the server keeps running
                sources, directories, tablespaces, owner = scan_data_directory(cluster.pgdata, info.version_num)
                copier.start_lsn = start.lsn
                stored = copier.copy(sources)
            except BaseException:
                _abort_quietly(conn)
                repo.remove_prefix(repo.backup_prefix(cluster.name, backup_id))
                raise
            stop = backup_api.stop_backup(conn, info.version_num)
        finally:
            conn.close()
        # backup_label and tablespace_map belong to the backup, never to PGDATA
        stored += copier.store_small([("backup_label", stop.backup_label.encode())]
                                     + ([("tablespace_map", stop.tablespace_map.encode())]
                                        if stop.tablespace_map else []))
        segments = wal.backup_segments(start.timeline, start.lsn, stop.lsn, info.wal_segment_size)
        _wait_for_wal(repo, cluster, segments)
        manifest = _manifest(backup_id, backup_type, info, start, stop, segments, stored, copier,
                             directories, tablespaces, owner, repo_config)
        summary = {k: v for k, v in manifest.items() if k not in ("files", "directories")}
        repo.commit_backup(cluster.name, manifest, summary)
    return BackupResult(
        id=backup_id, type=backup_type, size=manifest["size"], stored_size=manifest["stored_size"],
        file_count=len(stored), start_lsn=manifest["start_lsn"], stop_lsn=manifest["stop_lsn"],
        wal_start=segments[0], wal_stop=segments[-1], duration=time.monotonic() - started,
        checksum_errors=copier.checksum_errors, removed_leftovers=removed,
    )


def _check_pgdata(cluster: ClusterConfig, info: ServerInfo) -> None:
    if info.in_recovery:
        raise BackupFailed("the server is a standby; back up the primary (standby backups are not supported yet)")
    if os.path.realpath(cluster.pgdata) != os.path.realpath(info.data_directory):
        raise BackupFailed(
            f"cluster pgdata {cluster.pgdata} is not the server's data_directory {info.data_directory}; "
            "fix pgdata in the config"
        )
    if not os.access(os.path.join(cluster.pgdata, "global", "pg_control"), os.R_OK):
        raise BackupFailed(f"cannot read {cluster.pgdata}; run pgsafe as the PostgreSQL OS user or root")


def _new_backup_id(repo: Repository, cluster: str, backup_type: str) -> str:
    taken = {e["id"] for e in repo.catalog(cluster)}
    while True:
        backup_id = time.strftime("%Y%m%d-%H%M%S", time.gmtime()) + backup_type[0].upper()
        if backup_id not in taken:
            return backup_id
        time.sleep(0.2)


def _abort_quietly(conn: Any) -> None:
    try:
        conn.close()  # a non-exclusive backup ends with its session
    except Exception:
        pass


class _Copier:
    """Copies files into repository objects with a bounded pool of threads: large files
    one object each, small files bundled. Memory: about jobs x 2 chunks."""

    def __init__(self, repo: Repository, config: RepoConfig, cluster: str, backup_id: str,
                 info: ServerInfo, jobs: int, progress: Progress | None) -> None:
        self.repo = repo
        self.config = config
        self.cluster = cluster
        self.backup_id = backup_id
        self.info = info
        self.jobs = max(1, jobs)
        self.progress = progress
        self.start_lsn = 0
        self.checksum_errors: list[dict[str, Any]] = []
        self.stored_size = 0
        self._lock = threading.Lock()
        self._next_object = 0
        self._done = 0
        self._total = 0

    def _object_number(self) -> int:
        with self._lock:
            self._next_object += 1
            return self._next_object

    def _advance(self, n: int, stored: int = 0) -> None:
        with self._lock:
            self._done += n
            self.stored_size += stored
            done, total = self._done, self._total
        if self.progress is not None:
            self.progress(done, total)

    def copy(self, sources: list[SourceFile]) -> list[_Stored]:
        self._total = sum(s.size for s in sources)
        limit, bundle_size = self.config.bundle_limit, self.config.bundle_size
        large = sorted((s for s in sources if s.size >= limit), key=lambda s: -s.size)
        small = sorted((s for s in sources if s.size < limit), key=lambda s: s.path)
        tasks: list[Callable[[], list[_Stored | None]]] = [lambda s=s: [self._store_file(s)] for s in large]
        bundle: list[SourceFile] = []
        bundle_bytes = 0
        for s in small:
            bundle.append(s)
            bundle_bytes += s.size
            if bundle_bytes >= bundle_size:
                tasks.append(lambda b=bundle: self._store_bundle(b))
                bundle, bundle_bytes = [], 0
        if bundle:
            tasks.append(lambda b=bundle: self._store_bundle(b))
        results: list[_Stored] = []
        with ThreadPoolExecutor(self.jobs, thread_name_prefix="pgsafe-copy") as pool:
            futures = [pool.submit(t) for t in tasks]
            done, _ = wait(futures, return_when=FIRST_EXCEPTION)
            for f in futures:
                if f.done() and f.exception() is not None:
                    for other in futures:
                        other.cancel()
                    raise f.exception()  # type: ignore[misc]
            for f in futures:
                results.extend(s for s in f.result() if s is not None)
        return results

    def _store_file(self, source: SourceFile) -> _Stored | None:
        """One large file -> one object, streamed in chunks."""
        number = self._object_number()
        writer = self.repo.storage.writer(self.repo.data_key(self.cluster, self.backup_id, number))
        try:
            try:
                fd = os.open(source.abs_path, os.O_RDONLY | os.O_CLOEXEC)
            except FileNotFoundError:  # dropped while we ran: WAL replay removes it anyway
                writer.abort()
                self._advance(source.size)
                return None
            try:
                encoder = codec.Encoder(self.config.compression, self.config.compression_level)
                writer.write(encoder.header)
                first_block = page.relation_first_block(source.path) if self.info.data_checksums else None
                offset = 0
                with os.fdopen(fd, "rb", buffering=0, closefd=False) as src:
                    while True:
                        chunk = src.read(codec.CHUNK)
                        if not chunk:
                            break
                        if first_block is not None:
                            self._verify_pages(fd, source.path, chunk, offset, first_block)
                        writer.write(encoder.update(chunk))
                        offset += len(chunk)
                        self._advance(len(chunk))
                writer.write(encoder.finish())
            finally:
                os.close(fd)
            length = writer.tell()
            writer.commit()
        except BaseException:
            writer.abort()
            raise
        if offset < source.size:
            self._advance(source.size - offset)
        with self._lock:
            self.stored_size += length
        return _Stored(source.path, encoder.size, source.mode, int(source.mtime),
                       encoder.digest.hexdigest(), number, 0, length)

    def _store_bundle(self, sources: list[SourceFile]) -> list[_Stored | None]:
        """Small files -> one object holding one envelope per file."""
        contents = []
        for source in sources:
            try:
                with open(source.abs_path, "rb") as f:
                    data = f.read()
            except FileNotFoundError:  # dropped while we ran: WAL replay removes it anyway
                continue
            finally:
                self._advance(source.size)
            first_block = page.relation_first_block(source.path) if self.info.data_checksums else None
            if first_block is not None and data:
                self._verify_pages_path(source, data, first_block)
            contents.append((source, data))
        return self._write_bundle([(s.path, d, s.mode, int(s.mtime)) for s, d in contents])

    def store_small(self, items: list[tuple[str, bytes]]) -> list[_Stored]:
        """Files made by pgsafe itself (backup_label, tablespace_map)."""
        now = int(time.time())
        return self._write_bundle([(path, data, 0o600, now) for path, data in items])

    def _write_bundle(self, items: list[tuple[str, bytes, int, int]]) -> list[_Stored]:
        if not items:
            return []
        number = self._object_number()
        out: list[_Stored] = []
        with self.repo.storage.writer(self.repo.data_key(self.cluster, self.backup_id, number)) as writer:
            for path, data, mode, mtime in items:
                blob, digest = codec.encode(data, self.config.compression, self.config.compression_level)
                out.append(_Stored(path, len(data), mode, mtime, digest, number, writer.tell(), len(blob)))
                writer.write(blob)
            length = writer.tell()
            writer.commit()
        with self._lock:
            self.stored_size += length
        return out

    def _verify_pages(self, fd: int, path: str, chunk: bytes, offset: int, first_block: int) -> None:
        base = first_block + offset // page.BLCKSZ
        bad = page.find_bad_pages(chunk, base, self.start_lsn)
        confirmed = []
        for index in bad:
            # a page being written while we read it: read it again before believing it
            again = os.pread(fd, page.BLCKSZ, offset + index * page.BLCKSZ)
            if len(again) == page.BLCKSZ and page.find_bad_pages(again, base + index, self.start_lsn):
                confirmed.append(base + index - first_block)
        if confirmed:
            self._record_checksum_errors(path, confirmed)

    def _verify_pages_path(self, source: SourceFile, data: bytes, first_block: int) -> None:
        bad = page.find_bad_pages(data, first_block, self.start_lsn)
        if not bad:
            return
        fd = os.open(source.abs_path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            confirmed = [
                i for i in bad
                if len(again := os.pread(fd, page.BLCKSZ, i * page.BLCKSZ)) == page.BLCKSZ
                and page.find_bad_pages(again, first_block + i, self.start_lsn)
            ]
        finally:
            os.close(fd)
        if confirmed:
            self._record_checksum_errors(source.path, confirmed)

    def _record_checksum_errors(self, path: str, blocks: list[int]) -> None:
        with self._lock:
            for entry in self.checksum_errors:
                if entry["path"] == path:
                    entry["blocks"].extend(blocks)
                    return
            self.checksum_errors.append({"path": path, "blocks": list(blocks)})


def _wait_for_wal(repo: Repository, cluster: ClusterConfig, segments: list[str]) -> None:
    """Every segment from start to stop must be archived, and intact, for the backup to
    be restorable. PostgreSQL archives them through archive-push; wait for it."""
    deadline = time.monotonic() + cluster.archive_timeout
    missing = list(segments)
    while missing:
        missing = [s for s in missing if repo.storage.stat(repo.wal_key(cluster.name, s)) is None]
        if not missing:
            break
        if time.monotonic() > deadline:
            raise BackupFailed(
                f"WAL segment {missing[0]} did not reach the repository within "
                f"{cluster.archive_timeout:g} s; check archive_command with `pgsafe check`"
            )
        time.sleep(0.1)
    for segment in segments:
        try:
            codec.decode(repo.storage.read(repo.wal_key(cluster.name, segment)))
        except codec.CodecError as exc:
            raise IntegrityError(f"archived WAL segment {segment} is damaged: {exc}") from None


def _iso(ts: datetime) -> str:
    return ts.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _manifest(backup_id: str, backup_type: str, info: ServerInfo, start: backup_api.BackupStart,
              stop: backup_api.BackupStop, segments: list[str], stored: list[_Stored], copier: _Copier,
              directories: list[dict[str, Any]], tablespaces: list[dict[str, Any]],
              owner: dict[str, Any], repo_config: RepoConfig) -> dict[str, Any]:
    files = sorted((s for s in stored if s is not None), key=lambda s: s.path)
    return {
        "format": 1,
        "id": backup_id,
        "type": backup_type,
        "parent": None,
        "system_identifier": str(info.system_identifier),
        "pg_version": info.version_num,
        "wal_segment_size": info.wal_segment_size,
        "start_time": _iso(start.time),
        "stop_time": _iso(stop.time),
        "start_lsn": wal.format_lsn(start.lsn),
        "stop_lsn": wal.format_lsn(stop.lsn),
        "timeline": start.timeline,
        "wal_start": segments[0],
        "wal_stop": segments[-1],
        "snapshot_xmax": stop.snapshot_xmax,
        "snapshot_xip": stop.snapshot_xip,
        "data_checksums": info.data_checksums,
        "checksum_errors": copier.checksum_errors,
        "compression": repo_config.compression,
        "size": sum(f.size for f in files),
        "stored_size": copier.stored_size,
        "file_count": len(files),
        "tablespaces": tablespaces,
        "owner": owner,
        "directories": directories,
        "files": [f.as_dict() for f in files],
    }
