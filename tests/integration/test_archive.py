"""The archive-push / archive-get contract PostgreSQL relies on (issue 2, requirement 3).

PostgreSQL runs both commands itself, as the server's OS user: archive-push must only
succeed once a segment is safe, refuse to overwrite different content under the same
name, and archive-get must say "not found" with exit status 1 and never leave a partial
file behind.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from helpers import (
    SERVER_USER,
    PgsafeEnv,
    assert_clean_error,
    flip_byte,
    server_uid_gid,
)


@pytest.fixture
def archived(env: PgsafeEnv) -> tuple[PgsafeEnv, str, bytes]:
    """An env whose server has archived a segment with some data in it; returns the
    segment's name and its content as it was in pg_wal."""
    pg = env.cluster
    pg.sql("create table t as select g as i, repeat('x', 100) as pad from generate_series(1, 20000) g")
    seg = pg.switch_wal()
    pg.wait_archived(seg)
    original = (pg.pgdata / "pg_wal" / seg).read_bytes()
    return env, seg, original


def server_owned_dir(env: PgsafeEnv) -> Path:
    d = env.lab.tmp.make("pgsafe-wal-")
    return d


def only_entries(d: Path) -> list[str]:
    return sorted(os.listdir(d))


def test_get_returns_exact_segment_as_server_user(archived: tuple[PgsafeEnv, str, bytes]) -> None:
    env, seg, original = archived
    dest_dir = server_owned_dir(env)
    dest = dest_dir / "RECOVERYXLOG"
    env.run("archive-get", seg, dest, user=SERVER_USER)
    assert dest.read_bytes() == original
    # written atomically: nothing but the destination is left in its directory
    assert only_entries(dest_dir) == ["RECOVERYXLOG"]
    assert dest.stat().st_uid == server_uid_gid()[0]


def test_push_identical_content_again_succeeds(archived: tuple[PgsafeEnv, str, bytes]) -> None:
    env, seg, original = archived
    src_dir = server_owned_dir(env)
    copy = src_dir / seg
    copy.write_bytes(original)
    os.chown(copy, *server_uid_gid())
    env.run("archive-push", copy, user=SERVER_USER)
    env.run("archive-push", copy)  # and as root, as a DBA may
    dest = src_dir / "back"
    env.run("archive-get", seg, dest)
    assert dest.read_bytes() == original


def test_push_different_content_is_refused_and_changes_nothing(
        archived: tuple[PgsafeEnv, str, bytes]) -> None:
    env, seg, original = archived
    src_dir = server_owned_dir(env)
    forged = src_dir / seg
    forged.write_bytes(original)
    flip_byte(forged)
    os.chown(forged, *server_uid_gid())
    proc = env.run("archive-push", forged, check=False, user=SERVER_USER)
    assert_clean_error(proc, 10, seg)
    dest = src_dir / "back"
    env.run("archive-get", seg, dest)
    assert dest.read_bytes() == original


def test_get_missing_segment_exits_1_and_leaves_nothing(env: PgsafeEnv) -> None:
    dest_dir = server_owned_dir(env)
    for name in ("0000000100000000000000F0", "00000007.history", "000000010000000000000009.partial"):
        dest = dest_dir / "RECOVERYXLOG"
        proc = env.run("archive-get", name, dest, check=False, user=SERVER_USER)
        detail = f"{name}: exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
        assert proc.returncode == 1, detail
        assert "Traceback" not in proc.stderr, detail
        assert len(proc.stderr.strip().splitlines()) <= 1, detail
        assert only_entries(dest_dir) == [], detail


def test_get_of_damaged_object_fails_and_leaves_no_partial_file(
        archived: tuple[PgsafeEnv, str, bytes]) -> None:
    env, seg, _ = archived
    stored = [p for p in env.repo.rglob(f"{seg}*") if p.is_file()]
    assert len(stored) == 1, f"expected one stored object named after {seg}: {stored}"
    flip_byte(stored[0])
    dest_dir = server_owned_dir(env)
    proc = env.run("archive-get", seg, dest_dir / "RECOVERYXLOG", check=False, user=SERVER_USER)
    # Not 0 (damaged data must not reach recovery), and not 1..125 either: PostgreSQL
    # takes those for "no such file" and would end recovery early. Above 125 it stops.
    assert_clean_error(proc, 126, seg)
    assert only_entries(dest_dir) == []


def test_history_file_roundtrip_and_conflict(env: PgsafeEnv) -> None:
    work = server_owned_dir(env)
    history = work / "00000002.history"
    content = b"1\t0/3000000\tno recovery target specified\n"
    history.write_bytes(content)
    os.chown(history, *server_uid_gid())
    env.run("archive-push", history, user=SERVER_USER)
    env.run("archive-push", history, user=SERVER_USER)  # identical again: fine
    got = work / "got"
    env.run("archive-get", "00000002.history", got, user=SERVER_USER)
    assert got.read_bytes() == content

    history.write_bytes(b"1\t0/4000000\tbefore 2026-01-01 00:00:00+00\n")
    proc = env.run("archive-push", history, check=False, user=SERVER_USER)
    assert_clean_error(proc, 10, "00000002.history")
    got.unlink()
    env.run("archive-get", "00000002.history", got)
    assert got.read_bytes() == content


def test_partial_segment_roundtrip(archived: tuple[PgsafeEnv, str, bytes]) -> None:
    env, seg, original = archived
    work = server_owned_dir(env)
    partial = work / f"{seg}.partial"
    partial.write_bytes(original)
    os.chown(partial, *server_uid_gid())
    env.run("archive-push", partial, user=SERVER_USER)
    got = work / "got"
    env.run("archive-get", f"{seg}.partial", got, user=SERVER_USER)
    assert got.read_bytes() == original
    # the full segment of the same name is still the one that was archived
    got.unlink()
    env.run("archive-get", seg, got)
    assert got.read_bytes() == original


def test_push_of_missing_file_is_a_clean_error(env: PgsafeEnv) -> None:
    proc = env.run("archive-push", "/tmp/does-not-exist/000000010000000000000042", check=False)
    assert proc.returncode not in (0, 1), proc
    assert "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr


def test_server_archiving_shows_in_info(archived: tuple[PgsafeEnv, str, bytes]) -> None:
    env, seg, _ = archived
    info = env.info()
    (cluster,) = info["clusters"]
    assert cluster["name"] == "main"
    timelines = {w["timeline"]: w["ranges"] for w in cluster["wal"]}
    assert 1 in timelines, cluster["wal"]
    assert any(r["start"] <= seg <= r["stop"] for r in timelines[1]), (seg, timelines)
    assert env.cluster.scalar("select failed_count from pg_stat_archiver") == 0
