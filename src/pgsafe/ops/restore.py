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
from pgsafe.errors import IntegrityError, RestoreError
from pgsafe.pg.recovery import RecoveryTarget, write_recovery_settings
from pgsafe.policy.target import choose_backup, validate_target
from pgsafe.repo.repository import Repository, open_repository

Progress = Callable[[int, int], None]


@dataclass
class RestoreResult:
    backup_id: str
    target_dir: str
    size: int
    file_count: int
    duration: float
    recovery_settings: dict[str, str]


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
    jobs: int | None = None,
    progress: Progress | None = None,
) -> RestoreResult:
    started = time.monotonic()
    # bad values are errors before anything is written
    validate_target(target)
    target_dir = os.path.abspath(target_dir)
    _require_empty(target_dir, "target directory")
    repo = open_repository(repo_config)
    backup = choose_backup(repo.catalog(cluster.name), target, set_id)
    manifest = repo.manifest(cluster.name, backup["id"])
    locations = _tablespace_locations(manifest, tablespace_map or {})
    for location in locations.values():
        _require_empty(location, "tablespace directory")

    created: list[tuple[str, bool]] = []  # (directory, made by us) to undo on failure
    try:
        _make_tree(target_dir, manifest, locations, created)
        _restore_files(repo, cluster.name, manifest, target_dir, jobs or os.cpu_count() or 2, progress)
        if locations:
            _rewrite_tablespace_map(target_dir, locations)
        settings = {"restore_command": restore_command, **target.settings()}
        write_recovery_settings(target_dir, settings, standby)
        _give_to_owner(target_dir, list(locations.values()), manifest.get("owner", {}))
        os.sync()
    except BaseException:
        _undo(created)
        raise
    return RestoreResult(backup["id"], target_dir, manifest["size"], len(manifest["files"]),
                         time.monotonic() - started, settings)


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
        location = os.path.abspath(new or ts["location"])
        if not os.path.isabs(location):
            raise RestoreError(f"tablespace {ts['oid']}: location {location!r} must be absolute")
        out[int(ts["oid"])] = location
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
               created: list[tuple[str, bool]]) -> None:
    for path in [target_dir, *locations.values()]:
        made = not os.path.exists(path)
        os.makedirs(path, 0o700, exist_ok=True)
        created.append((path, made))
        os.chmod(path, 0o700)
    tablespace_links = {f"pg_tblspc/{oid}" for oid in locations}
    for entry in sorted(manifest["directories"], key=lambda d: d["path"]):
        rel = entry["path"]
        if rel in tablespace_links:
            oid = int(rel.split("/")[1])
            os.symlink(locations[oid], safe_join(target_dir, rel))
            continue
        path = safe_join(target_dir, rel)
        os.makedirs(path, exist_ok=True)
        os.chmod(path, entry["mode"] & 0o777)


def _restore_files(repo: Repository, cluster: str, manifest: dict[str, Any], target_dir: str, jobs: int,
                   progress: Progress | None) -> None:
    by_object: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for f in manifest["files"]:
        by_object[f["object"]].append(f)
    total = manifest["size"]
    done = [0]
    lock = threading.Lock()

    def advance(n: int) -> None:
        with lock:
            done[0] += n
            now = done[0]
        if progress is not None:
            progress(now, total)

    def restore_object(number: int, files: list[dict[str, Any]]) -> None:
        key = repo.data_key(cluster, manifest["id"], number)
        if len(files) == 1 and files[0]["offset"] == 0:
            _restore_streamed(repo, key, files[0], target_dir, advance)
            return
        try:
            blob = repo.storage.read(key)
        except FileNotFoundError:
            raise IntegrityError(f"{files[0]['path']}: stored object {key} is missing") from None
        for f in files:
            piece = blob[f["offset"]:f["offset"] + f["length"]]
            try:
                data = codec.decode_verified(piece, f["checksum"], f["path"])
            except codec.CodecError as exc:
                raise IntegrityError(f"{f['path']}: {exc} (object {key})") from None
            _write_file(safe_join(target_dir, f["path"]), data, f)
            advance(f["size"])

    ordered = sorted(by_object.items(), key=lambda kv: -sum(f["size"] for f in kv[1]))
    with ThreadPoolExecutor(max(1, jobs), thread_name_prefix="pgsafe-restore") as pool:
        futures = [pool.submit(restore_object, number, files) for number, files in ordered]
        try:
            for fut in futures:
                fut.result()
        except BaseException:
            for fut in futures:
                fut.cancel()
            raise


def _restore_streamed(repo: Repository, key: str, f: dict[str, Any], target_dir: str,
                      advance: Callable[[int], None]) -> None:
    path = safe_join(target_dir, f["path"])
    digest = codec.new_digest()
    try:
        src = repo.storage.open(key)
    except FileNotFoundError:
        raise IntegrityError(f"{f['path']}: stored object {key} is missing") from None
    with src, open(path, "wb") as out:
        try:
            for data in codec.decode_chunks(iter(lambda: src.read(codec.CHUNK), b"")):
                digest.update(data)
                out.write(data)
                advance(len(data))
        except codec.CodecError as exc:
            raise IntegrityError(f"{f['path']}: {exc} (object {key})") from None
    if digest.hexdigest() != f["checksum"]:
        raise IntegrityError(f"{f['path']}: restored content does not match its recorded checksum (object {key})")
    os.chmod(path, f["mode"] & 0o777)
    os.utime(path, (f["mtime"], f["mtime"]))


def _write_file(path: str, data: bytes, f: dict[str, Any]) -> None:
    with open(path, "wb") as out:
        out.write(data)
    os.chmod(path, f["mode"] & 0o777)
    os.utime(path, (f["mtime"], f["mtime"]))


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

