"""The bench's PostgreSQL cluster (run as the postgres OS user) and the SQL that builds
its datasets."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from timing import OS_USER, PGBIN, run_pg

DEFAULT_SCALE = {"pgbench": 100, "realistic": 20, "many-files": 20}  # the sizes issue 6 asks for

# The `realistic` dataset: about 110 MB per batch (1.10 GB at scale 10), of which ~55 % an `events` heap (integers,
# numerics, floats, timestamps, a status, short random text, a jsonb document), ~25 % its four
# indexes, ~20 % `documents` whose 6 KB text bodies live out of line in TOAST, uncompressed by
# PostgreSQL (STORAGE EXTERNAL), so that the tools' compression sees them. The random text is hex
# (md5): about 2:1 for zstd, the whole cluster about 2-3:1.
REALISTIC_SCHEMA = """
CREATE TABLE events (id bigserial PRIMARY KEY, account_id int NOT NULL, created_at timestamptz NOT NULL,
  amount numeric(12,2), ratio float8, status text, note text, attrs jsonb);
CREATE TABLE documents (id bigserial PRIMARY KEY, owner int, title text, body text, updated_at timestamptz);
ALTER TABLE documents ALTER COLUMN body SET STORAGE EXTERNAL;
"""
REALISTIC_BATCH = """
INSERT INTO events (account_id, created_at, amount, ratio, status, note, attrs)
SELECT (random() * 100000)::int, now() - random() * interval '730 days',
  round((random() * 10000)::numeric, 2), random(),
  (ARRAY['new','paid','shipped','cancelled','returned','on hold'])[1 + (random() * 5)::int],
  substr(md5(random()::text) || ' ' || md5(random()::text), 1, 16 + (random() * 50)::int),
  jsonb_build_object('ip', (random() * 255)::int || '.' || (random() * 255)::int || '.' || (random() * 255)::int
                           || '.' || (random() * 255)::int,
                     'sku', substr(md5(random()::text), 1, 10), 'qty', (random() * 20)::int,
                     'price', round((random() * 500)::numeric, 2), 'gift', random() < 0.1)
FROM generate_series(1, 250000);
INSERT INTO documents (owner, title, body, updated_at)
SELECT (random() * 100000)::int, substr(md5(random()::text), 1, 20),
  (SELECT string_agg(md5(random()::text || x::text), ' ') FROM generate_series(1, 180 + (g % 40)) x),
  now() - random() * interval '365 days'
FROM generate_series(1, 3500) g;
"""
MANY_FILES_BATCH = """
DO $$ BEGIN
  FOR i IN FIRST + 1 .. FIRST + 500 LOOP
    EXECUTE format('CREATE TABLE mf_%s (id int PRIMARY KEY, k int, v text, at timestamptz)', i);
    EXECUTE format('INSERT INTO mf_%s SELECT g, (random() * 1000)::int, md5(random()::text), now() '
                   '- random() * interval ''30 days'' FROM generate_series(1, 20) g', i);
    EXECUTE format('CREATE INDEX mf_%s_k ON mf_%s (k)', i, i);
  END LOOP;
END $$;
"""
REALISTIC_INDEXES = """
CREATE INDEX events_account ON events (account_id);
CREATE INDEX events_created ON events (created_at);
CREATE INDEX events_status_created ON events (status, created_at);
CREATE INDEX documents_owner ON documents (owner, updated_at);
CHECKPOINT;
"""
# pgbench tables in the `realistic` dataset too (about 150 MB), so that the incremental and archive
# rate phases can run the builtin tpcb-like workload there.
REALISTIC_PGBENCH_SCALE = 10
# The incremental phase's second script on `realistic` (pgbench -f FILE@1 next to -b tpcb-like@1):
# the changes also reach the mixed tables, their indexes and, one transaction in 20, a TOASTed body.
REALISTIC_WORKLOAD = r"""
\set eid random(1, :max_event)
\set account random(1, 100000)
\set doc random(1, 20 * :max_document)
BEGIN;
UPDATE events SET status = 'paid', amount = amount + 1, attrs = attrs || jsonb_build_object('seen', now())
  WHERE id = :eid;
INSERT INTO events (account_id, created_at, amount, ratio, status, note, attrs)
  VALUES (:account, now(), round((random() * 10000)::numeric, 2), random(), 'new', md5(random()::text),
          jsonb_build_object('sku', substr(md5(random()::text), 1, 10), 'qty', :account % 20));
\if :doc <= :max_document
UPDATE documents SET body = body || ' ' || md5(random()::text), updated_at = now() WHERE id = :doc;
\endif
END;
"""


class Cluster:
    def __init__(self, pgdata: Path, port: int, sockdir: Path, logfile: Path) -> None:
        self.pgdata, self.port, self.sockdir, self.logfile = pgdata, port, sockdir, logfile

    def conn_args(self) -> list[str]:
        return ["-h", str(self.sockdir), "-p", str(self.port), "-U", OS_USER]

    def running(self) -> bool:
        return (self.pgdata / "postmaster.pid").exists() and run_pg(
            [str(PGBIN / "pg_ctl"), "-D", str(self.pgdata), "status"], check=False).returncode == 0

    def start(self, extra: str = "") -> None:
        cmd = [str(PGBIN / "pg_ctl"), "-D", str(self.pgdata), "-l", str(self.logfile), "-w", "-t", "600"]
        if extra:
            cmd += ["-o", extra]
        run_pg(cmd + ["start"])

    def stop(self) -> None:
        if self.running():
            run_pg([str(PGBIN / "pg_ctl"), "-D", str(self.pgdata), "-m", "fast", "-w", "-t", "600", "stop"])

    def sql(self, query: str, db: str = "postgres") -> str:
        res = run_pg([str(PGBIN / "psql"), *self.conn_args(), "-d", db, "-X", "-At", "-v", "ON_ERROR_STOP=1",
                      "-c", query])
        return res.stdout.strip()

    def set_archive_command(self, command: str) -> None:
        literal = command.replace("'", "''")
        self.sql(f"ALTER SYSTEM SET archive_command = '{literal}'")
        self.sql("SELECT pg_reload_conf()")
        deadline = time.monotonic() + 30
        while self.sql("SHOW archive_command") != command:
            if time.monotonic() > deadline:
                raise RuntimeError("archive_command did not take effect after reload")
            time.sleep(0.1)
        time.sleep(0.5)  # the archiver re-reads its configuration on its next cycle

    def wait_archive_idle(self, timeout: float = 600) -> dict[str, Any]:
        """Wait until no segment waits for archiving; returns pg_stat_archiver."""
        status = self.pgdata / "pg_wal" / "archive_status"
        deadline = time.monotonic() + timeout
        while any(p.name.endswith(".ready") for p in status.iterdir()):
            if time.monotonic() > deadline:
                raise RuntimeError(f"archiver still busy after {timeout} s: {self.archiver_stats()}")
            time.sleep(0.2)
        return self.archiver_stats()

    def archiver_stats(self) -> dict[str, Any]:
        row = self.sql("SELECT archived_count, coalesce(last_archived_wal, ''), failed_count, "
                       "coalesce(last_failed_wal, ''), coalesce(last_failed_time::text, '') FROM pg_stat_archiver")
        a, last, f, last_failed, failed_time = row.split("|")
        return {"archived_count": int(a), "last_archived_wal": last, "failed_count": int(f),
                "last_failed_wal": last_failed, "last_failed_time": failed_time}
