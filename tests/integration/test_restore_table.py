"""restore-table: one table recovered from a physical backup at a recovery target
(issue 5, requirement 4), and nothing left behind when it is interrupted.

A ledger table in database `app` gets a backup, then one committed row at a time, each
followed by a noted time and transaction id; then an "accident" deletes half of it.
Recovering the table at each mark must bring back exactly the rows of that moment.
"""

from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from helpers import Lab, PgCluster, PgsafeEnv, assert_clean_error, wait_for

UTC_NOW = "to_char(clock_timestamp() at time zone 'UTC', 'YYYY-MM-DD HH24:MI:SS.US') || '+00:00'"
ROWS = 3


@dataclass
class Ledger:
    env: PgsafeEnv
    times: dict[int, str] = field(default_factory=dict)  # a time after row i and before row i + 1
    xids: dict[int, str] = field(default_factory=dict)  # the transaction that added row i
    rows_at: dict[int, list[tuple[Any, ...]]] = field(default_factory=dict)


def rows(pg: PgCluster, table: str, dbname: str) -> list[tuple[Any, ...]]:
    return pg.sql(f"select id, tag, amount from {table} order by id", dbname=dbname)


@pytest.fixture(scope="module")
def ledger(module_lab: Lab) -> Ledger:
    env = module_lab.make_env()
    pg = env.cluster
    pg.sql("create database app")
    with pg.connect("app") as conn:
        conn.execute("create schema acct")
        conn.execute("create table acct.ledger (id serial primary key, tag text unique, amount int not null)")
        conn.execute("create index ledger_amount_idx on acct.ledger (amount)")
        conn.execute("insert into acct.ledger (tag, amount) select 'before ' || g, g from generate_series(1, 1000) g")
    env.backup()
    led = Ledger(env)
    for i in range(1, ROWS + 1):
        with pg.connect("app", autocommit=False) as conn:
            conn.execute("insert into acct.ledger (tag, amount) values (%s, %s)", (f"row {i}", 10000 + i))
            led.xids[i] = conn.execute("select txid_current()::text").fetchone()[0]  # type: ignore[index]
            conn.commit()
        led.rows_at[i] = rows(pg, "acct.ledger", "app")
        time.sleep(0.05)
        led.times[i] = pg.scalar(f"select {UTC_NOW}")
        time.sleep(0.05)
    pg.sql("delete from acct.ledger where amount % 2 = 0", dbname="app")  # the accident
    pg.switch_and_wait_archived()
    return led


def test_table_as_it_was_at_a_target_time(ledger: Ledger) -> None:
    env, pg = ledger.env, ledger.env.cluster
    live_before = rows(pg, "acct.ledger", "app")
    proc = env.run("restore-table", "--table", "acct.ledger", "--db", "app", "--into", "app",
                   "--as", "acct.ledger_restored", "--target-time", ledger.times[2])
    assert rows(pg, "acct.ledger_restored", "app") == ledger.rows_at[2]
    assert f"{len(ledger.rows_at[2])} rows" in proc.stdout, proc.stdout
    assert "restore" in proc.stdout and "recovery" in proc.stdout, "timing of each step"
    assert rows(pg, "acct.ledger", "app") == live_before, "the live table is untouched"
    # indexes and the serial sequence came along, renamed clear of the live table's
    indexes = {r[0] for r in pg.sql("select indexname from pg_indexes where tablename = 'ledger_restored'",
                                    dbname="app")}
    assert indexes == {"ledger_restored_pkey", "ledger_restored_tag_key", "ledger_restored_amount_idx"}
    new_id = pg.scalar("insert into acct.ledger_restored (tag, amount) values ('new', 1) returning id", dbname="app")
    assert new_id > ledger.rows_at[2][-1][0], "(recovered sequences may skip ahead: they are WAL-logged in batches)"
    assert pg.scalar("select count(*) from pg_namespace where nspname like 'pgsafe%'", dbname="app") == 0


def test_into_another_database_and_a_new_schema_at_a_transaction(ledger: Ledger) -> None:
    env, pg = ledger.env, ledger.env.cluster
    env.run("restore-table", "--table", "acct.ledger", "--db", "app", "--into", "postgres",
            "--as", "recovered.ledger", "--target-xid", ledger.xids[1])
    assert rows(pg, "recovered.ledger", "postgres") == ledger.rows_at[1]


def test_an_existing_target_is_refused_before_anything_starts(ledger: Ledger, tmp_dirs: Any) -> None:
    scratch = tmp_dirs.make("pgsafe-scratch-parent-")
    proc = ledger.env.run("restore-table", "--table", "acct.ledger", "--db", "app", "--into", "app",
                          "--scratch-dir", scratch, check=False)
    assert_clean_error(proc, 11, "acct.ledger", "already exists", "--as")
    assert os.listdir(scratch) == []


def test_a_table_missing_at_the_target_fails_cleanly(ledger: Ledger, tmp_dirs: Any) -> None:
    scratch = tmp_dirs.make("pgsafe-scratch-parent-")
    proc = ledger.env.run("restore-table", "--table", "acct.nosuch", "--db", "app", "--into", "app",
                          "--scratch-dir", scratch, "--target-time", ledger.times[1], check=False)
    assert_clean_error(proc, 11, "acct.nosuch", "does not exist")
    assert os.listdir(scratch) == [] and not scratch_processes(scratch)


# -- interrupted ---------------------------------------------------------------------

def scratch_processes(scratch: Path) -> list[int]:
    """Live (not zombie) processes whose command line mentions the scratch directory."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
            state = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if str(scratch).encode() in cmdline and state != "Z":
            found.append(int(entry))
    return found


@pytest.fixture(scope="module")
def long_wal(ledger: Ledger) -> Ledger:
    """Enough archived WAL after the backup that replaying it keeps a scratch server
    busy for a while (each segment is fetched by its own archive-get)."""
    pg = ledger.env.cluster
    for i in range(40):
        pg.sql("insert into acct.ledger (tag, amount) values (%s, 1)", (f"filler {i}",), dbname="app")
        pg.sql("select pg_switch_wal()")
    pg.switch_and_wait_archived()
    return ledger


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=lambda s: s.name)
def test_interrupted_leaves_no_server_and_no_files(long_wal: Ledger, tmp_dirs: Any, sig: signal.Signals) -> None:
    env = long_wal.env
    scratch = tmp_dirs.make("pgsafe-scratch-parent-")
    proc = env.spawn("restore-table", "--table", "acct.ledger", "--db", "app", "--into", "app",
                     "--as", f"acct.ledger_{sig.name.lower()}", "--scratch-dir", str(scratch))
    # interrupt once the scratch server is up and replaying WAL
    wait_for("the scratch server", lambda: proc.poll() is not None or any(
        "postgres" in Path(f"/proc/{p}/cmdline").read_bytes().decode(errors="replace")
        for p in scratch_processes(scratch) if os.path.exists(f"/proc/{p}/cmdline")), timeout=120, interval=0.05)
    assert proc.poll() is None, f"restore-table ended before it could be interrupted: {proc.communicate()}"
    time.sleep(0.5)
    os.kill(proc.pid, sig)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, f"exit {proc.returncode}\n{out}\n{err}"
    assert err.strip().splitlines()[-1] == f"pgsafe: error: interrupted by {sig.name}", err
    assert "Traceback" not in err
    assert scratch_processes(scratch) == [], "no scratch server (or restore_command) is left running"
    assert os.listdir(scratch) == [], "no scratch files are left"
    table = env.cluster.sql("select to_regclass(%s)::text", (f"acct.ledger_{sig.name.lower()}",), dbname="app")
    assert table == [(None,)]
