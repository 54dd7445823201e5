"""The whole cycle on an S3 repository, and the S3 server dying under pgsafe (issue 4,
requirement 2).

One cluster archives into one repository on a real S3-API server (SeaweedFS on
loopback) for the whole module; the tests run in order and build on each other's
backups: the whole cycle first, then the server killed during a backup, then during an
archive-push (and archive-get meanwhile). Last, the local lock file an object-storage
repository uses.
"""

from __future__ import annotations

import os
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from helpers import Lab, PgCluster, assert_clean_error, table_digest, wait_for
from repolab import Setup, make_setup, s3_keys, s3_repo, wait_archiver_failures
from storage.s3server import S3Server

pytest_plugins = ["s3_fixtures"]  # s3_server, s3

UTC_NOW = "select to_char(clock_timestamp() at time zone 'UTC', 'YYYY-MM-DD HH24:MI:SS.US') || '+00:00'"


@pytest.fixture(scope="module")
def env(module_lab: Lab, s3_server: S3Server) -> Setup:
    env = make_setup(module_lab, [s3_repo("offsite", s3_server, retention_full=2)], s3=s3_server)
    env.cluster.sql("create table ledger (id int primary key, tag text)")
    env.cluster.sql("create table filler as select g as i, md5(g::text) as h from generate_series(1, 50000) g")
    return env


def add_rows(pg: PgCluster, *ids: int) -> None:
    for i in ids:
        pg.sql("insert into ledger values (%s, %s)", (i, f"row {i}"))


def ledger_ids(pg: PgCluster) -> list[int]:
    return [r[0] for r in pg.sql("select id from ledger order by id")]


def keys_of_backup(env: Setup, s3: S3Server, backup_id: str) -> list[str]:
    return [k for k in s3_keys(s3, env.spec("offsite").prefix) if f"/backup/{backup_id}/" in k]


def test_whole_cycle_on_s3(env: Setup, s3: S3Server) -> None:
    pg = env.cluster
    env.run("check")

    full = env.backup()
    add_rows(pg, 1, 2)
    env.run("backup", "--type", "incr")
    incr = env.backups()[-1]
    assert incr["type"] == "incr" and incr["parent"] == full["id"], incr
    add_rows(pg, 3)
    target = pg.scalar(UTC_NOW)
    time.sleep(0.05)
    add_rows(pg, 4)
    pg.switch_and_wait_archived()

    # point-in-time recovery from S3: the incremental plus WAL up to the target
    restored = env.restore_and_start("--target-time", target, name="pitr")
    assert ledger_ids(restored) == [1, 2, 3]
    assert table_digest(restored, "filler") == table_digest(pg, "filler")
    restored.stop()
    env.run("verify")

    # retention_full = 2 runs after each backup: the third full expires the first (and
    # the incremental built on it), and the WAL only they needed
    second = env.backup()
    third = env.backup()
    ids = [b["id"] for b in env.backups()]
    assert ids == [second["id"], third["id"]], ids
    assert keys_of_backup(env, s3, full["id"]) == [] and keys_of_backup(env, s3, incr["id"]) == []
    wal = env.info()["clusters"][0]["wal"]
    assert wal[0]["ranges"][0]["start"] >= second["wal_start"], wal

    # `pgsafe expire` with a stricter policy (another config file, same repository)
    strict = env.write_variant("strict.toml", [s3_repo("offsite", s3, env.spec("offsite").prefix,
                                                       retention_full=1)])
    out = env.run("expire", config=strict).stdout
    assert second["id"] in out, out
    assert [b["id"] for b in env.backups()] == [third["id"]]
    assert keys_of_backup(env, s3, second["id"]) == []
    env.run("verify")


def test_s3_killed_during_backup(env: Setup, s3: S3Server) -> None:
    pg = env.cluster
    pg.pgbench(["-i", "-s", "10", "-q"])  # ~150 MB, so that the backup takes a while
    before = env.backups()
    add_rows(pg, 100)
    prefix = env.spec("offsite").prefix
    proc = env.spawn("backup", "--type", "full")

    def copying() -> str:
        assert proc.poll() is None, f"backup ended before the S3 server was stopped: {proc.communicate()}"
        return next((k for k in s3_keys(s3, prefix) if "/backup/" in k and "/data/" in k
                     and not any(f"/backup/{b['id']}/" in k for b in before)), "")

    key = wait_for("the backup to store its first object", copying, interval=0.05)
    failed_id = key.split("/backup/")[1].split("/")[0]
    s3.stop()
    out, err = proc.communicate(timeout=300)
    assert proc.returncode != 0
    assert_clean_error(subprocess.CompletedProcess(proc.args, proc.returncode, out, err), proc.returncode)
    assert "s3://" in err or "S3" in err or "storage" in err.lower(), err

    s3.start()
    # nothing visible, nothing lost: the backups from before are all there and intact
    assert env.backups() == before
    env.run("verify")
    # the WAL written meanwhile reaches the repository once it is back
    pg.switch_and_wait_archived()
    # and a new backup succeeds, removing what the failed one left (the next test
    # restores from it)
    new = env.backup()
    assert new["id"] != failed_id
    assert keys_of_backup(env, s3, failed_id) == []


def archive_push_running(env: Setup) -> bool:
    needle = f"--config\0{env.config}\0archive-push".encode()
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                if needle in Path(f"/proc/{pid}/cmdline").read_bytes():
                    return True
            except OSError:
                continue
    return False


def test_s3_killed_during_archive_push(env: Setup, s3: S3Server) -> None:
    pg = env.cluster
    pg.switch_and_wait_archived()
    archived_before, failed_before, archived_name, _ = env.archiver()

    # freeze the server so that the next archive-push is caught half-way, then kill it
    s3.pause()
    add_rows(pg, 200)
    segment = pg.switch_wal()
    wait_for("archive-push to be running", lambda: archive_push_running(env), interval=0.05)
    time.sleep(0.5)
    s3.stop()
    wait_archiver_failures(env, failed_before)
    # meanwhile archive-get cannot tell whether a segment exists: it must not answer
    # "not found" (1), which would end a recovery there, but fail hard
    dest = env.workdir / "fetched-while-down"
    proc = env.run("archive-get", str(archived_name), dest, check=False)
    assert proc.returncode == 126, proc
    assert not dest.exists()
    # PostgreSQL keeps the segment and retries; more WAL piles up behind it
    add_rows(pg, 201, 202)
    pg.sql("update pgbench_accounts set abalance = abalance + 1 where aid % 97 = 0")
    last = pg.switch_wal()
    assert (pg.pgdata / "pg_wal" / segment).exists()
    assert env.archiver()[0] == archived_before
    assert (pg.pgdata / "pg_wal" / "archive_status" / f"{segment}.ready").exists()

    s3.start()
    pg.wait_archived(last)
    assert env.archiver()[0] >= archived_before + 2
    pg.switch_and_wait_archived()

    # restore to the end of the archived WAL: exactly the source's contents
    restored = env.restore_and_start(name="end-of-wal")
    assert ledger_ids(restored) == ledger_ids(pg)
    for table, key in (("pgbench_accounts", "aid"), ("pgbench_branches", "bid"), ("filler", "i")):
        assert table_digest(restored, table, key) == table_digest(pg, table, key), table


def test_lock_of_an_s3_repository_follows_no_symlink(env: Setup, s3: S3Server) -> None:
    name = f"lk{uuid.uuid4().hex[:10]}"  # a lock path of its own: other runs are not disturbed
    victim = env.workdir / "precious.conf"
    victim.write_text("precious\n")
    lock_dir = Path("/tmp/pgsafe")
    lock_dir.mkdir(mode=0o755, exist_ok=True)
    link = lock_dir / f"{name}-main-backup.lock"
    link.symlink_to(victim)  # planted by another local user, in an attack
    try:
        config = env.write_variant("lock-name.toml", [s3_repo(name, s3, env.spec("offsite").prefix,
                                                              retention_full=100)])
        env.run("expire", config=config, check=False)
        assert victim.read_text() == "precious\n", f"pgsafe wrote through the symlink: {victim.read_text()!r}"
    finally:
        link.unlink(missing_ok=True)
