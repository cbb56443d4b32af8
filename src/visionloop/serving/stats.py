"""What the page's live panel shows, as JSON: per model, the server's own counters.

``GET /v1/stats`` returns cumulative numbers straight from the metrics registry (nothing is
computed per request on the hot path, and nothing new is recorded): queue depth, the batch-size
histogram, requests by status, refusals by reason, the latency histogram and the drift gauge.
Rates (answers per second) and percentiles over a window come from the difference between two
snapshots, which the page takes as it polls (:func:`window`, mirrored in ``page.js``): a
percentile of the last seconds, not of the server's whole life.

``GET /v1/models`` lists what can be asked: each model's ready versions and the description of
the one serving (classes, outputs, weak classes), so the page can offer masks, scores or a
restored picture.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Mapping
from typing import Any

from visionloop.serving.metrics import Metrics

__all__ = ["quantile", "snapshot", "window"]

_PER_MODEL = {
    "visionloop_queue_depth": "queue_depth",
    "visionloop_bn_drift": "drift",
}


def snapshot(metrics: Metrics) -> dict[str, Any]:
    """Cumulative per-model numbers and the time they were read (``time``, seconds)."""

    def empty() -> dict[str, Any]:
        return {"queue_depth": 0.0, "drift": None, "batch_size": {}, "latency": {},
                "requests": {}, "refusals": {}}  # fmt: skip

    models: dict[str, dict[str, Any]] = defaultdict(empty)
    for family in metrics.registry.collect():
        for sample in family.samples:
            model = sample.labels.get("model")
            if model is None:
                continue
            entry = models[model]
            name, labels, value = sample.name, sample.labels, sample.value
            if name in _PER_MODEL:
                entry[_PER_MODEL[name]] = value
            elif name == "visionloop_batch_size_bucket":
                entry["batch_size"][labels["le"]] = value
            elif name == "visionloop_request_latency_seconds_bucket":
                le = labels["le"]
                entry["latency"][le] = entry["latency"].get(le, 0.0) + value
            elif name == "visionloop_requests_total":
                status = labels["status"]
                entry["requests"][status] = entry["requests"].get(status, 0.0) + value
            elif name == "visionloop_refusals_total":
                entry["refusals"][labels["reason"]] = value
    return {"time": time.time(), "models": dict(models)}


def quantile(buckets: Mapping[str, float], q: float) -> float | None:
    """The ``q`` quantile (seconds) of a cumulative Prometheus histogram, linear within the
    bucket it falls in (as ``histogram_quantile`` does); None without observations."""
    bounds = sorted(((float(le), count) for le, count in buckets.items()), key=lambda b: b[0])
    if not bounds or bounds[-1][1] <= 0:
        return None
    rank = q * bounds[-1][1]
    lower, below = 0.0, 0.0
    for upper, count in bounds:
        if count >= rank:
            if upper == float("inf"):
                return lower
            inside = count - below
            return lower + (upper - lower) * ((rank - below) / inside if inside else 0.0)
        lower, below = upper, count
    return lower


def window(before: Mapping[str, Any], after: Mapping[str, Any], model: str) -> dict[str, Any]:
    """Between two snapshots: answers (2xx) per second, p50 and p99 of the latency of the
    requests finished in between, and refusals per second."""
    a, b = before["models"].get(model), after["models"].get(model)
    seconds = max(1e-9, float(after["time"]) - float(before["time"]))
    if b is None:
        return {"answers_per_s": 0.0, "p50_s": None, "p99_s": None, "refusals_per_s": 0.0}
    a = a or {"requests": {}, "latency": {}, "refusals": {}}
    ok = sum(v for s, v in b["requests"].items() if s.startswith("2"))
    ok_before = sum(v for s, v in a["requests"].items() if s.startswith("2"))
    latency = {le: v - a["latency"].get(le, 0.0) for le, v in b["latency"].items()}
    refused = sum(b["refusals"].values()) - sum(a["refusals"].values())
    return {
        "answers_per_s": (ok - ok_before) / seconds,
        "p50_s": quantile(latency, 0.5),
        "p99_s": quantile(latency, 0.99),
        "refusals_per_s": refused / seconds,
    }
