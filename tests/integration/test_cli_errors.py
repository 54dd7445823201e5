"""Clean failures: a stable exit code, one line on stderr, no traceback, nothing changed
(issue 2, requirements 1, 4, 6 and 8)."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import pytest

from helpers import (
    PgsafeEnv,
    assert_clean_error,
    config_text,
    run_pgsafe,
    tree_snapshot,
)


# -- configuration -----------------------------------------------------------------

def write(path: Path, text: str) -> Path:
    path.write_text(text)
    path.chmod(0o644)
    return path


def test_missing_config_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    proc = run_pgsafe(missing, "info")
    assert_clean_error(proc, 3, str(missing))


def test_broken_toml(tmp_path: Path) -> None:
    cfg = write(tmp_path / "broken.toml", '[repo.main]\npath = "/tmp/x\ncompression = zstd\n')
    proc = run_pgsafe(cfg, "info")
    assert_clean_error(proc, 3, str(cfg))


def test_unknown_key_names_key_and_file(env: PgsafeEnv) -> None:
    text = env.config.read_text().replace("compression_level = 3", "compression_level = 3\ncolour = \"blue\"")
    cfg = env.write_config(text, "unknown-key.toml")
    proc = env.run("info", check=False, config=cfg)
    assert_clean_error(proc, 3, "colour", str(cfg))


def test_wrong_type_names_key_and_file(env: PgsafeEnv) -> None:
    text = env.config.read_text().replace(f"port = {env.cluster.port}", 'port = "many"')
    cfg = env.write_config(text, "wrong-type.toml")
    proc = env.run("info", check=False, config=cfg)
    assert_clean_error(proc, 3, "port", str(cfg))


def test_missing_required_key_names_key_and_file(env: PgsafeEnv) -> None:
    text = "\n".join(line for line in env.config.read_text().splitlines()
                     if not line.startswith("path ="))
    cfg = env.write_config(text + "\n", "no-path.toml")
    proc = env.run("info", check=False, config=cfg)
    assert_clean_error(proc, 3, "path", str(cfg))


def test_config_from_environment(env: PgsafeEnv) -> None:
    proc = run_pgsafe(None, "info", "--output", "json", extra_env={"PGSAFE_CONFIG": str(env.config)})
    assert proc.returncode == 0, proc
    assert '"clusters"' in proc.stdout


def test_usage_error_exits_2(env: PgsafeEnv) -> None:
    for args in (["frobnicate"], ["backup", "--type", "sideways"], ["restore"]):
        proc = env.run(*args, check=False)
        assert proc.returncode == 2, (args, proc)
        assert "Traceback" not in proc.stderr, proc.stderr


# -- PostgreSQL ----------------------------------------------------------------------

def test_backup_of_stopped_server_exits_6_and_info_still_works(env: PgsafeEnv) -> None:
    env.cluster.stop()
    proc = env.run("backup", "--type", "full", check=False)
    assert_clean_error(proc, 6)
    env.cluster.start()
    assert env.backups() == []
    env.cluster.stop()
    # info reads the repository only
    proc = env.run("info", "--output", "json", check=False)
    assert proc.returncode == 0, proc


def test_check_passes_on_a_good_setup(env: PgsafeEnv) -> None:
    proc = env.run("check")
    assert "Traceback" not in proc.stderr


def test_check_fails_with_the_fix_when_archiving_is_off(make_env: Callable[..., PgsafeEnv]) -> None:
    env = make_env(settings={"archive_mode": "off"})
    proc = env.run("check", check=False)
    assert proc.returncode == 12, proc
    assert "Traceback" not in proc.stderr
    assert "archive_mode" in proc.stdout + proc.stderr, proc


def test_check_fails_when_archive_command_does_not_call_pgsafe(make_env: Callable[..., PgsafeEnv]) -> None:
    env = make_env(settings={"archive_command": "/bin/true"})
    proc = env.run("check", check=False)
    assert proc.returncode == 12, proc
    assert "archive_command" in proc.stdout + proc.stderr, proc


def test_a_different_cluster_is_refused(make_env: Callable[..., PgsafeEnv],
                                       make_cluster: Callable[..., object]) -> None:
    env = make_env()
    env.backup()
    other = make_cluster(start=True)
    cfg = env.write_config(
        config_text(env.repo, other.pgdata, other.socket_dir, other.port), "other-cluster.toml")
    before = tree_snapshot(env.repo)
    for args in (["backup", "--type", "full"], ["init"]):
        proc = env.run(*args, check=False, config=cfg)
        assert_clean_error(proc, 7)
    # the repository still belongs to the first cluster, which keeps working
    (cluster,) = env.info()["clusters"]
    sysid = env.cluster.scalar("select system_identifier from pg_control_system()")
    assert str(cluster["system_identifier"]) == str(sysid)
    assert len(cluster["backups"]) == 1
    env.backup()
    assert set(before) <= set(tree_snapshot(env.repo))


# -- restore refusals ------------------------------------------------------------------

def test_restore_into_non_empty_directory_is_refused_untouched(env: PgsafeEnv) -> None:
    env.backup()
    target = env.new_target_dir()
    target.mkdir()
    (target / "precious.txt").write_text("do not touch")
    (target / "sub").mkdir()
    before = tree_snapshot(target)
    proc = env.restore(target, check=False)
    assert_clean_error(proc, 11, str(target))
    assert tree_snapshot(target) == before
    assert sorted(p.name for p in target.iterdir()) == ["precious.txt", "sub"]


def test_restore_of_unknown_backup_id(env: PgsafeEnv) -> None:
    env.backup()
    target = env.new_target_dir()
    proc = env.restore(target, "--set", "20000101-000000F", check=False)
    assert_clean_error(proc, 13, "20000101-000000F")
    assert not target.exists()


def test_restore_with_no_backup(env: PgsafeEnv) -> None:
    target = env.new_target_dir()
    proc = env.restore(target, check=False)
    assert_clean_error(proc, 13)
    assert not target.exists()


@pytest.mark.parametrize("args", [
    ["--target-time", "yesterday-ish"],
    ["--target-xid", "not-a-number"],
    ["--target-lsn", "0/XYZ"],
    ["--target-action", "explode"],
    ["--target", "somewhere"],
    ["--tablespace-map", "no-equals-sign"],
])
def test_restore_bad_values_fail_before_writing(env: PgsafeEnv, args: list[str]) -> None:
    env.backup()
    target = env.new_target_dir()
    proc = env.restore(target, *args, check=False)
    assert proc.returncode in (2, 11), proc
    assert "Traceback" not in proc.stderr, proc.stderr
    assert not target.exists()
