"""S3 driver (Amazon S3 and compatible stores), through obstore.

Keys live under the repository's prefix in one bucket. Credentials come from the
standard AWS chain, never from the repository: the AWS_* variables, else the static
keys of a profile in the shared credentials file (AWS_PROFILE, default "default"),
else what obstore finds itself (web identity, container and instance credentials).

Writing. A writer keeps up to SINGLE_PUT_MAX bytes in memory; an object that fits is
sent by one PUT at commit. A larger one becomes a multipart upload of PART_SIZE parts,
at most UPLOADS_IN_FLIGHT of them being sent at once, so a writer holds about 40 MiB
at most whatever the size. Either way nothing is visible under the key until commit:
a PUT is atomic, and a multipart upload shows no object until it is completed. An
aborted upload is cancelled; one cut short by a crash or a dead store stays invisible,
holding space until the bucket's lifecycle rule for incomplete multipart uploads
removes it (obstore cannot list them, so `remove_prefix` cannot either).

Create-if-absent (commit(overwrite=False)) is a conditional PUT (If-None-Match: *),
atomic on Amazon S3 and on the compatible stores that honour the header. Two cases
fall back to check-then-write, where a writer racing between the check and the write
can be overwritten: objects larger than SINGLE_PUT_MAX (obstore completes multipart
uploads unconditionally; the repository creates exclusively WAL files, which fit in
one PUT at the default 16 MiB segment size, and metadata, which is small), and stores
that answer that they do not implement the header (then
`capabilities.exclusive_create` turns false). A store that silently ignores the header
cannot be detected.

Every request has a connect timeout and an overall timeout, and is retried by obstore
with exponential backoff for a bounded time, so no call hangs. Failures become
StorageError with a one-line message (TransientStorageError when trying again may
help); a missing object is FileNotFoundError, as on posix, but a missing bucket is a
StorageError, so that archive-get never mistakes a wrong bucket for the end of WAL.
"""

from __future__ import annotations

import configparser
import errno
import io
import ipaddress
import os
import re
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, BinaryIO, Iterator, Literal, cast
from urllib.parse import urlsplit, urlunsplit

import obstore
from obstore.exceptions import (
    AlreadyExistsError,
    BaseError,
    InvalidPathError,
    NotSupportedError,
    PermissionDeniedError,
    PreconditionError,
    UnauthenticatedError,
)
from obstore.store import S3Store

from pgsafe.storage.base import Capabilities, ObjectInfo, StorageError
from pgsafe.storage.retry import TransientStorageError

MiB = 1024 * 1024
PART_SIZE = 8 * MiB
SINGLE_PUT_MAX = 17 * MiB  # a 16 MiB WAL segment and its envelope, whatever the compression
UPLOADS_IN_FLIGHT = 2
READ_BUFFER = 4 * MiB  # ranged GETs of this size behind open()
LIST_CHUNK = 1000
DELETE_BATCH = 1000  # the most one DeleteObjects request takes


@dataclass(frozen=True)
class S3Limits:
    """Timeouts (seconds) and retries applied to every request."""

    connect_timeout: float = 10.0
    # a whole request, body included: at most SINGLE_PUT_MAX bytes (17 MiB), so this
    # asks for about 100 kB/s. (No separate stall timeout: obstore's read timeout also
    # runs while a request body is being sent, and would cut slow but healthy uploads.)
    request_timeout: float = 180.0
    max_retries: int = 5
    retry_window: float = 60.0  # no retry starts later than this after the first try
    first_backoff: float = 0.2
    max_backoff: float = 10.0


class S3Storage:
    def __init__(self, repo: Any, limits: S3Limits = S3Limits()) -> None:
        if not repo.bucket:
            raise StorageError(f"repository {repo.name!r} has type s3 but no bucket")
        self.bucket: str = repo.bucket
        self.prefix = (repo.prefix or "").strip("/")
        self.location = f"s3://{self.bucket}/{self.prefix}" if self.prefix else f"s3://{self.bucket}"
        self.capabilities = Capabilities(exclusive_create=True, local_files=False)
        self._conditional_put = True
        endpoint, allow_http, virtual_hosted = _endpoint(self.bucket, repo.endpoint, repo.path_style)
        self._server = endpoint or "AWS S3"
        config: dict[str, Any] = {"virtual_hosted_style_request": virtual_hosted}
        if endpoint:
            config["endpoint"] = endpoint
        if repo.region:
            config["region"] = repo.region
        config.update(_profile_credentials())
        self._store = S3Store(
            self.bucket,
            prefix=self.prefix or None,
            config=config,  # type: ignore[arg-type]
            client_options={
                "allow_http": allow_http,
                "connect_timeout": timedelta(seconds=limits.connect_timeout),
                "timeout": timedelta(seconds=limits.request_timeout),
            },
            retry_config={
                "max_retries": limits.max_retries,
                "retry_timeout": timedelta(seconds=limits.retry_window),
                "backoff": {
                    "init_backoff": timedelta(seconds=limits.first_backoff),
                    "max_backoff": timedelta(seconds=limits.max_backoff),
                    "base": 2,
                },
            },
        )

    # -- the Storage interface --------------------------------------------------

    def writer(self, key: str) -> "_S3Writer":
        _check_key(key)
        return _S3Writer(self, key)

    def read(self, key: str, offset: int = 0, length: int | None = None) -> bytes:
        _check_key(key)
        try:
            if length == 0:
                obstore.head(self._store, key)
                return b""
            if length is not None:
                data = obstore.get_range(self._store, key, start=offset, length=length)
            elif offset:
                data = obstore.get(self._store, key, options={"range": {"offset": offset}}).bytes()
            else:
                data = obstore.get(self._store, key).bytes()
            return bytes(data)
        except BaseException as exc:
            if _status(exc) == 416:  # the range starts at or past the end, as posix reads b""
                return b""
            raise self._error(exc, "read", key) from None

    def open(self, key: str) -> BinaryIO:
        _check_key(key)
        try:
            file = obstore.open_reader(self._store, key, buffer_size=READ_BUFFER)
        except FileNotFoundError:
            # a HEAD answers 404 without saying whether the key or the bucket is missing
            self.read(key, 0, 1)
            raise self._error(FileNotFoundError(), "open", key) from None
        except BaseException as exc:
            raise self._error(exc, "open", key) from None
        return cast(BinaryIO, _S3Reader(self, key, file))

    def stat(self, key: str) -> ObjectInfo | None:
        """None for a missing key (and for a missing bucket: HEAD answers carry no body
        to tell them apart; every other operation names the missing bucket)."""
        _check_key(key)
        try:
            meta = obstore.head(self._store, key)
        except FileNotFoundError:
            return None
        except BaseException as exc:
            raise self._error(exc, "stat", key) from None
        return ObjectInfo(key, meta["size"], meta["last_modified"].timestamp())

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        # obstore matches whole path segments ("a/b" is not a prefix of "a/bc"); the
        # interface matches characters, as the posix driver does
        if prefix.startswith("/") or "//" in prefix:
            raise StorageError(f"invalid prefix {prefix!r}")
        directory = prefix.rsplit("/", 1)[0] if "/" in prefix else ""
        try:
            for chunk in obstore.list(self._store, directory or None, chunk_size=LIST_CHUNK):
                for meta in chunk:
                    if meta["path"].startswith(prefix):
                        yield ObjectInfo(meta["path"], meta["size"], meta["last_modified"].timestamp())
        except (GeneratorExit, StorageError):
            raise
        except BaseException as exc:
            raise self._error(exc, "list", prefix) from None

    def remove(self, key: str) -> None:
        _check_key(key)
        try:
            obstore.delete(self._store, key)
        except BaseException as exc:
            if isinstance(exc, FileNotFoundError) and not _missing_bucket(exc):
                return
            raise self._error(exc, "remove", key) from None

    def remove_prefix(self, prefix: str) -> None:
        """Remove every object under prefix/ (unfinished multipart uploads are left to
        the bucket's lifecycle rule: obstore cannot list them)."""
        keys = [o.key for o in self.list(prefix.rstrip("/") + "/")]
        for start in range(0, len(keys), DELETE_BATCH):
            batch = keys[start:start + DELETE_BATCH]
            try:
                obstore.delete(self._store, batch)
            except BaseException as exc:
                raise self._error(exc, "remove", prefix + "/") from None

    def local_path(self, key: str) -> str:
        raise StorageError(f"{self.location} is object storage: it has no local files")

    # -- helpers ----------------------------------------------------------------

    def _put(self, key: str, data: bytes, overwrite: bool) -> bool:
        """One PUT; with overwrite=False, False when the key exists (nothing written)."""
        if not overwrite and not self._conditional_put:
            if self.stat(key) is not None:
                return False
        exclusive = not overwrite and self._conditional_put
        mode: Literal["overwrite", "create"] = "create" if exclusive else "overwrite"
        try:
            obstore.put(self._store, key, data, mode=mode, use_multipart=False)
        except (AlreadyExistsError, PreconditionError):
            return False
        except BaseException as exc:
            if mode == "create" and (isinstance(exc, NotSupportedError) or _status(exc) == 501):
                # this store does not implement If-None-Match: check, then write
                self._conditional_put = False
                self.capabilities = Capabilities(exclusive_create=False, local_files=False)
                return self._put(key, data, overwrite)
            raise self._error(exc, "write", key) from None
        return True

    def _error(self, exc: BaseException, action: str, key: str) -> BaseException:
        """The exception to raise for an obstore failure: one line, naming the object."""
        if isinstance(exc, (StorageError, KeyboardInterrupt, SystemExit, MemoryError)):
            return exc
        where = f"{self.location}/{key}" if key else self.location
        if _missing_bucket(exc):
            return StorageError(f"cannot {action} {where}: bucket {self.bucket!r} does not exist "
                                f"at {self._server}")
        if isinstance(exc, FileNotFoundError):
            return FileNotFoundError(errno.ENOENT, "no such object", where)
        if isinstance(exc, (PermissionDeniedError, UnauthenticatedError)):
            return StorageError(f"cannot {action} {where}: access denied by {self._server} "
                                f"({_summary(exc)}); check the AWS credentials and the bucket policy")
        if isinstance(exc, (InvalidPathError, ValueError)):
            return StorageError(f"cannot {action} {where}: invalid key ({_summary(exc)})")
        status = _status(exc)
        if isinstance(exc, BaseError) and (status is None or status >= 500 or status in (408, 429)):
            return TransientStorageError(f"cannot {action} {where}: {_summary(exc)} ({self._server})")
        return StorageError(f"cannot {action} {where}: {_summary(exc)} ({self._server})")


class _S3Writer:
    """An object being written; see the module docstring for how it reaches the store."""

    def __init__(self, storage: S3Storage, key: str) -> None:
        self.storage = storage
        self.key = key
        self._pending: list[bytes] = []  # written, not yet handed to obstore
        self._pending_size = 0
        self._size = 0
        self._upload: Any = None  # obstore's WritableFile once the object is multipart
        self._done = False

    def write(self, data: bytes | memoryview) -> None:
        if self._done:
            raise StorageError(f"{self.storage.location}/{self.key}: write after commit or abort")
        # obstore keeps a reference to what it is given: copy anything mutable
        chunk = data if isinstance(data, bytes) else bytes(data)
        if not chunk:
            return
        self._pending.append(chunk)
        self._pending_size += len(chunk)
        self._size += len(chunk)
        if self._upload is None and self._pending_size > SINGLE_PUT_MAX:
            self._start_upload()
        if self._upload is not None and self._pending_size >= PART_SIZE:
            self._send()

    def tell(self) -> int:
        return self._size

    def commit(self, overwrite: bool = True) -> bool:
        if self._done:
            raise StorageError(f"{self.storage.location}/{self.key}: commit after commit or abort")
        try:
            if self._upload is None:
                data = b"".join(self._pending)
                self._pending = []
                self._done = True
                return self.storage._put(self.key, data, overwrite)
            self._send()
            if not overwrite and self.storage.stat(self.key) is not None:
                self.abort()
                return False
            upload, self._upload = self._upload, None
            self._done = True
            try:
                upload.close()  # completes the multipart upload: the object appears now
            except BaseException as exc:
                raise self.storage._error(exc, "write", self.key) from None
            return True
        except BaseException:
            self.abort()
            raise

    def abort(self) -> None:
        self._done = True
        self._pending = []
        upload, self._upload = self._upload, None
        if upload is not None:
            try:
                # obstore aborts the multipart upload when its context exits with an error
                upload.__exit__(StorageError, StorageError("aborted"), None)
            except Exception:
                pass  # unreachable store: the unfinished upload stays invisible

    def __enter__(self) -> "_S3Writer":
        return self

    def __exit__(self, exc_type: object, *_: object) -> None:
        if not self._done:
            self.abort()

    def _start_upload(self) -> None:
        try:
            self._upload = obstore.open_writer(self.storage._store, self.key, buffer_size=PART_SIZE,
                                               max_concurrency=UPLOADS_IN_FLIGHT)
        except BaseException as exc:
            self.abort()
            raise self.storage._error(exc, "write", self.key) from None

    def _send(self) -> None:
        if not self._pending:
            return
        data = self._pending[0] if len(self._pending) == 1 else b"".join(self._pending)
        self._pending = []
        self._pending_size = 0
        try:
            self._upload.write(data)  # waits while UPLOADS_IN_FLIGHT parts are being sent
        except BaseException as exc:
            self.abort()
            raise self.storage._error(exc, "write", self.key) from None


class _S3Reader(io.RawIOBase):
    """A readable stream over ranged GETs; read(n) returns bytes."""

    def __init__(self, storage: S3Storage, key: str, file: Any) -> None:
        super().__init__()
        self._storage = storage
        self._key = key
        self._file = file

    def readable(self) -> bool:
        return True

    def read(self, size: int | None = -1) -> bytes:
        try:
            return bytes(self._file.read(None if size is None or size < 0 else size))
        except BaseException as exc:
            raise self._storage._error(exc, "read", self._key) from None

    def readall(self) -> bytes:
        return self.read(-1)

    def readinto(self, buffer: Any) -> int:
        data = self.read(len(memoryview(buffer).cast("B")))
        memoryview(buffer).cast("B")[:len(data)] = data
        return len(data)

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        return int(self._file.seek(offset, whence))

    def tell(self) -> int:
        return int(self._file.tell())

    def close(self) -> None:
        self._file.close()
        super().close()


# -- configuration ------------------------------------------------------------------


def _endpoint(bucket: str, endpoint: str | None, path_style: bool) -> tuple[str | None, bool, bool]:
    """(endpoint for obstore, allow plain http, virtual-hosted-style requests)."""
    if not endpoint:
        return None, False, not path_style
    parts = urlsplit(endpoint)
    host = parts.hostname or ""
    if parts.scheme not in ("http", "https") or not host:
        raise StorageError(f"S3 endpoint {endpoint!r} is not an http(s) URL")
    allow_http = parts.scheme == "http"
    if allow_http and not _is_loopback(host):
        raise StorageError(f"S3 endpoint {endpoint!r} uses plain http, which is only allowed "
                           "on the loopback interface; use https")
    if path_style:
        return endpoint.rstrip("/"), allow_http, False
    # virtual-hosted style: obstore wants the bucket in the endpoint's host name
    netloc = f"{bucket}.{parts.netloc}"
    return urlunsplit((parts.scheme, netloc, parts.path.rstrip("/"), "", "")), allow_http, True


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _profile_credentials() -> dict[str, str]:
    """Static keys of the AWS profile, when the environment carries none."""
    if os.environ.get("AWS_ACCESS_KEY_ID"):
        return {}
    explicit = os.environ.get("AWS_PROFILE") or os.environ.get("AWS_DEFAULT_PROFILE")
    profile = explicit or "default"
    path = os.environ.get("AWS_SHARED_CREDENTIALS_FILE") or os.path.expanduser("~/.aws/credentials")
    parser = configparser.RawConfigParser()
    try:
        parser.read(path)
    except configparser.Error as exc:
        raise StorageError(f"cannot read AWS credentials file {path}: {exc.message}") from None
    if all(parser.has_option(profile, o) for o in ("aws_access_key_id", "aws_secret_access_key")):
        creds = {
            "access_key_id": parser.get(profile, "aws_access_key_id"),
            "secret_access_key": parser.get(profile, "aws_secret_access_key"),
        }
        if parser.has_option(profile, "aws_session_token"):
            creds["session_token"] = parser.get(profile, "aws_session_token")
        return creds
    if explicit:
        raise StorageError(f"AWS profile {profile!r} has no static keys in {path} (SSO and role "
                           "profiles are not supported: export AWS_ACCESS_KEY_ID and "
                           "AWS_SECRET_ACCESS_KEY instead)")
    return {}  # instance, container or web identity credentials, found by obstore


def _check_key(key: str) -> None:
    parts = key.split("/")
    if not key or key.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise StorageError(f"invalid key {key!r}")


# -- obstore's errors ---------------------------------------------------------------

_STATUS = re.compile(r"status code: (\d{3})((?: [A-Za-z][A-Za-z ]*)?)")
_ROOT_CAUSE = re.compile(r'message: "([^"]+)"')
_RETRIES = re.compile(r"after (\d+) retries")
_S3_CODE = re.compile(r"<Code>(\w+)</Code>")


def _status(exc: BaseException) -> int | None:
    match = _STATUS.search(str(exc)) if isinstance(exc, BaseError) else None
    return int(match.group(1)) if match else None


def _missing_bucket(exc: BaseException) -> bool:
    # obstore reports a missing bucket as a missing object; only the body tells them apart
    return "<Code>NoSuchBucket</Code>" in str(exc)


def _summary(exc: BaseException) -> str:
    """obstore's message is a page of debug output; keep what a person needs."""
    text = str(exc)
    status = _STATUS.search(text)
    if status:
        cause = f"HTTP {status.group(1)}{status.group(2).rstrip()}"
        code = _S3_CODE.search(text)
        if code:
            cause += f" ({code.group(1)})"
    else:
        roots = _ROOT_CAUSE.findall(text)
        first = text.split("\n", 1)[0]
        if roots:
            cause = roots[-1].lower()
        elif "timed out" in text.lower() or "timeout" in first.lower():
            cause = "timed out"
        else:
            cause = first.rsplit(" - ", 1)[-1].strip() or type(exc).__name__
    retries = _RETRIES.search(text)
    if retries and retries.group(1) != "0":
        cause += f", after {retries.group(1)} retries"
    return cause[:300]
