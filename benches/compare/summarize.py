#!/usr/bin/env python3
"""Table of benches/compare/run.sh results: per cell, Nchan and Aura as median (min–max) across
runs, and the ratio of the medians, Aura / Nchan. Python 3 standard library only.

    python3 benches/compare/summarize.py [--json-out summary.jsonl] /tmp/perf-compare/results.jsonl

Latency: Nchan's is measured from the publisher's stamp taken before its POST; Aura's from the
server's append stamp `at` (so request handling before the append is not in it). The "POST round
trip p50" rows show how long that request handling can be on each side.
"""
import argparse
import json
import statistics
import sys
from collections import OrderedDict

SIDES = ("nchan", "aura")


def fmt(v):
    if v is None:
        return "-"
    a = abs(v)
    if a >= 100:
        return f"{v:,.0f}"
    if a >= 10:
        return f"{v:.1f}"
    if a >= 1:
        return f"{v:.2f}"
    return f"{v:.3f}"


def stats(vals):
    vals = [v for v in vals if v is not None]
    if not vals:
        return None
    return {"median": statistics.median(vals), "min": min(vals), "max": max(vals), "runs": len(vals)}


def cell_text(s, mark=""):
    if s is None:
        return "-"
    return f"{fmt(s['median'])}{mark} ({fmt(s['min'])}–{fmt(s['max'])})"


# /proc reports CPU time in clock ticks (10 ms): a run that used less server CPU than this
# gives a coarse per-delivery figure.
COARSE_CPU_S = 1.0


def coarse_cpu(r):
    cpu = get(r, "sub", "server", "cpu_s_during_run")
    return cpu is not None and cpu < COARSE_CPU_S


def get(d, *path):
    for k in path:
        if not isinstance(d, dict) or d.get(k) is None:
            return None
        d = d[k]
    return d


def per_delivery_us(sub):
    n, cpu = get(sub, "events_total"), get(sub, "server", "cpu_s_during_run")
    return cpu * 1e6 / n if n and cpu is not None else None


def rate(sub):
    n, wall = get(sub, "events_total"), get(sub, "wall_s")
    return n / wall if n is not None and wall else None


def ms(x):
    return None if x is None else x / 1e3


# (metric, unit, function of one run's result) per kind of cell.
METRICS = {
    "latency": [
        ("latency p50", "ms", lambda r: ms(get(r, "sub", "latency_us", "p50"))),
        ("latency p99", "ms", lambda r: ms(get(r, "sub", "latency_us", "p99"))),
        ("deliveries/s", "1/s", lambda r: rate(r.get("sub"))),
        ("server CPU per delivery", "us", lambda r: per_delivery_us(r.get("sub")), coarse_cpu),
        ("POST round trip p50", "ms", lambda r: ms(get(r, "pub", "post_us", "p50"))),
    ],
    "idle": [
        ("RSS per idle stream", "KiB", lambda r: get(r, "server", "rss_kib_per_sub")),
        ("PSS per idle stream", "KiB", lambda r: get(r, "server", "pss_kib_per_sub")),
        ("RSS at 0 streams", "KiB", lambda r: get(r, "server", "before", "rss_kib")),
    ],
    "resume": [
        ("time to whole backlog", "ms", lambda r: ms(get(r, "sub", "time_to_expect_us", "p50"))),
        ("time to first event", "ms", lambda r: ms(get(r, "sub", "first_event_us", "p50"))),
    ],
}


def checks(kind, cell, side, runs, meta):
    """Problems worth a reader's attention, as text lines."""
    out = []
    bad = [i for i, r in runs if r is None]
    if bad:
        out.append(f"runs {bad} produced no result")
    ok_status = {"201"} if side == "aura" else {"200", "201", "202"}
    for i, r in runs:
        if r is None:
            continue
        sub = r.get("sub", r) if kind != "idle" else r
        if sub is None:
            out.append(f"run {i}: the subscriber run produced no result")
            continue
        want = {"latency": None, "idle": meta.get("idle_n"), "resume": 1}[kind]
        n = sub.get("subscribers")
        if sub.get("connected") != n or (want and n != want):
            out.append(f"run {i}: {sub.get('connected')}/{n} subscribers connected")
        for k in ("missing", "duplicates", "negative_latency"):
            if sub.get(k):
                out.append(f"run {i}: {k} {sub[k]}")
        if kind == "latency" and side == "nchan" and sub.get("reorders"):
            pass  # 4 publisher connections: seq reorders are expected on Nchan
        elif kind != "idle" and sub.get("reorders"):
            out.append(f"run {i}: reorders {sub['reorders']}")
        ends = sub.get("ends") or {}
        if kind != "idle" and set(ends) - {"expected"}:
            out.append(f"run {i}: subscriber ends {ends} (not all got every expected event)")
        if kind == "idle" and set(ends) - {"stopped"}:
            out.append(f"run {i}: idle subscriber ends {ends}")
        pub = r.get("pub") if kind != "idle" else None
        if kind != "idle":
            if not pub:
                out.append(f"run {i}: no publisher report")
            else:
                if pub.get("sent") != pub.get("requested") or r.get("pub_rc"):
                    out.append(f"run {i}: published {pub.get('sent')}/{pub.get('requested')}")
                asked, got = pub.get("rate_requested"), pub.get("rate_achieved")
                if kind == "latency" and asked and got is not None and got < 0.9 * asked:
                    out.append(f"run {i}: published at {got:.1f}/s of {asked:g}/s asked (saturated?)")
                odd = {k: v for k, v in (pub.get("statuses") or {}).items() if k not in ok_status}
                if odd:
                    out.append(f"run {i}: POST statuses {odd}")
        extra = get(r, "check", "extra_events")
        if extra:
            out.append(f"run {i}: the server appended {extra} events beyond one per job (AURA_WORKERS=0 "
                       "not honoured?); subscribers stopped after --expect events of any type")
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("results", nargs="+")
    ap.add_argument("--json-out", help="write the table as JSON lines here")
    a = ap.parse_args()

    meta = {}
    cells = OrderedDict()  # cell -> side -> [(run, result)]
    for path in a.results:
        for line in open(path):
            if not line.strip():
                continue
            d = json.loads(line)
            if "meta" in d:
                meta = d["meta"]
                continue
            cells.setdefault(d["cell"], {s: [] for s in SIDES}).setdefault(d["side"], []).append(
                (d["run"], d["result"]))

    if meta:
        print(f"# Aura vs Nchan, {meta.get('date')}: {meta.get('runs')} runs per cell, latency {meta.get('secs')} s "
              f"at {meta.get('rate')} events/s; {meta.get('cpus')} CPUs, load at start {' '.join(meta.get('loadavg_at_start', []))}")
        print(f"# aura: {meta.get('aura_bin')} {meta.get('aura_version') or ''}; nchan: {meta.get('nginx')} + "
              f"libnginx-mod-nchan, {meta.get('nginx_workers')} workers; repo {meta.get('repo_commit') or '?'}")
    print()
    print("| cell | Nchan median (min–max) | Aura median (min–max) | Aura/Nchan | runs N/A |")
    print("|---|---|---|---|---|")
    rows, notes, coarse = [], [], False
    for cell, sides in cells.items():
        kind = cell.split()[0]
        for metric, unit, f, *flag in METRICS.get(kind, []):
            st, mark = {}, {}
            for side in SIDES:
                runs = [r for _, r in sides.get(side, []) if r is not None]
                mark[side] = "†" if flag and any(flag[0](r) for r in runs) else ""
                if mark[side]:
                    coarse = True
                vals = []
                for _, r in sides.get(side, []):
                    try:
                        vals.append(f(r) if r is not None else None)
                    except (TypeError, ZeroDivisionError):
                        vals.append(None)
                st[side] = stats(vals)
            n, au = st["nchan"], st["aura"]
            ratio = au["median"] / n["median"] if n and au and n["median"] else None
            name = f"{cell}: {metric} ({unit})"
            print(f"| {name} | {cell_text(n, mark['nchan'])} | {cell_text(au, mark['aura'])} | {fmt(ratio)} | "
                  f"{n['runs'] if n else 0}/{au['runs'] if au else 0} |")
            row = {"cell": cell, "metric": metric, "unit": unit, "nchan": n, "aura": au,
                   "ratio_aura_over_nchan": ratio}
            if flag:
                row["coarse_cpu"] = {side: bool(mark[side]) for side in SIDES}
            rows.append(row)
        for side in SIDES:
            for line in checks(kind, cell, side, sides.get(side, []), meta):
                notes.append(f"- {side} {cell}: {line}")

    print()
    if any(c.startswith("latency") for c in cells):
        if "{ts_us}" in str(meta.get("aura_body", "{ts_us}")):
            print("Latency: both sides from the publisher's stamp taken just before its POST (Nchan: the body's")
            print("`ts_us`; Aura: the `ts_us=` the publisher wrote into the job's topic), so from the same clock point.")
        else:
            print("Latency: Nchan from the publisher's stamp before its POST; Aura from the server's append stamp `at`")
            print("(this AURA_BODY carries no `{ts_us}`), which leaves out request handling before the append.")
    print("Ratio = Aura median / Nchan median: above 1 means Aura is larger (worse for latency, CPU, memory, time).")
    if coarse:
        print(f"† some run used under {COARSE_CPU_S:g} s of server CPU, which /proc counts in 10 ms ticks: coarse figure.")
    print()
    if notes:
        print("Checks that failed (read before trusting the row):")
        print("\n".join(notes))
    else:
        print("Checks: every run connected all subscribers, published every message (2xx), and lost,")
        print("repeated or reordered no event.")
    if a.json_out:
        with open(a.json_out, "w") as fh:
            for r in rows:
                fh.write(json.dumps(r) + "\n")
        print(f"\ntable as JSON lines: {a.json_out}", file=sys.stderr)


if __name__ == "__main__":
    main()
