"""`pgsafe expire`: apply retention, or delete one backup; collect leftovers."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from pgsafe.config import ClusterConfig, RepoConfig
from pgsafe.errors import NoBackup, UsageError
from pgsafe.policy.retention import (Expiry, RetentionPolicy, dependents, plan_dump_expiry, plan_expiry,
                                     wal_to_expire)
from pgsafe.repo.repository import Repository, open_repository


@dataclass
class ExpireResult:
    repo: str
    dry_run: bool
    backups: list[Expiry] = field(default_factory=list)
    wal_removed: list[str] = field(default_factory=list)
    leftovers_removed: list[str] = field(default_factory=list)
    notices: list[str] = field(default_factory=list)
    dumps: list[Expiry] = field(default_factory=list)  # logical backups (ids of dumps)


def policy_of(repo_config: RepoConfig) -> RetentionPolicy:
    return RetentionPolicy(repo_config.retention_full, repo_config.retention_full_days, repo_config.retention_diff,
                           repo_config.retention_dump, repo_config.retention_dump_days)


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
    if set_id is not None and set_id not in {b["id"] for b in catalog} and _is_dump(repo, cluster, set_id):
        result.dumps = _explicit_dump(repo, cluster, set_id)
        if not dry_run:
            _delete_dumps(repo, cluster, result.dumps)
        return result
    if set_id is None:
        result.dumps = expire_dumps_locked(repo, cluster, policy, dry_run=dry_run)
    if set_id is not None:
        result.backups = _explicit(catalog, set_id, with_dependents, repo.pins(cluster))
    else:
        if not policy.configured:
            what = "no backup or WAL expires" if policy.dumps_configured else "nothing expires"
            result.notices.append(f"no retention configured for repository {repo.name!r}: {what}")
            result.leftovers_removed = [] if dry_run else (repo.collect_garbage(cluster)
                                                          + collect_dump_garbage(repo, cluster))
            return result
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
    result.leftovers_removed = repo.collect_garbage(cluster) + collect_dump_garbage(repo, cluster)
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


# -- logical backups (dumps) ---------------------------------------------------------

def expire_dumps_locked(repo: Repository, cluster: str, policy: RetentionPolicy, *,
                        dry_run: bool = False) -> list[Expiry]:
    """Apply dump retention; then, if no dump is running, collect leftovers of killed
    dump runs. Physical backups and WAL are not touched."""
    from pgsafe.repo.dumps import DumpStore

    store = DumpStore(repo, cluster)
    plan = plan_dump_expiry(store.catalog(), policy, repo.pins(cluster), datetime.now(timezone.utc))
    if not dry_run:
        _delete_dumps(repo, cluster, plan)
    return plan


def collect_dump_garbage(repo: Repository, cluster: str) -> list[str]:
    """Leftovers of killed dump runs, removed only when no dump runs (its lock is free)."""
    from pgsafe.errors import LockedError
    from pgsafe.repo.dumps import DumpStore

    try:
        with repo.lock(cluster, "dump"):
            return DumpStore(repo, cluster).collect_garbage()
    except LockedError:
        return []


def _delete_dumps(repo: Repository, cluster: str, plan: list[Expiry]) -> None:
    from pgsafe.repo.dumps import DumpStore

    store = DumpStore(repo, cluster)
    for expiry in plan:
        store.delete(expiry.backup_id)


def _is_dump(repo: Repository, cluster: str, dump_id: str) -> bool:
    from pgsafe.repo.dumps import DumpStore

    return repo.storage.stat(DumpStore(repo, cluster).catalog_key(dump_id)) is not None


def _explicit_dump(repo: Repository, cluster: str, dump_id: str) -> list[Expiry]:
    if dump_id in repo.pins(cluster):
        raise UsageError(f"dump {dump_id} is pinned; `pgsafe unpin {dump_id}` first")
    return [Expiry(dump_id, "requested with --set")]
