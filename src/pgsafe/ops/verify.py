"""`pgsafe verify`: prove the repository intact without restoring.

Every stored object is read once and checked against its checksums: each backup
checks the objects it wrote (bundled files against their manifest checksums, base
streams against the whole-file checksum and block map, patches against their
envelope digests) and that every object it borrows from an ancestor exists. Each
backup's WAL range must be archived; every archived WAL file must decode intact;
and WAL must be continuous on each timeline from the oldest backup to the newest
segment. Work runs on a bounded pool with bounded memory (a bundle or a 4 MiB chunk
per worker).
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable

import xxhash

from pgsafe import codec
from pgsafe.config import ClusterConfig, RepoConfig
from pgsafe.errors import IntegrityError, NoBackup, PgsafeError
from pgsafe.pg import wal
from pgsafe.repo.content import iter_blocks
from pgsafe.repo.manifest import BLOCK_SIZE, DIGEST_SIZE, FileEntry, block_digests, entries
from pgsafe.repo.repository import Repository, open_repository


@dataclass
class Problem:
    kind: str  # backup, object, wal-missing, wal-damaged, wal-gap
    detail: str
    backup: str | None = None
    path: str | None = None


@dataclass
class VerifyResult:
    repo: str
    backups_checked: int = 0
    objects_checked: int = 0
    files_checked: int = 0
    wal_checked: int = 0
    dumps_checked: int = 0
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def run_verify(cluster: ClusterConfig, repo_config: RepoConfig, *, set_id: str | None = None,
               jobs: int | None = None) -> VerifyResult:
    repo = open_repository(repo_config)
    result = VerifyResult(repo.name)
    lock = threading.Lock()

    def problem(kind: str, detail: str, backup: str | None = None, path: str | None = None) -> None:
        with lock:
            result.problems.append(Problem(kind, detail, backup, path))

    def count(what: str, n: int = 1) -> None:
        with lock:
            setattr(result, what, getattr(result, what) + n)

    catalog = repo.catalog(cluster.name)
    selected = [b for b in catalog if set_id is None or b["id"] == set_id]
    dumps = [d for d in _complete_dumps(repo, cluster.name) if set_id is None or d["id"] == set_id]
    if set_id is not None and not selected and not dumps:
        raise NoBackup(f"no backup {set_id!r}; `pgsafe info` lists the backups")
    ident = repo.cluster_identity(cluster.name)
    wal_names = repo.wal_files(cluster.name)
    check_all_wal = set_id is None
    if check_all_wal:
        for gap in wal_gaps(wal_names, catalog, ident.wal_segment_size, _histories(repo, cluster.name, wal_names)):
            problem("wal-gap", gap)
    with ThreadPoolExecutor(max(1, jobs or os.cpu_count() or 2), thread_name_prefix="pgsafe-verify") as pool:
        def run(tasks: list[Callable[[], None]]) -> None:
            for fut in [pool.submit(t) for t in tasks]:
                fut.result()

        # one backup at a time: only its manifest is held in memory
        for backup in selected:
            run(_backup_tasks(repo, cluster.name, backup, problem, count)
                + [lambda b=backup: _check_backup_wal(b, set(wal_names), ident.wal_segment_size, problem)])
        for dump in dumps:
            run(_dump_tasks(repo, cluster.name, dump, problem, count))
        run([lambda n=name: _check_wal_file(repo, cluster.name, n, problem, count)
             for name in (wal_names if check_all_wal else _backup_wal_names(selected, ident.wal_segment_size))])
    result.backups_checked = len(selected)
    result.dumps_checked = len(dumps)
    result.problems.sort(key=lambda p: (p.kind, p.backup or "", p.path or "", p.detail))
    return result


def _backup_tasks(repo: Repository, cluster: str, backup: dict[str, Any],
                  problem: Callable[..., None], count: Callable[..., None]) -> list[Callable[[], None]]:
    backup_id = backup["id"]
    try:
        manifest = repo.manifest(cluster, backup_id)
        files = entries(manifest)
        blockmap = repo.read_blockmap(cluster, backup_id)
    except PgsafeError as exc:
        problem("backup", exc.message, backup_id)
        return []
    count("objects_checked", 2)
    own: dict[int, list[FileEntry]] = {}
    borrowed: set[tuple[str, int]] = set()
    for f in files:
        if f.ref is not None:
            if f.ref.backup == backup_id:
                own.setdefault(f.ref.object, []).append(f)
            else:
                borrowed.add((f.ref.backup, f.ref.object))
        for p in f.patches:
            if p.backup == backup_id:
                own.setdefault(p.object, [])
            else:
                borrowed.add((p.backup, p.object))
    patches_by_object: dict[int, list[tuple[FileEntry, Any]]] = {}
    for f in files:
        for p in f.patches:
            if p.backup == backup_id:
                patches_by_object.setdefault(p.object, []).append((f, p))

    def check_object(number: int) -> None:
        key = repo.data_key(cluster, backup_id, number)
        try:
            for f in own.get(number, []):
                if f.is_large:
                    _check_base(repo, key, f, blockmap)
                else:
                    assert f.ref is not None
                    repo.codec.decode_verified(repo.storage.read(key, f.ref.offset, f.ref.length), f.checksum, f.path)
                count("files_checked")
            for f, p in patches_by_object.get(number, []):
                repo.codec.decode(repo.storage.read(key, p.offset, p.length))
        except FileNotFoundError:
            problem("object", f"stored object {key} is missing", backup_id)
        except (codec.CodecError, IntegrityError) as exc:
            problem("object", f"{key}: {getattr(exc, 'message', exc)}", backup_id)
        count("objects_checked")

    def check_rebuilt(f: FileEntry) -> None:
        """A file this backup patched: rebuild it from every backup it spans and check
        the whole and each block against what the backup recorded."""
        digest = codec.new_digest()
        assert f.blockmap is not None
        first, n = f.blockmap
        want = blockmap[first * DIGEST_SIZE:(first + n) * DIGEST_SIZE]
        try:
            for index, data in iter_blocks(repo, cluster, f):
                digest.update(data)
                if xxhash.xxh3_128_digest(data) != want[index * DIGEST_SIZE:(index + 1) * DIGEST_SIZE]:
                    raise IntegrityError(f"{f.path}: block {index} does not match the block map")
            if digest.hexdigest() != f.checksum:
                raise IntegrityError(f"{f.path}: rebuilt content does not match its recorded checksum")
        except PgsafeError as exc:
            problem("object", exc.message, backup_id, f.path)
        count("files_checked")

    def check_borrowed() -> None:
        for other, number in sorted(borrowed):
            key = repo.data_key(cluster, other, number)
            if repo.storage.stat(key) is None:
                problem("object", f"stored object {key} (from backup {other}) is missing", backup_id)

    patched = [f for f in files if any(p.backup == backup_id for p in f.patches)]
    return ([lambda n=n: check_object(n) for n in sorted(own)] + [check_borrowed]
            + [lambda f=f: check_rebuilt(f) for f in patched])


def _check_base(repo: Repository, key: str, f: FileEntry, blockmap: bytes) -> None:
    """A base stream written by this backup holds the whole file as it was then."""
    assert f.ref is not None and f.blockmap is not None
    digest = codec.new_digest()
    digests: list[bytes] = []
    pending = b""
    size = 0
    for data in repo.decoded(key):
        digest.update(data)
        size += len(data)
        view = memoryview(pending + data if pending else data)  # a copy only after a partial block
        whole = len(view) - len(view) % BLOCK_SIZE
        digests.extend(block_digests(view[:whole]))
        pending = bytes(view[whole:])
    if pending:
        digests.extend(block_digests(pending))
    if size != f.size or digest.hexdigest() != f.checksum:
        raise IntegrityError(f"{f.path}: content does not match its recorded checksum")
    first, n = f.blockmap
    if b"".join(digests) != blockmap[first * DIGEST_SIZE:(first + n) * DIGEST_SIZE]:
        raise IntegrityError(f"{f.path}: block map does not match the stored content")


def _backup_wal_names(backups: list[dict[str, Any]], seg_size: int) -> list[str]:
    names: list[str] = []
    for b in backups:
        tl, first = wal.parse_segment_name(b["wal_start"], seg_size)
        _, last = wal.parse_segment_name(b["wal_stop"], seg_size)
        names.extend(wal.segment_name(tl, s, seg_size) for s in range(first, last + 1))
    return sorted(set(names))


def _check_backup_wal(backup: dict[str, Any], archived: set[str], seg_size: int,
                      problem: Callable[..., None]) -> None:
    for name in _backup_wal_names([backup], seg_size):
        if name not in archived:
            problem("wal-missing", f"WAL segment {name} needed by backup {backup['id']} is missing", backup["id"])


def _check_wal_file(repo: Repository, cluster: str, name: str, problem: Callable[..., None],
                    count: Callable[..., None]) -> None:
    try:
        for _ in repo.decoded(repo.wal_key(cluster, name)):
            pass  # decoding to the end proves the digest
    except FileNotFoundError:
        return  # reported by the range checks
    except codec.CodecError as exc:
        problem("wal-damaged", f"archived {name} is damaged: {exc}")
    count("wal_checked")


def _histories(repo: Repository, cluster: str, names: list[str]) -> dict[int, list[wal.HistoryEntry]]:
    out = {}
    for name in names:
        if wal.is_history(name):
            try:
                text = repo.codec.decode(repo.storage.read(repo.wal_key(cluster, name))).decode()
                out[wal.timeline_of(name)] = wal.parse_history(text)
            except (codec.CodecError, ValueError, FileNotFoundError):
                continue  # a damaged history file is reported by the WAL file checks
    return out


def wal_gaps(names: list[str], catalog: list[dict[str, Any]], seg_size: int,
             histories: dict[int, list[wal.HistoryEntry]]) -> list[str]:
    """Missing segments on each timeline, from where that timeline is needed (the
    oldest backup, or the timeline's switch point) to its newest archived segment."""
    if not catalog:
        return []
    oldest = min(wal.parse_segment_name(b["wal_start"], seg_size)[1] for b in catalog)
    by_tl: dict[int, set[int]] = {}
    for name in names:
        if wal.is_segment(name) or wal.is_partial(name):
            tl, segno = wal.parse_segment_name(name[:24], seg_size)
            by_tl.setdefault(tl, set()).add(segno)
    gaps = []
    for tl, segnos in sorted(by_tl.items()):
        start = oldest
        history = histories.get(tl)
        if history:
            start = max(start, wal.lsn_segno(history[-1].switch_lsn, seg_size))
        run_start = None
        for s in range(start, max(segnos) + 1):
            if s not in segnos:
                run_start = s if run_start is None else run_start
            elif run_start is not None:
                gaps.append(_gap_text(tl, run_start, s - 1, seg_size))
                run_start = None
    return gaps


def _gap_text(tl: int, first: int, last: int, seg_size: int) -> str:
    a, b = wal.segment_name(tl, first, seg_size), wal.segment_name(tl, last, seg_size)
    return f"timeline {tl}: WAL segments {a} .. {b} are missing" if a != b else f"timeline {tl}: WAL segment {a} is missing"


# -- logical backups (dumps) -----------------------------------------------------------

def _complete_dumps(repo: Repository, cluster: str) -> list[dict[str, Any]]:
    from pgsafe.repo.dumps import DumpStore

    return [d for d in DumpStore(repo, cluster).catalog() if d.get("status") == "complete"]


def _dump_tasks(repo: Repository, cluster: str, dump: dict[str, Any], problem: Callable[..., None],
                count: Callable[..., None]) -> list[Callable[[], None]]:
    """Every file of the dump read back: each part against its checksum, the whole file
    against its own."""
    from pgsafe.repo.dumps import DumpStore

    store = DumpStore(repo, cluster)
    try:
        files = store.files(store.manifest(dump["id"]))
    except PgsafeError as exc:
        problem("dump", exc.message, dump["id"])
        return []
    count("objects_checked")

    def check(f: Any) -> None:
        try:
            for _ in store.read_file(dump["id"], f):
                pass
        except PgsafeError as exc:
            problem("dump", exc.message, dump["id"], f.path)
        count("files_checked")
        count("objects_checked", len({p.object for p in f.parts}))

    return [lambda f=f: check(f) for f in files]
