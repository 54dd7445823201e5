"""End-to-end demo on a throwaway cluster and repository under a temp dir:
load data, back up under write load, restore to a point in time, compare.

Run through scripts/demo (which installs pgsafe first). Everything it creates is
removed at the end, even on failure.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time

PG_BIN = os.environ.get("PG_BIN", "/usr/lib/postgresql/15/bin")
PGSAFE = os.environ.get("PGSAFE_BIN", "/opt/pgsafe/bin/pgsafe")
AS_POSTGRES = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []


def step(text: str) -> None:
    print(f"\n== {text}", flush=True)


def run(cmd: list[str], **kw: object) -> str:
    out = subprocess.run(cmd, check=True, text=True, capture_output=True, **kw)  # type: ignore[call-overload]
    return str(out.stdout)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    def __init__(self, pgdata: str, sockdir: str, port: int) -> None:
        self.pgdata, self.sockdir, self.port = pgdata, sockdir, port

    def start(self) -> None:
        run(AS_POSTGRES + [f"{PG_BIN}/pg_ctl", "-D", self.pgdata, "-l", f"{self.pgdata}.log", "-w", "-t", "120", "start"])

    def stop(self) -> None:
        subprocess.run(AS_POSTGRES + [f"{PG_BIN}/pg_ctl", "-D", self.pgdata, "-m", "fast", "-w", "stop"],
                       capture_output=True)

    def sql(self, query: str) -> str:
        return run([f"{PG_BIN}/psql", "-h", self.sockdir, "-p", str(self.port), "-U", "postgres", "-d", "postgres",
                    "-Atq", "-v", "ON_ERROR_STOP=1", "-c", query]).strip()


def main() -> int:
    base = tempfile.mkdtemp(prefix="pgsafe-demo-")
    os.chmod(base, 0o755)
    if AS_POSTGRES:
        shutil.chown(base, "postgres", "postgres")
    servers: list[Server] = []
    try:
        pgdata, repo, cfg = f"{base}/pgdata", f"{base}/repo", f"{base}/pgsafe.toml"
        port = free_port()
        step(f"throwaway cluster in {pgdata} (port {port}), repository in {repo}")
        run(AS_POSTGRES + [f"{PG_BIN}/initdb", "--data-checksums", "-U", "postgres", "-D", pgdata])
        with open(cfg, "w") as f:
            f.write(f'[repo.main]\npath = "{repo}"\ncompression = "zstd"\ncompression_level = 3\n\n'
                    f'[cluster.main]\npgdata = "{pgdata}"\nhost = "{base}"\nport = {port}\nuser = "postgres"\n')
        os.chmod(cfg, 0o644)
        with open(f"{pgdata}/postgresql.auto.conf", "a") as f:
            f.write(f"port = {port}\nlisten_addresses = ''\nunix_socket_directories = '{base}'\n"
                    "wal_level = replica\narchive_mode = on\n"
                    f"archive_command = '{PGSAFE} --config {cfg} archive-push %p'\n")
        source = Server(pgdata, base, port)
        source.start()
        servers.append(source)
        pgsafe = [PGSAFE, "--config", cfg]

        step("pgsafe init && pgsafe check")
        print(run(pgsafe + ["init"]) + run(pgsafe + ["check"]), end="")

        step("load data: pgbench scale 10")
        run([f"{PG_BIN}/pgbench", "-h", base, "-p", str(port), "-U", "postgres", "-i", "-s", "10", "-q", "postgres"])

        step("full backup while pgbench writes")
        load = subprocess.Popen([f"{PG_BIN}/pgbench", "-h", base, "-p", str(port), "-U", "postgres", "-c", "4",
                                 "-T", "15", "postgres"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(2)
        print(run(pgsafe + ["backup", "--type", "full"]), end="")
        load.wait()

        step("remember the state at a point in time, then damage it")
        expected = source.sql("select count(*), sum(abalance), md5(string_agg(aid || ':' || abalance, ',' "
                              "order by aid)) from pgbench_accounts")
        time.sleep(1.1)
        target = source.sql("select clock_timestamp()")
        time.sleep(1.1)
        source.sql("update pgbench_accounts set abalance = abalance + 1000 where aid % 3 = 0")
        source.sql("delete from pgbench_history")
        source.sql("select pg_switch_wal()")
        print(f"state at {target}: {expected}")
        print(run(pgsafe + ["info"]), end="")

        step(f"restore to {target} and start the restored server")
        restored = Server(f"{base}/restored", base, free_port())
        print(run(pgsafe + ["restore", "--target-dir", restored.pgdata, "--target-time", target]), end="")
        with open(f"{restored.pgdata}/postgresql.auto.conf", "a") as f:
            f.write(f"port = {restored.port}\narchive_mode = off\n")
        restored.start()
        servers.append(restored)
        for _ in range(600):
            if restored.sql("select pg_is_in_recovery()") == "f":
                break
            time.sleep(0.1)
        got = restored.sql("select count(*), sum(abalance), md5(string_agg(aid || ':' || abalance, ',' "
                           "order by aid)) from pgbench_accounts")
        print(f"restored: {got}")
        if got != expected:
            print("MISMATCH: the restored data differs from the state at the target time")
            return 1
        print("\nOK: the restored cluster holds exactly the data of the target time")
        return 0
    except subprocess.CalledProcessError as exc:
        print(f"demo failed: {' '.join(exc.cmd)}\n{exc.stdout}{exc.stderr}", file=sys.stderr)
        return 1
    finally:
        for server in reversed(servers):
            server.stop()
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
