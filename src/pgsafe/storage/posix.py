"""Posix driver: objects are files under a root directory.

Writes go to a temporary file in the target directory, are fsynced, then renamed (or
hard-linked, for create-if-absent) into place and the directory is fsynced: a crash
leaves either no object or a complete one, plus perhaps a temporary file that
`list` never returns.

When run as root, new files and directories are given to the owner of the root
directory, so that the PostgreSQL user running archive-push can keep writing a
repository that root created or backed up into.
"""

from __future__ import annotations

import errno
import os
import time
from typing import BinaryIO, Iterator

from pgsafe.storage.base import Capabilities, ObjectInfo, StorageError

TMP_MARK = ".tmp-"
DIR_MODE = 0o750
FILE_MODE = 0o640


class PosixStorage:
    capabilities = Capabilities(exclusive_create=True, local_files=True)

    def __init__(self, root: str) -> None:
        self.root = os.path.abspath(root)
        self.location = self.root
        self._owner: tuple[int, int] | None = None
        if os.geteuid() == 0:
            try:
                st = os.stat(self.root)
                self._owner = (st.st_uid, st.st_gid)
            except FileNotFoundError:
                pass

    def set_owner(self, uid: int, gid: int) -> None:
        """Owner given to everything this driver creates (only effective as root)."""
        if os.geteuid() == 0:
            self._owner = (uid, gid)
            os.makedirs(self.root, mode=DIR_MODE, exist_ok=True)
            os.chown(self.root, uid, gid)

    def _path(self, key: str) -> str:
        if key.startswith("/") or ".." in key.split("/"):
            raise StorageError(f"invalid key {key!r}")
        return os.path.join(self.root, key)

    def own(self, path: str) -> None:
        """Give a path this driver created to the repository owner (as root only)."""
        if self._owner is not None:
            os.chown(path, *self._owner)

    def makedirs(self, directory: str) -> None:
        if os.path.isdir(directory):
            return
        parent = os.path.dirname(directory)
        if parent != directory:
            self.makedirs(parent)
        try:
            os.mkdir(directory, DIR_MODE)
            self.own(directory)
            _fsync_dir(parent)
        except FileExistsError:
            pass

    def writer(self, key: str) -> "_PosixWriter":
        return _PosixWriter(self, key, self._path(key))

    def read(self, key: str, offset: int = 0, length: int | None = None) -> bytes:
        try:
            with open(self._path(key), "rb") as f:
                if offset:
                    f.seek(offset)
                return f.read() if length is None else f.read(length)
        except FileNotFoundError:
            raise
        except OSError as exc:
            raise StorageError(f"cannot read {self._path(key)}: {exc.strerror}") from None

    def open(self, key: str) -> BinaryIO:
        return open(self._path(key), "rb")

    def stat(self, key: str) -> ObjectInfo | None:
        try:
            st = os.stat(self._path(key))
        except FileNotFoundError:
            return None
        return ObjectInfo(key, st.st_size, st.st_mtime)

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        # walk from the deepest directory that every matching key lies under
        directory = prefix.rsplit("/", 1)[0] if "/" in prefix else ""
        start = self._path(directory) if directory else self.root
        for dirpath, _dirs, files in os.walk(start):
            for name in files:
                if TMP_MARK in name:
                    continue
                full = os.path.join(dirpath, name)
                key = os.path.relpath(full, self.root)
                if not key.startswith(prefix):
                    continue
                try:
                    st = os.stat(full)
                except FileNotFoundError:
                    continue
                yield ObjectInfo(key, st.st_size, st.st_mtime)

    def remove(self, key: str) -> None:
        path = self._path(key)
        try:
            os.unlink(path)
        except FileNotFoundError:
            return
        _fsync_dir(os.path.dirname(path))  # removals are ordered (un-commit first): make them durable

    def remove_prefix(self, prefix: str) -> None:
        """Remove every object under prefix, temporary files included, and empty dirs."""
        base = self._path(prefix.rstrip("/"))
        if not os.path.isdir(base):
            return
        for dirpath, dirs, files in os.walk(base, topdown=False):
            for name in files:
                os.unlink(os.path.join(dirpath, name))
            for name in dirs:
                os.rmdir(os.path.join(dirpath, name))
        os.rmdir(base)

    def local_path(self, key: str) -> str:
        return self._path(key)

    def remove_stale_temporary(self, prefix: str, older_than: float) -> int:
        """Temporary files of writers killed long ago (never visible to list)."""
        removed = 0
        cutoff = time.time() - older_than
        for dirpath, _dirs, files in os.walk(self._path(prefix.rstrip("/")) if prefix else self.root):
            for name in files:
                full = os.path.join(dirpath, name)
                try:
                    if TMP_MARK in name and os.stat(full).st_mtime < cutoff:
                        os.unlink(full)
                        removed += 1
                except FileNotFoundError:
                    continue
        return removed


class _PosixWriter:
    def __init__(self, storage: PosixStorage, key: str, path: str) -> None:
        self.storage = storage
        self.key = key
        self.path = path
        directory = os.path.dirname(path)
        storage.makedirs(directory)
        self.tmp = os.path.join(directory, f".{os.path.basename(path)}{TMP_MARK}{os.urandom(6).hex()}")
        self.fd = os.open(self.tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, FILE_MODE)
        self.offset = 0

    def write(self, data: bytes | memoryview) -> None:
        view = memoryview(data)
        while view:
            n = os.write(self.fd, view)
            view = view[n:]
            self.offset += n

    def tell(self) -> int:
        return self.offset

    def commit(self, overwrite: bool = True) -> bool:
        try:
            os.fsync(self.fd)
        finally:
            os.close(self.fd)
            self.fd = -1
        self.storage.own(self.tmp)
        try:
            if overwrite:
                os.replace(self.tmp, self.path)
            else:
                try:
                    os.link(self.tmp, self.path)
                except FileExistsError:
                    return False
                finally:
                    os.unlink(self.tmp)
        except BaseException:
            self.abort()
            raise
        _fsync_dir(os.path.dirname(self.path))
        return True

    def abort(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        try:
            os.unlink(self.tmp)
        except FileNotFoundError:
            pass

    def __enter__(self) -> "_PosixWriter":
        return self

    def __exit__(self, exc_type: object, *_: object) -> None:
        if self.fd >= 0:
            self.abort()


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    except OSError as exc:  # some filesystems refuse fsync on directories
        if exc.errno not in (errno.EINVAL, errno.EBADF):
            raise
    finally:
        os.close(fd)
