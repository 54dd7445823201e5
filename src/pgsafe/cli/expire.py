from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import argparse

from pgsafe.cli.common import add_output


def add_parser(sub: Any, name: str) -> None:
    p = sub.add_parser(name, help="apply retention (or remove one backup with --set)")
    p.add_argument("--dry-run", action="store_true", help="list what would be removed and why; change nothing")
    p.add_argument("--set", dest="set_id", help="remove this backup (refused if others depend on it)")
    p.add_argument("--with-dependents", action="store_true", help="with --set: also remove backups that need it")
    p.add_argument("--repo", help="repository name (default: every repository)")
    add_output(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from pgsafe.cli.common import load, print_json
    from pgsafe.ops.expire import run_expire

    config, cluster = load(args)
    repos = [config.repo(args.repo)] if args.repo else list(config.repos)
    results = [run_expire(cluster, r, dry_run=args.dry_run, set_id=args.set_id,
                          with_dependents=args.with_dependents) for r in repos]
    if args.output == "json":
        print_json([{**r.__dict__, "backups": [e.__dict__ for e in r.backups],
                     "dumps": [e.__dict__ for e in r.dumps]} for r in results])
        return 0
    verb = "would remove" if args.dry_run else "removed"
    for r in results:
        for notice in r.notices:
            print(f"NOTICE: {notice}")
        if not r.backups and not r.wal_removed and not r.dumps:
            print(f"repository {r.repo}: nothing to expire")
        for e in r.backups:
            print(f"repository {r.repo}: {verb} backup {e.backup_id}: {e.reason}")
        for e in r.dumps:
            print(f"repository {r.repo}: {verb} logical backup {e.backup_id}: {e.reason}")
        if r.wal_removed:
            print(f"repository {r.repo}: {verb} {len(r.wal_removed)} WAL files "
                  f"({r.wal_removed[0]} .. {r.wal_removed[-1]}), older than the oldest kept backup")
        if r.leftovers_removed:
            print(f"repository {r.repo}: removed leftovers of interrupted backups: {', '.join(r.leftovers_removed)}")
    return 0
