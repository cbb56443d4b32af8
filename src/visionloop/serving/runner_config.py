"""The one rule from the server's settings to a runner's batching and execution settings
(:class:`RunnerConfig`), shared by ``serve``, ``worker`` and the model repository."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

from visionloop.serving.batcher import BatchPolicy
from visionloop.settings import ServeSettings

WORKER_TIMEOUT_MS = 24 * 3600 * 1e3


@dataclass(frozen=True)
class RunnerConfig:
    """Batching and execution settings (validated by :class:`BatchPolicy` and here)."""

    policy: BatchPolicy = field(default_factory=BatchPolicy)
    instances: int = 1
    pad_to_buckets: bool = False
    timeout_ms: float = 5000.0
    threads: int = 0
    # While overloaded, its threads yield the CPU to other models (visionloop.serving.priority).
    yield_when_overloaded: bool = False

    def __post_init__(self) -> None:
        if self.instances < 1:
            raise ValueError(f"instances must be >= 1, got {self.instances}")
        if self.timeout_ms <= 0:
            raise ValueError(f"timeout_ms must be > 0, got {self.timeout_ms}")

    @classmethod
    def from_settings(cls, settings: ServeSettings, threads: int = 0) -> RunnerConfig:
        """The one rule from the server's settings to its runner (``serve`` and ``worker``)."""
        return cls(
            policy=BatchPolicy(
                settings.max_batch_size, settings.max_delay_ms, settings.max_queue, settings.policy
            ),
            instances=settings.instances,
            pad_to_buckets=settings.pad_to_buckets,
            timeout_ms=settings.timeout_ms,
            threads=threads,
        )

    def for_worker(self) -> RunnerConfig:
        """A Redis worker's: each job carries its own deadline (the runner's timeout only
        bounds it), and its queue holds at least what its executors take at once plus a batch
        in waiting, so that it never refuses jobs it has claimed from the stream."""
        capacity = self.policy.max_batch_size * (self.instances + 1)
        policy = dataclasses.replace(self.policy, max_queue=max(capacity, self.policy.max_queue))
        return dataclasses.replace(self, policy=policy, timeout_ms=WORKER_TIMEOUT_MS)

    @property
    def buckets(self) -> tuple[int, ...]:
        """Powers of two up to, and always including, ``max_batch_size``."""
        top = self.policy.max_batch_size
        sizes = {2**i for i in range(int(math.log2(top)) + 1)} | {top}
        return tuple(sorted(sizes))
