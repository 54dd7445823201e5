"""Delta restore: reuse the files of a stopped cluster, rewrite only what differs."""

from __future__ import annotations

import os
import shutil
import threading
from dataclasses import dataclass
from typing import Any

from pgsafe import codec
from pgsafe.errors import RestoreError
from pgsafe.ops.filecopy import read_full
from pgsafe.repo.manifest import DIGEST_SIZE, FileEntry, block_digests


def require_stopped(target_dir: str) -> None:
    """Delta restore rewrites a data directory in place: never under a running server."""
    pidfile = os.path.join(target_dir, "postmaster.pid")
    try:
        with open(pidfile) as f:
            pid = int(f.readline().strip() or 0)
    except (FileNotFoundError, ValueError):
        return
    if pid > 0:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return  # stale pid file of a crashed server
        except PermissionError:
            pass
        raise RestoreError(
            f"a PostgreSQL server (pid {pid}) is running on {target_dir}; stop it before a delta restore"
        )


def remove_extra(target_dir: str, manifest: dict[str, Any], locations: dict[int, str]) -> int:
    """Delta restore: remove what the backup does not have (files, then directories)."""
    keep_files = {f["path"] for f in manifest["files"]}
    keep_dirs = {d["path"] for d in manifest["directories"]}
    removed = 0
    for dirpath, dirs, files in os.walk(target_dir, topdown=False, followlinks=False):
        rel_dir = os.path.relpath(dirpath, target_dir)
        rel_dir = "" if rel_dir == "." else rel_dir
        for name in files + [d for d in dirs if os.path.islink(os.path.join(dirpath, d))]:
            rel = f"{rel_dir}/{name}" if rel_dir else name
            if rel in keep_files or rel in keep_dirs:
                continue
            os.unlink(os.path.join(dirpath, name))
            removed += 1
        for name in dirs:
            full = os.path.join(dirpath, name)
            rel = f"{rel_dir}/{name}" if rel_dir else name
            if not os.path.islink(full) and rel not in keep_dirs:
                os.rmdir(full)
    # in a tablespace, only this cluster's version directory is ours: another major
    # version's (pg_upgrade leaves them side by side) is left alone
    for oid, location in locations.items():
        prefix = f"pg_tblspc/{oid}"
        ours = {d.split("/")[2] for d in keep_dirs if d.startswith(prefix + "/") and d.count("/") >= 2}
        for version_dir in ours:
            root = os.path.join(location, version_dir)
            for dirpath, dirs, files in os.walk(root, topdown=False):
                rel_dir = f"{prefix}/{os.path.relpath(dirpath, location)}"
                for name in files:
                    if f"{rel_dir}/{name}" not in keep_files:
                        os.unlink(os.path.join(dirpath, name))
                        removed += 1
                for name in dirs:
                    if f"{rel_dir}/{name}" not in keep_dirs:
                        shutil.rmtree(os.path.join(dirpath, name), ignore_errors=True)
    return removed


@dataclass
class DeltaStats:
    kept: int = 0
    written: int = 0
    bytes_written: int = 0
    removed: int = 0

    def __post_init__(self) -> None:
        self._lock = threading.Lock()

    def add(self, kept: int = 0, written: int = 0, bytes_written: int = 0, removed: int = 0) -> None:
        with self._lock:
            self.kept += kept
            self.written += written
            self.bytes_written += bytes_written
            self.removed += removed


def same_small(path: str, f: FileEntry) -> bool:
    try:
        with open(path, "rb") as src:
            data = src.read(f.size + 1)
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        return False
    return len(data) == f.size and codec.digest_hex(data) == f.checksum


def differing_blocks(path: str, f: FileEntry, blockmap: bytes) -> set[int] | None:
    """Blocks of an existing file that differ from the backup's block map; None when
    the file is absent (write it all)."""
    assert f.blockmap is not None
    first, count = f.blockmap
    want = blockmap[first * DIGEST_SIZE:(first + count) * DIGEST_SIZE]
    try:
        src = open(path, "rb", buffering=0)
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        return None
    differing: set[int] = set()
    with src:
        index = 0
        while chunk := read_full(src, codec.CHUNK):
            for digest in block_digests(chunk):
                if index >= count or want[index * DIGEST_SIZE:(index + 1) * DIGEST_SIZE] != digest:
                    differing.add(index)
                index += 1
    differing.update(range(index, count))  # blocks missing at the end
    if os.path.getsize(path) != f.size:
        differing.add(max(count - 1, 0))
    return differing
