"""Entry point: parse arguments, run one command, map errors to exit codes.

Nothing heavy is imported here: archive-push runs once per WAL segment and its
start-up time counts. Each command module imports what it needs when it runs.
"""

from __future__ import annotations

import importlib
import os
import sys
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any, Sequence

if TYPE_CHECKING:
    import argparse

COMMANDS = {
    "init": "pgsafe.cli.init",
    "check": "pgsafe.cli.check",
    "backup": "pgsafe.cli.backup",
    "info": "pgsafe.cli.info",
    "restore": "pgsafe.cli.restore",
    "expire": "pgsafe.cli.expire",
    "verify": "pgsafe.cli.verify",
    "pin": "pgsafe.cli.pin",
    "unpin": "pgsafe.cli.pin",
    "repo": "pgsafe.cli.repo",
    "dump": "pgsafe.cli.dump",
    "dump-list": "pgsafe.cli.dump_list",
    "restore-dump": "pgsafe.cli.restore_dump",
    "restore-table": "pgsafe.cli.restore_table",
    "archive-push": "pgsafe.cli.archive",
    "archive-get": "pgsafe.cli.archive",
    "archive-push-worker": "pgsafe.cli.archive",
    "archive-get-worker": "pgsafe.cli.archive",
}


def build_parser() -> argparse.ArgumentParser:
    import argparse

    class _Parser(argparse.ArgumentParser):
        def error(self, message: str) -> Any:  # one line, exit 2, like every usage error
            from pgsafe.errors import UsageError

            raise UsageError(f"{message} (see `{self.prog} --help`)")

    parser = _Parser(prog="pgsafe", description="PostgreSQL backup and recovery")
    parser.add_argument("--config", help="config file (default: $PGSAFE_CONFIG or /etc/pgsafe/pgsafe.toml)")
    parser.add_argument("--cluster", help="cluster name from the config (optional when only one)")
    parser.add_argument("--debug", action="store_true", help="show tracebacks for unexpected errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    for name, module in COMMANDS.items():
        importlib.import_module(module).add_parser(sub, name)
    return parser


def fast_archive_args(argv: Sequence[str]) -> Any:
    """archive-push and archive-get run once per WAL segment: parse their fixed shape
    by hand, skipping argparse and the import of every command module. Anything
    unusual returns None and goes through the full parser."""
    options: dict[str, object] = {"config": None, "cluster": None, "debug": False}
    i = 0
    while i < len(argv) and argv[i].startswith("--"):
        flag, eq, value = argv[i].partition("=")
        if flag == "--debug" and not eq:
            options["debug"] = True
            i += 1
        elif flag in ("--config", "--cluster"):
            if not eq:
                if i + 1 >= len(argv):
                    return None
                value = argv[i + 1]
                i += 1
            options[flag[2:]] = value
            i += 1
        else:
            return None
    rest = list(argv[i:])
    if len(rest) == 2 and rest[0] == "archive-push" and not rest[1].startswith("-"):
        from pgsafe.cli.archive import run_push

        return SimpleNamespace(command=rest[0], path=rest[1], run=run_push, **options)
    if len(rest) == 3 and rest[0] == "archive-get" and not any(a.startswith("-") for a in rest[1:]):
        from pgsafe.cli.archive import run_get

        return SimpleNamespace(command=rest[0], name=rest[1], dest=rest[2], run=run_get, **options)
    return None


def main(argv: Sequence[str] | None = None) -> int:
    from pgsafe.errors import Interrupted, PgsafeError, StorageFailure
    from pgsafe.storage.base import StorageError

    args = None
    try:
        argv = sys.argv[1:] if argv is None else argv
        args = fast_archive_args(argv) or build_parser().parse_args(argv)
        return int(args.run(args) or 0)
    except PgsafeError as exc:
        report_error(exc.message)
        if args is not None and args.debug:
            raise
        return exc.exit_code
    except BrokenPipeError:  # output cut short by the reader (pgsafe info | head)
        return 0
    except OSError as exc:  # disk full, permission denied, I/O error, ...
        if args is not None and args.debug:
            raise
        what = f"{exc.strerror or exc}" + (f": {exc.filename}" if exc.filename else "")
        report_error(f"I/O error: {what}")
        return StorageFailure.exit_code
    except KeyboardInterrupt:
        report_error(Interrupted("interrupted").message)
        return Interrupted.exit_code
    except StorageError as exc:
        if args is not None and args.debug:
            raise
        report_error(f"storage error: {exc}")
        return StorageFailure.exit_code
    except Exception as exc:  # a bug: say so in one line; --debug shows where
        if args is not None and args.debug:
            raise
        report_error(f"internal error: {type(exc).__name__}: {exc} (run with --debug for details)")
        return 99


def run() -> None:
    """The console script. archive-push and archive-get, which PostgreSQL runs once per
    WAL file, end without the interpreter's teardown (module cleanup and a last garbage
    collection: a few ms each time); by then everything they wrote is durable."""
    argv = sys.argv[1:]
    code = main(argv)
    if "archive-push" in argv or "archive-get" in argv:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
        os._exit(code)
    sys.exit(code)


def report_error(message: str) -> None:
    sys.stderr.write(f"pgsafe: error: {message}\n")
    sys.stderr.flush()


def pgsafe_path() -> str:
    """The absolute command that runs this pgsafe, for archive/restore commands."""
    argv0 = sys.argv[0]
    if os.path.basename(argv0) == "__main__.py":
        return f"{sys.executable} -m pgsafe"
    return os.path.abspath(argv0)


if __name__ == "__main__":
    sys.exit(main())
