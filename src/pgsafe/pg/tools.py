"""Finding PostgreSQL's programs (pg_dump, pg_restore, pg_dumpall, psql, postgres) of
a given major version.

pg_dump refuses a server newer than itself and its archives are read best by the
pg_restore of the same release, so pgsafe runs the programs of the server's major
version. They are looked for, in order, in ``$PGSAFE_PG_BIN``, the packagers' usual
places for that major version, then ``$PATH``; each candidate's ``--version`` must
report that major version.

To support a new packaging layout, add its directory pattern to ``BIN_DIRS``.
"""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
from functools import lru_cache
from typing import Any

from pgsafe.errors import ToolMissing

BIN_DIRS = (
    "/usr/lib/postgresql/{major}/bin",        # Debian, Ubuntu (PGDG apt)
    "/usr/pgsql-{major}/bin",                 # RHEL, Rocky, Fedora (PGDG yum)
    "/usr/local/pgsql-{major}/bin",
    "/opt/homebrew/opt/postgresql@{major}/bin",
    "/usr/local/opt/postgresql@{major}/bin",
    "/usr/local/pgsql/bin",                   # built from source
)
_VERSION = re.compile(r"\(PostgreSQL\)\s+(\d+)(?:\.(\d+))?")


def find_tool(name: str, major: int) -> str:
    """Absolute path of program `name` of PostgreSQL `major`; ToolMissing names what
    is missing and where it was looked for."""
    found, looked = _search(name, major)
    if found is not None:
        return found
    package = "postgresql" if name in ("postgres", "pg_ctl") else "postgresql-client"
    raise ToolMissing(
        f"{name} of PostgreSQL {major} not found (looked in {', '.join(looked)}); install the "
        f"PostgreSQL {major} programs (e.g. {package}-{major}) or set PGSAFE_PG_BIN to their directory"
    )


def tool_version(path: str) -> tuple[int, str]:
    """(major, full version text) reported by `path --version`, e.g. (15, '15.18')."""
    major, text = _version(path)
    if major is None:
        raise ToolMissing(f"{path} --version did not report a PostgreSQL version")
    return major, text


@lru_cache(maxsize=None)
def _search(name: str, major: int) -> tuple[str | None, tuple[str, ...]]:
    dirs: list[str] = []
    if os.environ.get("PGSAFE_PG_BIN"):
        dirs.append(os.environ["PGSAFE_PG_BIN"])
    dirs.extend(d.format(major=major) for d in BIN_DIRS)
    dirs.extend(p for p in os.environ.get("PATH", "").split(os.pathsep) if p)
    looked: list[str] = []
    seen: set[str] = set()
    for directory in dirs:
        path = os.path.join(directory, name)
        real = os.path.realpath(path)
        if directory in looked or real in seen:
            continue
        looked.append(directory)
        if not (os.path.isfile(path) and os.access(path, os.X_OK)):
            continue
        seen.add(real)
        if _version(path)[0] == major:
            return path, tuple(looked)
    return None, tuple(looked)


@lru_cache(maxsize=None)
def _version(path: str) -> tuple[int | None, str]:
    try:
        out = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=30,
                             stdin=subprocess.DEVNULL).stdout
    except (OSError, subprocess.SubprocessError):
        return None, ""
    m = _VERSION.search(out)
    if not m:
        return None, out.strip()
    return int(m.group(1)), m.group(1) + (f".{m.group(2)}" if m.group(2) else "")


class ToolProcess:
    """A PostgreSQL program running in its own session (so that a Ctrl-C reaches
    pgsafe only, which then stops it), its standard error kept in a temporary file
    for the error message. Standard output goes where asked (a pipe by default)."""

    def __init__(self, argv: list[str], *, stdin: Any = subprocess.DEVNULL, stdout: Any = subprocess.PIPE,
                 env: dict[str, str] | None = None) -> None:
        self.program = os.path.basename(argv[0])
        self.stderr = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(argv, stdin=stdin, stdout=stdout, stderr=self.stderr,
                                     start_new_session=True, env=env or tool_env())

    @property
    def stdin(self) -> Any:
        return self.proc.stdin

    @property
    def stdout(self) -> Any:
        return self.proc.stdout

    def wait(self) -> int:
        if self.proc.stdin is not None and not self.proc.stdin.closed:
            try:
                self.proc.stdin.close()
            except BrokenPipeError:
                pass
        return self.proc.wait()

    def stop(self) -> None:
        """Terminate it if it still runs; always safe to call."""
        if self.proc.poll() is None:
            try:
                self.proc.terminate()
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            except ProcessLookupError:
                pass
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None:
                try:
                    stream.close()
                except OSError:
                    pass

    def error_text(self) -> str:
        self.stderr.seek(0)
        return self.stderr.read().decode(errors="replace")

    def failure(self) -> str:
        """One line: the program's first error (and the statement that failed), with
        the count of further errors."""
        return summarize_errors(self.program, self.error_text(), self.proc.returncode)

    def close(self) -> None:
        self.stop()
        self.stderr.close()


def summarize_errors(program: str, text: str, returncode: int | None) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    errors = [i for i, ln in enumerate(lines) if _ERROR.search(ln)]
    if not errors:
        last = lines[-1] if lines else "no error message"
        return f"{program} failed (exit {returncode}): {last}"
    first = lines[errors[0]]
    first = re.sub(rf"^{re.escape(program)}: (error: )?", "", first)
    detail = ""
    for ln in lines[errors[0] + 1:errors[0] + 4]:
        if ln.startswith(("Command was:", "DETAIL:", "LINE ")) or "DETAIL:" in ln:
            detail = "; " + ln
            break
    more = f" (and {len(errors) - 1} more errors)" if len(errors) > 1 else ""
    message = f"{program} failed: {first}{detail}{more}"
    return message if len(message) <= 600 else message[:597] + "..."


_ERROR = re.compile(r"(^|\s|:)(error|ERROR|FATAL|PANIC):")


def tool_env() -> dict[str, str]:
    """The environment for PostgreSQL's programs: ours. The explicit connection string
    wins over PG* variables for what it names; passwords (PGPASSWORD, .pgpass), service
    files and SSL settings keep working as for pgsafe's own connections."""
    return dict(os.environ)


def conninfo_string(kwargs: dict[str, Any], dbname: str | None = None, application: str = "pgsafe") -> str:
    from psycopg.conninfo import make_conninfo

    values = dict(kwargs)
    if dbname is not None:
        values["dbname"] = dbname
    values.setdefault("application_name", application)
    return make_conninfo(**{k: str(v) for k, v in values.items()})
