"""Configuration: every bad input is one clear error naming the key and the file."""

from __future__ import annotations

import pytest

from pgsafe.config import load_config
from pgsafe.errors import ConfigError, UsageError

GOOD = """
[repo.main]
path = "/var/lib/pgsafe"
compression = "zstd"
compression_level = 3

[cluster.main]
pgdata = "/var/lib/postgresql/15/main"
host = "/var/run/postgresql"
port = 5432
user = "postgres"
"""


def write(tmp_path, text: str) -> str:
    path = tmp_path / "pgsafe.toml"
    path.write_text(text)
    return str(path)


def test_good_config(tmp_path):
    config = load_config(write(tmp_path, GOOD))
    assert config.repo(None).compression_level == 3
    assert config.cluster(None).conninfo_kwargs()["port"] == 5432


@pytest.mark.parametrize("text, words", [
    (GOOD + "bogus = 1\n", ["cluster.main.bogus"]),
    (GOOD.replace("port = 5432", 'port = "x"'), ["cluster.main.port", "integer"]),
    (GOOD.replace('pgdata = "/var/lib/postgresql/15/main"', ""), ["missing", "cluster.main.pgdata"]),
    (GOOD.replace('"zstd"', '"brotli"'), ["compression"]),
    (GOOD.replace("[repo.main]", "[repo.main]\nretention_full = 0"), ["retention_full"]),
    ("[repo.main\n", ["not valid TOML"]),
])
def test_bad_configs_name_key_and_file(tmp_path, text, words):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert path in err.value.message
    for word in words:
        assert word in err.value.message


def test_missing_file_and_env(tmp_path, monkeypatch):
    monkeypatch.setenv("PGSAFE_CONFIG", str(tmp_path / "nope.toml"))
    with pytest.raises(ConfigError, match="not found"):
        load_config(None)


def test_several_clusters_need_a_name(tmp_path):
    config = load_config(write(tmp_path, GOOD + '\n[cluster.other]\npgdata = "/x"\n'))
    with pytest.raises(UsageError, match="--cluster"):
        config.cluster(None)
    assert config.cluster("other").pgdata == "/x"


def test_parsed_config_is_cached_per_user_and_follows_every_change(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    path = write(tmp_path, GOOD)
    assert load_config(path).cluster(None).port == 5432
    (cached,) = (tmp_path / "cache" / "pgsafe").iterdir()
    assert cached.stat().st_mode & 0o777 == 0o600
    assert load_config(path).cluster(None).port == 5432  # from the cache
    # a change of the file, even of the same size, is seen at once
    write(tmp_path, GOOD.replace("port = 5432", "port = 5433"))
    assert load_config(path).cluster(None).port == 5433
    # a broken file is an error, whatever the cache holds
    write(tmp_path, GOOD.replace("port = 5432", "port = = 5433"))
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(path)
    # and a damaged cache is only a cache miss
    cached.write_bytes(b"\x00garbage")
    write(tmp_path, GOOD)
    assert load_config(path).cluster(None).port == 5432
