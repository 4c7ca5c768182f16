"""report: perf/REPORT.md (and the PNG plots) from one bench/run result.

It owns the presentation: per-scenario tables with direct / PgBouncer / pgring and the ratios, and
the issue-6 targets judged against the measured ratios. It never measures anything; it reads the
JSON bench/run wrote, so `bench/run --report-only perf/results/X.json` regenerates it.
"""

import json
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
NAMES = {"direct": "direct", "pgbouncer": "PgBouncer", "pgring": "pgring"}


def fmt_us(us):
    """Latency µs -> ms with a precision that suits its size."""
    if us is None:
        return "–"
    ms = us / 1000
    return f"{ms:.3f}" if ms < 10 else f"{ms:.1f}" if ms < 1000 else f"{ms:.0f}"


def fmt_num(x, nd=1):
    """Integers and anything from 100 up without decimals (TPS, bytes); small figures with nd."""
    if x is None:
        return "–"
    if isinstance(x, int) or abs(x) >= 100:
        return f"{round(x):,}"
    return f"{x:,.{nd}f}"


def fmt_signed(x):
    return "–" if x is None else f"{x:+,.0f}"


def ratio(a, b):
    if a is None or b in (None, 0):
        return None
    return a / b


def fmt_ratio(r):
    return "–" if r is None else f"{r:.2f}×"


def cell_status(r):
    """What a table cell shows when the target has no figure for this scenario."""
    if r is None:
        return "not run"
    return {"skipped": "skipped", "target-failed": "failed", "error": "error"}.get(r["status"])


def get(r, path):
    """r['latency']['p99_us'] as get(r, 'latency.p99_us'); None when missing or not ok."""
    if not r or r.get("status") != "ok":
        return None
    for key in path.split("."):
        if not isinstance(r, dict) or key not in r:
            return None
        r = r[key]
    return r


PGBENCH_ROWS = [
    ("TPS", "tps", fmt_num, "higher"),
    ("latency p50 (ms)", "latency.p50_us", fmt_us, "lower"),
    ("latency p90 (ms)", "latency.p90_us", fmt_us, "lower"),
    ("latency p99 (ms)", "latency.p99_us", fmt_us, "lower"),
    ("latency p99.9 (ms)", "latency.p999_us", fmt_us, "lower"),
    ("latency max (ms)", "latency.max_us", fmt_us, "lower"),
    ("pooler CPU µs / xact", "cpu_us_per_xact", fmt_num, "lower"),
    ("host CPU µs / xact (all processes)", "host_cpu_us_per_xact", fmt_num, "lower"),
    ("pooler threads waiting for a CPU (ms per s)", "pooler_wait_ms_per_s", fmt_num, "lower"),
    ("pooler sleeps / xact", "pooler_sleeps_per_xact", lambda x: fmt_num(x, 2), "lower"),
    ("pooler preemptions / xact", "pooler_preemptions_per_xact", lambda x: fmt_num(x, 2),
     "lower"),
    ("transactions", "xacts", fmt_num, None),
    ("failed xacts + aborted clients", "errors", fmt_num, None),
]

LOADGEN_ROWS = [
    ("clients logged in", "connected", fmt_num, None),
    ("connect errors", "connect_errors", fmt_num, None),
    ("login time for all (s)", "connect_s", fmt_num, None),
    ("pooler RSS before (KiB)", "rss_before_kib", fmt_num, None),
    ("pooler RSS, all idle (KiB)", "rss_idle_kib", fmt_num, None),
    ("**RSS per idle client (bytes)**", "idle_bytes_per_client", fmt_num, "lower"),
    ("RSS per client after the active phase (bytes)", "active_bytes_per_client", fmt_num, "lower"),
    ("pooler CPU µs per login", "login_cpu_us_per_client", fmt_num, "lower"),
    ("seconds between one client's queries", "interval_s", fmt_num, None),
    ("queries/s", "tps", fmt_num, "higher"),
    ("latency p50 (ms)", "latency.p50_us", fmt_us, "lower"),
    ("latency p99 (ms)", "latency.p99_us", fmt_us, "lower"),
    ("latency p99.9 (ms)", "latency.p999_us", fmt_us, "lower"),
    ("latency max (ms)", "latency.max_us", fmt_us, "lower"),
    ("pooler CPU µs / query", "cpu_us_per_xact", fmt_num, "lower"),
    ("late ticks (previous query still running)", "late", fmt_num, None),
    ("errors (connect + query + lost)", "errors", fmt_num, None),
]


def scenario_table(sc):
    res = sc["results"]
    # A skipped target gets no column (the note under the table says why).
    cols = [n for n in NAMES if n in res and res[n]["status"] != "skipped"]
    rows = PGBENCH_ROWS if sc["kind"] == "pgbench" else LOADGEN_ROWS
    ratio_cols = [b for b in ("pgbouncer", "direct") if b in cols and "pgring" in cols]
    head = ["metric"] + [NAMES[c] for c in cols] + [f"pgring/{NAMES[b]}" for b in ratio_cols]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for label, path, fmt, _better in rows:
        vals = {c: get(res[c], path) for c in cols}
        if all(v is None for v in vals.values()) and not any(cell_status(res[c]) for c in cols):
            continue
        cells = [label]
        for c in cols:
            st = cell_status(res[c])
            cells.append(st if st else fmt(vals[c]))
        for b in ratio_cols:
            cells.append(fmt_ratio(ratio(vals.get("pgring"), vals.get(b)))
                         if _better else "")
        lines.append("| " + " | ".join(cells) + " |")
    notes = []
    for c in [n for n in NAMES if n in res]:
        r = res[c]
        if r["status"] != "ok":
            why = r.get("reason") or r.get("error") or ""
            notes.append(f"- {NAMES[c]}: {r['status']}: {why.splitlines()[0] if why else ''}")
        elif r.get("stderr_sample") or r.get("error_sample"):
            sample = (r.get("stderr_sample") or r.get("error_sample"))[0]
            notes.append(f"- {NAMES[c]}: first error: `{sample[:200]}`")
    return "\n".join(lines + ([""] + notes if notes else []))


def find(result, sid):
    for sc in result["scenarios"]:
        if sc["id"] == sid:
            return sc["results"]
    return {}


def verdict(ok):
    return "–" if ok is None else ("**PASS**" if ok else "**FAIL**")


def targets_table(result):
    """Issue 6's targets: each row the measured ratio against its goal."""
    rows = []

    def add(what, got, goal, ok, detail):
        rows.append(f"| {what} | {detail} | {got} | {goal} | {verdict(ok)} |")

    for c in (50, 1000):
        for mode in ("simple", "extended"):
            r = find(result, f"S-{mode}-{c}")
            a, b = get(r.get("pgring"), "cpu_us_per_xact"), get(r.get("pgbouncer"), "cpu_us_per_xact")
            q = ratio(a, b)
            add(f"pooler CPU per xact, {c} clients, -M {mode}", fmt_ratio(q), "≤ 0.60× PgBouncer",
                None if q is None else q <= 0.6, f"pgring {fmt_num(a)} µs, PgBouncer {fmt_num(b)} µs")
    for mode in ("simple", "extended"):
        r = find(result, f"S-{mode}-1000")
        a, b, d = (get(r.get(n), "tps") for n in ("pgring", "pgbouncer", "direct"))
        q1, q2 = ratio(a, b), ratio(a, d)
        add(f"TPS, 1000 clients, -M {mode}", f"{fmt_ratio(q1)} / {fmt_ratio(q2)}",
            "≥ 1.2× PgBouncer and ≥ 1.4× direct",
            None if q1 is None or q2 is None else (q1 >= 1.2 and q2 >= 1.4),
            f"pgring {fmt_num(a)}, PgBouncer {fmt_num(b)}, direct {fmt_num(d)}")
    for mode in ("simple", "extended"):
        r = find(result, f"S-{mode}-1000")
        a, b = get(r.get("pgring"), "latency.p99_us"), get(r.get("pgbouncer"), "latency.p99_us")
        q = ratio(a, b)
        add(f"p99, 1000 clients, -M {mode}", fmt_ratio(q), "≤ 0.80× PgBouncer",
            None if q is None else q <= 0.8, f"pgring {fmt_us(a)} ms, PgBouncer {fmt_us(b)} ms")
    for mode in ("simple", "extended"):
        r = find(result, f"S-{mode}-1")
        a, b, d = (get(r.get(n), "latency.p50_us") for n in ("pgring", "pgbouncer", "direct"))
        added_a = None if a is None or d is None else a - d
        added_b = None if b is None or d is None else b - d
        q = ratio(added_a, added_b) if added_b and added_b > 0 else None
        noise = (" — PgBouncer added nothing measurable in this run (noise): rerun"
                 if added_b is not None and added_b <= 0 else "")
        add(f"p50 latency added over direct, 1 client, -M {mode}", fmt_ratio(q),
            "≤ 0.50× PgBouncer's", None if q is None else q <= 0.5,
            f"pgring {fmt_signed(added_a)} µs, PgBouncer {fmt_signed(added_b)} µs "
            f"(direct p50 {fmt_num(d)} µs){noise}")
    r = find(result, "idle-10000")
    a, b = get(r.get("pgring"), "idle_bytes_per_client"), get(r.get("pgbouncer"), "idle_bytes_per_client")
    q = ratio(a, b)
    add("RSS per idle client, 10,000 clients", fmt_ratio(q), "≤ 1.00× PgBouncer",
        None if q is None else q <= 1.0, f"pgring {fmt_num(a)} B, PgBouncer {fmt_num(b)} B")
    errs, detail = pgring_10k_errors(result)
    add("errors with 10,000 concurrent clients", "–" if errs is None else fmt_num(errs), "0",
        None if errs is None else errs == 0, detail)
    for name in ("pgring", "pgbouncer"):
        t50 = get(find(result, "S-simple-50").get(name), "tps")
        t10k = get(find(result, "S-simple-10000").get(name), "tps")
        loss = None if not t50 or t10k is None else 1 - t10k / t50
        add(f"issue 3: TPS loss 50 → 10,000 clients ({NAMES[name]})",
            "–" if loss is None else f"{loss * 100:.1f} %", "≤ 10 %",
            None if loss is None else loss <= 0.10,
            f"{fmt_num(t50)} → {fmt_num(t10k)} TPS (-M simple)")
    head = ["| target | measured | ratio | goal | verdict |", "|---|---|---|---|---|"]
    return "\n".join(head + rows)


def pgring_10k_errors(result):
    """pgring's errors over both 10,000-client scenarios; None when neither produced a figure."""
    total, parts = None, []
    for label, sid in (("idle + paced", "idle-10000"), ("pgbench -S", "S-simple-10000")):
        r = find(result, sid).get("pgring")
        if not r:
            continue
        if r["status"] == "ok":
            e = r.get("errors", 0)
        elif r["status"] == "error":
            e = 1  # the run itself broke: at least one error
        else:
            parts.append(f"{label}: {r['status']}")
            continue
        total = (total or 0) + e
        parts.append(f"{label}: {e}")
    return total, ", ".join(parts) or "not run"


def tps_overview(result):
    lines = ["| workload | clients | direct | PgBouncer | pgring | pgring/PgBouncer | pgring/direct |",
             "|---|---|---|---|---|---|---|"]
    for sc in result["scenarios"]:
        if sc["kind"] != "pgbench":
            continue
        res = sc["results"]
        v = {n: (cell_status(res.get(n)) or fmt_num(get(res.get(n), "tps"))) for n in NAMES}
        p = get(res.get("pgring"), "tps")
        extra = (" -C" if sc.get("connect_each") else "") + (", TLS" if sc.get("tls") else "")
        lines.append(f"| {sc['workload']} -M {sc['mode']}{extra} | {sc['clients']:,} | {v['direct']} | "
                     f"{v['pgbouncer']} | {v['pgring']} | "
                     f"{fmt_ratio(ratio(p, get(res.get('pgbouncer'), 'tps')))} | "
                     f"{fmt_ratio(ratio(p, get(res.get('direct'), 'tps')))} |")
    return "\n".join(lines)


def render(result, plots):
    m = result["meta"]
    commit = m["commit"] + (" (work tree had uncommitted changes)" if m.get("dirty") else "")
    out = [
        "# pgring performance report",
        "",
        "Generated by `bench/run`; do not edit by hand (`bench/run --report-only "
        "perf/results/<file>.json` regenerates it). How to read it: `bench/README.md`.",
        "",
        f"- commit: `{commit}`",
        f"- date: {m['date']}; {'**quick run**, ' if m.get('quick') else ''}"
        f"{m['duration_s']} s per scenario and target; whole run {m.get('elapsed_s', '?')} s",
        f"- machine: {m['nproc']} cores ({m.get('cpu', '?')}), {m.get('mem_gib', '?')} GiB, "
        f"kernel {m['kernel']}, fd limit {m.get('fd_limit')}; load average at start "
        f"{' '.join(m.get('loadavg_at_start') or ['?'])}"
        + ("; scheduler autogroup on (each target is its own CPU-sharing group)"
           if m.get("sched_autogroup") else ""),
        f"- {m.get('postgres')}, pgbench -i -s {m.get('scale')}; {m.get('pgbouncer')}; "
        f"pgring workers = {m['workers']}; pool size {m['pool_size']}, transaction mode, "
        f"all on 127.0.0.1",
        "",
        "| target | status | idle CPU (% of a core, no clients) | note |",
        "|---|---|---|---|",
    ]
    for n, t in result["targets"].items():
        note = (t.get("error") or "").splitlines()[0] if t.get("error") else ""
        idle = t.get("idle_cpu_percent")
        out.append(f"| {NAMES[n]} | {t['status']} | {'–' if idle is None else idle} | {note} |")
    out += ["", "## Issue 6 targets (ratios from this run)", "", targets_table(result), "",
            "## Throughput overview", "", tps_overview(result), ""]
    if plots:
        out += ["## Plots", ""] + [f"![{p.stem}]({p.name})" for p in plots] + [""]
    out += ["## Scenarios", ""]
    for sc in result["scenarios"]:
        out += [f"### {sc['title']} (`{sc['id']}`)", "", scenario_table(sc), ""]
    return "\n".join(out)


def plot_python():
    """An interpreter with matplotlib: this one, or bench/.venv's (bench/run --setup-plots)."""
    try:
        import matplotlib  # noqa: F401
        return sys.executable
    except ImportError:
        venv = HERE / ".venv" / "bin" / "python"
        if venv.exists() and subprocess.run([str(venv), "-c", "import matplotlib"],
                                            capture_output=True).returncode == 0:
            return str(venv)
    return None


def make_plots(result, outdir):
    py = plot_python()
    if not py:
        print("bench: matplotlib not found: no plots (bench/setup-plots installs it into "
              "bench/.venv); tables are written anyway")
        return []
    p = subprocess.run([py, str(HERE / "plots.py"), str(outdir)], input=json.dumps(result),
                       capture_output=True, text=True)
    if p.returncode != 0:
        print(f"bench: plotting failed: {p.stderr.strip()[-500:]}")
        return []
    return [outdir / name for name in p.stdout.split()]


def write_all(result, outdir):
    outdir.mkdir(parents=True, exist_ok=True)
    plots = make_plots(result, outdir)
    # Only plots this run could not draw go; the others were overwritten in place.
    for old in outdir.glob("*.png"):
        if old not in plots:
            old.unlink()
    (outdir / "REPORT.md").write_text(render(result, plots) + "\n")
    print(f"bench: wrote {outdir / 'REPORT.md'}" + (f" and {len(plots)} plots" if plots else ""))


if __name__ == "__main__":
    write_all(json.loads(Path(sys.argv[1]).read_text()), Path(sys.argv[2]))
