"""Fixtures: real PostgreSQL 15 servers, and pgsafe set up to back them up.

    pgsafe_bin      the installed pgsafe console script (env PGSAFE_BIN)
    lab             a helpers.Lab: its directories, servers and background processes
                    go at teardown (module_lab: the same, shared by a module)
    tmp_dirs        TempDirs: .make(prefix) -> a fresh /tmp directory the server user owns
    make_cluster    factory(pgdata=None, name=None, init=True, start=False, **settings) -> PgCluster
    cluster         one started cluster
    make_env        factory(init=True, settings=None, compression="zstd", start=True) -> PgsafeEnv
    env             a started cluster archiving through pgsafe into an initialised repository

Every cluster is stopped and every directory removed at teardown, failed test or not.
When a test fails, the tail of each server's log is printed with its report.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from helpers import PG_BIN, PGSAFE_BIN, Lab, PgCluster, PgsafeEnv, TempDirs


def pytest_sessionstart(session: pytest.Session) -> None:
    for path in (PG_BIN / "initdb", PG_BIN / "pg_ctl", PG_BIN / "pgbench"):
        if not os.access(path, os.X_OK):
            raise pytest.UsageError(f"{path} is missing: run scripts/setup")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()
    setattr(item, f"rep_{report.when}", report)


@pytest.fixture(scope="session")
def pgsafe_bin() -> Path:
    if not os.access(PGSAFE_BIN, os.X_OK):
        pytest.fail(f"{PGSAFE_BIN} is not installed: run scripts/setup (or set PGSAFE_BIN)")
    return PGSAFE_BIN


@pytest.fixture
def lab(pgsafe_bin: Path, request: pytest.FixtureRequest) -> Iterator[Lab]:
    lab = Lab(pgsafe_bin)
    try:
        yield lab
    finally:
        rep = getattr(request.node, "rep_call", None)
        lab.cleanup(show_logs=rep is None or rep.failed)


@pytest.fixture(scope="module")
def module_lab(pgsafe_bin: Path, request: pytest.FixtureRequest) -> Iterator[Lab]:
    failed_before = request.session.testsfailed
    lab = Lab(pgsafe_bin)
    try:
        yield lab
    finally:
        lab.cleanup(show_logs=request.session.testsfailed > failed_before)


@pytest.fixture
def tmp_dirs(lab: Lab) -> TempDirs:
    return lab.tmp


@pytest.fixture
def make_cluster(lab: Lab) -> Callable[..., PgCluster]:
    return lab.make_cluster


@pytest.fixture
def cluster(lab: Lab) -> PgCluster:
    return lab.make_cluster(start=True)


@pytest.fixture
def make_env(lab: Lab) -> Callable[..., PgsafeEnv]:
    return lab.make_env


@pytest.fixture
def env(lab: Lab) -> PgsafeEnv:
    return lab.make_env()
