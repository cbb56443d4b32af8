"""The restorer's parts and its two training stages on a few small photos: shapes, losses,
the identity start, L1 pretrain then GAN fine-tune from it, the EMA copy saved, resume refused
on a changed recipe, the CLI and its errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from tests.cli_checks import assert_one_line_error
from visionloop.cli import app
from visionloop.models.restorer import RestoreNet
from visionloop.train.engine import RunMismatch
from visionloop.train.gan import (
    GanConfig,
    PatchDiscriminator,
    RestorePairs,
    UNetDiscriminator,
    discriminator_loss,
    generator_loss,
    photo_files,
    train_gan,
)


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    root = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(0)
    for i in range(12):
        yy, xx = np.mgrid[:64, :80]
        base = np.stack([xx * 3 + i * 10, yy * 3, (xx * yy) % 200], axis=-1)
        noise = rng.integers(0, 20, base.shape)
        Image.fromarray(((base + noise) % 256).astype(np.uint8)).save(root / f"p{i:02d}.png")
    return root


def test_discriminators_score_regions_or_pixels_with_spectral_norm():
    x = torch.rand(2, 3, 32, 48)
    assert PatchDiscriminator(16)(x).shape == (2, 1, 4, 6)
    assert UNetDiscriminator(8)(x).shape == (2, 1, 32, 48)
    for d in (PatchDiscriminator(16), UNetDiscriminator(8)):
        names = [n for n, _ in d.named_parameters()]
        assert any("parametrizations.weight.original" in n for n in names)
        assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in d.modules())


def test_the_losses_are_the_recipe_s():
    real, fake = torch.ones(4, 1, 2, 2), torch.zeros(4, 1, 2, 2)
    assert float(discriminator_loss("lsgan", real, fake)) == 0.0  # D already right
    assert float(generator_loss("lsgan", real, fake)) == 1.0  # (0 - 1)^2
    # relativistic: real one above the mean fake and fake one below the mean real is perfect
    assert float(discriminator_loss("ralsgan", real, fake)) == 0.0
    assert float(generator_loss("ralsgan", real, fake)) == pytest.approx(4.0)  # 0.5 * (4 + 4)
    assert float(discriminator_loss("vanilla", real * 20, fake - 20)) < 1e-6
    with pytest.raises(ValueError, match="unknown GAN loss 'wgan'"):
        generator_loss("wgan", real, fake)


def test_the_generator_starts_as_the_identity_and_has_no_batchnorm_unless_asked():
    net = RestoreNet(16, 2).eval()
    x = torch.rand(1, 3, 32, 32)
    assert torch.equal(net(x), x)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in net.modules())
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in RestoreNet(16, 2, "batch").modules())


def test_pairs_are_reproducible_and_validation_is_fixed(photos):
    files = photo_files(photos)
    pairs = RestorePairs(files, crop=32, seed=1)
    a, b = pairs[3], pairs[3]
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    assert a[0].shape == a[1].shape == (32, 32, 3)
    assert not torch.equal(a[0], a[1])  # damaged
    pairs.epoch = 1
    assert not torch.equal(pairs[3][1], a[1])  # another crop next epoch
    val = RestorePairs(files, crop=32, train=False, seed=1)
    val.epoch = 5
    assert torch.equal(val[2][0], RestorePairs(files, crop=32, train=False, seed=1)[2][0])
    with pytest.raises(ValueError, match="smaller than the crop"):
        RestorePairs(files, crop=72)[0]


def test_several_crops_of_each_photo_per_epoch(photos):
    files = photo_files(photos)
    three = RestorePairs(files, crop=32, seed=1, crops_per_photo=3)
    assert len(three) == 3 * len(files)
    # index i and i + len(files) are crops of the same photo, drawn apart
    crops = [three[2 + k * len(files)][1] for k in range(3)]
    assert not torch.equal(crops[0], crops[1])
    assert not torch.equal(crops[1], crops[2])
    # the first pass is the one-crop dataset's, so one crop per photo is what it was
    assert torch.equal(crops[0], RestorePairs(files, crop=32, seed=1)[2][1])
    val = RestorePairs(files, crop=32, train=False, crops_per_photo=3)
    assert len(val) == len(files)  # validation stays one fixed crop per photo
    with pytest.raises(ValueError, match="crops_per_photo"):
        RestorePairs(files, crop=32, crops_per_photo=0)


def tiny(photos, out, **overrides) -> GanConfig:
    values = {"crop": 32, "epochs": 2, "batch_size": 4, "width": 8, "blocks": 1,
              "val_fraction": 0.3, "max_batches": 2, "seed": 0, **overrides}  # fmt: skip
    return GanConfig(photos=photos, out=out, **values)


def test_pretrain_then_gan_from_it_saves_the_ema_generator(photos, tmp_path):
    pre = tmp_path / "pre"
    best = train_gan(tiny(photos, pre, lr_g=1e-3))
    assert {"psnr", "ssim", "feature_distance", "psnr_degraded"} <= set(best)
    record = json.loads((pre / "config.json").read_text())
    assert record["trainer"] == "gan"
    assert record["stage"] == "pretrain"
    assert record["train_photos"] + record["val_photos"] == 12
    lines = [json.loads(x) for x in (pre / "metrics.jsonl").read_text().splitlines()]
    assert "l1" in lines[0]
    assert "loss_d" not in lines[0]
    gan = tmp_path / "gan"
    for d in ("unet", "patch"):
        train_gan(
            tiny(
                photos,
                gan / d,
                stage="gan",
                init=pre / "best.pt",
                discriminator=d,
                content_weight=0.5,
                gan_loss="ralsgan" if d == "patch" else "lsgan",
            )
        )
    lines = [json.loads(x) for x in (gan / "unet" / "metrics.jsonl").read_text().splitlines()]
    assert {"loss_d", "adversarial", "content", "l1", "loss_g"} <= set(lines[0])
    last = torch.load(gan / "unet" / "last.pt", weights_only=True)
    saved = torch.load(gan / "unet" / "best.pt", weights_only=True)
    assert set(saved) == set(last["generator"])
    assert "discriminator" in last
    assert last["ema"]["updates"] == 4  # 2 epochs x 2 batches
    ema = last["ema"]["module"]
    assert any(not torch.equal(ema[k], last["generator"][k]) for k in ema)  # an average, not G
    started = torch.load(pre / "best.pt", weights_only=True)
    assert any(not torch.equal(started[k], last["generator"][k]) for k in started)
    with pytest.raises(RunMismatch, match=r"adv_weight: 0\.1 then, 0\.5 now"):
        train_gan(
            tiny(
                photos,
                gan / "unet",
                stage="gan",
                init=pre / "best.pt",
                content_weight=0.5,
                adv_weight=0.5,
                epochs=3,
                resume=True,
            )
        )
    with pytest.raises(ValueError, match="starts from a pretrain run"):
        train_gan(tiny(photos, tmp_path / "x", stage="gan"))


def test_the_cli_trains_a_stage_and_refuses_bad_input(photos, tmp_path):
    runner = CliRunner()
    args = ["train", "gan", "--photos", str(photos), "--out", str(tmp_path / "cli"), "--crop",
            "32", "--epochs", "1", "--batch-size", "4", "--width", "8", "--blocks", "1",
            "--max-batches", "1", "--val-fraction", "0.3"]  # fmt: skip
    done = runner.invoke(app, args)
    assert done.exit_code == 0, done.output
    assert "best:" in done.stdout
    empty = tmp_path / "empty"
    empty.mkdir()
    assert_one_line_error(runner.invoke(app, [*args[:2], "--photos", str(empty), *args[4:]]),
                          "holds no photos")  # fmt: skip
    assert_one_line_error(runner.invoke(app, [*args, "--stage", "gan"]),
                          "starts from a pretrain run")  # fmt: skip


def test_an_exploding_gan_stops_at_the_step_and_says_so(photos, tmp_path):
    """An adversarial weight of 1e9 blows the generator's loss past the limit at the first GAN
    step: the run stops there, names the step and the losses, and leaves no best.pt of a
    broken model (the pretrain's stays where it was)."""
    from visionloop.train.engine import Diverged

    pre = tmp_path / "pre"
    train_gan(tiny(photos, pre, epochs=1))
    out = tmp_path / "gan"
    with pytest.raises(Diverged, match=r"diverged at step 0 \(epoch 0\): .*loss_g="):
        train_gan(tiny(photos, out, stage="gan", init=pre / "best.pt", adv_weight=1e9))
    assert json.loads((out / "diverged.json").read_text())["step"] == 0
    assert not (out / "best.pt").exists()
    assert (pre / "best.pt").exists()


def test_a_resumed_gan_stage_ends_where_an_uninterrupted_one_does(photos, tmp_path):
    """Generator, discriminator, both optimisers and the EMA copy come back from last.pt:
    bit for bit on the CPU."""
    pre = tmp_path / "pre"
    train_gan(tiny(photos, pre, epochs=1))
    straight, stopped = tmp_path / "straight", tmp_path / "stopped"
    settings = {"stage": "gan", "init": pre / "best.pt", "epochs": 3}
    train_gan(tiny(photos, straight, **settings))

    def stop_after_first(metrics):
        if metrics["epoch"] == 0:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_gan(tiny(photos, stopped, **settings), on_epoch=stop_after_first)
    train_gan(tiny(photos, stopped, resume=True, **settings))
    a = torch.load(straight / "last.pt", weights_only=True)
    b = torch.load(stopped / "last.pt", weights_only=True)
    for part in ("generator", "discriminator"):
        assert all(torch.equal(v, b[part][k]) for k, v in a[part].items()), part
    assert all(torch.equal(v, b["ema"]["module"][k]) for k, v in a["ema"]["module"].items())
    assert a["ema"]["updates"] == b["ema"]["updates"] == 6
    assert a["step"] == b["step"] == 6
