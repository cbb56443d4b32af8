"""The model repository: the folder, the fleet of versions, its API, hot swaps under load,
canary and shadow, budgets, and a bad entry next to good ones.

The models are :class:`tests.serving.fakes.VersionedModel`: a version's weights add 1000 x its
number to the label, so every answer says which version computed it.
"""

from __future__ import annotations

import asyncio
import functools
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch

from tests.serving.fakes import solid_png, versioned_weights
from visionloop.serving.fleet import (
    Fleet,
    FleetLimits,
    LoadFailed,
    Unavailable,
    UnknownModel,
    agreement,
    load_version,
)
from visionloop.serving.metrics import Metrics
from visionloop.serving.repository import (
    ModelConfig,
    Repository,
    RepositoryError,
    VersionPolicy,
    read_config,
    version_files,
    write_config,
)
from visionloop.serving.transport.base import ItemResult

FAST = "tests.serving.fakes:versioned"
SLOW = "tests.serving.fakes:versioned_slow"
IMAGE = np.full((8, 8, 3), 5, np.uint8)


def make_model(root: Path, name: str, versions=(1,), architecture=FAST, **config) -> Path:
    folder = root / name
    folder.mkdir(parents=True, exist_ok=True)
    write_config(folder / "config.toml", ModelConfig(architecture=architecture, **config))
    for version in versions:
        add_weights(root, name, version)
    return folder


def add_weights(root: Path, name: str, version: int) -> None:
    (root / name / str(version)).mkdir(parents=True)
    torch.save(versioned_weights(version), root / name / str(version) / "weights.pt")


def fleet(root: Path, **limits) -> Fleet:
    limits.setdefault("cores", 8)
    return Fleet(Repository(root), load_version, Metrics(), FleetLimits(**limits))


# -- the folder ----------------------------------------------------------------------------


def test_config_round_trips_and_rejects_typos(tmp_path):
    config = ModelConfig(
        architecture=FAST, max_batch_size=4, version_policy=VersionPolicy(latest=2)
    )
    write_config(tmp_path / "config.toml", config)
    assert read_config(tmp_path / "config.toml") == config
    (tmp_path / "bad.toml").write_text('max_batch_sise = 4\nengine = "tensorrt"\n')
    with pytest.raises(RepositoryError) as error:
        read_config(tmp_path / "bad.toml")
    assert "max_batch_sise" in str(error.value)
    assert "engine" in str(error.value)
    (tmp_path / "broken.toml").write_text("max_batch_size = [")
    with pytest.raises(RepositoryError, match="cannot read"):
        read_config(tmp_path / "broken.toml")


def test_version_policy_selects_latest_or_specific():
    assert VersionPolicy().select([3, 1, 2]) == [3]
    assert VersionPolicy(latest=2).select([3, 1, 2]) == [2, 3]
    assert VersionPolicy(specific=[1, 5]).select([1, 2, 3]) == [1]
    with pytest.raises(ValueError, match="not both"):
        VersionPolicy(latest=1, specific=[1])


def test_add_version_numbers_copies_and_never_overwrites(tmp_path):
    repo = Repository(tmp_path)
    weights = tmp_path / "w.pt"
    torch.save(versioned_weights(1), weights)
    assert repo.add_version("m", weights) == 1
    assert repo.add_version("m", tmp_path / "m" / "1") == 2
    assert repo.entry("m").versions == (1, 2)
    assert (tmp_path / "m" / "config.toml").exists()
    with pytest.raises(RepositoryError, match="never overwritten"):
        repo.add_version("m", weights, version=2)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(RepositoryError, match="neither"):
        repo.add_version("m", empty)
    with pytest.raises(RepositoryError, match="model name"):
        repo.add_version("../escape", weights)
    assert not [p for p in (tmp_path / "m").iterdir() if p.name.startswith(".")]


def test_version_folder_needs_an_export_or_weights(tmp_path):
    (tmp_path / "1").mkdir()
    with pytest.raises(RepositoryError, match=r"neither card\.json"):
        version_files(tmp_path / "1")


# -- the fleet ---------------------------------------------------------------------------


async def answer(f: Fleet, name: str, version: str | None = None) -> tuple[str, str]:
    """What a route does: lease, queue, and tell the fleet (which sends comparison copies)."""
    with f.lease(name, version) as runner:
        item = await runner.infer(IMAGE)
        f.answered(runner, IMAGE, item, 0.0, "ok")
    return runner.version, item.result["label"]


async def test_serves_the_newest_version_and_any_loaded_one_by_number(tmp_path):
    make_model(tmp_path, "a", versions=(1, 2), version_policy=VersionPolicy(latest=2))
    f = fleet(tmp_path)
    await f.start()
    try:
        assert await answer(f, "a") == ("2", "2005")
        assert await answer(f, "a", "1") == ("1", "1005")
        with pytest.raises(UnknownModel):
            f.pick("a", "7")
        with pytest.raises(UnknownModel):
            f.pick("nope")
        rows = {(r["name"], r["version"]): r for r in f.index()}
        assert rows["a", "2"]["role"] == "serving"
        assert rows["a", "1"]["role"] == "loaded"
    finally:
        await f.stop(1)


async def test_a_bad_entry_is_reported_and_the_others_serve(tmp_path):
    make_model(tmp_path, "good")
    make_model(tmp_path, "corrupt")
    (tmp_path / "corrupt" / "1" / "weights.pt").write_bytes(b"not a state dict")
    make_model(tmp_path, "typo")
    (tmp_path / "typo" / "config.toml").write_text("max_batch = 3\n")
    make_model(tmp_path, "empty", versions=())
    f = fleet(tmp_path)
    await f.start()
    try:
        assert await answer(f, "good") == ("1", "1005")
        reasons = {(r["name"], r["version"]): r["reason"] for r in f.index()}
        assert "cannot read weights" in reasons["corrupt", "1"]
        assert "max_batch" in reasons["typo", ""]
        assert "not valid" in reasons["typo", "1"]
        assert "no version" in reasons["empty", ""]
        with pytest.raises(Unavailable, match="cannot read weights"):
            f.pick("corrupt")
    finally:
        await f.stop(1)


async def test_load_swaps_in_a_new_version_and_a_failed_one_changes_nothing(tmp_path):
    make_model(tmp_path, "a")
    f = fleet(tmp_path)
    await f.start()
    try:
        first = f.pick("a")
        for _ in range(5):
            await answer(f, "a")  # version 1 measures its service times while it serves
        measured = list(first.runner.batcher.service_times._samples[1])
        add_weights(tmp_path, "a", 2)
        assert await f.load("a") == [2]
        inherited = f.pick("a").runner.batcher.service_times._samples
        assert list(inherited[1]) == measured[-3:]  # not its own warm-up beside version 1
        assert await answer(f, "a") == ("2", "2005")
        assert first.retiring
        assert not first.runner.ready
        (tmp_path / "a" / "3").mkdir()
        (tmp_path / "a" / "3" / "weights.pt").write_bytes(b"garbage")
        with pytest.raises(LoadFailed, match="version 2 still serves"):
            await f.load("a")
        assert await answer(f, "a") == ("2", "2005")
        with pytest.raises(UnknownModel):
            await f.load("missing")
    finally:
        await f.stop(1)


async def test_a_swap_waits_for_the_requests_that_picked_the_old_version(tmp_path):
    make_model(tmp_path, "a")
    f = fleet(tmp_path)
    await f.start()
    try:
        with f.lease("a") as old:  # a request that picked version 1 and has not queued yet
            add_weights(tmp_path, "a", 2)
            swap = asyncio.create_task(f.load("a"))
            while f.slots["a"].serving != 2:
                await asyncio.sleep(0.01)
            assert (await answer(f, "a"))[0] == "2"  # new requests: the new version
            await asyncio.sleep(0.05)
            assert not swap.done()  # the old version waits for its lease ...
            old.admit()
            assert (await old.infer(IMAGE)).result["label"] == "1005"  # ... and still serves it
        await swap
        assert not old.ready  # then it is stopped
    finally:
        await f.stop(1)


async def test_a_failed_load_is_all_or_nothing(tmp_path):
    make_model(tmp_path, "a", versions=(1, 2), version_policy=VersionPolicy(latest=2))
    f = fleet(tmp_path)
    await f.start()
    try:
        add_weights(tmp_path, "a", 3)
        (tmp_path / "a" / "3" / "weights.pt").write_bytes(b"garbage")
        with pytest.raises(LoadFailed, match="version 2 still serves"):
            await f.load("a")
        ready = {r["version"] for r in f.index() if r["state"] == "READY"}
        assert ready == {"1", "2"}
        assert await answer(f, "a") == ("2", "2005")
    finally:
        await f.stop(1)


async def test_a_load_that_makes_the_canary_newest_promotes_it(tmp_path):
    make_model(tmp_path, "a", versions=(1, 2), version_policy=VersionPolicy(specific=[1]))
    f = fleet(tmp_path)
    await f.start()
    try:
        await f.set_candidate("a", 2, "canary", 0.5)
        config = ModelConfig(architecture=FAST)  # latest 1: version 2
        write_config(tmp_path / "a" / "config.toml", config)
        assert await f.load("a") == [2]
        slot = f.slots["a"]
        assert slot.serving == 2
        assert slot.candidate is None
        assert set(slot.loaded) == {2}
        assert {(await answer(f, "a"))[0] for _ in range(20)} == {"2"}
        with pytest.raises(LoadFailed, match="no canary"):
            await f.promote("a")
    finally:
        await f.stop(1)


async def test_unload_then_load_again(tmp_path):
    make_model(tmp_path, "a")
    f = fleet(tmp_path)
    await f.start()
    try:
        await f.unload("a")
        with pytest.raises(Unavailable, match="unloaded"):
            f.pick("a")
        await f.load("a")
        assert await answer(f, "a") == ("1", "1005")
    finally:
        await f.stop(1)


async def test_thread_budget_is_explicit(tmp_path):
    make_model(tmp_path, "a", threads=2)
    make_model(tmp_path, "b", threads=2)
    f = fleet(tmp_path, cores=3)
    await f.start()
    try:
        served = [r["name"] for r in f.index() if r["state"] == "READY"]
        assert served == ["a"]
        reason = next(r["reason"] for r in f.index() if r["name"] == "b" and r["version"] == "1")
        assert "needs 2 compute thread(s)" in reason
        assert "2 of this server's 3 cores" in reason
        add_weights(tmp_path, "a", 2)
        await f.load("a")  # a swap: the version it retires does not count against it
        assert await answer(f, "a") == ("2", "2005")
    finally:
        await f.stop(1)


async def test_threads_left_at_zero_share_the_cores_and_a_canary_runs_beside(tmp_path):
    make_model(tmp_path, "x")
    make_model(tmp_path, "y", versions=(1, 2), version_policy=VersionPolicy(specific=[1]))
    make_model(tmp_path, "z", version_policy=VersionPolicy(latest=2))
    f = fleet(tmp_path, cores=6)  # 6 / 3 models; z keeps two versions: 1 each
    await f.start()
    try:
        rows = {(r["name"], r["version"]): r for r in f.index() if r["state"] == "READY"}
        assert {k: r["threads"] for k, r in rows.items()} == {
            ("x", "1"): 2,
            ("y", "1"): 2,
            ("z", "1"): 1,
        }
        await f.set_candidate("y", 2, "shadow")  # over the 6 cores, on purpose, and marked
        row = next(r for r in f.index() if r["name"] == "y" and r["version"] == "2")
        assert row["role"] == "shadow"
        assert row["oversubscribed"] is True
    finally:
        await f.stop(1)


async def test_memory_budget_refuses_with_the_figures(tmp_path):
    make_model(tmp_path, "a", memory_mb=300)
    make_model(tmp_path, "b", memory_mb=800)
    f = fleet(tmp_path, memory_budget_mb=1000)
    await f.start()
    try:
        reason = next(r["reason"] for r in f.index() if r["name"] == "b" and r["version"] == "1")
        assert "expects 800 MB" in reason
        assert "memory budget is 1000 MB" in reason
        assert await answer(f, "a") == ("1", "1005")
    finally:
        await f.stop(1)


async def test_a_load_that_takes_more_than_the_budget_is_undone(tmp_path):
    make_model(tmp_path, "a")
    kept: list[np.ndarray] = []

    async def greedy(*args):
        kept.append(np.full(16_000_000, 1.0))  # 128 MB resident, held like a model's weights
        return await load_version(*args)

    f = Fleet(Repository(tmp_path), greedy, Metrics(), FleetLimits(cores=8, memory_budget_mb=64))
    await f.start()
    try:
        reason = next(r["reason"] for r in f.index() if r["version"] == "1")
        assert "took" in reason
        assert "memory budget is 64 MB" in reason
        assert not f._live  # the runner it started is stopped
        assert f.slots["a"].measured_bytes >= 100 * 1024 * 1024  # the next try knows
    finally:
        await f.stop(1)


async def test_canary_share_shadow_and_promote_rollback(tmp_path):
    make_model(tmp_path, "a", versions=(1, 2), version_policy=VersionPolicy(specific=[1]))
    f = fleet(tmp_path)
    await f.start()
    try:
        await f.set_candidate("a", 2, "canary", 0.5)
        versions = Counter([(await answer(f, "a"))[0] for _ in range(200)])
        assert 60 < versions["2"] < 140
        await f.copies_done()
        samples = f.metrics.version_agreement.collect()[0].samples
        disagreed = sum(
            s.value
            for s in samples
            if s.name.endswith("_total")
            and s.labels == {"model": "a", "version": "2", "agree": "false"}
        )
        assert disagreed == versions["2"]  # offsets differ: every compared label differs
        await f.set_candidate("a", 2, "shadow")
        assert {(await answer(f, "a"))[0] for _ in range(20)} == {"1"}
        assert await f.promote("a") == 2
        assert await answer(f, "a") == ("2", "2005")
        assert await f.rollback("a") == 1
        assert await answer(f, "a") == ("1", "1005")
        with pytest.raises(LoadFailed, match="no earlier version"):
            await f.rollback("a")
        with pytest.raises(LoadFailed, match="already the serving"):
            await f.set_candidate("a", 1, "canary", 0.1)
    finally:
        await f.stop(1)


def test_agreement_compares_labels_and_masks():
    def item(label, masks=None):
        outputs = {} if masks is None else {"masks": masks}
        return ItemResult(outputs, {"label": label}, 0.0, 0.0, 1)

    ones = np.ones((2, 4, 4), np.float32)
    assert agreement(item("cat"), item("cat"))
    assert not agreement(item("cat"), item("dog"))
    shifted = ones.copy()
    shifted[0, :2] = 0
    assert agreement(item("cat", ones), item("cat", ones.copy()))
    assert not agreement(item("cat", ones), item("cat", shifted))


# -- the server ------------------------------------------------------------------------------


@pytest.fixture
def repo_server(tmp_path, serve_repository):
    """Servers of the repository ``tmp_path``."""
    return functools.partial(serve_repository, tmp_path)


def test_repository_api_versioned_routes_and_auth(tmp_path, repo_server):
    make_model(tmp_path, "a", versions=(1, 2), version_policy=VersionPolicy(latest=2))
    make_model(tmp_path, "broken")
    (tmp_path / "broken" / "1" / "weights.pt").write_bytes(b"")
    server = repo_server(token="s3cret", oversubscribe=True)
    auth = {"Authorization": "Bearer s3cret"}
    with httpx.Client(base_url=server.url, timeout=30, headers=auth) as c:
        assert httpx.post(f"{server.url}/v2/repository/index").status_code == 401
        index = c.post("/v2/repository/index").json()
        states = {(r["name"], r["version"]): r["state"] for r in index}
        assert states == {("a", "1"): "READY", ("a", "2"): "READY", ("broken", "1"): "UNAVAILABLE"}
        assert [r["name"] for r in c.post("/v2/repository/index", json={"ready": True}).json()] == [
            "a",
            "a",
        ]
        png = solid_png(7, (8, 8))
        body = c.post("/v1/models/a/predict", content=png).json()
        assert (body["model_version"], body["label"]) == ("2", "2007")
        body = c.post("/v1/models/a/versions/1/predict", content=png).json()
        assert (body["model_version"], body["label"]) == ("1", "1007")
        assert c.post("/v1/models/a/versions/9/predict", content=png).status_code == 404
        v2 = {
            "inputs": [
                {"name": "image", "datatype": "UINT8", "shape": [1, 8, 8, 3], "data": [7] * 192}
            ]
        }
        out = c.post("/v2/models/a/versions/1/infer", json=v2).json()
        assert out["model_version"] == "1"
        assert out["model_name"] == "a"
        assert c.get("/v2/models/a").json()["versions"] == ["1", "2"]
        assert c.post("/v1/models/broken/predict", content=png).status_code == 503
        assert c.post("/v2/repository/models/nope/load").status_code == 404
        refused = c.post("/v2/repository/models/broken/load")
        assert refused.status_code == 400
        assert "cannot read weights" in refused.json()["error"]
        assert c.post("/v2/repository/models/a/unload").status_code == 200
        assert c.post("/v1/models/a/predict", content=png).status_code == 503
        assert c.post("/v2/repository/models/a/load").json()["serving"] == "2"
        ready = httpx.get(f"{server.url}/v2/health/ready").json()
        assert ready["ready"]
        assert "broken" in ready["unavailable"]


def test_hot_swap_under_load_answers_every_request_200(tmp_path, repo_server):
    """~70 % of capacity (20 ms a batch, batches of one: 50/s; 35/s sent), two swaps while it
    runs; every answer is a 200 from a whole version (label = marker + 1000 x version)."""
    make_model(tmp_path, "a", architecture=SLOW, max_batch_size=1, max_queue=64)
    server = repo_server()
    statuses: Counter[int] = Counter()
    mixed: list[str] = []
    errors: list[str] = []
    seen: Counter[str] = Counter()
    stop = threading.Event()

    def send(i: int) -> None:
        with httpx.Client(base_url=server.url, timeout=30) as c:
            while not stop.is_set():
                started = time.monotonic()
                response = c.post("/v1/models/a/predict", content=solid_png(7, (8, 8)))
                statuses[response.status_code] += 1
                if response.status_code != 200:
                    errors.append(f"{response.status_code} {response.text[:300]}")
                if response.status_code == 200:
                    body = response.json()
                    seen[body["model_version"]] += 1
                    if body["label"] != str(7 + 1000 * int(body["model_version"])):
                        mixed.append(str(body))
                time.sleep(max(0.0, 0.2 - (time.monotonic() - started)))

    clients = [threading.Thread(target=send, args=(i,)) for i in range(7)]  # 7 x 5/s = 35/s
    for t in clients:
        t.start()
    try:
        time.sleep(1.0)
        with httpx.Client(base_url=server.url, timeout=60) as admin:
            for version in (2, 3):
                add_weights(tmp_path, "a", version)
                assert admin.post("/v2/repository/models/a/load").json()["serving"] == str(version)
                time.sleep(1.0)
    finally:
        stop.set()
        for t in clients:
            t.join()
    assert set(statuses) == {200}, (statuses, errors[:3])
    assert not mixed
    assert set(seen) == {"1", "2", "3"}


def test_canary_metrics_and_rollout_over_http(tmp_path, repo_server):
    make_model(tmp_path, "a", versions=(1, 2), version_policy=VersionPolicy(specific=[1]))
    server = repo_server()
    png = solid_png(7, (8, 8))
    with httpx.Client(base_url=server.url, timeout=30) as c:
        bad = c.post("/v2/repository/models/a/canary", json={"version": 2, "share": 2})
        assert bad.status_code == 400
        assert (
            c.post("/v2/repository/models/a/canary", json={"version": 2, "share": 0.5}).status_code
            == 200
        )
        for _ in range(40):
            assert c.post("/v1/models/a/predict", content=png).status_code == 200
        agreement_line = 'visionloop_version_agreement_total{agree="false",model="a",version="2"}'
        deadline = time.monotonic() + 30
        while agreement_line not in (text := c.get("/metrics").text):
            assert time.monotonic() < deadline, "no comparison was counted"
            time.sleep(0.05)
        assert (
            'visionloop_version_requests_total{model="a",outcome="ok",role="canary",version="2"}'
            in text
        )
        assert 'visionloop_version_role{model="a",role="canary",version="2"} 1.0' in text
        assert c.post("/v2/repository/models/a/promote").json()["serving"] == "2"
        assert c.post("/v2/repository/models/a/rollback").json()["serving"] == "1"


def test_one_models_upload_backlog_does_not_queue_ahead_of_another(tmp_path, repo_server):
    """Decoding is shared; a free decode thread takes turns between models, so an upload of b
    starts before the backlog a built up ahead of it (in FIFO order it would start last)."""
    make_model(tmp_path, "a", max_queue=64)
    make_model(tmp_path, "b")
    server = repo_server(decode_threads=1, oversubscribe=True)
    state, order, gate = server.state, [], threading.Event()
    original = state._prepare

    def gated(data, model, runner, deadline):
        order.append(runner.name)
        if len(order) == 1:
            gate.wait(timeout=30)  # a's first upload holds the one decode thread
        return original(data, model, runner, deadline)

    def until(what, check) -> None:
        deadline = time.monotonic() + 30
        while not check():
            assert time.monotonic() < deadline, what
            time.sleep(0.01)

    state._prepare = gated
    png = solid_png(7, (8, 8))
    with ThreadPoolExecutor(max_workers=13) as pool:
        backlog = [
            pool.submit(httpx.post, f"{server.url}/v1/models/a/predict", content=png, timeout=30)
            for _ in range(12)
        ]
        until("a's backlog", lambda: state._decoding["a"] == 12)
        b = pool.submit(httpx.post, f"{server.url}/v1/models/b/predict", content=png, timeout=30)
        until("b's upload", lambda: state._decoding["b"] == 1)
        gate.set()
        assert b.result().status_code == 200
        assert all(f.result().status_code == 200 for f in backlog)
    # b after the one that held the thread and at most one more of a's (FIFO: after all 12)
    assert order.index("b") <= 2


def test_a_version_with_its_own_architecture_adds_a_class(tmp_path, serve_repository):
    """catseg version 2 is a catseg_plane (its version.toml says so): the model keeps its
    name and routes, version 2 answers plane masks, version 1 refuses the class with a 400
    naming its own; version 3 is a catseg trained with a plane class (its version.toml names
    the classes) and answers a plane mask that is not weak; a version.toml that does not
    validate leaves that version unavailable with its reason."""
    from visionloop.models.catseg import SegNet
    from visionloop.serving.repository import read_version_config

    weights, trained = tmp_path / "best.pt", tmp_path / "three.pt"
    torch.save(SegNet(2, pretrained=False).state_dict(), weights)
    network = SegNet(3, pretrained=False)
    with torch.no_grad():  # the plane channel says "plane" everywhere, the others nothing
        network.classifier.weight.zero_()
        network.classifier.bias.copy_(torch.tensor([-9.0, -9.0, 9.0]))
    torch.save(network.state_dict(), trained)
    root = tmp_path / "models"
    root.mkdir()
    repository = Repository(root)
    # batch size 1 only: a short warm-up for each of the three versions
    config = ModelConfig(architecture="catseg", engine="torch", max_batch_size=1,
                         version_policy=VersionPolicy(latest=3))  # fmt: skip
    assert repository.add_version("catseg", weights, config=config) == 1
    assert repository.add_version("catseg", weights, architecture="catseg_plane") == 2
    three = ["cat", "animal", "plane"]
    assert repository.add_version("catseg", trained, classes=three) == 3
    assert read_version_config(root / "catseg" / "2").architecture == "catseg_plane"
    assert read_version_config(root / "catseg" / "1").architecture is None
    assert read_version_config(root / "catseg" / "3").classes == three
    assert repository.add_version("broken", weights, config=config) == 1
    (root / "broken" / "1" / "version.toml").write_text('colour = "red"\n')
    server = serve_repository(root, oversubscribe=True)
    png = solid_png(7, (64, 64))
    with httpx.Client(base_url=server.url, timeout=60) as c:
        states = {(r["name"], r["version"]): (r["state"], r.get("reason", ""))
                  for r in c.post("/v2/repository/index").json()}  # fmt: skip
        assert states["catseg", "1"][0] == states["catseg", "2"][0] == "READY"
        assert states["broken", "1"][0] == "UNAVAILABLE"
        assert "not a valid version config: colour" in states["broken", "1"][1]
        two = c.post("/v1/models/catseg/versions/2/predict?masks=rle&classes=plane", content=png)
        one = c.post("/v1/models/catseg/versions/1/predict?classes=plane", content=png)
        metadata = c.get("/v2/models/catseg/versions/2").json()
        trained_answer = c.post("/v1/models/catseg/versions/3/predict", content=png)
        trained_metadata = c.get("/v2/models/catseg/versions/3").json()
        assert states["catseg", "3"][0] == "READY"
    assert two.status_code == 200, two.text
    assert set(two.json()["masks"]) == {"plane"}
    assert set(two.json()["areas"]) == {"cat", "animal", "plane"}
    assert one.status_code == 400
    assert one.json()["error"] == (
        "model 'catseg' version 1 has no class 'plane'; its classes are cat, animal"
    )
    assert "plane" in metadata["weak"]
    assert trained_answer.status_code == 200, trained_answer.text
    assert trained_answer.json()["areas"] == {"cat": 0.0, "animal": 0.0, "plane": 1.0}
    assert trained_answer.json()["label"] == "plane"
    assert not trained_metadata.get("weak")


def test_agreement_of_versions_with_different_classes_is_on_the_classes_they_share():
    def item(label, masks):
        return ItemResult({"masks": masks}, {"label": label}, 0.0, 0.0, 1)

    old = np.zeros((2, 4, 4), np.uint8)
    old[0, :2] = 1  # cat
    new = np.zeros((3, 4, 4), np.uint8)
    new[0, :2] = 1  # the same cat, and a plane the old version cannot see
    new[2, 3] = 1
    two, three = ("cat", "animal"), ("cat", "animal", "plane")
    assert agreement(item("cat", old), item("cat", new), two, three)
    assert not agreement(item("cat", old), item("cat", new))  # shapes differ, classes unknown
    moved = new.copy()
    moved[0] = 0
    moved[0, 2:] = 1
    assert not agreement(item("cat", old), item("cat", moved), two, three)
    only_plane = np.zeros((3, 4, 4), np.uint8)
    only_plane[2] = 1
    assert agreement(item("none", np.zeros_like(old)), item("plane", only_plane), two, three)
    assert not agreement(item("cat", old), item("plane", only_plane), two, three)  # cat lost
    swapped = old[::-1].copy()  # the same masks, channels in the other order
    assert agreement(item("cat", old), item("cat", swapped), two, two[::-1])
    assert not agreement(item("cat", old), item("cat", swapped), two, two)
