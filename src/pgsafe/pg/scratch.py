"""A throwaway PostgreSQL server over a restored data directory.

It is started straight from the ``postgres`` binary (no pg_ctl), in its own session,
as the owner of the data directory when pgsafe runs as root. Nothing of the source's
configuration that could reach outside the scratch directory is used: pgsafe writes
its own configuration file and passes every setting that matters on the command line
(which outranks ``postgresql.auto.conf``):

- no TCP listener (``listen_addresses = ''``); a Unix socket in a private directory,
  under a port number that was free when chosen;
- ``archive_mode = off``: a scratch server never pushes WAL into the repository;
- ``hot_standby = off``: no connection is accepted until recovery has ended, and the
  checks of max_connections & co. against the primary's values do not apply;
- its own ``pg_hba.conf`` (local trust: only the socket's owner can reach it) and no
  ``shared_preload_libraries``, ``ssl``, ``external_pid_file``, ``data_directory``
  or ``include`` from the source's ``postgresql.conf``, which could point at the live
  cluster's files.

Recovery settings (``restore_command``, the target) come from ``postgresql.auto.conf``
as written by the restore. ``stop()`` ends the server with an immediate shutdown and,
if it lingers, kills its whole process group; it is safe to call more than once.
"""

from __future__ import annotations

import os
import pwd
import re
import signal
import socket
import subprocess
import time
from typing import Any, Callable

from pgsafe.errors import PostgresError
from pgsafe.pg.tools import find_tool

RESTORED = re.compile(rb'restored log file "([0-9A-F]{24}(?:\.partial)?|[0-9A-F]{8}\.history)"')
FATAL = re.compile(rb"(?:FATAL|PANIC):\s+(.*)")
SOCKET_PATH_MAX = 100  # sun_path is 108 bytes including ".s.PGSQL.NNNNN"


class ScratchServer:
    def __init__(self, pgdata: str, workdir: str, major: int, user: str | None = None) -> None:
        self.pgdata = os.path.abspath(pgdata)
        self.workdir = os.path.abspath(workdir)
        self.postgres = find_tool("postgres", major)
        st = os.stat(self.pgdata)
        self.uid, self.gid = st.st_uid, st.st_gid
        self.user = user or _user_name(self.uid)
        self.port = _free_port()
        self.socket_dir = os.path.join(self.workdir, "socket")
        self.logfile = os.path.join(self.workdir, "server.log")
        self.proc: subprocess.Popen[bytes] | None = None
        self._log_offset = 0

    # -- lifecycle --------------------------------------------------------------

    def start(self) -> None:
        if len(self.socket_dir) > SOCKET_PATH_MAX:
            raise PostgresError(f"scratch directory {self.workdir} is too long for a Unix socket path; "
                                "choose a shorter --scratch-dir")
        os.makedirs(self.socket_dir, 0o700, exist_ok=True)
        conf = os.path.join(self.workdir, "postgresql.conf")
        hba = os.path.join(self.workdir, "pg_hba.conf")
        ident = os.path.join(self.workdir, "pg_ident.conf")
        _write(conf, "# a throwaway server started by pgsafe; every setting is on its command line\n")
        _write(hba, "local all all trust\n")
        _write(ident, "")
        for path in (self.socket_dir, conf, hba, ident):
            self._own(path)
        settings = {
            "config_file": conf,
            "hba_file": hba,
            "ident_file": ident,
            "data_directory": self.pgdata,
            "port": str(self.port),
            "listen_addresses": "",
            "unix_socket_directories": self.socket_dir,
            "unix_socket_permissions": "0700",
            "archive_mode": "off",
            "hot_standby": "off",
            "ssl": "off",
            "shared_preload_libraries": "",
            "external_pid_file": "",
            "cluster_name": "pgsafe-scratch",
            "logging_collector": "off",
            "log_destination": "stderr",
            "log_line_prefix": "%m [%p] ",
            "fsync": "off",  # a crash of a throwaway server loses nothing
            "synchronous_commit": "off",
            "max_wal_senders": "0",
            "max_replication_slots": "0",
        }
        argv = [self.postgres, "-D", self.pgdata]
        for key, value in settings.items():
            argv += ["-c", f"{key}={value}"]
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env.setdefault("LANG", "C.UTF-8")
        log = open(self.logfile, "ab")
        try:
            self.proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log, cwd=self.workdir, env=env,
                start_new_session=True, **self._as_owner())
        finally:
            log.close()

    def stop(self) -> None:
        """Immediate shutdown (nothing is worth a checkpoint), then SIGKILL for anything
        left in the server's process group."""
        proc = self.proc
        if proc is None:
            return
        if proc.poll() is None:
            try:
                proc.send_signal(signal.SIGQUIT)
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                pass
            except ProcessLookupError:
                pass
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # children such as a running restore_command
        except (ProcessLookupError, PermissionError):
            pass
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pass
        self._wait_group_gone(proc.pid)
        self.proc = None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    # -- waiting for recovery -----------------------------------------------------

    def wait_promoted(self, on_wal: Callable[[str], None] | None = None, poll: float = 0.5) -> None:
        """Wait until recovery has reached its target and the server accepts writes.
        Reports each WAL file restored from the archive; fails with the server's last
        FATAL message if it stops instead."""
        import psycopg

        while True:
            last = self._restored_wal()
            if last and on_wal is not None:
                on_wal(last)
            if self.proc is None or self.proc.poll() is not None:
                raise PostgresError(f"the scratch server stopped during recovery: {self.last_fatal()}")
            try:
                with psycopg.connect(**self.conninfo("postgres"), autocommit=True, connect_timeout=5,
                                     application_name="pgsafe") as conn:
                    row = conn.execute("select pg_is_in_recovery()").fetchone()
                if row is not None and not row[0]:
                    return
            except psycopg.OperationalError:
                pass  # still recovering: hot_standby is off
            time.sleep(poll)

    def conninfo(self, dbname: str) -> dict[str, Any]:
        return {"host": self.socket_dir, "port": self.port, "user": self.user, "dbname": dbname}

    def last_fatal(self) -> str:
        try:
            with open(self.logfile, "rb") as f:
                lines = f.read().splitlines()
        except OSError:
            return "no server log"
        for line in reversed(lines):
            m = FATAL.search(line)
            if m:
                return m.group(1).decode(errors="replace").strip()
        tail = [ln.decode(errors="replace") for ln in lines[-3:]]
        return " / ".join(tail) if tail else "the server log is empty"

    # -- internals ----------------------------------------------------------------

    def _restored_wal(self) -> str | None:
        try:
            with open(self.logfile, "rb") as f:
                f.seek(self._log_offset)
                data = f.read()
        except OSError:
            return None
        cut = data.rfind(b"\n") + 1
        self._log_offset += cut
        found = RESTORED.findall(data[:cut])
        return found[-1].decode() if found else None

    def _as_owner(self) -> dict[str, Any]:
        if os.geteuid() != 0 or self.uid == 0:
            return {}
        return {"user": self.uid, "group": self.gid, "extra_groups": []}

    def _own(self, path: str) -> None:
        if os.geteuid() == 0:
            os.chown(path, self.uid, self.gid)

    def _wait_group_gone(self, pgid: int, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and _group_alive(pgid):
            time.sleep(0.05)

def _group_alive(pgid: int) -> bool:
    """Is any process of the group still running? Zombies do not count: an init that
    does not reap orphans may keep them around."""
    if not os.path.isdir("/proc/self"):
        try:
            os.killpg(pgid, 0)
            return True
        except (ProcessLookupError, PermissionError):
            return False
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != b"Z":
            return True
    return False


def _free_port() -> int:
    """A port number no local server listens on; the scratch server opens no TCP socket,
    but the number also names its Unix socket and must not look like another server's."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return "postgres"


def _write(path: str, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)
