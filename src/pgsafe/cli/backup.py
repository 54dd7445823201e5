from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import argparse

from pgsafe.cli.common import add_output


def add_parser(sub: Any, name: str) -> None:
    p = sub.add_parser(name, help="take an online backup")
    p.add_argument("--type", choices=("full", "diff", "incr"), default="full",
                   help="full, diff (changes since the last full) or incr (since the last backup); default full")
    p.add_argument("--jobs", type=int, help="parallel workers (default: number of cores)")
    p.add_argument("--checkpoint", choices=("fast", "spread"), default="fast",
                   help="start with a fast (default) or spread checkpoint")
    p.add_argument("--repo", help="repository name (default: every repository)")
    add_output(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from pgsafe.cli.common import ProgressBar, load, print_json
    from pgsafe.errors import UsageError
    from pgsafe.ops.backup import run_backup_everywhere

    config, cluster = load(args)
    if args.jobs is not None and args.jobs < 1:
        raise UsageError("--jobs must be at least 1")
    repos = [config.repo(args.repo)] if args.repo else list(config.repos)
    bar = ProgressBar("backup")
    try:
        results = run_backup_everywhere(cluster, repos, backup_type=args.type, jobs=args.jobs or config.jobs,
                                        fast_checkpoint=args.checkpoint == "fast", progress=bar)
    finally:
        bar.close()
    if args.output == "json":
        print_json(results[0].__dict__ if len(results) == 1 else [r.__dict__ for r in results])
        return 0
    for result in results:
        _render(result)
    return 0


def _render(result: Any) -> None:
    from pgsafe.cli.common import human_bytes

    for notice in result.notices:
        print(f"NOTICE: {notice}")
    parent = f" on {result.parent}" if result.parent else ""
    print(f"repository {result.repo}: backup {result.id} ({result.type}{parent}) complete: {result.file_count} files, "
          f"{human_bytes(result.size)} stored as {human_bytes(result.stored_size)} in {result.duration:.1f} s; "
          f"WAL {result.wal_start} .. {result.wal_stop}")
    if result.expired or result.wal_expired:
        print(f"expired: {', '.join(result.expired) or 'no backups'}; {result.wal_expired} WAL files")
    for err in result.checksum_errors:
        print(f"WARNING: page checksum failures in {err['path']}: blocks {err['blocks']}")
