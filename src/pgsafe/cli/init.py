from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import argparse


def add_parser(sub: Any, name: str) -> None:
    p = sub.add_parser(name, help="create the repositories and register the cluster")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from pgsafe.cli.common import load
    from pgsafe.ops.init import run_init

    config, cluster = load(args)
    for r in run_init(config, cluster):
        state = "created" if r.created else "exists"
        reg = "registered" if r.registered else "already registered"
        print(f"repository {r.repo} ({r.location}): {state}; cluster {cluster.name} {reg} "
              f"(system {r.system_identifier}, PostgreSQL {r.pg_version // 10000})")
    return 0
