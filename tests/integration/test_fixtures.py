"""The test infrastructure itself: real servers start, answer, stop and die as asked."""

from __future__ import annotations

import os
from typing import Callable

from helpers import PgCluster, server_uid_gid


def test_cluster_runs_as_server_user_with_checksums(cluster: PgCluster) -> None:
    assert cluster.is_running()
    assert cluster.scalar("show data_checksums") == "on"
    assert cluster.scalar("show port") == str(cluster.port)
    assert cluster.scalar("show unix_socket_directories") == str(cluster.socket_dir)
    assert cluster.scalar("show listen_addresses") == "127.0.0.1"
    uid, _ = server_uid_gid()
    assert cluster.pgdata.stat().st_uid == uid
    pid = cluster.postmaster_pid()
    assert pid is not None and os.stat(f"/proc/{pid}").st_uid == uid
    cluster.sql("create table t(i int)")
    cluster.sql("insert into t select generate_series(1, 10)")
    assert cluster.sql("select count(*), sum(i) from t") == [(10, 55)]


def test_stop_kill_restart_and_configure(cluster: PgCluster) -> None:
    cluster.sql("create table t as select 1 as i")
    cluster.stop()
    assert not cluster.is_running()
    cluster.configure(work_mem="7MB")
    cluster.start()
    assert cluster.scalar("show work_mem") == "7MB"
    cluster.kill9()
    assert not cluster.is_running()
    cluster.start()  # crash recovery
    assert cluster.scalar("select count(*) from t") == 1


def test_two_clusters_side_by_side(make_cluster: Callable[..., PgCluster]) -> None:
    a = make_cluster(start=True)
    b = make_cluster(start=True)
    assert a.port != b.port
    sysids = {pg.scalar("select system_identifier from pg_control_system()") for pg in (a, b)}
    assert len(sysids) == 2


def test_pgbench(cluster: PgCluster) -> None:
    cluster.pgbench(["-i", "-s", "1", "-q"])
    cluster.pgbench(["-c", "2", "-t", "20"])
    assert cluster.scalar("select count(*) from pgbench_accounts") == 100000
    assert cluster.scalar("select count(*) from pgbench_history") == 40
