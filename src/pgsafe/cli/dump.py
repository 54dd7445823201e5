from __future__ import annotations

import sys
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import argparse

from pgsafe.cli.common import add_output


def add_parser(sub: Any, name: str) -> None:
    p = sub.add_parser(name, help="logical backup with pg_dump: every database and the globals by default")
    p.add_argument("--db", action="append", dest="databases", metavar="NAME",
                   help="dump this database (repeatable; default: every database, plus the globals)")
    p.add_argument("--globals", action="store_true",
                   help="roles and tablespaces (pg_dumpall --globals-only); alone, only them")
    p.add_argument("--table", action="append", default=[], metavar="T", help="only this table (pg_dump pattern)")
    p.add_argument("--exclude-table", action="append", default=[], metavar="T", help="not this table")
    p.add_argument("--schema", action="append", default=[], metavar="S", help="only this schema")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--schema-only", action="store_true", help="definitions only, no data")
    g.add_argument("--data-only", action="store_true", help="data only, no definitions")
    p.add_argument("--format", choices=("custom", "directory"),
                   help="pg_dump archive format (default: custom; directory with --jobs above 1)")
    p.add_argument("--jobs", type=int, help="parallel pg_dump workers (directory format)")
    p.add_argument("--staging-dir", help="where the directory format is staged (default: $TMPDIR or /tmp)")
    p.add_argument("--repo", help="repository name (default: every repository)")
    add_output(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from pgsafe.cli.common import human_bytes, load, print_json
    from pgsafe.errors import BackupFailed, UsageError
    from pgsafe.ops.logical import DumpRequest, run_dump

    config, cluster = load(args)
    jobs = args.jobs if args.jobs is not None else 1
    if jobs < 1:
        raise UsageError("--jobs must be at least 1")
    fmt = args.format or ("directory" if jobs > 1 else "custom")
    request = DumpRequest(
        databases=args.databases or (None if not args.globals else []),
        globals=args.globals or not args.databases,
        tables=args.table, exclude_tables=args.exclude_table, schemas=args.schema,
        schema_only=args.schema_only, data_only=args.data_only, format=fmt, jobs=jobs,
        staging_dir=args.staging_dir)
    repos = [config.repo(args.repo)] if args.repo else list(config.repos)
    meter = _Meter()
    try:
        result = run_dump(cluster, repos, request, progress=meter)
    finally:
        meter.close()
    if args.output == "json":
        print_json({**result.__dict__, "dumps": [d.__dict__ for d in result.dumps]})
    else:
        where = ", ".join(result.repos)
        for d in result.dumps:
            what = f"database {d.database}" if d.kind == "database" else "globals"
            if d.status == "complete":
                print(f"dump {d.id}  {what}  {d.format}: {human_bytes(d.size)} stored as "
                      f"{human_bytes(d.stored_size)} in {d.duration:.1f} s (repository {where})")
            else:
                print(f"FAILED dump {d.id}  {what}: {d.error}")
        if result.expired:
            print(f"expired dumps: {', '.join(result.expired)}")
    if result.failed:
        first = result.failed[0]
        raise BackupFailed(f"{len(result.failed)} of {len(result.dumps)} dumps failed; "
                           f"{first.database or 'globals'}: {first.error}")
    return 0


class _Meter:
    """Bytes dumped so far, on one line of a terminal; silent otherwise."""

    def __init__(self) -> None:
        self.enabled = sys.stderr.isatty()
        self.what = ""
        self.started = time.monotonic()
        self.last = 0.0

    def __call__(self, what: str, done: int) -> None:
        if not self.enabled:
            return
        from pgsafe.cli.common import human_bytes

        now = time.monotonic()
        if what != self.what:
            self.what, self.started = what, now
        elif now - self.last < 0.2:
            return
        self.last = now
        rate = done / max(now - self.started, 1e-6)
        sys.stderr.write(f"\rdump {what}: {human_bytes(done)} ({human_bytes(int(rate))}/s)\033[K")
        sys.stderr.flush()

    def close(self) -> None:
        if self.enabled and self.what:
            sys.stderr.write("\n")
            sys.stderr.flush()
