"""Fixtures: a real S3-API server for a test module. Use with
``pytest_plugins = ["s3_fixtures"]``.

    s3_server (module scope)   SeaweedFS on loopback, its bucket created
    s3                          the same, running before and after the test (a test may
                                stop, restart or pause it)
"""

from __future__ import annotations

from typing import Iterator

import pytest

from storage.s3server import S3Server


@pytest.fixture(scope="module")
def s3_server() -> Iterator[S3Server]:
    server = S3Server.start_new()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def s3(s3_server: S3Server) -> Iterator[S3Server]:
    _ensure_running(s3_server)
    yield s3_server
    _ensure_running(s3_server)


def _ensure_running(server: S3Server) -> None:
    if server.proc is not None and server.proc.poll() is None:
        server.resume()
    server.start()
