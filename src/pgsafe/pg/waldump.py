"""Finding a named restore point in WAL with the server's pg_waldump.

A recovery to a restore point must start from a backup that ended before the point;
the name alone does not say where that is, so pgsafe reads the WAL to find out.
"""

from __future__ import annotations

import os
import re
import subprocess

from pgsafe.errors import ToolMissing
from pgsafe.pg.wal import format_lsn, parse_lsn

_RESTORE_POINT = re.compile(r"lsn: ([0-9A-F]+/[0-9A-F]+),.*desc: RESTORE_POINT (.*)$")


def server_binary(name: str, pg_version: int) -> str:
    """A PostgreSQL program of the server's major version (Debian and RPM layouts)."""
    major = pg_version // 10000
    for directory in (f"/usr/lib/postgresql/{major}/bin", f"/usr/pgsql-{major}/bin"):
        path = os.path.join(directory, name)
        if os.access(path, os.X_OK):
            return path
    raise ToolMissing(f"{name} of PostgreSQL {major} not found (looked in /usr/lib/postgresql/{major}/bin "
                      f"and /usr/pgsql-{major}/bin); install the PostgreSQL {major} server package")


def restore_points(waldump: str, segment_dir: str, timeline: int, start_lsn: int, end_lsn: int) -> list[tuple[int, str]]:
    """(lsn, name) of every restore point between the two LSNs in the segments of a
    directory. pg_waldump stops with an error at the end of what it has: not ours to
    report."""
    out = subprocess.run(
        [waldump, "-p", segment_dir, "-t", str(timeline), "-r", "XLOG", "-s", format_lsn(start_lsn),
         "-e", format_lsn(end_lsn)],
        capture_output=True, text=True,
    )
    found = []
    for line in out.stdout.splitlines():
        m = _RESTORE_POINT.search(line)
        if m:
            found.append((parse_lsn(m.group(1)), m.group(2).strip()))
    return found
