"""A per-user cache of small derived values (~/.cache/pgsafe, mode 0700, files 0600).

archive-push and archive-get run once per WAL segment; what they would otherwise
recompute each time (a key derived with scrypt, the parsed config) is kept here.
Nothing in it is needed: a missing, unreadable or unwritable cache only costs time.
"""

from __future__ import annotations

import os


def _path(name: str) -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
    return os.path.join(base, "pgsafe", name)


def read(name: str) -> bytes | None:
    try:
        with open(_path(name), "rb") as f:
            return f.read()
    except OSError:
        return None


def write(name: str, data: bytes) -> None:
    path = _path(name)
    try:
        os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
        tmp = f"{path}.{os.getpid()}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except OSError:
        pass  # no cache: slower, still correct
