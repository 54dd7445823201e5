"""Encrypted repositories (issue 4, requirements 3 and 6): no plaintext stored,
tampering detected, rekey, wrong or missing passphrase.

The module's cluster archives into two repositories, both without compression (so that
compression cannot hide a marker by accident): ``secret``, encrypted, first, so backups
are written into it directly; and ``plain``, a control that must contain the marker
(backups reach it through the copy that decrypts). The tests run in order.
"""

from __future__ import annotations

import shutil
import uuid
from pathlib import Path

import pytest

from helpers import Lab, PgCluster, assert_clean_error, flip_byte, table_digest, tree_snapshot
from repolab import (
    PASSPHRASE,
    Setup,
    find_plaintext,
    make_setup,
    posix_objects,
    posix_repo,
    s3_objects,
    s3_repo,
    server_owned_file,
)
from storage.s3server import S3Server

pytest_plugins = ["s3_fixtures"]  # s3_server, s3

MARK = uuid.uuid4().hex[:16]
MARKER = f"PLAINTEXT-MARKER-{MARK}".encode()
TABLE = f"vault_{MARK}"
NEW_PASSPHRASE = "a new passphrase for a new year"
ENVELOPE_MAGIC = b"PGSF"


def fill_marker_table(pg: PgCluster) -> None:
    pg.sql(f"create table {TABLE} (id int primary key, secret text)")
    pg.sql(f"insert into {TABLE} select g, '{MARKER.decode()}-' || g from generate_series(1, 2000) g")


@pytest.fixture(scope="module")
def env(module_lab: Lab) -> Setup:
    work = module_lab.tmp.make("pgsafe-enc-")
    secret = posix_repo("secret", work / "secret", compression="none", encryption="aes-256-gcm",
                        passphrase_file=str(work / "passphrase"))
    plain = posix_repo("plain", work / "plain", compression="none")
    server_owned_file(work / "passphrase", PASSPHRASE + "\n")
    env = make_setup(module_lab, [secret, plain])
    fill_marker_table(env.cluster)
    return env


def secret_path(env: Setup) -> Path:
    return env.spec("secret").path


def test_no_plaintext_in_encrypted_repository(env: Setup) -> None:
    pg = env.cluster
    env.backup()
    env.run("dump", "--db", "postgres")
    pg.sql(f"update {TABLE} set secret = secret || '-updated' where id % 10 = 0")
    pg.switch_and_wait_archived()
    needles = [MARKER, TABLE.encode()]

    # the control proves the marker is in what is stored: WAL, backup, dump
    control = find_plaintext(posix_objects(env.spec("plain").path), needles)
    assert any("/wal/" in hit for hit in control), control
    assert any("/backup/" in hit for hit in control), control

    stored = posix_objects(secret_path(env))
    assert find_plaintext(stored, needles) == []
    # and everything but the two plain JSON documents (and lock files, which hold a pid)
    # is an encrypted envelope
    for key, data in stored.items():
        if key in ("pgsafe.json", "keys.json") or "/lock/" in key:
            continue
        assert data[:4] == ENVELOPE_MAGIC and data[6] == 1, f"{key} is not an encrypted envelope"


def test_tampering_is_detected(env: Setup) -> None:
    backup_id = env.backups()[-1]["id"]
    data_dir = secret_path(env) / "cluster" / "main" / "backup" / backup_id / "data"
    victim = max(data_dir.iterdir(), key=lambda p: p.stat().st_size)
    offset = flip_byte(victim)
    try:
        target = env.new_target_dir()
        proc = env.restore(target, "--repo", "secret", check=False)
        assert_clean_error(proc, 9)
        assert not target.exists() or not any(target.iterdir()), "a failed restore left files behind"
        proc = env.run("verify", "--repo", "secret", check=False)
        assert proc.returncode == 9, proc
        assert victim.name in proc.stdout and backup_id in proc.stdout, proc.stdout
        env.run("verify", "--repo", "plain")
    finally:
        flip_byte(victim, offset)
    env.run("verify", "--repo", "secret")

    # a damaged archived WAL file: archive-get fails (and not with "not found"), leaving
    # no file behind
    segment = sorted((secret_path(env) / "cluster" / "main" / "wal").glob("*/0*"))[-1]
    only_secret = env.write_variant("only-secret.toml", [env.spec("secret")])
    dest = env.workdir / "fetched"
    offset = flip_byte(segment)
    try:
        proc = env.run("archive-get", segment.name, dest, config=only_secret, check=False)
        assert proc.returncode == 126, proc
        assert not dest.exists()
    finally:
        flip_byte(segment, offset)

    # an object replaced by an unencrypted one (which anyone can make without the key,
    # here the plain repository's copy of the same segment) is refused too
    original = segment.read_bytes()
    plain_copy = env.spec("plain").path / segment.relative_to(secret_path(env))
    segment.write_bytes(plain_copy.read_bytes())
    try:
        proc = env.run("archive-get", segment.name, dest, config=only_secret, check=False)
        assert proc.returncode == 126, proc
        assert not dest.exists()
        proc = env.run("verify", "--repo", "secret", check=False)
        assert proc.returncode == 9 and segment.name in proc.stdout, proc
    finally:
        segment.write_bytes(original)


def repository_state(env: Setup) -> dict[str, dict[str, tuple[int, int]]]:
    return {r.name: tree_snapshot(r.path) for r in env.repos}


def wrong_configs(env: Setup) -> dict[str, Path]:
    wrong = env.workdir / "wrong-passphrase"
    wrong.write_text("not the passphrase\n")
    return {
        "wrong": env.write_variant("wrong.toml", [
            posix_repo("secret", secret_path(env), compression="none", encryption="aes-256-gcm",
                       passphrase_file=str(wrong)), env.spec("plain")]),
        "missing": env.write_variant("missing.toml", [
            posix_repo("secret", secret_path(env), compression="none", encryption="aes-256-gcm",
                       passphrase_env="PGSAFE_TEST_UNSET_PASSPHRASE"), env.spec("plain")]),
    }


def test_wrong_or_missing_passphrase(env: Setup) -> None:
    pg = env.cluster
    pg.switch_and_wait_archived()
    # a real segment that is not archived yet (the one being written), as a copy
    current = pg.scalar("select pg_walfile_name(pg_current_wal_lsn())")
    segment = env.workdir / "spare" / current
    segment.parent.mkdir(exist_ok=True)
    shutil.copyfile(pg.pgdata / "pg_wal" / current, segment)
    before = repository_state(env)
    for kind, config in wrong_configs(env).items():
        words = ["passphrase"] if kind == "wrong" else ["PGSAFE_TEST_UNSET_PASSPHRASE"]
        for args in (["backup"], ["info"], ["archive-push", str(segment)]):
            assert_clean_error(env.run(*args, config=config, check=False), 15, *words)
        target = env.new_target_dir()
        proc = env.run("restore", "--repo", "secret", "--target-dir", target, config=config, check=False)
        assert_clean_error(proc, 15, *words)
        assert not target.exists()
        assert repository_state(env) == before, f"{kind} passphrase: the repositories changed"


def test_rekey_then_restore(env: Setup) -> None:
    pg = env.cluster
    secret = secret_path(env)
    old = env.workdir / "old-passphrase"
    old.write_text(PASSPHRASE + "\n")
    old_config = env.write_variant("old.toml", [
        posix_repo("secret", secret, compression="none", encryption="aes-256-gcm", passphrase_file=str(old))])
    new_file = env.workdir / "new-passphrase"
    new_file.write_text(NEW_PASSPHRASE + "\n")
    before = {k: v for k, v in tree_snapshot(secret).items() if k != "keys.json" and "/lock/" not in k}

    env.run("repo", "rekey", "--repo", "secret", "--new-passphrase-file", new_file)
    # the DBA updates the passphrase the server's archive_command reads
    Path(env.spec("secret").keys["passphrase_file"]).write_text(NEW_PASSPHRASE + "\n")
    after = {k: v for k, v in tree_snapshot(secret).items() if k != "keys.json" and "/lock/" not in k}
    assert after == before, "rekey rewrote data"

    # the old passphrase opens nothing any more
    target = env.new_target_dir()
    proc = env.run("restore", "--repo", "secret", "--target-dir", target, config=old_config, check=False)
    assert_clean_error(proc, 15, "passphrase")
    assert not target.exists()

    # the new one restores everything, up to the end of the WAL archived after the rekey
    pg.sql(f"insert into {TABLE} values (100000, 'after rekey')")
    pg.switch_and_wait_archived()
    restored = env.restore_and_start("--repo", "secret", name="rekeyed")
    assert table_digest(restored, TABLE, "id") == table_digest(pg, TABLE, "id")


def test_no_plaintext_on_s3(lab: Lab, s3: S3Server) -> None:
    work = lab.tmp.make("pgsafe-enc-s3-")
    repo = s3_repo("vault", s3, compression="none", encryption="aes-256-gcm",
                   passphrase_file=str(work / "passphrase"))
    server_owned_file(work / "passphrase", PASSPHRASE + "\n")
    env = make_setup(lab, [repo], s3=s3)
    pg = env.cluster
    fill_marker_table(pg)
    env.backup()
    pg.sql(f"update {TABLE} set secret = secret || '-updated' where id % 10 = 0")
    pg.switch_and_wait_archived()

    objects = s3_objects(s3, repo.prefix)
    assert any("/wal/" in k for k in objects) and any("/backup/" in k for k in objects), list(objects)
    assert find_plaintext(objects, [MARKER, TABLE.encode()]) == []
    restored = env.restore_and_start(name="from-s3-vault")
    assert table_digest(restored, TABLE, "id") == table_digest(pg, TABLE, "id")


def test_encrypted_repository_made_by_root_init(lab: Lab) -> None:
    """The ordinary way: root runs `pgsafe init` for a repository directory that does
    not exist yet; the server's archive_command (the postgres user) must be able to use it."""
    work = lab.tmp.make("pgsafe-enc-init-")
    server_owned_file(work / "passphrase", PASSPHRASE + "\n")
    repo = posix_repo("secret", work / "new-repo", encryption="aes-256-gcm",
                      passphrase_file=str(work / "passphrase"))
    env = make_setup(lab, [repo])
    proc = env.run("info", user="postgres", check=False)
    assert proc.returncode == 0, proc.stderr
    env.cluster.switch_and_wait_archived()
