"""Asynchronous archiving (cluster `archive_async = true`).

Push: PostgreSQL still calls archive-push once per segment, in order. The first call
starts a background worker that pushes every segment marked ready in
pg_wal/archive_status, several at a time, and leaves a marker in the spool when a
segment is durable in every repository. A later call finds its marker and returns at
once. Nothing is ever dropped: a call without a marker waits for the worker (or
pushes itself), and fails if the push fails, so PostgreSQL keeps the segment and
retries. Markers are written atomically after the push; a lost marker only means one
more (deduplicated) push.

Get: archive-get serves a segment from the spool when the prefetcher already fetched
it, and starts the prefetcher on the segments that follow. Prefetched files are
written atomically; at most `PREFETCH` of them are kept.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Iterator

import xxhash

from pgsafe.config import ClusterConfig, Config
from pgsafe.errors import NotFound, PgsafeError
from pgsafe.pg import wal

PREFETCH = 8
IDLE_EXIT = 3.0
RETRY_AFTER = 1.0  # seconds before the worker retries a segment whose push failed


def spool_dir(config: Config, cluster: ClusterConfig) -> str:
    """One spool per configuration and data directory: two clusters that share a name
    (in different configs) never see each other's segments."""
    base = cluster.spool_path or os.path.join(tempfile.gettempdir(), f"pgsafe-spool-{os.geteuid()}")
    tag = hashlib.sha256(f"{config.path}\0{cluster.pgdata}".encode()).hexdigest()[:12]
    path = os.path.join(base, f"{cluster.name}-{tag}")
    for sub in ("out", "in"):
        os.makedirs(os.path.join(path, sub), mode=0o700, exist_ok=True)
    return path


# -- push ---------------------------------------------------------------------------


def push(config: Config, cluster: ClusterConfig, path: str, push_now: "PushFn") -> bool:
    """True when the worker had already pushed this segment; otherwise wait for it (or
    push here) and return False. Raises when the push failed."""
    spool = spool_dir(config, cluster)
    name = os.path.basename(path)
    with open(path, "rb") as f:
        digest = xxhash.xxh3_128_hexdigest(f.read())
    marker = os.path.join(spool, "out", name)
    deadline = time.monotonic() + cluster.archive_timeout
    _start_worker(config, cluster, "archive-push-worker")
    while True:
        state = _read_marker(marker)
        if state is not None:
            os.unlink(marker)
            if state.startswith("ok ") and state[3:] == digest:
                return True
            break  # the worker failed (maybe before an outage ended), or the file changed: push it now
        if not _locked(os.path.join(spool, "push.lock")) or time.monotonic() > deadline:
            break  # no worker to wait for: push it ourselves
        time.sleep(0.02)
    push_now(path)
    return False


def push_worker(config: Config, cluster: ClusterConfig, push_now: "PushFn") -> None:
    """Push every ready segment ahead of PostgreSQL, in parallel, until idle."""
    spool = spool_dir(config, cluster)
    status = os.path.join(cluster.pgdata, "pg_wal", "archive_status")
    jobs = max(2, config.jobs or os.cpu_count() or 2)
    with _lock(os.path.join(spool, "push.lock")) as held:
        if not held:
            return
        idle_since = time.monotonic()
        with ThreadPoolExecutor(jobs, thread_name_prefix="pgsafe-push") as pool:
            while time.monotonic() - idle_since < IDLE_EXIT:
                names = _listdir(status)
                ready = sorted(n[:-6] for n in names if n.endswith(".ready"))
                for n in names:  # markers nobody will collect: PostgreSQL is done with them
                    if n.endswith(".done"):
                        _unlink(os.path.join(spool, "out", n[:-5]))
                todo = [n for n in ready if _due(os.path.join(spool, "out", n))][: jobs * 4]
                if not todo:
                    time.sleep(0.05)
                    continue
                idle_since = time.monotonic()
                list(pool.map(lambda n: _push_one(spool, cluster, n, push_now), todo))


def _push_one(spool: str, cluster: ClusterConfig, name: str, push_now: "PushFn") -> None:
    path = os.path.join(cluster.pgdata, "pg_wal", name)
    try:
        with open(path, "rb") as f:
            digest = xxhash.xxh3_128_hexdigest(f.read())
        push_now(path)
        _write_marker(os.path.join(spool, "out", name), f"ok {digest}")
    except FileNotFoundError:
        return  # already archived and recycled
    except PgsafeError as exc:
        _write_marker(os.path.join(spool, "out", name), f"error {exc.message}")
    except Exception as exc:  # keep the worker alive; the foreground reports it
        _write_marker(os.path.join(spool, "out", name), f"error {type(exc).__name__}: {exc}")


# -- get ------------------------------------------------------------------------------


def get(config: Config, cluster: ClusterConfig, name: str, dest: str, fetch_now: "FetchFn") -> bool:
    """Serve name from the prefetch spool (True) or fetch it now (False); either way,
    start prefetching the segments after it."""
    spool = spool_dir(config, cluster)
    spooled = os.path.join(spool, "in", name)
    try:
        _copy_atomically(spooled, dest)
        _unlink(spooled)
        served = True
    except FileNotFoundError:  # not prefetched (or taken meanwhile): fetch it now
        fetch_now(name, dest)
        served = False
    if wal.is_segment(name):
        _start_worker(config, cluster, "archive-get-worker", name)
    return served


def get_worker(config: Config, cluster: ClusterConfig, after: str, seg_size: int, fetch_now: "FetchFn") -> None:
    """Fetch up to PREFETCH segments following `after` into the spool, in parallel."""
    spool = spool_dir(config, cluster)
    with _lock(os.path.join(spool, "get.lock")) as held:
        if not held:
            return
        timeline, segno = wal.parse_segment_name(after, seg_size)
        names = [wal.segment_name(timeline, segno + k, seg_size) for k in range(1, PREFETCH + 1)]
        keep = set(names)
        for old in _listdir(os.path.join(spool, "in")):  # bounded: drop what recovery has passed
            if old not in keep:
                _unlink(os.path.join(spool, "in", old))
        todo = [n for n in names if not os.path.exists(os.path.join(spool, "in", n))]

        def fetch(n: str) -> bool:
            tmp = os.path.join(spool, "in", f".{n}.tmp")
            try:
                fetch_now(n, tmp)
            except NotFound:
                return False
            except PgsafeError:
                _unlink(tmp)
                return False
            _fsync(tmp)  # the spool outlives a crash: only whole files may be in it
            os.replace(tmp, os.path.join(spool, "in", n))
            return True

        with ThreadPoolExecutor(max(2, config.jobs or os.cpu_count() or 2), thread_name_prefix="pgsafe-get") as pool:
            list(pool.map(fetch, todo))


# -- helpers --------------------------------------------------------------------------


class PushFn:  # a callable pushing one WAL file synchronously (type marker only)
    def __call__(self, path: str) -> None: ...


class FetchFn:  # a callable fetching one WAL file synchronously (type marker only)
    def __call__(self, name: str, dest: str) -> None: ...


def _due(marker: str) -> bool:
    """A segment to push: no marker yet, or a failure old enough to try again."""
    state = _read_marker(marker)
    if state is None:
        return True
    if state.startswith("error"):
        try:
            return time.time() - os.stat(marker).st_mtime > RETRY_AFTER
        except FileNotFoundError:
            return True
    return False


def _start_worker(config: Config, cluster: ClusterConfig, command: str, *args: str) -> None:
    spool = spool_dir(config, cluster)
    lock = "push.lock" if command == "archive-push-worker" else "get.lock"
    if _locked(os.path.join(spool, lock)):
        return
    log = open(os.path.join(spool, "worker.log"), "ab")
    try:
        subprocess.Popen(
            [sys.executable, "-m", "pgsafe", "--config", config.path, "--cluster", cluster.name, command, *args],
            stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True, close_fds=True,
            cwd=cluster.pgdata,
        )
    finally:
        log.close()


@contextmanager
def _lock(path: str) -> Iterator[bool]:
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(fd)


def _locked(path: str) -> bool:
    with _lock(path) as held:
        return not held


def _read_marker(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read().strip()
    except FileNotFoundError:
        return None


def _write_marker(path: str, text: str) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _fsync(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _copy_atomically(src: str, dest: str) -> None:
    tmp = f"{dest}.pgsafe-{os.getpid()}"
    try:
        with open(src, "rb") as fin, open(tmp, "wb") as fout:
            while chunk := fin.read(4 * 1024 * 1024):
                fout.write(chunk)
            fout.flush()
            os.fsync(fout.fileno())
        os.replace(tmp, dest)
    except BaseException:
        _unlink(tmp)
        raise


def _listdir(path: str) -> list[str]:
    try:
        return os.listdir(path)
    except FileNotFoundError:
        return []


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
