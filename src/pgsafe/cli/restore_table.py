from __future__ import annotations

import sys
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import argparse

from pgsafe.cli.common import add_output


def add_parser(sub: Any, name: str) -> None:
    p = sub.add_parser(name, help="recover one table from a physical backup, at a recovery target, into a database")
    p.add_argument("--table", required=True, metavar="S.T", help="the table to recover (SCHEMA.TABLE)")
    p.add_argument("--db", required=True, dest="source_db", metavar="SRC_DB", help="the database it lived in")
    p.add_argument("--into", required=True, dest="target_db", metavar="TARGET_DB",
                   help="the database to load it into (in the configured cluster)")
    p.add_argument("--as", dest="new_name", metavar="S.T_restored",
                   help="its name there (default: its own name; refused if that exists)")
    p.add_argument("--set", dest="set_id", help="backup id (default: the newest that reaches the target)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--target-time", help="the table as it was at this time (e.g. '2026-11-25 18:30:00+00')")
    g.add_argument("--target-xid", help="... after this transaction")
    g.add_argument("--target-lsn", help="... at this LSN")
    g.add_argument("--target-name", help="... at this restore point")
    p.add_argument("--target-exclusive", action="store_true", help="stop just before the target")
    p.add_argument("--target-timeline", help="timeline to follow: a number, current or latest (default)")
    p.add_argument("--no-owner", action="store_true", help="the recovered table belongs to the restoring user")
    p.add_argument("--no-foreign-keys", action="store_true",
                   help="leave its foreign keys out (printed, to add back later)")
    p.add_argument("--scratch-dir", help="where the scratch copy of the cluster goes (default: $TMPDIR or /tmp)")
    p.add_argument("--jobs", type=int, help="parallel restore workers (default: number of cores)")
    p.add_argument("--repo", help="repository name (default: the first)")
    add_output(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from pgsafe.cli.common import ProgressBar, human_bytes, load, print_json
    from pgsafe.cli.main import pgsafe_path
    from pgsafe.errors import UsageError
    from pgsafe.ops.restore import restore_command_for
    from pgsafe.ops.table_restore import TableRestoreRequest, run_restore_table
    from pgsafe.pg.recovery import RecoveryTarget

    config, cluster = load(args)
    if args.jobs is not None and args.jobs < 1:
        raise UsageError("--jobs must be at least 1")
    kind, value = "default", None
    for k in ("time", "xid", "lsn", "name"):
        if getattr(args, f"target_{k}") is not None:
            kind, value = k, getattr(args, f"target_{k}")
    target = RecoveryTarget(kind=kind, value=value, exclusive=args.target_exclusive, action="promote",
                            timeline=args.target_timeline)
    request = TableRestoreRequest(table=args.table, source_db=args.source_db, target_db=args.target_db,
                                  new_name=args.new_name, target=target, set_id=args.set_id,
                                  scratch_dir=args.scratch_dir, no_owner=args.no_owner,
                                  no_foreign_keys=args.no_foreign_keys, jobs=args.jobs or config.jobs)
    command = restore_command_for(pgsafe_path(), config.path, cluster.name, len(config.clusters) > 1)
    started = time.monotonic()
    quiet = args.output == "json" or not sys.stderr.isatty()  # errors stay one line for scripts
    bar = ProgressBar("restore")
    last_wal = [""]

    def phase(text: str) -> None:
        if quiet:
            return
        if bar.enabled and bar.last:  # end the progress bar's line
            sys.stderr.write("\n")
            bar.last = 0.0
        sys.stderr.write(f"restore-table [{time.monotonic() - started:6.1f} s] {text}\n")
        sys.stderr.flush()

    def on_wal(name: str) -> None:
        if name != last_wal[0] and not quiet and sys.stderr.isatty():
            last_wal[0] = name
            sys.stderr.write(f"\rrestore-table [{time.monotonic() - started:6.1f} s] replayed {name}\033[K")
            sys.stderr.flush()

    try:
        result = run_restore_table(cluster, config.repo(args.repo), request, restore_command=command,
                                   phase=phase, progress=bar, on_wal=on_wal)
    finally:
        if last_wal[0]:
            sys.stderr.write("\n")
    if args.output == "json":
        print_json(result.__dict__)
        return 0
    for notice in result.notices:
        print(f"NOTICE: {notice}")
    for old, new in result.renamed.items():
        print(f"NOTICE: {old} renamed to {new} (the name is taken in the target schema)")
    steps = ", ".join(f"{k} {v:.1f} s" for k, v in result.phases.items())
    print(f"restored {result.source} of database {result.source_db} (backup {result.backup_id}) into "
          f"{result.target_db} as {result.target}: {result.rows} rows, {human_bytes(result.bytes)} "
          f"in {result.duration:.1f} s ({steps})")
    return 0
