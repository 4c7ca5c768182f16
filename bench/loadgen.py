#!/usr/bin/env python3
"""loadgen: thousands of raw PostgreSQL client connections from one asyncio process.

pgbench measures throughput; this measures what a pooler pays to *hold* clients, and whether it
keeps serving them all. It speaks just enough of protocol 3.0: StartupMessage (user, database),
trust authentication, wait for ReadyForQuery; then, when told, each client sends a simple-query
`SELECT 1` on its own fixed schedule (open loop: a client whose previous query has not answered
skips its tick and counts it as late, so a slow pooler cannot hide behind a shrinking offered load).

It is driven by bench/run through stdin/stdout, one JSON object per line, so several processes can
split the clients across cores while the harness reads the pooler's RSS between phases:

    start  -> {"phase": "connected", "ok": N, "errors": N, "seconds": S, "error_sample": [...]}
    stdin  <- {"cmd": "run", "duration": 15, "interval": 1.0}
    stdout -> {"phase": "ran", "completed": N, "errors": N, "late": N, "lat_us": [...], ...}
    stdin  <- {"cmd": "close"}
    stdout -> {"phase": "closed", "lost_while_idle": N}

Standalone: loadgen.py --port 6432 --clients 1000 --idle 5 --duration 10 prints a summary.
"""

import argparse
import asyncio
import json
import random
import socket
import ssl
import struct
import sys
import time

PROTOCOL_3 = 196608
READY_FOR_QUERY = ord("Z")
ERROR_RESPONSE = ord("E")
AUTHENTICATION = ord("R")
QUERY = b"Q" + struct.pack("!I", 4 + len(b"SELECT 1\0")) + b"SELECT 1\0"
TERMINATE = b"X\x00\x00\x00\x04"
SSL_REQUEST = struct.pack("!II", 8, 80877103)


def tls_context():
    """Encryption without verification (the bench's certificate is self-signed), as libpq's
    sslmode=require."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


async def open_tls(loop, factory, host, port, ctx):
    """SSLRequest on a plain connection, then TLS over it once the server says 'S'."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setblocking(False)
    try:
        await loop.sock_connect(sock, (host, port))
        await loop.sock_sendall(sock, SSL_REQUEST)
        answer = await loop.sock_recv(sock, 1)
        if answer != b"S":
            raise ConnectionError(f"SSLRequest answered {answer!r}, not 'S'")
        return await loop.create_connection(factory, sock=sock, ssl=ctx, server_hostname="")
    except BaseException:
        sock.close()
        raise


def startup_message(user, database):
    body = struct.pack("!I", PROTOCOL_3)
    for k, v in (("user", user), ("database", database), ("application_name", "loadgen")):
        body += k.encode() + b"\0" + v.encode() + b"\0"
    body += b"\0"
    return struct.pack("!I", len(body) + 4) + body


def error_text(body):
    """The M (message) field of an ErrorResponse, with its SQLSTATE."""
    fields = {}
    for part in body.split(b"\0"):
        if part:
            fields[chr(part[0])] = part[1:].decode(errors="replace")
    return f"{fields.get('S', 'ERROR')} {fields.get('C', '?')}: {fields.get('M', '?')}"


class Stats:
    def __init__(self):
        self.completed = 0
        self.errors = 0
        self.late = 0
        self.lat_us = []
        self.error_sample = []
        self.recording = False
        self.lost = 0  # connections closed by the far end after login

    def error(self, text):
        self.errors += 1
        if len(self.error_sample) < 5:
            self.error_sample.append(text)


class Client(asyncio.Protocol):
    """One connection: 'login' -> 'idle' <-> 'busy'; 'dead' once closed or failed."""

    def __init__(self, stats, startup, loop):
        self.stats, self.startup = stats, startup
        self.buf = bytearray()
        self.state = "login"
        self.ready = loop.create_future()
        self.transport = None
        self.sent_at = 0.0
        self.closing = False

    def connection_made(self, transport):
        self.transport = transport
        transport.write(self.startup)

    def data_received(self, data):
        buf = self.buf
        buf += data
        while len(buf) >= 5:
            length = int.from_bytes(buf[1:5], "big")
            if len(buf) < 1 + length:
                break
            tag = buf[0]
            body = bytes(buf[5:1 + length]) if tag in (AUTHENTICATION, ERROR_RESPONSE) else b""
            del buf[:1 + length]
            self.on_message(tag, body)

    def on_message(self, tag, body):
        if tag == READY_FOR_QUERY:
            if self.state == "login":
                self.state = "idle"
                if not self.ready.done():
                    self.ready.set_result(None)
            elif self.state == "busy":
                self.state = "idle"
                if self.stats.recording:
                    self.stats.completed += 1
                    self.stats.lat_us.append(int((time.perf_counter() - self.sent_at) * 1e6))
        elif tag == AUTHENTICATION:
            code = int.from_bytes(body[:4], "big")
            if code != 0:
                self.fail(f"server asked for authentication method {code}; loadgen speaks trust only")
        elif tag == ERROR_RESPONSE:
            text = error_text(body)
            if self.state == "login":
                self.fail(text)
            else:
                self.stats.error(text)  # a query error; ReadyForQuery follows

    def fail(self, text):
        if not self.ready.done():
            self.ready.set_exception(ConnectionError(text))
        self.state = "dead"
        if self.transport:
            self.transport.close()

    def connection_lost(self, exc):
        was = self.state
        self.state = "dead"
        if not self.ready.done():
            self.ready.set_exception(ConnectionError(f"closed during login: {exc or 'EOF'}"))
        elif was in ("idle", "busy") and not self.closing:
            self.stats.error(f"connection lost while {was}: {exc or 'EOF'}")
            self.stats.lost += 1

    def query(self):
        self.state = "busy"
        self.sent_at = time.perf_counter()
        self.transport.write(QUERY)

    def close(self):
        self.closing = True
        if self.transport and self.state != "dead":
            self.transport.write(TERMINATE)
            self.transport.close()


async def connect_all(args, stats):
    loop = asyncio.get_running_loop()
    startup = startup_message(args.user, args.db)
    sem = asyncio.Semaphore(args.connect_concurrency)
    clients, errors, sample = [], 0, []
    ctx = tls_context() if args.tls else None

    def factory():
        return Client(stats, startup, loop)

    def connect():
        if ctx:
            return open_tls(loop, factory, args.host, args.port, ctx)
        return loop.create_connection(factory, args.host, args.port)

    async def one():
        nonlocal errors
        async with sem:
            try:
                _, c = await asyncio.wait_for(connect(), args.connect_timeout)
                await asyncio.wait_for(c.ready, args.connect_timeout)
                clients.append(c)
            except (OSError, ConnectionError, asyncio.TimeoutError) as e:
                errors += 1
                if len(sample) < 5:
                    sample.append(f"{type(e).__name__}: {e}")

    t0 = time.monotonic()
    await asyncio.gather(*(one() for _ in range(args.clients)))
    return clients, {"phase": "connected", "ok": len(clients), "errors": errors,
                     "seconds": round(time.monotonic() - t0, 2), "error_sample": sample}


async def paced_run(clients, stats, duration, interval):
    """Each client queries once per `interval`, at its own random phase, for `duration` seconds."""
    loop = asyncio.get_running_loop()
    stats.recording = True
    start = loop.time() + 0.05
    end = start + duration
    lost_before = stats.lost

    def tick(c, at):
        if at >= end:
            return
        if c.state == "idle":
            c.query()
        elif c.state == "busy":
            stats.late += 1
        else:
            return  # dead: its loss was counted once
        loop.call_at(at + interval, tick, c, at + interval)

    for c in clients:
        first = start + random.random() * interval
        loop.call_at(first, tick, c, first)
    await asyncio.sleep(end - loop.time())
    grace_end = loop.time() + 5
    while any(c.state == "busy" for c in clients) and loop.time() < grace_end:
        await asyncio.sleep(0.05)
    stuck = sum(1 for c in clients if c.state == "busy")
    stats.recording = False
    if stuck:
        stats.error(f"{stuck} queries unanswered 5 s after the run")
        stats.errors += stuck - 1
    return {"phase": "ran", "completed": stats.completed, "errors": stats.errors,
            "late": stats.late, "unanswered": stuck, "duration": duration,
            "lost_during_run": stats.lost - lost_before,
            "error_sample": stats.error_sample, "lat_us": stats.lat_us}


def emit(obj):
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


async def read_command(loop):
    line = await loop.run_in_executor(None, sys.stdin.readline)
    return json.loads(line) if line.strip() else {"cmd": "close"}


async def driven(args):
    """Phases under bench/run's control (see the module doc)."""
    loop = asyncio.get_running_loop()
    stats = Stats()
    clients, report = await connect_all(args, stats)
    emit(report)
    while True:
        cmd = await read_command(loop)
        if cmd["cmd"] == "run":
            emit(await paced_run(clients, stats, cmd["duration"], cmd["interval"]))
        else:
            lost = stats.lost
            for c in clients:
                c.close()
            await asyncio.sleep(0.2)
            emit({"phase": "closed", "lost_while_idle": lost})
            return


async def standalone(args):
    stats = Stats()
    clients, report = await connect_all(args, stats)
    print(f"connected {report['ok']} in {report['seconds']} s, {report['errors']} errors "
          f"{report['error_sample']}")
    await asyncio.sleep(args.idle)
    r = await paced_run(clients, stats, args.duration, args.interval)
    lat = sorted(r.pop("lat_us"))
    if lat:
        pick = lambda q: lat[min(len(lat) - 1, int(q * len(lat)))]  # noqa: E731
        print(f"{r['completed'] / args.duration:.0f} queries/s  p50 {pick(.5)} µs  "
              f"p99 {pick(.99)} µs  max {lat[-1]} µs")
    print({k: v for k, v in r.items() if k != "phase"})
    for c in clients:
        c.close()
    await asyncio.sleep(0.2)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--user", default="postgres")
    ap.add_argument("--db", default="bench")
    ap.add_argument("--clients", type=int, default=1000)
    ap.add_argument("--connect-concurrency", type=int, default=200)
    ap.add_argument("--connect-timeout", type=float, default=60)
    ap.add_argument("--tls", action="store_true", help="SSLRequest, then TLS (sslmode=require)")
    ap.add_argument("--driven", action="store_true", help="phases driven by JSON lines on stdin")
    ap.add_argument("--idle", type=float, default=2, help="standalone: idle seconds before the run")
    ap.add_argument("--duration", type=float, default=10)
    ap.add_argument("--interval", type=float, default=1.0)
    args = ap.parse_args()
    try:
        import uvloop  # optional, faster
        uvloop.install()
    except ImportError:
        pass
    asyncio.run(driven(args) if args.driven else standalone(args))


if __name__ == "__main__":
    main()
