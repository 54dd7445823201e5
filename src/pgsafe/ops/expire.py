"""`pgsafe expire`: apply retention, or delete one backup; collect leftovers."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from pgsafe.config import ClusterConfig, RepoConfig
from pgsafe.errors import NoBackup, UsageError
from pgsafe.policy.retention import Expiry, RetentionPolicy, dependents, plan_expiry, wal_to_expire
from pgsafe.repo.repository import Repository, open_repository


@dataclass
class ExpireResult:
    repo: str
    dry_run: bool
    backups: list[Expiry] = field(default_factory=list)
    wal_removed: list[str] = field(default_factory=list)
    leftovers_removed: list[str] = field(default_factory=list)
    notices: list[str] = field(default_factory=list)


def policy_of(repo_config: RepoConfig) -> RetentionPolicy:
    return RetentionPolicy(repo_config.retention_full, repo_config.retention_full_days, repo_config.retention_diff)


def run_expire(cluster: ClusterConfig, repo_config: RepoConfig, *, dry_run: bool = False,
               set_id: str | None = None, with_dependents: bool = False) -> ExpireResult:
    repo = open_repository(repo_config)
    # the backup lock: no backup is being written while we remove things
    with repo.lock(cluster.name, "backup"):
        return expire_locked(repo, cluster.name, policy_of(repo_config), dry_run=dry_run,
                             set_id=set_id, with_dependents=with_dependents)


def expire_locked(repo: Repository, cluster: str, policy: RetentionPolicy, *, dry_run: bool = False,
                  set_id: str | None = None, with_dependents: bool = False) -> ExpireResult:
    result = ExpireResult(repo.name, dry_run)
    catalog = repo.catalog(cluster)
    if set_id is not None:
        result.backups = _explicit(catalog, set_id, with_dependents, repo.pins(cluster))
    else:
        if not policy.configured:
            result.notices.append(f"no retention configured for repository {repo.name!r}: no backup expires")
        result.backups = plan_expiry(catalog, policy, repo.pins(cluster), datetime.now(timezone.utc))
    gone = {e.backup_id for e in result.backups}
    kept = [b for b in catalog if b["id"] not in gone]
    oldest_start = min((b["wal_start"] for b in kept), key=lambda name: name[8:], default=None)
    result.wal_removed = wal_to_expire(repo.wal_files(cluster), oldest_start)
    if dry_run:
        return result
    for expiry in reversed(result.backups):  # dependents before what they depend on
        repo.delete_backup(cluster, expiry.backup_id)
    for name in result.wal_removed:
        repo.storage.remove(repo.wal_key(cluster, name))
    result.leftovers_removed = repo.collect_garbage(cluster)
    return result


def _explicit(catalog: list[dict[str, Any]], set_id: str, with_dependents: bool, pinned: set[str]) -> list[Expiry]:
    if set_id not in {b["id"] for b in catalog}:
        raise NoBackup(f"no backup {set_id!r}; `pgsafe info` lists the backups")
    needed_by = dependents(catalog, set_id)
    held = sorted(pinned & ({set_id} | set(needed_by if with_dependents else [])))
    if held:
        raise UsageError(f"backup {held[0]} is pinned; `pgsafe unpin {held[0]}` first")
    if needed_by and not with_dependents:
        raise UsageError(
            f"backup {set_id} is needed by {', '.join(needed_by)}; add --with-dependents to remove them too"
        )
    out = [Expiry(set_id, "requested with --set")]
    out += [Expiry(d, f"depends on {set_id}, removed with it") for d in needed_by]
    order = {b["id"]: i for i, b in enumerate(catalog)}
    return sorted(out, key=lambda e: order[e.backup_id])
