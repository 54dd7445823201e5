"""Writing a restored large file without going through the page cache.

A restore writes gigabytes that nobody reads back soon. Through the page cache, the
kernel copies every byte into freshly allocated cache pages and writes them back later
(then fsync waits for it); that copy was most of a restore's CPU on the machines we
measured (docs/PERFORMANCE.md). With O_DIRECT the data goes from one reused, aligned
buffer straight to the disk. Where the filesystem refuses O_DIRECT (tmpfs, some network
filesystems), or for the unaligned tail of a file, the writer falls back to ordinary
writes, so the result is the same file either way.
"""

from __future__ import annotations

import errno
import fcntl
import mmap
import os

ALIGN = 4096  # buffer address, length and file offset of every direct write
BUFFER = 4 * 1024 * 1024


def _write_all(fd: int, data: bytes | memoryview) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


class FileWriter:
    """Sequential writer of one new file: `write` pieces of any size, then `close`
    (which leaves the fd open: the caller truncates, fsyncs and closes it)."""

    def __init__(self, path: str, mode: int = 0o600) -> None:
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC
        self.direct = hasattr(os, "O_DIRECT")
        self.fd = -1
        if self.direct:
            try:
                self.fd = os.open(path, flags | os.O_DIRECT, mode)
            except OSError as exc:
                if exc.errno != errno.EINVAL:
                    raise
                self.direct = False
        if self.fd < 0:
            self.fd = os.open(path, flags, mode)
        self._buf = mmap.mmap(-1, BUFFER) if self.direct else None
        self._view = memoryview(self._buf) if self._buf is not None else None
        self._fill = 0

    def write(self, data: bytes | memoryview) -> None:
        if self._view is None:
            _write_all(self.fd, data)
            return
        data = memoryview(data)
        while data:
            n = min(len(data), BUFFER - self._fill)
            self._view[self._fill:self._fill + n] = data[:n]
            self._fill += n
            data = data[n:]
            if self._fill == BUFFER:
                self._flush(self._view)
                self._fill = 0

    def _flush(self, view: memoryview) -> None:
        if self.direct:
            try:
                _write_all(self.fd, view)
                return
            except OSError as exc:
                if exc.errno != errno.EINVAL:
                    raise
                self._buffered()  # the filesystem took the open but not the write
        _write_all(self.fd, view)

    def _buffered(self) -> None:
        self.direct = False
        fcntl.fcntl(self.fd, fcntl.F_SETFL, fcntl.fcntl(self.fd, fcntl.F_GETFL) & ~os.O_DIRECT)

    def close(self) -> None:
        """Write what is buffered: its aligned part directly, the tail through the cache."""
        if self._view is not None:
            aligned = self._fill - self._fill % ALIGN
            if aligned:
                self._flush(self._view[:aligned])
            if self._fill > aligned:
                if self.direct:
                    self._buffered()
                _write_all(self.fd, self._view[aligned:self._fill])
            self._view.release()
            self._view = None
        if self._buf is not None:
            self._buf.close()
            self._buf = None
