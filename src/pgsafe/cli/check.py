from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import argparse

from pgsafe.cli.common import add_output


def add_parser(sub: Any, name: str) -> None:
    p = sub.add_parser(name, help="check PostgreSQL settings and prove archiving works")
    add_output(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from pgsafe.cli.common import load, print_json
    from pgsafe.cli.main import pgsafe_path
    from pgsafe.errors import CheckFailed
    from pgsafe.ops.check import run_check

    config, cluster = load(args)
    items = run_check(config, cluster, pgsafe_path())
    if args.output == "json":
        print_json({"cluster": cluster.name, "checks": [i.__dict__ for i in items]})
    else:
        for i in items:
            print(f"{'ok  ' if i.ok else 'FAIL'} {i.name}: {i.detail}" + ("" if i.ok else f"\n     fix: {i.fix}"))
    failed = [i.name for i in items if not i.ok]
    if failed:
        raise CheckFailed(f"{len(failed)} check(s) failed: {', '.join(failed)}")
    return 0
