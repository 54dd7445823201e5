"""Retention and backup-choice policies: pure functions of the catalog."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from pgsafe.errors import NoBackup, RestoreError
from pgsafe.pg.recovery import RecoveryTarget
from pgsafe.policy.retention import RetentionPolicy, dependents, plan_expiry, wal_to_expire
from pgsafe.policy.target import choose_backup, parse_target_time

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=timezone.utc)


def backup(bid: str, kind: str, days_ago: float, parent: str | None = None, refs: list[str] | None = None,
           wal: str = "000000010000000000000010", xmax: int = 1000) -> dict:
    t = (NOW - timedelta(days=days_ago)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return {"id": bid, "type": kind, "parent": parent, "references": refs or ([parent] if parent else []),
            "start_time": t, "stop_time": t, "stop_lsn": "0/10000100", "wal_start": wal, "wal_stop": wal,
            "timeline": 1, "snapshot_xmax": xmax, "snapshot_xip": []}


def catalog() -> list[dict]:
    return [
        backup("F1", "full", 30),
        backup("I1", "incr", 29, "F1"),
        backup("F2", "full", 20),
        backup("D1", "diff", 19, "F2"),
        backup("I2", "incr", 18, "D1", ["F2", "D1"]),
        backup("D2", "diff", 17, "F2"),
        backup("F3", "full", 10),
        backup("I3", "incr", 1, "F3"),
    ]


def ids(plan) -> list[str]:
    return [e.backup_id for e in plan]


def test_no_policy_expires_nothing():
    assert plan_expiry(catalog(), RetentionPolicy(), set(), NOW) == []


def test_count_keeps_newest_fulls_and_drops_dependents():
    assert ids(plan_expiry(catalog(), RetentionPolicy(full=2), set(), NOW)) == ["F1", "I1"]
    plan = plan_expiry(catalog(), RetentionPolicy(full=1), set(), NOW)
    assert ids(plan) == ["F1", "I1", "F2", "D1", "I2", "D2"]
    assert "depends on expired backup" in plan[1].reason


def test_days_keep_the_full_that_covers_the_window_start():
    # window of 15 days: F3 (10 days) is inside; F2 (20 days) is the newest before it
    assert ids(plan_expiry(catalog(), RetentionPolicy(full_days=15), set(), NOW)) == ["F1", "I1"]
    # window of 5 days: no full inside; F3 is the one needed to reach its start
    assert ids(plan_expiry(catalog(), RetentionPolicy(full_days=5), set(), NOW)) == ["F1", "I1", "F2", "D1", "I2", "D2"]
    assert ids(plan_expiry(catalog(), RetentionPolicy(full_days=25), set(), NOW)) == []


def test_count_or_days_keeps_the_union():
    assert ids(plan_expiry(catalog(), RetentionPolicy(full=1, full_days=15), set(), NOW)) == ["F1", "I1"]


def test_diff_count_expires_older_diffs_with_their_incrementals():
    assert ids(plan_expiry(catalog(), RetentionPolicy(diff=1), set(), NOW)) == ["D1", "I2"]


def test_pinned_backup_and_its_dependencies_stay():
    plan = plan_expiry(catalog(), RetentionPolicy(full=1), {"I2"}, NOW)
    assert ids(plan) == ["F1", "I1", "D2"]


def test_dependents_closure():
    assert dependents(catalog(), "F2") == ["D1", "I2", "D2"]
    assert dependents(catalog(), "I3") == []


def test_wal_expiry_is_by_segment_position_and_keeps_history():
    names = ["000000010000000000000001", "000000010000000000000002.partial", "00000002.history",
             "000000020000000000000002", "000000020000000000000003", "000000010000000000000001.00000028.backup"]
    assert wal_to_expire(names, "000000020000000000000003") == [
        "000000010000000000000001", "000000010000000000000002.partial", "000000020000000000000002",
        "000000010000000000000001.00000028.backup"]
    assert wal_to_expire(names, None) == []


def test_choose_newest_reaching_time_lsn_and_xid():
    cat = [backup("F1", "full", 3, xmax=100), backup("F2", "full", 2, xmax=200), backup("F3", "full", 1, xmax=300)]
    t = (NOW - timedelta(days=1.5)).isoformat()
    assert choose_backup(cat, RecoveryTarget("time", t), None)["id"] == "F2"
    assert choose_backup(cat, RecoveryTarget("xid", "250"), None)["id"] == "F2"
    assert choose_backup(cat, RecoveryTarget("xid", "300"), None)["id"] == "F3"
    assert choose_backup(cat, RecoveryTarget(), None)["id"] == "F3"
    with pytest.raises(NoBackup):
        choose_backup(cat, RecoveryTarget("time", (NOW - timedelta(days=5)).isoformat()), None)
    with pytest.raises(RestoreError):
        choose_backup(cat, RecoveryTarget("time", t), "F3")
    with pytest.raises(NoBackup):
        choose_backup(cat, RecoveryTarget(), "nope")


def test_parse_target_time_spellings():
    assert parse_target_time("2026-11-25 12:00:00+00") == NOW
    assert parse_target_time("2026-11-25T12:00:00Z") == NOW
    assert parse_target_time("2026-11-25 13:00:00.000+01:00") == NOW


def test_xid_target_with_epoch():
    epoch = 3 << 32
    cat = [backup("F1", "full", 2, xmax=epoch + 1000), backup("F2", "full", 1, xmax=epoch + 2000)]
    assert choose_backup(cat, RecoveryTarget("xid", "1500"), None)["id"] == "F1"
    assert choose_backup(cat, RecoveryTarget("xid", str(epoch + 2500)), None)["id"] == "F2"
