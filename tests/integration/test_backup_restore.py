"""Full backups restore to a server with the same data (issue 2, requirements 2, 4, 5)."""

from __future__ import annotations

import os
import re
import subprocess
import time
from pathlib import Path
from typing import Any, Callable

import pytest

from helpers import (
    PG_BIN,
    SERVER_USER,
    PgCluster,
    PgsafeEnv,
    clean_env,
    server_uid_gid,
    table_digest,
    wait_for,
)

PGBENCH_TABLES = {
    "pgbench_accounts": "aid",
    "pgbench_branches": "bid",
    "pgbench_tellers": "tid",
    "pgbench_history": "t::text",
}


def pgbench_state(pg: PgCluster) -> dict[str, Any]:
    state: dict[str, Any] = {t: table_digest(pg, t, order) for t, order in PGBENCH_TABLES.items()}
    state["balances"] = pg.sql(
        "select (select sum(abalance) from pgbench_accounts), (select sum(bbalance) "
        "from pgbench_branches), (select sum(tbalance) from pgbench_tellers), "
        "(select sum(delta) from pgbench_history)")[0]
    return state


def amcheck(pg: PgCluster) -> None:
    proc = subprocess.run(
        [str(PG_BIN / "pg_amcheck"), "-h", str(pg.socket_dir), "-p", str(pg.port), "-U", SERVER_USER,
         "--install-missing", "--heapallindexed", "-d", "postgres"],
        capture_output=True, text=True, env=clean_env(), cwd="/tmp", timeout=600)
    assert proc.returncode == 0, f"pg_amcheck failed:\n{proc.stdout}\n{proc.stderr}"


def lsn(text: str) -> int:
    hi, lo = text.split("/")
    return (int(hi, 16) << 32) | int(lo, 16)


@pytest.mark.slow
def test_backup_under_pgbench_load_restores_identical_data(make_env: Callable[..., PgsafeEnv]) -> None:
    env = make_env()
    pg = env.cluster
    pg.pgbench(["-i", "-s", "5", "-q"])
    load = pg.pgbench(["-c", "4", "-j", "2", "-T", "20", "-n"], background=True)
    assert isinstance(load, subprocess.Popen)
    try:
        time.sleep(2)
        assert load.poll() is None, "pgbench ended before the backup started"
        backup = env.backup("--jobs", "2")
        out, _ = load.communicate(timeout=600)
    finally:
        if load.poll() is None:
            load.kill()
            load.communicate()
    assert load.returncode == 0, out
    assert backup["type"] == "full"
    assert not backup.get("checksum_errors"), backup  # concurrent writes are not corruption

    # Quiesce the source and make sure its last WAL is in the repository.
    pg.switch_and_wait_archived()
    expected = pgbench_state(pg)
    assert expected["pgbench_history"][0] > 0

    restored = env.restore_and_start()
    assert pgbench_state(restored) == expected
    amcheck(restored)


def test_info_describes_a_backup(env: PgsafeEnv) -> None:
    pg = env.cluster
    pg.pgbench(["-i", "-s", "1", "-q"])
    b = env.backup()
    for key in ("id", "type", "start_time", "stop_time", "start_lsn", "stop_lsn", "timeline",
                "wal_start", "wal_stop", "size", "stored_size", "parent"):
        assert key in b, (key, b)
    assert b["type"] == "full" and b["parent"] is None and b["timeline"] == 1
    assert lsn(b["start_lsn"]) <= lsn(b["stop_lsn"])
    assert b["start_time"] <= b["stop_time"]
    assert re.fullmatch(r"[0-9A-F]{24}", b["wal_start"]) and b["wal_start"] <= b["wal_stop"]
    pgdata_size = sum(f.stat().st_size for f in (pg.pgdata / "base").rglob("*") if f.is_file())
    assert b["size"] >= pgdata_size * 0.5
    assert 0 < b["stored_size"] < b["size"]  # pgbench data compresses

    (cluster,) = env.info()["clusters"]
    assert str(cluster["system_identifier"]) == str(
        pg.scalar("select system_identifier from pg_control_system()"))
    assert str(cluster["pg_version"]).startswith("15")
    (wal,) = [w for w in cluster["wal"] if w["timeline"] == 1]
    assert any(r["start"] <= b["wal_start"] and b["wal_stop"] <= r["stop"] for r in wal["ranges"])

    second = env.backup()
    assert [x["id"] for x in env.backups()] == [b["id"], second["id"]]  # oldest first
    text = env.run("info").stdout
    assert b["id"] in text and second["id"] in text


def test_restore_as_root_hands_files_to_the_server_user(env: PgsafeEnv) -> None:
    pg = env.cluster
    pg.sql("create table t as select generate_series(1, 1000) as i")
    env.backup()
    pg.switch_and_wait_archived()
    target = env.new_target_dir()
    env.restore(target)
    uid, _ = server_uid_gid()
    wrong = [str(p) for p in [target, *target.rglob("*")] if p.lstat().st_uid != uid]
    assert not wrong, f"not owned by {SERVER_USER}: {wrong[:10]}"
    assert target.stat().st_mode & 0o077 in (0, 0o050), oct(target.stat().st_mode)
    assert (target / "backup_label").exists()
    assert (target / "recovery.signal").exists() and not (target / "standby.signal").exists()
    for excluded in ("postmaster.pid", "postmaster.opts"):
        assert not (target / excluded).exists(), excluded
    assert not [p for p in (target / "pg_wal").iterdir() if p.is_file()]
    auto = (target / "postgresql.auto.conf").read_text()
    assert "restore_command" in auto and "archive-get" in auto and str(env.config) in auto, auto
    # starts as is: no fixing of ownership or modes
    restored = env.lab.make_cluster(pgdata=target, name="restored")
    restored.start_options["archive_mode"] = "off"
    restored.start()
    restored.wait_promoted()
    assert restored.scalar("select count(*) from t") == 1000


def test_restore_as_the_server_user(env: PgsafeEnv) -> None:
    pg = env.cluster
    pg.sql("create table t as select generate_series(1, 100) as i")
    env.backup()
    pg.sql("insert into t values (101)")
    pg.switch_and_wait_archived()
    target = env.new_target_dir()
    env.restore(target, user=SERVER_USER)
    restored = env.restored_cluster(target)
    restored.start(archive_mode="off")
    restored.wait_promoted()
    assert restored.scalar("select count(*) from t") == 101


def test_standby_restore_stays_in_recovery(env: PgsafeEnv) -> None:
    pg = env.cluster
    pg.sql("create table t as select generate_series(1, 100) as i")
    env.backup()
    pg.sql("insert into t values (101)")
    pg.switch_and_wait_archived()
    target = env.new_target_dir()
    env.restore(target, "--standby")
    assert (target / "standby.signal").exists() and not (target / "recovery.signal").exists()
    standby = env.restored_cluster(target, name="standby")
    standby.start(archive_mode="off")
    wait_for("the standby to replay the archive",
             lambda: standby.scalar("select count(*) from t") == 101, on_timeout=standby.log_tail)
    assert standby.in_recovery()
    # it keeps following the archive
    pg.sql("insert into t values (102)")
    pg.switch_and_wait_archived()
    wait_for("the standby to replay new WAL",
             lambda: standby.scalar("select count(*) from t") == 102, on_timeout=standby.log_tail)


def test_backup_with_one_job_and_spread_checkpoint(make_env: Callable[..., PgsafeEnv]) -> None:
    env = make_env(settings={"checkpoint_timeout": "30s"})
    pg = env.cluster
    pg.sql("create table t as select g as i, md5(g::text) as h from generate_series(1, 50000) g")
    pg.sql("checkpoint")  # a spread checkpoint with nothing to write is quick
    env.backup("--jobs", "1", "--checkpoint", "spread")
    pg.switch_and_wait_archived()
    restored = env.restore_and_start()
    assert table_digest(restored, "t", "i") == table_digest(pg, "t", "i")


def test_excluded_and_unlogged_contents(env: PgsafeEnv) -> None:
    """Unlogged tables come back empty (their init fork only); temp files and
    pg_replslot are not carried over; logged data is."""
    pg = env.cluster
    pg.sql("create unlogged table u as select generate_series(1, 10000) as i")
    pg.sql("create table l as select generate_series(1, 10000) as i")
    pg.sql("select pg_create_physical_replication_slot('keepme', true)")
    tmpdir = pg.pgdata / "base" / "pgsql_tmp"
    tmpdir.mkdir(exist_ok=True)
    (tmpdir / "pgsql_tmp4242.0").write_bytes(b"t" * 100000)
    env.backup()
    pg.switch_and_wait_archived()
    restored = env.restore_and_start()
    assert not (restored.pgdata / "base" / "pgsql_tmp" / "pgsql_tmp4242.0").exists()
    assert restored.scalar("select count(*) from l") == 10000
    assert restored.scalar("select count(*) from u") == 0
    assert restored.scalar("select count(*) from pg_replication_slots") == 0


def test_tablespaces_restore_with_a_mapping(env: PgsafeEnv) -> None:
    pg = env.cluster
    uid, gid = server_uid_gid()
    old = env.lab.tmp.make("pgsafe-ts-") / "ts"
    old.mkdir()
    os.chown(old, uid, gid)
    pg.sql(f"create tablespace extra location '{old}'")
    pg.sql("create table in_ts (i int, pad text) tablespace extra")
    pg.sql("insert into in_ts select g, repeat('p', 200) from generate_series(1, 20000) g")
    pg.sql("create index in_ts_i on in_ts(i) tablespace extra")
    env.backup()
    pg.sql("insert into in_ts select g, 'after' from generate_series(20001, 20100) g")
    pg.switch_and_wait_archived()
    expected = table_digest(pg, "in_ts", "i")

    # Without a mapping the tablespace would go to its old, non-empty, place: refused.
    target = env.new_target_dir()
    before = sorted(p.name for p in old.rglob("*"))
    proc = env.restore(target, check=False)
    assert proc.returncode == 11, proc
    assert sorted(p.name for p in old.rglob("*")) == before

    new = env.lab.tmp.make("pgsafe-ts-new-") / "ts"
    target = env.new_target_dir()
    env.restore(target, "--tablespace-map", f"{old}={new}")
    links = list((target / "pg_tblspc").iterdir())
    assert len(links) == 1 and links[0].is_symlink(), links
    assert Path(os.readlink(links[0])) == new
    assert any(new.iterdir())
    restored = env.restored_cluster(target)
    restored.start(archive_mode="off")
    restored.wait_promoted()
    assert table_digest(restored, "in_ts", "i") == expected
    assert restored.scalar("select pg_tablespace_location(oid) from pg_tablespace "
                           "where spcname = 'extra'") == str(new)
    assert restored.scalar("select count(*) from in_ts where i between 100 and 200") == 101
