"""`pgsafe restore-table`: a table as it was at a recovery target, recovered from a
physical backup into a live database, under a new name if asked.

1. Check the target: the database answers and the new name is free.
2. Restore the backup that reaches the target into a scratch directory (tablespaces
   mapped inside it), with recovery settings that promote at the target.
3. Start a throwaway server on it (pgsafe.pg.scratch: no TCP, archiving off) and wait
   until recovery has reached the target and the server is promoted.
4. In the scratch server, move the table with its indexes, constraints and sequences
   into a transfer schema under its new name (pgsafe.pg.relocate), then pipe pg_dump
   of it into psql on the target: one transaction that ends by moving it into its
   destination schema.
5. Always, even on failure or SIGINT/SIGTERM/SIGHUP: stop the scratch server and
   remove the scratch directory.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from pgsafe.config import ClusterConfig, RepoConfig
from pgsafe.errors import RestoreError
from pgsafe.ops.restore import run_restore
from pgsafe.ops.restore_target import target_timeline
from pgsafe.ops.signals import interruptible, shielded
from pgsafe.pg import relocate
from pgsafe.pg.conn import connect
from pgsafe.pg.recovery import RecoveryTarget
from pgsafe.pg.scratch import ScratchServer
from pgsafe.pg.tools import conninfo_string, find_tool
from pgsafe.policy.target import choose_backup, validate_target
from pgsafe.repo.repository import open_repository

Phase = Callable[[str], None]
Progress = Callable[[int, int], None]


@dataclass
class TableRestoreRequest:
    table: str
    source_db: str
    target_db: str
    new_name: str | None = None  # --as; default: the table's own name
    target: RecoveryTarget = field(default_factory=RecoveryTarget)
    set_id: str | None = None
    scratch_dir: str | None = None
    no_owner: bool = False
    no_foreign_keys: bool = False
    jobs: int | None = None


@dataclass
class TableRestoreResult:
    backup_id: str
    source: str
    target: str
    source_db: str
    target_db: str
    rows: int
    bytes: int
    duration: float
    phases: dict[str, float] = field(default_factory=dict)
    renamed: dict[str, str] = field(default_factory=dict)
    foreign_keys: list[str] = field(default_factory=list)
    notices: list[str] = field(default_factory=list)


def run_restore_table(cluster: ClusterConfig, repo_config: RepoConfig, request: TableRestoreRequest, *,
                      restore_command: str, phase: Phase | None = None, progress: Progress | None = None,
                      on_wal: Callable[[str], None] | None = None) -> TableRestoreResult:
    started = time.monotonic()
    say = phase or (lambda _: None)
    timings: dict[str, float] = {}
    # bad values are errors before anything is written
    target = RecoveryTarget(request.target.kind, request.target.value, request.target.exclusive, "promote",
                            request.target.timeline)
    validate_target(target)
    src_schema, src_name = relocate.parse_qualified(request.table)
    dst_schema, dst_name = relocate.parse_qualified(request.new_name or request.table, default_schema=src_schema)
    assert src_schema is not None and dst_schema is not None
    move = relocate.Move(relocate.QualifiedName(src_schema, src_name), relocate.QualifiedName(dst_schema, dst_name))
    # the target database answers, and the new name is free there
    live = connect({**cluster.conninfo_kwargs(), "dbname": request.target_db}, "pgsafe restore-table")
    try:
        taken = relocate.taken_names(live, dst_schema)
        new_schemas = set() if relocate.schema_exists(live, dst_schema) else {dst_schema}
    finally:
        live.close()
    if dst_name in taken:
        raise RestoreError(f"{move.target} already exists in database {request.target_db}; "
                           f"choose another name with --as {dst_schema}.{dst_name}_restored")
    # which backup, and where its tablespaces go
    repo = open_repository(repo_config)
    timeline, history = target_timeline(repo, cluster.name, target)
    backup = choose_backup(repo.catalog(cluster.name), target, request.set_id, timeline, history)
    major = int(backup["pg_version"]) // 10000
    pg_dump = find_tool("pg_dump", major)
    psql = os.path.join(os.path.dirname(pg_dump), "psql")
    find_tool("postgres", major)
    workdir = tempfile.mkdtemp(prefix="pgsafe-scratch-", dir=request.scratch_dir)
    pgdata = os.path.join(workdir, "pgdata")
    tablespaces = {str(ts["oid"]): os.path.join(workdir, "tablespaces", str(ts["oid"]))
                   for ts in backup.get("tablespaces", [])}
    server: ScratchServer | None = None
    try:
        with interruptible():
            # 2. the physical restore into the scratch directory
            clock = time.monotonic()
            say(f"restoring backup {backup['id']} into {pgdata}")
            run_restore(cluster, repo_config, target_dir=pgdata, restore_command=restore_command, target=target,
                        set_id=backup["id"], tablespace_map=tablespaces, jobs=request.jobs, progress=progress)
            _share_workdir(workdir, pgdata)
            timings["restore"] = time.monotonic() - clock
            # 3. the throwaway server, until recovery has reached the target
            clock = time.monotonic()
            server = ScratchServer(pgdata, workdir, major, cluster.user)
            say(f"starting a scratch server (pid file in {pgdata}), recovering to "
                f"{target.kind if target.value is None else f'{target.kind} {target.value}'}")
            server.start()
            server.wait_promoted(on_wal)
            timings["recovery"] = time.monotonic() - clock
            # 4. rename in the scratch server, copy into the target in one transaction
            clock = time.monotonic()
            transfer = relocate.transfer_schema_name()
            scratch = _connect_scratch(server, request.source_db)
            try:
                relocate.relocate(scratch, [move], transfer, {dst_schema: taken},
                                  drop_foreign_keys=request.no_foreign_keys,
                                  where=f"database {request.source_db} at the recovery target (backup {backup['id']})")
            finally:
                scratch.close()
            say(f"copying {move.source} of database {request.source_db} into {request.target_db} as {move.target}")
            dump_argv = [pg_dump, "--dbname=" + conninfo_string(server.conninfo(request.source_db), None,
                                                                "pgsafe restore-table"),
                         f"--table={relocate.quote_ident(transfer)}.{relocate.quote_ident(dst_name)}"]
            if request.no_owner:
                dump_argv.append("--no-owner")
            psql_argv = [psql, "--dbname=" + conninfo_string(cluster.conninfo_kwargs(), request.target_db,
                                                             "pgsafe restore-table")]
            copied = relocate.transfer(dump_argv, psql_argv, relocate.load_prologue(transfer),
                                       relocate.load_epilogue([move], transfer,
                                                              new_schemas if not request.no_owner else None))
            timings["copy"] = time.monotonic() - clock
    finally:
        with shielded():
            clock = time.monotonic()
            if server is not None:
                server.stop()
            shutil.rmtree(workdir, ignore_errors=True)
            timings["cleanup"] = time.monotonic() - clock
    notices = list(move.notices)
    if move.foreign_keys:
        notices.append("foreign keys were left out (--no-foreign-keys); to add them back: "
                       + " ".join(move.foreign_keys))
    return TableRestoreResult(backup["id"], str(move.source), str(move.target), request.source_db,
                              request.target_db, copied.rows, copied.bytes, time.monotonic() - started,
                              timings, move.renamed, move.foreign_keys, notices)


def _share_workdir(workdir: str, pgdata: str) -> None:
    """The server runs as the owner of the restored data directory: let it into the
    scratch directory (and the tablespaces' parent) to write its socket and log."""
    if os.geteuid() != 0:
        return
    st = os.stat(pgdata)
    for path in (workdir, os.path.join(workdir, "tablespaces")):
        if os.path.isdir(path):
            os.chown(path, st.st_uid, st.st_gid)


def _connect_scratch(server: ScratchServer, dbname: str) -> Any:
    from pgsafe.errors import PostgresError

    try:
        return connect(server.conninfo(dbname), "pgsafe restore-table")
    except PostgresError as exc:
        raise RestoreError(f"database {dbname!r} cannot be opened in the backup: {exc.message}") from None
