"""The non-exclusive low-level backup API, on a connection held for the whole backup.

PostgreSQL 15 renamed pg_start_backup/pg_stop_backup to pg_backup_start/pg_backup_stop
and dropped the exclusive mode; older servers take the old names with exclusive=false.
If the connection drops, the server aborts the backup by itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pgsafe.pg.conn import query
from pgsafe.pg.wal import parse_lsn


@dataclass(frozen=True)
class BackupStart:
    lsn: int
    timeline: int
    time: datetime


@dataclass(frozen=True)
class BackupStop:
    lsn: int
    time: datetime
    backup_label: str
    tablespace_map: str
    # the transaction snapshot just after the stop: every xid below xmax and not in xip
    # was finished by then, so a recovery target xid is reachable only if it is not
    snapshot_xmax: int
    snapshot_xip: list[int]


def start_backup(conn: Any, label: str, version_num: int, fast: bool) -> BackupStart:
    if version_num >= 150000:
        sql = "select pg_backup_start(%s, %s)::text"
    else:
        sql = "select pg_start_backup(%s, %s, false)::text"
    (lsn_text,) = query(conn, sql, (label, fast))[0]
    ((timeline, now),) = query(
        conn, "select timeline_id, clock_timestamp() from pg_control_checkpoint()"
    )
    return BackupStart(parse_lsn(lsn_text), int(timeline), now)


def stop_backup(conn: Any, version_num: int) -> BackupStop:
    # wait_for_archive=false: pgsafe waits for the WAL in its own repository, with a timeout
    if version_num >= 150000:
        sql = "select lsn::text, labelfile, spcmapfile from pg_backup_stop(false)"
    else:
        sql = "select lsn::text, labelfile, spcmapfile from pg_stop_backup(false, false)"
    lsn_text, label, spcmap = query(conn, sql)[0]
    snap_sql = (
        "select clock_timestamp(), pg_snapshot_xmax(s)::text::bigint,"
        " array(select x::text::bigint from pg_snapshot_xip(s) x) from pg_current_snapshot() s"
    )
    now, xmax, xip = query(conn, snap_sql)[0]
    return BackupStop(parse_lsn(lsn_text), now, label or "", spcmap or "", int(xmax), list(xip))


def switch_wal(conn: Any) -> str:
    """Force a new WAL segment (after a small record, so the switch is never a no-op);
    returns the name of the segment that was completed."""
    query(conn, "select pg_create_restore_point('pgsafe-switch')")
    return str(query(conn, "select pg_walfile_name(pg_switch_wal())")[0][0])
