"""Retention: which backups and which WAL expire. Pure functions of the catalog.

Rules (see docs/RETENTION.md for examples):
- A full backup is kept when it is among the newest `retention_full`, or when it is
  needed to recover to any moment of the last `retention_full_days` (every full
  finished within the window, plus the newest one finished before it). With both
  set, a full is kept if either rule keeps it; with neither, no full expires.
- Differential backups: the newest `retention_diff` are kept, older ones expire.
- A backup that depends on an expired backup (its parent chain, or any backup whose
  stored objects it reads) expires with it.
- Pinned backups are kept, and so is everything they depend on.
- WAL older than the start of the oldest kept backup expires, on every timeline;
  timeline history files are always kept.
- Logical backups (dumps) are counted per database (the globals count as one more):
  a dump is kept when it is among the newest `retention_dump` complete dumps of its
  database, or when it is needed to restore a state of the last `retention_dump_days`
  (every dump finished within the window, plus the newest one finished before it).
  With both set, either keeps it; with neither, no dump expires. A failed dump (a
  record without data) expires once a newer dump of its database has completed.
  Pinned dumps are kept. Physical rules and logical rules never affect each other.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any


@dataclass(frozen=True)
class RetentionPolicy:
    full: int | None = None
    full_days: float | None = None
    diff: int | None = None
    dump: int | None = None
    dump_days: float | None = None

    @property
    def configured(self) -> bool:
        return self.full is not None or self.full_days is not None or self.diff is not None

    @property
    def dumps_configured(self) -> bool:
        return self.dump is not None or self.dump_days is not None


@dataclass(frozen=True)
class Expiry:
    backup_id: str
    reason: str


def _time(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def dependencies(backup: dict[str, Any]) -> set[str]:
    deps = set(backup.get("references") or [])
    if backup.get("parent"):
        deps.add(backup["parent"])
    return deps


def ancestors(catalog: list[dict[str, Any]], ids: set[str]) -> set[str]:
    """Every backup that the given ones need, directly or through others."""
    by_id = {b["id"]: b for b in catalog}
    found: set[str] = set()
    todo = list(ids)
    while todo:
        b = by_id.get(todo.pop())
        if b is None:
            continue
        for dep in dependencies(b) - found:
            found.add(dep)
            todo.append(dep)
    return found


def dependents(catalog: list[dict[str, Any]], backup_id: str) -> list[str]:
    """Every backup that needs backup_id, directly or through others, oldest first."""
    found: set[str] = {backup_id}
    changed = True
    while changed:
        changed = False
        for b in catalog:
            if b["id"] not in found and dependencies(b) & found:
                found.add(b["id"])
                changed = True
    return [b["id"] for b in catalog if b["id"] in found and b["id"] != backup_id]


def plan_expiry(catalog: list[dict[str, Any]], policy: RetentionPolicy, pinned: set[str],
                now: datetime) -> list[Expiry]:
    """Backups to remove, with the reason for each (catalog oldest first)."""
    reasons: dict[str, str] = {}
    fulls = [b for b in catalog if b["type"] == "full"]
    if policy.full is not None or policy.full_days is not None:
        kept: set[str] = set()
        if policy.full is not None:
            kept.update(b["id"] for b in fulls[-policy.full:])
        if policy.full_days is not None:
            since = now - timedelta(days=policy.full_days)
            recent = [b for b in fulls if _time(b["stop_time"]) >= since]
            older = [b for b in fulls if _time(b["stop_time"]) < since]
            kept.update(b["id"] for b in recent)
            if older:
                kept.add(older[-1]["id"])
        for b in fulls:
            if b["id"] not in kept:
                reasons[b["id"]] = _full_reason(policy)
    if policy.diff is not None:
        diffs = [b for b in catalog if b["type"] == "diff"]
        for b in diffs[:-policy.diff] if len(diffs) > policy.diff else []:
            reasons.setdefault(b["id"], f"retention_diff = {policy.diff}: older than the newest {policy.diff} diff backups")
    # dependents of an expired backup go with it
    for b in catalog:
        if b["id"] in reasons:
            continue
        gone = sorted(dependencies(b) & set(reasons))
        if gone:
            reasons[b["id"]] = f"depends on expired backup {gone[0]}"
    # pinned backups, and what they need, stay
    keep = set(pinned) | ancestors(catalog, pinned)
    return [Expiry(b["id"], reasons[b["id"]]) for b in catalog if b["id"] in reasons and b["id"] not in keep]


def _full_reason(policy: RetentionPolicy) -> str:
    parts = []
    if policy.full is not None:
        parts.append(f"retention_full = {policy.full}")
    if policy.full_days is not None:
        parts.append(f"retention_full_days = {policy.full_days:g}")
    return " and ".join(parts) + ": not needed for the retained full backups"


def wal_to_expire(names: list[str], oldest_kept_start: str | None) -> list[str]:
    """WAL files (segments, .partial, .backup) whose segment lies before the start of the
    oldest kept backup, on any timeline. History files are kept."""
    if oldest_kept_start is None:
        return []
    floor = oldest_kept_start[8:24]  # log and segment part: comparable across timelines
    return [n for n in names if not n.endswith(".history") and len(n) >= 24 and n[8:24] < floor]


def plan_dump_expiry(dumps: list[dict[str, Any]], policy: RetentionPolicy, pinned: set[str],
                     now: datetime) -> list[Expiry]:
    """Dumps to remove, with the reason for each (catalog oldest first). Each dump
    belongs to its database (the globals, database null, form a group of their own)."""
    groups: dict[str | None, list[dict[str, Any]]] = {}
    for d in dumps:
        groups.setdefault(d.get("database") if d.get("kind") != "globals" else None, []).append(d)
    reasons: dict[str, str] = {}
    for database, members in groups.items():
        what = "the globals" if database is None else f"database {database}"
        complete = [d for d in members if d.get("status") == "complete"]
        newest_complete = max((_time(d["start_time"]) for d in complete), default=None)
        for d in members:
            if d.get("status") != "complete" and newest_complete is not None and \
                    _time(d["start_time"]) < newest_complete:
                reasons[d["id"]] = f"failed dump of {what}, superseded by a newer complete dump"
        if not policy.dumps_configured:
            continue
        kept: set[str] = set()
        if policy.dump is not None:
            kept.update(d["id"] for d in complete[-policy.dump:])
        if policy.dump_days is not None:
            since = now - timedelta(days=policy.dump_days)
            older = [d for d in complete if _time(d["stop_time"]) < since]
            kept.update(d["id"] for d in complete if _time(d["stop_time"]) >= since)
            if older:
                kept.add(older[-1]["id"])
        for d in complete:
            if d["id"] not in kept:
                reasons[d["id"]] = _dump_reason(policy, what)
    return [Expiry(d["id"], reasons[d["id"]]) for d in dumps if d["id"] in reasons and d["id"] not in pinned]


def _dump_reason(policy: RetentionPolicy, what: str) -> str:
    parts = []
    if policy.dump is not None:
        parts.append(f"retention_dump = {policy.dump}")
    if policy.dump_days is not None:
        parts.append(f"retention_dump_days = {policy.dump_days:g}")
    return " and ".join(parts) + f": not among the dumps kept for {what}"
