"""Short reads never shift block indexes; plain objects are refused in encrypted repositories."""

from __future__ import annotations

import io
import os

import pytest

from pgsafe import codec
from pgsafe.ops.filecopy import read_full


class Trickle(io.RawIOBase):
    """A file that answers each read with at most 10000 bytes, like a file being
    extended while it is read."""

    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 0

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        n = min(n if n >= 0 else len(self.data), 10000)
        out = self.data[self.pos:self.pos + n]
        self.pos += len(out)
        return out


def test_read_full_fills_whole_chunks_until_the_end():
    data = os.urandom(3 * 65536 + 123)
    src = Trickle(data)
    chunks = []
    while chunk := read_full(src, 65536):
        chunks.append(chunk)
    assert [len(c) for c in chunks] == [65536, 65536, 65536, 123]
    assert b"".join(chunks) == data


def test_encrypted_codec_refuses_plain_envelopes():
    blob, _ = codec.encode(b"forged WAL", "zstd", 3)
    with pytest.raises(codec.CodecError, match="not encrypted"):
        codec.Codec("zstd", 3, os.urandom(32)).decode(blob)
