"""Choosing the backup to restore for a recovery target: a pure function of the catalog."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from pgsafe.errors import NoBackup, RestoreError, UsageError
from pgsafe.pg.recovery import RecoveryTarget
from pgsafe.pg.wal import HistoryEntry, parse_lsn


def parse_target_time(text: str) -> datetime:
    """PostgreSQL accepts many timestamp spellings; we accept ISO 8601 (space or T,
    optional fraction, optional zone) so that we can compare with backup times.
    A time without a zone is taken as this machine's local time."""
    value = text.strip()
    if value.endswith(("+00", "-00")) or (len(value) > 3 and value[-3] in "+-" and value[-2:].isdigit()):
        value += ":00"
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise UsageError(
            f"--target-time {text!r} is not a timestamp; use e.g. '2026-11-25 18:30:00+00'"
        ) from None
    return parsed if parsed.tzinfo else parsed.astimezone()


def validate_target(target: RecoveryTarget) -> None:
    """Reject bad values before anything is written."""
    if target.kind == "time":
        parse_target_time(str(target.value))
    elif target.kind == "xid":
        if not str(target.value).isdigit():
            raise UsageError(f"--target-xid {target.value!r} is not a transaction id (a positive integer)")
    elif target.kind == "lsn":
        try:
            parse_lsn(str(target.value))
        except ValueError:
            raise UsageError(f"--target-lsn {target.value!r} is not an LSN such as 0/3000060") from None
    elif target.kind == "name" and not target.value:
        raise UsageError("--target-name needs a restore point name")
    tl = target.timeline
    if tl is not None and tl not in ("latest", "current") and not tl.isdigit():
        raise UsageError(f"--target-timeline {tl!r}: use a timeline number, 'current' or 'latest'")


def reaches(backup: dict[str, Any], target: RecoveryTarget) -> bool:
    """Can recovery from this backup stop at the target? Recovery becomes consistent
    at the backup's stop point, so the target must lie at or after it."""
    if target.kind == "time":
        stop = datetime.fromisoformat(backup["stop_time"].replace("Z", "+00:00"))
        return stop <= parse_target_time(str(target.value))
    if target.kind == "lsn":
        return parse_lsn(backup["stop_lsn"]) <= parse_lsn(str(target.value))
    if target.kind == "xid":
        xmax = int(backup["snapshot_xmax"])
        xid = _full_xid(int(str(target.value)), xmax)
        return xid >= xmax or xid in set(backup.get("snapshot_xip", []))
    return True


def on_timeline_path(backup: dict[str, Any], timeline: int, history: list[HistoryEntry]) -> bool:
    """Can recovery from this backup follow `timeline`? Yes if the backup is on it, or
    on an ancestor that it left after the backup's consistent point."""
    tl = int(backup["timeline"])
    if tl == timeline:
        return True
    for entry in history:
        if entry.parent_timeline == tl:
            return parse_lsn(backup["stop_lsn"]) <= entry.switch_lsn
    return False


def _full_xid(xid: int, near: int) -> int:
    """A 32-bit xid (what recovery_target_xid takes) as the 64-bit xid closest to
    `near` (the backup's snapshot, which carries the epoch)."""
    if xid >= 1 << 32:
        return xid
    full = (near & ~0xFFFFFFFF) | xid
    if full > near + (1 << 31):
        full -= 1 << 32
    elif full < near - (1 << 31):
        full += 1 << 32
    return full


def choose_backup(catalog: list[dict[str, Any]], target: RecoveryTarget, set_id: str | None,
                  timeline: int | None = None, history: list[HistoryEntry] | None = None) -> dict[str, Any]:
    """The named backup (which must reach the target), else the newest that does.
    With `timeline` (the timeline recovery will follow, with its history), only
    backups on its path qualify."""
    if not catalog:
        raise NoBackup("the repository holds no backup of this cluster; run `pgsafe backup` first")
    if set_id is not None:
        for backup in catalog:
            if backup["id"] == set_id:
                if not reaches(backup, target):
                    raise RestoreError(
                        f"backup {set_id} ends after the recovery target; choose an older backup or drop --set"
                    )
                return backup
        raise NoBackup(f"no backup {set_id!r}; `pgsafe info` lists the backups")
    candidates = catalog
    if timeline is not None:
        candidates = [b for b in catalog if on_timeline_path(b, timeline, history or [])]
        if not candidates:
            raise NoBackup(f"no backup lies on the path of timeline {timeline}; `pgsafe info` lists the backups")
    for backup in reversed(candidates):
        if reaches(backup, target):
            return backup
    oldest = catalog[0]
    raise NoBackup(
        f"no backup can reach {target.kind} target {target.value!r}: the oldest backup "
        f"{oldest['id']} ends at {oldest['stop_time']} (LSN {oldest['stop_lsn']})"
    )


def utc_now() -> datetime:
    return datetime.now(timezone.utc)
