from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import argparse

from pgsafe.cli.common import add_output


def add_parser(sub: Any, name: str) -> None:
    p = sub.add_parser(name, help="restore a logical backup (pg_restore) into a database")
    p.add_argument("dump_id", metavar="ID", help="dump id (`pgsafe info` lists them)")
    p.add_argument("--db", required=True, dest="dbname", metavar="TARGET",
                   help="database to restore into (created with the dump's encoding and locale if missing)")
    p.add_argument("--table", action="append", default=[], metavar="T",
                   help="only this table (SCHEMA.TABLE or TABLE), with its indexes, constraints, triggers, "
                        "defaults and sequences; repeatable")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--schema-only", action="store_true", help="definitions only")
    g.add_argument("--data-only", action="store_true", help="data only")
    p.add_argument("--clean", action="store_true", help="drop objects before creating them")
    p.add_argument("--no-owner", action="store_true", help="do not set owners: objects belong to the restoring user")
    p.add_argument("--jobs", type=int, default=1, help="parallel pg_restore workers (stages the dump locally)")
    p.add_argument("--into-schema", metavar="NEW",
                   help="restore the --table tables into schema NEW instead of their own")
    p.add_argument("--single-transaction", action="store_true",
                   help="all or nothing: one transaction (not with --jobs)")
    p.add_argument("--staging-dir", help="where a dump is staged when needed (default: $TMPDIR or /tmp)")
    p.add_argument("--repo", help="repository name (default: the first that holds the dump)")
    add_output(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from pgsafe.cli.common import human_bytes, load, print_json
    from pgsafe.ops.restore_dump import RestoreDumpOptions, run_restore_dump

    config, cluster = load(args)
    repos = [config.repo(args.repo)] if args.repo else list(config.repos)
    options = RestoreDumpOptions(
        dbname=args.dbname, tables=args.table, schema_only=args.schema_only, data_only=args.data_only,
        clean=args.clean, no_owner=args.no_owner, jobs=args.jobs, into_schema=args.into_schema,
        single_transaction=args.single_transaction, staging_dir=args.staging_dir)

    def step(text: str) -> None:
        if args.output != "json":
            sys.stderr.write(f"restore-dump: {text}\n")
            sys.stderr.flush()

    result = run_restore_dump(cluster, repos, args.dump_id, options, step if sys.stderr.isatty() else None)
    if args.output == "json":
        print_json(result.__dict__)
        return 0
    for notice in result.notices:
        print(f"NOTICE: {notice}")
    what = ", ".join(result.restored) if result.restored else (
        "globals" if result.kind == "globals" else f"database {result.source_database}")
    where = f" into schema {args.into_schema}" if args.into_schema else ""
    print(f"restored dump {result.dump_id} ({what}, {human_bytes(result.size)}) into database "
          f"{result.database}{where} in {result.duration:.1f} s")
    return 0
