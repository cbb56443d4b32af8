"""The BatchNorm experiment still runs and still shows its effects (one seed for part b)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_batchnorm_domain_shift_experiment_runs_and_shows_the_effects(tmp_path):
    out = tmp_path / "figures.json"
    command = [
        sys.executable, str(ROOT / "examples" / "batchnorm_domain_shift.py"),
        "--repeats", "1", "--json", str(out),
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stderr
    assert "| (a) same model on the target domain |" in result.stdout
    figures = json.loads(out.read_text())
    assert figures["a_target_accuracy_after_recalibration"] > figures["a_target_accuracy_before"]
    assert figures["c_drift_target"] > 10 * figures["c_drift_source"]
    assert figures["c_drift_target_after_recalibration"] < figures["c_drift_target"]
