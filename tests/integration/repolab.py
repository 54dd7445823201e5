"""Setups with several repositories, object storage and encryption, for issue 4's tests.

    Setup                                a PgsafeEnv whose pgsafe runs and servers carry the
                                         environment a DBA would give them (S3 credentials)
    make_setup(lab, repos, ...)          a cluster archiving through pgsafe into those repos
    posix_repo / s3_repo                 one ``[repo.NAME]`` section
    find_plaintext / s3_objects          every byte a repository holds, read back

The S3 server fixtures are in s3_fixtures.py (``pytest_plugins = ["s3_fixtures"]``).

S3 credentials. The PostgreSQL server runs archive_command and restore_command as the
postgres OS user with the server's environment. pgsafe follows the standard AWS chain,
so the setup does what a DBA would do on a host without instance credentials: a shared
credentials file readable only by the postgres user, named by AWS_SHARED_CREDENTIALS_FILE
in the server's environment (a systemd ``Environment=`` line) and in the environment of
every pgsafe command the test runs. No key appears in postgresql.conf or pgsafe.toml.
"""

from __future__ import annotations

import os
import subprocess
import types
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from helpers import (
    COMMAND_TIMEOUT,
    START_TIMEOUT,
    Lab,
    PgCluster,
    PgsafeEnv,
    as_server_user,
    clean_env,
    run_pgsafe,
    server_uid_gid,
    wait_for,
)
from storage.s3server import S3Server

PASSPHRASE = "correct horse battery staple, 2026"


# -- reading the S3 server directly ------------------------------------------------------

def s3_store(server: S3Server, prefix: str = "") -> Any:
    """An obstore client for the test itself (reading back, tampering)."""
    from obstore.store import S3Store

    return S3Store(server.bucket, prefix=prefix or None, endpoint=server.endpoint, region=server.region,
                   access_key_id=server.access_key, secret_access_key=server.secret_key,
                   client_options={"allow_http": True, "timeout": "30s"})


def s3_objects(server: S3Server, prefix: str) -> dict[str, bytes]:
    """{key: content} of every object under prefix."""
    import obstore

    store = s3_store(server, prefix)
    out: dict[str, bytes] = {}
    for chunk in obstore.list(store):
        for meta in chunk:
            out[meta["path"]] = bytes(obstore.get(store, meta["path"]).bytes())
    return out


def s3_keys(server: S3Server, prefix: str) -> list[str]:
    import obstore

    store = s3_store(server, prefix)
    return sorted(m["path"] for chunk in obstore.list(store) for m in chunk)


# -- configuration -----------------------------------------------------------------------

def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return str(value)
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


def section(header: str, keys: dict[str, Any]) -> str:
    return f"[{header}]\n" + "".join(f"{k} = {_toml_value(v)}\n" for k, v in keys.items() if v is not None) + "\n"


@dataclass
class RepoSpec:
    name: str
    keys: dict[str, Any]

    @property
    def is_s3(self) -> bool:
        return self.keys.get("type") == "s3"

    @property
    def path(self) -> Path:
        return Path(self.keys["path"])

    @property
    def prefix(self) -> str:
        return str(self.keys["prefix"])

    def toml(self) -> str:
        return section(f"repo.{self.name}", self.keys)


def posix_repo(name: str, path: Path, **keys: Any) -> RepoSpec:
    return RepoSpec(name, {"path": str(path), **keys})


def s3_repo(name: str, server: S3Server, prefix: str | None = None, **keys: Any) -> RepoSpec:
    return RepoSpec(name, {"type": "s3", "bucket": server.bucket,
                           "prefix": prefix or f"it/{uuid.uuid4().hex[:12]}", "region": server.region,
                           "endpoint": server.endpoint, "path_style": True, **keys})


def server_owned_file(path: Path, content: str, mode: int = 0o600) -> Path:
    """A file only the server's OS user (and root) can read."""
    path.write_text(content)
    os.chown(path, *server_uid_gid())
    path.chmod(mode)
    return path


def aws_credentials_file(directory: Path, server: S3Server) -> Path:
    return server_owned_file(directory / "aws-credentials",
                             f"[default]\naws_access_key_id = {server.access_key}\n"
                             f"aws_secret_access_key = {server.secret_key}\n")


def give_server_env(pg: PgCluster, extra: dict[str, str]) -> None:
    """Start (and stop) this server with extra environment variables, as a service
    manager would: its archiver and startup process pass them to pgsafe."""
    if not extra:
        return

    def run_server_cmd(self: PgCluster, argv: Sequence[Any]) -> subprocess.CompletedProcess[str]:
        return subprocess.run(as_server_user(argv), cwd=self.workdir, env=clean_env(**extra),
                              capture_output=True, text=True, check=True, timeout=START_TIMEOUT + 60)

    pg._run_server_cmd = types.MethodType(run_server_cmd, pg)  # type: ignore[method-assign]


# -- a cluster and its repositories ------------------------------------------------------

@dataclass
class Setup(PgsafeEnv):
    """A PgsafeEnv over any repositories; every pgsafe run gets ``extra_env``."""

    repos: list[RepoSpec] = field(default_factory=list)
    extra_env: dict[str, str] = field(default_factory=dict)
    cluster_keys: dict[str, Any] = field(default_factory=dict)

    def run(self, *args: str | os.PathLike[str], check: bool = True, user: str | None = None,
            timeout: float = COMMAND_TIMEOUT, config: Path | None = None,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        proc = run_pgsafe(self.config if config is None else config, *args, user=user, timeout=timeout,
                          bin=self.bin, extra_env={**self.extra_env, **(env or {})})
        if check and proc.returncode != 0:
            raise AssertionError(
                f"pgsafe {' '.join(map(str, args))} exited {proc.returncode}\n"
                f"--- stdout ---\n{proc.stdout}\n--- stderr ---\n{proc.stderr}\n"
                f"--- server log ---\n{self.cluster.log_tail(30)}"
            )
        return proc

    def spawn(self, *args: str | os.PathLike[str], user: str | None = None,
              config: Path | None = None) -> subprocess.Popen[str]:
        proc = subprocess.Popen(self.argv(*args, user=user, config=config), stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, cwd="/tmp",
                                env=clean_env(**self.extra_env), stdin=subprocess.DEVNULL,
                                start_new_session=True)
        self.background.append(proc)
        return proc

    def restored_cluster(self, target_dir: Path, name: str = "restored") -> PgCluster:
        pg = super().restored_cluster(target_dir, name)
        give_server_env(pg, self.extra_env)
        return pg

    def spec(self, name: str) -> RepoSpec:
        for spec in self.repos:
            if spec.name == name:
                return spec
        raise KeyError(name)

    def info_of(self, repo: str, config: Path | None = None) -> dict[str, Any]:
        import json

        out = self.run("info", "--repo", repo, "--output", "json", config=config).stdout
        clusters = json.loads(out)["clusters"]
        assert len(clusters) == 1, clusters
        return dict(clusters[0])

    def backup_ids(self, repo: str, config: Path | None = None) -> list[str]:
        return [b["id"] for b in self.info_of(repo, config)["backups"]]

    def config_text(self, repos: list[RepoSpec] | None = None, **cluster_keys: Any) -> str:
        pg = self.cluster
        keys = {"pgdata": str(pg.pgdata), "host": str(pg.socket_dir), "port": pg.port, "user": "postgres",
                **self.cluster_keys, **cluster_keys}
        return "".join(r.toml() for r in (self.repos if repos is None else repos)) + section("cluster.main", keys)

    def write_variant(self, name: str, repos: list[RepoSpec] | None = None, **cluster_keys: Any) -> Path:
        """Another config file for the same cluster (other repositories or keys)."""
        return self.write_config(self.config_text(repos, **cluster_keys), name)

    def archiver(self) -> tuple[int, int, str | None, str | None]:
        """(archived_count, failed_count, last_archived_wal, last_failed_wal)."""
        row = self.cluster.sql("select archived_count, failed_count, last_archived_wal, last_failed_wal "
                               "from pg_stat_archiver")[0]
        return int(row[0]), int(row[1]), row[2], row[3]


def make_setup(lab: Lab, repos: Sequence[RepoSpec] | None = None, *, s3: S3Server | None = None,
               settings: dict[str, Any] | None = None, cluster_keys: dict[str, Any] | None = None,
               start: bool = True, init: bool = True, repo_names: Sequence[str] = ("main",)) -> Setup:
    """A cluster archiving through pgsafe into ``repos`` (default: one posix repository
    per name in repo_names, under the setup's directory). With ``s3``, the server and
    every pgsafe run get the credentials file."""
    work = lab.tmp.make("pgsafe-it-")
    if repos is None:
        repos = [posix_repo(n, work / f"repo-{n}") for n in repo_names]
    extra_env: dict[str, str] = {}
    if s3 is not None:
        extra_env["AWS_SHARED_CREDENTIALS_FILE"] = str(aws_credentials_file(work, s3))
    pg = lab.make_cluster(name=f"source{len(lab.envs) + 1}")
    give_server_env(pg, extra_env)
    config = work / "pgsafe.toml"
    first = repos[0]
    env = Setup(cluster=pg, workdir=work, repo=first.path if not first.is_s3 else work / "s3",
                config=config, lab=lab, bin=lab.pgsafe_bin, repos=list(repos), extra_env=extra_env,
                cluster_keys=dict(cluster_keys or {}))
    env.write_config(env.config_text())
    pg.configure(**{
        "wal_level": "replica",
        "archive_mode": "on",
        "archive_command": f"{lab.pgsafe_bin} --config {config} archive-push %p",
        **(settings or {}),
    })
    lab.envs.append(env)
    if start:
        pg.start()
    if init:
        env.run("init")
    return env


# -- looking at every stored byte --------------------------------------------------------

def posix_objects(root: Path) -> dict[str, bytes]:
    out: dict[str, bytes] = {}
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            p = Path(dirpath) / name
            out[str(p.relative_to(root))] = p.read_bytes()
    return out


def find_plaintext(objects: dict[str, bytes], needles: Sequence[bytes]) -> list[str]:
    """'key: needle' for each needle found in an object's key or content."""
    return [f"{key}: {needle!r}" for key, data in objects.items() for needle in needles
            if needle in key.encode() or needle in data]


def wait_archiver_failures(env: Setup, more_than: int, timeout: float = 120) -> int:
    return int(wait_for(f"archive failures above {more_than}",
                        lambda: (lambda f: f if f > more_than else 0)(env.archiver()[1]),
                        timeout=timeout, interval=0.25, on_timeout=env.cluster.log_tail))
