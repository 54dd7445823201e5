"""Create the repositories and register the cluster's identity in each."""

from __future__ import annotations

import os
from dataclasses import dataclass

from pgsafe.config import ClusterConfig, Config
from pgsafe.pg.conn import connect, server_info
from pgsafe.repo.repository import ClusterIdentity, Repository


@dataclass(frozen=True)
class InitResult:
    repo: str
    location: str
    created: bool
    registered: bool
    system_identifier: int
    pg_version: int


def run_init(config: Config, cluster: ClusterConfig) -> list[InitResult]:
    conn = connect(cluster.conninfo_kwargs(), "pgsafe init")
    try:
        info = server_info(conn)
    finally:
        conn.close()
    ident = ClusterIdentity(info.system_identifier, info.version_num, info.wal_segment_size, info.block_size)
    results = []
    for repo_config in config.repos:
        repo, created = Repository.create(repo_config, _postgres_user(cluster.pgdata))
        registered = repo.register_cluster(cluster.name, ident)
        results.append(InitResult(repo_config.name, repo_config.path, created, registered,
                                  info.system_identifier, info.version_num))
    return results


def _postgres_user(pgdata: str) -> tuple[int, int] | None:
    """Run as root, a new repository belongs to the OS user owning PGDATA: that user
    runs archive_command and must be able to write WAL into it."""
    if os.geteuid() != 0:
        return None
    st = os.stat(pgdata)
    return st.st_uid, st.st_gid
