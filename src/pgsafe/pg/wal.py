"""WAL file names, LSN arithmetic and timeline history parsing.

Everything here is pure: no I/O and no connection.  Archiving, backup completeness
checks and recovery all reason about which WAL segments exist and which timeline each
one belongs to; keeping that arithmetic in one tested module means the rules are
written once, in PostgreSQL's own terms (``XLByteToSeg``, ``XLogFileName``, ...).

The file name formats follow PostgreSQL's ``src/include/access/xlog_internal.h``:

- segment:        ``TTTTTTTTXXXXXXXXYYYYYYYY`` (timeline, high and low part of segno)
- partial:        a segment name followed by ``.partial``
- history:        ``TTTTTTTT.history``
- backup history: a segment name, ``.``, the start offset in 8 hex digits, ``.backup``
"""

from __future__ import annotations

import re
import struct
from typing import NamedTuple

__all__ = [
    "HistoryEntry",
    "WalHeader",
    "XLP_LONG_HEADER",
    "backup_segments",
    "format_lsn",
    "history_name",
    "is_backup_history",
    "is_history",
    "is_partial",
    "is_segment",
    "lsn_segno",
    "parse_history",
    "parse_lsn",
    "parse_segment_name",
    "prev_lsn_segno",
    "read_wal_header",
    "segment_name",
    "segment_start_lsn",
    "segment_timeline",
    "timeline_of",
    "timeline_switch_points",
]

MAX_LSN = 0xFFFFFFFFFFFFFFFF
MAX_TIMELINE = 0xFFFFFFFF
# PostgreSQL accepts WAL segment sizes that are powers of two from 1 MB to 1 GB.
MIN_SEG_SIZE = 1 << 20
MAX_SEG_SIZE = 1 << 30

_LSN_RE = re.compile(r"[0-9A-Fa-f]{1,8}/[0-9A-Fa-f]{1,8}")
_HEX = "[0-9A-F]"
_SEGMENT_RE = re.compile(f"{_HEX}{{24}}")
_PARTIAL_RE = re.compile(f"{_HEX}{{24}}\\.partial")
_HISTORY_RE = re.compile(f"{_HEX}{{8}}\\.history")
_BACKUP_HISTORY_RE = re.compile(f"{_HEX}{{24}}\\.{_HEX}{{8}}\\.backup")


# --- LSNs -------------------------------------------------------------------------


def parse_lsn(text: str) -> int:
    """Parse PostgreSQL's ``XXXXXXXX/XXXXXXXX`` text form of an LSN.

    Strict on purpose: LSNs arrive from users (recovery targets) and from server
    output, and a silently misread LSN would pick the wrong WAL.
    """
    if not isinstance(text, str) or not _LSN_RE.fullmatch(text):
        raise ValueError(f"invalid LSN {text!r}: expected two hex numbers of up to "
                         "8 digits separated by '/', like '16/B374D848'")
    high, low = text.split("/")
    return (int(high, 16) << 32) | int(low, 16)


def format_lsn(lsn: int) -> str:
    """Format an LSN the way PostgreSQL prints it (``%X/%X``), so logs and
    messages can be compared with the server's own."""
    _check_lsn(lsn)
    return f"{lsn >> 32:X}/{lsn & 0xFFFFFFFF:X}"


def _check_lsn(lsn: int) -> None:
    if not 0 <= lsn <= MAX_LSN:
        raise ValueError(f"LSN {lsn} out of range 0..2^64-1")


def _check_seg_size(seg_size: int) -> None:
    if not (MIN_SEG_SIZE <= seg_size <= MAX_SEG_SIZE and seg_size & (seg_size - 1) == 0):
        raise ValueError(f"invalid WAL segment size {seg_size}: must be a power of two "
                         "between 1 MB and 1 GB")


def _check_timeline(timeline: int) -> None:
    if not 1 <= timeline <= MAX_TIMELINE:
        raise ValueError(f"invalid timeline {timeline}: must be 1..2^32-1")


# --- segment numbers and names ----------------------------------------------------


def lsn_segno(lsn: int, seg_size: int) -> int:
    """Number of the segment that contains ``lsn`` (PostgreSQL's ``XLByteToSeg``)."""
    _check_lsn(lsn)
    _check_seg_size(seg_size)
    return lsn // seg_size


def prev_lsn_segno(lsn: int, seg_size: int) -> int:
    """Number of the segment that contains ``lsn - 1`` (``XLByteToPrevSeg``).

    A stop or switch LSN points just past the last byte written, which may be the
    first byte of the next segment; that segment is then not needed.
    """
    _check_lsn(lsn)
    if lsn == 0:
        raise ValueError("LSN 0/0 has no previous segment")
    return lsn_segno(lsn - 1, seg_size)


def segment_start_lsn(segno: int, seg_size: int) -> int:
    """LSN of the first byte of segment ``segno`` (``XLogSegNoOffsetToRecPtr``)."""
    _check_seg_size(seg_size)
    if segno < 0 or segno * seg_size > MAX_LSN:
        raise ValueError(f"segment number {segno} out of range")
    return segno * seg_size


def _segments_per_xlogid(seg_size: int) -> int:
    _check_seg_size(seg_size)
    return 0x100000000 // seg_size


def segment_name(timeline: int, segno: int, seg_size: int) -> str:
    """WAL file name of a segment (``XLogFileName``)."""
    _check_timeline(timeline)
    per_id = _segments_per_xlogid(seg_size)
    if segno < 0 or segno * seg_size > MAX_LSN:
        raise ValueError(f"segment number {segno} out of range")
    return f"{timeline:08X}{segno // per_id:08X}{segno % per_id:08X}"


def parse_segment_name(name: str, seg_size: int) -> tuple[int, int]:
    """Return ``(timeline, segno)`` for a segment name (``XLogFromFileName``).

    The low part must be below the number of segments per 4 GB for this segment
    size; otherwise the name cannot have been written by a server using it.
    """
    if not is_segment(name):
        raise ValueError(f"not a WAL segment name: {name!r}")
    per_id = _segments_per_xlogid(seg_size)
    timeline, high, low = int(name[:8], 16), int(name[8:16], 16), int(name[16:], 16)
    _check_timeline(timeline)
    if low >= per_id:
        raise ValueError(f"WAL segment name {name!r} is impossible with segment size "
                         f"{seg_size}: low part must be below {per_id:X}")
    return timeline, high * per_id + low


def backup_segments(timeline: int, start_lsn: int, stop_lsn: int, seg_size: int) -> list[str]:
    """Names of every segment a backup needs to be consistent.

    From the segment holding the start LSN (the backup's redo point) to the one
    holding the last byte before the stop LSN.  All on one timeline: a backup that
    straddles a promotion fails in PostgreSQL itself.
    """
    if stop_lsn <= start_lsn:
        raise ValueError(f"stop LSN {format_lsn(stop_lsn)} is not after start LSN "
                         f"{format_lsn(start_lsn)}")
    first = lsn_segno(start_lsn, seg_size)
    last = prev_lsn_segno(stop_lsn, seg_size)
    return [segment_name(timeline, segno, seg_size) for segno in range(first, last + 1)]


# --- file name predicates ---------------------------------------------------------


def is_segment(name: str) -> bool:
    """True for a complete WAL segment file name (24 uppercase hex digits)."""
    return _SEGMENT_RE.fullmatch(name) is not None


def is_partial(name: str) -> bool:
    """True for a ``.partial`` segment, left by a promotion or by pg_receivewal."""
    return _PARTIAL_RE.fullmatch(name) is not None


def is_history(name: str) -> bool:
    """True for a timeline history file name such as ``00000002.history``."""
    return _HISTORY_RE.fullmatch(name) is not None


def is_backup_history(name: str) -> bool:
    """True for a backup history file such as ``000000010000000000000002.00000028.backup``."""
    return _BACKUP_HISTORY_RE.fullmatch(name) is not None


def history_name(timeline: int) -> str:
    """File name of the history file of ``timeline`` (``TLHistoryFileName``)."""
    _check_timeline(timeline)
    return f"{timeline:08X}.history"


def timeline_of(name: str) -> int:
    """Timeline of any WAL archive file name; every kind starts with it."""
    if not (is_segment(name) or is_partial(name) or is_history(name)
            or is_backup_history(name)):
        raise ValueError(f"not a WAL archive file name: {name!r}")
    return int(name[:8], 16)


# --- timeline history -------------------------------------------------------------


class HistoryEntry(NamedTuple):
    """One line of a timeline history file: ``parent_timeline`` ended at
    ``switch_lsn`` (exclusive) and the next timeline on the path began there."""

    parent_timeline: int
    switch_lsn: int
    reason: str


def parse_history(text: str) -> list[HistoryEntry]:
    """Parse a ``TTTTTTTT.history`` file, oldest ancestor first.

    Follows ``readTimeLineHistory``: blank lines and ``#`` comments are skipped,
    timelines must increase.  The reason column is free text and may be absent.
    """
    entries: list[HistoryEntry] = []
    for lineno, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        fields = line.split("\t", 2)
        if len(fields) < 2:
            raise ValueError(f"history line {lineno}: expected "
                             f"'<timeline>\\t<switch LSN>\\t<reason>', got {raw!r}")
        tli_text, lsn_text = fields[0].strip(), fields[1].strip()
        if not tli_text.isdigit() or not tli_text.isascii():
            raise ValueError(f"history line {lineno}: bad timeline {tli_text!r}")
        timeline = int(tli_text)
        _check_timeline(timeline)
        try:
            switch_lsn = parse_lsn(lsn_text)
        except ValueError as exc:
            raise ValueError(f"history line {lineno}: {exc}") from None
        if entries and timeline <= entries[-1].parent_timeline:
            raise ValueError(f"history line {lineno}: timeline {timeline} does not "
                             "increase")
        if entries and switch_lsn < entries[-1].switch_lsn:
            raise ValueError(f"history line {lineno}: switch LSN {lsn_text} goes back")
        reason = fields[2].strip() if len(fields) > 2 else ""
        entries.append(HistoryEntry(timeline, switch_lsn, reason))
    return entries


def timeline_switch_points(history: list[HistoryEntry]) -> dict[int, int]:
    """Map each ancestor timeline to the LSN where it ends on the path.

    ``history`` is the parsed history file of some timeline T; T itself is not in
    the map because it has not ended.  WAL of ancestor A is on the path to T only
    below ``result[A]``.
    """
    return {entry.parent_timeline: entry.switch_lsn for entry in history}


def segment_timeline(history: list[HistoryEntry], timeline: int, segno: int,
                     seg_size: int) -> int:
    """Timeline whose copy of segment ``segno`` recovery to ``timeline`` reads.

    The segment holding a switch point exists on both sides of the switch; like
    ``XLogFileReadAnyTLI`` we take the newest timeline that has begun by the start
    of that segment, because the new timeline's copy holds the switch itself.
    """
    begin = 0
    begins: list[tuple[int, int]] = []  # (timeline, LSN where it begins)
    for entry in history:
        begins.append((entry.parent_timeline, begin))
        begin = entry.switch_lsn
    begins.append((timeline, begin))
    for tli, tli_begin in reversed(begins):
        if segno >= lsn_segno(tli_begin, seg_size):
            return tli
    raise AssertionError("unreachable: the first timeline begins at 0/0")


# --- segment header ---------------------------------------------------------------

# xlp_info flag saying the page starts with XLogLongPageHeaderData, which only the
# first page of each segment carries.
XLP_LONG_HEADER = 0x0002
_LONG_HEADER = struct.Struct("<HHIQI4xQII")


class WalHeader(NamedTuple):
    """The long page header at the start of a segment: enough to check that a file
    belongs to this cluster, timeline and position before archiving it."""

    magic: int
    timeline: int
    pageaddr: int
    system_identifier: int
    seg_size: int
    block_size: int


def read_wal_header(first_page: bytes) -> WalHeader:
    """Decode ``XLogLongPageHeaderData`` from the first bytes of a segment."""
    if len(first_page) < _LONG_HEADER.size:
        raise ValueError(f"WAL header needs {_LONG_HEADER.size} bytes, got "
                         f"{len(first_page)}")
    magic, info, tli, pageaddr, _rem_len, sysid, seg_size, blcksz = \
        _LONG_HEADER.unpack_from(first_page)
    if not info & XLP_LONG_HEADER:
        raise ValueError(f"not the first page of a WAL segment: xlp_info {info:#06x} "
                         "lacks XLP_LONG_HEADER")
    return WalHeader(magic=magic, timeline=tli, pageaddr=pageaddr,
                     system_identifier=sysid, seg_size=seg_size, block_size=blcksz)
