"""Envelopes: round trips in every compression, damage detected."""

from __future__ import annotations

import os

import pytest

from pgsafe import codec


@pytest.mark.parametrize("compression", ["zstd", "lz4", "gzip", "none"])
def test_round_trip_whole_and_streamed(compression):
    data = os.urandom(100_000) + bytes(3_000_000)
    blob, digest = codec.encode(data, compression, 1)
    assert codec.decode(blob) == data
    assert codec.read_header(blob).digest.hex() == digest
    enc = codec.Encoder(compression, 1)
    stream = enc.header + b"".join(enc.update(data[i:i + 65536]) for i in range(0, len(data), 65536)) + enc.finish()
    chunks = [stream[i:i + 1000] for i in range(0, len(stream), 1000)]
    assert b"".join(codec.decode_chunks(chunks)) == data
    assert enc.digest.hexdigest() == digest


def test_flipped_byte_is_detected():
    blob, _ = codec.encode(b"hello world" * 1000, "none", 0)
    bad = bytearray(blob)
    bad[100] ^= 1
    with pytest.raises(codec.CodecError):
        codec.decode(bytes(bad))


def test_not_an_envelope():
    with pytest.raises(codec.CodecError, match="magic"):
        codec.decode(b"x" * 64)


@pytest.mark.parametrize("size", [0, 10, 1024 * 1024 - 25, 1024 * 1024, 3 * 1024 * 1024 + 7])
def test_encrypted_round_trip_and_no_plaintext(size):
    key = os.urandom(32)
    c = codec.Codec("none", 0, key)
    data = (b"SECRET-MARKER" * (size // 13 + 1))[:size]
    blob, digest = c.encode(data)
    assert b"SECRET-MARKER" not in blob
    assert codec.read_header(blob).digest is None  # the digest is inside the ciphertext
    assert c.decode(blob) == data
    enc = c.encoder()
    stream = enc.header + enc.update(data) + enc.finish()
    assert b"".join(c.decode_chunks([stream[i:i + 4096] for i in range(0, len(stream), 4096)])) == data


def test_encrypted_tamper_truncate_wrong_key():
    key = os.urandom(32)
    c = codec.Codec("zstd", 3, key)
    blob, _ = c.encode(os.urandom(3 * 1024 * 1024))
    for position in (10, 40, 100, len(blob) // 2, len(blob) - 1):
        bad = bytearray(blob)
        bad[position] ^= 0x20
        with pytest.raises(codec.CodecError):
            c.decode(bytes(bad))
    with pytest.raises(codec.CodecError):
        c.decode(blob[: len(blob) - 1024 * 1024])
    with pytest.raises(codec.CodecError):
        codec.Codec("zstd", 3, os.urandom(32)).decode(blob)
    with pytest.raises(codec.CodecError, match="encrypted"):
        codec.decode(blob)
