"""Giving tables a new schema and name, with everything that belongs to them.

pg_restore cannot rename, and rewriting pg_dump's SQL text is fragile (a schema name
also qualifies types, functions and referenced tables that must keep it). So the
renaming is done by PostgreSQL itself, in a *staging* database that pgsafe may change
freely: the scratch server of `restore-table`, or the temporary database of
`restore-dump --into-schema`. There, each table is moved into a fresh, empty *transfer
schema* (``ALTER TABLE ... SET SCHEMA`` moves its indexes, constraints and owned
sequences with it, and defaults keep pointing at them by OID), renamed, and its
indexes and sequences renamed where their names would clash in the destination.
pg_dump then writes out the transfer schema's tables, and the target database loads
them in one transaction that ends by moving them from the transfer schema into the
destination schema (see ``load_script``). Either the tables arrive complete under
their new names, or nothing changes.

References to other objects (types, functions, sequences not owned by the table,
tables a foreign key points at) keep their schema, since they are resolved by OID in
the staging database and written out fully qualified by pg_dump.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from typing import Any

from pgsafe.errors import RestoreError, UsageError

NAMEDATALEN = 63


@dataclass(frozen=True)
class QualifiedName:
    schema: str
    name: str

    def sql(self) -> str:
        return f"{quote_ident(self.schema)}.{quote_ident(self.name)}"

    def __str__(self) -> str:
        return f"{_show(self.schema)}.{_show(self.name)}"


@dataclass
class Move:
    source: QualifiedName
    target: QualifiedName
    kind: str = "table"  # table, view, materialized view, foreign table or sequence
    owner: str | None = None
    renamed: dict[str, str] = field(default_factory=dict)  # index/sequence: old -> new
    foreign_keys: list[str] = field(default_factory=list)  # dropped, as statements to re-add
    notices: list[str] = field(default_factory=list)


def quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _show(name: str) -> str:
    plain = name and (name[0].isalpha() or name[0] == "_") and all(
        c.isalnum() or c in "_$" for c in name) and name == name.lower()
    return name if plain else quote_ident(name)


def parse_qualified(text: str, default_schema: str | None = "public") -> tuple[str | None, str]:
    """'s.t', '"My S"."T"', 't' -> (schema, name) with PostgreSQL's folding rules:
    unquoted parts fold to lower case."""
    parts: list[str] = []
    i, n = 0, len(text)
    while i < n:
        if text[i] == '"':
            j, buf = i + 1, []
            while True:
                if j >= n:
                    raise UsageError(f"{text!r}: unterminated quoted name")
                if text[j] == '"':
                    if j + 1 < n and text[j + 1] == '"':
                        buf.append('"')
                        j += 2
                        continue
                    break
                buf.append(text[j])
                j += 1
            parts.append("".join(buf))
            i = j + 1
        else:
            j = i
            while j < n and text[j] != ".":
                j += 1
            parts.append(text[i:j].strip().lower())
            i = j
        if i < n:
            if text[i] != ".":
                raise UsageError(f"{text!r}: expected '.' between schema and name")
            i += 1
            if i == n:
                raise UsageError(f"{text!r}: missing name after '.'")
    if not parts or any(p == "" for p in parts) or len(parts) > 2:
        raise UsageError(f"{text!r} is not a table name; use SCHEMA.TABLE")
    if len(parts) == 1:
        return default_schema, parts[0]
    return parts[0], parts[1]


def transfer_schema_name() -> str:
    return f"pgsafe_transfer_{secrets.token_hex(6)}"


def taken_names(conn: Any, schema: str, replacing: tuple[str, ...] = ()) -> set[str]:
    """Relation and type names in use in a schema of the target database, leaving out
    the tables in `replacing` (about to be dropped) and what goes with them."""
    rows = conn.execute(
        "select c.relname from pg_class c join pg_namespace n on n.oid = c.relnamespace where n.nspname = %s "
        "union select t.typname from pg_type t join pg_namespace n on n.oid = t.typnamespace where n.nspname = %s",
        (schema, schema)).fetchall()
    names = {r[0] for r in rows}
    if replacing:
        gone = conn.execute(
            "with t as (select c.oid from pg_class c join pg_namespace n on n.oid = c.relnamespace "
            "           where n.nspname = %s and c.relname = any(%s)) "
            "select c.relname from pg_class c where c.oid in (select oid from t) "
            "or c.oid in (select indexrelid from pg_index where indrelid in (select oid from t)) "
            "or c.oid in (select objid from pg_depend where classid = 'pg_class'::regclass "
            "             and refobjid in (select oid from t) and deptype in ('a', 'i'))",
            (schema, list(replacing))).fetchall()
        names -= {r[0] for r in gone}
    return names


def relocate(conn: Any, moves: list[Move], transfer: str, taken: dict[str, set[str]], *,
             drop_foreign_keys: bool = False, where: str = "the backup") -> None:
    """In the staging database: move each table into the transfer schema under its new
    name, detached from partition and inheritance parents, with its indexes and
    sequences renamed clear of `taken` (destination schema -> names in use there)."""
    from psycopg import sql

    with conn.transaction():
        conn.execute("set local search_path = ''")
        conn.execute(sql.SQL("create schema {}").format(sql.Identifier(transfer)))
        chosen: dict[str, set[str]] = {}
        for move in moves:
            src, dst = move.source, move.target
            row = conn.execute(
                "select c.oid, c.relkind, c.relispartition, pg_get_userbyid(c.relowner) from pg_class c "
                "join pg_namespace n on n.oid = c.relnamespace where n.nspname = %s and c.relname = %s",
                (src.schema, src.name)).fetchone()
            if row is None:
                raise RestoreError(f"table {src} does not exist in {where}")
            oid, relkind, is_partition, move.owner = row
            if relkind == "p":
                raise RestoreError(f"{src} is a partitioned table: restore its partitions one by one")
            if relkind not in ("r", "m", "f", "v", "S"):
                raise RestoreError(f"{src} is not a table")
            names = taken.get(dst.schema, set()) | chosen.setdefault(dst.schema, set())
            if dst.name in names:
                raise RestoreError(f"{dst} already exists in the target database; choose another name")
            chosen[dst.schema].add(dst.name)
            _detach(conn, move, oid, is_partition)
            if drop_foreign_keys:
                _drop_foreign_keys(conn, move, oid)
            kind = move.kind = {"r": "table", "f": "foreign table", "v": "view", "m": "materialized view",
                                "S": "sequence"}[relkind]
            conn.execute(sql.SQL("alter " + kind + " {}.{} set schema {}").format(
                sql.Identifier(src.schema), sql.Identifier(src.name), sql.Identifier(transfer)))
            if dst.name != src.name:
                conn.execute(sql.SQL("alter " + kind + " {}.{} rename to {}").format(
                    sql.Identifier(transfer), sql.Identifier(src.name), sql.Identifier(dst.name)))
            _rename_dependents(conn, move, oid, transfer, names, chosen[dst.schema])


def _detach(conn: Any, move: Move, oid: int, is_partition: bool) -> None:
    from psycopg import sql

    for parent_schema, parent in conn.execute(
            "select n.nspname, c.relname from pg_inherits i join pg_class c on c.oid = i.inhparent "
            "join pg_namespace n on n.oid = c.relnamespace where i.inhrelid = %s", (oid,)).fetchall():
        if is_partition:
            conn.execute(sql.SQL("alter table {}.{} detach partition {}.{}").format(
                sql.Identifier(parent_schema), sql.Identifier(parent),
                sql.Identifier(move.source.schema), sql.Identifier(move.source.name)))
            move.notices.append(f"{move.target} is restored as a plain table, not as a partition of "
                                f"{QualifiedName(parent_schema, parent)}")
        else:
            conn.execute(sql.SQL("alter table {}.{} no inherit {}.{}").format(
                sql.Identifier(move.source.schema), sql.Identifier(move.source.name),
                sql.Identifier(parent_schema), sql.Identifier(parent)))
            move.notices.append(f"{move.target} is restored without inheriting from "
                                f"{QualifiedName(parent_schema, parent)}")


def _drop_foreign_keys(conn: Any, move: Move, oid: int) -> None:
    from psycopg import sql

    for name, definition in conn.execute(
            "select conname, pg_get_constraintdef(oid) from pg_constraint where conrelid = %s and contype = 'f' "
            "order by conname", (oid,)).fetchall():
        conn.execute(sql.SQL("alter table {}.{} drop constraint {}").format(
            sql.Identifier(move.source.schema), sql.Identifier(move.source.name), sql.Identifier(name)))
        move.foreign_keys.append(
            f"ALTER TABLE {move.target.sql()} ADD CONSTRAINT {quote_ident(name)} {definition};")


def _rename_dependents(conn: Any, move: Move, oid: int, transfer: str, taken: set[str], chosen: set[str]) -> None:
    """Indexes and owned sequences moved along with the table get names that are free
    in the destination schema; names derived from the old table name follow the new one."""
    from psycopg import sql

    rows = conn.execute(
        "select c.relname, c.relkind from pg_class c join pg_namespace n on n.oid = c.relnamespace "
        "where n.nspname = %s and c.oid <> %s and c.relkind in ('i', 'S') "
        "and (c.oid in (select indexrelid from pg_index where indrelid = %s) "
        "  or c.oid in (select objid from pg_depend where classid = 'pg_class'::regclass "
        "               and refobjid = %s and deptype in ('a', 'i'))) "
        "order by c.relname", (transfer, oid, oid, oid)).fetchall()
    present = {r[0] for r in conn.execute(
        "select c.relname from pg_class c join pg_namespace n on n.oid = c.relnamespace where n.nspname = %s",
        (transfer,)).fetchall()}
    old_prefix = move.source.name
    for name, relkind in rows:
        wanted = move.target.name + name[len(old_prefix):] if name.startswith(old_prefix + "_") else name
        new = _free_name(wanted[:NAMEDATALEN], taken | chosen | (present - {name}))
        present.discard(name)
        present.add(new)
        chosen.add(new)
        if new == name:
            continue
        kind = "index" if relkind == "i" else "sequence"
        conn.execute(sql.SQL("alter " + kind + " {}.{} rename to {}").format(
            sql.Identifier(transfer), sql.Identifier(name), sql.Identifier(new)))
        move.renamed[name] = new


def _free_name(wanted: str, taken: set[str]) -> str:
    if wanted not in taken:
        return wanted
    n = 1
    while True:
        suffix = f"_{n}"
        candidate = wanted[:NAMEDATALEN - len(suffix)] + suffix
        if candidate not in taken:
            return candidate
        n += 1


def load_prologue(transfer: str, replace: list[QualifiedName] | None = None) -> str:
    """Runs first in the target's transaction: with `replace` (restore --clean), drop
    the tables being replaced (refused by PostgreSQL if other objects depend on them)."""
    out = [f"DROP TABLE IF EXISTS {q.sql()};" for q in replace or []]
    out.append(f"CREATE SCHEMA {quote_ident(transfer)};")
    return "\n".join(out) + "\n"


def schema_exists(conn: Any, schema: str) -> bool:
    return conn.execute("select 1 from pg_namespace where nspname = %s", (schema,)).fetchone() is not None


def load_epilogue(moves: list[Move], transfer: str, new_schemas: set[str] | None = None) -> str:
    """Runs in the target, in the same transaction as the data: move each table from the
    transfer schema into its destination; the transfer schema must then be empty. A
    destination schema in `new_schemas` is created, and the owners of the tables moved
    into it may use it (their foreign keys and defaults run as them)."""
    out = []
    for schema in sorted({m.target.schema for m in moves}):
        if new_schemas is not None and schema in new_schemas:
            out.append(f"CREATE SCHEMA {quote_ident(schema)};")
            for owner in sorted({m.owner for m in moves if m.target.schema == schema and m.owner}):
                out.append(f"GRANT USAGE ON SCHEMA {quote_ident(schema)} TO {quote_ident(owner)};")
        else:
            out.append(f"CREATE SCHEMA IF NOT EXISTS {quote_ident(schema)};")
    for m in moves:
        out.append(f"ALTER {m.kind.upper()} {quote_ident(transfer)}.{quote_ident(m.target.name)} "
                   f"SET SCHEMA {quote_ident(m.target.schema)};")
    out.append(f"DROP SCHEMA {quote_ident(transfer)};")
    return "\n".join(out) + "\n"


@dataclass
class Transfer:
    bytes: int = 0
    rows: int = 0


def transfer(pg_dump_argv: list[str], psql_argv: list[str], prologue: str, epilogue: str,
             progress: Any = None) -> Transfer:
    """pg_dump's plain SQL piped into psql, which runs it (with the prologue before and
    the epilogue after) as one transaction that stops at the first error."""
    import re
    import subprocess
    import tempfile

    from pgsafe.errors import PostgresError
    from pgsafe.pg.tools import ToolProcess

    out = tempfile.TemporaryFile()
    dump = ToolProcess(pg_dump_argv)
    load = ToolProcess([*psql_argv, "--no-psqlrc", "--set=ON_ERROR_STOP=1", "--single-transaction", "--file=-"],
                       stdin=subprocess.PIPE, stdout=out)
    result = Transfer()
    try:
        try:
            load.stdin.write(prologue.encode())
            while chunk := dump.stdout.read(1 << 20):
                load.stdin.write(chunk)
                result.bytes += len(chunk)
                if progress is not None:
                    progress(result.bytes)
            dumped = dump.wait()
            if dumped == 0:
                load.stdin.write(epilogue.encode())
        except BrokenPipeError:  # psql stopped at an error: its message says why
            dump.stop()
            dumped = 0
        loaded = load.wait()
        if dumped != 0:
            raise PostgresError(dump.failure())
        if loaded != 0:
            raise PostgresError(load.failure())
        out.seek(0)
        result.rows = sum(int(n) for n in re.findall(rb"^COPY (\d+)$", out.read(), re.M))
        return result
    finally:
        dump.close()
        load.close()
        out.close()
