#!/usr/bin/env python3
"""plots: the PNGs in perf/ from one bench/run result (JSON on stdin; output dir as argument).

Run by bench/report.py with an interpreter that has matplotlib; prints the file names it wrote.
Plots: latency CDF at 1000 clients (direct vs PgBouncer vs pgring, one panel per protocol) and
TPS by client count for pgbench -S.
"""

import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

COLORS = {"direct": "#555555", "pgbouncer": "#1f77b4", "pgring": "#d62728"}
NAMES = {"direct": "direct", "pgbouncer": "PgBouncer", "pgring": "pgring"}


def ok(r):
    return r and r.get("status") == "ok"


def latency_cdf(result, outdir):
    panels = [sc for sc in result["scenarios"]
              if sc["kind"] == "pgbench" and sc["clients"] == 1000 and sc["workload"] == "select-only"]
    panels = [sc for sc in panels if any(ok(r) for r in sc["results"].values())]
    if not panels:
        return None
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4), squeeze=False)
    for ax, sc in zip(axes[0], panels, strict=True):
        for name, r in sc["results"].items():
            if not ok(r) or not r.get("latency"):
                continue
            cdf = r["latency"]["cdf"]
            ax.plot([v / 1000 for _, v in cdf], [p * 100 for p, _ in cdf], color=COLORS[name],
                    label=f"{NAMES[name]} (p99 {r['latency']['p99_us'] / 1000:.1f} ms)")
        ax.set_xscale("log")
        ax.set_xlabel("latency (ms, log scale)")
        ax.set_ylabel("percent of transactions ≤ latency")
        ax.set_title(f"pgbench -S, 1000 clients, -M {sc['mode']}")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8, loc="lower right")
    fig.suptitle(f"Latency CDF at 1000 clients ({result['meta']['commit']}, "
                 f"{result['meta']['nproc']} cores)")
    fig.tight_layout()
    path = outdir / "latency-cdf-1000.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def tps_by_clients(result, outdir):
    series = {}
    for sc in result["scenarios"]:
        if sc["kind"] != "pgbench" or sc["workload"] != "select-only":
            continue
        for name, r in sc["results"].items():
            if ok(r) and r.get("tps"):
                series.setdefault((name, sc["mode"]), []).append((sc["clients"], r["tps"]))
    if not series:
        return None
    fig, ax = plt.subplots(figsize=(7, 4.5))
    styles = {"simple": "-", "extended": "--", "prepared": ":"}
    for (name, mode), pts in sorted(series.items()):
        pts.sort()
        ax.plot([c for c, _ in pts], [t for _, t in pts], styles[mode], marker="o",
                color=COLORS[name], label=f"{NAMES[name]} -M {mode}")
    ax.set_xscale("log")
    ax.set_xlabel("clients (log scale)")
    ax.set_ylabel("TPS")
    ax.set_title(f"pgbench -S TPS by client count (pool 20; {result['meta']['commit']})")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    path = outdir / "tps-by-clients.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main():
    result = json.load(sys.stdin)
    outdir = Path(sys.argv[1])
    for fn in (latency_cdf, tps_by_clients):
        path = fn(result, outdir)
        if path:
            print(path.name)


if __name__ == "__main__":
    main()
