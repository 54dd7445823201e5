"""Restore a backup into an empty directory and set up recovery to a target.

Paths read from a manifest are untrusted: nothing is written outside the target
directory and the tablespace locations. A failed restore removes what it wrote.
"""

from __future__ import annotations

import os
import pwd
import grp
import shutil
import threading
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable

from pgsafe import codec
from pgsafe.config import ClusterConfig, RepoConfig
from pgsafe.errors import (IntegrityError, NoBackup, PassphraseError, RepositoryError, RestoreError,
                           StorageFailure)
from pgsafe.pg.recovery import RecoveryTarget, write_recovery_settings
from pgsafe.ops.direct_io import FileWriter
from pgsafe.ops.delta import DeltaStats, differing_blocks, remove_extra, require_stopped, same_small
from pgsafe.ops.restore_target import backup_before_restore_point, target_timeline
from pgsafe.policy.target import choose_backup, validate_target
from pgsafe.repo.content import decode_small, iter_blocks, iter_content, read_ref
from pgsafe.repo.manifest import BLOCK_SIZE, FileEntry, Ref, entries
from pgsafe.repo.repository import Repository, open_repository
from pgsafe.storage import StorageError

Progress = Callable[[int, int], None]


@dataclass
class RestoreResult:
    backup_id: str
    target_dir: str
    size: int
    file_count: int
    duration: float
    recovery_settings: dict[str, str]
    delta: bool = False
    files_kept: int = 0
    files_written: int = 0
    bytes_written: int = 0
    files_removed: int = 0


def run_restore(
    cluster: ClusterConfig,
    repo_config: RepoConfig,
    *,
    target_dir: str,
    restore_command: str,
    target: RecoveryTarget,
    set_id: str | None = None,
    tablespace_map: dict[str, str] | None = None,
    standby: bool = False,
    delta: bool = False,
    jobs: int | None = None,
    progress: Progress | None = None,
) -> RestoreResult:
    started = time.monotonic()
    # bad values are errors before anything is written
    validate_target(target)
    target_dir = os.path.abspath(target_dir)
    delta = delta and _has_entries(target_dir)
    if delta:
        require_stopped(target_dir)
    else:
        _require_empty(target_dir, "target directory")
    repo = open_repository(repo_config)
    timeline, history = target_timeline(repo, cluster.name, target)
    catalog = repo.catalog(cluster.name)
    if target.kind == "name" and set_id is None:
        set_id = backup_before_restore_point(repo, cluster.name, catalog, str(target.value))
    backup = choose_backup(catalog, target, set_id, timeline, history)
    manifest = repo.manifest(cluster.name, backup["id"])
    if manifest.get("id") != backup["id"]:
        raise IntegrityError(f"backup {backup['id']}: its manifest names another backup ({manifest.get('id')!r})")
    locations = _tablespace_locations(manifest, tablespace_map or {})
    if not delta:
        for location in locations.values():
            _require_empty(location, "tablespace directory")

    created: list[tuple[str, bool]] = []  # (directory, made by us) to undo on failure
    try:
        if delta:
            # a half-done delta restore must not look like a startable cluster
            _unlink(os.path.join(target_dir, CONTROL_FILE))
        _make_tree(target_dir, manifest, locations, created, delta)
        stats = _restore_files(repo, cluster.name, manifest, target_dir, jobs or os.cpu_count() or 2,
                               progress, delta)
        if delta:
            stats.add(removed=remove_extra(target_dir, manifest, locations))
        if locations:
            _rewrite_tablespace_map(target_dir, locations)
        settings = {"restore_command": restore_command, **target.settings()}
        write_recovery_settings(target_dir, settings, standby)
        _restore_control_file(repo, cluster.name, manifest, target_dir)
        _give_to_owner(target_dir, list(locations.values()), manifest.get("owner", {}))
        _sync_filesystems([target_dir, *locations.values()])
    except BaseException:
        if not delta:
            _undo(created)
        raise
    return RestoreResult(backup["id"], target_dir, manifest["size"], len(manifest["files"]),
                         time.monotonic() - started, settings, delta, stats.kept, stats.written,
                         stats.bytes_written, stats.removed)


CONTROL_FILE = "global/pg_control"


def run_restore_any(cluster: ClusterConfig, repos: list[RepoConfig], **options: Any) -> RestoreResult:
    """Restore from the first repository that can; on a damaged or unreachable one,
    fall back to the next (a failed attempt removes what it wrote)."""
    errors: list[str] = []
    for repo_config in repos:
        try:
            return run_restore(cluster, repo_config, **options)
        except (IntegrityError, RepositoryError, StorageFailure, NoBackup, PassphraseError, StorageError) as exc:
            if len(repos) == 1:
                raise
            errors.append(f"repository {repo_config.name!r}: {getattr(exc, 'message', exc)}")
    raise RestoreError("no repository could restore: " + "; ".join(errors))


def _has_entries(path: str) -> bool:
    return os.path.isdir(path) and bool(os.listdir(path))


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _restore_control_file(repo: Repository, cluster: str, manifest: dict[str, Any], target_dir: str) -> None:
    """pg_control is written last, once everything else is in place."""
    for f in manifest["files"]:
        if f["path"] == CONTROL_FILE:
            entry = FileEntry.from_dict(f)
            assert entry.ref is not None
            key = repo.data_key(cluster, entry.ref.backup, entry.ref.object)
            path = safe_join(target_dir, CONTROL_FILE)
            _write_small(path, decode_small(repo, read_ref(repo, cluster, entry.ref, entry.path), entry, key))
            _set_attrs(path, entry)
            return
    raise IntegrityError(f"backup {manifest['id']} has no {CONTROL_FILE}")


def restore_command_for(pgsafe: str, config_path: str, cluster: str, several_clusters: bool) -> str:
    cluster_opt = f" --cluster {quote_shell(cluster)}" if several_clusters else ""
    return f"{quote_shell(pgsafe)} --config {quote_shell(config_path)}{cluster_opt} archive-get %f \"%p\""


def quote_shell(word: str) -> str:
    if word and all(c.isalnum() or c in "/._-+=:," for c in word):
        return word
    return "'" + word.replace("'", "'\"'\"'") + "'"


def _require_empty(path: str, what: str) -> None:
    if os.path.lexists(path):
        if not os.path.isdir(path):
            raise RestoreError(f"{what} {path} exists and is not a directory")
        if os.listdir(path):
            raise RestoreError(f"{what} {path} is not empty; restore into an empty or new directory")


def _tablespace_locations(manifest: dict[str, Any], mapping: dict[str, str]) -> dict[int, str]:
    """oid -> where its files go: --tablespace-map OLD=NEW where OLD is the oid or the
    old location; unmapped tablespaces go back where they were."""
    out: dict[int, str] = {}
    known = {str(ts["oid"]) for ts in manifest.get("tablespaces", [])} | {
        ts["location"] for ts in manifest.get("tablespaces", [])
    }
    for old in mapping:
        if old not in known and old.rstrip("/") not in known:
            raise RestoreError(f"--tablespace-map {old}=...: the backup has no tablespace with that oid or location")
    for ts in manifest.get("tablespaces", []):
        new = mapping.get(str(ts["oid"])) or mapping.get(ts["location"]) or mapping.get(ts["location"] + "/")
        if new is None and not os.path.isabs(ts["location"]):  # untrusted input from the manifest
            raise IntegrityError(f"tablespace {ts['oid']}: the manifest's location {ts['location']!r} is not absolute")
        out[int(ts["oid"])] = os.path.abspath(new or ts["location"])
    return out


def safe_join(root: str, rel: str) -> str:
    """root/rel, refusing anything that would land outside root."""
    if not rel or rel.startswith("/") or "\0" in rel:
        raise IntegrityError(f"manifest holds an invalid path {rel!r}")
    parts = rel.split("/")
    if any(p in ("", ".", "..") for p in parts):
        raise IntegrityError(f"manifest holds an invalid path {rel!r}")
    return os.path.join(root, *parts)


def _undo(created: list[tuple[str, bool]]) -> None:
    """Remove directories we made; empty the ones that existed (they were empty)."""
    for path, made in reversed(created):
        if made:
            shutil.rmtree(path, ignore_errors=True)
            continue
        for name in os.listdir(path):
            full = os.path.join(path, name)
            if os.path.isdir(full) and not os.path.islink(full):
                shutil.rmtree(full, ignore_errors=True)
            else:
                os.unlink(full)


def _make_tree(target_dir: str, manifest: dict[str, Any], locations: dict[int, str],
               created: list[tuple[str, bool]], delta: bool) -> None:
    for path in [target_dir, *locations.values()]:
        made = not os.path.exists(path)
        os.makedirs(path, 0o700, exist_ok=True)
        created.append((path, made))
        os.chmod(path, 0o700)
    tablespace_links = {f"pg_tblspc/{oid}" for oid in locations}
    for entry in sorted(manifest["directories"], key=lambda d: d["path"]):
        rel = entry["path"]
        path = safe_join(target_dir, rel)
        if rel in tablespace_links:
            location = locations[int(rel.split("/")[1])]
            if delta and os.path.islink(path) and os.readlink(path) == location:
                continue
            if os.path.lexists(path):
                shutil.rmtree(path) if os.path.isdir(path) and not os.path.islink(path) else os.unlink(path)
            os.symlink(location, path)
            continue
        if delta and (os.path.islink(path) or (os.path.lexists(path) and not os.path.isdir(path))):
            os.unlink(path)
        os.makedirs(path, exist_ok=True)
        os.chmod(path, entry["mode"] & 0o777)


def _restore_files(repo: Repository, cluster: str, manifest: dict[str, Any], target_dir: str, jobs: int,
                   progress: Progress | None, delta: bool) -> DeltaStats:
    """Write every file, in parallel: bundles read once, large files block by block."""
    stats = DeltaStats()
    files = entries(manifest)
    blockmap = repo.read_blockmap(cluster, manifest["id"]) if delta and any(f.is_large for f in files) else b""
    bundles: dict[tuple[str, int], list[FileEntry]] = defaultdict(list)
    large: list[FileEntry] = []
    for f in files:
        if f.path == CONTROL_FILE:
            continue
        if f.is_large:
            large.append(f)
        elif f.ref is not None:
            bundles[(f.ref.backup, f.ref.object)].append(f)
    total = manifest["size"]
    done = [0]
    lock = threading.Lock()

    def advance(n: int) -> None:
        with lock:
            done[0] += n
            now = done[0]
        if progress is not None:
            progress(now, total)

    def restore_bundle(group: list[FileEntry]) -> None:
        first = group[0]
        assert first.ref is not None
        todo = [f for f in group if not (delta and same_small(safe_join(target_dir, f.path), f))]
        stats.add(kept=len(group) - len(todo))
        if todo:
            key = repo.data_key(cluster, first.ref.backup, first.ref.object)
            lo = min(f.ref.offset for f in todo if f.ref)
            hi = max(f.ref.offset + f.ref.length for f in todo if f.ref)
            blob = read_ref(repo, cluster, Ref(first.ref.backup, first.ref.object, lo, hi - lo), first.path)
            for f in todo:
                assert f.ref is not None
                data = decode_small(repo, blob[f.ref.offset - lo:f.ref.offset - lo + f.ref.length], f, key)
                _write_small(safe_join(target_dir, f.path), data)
                stats.add(written=1, bytes_written=len(data))
        for f in group:
            _set_attrs(safe_join(target_dir, f.path), f)
            advance(f.size)

    def restore_large(f: FileEntry) -> None:
        path = safe_join(target_dir, f.path)
        differing = differing_blocks(path, f, blockmap) if delta else None
        if differing is not None and not differing:
            stats.add(kept=1)
        else:
            written = _write_large(repo, cluster, f, path, differing, advance)
            stats.add(written=1, bytes_written=written)
        if differing is not None and not differing:
            advance(f.size)
        _set_attrs(path, f)

    tasks = [lambda f=f: restore_large(f) for f in sorted(large, key=lambda f: -f.size)]
    tasks += [lambda g=g: restore_bundle(g) for g in bundles.values()]
    with ThreadPoolExecutor(max(1, jobs), thread_name_prefix="pgsafe-restore") as pool:
        futures = [pool.submit(t) for t in tasks]
        try:
            for fut in futures:
                fut.result()
        except BaseException:
            for fut in futures:
                fut.cancel()
            raise
    return stats


def _write_large(repo: Repository, cluster: str, f: FileEntry, path: str, differing: set[int] | None,
                 advance: Callable[[int], None]) -> int:
    """Rebuild a large file; with `differing`, rewrite only those blocks in place.
    The whole-file checksum is checked over everything rebuilt."""
    digest = codec.new_digest()
    written = 0
    if differing is None:  # a new file: written around the page cache when possible
        out = FileWriter(path)
        fd = out.fd
    else:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        if differing is None:
            for data in iter_content(repo, cluster, f):
                digest.update(data)
                out.write(data)
                written += len(data)
                advance(len(data))
            out.close()
        else:
            for index, data in iter_blocks(repo, cluster, f):
                digest.update(data)
                if index in differing:
                    os.pwrite(fd, data, index * BLOCK_SIZE)
                    written += len(data)
                advance(len(data))
        os.ftruncate(fd, f.size)
        os.fsync(fd)  # in the worker, overlapping the next file's decoding
    finally:
        os.close(fd)
    if digest.hexdigest() != f.checksum:
        raise IntegrityError(f"{f.path}: restored content does not match its recorded checksum")
    return written


def _sync_filesystems(roots: list[str]) -> None:
    """Make the small files durable with one syncfs per filesystem (large files were
    fsynced as they were written): cheaper than an fsync per file."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    for root in roots:
        fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
        try:
            if libc.syncfs(fd) != 0:
                os.sync()
        finally:
            os.close(fd)


def _write_small(path: str, data: bytes) -> None:
    with open(path, "wb") as out:
        out.write(data)


def _set_attrs(path: str, f: FileEntry) -> None:
    os.chmod(path, f.mode & 0o777)
    os.utime(path, (f.mtime, f.mtime))


def _rewrite_tablespace_map(target_dir: str, locations: dict[int, str]) -> None:
    path = os.path.join(target_dir, "tablespace_map")
    if not os.path.exists(path):
        return
    with open(path, "w") as out:
        for oid, location in sorted(locations.items()):
            out.write(f"{oid} {location}\n")


def _give_to_owner(target_dir: str, extra_roots: list[str], owner: dict[str, Any]) -> None:
    """As root, hand every restored file to the OS user that owned the source PGDATA
    (by name when it exists here), since PostgreSQL refuses a data directory it does
    not own."""
    if os.geteuid() != 0:
        return
    uid, gid = owner.get("uid", 0), owner.get("gid", 0)
    try:
        if owner.get("user"):
            uid = pwd.getpwnam(owner["user"]).pw_uid
        if owner.get("group"):
            gid = grp.getgrnam(owner["group"]).gr_gid
    except KeyError:
        pass
    for root in [target_dir, *extra_roots]:
        os.chown(root, uid, gid)
        for dirpath, dirs, files in os.walk(root):
            for name in dirs + files:
                os.lchown(os.path.join(dirpath, name), uid, gid)

