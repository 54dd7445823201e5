"""Incremental and differential backups, delta restore, retention and verify, on real
PostgreSQL 15 clusters (issue 3)."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from helpers import PgsafeEnv, assert_clean_error, flip_byte, table_digest

TABLES = ("pgbench_accounts", "pgbench_branches", "pgbench_tellers", "pgbench_history")


def digests(pg) -> dict[str, tuple[int, str]]:
    return {t: table_digest(pg, t) for t in TABLES}


def backup(env: PgsafeEnv, kind: str) -> dict:
    before = {b["id"] for b in env.backups()}
    env.run("backup", "--type", kind)
    new = [b for b in env.backups() if b["id"] not in before]
    assert len(new) == 1
    return new[0]


def restore_immediate(env: PgsafeEnv, backup_id: str, name: str):
    return env.restore_and_start("--set", backup_id, "--target", "immediate", name=name)


def test_full_incr_diff_incr_under_load_each_restore_exactly(env: PgsafeEnv) -> None:
    pg = env.cluster
    pg.pgbench(["-i", "-s", "3", "-q"])
    states = {}
    full = backup(env, "full")
    states[full["id"]] = digests(pg)
    pg.pgbench(["-c", "2", "-T", "3"])
    incr = backup(env, "incr")
    states[incr["id"]] = digests(pg)
    pg.pgbench(["-c", "2", "-T", "3"])
    diff = backup(env, "diff")
    states[diff["id"]] = digests(pg)
    assert (incr["parent"], diff["parent"]) == (full["id"], full["id"])
    # an incremental taken while pgbench writes: compare at the end of WAL instead
    load = pg.pgbench(["-c", "4", "-T", "8"], background=True)
    time.sleep(1)
    incr2 = backup(env, "incr")
    load.wait()
    assert incr2["parent"] == diff["id"]
    for backup_id, expected in states.items():
        restored = restore_immediate(env, backup_id, name=f"r-{backup_id}")
        assert digests(restored) == expected, backup_id
        restored.stop()
    final = digests(pg)
    pg.switch_and_wait_archived()
    restored = env.restore_and_start(name="end-of-wal")
    assert digests(restored) == final


def make_big_table(pg, rows: int) -> None:
    """A table `big` of incompressible rows (about 400 bytes each), so that stored sizes
    measure what was stored, not zstd."""
    pg.sql("create table big (id int primary key, payload text)")
    pg.sql("insert into big select g, (select string_agg(md5(random()::text || g || s), '') "
           f"from generate_series(1, 12) s) from generate_series(1, {rows}) g")
    pg.sql("checkpoint")


def test_incr_without_full_becomes_full_with_notice(env: PgsafeEnv) -> None:
    proc = env.run("backup", "--type", "incr")
    assert "NOTICE" in proc.stdout and "full" in proc.stdout
    assert env.backups()[0]["type"] == "full"


def test_skewed_workload_stores_a_small_fraction(env: PgsafeEnv) -> None:
    pg = env.cluster
    make_big_table(pg, 120000)
    full = backup(env, "full")
    pg.sql("update big set payload = md5(payload) where id <= 1200")  # 1% of the rows, hot range
    incr = backup(env, "incr")
    assert incr["stored_size"] <= full["stored_size"] * 0.10, (incr["stored_size"], full["stored_size"])
    expected = table_digest(pg, "big", "id")
    restored = restore_immediate(env, incr["id"], "skewed")
    assert table_digest(restored, "big", "id") == expected


def file_entry(env: PgsafeEnv, backup_id: str, path: str) -> dict:
    """The manifest entry of one file, read through pgsafe's own repository code."""
    from pgsafe.config import RepoConfig
    from pgsafe.repo.repository import Repository

    manifest = Repository.open(RepoConfig(name="main", path=str(env.repo))).manifest("main", backup_id)
    (entry,) = [f for f in manifest["files"] if f["path"] == path]
    return entry


def test_a_table_rewritten_all_over_is_stored_whole_and_a_hot_range_as_patches(env: PgsafeEnv) -> None:
    pg = env.cluster
    make_big_table(pg, 60000)
    ((path,),) = pg.sql("select pg_relation_filepath('big')")
    full = backup(env, "full")
    pg.sql("update big set payload = md5(payload) where id <= 300")  # a hot range: patches
    incr1 = backup(env, "incr")
    patched = file_entry(env, incr1["id"], path)
    assert patched["ref"]["backup"] == full["id"] and patched["patches"], patched
    pg.sql("update big set payload = md5(payload) || id")  # every page: a new base
    incr2 = backup(env, "incr")
    rebased = file_entry(env, incr2["id"], path)
    assert rebased["ref"]["backup"] == incr2["id"] and rebased["patches"] == [], rebased
    expected = table_digest(pg, "big", "id")
    restored = restore_immediate(env, incr2["id"], "rebased")
    assert table_digest(restored, "big", "id") == expected


def test_delta_restore_after_deleting_and_damaging_files(env: PgsafeEnv) -> None:
    pg = env.cluster
    pg.pgbench(["-i", "-s", "2", "-q"])
    full = backup(env, "full")
    expected = digests(pg)
    target = env.new_target_dir()
    env.restore(target, "--set", full["id"], "--target", "immediate")
    restored = env.restored_cluster(target, name="delta")
    restored.start_options["archive_mode"] = "off"
    restored.start()
    restored.wait_promoted()
    restored.stop()
    # damage: delete a relation file, flip bytes in the biggest one, add a stray file
    base = target / "base"
    files = sorted((p for p in base.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
    biggest, victim = files[-1], files[-5]
    victim.unlink()
    flip_byte(biggest, 3 * 8192 + 100)
    (base / "stray_file").write_text("not in the backup")
    # refused while a server runs on it
    restored.start()
    proc = env.restore(target, "--delta", "--set", full["id"], check=False)
    assert_clean_error(proc, 11, "running")
    restored.stop()
    proc = env.restore(target, "--delta", "--set", full["id"], "--target", "immediate", "--output", "json")
    result = json.loads(proc.stdout)
    assert result["delta"] and result["files_kept"] > 100
    assert result["files_written"] >= 2 and result["files_removed"] >= 1
    assert not (base / "stray_file").exists()
    restored = env.restored_cluster(target, name="delta2")
    restored.start_options["archive_mode"] = "off"
    restored.start()
    restored.wait_promoted()
    assert digests(restored) == expected


def test_retention_counts_days_pins_and_wal(env: PgsafeEnv) -> None:
    pg = env.cluster
    pg.sql("create table t (id int)")
    ids = []
    for i in range(4):
        pg.sql(f"insert into t values ({i})")
        ids.append(backup(env, "full" if i % 2 == 0 else "incr")["id"])
        pg.switch_and_wait_archived()
    # F0 I1 F2 I3; keep one full: F0 and I1 go
    text = env.config.read_text().replace("[repo.main]\n", "[repo.main]\nretention_full = 1\n")
    env.config.write_text(text)
    proc = env.run("expire", "--dry-run")
    assert ids[0] in proc.stdout and ids[1] in proc.stdout and "retention_full" in proc.stdout
    assert [b["id"] for b in env.backups()] == ids  # dry run changed nothing
    env.run("pin", ids[1])
    env.run("expire")
    assert [b["id"] for b in env.backups()] == ids  # I1 pinned keeps F0 too
    env.run("unpin", ids[1])
    env.run("expire")
    assert [b["id"] for b in env.backups()] == ids[2:]
    oldest = env.backups()[0]
    wal = env.info()["clusters"][0]["wal"][0]["ranges"]
    assert wal[0]["start"] == oldest["wal_start"]
    # the oldest kept backup still restores, with point-in-time recovery after it
    pg.sql("insert into t values (99)")
    pg.switch_and_wait_archived()
    restored = env.restore_and_start("--set", oldest["id"], name="after-expire")
    assert sorted(r[0] for r in restored.sql("select id from t")) == [0, 1, 2, 3, 99]
    env.run("verify")
    # days: a one-day window keeps everything; a window of under a second keeps only
    # the newest full (the one needed to reach the window's start)
    env.config.write_text(env.config.read_text().replace("retention_full = 1\n", "retention_full_days = 1\n"))
    time.sleep(1)
    backup(env, "full")
    assert [b["id"] for b in env.backups()][:2] == ids[2:]
    env.config.write_text(env.config.read_text().replace("retention_full_days = 1\n",
                                                         "retention_full_days = 0.00001\n"))
    time.sleep(1.5)  # the newest full is now older than the window
    proc = env.run("expire", "--dry-run")
    assert ids[2] in proc.stdout and ids[3] in proc.stdout  # F2, I3 older than the newest full


def test_expire_set_refuses_a_backup_others_need(env: PgsafeEnv) -> None:
    full = backup(env, "full")
    incr = backup(env, "incr")
    proc = env.run("expire", "--set", full["id"], check=False)
    assert_clean_error(proc, 2, incr["id"])
    env.run("expire", "--set", full["id"], "--with-dependents")
    assert env.backups() == []


def _object_files(env: PgsafeEnv, backup_id: str) -> list[Path]:
    return sorted((env.repo / "cluster" / "main" / "backup" / backup_id / "data").iterdir())


def test_verify_catches_flipped_byte_deleted_wal_and_deleted_object(env: PgsafeEnv) -> None:
    pg = env.cluster
    pg.pgbench(["-i", "-s", "1", "-q"])
    full = backup(env, "full")
    for _ in range(3):
        pg.sql("insert into pgbench_history values (1, 1, 1, 1, now(), 'x')")
        pg.switch_and_wait_archived()
    incr = backup(env, "incr")
    env.run("verify")
    # a flipped byte in a stored object
    victim = _object_files(env, full["id"])[0]
    flip_byte(victim, victim.stat().st_size // 2)
    proc = env.run("verify", "--output", "json", check=False)
    assert proc.returncode == 9
    problems = json.loads(proc.stdout)[0]["problems"]
    assert any(p["kind"] == "object" and p["backup"] == full["id"] for p in problems), problems
    flip_byte(victim, victim.stat().st_size // 2)  # flip it back
    env.run("verify")
    # a deleted WAL segment in the middle: a gap, with its range
    segments = sorted(p for p in (env.repo / "cluster" / "main" / "wal").rglob("0*") if len(p.name) == 24)
    middle = [s for s in segments if full["wal_stop"] < s.name < incr["wal_start"]][0]
    middle.unlink()
    proc = env.run("verify", check=False)
    assert proc.returncode == 9 and middle.name in proc.stdout and "gap" in proc.stdout.lower() or "missing" in proc.stdout
    env.run("verify", "--set", incr["id"])  # its own WAL range is intact
    # a deleted object of the incremental
    objects = _object_files(env, incr["id"])
    objects[-1].unlink()
    proc = env.run("verify", "--set", incr["id"], check=False)
    assert proc.returncode == 9 and objects[-1].name in proc.stdout


@pytest.mark.parametrize("compression", ["lz4", "gzip", "none"])
def test_other_compressions_round_trip(make_env, compression: str) -> None:
    env = make_env(compression=compression)
    pg = env.cluster
    pg.pgbench(["-i", "-s", "1", "-q"])
    backup(env, "full")
    pg.sql("update pgbench_accounts set abalance = 7 where aid < 500")
    incr = backup(env, "incr")
    expected = digests(pg)
    restored = restore_immediate(env, incr["id"], f"c-{compression}")
    assert digests(restored) == expected
    env.run("verify")
    assert os.path.isdir(env.repo)
