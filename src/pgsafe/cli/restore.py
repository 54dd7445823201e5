from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import argparse

from pgsafe.cli.common import add_output


def add_parser(sub: Any, name: str) -> None:
    p = sub.add_parser(name, help="restore a backup and set up point-in-time recovery")
    p.add_argument("--target-dir", required=True, help="empty or missing directory to restore into")
    p.add_argument("--set", dest="set_id", help="backup id (default: the newest that reaches the target)")
    p.add_argument("--repo", help="repository name (default: the first that can, in config order)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--target", choices=("immediate",), help="stop as soon as the backup is consistent")
    g.add_argument("--target-time", help="recover up to this time (e.g. '2026-11-25 18:30:00+00')")
    g.add_argument("--target-xid", help="recover up to this transaction id")
    g.add_argument("--target-lsn", help="recover up to this LSN")
    g.add_argument("--target-name", help="recover up to this restore point")
    p.add_argument("--target-exclusive", action="store_true", help="stop just before the target")
    p.add_argument("--target-action", choices=("promote", "pause", "shutdown"), default="promote",
                   help="what the server does at the target (default: promote)")
    p.add_argument("--target-timeline", help="timeline to follow: a number, current or latest (default)")
    p.add_argument("--tablespace-map", action="append", default=[], metavar="OLD=NEW",
                   help="restore tablespace OLD (oid or location) into NEW; repeatable")
    p.add_argument("--delta", action="store_true",
                   help="reuse the files of a stopped cluster in the target: rewrite only what differs")
    p.add_argument("--standby", action="store_true", help="write standby.signal instead of recovery.signal")
    p.add_argument("--jobs", type=int, help="parallel workers (default: number of cores)")
    add_output(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from pgsafe.cli.common import ProgressBar, human_bytes, load, print_json
    from pgsafe.cli.main import pgsafe_path
    from pgsafe.errors import UsageError
    from pgsafe.ops.restore import restore_command_for, run_restore_any
    from pgsafe.pg.recovery import RecoveryTarget

    config, cluster = load(args)
    target = _target(args, RecoveryTarget)
    mapping = {}
    for item in args.tablespace_map:
        old, sep, new = item.partition("=")
        if not sep or not old or not new:
            raise UsageError(f"--tablespace-map {item!r}: use OLD=NEW (OLD an oid or old location)")
        mapping[old] = new
    if args.jobs is not None and args.jobs < 1:
        raise UsageError("--jobs must be at least 1")
    command = restore_command_for(pgsafe_path(), config.path, cluster.name, len(config.clusters) > 1)
    bar = ProgressBar("restore")
    try:
        repos = [config.repo(args.repo)] if args.repo else list(config.repos)
        result = run_restore_any(cluster, repos, target_dir=args.target_dir,
                             restore_command=command, target=target, set_id=args.set_id,
                             tablespace_map=mapping, standby=args.standby, delta=args.delta, jobs=args.jobs or config.jobs,
                             progress=bar)
    finally:
        bar.close()
    if args.output == "json":
        print_json(result.__dict__)
        return 0
    print(f"restored backup {result.backup_id} into {result.target_dir}: {result.file_count} files, "
          f"{human_bytes(result.size)} in {result.duration:.1f} s")
    if result.delta:
        print(f"  delta: {result.files_kept} files kept, {result.files_written} rewritten "
              f"({human_bytes(result.bytes_written)}), {result.files_removed} removed")
    for key, value in result.recovery_settings.items():
        print(f"  {key} = '{value}'")
    print("start the server to recover" + (" as a standby" if args.standby else ""))
    return 0


def _target(args: argparse.Namespace, cls: Any) -> Any:
    if args.target == "immediate":
        kind, value = "immediate", None
    elif args.target_time is not None:
        kind, value = "time", args.target_time
    elif args.target_xid is not None:
        kind, value = "xid", args.target_xid
    elif args.target_lsn is not None:
        kind, value = "lsn", args.target_lsn
    elif args.target_name is not None:
        kind, value = "name", args.target_name
    else:
        kind, value = "default", None
    return cls(kind=kind, value=value, exclusive=args.target_exclusive, action=args.target_action,
               timeline=args.target_timeline)
