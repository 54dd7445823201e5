"""Walking a data directory and its tablespaces for a base backup."""

from __future__ import annotations

import grp
import os
import pwd
import stat
from dataclasses import dataclass
from typing import Any

from pgsafe.pg import layout


@dataclass(frozen=True, slots=True)
class SourceFile:
    path: str  # relative to PGDATA; tablespace files as pg_tblspc/<oid>/...
    abs_path: str
    size: int
    mtime: float
    mode: int


def scan_data_directory(
    pgdata: str, version_num: int
) -> tuple[list[SourceFile], list[dict[str, Any]], list[dict[str, Any]], dict[str, Any]]:
    """Files to copy, directories to recreate, tablespaces and the owner of PGDATA."""
    files: list[SourceFile] = []
    dirs: list[dict[str, Any]] = []
    tablespaces: list[dict[str, Any]] = []
    version_prefix = f"PG_{version_num // 10000}_"

    def walk(abs_dir: str, rel_dir: str) -> None:
        try:
            entries = sorted(os.scandir(abs_dir), key=lambda e: e.name)
        except FileNotFoundError:
            return
        names = [e.name for e in entries]
        skip = layout.unlogged_skips(rel_dir, names)
        for entry in entries:
            rel = f"{rel_dir}/{entry.name}" if rel_dir else entry.name
            try:
                st = entry.stat(follow_symlinks=True)
            except FileNotFoundError:
                continue
            if rel_dir == "pg_tblspc" and entry.is_symlink():
                location = os.readlink(entry.path)
                tablespaces.append({"oid": int(entry.name), "location": location})
                dirs.append({"path": rel, "mode": stat.S_IMODE(st.st_mode)})
                for sub in sorted(os.listdir(entry.path)):
                    if sub.startswith(version_prefix):
                        sub_abs = os.path.join(entry.path, sub)
                        dirs.append({"path": f"{rel}/{sub}", "mode": stat.S_IMODE(os.stat(sub_abs).st_mode)})
                        walk(sub_abs, f"{rel}/{sub}")
                continue
            if stat.S_ISDIR(st.st_mode):
                if layout.excluded_dir(entry.name):
                    continue
                dirs.append({"path": rel, "mode": stat.S_IMODE(st.st_mode)})
                if layout.excluded_contents(rel):
                    if rel == "pg_wal":
                        dirs.append({"path": "pg_wal/archive_status", "mode": stat.S_IMODE(st.st_mode)})
                    continue
                walk(entry.path, rel)
            elif stat.S_ISREG(st.st_mode):
                if layout.excluded_file(rel, entry.name) or entry.name in skip:
                    continue
                files.append(SourceFile(rel, entry.path, st.st_size, st.st_mtime, stat.S_IMODE(st.st_mode)))

    walk(pgdata, "")
    st = os.stat(pgdata)
    owner = {
        "uid": st.st_uid,
        "gid": st.st_gid,
        "user": _name(pwd.getpwuid, st.st_uid),
        "group": _name(grp.getgrgid, st.st_gid),
        "mode": stat.S_IMODE(st.st_mode),
    }
    return files, dirs, tablespaces, owner


def _name(lookup: Any, ident: int) -> str | None:
    try:
        return str(lookup(ident)[0])
    except KeyError:
        return None
