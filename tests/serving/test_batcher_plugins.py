"""Batching policies are a table: a policy registered by name is used by the batcher, accepted
by the settings and the CLI and served over HTTP; an unknown name is one clear line."""

from __future__ import annotations

from typing import ClassVar

import pytest
from pydantic import ValidationError
from typer.testing import CliRunner

from tests.cli_checks import assert_one_line_error
from tests.live_server import client
from tests.serving.fakes import solid_png
from tests.serving.test_api_v1 import post_many
from tests.serving.test_batcher import FakeClock, ids, job
from visionloop.cli import app
from visionloop.serving.adaptive import AdaptivePolicy, Plan
from visionloop.serving.batcher import (
    POLICIES,
    Batcher,
    BatchPolicy,
    DeadlineUnreachable,
    FixedPolicy,
    Policy,
)
from visionloop.settings import ServeSettings


class Lifo:
    """Newest first, one at a time, at once; refuses deadlines under 500 ms and expires a job
    with 100 ms or less left. Counts the jobs it chose (in every instance)."""

    chosen: ClassVar[list[object]] = []

    def refuse(self, batcher, now, deadline):
        return f"only {(deadline - now) * 1e3:.0f} ms to go" if deadline - now < 0.5 else None

    def margin(self, batcher):
        return 0.1

    def plan(self, batcher, now):
        return Plan(take=1)

    def choose(self, batcher, now, count):
        newest = list(batcher.jobs)[-1]
        Lifo.chosen.append(newest.id)
        return [newest]


@pytest.fixture
def lifo(monkeypatch):
    monkeypatch.setitem(POLICIES, "lifo", Lifo)
    monkeypatch.setattr(Lifo, "chosen", [])
    return Lifo


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def test_the_table_holds_the_two_built_in_policies():
    assert list(POLICIES) == ["fixed", "adaptive"]
    for name, make in POLICIES.items():
        rule: Policy = make()
        assert isinstance(rule, (FixedPolicy, AdaptivePolicy)), name
    assert ServeSettings().policy == "adaptive"
    assert BatchPolicy().kind == "fixed"


def test_a_registered_policy_decides_for_the_batcher_by_name(lifo, clock):
    batcher: Batcher[str] = Batcher(BatchPolicy(max_batch_size=4, kind="lifo"), clock)
    for name in "abc":
        batcher.submit(job(clock, name))
    assert [ids(batcher.poll().batch) for _ in range(3)] == [["c"], ["b"], ["a"]]
    assert lifo.chosen == ["c", "b", "a"]
    # its refusal, with its own reason
    with pytest.raises(DeadlineUnreachable, match="only 300 ms to go"):
        batcher.submit(job(clock, "hurried", timeout_ms=300))
    # its expiry margin: 100 ms before the deadline
    batcher.submit(job(clock, "d", timeout_ms=600))
    batcher.submit(job(clock, "e"))
    clock.advance(499)
    decision = batcher.poll()
    assert (ids(decision.expired), ids(decision.batch)) == ([], ["e"])  # d has 101 ms left
    clock.advance(1)
    assert ids(batcher.poll().expired) == ["d"]


def test_each_batcher_gets_its_own_policy_instance(clock):
    one: Batcher[str] = Batcher(BatchPolicy(kind="adaptive"), clock)
    two: Batcher[str] = Batcher(BatchPolicy(kind="adaptive"), clock)
    assert isinstance(one.rule, AdaptivePolicy)
    assert one.rule is not two.rule


def test_an_unknown_policy_is_one_line_listing_the_known_ones(clock):
    with pytest.raises(ValueError, match=r"^kind must be one of fixed, adaptive, got 'smart'$"):
        BatchPolicy(kind="smart")
    with pytest.raises(ValidationError) as raised:
        ServeSettings(policy="smart")
    assert "policy must be one of fixed, adaptive, got 'smart'" in str(raised.value)
    result = CliRunner().invoke(app, ["serve", "--policy", "smart"])
    assert_one_line_error(result, "policy must be one of fixed, adaptive, got 'smart'")


def test_a_registered_policy_is_a_valid_setting(lifo, monkeypatch):
    assert ServeSettings(policy="lifo").policy == "lifo"
    monkeypatch.setenv("VISIONLOOP_POLICY", "lifo")
    assert ServeSettings().policy == "lifo"


def test_a_registered_policy_serves_http_by_name(lifo, serve):
    # With fixed or adaptive, eight requests at once and a 200 ms delay would share batches.
    server = serve(policy="lifo", max_batch_size=8, max_delay_ms=200)
    markers = list(range(20, 28))
    responses = post_many(f"{server.url}/v1/models/fake/predict", [solid_png(m) for m in markers])
    assert [r.status_code for r in responses] == [200] * len(markers)
    assert [r.json()["label"] for r in responses] == [str(m) for m in markers]
    assert {r.json()["batch_size"] for r in responses} == {1}
    assert len(lifo.chosen) == len(markers)
    with client(server) as c:  # its refusal is the 503 every policy refusal is
        refused = c.post(
            "/v1/models/fake/predict", content=solid_png(30), headers={"X-Timeout-Ms": "300"}
        )
    assert refused.status_code == 503
    assert refused.json()["type"] == "DeadlineUnreachable"
