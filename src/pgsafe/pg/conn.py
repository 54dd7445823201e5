"""Connections to PostgreSQL and the facts pgsafe reads from a running server."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pgsafe.errors import PostgresError

if TYPE_CHECKING:
    import psycopg


@dataclass(frozen=True)
class ServerInfo:
    system_identifier: int
    version_num: int
    wal_segment_size: int
    block_size: int
    data_directory: str
    data_checksums: bool
    in_recovery: bool
    timeline: int


def connect(conninfo: dict[str, Any], application_name: str = "pgsafe") -> "psycopg.Connection[Any]":
    import psycopg

    try:
        return psycopg.connect(autocommit=True, application_name=application_name, connect_timeout=10, **conninfo)
    except psycopg.Error as exc:
        where = " ".join(f"{k}={v}" for k, v in conninfo.items() if k in ("host", "port", "user", "dbname"))
        reason = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
        raise PostgresError(f"cannot connect to PostgreSQL ({where}): {reason}") from None


def query(conn: "psycopg.Connection[Any]", sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    import psycopg

    try:
        with conn.cursor() as cur:
            cur.execute(sql, params)  # type: ignore[arg-type]
            return cur.fetchall() if cur.description else []
    except psycopg.Error as exc:
        raise PostgresError(f"PostgreSQL refused {sql.split('(')[0].strip()!r}: {str(exc).strip()}") from None


def server_info(conn: "psycopg.Connection[Any]") -> ServerInfo:
    (row,) = query(
        conn,
        "select (select system_identifier from pg_control_system()),"
        " current_setting('server_version_num')::int,"
        " (select setting::bigint from pg_settings where name = 'wal_segment_size'),"
        " current_setting('block_size')::int,"
        " current_setting('data_directory'),"
        " current_setting('data_checksums') = 'on',"
        " pg_is_in_recovery(),"
        " (select timeline_id from pg_control_checkpoint())",
    )
    return ServerInfo(int(row[0]), row[1], int(row[2]), row[3], row[4], row[5], row[6], row[7])


def setting(conn: "psycopg.Connection[Any]", name: str) -> str:
    return str(query(conn, "select current_setting(%s)", (name,))[0][0])
