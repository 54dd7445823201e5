"""Point-in-time recovery lands exactly where asked (issue 2, requirement 4).

A ledger table gets one row per committed transaction; around each commit the test
notes the transaction id, its commit timestamp, the WAL position after it, a time
between it and the next one, and a named restore point. Restoring to each of those
must bring back exactly the rows up to the target.

Backup A is taken before row 1, backup B after row 3: a target before B's end can only
be reached from A, and pgsafe must pick it by itself.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

import pytest

from helpers import Lab, PgCluster, PgsafeEnv, assert_clean_error, wait_for


@dataclass
class Mark:
    xid: str = ""
    commit_time: str = ""  # exact commit timestamp of the row's transaction
    lsn_after: str = ""    # WAL insert position right after the commit
    time_after: str = ""   # a time after this commit and before the next one
    restore_point: str = ""


@dataclass
class Ledger:
    env: PgsafeEnv
    backup_a: str = ""
    backup_b: str = ""
    before_a: str = ""
    marks: dict[int, Mark] = field(default_factory=dict)


ROWS = 5
UTC_TEXT = "to_char({} at time zone 'UTC', 'YYYY-MM-DD HH24:MI:SS.US') || '+00:00'"


def add_row(pg: PgCluster, i: int) -> Mark:
    with pg.connect(autocommit=False) as conn:
        conn.execute("insert into ledger values (%s, %s)", (i, f"row {i}"))
        xid = conn.execute("select txid_current()::text").fetchone()[0]  # type: ignore[index]
        conn.commit()
    m = Mark(xid=xid)
    m.commit_time = pg.scalar(f"select {UTC_TEXT.format('pg_xact_commit_timestamp(%s::xid)')}", (xid,))
    m.lsn_after = str(pg.scalar("select pg_current_wal_insert_lsn()"))
    m.restore_point = f"after_row_{i}"
    pg.sql("select pg_create_restore_point(%s)", (m.restore_point,))
    time.sleep(0.05)
    m.time_after = pg.scalar(f"select {UTC_TEXT.format('clock_timestamp()')}")
    time.sleep(0.05)
    return m


@pytest.fixture(scope="module")
def ledger(module_lab: Lab) -> Ledger:
    env = module_lab.make_env(settings={"track_commit_timestamp": "on"})
    pg = env.cluster
    pg.sql("create table ledger (id int primary key, tag text)")
    pg.sql("create table filler as select g as i from generate_series(1, 10000) g")
    led = Ledger(env)
    led.before_a = pg.scalar(f"select {UTC_TEXT.format('clock_timestamp()')}")
    time.sleep(0.05)
    led.backup_a = env.backup()["id"]
    for i in range(1, ROWS + 1):
        if i == 4:
            led.backup_b = env.backup()["id"]
        led.marks[i] = add_row(pg, i)
    pg.switch_and_wait_archived()
    return led


def ids(pg: PgCluster) -> list[int]:
    return [r[0] for r in pg.sql("select id from ledger order by id")]


def restore_rows(led: Ledger, *args: str) -> list[int]:
    pg = led.env.restore_and_start(*args)
    try:
        return ids(pg)
    finally:
        pg.stop("immediate")


def timeline(pg: PgCluster) -> int:
    return int(pg.scalar("select pg_walfile_name(pg_current_wal_lsn())")[:8], 16)


def upto(n: int) -> list[int]:
    return list(range(1, n + 1))


# Each case: (restore arguments built from the ledger, rows expected).
CASES: dict[str, tuple[Callable[[Ledger], list[str]], list[int]]] = {
    "end-of-wal": (lambda l: [], upto(5)),
    "immediate-newest": (lambda l: ["--target", "immediate"], upto(3)),
    "immediate-set-a": (lambda l: ["--target", "immediate", "--set", l.backup_a], []),
    "xid": (lambda l: ["--target-xid", l.marks[2].xid], upto(2)),
    "xid-exclusive": (lambda l: ["--target-xid", l.marks[2].xid, "--target-exclusive"], upto(1)),
    "xid-after-b": (lambda l: ["--target-xid", l.marks[4].xid], upto(4)),
    "commit-time": (lambda l: ["--target-time", l.marks[2].commit_time], upto(2)),
    "commit-time-exclusive": (lambda l: ["--target-time", l.marks[2].commit_time,
                                         "--target-exclusive"], upto(1)),
    "time-between-1-and-2": (lambda l: ["--target-time", l.marks[1].time_after], upto(1)),
    "time-between-4-and-5": (lambda l: ["--target-time", l.marks[4].time_after], upto(4)),
    "lsn": (lambda l: ["--target-lsn", l.marks[3].lsn_after], upto(3)),
    "name": (lambda l: ["--target-name", l.marks[2].restore_point], upto(2)),
    "name-after-b": (lambda l: ["--target-name", l.marks[5].restore_point], upto(5)),
    "name-set-a": (lambda l: ["--target-name", l.marks[2].restore_point, "--set", l.backup_a],
                   upto(2)),
    "set-a-to-row-5": (lambda l: ["--set", l.backup_a, "--target-xid", l.marks[5].xid], upto(5)),
}


@pytest.mark.parametrize("case", list(CASES))
def test_recovery_target_lands_exactly(ledger: Ledger, case: str) -> None:
    make_args, expected = CASES[case]
    assert restore_rows(ledger, *make_args(ledger)) == expected


def test_target_action_pause_then_resume(ledger: Ledger) -> None:
    pg = ledger.env.restore_and_start("--target-xid", ledger.marks[3].xid,
                                      "--target-action", "pause", wait_promoted=False)
    wait_for("replay to pause at the target",
             lambda: pg.scalar("select pg_get_wal_replay_pause_state()") == "paused",
             on_timeout=pg.log_tail)
    assert pg.in_recovery()
    assert ids(pg) == upto(3)
    pg.sql("select pg_wal_replay_resume()")
    pg.wait_promoted()
    assert ids(pg) == upto(3)


def test_target_action_promote_gives_a_writable_server(ledger: Ledger) -> None:
    pg = ledger.env.restore_and_start("--target-xid", ledger.marks[2].xid,
                                      "--target-action", "promote")
    assert ids(pg) == upto(2)
    pg.sql("insert into ledger values (99, 'new timeline')")
    assert timeline(pg) == 2
    assert ids(pg) == [1, 2, 99]


def test_target_action_shutdown(ledger: Ledger) -> None:
    env = ledger.env
    target = env.new_target_dir()
    env.restore(target, "--target-xid", ledger.marks[2].xid, "--target-action", "shutdown")
    pg = env.restored_cluster(target)
    pg.start_options["archive_mode"] = "off"
    try:
        pg.start(wait=False)
    except AssertionError:
        pass  # pg_ctl may or may not see the server up before it shuts down
    wait_for("the server to shut down at the target",
             lambda: pg.logfile.exists() and "shutdown at recovery target" in pg.logfile.read_text(),
             on_timeout=pg.log_tail)
    pg.wait_stopped()
    # Started again with pause instead, it stops at the same place.
    pg.start(recovery_target_action="pause")
    wait_for("replay to pause at the target",
             lambda: pg.scalar("select pg_get_wal_replay_pause_state()") == "paused",
             on_timeout=pg.log_tail)
    assert ids(pg) == upto(2)


def test_target_before_every_backup_has_no_backup(ledger: Ledger) -> None:
    target = ledger.env.new_target_dir()
    proc = ledger.env.restore(target, "--target-time", ledger.before_a, check=False)
    assert_clean_error(proc, 13)
    assert not target.exists()


def test_explicit_set_that_cannot_reach_the_target_is_refused(ledger: Ledger) -> None:
    target = ledger.env.new_target_dir()
    proc = ledger.env.restore(target, "--set", ledger.backup_b,
                              "--target-time", ledger.marks[1].time_after, check=False)
    assert proc.returncode in (11, 13), proc
    assert "Traceback" not in proc.stderr
    assert not target.exists()


@pytest.mark.slow
def test_target_timeline(make_env: Callable[..., PgsafeEnv]) -> None:
    """A restored server promoted onto timeline 2 archives into the same repository;
    --target-timeline picks which history a later restore follows."""
    env = make_env()
    src = env.cluster
    src.sql("create table ledger (id int primary key, tag text)")
    env.backup()
    src.sql("insert into ledger values (1, 'both timelines')")
    src.switch_and_wait_archived()

    branch = env.restore_and_start(archive=True, name="branch")
    assert timeline(branch) == 2
    branch.sql("insert into ledger values (2, 'timeline 2')")
    branch.switch_and_wait_archived()
    branch.stop()

    src.sql("insert into ledger values (3, 'timeline 1')")
    src.switch_and_wait_archived()

    (cluster,) = env.info()["clusters"]
    assert {w["timeline"] for w in cluster["wal"]} >= {1, 2}, cluster["wal"]

    on2 = env.restore_and_start("--target-timeline", "2", name="on2")
    assert ids(on2) == [1, 2]
    on2.stop("immediate")
    on1 = env.restore_and_start("--target-timeline", "1", name="on1")
    assert ids(on1) == [1, 3]
