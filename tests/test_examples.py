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


def _study():
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "partial_labels_study", ROOT / "examples" / "partial_labels_study.py"
    )
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_readme_partial_label_tables_are_the_committed_results():
    """The README's tables are `partial_labels_study.py --table` over the committed rows."""
    study = _study()
    results = json.loads((ROOT / "benchmarks" / "results" / "partial_labels.json").read_text())
    readme = (ROOT / "README.md").read_text()
    for block in study.table(results).strip().split("\n\n"):
        assert block in readme, block.splitlines()[0]


def test_the_study_interval_and_pairing():
    study = _study()
    mean, low, high = study.interval([1.0, 2.0, 3.0])
    assert mean == 2.0
    # t(0.975, 2) = 4.303, x 1 / sqrt(3)
    assert round(high - mean, 3) == round(mean - low, 3) == 2.484
    assert study.diff_cell([0.2, 0.25, 0.3]).endswith("*")  # the interval excludes zero
    assert not study.diff_cell([-0.1, 0.2, 0.3]).endswith("*")
    rows = [{"arm": a, "budget": "steps", "seed": s} for a in "ab" for s in (0, 1)]
    rows.append({"arm": "a", "budget": "steps", "seed": 2})  # no partner: left out
    pairs = study._pairs(rows, ("b", "steps"), ("a", "steps"))
    assert [(x["seed"], y["seed"]) for x, y in pairs] == [(0, 0), (1, 1)]
