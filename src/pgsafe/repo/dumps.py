"""Logical backups (the output of pg_dump and pg_dumpall) in the repository.

Layout, under ``cluster/<name>/`` (see docs/LOGICAL.md and docs/FORMAT.md)::

    dump/<id>/data/<nnnnnn>   stored content: envelopes back to back
    dump/<id>/manifest        every file of the dump and where each part of it is stored
    dumps/<id>.json           catalog entry (the manifest without its file list):
                              THE COMMIT POINT, written last

A dump is a list of *files*: one for a custom-format archive (``archive.dump``) or a
pg_dumpall script (``globals.sql``), one per file of pg_dump's directory format. A
file is stored as one or more *parts*, each an envelope in a data object with the
XXH3-128 checksum and size of its original bytes: a streamed file is cut into parts of
at most ``PART_SIZE`` bytes, one object each; small files of a directory-format dump
are bundled, several envelopes to an object, like the small files of a physical backup.

Write order: data objects, then the manifest, then the catalog entry, created only if
absent. A crash before the catalog entry leaves a directory under ``dump/`` that no
catalog entry names: garbage, removed by the next dump or by expire. A dump that fails
leaves its catalog entry with ``status`` = ``failed`` and no data, so that ``info``
shows the failure; retention removes it once a newer dump of the database completes.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from typing import Any, Iterator

from pgsafe import codec
from pgsafe.errors import IntegrityError, NoBackup
from pgsafe.repo.repository import Repository

PART_SIZE = 1 << 30
SMALL_READ = 8 << 20


@dataclass(frozen=True)
class Part:
    object: int
    offset: int
    length: int  # stored bytes
    size: int  # original bytes
    checksum: str

    def as_dict(self) -> dict[str, Any]:
        return {"object": self.object, "offset": self.offset, "length": self.length, "size": self.size,
                "checksum": self.checksum}


@dataclass(frozen=True)
class DumpFile:
    path: str
    size: int
    checksum: str
    parts: tuple[Part, ...]

    def as_dict(self) -> dict[str, Any]:
        return {"path": self.path, "size": self.size, "checksum": self.checksum,
                "parts": [p.as_dict() for p in self.parts]}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "DumpFile":
        path = str(d["path"])
        if not path or path.startswith("/") or "/" in path or path in (".", "..") or "\0" in path:
            raise IntegrityError(f"dump manifest holds an invalid file name {path!r}")
        return cls(path, int(d["size"]), str(d["checksum"]),
                   tuple(Part(int(p["object"]), int(p["offset"]), int(p["length"]), int(p["size"]),
                              str(p["checksum"])) for p in d["parts"]))


class DumpStore:
    """The dumps of one cluster in one repository."""

    def __init__(self, repo: Repository, cluster: str) -> None:
        self.repo = repo
        self.cluster = cluster
        base = repo.cluster_prefix(cluster)
        self.data_root = f"{base}/dump"
        self.catalog_root = f"{base}/dumps"

    # -- keys -------------------------------------------------------------------

    def prefix(self, dump_id: str) -> str:
        return f"{self.data_root}/{dump_id}"

    def object_key(self, dump_id: str, number: int) -> str:
        return f"{self.prefix(dump_id)}/data/{number:06d}"

    def catalog_key(self, dump_id: str) -> str:
        return f"{self.catalog_root}/{dump_id}.json"

    # -- the catalog --------------------------------------------------------------

    def catalog(self) -> list[dict[str, Any]]:
        """Every recorded dump (complete or failed), oldest first."""
        keys = sorted(o.key for o in self.repo.storage.list(self.catalog_root + "/") if o.key.endswith(".json"))
        entries = [self.repo.read_json(key) for key in keys]
        return sorted(entries, key=lambda e: (e["start_time"], e["id"]))

    def entry(self, dump_id: str) -> dict[str, Any]:
        try:
            return self.repo.read_json(self.catalog_key(dump_id))
        except FileNotFoundError:
            raise NoBackup(f"no dump {dump_id!r} of cluster {self.cluster!r} in repository {self.repo.name!r}; "
                           "`pgsafe info` lists them") from None

    def manifest(self, dump_id: str) -> dict[str, Any]:
        try:
            return self.repo.read_json(f"{self.prefix(dump_id)}/manifest")
        except FileNotFoundError:
            raise IntegrityError(f"dump {dump_id}: manifest is missing") from None

    @staticmethod
    def files(manifest: dict[str, Any]) -> list[DumpFile]:
        return [DumpFile.from_dict(d) for d in manifest.get("files", [])]

    # -- writing ----------------------------------------------------------------

    def writer(self, dump_id: str, bundle_limit: int, bundle_size: int) -> "DumpWriter":
        return DumpWriter(self, dump_id, bundle_limit, bundle_size)

    def commit(self, manifest: dict[str, Any]) -> None:
        """The manifest, then the catalog entry: the commit point."""
        dump_id = manifest["id"]
        self.repo.write_json(f"{self.prefix(dump_id)}/manifest", manifest)
        summary = {k: v for k, v in manifest.items() if k != "files"}
        if not self.repo.write_json(self.catalog_key(dump_id), summary, overwrite=False):
            raise IntegrityError(f"dump {dump_id} is already in the catalog")

    def record_failure(self, summary: dict[str, Any]) -> None:
        """A failed dump keeps a catalog entry (status failed) and no data."""
        self.repo.remove_prefix(self.prefix(summary["id"]))
        self.repo.write_json(self.catalog_key(summary["id"]), summary, overwrite=False)

    def delete(self, dump_id: str) -> None:
        """Un-commit first, then remove the data (a crash in between leaves garbage)."""
        self.repo.storage.remove(self.catalog_key(dump_id))
        self.repo.storage.remove(f"{self.repo.cluster_prefix(self.cluster)}/pin/{dump_id}")
        self.repo.remove_prefix(self.prefix(dump_id))

    def collect_garbage(self) -> list[str]:
        """Remove dump directories that never reached the commit point. Only while
        holding the cluster's dump lock, so that no dump is being written."""
        complete = {e["id"] for e in self.catalog() if e.get("status") == "complete"}
        root = self.data_root + "/"
        present = {o.key[len(root):].split("/", 1)[0] for o in self.repo.storage.list(root)}
        if self.repo.storage.capabilities.local_files:  # killed runs may leave only temporary files
            local = self.repo.storage.local_path(self.data_root)
            if os.path.isdir(local):
                present.update(os.listdir(local))
        removed = []
        for dump_id in sorted(present - complete):
            self.repo.remove_prefix(self.prefix(dump_id))
            removed.append(dump_id)
        return removed

    # -- reading ----------------------------------------------------------------

    def read_file(self, dump_id: str, f: DumpFile) -> Iterator[bytes]:
        """The original bytes of a file, part by part. Each part's checksum is checked
        when the part ends, the whole file's at the end: IntegrityError on a mismatch."""
        whole = codec.new_digest()
        total = 0
        for part in f.parts:
            check = codec.new_digest()
            size = 0
            key = self.object_key(dump_id, part.object)
            try:
                for data in self.repo.codec.decode_chunks(self._stored(key, part)):
                    check.update(data)
                    whole.update(data)
                    size += len(data)
                    yield data
            except FileNotFoundError:
                raise IntegrityError(f"dump {dump_id}: stored object {key} is missing") from None
            except codec.CodecError as exc:
                raise IntegrityError(f"dump {dump_id}: {f.path}: {exc} (object {key})") from None
            if size != part.size or check.hexdigest() != part.checksum:
                raise IntegrityError(f"dump {dump_id}: {f.path}: content of object {key} does not match its checksum")
            total += size
        if total != f.size or whole.hexdigest() != f.checksum:
            raise IntegrityError(f"dump {dump_id}: {f.path} does not match its recorded checksum")

    def _stored(self, key: str, part: Part) -> Iterator[bytes]:
        storage = self.repo.storage
        if part.length <= SMALL_READ:
            yield storage.read(key, part.offset, part.length)
            return
        with storage.open(key) as src:
            if part.offset:
                src.seek(part.offset)
            remaining = part.length
            while remaining > 0:
                chunk = src.read(min(codec.CHUNK, remaining))
                if not chunk:
                    raise IntegrityError(f"stored object {key} is shorter than recorded")
                remaining -= len(chunk)
                yield chunk


class DumpWriter:
    """Writes the files of one dump into data objects. Thread-safe: several files may
    be stored at once (directory format, --jobs)."""

    def __init__(self, store: DumpStore, dump_id: str, bundle_limit: int, bundle_size: int) -> None:
        self.store = store
        self.dump_id = dump_id
        self.bundle_limit = bundle_limit
        self.bundle_size = bundle_size
        self.stored_size = 0
        self._lock = threading.Lock()
        self._next = 0
        self._bundle: list[tuple[str, bytes, str, int]] = []  # path, envelope, checksum, size
        self._bundle_bytes = 0
        self._done_small: list[DumpFile] = []

    def _number(self) -> int:
        with self._lock:
            self._next += 1
            return self._next

    def stream(self, path: str) -> "StreamWriter":
        return StreamWriter(self, path)

    def add_small(self, path: str, data: bytes) -> None:
        """A small file, whole; bundled with others. flush() returns the entries of
        every small file once their bundles are written."""
        blob, digest = self.store.repo.codec.encode(data)
        with self._lock:
            self._bundle.append((path, blob, digest, len(data)))
            self._bundle_bytes += len(blob)
            if self._bundle_bytes < self.bundle_size:
                return None
            items, self._bundle, self._bundle_bytes = self._bundle, [], 0
        written = self._write_bundle(items)
        with self._lock:
            self._done_small.extend(written)
        return None

    def add_local_file(self, path: str, local: str) -> list[DumpFile]:
        """Store a file from the local disk: bundled when small, streamed otherwise."""
        size = os.path.getsize(local)
        if size < self.bundle_limit:
            with open(local, "rb") as f:
                self.add_small(path, f.read())
            return []
        out = self.stream(path)
        try:
            with open(local, "rb", buffering=0) as f:
                while chunk := f.read(codec.CHUNK):
                    out.write(chunk)
            return [out.close()]
        except BaseException:
            out.abort()
            raise

    def flush(self) -> list[DumpFile]:
        """Write the last bundle; return every small file stored so far."""
        with self._lock:
            items, self._bundle, self._bundle_bytes = self._bundle, [], 0
        written = self._write_bundle(items) if items else []
        with self._lock:
            done, self._done_small = self._done_small + written, []
        return done

    def _write_bundle(self, items: list[tuple[str, bytes, str, int]]) -> list[DumpFile]:
        number = self._number()
        out = []
        w = self.store.repo.storage.writer(self.store.object_key(self.dump_id, number))
        try:
            for path, blob, digest, size in items:
                out.append(DumpFile(path, size, digest, (Part(number, w.tell(), len(blob), size, digest),)))
                w.write(blob)
            length = w.tell()
            w.commit()
        except BaseException:
            w.abort()
            raise
        self._stored(length)
        return out

    def _stored(self, n: int) -> None:
        with self._lock:
            self.stored_size += n

    def abort(self) -> None:
        self.store.repo.remove_prefix(self.store.prefix(self.dump_id))


class StreamWriter:
    """One file written as a stream, cut into parts of at most PART_SIZE bytes."""

    def __init__(self, owner: DumpWriter, path: str) -> None:
        self.owner = owner
        self.path = path
        self.size = 0
        self.whole = codec.new_digest()
        self.parts: list[Part] = []
        self._writer: Any = None
        self._encoder: codec.Encoder | None = None
        self._number = 0

    def write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            if self._encoder is None:
                self._begin()
            assert self._encoder is not None
            room = PART_SIZE - self._encoder.size
            piece = view[:room]
            self._writer.write(self._encoder.update(piece))
            self.whole.update(piece)
            self.size += len(piece)
            view = view[len(piece):]
            if self._encoder.size >= PART_SIZE:
                self._end()

    def close(self) -> DumpFile:
        if self._encoder is None and not self.parts:
            self._begin()  # an empty file is still one (empty) part
        if self._encoder is not None:
            self._end()
        return DumpFile(self.path, self.size, self.whole.hexdigest(), tuple(self.parts))

    def abort(self) -> None:
        if self._writer is not None:
            self._writer.abort()
            self._writer = None
        self._encoder = None

    def _begin(self) -> None:
        self._number = self.owner._number()
        self._writer = self.owner.store.repo.storage.writer(self.owner.store.object_key(self.owner.dump_id,
                                                                                         self._number))
        self._encoder = self.owner.store.repo.codec.encoder()
        self._writer.write(self._encoder.header)

    def _end(self) -> None:
        assert self._encoder is not None
        self._writer.write(self._encoder.finish())
        length = self._writer.tell()
        self._writer.commit()
        self.parts.append(Part(self._number, 0, length, self._encoder.size, self._encoder.digest.hexdigest()))
        self.owner._stored(length)
        self._writer, self._encoder = None, None
