"""Medians, ratios and the markdown tables written into docs/PERFORMANCE.md."""

from __future__ import annotations

from pathlib import Path
import statistics
from typing import Any

DOC = Path(__file__).resolve().parent.parent / "docs" / "PERFORMANCE.md"
BEGIN, END = "<!-- bench:begin -->", "<!-- bench:end -->"
TOOLS = ("pgsafe", "pgbackrest", "pg_basebackup")
REFERENCE = "tar|zstd"


def median(values: list[float]) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None



# -- summary and report -------------------------------------------------------------------


OPS = ("full backup", "restore", "archive-push", "incr backup", "restore (full+incr)", "delta restore")


def summarize(results: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for op in OPS:
        for tool in list(TOOLS) + [REFERENCE]:
            runs = [r for r in results["runs"] if r["op"] == op and r["tool"] == tool and not r.get("warmup")
                    and not r.get("discarded")]
            if not runs:
                continue
            ok = [r for r in runs if r["rc"] == 0]
            entry: dict[str, Any] = {"runs": len(runs), "failed": len(runs) - len(ok)}
            for key in ("wall_s", "cpu_s", "server_cpu_s", "machine_cpu_s", "foreign_cores", "max_rss_mb",
                        "tree_pss_peak_mb", "stored_bytes"):
                entry[key] = median([r.get(key) for r in ok])
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
        "results).",
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
    for op in ("full backup", "restore", "incr backup", "restore (full+incr)", "delta restore"):
        for tool in list(TOOLS) + [REFERENCE]:
            walls = [(f"{r['wall_s']:.2f}" if r["rc"] == 0 else "FAILED")
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
    pb = results.get("incr_pgbench")
    if pb:
        lines.append(f"- before each incremental round: pgbench -n -c4 -j2 -T{results.get('incr_seconds')} on the "
                     f"dataset (tps {', '.join(str(x['tps']) for x in pb)}); each tool's incremental is relative "
                     "to its previous backup (round 1: the last full; then the previous incremental), so the "
                     f"chain restored is full + {len(pb)} incrementals")
    if results["anomalies"]:
        lines += ["", "Anomalies recorded by this run:", ""]
        lines += [f"- {x}" for x in results["anomalies"]]
    return "\n".join(lines)


def write_doc(table: str) -> None:
    DOC.parent.mkdir(parents=True, exist_ok=True)
    block = f"{BEGIN}\n{table}\n{END}"
    if DOC.exists() and BEGIN in DOC.read_text():
        text = DOC.read_text()
        head, rest = text.split(BEGIN, 1)
        tail = rest.split(END, 1)[1] if END in rest else ""
        DOC.write_text(head + block + tail)
    else:
        DOC.write_text("# Performance\n\nProduced by `bench/run`; the part between the markers is rewritten "
                       "by each run.\n\n" + block + "\n")
