from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import argparse


def add_parser(sub: Any, name: str) -> None:
    what = "keep a backup whatever the retention says" if name == "pin" else "let retention apply to a backup again"
    p = sub.add_parser(name, help=what)
    p.add_argument("backup_id", metavar="ID")
    p.add_argument("--repo", help="repository name (default: every repository holding the backup)")
    p.set_defaults(run=run, pinned=name == "pin")


def run(args: argparse.Namespace) -> int:
    from pgsafe.cli.common import load
    from pgsafe.errors import NoBackup
    from pgsafe.repo.dumps import DumpStore
    from pgsafe.repo.repository import open_repository

    config, cluster = load(args)
    repos = [config.repo(args.repo)] if args.repo else list(config.repos)
    done = []
    for repo_config in repos:
        repo = open_repository(repo_config)
        known = {b["id"] for b in repo.catalog(cluster.name)} | {d["id"] for d in DumpStore(repo, cluster.name).catalog()}
        if args.backup_id in known:
            repo.set_pin(cluster.name, args.backup_id, args.pinned)
            done.append(repo.name)
    if not done:
        raise NoBackup(f"no backup {args.backup_id!r}; `pgsafe info` lists the backups")
    state = "pinned" if args.pinned else "unpinned"
    print(f"backup {args.backup_id} {state} in repository {', '.join(done)}")
    return 0
