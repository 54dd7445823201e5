"""Online backup: full, differential or incremental.

Files are read directly from PGDATA and every tablespace between pg_backup_start and
pg_backup_stop on one connection; the backup is complete once the WAL from its start
to its stop is in the repository, and visible once its catalog entry is written.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable

from pgsafe import codec
from pgsafe.config import ClusterConfig, RepoConfig
from pgsafe.errors import BackupFailed, IntegrityError
from pgsafe.ops.expire import expire_locked, policy_of
from pgsafe.ops.filecopy import FileCopier, Parent
from pgsafe.pg import backup_api, wal
from pgsafe.pg.conn import ServerInfo, connect, server_info
from pgsafe.pg.datadir import DataDirectory
from pgsafe.repo.manifest import ManifestWriter, entries
from pgsafe.repo.repository import ClusterIdentity, Repository, open_repository

Progress = Callable[[int, int], None]
BACKUP_TYPES = ("full", "diff", "incr")


@dataclass
class BackupResult:
    id: str
    type: str
    parent: str | None
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
    notices: list[str] = field(default_factory=list)
    expired: list[str] = field(default_factory=list)
    wal_expired: int = 0
    repo: str = ""


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
    notices: list[str] = []
    repo = open_repository(repo_config)
    with repo.lock(cluster.name, "backup"):
        conn = connect(cluster.conninfo_kwargs(), "pgsafe backup")
        try:
            # is this the cluster the repository knows, and can we read its files
            info = server_info(conn)
            repo.check_cluster(cluster.name, ClusterIdentity(
                info.system_identifier, info.version_num, info.wal_segment_size, info.block_size))
            _check_pgdata(cluster, info)
            # leftovers of killed runs go before anything new is written
            removed = repo.collect_garbage(cluster.name)
            # what an incremental or differential builds on
            backup_type, parent = _parent(repo, cluster.name, backup_type, notices)
            backup_id = _new_backup_id(repo, cluster.name, backup_type)
            datadir = DataDirectory(cluster.pgdata, info.version_num)
            manifest = repo.manifest_writer(cluster.name, backup_id)  # the last step that can fail here
        except BaseException:
            conn.close()
            raise
        copier = FileCopier(repo, repo_config, cluster.name, backup_id, cluster.pgdata, manifest,
                            info.data_checksums, jobs or os.cpu_count() or 2, progress, parent)
        try:
            try:
                start = backup_api.start_backup(conn, f"pgsafe {backup_id}", info.version_num, fast_checkpoint)
                # copy every file while the server keeps running
                copier.start_lsn = start.lsn
                copier.copy(datadir.files())
                stop = backup_api.stop_backup(conn, info.version_num)
            finally:
                conn.close()  # a non-exclusive backup that did not stop ends with its session
            # backup_label and tablespace_map belong to the backup, never to PGDATA
            made = int(time.time())
            extra = [("backup_label", stop.backup_label.encode(), 0o600, made)]
            if stop.tablespace_map:
                extra.append(("tablespace_map", stop.tablespace_map.encode(), 0o600, made))
            copier.write_bundle(extra)
            # complete only when every WAL segment from start to stop is archived and intact
            segments = wal.backup_segments(start.timeline, start.lsn, stop.lsn, info.wal_segment_size)
            _wait_for_wal(repo, cluster, segments)
            # block map, manifest, then the catalog entry: the commit point
            repo.write_blockmap(cluster.name, backup_id, bytes(copier.blockmap))
            header = _manifest_header(backup_id, backup_type, parent, info, start, stop, segments, manifest,
                                      copier, datadir, repo_config)
        except BaseException:
            manifest.abort()
            try:  # best effort: what is left is garbage the next run collects
                repo.remove_prefix(repo.backup_prefix(cluster.name, backup_id))
            except Exception:
                pass
            raise
        repo.commit_backup(cluster.name, header, manifest)
        # retention runs after each successful backup
        expired = expire_locked(repo, cluster.name, policy_of(repo_config))
    return BackupResult(
        id=backup_id, type=backup_type, parent=header["parent"], size=header["size"],
        stored_size=header["stored_size"], file_count=header["file_count"], start_lsn=header["start_lsn"],
        stop_lsn=header["stop_lsn"], wal_start=segments[0], wal_stop=segments[-1],
        duration=time.monotonic() - started, checksum_errors=copier.checksum_errors,
        removed_leftovers=removed, notices=notices,
        expired=[e.backup_id for e in expired.backups], wal_expired=len(expired.wal_removed),
        repo=repo.name,
    )


def _parent(repo: Repository, cluster: str, backup_type: str, notices: list[str]) -> tuple[str, Parent | None]:
    """incr builds on the newest backup of any type, diff on the newest full; with no
    full to build on, either becomes a full."""
    if backup_type == "full":
        return "full", None
    catalog = repo.catalog(cluster)
    if backup_type == "diff":
        catalog = [b for b in catalog if b["type"] == "full"]
    if not catalog:
        notices.append(f"no full backup to build a {backup_type} backup on: taking a full backup")
        return "full", None
    newest = catalog[-1]
    manifest = repo.manifest(cluster, newest["id"])
    by_path = {e.path: e for e in entries(manifest)}
    return backup_type, Parent(newest["id"], by_path, repo.read_blockmap(cluster, newest["id"]))


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


def _wait_for_wal(repo: Repository, cluster: ClusterConfig, segments: list[str]) -> None:
    """PostgreSQL archives the backup's WAL through archive-push; wait for it, then
    prove every segment intact."""
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
            for _ in repo.decoded(repo.wal_key(cluster.name, segment)):
                pass  # decoding to the end proves the digest
        except codec.CodecError as exc:
            raise IntegrityError(f"archived WAL segment {segment} is damaged: {exc}") from None


def _iso(ts: datetime) -> str:
    return ts.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _manifest_header(backup_id: str, backup_type: str, parent: Parent | None, info: ServerInfo,
                     start: backup_api.BackupStart, stop: backup_api.BackupStop, segments: list[str],
                     manifest: ManifestWriter, copier: FileCopier, datadir: DataDirectory,
                     repo_config: RepoConfig) -> dict[str, Any]:
    """Every field of the manifest but its file list, which is already written."""
    return {
        "format": 1,
        "id": backup_id,
        "type": backup_type,
        "parent": parent.id if parent else None,
        "references": sorted(manifest.references - {backup_id}),
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
        "size": manifest.size,
        "stored_size": copier.stored_size,
        "file_count": manifest.file_count,
        "tablespaces": datadir.tablespaces,
        "owner": datadir.owner,
        "directories": datadir.directories,
    }


def run_backup_everywhere(cluster: ClusterConfig, repos: list[RepoConfig], **options: Any) -> list[BackupResult]:
    """Back up into the first repository, then copy the new backup (and whatever it
    needs) into every other one; each applies its own retention."""
    from pgsafe.ops.copy import copy_locked

    targets = [open_repository(other) for other in repos[1:]]  # every passphrase is right before we start
    result = run_backup(cluster, repos[0], **options)
    results = [result]
    source = open_repository(repos[0])
    for other, target in zip(repos[1:], targets):
        with target.lock(cluster.name, "backup"):
            copied = copy_locked(source, target, cluster.name, options.get("jobs") or os.cpu_count() or 2,
                                 only=result.id)
            expired = expire_locked(target, cluster.name, policy_of(other))
        results.append(BackupResult(
            id=result.id, type=result.type, parent=result.parent, size=result.size,
            stored_size=copied.bytes_written, file_count=result.file_count, start_lsn=result.start_lsn,
            stop_lsn=result.stop_lsn, wal_start=result.wal_start, wal_stop=result.wal_stop,
            duration=result.duration, checksum_errors=result.checksum_errors, repo=other.name,
            expired=[e.backup_id for e in expired.backups], wal_expired=len(expired.wal_removed),
        ))
    return results
