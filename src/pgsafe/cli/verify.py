from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import argparse

from pgsafe.cli.common import add_output


def add_parser(sub: Any, name: str) -> None:
    p = sub.add_parser(name, help="prove the repository intact without restoring")
    p.add_argument("--set", dest="set_id", help="verify only this backup (and its WAL)")
    p.add_argument("--jobs", type=int, help="parallel workers (default: number of cores)")
    p.add_argument("--repo", help="repository name (default: every repository)")
    add_output(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from pgsafe.cli.common import load, print_json
    from pgsafe.errors import IntegrityError
    from pgsafe.ops.verify import run_verify

    config, cluster = load(args)
    repos = [config.repo(args.repo)] if args.repo else list(config.repos)
    results = [run_verify(cluster, r, set_id=args.set_id, jobs=args.jobs or config.jobs) for r in repos]
    if args.output == "json":
        print_json([{**r.__dict__, "ok": r.ok, "problems": [p.__dict__ for p in r.problems]} for r in results])
    else:
        for r in results:
            print(f"repository {r.repo}: {r.backups_checked} backups, {r.dumps_checked} logical backups, "
                  f"{r.files_checked} files, "
                  f"{r.objects_checked} objects, {r.wal_checked} WAL files checked: "
                  + ("OK" if r.ok else f"{len(r.problems)} problem(s)"))
            for p in r.problems:
                print(f"  {p.kind}: {p.detail}")
    bad = sum(len(r.problems) for r in results)
    if bad:
        raise IntegrityError(f"verify found {bad} problem(s)")
    return 0
