"""Tests for pgsafe.pg.page: checksums checked against pages a real server wrote."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from pgsafe.pg.page import (
    BLCKSZ,
    RELSEG_BLOCKS,
    find_bad_pages,
    page_checksums,
    relation_first_block,
)

PG_BIN = Path("/usr/lib/postgresql/15/bin")
MAX_LSN = 2**64 - 1


# --- a reference implementation, one page at a time, straight from the C ----------

_BASE = [
    0x5B1F36E9, 0xB8525960, 0x02AB50AA, 0x1DE66D2A, 0x79FF467A, 0x9BB9F8A3,
    0x217E7CD2, 0x83E13D2C, 0xF8D4474F, 0xE39EB970, 0x42C6AE16, 0x993216FA,
    0x7B093B5D, 0x98DAFF3C, 0xF718902A, 0x0B1C9CDB, 0xE58F764B, 0x187636BC,
    0x5D7B3BB1, 0xE73DE7DE, 0x92BEC979, 0xCCA6C0B2, 0x304A0979, 0x85AA43D4,
    0x783125BB, 0x6CA8EAA2, 0xE407EAC6, 0x4B5CFC3E, 0x9FBF8C76, 0x15CA20BE,
    0xF2CA9FD3, 0x959BD756,
]


def reference_checksum(page: bytes, blkno: int) -> int:
    """Scalar pg_checksum_page, slow but obviously faithful."""
    data = bytearray(page)
    data[8:10] = b"\0\0"
    words = np.frombuffer(bytes(data), dtype=np.uint32).tolist()
    sums = list(_BASE)
    rounds = [words[i * 32:(i + 1) * 32] for i in range(64)] + [[0] * 32] * 2
    for row in rounds:
        for j in range(32):
            tmp = sums[j] ^ row[j]
            sums[j] = ((tmp * 16777619) & 0xFFFFFFFF) ^ (tmp >> 17)
    result = 0
    for s in sums:
        result ^= s
    return ((result ^ blkno) % 65535) + 1


def make_page(seed: int, *, lsn: int = 0x1_0000_0000, upper: int = 4000) -> bytearray:
    """A random page with a sane header and a correct checksum for block 0."""
    rng = np.random.default_rng(seed)
    page = bytearray(rng.integers(0, 256, BLCKSZ, dtype=np.uint8).tobytes())
    hdr = np.frombuffer(page, dtype=np.uint16, count=12).copy()
    hdr.view(np.uint32)[0] = lsn >> 32
    hdr.view(np.uint32)[1] = lsn & 0xFFFFFFFF
    hdr[5], hdr[6], hdr[7], hdr[8], hdr[9] = 0, 40, upper, BLCKSZ, BLCKSZ | 4
    page[:24] = hdr.tobytes()
    set_checksum(page, 0, 0)
    return page


def set_checksum(buf: bytearray, index: int, blkno: int) -> None:
    off = index * BLCKSZ
    value = reference_checksum(bytes(buf[off:off + BLCKSZ]), blkno)
    buf[off + 8:off + 10] = value.to_bytes(2, "little")


# --- pure tests -------------------------------------------------------------------


def test_vectorised_matches_reference_across_chunks() -> None:
    pages = [make_page(i) for i in range(3)]
    # 1100 pages crosses the internal chunk boundary twice
    buf = b"".join(bytes(pages[i % 3]) for i in range(1100))
    got = page_checksums(buf, 7)
    assert got.dtype == np.uint16 and got.shape == (1100,)
    for i in (0, 1, 2, 511, 512, 513, 1023, 1024, 1099):
        assert got[i] == reference_checksum(bytes(pages[i % 3]), 7 + i)


def test_checksum_mixes_block_number_and_ignores_checksum_field() -> None:
    page = make_page(1)
    a = page_checksums(page, 0)[0]
    page[8:10] = b"\xff\xff"
    assert page_checksums(page, 0)[0] == a
    assert page_checksums(page, 1)[0] != a
    assert 1 <= page_checksums(page, RELSEG_BLOCKS * 3)[0] <= 65535


def test_empty_and_partial_buffers() -> None:
    assert page_checksums(b"", 0).shape == (0,)
    assert find_bad_pages(b"", 0, MAX_LSN) == []
    page = make_page(2)
    assert page_checksums(bytes(page) + b"x" * 100, 0).shape == (1,)
    assert find_bad_pages(bytes(page) + b"\xff" * (BLCKSZ - 1), 0, MAX_LSN) == []


def test_block_number_range() -> None:
    with pytest.raises(ValueError):
        page_checksums(make_page(0), -1)
    with pytest.raises(ValueError):
        page_checksums(make_page(0) * 2, 2**32 - 1)


def test_find_bad_pages_rules() -> None:
    good = make_page(3)
    zero = bytearray(BLCKSZ)
    new_garbage = bytearray(BLCKSZ)
    new_garbage[100] = 1  # pd_upper == 0 but not all zeros
    bad_sum = make_page(4)
    bad_sum[5000] ^= 0x01
    insane = make_page(5, upper=30)  # pd_lower 40 > pd_upper 30
    set_checksum(insane, 0, 0)
    pages = [good, zero, new_garbage, bad_sum, insane]
    buf = bytearray(b"".join(pages))
    for i in range(len(pages)):
        if pages[i] is not zero and pages[i] is not new_garbage and i != 3:
            set_checksum(buf, i, 10 + i)
    assert find_bad_pages(buf, 10, MAX_LSN) == [2, 3, 4]
    # wrong block numbers: every non-zero page fails (new_garbage fails anyway)
    assert find_bad_pages(buf, 11, MAX_LSN) == [0, 2, 3, 4]


def test_find_bad_pages_skips_pages_at_or_after_start_lsn() -> None:
    page = make_page(6, lsn=0x5_0000_0000)
    page[6000] ^= 0xFF
    assert find_bad_pages(page, 0, 0x5_0000_0001) == [0]
    assert find_bad_pages(page, 0, 0x5_0000_0000) == []
    assert find_bad_pages(page, 0, 0x4_FFFF_FFFF) == []


@pytest.mark.parametrize(("path", "block"), [
    ("base/5/16384", 0),
    ("base/5/16384.2", 2 * RELSEG_BLOCKS),
    ("global/1262", 0),
    ("base/5/16384_fsm", 0),
    ("base/5/16384_vm.1", RELSEG_BLOCKS),
    ("base/5/16384_init", 0),
    ("pg_tblspc/16385/PG_15_202209061/5/16384", 0),
    ("pg_tblspc/16385/PG_9.6_201608131/5/16384.7", 7 * RELSEG_BLOCKS),
    ("base/1/1259", 0),
])
def test_relation_first_block(path: str, block: int) -> None:
    assert relation_first_block(path) == block


@pytest.mark.parametrize("path", [
    "global/pg_filenode.map", "global/pg_control", "global/pg_internal.init",
    "base/5/pg_filenode.map", "base/5/pg_internal.init", "base/5/PG_VERSION",
    "PG_VERSION", "base/5/t3_16384", "base/5/t3_16384.1", "base/pgsql_tmp/pgsql_tmp1.0",
    "base/5/16384.0", "base/5/16384_xyz", "base/5/016384", "pg_wal/000000010000000000000001",
    "pg_tblspc/16385/PG_15_202209061/pgsql_tmp/x", "pg_tblspc/16385/5/16384",
    "pg_xact/0000", "base/5/16384/", "/base/5/16384", "base/5/16384.", "",
])
def test_relation_first_block_rejects(path: str) -> None:
    assert relation_first_block(path) is None


# --- against a real cluster -------------------------------------------------------


@dataclass
class Cluster:
    """A stopped PostgreSQL 15 cluster with data checksums and one filled table."""

    pgdata: Path
    table_path: str  # relative to pgdata
    checkpoint_lsn: int


def _as_postgres(args: list[str]) -> subprocess.CompletedProcess[str]:
    # The server refuses to run as root; tests may run as root in CI containers.
    prefix = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    done = subprocess.run(prefix + args, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{args[0]} failed ({done.returncode}): {done.stderr}")
    return done


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _psql(sockdir: Path, port: int, sql: str) -> str:
    out = _as_postgres([str(PG_BIN / "psql"), "-h", str(sockdir), "-p", str(port),
                        "-U", "postgres", "-d", "postgres", "-XAtq", "-v",
                        "ON_ERROR_STOP=1", "-c", sql])
    return out.stdout.strip()


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    if not (PG_BIN / "initdb").exists():
        pytest.skip("PostgreSQL 15 binaries not installed")
    tmp = Path(tempfile.mkdtemp(prefix="pgsafe-page-"))
    try:
        if os.geteuid() == 0:
            shutil.chown(tmp, "postgres", "postgres")
        pgdata = tmp / "data"
        port = _free_port()
        _as_postgres([str(PG_BIN / "initdb"), "-D", str(pgdata), "--data-checksums",
                      "-A", "trust", "-U", "postgres", "-N", "--no-instructions"])
        _as_postgres([str(PG_BIN / "pg_ctl"), "-D", str(pgdata), "-w", "-l",
                      str(tmp / "log"), "-o",
                      f"-p {port} -k {tmp} -c listen_addresses='' -c fsync=off",
                      "start"])
        try:
            _psql(tmp, port, "CREATE TABLE t AS SELECT g AS id, md5(g::text) AS v "
                             "FROM generate_series(1, 10000) g")
            _psql(tmp, port, "VACUUM t")  # writes the fsm and vm forks too
            table_path = _psql(tmp, port, "SELECT pg_relation_filepath('t')")
            _psql(tmp, port, "CHECKPOINT")
            lsn = _psql(tmp, port, "SELECT checkpoint_lsn FROM pg_control_checkpoint()")
        finally:
            _as_postgres([str(PG_BIN / "pg_ctl"), "-D", str(pgdata), "-w", "-m",
                          "fast", "stop"])
        high, low = lsn.split("/")
        yield Cluster(pgdata, table_path, (int(high, 16) << 32) | int(low, 16))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _relation_files(pgdata: Path) -> list[tuple[str, int]]:
    found = []
    for path in sorted(pgdata.rglob("*")):
        rel = path.relative_to(pgdata).as_posix()
        block = relation_first_block(rel)
        if path.is_file() and block is not None:
            found.append((rel, block))
    return found


def test_server_pages_all_verify(cluster: Cluster) -> None:
    table = (cluster.pgdata / cluster.table_path).read_bytes()
    assert len(table) // BLCKSZ >= 50
    assert find_bad_pages(table, 0, MAX_LSN) == []
    files = _relation_files(cluster.pgdata)
    globals_ = [rel for rel, _ in files if rel.startswith("global/")]
    assert len(globals_) > 20 and len(files) > 500
    for rel, block in files:
        data = (cluster.pgdata / rel).read_bytes()
        assert find_bad_pages(data, block, MAX_LSN) == [], rel


def test_server_page_checksums_match_stored(cluster: Cluster) -> None:
    table = (cluster.pgdata / cluster.table_path).read_bytes()
    stored = np.frombuffer(table, dtype=np.uint16).reshape(-1, BLCKSZ // 2)[:, 4]
    assert np.array_equal(page_checksums(table, 0), stored)
    assert reference_checksum(table[:BLCKSZ], 0) == stored[0]


def test_flipped_byte_reports_exactly_that_page(cluster: Cluster) -> None:
    table = bytearray((cluster.pgdata / cluster.table_path).read_bytes())
    table[3 * BLCKSZ + 5000] ^= 0x10
    assert find_bad_pages(table, 0, MAX_LSN) == [3]
    # the same bytes as segment 1 of the relation: block numbers differ, all fail
    assert len(find_bad_pages(table, RELSEG_BLOCKS, MAX_LSN)) == len(table) // BLCKSZ


def test_page_with_future_lsn_is_skipped(cluster: Cluster) -> None:
    table = bytearray((cluster.pgdata / cluster.table_path).read_bytes())
    table[5 * BLCKSZ:5 * BLCKSZ + 8] = (0xFFFF0000).to_bytes(4, "little") * 2
    assert find_bad_pages(table, 0, cluster.checkpoint_lsn) == []
    assert find_bad_pages(table, 0, MAX_LSN) == [5]
