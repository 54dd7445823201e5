"""Finding PostgreSQL's programs (pg_dump, pg_restore, pg_dumpall, psql, postgres) of
a given major version.

pg_dump refuses a server newer than itself and its archives are read best by the
pg_restore of the same release, so pgsafe runs the programs of the server's major
version. They are looked for, in order, in ``$PGSAFE_PG_BIN``, the packagers' usual
places for that major version, then ``$PATH``; each candidate's ``--version`` must
report that major version.

To support a new packaging layout, add its directory pattern to ``BIN_DIRS``.
"""

from __future__ import annotations

import os
import re
import subprocess
from functools import lru_cache

from pgsafe.errors import ToolMissing

BIN_DIRS = (
    "/usr/lib/postgresql/{major}/bin",        # Debian, Ubuntu (PGDG apt)
    "/usr/pgsql-{major}/bin",                 # RHEL, Rocky, Fedora (PGDG yum)
    "/usr/local/pgsql-{major}/bin",
    "/opt/homebrew/opt/postgresql@{major}/bin",
    "/usr/local/opt/postgresql@{major}/bin",
    "/usr/local/pgsql/bin",                   # built from source
)
_VERSION = re.compile(r"\(PostgreSQL\)\s+(\d+)(?:\.(\d+))?")


def find_tool(name: str, major: int) -> str:
    """Absolute path of program `name` of PostgreSQL `major`; ToolMissing names what
    is missing and where it was looked for."""
    found, looked = _search(name, major)
    if found is not None:
        return found
    package = "postgresql" if name in ("postgres", "pg_ctl") else "postgresql-client"
    raise ToolMissing(
        f"{name} of PostgreSQL {major} not found (looked in {', '.join(looked)}); install the "
        f"PostgreSQL {major} programs (e.g. {package}-{major}) or set PGSAFE_PG_BIN to their directory"
    )


def tool_version(path: str) -> tuple[int, str]:
    """(major, full version text) reported by `path --version`, e.g. (15, '15.18')."""
    major, text = _version(path)
    if major is None:
        raise ToolMissing(f"{path} --version did not report a PostgreSQL version")
    return major, text


@lru_cache(maxsize=None)
def _search(name: str, major: int) -> tuple[str | None, tuple[str, ...]]:
    dirs: list[str] = []
    if os.environ.get("PGSAFE_PG_BIN"):
        dirs.append(os.environ["PGSAFE_PG_BIN"])
    dirs.extend(d.format(major=major) for d in BIN_DIRS)
    dirs.extend(p for p in os.environ.get("PATH", "").split(os.pathsep) if p)
    looked: list[str] = []
    seen: set[str] = set()
    for directory in dirs:
        path = os.path.join(directory, name)
        real = os.path.realpath(path)
        if directory in looked or real in seen:
            continue
        looked.append(directory)
        if not (os.path.isfile(path) and os.access(path, os.X_OK)):
            continue
        seen.add(real)
        if _version(path)[0] == major:
            return path, tuple(looked)
    return None, tuple(looked)


@lru_cache(maxsize=None)
def _version(path: str) -> tuple[int | None, str]:
    try:
        out = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=30,
                             stdin=subprocess.DEVNULL).stdout
    except (OSError, subprocess.SubprocessError):
        return None, ""
    m = _VERSION.search(out)
    if not m:
        return None, out.strip()
    return int(m.group(1)), m.group(1) + (f".{m.group(2)}" if m.group(2) else "")
