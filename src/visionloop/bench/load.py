"""Load generator for HTTP inference endpoints: open loop (Poisson arrivals) and closed loop.

Open loop is the realistic model of phones: requests arrive at a rate whether or not the server
keeps up, so an overloaded server shows growing latency and refusals instead of silently slowing
its clients down. Latency is measured from each request's *scheduled* send time, so a client
that fell behind cannot hide server delay (no coordinated omission). Closed loop (N clients,
each sending its next request when the last is answered) measures capacity.

Goodput counts only answers within the latency SLO. The generator measures its own CPU use,
because on a small machine it competes with the server it measures; given the server's root
process (``Target.server_pid``), it also measures the CPU time of the server's whole process
tree over the same window (:class:`ProcessTreeCPU`).
"""

from __future__ import annotations

import asyncio
import io
import json
import math
import os
import random
import resource
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import httpx
from PIL import Image

from visionloop import imaging
from visionloop.bench.rawhttp import RawClient

CLIENT_TIMEOUT_S = 30.0  # a request unanswered this long counts as failed

Protocol = Literal["raw", "v2"]
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp")
LIMITS = imaging.ImageLimits()  # the server's defaults
Client = httpx.AsyncClient | RawClient
ClientKind = Literal["httpx", "raw"]


@dataclass(frozen=True)
class Target:
    """Where to send: ``url`` is the full predict/infer URL. With ``deadline_ms``, every
    request carries ``X-Timeout-Ms`` (a phone that stops waiting after that long says so;
    servers that do not read the header ignore it)."""

    url: str
    protocol: Protocol = "raw"
    metrics_url: str | None = None
    deadline_ms: float | None = None
    server_pid: int | None = None  # the server's root process: its tree's CPU is measured


@dataclass
class LoadResult:
    """One load level's outcome. Latencies are of successful (200) answers, in ms.

    ``client_cpu_pct`` is the generator's CPU time over the window (``seconds``), in % of one
    core; ``server_cpu_pct`` the same for the server's whole process tree (None when the
    server's process is not known). ``repeat`` numbers the pass when a sweep is repeated."""

    label: str
    mode: str
    offered: float
    seconds: float
    sent: int
    ok: int
    good: int
    throughput_rps: float
    goodput_rps: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    slo_ms: float
    statuses: dict[str, int] = field(default_factory=dict)
    mean_batch: float | None = None
    client_cpu_pct: float = 0.0
    server_cpu_pct: float | None = None
    repeat: int = 0

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


class ProcessTreeCPU:
    """CPU time (user + system, in seconds) of a server's whole process tree.

    The tree is the root process, all its descendants (recursively) and, when the root leads
    its own session (started with ``start_new_session``), every process of that session, which
    catches a daemon that re-parented itself away from the root. A process's time includes the
    time of the children it has reaped, so a helper that ended inside the window still counts,
    through its parent. :meth:`used` is the growth between two :meth:`sample` s; a process is
    known by (pid, start time), so one started in between counts from zero.

    Not counted: a process that ends between two samples *and* is reaped outside the tree. A
    child reaped in the window counts its whole life (its parent's reaped-children time grows by
    all of it), which over-counts only a child that was already running before the window.
    Needs ``psutil`` (imported on first use: the generator works without it otherwise).
    """

    def __init__(self, root_pid: int) -> None:
        self.root_pid = root_pid
        try:
            self.session: int | None = root_pid if os.getsid(root_pid) == root_pid else None
        except OSError:
            self.session = None

    def _processes(self) -> list[Any]:
        import psutil

        try:
            root = psutil.Process(self.root_pid)
            found = {root.pid: root} | {c.pid: c for c in root.children(recursive=True)}
        except psutil.NoSuchProcess:
            return []
        if self.session is not None:
            for process in psutil.process_iter():
                try:
                    if process.pid not in found and os.getsid(process.pid) == self.session:
                        found[process.pid] = process
                except OSError:
                    continue
        return list(found.values())

    def sample(self) -> dict[tuple[int, float], float]:
        """Each process's CPU seconds so far (its own and its reaped children's)."""
        import psutil

        times: dict[tuple[int, float], float] = {}
        for process in self._processes():
            try:
                with process.oneshot():
                    key = (process.pid, process.create_time())
                    t = process.cpu_times()
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                continue
            times[key] = t.user + t.system + t.children_user + t.children_system
        return times

    @staticmethod
    def used(
        before: dict[tuple[int, float], float], after: dict[tuple[int, float], float]
    ) -> float:
        """CPU seconds the tree used between the two samples."""
        return sum(max(0.0, cpu - before.get(key, 0.0)) for key, cpu in after.items())


def load_payloads(folder: Path, as_jpeg: bool = True, megapixels: float = 0.0) -> list[bytes]:
    """Every image in ``folder`` (sorted), re-encoded as JPEG quality 90 unless told not to;
    with ``megapixels`` > 0, first scaled (bicubic) to that many pixels, like a phone photo."""
    payloads = []
    for path in sorted(folder.iterdir()):
        if path.suffix.lower() not in IMAGE_SUFFIXES:
            continue
        data = imaging.read_file(path, LIMITS.max_bytes)
        if megapixels > 0 or (as_jpeg and path.suffix.lower() not in (".jpg", ".jpeg")):
            # The same guards as uploads (bytes, sniffed format, header pixels), and upright:
            # the server would apply the EXIF rotation, and the re-encoded JPEG drops EXIF.
            with imaging.load_path(path, LIMITS) as raw:
                image = imaging.upright(raw).convert("RGB")
            if megapixels > 0:
                scale = (megapixels * 1e6 / (image.width * image.height)) ** 0.5
                size = (round(image.width * scale), round(image.height * scale))
                image = image.resize(size, Image.Resampling.BICUBIC)
            buffer = io.BytesIO()
            image.save(buffer, "JPEG", quality=90)
            data = buffer.getvalue()
        payloads.append(data)
    if not payloads:
        raise ValueError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {folder}")
    return payloads


def v2_request(image: bytes) -> tuple[bytes, dict[str, str]]:
    """A binary-extension v2 infer body carrying one encoded image, asking for ``label``.

    The shape is ``[1, 1]``: Triton, with batching on, wants the per-item dimension too.
    """
    blob = len(image).to_bytes(4, "little") + image
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "image_bytes",
                    "shape": [1, 1],
                    "datatype": "BYTES",
                    "parameters": {"binary_data_size": len(blob)},
                }
            ],
            "outputs": [{"name": "label", "parameters": {"binary_data": False}}],
        }
    ).encode()
    headers = {
        "Inference-Header-Content-Length": str(len(header)),
        "content-type": "application/octet-stream",
    }
    return header + blob, headers


def _bodies(target: Target, payloads: list[bytes]) -> list[tuple[bytes, dict[str, str]]]:
    if target.protocol == "v2":
        bodies = [v2_request(p) for p in payloads]
    else:
        bodies = [(p, {"content-type": "image/jpeg"}) for p in payloads]
    if target.deadline_ms is not None:
        for _, headers in bodies:
            headers["X-Timeout-Ms"] = f"{target.deadline_ms:g}"
    return bodies


def _percentile(sorted_ms: list[float], p: float) -> float:
    if not sorted_ms:
        return float("nan")
    return sorted_ms[min(len(sorted_ms) - 1, int(p * len(sorted_ms)))]


async def _batch_totals(client: Client, url: str | None) -> tuple[float, float] | None:
    if url is None:
        return None
    try:
        text = (await client.get(url)).text
    except httpx.HTTPError:
        return None
    totals = {"sum": 0.0, "count": 0.0}
    for line in text.splitlines():
        for key in totals:
            if line.startswith(f"visionloop_batch_size_{key}{{"):
                totals[key] += float(line.rsplit(" ", 1)[1])
    return totals["sum"], totals["count"]


class _Recorder:
    def __init__(self, slo_ms: float) -> None:
        self.slo_ms = slo_ms
        self.latencies: list[float] = []
        self.done_at: list[float] = []  # perf_counter time of each 200, same order
        self.statuses: Counter[str] = Counter()
        self.sent = 0

    async def send(
        self, client: Client, url: str, body: tuple[bytes, dict[str, str]], t0: float
    ) -> None:
        self.sent += 1
        try:
            response = await client.post(url, content=body[0], headers=body[1])
            status = str(response.status_code)
        except httpx.HTTPError as exc:
            status = type(exc).__name__
        self.statuses[status] += 1
        if status == "200":
            now = time.perf_counter()
            self.latencies.append((now - t0) * 1e3)
            self.done_at.append(now)


async def _measure(
    label: str,
    mode: str,
    offered: float,
    target: Target,
    slo_ms: float,
    drive: Callable[[Client, _Recorder], Awaitable[None]],
    connections: int,
    window_s: float,
    timeout_s: float = CLIENT_TIMEOUT_S,
    client_kind: ClientKind = "httpx",
) -> LoadResult:
    """Run ``drive`` and summarise. Rates count answers that *completed* within the load
    window: answers still arriving after it (the backlog of an overloaded server) must not
    dilute the rate by stretching the denominator, nor inflate it later. A request unanswered
    after ``timeout_s`` counts as failed (a collapsed server must not stall the sweep).
    ``client_kind`` "raw": :class:`~visionloop.bench.rawhttp.RawClient`, for loads that
    would take httpx a core of the machine the server runs on."""
    recorder = _Recorder(slo_ms)
    tree = ProcessTreeCPU(target.server_pid) if target.server_pid is not None else None
    async with _client(client_kind, connections, timeout_s) as client:
        before = await _batch_totals(client, target.metrics_url)
        server0 = tree.sample() if tree is not None else {}
        cpu0 = resource.getrusage(resource.RUSAGE_SELF)
        started = time.perf_counter()
        await drive(client, recorder)
        seconds = time.perf_counter() - started
        cpu1 = resource.getrusage(resource.RUSAGE_SELF)
        server_cpu = ProcessTreeCPU.used(server0, tree.sample()) if tree is not None else None
        after = await _batch_totals(client, target.metrics_url)
    cpu = (cpu1.ru_utime + cpu1.ru_stime) - (cpu0.ru_utime + cpu0.ru_stime)
    mean_batch = None
    if before is not None and after is not None and after[1] > before[1]:
        mean_batch = round((after[0] - before[0]) / (after[1] - before[1]), 2)
    ordered = sorted(recorder.latencies)
    good = sum(1 for ms in ordered if ms <= slo_ms)
    window_end = started + window_s
    in_window = [ms for ms, t in zip(recorder.latencies, recorder.done_at, strict=True)
                 if t <= window_end]  # fmt: skip
    good_in_window = sum(1 for ms in in_window if ms <= slo_ms)
    return LoadResult(
        label=label,
        mode=mode,
        offered=offered,
        seconds=round(seconds, 2),
        sent=recorder.sent,
        ok=len(ordered),
        good=good,
        throughput_rps=round(len(in_window) / window_s, 2),
        goodput_rps=round(good_in_window / window_s, 2),
        p50_ms=round(_percentile(ordered, 0.50), 1),
        p90_ms=round(_percentile(ordered, 0.90), 1),
        p99_ms=round(_percentile(ordered, 0.99), 1),
        max_ms=round(ordered[-1], 1) if ordered else float("nan"),
        slo_ms=slo_ms,
        statuses=dict(recorder.statuses),
        mean_batch=mean_batch,
        client_cpu_pct=round(100 * cpu / seconds, 1),
        server_cpu_pct=None if server_cpu is None else round(100 * server_cpu / seconds, 1),
    )


def _client(kind: ClientKind, connections: int, timeout_s: float) -> Client:
    if kind == "raw":
        return RawClient(timeout=timeout_s, max_connections=connections)
    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
    return httpx.AsyncClient(timeout=timeout_s, limits=limits)


async def open_loop(
    target: Target,
    payloads: list[bytes],
    rate: float,
    duration_s: float,
    slo_ms: float = 250.0,
    label: str = "",
    seed: int = 0,
    client_kind: ClientKind = "httpx",
) -> LoadResult:
    """Poisson arrivals at ``rate`` requests/s for ``duration_s``; waits for every answer."""
    if rate <= 0:
        raise ValueError(f"rate must be > 0, got {rate}")
    bodies = _bodies(target, payloads)
    rng = random.Random(seed)

    async def drive(client: Client, recorder: _Recorder) -> None:
        tasks = []
        start = time.perf_counter()
        scheduled, i = start, 0
        while scheduled - start < duration_s:
            delay = scheduled - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            body = bodies[i % len(bodies)]
            tasks.append(asyncio.create_task(recorder.send(client, target.url, body, scheduled)))
            i += 1
            scheduled += rng.expovariate(rate)
        await asyncio.gather(*tasks)

    connections = open_loop_connections(rate, CLIENT_TIMEOUT_S)
    return await _measure(
        label, "open", rate, target, slo_ms, drive, connections, duration_s,
        client_kind=client_kind,
    )  # fmt: skip


def open_loop_connections(rate: float, timeout_s: float) -> int:
    """Connections an open loop may hold: every request of the last ``timeout_s`` seconds.

    A smaller pool makes the generator part of the result: a server that never answers some
    requests (TorchServe drops a request past ``clientTimeoutInMills`` without a word) fills it
    with requests waiting for the client timeout, and the next ones wait for a connection on
    our side and count as late against the server."""
    return max(16, math.ceil(rate * timeout_s))


async def closed_loop(
    target: Target,
    payloads: list[bytes],
    clients: int,
    duration_s: float,
    slo_ms: float = 250.0,
    label: str = "",
    client_kind: ClientKind = "httpx",
) -> LoadResult:
    """``clients`` concurrent clients, each sending its next request when answered."""
    if clients < 1:
        raise ValueError(f"clients must be >= 1, got {clients}")
    bodies = _bodies(target, payloads)

    async def drive(client: Client, recorder: _Recorder) -> None:
        stop_at = time.perf_counter() + duration_s

        async def one(index: int) -> None:
            i = index
            while time.perf_counter() < stop_at:
                await recorder.send(
                    client, target.url, bodies[i % len(bodies)], time.perf_counter()
                )
                i += 1

        await asyncio.gather(*(one(c) for c in range(clients)))

    return await _measure(
        label, "closed", clients, target, slo_ms, drive, clients, duration_s,
        client_kind=client_kind,
    )  # fmt: skip


def sweep(
    target: Target,
    payloads: list[bytes],
    mode: Literal["open", "closed"],
    levels: list[float],
    duration_s: float,
    warmup_s: float = 2.0,
    slo_ms: float = 250.0,
    label: str = "",
    on_result: Callable[[LoadResult], None] | None = None,
    repeat: int = 0,
) -> list[LoadResult]:
    """Run each load level in turn (each after ``warmup_s`` of unmeasured load). ``repeat``
    is written into every result and seeds the Poisson arrivals, so that repeats of a sweep
    draw different (but reproducible) arrival sequences; repeat 0 is the historical seed 0."""
    results = []
    for level in levels:
        for seconds, keep in ((warmup_s, False), (duration_s, True)):
            if seconds <= 0:
                continue
            if mode == "open":
                coro = open_loop(target, payloads, level, seconds, slo_ms, label, seed=repeat)
            else:
                coro = closed_loop(target, payloads, int(level), seconds, slo_ms, label)
            result = asyncio.run(coro)
            result.repeat = repeat
            if keep:
                results.append(result)
                if on_result is not None:
                    on_result(result)
    return results
