"""Running commands as the postgres user and measuring them: wall and CPU time,
peak RSS, the PSS of a process tree, and the CPU other processes used meanwhile."""

from __future__ import annotations

import os
import pwd
import shlex
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

PGBIN = Path("/usr/lib/postgresql/15/bin")
OS_USER = "postgres"
CLK_TCK = os.sysconf("SC_CLK_TCK")
WORK = Path("/var/tmp/pgsafe-bench")  # set by run.py from --workdir

# -- running things as the postgres user, measured ---------------------------------------


def _pg_ids() -> tuple[int, int, str]:
    pw = pwd.getpwnam(OS_USER)
    return pw.pw_uid, pw.pw_gid, pw.pw_dir


def _env() -> dict[str, str]:
    _, _, home = _pg_ids()
    return {"PATH": f"{PGBIN}:/usr/local/bin:/usr/bin:/bin", "HOME": home, "LANG": "C.UTF-8",
            "LC_ALL": "C.UTF-8", "USER": OS_USER, "LOGNAME": OS_USER}


def chown(path: Path) -> None:
    uid, gid, _ = _pg_ids()
    os.chown(path, uid, gid)


def mkdir_pg(path: Path, mode: int = 0o700) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, mode)
    chown(path)
    return path


def run_pg(cmd: list[str], *, check: bool = True, timeout: float = 3600, cwd: Path | None = None,
           capture: bool = True, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run an untimed helper command as the postgres user (env: variables added to the usual ones)."""
    uid, gid, _ = _pg_ids()
    res = subprocess.run(cmd, user=uid, group=gid, extra_groups=[], env={**_env(), **(env or {})},
                         cwd=cwd or WORK, capture_output=capture, text=True, timeout=timeout)
    if check and res.returncode != 0:
        raise RuntimeError(f"command failed ({res.returncode}): {shlex.join(cmd)}\n"
                           f"{(res.stdout or '')[-2000:]}{(res.stderr or '')[-4000:]}")
    return res


def _proc_stat_busy() -> float:
    """Seconds of non-idle CPU time of the whole machine since boot."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields[:8]
    return (user + nice + system + irq + softirq + steal) / CLK_TCK


def _proc_stats() -> dict[int, list[str]]:
    """Every process's /proc/<pid>/stat, as the fields after its command name (state, ppid, ...)."""
    stats = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                with open(f"/proc/{entry.name}/stat") as f:
                    stat = f.read()
            except OSError:  # ended meanwhile
                continue
            stats[int(entry.name)] = stat[stat.rindex(")") + 2:].split()
    return stats


def _with_descendants(roots: set[int], stats: dict[int, list[str]]) -> set[int]:
    children: dict[int, list[int]] = {}
    for pid, fields in stats.items():
        children.setdefault(int(fields[1]), []).append(pid)
    tree, todo = set(roots), list(roots)
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in tree:
                tree.add(child)
                todo.append(child)
    return tree


class TreeSampler(threading.Thread):
    """Samples the summed PSS (and RSS) of a process and all its descendants."""

    def __init__(self, root: int, interval: float = 0.1) -> None:
        super().__init__(daemon=True)
        self.root = root
        self.interval = interval
        self.peak_pss_kb = 0
        self.peak_rss_kb = 0
        self.peak_procs = 0
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.is_set():
            try:
                self._sample()
            except Exception:  # a process vanishing mid-scan is normal
                pass
            self._halt.wait(self.interval)

    def stop(self) -> None:
        self._halt.set()
        self.join()

    def _sample(self) -> None:
        tree = _with_descendants({self.root}, _proc_stats())
        pss = rss = 0
        for pid in tree:
            try:
                with open(f"/proc/{pid}/smaps_rollup") as f:
                    for line in f:
                        if line.startswith("Pss:"):
                            pss += int(line.split()[1])
                        elif line.startswith("Rss:"):
                            rss += int(line.split()[1])
            except OSError:
                continue
        self.peak_pss_kb = max(self.peak_pss_kb, pss)
        self.peak_rss_kb = max(self.peak_rss_kb, rss)
        self.peak_procs = max(self.peak_procs, len(tree))


def process_cpu(pid: int) -> float:
    """CPU seconds of one process so far: its own and that of the children it has reaped (for
    the archiver: every archive_command it has run)."""
    with open(f"/proc/{pid}/stat") as f:
        stat = f.read()
    return sum(int(x) for x in stat[stat.rindex(")") + 2:].split()[11:15]) / CLK_TCK


def postmaster_cpu(pgdata: Path) -> float:
    """CPU seconds used so far by a running cluster: the postmaster, its live children, and
    (through the postmaster's cutime/cstime) every child it has already reaped, e.g. the
    backend or walsender that served a finished backup."""
    try:
        pid = int((pgdata / "postmaster.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 0.0

    def times(stat: str) -> tuple[int, float]:
        f = stat[stat.rindex(")") + 2:].split()
        return int(f[1]), sum(int(x) for x in f[11:15]) / CLK_TCK  # ppid; utime stime cutime cstime

    total = 0.0
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                with open(f"/proc/{entry.name}/stat") as fh:
                    ppid, secs = times(fh.read())
            except (OSError, ValueError):
                continue
            if ppid == pid or int(entry.name) == pid:
                total += secs
    return total


SERVER_PGDATA: Path | None = None  # the bench cluster, whose CPU time each run also records
OWN_SERVERS: set[Path] = set()  # other clusters of this bench (a restored copy while it recovers)


def foreign_cpu_snapshot() -> dict[int, float]:
    """CPU seconds (own + reaped children) of every user-space process that is neither this
    bench, nor the bench cluster (or another of OWN_SERVERS) and its descendants
    (archive_command included), nor a kernel thread: the other sessions sharing this machine."""
    stats = _proc_stats()
    roots = {os.getpid(), 2}  # the children of pid 2 are kernel threads
    for pgdata in OWN_SERVERS | ({SERVER_PGDATA} if SERVER_PGDATA else set()):
        try:
            roots.add(int((pgdata / "postmaster.pid").read_text().split()[0]))
        except (OSError, ValueError, IndexError):
            pass
    mine = _with_descendants(roots, stats)
    # own ticks (utime + stime), reaped children's ticks (cutime + cstime)
    return {pid: (int(f[11]) + int(f[12]), int(f[13]) + int(f[14])) for pid, f in stats.items() if pid not in mine}


def foreign_cpu_delta(before: dict[int, tuple[int, int]], after: dict[int, tuple[int, int]]) -> float:
    """CPU seconds the other processes used between two snapshots. A process that ended in
    between shows up in its parent's reaped-children time with its whole lifetime: what it
    had used before the first snapshot is taken off again."""
    ticks = 0
    for pid, (own, reaped) in after.items():
        own0, reaped0 = before.get(pid, (0, 0))
        if own < own0:  # the pid was reused
            own0 = reaped0 = 0
        ticks += (own - own0) + (reaped - reaped0)
    ticks -= sum(own + reaped for pid, (own, reaped) in before.items() if pid not in after)
    return max(0, ticks) / CLK_TCK


def measure(cmd: list[str], name: str, *, timeout: float = 7200, shell: bool = False,
            sample: bool = True) -> dict[str, Any]:
    """Run one timed command as the postgres user; stdout/stderr go to logs/<name>.*"""
    uid, gid, _ = _pg_ids()
    logs = WORK / "logs"
    logs.mkdir(exist_ok=True)
    out_path, err_path = logs / f"{name}.out", logs / f"{name}.err"
    argv = ["/bin/bash", "-c", cmd[0]] if shell else cmd
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        server0 = postmaster_cpu(SERVER_PGDATA) if SERVER_PGDATA else 0.0
        others0 = foreign_cpu_snapshot()
        busy0 = _proc_stat_busy()
        t0 = time.perf_counter()
        proc = subprocess.Popen(argv, user=uid, group=gid, extra_groups=[], env=_env(), cwd=WORK,
                                stdin=subprocess.DEVNULL, stdout=out, stderr=err, start_new_session=True)
        sampler = TreeSampler(proc.pid)
        if sample:  # a scan of /proc costs about 1 ms; pointless for sub-second commands
            sampler.start()
        timer = threading.Timer(timeout, lambda: os.killpg(proc.pid, signal.SIGKILL))
        timer.start()
        _, status, ru = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        busy1 = _proc_stat_busy()
        server1 = postmaster_cpu(SERVER_PGDATA) if SERVER_PGDATA else 0.0
        others1 = foreign_cpu_snapshot()
        timer.cancel()
        if sample:
            sampler.stop()
        proc.returncode = os.waitstatus_to_exitcode(status)
    stdout = out_path.read_text(errors="replace")
    stderr = err_path.read_text(errors="replace")
    return {
        "command": shlex.join(argv),
        "rc": proc.returncode,
        "wall_s": round(wall, 4),
        "user_s": round(ru.ru_utime, 4),
        "sys_s": round(ru.ru_stime, 4),
        "cpu_s": round(ru.ru_utime + ru.ru_stime, 4),
        "machine_cpu_s": round(busy1 - busy0, 3),
        "server_cpu_s": round(server1 - server0, 3),
        # CPU used by the other sessions' processes on this machine during the run, in cores on
        # average: the noise it was measured under (kernel threads, e.g. writeback of the tool's
        # own writes, are not counted; machine_cpu_s minus cpu_s and server_cpu_s shows them)
        "foreign_cores": round(foreign_cpu_delta(others0, others1) / max(wall, 0.01), 3),
        "max_rss_mb": round(ru.ru_maxrss / 1024, 1),
        "tree_pss_peak_mb": round(sampler.peak_pss_kb / 1024, 1) if sample else None,
        "tree_rss_peak_mb": round(sampler.peak_rss_kb / 1024, 1) if sample else None,
        "tree_procs_peak": sampler.peak_procs if sample else None,
        "stdout_tail": stdout[-3000:],
        "stderr_tail": stderr[-3000:],
    }
