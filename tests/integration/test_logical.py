"""Logical backups in the repository (issue 5): pg_dump / pg_dumpall streamed in,
listed by info, checked by verify, restored whole or in part, and expired.

One cluster for the module holds a database with several schemas, an enum type,
foreign keys, a view, identity and serial columns, a free-standing sequence, large
objects, roles owning objects and grants; every round trip compares contents,
sequence positions, large objects, owners and grants with the source.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from helpers import Lab, PgCluster, PgsafeEnv, assert_clean_error, config_text, flip_byte

SCHEMA_SQL = """
create schema sales authorization alice;
create schema inventory;
create type sales.status as enum ('new', 'paid', 'shipped');
create table sales.customers (id serial primary key, name text not null unique);
create table sales.orders (
    id bigint generated always as identity primary key,
    customer_id int not null references sales.customers (id),
    status sales.status not null default 'new',
    amount numeric(10, 2) check (amount >= 0),
    doc oid);
create index orders_customer_idx on sales.orders (customer_id);
comment on table sales.orders is 'one row per order';
create table inventory.items (sku text primary key, qty int not null default 0);
create sequence inventory.batch_seq start 100;
create view sales.order_totals as
    select c.name, sum(o.amount) as total from sales.orders o join sales.customers c on c.id = o.customer_id
    group by c.name;
alter table sales.customers owner to alice;
alter table sales.orders owner to alice;
alter view sales.order_totals owner to alice;
grant select on sales.orders to bob;
insert into sales.customers (name) select 'customer ' || g from generate_series(1, 50) g;
insert into sales.orders (customer_id, status, amount)
    select 1 + g % 50, (array['new', 'paid', 'shipped'])[1 + g % 3]::sales.status, g * 1.5
    from generate_series(1, 3000) g;
update sales.orders set doc = lo_from_bytea(0, convert_to(repeat('large object ' || id, 200), 'UTF8'))
    where id % 500 = 0;
insert into inventory.items select 'sku-' || g, g from generate_series(1, 500) g;
select nextval('inventory.batch_seq') from generate_series(1, 3);
"""
TABLES = {"sales.customers": "id", "sales.orders": "id", "inventory.items": "sku"}


@dataclass
class Setup:
    env: PgsafeEnv
    dumps: dict[str, str]  # database (or "globals") -> id of the first dump run


def pgsafe_json(env: PgsafeEnv, *args: str) -> Any:
    return json.loads(env.run(*args, "--output", "json").stdout)


def dumps_in_info(env: PgsafeEnv) -> list[dict[str, Any]]:
    (cluster,) = env.info()["clusters"]
    return list(cluster["dumps"])


def digest(pg: PgCluster, db: str, table: str, order: str) -> tuple[int, str]:
    with pg.connect(db) as conn:
        row = conn.execute(f"select count(*), md5(coalesce(string_agg(t::text, E'\\n' order by {order}), '')) "
                           f"from {table} t").fetchone()
    assert row is not None
    return int(row[0]), str(row[1])


def state(pg: PgCluster, db: str) -> dict[str, Any]:
    """What a restore must bring back: rows, sequence positions, large objects,
    owners, grants, and that the view still answers."""
    out: dict[str, Any] = {table: digest(pg, db, table, order) for table, order in TABLES.items()}
    with pg.connect(db) as conn:
        out["large objects"] = conn.execute(
            "select id, md5(lo_get(doc)) from sales.orders where doc is not null order by id").fetchall()
        out["batch_seq"] = conn.execute("select last_value from inventory.batch_seq").fetchone()
        out["owners"] = conn.execute(
            "select c.relname, r.rolname from pg_class c join pg_roles r on r.oid = c.relowner "
            "join pg_namespace n on n.oid = c.relnamespace where n.nspname in ('sales', 'inventory') "
            "and c.relkind in ('r', 'v') order by 1").fetchall()
        out["grants"] = conn.execute(
            "select grantee, privilege_type from information_schema.role_table_grants "
            "where table_schema = 'sales' and table_name = 'orders' and grantee = 'bob'").fetchall()
        out["view"] = conn.execute("select count(*), sum(total) from sales.order_totals").fetchone()
    return out


@pytest.fixture(scope="module")
def setup(module_lab: Lab) -> Setup:
    env = module_lab.make_env()
    pg = env.cluster
    pg.sql("create role alice login")
    pg.sql("create role bob nologin")
    pg.sql("create database shop owner alice")
    pg.sql("create database hr")
    with pg.connect("shop") as conn:
        conn.execute(SCHEMA_SQL)
    pg.sql("create table staff (id int primary key, name text)", dbname="hr")
    pg.sql("insert into staff select g, 'person ' || g from generate_series(1, 100) g", dbname="hr")
    out = env.run("dump").stdout
    ids = {}
    for line in out.splitlines():
        m = re.match(r"dump (\S+)\s+(?:database (\S+)|globals)", line)
        if m:
            ids[m.group(2) or "globals"] = m.group(1)
    assert set(ids) == {"postgres", "shop", "hr", "globals"}, out
    return Setup(env, ids)


def test_dump_of_every_database_and_the_globals_in_info(setup: Setup) -> None:
    dumps = {d["id"]: d for d in dumps_in_info(setup.env)}
    for database, dump_id in setup.dumps.items():
        d = dumps[dump_id]
        for key in ("id", "database", "start_time", "stop_time", "size", "stored_size"):
            assert key in d, d
        assert d["database"] == (None if database == "globals" else database)
        assert d["status"] == "complete"
        assert 0 < d["stored_size"] and d["start_time"] <= d["stop_time"]
    shop = dumps[setup.dumps["shop"]]
    assert shop["stored_size"] < shop["size"], "compressed by pgsafe (pg_dump's own compression is off)"
    text = setup.env.run("info").stdout
    assert "logical backups" in text and setup.dumps["shop"] in text, text
    # the catalog records how each was made
    listing = pgsafe_json(setup.env, "dump-list", setup.dumps["shop"])
    dump = listing["dump"]
    assert dump["dump_format"] == "custom" and dump["pg_version"] // 10000 == 15
    assert dump["options"]["large_objects"] is True and dump["program"].startswith("pg_dump 15")
    assert dump["encoding"] == "UTF8"


def test_dump_list_shows_the_table_of_contents(setup: Setup) -> None:
    out = setup.env.run("dump-list", setup.dumps["shop"]).stdout
    assert re.search(r"^\d+; \d+ \d+ TABLE sales orders alice$", out, re.M), out
    assert re.search(r"^\d+; \d+ \d+ BLOB - \d+ postgres$", out, re.M), out
    globals_out = setup.env.run("dump-list", setup.dumps["globals"]).stdout
    assert "CREATE ROLE alice;" in globals_out and "CREATE ROLE bob;" in globals_out


def test_custom_format_round_trip(setup: Setup) -> None:
    pg = setup.env.cluster
    proc = setup.env.run("restore-dump", setup.dumps["shop"], "--db", "shop_copy")
    assert "created database shop_copy" in proc.stdout
    assert state(pg, "shop_copy") == state(pg, "shop")


def test_directory_format_with_jobs_round_trip(setup: Setup) -> None:
    env, pg = setup.env, setup.env.cluster
    before = {d["id"] for d in dumps_in_info(env)}
    env.run("dump", "--db", "shop", "--format", "directory", "--jobs", "2")
    (new,) = [d for d in dumps_in_info(env) if d["id"] not in before]
    assert new["format"] == "directory" and new["database"] == "shop"
    env.run("restore-dump", new["id"], "--db", "shop_dir", "--jobs", "2")
    assert state(pg, "shop_dir") == state(pg, "shop")


def test_clean_restores_over_changed_objects_and_errors_fail_clearly(setup: Setup) -> None:
    env, pg = setup.env, setup.env.cluster
    env.run("restore-dump", setup.dumps["shop"], "--db", "shop_clean")
    pg.sql("delete from sales.orders where id > 100", dbname="shop_clean")
    pg.sql("update inventory.items set qty = 0", dbname="shop_clean")
    # without --clean: pg_restore stops at the first error, shown in one line
    proc = env.run("restore-dump", setup.dumps["shop"], "--db", "shop_clean", check=False)
    assert_clean_error(proc, 6, "pg_restore", "already exists")
    env.run("restore-dump", setup.dumps["shop"], "--db", "shop_clean", "--clean")
    assert state(pg, "shop_clean") == state(pg, "shop")


def test_one_table_with_what_belongs_to_it(setup: Setup) -> None:
    env, pg = setup.env, setup.env.cluster
    env.run("restore-dump", setup.dumps["shop"], "--db", "shop_one")
    pg.sql("drop table sales.orders cascade", dbname="shop_one")
    env.run("restore-dump", setup.dumps["shop"], "--db", "shop_one", "--table", "sales.orders")
    with pg.connect("shop_one") as conn:
        indexes = {r[0] for r in conn.execute(
            "select indexname from pg_indexes where schemaname = 'sales' and tablename = 'orders'")}
        fks = conn.execute("select count(*) from pg_constraint where conrelid = 'sales.orders'::regclass "
                           "and contype = 'f'").fetchone()
    assert indexes == {"orders_pkey", "orders_customer_idx"}
    assert fks == (1,)
    assert digest(pg, "shop_one", "sales.orders", "id") == digest(pg, "shop", "sales.orders", "id")
    proc = env.run("restore-dump", setup.dumps["shop"], "--db", "shop_one", "--table", "sales.nosuch", check=False)
    assert_clean_error(proc, 2, "no table", "sales.nosuch")


def test_into_schema_with_dependent_objects(setup: Setup) -> None:
    env, pg = setup.env, setup.env.cluster
    env.run("restore-dump", setup.dumps["shop"], "--db", "shop", "--table", "sales.orders",
            "--table", "sales.customers", "--into-schema", "restored")
    for table in ("orders", "customers"):
        order = TABLES[f"sales.{table}"]
        assert digest(pg, "shop", f"restored.{table}", order) == digest(pg, "shop", f"sales.{table}", order)
    with pg.connect("shop") as conn:
        indexes = {r[0] for r in conn.execute(
            "select indexname from pg_indexes where schemaname = 'restored' and tablename = 'orders'")}
        fk_target = conn.execute(
            "select confrelid::regclass::text from pg_constraint where conrelid = 'restored.orders'::regclass "
            "and contype = 'f'").fetchone()
        owner = conn.execute("select tableowner from pg_tables where schemaname = 'restored' "
                             "and tablename = 'orders'").fetchone()
        bob = conn.execute("select has_table_privilege('bob', 'restored.orders', 'select')").fetchone()
        # the identity and serial sequences moved with their tables, and go on from where they were
        new_id = conn.execute("insert into restored.orders (customer_id, amount) values (1, 1) returning id").fetchone()
        new_customer = conn.execute("insert into restored.customers (name) values ('x') returning id").fetchone()
        live = conn.execute("select count(*) from sales.orders").fetchone()
    assert indexes == {"orders_pkey", "orders_customer_idx"}
    assert fk_target == ("restored.customers",), "the foreign key follows its table when both are restored"
    assert owner == ("alice",) and bob == (True,)
    assert new_id == (3001,) and new_customer == (51,)
    assert live == (3000,), "the source tables are untouched"
    # a second time is refused, unless --clean replaces the restored tables
    proc = env.run("restore-dump", setup.dumps["shop"], "--db", "shop", "--table", "sales.orders",
                   "--into-schema", "restored", check=False)
    assert_clean_error(proc, 2, "restored.orders", "already exists")
    with pg.connect("shop") as conn:
        conn.execute("drop table restored.orders")
    env.run("restore-dump", setup.dumps["shop"], "--db", "shop", "--table", "sales.orders",
            "--into-schema", "restored")
    with pg.connect("shop") as conn:
        fk_target = conn.execute(
            "select confrelid::regclass::text from pg_constraint where conrelid = 'restored.orders'::regclass "
            "and contype = 'f'").fetchone()
        temp_dbs = conn.execute("select count(*) from pg_database where datname like 'pgsafe%'").fetchone()
        transfer = conn.execute("select count(*) from pg_namespace where nspname like 'pgsafe%'").fetchone()
    assert fk_target == ("sales.customers",), "alone, it references the table it referenced before"
    assert temp_dbs == (0,) and transfer == (0,), "the temporary database and transfer schema are gone"


def test_globals_and_dump_into_another_cluster(setup: Setup, module_lab: Lab) -> None:
    """Roles first, then the database: owners and grants survive the move."""
    env = setup.env
    other = module_lab.make_cluster(name="other", start=True)
    config = env.write_config(config_text(env.repo, other.pgdata, other.socket_dir, other.port), "other.toml")
    env.run("restore-dump", setup.dumps["globals"], "--db", "postgres", config=config)
    roles = {r[0] for r in other.sql("select rolname from pg_roles where rolname in ('alice', 'bob')")}
    assert roles == {"alice", "bob"}
    env.run("restore-dump", setup.dumps["shop"], "--db", "shop", config=config)
    assert state(other, "shop") == state(env.cluster, "shop_copy")


def test_verify_catches_a_damaged_dump_and_restore_refuses_it(setup: Setup) -> None:
    env = setup.env
    before = {d["id"] for d in dumps_in_info(env)}
    env.run("dump", "--db", "hr")
    (hr,) = [d["id"] for d in dumps_in_info(env) if d["id"] not in before]
    env.run("verify", "--set", hr)
    obj = env.repo / "cluster" / "main" / "dump" / hr / "data" / "000001"
    flip_byte(Path(obj))
    proc = env.run("verify", check=False)
    assert proc.returncode == 9 and hr in proc.stdout, proc.stdout
    proc = env.run("restore-dump", hr, "--db", "hr_copy", check=False)
    assert_clean_error(proc, 9, hr)
    databases = env.cluster.sql("select datname from pg_database where datname = 'hr_copy'")
    assert databases == [], "a database created for a failed restore is dropped again"
    env.run("expire", "--set", hr)


def test_failed_dump_is_recorded_and_the_run_fails(setup: Setup) -> None:
    env = setup.env
    proc = env.run("dump", "--db", "hr", "--table", "nosuch", check=False)
    assert_clean_error(proc, 8, "no matching tables")
    failed = [d for d in dumps_in_info(env) if d["status"] == "failed"]
    assert len(failed) == 1 and "no matching tables" in failed[0]["error"]
    proc = env.run("restore-dump", failed[0]["id"], "--db", "x", check=False)
    assert_clean_error(proc, 13, "failed")


def test_retention_keeps_the_newest_dumps_of_each_database(setup: Setup) -> None:
    env = setup.env
    text = env.config.read_text().replace("\n[cluster.main]", "retention_dump = 1\n\n[cluster.main]", 1)
    config = env.write_config(text, "retention.toml")
    env.run("dump", "--db", "hr", config=config)
    by_db: dict[str | None, list[dict[str, Any]]] = {}
    for d in dumps_in_info(env):
        by_db.setdefault(d["database"], []).append(d)
    assert {db: len(ds) for db, ds in by_db.items()} == {"postgres": 1, "shop": 1, "hr": 1, None: 1}, by_db
    assert all(d["status"] == "complete" for ds in by_db.values() for d in ds), "the failed record went too"
    assert not list((env.repo / "cluster" / "main" / "dump").glob("*/.*tmp*"))
    present = {p.name for p in (env.repo / "cluster" / "main" / "dump").iterdir()}
    assert present == {d["id"] for ds in by_db.values() for d in ds}
