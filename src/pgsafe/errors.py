"""User-facing errors and their stable exit codes.

Every error a user can cause or meet is a subclass of :class:`PgsafeError` with a
one-line message and a fixed exit code. The CLI maps them in one place; the table is
documented in ``docs/EXIT_CODES.md`` and only ever grows.
"""

from __future__ import annotations


class PgsafeError(Exception):
    """Base of every expected failure: a message for the user and an exit code."""

    exit_code = 99

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class NotFound(PgsafeError):
    """A WAL file or history file asked for by archive-get is not in any repository."""

    exit_code = 1


class UsageError(PgsafeError):
    """Bad command-line arguments or option values."""

    exit_code = 2


class ConfigError(PgsafeError):
    """The configuration file is missing, unreadable or invalid."""

    exit_code = 3


class RepositoryError(PgsafeError):
    """The repository is missing, not initialised, of a newer format or damaged metadata."""

    exit_code = 4


class LockedError(PgsafeError):
    """Another pgsafe process holds the lock this command needs."""

    exit_code = 5


class PostgresError(PgsafeError):
    """PostgreSQL could not be reached or refused a request."""

    exit_code = 6


class ClusterMismatch(PgsafeError):
    """The cluster's system identifier or major version differs from the repository's record."""

    exit_code = 7


class BackupFailed(PgsafeError):
    """A backup could not complete (for example its WAL did not reach the repository in time)."""

    exit_code = 8


class IntegrityError(PgsafeError):
    """Stored data does not match its checksum, or an object is missing or damaged."""

    exit_code = 9


class ArchiveConflict(PgsafeError):
    """archive-push: a different file with the same name is already archived."""

    exit_code = 10


class RestoreError(PgsafeError):
    """The restore target is unusable (non-empty directory, bad tablespace mapping, ...)."""

    exit_code = 11


class CheckFailed(PgsafeError):
    """One or more checks of `pgsafe check` failed."""

    exit_code = 12


class NoBackup(PgsafeError):
    """No backup matches: unknown backup id, or none can reach the recovery target."""

    exit_code = 13


class StorageFailure(PgsafeError):
    """Reading or writing a repository or a local file failed (I/O error, disk full,
    permission denied, object store unreachable)."""

    exit_code = 14


class PassphraseError(PgsafeError):
    """An encrypted repository's passphrase is missing or wrong; nothing was written."""

    exit_code = 15


class Interrupted(PgsafeError):
    """The command was interrupted by a signal; nothing partial was left visible."""

    exit_code = 130


class ToolMissing(PgsafeError):
    """A PostgreSQL program pgsafe needs (pg_dump, pg_restore, pg_dumpall, psql, postgres)
    of the required major version is not installed."""

    exit_code = 16
