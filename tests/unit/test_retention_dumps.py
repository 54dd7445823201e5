"""Retention of logical backups (dumps): a pure function of the dump catalog."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

from pgsafe.policy.retention import RetentionPolicy, plan_dump_expiry

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=timezone.utc)


def dump(dump_id: str, database: str | None, days_ago: float, status: str = "complete") -> dict[str, Any]:
    t = (NOW - timedelta(days=days_ago)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return {"id": dump_id, "kind": "database" if database else "globals", "database": database,
            "status": status, "start_time": t, "stop_time": t}


# oldest first, as the catalog lists them
CATALOG = [
    dump("A1", "app", 30), dump("S1", "shop", 30), dump("G1", None, 30),
    dump("A2", "app", 20), dump("A3", "app", 10, status="failed"), dump("S2", "shop", 10), dump("G2", None, 10),
    dump("A4", "app", 1),
]


def expired(policy: RetentionPolicy, pinned: set[str] | None = None) -> list[str]:
    return [e.backup_id for e in plan_dump_expiry(CATALOG, policy, pinned or set(), NOW)]


def test_nothing_configured_keeps_every_complete_dump() -> None:
    assert expired(RetentionPolicy()) == ["A3"], "only the superseded failed record goes"


def test_count_is_per_database_and_globals_count_apart() -> None:
    assert expired(RetentionPolicy(dump=1)) == ["A1", "S1", "G1", "A2", "A3"]
    assert expired(RetentionPolicy(dump=2)) == ["A1", "A3"]


def test_days_keep_the_window_and_the_newest_dump_before_it() -> None:
    # window: the last 15 days. app: A4 inside, A2 the newest before; shop: S2 inside, S1 before
    assert expired(RetentionPolicy(dump_days=15)) == ["A1", "A3"]
    # window: the last 5 days: only A4 inside; A2, S2 and G2 are the newest before it
    assert expired(RetentionPolicy(dump_days=5)) == ["A1", "S1", "G1", "A3"]


def test_either_rule_keeps_a_dump() -> None:
    assert expired(RetentionPolicy(dump=1, dump_days=15)) == ["A1", "A3"]


def test_pinned_dumps_stay_and_physical_rules_do_not_apply() -> None:
    assert expired(RetentionPolicy(dump=1), pinned={"A1"}) == ["S1", "G1", "A2", "A3"]
    assert expired(RetentionPolicy(full=1, full_days=1, diff=1)) == ["A3"]


def test_a_failed_dump_without_a_newer_complete_one_is_kept() -> None:
    catalog = [dump("A1", "app", 3), dump("A2", "app", 1, status="failed")]
    assert plan_dump_expiry(catalog, RetentionPolicy(dump=1), set(), NOW) == []
