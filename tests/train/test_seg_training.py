"""A tiny training run lowers the loss and writes its run folder; a resumed run ends bit for
bit where an uninterrupted one does (on the CPU); the CLI drives it and reports bad data."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from visionloop.cli import app
from visionloop.train.seg import SegConfig, train_seg
from visionloop.train.synth import synthesize


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("seg")
    synthesize(root, 24, size=48, seed=2)
    return root


def config(data, out, **overrides) -> SegConfig:
    values = {"size": 48, "epochs": 3, "batch_size": 8, "lr": 3e-3, "seed": 1, **overrides}
    return SegConfig(data=data, out=out, **values)


def test_a_tiny_run_lowers_the_loss_and_writes_its_run_folder(data, tmp_path):
    out = tmp_path / "run"
    best = train_seg(config(data, out))
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in lines] == [0, 1, 2]
    assert lines[-1]["train_loss"] < lines[0]["train_loss"]
    assert set(best) >= {"iou_cat", "iou_animal", "dice_cat", "dice_animal", "mean_iou"}
    resolved = json.loads((out / "config.json").read_text())
    assert resolved["train_images"] + resolved["val_images"] == 24
    assert len(resolved["train_fingerprint"]) == 16
    state = torch.load(out / "best.pt", weights_only=True)
    assert any(k.startswith("classifier") for k in state)


def test_resuming_ends_where_an_uninterrupted_run_does(data, tmp_path):
    straight, stopped = tmp_path / "straight", tmp_path / "stopped"
    train_seg(config(data, straight))
    with pytest.raises(_Interrupt):  # killed after epoch 1 was saved
        train_seg(config(data, stopped), on_epoch=_stop_after(1))
    resumed = train_seg(config(data, stopped, resume=True))
    a = torch.load(straight / "last.pt", weights_only=True)
    b = torch.load(stopped / "last.pt", weights_only=True)
    # bit for bit on the CPU: weights, optimiser moments, schedule, and every metric
    assert a.keys() == b.keys()
    assert all(torch.equal(a["network"][k], b["network"][k]) for k in a["network"])
    moments_a, moments_b = a["optimiser"]["state"], b["optimiser"]["state"]
    assert moments_a.keys() == moments_b.keys()
    for k in moments_a:
        assert all(torch.equal(moments_a[k][n], moments_b[k][n]) for n in moments_a[k])
    assert a["schedule"] == b["schedule"]
    assert (a["epoch"], a["stale"]) == (b["epoch"], b["stale"])
    assert untimed(a["best"]) == untimed(b["best"])
    straight_metrics, stopped_metrics = (
        [untimed(json.loads(x)) for x in (run / "metrics.jsonl").read_text().splitlines()]
        for run in (straight, stopped)
    )
    assert stopped_metrics == straight_metrics
    epochs = [m["epoch"] for m in stopped_metrics]
    assert epochs == [0, 1, 2]
    assert json.loads((stopped / "config.json").read_text())["resumed_at_epoch"] == 2
    assert resumed["epoch"] in (0, 1, 2)


def test_a_step_budget_stops_mid_epoch_and_the_schedule_spans_it(data, tmp_path):
    """--steps 5 over epochs of 3 batches: two epochs (3 + 2 steps), the cosine ends at zero
    on step 5 (it spans the budget, not epochs x batches); a resume adds nothing."""
    out = tmp_path / "budget"
    train_seg(config(data, out, epochs=10, steps=5, warmup=0.2))
    state = torch.load(out / "last.pt", weights_only=True)
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert (state["step"], len(lines)) == (5, 2)
    assert state["schedule"]["last_epoch"] == 5
    assert state["schedule"]["_last_lr"] == [0.0]
    train_seg(config(data, out, epochs=10, steps=5, warmup=0.2, resume=True))
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 2
    with pytest.raises(ValueError, match="warmup"):
        config(data, out, warmup=1.5)


def untimed(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if k != "seconds"}


class _Interrupt(Exception):
    pass


def _stop_after(epoch: int):
    def hook(metrics):
        if metrics["epoch"] == epoch:
            raise _Interrupt

    return hook


def test_cli_trains_and_reports_bad_data(data, tmp_path):
    runner = CliRunner()
    out = tmp_path / "cli"
    args = ["train", "seg", "--data", str(data), "--out", str(out), "--size", "48",
            "--epochs", "1", "--batch-size", "8", "--hierarchy", "cat:animal"]  # fmt: skip
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "best:" in result.stdout
    bad = runner.invoke(app, [*args[:4], "--out", str(tmp_path / "x"), "--classes", "cat,dog"])
    assert bad.exit_code == 2
    assert "unknown class(es) ['dog']" in bad.stderr


def test_the_model_normalises_on_the_training_device(data, tmp_path):
    """train seg --device cuda normalised on the CPU and failed at its first step: the mean
    and scale now follow the device (checked with PyTorch's meta device, no GPU needed)."""
    from visionloop.train.engine import Distributed
    from visionloop.train.seg import SegTrainer

    trainer = SegTrainer(config(data, tmp_path / "meta", pretrained=False))
    trainer.setup(Distributed("meta"), steps=1, epoch_steps=1)
    assert trainer.model._mean.device.type == "meta"
    assert trainer.model._inv_std.device.type == "meta"
    images = torch.zeros(1, 48, 48, 3, dtype=torch.uint8)
    assert trainer.model.normalise(images).device.type == "meta"
