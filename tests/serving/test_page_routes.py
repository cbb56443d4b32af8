"""The page's routes: the page and its two files with a strict content policy, nothing else
under /page/; /v1/models behind the API token; /v1/stats as cumulative counters, and the
window arithmetic the live panel uses (rates and percentiles between two snapshots)."""

from __future__ import annotations

import math

import pytest

from tests.live_server import client
from visionloop.serving.metrics import Metrics
from visionloop.serving.stats import quantile, snapshot, window


def test_the_page_and_its_files_are_served_with_a_strict_policy(serve):
    server = serve()
    with client(server) as http:
        page = http.get("/")
        script = http.get("/page/page.js")
        style = http.get("/page/page.css")
        other = http.get("/page/..%2Fpage.py")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert "default-src 'none'" in page.headers["content-security-policy"]
    assert "https://" not in page.text  # nothing from elsewhere
    assert script.headers["content-type"].startswith("text/javascript")
    assert 'fetch("/v1/stats"' in script.text
    assert style.headers["content-type"].startswith("text/css")
    assert other.status_code == 404


def test_models_needs_the_token_when_one_is_set(serve, sample_bytes):
    server = serve(api_token="s3cret")
    with client(server) as http:
        refused = http.get("/v1/models")
        listed = http.get("/v1/models", headers={"authorization": "Bearer s3cret"})
        http.post("/v1/models/fake/predict", content=sample_bytes["cat_chelsea.png"],
                  headers={"authorization": "Bearer s3cret"})  # fmt: skip
        stats = http.get("/v1/stats").json()
    assert refused.status_code == 401
    body = listed.json()
    assert [m["name"] for m in body["models"]] == ["fake"]
    assert body["models"][0]["serving"]["name"] == "fake"
    assert body["max_upload_bytes"] > 0
    fake = stats["models"]["fake"]
    assert fake["requests"]["200"] == 1
    assert fake["batch_size"]["1.0"] == 1
    assert fake["queue_depth"] == 0


def test_quantiles_and_rates_between_two_snapshots():
    metrics = Metrics()
    for seconds in (0.004, 0.004, 0.2):
        metrics.latency.labels("m", "v1").observe(seconds)
        metrics.requests.labels("m", "v1", "200").inc()
    before = snapshot(metrics)
    for _ in range(10):
        metrics.latency.labels("m", "v1").observe(0.03)
        metrics.requests.labels("m", "v1", "200").inc()
    metrics.refusals.labels("m", "queue_full").inc(5)
    after = snapshot(metrics)
    after["time"] = before["time"] + 2.0
    w = window(before, after, "m")
    assert w["answers_per_s"] == pytest.approx(5.0)
    assert w["refusals_per_s"] == pytest.approx(2.5)
    assert 0.025 < w["p50_s"] <= 0.05  # only the window's ten 30 ms answers count
    assert 0.025 < w["p99_s"] <= 0.05
    assert quantile({"0.1": 0.0, "+Inf": 0.0}, 0.5) is None
    assert quantile({"1.0": 2.0, "2.0": 4.0, "+Inf": 4.0}, 0.75) == pytest.approx(1.5)
    assert math.isclose(quantile({"1.0": 0.0, "+Inf": 3.0}, 0.5), 1.0)
