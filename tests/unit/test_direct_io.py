"""Restored large files are written around the page cache where the filesystem allows
it, and byte for byte the same either way: aligned or not, with O_DIRECT or where the
filesystem refuses it (EINVAL, as tmpfs did before Linux 6.6)."""

from __future__ import annotations

import errno
import os

import pytest

from pgsafe.ops.direct_io import BUFFER, FileWriter


def _write(directory: str, pieces: list[bytes]) -> tuple[bytes, bool]:
    path = os.path.join(directory, "f")
    out = FileWriter(path)
    direct = out.direct
    try:
        for piece in pieces:
            out.write(piece)
        out.close()
        os.fsync(out.fd)
    finally:
        os.close(out.fd)
    with open(path, "rb") as f:
        return f.read(), direct


SIZES = [0, 1, 4095, 4096, 8192 * 3 + 17, BUFFER - 1, BUFFER, BUFFER + 4096, 3 * BUFFER + 12345]


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("filesystem", ["accepts O_DIRECT", "refuses O_DIRECT"])
def test_every_size_comes_back_identical(tmp_path, monkeypatch, size: int, filesystem: str) -> None:
    if filesystem == "refuses O_DIRECT":
        real_open = os.open

        def refusing_open(path, flags, *args):
            if flags & os.O_DIRECT:
                raise OSError(errno.EINVAL, "Invalid argument")
            return real_open(path, flags, *args)

        monkeypatch.setattr(os, "open", refusing_open)
    data = os.urandom(size)
    # uneven pieces: 1 MiB decoder chunks, 128 KiB blocks and odd sizes
    cuts = [0]
    step = [1 << 20, 128 << 10, 777, 65536]
    while cuts[-1] < size:
        cuts.append(min(size, cuts[-1] + step[len(cuts) % len(step)]))
    written, direct = _write(str(tmp_path), [data[a:b] for a, b in zip(cuts, cuts[1:])])
    assert written == data
    if filesystem == "refuses O_DIRECT":
        assert not direct
