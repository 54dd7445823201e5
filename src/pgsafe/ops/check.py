"""`pgsafe check`: PostgreSQL settings, and archiving proven end to end."""

from __future__ import annotations

import time
from dataclasses import dataclass

from pgsafe.config import ClusterConfig, Config
from pgsafe.errors import PgsafeError
from pgsafe.pg.backup_api import switch_wal
from pgsafe.pg.conn import connect, server_info, setting
from pgsafe.repo.repository import ClusterIdentity, open_repository


@dataclass(frozen=True)
class CheckItem:
    name: str
    ok: bool
    detail: str
    fix: str = ""


def run_check(config: Config, cluster: ClusterConfig, pgsafe_path: str) -> list[CheckItem]:
    items: list[CheckItem] = []
    try:
        conn = connect(cluster.conninfo_kwargs(), "pgsafe check")
    except PgsafeError as exc:
        return [CheckItem("connection", False, exc.message, "start the server or fix host/port/user in the config")]
    try:
        info = server_info(conn)
        items.append(CheckItem("connection", True, f"PostgreSQL {info.version_num}, system {info.system_identifier}"))
        wal_level = setting(conn, "wal_level")
        items.append(CheckItem("wal_level", wal_level in ("replica", "logical"), f"wal_level = {wal_level}",
                               "set wal_level = replica and restart"))
        mode = setting(conn, "archive_mode")
        items.append(CheckItem("archive_mode", mode in ("on", "always"), f"archive_mode = {mode}",
                               "set archive_mode = on and restart"))
        command = setting(conn, "archive_command")
        ok = "archive-push" in command and config.path in command and "pgsafe" in command
        items.append(CheckItem(
            "archive_command", ok, f"archive_command = {command!r}",
            f"set archive_command = '{pgsafe_path} --config {config.path} archive-push %p' and reload",
        ))
        ident = ClusterIdentity(info.system_identifier, info.version_num, info.wal_segment_size, info.block_size)
        repos_ok = True
        for repo_config in config.repos:
            try:
                repo = open_repository(repo_config)
                repo.check_cluster(cluster.name, ident)
                items.append(CheckItem(f"repository {repo_config.name}", True, f"{repo_config.path}: cluster registered"))
            except PgsafeError as exc:
                repos_ok = False
                items.append(CheckItem(f"repository {repo_config.name}", False, exc.message, "run `pgsafe init`"))
        if repos_ok and all(i.ok for i in items):
            items.append(_check_archiving(config, cluster, conn))
    finally:
        conn.close()
    return items


def _check_archiving(config: Config, cluster: ClusterConfig, conn: object) -> CheckItem:
    segment = switch_wal(conn)
    deadline = time.monotonic() + cluster.archive_timeout
    repos = [open_repository(r) for r in config.repos]
    waiting = list(repos)
    while waiting:
        waiting = [r for r in waiting if r.storage.stat(r.wal_key(cluster.name, segment)) is None]
        if not waiting or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    if waiting:
        return CheckItem(
            "archiving", False,
            f"WAL segment {segment} did not reach repository {waiting[0].name!r} within {cluster.archive_timeout:g} s",
            "look for archive_command errors in the PostgreSQL log (pg_stat_archiver.last_failed_wal)",
        )
    return CheckItem("archiving", True, f"WAL segment {segment} reached every repository")
