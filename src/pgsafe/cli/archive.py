"""archive-push / archive-get: lean imports, one line of output."""

from __future__ import annotations

import argparse
import sys
from typing import Any


def add_parser(sub: Any, name: str) -> None:
    if name == "archive-push":
        p = sub.add_parser(name, help="archive one WAL file (archive_command, %%p)")
        p.add_argument("path", help="WAL file to archive, as PostgreSQL's %%p")
        p.set_defaults(run=run_push)
    else:
        p = sub.add_parser(name, help="fetch one WAL file (restore_command, %%f %%p)")
        p.add_argument("name", help="WAL file name, as PostgreSQL's %%f")
        p.add_argument("dest", help="where to write it, as PostgreSQL's %%p")
        p.set_defaults(run=run_get)


def run_push(args: argparse.Namespace) -> int:
    from pgsafe.cli.common import load
    from pgsafe.ops.archive import archive_push

    config, cluster = load(args)
    r = archive_push(config, cluster, args.path)
    state = "already archived, identical" if r.already_archived else "archived"
    sys.stdout.write(f"pgsafe archive-push: {r.name} {state} in {r.seconds * 1000:.0f} ms\n")
    return 0


# PostgreSQL treats exit codes 1..125 from restore_command as "no such file" and ends
# recovery there; above 125 it stops recovery. Anything but "not found" must stop it:
# a damaged or unreachable archive must never silently cut a recovery short.
FATAL_FOR_POSTGRES = 126


def run_get(args: argparse.Namespace) -> int:
    from pgsafe.cli.common import load
    from pgsafe.cli.main import report_error
    from pgsafe.errors import NotFound, PgsafeError
    from pgsafe.ops.archive import archive_get

    try:
        config, cluster = load(args)
        archive_get(config, cluster, args.name, args.dest)
    except NotFound:
        raise
    except PgsafeError as exc:
        report_error(exc.message)
        return FATAL_FOR_POSTGRES
    return 0
