"""Real faults: killed processes, damaged bytes, concurrent runs (issue 2, requirements
1, 4, 7 and 10)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
from pathlib import Path
from typing import Callable

import pytest

from helpers import (
    PgCluster,
    PgsafeEnv,
    assert_clean_error,
    flip_byte,
    table_digest,
    tree_snapshot,
    wait_for,
)

BACKUP_START = ("select count(*) from pg_stat_activity where pid <> pg_backend_pid() "
                "and query ilike '%pg_backup_start%' and state = 'active'")


def in_backup_start(pg: PgCluster) -> bool:
    """Some session is inside pg_backup_start() right now (waiting for its checkpoint)."""
    return pg.scalar(BACKUP_START) > 0


def backup_data_size(repo: Path) -> int:
    """Bytes in the repository outside its WAL archive."""
    return sum(size for rel, (size, _) in tree_snapshot(repo).items()
               if "wal" not in Path(rel).parts)


def dirty_many_buffers(pg: PgCluster) -> None:
    """So that a spread checkpoint (paced over 0.9 * checkpoint_timeout) takes a while."""
    pg.sql("update pgbench_accounts set filler = 'dirty'")


def not_exited(proc: subprocess.Popen[str]) -> Callable[[], str]:
    def why() -> str:
        if proc.poll() is not None:
            out, err = proc.communicate()
            return f"backup already exited {proc.returncode}\n{out}\n{err}"
        return "backup still running"
    return why


# -- kill -9 ---------------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("moment", ["in-backup-start", "copying"])
def test_kill9_during_backup_leaves_nothing_visible(make_env: Callable[..., PgsafeEnv],
                                                    moment: str) -> None:
    env = make_env(settings={"checkpoint_timeout": "30s"})
    pg = env.cluster
    pg.pgbench(["-i", "-s", "5" if moment == "copying" else "2", "-q"])
    if moment == "copying":
        # data that compresses less, so the copy lasts long enough to be caught
        pg.sql("create table noise as select md5(g::text) || md5((-g)::text) as h "
               "from generate_series(1, 300000) g")
    pg.switch_and_wait_archived()
    if moment == "in-backup-start":
        dirty_many_buffers(pg)
        proc = env.spawn("backup", "--type", "full", "--checkpoint", "spread")
        wait_for("the backup to wait in pg_backup_start",
                 lambda: proc.poll() is not None or in_backup_start(pg), interval=0.05)
    else:
        baseline = backup_data_size(env.repo)
        proc = env.spawn("backup", "--type", "full", "--jobs", "1")
        wait_for("the backup to start copying",
                 lambda: proc.poll() is not None or backup_data_size(env.repo) > baseline,
                 interval=0.01)
    assert proc.poll() is None, not_exited(proc)()
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL

    assert env.backups() == []
    # The next backup is not blocked by anything the dead one left, and restores.
    backup = env.backup()
    assert [b["id"] for b in env.backups()] == [backup["id"]]
    pg.switch_and_wait_archived()
    restored = env.restore_and_start()
    assert table_digest(restored, "pgbench_accounts", "aid") == table_digest(pg, "pgbench_accounts", "aid")


# -- damaged repository -------------------------------------------------------------

def stored_backup_files(env: PgsafeEnv, before: dict[str, tuple[int, int]]) -> list[Path]:
    """Files a backup added to the repository, outside the WAL archive."""
    after = tree_snapshot(env.repo)
    return [env.repo / rel for rel in after
            if rel not in before and "wal" not in Path(rel).parts]


@pytest.mark.parametrize("damage", ["flip-data", "flip-manifest", "delete-data"])
def test_damaged_backup_stops_restore_naming_the_file(env: PgsafeEnv, damage: str) -> None:
    pg = env.cluster
    pg.pgbench(["-i", "-s", "1", "-q"])
    before = tree_snapshot(env.repo)
    env.backup()
    pg.switch_and_wait_archived()
    added = stored_backup_files(env, before)
    manifests = [p for p in added if "manifest" in p.name]
    data = [p for p in added if p not in manifests and p.suffix != ".json"]
    assert data, f"no data objects found among {added}"
    if damage == "flip-manifest":
        assert manifests, f"no manifest found among {added}"
        victim = manifests[0]
    else:
        victim = max(data, key=lambda p: p.stat().st_size)
    if damage == "delete-data":
        victim.unlink()
    else:
        flip_byte(victim)

    target = env.new_target_dir()
    proc = env.restore(target, check=False)
    detail = f"{victim}: exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    if damage == "flip-manifest":
        assert proc.returncode in (4, 9), detail
    else:
        assert_clean_error(proc, 9)
    assert "Traceback" not in proc.stderr, detail
    # names a file: the repository object, or a file of the data directory
    names = re.escape(victim.name) + r"|" + re.escape(str(victim.relative_to(env.repo)))
    assert re.search(rf"({names}|base/\d+|global/|pg_\w+/|\w+\.conf)", proc.stderr), detail
    # and never yields a data directory that would start
    assert not (target / "recovery.signal").exists() or proc.returncode == 0


def test_damaged_wal_stops_recovery_instead_of_ending_it_early(env: PgsafeEnv) -> None:
    """A damaged archived segment past the backup must abort recovery, not look like
    the end of the archive (which would open the server with rows missing)."""
    pg = env.cluster
    pg.sql("create table t (i int)")
    env.backup()
    pg.sql("insert into t select generate_series(1, 1000)")
    damaged = pg.switch_and_wait_archived()
    pg.sql("insert into t select generate_series(1001, 2000)")
    pg.switch_and_wait_archived()
    (obj,) = [p for p in env.repo.rglob(f"{damaged}*") if p.is_file()]
    flip_byte(obj)

    target = env.new_target_dir()
    env.restore(target)
    restored = env.restored_cluster(target)
    restored.start_options["archive_mode"] = "off"
    try:
        restored.start()
    except AssertionError:
        pass  # may die before it accepts connections
    restored.wait_stopped()
    log = restored.logfile.read_text()
    assert damaged in log and "pgsafe: error" in log, restored.log_tail()
    assert "ready to accept connections" not in log, restored.log_tail()


# -- locking ---------------------------------------------------------------------------

@pytest.mark.slow
def test_second_backup_is_locked_out_but_archiving_goes_on(make_env: Callable[..., PgsafeEnv]) -> None:
    env = make_env(settings={"checkpoint_timeout": "30s"})
    pg = env.cluster
    pg.pgbench(["-i", "-s", "2", "-q"])
    pg.switch_and_wait_archived()
    dirty_many_buffers(pg)
    first = env.spawn("backup", "--type", "full", "--checkpoint", "spread")
    wait_for("the first backup to wait in pg_backup_start",
             lambda: first.poll() is not None or in_backup_start(pg), interval=0.05)
    assert first.poll() is None, not_exited(first)()

    second = env.run("backup", "--type", "full", check=False)
    assert_clean_error(second, 5)
    assert re.search(r"lock|running", second.stderr, re.I), second.stderr
    # a backup in progress is not listed
    assert env.backups() == []
    # archive-push is not blocked by the running backup
    pg.sql("insert into pgbench_history values (1, 1, 1, 1, now(), 'x')")
    pg.switch_and_wait_archived()
    assert first.poll() is None, "the first backup ended too early to prove anything"

    out, err = first.communicate(timeout=600)
    assert first.returncode == 0, f"{out}\n{err}"
    assert len(env.backups()) == 1
