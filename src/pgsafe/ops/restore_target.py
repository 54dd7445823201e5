"""What a restore starts from: the timeline recovery follows, and for a named restore
point, the newest backup that ends before it."""

from __future__ import annotations

import os
import tempfile
from typing import Any

from pgsafe.pg import wal
from pgsafe.pg.recovery import RecoveryTarget
from pgsafe.repo.repository import Repository


def target_timeline(repo: Repository, cluster: str, target: RecoveryTarget) -> tuple[int | None, list[Any]]:
    """The timeline recovery will follow (None: each backup's own), with its history."""
    if target.timeline == "current":
        return None, []
    histories = sorted(wal.timeline_of(n) for n in repo.wal_files(cluster) if wal.is_history(n))
    if target.timeline is None or target.timeline == "latest":
        if not histories:
            return None, []
        timeline = histories[-1]
    else:
        timeline = int(target.timeline)
    if timeline == 1 or timeline not in histories:
        return timeline, []
    text = repo.codec.decode(repo.storage.read(repo.wal_key(cluster, wal.history_name(timeline)))).decode()
    return timeline, wal.parse_history(text)


def backup_before_restore_point(repo: Repository, cluster: str, catalog: list[dict[str, Any]],
                                 name: str) -> str | None:
    """The newest backup that ends before the restore point, found by reading the
    archived WAL after each backup, newest first. None (the newest backup) when the
    point is not found: recovery will say so."""
    from pgsafe.pg.tools import find_tool
    from pgsafe.pg.waldump import restore_points

    if not catalog:
        return None
    ident = repo.cluster_identity(cluster)
    waldump = find_tool("pg_waldump", ident.major)
    seg_size = ident.wal_segment_size
    archived = set(repo.wal_files(cluster))
    end = None  # scan [backup stop, previous backup stop) intervals
    for backup in reversed(catalog):
        tl, first = wal.parse_segment_name(backup["wal_stop"], seg_size)
        start_lsn = wal.parse_lsn(backup["stop_lsn"])
        with tempfile.TemporaryDirectory(prefix="pgsafe-waldump-") as tmp:
            segno = first
            while end is None or segno <= end:
                seg = wal.segment_name(tl, segno, seg_size)
                if seg not in archived:
                    break
                with open(os.path.join(tmp, seg), "wb") as f:
                    f.write(repo.codec.decode(repo.storage.read(repo.wal_key(cluster, seg))))
                segno += 1
            last_lsn = wal.segment_start_lsn(segno, seg_size)
            if segno > first and any(n == name for _, n in restore_points(waldump, tmp, tl, start_lsn, last_lsn)):
                return str(backup["id"])
        end = first
    return None
