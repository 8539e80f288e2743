#!/usr/bin/env python3
"""Summarize benches/nchan/run.sh results (JSON lines) as median and min-max per cell.
Several files (e.g. two sessions) are pooled run by run.

    python3 benches/nchan/summarize.py /tmp/nchan-bench/results.jsonl [more.jsonl ...]
"""
import json
import statistics
import sys
from collections import OrderedDict


def cell(vals, fmt="{:.2f}"):
    vals = [v for v in vals if v is not None]
    if not vals:
        return "-"
    med = statistics.median(vals)
    return f"{fmt.format(med)} ({fmt.format(min(vals))}–{fmt.format(max(vals))})"


def main(paths):
    groups = OrderedDict()
    for path in paths:
        for line in open(path):
            d = json.loads(line)
            groups.setdefault(d["tag"], []).append(d["result"])

    print("## latency (ms; median of per-run figures, min–max across runs)")
    print("| subscribers | rate asked | rate achieved msg/s | p50 ms | p90 ms | p99 ms | max ms | deliveries/s | "
          "server CPU % | tool CPU % | missing | dups | runs |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for tag, rs in groups.items():
        if not tag.startswith("latency"):
            continue
        kv = dict(x.split("=") for x in tag.split()[1:])
        subs = [r["sub"] for r in rs]
        pubs = [r["pub"] for r in rs]
        ms = lambda k: [s["latency_us"][k] / 1e3 for s in subs]
        print("| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |".format(
            kv["subs"], kv["rate"],
            cell([p["rate_achieved"] for p in pubs], "{:.1f}"),
            cell(ms("p50")), cell(ms("p90")), cell(ms("p99")), cell(ms("max"), "{:.1f}"),
            cell([s["events_total"] / s["wall_s"] for s in subs], "{:.0f}"),
            cell([100 * s["server"]["cpu_s_during_run"] / s["wall_s"] for s in subs], "{:.0f}"),
            cell([100 * s["tool"]["cpu_s"] / s["wall_s"] for s in subs], "{:.0f}"),
            sum(s["missing"] for s in subs), sum(s["duplicates"] for s in subs), len(rs)))

    for tag, rs in groups.items():
        if tag.startswith("idle"):
            print(f"\n## {tag}: server memory (KiB; nginx master + workers)")
            srv = [r["server"] for r in rs]
            n = [r["connected"] for r in rs]
            print("| figure | median (min–max) |")
            print("|---|---|")
            print("| connected | {} |".format(cell(n, "{:.0f}")))
            print("| connect time p50 ms | {} |".format(cell([r["connect_us"]["p50"] / 1e3 for r in rs])))
            print("| connect time p99 ms | {} |".format(cell([r["connect_us"]["p99"] / 1e3 for r in rs])))
            print("| all connected after s | {} |".format(cell([r["ready_s"] for r in rs])))
            for k in ("rss_kib", "pss_kib"):
                print("| {} at 0 subscribers | {} |".format(k, cell([s["before"][k] for s in srv], "{:.0f}")))
                print("| {} at 5000 idle | {} |".format(k, cell([s["connected"][k] for s in srv], "{:.0f}")))
            print("| RSS KiB per subscriber | {} |".format(cell([s["rss_kib_per_sub"] for s in srv])))
            print("| PSS KiB per subscriber | {} |".format(cell([s["pss_kib_per_sub"] for s in srv])))
        if tag.startswith("resume"):
            print(f"\n## {tag}: Last-Event-ID resume, one subscriber")
            print("| figure | median (min–max) |")
            print("|---|---|")
            print("| time to all 1000 backlog events, ms (from connect start) | {} |".format(
                cell([r["time_to_expect_us"]["p50"] / 1e3 for r in rs])))
            print("| time to first event, ms | {} |".format(cell([r["first_event_us"]["p50"] / 1e3 for r in rs])))
            print("| events received | {} |".format(cell([r["events_total"] for r in rs], "{:.0f}")))
            print("| missing / duplicates (all runs) | {} / {} |".format(
                sum(r["missing"] for r in rs), sum(r["duplicates"] for r in rs)))
            print("| reorders (all runs) | {} |".format(sum(r["reorders"] for r in rs)))


if __name__ == "__main__":
    main(sys.argv[1:] or ["/tmp/nchan-bench/results.jsonl"])
