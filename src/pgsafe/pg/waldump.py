"""Finding a named restore point in WAL with the server's pg_waldump.

A recovery to a restore point must start from a backup that ended before the point;
the name alone does not say where that is, so pgsafe reads the WAL to find out.
"""

from __future__ import annotations

import re
import subprocess

from pgsafe.pg.wal import format_lsn, parse_lsn

_RESTORE_POINT = re.compile(r"lsn: ([0-9A-F]+/[0-9A-F]+),.*desc: RESTORE_POINT (.*)$")


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
