"""`pgsafe restore-dump`: a logical backup back into a database, whole or in part.

- Whole: pg_restore reads the custom archive from its standard input as pgsafe
  decodes it from the repository (checksums checked on the way); with ``--jobs`` above
  1, or for the directory format, the dump is first staged on the local disk, since
  pg_restore then needs a file it can seek in.
- ``--table``: the archive's table of contents is read (pg_restore --list), the
  named tables are chosen *with* what belongs to them (indexes, constraints,
  triggers, defaults, owned sequences, comments, grants: see pgsafe.pg.toc), and
  pg_restore runs on that list.
- ``--into-schema NEW``: the chosen tables and everything they depend on are restored
  into a temporary database on the target server; there PostgreSQL itself moves the
  tables, with their dependents, into a transfer schema (pgsafe.pg.relocate); pg_dump
  then copies them into the target database in one transaction that ends by moving
  them into NEW. The temporary database is always dropped.

pg_restore stops at the first error (``--exit-on-error``); its message is the
command's error. A target database that does not exist is created (with the dump's
encoding and locale) and dropped again if the restore fails.
"""

from __future__ import annotations

import os
import re
import secrets
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from pgsafe.config import ClusterConfig, RepoConfig
from pgsafe.errors import PostgresError, UsageError
from pgsafe.ops.logical import ARCHIVE_FILE, GLOBALS_FILE, Archive, feed, find_dump
from pgsafe.ops.signals import interruptible, shielded
from pgsafe.pg import relocate, toc
from pgsafe.pg.conn import connect, query
from pgsafe.pg.tools import ToolProcess, conninfo_string, find_tool
from pgsafe.repo.dumps import DumpStore

Step = Callable[[str], None]


@dataclass
class RestoreDumpOptions:
    dbname: str
    tables: list[str] = field(default_factory=list)
    schema_only: bool = False
    data_only: bool = False
    clean: bool = False
    no_owner: bool = False
    jobs: int = 1
    into_schema: str | None = None
    single_transaction: bool = False
    staging_dir: str | None = None


@dataclass
class RestoreDumpResult:
    dump_id: str
    repo: str
    kind: str
    source_database: str | None
    database: str
    size: int
    duration: float
    created_database: bool = False
    restored: list[str] = field(default_factory=list)  # selected relations, or empty for the whole dump
    moved: list[dict[str, Any]] = field(default_factory=list)
    rows: int = 0
    notices: list[str] = field(default_factory=list)


def run_restore_dump(cluster: ClusterConfig, repo_configs: list[RepoConfig], dump_id: str,
                     options: RestoreDumpOptions, step: Step | None = None) -> RestoreDumpResult:
    started = time.monotonic()
    say = step or (lambda _: None)
    _validate(options)
    repo, store, entry = find_dump(cluster, repo_configs, dump_id)
    result = RestoreDumpResult(dump_id, repo.name, entry["kind"], entry.get("database"), options.dbname,
                               int(entry["size"]), 0.0)
    with interruptible():
        admin = connect(cluster.conninfo_kwargs(), "pgsafe restore-dump")
        try:
            server_major = int(query(admin, "select current_setting('server_version_num')::int")[0][0]) // 10000
            exists = bool(query(admin, "select 1 from pg_database where datname = %s", (options.dbname,)))
        finally:
            admin.close()
        major = max(server_major, int(entry["pg_version"]) // 10000)
        if entry["kind"] == "globals":
            if options.tables or options.into_schema or options.schema_only or options.data_only:
                raise UsageError(f"dump {dump_id} holds roles and tablespaces (pg_dumpall --globals-only): "
                                 "--table, --into-schema, --schema-only and --data-only do not apply")
            if not exists:
                raise UsageError(f"database {options.dbname!r} does not exist; restore globals through an existing "
                                 "database such as postgres")
            say(f"running the globals script of dump {dump_id} in database {options.dbname}")
            result.notices = _restore_globals(cluster, store, entry, options, find_tool("psql", major))
            result.duration = time.monotonic() - started
            return result
        pg_restore = _find_pg_restore(major, int(entry["pg_version"]) // 10000)
        archive = Archive(store, entry, options.staging_dir)
        if not exists:
            say(f"creating database {options.dbname} ({entry.get('encoding')}, {entry.get('collate')})")
            _create_database(cluster, options.dbname, entry)
            result.created_database = True
            result.notices.append(f"created database {options.dbname}")
        try:
            if options.into_schema:
                _restore_into_schema(cluster, archive, options, pg_restore, major, result, say)
            elif options.tables:
                _restore_selected(cluster, archive, options, pg_restore, result, say)
            else:
                say(f"restoring dump {dump_id} ({entry['dump_format']}) into database {options.dbname}")
                _pg_restore(pg_restore, _restore_args(cluster, options), archive, options.jobs)
        except BaseException:
            if result.created_database:
                with shielded():
                    _drop_database(cluster, options.dbname)
            raise
        finally:
            archive.cleanup()
    result.duration = time.monotonic() - started
    return result


def _validate(options: RestoreDumpOptions) -> None:
    if options.schema_only and options.data_only:
        raise UsageError("--schema-only and --data-only cannot be used together")
    if options.jobs < 1:
        raise UsageError("--jobs must be at least 1")
    if options.single_transaction and options.jobs > 1:
        raise UsageError("--single-transaction cannot be used with --jobs above 1")
    if options.into_schema is not None:
        if not options.tables:
            raise UsageError("--into-schema moves the tables named with --table; name at least one")
        if not options.into_schema:
            raise UsageError("--into-schema needs a schema name")


def _find_pg_restore(server_major: int, dump_major: int) -> str:
    """pg_restore of the target server's major version (it reads older archives), else
    of the dump's."""
    from pgsafe.errors import ToolMissing

    try:
        return find_tool("pg_restore", server_major)
    except ToolMissing:
        if dump_major == server_major:
            raise
        return find_tool("pg_restore", dump_major)


def _restore_args(cluster: ClusterConfig, options: RestoreDumpOptions) -> list[str]:
    args = ["--dbname=" + conninfo_string(cluster.conninfo_kwargs(), options.dbname, "pgsafe restore-dump"),
            "--exit-on-error"]
    if options.clean:
        args += ["--clean", "--if-exists"]
    if options.no_owner:
        args.append("--no-owner")
    if options.schema_only:
        args.append("--schema-only")
    if options.data_only:
        args.append("--data-only")
    if options.single_transaction:
        args.append("--single-transaction")
    return args


def _pg_restore(pg_restore: str, args: list[str], archive: Archive, jobs: int, names: set[str] | None = None) -> None:
    """Run pg_restore on the archive: streamed into its standard input when it can read
    that way, staged on the local disk otherwise."""
    if archive.format == "custom" and jobs <= 1:
        proc = ToolProcess([pg_restore, *args], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL)
        try:
            feed(proc, archive.chunks(ARCHIVE_FILE))
            code = proc.wait()
            if code != 0:
                raise PostgresError(proc.failure())
        finally:
            proc.close()
        return
    path = archive.stage(names)
    proc = ToolProcess([pg_restore, *args, f"--jobs={jobs}", path], stdout=subprocess.DEVNULL)
    try:
        if proc.wait() != 0:
            raise PostgresError(proc.failure())
    finally:
        proc.close()


def _wanted(options: RestoreDumpOptions) -> list[tuple[str | None, str]]:
    return [relocate.parse_qualified(t, default_schema=None) for t in options.tables]


def _choose(archive: Archive, pg_restore: str, options: RestoreDumpOptions) -> tuple[toc.Toc, list[toc.TocEntry]]:
    contents = archive.toc(pg_restore)
    chosen, missing = toc.select_tables(contents, _wanted(options))
    if missing:
        raise UsageError(f"dump {archive.id} has no table {missing[0]}; `pgsafe dump-list {archive.id}` lists it")
    return contents, chosen


def _data_files(entries: list[toc.TocEntry]) -> set[str]:
    """Directory format: the files pg_restore reads for these entries."""
    return {"toc.dat"} | {f"{e.id}.dat" for e in entries if e.desc in toc.DATA}


def _restore_selected(cluster: ClusterConfig, archive: Archive, options: RestoreDumpOptions, pg_restore: str,
                      result: RestoreDumpResult, say: Step) -> None:
    say(f"reading the table of contents of dump {archive.id}")
    _contents, chosen = _choose(archive, pg_restore, options)
    result.restored = [f"{e.namespace}.{e.tag}" for e in chosen if e.desc in toc.RELATIONS]
    say(f"restoring {', '.join(result.restored)} ({len(chosen)} entries) into database {options.dbname}")
    with _list_file(chosen) as path:
        _pg_restore(pg_restore, _restore_args(cluster, options) + [f"--use-list={path}"], archive, options.jobs,
                    _data_files(chosen))


class _list_file:
    def __init__(self, entries: list[toc.TocEntry]) -> None:
        self.entries = entries
        self.path = ""

    def __enter__(self) -> str:
        fd, self.path = tempfile.mkstemp(prefix="pgsafe-list-", suffix=".txt")
        with os.fdopen(fd, "w") as f:
            f.write(toc.list_file(self.entries))
        return self.path

    def __exit__(self, *_: object) -> None:
        os.unlink(self.path)


# -- --into-schema ------------------------------------------------------------------

def _restore_into_schema(cluster: ClusterConfig, archive: Archive, options: RestoreDumpOptions, pg_restore: str,
                         major: int, result: RestoreDumpResult, say: Step) -> None:
    new_schema = options.into_schema
    assert new_schema
    say(f"reading the table of contents of dump {archive.id}")
    contents, chosen = _choose(archive, pg_restore, options)
    wanted = _wanted(options)
    named = [e for e in chosen if e.desc in toc.RELATIONS
             and any(e.tag == n and (s is None or s == e.namespace) for s, n in wanted)]
    moves = [relocate.Move(relocate.QualifiedName(e.namespace or "public", e.tag),
                           relocate.QualifiedName(new_schema, e.tag)) for e in named]
    for m in moves:
        if m.source.schema == new_schema:
            raise UsageError(f"{m.source} is already in schema {new_schema}; restore it without --into-schema")
    target_kwargs = {**cluster.conninfo_kwargs(), "dbname": options.dbname}
    target = connect(target_kwargs, "pgsafe restore-dump")
    try:
        taken = relocate.taken_names(target, new_schema,
                                     tuple(m.target.name for m in moves) if options.clean else ())
        new_schemas = set() if relocate.schema_exists(target, new_schema) else {new_schema}
        for m in moves:
            if m.target.name in taken:
                raise UsageError(f"{m.target} already exists in database {options.dbname}; add --clean to replace it")
        encoding, collate, ctype = query(
            target, "select pg_encoding_to_char(encoding), datcollate, datctype from pg_database "
                    "where datname = current_database()")[0]
    finally:
        target.close()
    staging_db = f"pgsafe_restore_{secrets.token_hex(6)}"
    transfer = relocate.transfer_schema_name()
    say(f"staging {', '.join(str(m.source) for m in moves)} in temporary database {staging_db}")
    _create_database(cluster, staging_db, {"encoding": encoding, "collate": collate, "ctype": ctype})
    try:
        staging = _restore_args(cluster, RestoreDumpOptions(staging_db, no_owner=options.no_owner))
        # definitions: the chosen tables and everything they depend on
        schema_entries = [e for e in contents.entries if e.desc not in toc.NOT_STAGED and e.desc not in toc.DATA
                          and e.id in {x.id for x in toc.context(contents, chosen) + chosen}]
        with _list_file(schema_entries) as path:
            _pg_restore(pg_restore, staging + ["--schema-only", f"--use-list={path}"], archive, 1,
                        _data_files([]))
        data_entries = [e for e in chosen if e.desc in toc.DATA]
        if not options.schema_only and data_entries:
            say("loading their data into the temporary database")
            with _list_file(data_entries) as path:
                _pg_restore(pg_restore, staging + ["--data-only", "--disable-triggers", f"--use-list={path}"],
                            archive, 1, _data_files(data_entries))
        # PostgreSQL moves and renames them, with their indexes, constraints and sequences
        conn = connect({**cluster.conninfo_kwargs(), "dbname": staging_db}, "pgsafe restore-dump")
        try:
            relocate.relocate(conn, moves, transfer, {new_schema: taken})
            source_schema = transfer
            if options.data_only:  # the tables already exist in the target: COPY straight into them
                conn.execute(f"create schema if not exists {relocate.quote_ident(new_schema)}")
                for m in moves:
                    conn.execute(f"alter {m.kind} {relocate.quote_ident(transfer)}.{relocate.quote_ident(m.target.name)}"
                                 f" set schema {relocate.quote_ident(new_schema)}")
                source_schema = new_schema
        finally:
            conn.close()
        say(f"copying into schema {new_schema} of database {options.dbname}")
        pg_dump = find_tool("pg_dump", major)
        dump_argv = [pg_dump, "--dbname=" + conninfo_string(cluster.conninfo_kwargs(), staging_db, "pgsafe restore-dump")]
        dump_argv += [f"--table={relocate.quote_ident(source_schema)}.{relocate.quote_ident(m.target.name)}"
                      for m in moves]
        if options.schema_only:
            dump_argv.append("--schema-only")
        if options.data_only:
            dump_argv.append("--data-only")
        if options.no_owner:
            dump_argv.append("--no-owner")
        psql = [os.path.join(os.path.dirname(pg_dump), "psql"),
                "--dbname=" + conninfo_string(cluster.conninfo_kwargs(), options.dbname, "pgsafe restore-dump")]
        if options.data_only:
            copied = relocate.transfer(dump_argv, psql, "", "")
        else:
            copied = relocate.transfer(
                dump_argv, psql,
                relocate.load_prologue(transfer, [m.target for m in moves] if options.clean else None),
                relocate.load_epilogue(moves, transfer, new_schemas if not options.no_owner else None))
        result.rows = copied.rows
    finally:
        with shielded():
            _drop_database(cluster, staging_db)
    result.restored = [str(m.source) for m in moves]
    result.moved = [{"from": str(m.source), "to": str(m.target), "renamed": m.renamed} for m in moves]
    for m in moves:
        result.notices += m.notices
        if m.renamed:
            result.notices.append(f"{m.target}: renamed " + ", ".join(f"{a} -> {b}" for a, b in m.renamed.items())
                                  + " to keep names unique in the schema")


# -- databases ---------------------------------------------------------------------

def _create_database(cluster: ClusterConfig, name: str, like: dict[str, Any]) -> None:
    from psycopg import sql

    conn = connect(cluster.conninfo_kwargs(), "pgsafe restore-dump")
    try:
        stmt = sql.SQL("create database {} template template0").format(sql.Identifier(name))
        if like.get("encoding"):
            stmt += sql.SQL(" encoding {}").format(sql.Literal(like["encoding"]))
        if like.get("collate"):
            stmt += sql.SQL(" lc_collate {} lc_ctype {}").format(sql.Literal(like["collate"]),
                                                                  sql.Literal(like.get("ctype") or like["collate"]))
        query(conn, stmt.as_string(conn))
    finally:
        conn.close()


def _drop_database(cluster: ClusterConfig, name: str) -> None:
    from psycopg import sql

    try:
        conn = connect(cluster.conninfo_kwargs(), "pgsafe restore-dump")
    except PostgresError:
        return
    try:
        query(conn, sql.SQL("drop database if exists {} with (force)").format(sql.Identifier(name)).as_string(conn))
    except PostgresError:
        pass
    finally:
        conn.close()


# -- globals -------------------------------------------------------------------------

_ALREADY = re.compile(r'ERROR:\s+role "[^"]*" already exists|ERROR:\s+tablespace "[^"]*" already exists')


def _restore_globals(cluster: ClusterConfig, store: DumpStore, entry: dict[str, Any], options: RestoreDumpOptions,
                     psql: str) -> list[str]:
    """Run the pg_dumpall script with psql. Roles and tablespaces that already exist are
    reported, not fatal (the script creates every role, the restoring one included);
    any other error fails the command."""
    archive = Archive(store, entry)
    argv = [psql, "--no-psqlrc", "--dbname=" + conninfo_string(cluster.conninfo_kwargs(), options.dbname,
                                                               "pgsafe restore-dump"), "--file=-"]
    proc = ToolProcess(argv, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL)
    try:
        feed(proc, archive.chunks(GLOBALS_FILE))
        code = proc.wait()
        text = proc.error_text()
    finally:
        proc.close()
    errors = [ln for ln in text.splitlines() if "ERROR:" in ln]
    fatal = [ln for ln in errors if not _ALREADY.search(ln)]
    if code != 0 or fatal:
        first = (fatal or [text.strip().splitlines()[-1] if text.strip() else f"exit {code}"])[0]
        raise PostgresError(f"psql failed running the globals script: {first}"
                            + (f" (and {len(fatal) - 1} more errors)" if len(fatal) > 1 else ""))
    return [f"already existed: {_ALREADY.search(ln).group(0).split('ERROR:')[1].strip()}"  # type: ignore[union-attr]
            for ln in errors]
