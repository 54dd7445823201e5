"""Copying data files into repository objects for a backup, with a bounded pool of
threads: small files bundled, large files one object each.

Change detection for incremental and differential backups reads every file and
compares content digests with the parent backup, never trusting size, mtime or page
LSNs: a small file is kept by reference when its XXH3-128 digest is the parent's; a
large file is compared block by block (128 KiB) with the parent's block map and only
the runs of changed blocks are stored, as patches over the parent's content.
Memory: about jobs x 2 chunks of 4 MiB, plus 16 bytes per block of large files.
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from typing import Any, Callable

import xxhash

from pgsafe import codec
from pgsafe.config import RepoConfig
from pgsafe.pg import page
from pgsafe.pg.datadir import SourceFile
from pgsafe.repo.manifest import BLOCK_SIZE, DIGEST_SIZE, FileEntry, Patch, Ref, block_count
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
    def __init__(self, repo: Repository, config: RepoConfig, cluster: str, backup_id: str,
                 data_checksums: bool, jobs: int, progress: Progress | None, parent: Parent | None) -> None:
        self.repo = repo
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
        self.block_digests: dict[str, list[bytes]] = {}
        self._lock = threading.Lock()
        self._next_object = 0
        self._done = 0
        self._total = 0

    # -- bookkeeping ------------------------------------------------------------

    def _object_number(self) -> int:
        with self._lock:
            self._next_object += 1
            return self._next_object

    def _advance(self, n: int) -> None:
        with self._lock:
            self._done += n
            done, total = self._done, self._total
        if self.progress is not None:
            self.progress(done, total)

    def _stored(self, n: int) -> None:
        with self._lock:
            self.stored_size += n

    def _parent_entry(self, path: str) -> FileEntry | None:
        return self.parent.entries.get(path) if self.parent is not None else None

    # -- the pool ---------------------------------------------------------------

    def copy(self, sources: list[SourceFile]) -> list[FileEntry]:
        self._total = sum(s.size for s in sources)
        limit, bundle_size = self.config.bundle_limit, self.config.bundle_size
        large = sorted((s for s in sources if s.size >= limit), key=lambda s: -s.size)
        small = sorted((s for s in sources if s.size < limit), key=lambda s: s.path)
        tasks: list[Callable[[], list[FileEntry | None]]] = [lambda s=s: [self._store_large(s)] for s in large]
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
        results: list[FileEntry] = []
        with ThreadPoolExecutor(self.jobs, thread_name_prefix="pgsafe-copy") as pool:
            futures = [pool.submit(t) for t in tasks]
            wait(futures, return_when=FIRST_EXCEPTION)
            for f in futures:
                if f.done() and f.exception() is not None:
                    for other in futures:
                        other.cancel()
                    raise f.exception()  # type: ignore[misc]
            for f in futures:
                results.extend(e for e in f.result() if e is not None)
        return results

    # -- small files: whole-file digests, bundled -------------------------------

    def _store_bundle(self, sources: list[SourceFile]) -> list[FileEntry | None]:
        out: list[FileEntry | None] = []
        to_store: list[tuple[SourceFile, bytes]] = []
        for source in sources:
            try:
                with open(source.abs_path, "rb") as f:
                    data = f.read()
            except FileNotFoundError:  # dropped while we ran: WAL replay removes it anyway
                continue
            finally:
                self._advance(source.size)
            first_block = page.relation_first_block(source.path) if self.data_checksums else None
            if first_block is not None and data:
                self._verify_pages(source.abs_path, source.path, data, 0, first_block)
            parent = self._parent_entry(source.path)
            if parent is not None and not parent.is_large and parent.ref is not None \
                    and parent.size == len(data) and parent.checksum == xxhash.xxh3_128_hexdigest(data):
                out.append(FileEntry(source.path, len(data), source.mode, int(source.mtime),
                                     parent.checksum, parent.ref))
                continue
            to_store.append((source, data))
        out.extend(self.write_bundle([(s.path, d, s.mode, int(s.mtime)) for s, d in to_store]))
        return out

    def write_bundle(self, items: list[tuple[str, bytes, int, int]]) -> list[FileEntry | None]:
        """Files given whole (path, content, mode, mtime) -> one object of envelopes."""
        if not items:
            return []
        number = self._object_number()
        out: list[FileEntry | None] = []
        with self.repo.storage.writer(self.repo.data_key(self.cluster, self.backup_id, number)) as writer:
            for path, data, mode, mtime in items:
                blob, digest = self.repo.codec.encode(data)
                out.append(FileEntry(path, len(data), mode, mtime, digest,
                                     Ref(self.backup_id, number, writer.tell(), len(blob))))
                writer.write(blob)
            length = writer.tell()
            writer.commit()
        self._stored(length)
        return out

    # -- large files: block maps, a base stream or patches ----------------------

    def _store_large(self, source: SourceFile) -> FileEntry | None:
        parent = self._parent_entry(source.path)
        base_digests = self.parent.digests(parent) if parent is not None and parent.is_large and self.parent else None
        try:
            fd = os.open(source.abs_path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:  # dropped while we ran: WAL replay removes it anyway
            self._advance(source.size)
            return None
        number = self._object_number()
        writer = self.repo.storage.writer(self.repo.data_key(self.cluster, self.backup_id, number))
        try:
            first_block = page.relation_first_block(source.path) if self.data_checksums else None
            whole = codec.new_digest()
            digests: list[bytes] = []
            patches: list[Patch] = []
            encoder = None
            if base_digests is None:
                encoder = self.repo.codec.encoder()
                writer.write(encoder.header)
            offset = 0
            with os.fdopen(fd, "rb", buffering=0, closefd=False) as src:
                while chunk := read_full(src, codec.CHUNK):
                    if first_block is not None:
                        self._verify_pages(source.abs_path, source.path, chunk, offset, first_block, fd)
                    whole.update(chunk)
                    view = memoryview(chunk)
                    chunk_digests = [xxhash.xxh3_128_digest(view[i:i + BLOCK_SIZE])
                                     for i in range(0, len(chunk), BLOCK_SIZE)]
                    first_index = len(digests)
                    digests.extend(chunk_digests)
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
            self.block_digests[source.path] = digests
        return FileEntry(source.path, offset, source.mode, int(source.mtime), whole.hexdigest(), ref,
                         (0, len(digests)), patches)

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


def _still_needed(old: list[Patch], new: list[Patch], nblocks: int) -> list[Patch]:
    """Parent patches that some block still reads: not wholly rewritten by a new patch
    and not wholly beyond the end of the file."""
    covered: set[int] = set()
    for p in new:
        covered.update(range(p.block, p.block + p.count))
    return [p for p in old if any(b < nblocks and b not in covered for b in range(p.block, p.block + p.count))]


def encode_blockmap(entries: list[FileEntry], digests: dict[str, list[bytes]]) -> tuple[list[FileEntry], bytes]:
    """Lay out every large file's digests in one buffer; entries point into it."""
    parts: list[bytes] = []
    index = 0
    for entry in entries:
        if entry.blockmap is None:
            continue
        file_digests = digests.get(entry.path, [])
        entry.blockmap = (index, len(file_digests))
        parts.extend(file_digests)
        index += len(file_digests)
    return entries, b"".join(parts)

