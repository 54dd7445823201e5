"""`pgsafe repo copy`: bring one repository up to date from another.

Copies what the target lacks: the cluster's registration, archived WAL, then every
complete backup it does not have, oldest first (so a backup's dependencies are
always there before it). Content is decoded with the source's codec and encoded with
the target's (compression and encryption may differ), so offsets inside objects
change: references are translated, those into earlier backups by pairing the source
and target manifests of that backup. Each copied object is read back from the target
and checked before the backup is committed there; an interrupted copy leaves
uncommitted garbage that the next run removes, then it carries on.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Iterator

from pgsafe import codec
from pgsafe.config import ClusterConfig, RepoConfig
from pgsafe.errors import IntegrityError
from pgsafe.policy.retention import ancestors
from pgsafe.repo.manifest import FileEntry, Patch, Ref, entries
from pgsafe.repo.repository import Repository, open_repository

RefKey = tuple[str, int, int]  # (backup, object, offset)


@dataclass
class CopyResult:
    source: str
    target: str
    backups_copied: list[str] = field(default_factory=list)
    wal_copied: int = 0
    bytes_written: int = 0


def run_copy(cluster: ClusterConfig, source_config: RepoConfig, target_config: RepoConfig,
             *, jobs: int | None = None, only: str | None = None) -> CopyResult:
    source = open_repository(source_config)
    target = open_repository(target_config)
    with target.lock(cluster.name, "backup"):
        return copy_locked(source, target, cluster.name, jobs or os.cpu_count() or 2, only)


def copy_locked(source: Repository, target: Repository, cluster: str, jobs: int,
                only: str | None = None) -> CopyResult:
    result = CopyResult(source.name, target.name)
    target.register_cluster(cluster, source.cluster_identity(cluster))
    target.collect_garbage(cluster)
    # WAL first: a backup is complete only with its WAL
    have = set(target.wal_files(cluster))
    missing = [n for n in source.wal_files(cluster) if n not in have]
    with ThreadPoolExecutor(max(1, jobs), thread_name_prefix="pgsafe-copy-wal") as pool:
        for size in pool.map(lambda n: _copy_wal(source, target, cluster, n), missing):
            result.wal_copied += 1
            result.bytes_written += size
    copied = {b["id"] for b in target.catalog(cluster)}
    catalog = source.catalog(cluster)
    wanted = {only} | ancestors(catalog, {only}) if only is not None else None
    for backup in catalog:
        if backup["id"] in copied or (wanted is not None and backup["id"] not in wanted):
            continue
        result.bytes_written += _copy_backup(source, target, cluster, backup["id"], jobs)
        result.backups_copied.append(backup["id"])
    return result


def _copy_wal(source: Repository, target: Repository, cluster: str, name: str) -> int:
    data = source.codec.decode(source.storage.read(source.wal_key(cluster, name)))
    blob, _ = target.codec.encode(data)
    writer = target.storage.writer(target.wal_key(cluster, name))
    try:
        writer.write(blob)
        writer.commit(overwrite=False)
    except BaseException:
        writer.abort()
        raise
    if target.codec.decode(target.storage.read(target.wal_key(cluster, name))) != data:
        raise IntegrityError(f"copied WAL file {name} does not read back identically")
    return len(blob)


def _copy_backup(source: Repository, target: Repository, cluster: str, backup_id: str, jobs: int) -> int:
    manifest = source.manifest(cluster, backup_id)
    files = entries(manifest)
    translate = _borrowed_refs(source, target, cluster, manifest)
    # this backup's own envelopes, by object
    own: dict[int, set[tuple[int, int]]] = {}
    for f in files:
        for ref in _refs(f):
            if ref.backup == backup_id:
                own.setdefault(ref.object, set()).add((ref.offset, ref.length))
    written = [0]

    def copy_object(number: int) -> dict[RefKey, Ref]:
        mapping, size = _copy_object(source, target, cluster, backup_id, number, sorted(own[number]))
        written[0] += size
        return mapping

    with ThreadPoolExecutor(max(1, jobs), thread_name_prefix="pgsafe-copy") as pool:
        for mapping in pool.map(copy_object, sorted(own)):
            translate.update(mapping)
    blockmap = source.read_blockmap(cluster, backup_id)
    target.write_blockmap(cluster, backup_id, blockmap)
    header = {k: v for k, v in manifest.items() if k != "files"}
    header["stored_size"] = written[0]
    header["compression"] = target.codec.compression
    copied = target.manifest_writer(cluster, backup_id)
    try:
        for f in files:
            copied.add(_translated(f, translate))
    except BaseException:
        copied.abort()
        raise
    target.commit_backup(cluster, header, copied)
    return written[0]


def _refs(f: FileEntry) -> list[Ref]:
    return ([f.ref] if f.ref is not None else []) + list(f.patches)


def _translated(f: FileEntry, translate: dict[RefKey, Ref]) -> FileEntry:
    def tr(ref: Ref) -> Ref:
        new = translate.get((ref.backup, ref.object, ref.offset))
        if new is None:
            raise IntegrityError(f"{f.path}: no copy of stored object {ref.backup}/{ref.object}@{ref.offset}")
        return new

    patches = [Patch(**{**tr(p).as_dict(), "block": p.block, "count": p.count}) for p in f.patches]
    return FileEntry(f.path, f.size, f.mode, f.mtime, f.checksum, tr(f.ref) if f.ref else None, f.blockmap, patches)


def _borrowed_refs(source: Repository, target: Repository, cluster: str, manifest: dict[str, Any]) -> dict[RefKey, Ref]:
    """Where each earlier backup's envelopes are in the target: pair the source and
    target manifests of that backup, entry by entry."""
    out: dict[RefKey, Ref] = {}
    for other in manifest.get("references") or []:
        src = {f.path: f for f in entries(source.manifest(cluster, other))}
        for f in entries(target.manifest(cluster, other)):
            s = src.get(f.path)
            if s is None:
                continue
            for a, b in zip(_refs(s), _refs(f)):
                out[(a.backup, a.object, a.offset)] = Ref(b.backup, b.object, b.offset, b.length)
    return out


def _copy_object(source: Repository, target: Repository, cluster: str, backup_id: str, number: int,
                 envelopes: list[tuple[int, int]]) -> tuple[dict[RefKey, Ref], int]:
    """Re-encode every envelope of one object; read the result back and check it."""
    src_key = source.data_key(cluster, backup_id, number)
    dst_key = target.data_key(cluster, backup_id, number)
    mapping: dict[RefKey, Ref] = {}
    digests: list[tuple[Ref, str]] = []
    writer = target.storage.writer(dst_key)
    try:
        for offset, length in envelopes:
            start = writer.tell()
            digest = codec.new_digest()
            if length > codec.CHUNK:  # large (base streams): stream, to bound memory
                with source.storage.open(src_key) as src:
                    src.seek(offset)
                    remaining = [length]
                    enc = target.codec.encoder()
                    writer.write(enc.header)
                    for data in source.codec.decode_chunks(_limited(src, remaining)):
                        digest.update(data)
                        writer.write(enc.update(data))
                    writer.write(enc.finish())
            else:
                data = source.codec.decode(source.storage.read(src_key, offset, length))
                digest.update(data)
                blob, _ = target.codec.encode(data)
                writer.write(blob)
            ref = Ref(backup_id, number, start, writer.tell() - start)
            mapping[(backup_id, number, offset)] = ref
            digests.append((ref, digest.hexdigest()))
        size = writer.tell()
        writer.commit()
    except BaseException:
        writer.abort()
        raise
    # verify what we copied
    for ref, expect in digests:
        check = codec.new_digest()
        with target.storage.open(dst_key) as src:
            src.seek(ref.offset)
            for data in target.codec.decode_chunks(_limited(src, [ref.length])):
                check.update(data)
        if check.hexdigest() != expect:
            raise IntegrityError(f"copied object {dst_key} does not read back identically")
    return mapping, size


def _limited(src: Any, remaining: list[int]) -> Iterator[bytes]:
    while remaining[0] > 0:
        data = src.read(min(codec.CHUNK, remaining[0]))
        if not data:
            break
        remaining[0] -= len(data)
        yield data
