"""What every peer server shares with visionloop: the same catdog model (same weights, fused,
channels_last), the same preprocessing, the same torch threads. Imported by the peer scripts,
which run in their own venvs (`.peers/<name>/venv`, with this repository installed into it);
never imported by the visionloop package itself.

Contract for every peer: POST the raw image bytes (``content-type: image/jpeg``) to its
predict URL; the answer is JSON with at least ``label`` and ``scores``.

Modes (``VISIONLOOP_PEER_MODE``, set by benchmarks/compare.py): ``shipped`` (the default: the
peer's own defaults plus the shared batching cap, as users get it) or ``slo`` (the peer's own
deadline/overload knobs set for an SLO of ``VISIONLOOP_PEER_SLO_MS`` ms, default 250, where it
has them). Each peer's peer.json lists those knobs ("knobs") and what each mode sets.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch

THREADS = int(os.environ.get("VISIONLOOP_THREADS", "2") or 2)
MODE = os.environ.get("VISIONLOOP_PEER_MODE", "shipped") or "shipped"
SLO_MS = float(os.environ.get("VISIONLOOP_PEER_SLO_MS", "250") or 250)
if MODE not in ("shipped", "slo"):
    raise SystemExit(f"VISIONLOOP_PEER_MODE must be shipped or slo, not {MODE!r}")


def slo_mode() -> bool:
    """True when the peer's own deadline knobs are to be set for ``SLO_MS``."""
    return MODE == "slo"


def set_threads() -> None:
    """Same intra-op threads as visionloop's executor; call in the thread that runs torch."""
    torch.set_num_threads(THREADS)


def load_model() -> Any:
    """The built-in catdog model, prepared as `visionloop serve` prepares it, on the engine in
    ``VISIONLOOP_PEER_ENGINE``: ``torch`` (eager, as the peers ship; the default) or ``auto``
    (our fast engine, for compare.py's ``<peer>-fast`` systems)."""
    from visionloop.models import load
    from visionloop.settings import ModelSettings

    set_threads()
    engine = os.environ.get("VISIONLOOP_PEER_ENGINE", "torch")
    model = load(ModelSettings(engine=engine, threads=THREADS))
    model.warmup([1, 8])
    return model


def decode(model: Any, data: bytes) -> np.ndarray:
    """Bytes -> 224x224x3 uint8, with visionloop's imaging (reduce-on-decode, same crop)."""
    from visionloop import imaging

    return imaging.prepare(data, model.input_spec.crop, imaging.ImageLimits())


def predict_batch(model: Any, images: list[np.ndarray]) -> list[dict[str, Any]]:
    """One forward pass over a batch of decoded images; one JSON-ready dict per image."""
    batch = torch.from_numpy(np.stack(images))
    outputs = {name: t.cpu() for name, t in model.forward(batch).items()}
    return [{"label": r["label"], "scores": r["scores"]} for r in model.postprocess(outputs)]
