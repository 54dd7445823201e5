from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import argparse

from pgsafe.cli.common import add_output


def add_parser(sub: Any, name: str) -> None:
    p = sub.add_parser(name, help="list backups and the recoverable window")
    p.add_argument("--repo", help="repository name (default: the first)")
    add_output(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from pgsafe.cli.common import human_bytes, print_json
    from pgsafe.config import load_config
    from pgsafe.ops.info import run_info

    config = load_config(args.config)
    clusters = [config.cluster(args.cluster)] if args.cluster else list(config.clusters)
    doc = run_info(clusters, config.repo(args.repo))
    if args.output == "json":
        print_json(doc)
        return 0
    for c in doc["clusters"]:
        if not c["registered"]:
            print(f"cluster {c['name']}: not registered in repository {c['repo']} (run `pgsafe init`)")
            continue
        print(f"cluster {c['name']}  system {c['system_identifier']}  PostgreSQL {c['pg_version'] // 10000}"
              f"  repository {c['repo']}")
        if not c["backups"]:
            print("  no backups")
        for b in c["backups"]:
            parent = f" on {b['parent']}" if b["parent"] else ""
            pin = " pinned" if b.get("pinned") else ""
            print(f"  {b['id']}  {b['type']:<4}{parent}{pin}  {b['start_time'][:19]} .. {b['stop_time'][:19]}  "
                  f"{human_bytes(b['size'])} -> {human_bytes(b['stored_size'])}  "
                  f"lsn {b['start_lsn']}..{b['stop_lsn']}  tl {b['timeline']}  wal {b['wal_start']}..{b['wal_stop']}")
            for err in b.get("checksum_errors") or []:
                print(f"      page checksum failures: {err['path']} blocks {err['blocks']}")
        for tl in c["wal"]:
            runs = ", ".join(f"{r['start']}..{r['stop']}" for r in tl["ranges"])
            print(f"  wal timeline {tl['timeline']}: {runs}")
        w = c["recoverable"]
        if w:
            print(f"  recoverable: from {w['from_time']} (lsn {w['from_lsn']}) to the end of {w['to_wal']}")
        if c.get("dumps"):
            print("  logical backups (dumps):")
        for d in c.get("dumps", []):
            what = d["database"] if d["kind"] == "database" else "(globals)"
            pin = " pinned" if d.get("pinned") else ""
            if d["status"] == "complete":
                print(f"    {d['id']}  {d['format']:<9}  {what}{pin}  {d['start_time'][:19]} .. "
                      f"{d['stop_time'][:19]}  {human_bytes(d['size'])} -> {human_bytes(d['stored_size'])}")
            else:
                print(f"    {d['id']}  FAILED     {what}  {d['start_time'][:19]}: {d['error']}")
    return 0
