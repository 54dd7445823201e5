"""Tests for pgsafe.pg.wal: names, LSNs and timelines as PostgreSQL spells them."""

from __future__ import annotations

import struct

import pytest

from pgsafe.pg.wal import (
    HistoryEntry,
    WalHeader,
    backup_segments,
    format_lsn,
    history_name,
    is_backup_history,
    is_history,
    is_partial,
    is_segment,
    lsn_segno,
    parse_history,
    parse_lsn,
    parse_segment_name,
    prev_lsn_segno,
    read_wal_header,
    segment_name,
    segment_start_lsn,
    segment_timeline,
    timeline_of,
    timeline_switch_points,
)

MB16 = 16 * 1024 * 1024
GB1 = 1024 * 1024 * 1024


# --- LSNs -------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "value"), [
    ("16/B374D848", 0x16_B374D848),
    ("0/0", 0),
    ("0/3000000", 0x3000000),
    ("FFFFFFFF/FFFFFFFF", 2**64 - 1),
    ("1/0", 2**32),
    ("a/b", 0xA_0000000B),
])
def test_parse_lsn(text: str, value: int) -> None:
    assert parse_lsn(text) == value


@pytest.mark.parametrize("text", [
    "", "/", "16", "16/", "/B374D848", "16/B374D848/1", " 16/B374D848", "16/B374D848\n",
    "1FFFFFFFF/0", "0/1FFFFFFFF", "-1/0", "0x16/0", "16/G0", "16 / 0", "+1/0",
])
def test_parse_lsn_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="invalid LSN"):
        parse_lsn(text)


def test_format_lsn() -> None:
    assert format_lsn(0x16_B374D848) == "16/B374D848"
    assert format_lsn(0) == "0/0"
    assert format_lsn(0x3000028) == "0/3000028"
    for text in ("16/B374D848", "0/0", "FFFFFFFF/FFFFFFFF", "1/A"):
        assert format_lsn(parse_lsn(text)) == text
    with pytest.raises(ValueError):
        format_lsn(-1)
    with pytest.raises(ValueError):
        format_lsn(2**64)


# --- segments ---------------------------------------------------------------------


def test_segment_name_known_values() -> None:
    assert segment_name(1, 1, MB16) == "000000010000000000000001"
    assert segment_name(1, 0x16B, MB16) == "00000001000000010000006B"  # 0x100 per id
    assert segment_name(0x1A, 5, GB1) == "0000001A0000000100000001"  # 4 per id
    assert segment_name(2, lsn_segno(parse_lsn("16/B374D848"), MB16), MB16) == \
        "0000000200000016000000B3"


def test_parse_segment_name_round_trip() -> None:
    for seg_size in (1 << 20, MB16, 64 << 20, GB1):
        for segno in (0, 1, 255, 256, 4095, 4096, 123456):
            name = segment_name(7, segno, seg_size)
            assert parse_segment_name(name, seg_size) == (7, segno)


@pytest.mark.parametrize("name", [
    "00000001000000000000000", "0000000100000000000000001", "00000001000000000000000g",
    "000000010000000000000001.partial", "000000000000000000000001",
])
def test_parse_segment_name_rejects(name: str) -> None:
    with pytest.raises(ValueError):
        parse_segment_name(name, MB16)


def test_parse_segment_name_rejects_low_part_too_big_for_size() -> None:
    assert parse_segment_name("0000000100000000000000FF", MB16) == (1, 255)
    with pytest.raises(ValueError, match="impossible"):
        parse_segment_name("000000010000000000000100", MB16)
    with pytest.raises(ValueError, match="impossible"):
        parse_segment_name("000000010000000000000004", GB1)


def test_bad_segment_size_and_timeline() -> None:
    for size in (0, 1000, 3 << 20, 1 << 19, 1 << 31):
        with pytest.raises(ValueError, match="segment size"):
            segment_name(1, 1, size)
    with pytest.raises(ValueError, match="timeline"):
        segment_name(0, 1, MB16)
    with pytest.raises(ValueError):
        segment_name(1, -1, MB16)


def test_lsn_segment_arithmetic() -> None:
    assert lsn_segno(0, MB16) == 0
    assert lsn_segno(0x1000000, MB16) == 1
    assert lsn_segno(0xFFFFFF, MB16) == 0
    assert prev_lsn_segno(0x1000000, MB16) == 0
    assert prev_lsn_segno(0x1000001, MB16) == 1
    assert segment_start_lsn(3, MB16) == 0x3000000
    assert segment_start_lsn(lsn_segno(0x16_B374D848, MB16), MB16) == 0x16_B3000000
    with pytest.raises(ValueError):
        prev_lsn_segno(0, MB16)


def test_backup_segments() -> None:
    # start and stop in one segment
    assert backup_segments(1, 0x2000028, 0x2000138, MB16) == ["000000010000000000000002"]
    # stop exactly at a boundary: the next segment is not needed
    assert backup_segments(1, 0x2000028, 0x4000000, MB16) == [
        "000000010000000000000002", "000000010000000000000003"]
    assert backup_segments(3, 0xFF_FF000028, 0x100_01000000, MB16) == [
        "00000003000000FF000000FF", "000000030000010000000000"]
    with pytest.raises(ValueError, match="not after"):
        backup_segments(1, 0x2000028, 0x2000028, MB16)


# --- names ------------------------------------------------------------------------


def test_name_predicates() -> None:
    seg = "000000010000000000000002"
    assert is_segment(seg) and not is_partial(seg) and not is_history(seg)
    assert is_partial(seg + ".partial") and not is_segment(seg + ".partial")
    assert is_history("0000000A.history") and not is_history("0000000a.history")
    assert is_backup_history(seg + ".00000028.backup")
    assert not is_backup_history(seg + ".28.backup")
    assert not is_segment("00000001000000000000000a")
    assert not is_segment(seg + "\n")
    assert not is_segment("archive_status")
    assert not is_history("00000001.history.tmp")


def test_history_name_and_timeline_of() -> None:
    assert history_name(1) == "00000001.history"
    assert history_name(0x1A) == "0000001A.history"
    assert timeline_of("0000001A.history") == 26
    assert timeline_of("000000030000000000000002") == 3
    assert timeline_of("000000040000000000000002.partial") == 4
    assert timeline_of("000000050000000000000002.00000028.backup") == 5
    for bad in ("foo", "00000001.histor", "", "000000010000000000000002.gz"):
        with pytest.raises(ValueError):
            timeline_of(bad)


# --- timeline history -------------------------------------------------------------

HISTORY_3 = (
    "1\t0/3000000\tno recovery target specified\n"
    "\n"
    "# a comment\n"
    "2\t0/5000158\tat restore point \"before_drop\"\n"
)


def test_parse_history() -> None:
    assert parse_history(HISTORY_3) == [
        HistoryEntry(1, 0x3000000, "no recovery target specified"),
        HistoryEntry(2, 0x5000158, 'at restore point "before_drop"'),
    ]
    assert parse_history("") == []
    assert parse_history("1\t0/3000000\n") == [HistoryEntry(1, 0x3000000, "")]
    assert parse_history("1\t0/3000000\treason\twith\ttabs\n")[0].reason == \
        "reason\twith\ttabs"


@pytest.mark.parametrize("text", [
    "1\n", "x\t0/3000000\tr\n", "1\tzz\tr\n", "1 0/3000000 r\n", "0\t0/1\tr\n",
    "2\t0/3000000\tr\n1\t0/4000000\tr\n",       # timelines going down
    "1\t0/5000000\tr\n2\t0/4000000\tr\n",       # switch LSN going back
    "-1\t0/3000000\tr\n",
])
def test_parse_history_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="line"):
        parse_history(text)


def test_history_entry_is_frozen() -> None:
    entry = HistoryEntry(1, 2, "r")
    with pytest.raises(AttributeError):
        entry.reason = "x"  # type: ignore[misc]


def test_timeline_switch_points_and_segment_timeline() -> None:
    history = parse_history(HISTORY_3)
    assert timeline_switch_points(history) == {1: 0x3000000, 2: 0x5000158}
    assert timeline_switch_points([]) == {}
    # path to timeline 3: TLI 1 up to 0/3000000, TLI 2 up to 0/5000158, then TLI 3
    tli = [segment_timeline(history, 3, segno, MB16) for segno in range(8)]
    assert tli == [1, 1, 1, 2, 2, 3, 3, 3]
    assert segment_timeline([], 1, 42, MB16) == 1


# --- segment header ---------------------------------------------------------------


def _long_header(info: int = 0x0002 | 0x0004) -> bytes:
    return struct.pack("<HHIQI4xQII", 0xD110, info, 3, 0x16_B3000000, 0,
                       7000000000000000001, MB16, 8192) + b"\0" * 8152


def test_read_wal_header() -> None:
    assert read_wal_header(_long_header()) == WalHeader(
        magic=0xD110, timeline=3, pageaddr=0x16_B3000000,
        system_identifier=7000000000000000001, seg_size=MB16, block_size=8192)
    assert read_wal_header(_long_header()[:40]).timeline == 3


def test_read_wal_header_rejects() -> None:
    with pytest.raises(ValueError, match="XLP_LONG_HEADER"):
        read_wal_header(_long_header(info=0x0001))
    with pytest.raises(ValueError, match="40 bytes"):
        read_wal_header(_long_header()[:39])
