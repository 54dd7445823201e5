"""Walking a data directory and its tablespaces for a base backup.

The walk is streamed: files come out one at a time, in path order within each
directory, so that a cluster of 100,000 relations costs no memory per file here.
"""

from __future__ import annotations

import grp
import os
import pwd
import stat
from dataclasses import dataclass
from typing import Any, Iterator

from pgsafe.pg import layout


@dataclass(frozen=True, slots=True)
class SourceFile:
    path: str  # relative to PGDATA; tablespace files as pg_tblspc/<oid>/... (through its link)
    size: int
    mtime: int
    mode: int


class DataDirectory:
    """PGDATA and its tablespaces: `files()` walks them; once it is exhausted,
    `directories` and `tablespaces` hold what the walk met."""

    def __init__(self, pgdata: str, version_num: int) -> None:
        self.pgdata = pgdata
        self.directories: list[dict[str, Any]] = []
        self.tablespaces: list[dict[str, Any]] = []
        self._version_prefix = f"PG_{version_num // 10000}_"
        st = os.stat(pgdata)
        self.owner = {
            "uid": st.st_uid,
            "gid": st.st_gid,
            "user": _name(pwd.getpwuid, st.st_uid),
            "group": _name(grp.getgrgid, st.st_gid),
            "mode": stat.S_IMODE(st.st_mode),
        }

    def abs_path(self, path: str) -> str:
        return os.path.join(self.pgdata, path)

    def files(self) -> Iterator[SourceFile]:
        yield from self._walk(self.pgdata, "")

    def _walk(self, abs_dir: str, rel_dir: str) -> Iterator[SourceFile]:
        try:
            names = sorted(os.listdir(abs_dir))  # names only: a DirEntry per file would cost ~1 kB each
        except FileNotFoundError:
            return
        skip = layout.unlogged_skips(rel_dir, names)
        dirs = self.directories
        for name in names:
            rel = f"{rel_dir}/{name}" if rel_dir else name
            abs_path = os.path.join(abs_dir, name)
            try:
                st = os.stat(abs_path)
            except FileNotFoundError:
                continue
            if rel_dir == "pg_tblspc" and os.path.islink(abs_path):
                self.tablespaces.append({"oid": int(name), "location": os.readlink(abs_path)})
                dirs.append({"path": rel, "mode": stat.S_IMODE(st.st_mode)})
                for sub in sorted(os.listdir(abs_path)):
                    if sub.startswith(self._version_prefix):
                        sub_abs = os.path.join(abs_path, sub)
                        dirs.append({"path": f"{rel}/{sub}", "mode": stat.S_IMODE(os.stat(sub_abs).st_mode)})
                        yield from self._walk(sub_abs, f"{rel}/{sub}")
                continue
            if stat.S_ISDIR(st.st_mode):
                if layout.excluded_dir(name):
                    continue
                dirs.append({"path": rel, "mode": stat.S_IMODE(st.st_mode)})
                if layout.excluded_contents(rel):
                    if rel == "pg_wal":
                        dirs.append({"path": "pg_wal/archive_status", "mode": stat.S_IMODE(st.st_mode)})
                    continue
                yield from self._walk(abs_path, rel)
            elif stat.S_ISREG(st.st_mode):
                if layout.excluded_file(rel, name) or name in skip:
                    continue
                yield SourceFile(rel, st.st_size, int(st.st_mtime), stat.S_IMODE(st.st_mode))


def _name(lookup: Any, ident: int) -> str | None:
    try:
        return str(lookup(ident)[0])
    except KeyError:
        return None
