"""Reliability under hostile and heavy traffic: slow clients, and a soak at 1.5x capacity.

    .venv/bin/python benchmarks/reliability.py slow-clients \\
        --out benchmarks/results/slow_clients.json
    .venv/bin/python benchmarks/reliability.py soak --minutes 10 \\
        --out benchmarks/results/soak.json
    .venv/bin/python benchmarks/reliability.py uploads --out benchmarks/results/uploads.json

Both start ``visionloop serve`` (the built-in catdog model, default settings unless a flag says
otherwise) as a subprocess on a free loopback port, and measure it from outside: its RSS and
open file descriptors from ``/proc/PID``, every answer's status and latency from the client.
The load is the sample photos of ``tests/data`` as JPEG q90 scaled to ``--megapixels`` (as the
other load tests), Poisson arrivals, each request carrying ``X-Timeout-Ms: --deadline-ms``.

slow-clients: normal traffic at ``--rate`` alone, then beside ``--slow`` connections of which
half trickle their headers (slowloris: a header byte every ``--trickle-s``) and half their body
(slow POST: a declared 1.5 MB upload, a byte every ``--trickle-s``), each reopened when the
server closes it; alternated ``--rounds`` times. By default the slow connections open together,
so they time out and come back together (the worst case); ``--stagger-s`` spreads them out.
They run in a process of their own, as an attacker would (not in the generator's event loop,
where their bursts would delay the reading of normal answers). Reports normal traffic's p50/p99
in each phase, their ratio per round and over all rounds pooled, and how the slow connections
ended (the server's 408s).

soak: measures capacity first (closed loop, ``--clients`` clients, ``--capacity-s``), then
offers ``--load`` x that for ``--minutes``, with ``--bad`` of the requests bad inputs
(not an image, a truncated JPEG, a decompression-bomb header, malformed v2 JSON, an unknown
model). Checks: no 500 (503 with Retry-After and 504 are the server's designed refusals at
overload and are counted apart), every 200 within its deadline, every bad input a 4xx, RSS
growth after the warm-up, file descriptors flat. One sample of RSS and fds every 5 s.

uploads: a 1 GB chunked upload (multipart, raw, v2) each: how much the server read before it
answered 413 and closed, and its RSS before and at peak (VmHWM, reset before each upload).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import platform
import random
import socket
import struct
import subprocess
import sys
import time
import zlib
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
import httpx

from visionloop.bench.load import load_payloads

ROOT = Path(__file__).resolve().parents[1]
VISIONLOOP = str(Path(sys.executable).with_name("visionloop"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    """``visionloop serve`` in a subprocess, measured through /proc."""

    def __init__(self, env: dict[str, str], cpus: str | None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        command = [VISIONLOOP, "serve", "--port", str(self.port), "--log-level", "warning"]
        if cpus:
            command = ["taskset", "-c", cpus, *command]
        self.process = subprocess.Popen(
            command, env={**os.environ, **env}, stdout=subprocess.DEVNULL, stderr=sys.stderr
        )

    def wait_ready(self, timeout_s: float = 300) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError("the server exited before it was ready")
            try:
                if httpx.get(f"{self.url}/v2/health/ready", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise RuntimeError("the server did not become ready")

    def sample(self) -> dict[str, float]:
        pid = self.process.pid
        with open(f"/proc/{pid}/status") as f:
            rss_kb = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
        return {"rss_mb": round(rss_kb / 1024, 1), "fds": len(os.listdir(f"/proc/{pid}/fd"))}

    def metrics(self) -> dict[str, float]:
        """The server's own view: request latency buckets and refusals, from /metrics."""
        wanted = ("visionloop_request_latency_seconds_bucket", "visionloop_refusals_total",
                  "visionloop_requests_total",
                  "visionloop_answers_after_deadline_total")  # fmt: skip
        text = httpx.get(f"{self.url}/metrics", timeout=30).text
        return {
            line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith(wanted)
        }

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()


def percentile(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(p * len(ordered)))], 1)


class Traffic:
    """Open-loop Poisson traffic; records (kind, status, latency ms) per request."""

    def __init__(self, server: Server, deadline_ms: float, max_in_flight: int = 512) -> None:
        self.server = server
        self.deadline_ms = deadline_ms
        self.max_in_flight = max_in_flight
        # (kind, status, ms from the scheduled send, ms from the actual send)
        self.records: list[tuple[str, str, float, float]] = []

    async def run(
        self,
        requests: list[tuple[str, str, bytes, dict[str, str]]],
        rate: float,
        seconds: float,
        seed: int,
        on_tick: Any = None,
    ) -> None:
        """aiohttp, not httpx: over minutes at a few hundred requests in flight, httpx's pool
        took a whole core here and fell behind its own schedule, measuring itself."""
        rng = random.Random(seed)
        connector = aiohttp.TCPConnector(limit=self.max_in_flight)
        timeout = aiohttp.ClientTimeout(total=30)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
            pending: set[asyncio.Task[None]] = set()
            start = time.perf_counter()
            scheduled, next_tick = start, start
            while scheduled - start < seconds:
                now = time.perf_counter()
                if on_tick is not None and now >= next_tick:
                    on_tick(now - start)
                    next_tick += 5.0
                if scheduled > now:
                    await asyncio.sleep(scheduled - now)
                kind, path, body, headers = requests[rng.randrange(len(requests))]
                if len(pending) >= self.max_in_flight:  # the client's own limit: counted, not sent
                    self.records.append((kind, "client_limit", 0.0, 0.0))
                else:
                    task = asyncio.create_task(
                        self._send(session, kind, path, body, headers, scheduled)
                    )
                    pending.add(task)
                    task.add_done_callback(pending.discard)
                scheduled += rng.expovariate(rate)
            await asyncio.gather(*pending)

    async def _send(
        self,
        session: aiohttp.ClientSession,
        kind: str,
        path: str,
        body: bytes,
        headers: dict[str, str],
        scheduled: float,
    ) -> None:
        headers = {**headers, "X-Timeout-Ms": f"{self.deadline_ms:g}"}
        sent = time.perf_counter()
        try:
            async with session.post(self.server.url + path, data=body, headers=headers) as r:
                await r.read()
                status = str(r.status)
        except (aiohttp.ClientError, TimeoutError) as exc:
            status = type(exc).__name__
        now = time.perf_counter()
        self.records.append((kind, status, (now - scheduled) * 1e3, (now - sent) * 1e3))


def good_requests(megapixels: float) -> list[tuple[str, str, bytes, dict[str, str]]]:
    photos = load_payloads(ROOT / "tests" / "data", megapixels=megapixels)
    return [("good", "/v1/models/catdog/predict", p, {"content-type": "image/jpeg"})
            for p in photos]  # fmt: skip


def bad_requests(photo: bytes) -> list[tuple[str, str, bytes, dict[str, str]]]:
    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + data))
        return struct.pack(">I", len(data)) + kind + data + crc

    header = struct.pack(">IIBBBBB", 30000, 30000, 8, 2, 0, 0, 0)  # 900 M pixels declared
    bomb = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b"")
    v2 = "/v2/models/catdog/infer"
    b64 = base64.b64encode(photo[:200]).decode()
    two_declared_one_sent = {"inputs": [{"name": "x", "shape": [2], "datatype": "BYTES",
                                         "data": [b64]}]}  # fmt: skip
    return [
        ("bad", "/v1/models/catdog/predict", b"this is not an image\n" * 10, {}),
        ("bad", "/v1/models/catdog/predict", photo[: len(photo) // 3], {}),
        ("bad", "/v1/models/catdog/predict", bomb, {}),
        ("bad", "/v1/models/nosuchmodel/predict", photo[:1000], {}),
        ("bad", v2, b'{"inputs": [{"name": "x", "shape": [1], "datatype": "BYTES"', {}),
        ("bad", v2, json.dumps(two_declared_one_sent).encode(), {}),
        ("bad", v2, b"[" * 50_000, {}),
    ]


def summarise(records: list[tuple[str, str, float, float]], deadline_ms: float) -> dict[str, Any]:
    """Latency from the scheduled send (what a phone waits, generator lag included) and from
    the actual send (what the server took: the deadline it was given counts from there)."""
    statuses = Counter(f"{kind}:{status}" for kind, status, _, _ in records)
    ok = [(ms, server_ms) for kind, status, ms, server_ms in records
          if kind == "good" and status == "200"]  # fmt: skip
    lag = [ms - server_ms for _, _, ms, server_ms in records]
    return {
        "requests": len(records),
        "statuses": dict(sorted(statuses.items())),
        "ok": len(ok),
        "ok_p50_ms": percentile([ms for ms, _ in ok], 0.50),
        "ok_p99_ms": percentile([ms for ms, _ in ok], 0.99),
        "ok_max_ms": round(max(ms for ms, _ in ok), 1) if ok else None,
        "ok_p99_from_send_ms": percentile([s for _, s in ok], 0.99),
        "ok_past_deadline_from_send": sum(1 for _, s in ok if s > deadline_ms),
        "generator_lag_p99_ms": percentile(lag, 0.99),
        "refused": {
            code: sum(1 for _, status, _, _ in records if status == code)
            for code in ("408", "503", "504")
        },
        "status_500": sum(1 for _, status, _, _ in records if status == "500"),
        "bad_answered_2xx": sum(
            1 for kind, status, _, _ in records if kind == "bad" and status.startswith("2")
        ),
        "transport_errors": sum(
            1 for _, status, _, _ in records if not status.isdigit() and status != "client_limit"
        ),
        "not_sent_client_limit": sum(1 for _, status, _, _ in records if status == "client_limit"),
    }


async def capacity(server: Server, requests: list[Any], clients: int, seconds: float) -> float:
    done = 0
    stop = time.perf_counter() + seconds

    async def one(client: httpx.AsyncClient, i: int) -> None:
        nonlocal done
        while time.perf_counter() < stop:
            _, path, body, headers = requests[i % len(requests)]
            r = await client.post(server.url + path, content=body, headers=headers)
            done += r.status_code == 200
            i += 1

    async with httpx.AsyncClient(timeout=30) as client:
        await asyncio.gather(*(one(client, i) for i in range(clients)))
    return done / seconds


# --- slow clients -----------------------------------------------------------------------------


async def slow_connection(port: int, body: bool, trickle_s: float, stop: asyncio.Event,
                          ends: Counter[str], start_within_s: float) -> None:  # fmt: skip
    await asyncio.sleep(random.uniform(0, start_within_s))
    while not stop.is_set():
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            await asyncio.sleep(trickle_s)
            continue
        head = b"POST /v1/models/catdog/predict HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        if body:
            head += b"Content-Type: image/jpeg\r\nContent-Length: 1500000\r\n\r\n\xff\xd8\xff"
        else:
            head += b"X-Slow: "
        answer = b""
        try:
            writer.write(head)
            while not stop.is_set():
                await writer.drain()
                try:
                    answer = await asyncio.wait_for(reader.read(64), trickle_s)
                except TimeoutError:
                    writer.write(b"\0" if body else b"a")
                    continue
                break  # the server answered or closed
        except OSError:
            pass
        finally:
            writer.close()
        if not stop.is_set():
            status = answer.split(b" ")[1].decode() if answer.startswith(b"HTTP/") else "closed"
            ends[f"{'slow_post' if body else 'slowloris'}:{status}"] += 1


def _attack(port: int, n: int, trickle_s: float, stagger_s: float, stop: Any, out: Any) -> None:
    """The slow connections, in a process of their own (see :func:`slow_clients`)."""

    async def main() -> Counter[str]:
        ends: Counter[str] = Counter()
        halt = asyncio.Event()
        holders = [asyncio.create_task(slow_connection(port, i % 2 == 1, trickle_s, halt, ends,
                                                       stagger_s))
                   for i in range(n)]  # fmt: skip
        while not stop.is_set():
            await asyncio.sleep(0.1)
        halt.set()
        await asyncio.gather(*holders)
        return ends

    out.put(dict(asyncio.run(main())))


async def slow_clients(args: argparse.Namespace) -> dict[str, Any]:
    """The slow connections run in a child process (on the generator's CPU, as the generator
    is pinned): in the generator's own event loop, their reconnection bursts would delay the
    reading of normal answers and be measured as the server's latency."""
    import multiprocessing

    env = {"VISIONLOOP_HEADER_TIMEOUT_S": f"{args.header_timeout_s:g}"}
    server = Server(env, args.server_cpus)
    server.wait_ready()
    spawn = multiprocessing.get_context("spawn")
    try:
        requests = good_requests(args.megapixels)
        phases = []
        pooled: dict[bool, list[float]] = {False: [], True: []}
        for round_ in range(args.rounds):
            for with_slow in (False, True):
                stop, out, attacker = spawn.Event(), spawn.Queue(), None
                if with_slow:
                    attacker = spawn.Process(
                        target=_attack,
                        args=(server.port, args.slow, args.trickle_s, args.stagger_s, stop, out),
                    )
                    attacker.start()
                    # They are all connected and sending (the child needs a moment to start).
                    await asyncio.sleep(args.stagger_s + args.trickle_s * 2 + 2.0)
                before = server.sample()
                traffic = Traffic(server, args.deadline_ms)
                await traffic.run(requests, args.rate, args.seconds, seed=round_)
                after = server.sample()
                ends: dict[str, int] = {}
                if attacker is not None:
                    stop.set()
                    ends = out.get(timeout=120)
                    attacker.join(timeout=60)
                pooled[with_slow] += [ms for kind, status, ms, _ in traffic.records
                                      if kind == "good" and status == "200"]  # fmt: skip
                phases.append({
                    "round": round_, "slow_connections": args.slow if with_slow else 0,
                    **summarise(traffic.records, args.deadline_ms),
                    "slow_connection_ends": ends, "server_before": before,
                    "server_after": after,
                })  # fmt: skip
                print(json.dumps(phases[-1]), flush=True)
        alone = [p for p in phases if not p["slow_connections"]]
        beside = [p for p in phases if p["slow_connections"]]
        ratios = [b["ok_p99_ms"] / a["ok_p99_ms"] for a, b in zip(alone, beside, strict=True)]
        all_rounds = {
            phase: {"ok": len(pooled[slow]), "p50_ms": percentile(pooled[slow], 0.50),
                    "p99_ms": percentile(pooled[slow], 0.99)}
            for phase, slow in (("alone", False), ("beside_slow", True))
        }  # fmt: skip
        return {
            "phases": phases,
            "p99_ratio_per_round": [round(r, 3) for r in ratios],
            "all_rounds": all_rounds,
            "p99_ratio_all_rounds": round(
                all_rounds["beside_slow"]["p99_ms"] / all_rounds["alone"]["p99_ms"], 3
            ),
        }
    finally:
        server.stop()


# --- large uploads ------------------------------------------------------------------------------


def send_chunked(
    port: int, path: str, content_type: str, head: bytes, total: int
) -> dict[str, Any]:
    """POST ``head`` then zeros, ``total`` bytes in all, chunked, until the server stops us."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=60)
    request = (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n"
               f"Content-Type: {content_type}\r\n\r\n")  # fmt: skip
    sock.sendall(request.encode())
    chunk, sent, started = b"\0" * (1 << 20), 0, time.perf_counter()
    try:
        for piece in [head] + [chunk] * ((total - len(head)) >> 20):
            sock.sendall(b"%x\r\n%s\r\n" % (len(piece), piece))
            sent += len(piece)
        sock.sendall(b"0\r\n\r\n")
    except OSError:
        pass
    try:
        answer = sock.recv(4096).split(b"\r\n", 1)[0].decode()
    except OSError as exc:
        answer = f"connection {type(exc).__name__}"
    sock.close()
    return {"offered_bytes": total, "sent_before_cut_bytes": sent, "answer": answer or "closed",
            "seconds": round(time.perf_counter() - started, 3)}  # fmt: skip


def uploads(args: argparse.Namespace) -> dict[str, Any]:
    env = (
        {}
        if args.max_bytes_mib is None
        else {"VISIONLOOP_MAX_BYTES": str(args.max_bytes_mib << 20)}
    )
    server = Server(env, args.server_cpus)
    server.wait_ready()
    pid = server.process.pid
    boundary = "visionloopbench"
    disposition = 'Content-Disposition: form-data; name="file"; filename="big.jpg"'
    multipart_head = f"--{boundary}\r\n{disposition}\r\nContent-Type: image/jpeg\r\n\r\n".encode()
    cases = [
        ("v1 multipart, one 1 GB file part", "/v1/models/catdog/predict",
         f"multipart/form-data; boundary={boundary}", multipart_head + b"\xff\xd8\xff"),
        ("v1 raw body, 1 GB", "/v1/models/catdog/predict", "image/jpeg", b"\xff\xd8\xff"),
        ("v2 body, 1 GB", "/v2/models/catdog/infer", "application/json", b"{"),
    ]  # fmt: skip
    try:
        results = []
        for name, path, content_type, head in cases:
            idle = server.sample()["rss_mb"]
            with open(f"/proc/{pid}/clear_refs", "w") as f:
                f.write("5")  # reset the peak RSS (VmHWM) to the current RSS
            outcome = send_chunked(server.port, path, content_type, head, args.upload_mb << 20)
            time.sleep(0.5)
            with open(f"/proc/{pid}/status") as f:
                peak_kb = next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))
            results.append({"case": name, **outcome, "rss_idle_mb": idle,
                            "rss_peak_mb": round(peak_kb / 1024, 1),
                            "rss_peak_over_idle_mb": round(peak_kb / 1024 - idle, 1),
                            "rss_after_mb": server.sample()["rss_mb"]})  # fmt: skip
            print(json.dumps(results[-1]), flush=True)
        return {"uploads": results}
    finally:
        server.stop()


# --- soak ---------------------------------------------------------------------------------------


async def soak(args: argparse.Namespace) -> dict[str, Any]:
    server = Server({}, args.server_cpus)
    server.wait_ready()
    try:
        good = good_requests(args.megapixels)
        rate_cap = await capacity(server, good, args.clients, args.capacity_s)
        rate = rate_cap * args.load
        bad = bad_requests(good[0][2])
        # --bad of the requests are bad: weights by repetition in the list drawn from.
        n_bad = round(len(good) * 20 * args.bad / (1 - args.bad))
        mix = good * 20 + [bad[i % len(bad)] for i in range(n_bad)]
        samples: list[dict[str, float]] = []

        def tick(elapsed: float) -> None:
            samples.append({"t_s": round(elapsed, 1), **server.sample()})

        traffic = Traffic(server, args.deadline_ms)
        await traffic.run(mix, rate, args.minutes * 60, seed=0, on_tick=tick)
        tick(args.minutes * 60)
        server_view = server.metrics()
        warm = [s for s in samples if s["t_s"] >= args.warmup_s]
        base = warm[0]
        return {
            "capacity_rps": round(rate_cap, 2),
            "offered_rps": round(rate, 2),
            "bad_share": round(n_bad / len(mix), 3),
            **summarise(traffic.records, args.deadline_ms),
            "rss_after_warmup_mb": base["rss_mb"],
            "rss_end_mb": warm[-1]["rss_mb"],
            "rss_max_after_warmup_mb": max(s["rss_mb"] for s in warm),
            "rss_growth_pct": round(100 * (warm[-1]["rss_mb"] / base["rss_mb"] - 1), 2),
            "fds_after_warmup": base["fds"],
            "fds_end": warm[-1]["fds"],
            "fds_max": max(s["fds"] for s in samples),
            "late_200s_server_view": sum(
                v
                for k, v in server_view.items()
                if k.startswith("visionloop_answers_after_deadline_total")
            ),
            "server_metrics": server_view,
            "samples": samples,
        }
    finally:
        server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=["slow-clients", "soak", "uploads"])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--megapixels", type=float, default=1.5)
    parser.add_argument("--deadline-ms", type=float, default=1000)
    parser.add_argument("--server-cpus", default=None, help="taskset list for the server")
    parser.add_argument("--rate", type=float, default=15, help="slow-clients: normal req/s")
    parser.add_argument("--seconds", type=float, default=30, help="slow-clients: per phase")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--slow", type=int, default=200)
    parser.add_argument("--trickle-s", type=float, default=1.0)
    parser.add_argument("--header-timeout-s", type=float, default=10.0)
    parser.add_argument("--stagger-s", type=float, default=0.0,
                        help="slow-clients: each opens at a random time within this (0: all at "
                        "once, so their timeouts and reconnects come in bursts)")  # fmt: skip
    parser.add_argument("--minutes", type=float, default=10, help="soak: length")
    parser.add_argument("--load", type=float, default=1.5, help="soak: x capacity")
    parser.add_argument("--bad", type=float, default=0.10, help="soak: share of bad inputs")
    parser.add_argument("--clients", type=int, default=16, help="soak: for capacity")
    parser.add_argument("--capacity-s", type=float, default=20)
    parser.add_argument("--warmup-s", type=float, default=60)
    parser.add_argument("--upload-mb", type=int, default=1024, help="uploads: size offered")
    parser.add_argument(
        "--max-bytes-mib",
        type=int,
        default=None,
        help="uploads: the server's per-image limit (default: its own, 20 MiB)",
    )
    args = parser.parse_args()
    if args.what == "uploads":
        result = uploads(args)
    else:
        result = asyncio.run(slow_clients(args) if args.what == "slow-clients" else soak(args))
    result = {
        "what": args.what,
        "command": " ".join(["python", *sys.argv]),
        "args": {k: str(v) for k, v in vars(args).items()},
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        **result,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k not in ("samples", "phases")},
                     indent=1))  # fmt: skip


if __name__ == "__main__":
    main()
