"""The README's crowd-simulation tables are the committed results files, row for row."""

from __future__ import annotations

import json
from pathlib import Path

from visionloop.label.simulate import summarise

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "benchmarks" / "results"
README = (ROOT / "README.md").read_text()
CROWD = {"heldout": "held out"}


def row(cells) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def test_the_strategy_table_is_label_simulation_json():
    rows = summarise(json.loads((RESULTS / "label_simulation.json").read_text()))
    assert len(rows) == 8
    for r in rows:
        assert row(list(r.values())[1:]) in README


def test_the_crowds_table_is_label_heldout_json():
    rows = summarise(json.loads((RESULTS / "label_heldout.json").read_text()))
    assert {r["crowd"] for r in rows} == {"tuning", "heldout", "fresh"}
    for r in rows:
        cells = [CROWD.get(r["crowd"], r["crowd"]), r["model right"], r["lazy caught"],
                 r["honest banned"], r["label IoU"], r["paid tasks / image"]]  # fmt: skip
        assert row(cells) in README


def test_the_issue_21_judgement_table_is_label_rules_judge_json():
    data = json.loads((RESULTS / "label_rules_judge.json").read_text())
    assert len(data["summary"]) == 8
    for r in data["summary"]:
        cells = [
            CROWD.get(r["crowd"], r["crowd"]),
            "before" if r["rules"] == "before" else "issue 21",
            f"{r['model_quality']:.0%}",
            f"{r['lazy_caught']}/{r['lazy']}",
            f"{r['honest_banned']}/{r['honest']}",
            f"{r['label_iou']:.3f}",
            f"{r['paid_per_image']:.2f}",
        ]
        assert row(cells) in README
    assert all(r["small_objects"] == 0.3 for r in data["runs"])
