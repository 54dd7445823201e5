"""Several repositories at once (issue 4, requirements 4 and 6): backups to every
repository or one, retention per repository, archive-push with one repository down,
restore and archive-get falling back, `repo copy` (incremental, verified, resumable).

The module's cluster archives into ``local`` (posix, retention_full = 2) and
``offsite`` (S3, retention_full = 1). The tests run in order.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
from pathlib import Path
from typing import Any

import pytest

from helpers import Lab, PgCluster, flip_byte, table_digest, wait_for
from repolab import (
    Setup,
    make_setup,
    posix_repo,
    s3_repo,
    wait_archiver_failures,
)
from storage.s3server import S3Server

pytest_plugins = ["s3_fixtures"]  # s3_server, s3

TABLES = (("pgbench_accounts", "aid"), ("pgbench_branches", "bid"), ("ledger", "id"))


@pytest.fixture(scope="module")
def env(module_lab: Lab, s3_server: S3Server) -> Setup:
    work = module_lab.tmp.make("pgsafe-multi-")
    repos = [posix_repo("local", work / "local", retention_full=2),
             s3_repo("offsite", s3_server, retention_full=1)]
    env = make_setup(module_lab, repos, s3=s3_server)
    env.cluster.pgbench(["-i", "-s", "5", "-q"])
    env.cluster.sql("create table ledger (id int primary key, tag text)")
    return env


def add_rows(pg: PgCluster, *ids: int) -> None:
    for i in ids:
        pg.sql("insert into ledger values (%s, %s)", (i, f"row {i}"))


def assert_same_data(restored: PgCluster, source: PgCluster) -> None:
    for table, key in TABLES:
        assert table_digest(restored, table, key) == table_digest(source, table, key), table


def local_root(env: Setup) -> Path:
    return env.spec("local").path / "cluster" / "main"


def test_backups_go_to_every_repository_or_the_one_named(env: Setup, s3: S3Server) -> None:
    b1 = env.backup()["id"]
    assert env.backup_ids("local") == [b1] and env.backup_ids("offsite") == [b1]

    out = env.run("backup", "--repo", "offsite").stdout
    assert "repository local" not in out, out
    b2 = env.backup_ids("offsite")[-1]
    assert env.backup_ids("local") == [b1]
    assert env.backup_ids("offsite") == [b2]  # offsite keeps one full

    add_rows(env.cluster, 1)
    b3 = env.backup()["id"]
    b4 = env.backup()["id"]
    assert env.backup_ids("local") == [b3, b4]  # local keeps two
    assert env.backup_ids("offsite") == [b4]
    env.run("verify")


def test_archive_push_waits_for_a_repository_that_is_down(env: Setup, s3: S3Server) -> None:
    pg = env.cluster
    pg.switch_and_wait_archived()
    archived, failed, _, _ = env.archiver()
    s3.stop()
    add_rows(pg, 2)
    first = pg.switch_wal()
    wait_archiver_failures(env, failed)
    add_rows(pg, 3)
    last = pg.switch_wal()
    assert env.archiver()[0] == archived, "a segment was reported archived while a repository was down"
    assert (pg.pgdata / "pg_wal" / "archive_status" / f"{first}.ready").exists()

    s3.start()
    pg.wait_archived(last)
    for name in ("local", "offsite"):
        ranges = [r for tl in env.info_of(name)["wal"] for r in tl["ranges"]]
        assert any(r["start"] <= first and r["stop"] >= last for r in ranges), (name, ranges)


def test_restore_and_archive_get_fall_back(env: Setup, s3: S3Server) -> None:
    pg = env.cluster
    add_rows(pg, 4)
    pg.switch_and_wait_archived()
    add_rows(pg, 5)
    needed = pg.switch_wal()  # recovery needs this one, after the newest backup
    pg.wait_archived(needed)
    pg.switch_and_wait_archived()

    # archive-get: a file missing from the first repository comes from the second
    wal_file = next(local_root(env).glob(f"wal/*/{needed}"))
    aside = wal_file.with_name("aside")
    wal_file.rename(aside)
    try:
        dest = env.workdir / "fetched"
        env.run("archive-get", needed, dest)
        reference = env.workdir / "reference"
        env.run("archive-get", needed, reference,
                config=env.write_variant("offsite-only.toml", [env.spec("offsite")]))
        assert dest.read_bytes() == reference.read_bytes()
        dest.unlink()

        # a damaged copy in the first repository: the same
        shutil.copyfile(aside, wal_file)
        flip_byte(wal_file)
        env.run("archive-get", needed, dest)
        assert dest.read_bytes() == reference.read_bytes()
        wal_file.unlink()

        # restore: the newest backup in the first repository is damaged, and a WAL file
        # recovery needs is missing from it: both come from the second
        newest = env.backup_ids("local")[-1]
        data = local_root(env) / "backup" / newest / "data"
        victim = max(data.iterdir(), key=lambda p: p.stat().st_size)
        offset = flip_byte(victim)
        try:
            alone = env.restore(env.new_target_dir(), "--repo", "local", check=False)
            assert alone.returncode == 9, alone  # so the restore below must fall back
            restored = env.restore_and_start(name="fallback")
            assert_same_data(restored, pg)
            restored.stop()
        finally:
            flip_byte(victim, offset)
    finally:
        aside.rename(wal_file)
    env.run("verify")


def copy_json(env: Setup, config: Path, source: str, target: str) -> dict[str, Any]:
    return dict(json.loads(env.run("repo", "copy", "--from", source, "--to", target, "--output", "json",
                                   config=config).stdout))


def test_repo_copy_copies_what_is_missing(env: Setup, s3: S3Server) -> None:
    spare = posix_repo("spare", env.workdir / "spare")
    both = env.write_variant("copy.toml", [env.spec("local"), spare])
    env.run("init", config=both)

    first = copy_json(env, both, "local", "spare")
    assert first["backups_copied"] == env.backup_ids("local"), first
    assert first["wal_copied"] > 0, first
    again = copy_json(env, both, "local", "spare")
    assert again["backups_copied"] == [] and again["wal_copied"] == 0, again

    only_spare = env.write_variant("spare-only.toml", [spare])
    env.run("verify", config=only_spare)
    target = env.new_target_dir()
    env.run("restore", "--target-dir", target, config=only_spare)
    restored = env.restored_cluster(target, name="from-copy")
    restored.start_options["archive_mode"] = "off"
    restored.start()
    restored.wait_promoted()
    assert_same_data(restored, env.cluster)


def test_interrupted_repo_copy_resumes(env: Setup, s3: S3Server) -> None:
    spare = posix_repo("spare2", env.workdir / "spare2")
    both = env.write_variant("copy2.toml", [env.spec("local"), spare])
    env.run("init", config=both)
    backups = spare.path / "cluster" / "main" / "backup"
    # one worker, so that the copy is slow enough to be caught half-way
    proc = env.spawn("repo", "copy", "--from", "local", "--to", "spare2", "--jobs", "1", config=both)
    wait_for("the copy to start writing a backup",
             lambda: proc.poll() is not None or (backups.is_dir() and any(backups.iterdir())), interval=0.005)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the copy finished before it could be interrupted"

    only_spare = env.write_variant("spare2-only.toml", [spare])
    visible = env.backup_ids("spare2", only_spare)
    assert len(visible) < len(env.backup_ids("local")), "the copy was not interrupted half-way"
    env.run("verify", config=only_spare)  # whatever is visible is complete

    result = copy_json(env, both, "local", "spare2")
    assert visible + result["backups_copied"] == env.backup_ids("local"), result
    env.run("verify", config=only_spare)
