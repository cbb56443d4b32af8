"""A model repository served through Redis, for the tests: ``visionloop worker
--model-repository`` processes, API replicas in-process, and a steady load to watch a rollout
through (see :mod:`tests.serving.test_redis_repository`)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import httpx
import torch

from tests.serving.fakes import solid_png, versioned_weights
from tests.serving.transports import redis_settings
from visionloop.serving.api import create_app
from visionloop.serving.repository import ModelConfig, write_config
from visionloop.serving.transport.redis_streams import Keys
from visionloop.settings import ModelSettings, ServeSettings

ROOT = Path(__file__).resolve().parents[2]
FAST = "tests.serving.fakes:versioned"
# Workers are taken for dead after 3 heartbeats: long enough for a busy 2-core CI machine.
HEARTBEAT_S = 1.0
MARKER = 5  # the solid image's red value: version v answers label 1000 v + 5


def add_version(root: Path, name: str, version: int, weights: bool = True) -> None:
    folder = root / name / str(version)
    folder.mkdir(parents=True)
    if weights:
        torch.save(versioned_weights(version), folder / "weights.pt")
    else:
        (folder / "weights.pt").write_bytes(b"not a state dict")


class RepositoryWorker:
    """``visionloop worker --model-repository DIR`` in a process of its own."""

    def __init__(self, root: Path, url: str, prefix: str, name: str, log: Path) -> None:
        self.log = log
        env = {
            **os.environ,
            "PYTHONPATH": str(ROOT),
            "VISIONLOOP_REDIS_PREFIX": prefix,
            "VISIONLOOP_REDIS_HEARTBEAT_S": str(HEARTBEAT_S),
            "VISIONLOOP_REDIS_CONNECT_TIMEOUT_S": "0.5",
        }
        command = [
            sys.executable, "-m", "visionloop", "worker", "--model-repository", str(root),
            "--redis-url", url, "--name", name, "--claim-idle-ms", "1000", "--log-level", "info",
        ]  # fmt: skip
        self._out = log.open("wb")
        self.process = subprocess.Popen(command, cwd=ROOT, env=env, stderr=self._out)

    def terminate(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        self._out.close()


def replica_app(root: Path, url: str, prefix: str):
    settings = redis_settings(url, prefix=prefix, heartbeat_s=HEARTBEAT_S)
    return create_app(
        ServeSettings(transport="redis", model_repository=root, lag_reserve=False),
        ModelSettings(),
        redis_settings=settings,
    )


def new_repository(tmp_path: Path) -> Path:
    root = tmp_path / "models"
    (root / "m").mkdir(parents=True)
    write_config(root / "m" / "config.toml", ModelConfig(architecture=FAST, max_batch_size=4))
    add_version(root, "m", 1)
    return root


def announcing(cluster, version: int) -> int:
    """How many workers announce ``version`` of ``m`` with a fresh heartbeat."""
    key = Keys(cluster.prefix, "m", version).workers
    return int(cluster.redis.zcount(key, time.time() - 3 * HEARTBEAT_S, "+inf"))


def wait_for(condition, what: str, timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def predict(http: httpx.Client, path: str = "/v1/models/m/predict") -> httpx.Response:
    return http.post(path, content=solid_png(MARKER), headers={"content-type": "image/png"})


class SteadyLoad:
    """Two clients sending one request after another until stopped; every answer recorded as
    (status, version), a request that got no answer as (0, the error)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.answers: list[tuple[int, str]] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run) for _ in range(2)]

    def _run(self) -> None:
        with httpx.Client(base_url=self.url, timeout=60) as http:
            while not self._stop.is_set():
                try:
                    answer = predict(http)
                except httpx.HTTPError as exc:  # recorded as a failed request: status 0
                    self.answers.append((0, repr(exc)))
                else:
                    version = answer.json().get("model_version", "") if answer.is_success else ""
                    self.answers.append((answer.status_code, version))
                time.sleep(0.01)

    def __enter__(self) -> SteadyLoad:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=120)

    def mark(self) -> int:
        """Where the answers to requests sent from now on begin: past the ones in flight."""
        return len(self.answers) + len(self._threads)

    def since(self, start: int) -> Counter[str]:
        return Counter(version for _, version in self.answers[start:])


def repo_cli(url: str, *args: str, code: int = 0) -> dict:
    """``visionloop repo ARGS --url URL``: its one line of JSON (exit ``code``)."""
    done = subprocess.run(
        [sys.executable, "-m", "visionloop", "repo", *args, "--url", url],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == code, done.stderr
    return json.loads(done.stdout)


def settled(load: SteadyLoad, versions: set[str], count: int = 10) -> None:
    """Wait until ``load``'s answers come from ``versions`` only (a replica learns a rollout
    sent to another one at its next sync), then check ``count`` more do."""
    wait_for(lambda: load.answers and load.answers[-1][1] in versions, f"answers from {versions}")
    start = load.mark()
    wait_for(lambda: len(load.answers) > start + count, "answers after the switch")
    assert set(load.since(start)) <= versions, load.since(start)
