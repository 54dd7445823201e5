"""The streaming pipeline: checksum, compress, and back, in one pass.

Every stored piece of content is an *envelope*: a 32-byte header followed by the
compressed bytes. The header names the compression so that a reader never depends
on configuration, and, when the writer knew them up front, the original size and
its XXH3-128 digest. See docs/FORMAT.md, "Envelope".

The codec does not know what it carries.
"""

from __future__ import annotations

import itertools
import os
import struct
import threading
import zlib
from functools import partial
from typing import Any, Callable, Iterable, Iterator, NamedTuple

import xxhash

MAGIC = b"PGSF"
ENVELOPE_VERSION = 1
HEADER = struct.Struct("<4sBBBBQ16s")
HEADER_SIZE = HEADER.size  # 32
FLAG_DIGEST = 0x01
ENCRYPTION_AES_GCM = 1

COMPRESSION_IDS = {"none": 0, "zstd": 1, "lz4": 2, "gzip": 3}
COMPRESSION_NAMES = {v: k for k, v in COMPRESSION_IDS.items()}
CHUNK = 4 * 1024 * 1024


class CodecError(Exception):
    """Stored bytes cannot be decoded or do not match their checksum."""


def new_digest() -> "xxhash.xxh3_128":
    return xxhash.xxh3_128()


def digest_hex(data: bytes | memoryview) -> str:
    return xxhash.xxh3_128_hexdigest(data)


class Header(NamedTuple):
    compression: str
    encryption: int
    size: int | None
    digest: bytes | None


def pack_header(compression: str, size: int | None = None, digest: bytes | None = None,
                encrypted: bool = False) -> bytes:
    flags = FLAG_DIGEST if digest is not None else 0
    return HEADER.pack(
        MAGIC, ENVELOPE_VERSION, COMPRESSION_IDS[compression], ENCRYPTION_AES_GCM if encrypted else 0,
        flags, size or 0, digest or bytes(16)
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
    if enc not in (0, ENCRYPTION_AES_GCM):
        raise CodecError(f"unknown encryption id {enc}")
    if flags & ~FLAG_DIGEST:
        raise CodecError(f"unknown envelope flags {flags:#x}")
    has = bool(flags & FLAG_DIGEST)
    return Header(COMPRESSION_NAMES[comp], enc, size if has else None, digest if has else None)


_local = threading.local()  # compressors are not safe to share between threads


# From this size up (a WAL segment), content is compressed as two frames on two
# threads: archive-push runs once per segment, and this halves its longest step.
SPLIT_FROM = 8 << 20


def _zstd_one_shot(level: int, data: bytes | memoryview) -> bytes:
    if len(data) >= SPLIT_FROM:
        view = memoryview(data)
        mid = len(view) // 2
        second: list[bytes] = []
        helper = threading.Thread(target=lambda: second.append(_zstd_one_shot(level, view[mid:])))
        helper.start()
        first = _zstd_one_shot(level, view[:mid])
        helper.join()
        if not second:
            raise CodecError("compression failed in a helper thread")
        return first + second[0]
    import zstandard

    cache: dict[int, Any] = _local.__dict__.setdefault("zstd", {})
    if level not in cache:
        cache[level] = zstandard.ZstdCompressor(level=level)
    return bytes(cache[level].compress(data))


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


OUT_CHUNK = 1024 * 1024


def _decompress(compression: str, pieces: Iterator[bytes]) -> Iterator[bytes]:
    """Compressed pieces -> original bytes in chunks of at most OUT_CHUNK, whatever the
    compression ratio (a run of zero pages compresses a thousandfold)."""
    if compression == "zstd":
        import zstandard

        reader = zstandard.ZstdDecompressor().stream_reader(_IterReader(pieces), read_size=OUT_CHUNK,
                                                              read_across_frames=True)
        while chunk := reader.read(OUT_CHUNK):
            yield chunk
    elif compression == "lz4":
        import lz4.frame

        lz = lz4.frame.LZ4FrameDecompressor()
        for piece in pieces:
            data = piece
            while True:
                out = lz.decompress(data, max_length=OUT_CHUNK)
                if out:
                    yield out
                if lz.needs_input or lz.eof:
                    break
                data = b""
    elif compression == "gzip":
        z = zlib.decompressobj(31)
        for piece in pieces:
            data = piece
            while data:
                out = z.decompress(data, OUT_CHUNK)
                if out:
                    yield out
                data = z.unconsumed_tail
        tail = z.flush()
        if tail:
            yield tail
    else:
        for piece in pieces:
            for i in range(0, len(piece), OUT_CHUNK):
                yield piece[i:i + OUT_CHUNK]


class _IterReader:
    """A read()-able view of an iterator of byte strings for the decompressor: each
    read returns at most `n` bytes of the current piece, without copying it."""

    def __init__(self, pieces: Iterator[bytes]) -> None:
        self.pieces = pieces
        self.buf = memoryview(b"")

    def read(self, n: int = -1) -> memoryview:
        while not self.buf:
            piece = next(self.pieces, None)
            if piece is None:
                return self.buf
            self.buf = memoryview(piece)
        if n < 0 or n >= len(self.buf):
            out, self.buf = self.buf, memoryview(b"")
        else:
            out, self.buf = self.buf[:n], self.buf[n:]
        return out


class Encoder:
    """Streaming encoder: feed original bytes, get envelope bytes; digests as it goes.
    The first bytes out are the header (and, encrypted, the salt)."""

    def __init__(self, compression: str, level: int, size: int | None = None, digest: bytes | None = None,
                 data_key: bytes | None = None, framed: bool = False):
        if framed and compression == "zstd":
            # each update its own frame: about a quarter faster than one long stream
            # (which zstd compresses in its slower external-dictionary mode), and as small
            self._update, self._flush = partial(_zstd_one_shot, level), bytes
        else:
            self._update, self._flush = _compressor(compression, level)
        self.compression = compression
        self.digest = new_digest()
        self.size = 0
        if data_key is None:
            self.header = pack_header(compression, size, digest)
            self._seal: _Sealer | None = None
        else:
            head = pack_header(compression, None, None, encrypted=True)
            self._seal = _Sealer(data_key, head)
            self.header = head + self._seal.salt + self._seal.feed(pack_inner(size, digest))

    def update(self, data: bytes | memoryview) -> bytes:
        self.digest.update(data)
        self.size += len(data)
        out = self._update(data)
        return self._seal.feed(out) if self._seal is not None else out

    def finish(self) -> bytes:
        out = self._flush()
        return self._seal.feed(out) + self._seal.finish() if self._seal is not None else out


INNER = struct.Struct("<BQ16s")


def pack_inner(size: int | None, digest: bytes | None) -> bytes:
    """Encrypted envelopes keep size and digest inside the ciphertext."""
    return INNER.pack(FLAG_DIGEST if digest is not None else 0, size or 0, digest or bytes(16))


class _Sealer:
    def __init__(self, data_key: bytes, header: bytes) -> None:
        from pgsafe.codec.crypto import SALT_SIZE, ObjectCipher

        self.salt = os.urandom(SALT_SIZE)
        self.cipher = ObjectCipher(data_key, self.salt, header)
        self.buf = bytearray()

    def feed(self, data: bytes) -> bytes:
        from pgsafe.codec.crypto import CHUNK as SEAL

        self.buf += data
        out = []
        while len(self.buf) > SEAL:
            out.append(self.cipher.seal(bytes(self.buf[:SEAL]), last=False))
            del self.buf[:SEAL]
        return b"".join(out)

    def finish(self) -> bytes:
        out = self.cipher.seal(bytes(self.buf), last=True)
        self.buf = bytearray()
        return out


def _open_chunks(chunks: Iterator[bytes], data_key: bytes, header: bytes) -> Iterator[bytes]:
    """Sealed chunks -> plaintext, each authenticated before it is released."""
    from pgsafe.codec.crypto import CHUNK as SEAL
    from pgsafe.codec.crypto import SALT_SIZE, TAG_SIZE, CryptoError, ObjectCipher

    buf = bytearray()
    cipher = None
    sealed = SEAL + TAG_SIZE
    try:
        for chunk in chunks:
            buf += chunk
            if cipher is None:
                if len(buf) < SALT_SIZE:
                    continue
                cipher = ObjectCipher(data_key, bytes(buf[:SALT_SIZE]), header)
                del buf[:SALT_SIZE]
            while len(buf) > sealed:
                yield cipher.open(bytes(buf[:sealed]), last=False)
                del buf[:sealed]
        if cipher is None or len(buf) < TAG_SIZE:
            raise CodecError("encrypted object is truncated")
        yield cipher.open(bytes(buf), last=True)
    except CryptoError as exc:
        raise CodecError(str(exc)) from None


class Codec:
    """A repository's way of storing content: its compression and, when encrypted,
    its data key. Every read and write of stored content goes through one."""

    def __init__(self, compression: str = "zstd", level: int = 3, data_key: bytes | None = None) -> None:
        self.compression = compression
        self.level = level
        self.data_key = data_key

    def encoder(self, size: int | None = None, digest: bytes | None = None, framed: bool = False) -> Encoder:
        """framed: for large pieces (MiBs) only; each update is compressed on its own."""
        return Encoder(self.compression, self.level, size, digest, self.data_key, framed)

    def encode(self, data: bytes | memoryview) -> tuple[bytes, str]:
        """Whole content -> (envelope carrying its digest, hex digest)."""
        digest = xxhash.xxh3_128_digest(data)
        if self.data_key is None and self.compression == "zstd":
            # one shot: zstd knows the size up front and runs about twice as fast
            return pack_header("zstd", len(data), digest) + _zstd_one_shot(self.level, data), digest.hex()
        enc = self.encoder(len(data), digest)
        return enc.header + enc.update(data) + enc.finish(), digest.hex()

    def decode_chunks(self, chunks: Iterable[bytes]) -> Iterator[bytes]:
        return decode_chunks(chunks, self.data_key)

    def decode(self, data: bytes | memoryview) -> bytes:
        return b"".join(self.decode_chunks([bytes(data)]))

    def decode_verified(self, data: bytes | memoryview, expect_hex: str, what: str) -> bytes:
        out = self.decode(data)
        if digest_hex(out) != expect_hex:
            raise CodecError(f"{what}: content does not match its recorded checksum")
        return out


def decode_chunks(chunks: Iterable[bytes], data_key: bytes | None = None) -> Iterator[bytes]:
    """Envelope bytes (in any chunking) -> original bytes, checking the digest the
    envelope carries, if any. The caller checks a digest kept elsewhere (the manifest)."""
    it = iter(chunks)
    head = b""
    for chunk in it:
        head += chunk
        if len(head) >= HEADER_SIZE:
            break
    header = read_header(head)
    rest = head[HEADER_SIZE:]
    expect_size, expect_digest = header.size, header.digest
    if data_key is not None and not header.encryption:
        # in an encrypted repository a plain object can only be a forgery
        raise CodecError("object is not encrypted, in an encrypted repository")
    if header.encryption:
        if data_key is None:
            raise CodecError("object is encrypted and no key was given")
        plain = _open_chunks(itertools.chain([rest], it), data_key, head[:HEADER_SIZE])
        inner = b""
        for piece in plain:
            inner += piece
            if len(inner) >= INNER.size:
                break
        if len(inner) < INNER.size:
            raise CodecError("encrypted object is truncated")
        flags, size, digest = INNER.unpack_from(inner)
        if flags & FLAG_DIGEST:
            expect_size, expect_digest = size, digest
        rest, it = inner[INNER.size:], plain
    check = new_digest() if expect_digest is not None else None
    size = 0
    try:
        for out in _decompress(header.compression, itertools.chain([rest], it)):
            if check is not None:
                check.update(out)
            size += len(out)
            yield out
    except CodecError:
        raise
    except Exception as exc:  # each library raises its own error type for bad input
        raise CodecError(f"cannot decompress: {exc}") from None
    if check is not None and (check.digest() != expect_digest or size != expect_size):
        raise CodecError("content does not match the checksum in its header")


PLAIN = Codec()


def encode(data: bytes | memoryview, compression: str, level: int) -> tuple[bytes, str]:
    """Whole content -> unencrypted envelope with digest (see Codec.encode)."""
    return Codec(compression, level).encode(data)


def decode(data: bytes | memoryview) -> bytes:
    return PLAIN.decode(data)

