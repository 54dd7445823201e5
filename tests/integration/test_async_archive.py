"""Asynchronous archiving (issue 4, requirements 5 and 6): WAL pushed ahead under load
survives the server and the push worker being killed, recovery afterwards is exact, the
spool keeps nothing stale, and archive-get serves prefetched segments from it; and two
faults of the spool: another cluster's segment served, stale failures after an outage."""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import signal
import threading
import time
from pathlib import Path

import pytest

from helpers import Lab, PgCluster, table_digest, wait_for
from repolab import Setup, make_setup

PGBENCH_TABLES = (("pgbench_accounts", "aid"), ("pgbench_branches", "bid"), ("pgbench_tellers", "tid"),
                  ("pgbench_history", "tid, bid, aid, mtime, delta"))


def pids_running(*needles: str) -> list[int]:
    """Processes whose command line contains every needle."""
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if all(n in cmdline for n in needles):
            found.append(int(pid))
    return found


def lock_free(path: Path) -> bool:
    """No pgsafe worker holds this spool lock (its owner takes it with flock)."""
    if not path.exists():
        return True
    with open(path, "rb") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        fcntl.flock(f, fcntl.LOCK_UN)
    return True


def digests(pg: PgCluster) -> dict[str, tuple[int, str]]:
    return {table: table_digest(pg, table, key) for table, key in PGBENCH_TABLES}


@pytest.fixture
def env(lab: Lab) -> Setup:
    spool = lab.tmp.make("pgsafe-spool-")
    env = make_setup(lab, cluster_keys={"archive_async": True, "spool_path": str(spool)},
                     settings={"max_wal_size": "256MB"})
    env.spool = spool / spool_name(env)  # type: ignore[attr-defined]
    return env


def spool_name(env: Setup) -> str:
    """The spool of one config and data directory (as pgsafe names it)."""
    tag = hashlib.sha256(f"{os.path.abspath(env.config)}\0{env.cluster.pgdata}".encode()).hexdigest()[:12]
    return f"main-{tag}"


def test_async_archiving_survives_kill9_and_recovery_is_exact(env: Setup) -> None:
    pg = env.cluster
    spool: Path = env.spool  # type: ignore[attr-defined]
    pg.pgbench(["-i", "-s", "5", "-q"])
    backup = env.backup()

    load = pg.pgbench(["-c", "4", "-j", "2", "-T", "20", "-n"], background=True)
    time.sleep(6)
    # pushing ahead: a background worker is running (it exits when idle for a while)
    workers = wait_for("a background push worker under load",
                       lambda: pids_running("archive-push-worker", str(env.config)), timeout=12, interval=0.02)
    # kill the worker and the server together, as a crash of the host's processes would
    for pid in workers:
        os.kill(pid, signal.SIGKILL)
    pg.kill9()
    load.communicate(timeout=120)
    assert load.returncode != 0, "pgbench finished before the server was killed"

    pg.start()
    pg.switch_and_wait_archived()
    source = digests(pg)
    assert source["pgbench_history"][0] > 1000, source
    pg.stop()  # nothing more is written: the archive is the whole history

    # spool: once the worker has gone idle, no marker or temporary file is left behind
    wait_for("the push worker to exit", lambda: lock_free(spool / "push.lock"), timeout=120)
    stale = {n: (spool / "out" / n).read_text() for n in sorted(os.listdir(spool / "out"))}
    assert stale == {}, f"stale files in the push spool: {stale}"

    # archive-get prefetches: after one segment is fetched, the next ones are served
    # from the spool even with the repository gone
    segments = sorted(p.name for p in env.repo.glob("cluster/main/wal/*/0*") if len(p.name) == 24)
    first = segments.index(backup["wal_start"])
    assert len(segments) > first + 3, segments
    fetched = env.workdir / "fetched"
    fetched.mkdir()
    os.chown(fetched, *(lambda st: (st.st_uid, st.st_gid))(pg.pgdata.stat()))
    env.run("archive-get", segments[first], fetched / "a", user="postgres")
    following = segments[first + 1]
    wait_for("the prefetcher to spool the next segment", lambda: (spool / "in" / following).exists(), timeout=60)
    wait_for("the prefetcher to finish", lambda: lock_free(spool / "get.lock"), timeout=60)
    hidden = env.repo.with_name("repo-hidden")
    env.repo.rename(hidden)
    try:
        env.run("archive-get", following, fetched / "b", user="postgres")
    finally:
        hidden.rename(env.repo)
    assert not (spool / "in" / following).exists(), "a served segment stayed in the spool"
    env.run("archive-get", following, fetched / "c")  # from the repository, for comparison
    assert (fetched / "b").read_bytes() == (fetched / "c").read_bytes()

    # a real recovery through the prefetching archive-get, to the end of the archive
    seen: set[str] = set()
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            try:
                seen.update(n for n in os.listdir(spool / "in") if not n.startswith("."))
            except FileNotFoundError:
                pass
            time.sleep(0.02)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        restored = env.restore_and_start(name="async-restored")
    finally:
        done.set()
        watcher.join()
    assert digests(restored) == source
    assert seen, "recovery never used the prefetch spool"
    wait_for("the prefetcher to exit", lambda: lock_free(spool / "get.lock"), timeout=60)
    leftovers = [n for n in os.listdir(spool / "in") if n.startswith(".") or n not in seen]
    assert leftovers == [], f"stale files in the prefetch spool: {leftovers}"
    shutil.rmtree(fetched)


def test_prefetch_spool_never_serves_another_clusters_segment(lab: Lab) -> None:
    """Two different clusters, each called "main" in its own config (a restore host
    drilling several servers, say), with one spool directory, as the default gives them.
    archive-get for B must never return A's segment of the same name."""
    spool = lab.tmp.make("pgsafe-spool-")
    keys = {"archive_async": True, "spool_path": str(spool)}
    a = make_setup(lab, cluster_keys=keys)
    b = make_setup(lab, cluster_keys=keys)
    for env in (a, b):
        for _ in range(3):
            env.cluster.switch_and_wait_archived()
    names = sorted(p.name for p in a.repo.glob("cluster/main/wal/*/0*") if len(p.name) == 24)
    first, following = names[0], names[1]
    assert (b.repo / "cluster" / "main" / "wal" / following[:16] / following).exists()
    out = a.workdir / "out"
    out.mkdir()
    os.chown(out, *(lambda st: (st.st_uid, st.st_gid))(a.cluster.pgdata.stat()))

    a.run("archive-get", first, out / "a", user="postgres")  # A's prefetcher spools A's next ones
    wait_for("A's prefetcher", lambda: (spool / spool_name(a) / "in" / following).exists(), timeout=60)
    b.run("archive-get", following, out / "b", user="postgres")
    b_sync = b.write_variant("sync.toml", archive_async=False)
    b.run("archive-get", following, out / "b-sync", config=b_sync)
    assert (out / "b").read_bytes() == (out / "b-sync").read_bytes(), \
        "archive-get for cluster B returned cluster A's segment"


def set_writable(root: Path, writable: bool) -> None:
    for dirpath, dirs, _files in os.walk(root):
        os.chmod(dirpath, 0o750 if writable else 0o550)


def test_async_catch_up_after_an_outage_reports_no_stale_failures(env: Setup) -> None:
    pg = env.cluster
    spool: Path = env.spool  # type: ignore[attr-defined]
    pg.switch_and_wait_archived()
    wal_root = env.repo / "cluster" / "main" / "wal"
    set_writable(wal_root, False)  # the archive_command's user can no longer write WAL
    try:
        for _ in range(6):
            pg.switch_wal()
        wait_for("the worker to record failures",
                 lambda: sum(1 for n in os.listdir(spool / "out")
                             if (spool / "out" / n).read_text().startswith("error")) >= 4, timeout=60)
    finally:
        set_writable(wal_root, True)
    # the store is back: from now on nothing should fail
    failed = int(pg.scalar("select failed_count from pg_stat_archiver"))
    last = pg.switch_wal()  # also wakes the archiver
    pg.wait_archived(last, timeout=120)
    assert int(pg.scalar("select failed_count from pg_stat_archiver")) - failed <= 1
