"""archive-push / archive-get: lean imports, one line of output."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import argparse


def add_parser(sub: Any, name: str) -> None:
    if name == "archive-push":
        p = sub.add_parser(name, help="archive one WAL file (archive_command, %%p)")
        p.add_argument("path", help="WAL file to archive, as PostgreSQL's %%p")
        p.set_defaults(run=run_push)
    elif name == "archive-push-worker":
        p = sub.add_parser(name)  # started by archive-push with archive_async
        p.set_defaults(run=run_push_worker)
    elif name == "archive-get-worker":
        p = sub.add_parser(name)  # started by archive-get with archive_async
        p.add_argument("after")
        p.set_defaults(run=run_get_worker)
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
    state = "already in every repository" if r.already_archived else "archived"
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
    except Exception as exc:  # I/O errors, bugs: never let recovery take them for "not found"
        report_error(f"{type(exc).__name__}: {exc}")
        return FATAL_FOR_POSTGRES
    return 0


def run_push_worker(args: argparse.Namespace) -> int:
    from pgsafe.cli.common import load
    from pgsafe.ops import archive_async
    from pgsafe.ops.archive import push_sync

    config, cluster = load(args)
    archive_async.push_worker(config, cluster, lambda p: push_sync(config, cluster, p))
    return 0


def run_get_worker(args: argparse.Namespace) -> int:
    from pgsafe.cli.common import load
    from pgsafe.ops import archive_async
    from pgsafe.ops.archive import get_sync
    from pgsafe.repo.repository import open_repository

    config, cluster = load(args)
    seg_size = open_repository(config.repos[0]).cluster_identity(cluster.name).wal_segment_size
    archive_async.get_worker(config, cluster, args.after, seg_size, lambda n, d: get_sync(config, cluster, n, d))
    return 0
