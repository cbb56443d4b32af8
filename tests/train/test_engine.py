"""The training engine: EMA of weights and buffers, the epoch sampler, resume refused for
another trainer or configuration, a diverging run stopped with its last good checkpoint, two
processes over gloo reaching one process's weights, and MLflow against a real local store."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from tests.train.toy_trainer import Toy
from visionloop.train.engine import EMA, Diverged, EngineConfig, EpochSampler, RunMismatch, fit
from visionloop.train.seg import SegConfig, train_seg
from visionloop.train.synth import synthesize

ROOT = Path(__file__).resolve().parents[2]


def test_ema_averages_weights_and_float_buffers_and_copies_counters():
    net = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))
    ema = EMA(net, decay=0.75)
    before = {k: v.clone() for k, v in ema.module.state_dict().items()}
    with torch.no_grad():
        for p in net.parameters():
            p.add_(1.0)
    net.train()(torch.randn(4, 2))  # running stats and the batch counter move
    ema.update(net)
    now, source = ema.module.state_dict(), net.state_dict()
    for key, old in before.items():
        if old.dtype.is_floating_point:
            assert torch.allclose(now[key], 0.75 * old + 0.25 * source[key]), key
        else:
            assert torch.equal(now[key], source[key]), key  # num_batches_tracked
    assert not any(p.requires_grad for p in ema.module.parameters())
    with pytest.raises(ValueError, match="decay"):
        EMA(net, decay=1.0)
    warm = EMA(nn.Linear(1, 1, bias=False), decay=0.999, warmup=True)
    target = nn.Linear(1, 1, bias=False)
    start = float(warm.module.weight)
    warm.update(target)  # first update: decay 1/10, the copy moves 90 % of the way
    goal = float(target.weight.detach())
    assert float(warm.module.weight) == pytest.approx(0.1 * start + 0.9 * goal)
    restored = EMA(nn.Linear(1, 1, bias=False), warmup=True)
    restored.load_state_dict(warm.state_dict())
    assert restored.updates == 1


def test_the_epoch_sampler_splits_one_permutation_among_processes():
    one = list(EpochSampler(21, seed=3))
    two = [list(EpochSampler(21, 2, rank, seed=3)) for rank in (0, 1)]
    assert sorted(one) == list(range(21))
    assert len(two[0]) == len(two[1]) == 11  # padded to a multiple of the processes
    interleaved = [i for pair in zip(*two, strict=True) for i in pair]
    assert interleaved[:21] == one
    loader = torch.utils.data.DataLoader(list(range(21)), batch_size=21, shuffle=True,
                                         generator=torch.Generator().manual_seed(3))  # fmt: skip
    assert [int(i) for i in next(iter(loader))] == one  # what train seg always did
    sampler = EpochSampler(21, seed=3)
    sampler.set_epoch(1)
    assert list(sampler) != one


def test_a_diverging_run_stops_at_the_step_and_keeps_the_last_good_checkpoint(tmp_path):
    out = tmp_path / "run"
    with pytest.raises(Diverged, match=r"diverged at step 7 \(epoch 2\): loss=nan; the last "
                       r"good checkpoint \(epoch 1\) is kept"):  # fmt: skip
        fit(Toy(explode_at=7), EngineConfig(out=out, epochs=5, patience=10))
    assert json.loads((out / "diverged.json").read_text())["step"] == 7
    last = torch.load(out / "last.pt", weights_only=True)
    assert last["epoch"] == 1
    assert last["step"] == 6
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["epoch"] for x in lines] == [0, 1]
    assert (out / "best.pt").is_file()


def test_resume_is_refused_for_another_trainer_or_configuration(tmp_path):
    out = tmp_path / "run"
    fit(Toy(), EngineConfig(out=out, epochs=1))
    with pytest.raises(RunMismatch, match=r"the configuration differs \(lr: 0.01 then, 0.02 now\)"):
        fit(Toy(lr=0.02), EngineConfig(out=out, epochs=2, resume=True))
    data = tmp_path / "data"
    synthesize(data, 12, size=32, seed=0)
    with pytest.raises(RunMismatch, match="is a 'toy' run, not a 'seg' one"):
        train_seg(SegConfig(data=data, out=out, size=32, epochs=1, resume=True,
                            pretrained=False))  # fmt: skip
    fit(Toy(), EngineConfig(out=out, epochs=2, resume=True))  # more epochs: allowed
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_two_processes_over_gloo_reach_the_weights_of_one_process(tmp_path):
    """The same global batch (8) as one process of 8 or two of 4: DistributedDataParallel
    averages the two halves' gradients, which is the whole batch's gradient. Three epochs of
    Adam later the weights agree to float rounding (sums in another order)."""
    script = str(ROOT / "tests" / "train" / "toy_trainer.py")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "GLOO_SOCKET_IFNAME": "lo",
           "OMP_NUM_THREADS": "1"}  # fmt: skip
    one, two = tmp_path / "one", tmp_path / "two"
    subprocess.run([sys.executable, script, str(one)], env=env, check=True, timeout=300)
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1",
                "--nproc-per-node", "2", "--master-addr", "127.0.0.1",
                "--master-port", str(_free_port())]  # fmt: skip
    done = subprocess.run([*torchrun, script, str(two)], env=env, timeout=300,
                          capture_output=True, text=True)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    a = torch.load(one / "last.pt", weights_only=True)
    b = torch.load(two / "last.pt", weights_only=True)
    assert a["step"] == b["step"] == 9
    for part in ("net", "ema"):
        mine = a[part] if part == "net" else a[part]["module"]
        theirs = b[part] if part == "net" else b[part]["module"]
        for key, value in mine.items():
            assert torch.allclose(value, theirs[key], rtol=1e-4, atol=1e-5), (part, key)
    assert json.loads((two / "config.json").read_text())["world_size"] == 2
    losses = [json.loads(x)["val_loss"] for x in (two / "metrics.jsonl").read_text().splitlines()]
    assert losses[-1] < losses[0]


def test_mlflow_logs_params_metrics_and_the_checkpoint_to_a_local_store(tmp_path, monkeypatch):
    """A real MLflow tracking store, SQLite on disk (MLflow's recommended local backend; its
    file store is in maintenance mode): the run's params, each epoch's metric, and best.pt and
    config.json as artefacts; nothing is logged when no store is named."""
    mlflow = pytest.importorskip("mlflow")
    pytest.importorskip("alembic")  # the SQLite store's migrations
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    artefacts_root = tmp_path / "artefacts"
    out = tmp_path / "tracked"
    fit(Toy(), EngineConfig(out=tmp_path / "untracked", epochs=1))
    assert not (tmp_path / "mlflow.db").exists()  # not asked for: nothing logged
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    client = mlflow.tracking.MlflowClient(store)
    experiment = client.create_experiment("engine-test", artifact_location=artefacts_root.as_uri())
    monkeypatch.setenv("MLFLOW_EXPERIMENT_ID", experiment)
    fit(Toy(), EngineConfig(out=out, epochs=2))
    (run,) = client.search_runs([experiment])
    assert run.info.status == "FINISHED"
    assert run.info.run_name == "tracked"
    assert run.data.params["trainer"] == "toy"
    assert run.data.params["lr"] == "0.01"
    history = client.get_metric_history(run.info.run_id, "val_loss")
    assert [m.step for m in history] == [0, 1]
    logged = [json.loads(x)["val_loss"] for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m.value for m in history] == pytest.approx(logged)
    names = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"best.pt", "config.json"} <= names
    local = Path(client.download_artifacts(run.info.run_id, "best.pt", str(tmp_path)))
    saved = torch.load(out / "best.pt", weights_only=True)
    assert all(torch.equal(v, saved[k]) for k, v in torch.load(local, weights_only=True).items())


def test_a_fresh_run_into_an_old_folder_keeps_nothing_of_the_old_run(tmp_path):
    """Training anew into a folder (no --resume) removes the old run's checkpoints, so a later
    resume never continues weights from another run; a divergence in its first epoch says no
    checkpoint was written."""
    out = tmp_path / "run"
    fit(Toy(), EngineConfig(out=out, epochs=2))
    with pytest.raises(Diverged, match="no epoch had finished, so no checkpoint was written"):
        fit(Toy(lr=0.02, explode_at=1), EngineConfig(out=out, epochs=2))
    assert not (out / "last.pt").exists()
    assert not (out / "best.pt").exists()
    assert not (out / "metrics.jsonl").exists()


def test_a_checkpoint_is_replaced_whole_or_not_at_all(tmp_path, monkeypatch):
    out = tmp_path / "run"
    fit(Toy(), EngineConfig(out=out, epochs=1))
    before = (out / "last.pt").read_bytes()

    def killed(*_args, **_kwargs):
        raise KeyboardInterrupt  # the process dies while writing

    monkeypatch.setattr(torch, "save", killed)
    with pytest.raises(KeyboardInterrupt):
        fit(Toy(), EngineConfig(out=out, epochs=3, resume=True))
    assert (out / "last.pt").read_bytes() == before
