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
