from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import argparse

from pgsafe.cli.common import add_output


def add_parser(sub: Any, name: str) -> None:
    p = sub.add_parser(name, help="the table of contents of a logical backup")
    p.add_argument("dump_id", metavar="ID", help="dump id (`pgsafe info` lists them)")
    p.add_argument("--repo", help="repository name (default: the first that holds the dump)")
    add_output(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from pgsafe.cli.common import human_bytes, load, print_json
    from pgsafe.ops.logical import run_dump_list

    config, cluster = load(args)
    repos = [config.repo(args.repo)] if args.repo else list(config.repos)
    listing = run_dump_list(cluster, repos, args.dump_id)
    d = listing.dump
    if args.output == "json":
        print_json({"dump": d, "repo": listing.repo,
                    "entries": [e.as_dict() for e in listing.toc.entries] if listing.toc else None,
                    "statements": listing.statements})
        return 0
    what = f"database {d['database']}" if d["kind"] == "database" else "globals"
    print(f"; dump {d['id']} of {what}, {d['dump_format']} format, {d['start_time'][:19]} .. "
          f"{d['stop_time'][:19]}, {human_bytes(d['size'])} stored as {human_bytes(d['stored_size'])} "
          f"in repository {listing.repo}")
    if listing.toc is not None:
        for line in listing.toc.header:
            print(line)
        for e in listing.toc.entries:
            print(e.line)
    for statement in listing.statements or []:
        print(statement)
    return 0
