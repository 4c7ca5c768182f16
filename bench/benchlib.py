"""benchlib: the pieces bench/run and bench/latency share.

It owns: finding the tools, starting and always stopping what a benchmark starts (PostgreSQL through
scripts/pg-cluster, PgBouncer, pgring), running pgbench and reading its per-transaction logs into
percentiles, and reading a process's CPU time and RSS from /proc. It does not decide what to run or how
to present it: bench/run and bench/latency do.

Units: latencies are microseconds (pgbench logs them so), CPU times are microseconds, RSS is KiB.
"""

import glob
import math
import os
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
NPROC = os.cpu_count() or 1
CLK_TCK = os.sysconf("SC_CLK_TCK")
PG_USER = "postgres"
DB = "bench"


class BenchError(Exception):
    """A benchmark step failed; the message is meant for a person."""


# ---------------------------------------------------------------------------------------------
# Tools and the environment


def require_tool(name, hint):
    """The path of `name`, or a clear exit that says how to get it."""
    path = shutil.which(name)
    if not path:
        sys.exit(f"bench: '{name}' not found on PATH. {hint}")
    return path


def is_root():
    return os.geteuid() == 0


def as_postgres_prefix():
    """PostgreSQL and PgBouncer refuse root. setpriv keeps our raised fd limit (runuser resets it)."""
    if not is_root():
        return []
    return ["setpriv", "--reuid=postgres", "--regid=postgres", "--init-groups", "--"]


def raise_fd_limit():
    """Soft fd limit up to the hard one; every child inherits it (1000 and 10,000 clients)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def port_free(port):
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def git_commit():
    """Short commit of the work tree, '-dirty' when it has changes; 'nocommit' before the first."""
    try:
        c = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
                           capture_output=True, text=True, check=True).stdout.strip()
    except (subprocess.CalledProcessError, FileNotFoundError):
        return "nocommit", True
    st = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"],
                        capture_output=True, text=True).stdout.strip()
    return c, bool(st)


def machine_info():
    info = {"nproc": NPROC, "kernel": os.uname().release}
    try:
        # With autogroup on, each target (started in its own session) is a scheduling group:
        # the kernel shares the cores between PostgreSQL, each pooler and pgbench as groups
        # first, then between a group's threads (see bench/README.md).
        with open("/proc/sys/kernel/sched_autogroup_enabled") as f:
            info["sched_autogroup"] = f.read().strip() == "1"
    except OSError:
        pass
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
        for line in open("/proc/meminfo"):
            if line.startswith("MemTotal"):
                info["mem_gib"] = round(int(line.split()[1]) / 1024 / 1024, 1)
    except OSError:
        pass
    return info


def tool_version(cmd):
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
        return (out.stdout or out.stderr).splitlines()[0].strip()
    except (OSError, IndexError, subprocess.TimeoutExpired):
        return None


# ---------------------------------------------------------------------------------------------
# Cleanup: everything started is registered here and stopped on exit, Ctrl-C or failure


class Cleanup:
    """A LIFO of undo steps, plus every child process, so nothing outlives the harness."""

    def __init__(self):
        self.steps = []
        self.procs = []

    def push(self, label, fn):
        self.steps.append((label, fn))

    def popen(self, cmd, **kw):
        # A new session: the terminal's Ctrl-C reaches only us, and we stop children in order.
        p = subprocess.Popen(cmd, start_new_session=True, **kw)
        self.procs.append(p)
        return p

    def run_all(self):
        for p in self.procs:
            stop_process(p, grace=3)
        while self.steps:
            label, fn = self.steps.pop()
            try:
                fn()
            except Exception as e:  # noqa: BLE001 - cleanup must go on
                print(f"bench: cleanup '{label}' failed: {e}", file=sys.stderr)


def stop_process(p, grace=5.0, sig=signal.SIGTERM):
    """SIGTERM, a second SIGTERM (PgBouncer: 'now'), then SIGKILL; only the process we started."""
    if p.poll() is not None:
        return p.returncode
    try:
        p.send_signal(signal.SIGCONT)  # it may be paused (bench/run pauses idle poolers)
    except ProcessLookupError:
        return p.poll()
    for s in (sig, signal.SIGTERM):
        try:
            p.send_signal(s)
        except ProcessLookupError:
            return p.poll()
        try:
            return p.wait(timeout=grace / 2)
        except subprocess.TimeoutExpired:
            pass
    try:
        p.kill()
    except ProcessLookupError:
        pass
    return p.wait()


def install_signal_handlers():
    """SIGINT (even when a shell started us with it ignored), SIGTERM and SIGHUP all raise
    KeyboardInterrupt, so the same `finally` cleans up."""
    def handler(signum, _frame):
        raise KeyboardInterrupt(f"signal {signum}")
    for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(s, handler)


def make_workdir(cleanup, keep=False):
    """A temp dir PostgreSQL (running as postgres) can traverse, removed at the end."""
    d = Path(tempfile.mkdtemp(prefix="pgring-bench."))
    d.chmod(0o755)
    if not keep:
        cleanup.push("remove workdir", lambda: shutil.rmtree(d, ignore_errors=True))
    return d


# ---------------------------------------------------------------------------------------------
# /proc readings


def cpu_us(pid):
    """utime + stime of the whole process (all threads) in microseconds."""
    with open(f"/proc/{pid}/stat") as f:
        s = f.read()
    rest = s[s.rindex(")") + 2:].split()
    return (int(rest[11]) + int(rest[12])) * 1_000_000 // CLK_TCK


def per_thread(pid, file, read):
    """`read(text)` (a tuple of numbers) summed over every thread of the process, from
    /proc/PID/task/*/FILE; None when the process is gone."""
    total = None
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return None
    for t in tasks:
        try:
            with open(f"/proc/{pid}/task/{t}/{file}") as f:
                one = read(f.read())
        except OSError:
            continue  # a thread that ended meanwhile
        total = one if total is None else tuple(a + b for a, b in zip(total, one))
    return total


def sched_ns(pid):
    """(on-CPU, runnable-but-waiting) nanoseconds summed over every thread of the process, from
    /proc/PID/task/*/schedstat; None where the kernel has no schedstats."""
    return per_thread(pid, "schedstat", lambda text: tuple(int(x) for x in text.split()[:2]))


def ctx_switches(pid):
    """(voluntary, involuntary) context switches summed over every thread of the process, from
    /proc/PID/task/*/status: sleeps for want of work, and preemptions while it had work."""
    def read(text):
        fields = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
        return (int(fields["voluntary_ctxt_switches"]),
                int(fields["nonvoluntary_ctxt_switches"]))
    return per_thread(pid, "status", read)


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return None


def host_cpu_us():
    """Busy CPU time of the whole host (all cores), microseconds."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    busy = sum(fields[:8]) - fields[3] - fields[4]  # minus idle and iowait
    return busy * 1_000_000 // CLK_TCK


# ---------------------------------------------------------------------------------------------
# Connecting


def psql(port, sql, db=DB, host="127.0.0.1", timeout=10):
    out = subprocess.run(["psql", "-X", "-A", "-t", "-h", host, "-p", str(port), "-U", PG_USER,
                          "-d", db, "-c", sql], capture_output=True, text=True, timeout=timeout,
                         env={**os.environ, "PGCONNECT_TIMEOUT": "3"})
    if out.returncode != 0:
        raise BenchError(out.stderr.strip() or f"psql exited {out.returncode}")
    return out.stdout.strip()


def wait_login(port, proc=None, timeout=20, db=DB, log=None):
    """Wait until a real login and `SELECT 1` work; fail early if `proc` died."""
    deadline = time.monotonic() + timeout
    last = "no attempt"
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise BenchError(f"exited with code {proc.returncode} before accepting connections"
                             + log_tail(log))
        try:
            if psql(port, "select 1", db=db, timeout=5) == "1":
                return
        except (BenchError, subprocess.TimeoutExpired) as e:
            last = str(e)
        time.sleep(0.2)
    raise BenchError(f"no successful login on port {port} within {timeout} s (last: {last})"
                     + log_tail(log))


def log_tail(path, n=15):
    if not path or not Path(path).exists():
        return ""
    lines = Path(path).read_text(errors="replace").splitlines()[-n:]
    return "\n  log tail:\n    " + "\n    ".join(lines) if lines else ""


# ---------------------------------------------------------------------------------------------
# The targets: direct PostgreSQL, PgBouncer, pgring


class Target:
    """One thing clients connect to. `pid` is the process whose CPU and RSS we measure."""

    name = "?"
    label = "?"

    def __init__(self, port):
        self.port = port
        self.proc = None
        self.status = "not started"
        self.error = None
        self.restarts = 0
        self.log = None
        self.idle_cpu_percent = None

    @property
    def ok(self):
        return self.status == "ok"

    @property
    def pid(self):
        return self.proc.pid if self.proc else None

    def alive(self):
        return self.proc is None or self.proc.poll() is None

    def describe(self):
        d = {"status": self.status, "port": self.port}
        if self.idle_cpu_percent is not None:
            d["idle_cpu_percent"] = self.idle_cpu_percent
        if self.restarts:
            d["restarts"] = self.restarts
        if self.error:
            d["error"] = self.error
        return d


class Postgres(Target):
    name, label = "direct", "direct"

    def __init__(self, port, workdir, max_connections, cleanup):
        super().__init__(port)
        self.dir = workdir / "pg"
        self.max_connections = max_connections
        self.cleanup = cleanup
        self.script = os.environ.get("PG_CLUSTER") or str(REPO / "scripts" / "pg-cluster")

    def start(self, scale):
        if not Path(self.script).exists():
            raise BenchError(f"{self.script} is missing (it starts the throwaway PostgreSQL)")
        self.cleanup.push("stop PostgreSQL", self.stop)
        out = subprocess.run([self.script, "start", str(self.dir), str(self.port),
                              "--max-connections", str(self.max_connections)],
                             capture_output=True, text=True, start_new_session=True)
        if out.returncode != 0:
            raise BenchError("pg-cluster start failed:\n" + out.stderr)
        psql(self.port, "create database bench", db="postgres")
        out = subprocess.run(["pgbench", "-i", "-q", "-s", str(scale), "-h", "127.0.0.1", "-p",
                              str(self.port), "-U", PG_USER, DB], capture_output=True, text=True)
        if out.returncode != 0:
            raise BenchError("pgbench -i failed:\n" + out.stderr)
        self.status = "ok"

    def stop(self):
        subprocess.run([self.script, "stop", str(self.dir)], capture_output=True,
                       start_new_session=True, timeout=120)

    def enable_ssl(self, tls):
        """Turns on TLS for connections to PostgreSQL (the poolers' server side, `--server-tls`),
        with the bench's self-signed certificate; clients still choose with PGSSLMODE."""
        cert, key = tls
        for sql in (f"alter system set ssl_cert_file = '{cert}'",
                    f"alter system set ssl_key_file = '{key}'",
                    "alter system set ssl = on", "select pg_reload_conf()"):
            psql(self.port, sql, db="postgres")
        time.sleep(0.5)
        if psql(self.port, "show ssl", db="postgres").strip() != "on":
            raise BenchError("PostgreSQL did not turn ssl on (see its log)")

    def client_backends(self):
        return int(psql(self.port, "select count(*) from pg_stat_activity "
                                   "where backend_type = 'client backend'", db="postgres"))

    def settle(self, limit=60, timeout=15):
        """Wait for the backends of the previous run (up to 1000) to exit before the next run."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if self.client_backends() <= limit:
                    return
            except (BenchError, subprocess.TimeoutExpired):
                pass
            time.sleep(0.3)


def make_tls_files(directory):
    """A self-signed certificate and key for 127.0.0.1 (openssl CLI), readable by the postgres
    user; None when openssl is missing (the TLS scenarios are then skipped)."""
    if not shutil.which("openssl"):
        return None
    directory.mkdir(parents=True, exist_ok=True)
    cert, key = directory / "server.crt", directory / "server.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "7",
                    "-subj", "/CN=127.0.0.1", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    if is_root():
        for f in (directory, cert, key):
            shutil.chown(f, PG_USER, PG_USER)
    return cert, key


def tls_lines(tls, quote, server_tls=False):
    """The same client TLS settings for both poolers: TLS offered (`prefer`), so each scenario
    picks it or not with the client's PGSSLMODE. With `server_tls`, both must use TLS to
    PostgreSQL (`require`: a run that silently fell back to plain text would measure nothing)."""
    q = quote
    lines = f"server_tls_sslmode = {q}require{q}\n" if server_tls else ""
    if not tls:
        return lines
    cert, key = tls
    return lines + (f"client_tls_sslmode = {q}prefer{q}\nclient_tls_cert_file = {q}{cert}{q}\n"
                    f"client_tls_key_file = {q}{key}{q}\n")


class PgBouncer(Target):
    name, label = "pgbouncer", "PgBouncer"

    def __init__(self, port, pg_port, workdir, cleanup, pool_size=20, max_client_conn=15000,
                 tls=None, server_tls=False):
        super().__init__(port)
        self.tls, self.server_tls = tls, server_tls
        self.dir = workdir / "pgbouncer"
        self.pg_port, self.cleanup = pg_port, cleanup
        self.pool_size, self.max_client_conn = pool_size, max_client_conn
        self.log = self.dir / "pgbouncer.log"

    def write_config(self):
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / "users.txt").write_text(f'"{PG_USER}" ""\n')
        # Connection logging off on both poolers: 10,000 logins would otherwise cost log lines.
        (self.dir / "pgbouncer.ini").write_text(f"""\
[databases]
{DB} = host=127.0.0.1 port={self.pg_port} dbname={DB}

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {self.port}
unix_socket_dir =
auth_type = trust
auth_file = {self.dir}/users.txt
pool_mode = transaction
default_pool_size = {self.pool_size}
max_client_conn = {self.max_client_conn}
admin_users = {PG_USER}
logfile = {self.log}
log_connections = 0
log_disconnections = 0
""" + tls_lines(self.tls, quote="", server_tls=self.server_tls))
        self.log.touch()
        if is_root():  # PgBouncer runs as postgres and opens its own logfile
            shutil.chown(self.dir, PG_USER, PG_USER)
            for f in self.dir.iterdir():
                shutil.chown(f, PG_USER, PG_USER)

    def start(self):
        exe = shutil.which("pgbouncer")
        if not exe:
            raise BenchError("pgbouncer not found (Debian: apt-get install -y pgbouncer)")
        self.write_config()
        with open(self.dir.parent / "pgbouncer.stderr", "a") as err:
            self.proc = self.cleanup.popen(as_postgres_prefix() + [exe, str(self.dir / "pgbouncer.ini")],
                                           stdout=subprocess.DEVNULL, stderr=err)
        wait_login(self.port, self.proc, log=self.log)
        self.status = "ok"

    def stop(self):
        if self.proc:
            stop_process(self.proc)


class Pgring(Target):
    name, label = "pgring", "pgring"

    def __init__(self, port, pg_port, workdir, cleanup, binary, workers, pool_size=20,
                 max_client_conn=15000, extra_general=(), tls=None, server_tls=False):
        super().__init__(port)
        self.tls, self.server_tls = tls, server_tls
        self.extra_general = list(extra_general)
        self.dir = workdir / "pgring"
        self.pg_port, self.cleanup, self.binary, self.workers = pg_port, cleanup, binary, workers
        self.pool_size, self.max_client_conn = pool_size, max_client_conn
        self.log = self.dir / "pgring.log"

    def write_config(self):
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / "users.txt").write_text(f'"{PG_USER}" ""\n')
        (self.dir / "pgring.toml").write_text(f"""\
[general]
listen_addr = "127.0.0.1"
listen_port = {self.port}
auth_type = "trust"
auth_file = "{self.dir}/users.txt"
pool_mode = "transaction"
default_pool_size = {self.pool_size}
max_client_conn = {self.max_client_conn}
admin_users = ["{PG_USER}"]
workers = {self.workers}
""" + tls_lines(self.tls, quote='"', server_tls=self.server_tls) + "".join(f"{line}\n" for line in self.extra_general) + f"""
[databases.{DB}]
host = "127.0.0.1"
port = {self.pg_port}
dbname = "{DB}"
""")

    def start(self):
        if not Path(self.binary).exists():
            raise BenchError(f"{self.binary} does not exist (cargo build --release)")
        self.write_config()
        env = {**os.environ}
        env.setdefault("RUST_LOG", "warn")
        with open(self.log, "a") as log:
            self.proc = self.cleanup.popen([str(self.binary), str(self.dir / "pgring.toml")],
                                           stdout=log, stderr=subprocess.STDOUT, env=env)
        wait_login(self.port, self.proc, log=self.log)
        self.status = "ok"

    def stop(self):
        if self.proc:
            stop_process(self.proc)


# ---------------------------------------------------------------------------------------------
# pgbench and its per-transaction logs


def pgbench_cmd(port, clients, duration, mode="simple", workload="select-only", script=None,
                log_prefix=None, host="127.0.0.1", user=PG_USER, db=DB, threads=None):
    cmd = ["pgbench", "-h", host, "-p", str(port), "-U", user,
           "-c", str(clients), "-j", str(threads or max(1, min(clients, NPROC))),
           "-T", str(duration), "-M", mode]
    if script:
        cmd += ["-n", "-f", script]
    elif workload == "select-only":
        cmd += ["-n", "-S"]
    elif workload == "tpcb-like":
        pass  # pgbench's default script; its vacuum before the run keeps runs comparable
    else:
        cmd += ["-b", workload]
    if log_prefix:
        cmd += ["--log", f"--log-prefix={log_prefix}"]
    return cmd + [db]


_RE = {
    "xacts": re.compile(r"number of transactions actually processed: (\d+)(?:/(\d+))?"),
    "failed": re.compile(r"number of failed transactions: (\d+)"),
    # With -C pgbench has no "initial connection time": its TPS includes the reconnections.
    "tps": re.compile(r"tps = ([\d.]+) \((?:without|excluding|including reconnection)"),
    "latency_avg_ms": re.compile(r"latency average = ([\d.]+) ms"),
    "conn_ms": re.compile(r"initial connection time = ([\d.]+) ms"),
}


def parse_pgbench(stdout, stderr, rc):
    r = {"exit_code": rc}
    m = _RE["xacts"].search(stdout)
    r["xacts"] = int(m.group(1)) if m else 0
    m = _RE["failed"].search(stdout)
    r["failed"] = int(m.group(1)) if m else 0
    for k in ("tps", "latency_avg_ms", "conn_ms"):
        m = _RE[k].search(stdout)
        r[k] = float(m.group(1)) if m else None
    # Every client pgbench gives up on prints one "pgbench: error: ..." (lines may interleave
    # between threads); exit code 2 means "Run was aborted; the above results are incomplete".
    r["aborted_clients"] = max(len(re.findall(r"client \d+ aborted", stderr)),
                               stderr.count("error:"))
    errs = [line for line in stderr.splitlines() if "error" in line.lower() or "fatal" in line.lower()]
    if errs:
        r["stderr_sample"] = errs[:5]
    r["errors"] = r["failed"] + r["aborted_clients"]
    if rc != 0 and not r["errors"]:
        r["errors"] = 1
    r["run_aborted"] = rc != 0
    return r


def stdout_tail(out, n=4):
    return " | ".join(out.strip().splitlines()[-n:])


def read_latencies(prefix):
    """All per-transaction latencies (µs) from pgbench's log files; removes the files."""
    lat, failed = [], 0
    for path in glob.glob(f"{prefix}.*"):
        with open(path) as f:
            for line in f:
                parts = line.split()
                if len(parts) < 3:
                    continue
                t = parts[2]
                if t.isdigit():
                    lat.append(int(t))
                else:
                    failed += 1  # 'failed' / 'skipped' in PG15 logs
        os.unlink(path)
    return lat, failed


CDF_POINTS = ([i / 100 for i in range(0, 99)] + [0.99 + i / 1000 for i in range(0, 10)]
              + [0.9995, 0.9999, 1.0])


def summarize(lat):
    """Percentiles (nearest rank) and a compact CDF, all in µs."""
    if not lat:
        return {}
    lat.sort()
    n = len(lat)

    def q(p):
        return lat[min(n - 1, max(0, math.ceil(p * n) - 1))]
    return {"n": n, "mean_us": round(sum(lat) / n, 1), "p50_us": q(0.5), "p90_us": q(0.9),
            "p99_us": q(0.99), "p999_us": q(0.999), "max_us": lat[-1],
            "cdf": [[p, q(p)] for p in CDF_POINTS]}


def connect_allowance(clients, direct):
    """Seconds added to -T: pgbench's -T clock starts before its clients have connected, and
    forking 1000 backends takes seconds (a pooler logs in 10,000 clients in a few)."""
    if clients < 200:
        return 0
    return math.ceil(clients / 100) if direct else 1 + math.ceil(clients / 1000)


def run_pgbench(port, clients, duration, workdir, tag, mode="simple", workload="select-only",
                script=None, cpu_pid=None, cleanup=None, host="127.0.0.1", user=PG_USER, db=DB,
                direct=False, keep_latencies=False, tls=False, connect_each=False):
    """One pgbench run with per-transaction logs; returns TPS, percentiles, CPU per xact, errors.

    TPS is pgbench's own figure, which excludes the initial connection time; the percentiles cover
    every transaction in the logs."""
    prefix = str(workdir / f"log-{tag}")
    extra = connect_allowance(clients, direct)
    cmd = pgbench_cmd(port, clients, duration + extra, mode, workload, script, prefix, host, user, db)
    if connect_each:
        cmd.insert(-1, "-C")
    cpu0 = cpu_us(cpu_pid) if cpu_pid else None
    sched0 = sched_ns(cpu_pid) if cpu_pid else None
    switches0 = ctx_switches(cpu_pid) if cpu_pid else None
    host0, t0 = host_cpu_us(), time.monotonic()
    popen = cleanup.popen if cleanup else (lambda c, **kw: subprocess.Popen(c, **kw))
    # A connect timeout, so a pooler that accepts but never answers fails the run instead of
    # hanging it; a run that outlives its time by a minute is stopped and marked timed out.
    # TLS only where the scenario asks: both poolers offer it, and libpq's default (prefer)
    # would take it everywhere.
    env = {**os.environ, "PGCONNECT_TIMEOUT": "30", "PGSSLMODE": "require" if tls else "disable"}
    p = popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=str(workdir),
              env=env)
    timed_out = False
    try:
        out, err = p.communicate(timeout=duration + extra + 60)
    except subprocess.TimeoutExpired:
        stop_process(p)
        out, err = p.communicate()
        err += "\nbench: error: pgbench did not finish within a minute of its end: timed out"
        timed_out = True
    wall = time.monotonic() - t0
    r = parse_pgbench(out, err, p.returncode)
    r["timed_out"] = timed_out
    r.update({"clients": clients, "mode": mode, "workload": script or workload,
              "duration_s": duration, "connect_allowance_s": extra, "wall_s": round(wall, 2),
              "tls": tls, "connect_each": connect_each,
              "command": " ".join(cmd)})
    if r["conn_ms"] is not None:
        r["measured_s"] = round(duration + extra - r["conn_ms"] / 1000, 2)
    if r["xacts"] == 0 and not r["errors"]:
        r["errors"] = 1
        r.setdefault("stderr_sample", []).append("no transaction completed (connections slower "
                                                  "than -T?)" + stdout_tail(out))
    if cpu_pid:
        try:
            r["pooler_cpu_us"] = cpu_us(cpu_pid) - cpu0
            if r["xacts"]:
                r["cpu_us_per_xact"] = round(r["pooler_cpu_us"] / r["xacts"], 2)
        except OSError:
            r["pooler_cpu_us"] = None  # the pooler died during the run
        sched1 = sched_ns(cpu_pid)
        if sched0 and sched1 and wall > 0:
            # Time the pooler's threads were ready to run but had no CPU, per second of the
            # run (summed over threads: 800 means 0.8 of a thread was always waiting).
            r["pooler_wait_ms_per_s"] = round((sched1[1] - sched0[1]) / 1e6 / wall, 1)
        switches1 = ctx_switches(cpu_pid)
        if switches0 and switches1 and r["xacts"]:
            # Per transaction: how often the pooler slept (each is a wake-up later) and how
            # often it lost its CPU while it had work.
            r["pooler_sleeps_per_xact"] = round((switches1[0] - switches0[0]) / r["xacts"], 3)
            r["pooler_preemptions_per_xact"] = round((switches1[1] - switches0[1]) / r["xacts"],
                                                     3)
    if r["xacts"]:
        r["host_cpu_us_per_xact"] = round((host_cpu_us() - host0) / r["xacts"], 2)
    lat, logged_failed = read_latencies(prefix)
    r["latency"] = summarize(lat)
    if keep_latencies:
        r["latencies"] = lat
    r["logged_failed"] = logged_failed
    return r
