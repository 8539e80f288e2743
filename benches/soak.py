#!/usr/bin/env python3
"""Soak benchmark (not a test, not in CI): a long run of steady, slightly hostile load.

    AURA_BIN=target/release/aura python3 benches/soak.py            # 30 min, the full load
    AURA_BIN=target/release/aura python3 benches/soak.py --minutes 5

While it runs, at all times: JOBS_PER_MIN small jobs a minute are created and rendered (real
ffmpeg), SUBSCRIBERS clients follow /api/events and drop and resume with Last-Event-ID at
random, SLOW_HEADS connections send an unfinished request head and nothing more (reopened when
the server closes them), and STALLED clients open a stream and never read. Every 10 s it
samples the server's RSS and open descriptors from /proc.

At the end it compares every subscriber's ids with the events table (stdlib sqlite3, read-only):
each one must have seen every id from its first resume point to the last it read, exactly
once, in order. It prints the first and last 5 minutes' RSS and descriptors (or the first and
last fifth of a shorter run) and exits 1 if any subscriber missed or repeated an event.

Only 127.0.0.1; everything is bounded by --minutes; the server it starts is stopped by its pid.
"""

import argparse
import asyncio
import json
import os
import random
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time

JOB = json.dumps({
    "brief": {"topic": "soak"},
    "planSpec": {"targetDuration": "00:00:03", "pacing": "Fast"},
    "renderSpec": {"res": "480p", "fps": 10, "videoBitrateK": 300, "audioBitrateK": 64,
                   "qualityLevel": "Draft"},
}).encode()


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


async def request(port, method, path, body=b""):
    """One HTTP/1.1 request on its own connection; returns the status code."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    head = (f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n")
    writer.write(head.encode() + body)
    await writer.drain()
    line = await reader.readline()
    writer.close()
    return int(line.split()[1]) if line else 0


class Subscriber:
    """Follows /api/events, drops at random, resumes from its last id; remembers every id."""

    def __init__(self, n, port, stop):
        self.n, self.port, self.stop = n, port, stop
        self.first_resume = None
        self.ids = []
        self.reconnects = 0

    async def run(self):
        while not self.stop.is_set():
            try:
                await asyncio.wait_for(self.one_connection(), timeout=random.uniform(5, 90))
            except (asyncio.TimeoutError, ConnectionError, OSError, asyncio.IncompleteReadError):
                pass
            self.reconnects += 1
            await asyncio.sleep(random.uniform(0, 3))

    async def one_connection(self):
        last = self.ids[-1] if self.ids else self.first_resume
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        try:
            if last is None:
                # Start at the table's newest id, as a client opening the page would.
                last = newest_id()
                self.first_resume = last
            writer.write((f"GET /api/events HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                          f"Last-Event-ID: {last}\r\n\r\n").encode())
            await writer.drain()
            head = await reader.readuntil(b"\r\n\r\n")
            if b" 200 " not in head.split(b"\r\n", 1)[0]:
                await asyncio.sleep(1)
                return
            chunked = b"chunked" in head.lower()
            buf = b""
            while not self.stop.is_set():
                if chunked:
                    size = int((await reader.readline()).split(b";")[0], 16)
                    if size == 0:
                        return
                    data = await reader.readexactly(size + 2)
                    buf += data[:-2]
                else:
                    data = await reader.read(65536)
                    if not data:
                        return
                    buf += data
                while b"\n\n" in buf:
                    frame, buf = buf.split(b"\n\n", 1)
                    for line in frame.split(b"\n"):
                        if line.startswith(b"id:"):
                            self.ids.append(int(line[3:].strip()))
        finally:
            writer.close()


DB = None


def newest_id():
    with sqlite3.connect(f"file:{DB}?mode=ro", uri=True, timeout=10) as conn:
        return conn.execute("SELECT coalesce(max(id), 0) FROM events").fetchone()[0]


async def slow_head(port, stop):
    """An unfinished request head, kept open; reopened whenever the server closes it."""
    while not stop.is_set():
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"GET /api/events HTTP/1.1\r\nHost: x\r\n")
            await writer.drain()
            while not stop.is_set():
                if not await reader.read(1024):
                    break
            writer.close()
        except (ConnectionError, OSError):
            await asyncio.sleep(1)


async def stalled(port, stop):
    """A stream whose socket is never read; reopened whenever the server closes it."""
    while not stop.is_set():
        try:
            s = socket.socket()
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            s.setblocking(False)
            await asyncio.get_running_loop().sock_connect(s, ("127.0.0.1", port))
            s.send(b"GET /api/events?lastEventId=0 HTTP/1.1\r\nHost: x\r\n\r\n")
            # Never read; notice only that the server gave up on it.
            while not stop.is_set():
                await asyncio.sleep(5)
                try:
                    if s.recv(1, socket.MSG_PEEK) == b"":
                        break
                except BlockingIOError:
                    pass
            s.close()
        except (ConnectionError, OSError):
            await asyncio.sleep(1)


async def creator(port, per_minute, stop, counts):
    while not stop.is_set():
        try:
            status = await request(port, "POST", "/api/jobs", JOB)
            counts[status] = counts.get(status, 0) + 1
        except (ConnectionError, OSError):
            counts["error"] = counts.get("error", 0) + 1
        try:
            await asyncio.wait_for(stop.wait(), timeout=60 / per_minute)
        except asyncio.TimeoutError:
            pass


def sample(pid):
    with open(f"/proc/{pid}/status") as f:
        rss = next(int(line.split()[1]) for line in f if line.startswith("VmRSS"))
    return rss, len(os.listdir(f"/proc/{pid}/fd"))


async def main():
    global DB
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=float, default=30)
    p.add_argument("--jobs-per-minute", type=int, default=20)
    p.add_argument("--subscribers", type=int, default=500)
    p.add_argument("--slow-heads", type=int, default=100)
    p.add_argument("--stalled", type=int, default=20)
    p.add_argument("--workers", type=int, default=2)
    args = p.parse_args()
    aura = os.environ.get("AURA_BIN", "target/release/aura")
    tmp = tempfile.mkdtemp(prefix="aura-soak-")
    DB = os.path.join(tmp, "data", "aura.db")
    port = free_port()
    env = dict(os.environ, RUST_LOG="warn", AURA_MIN_FREE_MB=os.environ.get("AURA_MIN_FREE_MB", "256"))
    log = open(os.path.join(tmp, "server.log"), "w")
    server = subprocess.Popen([aura, "serve", "--addr", f"127.0.0.1:{port}", "--data-dir",
                               os.path.join(tmp, "data"), "--workers", str(args.workers)],
                              env=env, stdout=log, stderr=log)
    try:
        for _ in range(200):
            try:
                if await request(port, "GET", "/api/health") in (200, 503):
                    break
            except OSError:
                await asyncio.sleep(0.05)
        stop = asyncio.Event()
        counts = {}
        subs = [Subscriber(n, port, stop) for n in range(args.subscribers)]
        tasks = [asyncio.create_task(s.run()) for s in subs]
        tasks += [asyncio.create_task(slow_head(port, stop)) for _ in range(args.slow_heads)]
        tasks += [asyncio.create_task(stalled(port, stop)) for _ in range(args.stalled)]
        tasks.append(asyncio.create_task(creator(port, args.jobs_per_minute, stop, counts)))
        samples = []
        start = time.monotonic()
        end = start + args.minutes * 60
        while time.monotonic() < end:
            samples.append((time.monotonic() - start, *sample(server.pid)))
            print(f"{samples[-1][0]:7.0f} s  rss {samples[-1][1]:>8} KiB  fds {samples[-1][2]:>6}  "
                  f"creates {counts}", flush=True)
            await asyncio.sleep(min(10, max(0.1, end - time.monotonic())))
        # Let every subscriber read what was appended until now, then stop.
        await asyncio.sleep(5)
        stop.set()
        await asyncio.wait(tasks, timeout=15)
        for t in tasks:
            t.cancel()
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()

    with sqlite3.connect(f"file:{DB}?mode=ro", uri=True) as conn:
        table = [r[0] for r in conn.execute("SELECT id FROM events ORDER BY id")]
        jobs = dict(conn.execute("SELECT status, count(*) FROM jobs GROUP BY status").fetchall())
    bad = 0
    for s in subs:
        if s.first_resume is None or not s.ids:
            continue
        want = [i for i in table if s.first_resume < i <= s.ids[-1]]
        if s.ids != want:
            bad += 1
            missing = len(set(want) - set(s.ids))
            print(f"subscriber {s.n}: {len(s.ids)} ids, {missing} missing, "
                  f"{len(s.ids) - len(set(s.ids))} repeated")
    window = min(300, args.minutes * 60 / 5)
    # The first 10 s are the connections being opened: not what "flat" is about.
    first = [x for x in samples if 10 <= x[0] <= 10 + window]
    last = [x for x in samples if x[0] >= samples[-1][0] - window]
    mean = lambda xs, k: sum(x[k] for x in xs) / max(1, len(xs))
    print(json.dumps({
        "minutes": args.minutes, "events": len(table), "jobs": jobs, "creates": counts,
        "subscribers": len(subs), "reconnects": sum(s.reconnects for s in subs),
        "subscribers_not_exactly_once": bad,
        "window_s": window,
        "rss_kib_first": round(mean(first, 1)), "rss_kib_last": round(mean(last, 1)),
        "fds_first": round(mean(first, 2)), "fds_last": round(mean(last, 2)),
    }, indent=2))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
