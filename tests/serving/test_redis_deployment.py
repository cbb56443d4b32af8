"""The distributed deployment for real: API replicas (uvicorn on loopback) and worker processes
(``visionloop worker``) sharing a real redis-server; then the faults: a worker SIGKILLed
mid-batch, Redis restarted, poison and expired jobs, dead replicas' reply streams."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.live_server import LiveServer
from tests.serving.fakes import FakeModel, solid_png
from tests.serving.transports import redis_settings, wait_until
from visionloop.serving.api import create_app
from visionloop.serving.batcher import BatchPolicy
from visionloop.serving.runner import ItemResult, RunnerConfig
from visionloop.serving.transport.redis_streams import GROUP, Keys, RedisTransport
from visionloop.serving.transport.redis_worker import RedisWorker, reply_ok
from visionloop.settings import ModelSettings, ServeSettings

ROOT = Path(__file__).resolve().parents[2]
CLAIM_IDLE_MS = 500


class WorkerProcess:
    """``visionloop worker`` serving the slow fake model (0.2 s per batch)."""

    def __init__(self, url: str, prefix: str, name: str, log: Path) -> None:
        self.name = name
        self.log = log
        env = {
            **os.environ,
            "PYTHONPATH": str(ROOT),
            "VISIONLOOP_REDIS_PREFIX": prefix,
            "VISIONLOOP_REDIS_HEARTBEAT_S": "0.1",
            "VISIONLOOP_REDIS_CONNECT_TIMEOUT_S": "0.5",
        }
        command = [
            sys.executable, "-m", "visionloop", "worker",
            "--model", "tests.serving.fakes:slow_fake", "--redis-url", url, "--name", name,
            "--max-batch-size", "4", "--max-delay-ms", "20", "--policy", "fixed",
            "--claim-idle-ms", str(CLAIM_IDLE_MS), "--log-level", "info",
        ]  # fmt: skip
        self._out = log.open("wb")
        self.process = subprocess.Popen(command, cwd=ROOT, env=env, stderr=self._out)

    def counts(self) -> dict[str, int]:
        """The counts a worker logs when it stops (after SIGTERM)."""
        match = re.search(r"stopped: WorkerCounts\(([^)]*)\)", self.log.read_text())
        assert match, self.log.read_text()[-2000:]
        return {k: int(v) for k, v in (p.split("=") for p in match.group(1).split(", "))}

    def terminate(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            self.process.wait(timeout=30)
        self._out.close()

    def kill(self) -> None:
        self.process.kill()
        self.process.wait(timeout=10)


@pytest.fixture
def deployment(redis_server, tmp_path):
    """Start workers and API replicas on one Redis; everything is stopped after the test."""
    prefix = f"test-{uuid.uuid4().hex[:8]}"
    workers: list[WorkerProcess] = []
    replicas: list[LiveServer] = []

    class Deployment:
        redis = redis_server
        keys = Keys(prefix, "fake")

        @staticmethod
        def worker(name: str) -> WorkerProcess:
            worker = WorkerProcess(redis_server.url, prefix, name, tmp_path / f"{name}.log")
            workers.append(worker)
            return worker

        @staticmethod
        def replica(timeout_ms: float = 20_000, wait_ready: bool = True) -> LiveServer:
            app = create_app(
                ServeSettings(transport="redis", timeout_ms=timeout_ms, max_queue=256),
                ModelSettings(model="fake"),
                redis_settings=redis_settings(redis_server.url, prefix=prefix),
            )
            server = LiveServer(app)
            replicas.append(server)
            return server.start(wait_ready)

    try:
        yield Deployment
    finally:
        for server in replicas:
            server.stop()
        for worker in workers:
            worker.terminate()


async def post_all(urls: list[str], markers: list[int], timeout_ms: float = 20_000) -> list:
    """POST one image per marker, spread over the replicas, all at once."""
    async with httpx.AsyncClient(timeout=60) as client:

        async def one(i: int, marker: int) -> httpx.Response:
            return await client.post(
                f"{urls[i % len(urls)]}/v1/models/fake/predict",
                content=solid_png(marker),
                headers={"content-type": "image/png", "x-timeout-ms": str(timeout_ms)},
            )

        return await asyncio.gather(*(one(i, m) for i, m in enumerate(markers)))


def test_two_replicas_and_two_workers_answer_a_burst(deployment):
    a, b = deployment.worker("a"), deployment.worker("b")
    replicas = [deployment.replica(), deployment.replica()]
    markers = list(range(20, 60))
    answers = asyncio.run(post_all([r.url for r in replicas], markers))
    assert [r.status_code for r in answers] == [200] * len(markers)
    assert [r.json()["label"] for r in answers] == [str(m) for m in markers]
    a.terminate()
    b.terminate()
    counts = [a.counts(), b.counts()]
    ok = [r.status_code for r in answers].count(200)
    shares = [c["answered"] for c in counts]
    print(f"\n2 replicas x 2 workers: sent {len(markers)}, answered {ok}, by worker {shares}")
    assert sum(c["answered"] for c in counts) == len(markers)  # each job ran once
    assert all(c["answered"] > 0 for c in counts)  # both workers took a share


def test_a_worker_killed_mid_batch_loses_nothing(deployment):
    a, b = deployment.worker("a"), deployment.worker("b")
    replica = deployment.replica()
    client = deployment.redis.client()
    markers = list(range(20, 80))

    async def scenario() -> list:
        burst = asyncio.ensure_future(post_all([replica.url], markers))
        keys = deployment.keys

        def held_by_a() -> int:
            return len(client.xpending_range(keys.requests, GROUP, "-", "+", 100, "a"))

        # A full batch (4) in hand: one running or about to, the rest queued behind it.
        await wait_until(lambda: held_by_a() >= 4, what="worker a to hold a batch")
        held = held_by_a()
        a.kill()
        return [held, await burst]

    held, answers = asyncio.run(scenario())
    statuses = [r.status_code for r in answers]
    duplicates = replica.metric("visionloop_duplicate_replies_total")
    b.terminate()
    survivor = b.counts()
    print(
        f"\nSIGKILL: sent {len(markers)}, answered {statuses.count(200)}, "
        f"errors {len(statuses) - statuses.count(200)}, held by the killed worker {held}, "
        f"reclaimed {survivor['reclaimed']}, duplicate replies dropped {duplicates:g}"
    )
    assert held > 0
    assert statuses == [200] * len(markers)
    assert [r.json()["label"] for r in answers] == [str(m) for m in markers]
    assert survivor["reclaimed"] >= 1


def test_redis_down_means_fast_503_then_service_resumes(deployment):
    worker = deployment.worker("a")
    replica = deployment.replica()
    predict = f"{replica.url}/v1/models/fake/predict"
    headers = {"content-type": "image/png"}
    with httpx.Client(timeout=10) as http:  # a hang would fail here, not pass slowly
        assert http.post(predict, content=solid_png(20), headers=headers).status_code == 200
        deployment.redis.stop()
        refused = http.post(predict, content=solid_png(21), headers=headers)
        assert refused.status_code == 503
        assert "Redis" in refused.json()["error"] or "worker" in refused.json()["error"]
        assert refused.headers["retry-after"]
        deployment.redis.start()  # same port, empty: no persistence
        deadline, tries = time.monotonic() + 30, 0
        while True:
            again = http.post(predict, content=solid_png(22), headers=headers)
            tries += 1
            if again.status_code == 200:
                print(f"\nRedis restart: 503 while down; served again after {tries} tries")
                break
            assert again.status_code == 503, again.text
            assert time.monotonic() < deadline, "service did not resume after Redis came back"
            time.sleep(0.1)
        assert again.json()["label"] == "22"
    assert worker.process.poll() is None  # the worker rode it out


# -- jobs written by hand: poison, expired, redelivered, and dead replicas --------------------


def _job(reply: str, image: bytes, deadline: float, shape: str = "8,8,3") -> dict:
    return {"id": "j1", "reply": reply, "deadline": repr(deadline), "shape": shape, "image": image}


def _pixels(marker: int) -> bytes:
    pixels = np.zeros((8, 8, 3), dtype=np.uint8)
    pixels[..., 0] = marker
    return pixels.tobytes()


async def _with_worker(url: str, settings, model: FakeModel, body) -> None:
    policy = BatchPolicy(4, 5, 64)
    worker = RedisWorker(model, RunnerConfig(policy=policy, timeout_ms=86_400_000), settings)
    stop = asyncio.Event()
    running = asyncio.create_task(worker.run(stop))
    try:
        await body(worker)
    finally:
        stop.set()
        await running


class ByHand:
    """A worker's world set up by hand: settings, keys, a fake model, a client, and a reply
    stream (created, as a live replica would) that the jobs written here answer into."""

    def __init__(self, redis_server, **overrides) -> None:
        self.url = redis_server.url
        self.settings = redis_settings(redis_server.url, **overrides)
        self.keys = Keys(self.settings.prefix, "fake")
        self.model = FakeModel()
        self.client = redis_server.client()
        self.reply = self.keys.replies("by-hand")
        self.client.xadd(self.reply, {"hello": "1"})

    def run_worker(self, body) -> None:
        asyncio.run(_with_worker(self.url, self.settings, self.model, body))

    def answers(self) -> list[dict]:
        return _replies(self.client, self.reply)


def _replies(client, key: str) -> list[dict]:
    return [fields for _, fields in client.xrange(key) if b"id" in fields]


def test_a_poison_job_is_answered_with_an_error_and_acknowledged(redis_server):
    w = ByHand(redis_server)
    keys, model, client, reply = w.keys, w.model, w.client, w.reply

    async def body(worker):
        client.xadd(keys.requests, _job(reply, b"not pixels", time.time() + 30))
        client.xadd(keys.requests, {"garbage": "no id, no reply stream"})
        await wait_until(lambda: client.xlen(keys.requests) == 0, what="both jobs handled")
        await asyncio.sleep(3 * CLAIM_IDLE_MS / 1e3)  # nothing left to redeliver
        assert worker.counts.bad_jobs == 2

    w.run_worker(body)
    (answer,) = w.answers()
    assert answer[b"ok"] == b"0"
    assert answer[b"kind"] == b"bad_job"
    assert b"10 bytes" in answer[b"message"]
    assert client.xpending(keys.requests, GROUP)["pending"] == 0
    assert model.probe.seen == []


def test_an_expired_job_is_answered_504_and_never_runs(redis_server):
    w = ByHand(redis_server)
    keys, model, client, reply = w.keys, w.model, w.client, w.reply

    async def body(worker):
        client.xadd(keys.requests, _job(reply, _pixels(20), time.time() - 1))
        await wait_until(lambda: _replies(client, reply), what="the answer")

    w.run_worker(body)
    (answer,) = w.answers()
    assert answer[b"kind"] == b"deadline"
    assert 20 not in model.probe.seen


def test_a_job_redelivered_too_often_is_given_up_with_an_error(redis_server):
    w = ByHand(redis_server, claim_idle_ms=200, max_deliveries=3)
    keys, model, client, reply = w.keys, w.model, w.client, w.reply
    client.xgroup_create(keys.requests, GROUP, id="0", mkstream=True)
    entry = client.xadd(keys.requests, _job(reply, _pixels(20), time.time() + 60))
    client.xreadgroup(GROUP, "ghost", {keys.requests: ">"})  # delivery 1: a worker that dies
    for _ in range(2):  # deliveries 2 and 3: two more that die
        client.xclaim(keys.requests, GROUP, "ghost", 0, [entry])

    async def body(worker):
        await wait_until(lambda: _replies(client, reply), what="the answer")

    w.run_worker(body)
    (answer,) = w.answers()
    assert answer[b"kind"] == b"model_error"
    assert answer[b"type"] == b"GaveUp"
    assert b"4 times" in answer[b"message"]
    assert 20 not in model.probe.seen
    assert client.xlen(keys.requests) == 0


def test_reply_streams_are_trimmed_expire_and_are_not_revived_for_a_dead_replica(deployment):
    deployment.worker("a")
    replica = deployment.replica()
    client = deployment.redis.client()
    answers = asyncio.run(post_all([replica.url], list(range(20, 40))))
    assert all(r.status_code == 200 for r in answers)
    reply_key = replica.state.runner.reply_key
    time.sleep(0.5)  # a monitor tick trims what was read
    assert client.xlen(reply_key) <= 2
    assert 0 < client.ttl(reply_key) <= 30
    # A job from a replica that died (its stream expired): answered into the void, not revived.
    gone = deployment.keys.replies("dead-replica")
    client.xadd(deployment.keys.requests, _job(gone, _pixels(41), time.time() + 30))
    wait = time.monotonic() + 20
    while client.xlen(deployment.keys.requests):
        assert time.monotonic() < wait, "the job was not handled"
        time.sleep(0.05)
    assert client.exists(gone) == 0


def test_no_worker_means_503_not_a_hang(deployment):
    replica = deployment.replica(wait_ready=False)
    with httpx.Client(timeout=10) as http:
        answer = http.post(
            f"{replica.url}/v1/models/fake/predict",
            content=solid_png(20),
            headers={"content-type": "image/png"},
        )
        assert answer.status_code == 503
        assert http.get(f"{replica.url}/v2/health/ready").status_code == 503


def test_a_request_answered_twice_is_answered_once(redis_server):
    """A job run twice (reclaimed from a worker that was only slow) yields two replies: the
    client sees the first, the second is dropped and counted."""

    settings = redis_settings(redis_server.url)
    keys, client = Keys(settings.prefix, "fake"), redis_server.client()
    client.set(keys.card, '{"name": "fake", "description": "d", "device": "cpu", '
               '"crop": [8, 8, 8, "bicubic"], "mean": [0, 0, 0], "std": [1, 1, 1], '
               '"outputs": [["mean", [3], "FP32", ""]]}')  # fmt: skip
    client.zadd(keys.workers, {"by-hand": time.time() + 3600})

    async def scenario():
        transport = RedisTransport("fake", settings, timeout_ms=10_000)
        await transport.start()
        await wait_until(lambda: transport.ready, what="the replica")
        asking = asyncio.ensure_future(transport.infer(np.zeros((8, 8, 3), dtype=np.uint8)))
        await wait_until(lambda: client.xlen(keys.requests) == 1, what="the job")
        ((_, fields),) = client.xrange(keys.requests)
        job_id, reply = fields[b"id"].decode(), fields[b"reply"].decode()
        for label in ("first", "second"):
            item = ItemResult({"mean": np.zeros(3, np.float32)}, {"label": label}, 1.0, 2.0, 1)
            client.xadd(reply, reply_ok(job_id, item))
        answer = await asking
        await asyncio.sleep(0.3)  # let the reader see the second reply
        duplicates = transport.metrics.duplicate_replies.labels(model="fake")._value.get()
        await transport.stop()
        return answer, duplicates

    answer, duplicates = asyncio.run(scenario())
    assert answer.result == {"label": "first"}
    assert duplicates == 1


def test_the_v2_protocol_works_through_a_replica(deployment):
    deployment.worker("a")
    replica = deployment.replica()
    with httpx.Client(base_url=replica.url, timeout=30) as http:
        meta = http.get("/v2/models/fake").json()
        assert meta["inputs"][1]["shape"] == [-1, 8, 8, 3]
        pixels = np.zeros((1, 8, 8, 3), dtype=np.uint8)
        pixels[..., 0] = 42
        body = {
            "inputs": [
                {"name": "image", "datatype": "UINT8", "shape": [1, 8, 8, 3],
                 "data": pixels.flatten().tolist()}
            ]
        }  # fmt: skip
        answer = http.post("/v2/models/fake/infer", json=body)
        assert answer.status_code == 200, answer.text
        outputs = {o["name"]: o for o in answer.json()["outputs"]}
        assert outputs["mean"]["data"][0] == pytest.approx(42.0)
        assert outputs["label"]["data"] == ["42"]


def test_a_slow_batch_is_not_taken_for_a_dead_worker(redis_server):
    """Batches slower than claim_idle_ms: the holder keeps its jobs fresh, so the other
    worker does not reclaim them, and every job runs exactly once."""
    settings = redis_settings(redis_server.url, claim_idle_ms=300)
    slow, other = FakeModel(delay_s=0.8), FakeModel(delay_s=0.8)

    async def scenario() -> tuple[list, float]:
        policy = BatchPolicy(2, 5, 64)
        stop = asyncio.Event()
        workers = [
            RedisWorker(m, RunnerConfig(policy=policy, timeout_ms=86_400_000), settings, name=n)
            for m, n in ((slow, "slow"), (other, "other"))
        ]
        running = [asyncio.create_task(w.run(stop)) for w in workers]
        transport = RedisTransport("fake", settings, timeout_ms=30_000)
        await transport.start()
        await wait_until(lambda: transport.ready, what="the replica")
        pixels = [np.full((8, 8, 3), m, dtype=np.uint8) for m in range(20, 32)]
        items = await asyncio.gather(*(transport.infer(p) for p in pixels))
        duplicates = transport.metrics.duplicate_replies.labels(model="fake")._value.get()
        await transport.stop()
        stop.set()
        await asyncio.gather(*running)
        return items, duplicates, [w.counts.reclaimed for w in workers]

    items, duplicates, reclaimed = asyncio.run(scenario())
    assert [item.result["label"] for item in items] == [str(m) for m in range(20, 32)]
    assert sorted(slow.probe.seen + other.probe.seen) == list(range(20, 32))  # once each
    assert duplicates == 0
    assert reclaimed == [0, 0]


def test_consumers_of_killed_workers_are_forgotten(redis_server):
    w = ByHand(redis_server, claim_idle_ms=150)
    w.client.xgroup_create(w.keys.requests, GROUP, id="0", mkstream=True)
    w.client.xadd(w.keys.requests, _job(w.reply, _pixels(20), time.time() + 60))
    w.client.xreadgroup(GROUP, "killed", {w.keys.requests: ">"}, count=1)  # then it died

    def names() -> set[str]:
        return {str(c["name"]) for c in w.client.xinfo_consumers(w.keys.requests, GROUP)}

    async def body(worker):
        assert any("killed" in n for n in names())
        await wait_until(lambda: not any("killed" in n for n in names()), what="killed to go")
        assert any(worker.name in n for n in names())

    w.run_worker(body)
    (answer,) = w.answers()  # its job was reclaimed and answered first
    assert answer[b"ok"] == b"1"


def test_a_worker_whose_loop_dies_stops_and_exits_1(deployment):
    """`visionloop worker` does not go on without reading: a loop that ends on an error (here
    an unexpected Redis answer: its requests key is not a stream) stops it, exit status 1."""
    client = deployment.redis.client()
    try:
        client.set(deployment.keys.requests, "not a stream")
        worker = deployment.worker("broken")
        assert worker.process.wait(timeout=120) == 1
        assert "WRONGTYPE" in worker.log.read_text()
    finally:
        client.close()
