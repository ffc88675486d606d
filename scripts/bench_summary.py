#!/usr/bin/env python3
"""Summarizes scripts/bench.sh's JSON lines as Markdown: per scenario and server the median of
each rate or latency, the WORST run's lost/duplicated/reordered counts (a loss in any run is a
loss), and Herald's ratio to each reference peer, computed from medians of the same run."""
import json
import statistics
import sys
from collections import defaultdict

with open(sys.argv[1]) as f:
    records = [json.loads(line) for line in f if line.strip()]

runs = defaultdict(list)
order = []
for row in records:
    key = (row["scenario"], row["server"])
    if key not in runs:
        order.append(key)
    runs[key].append(row["result"])


def values(rs, *path):
    out = []
    for r in rs:
        v = r
        for p in path:
            v = v.get(p) if isinstance(v, dict) else None
        if v is not None:
            out.append(v)
    return out


def med(rs, *path):
    v = values(rs, *path)
    return statistics.median(v) if v else None


def worst(rs, *path):
    v = values(rs, *path)
    # A run that printed nothing (crashed, timed out) is the worst of all.
    if len(v) < len(rs):
        return None
    return max(v) if v else None


def fmt(v, nd=1):
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:,.{nd}f}"
    return f"{v:,}"


def describe(name, rs):
    if name.startswith("connections") or name.startswith("setup-rate"):
        rates = [r["requested"] / r["seconds_to_connect_all"] for r in rs
                 if r and r.get("seconds_to_connect_all")]
        rate = statistics.median(rates) if rates else None
        return (f"held {fmt(med(rs, 'held'))}/{fmt(med(rs, 'requested'))}, "
                f"set up at {fmt(rate, 0)}/s, "
                f"failures (worst) {fmt(worst(rs, 'handshake_failures'))}, "
                f"connect p99 {fmt(med(rs, 'connect_p99_ms'))} ms, "
                f"RSS/conn {fmt(med(rs, 'server_rss_per_conn_kib'), 2)} KiB")
    if name.startswith("page-load"):
        return (f"first visit {fmt(med(rs, 'first_visit_bytes'))} bytes, live after "
                f"{fmt(med(rs, 'first_live_ms'))} ms; repeat visit {fmt(med(rs, 'repeat_visit_bytes'))} bytes, "
                f"live after {fmt(med(rs, 'repeat_live_ms'))} ms (medians)")
    if name.startswith("binary-size"):
        return (f"dist binary {fmt(med(rs, 'dist_bytes'))} bytes (release with line tables "
                f"{fmt(med(rs, 'release_bytes'))}); wasm {fmt(med(rs, 'wasm_bytes'))} bytes, "
                f"brotli {fmt(med(rs, 'wasm_br_bytes'))}, gzip {fmt(med(rs, 'wasm_gz_bytes'))}")
    if name.startswith("publish"):
        return (f"{fmt(med(rs, 'publishes_per_sec'), 0)} publishes/s, "
                f"p50 {fmt(med(rs, 'latency', 'p50_ms'), 2)} / p99 {fmt(med(rs, 'latency', 'p99_ms'), 2)} ms, "
                f"errors (worst) {fmt(worst(rs, 'errors'))}, "
                f"server CPU {fmt(med(rs, 'server_cpu_secs'), 2)} s")
    if name.startswith("presence-storm"):
        return (f"{fmt(med(rs, 'storm'))} joins and leaves in {fmt(med(rs, 'storm_seconds'), 2)} s, "
                f"{fmt(med(rs, 'stable'))} watchers: every list right {fmt(med(rs, 'settle_ms'), 1)} ms after the last leave "
                f"(worst {fmt(worst(rs, 'settle_ms'), 1)}), watchers cut (worst) {fmt(worst(rs, 'cut'))}")
    if name.startswith("chat"):
        return (f"{fmt(med(rs, 'members'))} members, {fmt(med(rs, 'messages_per_sec_in'), 0)} messages/s in, "
                f"offered {fmt(med(rs, 'deliveries_per_sec_offered'), 0)} deliveries/s: delivered "
                f"{fmt(med(rs, 'deliveries_per_sec'), 0)}/s, p50 {fmt(med(rs, 'latency', 'p50_ms'), 2)} / "
                f"p99 {fmt(med(rs, 'latency', 'p99_ms'), 2)} ms, lost/dup/ooo (worst) "
                f"{fmt(worst(rs, 'lost'))}/{fmt(worst(rs, 'duplicated'))}/{fmt(worst(rs, 'out_of_order'))}, "
                f"server CPU {fmt(med(rs, 'server_cpu_secs'), 2)} s")
    if name.startswith("inbox-ops"):
        return (f"bulk of {fmt(med(rs, 'bulk_users'))} users: p50 {fmt(med(rs, 'bulk_latency', 'p50_ms'), 1)} / "
                f"p99 {fmt(med(rs, 'bulk_latency', 'p99_ms'), 1)} ms per request, "
                f"{fmt(med(rs, 'bulk_notifications_per_sec'), 0)} stored/s, errors (worst) {fmt(worst(rs, 'bulk_errors'))}; "
                f"mark-all-read of {fmt(med(rs, 'unread_per_inbox'))} unread: p50 {fmt(med(rs, 'mark_all_latency', 'p50_ms'), 2)} / "
                f"p99 {fmt(med(rs, 'mark_all_latency', 'p99_ms'), 2)} ms, marked {fmt(med(rs, 'marked_per_request'), 0)} each")
    if name.startswith("inbox"):
        return (f"{fmt(med(rs, 'users'))} users, offered {fmt(med(rs, 'rate'), 0)}/s: "
                f"sent {fmt(med(rs, 'sends_per_sec'), 0)}/s, delivered {fmt(med(rs, 'deliveries_per_sec'), 0)}/s, "
                f"p50 {fmt(med(rs, 'latency', 'p50_ms'), 2)} / p99 {fmt(med(rs, 'latency', 'p99_ms'), 2)} ms, "
                f"lost/dup/ooo (worst) {fmt(worst(rs, 'lost'))}/{fmt(worst(rs, 'duplicated'))}/{fmt(worst(rs, 'out_of_order'))}, "
                f"send errors (worst) {fmt(worst(rs, 'send_errors'))}, server CPU {fmt(med(rs, 'server_cpu_secs'), 2)} s"
                + (f", behind schedule p99 {fmt(med(rs, 'behind_schedule', 'p99_ms'), 1)} / max (worst) "
                   f"{fmt(worst(rs, 'behind_schedule', 'max_ms'), 1)} ms" if values(rs, 'behind_schedule') else ""))
    if name.startswith("capacity"):
        r = rs[0] or {}
        if not r:
            return "no result (the search failed)"
        return (f"p99 limit {fmt(r.get('p99_limit_ms'), 0)} ms: "
                f"sustains {fmt(r.get('sustained_publishes_per_sec'), 1)} publishes/s = "
                f"{fmt(r.get('sustained_deliveries_per_sec'), 0)} deliveries/s "
                f"(next step {fmt(r.get('failed_at'), 1)}/s failed), {len(r.get('trials', []))} trials")
    return (f"offered {fmt(med(rs, 'offered_deliveries_per_sec'), 0)}/s, delivered "
            f"{fmt(med(rs, 'deliveries_per_sec'), 0)}/s, "
            f"p50 {fmt(med(rs, 'latency', 'p50_ms'))} / p99 {fmt(med(rs, 'latency', 'p99_ms'))} / "
            f"max {fmt(med(rs, 'latency', 'max_ms'))} ms; worst run: "
            f"lost {fmt(worst(rs, 'lost'))} dup {fmt(worst(rs, 'duplicated'))} "
            f"ooo {fmt(worst(rs, 'out_of_order'))}; "
            f"server CPU {fmt(med(rs, 'server_cpu_secs_per_million'), 2)} s per million")


print("| scenario | server | runs | result |")
print("|---|---|---|---|")
for name, server in order:
    rs = [r for r in runs[(name, server)] if r is not None] or [{}]
    print(f"| {name} | {server} | {len(runs[(name, server)])} | {describe(name, rs)} |")

# Ratios: Herald (memory store) against each peer, from the medians of this run.
METRICS = [
    ("publish", "HTTP publishes/s", ("publishes_per_sec",), True),
    ("publish", "publish p99", ("latency", "p99_ms"), False),
    ("latency", "p99 publish-to-receive", ("latency", "p99_ms"), False),
    ("fanout", "delivered/s", ("deliveries_per_sec",), True),
    ("fanout", "p99 publish-to-receive", ("latency", "p99_ms"), False),
    ("fanout", "server CPU per million deliveries", ("server_cpu_secs_per_million",), False),
    ("connections", "RSS per connection", ("server_rss_per_conn_kib",), False),
    ("capacity", "sustained deliveries/s", ("sustained_deliveries_per_sec",), True),
]
rows = []
for name in dict.fromkeys(n for n, _ in order):
    herald = runs.get((name, "herald-memory"))
    if not herald:
        continue
    for prefix, label, path, higher_better in METRICS:
        if not name.startswith(prefix):
            continue
        h = med([r for r in herald if r], *path)
        for peer in ("go", "node"):
            p = runs.get((name, peer))
            if not p or h is None:
                continue
            pv = med([r for r in p if r], *path)
            if not pv:
                continue
            ratio = (h / pv) if higher_better else (pv / h if h else None)
            rows.append((name, label, peer, h, pv, ratio))
if rows:
    print()
    print("Herald (memory store) against each peer, medians of the same run; a ratio above 1 "
          "means Herald is better by that factor.")
    print()
    print("| scenario | measure | peer | Herald | peer | ratio |")
    print("|---|---|---|---|---|---|")
    for name, label, peer, h, pv, ratio in rows:
        print(f"| {name} | {label} | {peer} | {fmt(h, 2)} | {fmt(pv, 2)} | {fmt(ratio, 2)}x |")

# The authentication A/B: the shipped build against the same code without the publish checks,
# paired round by round (the two ran back to back, in alternating order).
rows_by_run = defaultdict(dict)
for row in records:
    if row["scenario"].endswith("-auth-ab") and row["result"]:
        rate = row["result"].get("publishes_per_sec")
        if rate:
            rows_by_run[(row["scenario"], row["run"])][row["server"]] = rate
pairs = defaultdict(list)
for (name, _run), by in sorted(rows_by_run.items()):
    if "herald-memory" in by and "herald-memory-unchecked" in by:
        pairs[name].append((by["herald-memory"], by["herald-memory-unchecked"]))
for name, ps in pairs.items():
    checked = statistics.mean(c for c, _ in ps)
    unchecked = statistics.mean(u for _, u in ps)
    per_round = [c / u - 1 for c, u in ps]
    print()
    print(f"{name}: {len(ps)} rounds; with the checks {checked:,.0f}/s, without {unchecked:,.0f}/s "
          f"(means): {100 * (checked / unchecked - 1):+.1f}% by mean, "
          f"{100 * statistics.median(per_round):+.1f}% by the median of per-round ratios "
          f"(rounds {100 * min(per_round):+.1f}% to {100 * max(per_round):+.1f}%).")
