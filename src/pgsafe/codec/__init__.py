"""The streaming pipeline: checksum, compress, and back, in one pass.

Every stored piece of content is an *envelope*: a 32-byte header followed by the
compressed bytes. The header names the compression so that a reader never depends
on configuration, and, when the writer knew them up front, the original size and
its XXH3-128 digest. See docs/FORMAT.md, "Envelope".

The codec does not know what it carries.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator

import xxhash

MAGIC = b"PGSF"
ENVELOPE_VERSION = 1
HEADER = struct.Struct("<4sBBBBQ16s")
HEADER_SIZE = HEADER.size  # 32
FLAG_DIGEST = 0x01

COMPRESSION_IDS = {"none": 0, "zstd": 1, "lz4": 2, "gzip": 3}
COMPRESSION_NAMES = {v: k for k, v in COMPRESSION_IDS.items()}
CHUNK = 4 * 1024 * 1024


class CodecError(Exception):
    """Stored bytes cannot be decoded or do not match their checksum."""


def new_digest() -> "xxhash.xxh3_128":
    return xxhash.xxh3_128()


def digest_hex(data: bytes | memoryview) -> str:
    return xxhash.xxh3_128_hexdigest(data)


@dataclass(frozen=True)
class Header:
    compression: str
    encryption: int
    size: int | None
    digest: bytes | None


def pack_header(compression: str, size: int | None = None, digest: bytes | None = None) -> bytes:
    flags = FLAG_DIGEST if digest is not None else 0
    return HEADER.pack(
        MAGIC, ENVELOPE_VERSION, COMPRESSION_IDS[compression], 0, flags, size or 0, digest or bytes(16)
    )


def read_header(data: bytes | memoryview) -> Header:
    if len(data) < HEADER_SIZE:
        raise CodecError("object is shorter than its header")
    magic, version, comp, enc, flags, size, digest = HEADER.unpack_from(data)
    if magic != MAGIC:
        raise CodecError("object does not start with the pgsafe envelope magic")
    if version != ENVELOPE_VERSION:
        raise CodecError(f"object envelope version {version} is not supported")
    if comp not in COMPRESSION_NAMES:
        raise CodecError(f"unknown compression id {comp}")
    has = bool(flags & FLAG_DIGEST)
    return Header(COMPRESSION_NAMES[comp], enc, size if has else None, digest if has else None)


def _compressor(compression: str, level: int) -> tuple[Callable[[bytes], bytes], Callable[[], bytes]]:
    if compression == "zstd":
        import zstandard

        cobj = zstandard.ZstdCompressor(level=level).compressobj()
        return cobj.compress, cobj.flush
    if compression == "lz4":
        import lz4.frame

        lz = lz4.frame.LZ4FrameCompressor(compression_level=level)
        started = [False]

        def lz_update(data: bytes) -> bytes:
            head = b""
            if not started[0]:
                started[0] = True
                head = lz.begin()
            return head + lz.compress(data)

        def lz_flush() -> bytes:
            head = b"" if started[0] else lz.begin()
            return head + lz.flush()

        return lz_update, lz_flush
    if compression == "gzip":
        zobj = zlib.compressobj(level, zlib.DEFLATED, 31)
        return zobj.compress, zobj.flush
    return bytes, lambda: b""


def _decompressor(compression: str) -> Callable[[bytes], bytes]:
    if compression == "zstd":
        import zstandard

        return zstandard.ZstdDecompressor().decompressobj().decompress
    if compression == "lz4":
        import lz4.frame

        return lz4.frame.LZ4FrameDecompressor().decompress
    if compression == "gzip":
        return zlib.decompressobj(31).decompress
    return bytes


class Encoder:
    """Streaming encoder: feed original bytes, get envelope bytes; digests as it goes."""

    def __init__(self, compression: str, level: int, size: int | None = None, digest: bytes | None = None):
        self._update, self._flush = _compressor(compression, level)
        self.compression = compression
        self.header = pack_header(compression, size, digest)
        self.digest = new_digest()
        self.size = 0

    def update(self, data: bytes | memoryview) -> bytes:
        self.digest.update(data)
        self.size += len(data)
        return self._update(data)

    def finish(self) -> bytes:
        return self._flush()


def encode(data: bytes | memoryview, compression: str, level: int) -> tuple[bytes, str]:
    """Whole content -> (envelope with digest in its header, hex digest)."""
    digest = xxhash.xxh3_128_digest(data)
    update, flush = _compressor(compression, level)
    body = update(data) + flush()
    return pack_header(compression, len(data), digest) + body, digest.hex()


def decode_chunks(chunks: Iterable[bytes]) -> Iterator[bytes]:
    """Envelope bytes (in any chunking) -> original bytes, checking the header digest
    when there is one. The caller checks a digest kept elsewhere (the manifest)."""
    it = iter(chunks)
    head = b""
    for chunk in it:
        head += chunk
        if len(head) >= HEADER_SIZE:
            break
    header = read_header(head)
    decompress = _decompressor(header.compression)
    digest = new_digest() if header.digest is not None else None
    size = 0

    def emit(data: bytes) -> bytes:
        nonlocal size
        if digest is not None:
            digest.update(data)
        size += len(data)
        return data

    try:
        rest = head[HEADER_SIZE:]
        if rest:
            out = decompress(rest)
            if out:
                yield emit(out)
        for chunk in it:
            out = decompress(chunk)
            if out:
                yield emit(out)
    except CodecError:
        raise
    except Exception as exc:  # each library raises its own error type for bad input
        raise CodecError(f"cannot decompress: {exc}") from None
    if digest is not None and (digest.digest() != header.digest or size != header.size):
        raise CodecError("content does not match the checksum in its header")


def decode(data: bytes | memoryview) -> bytes:
    return b"".join(decode_chunks([bytes(data)]))


def decode_verified(data: bytes | memoryview, expect_hex: str, what: str) -> bytes:
    out = decode(data)
    if digest_hex(out) != expect_hex:
        raise CodecError(f"{what}: content does not match its recorded checksum")
    return out
