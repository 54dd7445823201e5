"""Loading and validating pgsafe's configuration into frozen objects.

The file is TOML, found from ``--config``, else ``PGSAFE_CONFIG``, else
``/etc/pgsafe/pgsafe.toml``. Every key is declared in a schema below; an unknown
key, a wrong type or a missing required key is an error naming the key and the file.
"""

from __future__ import annotations

import os
import re
from typing import Any, NamedTuple

from pgsafe import cache
from pgsafe.errors import ConfigError, UsageError

DEFAULT_CONFIG_PATH = "/etc/pgsafe/pgsafe.toml"
COMPRESSIONS = ("zstd", "lz4", "gzip", "none")
REPO_TYPES = ("posix", "s3")
ENCRYPTIONS = ("none", "aes-256-gcm")


class RepoConfig(NamedTuple):
    name: str
    path: str = ""
    type: str = "posix"
    compression: str = "zstd"
    compression_level: int = 3
    bundle_size: int = 16 * 1024 * 1024
    bundle_limit: int = 2 * 1024 * 1024
    # object storage (type = "s3")
    bucket: str | None = None
    prefix: str = ""
    region: str | None = None
    endpoint: str | None = None
    path_style: bool = False
    # encryption
    encryption: str = "none"
    passphrase_env: str | None = None
    passphrase_file: str | None = None
    passphrase_command: str | None = None
    # retention
    retention_full: int | None = None
    retention_full_days: float | None = None
    retention_diff: int | None = None
    retention_dump: int | None = None
    retention_dump_days: float | None = None


class ClusterConfig(NamedTuple):
    name: str
    pgdata: str
    host: str | None = None
    port: int | None = None
    user: str | None = None
    dbname: str | None = None
    archive_timeout: float = 60.0
    archive_async: bool = False
    spool_path: str | None = None

    def conninfo_kwargs(self) -> dict[str, Any]:
        """libpq keywords; anything unset is left to PG* variables and libpq defaults."""
        kwargs: dict[str, Any] = {}
        for key in ("host", "port", "user", "dbname"):
            value = getattr(self, key)
            if value is not None:
                kwargs[key] = value
        kwargs.setdefault("dbname", os.environ.get("PGDATABASE", "postgres"))
        return kwargs


class Config(NamedTuple):
    path: str
    repos: tuple[RepoConfig, ...]
    clusters: tuple[ClusterConfig, ...]
    jobs: int | None = None

    def cluster(self, name: str | None) -> ClusterConfig:
        """The cluster named on the command line, or the only one configured."""
        if name is None:
            if len(self.clusters) == 1:
                return self.clusters[0]
            names = ", ".join(c.name for c in self.clusters)
            raise UsageError(f"several clusters are configured ({names}); choose one with --cluster NAME")
        for cluster in self.clusters:
            if cluster.name == name:
                return cluster
        raise UsageError(f"no cluster named {name!r} in {self.path}")

    def repo(self, name: str | None) -> RepoConfig:
        if name is None:
            return self.repos[0]
        for repo in self.repos:
            if repo.name == name:
                return repo
        raise UsageError(f"no repository named {name!r} in {self.path}")


# key -> (type or tuple of types, required)
_REPO_KEYS: dict[str, tuple[type | tuple[type, ...], bool]] = {
    "path": (str, False),
    "type": (str, False),
    "compression": (str, False),
    "compression_level": (int, False),
    "bundle_size": (int, False),
    "bundle_limit": (int, False),
    "bucket": (str, False),
    "prefix": (str, False),
    "region": (str, False),
    "endpoint": (str, False),
    "path_style": (bool, False),
    "encryption": (str, False),
    "passphrase_env": (str, False),
    "passphrase_file": (str, False),
    "passphrase_command": (str, False),
    "retention_full": (int, False),
    "retention_full_days": ((int, float), False),
    "retention_diff": (int, False),
    "retention_dump": (int, False),
    "retention_dump_days": ((int, float), False),
}
_CLUSTER_KEYS: dict[str, tuple[type | tuple[type, ...], bool]] = {
    "pgdata": (str, True),
    "host": (str, False),
    "port": (int, False),
    "user": (str, False),
    "dbname": (str, False),
    "archive_timeout": ((int, float), False),
    "archive_async": (bool, False),
    "spool_path": (str, False),
}
_GLOBAL_KEYS: dict[str, tuple[type | tuple[type, ...], bool]] = {
    "jobs": (int, False),
}
_TYPE_NAMES = {str: "a string", int: "an integer", float: "a number", bool: "true or false"}


def find_config_path(explicit: str | None) -> str:
    if explicit:
        return explicit
    return os.environ.get("PGSAFE_CONFIG") or DEFAULT_CONFIG_PATH


def load_config(explicit: str | None = None) -> Config:
    path = find_config_path(explicit)
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        raise ConfigError(f"config file {path} not found; pass --config FILE or set PGSAFE_CONFIG") from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    return parse_config(_parse_toml(raw, path), os.path.abspath(path))


def _parse_toml(raw: bytes, path: str) -> dict[str, Any]:
    """TOML -> dict, remembered per user for the same bytes: archive-push reads the
    config once per WAL segment, and importing and running the TOML parser costs more
    than reading the cached result (marshal)."""
    import marshal
    import zlib

    name = f"config-{zlib.crc32(os.path.abspath(path).encode()):08x}"
    cached = cache.read(name)
    if cached is not None:
        try:
            text, data = marshal.loads(cached)
            if text == raw and isinstance(data, dict):
                return data
        except (ValueError, EOFError, TypeError):
            pass
    import tomllib

    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    try:
        cache.write(name, marshal.dumps((raw, data)))
    except ValueError:  # a value marshal cannot hold (a TOML date): no cache
        pass
    return data


def parse_config(data: dict[str, Any], path: str) -> Config:
    repos_raw = data.pop("repo", None)
    clusters_raw = data.pop("cluster", None)
    top = _check_keys(data, _GLOBAL_KEYS, "", path)
    if not isinstance(repos_raw, dict) or not repos_raw:
        raise ConfigError(f"{path}: no repository configured; add a [repo.NAME] section with path = ...")
    if not isinstance(clusters_raw, dict) or not clusters_raw:
        raise ConfigError(f"{path}: no cluster configured; add a [cluster.NAME] section with pgdata = ...")
    repos = tuple(_parse_repo(name, section, path) for name, section in repos_raw.items())
    clusters = tuple(_parse_cluster(name, section, path) for name, section in clusters_raw.items())
    jobs = top.get("jobs")
    if jobs is not None and jobs < 1:
        raise ConfigError(f"{path}: jobs must be at least 1")
    return Config(path=path, repos=repos, clusters=clusters, jobs=jobs)


_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")


def _check_name(kind: str, name: str, path: str) -> None:
    if not _NAME.match(name):
        raise ConfigError(f"{path}: [{kind}.{name}]: names use letters, digits, '_', '.' and '-' only")


def _parse_repo(name: str, section: Any, path: str) -> RepoConfig:
    _check_name("repo", name, path)
    where = f"repo.{name}"
    values = _check_keys(_section(section, where, path), _REPO_KEYS, where, path)
    repo = RepoConfig(name=name, **values)
    if repo.type == "posix" and not repo.path:
        raise ConfigError(f"{path}: missing required key {where}.path")
    if repo.type not in REPO_TYPES:
        raise ConfigError(f"{path}: {where}.type = {repo.type!r} is not supported; use one of {', '.join(REPO_TYPES)}")
    if repo.type == "s3" and not repo.bucket:
        raise ConfigError(f"{path}: missing required key {where}.bucket for type = \"s3\"")
    if repo.encryption not in ENCRYPTIONS:
        raise ConfigError(f"{path}: {where}.encryption = {repo.encryption!r}; choose one of {', '.join(ENCRYPTIONS)}")
    for key in ("retention_full", "retention_full_days", "retention_diff", "retention_dump", "retention_dump_days"):
        value = getattr(repo, key)
        if value is not None and value < (1 if key in ("retention_full", "retention_diff", "retention_dump") else 0):
            raise ConfigError(f"{path}: {where}.{key} = {value} must be positive")
    if repo.compression not in COMPRESSIONS:
        raise ConfigError(
            f"{path}: {where}.compression = {repo.compression!r}; choose one of {', '.join(COMPRESSIONS)}"
        )
    if repo.type == "posix" and not os.path.isabs(repo.path):
        raise ConfigError(f"{path}: {where}.path must be an absolute path, got {repo.path!r}")
    limits = {"zstd": (-7, 22), "lz4": (0, 16), "gzip": (0, 9), "none": (-99, 99)}[repo.compression]
    if "compression_level" in values and not limits[0] <= repo.compression_level <= limits[1]:
        raise ConfigError(
            f"{path}: {where}.compression_level = {repo.compression_level} is out of range "
            f"{limits[0]}..{limits[1]} for {repo.compression}"
        )
    if "compression_level" not in values:
        default_level = {"zstd": 3, "lz4": 0, "gzip": 6, "none": 0}[repo.compression]
        repo = repo._replace(compression_level=default_level)
    return repo


def _parse_cluster(name: str, section: Any, path: str) -> ClusterConfig:
    _check_name("cluster", name, path)
    where = f"cluster.{name}"
    values = _check_keys(_section(section, where, path), _CLUSTER_KEYS, where, path)
    cluster = ClusterConfig(name=name, **values)
    if not os.path.isabs(cluster.pgdata):
        raise ConfigError(f"{path}: {where}.pgdata must be an absolute path, got {cluster.pgdata!r}")
    if cluster.port is not None and not 0 < cluster.port < 65536:
        raise ConfigError(f"{path}: {where}.port = {cluster.port} is not a valid port")
    return cluster


def _section(section: Any, where: str, path: str) -> dict[str, Any]:
    if not isinstance(section, dict):
        raise ConfigError(f"{path}: {where} must be a table ([{where}])")
    return section


def _check_keys(
    section: dict[str, Any],
    schema: dict[str, tuple[type | tuple[type, ...], bool]],
    where: str,
    path: str,
) -> dict[str, Any]:
    prefix = f"{where}." if where else ""
    for key, value in section.items():
        if key not in schema:
            known = ", ".join(sorted(schema))
            raise ConfigError(f"{path}: unknown key {prefix}{key} (known keys: {known})")
        expected, _ = schema[key]
        types = expected if isinstance(expected, tuple) else (expected,)
        if isinstance(value, bool) and bool not in types or not isinstance(value, types):
            names = " or ".join(_TYPE_NAMES[t] for t in types)
            raise ConfigError(f"{path}: {prefix}{key} must be {names}, got {value!r}")
    for key, (_, required) in schema.items():
        if required and key not in section:
            raise ConfigError(f"{path}: missing required key {prefix}{key}")
    return {key: (float(v) if isinstance(v, int) and schema[key][0] == (int, float) else v) for key, v in section.items()}
