"""`pgsafe dump` and `pgsafe dump-list`: logical backups kept in the repository.

pg_dump (pg_dumpall for roles and tablespaces) of the server's major version runs with
its own compression off; its output is compressed, checksummed and, when the repository
is, encrypted by pgsafe's codec on the way into the repository:

- custom format: pg_dump writes to a pipe; pgsafe reads it in 4 MiB chunks and writes
  them into the repository as they come (parts of at most 1 GiB). Nothing is staged
  on the local disk.
- directory format (``--jobs``): pg_dump's workers write files into a local staging
  directory; each file is stored and deleted as soon as pg_dump closes it (inotify),
  so the staging space holds about the files being written, not the whole dump.

Every database is its own logical backup; one run dumps every database (or those
named) and the globals, each committed on its own: a failure of one is recorded and
the others go on. See docs/LOGICAL.md.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import select
import shutil
import struct
import subprocess
import tempfile
import time
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable, Iterator

from pgsafe import codec
from pgsafe.config import ClusterConfig, RepoConfig
from pgsafe.errors import NoBackup, PostgresError, StorageFailure, UsageError
from pgsafe.ops.signals import interruptible
from pgsafe.pg.conn import connect, query, server_info
from pgsafe.pg.toc import Toc, parse_toc
from pgsafe.pg.tools import ToolProcess, conninfo_string, find_tool, tool_version
from pgsafe.repo.dumps import DumpFile, DumpStore, DumpWriter
from pgsafe.repo.repository import ClusterIdentity, Repository, open_repository

FORMATS = ("custom", "directory")
ARCHIVE_FILE = "archive.dump"
GLOBALS_FILE = "globals.sql"
Progress = Callable[[str, int], None]  # (what, bytes so far)


@dataclass
class DumpRequest:
    databases: list[str] | None = None  # None: every database of the cluster
    globals: bool = True
    tables: list[str] = field(default_factory=list)
    exclude_tables: list[str] = field(default_factory=list)
    schemas: list[str] = field(default_factory=list)
    schema_only: bool = False
    data_only: bool = False
    format: str = "custom"
    jobs: int = 1
    staging_dir: str | None = None


@dataclass
class DumpOutcome:
    id: str
    kind: str  # database or globals
    database: str | None
    status: str  # complete or failed
    format: str
    size: int = 0
    stored_size: int = 0
    duration: float = 0.0
    error: str | None = None


@dataclass
class DumpRunResult:
    run: str
    repos: list[str]
    dumps: list[DumpOutcome] = field(default_factory=list)
    removed_leftovers: list[str] = field(default_factory=list)
    expired: list[str] = field(default_factory=list)
    duration: float = 0.0

    @property
    def failed(self) -> list[DumpOutcome]:
        return [d for d in self.dumps if d.status != "complete"]


class _ToolFailed(Exception):
    pass


# -- pgsafe dump ------------------------------------------------------------------

def run_dump(cluster: ClusterConfig, repo_configs: list[RepoConfig], request: DumpRequest,
             progress: Progress | None = None) -> DumpRunResult:
    started = time.monotonic()
    _validate(request)
    repos = [open_repository(rc) for rc in repo_configs]
    with ExitStack() as stack:
        for repo in repos:
            stack.enter_context(repo.lock(cluster.name, "dump"))
        stack.enter_context(interruptible())
        # which server, which databases
        conn = connect(cluster.conninfo_kwargs(), "pgsafe dump")
        try:
            info = server_info(conn)
            for repo in repos:
                repo.check_cluster(cluster.name, ClusterIdentity(
                    info.system_identifier, info.version_num, info.wal_segment_size, info.block_size))
            databases = _databases(conn, request.databases)
        finally:
            conn.close()
        major = info.version_num // 10000
        pg_dump = find_tool("pg_dump", major) if databases else ""
        pg_dumpall = find_tool("pg_dumpall", major) if request.globals else ""
        stores = [DumpStore(repo, cluster.name) for repo in repos]
        # leftovers of killed runs go before anything new is written
        removed = sorted({d for s in stores for d in s.collect_garbage()})
        run_id = _new_run_id(stores)
        result = DumpRunResult(run_id, [r.name for r in repos], removed_leftovers=removed)
        common = {"pg_version": info.version_num, "system_identifier": str(info.system_identifier)}
        for index, db in enumerate(databases, 1):
            job = _Job(f"{run_id}L{index:03d}", "database", db["name"], request.format, common, db)
            argv = _pg_dump_argv(pg_dump, cluster, db["name"], request)
            result.dumps.append(_run_job(job, stores, repo_configs, argv, request, progress,
                                         program=f"pg_dump {tool_version(pg_dump)[1]}"))
        if request.globals:
            job = _Job(f"{run_id}G", "globals", None, "plain", common, {})
            argv = [pg_dumpall, "-d", conninfo_string(cluster.conninfo_kwargs(), None, "pgsafe dump"),
                    "--globals-only"]
            result.dumps.append(_run_job(job, stores, repo_configs, argv, request, progress,
                                         program=f"pg_dumpall {tool_version(pg_dumpall)[1]}"))
        # retention for dumps runs after each run
        from pgsafe.ops.expire import expire_dumps_locked, policy_of

        for repo, rc in zip(repos, repo_configs):
            result.expired += [e.backup_id for e in expire_dumps_locked(repo, cluster.name, policy_of(rc))]
    result.duration = time.monotonic() - started
    return result


def _validate(request: DumpRequest) -> None:
    if request.format not in FORMATS:
        raise UsageError(f"--format {request.format!r}: use custom or directory")
    if request.jobs < 1:
        raise UsageError("--jobs must be at least 1")
    if request.jobs > 1 and request.format != "directory":
        raise UsageError("--jobs needs --format directory (pg_dump writes the custom format with one process)")
    if request.schema_only and request.data_only:
        raise UsageError("--schema-only and --data-only cannot be used together")
    if (request.tables or request.schemas) and not request.databases:
        raise UsageError("--table and --schema need the database they apply to: add --db NAME")


def _databases(conn: Any, wanted: list[str] | None) -> list[dict[str, Any]]:
    rows = query(conn, "select datname, pg_encoding_to_char(encoding), datcollate, datctype from pg_database "
                       "where datallowconn and not datistemplate order by datname")
    found = {r[0]: {"name": r[0], "encoding": r[1], "collate": r[2], "ctype": r[3]} for r in rows}
    if wanted is None:
        return list(found.values())
    missing = [d for d in wanted if d not in found]
    if missing:
        raise UsageError(f"database {missing[0]!r} does not exist or does not allow connections")
    return [found[d] for d in dict.fromkeys(wanted)]


def _pg_dump_argv(pg_dump: str, cluster: ClusterConfig, dbname: str, request: DumpRequest) -> list[str]:
    argv = [pg_dump, "-d", conninfo_string(cluster.conninfo_kwargs(), dbname, "pgsafe dump"),
            "--compress=0", "--no-sync", "--blobs"]
    argv += [f"--schema={s}" for s in request.schemas]
    argv += [f"--table={t}" for t in request.tables]
    argv += [f"--exclude-table={t}" for t in request.exclude_tables]
    if request.schema_only:
        argv.append("--schema-only")
    if request.data_only:
        argv.append("--data-only")
    return argv


def _new_run_id(stores: list[DumpStore]) -> str:
    taken = {e["id"] for s in stores for e in s.catalog()}
    while True:
        run_id = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
        if not any(t.startswith(run_id) for t in taken):
            return run_id
        time.sleep(0.2)


@dataclass
class _Job:
    id: str
    kind: str
    database: str | None
    format: str
    common: dict[str, Any]
    db: dict[str, Any]


def _run_job(job: _Job, stores: list[DumpStore], repo_configs: list[RepoConfig], argv: list[str],
             request: DumpRequest, progress: Progress | None, program: str) -> DumpOutcome:
    """One logical backup into every repository: stream, then manifest and catalog
    entry; a pg_dump failure is recorded as a failed dump."""
    started = time.monotonic()
    start_time = _now()
    writers = [s.writer(job.id, rc.bundle_limit, rc.bundle_size) for s, rc in zip(stores, repo_configs)]
    label = job.database if job.kind == "database" and job.database else "globals"
    report = (lambda n: progress(label, n)) if progress is not None else (lambda n: None)
    try:
        if job.format == "directory":
            files = _dump_directory(argv, writers, request, report)
        elif job.kind == "database":
            files = _dump_stream(argv + ["--format=custom"], writers, ARCHIVE_FILE, report)
        else:
            files = _dump_stream(argv, writers, GLOBALS_FILE, report)
    except _ToolFailed as exc:
        for w in writers:
            w.abort()
        summary = _summary(job, request, program, start_time, [], 0)
        summary.update(status="failed", error=str(exc))
        for store in stores:
            store.record_failure(summary)
        return DumpOutcome(job.id, job.kind, job.database, "failed", job.format, duration=time.monotonic() - started,
                           error=str(exc))
    except BaseException:
        for w in writers:
            w.abort()
        raise
    for store, writer, its_files in zip(stores, writers, files):
        manifest = _summary(job, request, program, start_time, its_files, writer.stored_size)
        manifest["compression"] = store.repo.codec.compression
        manifest["encrypted"] = store.repo.codec.data_key is not None
        manifest["files"] = [f.as_dict() for f in sorted(its_files, key=lambda f: f.path)]
        store.commit(manifest)
    size = sum(f.size for f in files[0])
    return DumpOutcome(job.id, job.kind, job.database, "complete", job.format, size, writers[0].stored_size,
                       time.monotonic() - started)


def _summary(job: _Job, request: DumpRequest, program: str, start_time: str, files: list[DumpFile],
             stored_size: int) -> dict[str, Any]:
    options: dict[str, Any] = {"large_objects": True}
    if job.kind == "database":
        options.update(tables=request.tables, exclude_tables=request.exclude_tables, schemas=request.schemas,
                       schema_only=request.schema_only, data_only=request.data_only, jobs=request.jobs)
    return {
        "format": 1,
        "id": job.id,
        "kind": job.kind,
        "run": job.id[:15],
        "database": job.database,
        "status": "complete",
        "error": None,
        "dump_format": job.format,
        "options": options,
        "program": program,
        **job.common,
        "encoding": job.db.get("encoding"),
        "collate": job.db.get("collate"),
        "ctype": job.db.get("ctype"),
        "start_time": start_time,
        "stop_time": _now(),
        "size": sum(f.size for f in files),
        "stored_size": stored_size,
        "file_count": len(files),
    }


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


# -- custom format and globals: one stream ----------------------------------------

def _dump_stream(argv: list[str], writers: list[DumpWriter], path: str,
                 report: Callable[[int], None]) -> list[list[DumpFile]]:
    proc = ToolProcess(argv)
    streams = [w.stream(path) for w in writers]
    done = 0
    try:
        for chunk in read_ahead(proc.stdout):
            for s in streams:
                s.write(chunk)
            done += len(chunk)
            report(done)
        if proc.wait() != 0:
            raise _ToolFailed(proc.failure())
        return [[s.close()] for s in streams]
    except BaseException:
        for s in streams:
            s.abort()
        raise
    finally:
        proc.close()


def read_ahead(src: Any, depth: int = 4) -> Iterator[bytes]:
    """Chunks of a pipe, read by a thread up to `depth` chunks ahead, so that pg_dump
    keeps writing while pgsafe compresses (zstd releases the GIL); memory stays at
    about (depth + 2) x 4 MiB."""
    import queue
    import threading

    _grow_pipe(src)
    q: queue.Queue[bytes | BaseException | None] = queue.Queue(depth)
    stop = threading.Event()

    def put(item: bytes | BaseException | None) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def reader() -> None:
        try:
            while put(chunk := src.read(codec.CHUNK) or None) and chunk is not None:
                pass
        except BaseException as exc:  # handed to the consumer
            put(exc)

    thread = threading.Thread(target=reader, name="pgsafe-read", daemon=True)
    thread.start()
    try:
        while True:
            item = q.get()
            if item is None:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()  # the reader ends at its next put, or when the writer's pipe closes


def _grow_pipe(src: Any) -> None:
    """A larger pipe buffer (Linux: up to 1 MiB unprivileged) lets the writer run ahead."""
    import fcntl

    setsz = getattr(fcntl, "F_SETPIPE_SZ", 1031)
    try:
        fcntl.fcntl(src.fileno(), setsz, 1 << 20)
    except OSError:
        pass


# -- directory format: staged file by file ----------------------------------------

def _dump_directory(argv: list[str], writers: list[DumpWriter], request: DumpRequest,
                    report: Callable[[int], None]) -> list[list[DumpFile]]:
    """pg_dump -Fd -j N writes into a staging directory; each file is stored in the
    repository, then deleted, as soon as pg_dump closes it."""
    staging = tempfile.mkdtemp(prefix="pgsafe-dump-", dir=request.staging_dir)
    out_dir = os.path.join(staging, "out")
    os.mkdir(out_dir, 0o700)
    results: list[list[DumpFile]] = [[] for _ in writers]
    done = [0]
    submitted: set[str] = set()
    futures: list[Future[None]] = []
    watcher = _CloseWatcher(out_dir)
    proc = None
    pool = ThreadPoolExecutor(max(1, request.jobs), thread_name_prefix="pgsafe-dump")

    def store(name: str) -> None:
        local = os.path.join(out_dir, name)
        size = os.path.getsize(local)
        for i, w in enumerate(writers):
            results[i].extend(w.add_local_file(name, local))
        os.unlink(local)
        done[0] += size
        report(done[0])

    def submit(names: list[str]) -> None:
        for name in names:
            if name not in submitted and os.path.isfile(os.path.join(out_dir, name)):
                submitted.add(name)
                futures.append(pool.submit(store, name))
        for f in [f for f in futures if f.done()]:
            f.result()  # surface a storage error early

    try:
        proc = ToolProcess(argv + ["--format=directory", f"--jobs={request.jobs}", f"--file={out_dir}"],
                           stdout=subprocess.DEVNULL)
        while proc.proc.poll() is None:
            submit(watcher.closed(timeout=0.5))
        if proc.wait() != 0:
            raise _ToolFailed(proc.failure())
        submit(watcher.closed(timeout=0))
        submit(sorted(os.listdir(out_dir)))  # anything whose close we did not see
        for f in futures:
            f.result()
        for i, w in enumerate(writers):
            results[i].extend(w.flush())
        return results
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        watcher.close()
        if proc is not None:
            proc.close()
        shutil.rmtree(staging, ignore_errors=True)


class _CloseWatcher:
    """Names of files closed after writing in one directory (Linux inotify through
    libc); elsewhere nothing is reported early and files are stored once pg_dump ends."""

    IN_CLOSE_WRITE = 0x00000008
    EVENT = struct.Struct("iIII")

    def __init__(self, directory: str) -> None:
        self.fd = -1
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
            fd = libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
            if fd < 0:
                return
            if libc.inotify_add_watch(fd, os.fsencode(directory), self.IN_CLOSE_WRITE) < 0:
                os.close(fd)
                return
            self.fd = fd
        except (OSError, AttributeError):
            self.fd = -1

    def closed(self, timeout: float) -> list[str]:
        if self.fd < 0:
            time.sleep(timeout)
            return []
        ready, _, _ = select.select([self.fd], [], [], timeout)
        if not ready:
            return []
        names = []
        while True:
            try:
                data = os.read(self.fd, 65536)
            except BlockingIOError:
                break
            offset = 0
            while offset + self.EVENT.size <= len(data):
                _wd, _mask, _cookie, length = self.EVENT.unpack_from(data, offset)
                raw = data[offset + self.EVENT.size:offset + self.EVENT.size + length]
                names.append(os.fsdecode(raw.rstrip(b"\0")))
                offset += self.EVENT.size + length
        return [n for n in names if n]

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


# -- finding a stored dump and reading it back --------------------------------------

def find_dump(cluster: ClusterConfig, repo_configs: list[RepoConfig], dump_id: str
              ) -> tuple[Repository, DumpStore, dict[str, Any]]:
    """The first repository (in the order given) that holds the dump."""
    failed: dict[str, Any] | None = None
    for rc in repo_configs:
        repo = open_repository(rc)
        store = DumpStore(repo, cluster.name)
        try:
            entry = store.entry(dump_id)
        except NoBackup:
            continue
        if entry.get("status") == "complete":
            return repo, store, entry
        failed = entry
    if failed is not None:
        raise NoBackup(f"dump {dump_id} failed and holds no data: {failed.get('error')}")
    raise NoBackup(f"no dump {dump_id!r} of cluster {cluster.name!r}; `pgsafe info` lists the dumps")


class Archive:
    """A stored dump as pg_restore reads it: a custom archive streamed into its standard
    input, or staged on the local disk (directory format, or a parallel restore, which
    needs a seekable file)."""

    def __init__(self, store: DumpStore, entry: dict[str, Any], staging_dir: str | None = None) -> None:
        self.store = store
        self.entry = entry
        self.id = entry["id"]
        self.format = entry["dump_format"]
        self.manifest = store.manifest(self.id)
        self.files = {f.path: f for f in store.files(self.manifest)}
        self.staging_parent = staging_dir
        self._staged: str | None = None

    def chunks(self, path: str) -> Iterator[bytes]:
        return self.store.read_file(self.id, self.files[path])

    def stage(self, names: set[str] | None = None) -> str:
        """Decode the dump's files (or only `names`) into a local directory; returns the
        path pg_restore reads: the directory, or the archive file."""
        wanted = [f for f in self.files.values() if names is None or f.path in names]
        need = sum(f.size for f in wanted)
        parent = self.staging_parent or tempfile.gettempdir()
        free = shutil.disk_usage(parent).free
        if free < need + (64 << 20):
            raise StorageFailure(f"staging dump {self.id} needs {need} bytes in {parent}, only {free} are free; "
                                 "point --staging-dir at a larger file system")
        self._staged = tempfile.mkdtemp(prefix="pgsafe-restore-", dir=parent)
        target = os.path.join(self._staged, "dump")
        os.mkdir(target, 0o700)
        for f in wanted:
            with open(os.path.join(target, f.path), "wb") as out:
                for chunk in self.store.read_file(self.id, f):
                    out.write(chunk)
        if self.format == "directory":
            return target
        return os.path.join(target, ARCHIVE_FILE)

    def cleanup(self) -> None:
        if self._staged is not None:
            shutil.rmtree(self._staged, ignore_errors=True)
            self._staged = None

    def toc(self, pg_restore: str) -> Toc:
        """pg_restore --list --verbose of the archive (only the table of contents is read)."""
        if self.format == "directory":
            path = self.stage({"toc.dat"})
            proc = ToolProcess([pg_restore, "--list", "--verbose", path])
            try:
                text = proc.stdout.read().decode(errors="replace")
                if proc.wait() != 0:
                    raise PostgresError(proc.failure())
            finally:
                proc.close()
                self.cleanup()
            return parse_toc(text)
        out = tempfile.TemporaryFile()
        proc = ToolProcess([pg_restore, "--list", "--verbose"], stdin=subprocess.PIPE, stdout=out)
        try:
            feed(proc, self.chunks(ARCHIVE_FILE))
            if proc.wait() != 0:
                raise PostgresError(proc.failure())
            out.seek(0)
            return parse_toc(out.read().decode(errors="replace"))
        finally:
            proc.close()
            out.close()


def feed(proc: ToolProcess, chunks: Iterator[bytes]) -> None:
    """Write chunks into the program's standard input until they end or it stops
    reading (pg_restore --list stops after the table of contents)."""
    try:
        for chunk in chunks:
            proc.stdin.write(chunk)
    except BrokenPipeError:
        pass
    finally:
        try:
            proc.stdin.close()
        except BrokenPipeError:
            pass


# -- pgsafe dump-list --------------------------------------------------------------

@dataclass
class DumpListing:
    dump: dict[str, Any]
    repo: str
    toc: Toc | None = None
    statements: list[str] | None = None  # a pg_dumpall script: its statements


def run_dump_list(cluster: ClusterConfig, repo_configs: list[RepoConfig], dump_id: str) -> DumpListing:
    repo, store, entry = find_dump(cluster, repo_configs, dump_id)
    archive = Archive(store, entry)
    if entry["dump_format"] == "plain":
        text = b"".join(archive.chunks(GLOBALS_FILE)).decode(errors="replace")
        statements = [ln for ln in text.splitlines() if ln and not ln.startswith(("--", "SET ", "\\"))]
        return DumpListing(entry, repo.name, statements=statements)
    pg_restore = find_tool("pg_restore", int(entry["pg_version"]) // 10000)
    return DumpListing(entry, repo.name, toc=archive.toc(pg_restore))
