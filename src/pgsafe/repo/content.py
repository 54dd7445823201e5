"""Reading a file's content back from the repository, whatever backups it spans.

Small files are one envelope. Large files are a base stream (decoded sequentially)
overlaid by patches, newest last; blocks are produced in order, so memory stays at a
chunk of base plus one decoded patch.
"""

from __future__ import annotations

from typing import Iterator

from pgsafe import codec
from pgsafe.errors import IntegrityError
from pgsafe.repo.manifest import BLOCK_SIZE, FileEntry, Patch, Ref, block_count
from pgsafe.repo.repository import Repository


def read_ref(repo: Repository, cluster: str, ref: Ref, what: str) -> bytes:
    key = repo.data_key(cluster, ref.backup, ref.object)
    try:
        return repo.storage.read(key, ref.offset, ref.length)
    except FileNotFoundError:
        raise IntegrityError(f"{what}: stored object {key} is missing") from None


def decode_small(repo: Repository, blob: bytes, entry: FileEntry, key: str) -> bytes:
    try:
        return repo.codec.decode_verified(blob, entry.checksum, entry.path)
    except codec.CodecError as exc:
        raise IntegrityError(f"{entry.path}: {exc} (object {key})") from None


def iter_blocks(repo: Repository, cluster: str, entry: FileEntry) -> Iterator[tuple[int, bytes]]:
    """(block index, content) for every block of a large file, in order. The caller
    checks the whole-file digest over what it receives."""
    nblocks = block_count(entry.size)
    owner: dict[int, int] = {}
    for k, p in enumerate(entry.patches):
        for b in range(p.block, min(p.block + p.count, nblocks)):
            owner[b] = k
    # the base is decoded only as far as the last block that still comes from it
    base_blocks = [i for i in range(nblocks) if i not in owner]
    last_from_base = base_blocks[-1] if base_blocks else -1
    base = _BaseReader(repo, cluster, entry) if entry.ref is not None and last_from_base >= 0 else None
    current: tuple[int, bytes] | None = None
    for i in range(nblocks):
        length = min(BLOCK_SIZE, entry.size - i * BLOCK_SIZE)
        from_base = None
        if base is not None and i <= last_from_base:
            from_base = base.block(i, length, needed=i not in owner)
        if i in owner:
            k = owner[i]
            if current is None or current[0] != k:
                current = (k, _decode_patch(repo, cluster, entry, entry.patches[k]))
            patch = entry.patches[k]
            start = (i - patch.block) * BLOCK_SIZE
            data = current[1][start:start + length]
        elif from_base is not None:
            data = from_base
        else:
            raise IntegrityError(f"{entry.path}: block {i} is in no stored object")
        if len(data) != length:
            raise IntegrityError(f"{entry.path}: block {i} is short in the repository")
        yield i, data


def iter_content(repo: Repository, cluster: str, entry: FileEntry) -> Iterator[bytes]:
    """The content of a large file, in order: a base stream with no patches is passed
    through in the chunks it decodes to; otherwise block by block."""
    if entry.patches or entry.ref is None:
        for _, data in iter_blocks(repo, cluster, entry):
            yield data
        return
    reader = _BaseReader(repo, cluster, entry)
    remaining = entry.size
    try:
        for chunk in reader.decoded:
            if len(chunk) >= remaining:
                yield chunk[:remaining]
                remaining = 0
                break
            remaining -= len(chunk)
            yield chunk
    except codec.CodecError as exc:
        raise IntegrityError(f"{entry.path}: {exc} (object {reader.key})") from None
    if remaining:
        raise IntegrityError(f"{entry.path}: stored content is shorter than the file")


def _decode_patch(repo: Repository, cluster: str, entry: FileEntry, patch: Patch) -> bytes:
    blob = read_ref(repo, cluster, patch, entry.path)
    try:
        return repo.codec.decode(blob)
    except codec.CodecError as exc:
        key = repo.data_key(cluster, patch.backup, patch.object)
        raise IntegrityError(f"{entry.path}: {exc} (object {key})") from None


class _BaseReader:
    """Sequential reader of a base stream, block by block."""

    def __init__(self, repo: Repository, cluster: str, entry: FileEntry) -> None:
        assert entry.ref is not None
        self.entry = entry
        self.key = repo.data_key(cluster, entry.ref.backup, entry.ref.object)
        try:
            self.src = repo.storage.open(self.key)
        except FileNotFoundError:
            raise IntegrityError(f"{entry.path}: stored object {self.key} is missing") from None
        remaining = entry.ref.length

        def chunks() -> Iterator[bytes]:
            nonlocal remaining
            while remaining > 0:
                data = self.src.read(min(codec.CHUNK, remaining))
                if not data:
                    break
                remaining -= len(data)
                yield data
            self.src.close()

        self.decoded = repo.codec.decode_chunks(chunks())
        self.buf = bytearray()
        self.pos = 0  # file offset of buf[0]

    def block(self, index: int, length: int, needed: bool) -> bytes | None:
        start = index * BLOCK_SIZE
        try:
            while self.pos + len(self.buf) < start + length:
                chunk = next(self.decoded, None)
                if chunk is None:
                    break
                self.buf += chunk
        except codec.CodecError as exc:
            raise IntegrityError(f"{self.entry.path}: {exc} (object {self.key})") from None
        have = self.pos + len(self.buf)
        data = bytes(self.buf[start - self.pos:start - self.pos + length]) if needed and have > start else None
        # drop what lies before the next block
        drop = min(len(self.buf), start + length - self.pos)
        del self.buf[:drop]
        self.pos += drop
        return data
