"""Benchmark pgsafe side by side with pgBackRest and pg_basebackup, on one cluster, in one run.

Run it through ``bench/run`` (root; PostgreSQL runs as the ``postgres`` OS user)::

    bench/run --dataset pgbench --scale 100 --rounds 3
    bench/run --dataset realistic --scale 20 --rounds 3     # the ~2 GB dataset of issue 6's targets

What it does, in order (``--phases`` picks some of the phases: full, restore, incr, pitr, verify,
archive-rate, archive-push; the default is all of them):

1. builds the dataset: ``initdb --data-checksums`` and, in a database ``bench``, ``pgbench -i -s
   SCALE`` (pgbench), or SCALE batches of ~110 MB of mixed tables plus ``pgbench -i -s 10``
   (realistic), or SCALE x 1,000 small tables (many-files); reused with ``--reuse-dataset`` when the
   work directory already holds the same dataset;
2. creates fresh repositories: ``pgsafe init`` and ``pgbackrest stanza-create``;
3. full backups (phase ``full``; it runs whenever a later phase needs a backup), alternating the
   tools over the rounds (A B C D A B C D ...). Before each run, untimed: ``archive_command`` is
   switched to the tool under test (pgsafe's runs are archived by pgsafe only, pgBackRest's by
   pgBackRest only), CHECKPOINT, wait until the archiver is idle, ``sync``;
4. ``restore``: restores of each tool's last full backup into an empty directory, alternating,
   without starting a server; then, untimed, each restored copy is started once and its data is
   compared with the source;
5. ``incr`` (``--incr-seconds N``; 0 skips it; not on many-files): per round, ``pgbench -c4 -j2 -T
   N`` on the dataset (on realistic the builtin tpcb-like script and, with the same weight, a script
   that updates and inserts ``events`` rows and now and then a ``documents`` row), then an
   incremental backup by each tool; then restores of each tool's last incremental (full + incr
   chain) into an empty directory, and delta restores of the same backup over the directory that
   left, alternating; then each copy is started and checked;
6. ``pitr``: untimed, an incremental backup by each tool with both tools archiving, a marker row,
   a target time T, more workload and a second marker row, all the WAL archived by both; then per
   round and tool, alternating: restore of that backup into an empty directory with target time T
   and action promote, and the server started on another port until it has promoted. Timed: the
   restore command, the recovery (server start to promotion) and the whole; each copy must hold
   the first marker and not the second;
7. ``verify``: ``pgsafe verify`` and ``pgbackrest verify`` of their whole repositories, alternating;
8. ``archive-rate`` (``--archive-seconds S``; 0 skips it; not on many-files): per round and tool,
   alternating, archive_command set to that tool only: CHECKPOINT, then ``pgbench -n -c4 -j2 -T S``
   with synchronous_commit off; WAL generated and segments archived per second during pgbench, the
   ``.ready`` backlog at its end (and its peak), the time to drain it, archive_command CPU per segment;
9. ``archive-push`` (``--segments N``; 0 skips it) of real 16 MiB segments of this cluster, captured
   from the archiver, each pushed once by each tool under a name new to its repository, alternating.

For each run: wall time, CPU time of the tool (user+sys of the process and all its
descendants, from wait4), CPU time of the whole machine (/proc/stat, which also counts the
server side, e.g. the walsender that reads files for pg_basebackup), the largest single
process's peak RSS, the peak PSS of the tool's process tree (sampled), and bytes stored.

Raw results go to bench/results/ (gitignored); the table of medians to docs/PERFORMANCE.md
between the dataset's ``bench:<dataset>:begin``/``end`` markers (text outside them is kept). ``--render FILE``
rewrites that table from saved results; ``--render-rss FILE...`` prints the full backups' peak
RSS against the dataset size from several runs (``make -C bench rss``: ``--phases full`` at
realistic scale 10 and 100, that is about 1 GB and 10 GB).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import re
import shlex
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import timing
from cluster import (DEFAULT_SCALE, MANY_FILES_BATCH, REALISTIC_BATCH, REALISTIC_INDEXES, REALISTIC_PGBENCH_SCALE,
                     REALISTIC_SCHEMA, REALISTIC_WORKLOAD, Cluster)
from report import DOC, REFERENCE, TOOLS, render, render_rss, succeeded, summarize, write_doc
from snapshot import INSTALLED_PGSAFE, source_hashes, snapshot_pgsafe
from timing import OS_USER, PGBIN, _proc_stat_busy, measure, mkdir_pg, run_pg

HERE = Path(__file__).resolve().parent
PROJECT = HERE.parent
RESULTS = HERE / "results"

PGSAFE = INSTALLED_PGSAFE  # replaced by the run's frozen snapshot (see snapshot_pgsafe)
PGBACKREST = Path(shutil.which("pgbackrest") or "/usr/bin/pgbackrest")
STANZA = "bench"
CLUSTER = "main"
SEGMENT_RE = re.compile(r"^[0-9A-F]{24}$")
WAL_SEGMENT = 16 * 1024 * 1024
# The phases of a run, in the order they run (--phases picks some of them).
PHASES = ("full", "restore", "incr", "pitr", "verify", "archive-rate", "archive-push")

def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# -- helpers ------------------------------------------------------------------------------


def tree_bytes(root: Path) -> tuple[int, int, int]:
    """(apparent bytes, allocated bytes, files) under root."""
    apparent = allocated = files = 0
    if not root.exists():
        return 0, 0, 0
    for dirpath, _dirs, names in os.walk(root):
        for n in names:
            try:
                st = os.lstat(os.path.join(dirpath, n))
            except FileNotFoundError:
                continue
            apparent += st.st_size
            allocated += st.st_blocks * 512
            files += 1
    return apparent, allocated, files


def file_sizes(root: Path) -> dict[str, int]:
    out: dict[str, int] = {}
    if not root.exists():
        return out
    for dirpath, _dirs, names in os.walk(root):
        for n in names:
            p = os.path.join(dirpath, n)
            try:
                out[os.path.relpath(p, root)] = os.lstat(p).st_size
            except FileNotFoundError:
                pass
    return out


def sync_and_settle(drop_caches: bool, quiet: float, max_wait: float, window: float = 1.0) -> dict[str, Any]:
    """sync (and drop caches), then wait until the machine is quiet: two consecutive windows
    with less than `quiet` cores busy (other sessions share this machine). Gives up after
    max_wait seconds and says so in the result."""
    os.sync()
    if drop_caches:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
    t0 = time.monotonic()
    calm = 0
    busy = 0.0
    while True:
        b0 = _proc_stat_busy()
        time.sleep(window)
        busy = (_proc_stat_busy() - b0) / window
        calm = calm + 1 if busy < quiet else 0
        if calm >= 2:
            return {"waited_s": round(time.monotonic() - t0, 1), "quiet": True, "busy_cores_before": round(busy, 2)}
        if time.monotonic() - t0 > max_wait:
            return {"waited_s": round(time.monotonic() - t0, 1), "quiet": False, "busy_cores_before": round(busy, 2)}


def fail_summary(run: dict[str, Any]) -> str:
    tail = (run.get("stderr_tail") or run.get("stdout_tail") or "").strip().splitlines()
    return tail[-1] if tail else f"exit code {run.get('rc')}"


# -- the benchmark ------------------------------------------------------------------------


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.pg = Cluster(WORK / "pgdata", args.port, WORK / "sock", WORK / "postgresql.log")
        self.pgsafe_conf = WORK / "pgsafe.toml"
        self.pgsafe_repo = WORK / "repo-pgsafe"
        self.pgbr_conf = WORK / "pgbackrest.conf"
        self.pgbr_repo = WORK / "repo-pgbackrest"
        self.started = dt.datetime.now(dt.timezone.utc)
        stamp = self.started.strftime("%Y%m%dT%H%M%SZ")
        self.result_path = RESULTS / f"{stamp}-{args.dataset}-s{args.scale}.json"
        self._settle: dict[str, Any] = {}
        self.results: dict[str, Any] = {
            "started": self.started.isoformat(timespec="seconds"),
            "command": "bench/run " + shlex.join(sys.argv[1:]),
            "dataset": {"name": args.dataset, "scale": args.scale},
            "settings": {}, "machine": {}, "versions": {},
            "runs": [], "checks": {}, "anomalies": [],
            "incr_seconds": args.incr_seconds, "archive_seconds": args.archive_seconds,
        }

    # archive commands, one per tool -----------------------------------------------------

    def pgsafe_push(self) -> str:
        return f"{PGSAFE} --config {self.pgsafe_conf} archive-push %p"

    def pgbr_push(self) -> str:
        return f"{PGBACKREST} --config={self.pgbr_conf} --stanza={STANZA} archive-push %p"

    def both_push(self) -> str:
        return f"{self.pgsafe_push()} && {self.pgbr_push()}"

    def pgsafe_cmd(self, *args: str) -> list[str]:
        return [str(PGSAFE), "--config", str(self.pgsafe_conf), *args]

    def pgbr_cmd(self, *args: str) -> list[str]:
        return [str(PGBACKREST), f"--config={self.pgbr_conf}", f"--stanza={STANZA}", *args]

    def anomaly(self, text: str) -> None:
        log("ANOMALY: " + text)
        self.results["anomalies"].append(text)
        self.save()

    def save(self) -> None:
        RESULTS.mkdir(parents=True, exist_ok=True)
        tmp = self.result_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.results, indent=1, default=str))
        tmp.replace(self.result_path)

    def record(self, run: dict[str, Any]) -> dict[str, Any]:
        run["before"] = self._settle
        self.results["runs"].append(run)
        self.save()
        state = ("ok" if run["rc"] == 0 else f"exit code {run['rc']} accepted: {run['rc_accepted']}"
                 if succeeded(run) else f"FAILED rc={run['rc']}: {fail_summary(run)}")
        state += f"; others used {run['foreign_cores']:.2f} cores" + ("" if self._settle.get("quiet") else
                                                                       " (machine never got quiet before)")
        stored = f", stored {run['stored_bytes'] / 1e6:.1f} MB" if run.get("stored_bytes") is not None else ""
        rss = f", {run['max_rss_mb']:.0f} MB rss" if run.get("max_rss_mb") is not None else ""
        log(f"  {run['op']:<14} {run['tool']:<14} round {run['round']}: {run['wall_s']:.2f} s wall, "
            f"{run['cpu_s']:.2f} s cpu{rss}{stored} - {state}")
        return run

    # setup ------------------------------------------------------------------------------

    def describe_machine(self) -> None:
        cpu = "unknown"
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
        mem_kb = int(re.search(r"MemTotal:\s+(\d+)", Path("/proc/meminfo").read_text()).group(1))
        dev, fstype = "?", "?"
        best = ""
        for line in Path("/proc/mounts").read_text().splitlines():
            d, mnt, fs = line.split()[:3]
            if str(WORK).startswith(mnt) and len(mnt) >= len(best):
                best, dev, fstype = mnt, d, fs
        rot = "?"
        base = os.path.basename(dev)
        if Path(f"/sys/block/{base}/queue/rotational").exists():
            rot = Path(f"/sys/block/{base}/queue/rotational").read_text().strip()
        self.results["machine"] = {
            "cores": os.cpu_count(), "cpu": cpu, "ram_gib": round(mem_kb / 1024 / 1024, 1),
            "disk": f"{dev} ({fstype}, mounted on {best}, rotational={rot})",
            "kernel": platform.release(), "os": _os_release(),
        }

    def disk_write_speed(self) -> None:
        """A rough ceiling for writing: 1 GiB with dd, flushed before dd exits."""
        target = WORK / "dd.tmp"
        t0 = time.perf_counter()
        subprocess.run(["dd", "if=/dev/zero", f"of={target}", "bs=4M", "count=256", "conv=fdatasync"],
                       capture_output=True, check=True)
        secs = time.perf_counter() - t0
        target.unlink()
        self.results["machine"]["disk_write_mb_s"] = round(1024 / secs * 1.048576, 0)

    def describe_versions(self) -> None:
        def out(cmd: list[str]) -> str:
            try:
                r = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
                return (r.stdout or r.stderr).strip().splitlines()[0]
            except Exception as exc:  # noqa: BLE001 - recorded as is
                return f"unavailable: {exc}"

        hashes = source_hashes(PGSAFE)
        head = out(["git", "-C", str(PROJECT), "rev-parse", "--short", "HEAD"])
        self.results["versions"] = {
            "pgsafe": out([str(PGSAFE.parent / "python"), "-c", "import pgsafe; print(pgsafe.__version__)"]),
            "pgsafe_source": self.args.pgsafe_from,
            "pgsafe_git_head": head,
            "pgsafe_src_sha1": hashes,
            "pgsafe_tested_matches": [k for k in ("git HEAD", "work tree", "installed")
                                      if hashes.get(k) == hashes["tested"]],
            "pgbackrest": out([str(PGBACKREST), "version"]),
            "postgresql": out([str(PGBIN / "postgres"), "--version"]),
            "pg_basebackup": out([str(PGBIN / "pg_basebackup"), "--version"]),
            "python": sys.version.split()[0],
            "zstandard_py": out([str(PGSAFE.parent / "python"), "-c",
                                 "import zstandard; print(zstandard.__version__, zstandard.ZSTD_VERSION)"]),
            "zstd_cli": out(["zstd", "--version"]),
        }
        log(f"pgsafe sources (sha1 of the .py files): {hashes}")

    def build_dataset(self) -> None:
        a = self.args
        marker = WORK / "dataset.json"
        wanted = {"dataset": a.dataset, "scale": a.scale, "port": a.port}
        if a.reuse_dataset and marker.exists() and json.loads(marker.read_text()).get("spec") == wanted:
            log(f"reusing the dataset in {WORK}")
            if not self.pg.running():
                self.pg.start()
            self.results["dataset"].update(json.loads(marker.read_text()))
            return
        if (WORK / "pgdata").exists():
            self.pg.stop()
        if WORK.exists():
            shutil.rmtree(WORK)
        mkdir_pg(WORK, 0o755)
        mkdir_pg(WORK / "sock", 0o755)
        log(f"initdb --data-checksums in {WORK / 'pgdata'}")
        run_pg([str(PGBIN / "initdb"), "-D", str(WORK / "pgdata"), "--data-checksums", "-A", "trust",
                "-U", OS_USER, "-E", "UTF8", "--locale=C"])
        with open(WORK / "pgdata" / "postgresql.conf", "a") as f:
            f.write(
                "\n# pgsafe bench\n"
                f"port = {a.port}\n"
                "listen_addresses = ''\n"
                f"unix_socket_directories = '{WORK / 'sock'}'\n"
                "wal_level = replica\n"
                "archive_mode = on\n"
                "archive_command = '/bin/true'\n"
                "max_wal_size = '4GB'\n"
                "shared_buffers = '256MB'\n"
                "logging_collector = off\n"
            )
        self.pg.start()
        t0 = time.perf_counter()
        run_pg([str(PGBIN / "createdb"), *self.pg.conn_args(), "bench"])
        if a.dataset == "pgbench":
            log(f"pgbench -i -s {a.scale}")
            run_pg([str(PGBIN / "pgbench"), *self.pg.conn_args(), "-i", "-q", "-s", str(a.scale), "bench"],
                   timeout=7200)
        elif a.dataset == "realistic":
            log(f"realistic dataset, about {a.scale * 110} MB of mixed tables")
            self.pg.sql(REALISTIC_SCHEMA, db="bench")
            for batch in range(a.scale):  # one transaction per ~110 MB
                self.pg.sql(REALISTIC_BATCH, db="bench")
            self.pg.sql(REALISTIC_INDEXES, db="bench")
            log(f"pgbench -i -s {REALISTIC_PGBENCH_SCALE} into the same database")
            run_pg([str(PGBIN / "pgbench"), *self.pg.conn_args(), "-i", "-q", "-s", str(REALISTIC_PGBENCH_SCALE),
                    "bench"], timeout=7200)
            self.pg.sql("VACUUM ANALYZE", db="bench")
        if a.dataset == "many-files":
            log(f"many-files dataset: {a.scale * 1000} tables with a primary key and an index each")
            for first in range(0, a.scale * 1000, 500):  # 500 tables a transaction (lock table size)
                self.pg.sql(MANY_FILES_BATCH.replace("FIRST", str(first)), db="bench")
            self.pg.sql("VACUUM ANALYZE", db="bench")
        self.pg.sql("CHECKPOINT")
        load = time.perf_counter() - t0
        size = int(self.pg.sql("SELECT pg_database_size('bench')"))
        info = {"spec": wanted, "load_s": round(load, 1), "bench_db_bytes": size,
                "built": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}
        marker.write_text(json.dumps(info))
        self.results["dataset"].update(info)
        log(f"dataset ready: {size / 1e9:.2f} GB in {load:.0f} s")

    def setup_tools(self) -> None:
        for d in ("repo-pgsafe", "repo-pgbackrest", "pgbackrest-log", "pgbackrest-lock", "pgbackrest-spool",
                  "basebackup", "restore", "walpool", "logs", "reference", "verify"):
            if (WORK / d).exists():
                shutil.rmtree(WORK / d)
        self.pg.set_archive_command("/bin/true")
        self.pg.wait_archive_idle()
        mkdir_pg(self.pgsafe_repo, 0o750)
        for d in ("pgbackrest-log", "pgbackrest-lock", "pgbackrest-spool", "basebackup", "restore", "walpool",
                  "logs", "reference", "verify"):
            mkdir_pg(WORK / d, 0o750)
        mkdir_pg(self.pgbr_repo, 0o750)
        level = self.args.level
        self.pgsafe_conf.write_text(
            "[repo.main]\n"
            f'path = "{self.pgsafe_repo}"\n'
            'compression = "zstd"\n'
            f"compression_level = {level}\n\n"
            "[cluster.main]\n"
            f'pgdata = "{self.pg.pgdata}"\n'
            f'host = "{self.pg.sockdir}"\n'
            f"port = {self.pg.port}\n"
            f'user = "{OS_USER}"\n'
        )
        self.pgbr_conf.write_text(
            "[global]\n"
            f"repo1-path={self.pgbr_repo}\n"
            "repo1-retention-full=1000\n"
            "compress-type=zst\n"
            f"compress-level={level}\n"
            f"process-max={self.args.jobs}\n"
            "start-fast=y\n"
            "archive-check=y\n"
            f"log-path={WORK / 'pgbackrest-log'}\n"
            f"lock-path={WORK / 'pgbackrest-lock'}\n"
            f"spool-path={WORK / 'pgbackrest-spool'}\n"
            "log-level-console=warn\n"
            "log-level-file=info\n\n"
            f"[{STANZA}]\n"
            f"pg1-path={self.pg.pgdata}\n"
            f"pg1-socket-path={self.pg.sockdir}\n"
            f"pg1-port={self.pg.port}\n"
            f"pg1-user={OS_USER}\n"
        )
        for p in (self.pgsafe_conf, self.pgbr_conf):
            os.chmod(p, 0o644)
        log("pgsafe init; pgbackrest stanza-create")
        run_pg(self.pgsafe_cmd("init"))
        run_pg(self.pgbr_cmd("stanza-create"))
        self.pg.set_archive_command(self.both_push())
        self.pg.sql("SELECT pg_switch_wal()")
        self.pg.wait_archive_idle()
        # sanity checks, untimed: each tool's own view that archiving works
        for tool, cmd in (("pgsafe", self.pgsafe_cmd("check")), ("pgbackrest", self.pgbr_cmd("check"))):
            r = run_pg(cmd, check=False, timeout=600)
            self.results["checks"][f"{tool} check"] = {"rc": r.returncode, "output": (r.stdout + r.stderr)[-3000:]}
            if r.returncode != 0:
                self.anomaly(f"`{shlex.join(cmd)}` exited {r.returncode}: {(r.stdout + r.stderr).strip()[-500:]}")
        self.results["settings"] = {
            "pgsafe": f"backup --type full --jobs {self.args.jobs}; zstd level {level}; "
                      f"restore --jobs {self.args.jobs} --target immediate",
            "pgbackrest": f"compress-type=zst compress-level={level} process-max={self.args.jobs} "
                          "start-fast=y archive-check=y (repo1-bundle off, the 2.45 default); "
                          f"restore --type=immediate --process-max={self.args.jobs}",
            "pg_basebackup": f"-Ft -Z client-zstd:{level} -X fetch -c fast (manifest and fsync on, the defaults)",
            REFERENCE: f"tar -cf - PGDATA minus pg_wal | zstd -{level} -T{self.args.jobs}: "
                       "the plain cost of reading and compressing the same files on all cores (no fsync, "
                       "no checksums, no backup API), as a reference",
            "archiving": "archive_command runs only the tool under test during its backup run; "
                         "both tools (pgsafe && pgbackrest) otherwise and during pg_basebackup",
            "before each run (untimed)": "switch archive_command, CHECKPOINT, wait until the archiver is idle, "
                                         "sync" + (", drop page cache" if self.args.drop_caches
                                                   else "; page cache warm (the whole dataset fits in RAM)"),
            "incremental": f"pgsafe backup --type incr --jobs {self.args.jobs}; pgbackrest --type=incr "
                           "(file-level: repo1-bundle and repo1-block off); chain restore as above into an "
                           "empty directory; delta restore: pgsafe restore --delta, pgbackrest --delta restore, "
                           "same options, over the directory the chain restore of the same backup left",
            "restore to time (PITR)": f"pgsafe restore --set ID --target-time T --target-action promote --jobs "
                                      f"{self.args.jobs}; pgbackrest --set=ID --type=time --target=T "
                                      f"--target-action=promote --process-max={self.args.jobs} restore; into an "
                                      "empty directory, then pg_ctl start (archive_mode off, another port) until "
                                      "pg_is_in_recovery() is false",
            "verify": f"pgsafe verify --jobs {self.args.jobs}; pgbackrest --process-max={self.args.jobs} verify",
            "postgresql.conf": "wal_level=replica archive_mode=on shared_buffers=256MB max_wal_size=4GB, "
                               "data checksums on",
        }
        self.save()

    def prepare_run(self, archive_command: str) -> None:
        self.pg.set_archive_command(archive_command)
        self.pg.sql("CHECKPOINT")
        stats = self.pg.wait_archive_idle()
        if stats["failed_count"] > self._failed_seen:
            self.anomaly(f"archiver failures: {stats} (see {self.pg.logfile})")
            self._failed_seen = stats["failed_count"]
        self._settle = sync_and_settle(self.args.drop_caches, self.args.quiet, self.args.quiet_wait)

    # full backups -----------------------------------------------------------------------

    def backup_pgsafe(self, rnd: int, kind: str = "full") -> dict[str, Any]:
        self.prepare_run(self.pgsafe_push())
        backups = self.pgsafe_repo / "cluster" / CLUSTER / "backup"
        walroot = self.pgsafe_repo / "cluster" / CLUSTER / "wal"
        wal0 = file_sizes(walroot)
        before = set(os.listdir(backups)) if backups.exists() else set()
        run = measure(self.pgsafe_cmd("backup", "--type", kind, "--jobs", str(self.args.jobs),
                                      "--output", "json"),
                      f"backup-pgsafe-{rnd}" if kind == "full" else f"backup-pgsafe-{kind}-{rnd}")
        run.update(op=f"{kind} backup", tool="pgsafe", round=rnd)
        new = sorted(set(os.listdir(backups)) - before) if backups.exists() else []
        if run["rc"] == 0:
            try:
                doc = json.loads(run["stdout_tail"])
                run["backup_id"] = doc.get("id")
                run["reported"] = {k: doc.get(k) for k in ("size", "stored_size", "file_count", "duration",
                                                           "wal_start", "wal_stop", "checksum_errors")}
                if doc.get("checksum_errors"):
                    self.anomaly(f"pgsafe backup round {rnd} reported checksum errors: {doc['checksum_errors']}")
            except ValueError:
                run["backup_id"] = new[-1] if new else None
            if run.get("backup_id"):
                app, alloc, files = tree_bytes(backups / run["backup_id"])
                run.update(stored_bytes=app, stored_alloc_bytes=alloc, stored_files=files)
        wal1 = file_sizes(walroot)
        run["wal_archived_during_run"] = {"files": len(set(wal1) - set(wal0)),
                                          "bytes": sum(wal1[k] for k in set(wal1) - set(wal0))}
        return self.record(run)

    def backup_pgbackrest(self, rnd: int, kind: str = "full") -> dict[str, Any]:
        self.prepare_run(self.pgbr_push())
        backups = self.pgbr_repo / "backup" / STANZA
        walroot = self.pgbr_repo / "archive" / STANZA
        wal0 = file_sizes(walroot)
        label = r"^\d{8}-\d{6}F$" if kind == "full" else r"^\d{8}-\d{6}F_\d{8}-\d{6}[ID]$"
        before = {d for d in os.listdir(backups) if re.match(label, d)}
        run = measure(self.pgbr_cmd(f"--type={kind}", "backup"),
                      f"backup-pgbackrest-{rnd}" if kind == "full" else f"backup-pgbackrest-{kind}-{rnd}")
        run.update(op=f"{kind} backup", tool="pgbackrest", round=rnd)
        new = sorted({d for d in os.listdir(backups) if re.match(label, d)} - before)
        if run["rc"] == 0 and new:
            run["backup_id"] = new[-1]
            app, alloc, files = tree_bytes(backups / new[-1])
            run.update(stored_bytes=app, stored_alloc_bytes=alloc, stored_files=files)
            try:
                info = json.loads(run_pg(self.pgbr_cmd("--output=json", "info")).stdout)
                for b in info[0]["backup"]:
                    if b["label"] == new[-1]:
                        run["reported"] = {"size": b["info"]["size"], "repo_size": b["info"]["repository"]["size"],
                                           "wal_start": b["archive"]["start"], "wal_stop": b["archive"]["stop"]}
            except Exception as exc:  # noqa: BLE001 - informational only
                run["reported"] = {"error": str(exc)}
        wal1 = file_sizes(walroot)
        run["wal_archived_during_run"] = {"files": len(set(wal1) - set(wal0)),
                                          "bytes": sum(wal1[k] for k in set(wal1) - set(wal0))}
        return self.record(run)

    def backup_basebackup(self, rnd: int) -> dict[str, Any]:
        self.prepare_run(self.both_push())
        out = WORK / "basebackup" / f"round{rnd}"
        if out.exists():  # a discarded (noisy) attempt of this round
            shutil.rmtree(out)
        run = measure([str(PGBIN / "pg_basebackup"), *self.pg.conn_args(), "-D", str(out), "-Ft",
                       "-Z", f"client-zstd:{self.args.level}", "-X", "fetch", "-c", "fast", "-w"],
                      f"backup-pg_basebackup-{rnd}")
        run.update(op="full backup", tool="pg_basebackup", round=rnd)
        if run["rc"] == 0:
            app, alloc, files = tree_bytes(out)
            run.update(stored_bytes=app, stored_alloc_bytes=alloc, stored_files=files)
            run["note"] = "stored bytes include the WAL of the backup (-X fetch)"
        for old in (WORK / "basebackup").iterdir():
            if old != out:
                shutil.rmtree(old)
        return self.record(run)

    def backup_reference(self, rnd: int) -> dict[str, Any]:
        self.prepare_run(self.both_push())
        out = WORK / "reference" / "pgdata.tar.zst"
        if out.exists():
            out.unlink()
        # tar exits 1 when a file changed while read (the server is running): not a failure here
        script = (f"set -o pipefail; tar -C {shlex.quote(str(self.pg.pgdata))} --exclude=./pg_wal/* "
                  f"-cf - . | zstd -q -{self.args.level} -T{self.args.jobs} -o {shlex.quote(str(out))}; "
                  "rc=$?; [ $rc -le 1 ] && exit 0 || exit $rc")
        run = measure([script], f"backup-reference-{rnd}", shell=True)
        run.update(op="full backup", tool=REFERENCE, round=rnd)
        if run["rc"] == 0:
            app, alloc, files = tree_bytes(out.parent)
            run.update(stored_bytes=app, stored_alloc_bytes=alloc, stored_files=files)
            run["note"] = "reference only, not a backup (no fsync, no checksums, no backup API)"
        return self.record(run)

    # restores ---------------------------------------------------------------------------

    def last_backup(self, tool: str, op: str = "full backup") -> str | None:
        ids = [r.get("backup_id") for r in self.results["runs"]
               if r["op"] == op and r["tool"] == tool and r["rc"] == 0 and r.get("backup_id")]
        return ids[-1] if ids else None

    def restore(self, tool: str, rnd: int, op: str = "restore") -> dict[str, Any] | None:
        """op "restore": last full backup into an empty directory; "restore (full+incr)": the last
        incremental (its chain) into an empty directory; "delta restore": the last incremental again
        with --delta over the directory the previous restore of that same backup left (identical)."""
        backup_id = self.last_backup(tool, "full backup" if op == "restore" else "incr backup")
        if backup_id is None:
            self.anomaly(f"no successful {tool} backup to restore")
            return None
        target = WORK / "restore" / tool
        delta = op == "delta restore"
        if not delta:
            if target.exists():
                shutil.rmtree(target)
            mkdir_pg(target, 0o700)
        elif not (target / "PG_VERSION").exists():
            self.anomaly(f"delta restore of {tool}: {target} holds no restored cluster")
            return None
        self._settle = sync_and_settle(self.args.drop_caches, self.args.quiet, self.args.quiet_wait)
        j = str(self.args.jobs)
        if tool == "pgsafe":
            cmd = self.pgsafe_cmd("restore", "--target-dir", str(target), "--set", backup_id, "--target",
                                  "immediate", "--target-action", "promote", "--jobs", j, "--output", "json",
                                  *(["--delta"] if delta else []))
        else:
            cmd = self.pgbr_cmd(f"--pg1-path={target}", f"--set={backup_id}", "--type=immediate",
                                "--target-action=promote", f"--process-max={j}", *(["--delta"] if delta else []),
                                "restore")
        tag = {"restore": "restore", "restore (full+incr)": "restore-chain", "delta restore": "restore-delta"}[op]
        run = measure(cmd, f"{tag}-{tool}-{rnd}")
        run.update(op=op, tool=tool, round=rnd, backup_id=backup_id)
        if run["rc"] == 0:
            app, alloc, files = tree_bytes(target)
            run.update(restored_bytes=app, restored_files=files)
        return self.record(run)

    def source_fingerprint(self, cluster: Cluster) -> str:
        if self.args.dataset == "many-files":
            return cluster.sql(
                "SELECT count(*) || ':' || sum(reltuples) FROM pg_class WHERE relname LIKE 'mf\\_%' "
                "AND relkind = 'r'", db="bench") + ":" + cluster.sql(
                "SELECT count(*) || ':' || sum(hashtext(t::text)::bigint) FROM mf_1 t", db="bench")
        pgbench_tables = ("(SELECT count(*) FROM pgbench_accounts) || ':' || "
                          "(SELECT sum(abalance) FROM pgbench_accounts) || ':' || "
                          "(SELECT sum(hashtext(a::text)::bigint) FROM pgbench_accounts a) || ':' || "
                          "(SELECT count(*) FROM pgbench_branches) || ':' || (SELECT count(*) FROM pgbench_tellers)")
        if self.args.dataset == "realistic":
            return cluster.sql(
                "SELECT (SELECT count(*) || ':' || sum(hashtext(e::text)::bigint) FROM events e) || ':' || "
                "(SELECT count(*) || ':' || sum(hashtext(d::text)::bigint) FROM documents d) || ':' || "
                + pgbench_tables, db="bench")
        return cluster.sql("SELECT " + pgbench_tables, db="bench")

    def verify_restore(self, tool: str, expected: str, what: str = "") -> None:
        """Untimed: start the restored copy, let it recover and promote, compare the data."""
        target = WORK / "restore" / tool
        if not (target / "PG_VERSION").exists():
            return
        sock = mkdir_pg(WORK / "verify" / tool, 0o755)
        copy = Cluster(target, self.args.port + 1, sock, WORK / "verify" / f"{tool}.log")
        opts = f"-c port={copy.port} -c unix_socket_directories={sock} -c archive_mode=off"
        verdict: dict[str, Any] = {}
        try:
            copy.start(opts)
            deadline = time.monotonic() + 600
            while copy.sql("SELECT pg_is_in_recovery()") == "t":
                if time.monotonic() > deadline:
                    raise RuntimeError("still in recovery after 600 s")
                time.sleep(0.5)
            got = self.source_fingerprint(copy)
            verdict = {"ok": got == expected, "got": got, "expected": expected}
            if got != expected:
                self.anomaly(f"restored {tool} copy differs from the source: {got} != {expected}")
        except Exception as exc:  # noqa: BLE001 - reported
            verdict = {"ok": False, "error": str(exc)[-2000:]}
            self.anomaly(f"restored {tool} copy did not start or recover: {str(exc)[-800:]} "
                         f"(log {copy.logfile})")
        finally:
            try:
                copy.stop()
            except Exception:  # noqa: BLE001
                pass
        self.results["checks"][f"restore {tool} verified" + (f" ({what})" if what else "")] = verdict
        log(f"  restored {tool} copy{f' ({what})' if what else ''}: {'data matches the source' if verdict.get('ok') else 'PROBLEM'}")
        self.save()

    # archive-push -----------------------------------------------------------------------

    def capture_segments(self, need: int) -> list[Path]:
        """Real, full 16 MiB segments of this cluster, never pushed to either repository:
        the archiver copies them into walpool/ while pgbench runs on a side database."""
        pool = WORK / "walpool"
        log(f"capturing {need} real WAL segments (pgbench on a side database)")
        self.pg.set_archive_command(self.both_push())
        self.pg.sql("DROP DATABASE IF EXISTS walgen")
        run_pg([str(PGBIN / "createdb"), *self.pg.conn_args(), "walgen"])
        run_pg([str(PGBIN / "pgbench"), *self.pg.conn_args(), "-i", "-q", "-s", "10", "walgen"])
        self.pg.wait_archive_idle()
        self.pg.set_archive_command(f"test ! -f {pool}/%f && cp %p {pool}/%f")
        deadline = time.monotonic() + 1800
        while len([p for p in pool.iterdir() if SEGMENT_RE.match(p.name)]) < need:
            if time.monotonic() > deadline:
                raise RuntimeError("could not capture enough WAL segments in 30 min")
            self.pg.sql("CHECKPOINT")  # full-page images after a checkpoint, as in production
            run_pg([str(PGBIN / "pgbench"), *self.pg.conn_args(), "-n", "-c", "2", "-j", "2", "-T", "10",
                    "walgen"])
        self.pg.set_archive_command(self.both_push())
        self.pg.sql("DROP DATABASE walgen")
        self.pg.wait_archive_idle()
        segs = sorted(p for p in pool.iterdir() if SEGMENT_RE.match(p.name))[:need]
        for s in segs:
            if s.stat().st_size != 16 * 1024 * 1024:
                self.anomaly(f"captured segment {s.name} is {s.stat().st_size} bytes")
        return segs

    def archive_push(self) -> None:
        n = self.args.segments
        segs = self.capture_segments(n + 1)  # the first is a warm-up push for each tool
        raw = sum(s.stat().st_size for s in segs)
        z = subprocess.run(["bash", "-c", f"cat {' '.join(shlex.quote(str(s)) for s in segs)} | "
                                          f"zstd -q -{self.args.level} -c | wc -c"],
                           capture_output=True, text=True, check=True)
        self.results["wal_segments"] = {"count": len(segs), "first": segs[0].name, "last": segs[-1].name,
                                        "zstd_ratio": round(raw / int(z.stdout), 2)}
        pgsafe_wal = self.pgsafe_repo / "cluster" / CLUSTER / "wal"
        pgbr_wal = self.pgbr_repo / "archive" / STANZA
        log(f"archive-push: {n} segments (+1 warm-up) per tool, alternating")
        for i, seg in enumerate(segs):
            order = ("pgsafe", "pgbackrest") if i % 2 == 0 else ("pgbackrest", "pgsafe")
            for tool in order:
                if tool == "pgsafe":
                    cmd = self.pgsafe_cmd("archive-push", str(seg))
                    before = file_sizes(pgsafe_wal)
                else:
                    cmd = self.pgbr_cmd("archive-push", str(seg))
                    before = file_sizes(pgbr_wal)
                self._settle = sync_and_settle(False, self.args.quiet, self.args.quiet_wait, window=0.5)
                run = measure(cmd, f"archive-push-{tool}-{i}", sample=False)
                run.update(op="archive-push", tool=tool, round=i, segment=seg.name, warmup=i == 0)
                after = file_sizes(pgsafe_wal if tool == "pgsafe" else pgbr_wal)
                new = set(after) - set(before)
                run["stored_bytes"] = sum(after[k] for k in new)
                if run["rc"] == 0 and not new:
                    self.anomaly(f"{tool} archive-push of {seg.name} succeeded but stored no new file")
                self.record(run)
        failed = next((r for r in self.results["runs"] if r["op"] == "archive-push" and r["rc"] != 0), None)
        if failed is not None:
            self.anomaly(f"{failed['tool']} archive-push of {failed['segment']} failed (rc {failed['rc']}): "
                         f"`{failed['command']}`: {fail_summary(failed)}")

    # incremental backups, chain restore, delta restore -----------------------------------

    def incremental(self) -> None:
        """Per round: pgbench -c4 on the dataset for --incr-seconds (both tools archiving), then an
        incremental backup by each tool (alternating who goes first). Each incremental's parent is
        the tool's previous backup (the last full, then the previous incremental). Then restores of
        each tool's last incremental (its whole chain) into an empty directory, and delta restores of
        that same backup over the directory the chain restore left, alternating; finally, untimed,
        each copy is started and compared with the source."""
        a = self.args
        workload = self.incr_workload()
        self.results["incr_workload"] = "pgbench " + shlex.join(workload[len(self.pg.conn_args()) + 1:])
        log(f"incremental backups: {a.rounds} rounds of {self.results['incr_workload']}, then pgsafe and pgbackrest")
        for rnd in range(1, a.rounds + 1):
            self.pg.set_archive_command(self.both_push())
            r = run_pg(workload, timeout=a.incr_seconds + 600)
            tps = re.search(r"tps = ([0-9.]+)", r.stdout)
            self.results.setdefault("incr_pgbench", []).append({"round": rnd, "tps": tps.group(1) if tps else None})
            order = ("pgsafe", "pgbackrest") if rnd % 2 else ("pgbackrest", "pgsafe")
            for tool in order:
                step = self.backup_pgsafe if tool == "pgsafe" else self.backup_pgbackrest
                run = self.retry_noisy(lambda: step(rnd, "incr"))
                if run["rc"] != 0:
                    self.anomaly(f"{tool} incr backup round {rnd} failed (rc {run['rc']}): `{run['command']}`: "
                                 f"{fail_summary(run)}")
        expected = self.source_fingerprint(self.pg)
        self.results["checks"]["source fingerprint after pgbench"] = expected
        for op in ("restore (full+incr)", "delta restore"):
            log(f"{op}: {a.rounds} rounds of pgsafe pgbackrest")
            for rnd in range(1, a.rounds + 1):
                order = ("pgsafe", "pgbackrest") if rnd % 2 else ("pgbackrest", "pgsafe")
                for tool in order:
                    run = self.retry_noisy(lambda: self.restore(tool, rnd, op))
                    if run is not None and run["rc"] != 0:
                        self.anomaly(f"{tool} {op} round {rnd} failed (rc {run['rc']}): `{run['command']}`: "
                                     f"{fail_summary(run)}")
        if not a.no_verify:
            for tool in ("pgsafe", "pgbackrest"):
                self.verify_restore(tool, expected, "incr")
        for tool in ("pgsafe", "pgbackrest"):
            if (WORK / "restore" / tool).exists():
                shutil.rmtree(WORK / "restore" / tool)

    def incr_workload(self) -> list[str]:
        """pgbench -c4 -j2 -T N: the builtin tpcb-like script; on `realistic` also, with the same
        weight, REALISTIC_WORKLOAD, which changes the mixed tables."""
        cmd = [str(PGBIN / "pgbench"), *self.pg.conn_args(), "-n", "-c", "4", "-j", "2", "-T",
               str(self.args.incr_seconds)]
        if self.args.dataset != "realistic":
            return cmd + ["bench"]
        script = WORK / "realistic-workload.sql"
        script.write_text(REALISTIC_WORKLOAD)
        os.chmod(script, 0o644)
        max_event = self.pg.sql("SELECT max(id) FROM events", db="bench")
        max_document = self.pg.sql("SELECT max(id) FROM documents", db="bench")
        return cmd + ["-D", f"max_event={max_event}", "-D", f"max_document={max_document}",
                      "-b", "tpcb-like@1", "-f", f"{script}@1", "bench"]

    def retry_noisy(self, attempt: Any) -> dict[str, Any] | None:
        """Run a timed step; when other processes used more than --max-noise cores on average
        during it, mark it discarded (kept in the raw results) and run it again, up to
        --retries times. The last attempt counts whatever its noise."""
        for n in range(self.args.retries + 1):
            run = attempt()
            if run is None or not succeeded(run) or run["foreign_cores"] <= self.args.max_noise \
                    or n == self.args.retries:
                return run
            run["discarded"] = f"others used {run['foreign_cores']:.2f} cores during the run"
            for part in self.results["runs"]:  # the rows recorded for parts of the same attempt
                if run.get("group") and part.get("group") == run["group"]:
                    part["discarded"] = run["discarded"]
            log(f"  discarded ({run['discarded']}); again")
            self.save()
        return run

    # sustained WAL archiving under pgbench ----------------------------------------------

    def archive_rate(self) -> None:
        """Per round and tool (alternating who goes first), with archive_command set to that tool
        only: CHECKPOINT, wait until the archiver is idle, then pgbench -n -c4 -j2 -T S with
        synchronous_commit off (so WAL comes faster than one segment a second). Measured: WAL
        generated and segments archived per second during pgbench, the backlog of .ready segments
        (peak, and when pgbench ends), the time the archiver then needs to drain it, and the CPU of
        the archive_command (the archiver's reaped children) per segment."""
        a = self.args
        log(f"archive rate: {a.rounds} rounds of pgbench -n -c4 -j2 -T{a.archive_seconds} per tool, alternating")
        for rnd in range(1, a.rounds + 1):
            order = ("pgsafe", "pgbackrest") if rnd % 2 else ("pgbackrest", "pgsafe")
            for tool in order:
                run = self.retry_noisy(lambda: self.archive_rate_run(tool, rnd))
                if run["rc"] != 0:
                    self.anomaly(f"{tool} archive rate round {rnd} failed: {fail_summary(run)}")
        self.pg.set_archive_command(self.both_push())

    def archive_rate_run(self, tool: str, rnd: int) -> dict[str, Any]:
        seconds = self.args.archive_seconds
        walroot = self.pgsafe_repo / "cluster" / CLUSTER / "wal" if tool == "pgsafe" else \
            self.pgbr_repo / "archive" / STANZA
        self.prepare_run(self.pgsafe_push() if tool == "pgsafe" else self.pgbr_push())
        status = self.pg.pgdata / "pg_wal" / "archive_status"

        def backlog() -> int:
            return sum(1 for p in status.iterdir() if p.name.endswith(".ready"))

        archiver = int(self.pg.sql("SELECT pid FROM pg_stat_activity WHERE backend_type = 'archiver'"))
        wal0 = file_sizes(walroot)
        stats0 = self.pg.archiver_stats()
        lsn0 = self.pg.sql("SELECT pg_current_wal_lsn()")
        cpu0 = timing.process_cpu(archiver)
        others0 = timing.foreign_cpu_snapshot()
        done: list[subprocess.CompletedProcess] = []
        pgbench = threading.Thread(target=lambda: done.append(run_pg(
            [str(PGBIN / "pgbench"), *self.pg.conn_args(), "-n", "-c", "4", "-j", "2", "-T", str(seconds), "bench"],
            check=False, timeout=seconds + 600, env={"PGOPTIONS": "-c synchronous_commit=off"})))
        t0 = time.perf_counter()
        pgbench.start()
        peak = 0
        while pgbench.is_alive():
            peak = max(peak, backlog())
            pgbench.join(0.5)
        t1 = time.perf_counter()
        stats1 = self.pg.archiver_stats()
        lsn1 = self.pg.sql("SELECT pg_current_wal_lsn()")
        at_end = backlog()
        stats2 = self.pg.wait_archive_idle()
        t2 = time.perf_counter()
        cpu = timing.process_cpu(archiver) - cpu0
        foreign = timing.foreign_cpu_delta(others0, timing.foreign_cpu_snapshot())
        generated = int(self.pg.sql(f"SELECT pg_wal_lsn_diff('{lsn1}', '{lsn0}')"))
        archived = stats1["archived_count"] - stats0["archived_count"]
        drained = stats2["archived_count"] - stats1["archived_count"]
        wal1 = file_sizes(walroot)
        tps = re.search(r"tps = ([0-9.]+)", done[0].stdout) if done else None
        run = {
            "op": "archive rate", "tool": tool, "round": rnd,
            "command": f"pgbench -n -c4 -j2 -T{seconds} (synchronous_commit=off), archive_command: "
                       + (self.pgsafe_push() if tool == "pgsafe" else self.pgbr_push()),
            "rc": 0 if done and done[0].returncode == 0 and stats2["failed_count"] == stats0["failed_count"] else 1,
            "stderr_tail": (done[0].stderr[-3000:] if done else "pgbench did not finish")
                           + (f"\narchiver failures: {stats2}" if stats2["failed_count"] > stats0["failed_count"]
                              else ""),
            "pgbench_s": round(t1 - t0, 2), "tps": float(tps.group(1)) if tps else None,
            "wal_generated_bytes": generated, "wal_mb_s": round(generated / (t1 - t0) / 1e6, 2),
            "segments_archived_during": archived, "segments_s": round(archived / (t1 - t0), 3),
            "archived_mb_s": round(archived * WAL_SEGMENT / (t1 - t0) / 1e6, 2),
            "backlog_peak": peak, "backlog_end": at_end, "segments_drained": drained,
            "drain_s": round(t2 - t1, 2),
            # wall: from the start of pgbench until every segment it wrote is archived
            "wall_s": round(t2 - t0, 2), "cpu_s": round(cpu, 3),
            "cpu_ms_per_segment": round(cpu * 1000 / (archived + drained), 1) if archived + drained else None,
            "max_rss_mb": None, "foreign_cores": round(foreign / (t2 - t0), 3),
            "stored_bytes": sum(wal1[k] for k in set(wal1) - set(wal0)),
        }
        self._failed_seen = stats2["failed_count"]
        log(f"  archive rate {tool} round {rnd}: WAL {run['wal_mb_s']} MB/s generated, {run['archived_mb_s']} MB/s "
            f"archived during pgbench; backlog {at_end} segments at its end (peak {peak}), drained in "
            f"{run['drain_s']} s; {run['cpu_ms_per_segment']} ms CPU per segment")
        return self.record(run)

    # restore to a target time, until the server is promoted -----------------------------

    def pitr(self) -> None:
        """Untimed setup: an incremental backup by each tool with both tools archiving, so that each
        repository holds every segment from its latest backup on (the timed backups archive through
        the tool under test only); a marker row `before`; the target time T; a little more workload
        and a marker row `after`; pg_switch_wal; wait until both tools archived it. Then, per round
        and tool (alternating), from an empty directory: the tool's restore of its latest backup
        with target time T and action promote, then the server started on another port until
        pg_is_in_recovery() is false. Each copy must hold `before` and not `after`."""
        a = self.args
        log("restore to a target time: base backups and a target time, untimed")
        self.pg.set_archive_command(self.both_push())
        base = {"pgsafe": self.untimed_backup_pgsafe(), "pgbackrest": self.untimed_backup_pgbackrest()}
        self.pg.sql("CREATE TABLE IF NOT EXISTS pitr_marker (name text PRIMARY KEY, at timestamptz "
                    "DEFAULT clock_timestamp())", db="bench")
        self.pg.sql("INSERT INTO pitr_marker (name) VALUES ('before')", db="bench")
        time.sleep(1)
        target = self.pg.sql("SELECT pg_switch_wal(); SELECT now()").splitlines()[-1]
        time.sleep(1)
        if self.has_pgbench_tables():
            run_pg([str(PGBIN / "pgbench"), *self.pg.conn_args(), "-n", "-c", "2", "-j", "2", "-T", "3", "bench"])
        self.pg.sql("INSERT INTO pitr_marker (name) VALUES ('after')", db="bench")
        self.pg.sql("SELECT pg_switch_wal()")
        self.pg.wait_archive_idle()
        self.results["pitr"] = {"target_time": target, "base_backups": base}
        log(f"restore to time {target}: {a.rounds} rounds of pgsafe pgbackrest (alternating), until promoted")
        for rnd in range(1, a.rounds + 1):
            order = ("pgsafe", "pgbackrest") if rnd % 2 else ("pgbackrest", "pgsafe")
            for tool in order:
                runs = self.retry_noisy(lambda: self.pitr_run(tool, rnd, base[tool], target))
                if runs["rc"] != 0:
                    self.anomaly(f"{tool} restore to time round {rnd} failed: {fail_summary(runs)}")

    def has_pgbench_tables(self) -> bool:
        return self.pg.sql("SELECT to_regclass('pgbench_accounts') IS NOT NULL", db="bench") == "t"

    def untimed_backup_pgsafe(self) -> str:
        r = run_pg(self.pgsafe_cmd("backup", "--type", "incr", "--jobs", str(self.args.jobs), "--output", "json"),
                   timeout=7200)
        return json.loads(r.stdout)["id"]

    def untimed_backup_pgbackrest(self) -> str:
        run_pg(self.pgbr_cmd("--type=incr", "backup"), timeout=7200)
        info = json.loads(run_pg(self.pgbr_cmd("--output=json", "info")).stdout)
        return info[0]["backup"][-1]["label"]

    def pitr_run(self, tool: str, rnd: int, backup_id: str, target: str) -> dict[str, Any]:
        """One restore to time T until promoted; records three rows: the restore command, the
        recovery (server start to promotion) and the whole; returns the whole."""
        copy_dir = WORK / "pitr" / tool
        if copy_dir.exists():
            shutil.rmtree(copy_dir)
        mkdir_pg(copy_dir, 0o700)
        self._settle = sync_and_settle(self.args.drop_caches, self.args.quiet, self.args.quiet_wait)
        j = str(self.args.jobs)
        if tool == "pgsafe":
            cmd = self.pgsafe_cmd("restore", "--target-dir", str(copy_dir), "--set", backup_id, "--target-time",
                                  target, "--target-action", "promote", "--jobs", j, "--output", "json")
        else:
            cmd = self.pgbr_cmd(f"--pg1-path={copy_dir}", f"--set={backup_id}", "--type=time", f"--target={target}",
                                "--target-action=promote", f"--process-max={j}", "restore")
        t0 = time.perf_counter()
        restore = measure(cmd, f"pitr-restore-{tool}-{rnd}")
        restore.update(op="PITR: restore command", tool=tool, round=rnd, backup_id=backup_id)
        recovery: dict[str, Any] = {"op": "PITR: recovery until promoted", "tool": tool, "round": rnd, "rc": 1,
                                    "command": "pg_ctl start, then poll pg_is_in_recovery() every 0.1 s",
                                    "wall_s": 0.0, "cpu_s": 0.0, "max_rss_mb": None, "foreign_cores": 0.0}
        sock = mkdir_pg(WORK / "verify" / f"pitr-{tool}", 0o755)
        copy = Cluster(copy_dir, self.args.port + 1, sock, WORK / "verify" / f"pitr-{tool}-{rnd}.log")
        if restore["rc"] == 0:
            timing.OWN_SERVERS.add(copy_dir)
            others0 = timing.foreign_cpu_snapshot()
            t1 = time.perf_counter()
            try:
                copy.start(f"-c port={copy.port} -c unix_socket_directories={sock} -c archive_mode=off")
                while copy.sql("SELECT pg_is_in_recovery()") == "t":
                    if time.perf_counter() - t1 > 3600:
                        raise RuntimeError("still in recovery after an hour")
                    time.sleep(0.1)
                t2 = time.perf_counter()
                recovery.update(wall_s=round(t2 - t1, 3), cpu_s=round(timing.postmaster_cpu(copy_dir), 3),
                                foreign_cores=round(timing.foreign_cpu_delta(
                                    others0, timing.foreign_cpu_snapshot()) / (t2 - t1), 3))
                markers = copy.sql("SELECT string_agg(name, ',' ORDER BY name) FROM pitr_marker", db="bench")
                recovery["markers"] = markers
                recovery["rc"] = 0 if markers == "before" else 1
                if markers != "before":
                    recovery["stderr_tail"] = f"markers in the copy: {markers!r}, expected 'before' only"
                    self.anomaly(f"{tool} restore to time {target}: the copy holds markers {markers!r}, not "
                                 f"'before' only")
            except Exception as exc:  # noqa: BLE001 - recorded
                recovery["stderr_tail"] = str(exc)[-3000:] + f" (log {copy.logfile})"
            finally:
                try:
                    copy.stop()
                except Exception:  # noqa: BLE001
                    pass
                timing.OWN_SERVERS.discard(copy_dir)
        whole = {"op": "PITR: restore until promoted", "tool": tool, "round": rnd, "command": restore["command"],
                 "rc": restore["rc"] or recovery["rc"],
                 "stderr_tail": restore.get("stderr_tail") if restore["rc"] else recovery.get("stderr_tail"),
                 "wall_s": round(time.perf_counter() - t0 if recovery["rc"] else
                                 restore["wall_s"] + recovery["wall_s"], 3),
                 "cpu_s": round(restore["cpu_s"] + recovery["cpu_s"], 3), "max_rss_mb": restore["max_rss_mb"],
                 "tree_pss_peak_mb": restore["tree_pss_peak_mb"],
                 "foreign_cores": max(restore["foreign_cores"], recovery["foreign_cores"]),
                 "target_time": target, "backup_id": backup_id}
        shutil.rmtree(copy_dir)
        restore["group"] = recovery["group"] = whole["group"] = f"{tool}-{rnd}-{len(self.results['runs'])}"
        self.record(restore)
        self.record(recovery)
        return self.record(whole)

    # verify -----------------------------------------------------------------------------

    def verify_repos(self) -> None:
        """pgsafe verify against pgbackrest verify, each over its whole repository (every backup and
        the archived WAL), alternating."""
        a = self.args
        log(f"verify: {a.rounds} rounds of pgsafe pgbackrest (alternating)")
        for rnd in range(1, a.rounds + 1):
            order = ("pgsafe", "pgbackrest") if rnd % 2 else ("pgbackrest", "pgsafe")
            for tool in order:
                run = self.retry_noisy(lambda: self.verify_run(tool, rnd))
                if not succeeded(run):
                    self.anomaly(f"{tool} verify round {rnd} failed (rc {run['rc']}): `{run['command']}`: "
                                 f"{fail_summary(run)}")

    def verify_run(self, tool: str, rnd: int) -> dict[str, Any]:
        self.prepare_run(self.both_push())
        if tool == "pgsafe":
            cmd = self.pgsafe_cmd("verify", "--jobs", str(self.args.jobs), "--output", "json")
        else:
            cmd = self.pgbr_cmd(f"--process-max={self.args.jobs}", "--output=text", "--verbose", "verify")
        run = measure(cmd, f"verify-{tool}-{rnd}")
        run.update(op="verify", tool=tool, round=rnd)
        if tool == "pgsafe" and run["rc"] != 0:
            self.accept_wal_gaps(run, WORK / "logs" / f"verify-{tool}-{rnd}.out")
        run["repo_bytes"] = tree_bytes(self.pgsafe_repo if tool == "pgsafe" else self.pgbr_repo)[0]
        return self.record(run)

    @staticmethod
    def accept_wal_gaps(run: dict[str, Any], output: Path) -> None:
        """pgsafe verify exits non-zero on gaps in the archived WAL, and each repository has some: the
        WAL written while the other tool's backup is timed goes to that tool only. The run did the
        whole verify all the same; it counts when gaps are all it found."""
        try:
            problems = [p for repo in json.loads(output.read_text()) for p in repo.get("problems", [])]
        except (OSError, ValueError, TypeError, AttributeError):
            return
        run["problems"] = [f"{p.get('kind')}: {p.get('detail')}" for p in problems]
        if problems and all(p.get("kind") == "wal-gap" for p in problems):
            run["rc_accepted"] = ("the only problems are gaps in the WAL archive, which the bench makes (each tool's "
                                  "timed backups are archived by that tool alone); pgBackRest's verify lists the "
                                  "same kind of gaps as ranges and exits 0")

    # the whole thing --------------------------------------------------------------------

    def run(self) -> None:
        a = self.args
        global PGSAFE
        timing.SERVER_PGDATA = self.pg.pgdata
        phases = self.phases()
        self.results["phases"] = phases
        log(f"phases: {', '.join(phases)}")
        self.describe_machine()
        self.build_dataset()
        PGSAFE = snapshot_pgsafe(a.pgsafe_from, WORK)
        log(f"pgsafe under test: {PGSAFE} (a copy of the {a.pgsafe_from} package)")
        self.describe_versions()
        self.disk_write_speed()
        self._failed_seen = self.pg.archiver_stats()["failed_count"]
        self.setup_tools()
        steps = {"full": self.full_backups, "restore": self.restores, "incr": self.incremental, "pitr": self.pitr,
                 "verify": self.verify_repos, "archive-rate": self.archive_rate, "archive-push": self.archive_push}
        for phase in phases:  # in the order of PHASES
            steps[phase]()
        self.results["archiver_end"] = self.pg.archiver_stats()
        self.results["finished"] = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
        self.results["summary"] = summarize(self.results)
        self.save()
        log(f"raw results: {self.result_path}")
        table = render(self.results, self.result_path)
        print(table)
        if not a.no_docs:
            write_doc(table, a.dataset)
            log(f"wrote {DOC}")
        if not a.keep_server:
            self.pg.stop()

    def phases(self) -> list[str]:
        """The phases this run does, in the order they run: those --phases asks for, minus the
        ones a zero count switches off or the dataset cannot do, plus the full backups when a
        later phase needs a backup."""
        a = self.args
        wanted = set(PHASES if a.phases == "all" else a.phases.split(","))
        skipped = {"incr": "--incr-seconds 0" if a.incr_seconds == 0 else None,
                   "archive-push": "--segments 0" if a.segments == 0 else None,
                   "archive-rate": "--archive-seconds 0" if a.archive_seconds == 0 else None}
        if a.dataset == "many-files":  # no pgbench tables to run a workload on
            skipped.update({"incr": "no pgbench tables in many-files", "archive-rate": "no pgbench tables in many-files"})
        for phase, why in skipped.items():
            if why and phase in wanted:
                log(f"skipping phase {phase}: {why}")
                wanted.discard(phase)
        if wanted & {"restore", "incr", "pitr", "verify"}:
            wanted.add("full")
        return [p for p in PHASES if p in wanted]

    def full_backups(self) -> None:
        a = self.args
        tools = list(TOOLS) + ([] if a.no_reference else [REFERENCE])
        steps = {"pgsafe": self.backup_pgsafe, "pgbackrest": self.backup_pgbackrest,
                 "pg_basebackup": self.backup_basebackup, REFERENCE: self.backup_reference}
        log(f"full backups: {a.rounds} rounds of {' '.join(tools)}")
        for rnd in range(1, a.rounds + 1):
            for tool in tools:
                run = self.retry_noisy(lambda: steps[tool](rnd))
                if run["rc"] != 0:
                    self.anomaly(f"{tool} full backup round {rnd} failed (rc {run['rc']}): `{run['command']}`: "
                                 f"{fail_summary(run)}")

    def restores(self) -> None:
        a = self.args
        expected = self.source_fingerprint(self.pg)
        self.results["checks"]["source fingerprint"] = expected
        log(f"restores: {a.rounds} rounds of pgsafe pgbackrest")
        for rnd in range(1, a.rounds + 1):
            for tool in ("pgsafe", "pgbackrest"):
                run = self.retry_noisy(lambda: self.restore(tool, rnd))
                if run is not None and run["rc"] != 0:
                    self.anomaly(f"{tool} restore round {rnd} failed (rc {run['rc']}): `{run['command']}`: "
                                 f"{fail_summary(run)}")
        if not a.no_verify:
            for tool in ("pgsafe", "pgbackrest"):
                self.verify_restore(tool, expected)
        for tool in ("pgsafe", "pgbackrest"):
            if (WORK / "restore" / tool).exists():
                shutil.rmtree(WORK / "restore" / tool)


def _os_release() -> str:
    try:
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                return line.split("=", 1)[1].strip('"')
    except OSError:
        pass
    return platform.platform()


WORK = Path("/var/tmp/pgsafe-bench")


def _phase_list(text: str) -> str:
    if text == "all":
        return text
    unknown = [x for x in text.split(",") if x not in PHASES]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown phase {', '.join(unknown)}; phases: {', '.join(PHASES)}")
    return text


def main() -> int:
    global WORK
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=(
        f"Phases, in the order they run: {', '.join(PHASES)}; what each does is described at the top of "
        "bench/run.py and in docs/PERFORMANCE.md. Examples: bench/run --dataset realistic --scale 20 --rounds 3; "
        "bench/run --dataset realistic --scale 10 --rounds 1 --phases full --no-docs; "
        "bench/run --render-rss bench/results/A.json bench/results/B.json"))
    p.add_argument("--dataset", choices=("pgbench", "realistic", "many-files"), default="pgbench",
                   help="pgbench: pgbench -i (compresses about 20:1); realistic: mixed tables that compress "
                   "about 2-3:1 (see REALISTIC_BATCH in bench/cluster.py) and pgbench -i -s 10; many-files: SCALE x 1000 small tables "
                   "with an index each")
    p.add_argument("--scale", type=int, help="pgbench: pgbench scale (default 100, about 1.6 GB); realistic: "
                   "SCALE batches of about 110 MB of mixed tables, plus 160 MB of pgbench tables (default 20: "
                   "about 2.3 GB, the 2 GB of issue 6; 10 is about 1.2 GB, 100 about 11 GB); many-files: "
                   "SCALE x 1,000 tables (default 20: the 20,000 of issue 6)")
    p.add_argument("--rounds", type=int, default=3, help="rounds of each operation (default 3)")
    p.add_argument("--segments", type=int, default=20,
                   help="WAL segments pushed by each tool for archive-push (default 20; 0 skips)")
    p.add_argument("--jobs", type=int, default=2, help="pgsafe --jobs and pgBackRest process-max (default 2)")
    p.add_argument("--level", type=int, default=3, help="zstd level for every tool (default 3)")
    p.add_argument("--port", type=int, default=54345, help="port of the bench cluster (unix socket only)")
    p.add_argument("--workdir", default=str(WORK), help=f"work directory (default {WORK}; wiped)")
    p.add_argument("--reuse-dataset", action="store_true", help="keep the cluster of a previous run if it "
                   "holds the same dataset (repositories are always recreated)")
    p.add_argument("--drop-caches", action="store_true", help="drop the page cache before each run")
    p.add_argument("--quiet", type=float, default=0.15,
                   help="before each timed run, wait until fewer than this many cores are busy (default 0.15)")
    p.add_argument("--quiet-wait", type=float, default=300, help="give up waiting for quiet after this many s")
    p.add_argument("--max-noise", type=float, default=0.25,
                   help="redo a run during which other processes used more cores than this on average")
    p.add_argument("--retries", type=int, default=2, help="redos of a noisy run (default 2)")
    p.add_argument("--incr-seconds", type=int, default=60,
                   help="incremental phase: pgbench -c4 -j2 -T N before each round's incremental backups (on "
                   "realistic with a second script that changes the mixed tables), then chain and delta restores "
                   "(default 60; 0 skips the phase)")
    p.add_argument("--archive-seconds", type=int, default=60,
                   help="archive rate phase: pgbench -n -c4 -j2 -T N with synchronous_commit off, archive_command "
                   "set to one tool, per round and tool (default 60; 0 skips the phase)")
    p.add_argument("--phases", default="all", type=_phase_list,
                   help=f"comma-separated phases to run, of: {', '.join(PHASES)} (default all; the full backups "
                   "run whenever restore, incr, pitr or verify is asked for; e.g. --phases full to compare the "
                   "peak RSS of full backups across dataset sizes)")
    p.add_argument("--no-reference", action="store_true", help=f"skip the `{REFERENCE}` reference runs")
    p.add_argument("--no-verify", action="store_true", help="skip starting the restored copies of the restore "
                   "and incr phases (pitr always starts them: that is what it measures)")
    p.add_argument("--no-docs", action="store_true", help="do not rewrite docs/PERFORMANCE.md")
    p.add_argument("--keep-server", action="store_true", help="leave the bench cluster running")
    p.add_argument("--pgsafe-from", choices=("installed", "worktree"), default="installed",
                   help="measure a frozen copy of the installed pgsafe package (default) or of src/ in this "
                   "work tree; its dependencies come from the installed venv either way")
    p.add_argument("--render", metavar="RESULTS_JSON",
                   help="only rewrite docs/PERFORMANCE.md (and print the table) from a saved results file")
    p.add_argument("--render-rss", metavar="RESULTS_JSON", nargs="+",
                   help="only print a table of the full backups' peak RSS against the dataset size, from "
                   "several saved results files (e.g. of `make -C bench rss`)")
    args = p.parse_args()
    if args.scale is None:
        args.scale = DEFAULT_SCALE[args.dataset]
    if args.render_rss:
        print(render_rss([Path(x) for x in args.render_rss]))
        return 0
    if args.render:
        path = Path(args.render)
        results = json.loads(path.read_text())
        results["summary"] = summarize(results)
        table = render(results, path)
        print(table)
        if not args.no_docs:
            write_doc(table, results["dataset"]["name"])
        return 0
    if os.geteuid() != 0:
        print("run as root (bench/run): PostgreSQL is started as the postgres user", file=sys.stderr)
        return 2
    WORK = timing.WORK = Path(args.workdir).resolve()
    Bench(args).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
