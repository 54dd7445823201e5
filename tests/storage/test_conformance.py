"""One conformance suite for every storage driver (posix and S3, the latter against a
real S3-API server), then the S3 driver's behaviour when its server dies or hangs."""

from __future__ import annotations

import hashlib
import os
import threading
import time
from typing import Callable

import pytest

from pgsafe.config import RepoConfig
from pgsafe.storage import Storage, StorageError, open_storage
from pgsafe.storage.retry import RetryingStorage, RetryPolicy, TransientStorageError
from pgsafe.storage.s3 import PART_SIZE, SINGLE_PUT_MAX, S3Limits, S3Storage
from s3server import S3Server

MiB = 1024 * 1024
LARGE = SINGLE_PUT_MAX + 3 * MiB  # sent as a multipart upload by the S3 driver


def put(storage: Storage, key: str, data: bytes, overwrite: bool = True) -> bool:
    w = storage.writer(key)
    w.write(data)
    return w.commit(overwrite=overwrite)


def keys(storage: Storage, prefix: str) -> set[str]:
    return {o.key for o in storage.list(prefix)}


def pattern(size: int, seed: int = 0) -> bytes:
    """Incompressible, position-dependent bytes (a misplaced range shows)."""
    out = bytearray()
    counter = 0
    while len(out) < size:
        out += hashlib.sha512(f"{seed}:{counter}".encode()).digest()
        counter += 1
    return bytes(out[:size])


def stream_large(storage: Storage, key: str, total: int, step: int = MiB) -> tuple[str, bytes]:
    """Write `total` bytes in `step` writes; returns the sha256 and one sample step."""
    block = pattern(step, seed=7)
    digest = hashlib.sha256()
    w = storage.writer(key)
    try:
        for i in range(total // step):
            chunk = i.to_bytes(4, "big") + block[4:]
            w.write(chunk)
            digest.update(chunk)
            assert w.tell() == (i + 1) * step
        assert w.commit()
    except BaseException:
        w.abort()
        raise
    return digest.hexdigest(), block


# -- the conformance suite: every driver ------------------------------------------------


def test_round_trip(storage: Storage) -> None:
    assert storage.stat("a/obj") is None
    w = storage.writer("a/obj")
    w.write(b"hello ")
    w.write(memoryview(b"world"))
    assert w.tell() == 11
    assert w.commit()
    assert storage.read("a/obj") == b"hello world"
    info = storage.stat("a/obj")
    assert info is not None and info.key == "a/obj" and info.size == 11
    assert abs(info.mtime - time.time()) < 600
    with storage.open("a/obj") as f:
        assert f.read(5) == b"hello"
        assert f.read() == b" world"
        assert f.read(10) == b""


def test_empty_object(storage: Storage) -> None:
    assert put(storage, "empty", b"")
    assert storage.read("empty") == b""
    assert storage.read("empty", 0, 10) == b""
    info = storage.stat("empty")
    assert info is not None and info.size == 0
    assert keys(storage, "") == {"empty"}


def test_write_copies_mutable_buffers(storage: Storage) -> None:
    buf = bytearray(b"first")
    w = storage.writer("buf")
    w.write(memoryview(buf))
    buf[:] = b"XXXXX"
    w.write(b"!")
    assert w.commit()
    assert storage.read("buf") == b"first!"


def test_read_ranges(storage: Storage) -> None:
    data = pattern(100_000)
    put(storage, "r/obj", data)
    for offset, length in [(0, 1), (0, 100_000), (1, 99_999), (4096, 8192), (99_999, 1), (50_000, None),
                           (0, None), (90_000, 50_000), (100_000, 10), (100_000, None), (200_000, 5),
                           (10, 0)]:
        end = None if length is None else offset + length
        assert storage.read("r/obj", offset, length) == data[offset:end], (offset, length)


def test_overwrite_replaces(storage: Storage) -> None:
    put(storage, "o", b"one")
    assert put(storage, "o", b"two, longer")
    assert storage.read("o") == b"two, longer"
    assert keys(storage, "") == {"o"}


@pytest.mark.parametrize("size", [10, LARGE], ids=["small", "multipart"])
def test_create_refuses_an_existing_key(storage: Storage, size: int) -> None:
    first = pattern(size, seed=1)
    assert put(storage, "x/seg", first, overwrite=False)
    assert not put(storage, "x/seg", pattern(size, seed=2), overwrite=False)
    assert storage.read("x/seg") == first
    assert keys(storage, "x/") == {"x/seg"}
    assert storage.capabilities.exclusive_create


@pytest.mark.parametrize("size", [10, LARGE], ids=["small", "multipart"])
def test_nothing_visible_before_commit_nor_after_abort(storage: Storage, size: int) -> None:
    data = pattern(size)
    w = storage.writer("ab/obj")
    w.write(data)
    assert storage.stat("ab/obj") is None
    assert keys(storage, "") == set()
    w.abort()
    w.abort()  # idempotent, as callers abort after a failed commit
    assert storage.stat("ab/obj") is None
    assert keys(storage, "") == set()
    with pytest.raises(FileNotFoundError):
        storage.read("ab/obj")

    with pytest.raises(RuntimeError):
        with storage.writer("ab/ctx") as w:  # type: ignore[attr-defined]
            w.write(data)
            raise RuntimeError("the source went away")
    assert storage.stat("ab/ctx") is None

    w = storage.writer("ab/obj")
    w.write(data)
    assert w.commit()
    assert storage.read("ab/obj") == data


def test_large_object_streamed(storage: Storage) -> None:
    total = 40 * MiB
    digest, block = stream_large(storage, "big/obj", total)
    info = storage.stat("big/obj")
    assert info is not None and info.size == total
    # ranges across part and single-put boundaries
    for offset in (0, PART_SIZE - 3, 2 * PART_SIZE - 1, SINGLE_PUT_MAX - 2, total - 5):
        got = storage.read("big/obj", offset, 10)
        expect = b"".join(i.to_bytes(4, "big") + block[4:]
                          for i in range(offset // MiB, min((offset + 10) // MiB + 1, total // MiB)))
        start = offset - (offset // MiB) * MiB
        assert got == expect[start:start + 10], offset
    streamed = hashlib.sha256()
    with storage.open("big/obj") as f:
        while True:
            chunk = f.read(4 * MiB)
            if not chunk:
                break
            assert isinstance(chunk, bytes) and len(chunk) <= 4 * MiB
            streamed.update(chunk)
    assert streamed.hexdigest() == digest
    with storage.open("big/obj") as f:  # seek then stream, as repo copy and verify do
        f.seek(PART_SIZE + 5)
        assert f.tell() == PART_SIZE + 5
        assert f.read(3 * MiB) == storage.read("big/obj", PART_SIZE + 5, 3 * MiB)
        f.seek(total - 2)
        assert f.read(10) == storage.read("big/obj", total - 2)
    assert hashlib.sha256(storage.read("big/obj")).hexdigest() == digest


def test_list_is_recursive_by_prefix(storage: Storage) -> None:
    for key in ["c/wal/0000000100000000/000000010000000000000001",
                "c/wal/0000000100000000/000000010000000000000002",
                "c/wal/0000000100000001/000000010000000100000000",
                "c/wal/history/00000002.history",
                "c/backup/20240101/1", "c/backup/20240101/sub/2", "c/catalog/20240101.json", "d/x"]:
        put(storage, key, key.encode())
    assert keys(storage, "c/wal/") == {
        "c/wal/0000000100000000/000000010000000000000001",
        "c/wal/0000000100000000/000000010000000000000002",
        "c/wal/0000000100000001/000000010000000100000000",
        "c/wal/history/00000002.history"}
    assert keys(storage, "c/wal/0000000100000000/00000001000000000000000") == {
        "c/wal/0000000100000000/000000010000000000000001",
        "c/wal/0000000100000000/000000010000000000000002"}
    assert keys(storage, "c/backup/") == {"c/backup/20240101/1", "c/backup/20240101/sub/2"}
    assert keys(storage, "c/cat") == {"c/catalog/20240101.json"}
    assert keys(storage, "nothing/") == set()
    assert keys(storage, "") == keys(storage, "c/") | {"d/x"}
    assert len(keys(storage, "")) == 8
    sizes = {o.key: o.size for o in storage.list("c/backup/")}
    assert sizes == {"c/backup/20240101/1": 19, "c/backup/20240101/sub/2": 23}


def test_list_prefix_that_is_also_a_directory(storage: Storage, driver: str) -> None:
    for key in ["p/a/1", "p/ab/2", "p/a.json"]:
        put(storage, key, b"x")
    assert keys(storage, "p/a") == {"p/a/1", "p/ab/2", "p/a.json"}


def test_many_levels(storage: Storage) -> None:
    key = "/".join(f"level{i}" for i in range(20)) + "/leaf.bin"
    put(storage, key, b"deep")
    assert storage.read(key) == b"deep"
    assert keys(storage, "level0/level1/level2/") == {key}
    storage.remove(key)
    assert keys(storage, "") == set()


def test_remove(storage: Storage) -> None:
    put(storage, "rm/a", b"1")
    put(storage, "rm/b", b"2")
    storage.remove("rm/a")
    storage.remove("rm/a")  # absent: no error
    storage.remove("rm/never")
    assert storage.stat("rm/a") is None
    assert keys(storage, "rm/") == {"rm/b"}


def test_remove_prefix(storage: Storage) -> None:
    remaining = {"b/10/a", "b/1.json", "other/1/a"}
    for key in ["b/1/a", "b/1/c/d", "b/1/c/e/f"] + sorted(remaining):
        put(storage, key, b"x")
    remove_prefix: Callable[[str], None] = getattr(storage, "remove_prefix")
    remove_prefix("b/1")
    assert keys(storage, "") == remaining
    remove_prefix("b/1")  # nothing left there: no error
    remove_prefix("never")
    assert keys(storage, "") == remaining


def test_remove_prefix_many_objects(storage: Storage) -> None:
    for i in range(1100):  # more than one DeleteObjects batch
        put(storage, f"many/{i // 100}/{i}", b"")
    put(storage, "keep", b"")
    getattr(storage, "remove_prefix")("many")
    assert keys(storage, "") == {"keep"}


def test_missing_keys(storage: Storage) -> None:
    with pytest.raises(FileNotFoundError):
        storage.read("no/such")
    with pytest.raises(FileNotFoundError):
        storage.read("no/such", 0, 32)
    with pytest.raises(FileNotFoundError):
        storage.open("no/such")
    assert storage.stat("no/such") is None


@pytest.mark.parametrize("key", ["../escape", "a/../../b", "/absolute"])
def test_invalid_keys(storage: Storage, key: str) -> None:
    with pytest.raises(StorageError):
        storage.writer(key).commit()


def test_parallel_writers(storage: Storage) -> None:
    errors: list[BaseException] = []

    def work(n: int) -> None:
        try:
            data = pattern(3 * MiB + n, seed=n)
            put(storage, f"par/{n}", data)
            assert storage.read(f"par/{n}") == data
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(keys(storage, "par/")) == 8


def test_location_and_capabilities(storage: Storage, driver: str, request: pytest.FixtureRequest) -> None:
    if driver == "posix":
        assert storage.capabilities.local_files
        assert os.path.isabs(storage.location)
    else:
        config = request.getfixturevalue("s3_config")
        assert not storage.capabilities.local_files
        assert storage.location == f"s3://{config.bucket}/{config.prefix}"
        with pytest.raises(StorageError):
            storage.local_path("x")


# -- S3 only: configuration -------------------------------------------------------------


def test_s3_plain_http_only_on_loopback() -> None:
    config = RepoConfig(name="r", type="s3", bucket="b", endpoint="http://s3.example.net", path_style=True)
    with pytest.raises(StorageError, match="plain http"):
        open_storage(config)
    https = RepoConfig(name="r", type="s3", bucket="b", endpoint="https://s3.example.net", prefix="/p/")
    assert open_storage(https).location == "s3://b/p"  # nothing contacted yet


def test_s3_checks_signatures(s3_config: RepoConfig, monkeypatch: pytest.MonkeyPatch) -> None:
    put(open_storage(s3_config), "signed", b"x")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    wrong = open_storage(s3_config)
    with pytest.raises(StorageError) as info:
        wrong.stat("signed")
    assert not isinstance(info.value, TransientStorageError)
    assert "\n" not in str(info.value)
    with pytest.raises(StorageError, match="access denied"):
        put(wrong, "forged", b"x")


def test_s3_profile_credentials(s3_config: RepoConfig, s3_server: S3Server, tmp_path: os.PathLike[str],
                                monkeypatch: pytest.MonkeyPatch) -> None:
    creds = f"{tmp_path}/credentials"
    with open(creds, "w") as f:
        f.write(f"[backup]\naws_access_key_id = {s3_server.access_key}\n"
                f"aws_secret_access_key = {s3_server.secret_key}\n")
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", creds)
    monkeypatch.setenv("AWS_PROFILE", "backup")
    storage = open_storage(s3_config)
    put(storage, "via-profile", b"ok")
    assert storage.read("via-profile") == b"ok"
    monkeypatch.setenv("AWS_PROFILE", "absent")
    with pytest.raises(StorageError, match="profile 'absent'"):
        open_storage(s3_config)


# -- S3 only: a server that dies or hangs ------------------------------------------------

FAST = S3Limits(connect_timeout=1, request_timeout=5, max_retries=2, retry_window=3,
                first_backoff=0.1, max_backoff=0.5)
BOUND = 60.0  # seconds: generous, a hang would last forever


def fast_storage(config: RepoConfig, attempts: int = 2) -> Storage:
    policy = RetryPolicy(attempts=attempts, first_delay=0.5, max_delay=1)
    return RetryingStorage(S3Storage(config, FAST), policy)


@pytest.mark.parametrize("size", [MiB, 40 * MiB], ids=["single-put", "multipart"])
def test_s3_server_killed_while_writing(s3_server: S3Server, s3_config: RepoConfig, size: int) -> None:
    storage = fast_storage(s3_config)
    put(storage, "before", b"kept")
    block = pattern(MiB)
    w = storage.writer("victim")
    started = time.monotonic()
    with pytest.raises(StorageError) as info:
        try:
            for i in range(size // MiB):
                if i == size // MiB // 2:
                    s3_server.stop()
                w.write(block)
            w.commit()
        except BaseException:
            w.abort()
            raise
    assert time.monotonic() - started < BOUND
    message = str(info.value)
    assert "\n" not in message and "victim" in message and f"s3://{s3_config.bucket}/" in message, message
    assert isinstance(info.value, TransientStorageError)
    s3_server.start()
    assert storage.stat("victim") is None
    assert keys(storage, "") == {"before"}
    assert storage.read("before") == b"kept"
    # and writing works again
    digest, _ = stream_large(storage, "victim", size)
    assert hashlib.sha256(storage.read("victim")).hexdigest() == digest


def test_s3_server_down_fails_every_operation_quickly(s3_server: S3Server, s3_config: RepoConfig) -> None:
    storage = fast_storage(s3_config)
    put(storage, "obj", b"data")
    s3_server.stop()
    operations: list[Callable[[], object]] = [
        lambda: storage.read("obj"), lambda: storage.stat("obj"), lambda: list(storage.list("")),
        lambda: storage.remove("obj"), lambda: storage.open("obj"), lambda: put(storage, "new", b"x"),
        lambda: getattr(storage, "remove_prefix")("x"),
    ]
    for operation in operations:
        started = time.monotonic()
        with pytest.raises(TransientStorageError):
            operation()
        assert time.monotonic() - started < BOUND


def test_s3_hung_server_times_out(s3_server: S3Server, s3_config: RepoConfig) -> None:
    storage = fast_storage(s3_config, attempts=1)
    put(storage, "obj", b"data")
    w = storage.writer("hung")
    w.write(pattern(LARGE))  # a multipart upload has started

    def finish() -> None:
        w.write(pattern(2 * PART_SIZE))
        w.commit()

    s3_server.pause()
    try:
        operations: list[Callable[[], object]] = [
            lambda: storage.stat("obj"), lambda: storage.read("obj"), finish]
        for operation in operations:
            started = time.monotonic()
            with pytest.raises(StorageError):
                operation()
            assert time.monotonic() - started < BOUND
    finally:
        w.abort()
        s3_server.resume()
    assert storage.stat("hung") is None
    assert storage.read("obj") == b"data"


def test_s3_abort_cancels_the_multipart_upload(s3_server: S3Server, s3_config: RepoConfig) -> None:
    storage = open_storage(s3_config)
    w = storage.writer("mp")
    w.write(pattern(LARGE))
    assert s3_server.pending_uploads().count(f"{s3_config.prefix}/mp") == 1
    w.abort()
    assert f"{s3_config.prefix}/mp" not in s3_server.pending_uploads()
    w = storage.writer("mp")
    w.write(pattern(LARGE))
    assert w.commit()
    assert f"{s3_config.prefix}/mp" not in s3_server.pending_uploads()
    assert not put(storage, "mp", pattern(LARGE, seed=3), overwrite=False)  # refused: upload cancelled
    assert f"{s3_config.prefix}/mp" not in s3_server.pending_uploads()


def test_s3_retry_layer_rides_out_a_restart(s3_server: S3Server, s3_config: RepoConfig) -> None:
    # obstore alone gives up within about a second here; the retry wrapper waits longer
    short = S3Limits(connect_timeout=1, request_timeout=3, max_retries=1, retry_window=1,
                     first_backoff=0.1, max_backoff=0.2)
    bare = S3Storage(s3_config, short)
    storage = RetryingStorage(bare, RetryPolicy(attempts=8, first_delay=1, max_delay=2))
    put(storage, "obj", b"survives")
    s3_server.stop()
    with pytest.raises(TransientStorageError):
        bare.read("obj")
    restarter = threading.Timer(2.0, s3_server.start)
    restarter.start()
    try:
        assert storage.read("obj") == b"survives"
        assert keys(storage, "") == {"obj"}
    finally:
        restarter.join()


def test_s3_missing_bucket_is_not_a_missing_object(s3_server: S3Server) -> None:
    # archive-get must not answer "no such WAL file" (which ends a recovery) when the
    # bucket is wrong
    config = RepoConfig(name="s3", type="s3", bucket="no-such-bucket", endpoint=s3_server.endpoint,
                        region=s3_server.region, path_style=True)
    storage = open_storage(config)
    operations: list[Callable[[], object]] = [
        lambda: put(storage, "x", b"x"), lambda: storage.read("x"), lambda: storage.read("x", 0, 3),
        lambda: storage.open("x"), lambda: list(storage.list("")), lambda: storage.remove("x"),
        lambda: getattr(storage, "remove_prefix")("x")]
    for operation in operations:
        with pytest.raises(StorageError, match="bucket 'no-such-bucket' does not exist") as info:
            operation()
        assert not isinstance(info.value, TransientStorageError)
        assert "\n" not in str(info.value)
