"""`pgsafe info`: complete backups and the archived WAL, per cluster."""

from __future__ import annotations

from typing import Any

from pgsafe.config import ClusterConfig, RepoConfig
from pgsafe.errors import RepositoryError
from pgsafe.pg import wal
from pgsafe.repo.repository import open_repository

BACKUP_FIELDS = ("id", "type", "start_time", "stop_time", "start_lsn", "stop_lsn", "timeline",
                 "wal_start", "wal_stop", "size", "stored_size", "parent")


def run_info(clusters: list[ClusterConfig], repo_config: RepoConfig) -> dict[str, Any]:
    repo = open_repository(repo_config)
    out = []
    for cluster in clusters:
        try:
            ident = repo.cluster_identity(cluster.name)
        except RepositoryError:
            out.append({"name": cluster.name, "repo": repo.name, "registered": False, "system_identifier": None,
                        "pg_version": None, "backups": [], "wal": [], "recoverable": None, "dumps": []})
            continue
        backups = []
        pinned = repo.pins(cluster.name)
        for entry in repo.catalog(cluster.name):
            item = {k: entry.get(k) for k in BACKUP_FIELDS}
            item["file_count"] = entry.get("file_count")
            item["pinned"] = entry["id"] in pinned
            item["references"] = entry.get("references", [])
            item["checksum_errors"] = entry.get("checksum_errors", [])
            backups.append(item)
        ranges = wal_ranges(repo.wal_files(cluster.name), ident.wal_segment_size)
        out.append({
            "name": cluster.name,
            "repo": repo.name,
            "registered": True,
            "system_identifier": str(ident.system_identifier),
            "pg_version": ident.pg_version,
            "backups": backups,
            "wal": ranges,
            "recoverable": recoverable_window(backups, ranges),
            "dumps": dump_list(repo, cluster.name, pinned),
        })
    return {"clusters": out}


def wal_ranges(names: list[str], seg_size: int) -> list[dict[str, Any]]:
    """Contiguous runs of archived segments, per timeline."""
    by_tl: dict[int, list[int]] = {}
    for name in names:
        if wal.is_segment(name):
            tl, segno = wal.parse_segment_name(name, seg_size)
            by_tl.setdefault(tl, []).append(segno)
    out = []
    for tl in sorted(by_tl):
        segnos = sorted(by_tl[tl])
        runs: list[list[int]] = []
        for s in segnos:
            if runs and s == runs[-1][1] + 1:
                runs[-1][1] = s
            else:
                runs.append([s, s])
        out.append({
            "timeline": tl,
            "ranges": [{"start": wal.segment_name(tl, a, seg_size), "stop": wal.segment_name(tl, b, seg_size)}
                       for a, b in runs],
        })
    return out


def recoverable_window(backups: list[dict[str, Any]], ranges: list[dict[str, Any]]) -> dict[str, Any] | None:
    """From the oldest backup's consistent point to the end of the WAL run that
    continues it: the span a point-in-time restore can reach without gaps."""
    if not backups:
        return None
    oldest = backups[0]
    end = oldest["wal_stop"]
    for tl in ranges:
        for run in tl["ranges"]:
            if run["start"] <= oldest["wal_start"] <= run["stop"] and tl["timeline"] == oldest["timeline"]:
                end = run["stop"]
    newest_end = backups[-1]["wal_stop"]
    for tl in ranges:
        for run in tl["ranges"]:
            if run["start"] <= newest_end <= run["stop"]:
                end = max(end, run["stop"])
    return {"from_time": oldest["stop_time"], "from_lsn": oldest["stop_lsn"], "to_wal": end}


DUMP_FIELDS = ("id", "database", "start_time", "stop_time", "size", "stored_size")


def dump_list(repo: Any, cluster: str, pinned: set[str]) -> list[dict[str, Any]]:
    """Logical backups (pg_dump / pg_dumpall), oldest first: complete and failed ones."""
    from pgsafe.repo.dumps import DumpStore

    out = []
    for entry in DumpStore(repo, cluster).catalog():
        item = {k: entry.get(k) for k in DUMP_FIELDS}
        item.update(kind=entry.get("kind"), format=entry.get("dump_format"), status=entry.get("status"),
                    error=entry.get("error"), options=entry.get("options"), pinned=entry["id"] in pinned)
        out.append(item)
    return out
