"""Prometheus metrics for one server, in a registry of its own (so tests can run several).

Names follow Prometheus conventions (base units, ``_total`` counters). Refusals carry a
``reason`` label: ``queue_full``, ``deadline_unreachable`` (adaptive: refused on arrival),
``deadline``, ``deadline_in_batch``, ``deadline_at_answer`` (ready, but the loop came back to
it after the client's deadline), ``bad_input``, ``not_ready``, ``cancelled``, ``model_error``,
``shutting_down``, ``broker_unavailable`` (Redis transport).

With the Redis transport, workers count jobs by ``outcome`` (``answered``, ``error``, ``expired``,
``bad_job``, ``gave_up``, ``reclaimed``) and API replicas count the replies they dropped because
the request had already been answered (a reclaimed job run twice, or a reply after the 504).
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

BATCH_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 128)
LATENCY_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 0.75,
    1.0, 1.5, 2.5, 5.0, 10.0, 30.0,
)  # fmt: skip


class Metrics:
    """The server's metrics, labelled by model."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.queue_depth = Gauge(
            "visionloop_queue_depth", "Requests waiting for a batch.", ["model"], registry=r
        )
        self.queue_capacity = Gauge(
            "visionloop_queue_capacity",
            "The queue's bound (max_queue): queue_depth / queue_capacity is its saturation.",
            ["model"],
            registry=r,
        )
        self.worker_heartbeat = Gauge(
            "visionloop_worker_heartbeat_timestamp_seconds",
            "Unix time of a Redis worker's last heartbeat written to Redis (workers only); "
            "time() minus this growing past a few heartbeats means the worker is stuck.",
            ["model"],
            registry=r,
        )
        self.workers_live = Gauge(
            "visionloop_workers_live",
            "Redis workers with a fresh heartbeat serving this model, as an API replica last saw "
            "them (replicas only); 0 means its requests get 503.",
            ["model"],
            registry=r,
        )
        self.late_answers = Counter(
            "visionloop_answers_after_deadline_total",
            "200s whose last byte was handed to the connection after the client's deadline as "
            "the server knows it (from the request's first byte, less the loop's read delay).",
            ["model", "endpoint"],
            registry=r,
        )
        self.loop_lag = Gauge(
            "visionloop_event_loop_lag_seconds",
            "Worst lateness of the event loop's timer over the last second; twice this is "
            "taken off each new request's deadline (one delay to read it, one to answer).",
            registry=r,
        )
        self.answer_write = Gauge(
            "visionloop_answer_write_seconds",
            "Worst time over the last 10 s from a route finding its answer in time to the "
            "answer's last byte handed over; an answer needs this much room before its deadline.",
            registry=r,
        )
        self.batch_size = Histogram(
            "visionloop_batch_size",
            "Images per forward pass (before bucket padding).",
            ["model"],
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.queue_wait = Histogram(
            "visionloop_queue_wait_seconds",
            "Time from enqueue to the start of its batch.",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.compute = Histogram(
            "visionloop_compute_seconds",
            "Forward pass + postprocess time of one batch.",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.latency = Histogram(
            "visionloop_request_latency_seconds",
            "End-to-end time of a request inside the server, body read to response.",
            ["model", "endpoint"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.requests = Counter(
            "visionloop_requests_total",
            "Finished requests by HTTP status.",
            ["model", "endpoint", "status"],
            registry=r,
        )
        self.refusals = Counter(
            "visionloop_refusals_total",
            "Requests refused or failed, by reason.",
            ["model", "reason"],
            registry=r,
        )

        self.duplicate_replies = Counter(
            "visionloop_duplicate_replies_total",
            "Replies dropped because their request was already answered (Redis transport).",
            ["model"],
            registry=r,
        )
        self.worker_jobs = Counter(
            "visionloop_worker_jobs_total",
            "Jobs a Redis worker handled, by outcome.",
            ["model", "outcome"],
            registry=r,
        )

        self.bn_drift = Gauge(
            "visionloop_bn_drift",
            "BatchNorm-statistics drift of sampled served images vs the model's running "
            "statistics (symmetric KL, averaged; ~0 in domain). Needs VISIONLOOP_DRIFT_SAMPLE.",
            ["model"],
            registry=r,
        )
        self.bn_drift_images = Counter(
            "visionloop_bn_drift_images_total",
            "Served images whose BatchNorm statistics were measured for the drift gauge.",
            ["model"],
            registry=r,
        )

        # Model repository (serving/fleet.py): per version, whatever its role.
        self.version_requests = Counter(
            "visionloop_version_requests_total",
            "Requests a model version answered, by its role (serving, canary, shadow, loaded: "
            "asked for by version) and outcome (ok, refused, error); a shadow's are copies.",
            ["model", "version", "role", "outcome"],
            registry=r,
        )
        self.version_latency = Histogram(
            "visionloop_version_latency_seconds",
            "Queue + compute time of a model version's answers (ok only).",
            ["model", "version", "role"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.version_agreement = Counter(
            "visionloop_version_agreement_total",
            "A canary's or shadow's answers compared with the serving version's on the same "
            "image: agree is true when the labels (and masks, IoU >= 0.9) match.",
            ["model", "version", "agree"],
            registry=r,
        )
        self.version_copies_skipped = Counter(
            "visionloop_version_copies_skipped_total",
            "Comparison copies not sent because the target version's queue was half full.",
            ["model", "version"],
            registry=r,
        )
        self.version_role = Gauge(
            "visionloop_version_role",
            "1 for the role each loaded version has now (serving, canary, shadow, loaded).",
            ["model", "version", "role"],
            registry=r,
        )

    def render(self) -> bytes:
        """The Prometheus text exposition of every metric."""
        return generate_latest(self.registry)
