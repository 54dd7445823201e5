"""WAL archiving rate and latency, and full backup time, on local disk and on S3.

Run as root (PostgreSQL runs as the ``postgres`` OS user), with pgsafe installed::

    /opt/pgsafe/bin/python bench/archive_rate.py --scale 20 --clients 4 --seconds 30

One pgbench cluster (initdb --data-checksums, ``pgbench -i -s SCALE``, synchronous_commit
off so that WAL is produced fast), the S3 server the test suite uses (SeaweedFS on
loopback), and a fresh repository for every measurement:

1. WAL archiving rate, with and without ``archive_async``, into local disk and into S3,
   three ways: (a) archiving on while ``pgbench -c CLIENTS -T SECONDS`` runs (does it
   keep up with the WAL pgbench writes, and how fast does it archive meanwhile); (b) the
   capacity under load: a backlog built by SECONDS of pgbench with archive_command
   empty, then drained while pgbench runs again; (c) the same backlog drained with
   nothing else running. Rates are segments archived (pg_stat_archiver) x 16 MiB over
   wall time; the server has checkpoint_timeout = 60s and each load starts after a
   checkpoint, so each writes full-page images alike;
2. per-segment ``archive-push`` wall time (the process PostgreSQL would run) for real
   16 MiB segments of this cluster, each pushed once, under a name new to the repository,
   with and without encryption, local and S3, the variants alternating segment by
   segment. The first encrypted push of a variant derives the key (scrypt) and is
   reported apart; pgsafe caches the derived key per user afterwards;
3. full backup time of the same data into local disk and into S3, alternating, ROUNDS
   times each.

Results are printed as a table and, with --json FILE, written as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
TESTS = HERE.parent / "tests"
sys.path[:0] = [str(TESTS), str(TESTS / "integration")]

from helpers import PGSAFE_BIN, Lab, tree_size, wait_for  # noqa: E402
from repolab import RepoSpec, Setup, make_setup, posix_repo, s3_repo, s3_store  # noqa: E402
from storage.s3server import S3Server  # noqa: E402

MiB = 1024 * 1024
SEGMENT = 16 * MiB
PASSPHRASE_VAR = "PGSAFE_BENCH_PASSPHRASE"


def lsn_bytes(text: str) -> int:
    high, low = text.split("/")
    return (int(high, 16) << 32) + int(low, 16)


def s3_size(server: S3Server, prefix: str) -> int:
    import obstore

    return sum(m["size"] for chunk in obstore.list(s3_store(server, prefix)) for m in chunk)


def stored_size(server: S3Server, spec: RepoSpec) -> int:
    return s3_size(server, spec.prefix) if spec.is_s3 else tree_size(spec.path)


class Bench:
    def __init__(self, lab: Lab, s3: S3Server, args: argparse.Namespace) -> None:
        self.lab = lab
        self.s3 = s3
        self.args = args
        self.work = lab.tmp.make("pgsafe-bench-")
        self.spool = lab.tmp.make("pgsafe-bench-spool-")
        self.counter = 0
        self.env: Setup = make_setup(
            lab, [posix_repo("scratch", self.work / "scratch")], s3=s3,
            settings={"synchronous_commit": "off", "max_wal_size": "4GB", "checkpoint_timeout": "60s",
                      "shared_buffers": "128MB"})

    # -- repositories and configs --------------------------------------------------

    def new_repo(self, kind: str, **keys: Any) -> RepoSpec:
        self.counter += 1
        name = f"bench{kind}{self.counter}"
        if kind == "s3":
            return s3_repo(name, self.s3, prefix=f"bench/{os.getpid()}/{self.counter}", **keys)
        return posix_repo(name, self.work / f"repo-{self.counter}", **keys)

    def use(self, spec: RepoSpec, **cluster_keys: Any) -> Path:
        """Make ``spec`` the repository the server archives into (and init it)."""
        text = self.env.config_text([spec], **cluster_keys)
        path = self.env.write_config(text, f"{spec.name}.toml")
        self.env.run("init", config=path, env=self.passphrase_env())
        self.env.write_config(text)  # the file archive_command reads
        return path

    def passphrase_env(self) -> dict[str, str]:
        return {PASSPHRASE_VAR: "bench passphrase"}

    def quiesce(self) -> None:
        """Everything archived, no background worker left, a checkpoint, a sync."""
        pg = self.env.cluster
        pg.switch_and_wait_archived()
        wait_for("the async push worker to exit", lambda: not _worker_running(self.env.workdir), timeout=120)
        pg.sql("checkpoint")
        subprocess.run(["sync"], check=True)

    # -- 1. archiving rate -----------------------------------------------------------

    def set_archiving(self, on: bool) -> None:
        """archive_command on, or empty: PostgreSQL keeps the WAL (.ready) and waits."""
        command = f"{PGSAFE_BIN} --config {self.env.config} archive-push %p" if on else ""
        self.env.cluster.sql(f"alter system set archive_command = '{command}'")
        self.env.cluster.reload()

    def load(self, seconds: float) -> subprocess.Popen[str]:
        proc = self.env.cluster.pgbench(["-c", str(self.args.clients), "-j", str(min(self.args.clients, 2)),
                                         "-T", str(max(1, round(seconds))), "-n"], background=True)
        assert isinstance(proc, subprocess.Popen)
        return proc

    @staticmethod
    def finish(proc: subprocess.Popen[str]) -> float | None:
        out, _ = proc.communicate()
        if proc.returncode != 0:
            raise RuntimeError(f"pgbench failed:\n{out}")
        return next((float(line.split("=")[1].split()[0]) for line in out.splitlines()
                     if line.startswith("tps =")), None)

    def ready(self) -> int:
        status = self.env.cluster.pgdata / "pg_wal" / "archive_status"
        return sum(1 for n in os.listdir(status) if n.endswith(".ready"))

    def archived(self) -> int:
        return int(self.env.cluster.scalar("select archived_count from pg_stat_archiver"))

    def lsn(self) -> int:
        return lsn_bytes(self.env.cluster.scalar("select pg_current_wal_lsn()::text"))

    def drain(self, load_seconds: float | None) -> dict[str, Any]:
        """Turn archiving on over a backlog (with pgbench running meanwhile, or not) and
        measure segments archived per second until the backlog is gone."""
        backlog = self.ready()
        start_count = self.archived()
        t0 = time.monotonic()
        self.set_archiving(True)
        proc = self.load(load_seconds) if load_seconds else None
        emptied: tuple[float, int] | None = None
        while True:
            now, count, ready = time.monotonic(), self.archived(), self.ready()
            if emptied is None and ready <= 1 and count > start_count:
                emptied = (now, count)
            if (proc is None or proc.poll() is not None) and emptied is not None:
                break
            time.sleep(0.1)
        tps = self.finish(proc) if proc is not None else None
        seconds = emptied[0] - t0
        return {"backlog_segments": backlog, "seconds": round(seconds, 1), "tps": tps,
                "rate_mb_s": round((emptied[1] - start_count) * SEGMENT / MiB / seconds, 1)}

    def archiving_rate(self, spec: RepoSpec, archive_async: bool) -> dict[str, Any]:
        pg = self.env.cluster
        kind = "s3" if spec.is_s3 else "local"
        keys: dict[str, Any] = {"archive_async": archive_async}
        if archive_async:
            keys["spool_path"] = str(self.spool)
        self.use(spec, **keys)
        self.quiesce()
        pg.sql("select pg_stat_reset_shared('archiver')")
        seconds = self.args.seconds

        # 1. pgbench with archiving on: does archiving keep up with the WAL it writes?
        lsn0, count0, t0 = self.lsn(), self.archived(), time.monotonic()
        tps = self.finish(self.load(seconds))
        t1, lsn1, count1, backlog = time.monotonic(), self.lsn(), self.archived(), self.ready()
        pg.wait_archived(pg.switch_wal(), timeout=1800)
        t2, count2 = time.monotonic(), self.archived()
        plain = {
            "tps": tps, "wal_rate_mb_s": round((lsn1 - lsn0) / MiB / (t1 - t0), 1),
            "archived_rate_mb_s": round((count1 - count0) * SEGMENT / MiB / (t1 - t0), 1),
            "backlog_at_end_segments": backlog, "catch_up_s": round(t2 - t1, 1),
            "sustained_rate_mb_s": round((count2 - count0) * SEGMENT / MiB / (t2 - t0), 1),
        }

        # 2. capacity under load: a backlog built with archiving off, drained while
        #    pgbench runs again (each load starts after a checkpoint, as the first did,
        #    so that each writes full-page images alike)
        self.set_archiving(False)
        pg.sql("checkpoint")
        self.finish(self.load(seconds))
        pg.sql("checkpoint")
        under_load = self.drain(seconds)

        # 3. capacity without load: a backlog drained with nothing else running
        self.set_archiving(False)
        pg.sql("checkpoint")
        self.finish(self.load(seconds))
        idle = self.drain(None)
        pg.switch_and_wait_archived()
        return {"target": kind, "archive_async": archive_async, "pgbench": plain, "drain_under_load": under_load,
                "drain_idle": idle, "stored_mb": round(stored_size(self.s3, spec) / MiB, 1)}

    # -- 2. per-segment archive-push time ----------------------------------------------

    def capture_segments(self, spec: RepoSpec, count: int) -> list[Path]:
        """Real segments of this cluster (written by pgbench), fetched back from the
        local repository filled above."""
        config = self.env.workdir / f"{spec.name}.toml"
        names = sorted(p.name for p in spec.path.glob("cluster/main/wal/*/*") if len(p.name) == 24)
        out = self.work / "segments"
        out.mkdir(exist_ok=True)
        for name in names[-count - 2:-2]:
            self.env.run("archive-get", name, out / name, config=config)
        return sorted(out.iterdir())

    def push_times(self, segments: list[Path]) -> list[dict[str, Any]]:
        variants = []
        for kind in ("local", "s3"):
            for encrypted in (False, True):
                keys: dict[str, Any] = {}
                if encrypted:
                    keys = {"encryption": "aes-256-gcm", "passphrase_env": PASSPHRASE_VAR}
                spec = self.new_repo(kind, **keys)
                config = self.env.write_config(self.env.config_text([spec]), f"{spec.name}.toml")
                cache = self.lab.tmp.make("pgsafe-bench-cache-")
                env = {**self.passphrase_env(), "XDG_CACHE_HOME": str(cache)}
                self.env.run("init", config=config, env=env)
                for entry in cache.iterdir():  # the first push derives the key itself
                    shutil.rmtree(entry)
                variants.append({"target": kind, "encrypted": encrypted, "config": config, "env": env, "ms": []})
        for segment in segments:
            for v in variants:
                started = time.perf_counter()
                self.env.run("archive-push", segment, config=v["config"], env=v["env"])
                v["ms"].append((time.perf_counter() - started) * 1000)
        results = []
        for v in variants:
            ms = v["ms"]
            warm = ms[1:] if v["encrypted"] else ms
            results.append({
                "target": v["target"], "encrypted": v["encrypted"], "segments": len(ms),
                "median_ms": round(statistics.median(warm), 1),
                "mean_ms": round(statistics.fmean(warm), 1),
                "p90_ms": round(sorted(warm)[int(0.9 * (len(warm) - 1))], 1),
                "min_ms": round(min(warm), 1),
                "first_ms": round(ms[0], 1),
            })
        return results

    # -- 3. full backup time --------------------------------------------------------------

    def backup_times(self, rounds: int) -> list[dict[str, Any]]:
        specs = {"local": self.new_repo("local"), "s3": self.new_repo("s3")}
        configs = {kind: self.use(spec) for kind, spec in specs.items()}
        runs: dict[str, list[dict[str, Any]]] = {kind: [] for kind in specs}
        for _ in range(rounds):
            for kind, spec in specs.items():
                self.use(spec)
                self.quiesce()
                started = time.monotonic()
                out = self.env.run("backup", "--type", "full", "--output", "json", config=configs[kind]).stdout
                seconds = time.monotonic() - started
                result = json.loads(out)
                runs[kind].append({"seconds": round(seconds, 2), "size_mb": round(result["size"] / MiB, 1),
                                   "stored_mb": round(result["stored_size"] / MiB, 1)})
        return [{"target": kind, "runs": r, "median_s": round(statistics.median(x["seconds"] for x in r), 2)}
                for kind, r in runs.items()]

    def database_size_mb(self) -> float:
        return round(int(self.env.cluster.scalar("select sum(pg_database_size(oid)) from pg_database")) / MiB, 1)


def _worker_running(workdir: Path) -> bool:
    needle = str(workdir).encode()
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            except OSError:
                continue
            if b"archive-push-worker" in cmdline and needle in cmdline:
                return True
    return False


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scale", type=int, default=20)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--seconds", type=int, default=30)
    parser.add_argument("--segments", type=int, default=20, help="segments pushed per variant")
    parser.add_argument("--rounds", type=int, default=2, help="full backups per target")
    parser.add_argument("--json", type=Path, help="write the results here too")
    args = parser.parse_args()
    if os.geteuid() != 0:
        parser.error("run as root: PostgreSQL runs as the postgres OS user")

    # clean up (servers, directories) whatever ends the run
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    lab = Lab(PGSAFE_BIN)
    s3 = S3Server.start_new()
    results: dict[str, Any] = {
        "command": " ".join([sys.executable, *sys.argv]),
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {"cpus": os.cpu_count(), "kernel": platform.release(),
                    "loadavg_at_start": os.getloadavg()},
        "pgsafe": str(PGSAFE_BIN),
    }
    try:
        bench = Bench(lab, s3, args)
        bench.env.cluster.pgbench(["-i", "-s", str(args.scale), "-q"])
        results["database_mb"] = bench.database_size_mb()
        rates = []
        first_local = None
        for kind in ("local", "s3"):
            for archive_async in (False, True):
                spec = bench.new_repo(kind)
                first_local = first_local or (spec if kind == "local" else None)
                rates.append(bench.archiving_rate(spec, archive_async))
                print(json.dumps(rates[-1]), flush=True)
        results["archiving"] = rates
        assert first_local is not None
        results["archive_push"] = bench.push_times(bench.capture_segments(first_local, args.segments))
        results["backup"] = bench.backup_times(args.rounds)
        results["machine"]["loadavg_at_end"] = os.getloadavg()
    finally:
        lab.cleanup()
        s3.close()
    print_table(results)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1) + "\n")
    return 0


def print_table(r: dict[str, Any]) -> None:
    print(f"\n{r['command']}\ndatabase {r['database_mb']} MB, {r['machine']['cpus']} CPUs, "
          f"load average at start {r['machine']['loadavg_at_start'][0]:.1f}, at end "
          f"{r['machine']['loadavg_at_end'][0]:.1f}\n")
    print("WAL archiving (MB/s = segments archived x 16 MiB / wall time)")
    print("  pgbench: archiving on during pgbench; WAL = rate pgbench wrote WAL; archived = rate archived meanwhile;")
    print("  under load / idle: draining a backlog built with archiving off, with pgbench running / alone")
    print(f"{'target':<7}{'async':<7}{'tps':>7}{'WAL':>7}{'archived':>9}{'backlog':>8}{'catch-up':>9}"
          f"{'| under load':>12}{'(backlog)':>10}{'| idle':>8}{'(backlog)':>10}")
    for a in r["archiving"]:
        p, u, i = a["pgbench"], a["drain_under_load"], a["drain_idle"]
        print(f"{a['target']:<7}{'on' if a['archive_async'] else 'off':<7}{p['tps'] or 0:>7.0f}"
              f"{p['wal_rate_mb_s']:>7.1f}{p['archived_rate_mb_s']:>9.1f}{p['backlog_at_end_segments']:>8}"
              f"{p['catch_up_s']:>8.1f}s{u['rate_mb_s']:>12.1f}{u['backlog_segments']:>10}"
              f"{i['rate_mb_s']:>8.1f}{i['backlog_segments']:>10}")
    print("\narchive-push of one fresh 16 MiB segment (ms, wall time of the process)")
    print(f"{'target':<7}{'encrypted':<10}{'n':>4}{'median':>8}{'mean':>8}{'p90':>8}{'min':>8}{'first':>8}")
    for p in r["archive_push"]:
        print(f"{p['target']:<7}{'yes' if p['encrypted'] else 'no':<10}{p['segments']:>4}{p['median_ms']:>8.0f}"
              f"{p['mean_ms']:>8.0f}{p['p90_ms']:>8.0f}{p['min_ms']:>8.0f}{p['first_ms']:>8.0f}")
    print("\nfull backup (s)")
    for b in r["backup"]:
        runs = ", ".join(f"{x['seconds']:.1f}" for x in b["runs"])
        print(f"{b['target']:<7} median {b['median_s']:.1f} s  (runs: {runs}; "
              f"{b['runs'][0]['size_mb']} MB stored as {b['runs'][0]['stored_mb']} MB)")


if __name__ == "__main__":
    sys.exit(main())
