#!/usr/bin/env python3
"""A flood of made-up bearer tokens beside one legitimate client (not a test, not in CI).

    AURA_BIN=target/release/aura python3 benches/credential-flood.py                 # 60 s, 200/s
    AURA_BIN=target/release/aura python3 benches/credential-flood.py --postgres URL  # tokens in PostgreSQL

It starts `aura serve` on 127.0.0.1 with two tokens (`legit`, a user, and `root`, an admin),
then for --secs seconds: the legitimate client asks GET /api/jobs with its token once a second,
and the flooder sends --rate requests a second, each with a new random bearer token, from
--flooder-ip (by default 127.0.0.1, the legitimate client's own address: the hardest case for a
per-address budget). Every request is a new connection. With --postgres, URL must name an empty
scratch database (the server migrates it and stores the tokens there).

It prints the legitimate client's answers (all must be 200), the flooder's (401 until its
address's budget of unknown credentials is spent, then 429), the rate the flooder reached, and
the server's `aura_rejections_total{reason="credential-lookups"}`. Exits 1 if the legitimate
client got anything but 200. Only 127.0.0.0/8; bounded by --secs; the server it starts is
stopped by its pid.
"""

import argparse
import collections
import http.client
import os
import secrets
import socket
import subprocess
import sys
import tempfile
import threading
import time


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(port, path, token, source="127.0.0.1", timeout=10.0):
    """One request on a new connection: (status, seconds)."""
    start = time.monotonic()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout, source_address=(source, 0))
    try:
        conn.request("GET", path, headers={"Authorization": f"Bearer {token}"})
        res = conn.getresponse()
        res.read()
        return res.status, time.monotonic() - start
    except OSError:
        return "error", time.monotonic() - start
    finally:
        conn.close()


def token(aura, env, data_dir, name, admin):
    args = [aura, "token", "create", name, "--data-dir", data_dir] + (["--admin"] if admin else [])
    out = subprocess.run(args, env=env, check=True, capture_output=True, text=True, timeout=60)
    return out.stdout.strip()


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--secs", type=float, default=60.0)
    p.add_argument("--rate", type=float, default=200.0, help="made-up tokens a second")
    p.add_argument("--flooder-ip", default="127.0.0.1")
    p.add_argument("--threads", type=int, default=8, help="flooder threads sharing --rate")
    p.add_argument("--postgres", help="an empty scratch database: postgres://…")
    args = p.parse_args()
    aura = os.environ.get("AURA_BIN", "target/release/aura")

    with tempfile.TemporaryDirectory() as tmp:
        data_dir = os.path.join(tmp, "data")
        env = {k: v for k, v in os.environ.items() if not k.startswith("AURA_")}
        env["RUST_LOG"] = "warn"
        if args.postgres:
            env["AURA_DATABASE_URL"] = args.postgres
        legit = token(aura, env, data_dir, "legit", False)
        root = token(aura, env, data_dir, "root", True)
        port = free_port()
        server = subprocess.Popen(
            [aura, "serve", "--addr", f"127.0.0.1:{port}", "--data-dir", data_dir],
            env={**env, "AURA_WORKERS": "0"},
            stdout=subprocess.DEVNULL,
            stderr=open(os.path.join(tmp, "server.log"), "w"),
        )
        try:
            deadline = time.monotonic() + 30
            while get(port, "/api/health", legit)[0] != 200:
                if time.monotonic() > deadline or server.poll() is not None:
                    sys.exit("the server did not come up; its log: " + os.path.join(tmp, "server.log"))
                time.sleep(0.1)
            # Known to the server before the flood, as a signed-in client is. With PostgreSQL a
            # token a node has not seen yet, from an address past its budget, waits for it to
            # refill (API.md), so the admin token that reads /metrics at the end is used now.
            assert get(port, "/api/jobs", legit)[0] == 200
            assert get(port, "/metrics", root)[0] == 200

            stop = threading.Event()
            flood = collections.Counter()
            legit_answers = []
            lock = threading.Lock()

            def flooder():
                interval = args.threads / args.rate
                due = time.monotonic()
                while not stop.is_set():
                    status, _ = get(port, "/api/jobs", "aura_" + secrets.token_hex(32), args.flooder_ip)
                    with lock:
                        flood[status] += 1
                    due += interval
                    pause = due - time.monotonic()
                    if pause > 0:
                        stop.wait(pause)

            def poller():
                due = time.monotonic()
                while not stop.is_set():
                    legit_answers.append(get(port, "/api/jobs", legit))
                    due += 1.0
                    stop.wait(max(0.0, due - time.monotonic()))

            threads = [threading.Thread(target=flooder) for _ in range(args.threads)]
            threads.append(threading.Thread(target=poller))
            start = time.monotonic()
            for t in threads:
                t.start()
            stop.wait(args.secs)
            stop.set()
            for t in threads:
                t.join(timeout=30)
            took = time.monotonic() - start

            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            conn.request("GET", "/metrics", headers={"Authorization": f"Bearer {root}"})
            res = conn.getresponse()
            metrics = res.read().decode()
            if res.status != 200:
                print(f"/metrics answered {res.status}", file=sys.stderr)
            rejected = next(
                (l.split()[-1] for l in metrics.splitlines()
                 if l.startswith('aura_rejections_total{reason="credential-lookups"}')),
                "0",
            )
        finally:
            server.terminate()
            server.wait(timeout=30)

    statuses = collections.Counter(s for s, _ in legit_answers)
    slowest = max((t for _, t in legit_answers), default=0.0)
    sent = sum(flood.values())
    print(f"backend: {'postgres' if args.postgres else 'sqlite (tokens file)'}; "
          f"flooder at {args.flooder_ip}, legitimate client at 127.0.0.1; {took:.1f} s")
    print(f"legitimate client: {len(legit_answers)} polls, answers {dict(statuses)}, slowest {slowest * 1000:.0f} ms")
    print(f"flooder: {sent} made-up tokens ({sent / took:.0f}/s), answers {dict(flood)}")
    print(f"server: aura_rejections_total{{reason=\"credential-lookups\"}} {rejected}")
    sys.exit(0 if statuses and set(statuses) == {200} else 1)


if __name__ == "__main__":
    main()
