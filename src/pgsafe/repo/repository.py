"""The repository format, version 1: where every key lives and in which order things
are written. docs/FORMAT.md is the specification; keep the two in step.

Layout (keys relative to the repository root)::

    pgsafe.json                                   format marker (plain JSON), written last by init
    keys.json                                     encrypted repositories: the wrapped data key
    cluster/<name>/cluster.json                   identity of the registered cluster
    cluster/<name>/backup/<id>/data/<nnnnnn>      stored file contents (bundles and single files)
    cluster/<name>/backup/<id>/manifest           every file of the backup (written after the data)
    cluster/<name>/catalog/<id>.json              summary of a complete backup: THE COMMIT POINT
    cluster/<name>/wal/<TTTTTTTTXXXXXXXX>/<name>  WAL segments, .partial and .backup files
    cluster/<name>/wal/history/<TL>.history       timeline history files
    cluster/<name>/pin/<id>                       a pinned backup (retention never removes it)
    cluster/<name>/lock/                          lock files (flock; never hold data)
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Iterator, NamedTuple

from pgsafe import codec
from pgsafe.repo import keys
from pgsafe.errors import ClusterMismatch, IntegrityError, LockedError, NoBackup, RepositoryError
from pgsafe.storage import Storage, StorageError, open_storage

if TYPE_CHECKING:
    from pgsafe.repo.manifest import ManifestWriter

FORMAT_VERSION = 1
FORMAT_KEY = "pgsafe.json"


class ClusterIdentity(NamedTuple):
    system_identifier: int
    pg_version: int  # server_version_num, e.g. 150018
    wal_segment_size: int
    block_size: int = 8192

    @property
    def major(self) -> int:
        return self.pg_version // 10000


class Repository:
    def __init__(self, storage: Storage, name: str = "main", codec_: codec.Codec | None = None) -> None:
        self.storage = storage
        self.name = name
        # how content is stored here: compression and, when encrypted, the data key
        self.codec = codec_ or codec.Codec()

    # -- opening --------------------------------------------------------------

    @classmethod
    def open(cls, config: Any) -> "Repository":
        """Open an existing repository (from its RepoConfig); refuse a missing one or a
        newer format."""
        name = config.name
        repo = cls(open_storage(config), name)
        location = repo.storage.location
        try:
            raw = repo.storage.read(FORMAT_KEY)
        except FileNotFoundError:
            raise RepositoryError(
                f"repository {name!r} at {location} is not initialised; run `pgsafe init`"
            ) from None
        except (StorageError, OSError) as exc:
            raise RepositoryError(f"repository {name!r} at {location}: {exc}") from None
        try:
            marker = json.loads(raw)
            version = int(marker["format"])
            encryption = str(marker.get("encryption", "none"))
        except (ValueError, KeyError, TypeError):
            raise RepositoryError(f"repository {name!r} at {location}: {FORMAT_KEY} is damaged") from None
        if version > FORMAT_VERSION:
            raise RepositoryError(
                f"repository {name!r} at {location} has format {version}, newer than this pgsafe "
                f"understands ({FORMAT_VERSION}); upgrade pgsafe"
            )
        if version < 1:
            raise RepositoryError(f"repository {name!r} at {location}: {FORMAT_KEY} has an invalid format {version}")
        if encryption != config.encryption:
            raise RepositoryError(
                f"repository {name!r} at {location} uses encryption = {encryption!r} but the config says "
                f"{config.encryption!r}; fix [repo.{name}] encryption"
            )
        data_key = keys.load_data_key(repo.storage, config) if encryption != "none" else None
        repo.codec = codec.Codec(config.compression, config.compression_level, data_key)
        return repo

    @classmethod
    def create(cls, config: Any, owner: tuple[int, int] | None = None) -> tuple["Repository", bool]:
        """Open the repository, creating it when absent. Returns (repo, created).
        `owner` (uid, gid) is given everything a new local repository holds, when run
        as root."""
        storage = open_storage(config)
        name = config.name
        if storage.stat(FORMAT_KEY) is not None:
            return cls.open(config), False
        set_owner = getattr(storage, "set_owner", None)
        if owner is not None and set_owner is not None:
            set_owner(*owner)
        data_key = None
        if config.encryption != "none":
            # the wrapped key first, the format marker last: a crash leaves no repository
            data_key = keys.write_key_file(storage, keys.passphrase(config), None, overwrite=True)
        marker = {"format": FORMAT_VERSION, "created": _now_iso(), "tool": "pgsafe", "encryption": config.encryption}
        w = storage.writer(FORMAT_KEY)
        w.write(json.dumps(marker, indent=1).encode() + b"\n")
        if not w.commit(overwrite=False):
            raise RepositoryError(f"repository {name!r} was initialised by someone else meanwhile; run init again")
        return cls(storage, name, codec.Codec(config.compression, config.compression_level, data_key)), True

    def rekey(self, new_passphrase: bytes) -> None:
        """Wrap the same data key with a new passphrase; no data is rewritten."""
        if self.codec.data_key is None:
            raise RepositoryError(f"repository {self.name!r} is not encrypted; nothing to rekey")
        keys.write_key_file(self.storage, new_passphrase, self.codec.data_key, overwrite=True)

    # -- metadata objects -----------------------------------------------------

    def write_json(self, key: str, doc: dict[str, Any], overwrite: bool = True) -> bool:
        blob, _ = self.codec.encode(json.dumps(doc, separators=(",", ":")).encode())
        w = self.storage.writer(key)
        w.write(blob)
        return w.commit(overwrite=overwrite)

    def decoded(self, key: str) -> Iterator[bytes]:
        """An object's content, decoded as it is read (memory: one chunk). The envelope's
        digest is checked at the end: only a consumer that reads to the end may trust it."""
        with self.storage.open(key) as src:
            yield from self.codec.decode_chunks(iter(lambda: src.read(codec.CHUNK), b""))

    def read_json(self, key: str) -> dict[str, Any]:
        """Read a metadata object; its envelope digest proves it intact."""
        try:
            blob = self.storage.read(key)
        except FileNotFoundError:
            raise
        try:
            return json.loads(self.codec.decode(blob))
        except (codec.CodecError, ValueError) as exc:
            raise IntegrityError(f"{self.storage.location}/{key} is damaged: {exc}") from None

    # -- clusters -------------------------------------------------------------

    @staticmethod
    def cluster_prefix(cluster: str) -> str:
        return f"cluster/{cluster}"

    def register_cluster(self, cluster: str, ident: ClusterIdentity) -> bool:
        """Record the cluster's identity; True if newly registered. A different cluster
        under the same name is refused."""
        key = f"{self.cluster_prefix(cluster)}/cluster.json"
        try:
            self.check_cluster(cluster, ident)
            return False
        except RepositoryError:
            pass
        doc = {
            "name": cluster,
            "system_identifier": str(ident.system_identifier),
            "pg_version": ident.pg_version,
            "wal_segment_size": ident.wal_segment_size,
            "block_size": ident.block_size,
            "registered": _now_iso(),
        }
        self.write_json(key, doc, overwrite=False)
        self.check_cluster(cluster, ident)
        return True

    def cluster_identity(self, cluster: str) -> ClusterIdentity:
        key = f"{self.cluster_prefix(cluster)}/cluster.json"
        try:
            doc = self.read_json(key)
        except FileNotFoundError:
            raise RepositoryError(
                f"cluster {cluster!r} is not registered in repository {self.name!r}; run `pgsafe init`"
            ) from None
        return ClusterIdentity(
            int(doc["system_identifier"]), int(doc["pg_version"]), int(doc["wal_segment_size"]),
            int(doc.get("block_size", 8192)),
        )

    def check_cluster(self, cluster: str, ident: ClusterIdentity) -> None:
        known = self.cluster_identity(cluster)
        if known.system_identifier != ident.system_identifier:
            raise ClusterMismatch(
                f"repository {self.name!r} holds cluster {cluster!r} with system identifier "
                f"{known.system_identifier}, but the server has {ident.system_identifier}; "
                "point this config at the right cluster or use a new repository"
            )
        if known.major != ident.major:
            raise ClusterMismatch(
                f"repository {self.name!r} holds cluster {cluster!r} of PostgreSQL {known.major}, "
                f"but the server runs PostgreSQL {ident.major}; use a new repository after a major upgrade"
            )

    # -- backups and the catalog ----------------------------------------------

    def backup_prefix(self, cluster: str, backup_id: str) -> str:
        return f"{self.cluster_prefix(cluster)}/backup/{backup_id}"

    def data_key(self, cluster: str, backup_id: str, number: int) -> str:
        return f"{self.backup_prefix(cluster, backup_id)}/data/{number:06d}"

    def write_blockmap(self, cluster: str, backup_id: str, blockmap: bytes) -> None:
        blob, _ = self.codec.encode(blockmap)
        w = self.storage.writer(f"{self.backup_prefix(cluster, backup_id)}/blockmap")
        w.write(blob)
        w.commit()

    def read_blockmap(self, cluster: str, backup_id: str) -> bytes:
        key = f"{self.backup_prefix(cluster, backup_id)}/blockmap"
        try:
            return self.codec.decode(self.storage.read(key))
        except FileNotFoundError:
            raise IntegrityError(f"backup {backup_id}: block map is missing") from None
        except codec.CodecError as exc:
            raise IntegrityError(f"backup {backup_id}: block map is damaged: {exc}") from None

    def manifest_writer(self, cluster: str, backup_id: str) -> ManifestWriter:
        from pgsafe.repo.manifest import ManifestWriter

        return ManifestWriter(self.storage.writer(f"{self.backup_prefix(cluster, backup_id)}/manifest"),
                              self.codec.encoder())

    def commit_backup(self, cluster: str, header: dict[str, Any], manifest: ManifestWriter) -> None:
        """Complete the manifest, then write the catalog entry (the manifest's fields
        but its file and directory lists, plus its digest): the single commit point."""
        backup_id = header["id"]
        summary = {k: v for k, v in header.items() if k != "directories"}
        summary["manifest_checksum"] = manifest.finish(header)
        if not self.write_json(f"{self.cluster_prefix(cluster)}/catalog/{backup_id}.json", summary, overwrite=False):
            raise RepositoryError(f"backup id {backup_id} is already in the catalog of repository {self.name!r}")

    def catalog(self, cluster: str) -> list[dict[str, Any]]:
        """Summaries of every complete backup, oldest first."""
        prefix = f"{self.cluster_prefix(cluster)}/catalog/"
        keys = sorted(o.key for o in self.storage.list(prefix) if o.key.endswith(".json"))
        entries = [self.read_json(key) for key in keys]
        return sorted(entries, key=lambda e: (e["start_time"], e["id"]))

    def manifest(self, cluster: str, backup_id: str) -> dict[str, Any]:
        """A backup's manifest, proven intact by the digest its catalog entry keeps."""
        try:
            summary = self.read_json(f"{self.cluster_prefix(cluster)}/catalog/{backup_id}.json")
        except FileNotFoundError:
            raise NoBackup(f"no backup {backup_id!r} of cluster {cluster!r} in repository {self.name!r}; "
                           "`pgsafe info` lists them") from None
        key = f"{self.backup_prefix(cluster, backup_id)}/manifest"
        try:
            text = self.codec.decode_verified(self.storage.read(key), summary.get("manifest_checksum", ""), key)
        except FileNotFoundError:
            raise IntegrityError(f"backup {backup_id}: manifest is missing") from None
        except codec.CodecError as exc:
            raise IntegrityError(f"backup {backup_id}: manifest is damaged: {exc}") from None
        try:
            return json.loads(text)
        except ValueError as exc:
            raise IntegrityError(f"backup {backup_id}: manifest is damaged: {exc}") from None

    def delete_backup(self, cluster: str, backup_id: str) -> None:
        """Un-commit first (the catalog entry), then remove the data: a crash in between
        leaves garbage that collect_garbage removes, never a visible broken backup."""
        self.storage.remove(f"{self.cluster_prefix(cluster)}/catalog/{backup_id}.json")
        self.storage.remove(f"{self.cluster_prefix(cluster)}/pin/{backup_id}")
        self.remove_prefix(self.backup_prefix(cluster, backup_id))

    # -- pins -------------------------------------------------------------------

    def pins(self, cluster: str) -> set[str]:
        prefix = f"{self.cluster_prefix(cluster)}/pin/"
        return {o.key[len(prefix):] for o in self.storage.list(prefix)}

    def set_pin(self, cluster: str, backup_id: str, pinned: bool) -> None:
        key = f"{self.cluster_prefix(cluster)}/pin/{backup_id}"
        if pinned:
            w = self.storage.writer(key)
            w.write(_now_iso().encode())
            w.commit()
        else:
            self.storage.remove(key)

    def collect_garbage(self, cluster: str) -> list[str]:
        """Remove backup directories that never reached the commit point. Call only
        while holding the cluster's backup lock, so no backup is being written."""
        prefix = f"{self.cluster_prefix(cluster)}/backup/"
        committed = {e["id"] for e in self.catalog(cluster)}
        leftovers = {o.key[len(prefix):].split("/", 1)[0] for o in self.storage.list(prefix)}
        local = self.storage.capabilities.local_files
        if local:  # directories of killed runs may hold only temporary files
            root = self.storage.local_path(prefix.rstrip("/"))
            if os.path.isdir(root):
                leftovers.update(os.listdir(root))
        removed = []
        for backup_id in sorted(leftovers - committed):
            self.remove_prefix(f"{prefix}{backup_id}")
            removed.append(backup_id)
        # temporary files of writers killed elsewhere (catalog, WAL) once they are old:
        # an archive-push may be writing one right now
        sweep = getattr(self.storage, "remove_stale_temporary", None)
        if sweep is not None:
            sweep(self.cluster_prefix(cluster), 3600)
        return removed

    def remove_prefix(self, prefix: str) -> None:
        remover = getattr(self.storage, "remove_prefix", None)
        if remover is not None:
            remover(prefix)
            return
        for obj in list(self.storage.list(prefix + "/")):
            self.storage.remove(obj.key)

    # -- WAL ------------------------------------------------------------------

    def wal_key(self, cluster: str, name: str) -> str:
        """Key of an archived WAL file: segments (and .partial/.backup files) are grouped
        by their first 16 characters, history files apart."""
        if name.endswith(".history"):
            return f"{self.cluster_prefix(cluster)}/wal/history/{name}"
        return f"{self.cluster_prefix(cluster)}/wal/{name[:16]}/{name}"

    def wal_files(self, cluster: str) -> list[str]:
        prefix = f"{self.cluster_prefix(cluster)}/wal/"
        return sorted(o.key.rsplit("/", 1)[1] for o in self.storage.list(prefix))

    # -- locks ----------------------------------------------------------------

    @contextmanager
    def lock(self, cluster: str, purpose: str) -> Iterator[None]:
        """An exclusive lock per cluster and purpose (for example "backup"), released
        by the kernel if the process dies."""
        if self.storage.capabilities.local_files:
            path = self.storage.local_path(f"{self.cluster_prefix(cluster)}/lock/{purpose}.lock")
            makedirs = getattr(self.storage, "makedirs", None)
            if makedirs is not None:
                makedirs(os.path.dirname(path))
        else:  # object storage: a lock on this machine, named after what it protects
            import hashlib  # here: archive-push starts faster without it

            tag = hashlib.sha256(f"{self.storage.location}\0{cluster}\0{purpose}".encode()).hexdigest()[:24]
            path = os.path.join(_local_lock_dir(), f"{tag}.lock")
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o666)
        except OSError as exc:
            raise RepositoryError(f"cannot open lock file {path}: {exc.strerror}") from None
        own = getattr(self.storage, "own", None)
        if own is not None:
            own(path)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 64, 0).decode(errors="replace").strip()
                raise LockedError(
                    f"another {purpose} of cluster {cluster!r} is running"
                    + (f" (pid {holder})" if holder else "")
                    + "; wait for it to finish"
                ) from None
            os.pwrite(fd, f"{os.getpid():<16}".encode(), 0)
            yield
        finally:
            os.close(fd)


def _local_lock_dir() -> str:
    """A directory every local user can lock in but nobody can hijack: sticky like
    /tmp, a real directory (not a link), owned by root or by us. Lock files are opened
    without following links."""
    import stat
    import tempfile

    path = os.path.join(tempfile.gettempdir(), "pgsafe-locks")
    try:
        os.mkdir(path, 0o700)
        os.chmod(path, 0o1777)
    except FileExistsError:
        pass
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid not in (0, os.geteuid()) or not st.st_mode & stat.S_ISVTX:
        raise RepositoryError(f"{path} is not a sticky directory owned by root or by this user; remove it")
    return path


def open_repository(repo_config: Any) -> Repository:
    return Repository.open(repo_config)


def _now_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
