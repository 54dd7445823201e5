"""Real PostgreSQL 15 servers and a pgsafe setup around them, for the test suite.

PostgreSQL refuses to run as root, so when the tests run as root every server command
(initdb, pg_ctl, the server itself and therefore archive_command) runs as the
``postgres`` OS user through ``runuser``. Everything a server touches lives in
directories made under /tmp and handed to that user, because the checkout may sit in a
folder the postgres user cannot enter.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence, TypeVar

import psycopg

PG_BIN = Path(os.environ.get("PG_BIN", "/usr/lib/postgresql/15/bin"))
PGSAFE_BIN = Path(os.environ.get("PGSAFE_BIN", "/opt/pgsafe/bin/pgsafe"))
SERVER_USER = "postgres"
RUNUSER = shutil.which("runuser", path="/usr/sbin:/sbin:/usr/bin:/bin") or "runuser"
IS_ROOT = os.geteuid() == 0

# Generous: the machine has two cores and CI may be busy. Never used as an assertion.
START_TIMEOUT = 300
COMMAND_TIMEOUT = 600

T = TypeVar("T")


def server_uid_gid() -> tuple[int, int]:
    """The OS user that owns data directories: postgres under root, else ourselves."""
    if IS_ROOT:
        pw = pwd.getpwnam(SERVER_USER)
        return pw.pw_uid, pw.pw_gid
    return os.getuid(), os.getgid()


def clean_env(**extra: str) -> dict[str, str]:
    """A small, predictable environment: no PG* variables leaking in from the caller."""
    env = {
        "PATH": f"{PG_BIN}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
        "TZ": "UTC",
        "HOME": pwd.getpwnam(SERVER_USER).pw_dir if IS_ROOT else os.environ.get("HOME", "/tmp"),
    }
    env.update(extra)
    return env


def as_user(argv: Sequence[str | os.PathLike[str]], user: str | None) -> list[str]:
    argv = [os.fspath(a) for a in argv]
    if user is None or (not IS_ROOT and user == pwd.getpwuid(os.getuid()).pw_name):
        return argv
    if not IS_ROOT:
        raise RuntimeError(f"cannot run a command as {user!r} without being root")
    return [RUNUSER, "-u", user, "--", *argv]


def as_server_user(argv: Sequence[str | os.PathLike[str]]) -> list[str]:
    return as_user(argv, SERVER_USER if IS_ROOT else None)


def wait_for(what: str, predicate: Callable[[], T], timeout: float = START_TIMEOUT,
             interval: float = 0.2, on_timeout: Callable[[], str] | None = None) -> T:
    """Poll until predicate() returns something truthy; return it. Fails after timeout."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            detail = on_timeout() if on_timeout else ""
            raise AssertionError(f"timed out after {timeout}s waiting for {what}\n{detail}")
        time.sleep(interval)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def flip_byte(path: Path, offset: int | None = None) -> int:
    """Invert one byte of a file in place (middle of the file by default)."""
    size = path.stat().st_size
    if offset is None:
        offset = size // 2
    with open(path, "r+b") as f:
        f.seek(offset)
        b = f.read(1)
        f.seek(offset)
        f.write(bytes([b[0] ^ 0xFF]))
    return offset


def tree_snapshot(root: Path) -> dict[str, tuple[int, int]]:
    """{relative path: (size, mtime_ns)} of every file under root."""
    out: dict[str, tuple[int, int]] = {}
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            p = Path(dirpath) / name
            try:
                st = p.lstat()
            except FileNotFoundError:
                continue
            out[str(p.relative_to(root))] = (st.st_size, st.st_mtime_ns)
    return out


def tree_size(root: Path) -> int:
    return sum(size for size, _ in tree_snapshot(root).values())


def chown_tree(root: Path, uid: int, gid: int) -> None:
    os.chown(root, uid, gid, follow_symlinks=False)
    for dirpath, dirs, files in os.walk(root):
        for name in dirs + files:
            os.chown(os.path.join(dirpath, name), uid, gid, follow_symlinks=False)


# -- temporary directories ------------------------------------------------------------

class TempDirs:
    """Makes directories under /tmp that the server user can use; removes them all."""

    def __init__(self) -> None:
        self.made: list[Path] = []

    def make(self, prefix: str = "pgsafe-test-") -> Path:
        path = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
        uid, gid = server_uid_gid()
        os.chown(path, uid, gid)
        path.chmod(0o755)
        self.made.append(path)
        return path

    def cleanup(self) -> None:
        for path in reversed(self.made):
            shutil.rmtree(path, ignore_errors=True)
        self.made.clear()


# -- one PostgreSQL server ------------------------------------------------------------

class PgCluster:
    """A PostgreSQL 15 server in a temporary directory.

    ``pgdata`` may be an existing data directory (a restored backup); otherwise a new
    one is made with initdb and data checksums. Port, socket directory and
    listen_addresses are given on the server's command line when it starts, so a
    restored copy of another cluster's configuration never collides with the source.
    """

    def __init__(self, workdir: Path, pgdata: Path | None = None, name: str = "pg") -> None:
        self.name = name
        self.workdir = workdir
        self.pgdata = pgdata if pgdata is not None else workdir / "pgdata"
        self.socket_dir = workdir / "sock"
        self.logfile = workdir / "server.log"
        self.port = free_port()
        self.start_options: dict[str, str] = {}
        uid, gid = server_uid_gid()
        self.socket_dir.mkdir(exist_ok=True)
        os.chown(self.socket_dir, uid, gid)

    # -- setup ---------------------------------------------------------------------

    def initdb(self, *extra: str) -> None:
        self._run_server_cmd([
            PG_BIN / "initdb", "-D", self.pgdata, "--data-checksums", "-U", SERVER_USER,
            "--auth=trust", "--encoding=UTF8", "--locale=C", "--no-sync", *extra,
        ])
        self._append_conf("postgresql.conf", {
            "logging_collector": "off",
            "log_line_prefix": "%m [%p] %q%u@%d ",
            "log_checkpoints": "on",
            "fsync": "off",  # test speed; crashes here are of processes, not machines
            "max_connections": "50",
            "shared_buffers": "64MB",
        })

    def configure(self, **settings: Any) -> None:
        """Append settings to postgresql.auto.conf (effective at the next start/reload)."""
        self._append_conf("postgresql.auto.conf", settings)

    def _append_conf(self, filename: str, settings: dict[str, Any]) -> None:
        lines = []
        for key, value in settings.items():
            if isinstance(value, bool):
                value = "on" if value else "off"
            text = str(value).replace("'", "''")
            lines.append(f"{key} = '{text}'\n")
        path = self.pgdata / filename
        with open(path, "a") as f:
            f.writelines(lines)

    # -- lifecycle -----------------------------------------------------------------

    def start(self, wait: bool = True, **options: Any) -> None:
        """Start the server. ``options`` become ``-c key=value`` for this start only."""
        opts = {
            "port": str(self.port),
            "listen_addresses": "127.0.0.1",
            "unix_socket_directories": str(self.socket_dir),
            **self.start_options,
            **{k: ("on" if v is True else "off" if v is False else str(v)) for k, v in options.items()},
        }
        o = " ".join(f"-c {k}={v}" for k, v in opts.items())
        argv = [PG_BIN / "pg_ctl", "-D", self.pgdata, "-l", self.logfile, "-o", o,
                "-t", str(START_TIMEOUT)]
        argv += ["-w"] if wait else ["-W"]
        argv.append("start")
        try:
            self._run_server_cmd(argv)
        except subprocess.CalledProcessError as exc:
            raise AssertionError(
                f"{self.name}: server failed to start (pg_ctl exit {exc.returncode})\n"
                f"{exc.stdout}{exc.stderr}\n--- server log ---\n{self.log_tail()}"
            ) from None

    def stop(self, mode: str = "fast") -> None:
        if not self.is_running():
            return
        self._run_server_cmd([PG_BIN / "pg_ctl", "-D", self.pgdata, "-m", mode,
                              "-t", str(START_TIMEOUT), "-w", "stop"])

    def restart(self) -> None:
        self.stop()
        self.start()

    def reload(self) -> None:
        self.sql("select pg_reload_conf()")

    def postmaster_pid(self) -> int | None:
        try:
            first = (self.pgdata / "postmaster.pid").read_text().splitlines()[0]
            return int(first)
        except (FileNotFoundError, IndexError, ValueError, PermissionError):
            return None

    def is_running(self) -> bool:
        pid = self.postmaster_pid()
        return pid is not None and _pid_alive(pid)

    def kill9(self) -> None:
        """SIGKILL the postmaster and wait for every backend to go."""
        pid = self.postmaster_pid()
        if pid is None:
            return
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            return
        wait_for("postmaster to die", lambda: not _pid_alive(pid), timeout=60, interval=0.05)
        # Backends notice the postmaster's death by themselves; wait until they have gone
        # (they all run in the data directory) so that a restart does not find its shared
        # memory still attached.
        wait_for("backends to exit", lambda: not self._processes_in_pgdata(), timeout=60,
                 interval=0.1)
        # This machine's init does not reap orphans: the dead postmaster may linger as a
        # zombie, which the next start would take for a running server.
        (self.pgdata / "postmaster.pid").unlink(missing_ok=True)
        for stale in self.socket_dir.glob(".s.PGSQL.*"):
            stale.unlink(missing_ok=True)

    def _processes_in_pgdata(self) -> list[int]:
        pids = []
        target = os.path.realpath(self.pgdata)
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                if os.readlink(f"/proc/{entry}/cwd") == target:
                    pids.append(int(entry))
            except OSError:
                continue
        return pids

    def wait_stopped(self, timeout: float = START_TIMEOUT) -> None:
        wait_for(f"{self.name} to shut down", lambda: not self.is_running(), timeout=timeout,
                 on_timeout=self.log_tail)

    # -- talking to it -------------------------------------------------------------

    @property
    def conninfo(self) -> str:
        return f"host={self.socket_dir} port={self.port} user={SERVER_USER} dbname=postgres"

    def connect(self, dbname: str = "postgres", autocommit: bool = True) -> psycopg.Connection:
        return psycopg.connect(host=str(self.socket_dir), port=self.port, user=SERVER_USER,
                               dbname=dbname, autocommit=autocommit, connect_timeout=30)

    def sql(self, query: str, params: Sequence[Any] | dict[str, Any] | None = None,
            dbname: str = "postgres") -> list[tuple[Any, ...]]:
        """Run one statement in autocommit mode; return its rows ([] when it has none)."""
        with self.connect(dbname) as conn:
            cur = conn.execute(query, params)  # type: ignore[arg-type]
            return cur.fetchall() if cur.description is not None else []

    def scalar(self, query: str, params: Sequence[Any] | dict[str, Any] | None = None,
               dbname: str = "postgres") -> Any:
        rows = self.sql(query, params, dbname)
        return rows[0][0] if rows else None

    def pgbench(self, args: Iterable[str], background: bool = False,
                dbname: str = "postgres") -> subprocess.CompletedProcess[str] | subprocess.Popen[str]:
        argv = [str(PG_BIN / "pgbench"), "-h", str(self.socket_dir), "-p", str(self.port),
                "-U", SERVER_USER, *args, dbname]
        if background:
            return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                    text=True, env=clean_env(), cwd="/tmp")
        return subprocess.run(argv, capture_output=True, text=True, env=clean_env(), cwd="/tmp",
                              timeout=COMMAND_TIMEOUT, check=True)

    def in_recovery(self) -> bool:
        return bool(self.scalar("select pg_is_in_recovery()"))

    def wait_promoted(self, timeout: float = START_TIMEOUT) -> None:
        """Wait until recovery has ended; fail with the server log if it dies instead."""
        def promoted() -> bool:
            try:
                return not self.in_recovery()
            except psycopg.OperationalError:
                if not self.is_running():
                    raise AssertionError(f"{self.name} stopped during recovery\n"
                                         f"--- server log ---\n{self.log_tail()}") from None
                return False
        wait_for(f"{self.name} to finish recovery", promoted, timeout=timeout,
                 on_timeout=self.log_tail)

    def switch_wal(self) -> str:
        """Force a WAL switch after making sure there is something to switch away from;
        return the name of the segment that was completed."""
        self.sql("select pg_logical_emit_message(false, 'pgsafe-test', 'switch')")
        return str(self.scalar("select pg_walfile_name(pg_switch_wal())"))

    def wait_archived(self, segment: str, timeout: float = START_TIMEOUT) -> None:
        """Wait until the server's archiver reports ``segment`` archived (its .done file)."""
        done = self.pgdata / "pg_wal" / "archive_status" / f"{segment}.done"
        def why() -> str:
            row = self.sql("select archived_count, last_archived_wal, failed_count, "
                           "last_failed_wal from pg_stat_archiver")
            return f"pg_stat_archiver: {row}\n--- server log ---\n{self.log_tail()}"
        def archived() -> bool:
            if done.exists():
                return True
            # The .done file goes when a checkpoint recycles the segment; the archiver's
            # statistics still tell (archiving is in order within a timeline).
            last = self.scalar("select last_archived_wal from pg_stat_archiver")
            return (last is not None and str(last)[:8] == segment[:8]
                    and str(last)[:24] >= segment)
        wait_for(f"{segment} to be archived", archived, timeout=timeout, on_timeout=why)

    def switch_and_wait_archived(self) -> str:
        seg = self.switch_wal()
        self.wait_archived(seg)
        return seg

    def log_tail(self, lines: int = 60) -> str:
        try:
            return "\n".join(self.logfile.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return "(no server log)"

    # -- internals -----------------------------------------------------------------

    def _run_server_cmd(self, argv: Sequence[str | os.PathLike[str]]) -> subprocess.CompletedProcess[str]:
        # cwd: a directory the server user can enter (the checkout may not be one).
        return subprocess.run(as_server_user(argv), cwd=self.workdir, env=clean_env(),
                              capture_output=True, text=True, check=True,
                              timeout=START_TIMEOUT + 60)

    def __repr__(self) -> str:
        return f"PgCluster({self.name}, pgdata={self.pgdata}, port={self.port})"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie is dead for our purposes.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


# -- pgsafe around a cluster ---------------------------------------------------------

@dataclass
class PgsafeEnv:
    """A cluster archiving into a pgsafe repository, with the config file that says so."""

    cluster: PgCluster
    workdir: Path
    repo: Path
    config: Path
    lab: "Lab"
    bin: Path = PGSAFE_BIN
    background: list[subprocess.Popen[str]] = field(default_factory=list)

    def argv(self, *args: str | os.PathLike[str], user: str | None = None,
             config: Path | None = None) -> list[str]:
        return pgsafe_argv(config or self.config, *args, user=user, bin=self.bin)

    def run(self, *args: str | os.PathLike[str], check: bool = True, user: str | None = None,
            timeout: float = COMMAND_TIMEOUT, config: Path | None = None) -> subprocess.CompletedProcess[str]:
        """Run ``pgsafe --config <cfg> args...``; with check, fail the test on non-zero exit."""
        proc = run_pgsafe(self.config if config is None else config, *args, user=user,
                          timeout=timeout, bin=self.bin)
        if check and proc.returncode != 0:
            raise AssertionError(
                f"pgsafe {' '.join(map(str, args))} exited {proc.returncode}\n"
                f"--- stdout ---\n{proc.stdout}\n--- stderr ---\n{proc.stderr}\n"
                f"--- server log ---\n{self.cluster.log_tail(30)}"
            )
        return proc

    def spawn(self, *args: str | os.PathLike[str], user: str | None = None) -> subprocess.Popen[str]:
        """Start pgsafe in the background; it is killed at teardown if still running."""
        proc = subprocess.Popen(self.argv(*args, user=user), stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, cwd="/tmp", env=clean_env(),
                                stdin=subprocess.DEVNULL, start_new_session=True)
        self.background.append(proc)
        return proc

    def info(self) -> dict[str, Any]:
        return json.loads(self.run("info", "--output", "json").stdout)

    def backups(self) -> list[dict[str, Any]]:
        clusters = self.info()["clusters"]
        assert len(clusters) == 1, clusters
        return list(clusters[0]["backups"])

    def backup(self, *extra: str) -> dict[str, Any]:
        """Take a full backup; return its entry from ``info``."""
        before = {b["id"] for b in self.backups()}
        self.run("backup", "--type", "full", *extra)
        new = [b for b in self.backups() if b["id"] not in before]
        assert len(new) == 1, f"expected exactly one new backup in info, got {new}"
        return new[0]

    def restore(self, target_dir: Path, *extra: str, check: bool = True,
                user: str | None = None) -> subprocess.CompletedProcess[str]:
        return self.run("restore", "--target-dir", target_dir, *extra, check=check, user=user)

    def new_target_dir(self) -> Path:
        """A path for a restore target that does not exist yet, inside a directory the
        server user owns."""
        return self.lab.tmp.make("pgsafe-restore-") / "pgdata"

    def restored_cluster(self, target_dir: Path, name: str = "restored") -> PgCluster:
        """A PgCluster for a restored data directory (not started)."""
        fix_ownership(target_dir)
        return self.lab.make_cluster(pgdata=target_dir, name=name)

    def restore_and_start(self, *extra: str, archive: bool = False, wait_promoted: bool = True,
                          name: str = "restored") -> PgCluster:
        """Restore into a fresh directory, start it as a second server and (by default)
        wait until recovery has finished and it has been promoted.

        The restored server does not archive (``archive=False``): several restores of
        one repository would otherwise each add a timeline to it and change what
        later restores in the same test find.
        """
        target = self.new_target_dir()
        self.restore(target, *extra)
        pg = self.restored_cluster(target, name=name)
        pg.start_options["archive_mode"] = "on" if archive else "off"
        pg.start()
        if wait_promoted:
            pg.wait_promoted()
        return pg

    def write_config(self, text: str, name: str = "pgsafe.toml") -> Path:
        path = self.workdir / name
        path.write_text(text)
        path.chmod(0o644)
        return path


def pgsafe_argv(config: Path | None, *args: str | os.PathLike[str], user: str | None = None,
                bin: Path = PGSAFE_BIN) -> list[str]:
    head: list[str | os.PathLike[str]] = [bin] + (["--config", config] if config is not None else [])
    return as_user([*head, *args], user)


def run_pgsafe(config: Path | None, *args: str | os.PathLike[str], user: str | None = None,
               timeout: float = COMMAND_TIMEOUT, bin: Path = PGSAFE_BIN,
               extra_env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run pgsafe (with ``--config config`` unless config is None); never raises on failure."""
    return subprocess.run(pgsafe_argv(config, *args, user=user, bin=bin), capture_output=True,
                          text=True, timeout=timeout, cwd="/tmp",
                          env=clean_env(**(extra_env or {})), stdin=subprocess.DEVNULL)


def fix_ownership(pgdata: Path) -> None:
    """Make a restored data directory usable by the server user.

    Whether a restore run as root hands its files to the server's owner is checked by a
    test of its own; every other test just needs a server that starts.
    """
    uid, gid = server_uid_gid()
    st = pgdata.stat()
    if (st.st_uid, st.st_gid) != (uid, gid):
        chown_tree(pgdata, uid, gid)
        for link in (pgdata / "pg_tblspc").iterdir() if (pgdata / "pg_tblspc").is_dir() else []:
            if link.is_symlink():
                chown_tree(link.resolve(), uid, gid)
    mode = pgdata.stat().st_mode & 0o777
    if mode not in (0o700, 0o750):
        pgdata.chmod(0o700)


def config_text(repo: Path, pgdata: Path, socket_dir: Path, port: int,
                compression: str = "zstd", level: int = 3) -> str:
    return (
        "[repo.main]\n"
        f'path = "{repo}"\n'
        f'compression = "{compression}"\n'
        f"compression_level = {level}\n"
        "\n"
        "[cluster.main]\n"
        f'pgdata = "{pgdata}"\n'
        f'host = "{socket_dir}"\n'
        f"port = {port}\n"
        f'user = "{SERVER_USER}"\n'
    )


def table_digest(pg: PgCluster, table: str, order_by: str | None = None) -> tuple[int, str]:
    """(row count, md5 of every row in a fixed order) of a table."""
    order = order_by or "t::text"
    row = pg.sql(f"select count(*), md5(coalesce(string_agg(t::text, E'\\n' order by {order}), '')) "
                 f"from {table} t")[0]
    return int(row[0]), str(row[1])


def assert_clean_error(proc: subprocess.CompletedProcess[str], code: int, *words: str) -> None:
    """A failure the way pgsafe promises it: the exit code, one line on stderr, no
    traceback, and the message mentions each of ``words`` (case-insensitive)."""
    detail = f"exit {proc.returncode}\n--- stdout ---\n{proc.stdout}\n--- stderr ---\n{proc.stderr}"
    assert proc.returncode == code, f"expected exit {code}, got {detail}"
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout, detail
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected exactly one line on stderr, got {detail}"
    for word in words:
        assert word.lower() in lines[0].lower(), f"{word!r} not in the error message: {detail}"


# -- everything a test (or a module) made, and its cleanup ---------------------------

class Lab:
    """Owns the directories, servers and background processes of one fixture scope."""

    def __init__(self, pgsafe_bin: Path = PGSAFE_BIN) -> None:
        self.tmp = TempDirs()
        self.clusters: list[PgCluster] = []
        self.envs: list[PgsafeEnv] = []
        self.pgsafe_bin = pgsafe_bin

    def make_cluster(self, pgdata: Path | None = None, name: str | None = None,
                     init: bool = True, start: bool = False, **settings: Any) -> PgCluster:
        """A new cluster (initdb, not started) or, with pgdata, one over an existing data
        directory. ``settings`` go to postgresql.auto.conf; start=True starts it."""
        pg = PgCluster(self.tmp.make(), pgdata=pgdata, name=name or f"pg{len(self.clusters) + 1}")
        self.clusters.append(pg)
        if pgdata is None and init:
            pg.initdb()
        if settings:
            pg.configure(**settings)
        if start:
            pg.start()
        return pg

    def make_env(self, init: bool = True, settings: dict[str, Any] | None = None,
                 compression: str = "zstd", start: bool = True) -> PgsafeEnv:
        """A cluster with WAL archiving through pgsafe, a repository path (created by
        `pgsafe init` when init=True) and the config file that ties them together."""
        work = self.tmp.make("pgsafe-env-")
        repo = work / "repo"
        config = work / "pgsafe.toml"
        pg = self.make_cluster(name=f"source{len(self.envs) + 1}")
        config.write_text(config_text(repo, pg.pgdata, pg.socket_dir, pg.port, compression))
        config.chmod(0o644)
        pg.configure(**{
            "wal_level": "replica",
            "archive_mode": "on",
            "archive_command": f"{self.pgsafe_bin} --config {config} archive-push %p",
            **(settings or {}),
        })
        env = PgsafeEnv(cluster=pg, workdir=work, repo=repo, config=config, lab=self,
                        bin=self.pgsafe_bin)
        self.envs.append(env)
        if start:
            pg.start()
        if init:
            env.run("init")
        return env

    def cleanup(self, show_logs: bool = False) -> None:
        for env in self.envs:
            for proc in env.background:
                if proc.poll() is None:
                    try:
                        os.killpg(proc.pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                try:
                    proc.communicate(timeout=30)
                except subprocess.TimeoutExpired:
                    pass
        for pg in self.clusters:
            if show_logs and pg.logfile.exists():
                print(f"\n--- {pg.name} ({pg.pgdata}) server log, last lines ---\n{pg.log_tail(40)}")
            try:
                pg.stop("immediate")
            except Exception:
                pass
            if pg.is_running():
                pg.kill9()
        self.tmp.cleanup()
