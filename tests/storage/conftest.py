"""Fixtures for the storage drivers.

    s3_server   a real S3-API server (SeaweedFS) on loopback for the whole session, its
                bucket created; the AWS_* variables point at it while the session runs.
                Tests may stop, restart or pause it: every test starts with it running.
    s3_config   a RepoConfig of type s3 under a fresh prefix of that server's bucket
    storage     a driver from open_storage, once per driver (posix, s3): the conformance
                suite runs against each
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Iterator

import pytest

from pgsafe.config import RepoConfig
from pgsafe.storage import Storage, open_storage
from s3server import S3Server

DRIVERS = ["posix", "s3"]


@pytest.fixture(scope="session")
def s3_server_session() -> Iterator[S3Server]:
    server = S3Server.start_new()
    env = pytest.MonkeyPatch()
    for name, value in server.env().items():
        env.setenv(name, value)
    try:
        yield server
    finally:
        env.undo()
        server.close()


@pytest.fixture
def s3_server(s3_server_session: S3Server, request: pytest.FixtureRequest) -> Iterator[S3Server]:
    server = s3_server_session
    if server.proc is not None and server.proc.poll() is None:
        server.resume()
    server.start()
    yield server
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.failed:
        print(f"--- S3 server log ({server.log_path}) ---\n{server.log_tail(60)}")
    if server.proc is not None and server.proc.poll() is None:
        server.resume()
    server.start()


@pytest.fixture
def s3_config(s3_server: S3Server) -> RepoConfig:
    return RepoConfig(name="s3", type="s3", bucket=s3_server.bucket, prefix=f"t/{uuid.uuid4().hex[:12]}",
                      region=s3_server.region, endpoint=s3_server.endpoint, path_style=True)


@pytest.fixture(params=DRIVERS)
def driver(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def storage(driver: str, tmp_path: Path, request: pytest.FixtureRequest) -> Storage:
    if driver == "posix":
        return open_storage(RepoConfig(name="posix", path=str(tmp_path / "repo")))
    return open_storage(request.getfixturevalue("s3_config"))
