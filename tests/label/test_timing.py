"""The annotator time model: what a submission changed, and a fit on recorded task times that
finds the times it was generated with, through `label ingest` and `label timing`."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy import ndimage
from sqlalchemy import select

from tests.label.test_loop import cli, make_one_batch
from visionloop.label import loop
from visionloop.label.formats import brush_results
from visionloop.label.masks import label_from_json
from visionloop.label.store import Task
from visionloop.label.timing import Change, TimeModel, change, fit


def disc(cy: int, cx: int, r: int, size: int = 32) -> np.ndarray:
    yy, xx = np.mgrid[:size, :size]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r


def test_change_counts_objects_drawn_erased_and_fixed():
    shown = {"cat": disc(8, 8, 4) | disc(24, 24, 5), "animal": disc(8, 8, 4)}
    assert change(shown, {k: v.copy() for k, v in shown.items()}) == Change()
    assert change(shown, shown).unchanged
    drawn = {**shown, "animal": shown["animal"] | disc(24, 8, 3)}
    assert change(shown, drawn) == Change(drawn=1, pixels=int(disc(24, 8, 3).sum()))
    erased = {**shown, "cat": disc(8, 8, 4)}
    assert (change(shown, erased).erased, change(shown, erased).drawn) == (1, 0)
    fixed = {**shown, "cat": disc(8, 8, 4) | disc(24, 24, 7)}  # the outline redrawn bigger
    assert (change(shown, fixed).fixed, change(shown, fixed).drawn) == (1, 0)
    grazed = {**shown, "cat": disc(8, 8, 4) | disc(24, 20, 5)}  # moved 4 px: IoU about 0.3
    assert change(shown, grazed) == Change(
        drawn=1, erased=1, pixels=int((shown["cat"] ^ grazed["cat"]).sum())
    )
    assert change(shown, grazed, redraw=0.1).fixed == 1
    split = {**shown, "cat": shown["cat"].copy()}
    split["cat"][:, 24] = False  # the pre-label of the right object came in two halves
    joined = change(split, shown)  # the answer joins them: one fix
    assert (joined.fixed, joined.drawn, joined.erased) == (1, 0, 0)
    nudged = {**shown, "cat": shown["cat"].copy()}
    nudged["cat"][24, 29] = ~nudged["cat"][24, 29]  # one pixel of 81: under the tolerance
    assert change(shown, nudged).fixed == 0
    assert change(shown, {"animal": shown["animal"]}).erased == 2  # a class left out is empty
    with pytest.raises(ValueError, match="differ"):
        change(shown, {"cat": np.zeros((8, 8), bool)})


TRUE = TimeModel(look=4.0, draw=30.0, erase=5.0, fix=12.0)


def samples(n: int, seed: int = 0) -> list[tuple[Change, float]]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        c = Change(int(rng.integers(0, 3)), int(rng.integers(0, 2)), int(rng.integers(0, 3)), 1)
        c = Change() if rng.random() < 0.3 else c
        out.append((c, TRUE.seconds(c) + float(rng.normal(0, 1.0))))
    return out


def test_the_fit_finds_the_times_the_data_were_made_with_despite_coffee_breaks():
    data = samples(400)
    data[:10] = [(c, t + 900.0) for c, t in data[:10]]  # idle time: the tool keeps counting
    result = fit(data, drop_slowest=0.05)
    m = result.model
    assert abs(m.look - 4.0) < 0.5
    assert abs(m.draw - 30.0) < 0.5
    assert abs(m.erase - 5.0) < 0.5
    assert abs(m.fix - 12.0) < 0.5
    assert result.dropped == 20
    assert result.median_abs_error_s < 1.5
    # without dropping the breaks, the fit is pulled off
    assert abs(fit(data, drop_slowest=0.0).model.look - 4.0) > 2


def test_the_fit_refuses_data_that_cannot_tell_the_terms_apart():
    only_accepts = [(Change(), 3.0)] * 20
    with pytest.raises(ValueError, match="19 unchanged, 0 drew, 0 erased, 0 fixed"):
        fit(only_accepts)
    with pytest.raises(ValueError, match="too few"):
        fit(samples(5))
    with pytest.raises(ValueError, match="negative"):
        fit([*samples(20), (Change(), -1.0)])
    with pytest.raises(ValueError, match="must be finite"):
        TimeModel(look=-1, draw=1, erase=1, fix=1)


def test_label_timing_fits_the_lead_times_of_an_ingested_export(world):
    store, _ = make_one_batch(world)
    out = world / "export.json"
    loop.export_batch(store, "b", "label-studio", out)
    exported = json.loads(out.read_text())
    with store.session() as s:
        shown = {t.id: label_from_json(t.prelabel) for t in s.scalars(select(Task))}
    rng = np.random.default_rng(0)
    for item in exported:
        task = item["data"]["visionloop_task"]
        before = shown[task]
        height, width = next(iter(before.values())).shape
        blob = disc(4 + int(rng.integers(0, 4)), 4 + int(rng.integers(0, 4)), 3, height)[:, :width]
        answers = {
            "keeps": before,
            "draws": {**before, "animal": before["animal"] | blob},
            "erases": {**before, "animal": np.zeros_like(before["animal"]),
                       "cat": np.zeros_like(before["cat"])},
            "fixes": {c: ndimage.binary_dilation(m, iterations=2) for c, m in before.items()},
        }  # fmt: skip
        item["annotations"] = []
        for who, answer in answers.items():
            seconds = TRUE.seconds(change(before, answer)) + float(rng.uniform(-0.5, 0.5))
            result = brush_results(answer, width, height)
            item["annotations"].append(
                {"completed_by": {"email": who}, "lead_time": seconds, "result": result}
            )
    (world / "done.json").write_text(json.dumps(exported))
    cli("label", "ingest", str(world / "done.json"))
    got = json.loads(cli("label", "timing", "--json", "--drop-slowest", "0"))
    assert got["used"] == 24
    for key, value in TRUE.to_json().items():
        if key != "source":
            assert abs(got["model"][key] - value) < 1.5, (key, got)
    assert "seconds per task =" in cli("label", "timing")


def test_label_timing_without_timed_submissions_says_so(world):
    make_one_batch(world)
    assert "0 timed submissions" in cli("label", "timing", code=2)
