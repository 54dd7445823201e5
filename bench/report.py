"""Medians, ratios and the markdown tables written into docs/PERFORMANCE.md."""

from __future__ import annotations

import json
from pathlib import Path
import statistics
from typing import Any

DOC = Path(__file__).resolve().parent.parent / "docs" / "PERFORMANCE.md"
TOOLS = ("pgsafe", "pgbackrest", "pg_basebackup")
REFERENCE = "tar|zstd"


def succeeded(run: dict[str, Any]) -> bool:
    """Exit code 0, or a failure the bench expects and explains in run["rc_accepted"]."""
    return run["rc"] == 0 or bool(run.get("rc_accepted"))


def median(values: list[float]) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None



# -- summary and report -------------------------------------------------------------------


# Rows of the main table, in order ("archive rate" has a table of its own).
OPS = ("full backup", "restore", "archive-push", "incr backup", "restore (full+incr)", "delta restore",
       "PITR: restore until promoted", "PITR: restore command", "PITR: recovery until promoted", "verify")
ARCHIVE_RATE = "archive rate"
ARCHIVE_RATE_KEYS = ("tps", "wal_mb_s", "archived_mb_s", "segments_s", "backlog_peak", "backlog_end", "drain_s",
                     "cpu_ms_per_segment")


def summarize(results: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for op in OPS + (ARCHIVE_RATE,):
        for tool in list(TOOLS) + [REFERENCE]:
            runs = [r for r in results["runs"] if r["op"] == op and r["tool"] == tool and not r.get("warmup")
                    and not r.get("discarded")]
            if not runs:
                continue
            ok = [r for r in runs if succeeded(r)]
            entry: dict[str, Any] = {"runs": len(runs), "failed": len(runs) - len(ok)}
            for key in ("wall_s", "cpu_s", "server_cpu_s", "machine_cpu_s", "foreign_cores", "max_rss_mb",
                        "tree_pss_peak_mb", "stored_bytes"):
                entry[key] = median([r.get(key) for r in ok])
            if op == ARCHIVE_RATE:
                entry.update({key: median([r.get(key) for r in ok]) for key in ARCHIVE_RATE_KEYS})
            entry["wall_min_s"] = min((r["wall_s"] for r in ok), default=None)
            entry["wall_max_s"] = max((r["wall_s"] for r in ok), default=None)
            out[f"{op}/{tool}"] = entry
    return out


def _fmt(v: Any, unit: str = "") -> str:
    if v is None:
        return "-"
    if unit == "MB":
        return f"{v / 1e6:,.1f}"
    if unit == "ms":
        return f"{v * 1000:.0f}"
    if isinstance(v, float):
        return f"{v:.2f}" if v < 100 else f"{v:.0f}"
    return str(v)


def _count(v: float | None) -> str:
    """A median of counts: whole unless it fell between two."""
    return "-" if v is None else f"{v:g}"


def _mb(v: float | None) -> str:
    return "-" if v is None else f"{v:.0f}"


def _add(a: Any, b: Any) -> Any:
    return None if a is None or b is None else a + b


def _ratio(a: Any, b: Any) -> str:
    if a is None or b in (None, 0):
        return "-"
    return f"{a / b:.2f}"


def render(results: dict[str, Any], result_path: Path) -> str:
    s = results["summary"]
    m, v = results["machine"], results["versions"]
    lines = [
        f"Run of {results['started']} (`{results['command']}`), raw results "
        f"`bench/results/{result_path.name}`.",
        "",
        f"- machine: {m.get('cores')} cores ({m.get('cpu')}), {m.get('ram_gib')} GiB RAM, "
        f"disk {m.get('disk')}, ~{m.get('disk_write_mb_s', '?'):.0f} MB/s sequential write (dd, fdatasync); "
        f"{m.get('os')}, kernel {m.get('kernel')}",
        f"- versions: pgsafe {v.get('pgsafe')} (a frozen copy of the {v.get('pgsafe_source')} package, "
        f"sources sha1 {v.get('pgsafe_src_sha1', {}).get('tested')}, identical to: "
        f"{', '.join(v.get('pgsafe_tested_matches') or ['none of git HEAD, work tree, installed'])}; "
        f"git HEAD {v.get('pgsafe_git_head')}), "
        f"{v.get('pgbackrest')}, {v.get('postgresql')}, Python {v.get('python')}, "
        f"python-zstandard {v.get('zstandard_py')}",
        f"- dataset: {results['dataset'].get('name')} scale {results['dataset'].get('scale')}, "
        f"database {results['dataset'].get('bench_db_bytes', 0) / 1e9:.2f} GB",
    ]
    for k, val in results["settings"].items():
        lines.append(f"- {k}: {val}")
    lines += [
        "",
        "Medians over the rounds. *wall* elapsed; *CPU* user+sys of the tool and all its child processes; "
        "*server CPU* CPU time of the PostgreSQL cluster during the run (checkpoint, the backend serving the "
        "tool, the walsender that reads and sends the files for pg_basebackup, the archiver and the "
        "archive_command it runs); *RSS* the largest single process's peak; "
        "*tree PSS* the peak of the summed PSS of the tool's processes (sampled every 0.1 s; not sampled for "
        "archive-push, which is over in a sample or two); "
        "*stored* bytes the run added to the repository (WAL archive not included; for pg_basebackup "
        "the tar files, WAL included); *noise* CPU used by other processes on the machine during the run, "
        "in cores on average (runs above the --max-noise limit were redone; the discarded ones are in the raw "
        "results). *PITR*: restore of the tool's latest backup into an empty directory with a target time and "
        "action promote, then the server started until pg_is_in_recovery() is false; *until promoted* is "
        "the whole, from the start of the restore command, its CPU the restore command's plus the copy's "
        "server's (recovery, restore_command included), its RSS the restore command's; *restore command* "
        "that command alone; *recovery* from the server's start to its promotion, its CPU the copy's "
        "server's. *verify*: each tool's verify of its whole repository (every backup and the archived WAL).",
        "",
        "| operation | tool | runs ok | wall s | CPU s | server CPU s | RSS MB | tree PSS MB | stored MB | noise |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for op in OPS:
        for tool in list(TOOLS) + [REFERENCE]:
            e = s.get(f"{op}/{tool}")
            if e is None:
                continue
            wall = _fmt(e["wall_s"]) if op != "archive-push" else f"{_fmt(e['wall_s'], 'ms')} ms"
            cpu = _fmt(e["cpu_s"]) if op != "archive-push" else f"{_fmt(e['cpu_s'], 'ms')} ms"
            mcpu = _fmt(e["server_cpu_s"]) if op != "archive-push" else f"{_fmt(e['server_cpu_s'], 'ms')} ms"
            stored = _fmt(e["stored_bytes"], "MB") if "restore" not in op else "-"
            rss = "-" if e["max_rss_mb"] is None else f"{e['max_rss_mb']:.0f}"
            pss = "-" if e["tree_pss_peak_mb"] is None or op == "archive-push" else f"{e['tree_pss_peak_mb']:.0f}"
            lines.append(f"| {op} | {tool} | {e['runs'] - e['failed']}/{e['runs']} | {wall} | {cpu} | {mcpu} | "
                         f"{rss} | {pss} | {stored} | {_fmt(e['foreign_cores'])} |")
    lines += ["", "Ratios of medians, pgsafe / pgBackRest (below 1: pgsafe is faster / smaller):", "",
              "| operation | wall | CPU | CPU incl. server | RSS | tree PSS | stored |", "|---|---|---|---|---|---|---|"]
    for op in OPS:
        a, b = s.get(f"{op}/pgsafe"), s.get(f"{op}/pgbackrest")
        if not a or not b:
            continue
        lines.append(f"| {op} | {_ratio(a['wall_s'], b['wall_s'])} | {_ratio(a['cpu_s'], b['cpu_s'])} | "
                     f"{_ratio(_add(a['cpu_s'], a['server_cpu_s']), _add(b['cpu_s'], b['server_cpu_s']))} | "
                     f"{_ratio(a['max_rss_mb'], b['max_rss_mb'])} | "
                     f"{_ratio(a['tree_pss_peak_mb'], b['tree_pss_peak_mb']) if op != 'archive-push' else '-'} | "
                     f"{_ratio(a['stored_bytes'], b['stored_bytes']) if 'restore' not in op else '-'} |")
    lines += _archive_rate_table(results)
    a, b, r = s.get("full backup/pgsafe"), s.get("full backup/pg_basebackup"), s.get(f"full backup/{REFERENCE}")
    if a and b:
        lines.append(f"\nFull backup, pgsafe / pg_basebackup: wall {_ratio(a['wall_s'], b['wall_s'])}, "
                     f"stored {_ratio(a['stored_bytes'], b['stored_bytes'])}.")
    if a and r:
        lines.append(f"Full backup, pgsafe / `{REFERENCE}` reference: wall {_ratio(a['wall_s'], r['wall_s'])}, "
                     f"stored {_ratio(a['stored_bytes'], r['stored_bytes'])}.")
    ws = results.get("wal_segments")
    if ws:
        lines.append(f"archive-push: {ws['count'] - 1} real 16 MiB segments ({ws['first']} .. {ws['last']}, "
                     f"zstd -3 ratio {ws['zstd_ratio']}:1) pushed by each tool, alternating, after one warm-up "
                     "push each; each push is a new name in that tool's repository.")
    lines.append("")
    lines.append("Per-run wall times (s):")
    lines.append("")
    for op in ("full backup", "restore", "incr backup", "restore (full+incr)", "delta restore",
               "PITR: restore until promoted", "verify"):
        for tool in list(TOOLS) + [REFERENCE]:
            walls = [(f"{r['wall_s']:.2f}" if succeeded(r) else "FAILED")
                     + (f" (discarded, noise {r['foreign_cores']:.2f})" if r.get("discarded") else "")
                     for r in results["runs"] if r["op"] == op and r["tool"] == tool]
            if walls:
                lines.append(f"- {op}, {tool}: {', '.join(walls)}")
    for tool in ("pgsafe", "pgbackrest"):
        walls = [f"{r['wall_s'] * 1000:.0f}" if r["rc"] == 0 else "FAILED" for r in results["runs"]
                 if r["op"] == "archive-push" and r["tool"] == tool and not r.get("warmup")]
        if walls:
            lines.append(f"- archive-push, {tool} (ms): {', '.join(walls)}")
    checks = results.get("checks", {})
    for what in ("", " (incr)"):
        for tool in ("pgsafe", "pgbackrest"):
            c = checks.get(f"restore {tool} verified{what}")
            if c is not None:
                lines.append(f"- restored {tool} copy{' of the last incremental, after the delta restores' if what else ''}"
                             f" started, recovered and promoted; data "
                             f"{'matches the source' if c.get('ok') else 'DID NOT CHECK OUT: ' + str(c)}")
    for tool in ("pgsafe", "pgbackrest"):
        rates = [f"{r['archived_mb_s']} MB/s (backlog {r['backlog_end']}, drained in {r['drain_s']} s)"
                 if r["rc"] == 0 else "FAILED" for r in results["runs"] if r["op"] == ARCHIVE_RATE and r["tool"] == tool]
        if rates:
            lines.append(f"- archive rate, {tool}, archived during pgbench: {', '.join(rates)}")
    accepted = [r for r in results["runs"] if r["op"] == "verify" and r["rc"] != 0 and r.get("rc_accepted")]
    if accepted:
        lines.append(f"- verify: {len(accepted)} run(s) exited {accepted[0]['rc']} and count as done: "
                     f"{accepted[0]['rc_accepted']} ({'; '.join(accepted[0].get('problems', []))})")
    pitr = results.get("pitr")
    if pitr:
        copies = [r for r in results["runs"] if r["op"] == "PITR: recovery until promoted" and "markers" in r]
        right = [r for r in copies if r["markers"] == "before"]
        lines.append(f"- restore to time: target {pitr['target_time']}, between a marker row `before` (committed "
                     "1 s earlier) and a marker row `after` (1 s later, after more pgbench); base backups (an "
                     f"untimed incremental by each tool, both archiving): {pitr['base_backups']}; "
                     f"{len(right)} of {len(copies)} promoted copies held `before` and not `after`"
                     + ("" if len(right) == len(copies) else
                        ": WRONG in " + ", ".join(f"{r['tool']} round {r['round']} ({r['markers']!r})"
                                                  for r in copies if r not in right)))
    pb = results.get("incr_pgbench")
    if pb:
        workload = results.get("incr_workload") or f"pgbench -n -c4 -j2 -T{results.get('incr_seconds')}"
        lines.append(f"- before each incremental round: `{workload}` on the "
                     f"dataset (tps {', '.join(str(x['tps']) for x in pb)}); each tool's incremental is relative "
                     "to its previous backup (round 1: the last full; then the previous incremental), so the "
                     f"chain restored is full + {len(pb)} incrementals")
    if results["anomalies"]:
        lines += ["", "Anomalies recorded by this run:", ""]
        lines += [f"- {x}" for x in results["anomalies"]]
    return "\n".join(lines)


def _archive_rate_table(results: dict[str, Any]) -> list[str]:
    s = results["summary"]
    rows = [(tool, s.get(f"{ARCHIVE_RATE}/{tool}")) for tool in ("pgsafe", "pgbackrest")]
    rows = [(tool, e) for tool, e in rows if e]
    if not rows:
        return []
    lines = ["", f"Sustained WAL archiving: per round and tool (alternating), archive_command set to that tool only, "
             f"CHECKPOINT, then `pgbench -n -c4 -j2 -T{results.get('archive_seconds')}` with synchronous_commit=off. "
             "*generated*: WAL written per second of pgbench (pg_current_wal_lsn); *archived*: segments the "
             "archiver finished per second of pgbench (pg_stat_archiver) x 16 MiB; *backlog*: `.ready` segments "
             "in pg_wal/archive_status, the peak (sampled every 0.5 s) and at the end of pgbench; *drain*: time "
             "from the end of pgbench until none is left; *CPU/segment*: CPU of the archive_command processes "
             "(the archiver's reaped children) per segment archived; *stored*: bytes added to the WAL archive.",
             "",
             "| tool | runs ok | pgbench tps | generated MB/s | archived MB/s | segments/s | backlog peak | "
             "backlog at end | drain s | CPU ms/segment | stored MB | noise |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for tool, e in rows:
        lines.append(f"| {tool} | {e['runs'] - e['failed']}/{e['runs']} | {_fmt(e['tps'])} | {_fmt(e['wal_mb_s'])} | "
                     f"{_fmt(e['archived_mb_s'])} | {_fmt(e['segments_s'])} | {_count(e['backlog_peak'])} | "
                     f"{_count(e['backlog_end'])} | {_fmt(e['drain_s'])} | {_fmt(e['cpu_ms_per_segment'])} | "
                     f"{_fmt(e['stored_bytes'], 'MB')} | {_fmt(e['foreign_cores'])} |")
    if len(rows) == 2:
        a, b = rows[0][1], rows[1][1]
        lines.append(f"\nArchive rate, pgsafe / pgBackRest: archived MB/s {_ratio(a['archived_mb_s'], b['archived_mb_s'])}, "
                     f"drain time {_ratio(a['drain_s'], b['drain_s'])}, CPU per segment "
                     f"{_ratio(a['cpu_ms_per_segment'], b['cpu_ms_per_segment'])}.")
    return lines


def render_rss(paths: list[Path]) -> str:
    """Peak RSS (and tree PSS) of each tool's full backups against the size of the dataset, one row
    per results file, smallest dataset first: is the backup's memory flat in the data size?"""
    rows = []
    for path in paths:
        results = json.loads(path.read_text())
        s = summarize(results)
        rows.append((results["dataset"].get("bench_db_bytes", 0), results, s, path))
    lines = ["Peak memory of a full backup against the dataset size (medians over the rounds of each run; "
             "*RSS* the largest single process's peak, *PSS* the peak of the tool's process tree's summed PSS).",
             "",
             "| dataset | database GB | pgsafe RSS MB | pgsafe PSS MB | pgBackRest RSS MB | pgBackRest PSS MB | "
             "pg_basebackup RSS MB | runs | results |",
             "|---|---|---|---|---|---|---|---|---|"]
    for size, results, s, path in sorted(rows, key=lambda row: row[0]):
        cells = []
        for tool in ("pgsafe", "pgbackrest"):
            e = s.get(f"full backup/{tool}") or {}
            cells += [_mb(e.get("max_rss_mb")), _mb(e.get("tree_pss_peak_mb"))]
        cells.append(_mb((s.get("full backup/pg_basebackup") or {}).get("max_rss_mb")))
        runs = (s.get("full backup/pgsafe") or {}).get("runs", 0)
        lines.append(f"| {results['dataset'].get('name')} scale {results['dataset'].get('scale')} | {size / 1e9:.2f} | "
                     f"{' | '.join(cells)} | {runs} | `{path.name}` |")
    return "\n".join(lines)


def write_doc(table: str, dataset: str) -> None:
    """Put the table between this dataset's markers in docs/PERFORMANCE.md (each dataset
    has its own section); without them, add a section at the end."""
    begin, end = f"<!-- bench:{dataset}:begin -->", f"<!-- bench:{dataset}:end -->"
    block = f"{begin}\n{table}\n{end}"
    text = DOC.read_text() if DOC.exists() else "# Performance\n"
    if begin in text:
        head, rest = text.split(begin, 1)
        tail = rest.split(end, 1)[1] if end in rest else ""
        DOC.write_text(head + block + tail)
    else:
        DOC.write_text(text.rstrip("\n") + f"\n\n## Results: `{dataset}` dataset\n\n{block}\n")