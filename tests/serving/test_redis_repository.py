"""A model repository served through Redis, for real: two API replicas (uvicorn on loopback)
and two ``visionloop worker --model-repository`` processes on one redis-server
(:mod:`tests.serving.redis_cluster`). Versions roll out across the workers with the repository
API and the ``visionloop repo`` CLI sent to one replica, under a steady load on both in which
no request fails; a replica started before any worker (or without Redis); then the rollout
records' rules on their own, and two verbs racing on one record.

No test depends on a timing margin: every wait is for a state (with a generous time-out that
only turns a hang into a failure).

The models are :class:`tests.serving.fakes.VersionedModel`: a version's weights add 1000 x its
number to the label, so every answer says which version computed it.
"""

from __future__ import annotations

import socket
import time
import uuid
from collections import Counter
from dataclasses import replace
from pathlib import Path

import httpx
import pytest

from tests.live_server import LiveServer
from tests.serving.redis_cluster import (
    FAST,
    RepositoryWorker,
    SteadyLoad,
    add_version,
    announcing,
    new_repository,
    predict,
    replica_app,
    repo_cli,
    settled,
    wait_for,
)
from visionloop.serving.repository import ModelConfig, VersionPolicy, write_config
from visionloop.serving.transport import rollout
from visionloop.serving.transport.redis_streams import Keys
from visionloop.serving.versions import LoadFailed, UnknownModel


@pytest.fixture
def cluster(redis_server, tmp_path):
    """A repository (model ``m``, version 1), two workers and two API replicas."""
    root = new_repository(tmp_path)
    prefix = f"test-{uuid.uuid4().hex[:8]}"
    workers = [
        RepositoryWorker(root, redis_server.url, prefix, name, tmp_path / f"{name}.log")
        for name in ("a", "b")
    ]
    replicas = [LiveServer(replica_app(root, redis_server.url, prefix)) for _ in range(2)]

    class Cluster:
        pass

    cluster = Cluster()
    cluster.root, cluster.replicas, cluster.workers = root, replicas, workers
    cluster.replica = replicas[0]
    cluster.redis, cluster.keys = redis_server.client(), Keys(prefix, "m")
    cluster.prefix = prefix
    try:
        for replica in replicas:
            replica.start()
        yield cluster
    finally:
        for replica in replicas:
            replica.stop()
        for worker in workers:
            worker.terminate()


def test_a_rollout_sent_to_one_replica_reroutes_both_and_fails_no_request(cluster):
    replica, other = cluster.replicas
    wait_for(lambda: announcing(cluster, 1) == 2, "both workers to announce version 1")
    with httpx.Client(base_url=replica.url, timeout=60) as http:
        first = predict(http)
        assert first.status_code == 200, first.text
        assert (first.json()["model_version"], first.json()["label"]) == ("1", "1005")
        rows = http.post("/v2/repository/index", json={}).json()
        (row,) = [r for r in rows if r["version"] == "1"]
        assert (row["state"], row["role"]) == ("READY", "serving")

        with SteadyLoad(replica.url) as load, SteadyLoad(other.url) as load2:
            # load: version 2 lands in the folder, and the CLI rolls it out (via replica 1)
            add_version(cluster.root, "m", 2)
            answer = repo_cli(replica.url, "load", "m")
            assert (answer["loaded"], answer["serving"]) == (["2"], "2")
            settled(load, {"2"})
            settled(load2, {"2"})  # replica 2 follows the record replica 1 wrote
            wait_for(lambda: announcing(cluster, 2) == 2, "both workers to announce version 2")
            # the workers drop version 1 only once both replicas have confirmed the switch
            wait_for(lambda: announcing(cluster, 1) == 0, "both workers to drop version 1")
            settled(load, {"2"})
            settled(load2, {"2"})

            # canary: half of the unversioned requests go to version 3, on both replicas
            add_version(cluster.root, "m", 3)
            canary = http.post("/v2/repository/models/m/canary", json={"version": 3, "share": 0.5})
            assert canary.status_code == 200, canary.text
            assert (canary.json()["canary"], canary.json()["serving"]) == ("3", "2")
            for each in (load, load2):
                wait_for(lambda each=each: "3" in {v for _, v in each.answers[-40:]}, "canary")
                start = each.mark()
                wait_for(lambda each=each, start=start: len(each.answers) > start + 40, "more")
                assert set(each.since(start)) <= {"2", "3"}

            # rollback: drops the canary; again: back to version 1
            assert repo_cli(replica.url, "rollback", "m")["serving"] == "2"
            back = http.post("/v2/repository/models/m/rollback")
            assert back.status_code == 200, back.text
            assert back.json()["serving"] == "1"
            start = load.mark()
            wait_for(lambda: len(load.answers) > start + 10, "answers after the rollback")
            assert set(load.since(start)) == {"1"}
            settled(load2, {"1"})
            wait_for(lambda: announcing(cluster, 1) == 2, "both workers to serve version 1")

        answers = load.answers + load2.answers
        statuses = Counter(status for status, _ in answers)
        versions = Counter(version for _, version in answers)
        print(f"\nrollout under load: statuses {dict(statuses)}, versions {dict(versions)}")
        assert statuses == Counter({200: len(answers)})
        assert {"1", "2", "3"} <= set(versions)
        assert {"1", "2", "3"} <= {v for _, v in load2.answers}

        # versioned routes go to their version's stream; an unknown version is 404
        pinned = predict(http, "/v1/models/m/versions/1/predict")
        assert pinned.status_code == 200
        assert pinned.json()["model_version"] == "1"
        assert predict(http, "/v1/models/m/versions/9/predict").status_code == 404
        body = {
            "inputs": [
                {"name": "image", "datatype": "UINT8", "shape": [1, 8, 8, 3], "data": [5] * 192}
            ]
        }
        assert http.post("/v2/models/m/versions/9/infer", json=body).status_code == 404
        infer = http.post("/v2/models/m/versions/1/infer", json=body)
        assert infer.status_code == 200, infer.text
        assert infer.json()["model_version"] == "1"
        assert predict(http, "/v1/models/nope/predict").status_code == 404
        assert http.post("/v2/repository/models/nope/load").status_code == 404
        unknown = http.post("/v2/repository/models/m/canary", json={"version": 9})
        assert unknown.status_code == 404


def test_a_version_no_worker_can_load_changes_nothing_then_shadow_promote_unload(cluster):
    replica = cluster.replica
    wait_for(lambda: announcing(cluster, 1) == 2, "both workers to announce version 1")
    add_version(cluster.root, "m", 2, weights=False)
    with httpx.Client(base_url=replica.url, timeout=60) as http:
        refused = http.post("/v2/repository/models/m/load")
        assert refused.status_code == 400, refused.text
        error = refused.json()["error"]
        assert "failed to load on every live worker" in error
        assert "version 1 still serves" in error
        answer = predict(http)
        assert answer.status_code == 200
        assert answer.json()["model_version"] == "1"
        record = rollout.Rollout.from_json(cluster.redis.get(cluster.keys.rollout))
        assert record.serving == 1
        rows = {r["version"]: r for r in http.post("/v2/repository/index").json()}
        assert rows["1"]["state"] == "READY"
        assert rows["1"]["workers"] == 2
        assert rows["2"]["state"] != "READY"
        assert "failed to load" in rows["2"]["reason"]
        assert announcing(cluster, 1) == 2  # neither worker dropped it

        # a shadow answers nothing; promoted, it serves; unloaded, nothing does
        add_version(cluster.root, "m", 3)
        shadow = http.post("/v2/repository/models/m/shadow", json={"version": 3})
        assert shadow.status_code == 200, shadow.text
        assert {predict(http).json()["model_version"] for _ in range(10)} == {"1"}
        promoted = http.post("/v2/repository/models/m/promote")
        assert promoted.status_code == 200
        assert promoted.json()["serving"] == "3"
        assert {predict(http).json()["model_version"] for _ in range(10)} == {"3"}
        assert http.post("/v2/repository/models/m/promote").status_code == 400  # no candidate
        assert http.post("/v2/repository/models/m/unload").status_code == 200
        assert predict(http).status_code == 503
        rows = http.post("/v2/repository/index", json={"ready": True}).json()
        # nothing serves now: any version still READY is one the workers drain and unload (3,
        # or 1 if they had not dropped it since 3 was promoted; 2 never loaded); they may have
        # finished already, then no row is READY
        assert {(r["version"], r["role"]) for r in rows} <= {("1", "draining"), ("3", "draining")}

        def ready() -> list:
            return http.post("/v2/repository/index", json={"ready": True}).json()

        wait_for(lambda: ready() == [], "the workers to unload every version")
        # A draining version leaves the index at once; its workers' heartbeats for it stop
        # only when the drain ends.
        wait_for(lambda: announcing(cluster, 3) == 0, "the workers to stop version 3")


def test_a_replica_started_before_any_worker_says_why_and_answers_503(redis_server, tmp_path):
    root = new_repository(tmp_path)
    prefix = f"test-{uuid.uuid4().hex[:8]}"
    replica = LiveServer(replica_app(root, redis_server.url, prefix)).start(wait_ready=False)
    worker = None
    try:
        with httpx.Client(base_url=replica.url, timeout=60) as http:

            def rows() -> dict[str, dict]:
                return {r["version"]: r for r in http.post("/v2/repository/index").json()}

            wait_for(lambda: rows()["1"]["state"] == "LOADING", "the replica's first sync")
            assert "waiting for a live worker" in rows()["1"]["reason"]
            refused = predict(http)
            assert refused.status_code == 503, refused.text
            assert "no live worker" in refused.json()["error"]
            # a verb with no worker: recorded, pending (202, exit 3), with the 200's fields
            pending = repo_cli(replica.url, "load", "m", code=3)
            assert pending["loaded"] == ["1"]
            assert "no live worker" in pending["pending"]

            worker = RepositoryWorker(root, redis_server.url, prefix, "late", tmp_path / "w.log")
            wait_for(lambda: predict(http).status_code == 200, "the worker to serve version 1")
            assert predict(http).json()["model_version"] == "1"
    finally:
        replica.stop()
        if worker is not None:
            worker.terminate()


def test_a_replica_without_redis_lists_its_models_and_answers_503(tmp_path):
    root = new_repository(tmp_path)
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        url = f"redis://127.0.0.1:{sock.getsockname()[1]}/0"
    replica = LiveServer(replica_app(root, url, "test-down")).start(wait_ready=False)
    try:
        with httpx.Client(base_url=replica.url, timeout=60) as http:
            rows = {r["version"]: r for r in http.post("/v2/repository/index").json()}
            assert rows["1"]["state"] == "UNAVAILABLE"
            assert rows["1"]["reason"] == "waiting for Redis"
            refused = predict(http)
            assert refused.status_code == 503, refused.text
            assert "waiting for Redis" in refused.json()["error"]
    finally:
        replica.stop()


# -- the rollout records' rules ----------------------------------------------------------------


def entry(tmp_path: Path, versions=(1, 2, 3), **config):
    from visionloop.serving.repository import Repository

    (tmp_path / "m").mkdir(exist_ok=True)
    write_config(tmp_path / "m" / "config.toml", ModelConfig(architecture=FAST, **config))
    for version in versions:
        add_version(tmp_path, "m", version)
    return Repository(tmp_path).entry("m")


def test_the_verbs_as_record_changes(tmp_path):
    e = entry(tmp_path, versions=(1, 2))
    first = rollout.initial(e)
    assert (first.generation, first.serving, first.versions) == (1, 2, (2,))
    canary = rollout.with_candidate(first, e, 1, "canary", 0.25)
    assert canary.wanted() == {1, 2}
    assert canary.candidate.share == 0.25
    assert rollout.Rollout.from_json(canary.to_json()) == canary
    promoted = rollout.promoted(canary, "m")
    assert (promoted.serving, promoted.versions, promoted.previous) == (1, (1,), (2,))
    back = rollout.rolled_back(promoted, e)
    assert (back.serving, back.versions, back.previous) == (2, (2,), ())
    gone = rollout.unloaded(back)
    assert gone.serving is None
    assert gone.wanted() == set()
    again = rollout.loaded(gone, e)
    assert (again.serving, again.generation) == (2, 6)


def test_the_verbs_refuse_what_the_fleet_refuses(tmp_path):
    e = entry(tmp_path, versions=(1, 2), version_policy=VersionPolicy(latest=2))
    record = rollout.initial(e)
    assert record.versions == (1, 2)
    with pytest.raises(UnknownModel, match="no version 7"):
        rollout.with_candidate(record, e, 7, "shadow")
    with pytest.raises(LoadFailed, match="already the serving one"):
        rollout.with_candidate(record, e, 2, "canary", 0.1)
    with pytest.raises(LoadFailed, match="share"):
        rollout.with_candidate(record, e, 1, "canary", 0.0)
    with pytest.raises(LoadFailed, match="no canary or shadow"):
        rollout.promoted(record, "m")
    with pytest.raises(LoadFailed, match="no earlier version"):
        rollout.rolled_back(record, e)
    with pytest.raises(ValueError, match="not a rollout record"):
        rollout.Rollout.from_json(b'{"serving": 1}')


async def test_two_verbs_racing_on_one_record(redis_server, tmp_path):
    """Compare-and-set: a verb whose record changed under it computes its change again on the
    new record (both verbs take effect); one that keeps losing gives up with a conflict."""
    import redis.asyncio as aioredis

    e = entry(tmp_path, versions=(1, 2, 3), version_policy=VersionPolicy(latest=2))
    prefix = f"test-{uuid.uuid4().hex[:8]}"
    client = aioredis.Redis.from_url(redis_server.url)
    sync = redis_server.client()
    store = rollout.RolloutStore(client, prefix)
    key = Keys(prefix, "m").rollout
    try:
        first = await store.current(e)
        assert (first.generation, first.serving, first.versions) == (1, 3, (2, 3))
        calls = []

        def canary_after_a_rival_shadow(old: rollout.Rollout) -> rollout.Rollout:
            calls.append(old)
            if len(calls) == 1:  # another replica's verb lands between the read and the write
                rival = rollout.with_candidate(old, e, 2, "shadow")
                sync.set(key, rival.to_json())
            return rollout.with_candidate(old, e, 1, "canary", 0.5)

        old, new = await store.update(e, canary_after_a_rival_shadow)
        assert [c.generation for c in calls] == [1, 2]  # computed again on the rival's record
        assert old.candidate == rollout.Candidacy(2, "shadow")
        assert (new.generation, new.candidate) == (3, rollout.Candidacy(1, "canary", 0.5))
        assert rollout.Rollout.from_json(sync.get(key)) == new

        # restore only over the record it expects
        assert not await store.restore("m", old, first)
        assert await store.restore("m", new, old)
        assert rollout.Rollout.from_json(sync.get(key)).generation == 4

        def always_overtaken(old: rollout.Rollout) -> rollout.Rollout:
            sync.set(key, replace(old, generation=old.generation + 100).to_json())
            return rollout.unloaded(old)

        with pytest.raises(rollout.RolloutConflict, match="kept changing"):
            await store.update(e, always_overtaken)
    finally:
        await client.aclose()
        sync.close()


async def test_no_record_is_written_while_nothing_would_serve(redis_server, tmp_path):
    import redis.asyncio as aioredis

    from visionloop.serving.repository import Repository

    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.toml").write_text("architecture = [")  # half written
    client = aioredis.Redis.from_url(redis_server.url)
    store = rollout.RolloutStore(client, f"test-{uuid.uuid4().hex[:8]}")
    try:
        assert await store.current(Repository(tmp_path).entry("m")) is None
        assert await store.read("m") == (None, None)  # nothing written: no record yet
    finally:
        await client.aclose()


def test_a_candidate_the_record_holds_may_be_gone_from_the_folder(tmp_path):
    import shutil

    from visionloop.serving.repository import Repository

    e = entry(tmp_path, versions=(1, 2), version_policy=VersionPolicy(latest=2))
    record = rollout.initial(e)
    shutil.rmtree(tmp_path / "m" / "1")
    gone = Repository(tmp_path).entry("m")
    shadow = rollout.with_candidate(record, gone, 1, "shadow")  # as the in-process fleet allows
    assert shadow.candidate == rollout.Candidacy(1, "shadow")
    with pytest.raises(UnknownModel):  # not held, not in the folder
        rollout.with_candidate(replace(record, versions=(2,)), gone, 1, "shadow")


async def test_generations_never_go_back_when_the_record_is_lost(redis_server, tmp_path):
    """A record written over a deleted (or unreadable) one starts above the last generation,
    so replicas' confirmations of the old ones never count for it."""
    import redis.asyncio as aioredis

    e = entry(tmp_path, versions=(1, 2))
    prefix = f"test-{uuid.uuid4().hex[:8]}"
    client = aioredis.Redis.from_url(redis_server.url)
    store = rollout.RolloutStore(client, prefix)
    key = Keys(prefix, "m").rollout
    try:
        assert (await store.current(e)).generation == 1
        _, canary = await store.update(e, lambda old: rollout.with_candidate(old, e, 1, "shadow"))
        assert canary.generation == 2
        await client.delete(key)
        assert (await store.current(e)).generation == 3  # the default, above 2
        await client.set(key, b"not a record")
        _, loaded = await store.update(e, lambda old: rollout.loaded(old, e))
        assert loaded.generation == 4
        assert rollout.Rollout.from_json(await client.get(key)) == loaded
    finally:
        await client.aclose()


async def test_a_draining_version_the_record_wants_again_serves_on(redis_server, tmp_path):
    """A version whose draining began is no longer announced; if the record asks for it again
    before it stops (a quick rollback), it serves on and is announced again."""
    import asyncio
    import types

    from tests.serving.transports import redis_settings, wait_until
    from visionloop.serving.repository import Repository
    from visionloop.serving.transport.redis_repository_worker import RepositoryWorker, _Version

    e = entry(tmp_path, versions=(1, 2))
    settings = redis_settings(redis_server.url)
    node = RepositoryWorker(Repository(tmp_path), settings, drain_timeout_s=600)
    keys = Keys(settings.prefix, "m", 1)
    stop = asyncio.Event()
    fake = types.SimpleNamespace(keys=keys, announce=True, counts={})
    version = _Version(fake, stop, asyncio.create_task(stop.wait()))  # type: ignore[arg-type]
    node.serving["m", 1] = version
    sync = redis_server.client()
    try:
        record = await node.store.current(e)  # serves 2: version 1 is not wanted
        sync.zadd(keys.versions, {"1": time.time()})
        sync.xadd(keys.requests, {"job": "queued"})  # a backlog: it drains until it is gone
        node._retire("m", 1, version)
        await wait_until(lambda: sync.zscore(keys.versions, "1") is None, what="unannounced")
        assert (version.retiring, fake.announce) == (True, False)
        await node.store.update(e, lambda old: rollout.with_candidate(old, e, 1, "shadow"))
        await wait_until(lambda: not version.retiring, what="the retirement to be cancelled")
        assert fake.announce
        assert not stop.is_set()
        assert node.serving["m", 1] is version

        sync.set(keys.rollout, record.to_json())  # dropped again, and its backlog is gone
        sync.delete(keys.requests)
        node._retire("m", 1, version)
        await wait_until(lambda: ("m", 1) not in node.serving, what="version 1 to stop")
        assert stop.is_set()
    finally:
        stop.set()
        await asyncio.gather(*node._retiring, return_exceptions=True)
        await node._client.aclose()
        sync.close()


async def test_a_version_that_crashed_is_loaded_again_after_a_backoff(redis_server, tmp_path):
    """A crash is published with its reason but does not wait for the record to change (as a
    failed load does): the version is loaded again after a backoff."""
    import asyncio
    import types

    from tests.serving.transports import redis_settings, wait_until
    from visionloop.serving.repository import Repository
    from visionloop.serving.transport.redis_repository_worker import RepositoryWorker, _Version

    e = entry(tmp_path, versions=(1,))
    settings = redis_settings(redis_server.url)
    node = RepositoryWorker(Repository(tmp_path), settings)

    async def crash() -> None:
        raise RuntimeError("boom")

    task = asyncio.create_task(crash())
    await asyncio.gather(task, return_exceptions=True)
    fake = types.SimpleNamespace(keys=Keys(settings.prefix, "m", 1), announce=True, counts={})
    node.serving["m", 1] = _Version(fake, asyncio.Event(), task)  # type: ignore[arg-type]
    try:
        record = await node.store.current(e)
        await node._forget_crashed({"m": record})
        assert ("m", 1) not in node.serving
        failures = await node._client.hgetall(Keys(settings.prefix, "m").failures)
        assert "boom" in rollout.failures_for(failures, 1, record.generation)[node.name]
        assert not node._should_load("m", 1, record)  # not at once
        await wait_until(lambda: node._should_load("m", 1, record), what="the backoff to end")
    finally:
        await node._client.aclose()
