"""Copying data files into repository objects for a backup, with a bounded pool of
threads: small files bundled, large files one object each.

Change detection for incremental and differential backups reads every file and
compares content digests with the parent backup, never trusting size, mtime or page
LSNs: a small file is kept by reference when its XXH3-128 digest is the parent's; a
large file is compared block by block (128 KiB) with the parent's block map and only
the runs of changed blocks are stored, as patches over the parent's content, unless
half of its first 4 MiB changed: then the whole file is stored again as a new base
(a file rewritten all over, like a table under random updates, would otherwise make
a restore read the old base and every patch).
Entries go into the manifest as each file is stored, and the walk of the data
directory is consumed as copying goes on, so memory does not grow with the number of
files: about jobs x 2 chunks of 4 MiB (or bundles of 16 MiB), plus 16 bytes per block
of large files.
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from functools import partial
from typing import Any, Callable, Iterable, Iterator

import xxhash

from pgsafe import codec
from pgsafe.config import RepoConfig
from pgsafe.pg import page
from pgsafe.pg.datadir import SourceFile
from pgsafe.repo.manifest import BLOCK_SIZE, DIGEST_SIZE, FileEntry, ManifestWriter, Patch, Ref, block_count
from pgsafe.repo.repository import Repository

Progress = Callable[[int, int], None]


class Parent:
    """What an incremental compares against: the parent's entries and block map."""

    def __init__(self, backup_id: str, entries: dict[str, FileEntry], blockmap: bytes) -> None:
        self.id = backup_id
        self.entries = entries
        self.blockmap = blockmap

    def digests(self, entry: FileEntry) -> list[bytes]:
        assert entry.blockmap is not None
        first, count = entry.blockmap
        raw = self.blockmap[first * DIGEST_SIZE:(first + count) * DIGEST_SIZE]
        return [raw[i:i + DIGEST_SIZE] for i in range(0, len(raw), DIGEST_SIZE)]


class FileCopier:
    """Copies files of `root` into backup `backup_id`, each entry into `manifest`; the
    block digests of large files gather in `blockmap`."""

    def __init__(self, repo: Repository, config: RepoConfig, cluster: str, backup_id: str, root: str,
                 manifest: ManifestWriter, data_checksums: bool, jobs: int, progress: Progress | None,
                 parent: Parent | None) -> None:
        self.repo = repo
        self.root = root
        self.manifest = manifest
        self.config = config
        self.cluster = cluster
        self.backup_id = backup_id
        self.data_checksums = data_checksums
        self.jobs = max(1, jobs)
        self.progress = progress
        self.parent = parent
        self.start_lsn = 0
        self.checksum_errors: list[dict[str, Any]] = []
        self.stored_size = 0
        self.blockmap = bytearray()
        self._lock = threading.Lock()
        self._next_object = 0
        self._done = 0
        self._total = 0
        self._walked = False

    # -- bookkeeping ------------------------------------------------------------

    def _object_number(self) -> int:
        with self._lock:
            self._next_object += 1
            return self._next_object

    def _advance(self, n: int) -> None:
        with self._lock:
            self._done += n
            done, total = self._done, self._total if self._walked else 0
        if self.progress is not None:
            self.progress(done, total)  # total 0: not known yet, the walk goes on

    def _stored(self, n: int) -> None:
        with self._lock:
            self.stored_size += n

    def _parent_entry(self, path: str) -> FileEntry | None:
        return self.parent.entries.get(path) if self.parent is not None else None

    # -- the pool ---------------------------------------------------------------

    def copy(self, sources: Iterable[SourceFile]) -> None:
        """Small files are bundled in the order they come, and copied while the walk goes
        on (at most jobs x 2 tasks wait); large files after it, largest first, so that
        the last ones to finish are short."""
        limit, bundle_size = self.config.bundle_limit, self.config.bundle_size
        large: list[SourceFile] = []
        pending: set[Future[None]] = set()

        with ThreadPoolExecutor(self.jobs, thread_name_prefix="pgsafe-copy") as pool:
            def submit(task: Callable[[], None]) -> None:
                nonlocal pending
                while len(pending) >= self.jobs * 2:
                    done, pending = wait(pending, return_when=FIRST_COMPLETED)
                    _raise_first(done, pending)
                pending.add(pool.submit(task))

            bundle: list[SourceFile] = []
            bundle_bytes = 0
            for s in sources:
                with self._lock:
                    self._total += s.size
                if s.size >= limit:
                    large.append(s)
                    continue
                bundle.append(s)
                bundle_bytes += s.size
                if bundle_bytes >= bundle_size:
                    submit(partial(self._store_bundle, bundle))
                    bundle, bundle_bytes = [], 0
            if bundle:
                submit(partial(self._store_bundle, bundle))
            with self._lock:
                self._walked = True
            for s in sorted(large, key=lambda s: -s.size):
                submit(partial(self._store_large, s))
            done, _ = wait(pending)
            _raise_first(done, set())

    # -- small files: whole-file digests, bundled -------------------------------

    def _store_bundle(self, sources: list[SourceFile]) -> None:
        self.write_bundle(self._changed(sources))

    def _changed(self, sources: list[SourceFile]) -> Iterator[tuple[str, bytes, int, int]]:
        """Read each file; those the parent holds identically go to the manifest by
        reference, the others come out to be stored."""
        for source in sources:
            abs_path = os.path.join(self.root, source.path)
            try:
                with open(abs_path, "rb") as f:
                    data = f.read()
            except FileNotFoundError:  # dropped while we ran: WAL replay removes it anyway
                continue
            finally:
                self._advance(source.size)
            first_block = page.relation_first_block(source.path) if self.data_checksums else None
            if first_block is not None and data:
                self._verify_pages(abs_path, source.path, data, 0, first_block)
            parent = self._parent_entry(source.path)
            if parent is not None and not parent.is_large and parent.ref is not None \
                    and parent.size == len(data) and parent.checksum == xxhash.xxh3_128_hexdigest(data):
                self.manifest.add(FileEntry(source.path, len(data), source.mode, source.mtime,
                                            parent.checksum, parent.ref))
                continue
            yield source.path, data, source.mode, source.mtime

    def write_bundle(self, items: Iterable[tuple[str, bytes, int, int]]) -> None:
        """Files given whole (path, content, mode, mtime) -> one object of envelopes,
        written as they come; no object when there is nothing to store."""
        writer = None
        stored: list[FileEntry] = []
        try:
            for path, data, mode, mtime in items:
                if writer is None:
                    number = self._object_number()
                    writer = self.repo.storage.writer(self.repo.data_key(self.cluster, self.backup_id, number))
                blob, digest = self.repo.codec.encode(data)
                stored.append(FileEntry(path, len(data), mode, mtime, digest,
                                        Ref(self.backup_id, number, writer.tell(), len(blob))))
                writer.write(blob)
            if writer is None:
                return
            length = writer.tell()
            writer.commit()
        except BaseException:
            if writer is not None:
                writer.abort()
            raise
        self._stored(length)
        for entry in stored:  # in the manifest only once the object holding them is
            self.manifest.add(entry)

    # -- large files: block maps, a base stream or patches ----------------------

    def _store_large(self, source: SourceFile) -> None:
        parent = self._parent_entry(source.path)
        base_digests = self.parent.digests(parent) if parent is not None and parent.is_large and self.parent else None
        abs_path = os.path.join(self.root, source.path)
        try:
            fd = os.open(abs_path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:  # dropped while we ran: WAL replay removes it anyway
            self._advance(source.size)
            return
        number = self._object_number()
        writer = self.repo.storage.writer(self.repo.data_key(self.cluster, self.backup_id, number))
        try:
            first_block = page.relation_first_block(source.path) if self.data_checksums else None
            whole = codec.new_digest()
            digests: list[bytes] = []
            patches: list[Patch] = []
            encoder = None
            if base_digests is None:
                encoder = self.repo.codec.encoder(framed=True)
                writer.write(encoder.header)
            offset = 0
            with os.fdopen(fd, "rb", buffering=0, closefd=False) as src:
                while chunk := read_full(src, codec.CHUNK):
                    if first_block is not None:
                        self._verify_pages(abs_path, source.path, chunk, offset, first_block, fd)
                    whole.update(chunk)
                    view = memoryview(chunk)
                    chunk_digests = [xxhash.xxh3_128_digest(view[i:i + BLOCK_SIZE])
                                     for i in range(0, len(chunk), BLOCK_SIZE)]
                    first_index = len(digests)
                    digests.extend(chunk_digests)
                    if base_digests is not None and first_index == 0 and _mostly_changed(chunk_digests, base_digests):
                        # rebase: the whole file again as a new base, so that a restore of the
                        # chain reads one stream instead of the old base and every patch over it
                        base_digests = None
                        encoder = self.repo.codec.encoder(framed=True)
                        writer.write(encoder.header)
                    if encoder is not None:
                        writer.write(encoder.update(chunk))
                    else:
                        assert base_digests is not None
                        patches.extend(self._write_patches(writer, number, chunk, first_index,
                                                           chunk_digests, base_digests))
                    offset += len(chunk)
                    self._advance(len(chunk))
            if offset < source.size:
                self._advance(source.size - offset)
            if encoder is not None:
                writer.write(encoder.finish())
                ref: Ref | None = Ref(self.backup_id, number, 0, writer.tell())
            else:
                assert parent is not None
                ref = parent.ref
                patches = _still_needed(parent.patches, patches, block_count(offset)) + patches
            length = writer.tell()
            if length:
                writer.commit()
                self._stored(length)
            else:
                writer.abort()
        except BaseException:
            writer.abort()
            raise
        finally:
            os.close(fd)
        with self._lock:
            first = len(self.blockmap) // DIGEST_SIZE
            self.blockmap += b"".join(digests)
        self.manifest.add(FileEntry(source.path, offset, source.mode, source.mtime, whole.hexdigest(), ref,
                                    (first, len(digests)), patches))

    def _write_patches(self, writer: Any, number: int, chunk: bytes, first_index: int,
                       chunk_digests: list[bytes], base_digests: list[bytes]) -> list[Patch]:
        """Store each run of changed blocks of this chunk as one envelope."""
        out: list[Patch] = []
        i = 0
        n = len(chunk_digests)
        while i < n:
            index = first_index + i
            if index < len(base_digests) and base_digests[index] == chunk_digests[i]:
                i += 1
                continue
            j = i + 1
            while j < n and not (first_index + j < len(base_digests)
                                 and base_digests[first_index + j] == chunk_digests[j]):
                j += 1
            blob, _ = self.repo.codec.encode(chunk[i * BLOCK_SIZE:j * BLOCK_SIZE])
            out.append(Patch(self.backup_id, number, writer.tell(), len(blob), index, j - i))
            writer.write(blob)
            i = j
        return out

    # -- page checksums ---------------------------------------------------------

    def _verify_pages(self, abs_path: str, path: str, data: bytes, offset: int, first_block: int,
                      fd: int | None = None) -> None:
        base = first_block + offset // page.BLCKSZ
        bad = page.find_bad_pages(data, base, self.start_lsn)
        if not bad:
            return
        own = fd is None
        if own:
            fd = os.open(abs_path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            # a page being written while we read it: read it again before believing it
            confirmed = [
                offset // page.BLCKSZ + i for i in bad
                if len(again := os.pread(fd, page.BLCKSZ, offset + i * page.BLCKSZ)) == page.BLCKSZ  # type: ignore[arg-type]
                and page.find_bad_pages(again, base + i, self.start_lsn)
            ]
        finally:
            if own:
                os.close(fd)  # type: ignore[arg-type]
        if confirmed:
            with self._lock:
                for entry in self.checksum_errors:
                    if entry["path"] == path:
                        entry["blocks"].extend(confirmed)
                        return
                self.checksum_errors.append({"path": path, "blocks": confirmed})


def read_full(src: Any, size: int) -> bytes:
    """Read `size` bytes unless the file ends first. A short read in the middle of a
    file being extended would otherwise shift every later block index."""
    data = src.read(size)
    if not data or len(data) == size:
        return data
    parts = [data]
    got = len(data)
    while got < size:
        more = src.read(size - got)
        if not more:
            break
        parts.append(more)
        got += len(more)
    return b"".join(parts)


# An incremental that finds at least this share of a large file's first chunk (4 MiB)
# changed stores the whole file as a new base rather than patches over the parent's.
REBASE_SHARE = 0.5


def _mostly_changed(chunk_digests: list[bytes], base_digests: list[bytes]) -> bool:
    changed = sum(1 for i, d in enumerate(chunk_digests) if i >= len(base_digests) or base_digests[i] != d)
    return changed >= REBASE_SHARE * len(chunk_digests)


def _still_needed(old: list[Patch], new: list[Patch], nblocks: int) -> list[Patch]:
    """Parent patches that some block still reads: not wholly rewritten by a new patch
    and not wholly beyond the end of the file."""
    covered: set[int] = set()
    for p in new:
        covered.update(range(p.block, p.block + p.count))
    return [p for p in old if any(b < nblocks and b not in covered for b in range(p.block, p.block + p.count))]


def _raise_first(done: set[Future[None]], pending: set[Future[None]]) -> None:
    """The first failure of a task ends the copy: the rest are cancelled."""
    for f in done:
        if f.exception() is not None:
            for other in pending:
                other.cancel()
            raise f.exception()  # type: ignore[misc]
