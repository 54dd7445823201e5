"""`pgsafe repo copy` and `pgsafe repo rekey`."""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import argparse

from pgsafe.cli.common import add_output


def add_parser(sub: Any, name: str) -> None:
    p = sub.add_parser(name, help="repository maintenance: copy, rekey")
    actions = p.add_subparsers(dest="action", metavar="ACTION", parser_class=type(p))
    actions.required = True
    c = actions.add_parser("copy", help="copy what the target repository lacks from another one")
    c.add_argument("--from", dest="source", required=True, help="source repository name")
    c.add_argument("--to", dest="target", required=True, help="target repository name")
    c.add_argument("--jobs", type=int, help="parallel workers (default: number of cores)")
    add_output(c)
    c.set_defaults(run=run_copy)
    r = actions.add_parser("rekey", help="change an encrypted repository's passphrase without rewriting data")
    r.add_argument("--repo", required=True, help="repository name")
    r.add_argument("--new-passphrase-env", default="PGSAFE_NEW_PASSPHRASE",
                   help="environment variable holding the new passphrase (default: PGSAFE_NEW_PASSPHRASE)")
    r.add_argument("--new-passphrase-file", help="file holding the new passphrase")
    r.set_defaults(run=run_rekey)


def run_copy(args: argparse.Namespace) -> int:
    from pgsafe.cli.common import human_bytes, load, print_json
    from pgsafe.errors import UsageError
    from pgsafe.ops.copy import run_copy as copy

    config, cluster = load(args)
    if args.source == args.target:
        raise UsageError("--from and --to name the same repository")
    result = copy(cluster, config.repo(args.source), config.repo(args.target), jobs=args.jobs or config.jobs)
    if args.output == "json":
        print_json(result.__dict__)
        return 0
    print(f"copied {len(result.backups_copied)} backups ({', '.join(result.backups_copied) or 'none missing'}) "
          f"and {result.wal_copied} WAL files from {result.source} to {result.target}: "
          f"{human_bytes(result.bytes_written)} written, every object read back and checked")
    return 0


def run_rekey(args: argparse.Namespace) -> int:
    from pgsafe.cli.common import load
    from pgsafe.errors import PassphraseError
    from pgsafe.repo.keys import read_passphrase_file
    from pgsafe.repo.repository import open_repository

    config, _ = load(args)
    repo = open_repository(config.repo(args.repo))  # proves the current passphrase
    if args.new_passphrase_file:
        new = read_passphrase_file(args.new_passphrase_file, "--new-passphrase-file")
    else:
        new = os.environ.get(args.new_passphrase_env, "").encode()
    if not new:
        raise PassphraseError(f"no new passphrase: set ${args.new_passphrase_env} or pass --new-passphrase-file")
    repo.rekey(new)
    sys.stdout.write(f"repository {repo.name}: passphrase changed; update its passphrase source in {config.path}\n")
    return 0
