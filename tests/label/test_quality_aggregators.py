"""Aggregators are a table: one registered by name merges the crowd's masks for ``aggregate``,
the QC rules and ``write_dataset``; an unknown name is one clear line (library and CLI)."""

from __future__ import annotations

import numpy as np
import pytest
from typer.testing import CliRunner

from tests.label.test_quality import GOLD, disc
from visionloop.cli import app
from visionloop.label.quality import (
    AGGREGATORS,
    ExpectationMaximisation,
    MajorityVote,
    Rasa,
    Rules,
    aggregate,
)

SPECK = {"cat": disc(40, 40, 6)}


class Union:
    """A pixel is set if anyone set it (and records the skills it was given)."""

    def __init__(self) -> None:
        self.skills: list[object] = []

    def merge(self, votes, skills):
        self.skills.append(skills)
        out: dict[int, np.ndarray] = {}
        for task, _, mask in votes:
            out[task] = out[task] | mask if task in out else mask.copy()
        return out


def test_the_table_holds_the_three_crowd_kit_aggregators():
    assert list(AGGREGATORS) == ["mv", "em", "rasa"]
    assert [type(a) for a in AGGREGATORS.values()] == [MajorityVote, ExpectationMaximisation, Rasa]
    assert Rules().aggregator == "mv"


def test_a_registered_aggregator_merges_by_name(monkeypatch):
    union = Union()
    monkeypatch.setitem(AGGREGATORS, "union", union)
    labels = {
        1: [("a", GOLD), ("b", GOLD), ("c", SPECK)],
        2: [("a", SPECK), ("b", {"cat": np.zeros_like(SPECK["cat"])})],
    }
    skills = {"a": 0.9, "b": 0.8, "c": 0.1}
    out = aggregate(labels, skills, "union")
    np.testing.assert_array_equal(out[1]["cat"], GOLD["cat"] | SPECK["cat"])
    np.testing.assert_array_equal(out[2]["cat"], SPECK["cat"])
    assert union.skills == [skills]  # once per class
    assert Rules(aggregator="union").aggregator == "union"
    # the built-in majority would have dropped the speck: the name chose the aggregator
    assert not aggregate(labels, skills, "mv")[1]["cat"][40, 40]


def test_an_unknown_aggregator_is_one_line_listing_the_known_ones(tmp_path):
    with pytest.raises(ValueError, match=r"^aggregator must be one of mv, em, rasa, got 'vote'$"):
        Rules(aggregator="vote")
    with pytest.raises(ValueError, match=r"^method must be one of mv, em, rasa, got 'vote'$"):
        aggregate({1: [("a", GOLD)]}, None, "vote")
    db = f"sqlite:///{tmp_path / 'labels.db'}"
    result = CliRunner().invoke(app, ["label", "qc", "--aggregator", "vote", "--db", db])
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines() == [
        "error: aggregator must be one of mv, em, rasa, got 'vote'"
    ]
