"""Monitoring a team can deploy: the shipped rules pass `promtool check rules` and their unit
tests (`promtool test rules`); a real Prometheus on loopback scrapes a running server, loads
the rules, and its query API returns the batch-size histogram the server counted; the Grafana
dashboard is well formed and asks only for series the server exports or the rules record.

CI installs Debian's prometheus package and sets VISIONLOOP_REQUIRE_PROMETHEUS=1, so there a
missing binary fails instead of skipping."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import time
from pathlib import Path

import httpx
import pytest
import yaml

from tests.live_server import client

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "deploy" / "prometheus" / "visionloop.rules.yml"
RULE_TESTS = ROOT / "deploy" / "prometheus" / "visionloop.rules.test.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "visionloop-dashboard.json"


def _binary(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        if os.environ.get("VISIONLOOP_REQUIRE_PROMETHEUS") == "1":
            pytest.fail(f"{name} is required: apt-get install prometheus")
        pytest.skip(f"no {name}")
    return found


def test_the_rules_pass_promtool_check_and_their_unit_tests():
    promtool = _binary("promtool")
    checked = subprocess.run([promtool, "check", "rules", str(RULES)], capture_output=True,
                             text=True, timeout=60)  # fmt: skip
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "SUCCESS: 15 rules found" in checked.stdout
    tested = subprocess.run([promtool, "test", "rules", RULE_TESTS.name], capture_output=True,
                            text=True, timeout=120, cwd=RULE_TESTS.parent)  # fmt: skip
    assert tested.returncode == 0, tested.stdout + tested.stderr


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_a_real_prometheus_scrapes_the_server_and_returns_its_batch_histogram(
    serve, sample_bytes, tmp_path
):
    prometheus = _binary("prometheus")
    server = serve()
    target = server.url.removeprefix("http://")
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(RULES)],
        "scrape_configs": [{"job_name": "visionloop", "static_configs": [{"targets": [target]}]}],
    }
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = _free_port()
    process = subprocess.Popen(
        [prometheus, f"--config.file={tmp_path / 'prometheus.yml'}",
         f"--storage.tsdb.path={tmp_path / 'data'}", f"--web.listen-address=127.0.0.1:{port}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    api = f"http://127.0.0.1:{port}"
    try:

        def query(expr: str) -> list[dict]:
            answer = httpx.get(f"{api}/api/v1/query", params={"query": expr}, timeout=5).json()
            assert answer["status"] == "success", answer
            return answer["data"]["result"]

        def until(expr: str, ok) -> list[dict]:
            while time.monotonic() < deadline:
                try:
                    found = query(expr)
                except (httpx.HTTPError, ValueError):  # not up yet: no answer, or not JSON
                    found = []
                if found and ok(found):
                    return found
                assert process.poll() is None, process.stderr.read().decode()  # type: ignore[union-attr]
                time.sleep(0.5)
            raise AssertionError(f"{expr}: nothing as expected within the time")

        deadline = time.monotonic() + 120
        photo = sample_bytes["cat_chelsea.png"]
        with client(server) as http:
            # one answer before the first scrape, four after: the counters then grow between
            # two samples, which rate() needs (a series starting at 5 has no rate)
            assert http.post("/v1/models/fake/predict", content=photo).status_code == 200
            until('visionloop_requests_total{model="fake"}', lambda r: True)
            for _ in range(4):
                assert http.post("/v1/models/fake/predict", content=photo).status_code == 200
        buckets = until('visionloop_batch_size_bucket{model="fake"}',
                        lambda r: any(float(b["value"][1]) >= 5 for b in r))  # fmt: skip
        by_le = {b["metric"]["le"]: float(b["value"][1]) for b in buckets}
        assert by_le.get("1.0") == 5.0, by_le  # five single-image batches
        assert by_le["+Inf"] == 5.0
        groups = httpx.get(f"{api}/api/v1/rules", timeout=5).json()["data"]["groups"]
        assert {g["name"] for g in groups} == {"visionloop.recording", "visionloop.alerts"}
        assert all(r["health"] != "err" for g in groups for r in g["rules"])
        # the recording rules produce what the alerts read, from this server's own series
        until(
            'model:visionloop_queue_saturation:ratio{model="fake"}',
            lambda r: float(r[0]["value"][1]) == 0.0,
        )  # fmt: skip (idle: nothing waits)
        until(
            'model:visionloop_refusal_ratio:rate5m{model="fake"}',
            lambda r: float(r[0]["value"][1]) == 0.0,
        )  # fmt: skip (five 200s, none refused)
        answers = until('model:visionloop_answers:rate5m{model="fake"}',
                        lambda r: float(r[0]["value"][1]) > 0)  # fmt: skip
        assert float(answers[0]["value"][1]) > 0
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_the_dashboard_is_well_formed_and_queries_what_exists():
    """Grafana itself was not run here: the JSON is checked for the structure Grafana's
    import needs and for series names the server exports or the rules record."""
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["title"]
    assert dashboard["uid"]
    assert dashboard["schemaVersion"] >= 36
    panels = dashboard["panels"]
    assert {p["title"] for p in panels} >= {
        "Queue depth", "Batch size", "Answers per second", "Latency p50 / p99",
        "Refusals by reason", "BatchNorm drift",
    }  # fmt: skip
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids))
    source = (ROOT / "src" / "visionloop" / "serving" / "metrics.py").read_text()
    exported = set(re.findall(r'"(visionloop_[a-z_]+)"', source))
    recorded = {r["record"] for g in yaml.safe_load(RULES.read_text())["groups"]
                for r in g["rules"] if "record" in r}  # fmt: skip
    for panel in panels:
        assert panel["gridPos"]["w"] > 0
        assert panel["datasource"]["uid"] == "${datasource}"
        for target in panel["targets"]:
            names = set(re.findall(r"[a-z_:]*visionloop[a-z_:0-9]*", target["expr"]))
            for name in names:
                base = re.sub(r"_(bucket|sum|count)$", "", name)
                assert name in recorded or base in exported, (panel["title"], name)
