"""What a base backup copies from a data directory, per PostgreSQL's documentation
("Backing Up the Data Directory", and the server's own base backup code).

To update for a new major version: compare with the PostgreSQL release notes and the
list in src/backend/backup/basebackup.c (excludeDirContents / excludeFiles), then add
version-gated entries below.
"""

from __future__ import annotations

import re

# directories kept, contents skipped (the server recreates or does not need them)
EXCLUDED_DIR_CONTENTS = frozenset(
    {
        "pg_wal",  # WAL comes from the archive; pg_wal/archive_status is recreated empty
        "pg_dynshmem",
        "pg_notify",
        "pg_replslot",
        "pg_serial",
        "pg_snapshots",
        "pg_stat_tmp",
        "pg_subtrans",
    }
)

# top-level files never copied
EXCLUDED_TOP_FILES = frozenset(
    {
        "postmaster.pid",
        "postmaster.opts",
        "backup_label",  # stored from pg_backup_stop's result instead
        "tablespace_map",
        "backup_manifest",
        "current_logfiles",
        "backup_label.old",
        "recovery.signal",
        "standby.signal",
        "postgresql.auto.conf.tmp",
    }
)

# file names never copied wherever they are
EXCLUDED_ANYWHERE = frozenset({"pg_internal.init"})

TEMP_PREFIX = "pgsql_tmp"
_RELATION_RE = re.compile(r"^(\d+)(_(fsm|vm|init))?(\.\d+)?$")
_DB_DIR_RE = re.compile(r"^(base/\d+|pg_tblspc/\d+/[^/]+/\d+)$")


def excluded_contents(rel_dir: str) -> bool:
    return rel_dir in EXCLUDED_DIR_CONTENTS


def excluded_file(rel_path: str, name: str) -> bool:
    if name in EXCLUDED_ANYWHERE or name.startswith(TEMP_PREFIX):
        return True
    return "/" not in rel_path and name in EXCLUDED_TOP_FILES


def excluded_dir(name: str) -> bool:
    return name.startswith(TEMP_PREFIX)


def unlogged_skips(rel_dir: str, names: list[str]) -> set[str]:
    """In a database directory, the forks of unlogged relations other than the init
    fork: recovery recreates them from the init fork, so they are not copied."""
    if not _DB_DIR_RE.match(rel_dir):
        return set()
    init_nodes = {m.group(1) for n in names if (m := _RELATION_RE.match(n)) and m.group(3) == "init"}
    if not init_nodes:
        return set()
    return {
        n for n in names
        if (m := _RELATION_RE.match(n)) and m.group(1) in init_nodes and m.group(3) != "init"
    }
