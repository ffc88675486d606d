#!/usr/bin/env python3
"""Median of each scenario's runs, from scripts/bench.sh's JSON lines, as a Markdown table."""
import json
import statistics
import sys
from collections import defaultdict

runs = defaultdict(list)
with open(sys.argv[1]) as f:
    for line in f:
        line = line.strip()
        if line:
            row = json.loads(line)
            runs[(row["scenario"], row["store"])].append(row["result"])


def med(rs, *path):
    vals = []
    for r in rs:
        v = r
        for p in path:
            v = v.get(p) if isinstance(v, dict) else None
        if v is not None:
            vals.append(v)
    return statistics.median(vals) if vals else None


def fmt(v, nd=1):
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:,.{nd}f}"
    return f"{v:,}"


print("| scenario | store | runs | result (median) |")
print("|---|---|---|---|")
for (name, store), rs in runs.items():
    if name.startswith("connections"):
        text = (f"held {fmt(med(rs, 'held'))}/{fmt(med(rs, 'requested'))}, "
                f"failures {fmt(med(rs, 'handshake_failures'))}, "
                f"connect p99 {fmt(med(rs, 'connect_p99_ms'))} ms, "
                f"RSS/conn {fmt(med(rs, 'server_rss_per_conn_kib'), 2)} KiB")
    elif name.startswith("publish"):
        text = (f"{fmt(med(rs, 'publishes_per_sec'), 0)} publishes/s, "
                f"p50 {fmt(med(rs, 'latency', 'p50_ms'), 2)} ms, "
                f"p99 {fmt(med(rs, 'latency', 'p99_ms'), 2)} ms, errors {fmt(med(rs, 'errors'))}")
    else:
        text = (f"{fmt(med(rs, 'deliveries_per_sec'), 0)} deliveries/s, "
                f"p50 {fmt(med(rs, 'latency', 'p50_ms'))} / p99 {fmt(med(rs, 'latency', 'p99_ms'))} / "
                f"max {fmt(med(rs, 'latency', 'max_ms'))} ms, "
                f"lost {fmt(med(rs, 'lost'))} dup {fmt(med(rs, 'duplicated'))} "
                f"ooo {fmt(med(rs, 'out_of_order'))}, "
                f"CPU server {fmt(med(rs, 'server_cpu_secs_per_million'), 2)} / "
                f"client {fmt(med(rs, 'client_cpu_secs_per_million'), 2)} s per million")
    print(f"| {name} | {store} | {len(rs)} | {text} |")
