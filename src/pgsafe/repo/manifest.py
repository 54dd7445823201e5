"""Manifest entries: how one file of a backup is found in the repository.

A small file is one envelope (``ref``), in this backup or, when unchanged, in an
ancestor. A large file is a *base* stream (``ref``, possibly in an ancestor, possibly
absent) overlaid by *patches*, oldest first: each patch is one envelope holding a run
of consecutive blocks. ``blockmap`` points at the XXH3-128 digest of every block of
the file as it is in this backup; the next incremental compares against it.
See docs/FORMAT.md, "Manifest".
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from typing import Any

import xxhash

BLOCK_SIZE = 128 * 1024
DIGEST_SIZE = 16


@dataclass(frozen=True, slots=True)
class Ref:
    backup: str
    object: int
    offset: int
    length: int

    def as_dict(self) -> dict[str, Any]:
        return {"backup": self.backup, "object": self.object, "offset": self.offset, "length": self.length}


@dataclass(frozen=True, slots=True)
class Patch(Ref):
    block: int = 0
    count: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {**Ref.as_dict(self), "block": self.block, "count": self.count}


@dataclass(slots=True)  # one per file: slots keep 100,000 of them small
class FileEntry:
    path: str
    size: int
    mode: int
    mtime: int
    checksum: str  # XXH3-128 of the whole content, hex
    ref: Ref | None
    blockmap: tuple[int, int] | None = None  # (first digest index, count) in this backup's blockmap
    patches: list[Patch] = field(default_factory=list)

    @property
    def is_large(self) -> bool:
        return self.blockmap is not None

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "path": self.path, "size": self.size, "mode": self.mode, "mtime": self.mtime,
            "checksum": self.checksum, "ref": self.ref.as_dict() if self.ref else None,
        }
        if self.blockmap is not None:
            out["blockmap"] = list(self.blockmap)
            out["patches"] = [p.as_dict() for p in self.patches]
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "FileEntry":
        ref = d.get("ref")
        blockmap = d.get("blockmap")
        return cls(
            path=d["path"], size=int(d["size"]), mode=int(d["mode"]), mtime=int(d["mtime"]),
            checksum=d["checksum"], ref=Ref(**ref) if ref else None,
            blockmap=(int(blockmap[0]), int(blockmap[1])) if blockmap is not None else None,
            patches=[Patch(**p) for p in d.get("patches", [])],
        )

    def referenced_backups(self) -> set[str]:
        out = {p.backup for p in self.patches}
        if self.ref is not None:
            out.add(self.ref.backup)
        return out


def block_count(size: int) -> int:
    return (size + BLOCK_SIZE - 1) // BLOCK_SIZE


def block_digests(data: bytes | memoryview) -> list[bytes]:
    """The digest of each BLOCK_SIZE block of data (the last one may be short)."""
    view = memoryview(data)
    return [xxhash.xxh3_128_digest(view[i:i + BLOCK_SIZE]) for i in range(0, len(view), BLOCK_SIZE)]


def entries(manifest: dict[str, Any]) -> list[FileEntry]:
    return [FileEntry.from_dict(f) for f in manifest["files"]]


class ManifestWriter:
    """A backup's manifest written out while its files are copied: each entry is
    encoded and streamed into the object as it comes, so memory does not grow with
    the number of files. The document reads as one JSON object, `files` first; the
    rest (`finish`) is known only at the end. Thread-safe."""

    def __init__(self, writer: Any, encoder: Any) -> None:
        self._writer = writer
        self._encoder = encoder
        self._lock = threading.Lock()
        self.file_count = 0
        self.size = 0
        self.references: set[str] = set()
        writer.write(encoder.header)
        self._put(b'{"files":[')

    def _put(self, data: bytes) -> None:
        self._writer.write(self._encoder.update(data))

    def add(self, entry: FileEntry) -> None:
        text = json.dumps(entry.as_dict(), separators=(",", ":")).encode()
        with self._lock:
            self._put(b"," + text if self.file_count else text)
            self.file_count += 1
            self.size += entry.size
            self.references |= entry.referenced_backups()

    def finish(self, header: dict[str, Any]) -> str:
        """Close the document with the other fields and store it; returns the XXH3-128
        (hex) of the whole document, which the catalog entry keeps."""
        rest = json.dumps(header, separators=(",", ":")).encode()
        with self._lock:
            self._put(b"]," + rest[1:] if header else b"]}")
            self._writer.write(self._encoder.finish())
            self._writer.commit()
        return self._encoder.digest.hexdigest()

    def abort(self) -> None:
        self._writer.abort()
