"""The dataset format: a synthetic dataset loads; every kind of breakage is a clear error
naming the file; names cannot leave the dataset folder; images and masks keep the size and
decompression guards; augmentation moves masks with the image and is deterministic."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from tests.test_imaging import png_header_only
from visionloop.cli import app
from visionloop.train.data import Augment, DatasetError, SegDataset
from visionloop.train.synth import synthesize

# 64 M pixels declared in a ~60-byte file: over our 50 M default, under the point where
# Pillow's own guard stops (it only warns below 2 x 89 M pixels).
BOMB = png_header_only(8_000, 8_000)
TOO_LARGE = "image too large: 8000 x 8000 exceeds 50000000 pixels"


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    synthesize(root, 8, size=64, seed=1)
    return root


def copy_of(synth, tmp_path):
    root = tmp_path / "data"
    shutil.copytree(synth, root)
    return root


def test_synthetic_data_is_deterministic_and_loads(synth, tmp_path):
    again = tmp_path / "again"
    synthesize(again, 8, size=64, seed=1)
    for name in ("images/000003.png", "masks/cat/000003.png", "masks/animal/000003.png"):
        assert (synth / name).read_bytes() == (again / name).read_bytes()
    data = SegDataset(synth, ["cat", "animal"], size=32)
    image, masks, annotated = data[0]
    assert image.shape == (32, 32, 3)
    assert image.dtype == torch.uint8
    assert masks.shape == (2, 32, 32)
    assert annotated.tolist() == [True, True]
    assert torch.all(masks[1] >= masks[0])  # every cat pixel is an animal pixel


def test_an_unannotated_class_needs_no_mask_and_gets_an_empty_channel(synth, tmp_path):
    root = copy_of(synth, tmp_path)
    (root / "masks" / "animal" / "000000.png").unlink()
    rows = (root / "labels.csv").read_text().splitlines()
    rows[1] = "000000.png,1,0"
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    _, masks, annotated = SegDataset(root, size=32)[0]
    assert annotated.tolist() == [True, False]
    assert masks[1].sum() == 0


@pytest.mark.parametrize(
    ("breakage", "message"),
    [
        ("missing_mask", r"animal is annotated on 000002.png but .*000002.png is missing"),
        ("size", r"mask is 10x10, image is 64x64"),
        ("unknown_class", r"unknown class\(es\) \['dog'\]"),
        ("missing_image", r"image .*000009.png does not exist"),
        ("bad_flag", r"flags must be 0 or 1"),
        ("no_labels", r"labels.csv: missing"),
    ],
)
def test_a_broken_dataset_is_a_clear_error(synth, tmp_path, breakage, message):
    root = copy_of(synth, tmp_path)
    labels = root / "labels.csv"
    classes = None
    if breakage == "missing_mask":
        (root / "masks" / "animal" / "000002.png").unlink()
    elif breakage == "size":
        Image.new("L", (10, 10)).save(root / "masks" / "cat" / "000001.png")
    elif breakage == "unknown_class":
        classes = ["cat", "dog"]
    elif breakage == "missing_image":
        labels.write_text(labels.read_text() + "000009.png,1,1\n")
    elif breakage == "bad_flag":
        labels.write_text(labels.read_text() + "000001.png,yes,1\n")
    else:
        labels.unlink()
    with pytest.raises(DatasetError, match=message):
        SegDataset(root, classes, size=32)


def test_augmentation_moves_masks_with_the_image_and_repeats_per_seed(synth):
    plain = SegDataset(synth, size=48)
    augmented = SegDataset(synth, size=48, augment=Augment(jitter=0.0), seed=5)
    image, masks, _ = augmented[3]
    image2, masks2, _ = augmented[3]
    assert torch.equal(image, image2)
    assert torch.equal(masks, masks2)
    assert not torch.equal(image, plain[3][0])
    # masks stay binary and nested under geometry
    assert set(torch.unique(masks).tolist()) <= {0.0, 1.0}
    assert torch.all(masks[1] >= masks[0])
    augmented.epoch = 1
    assert not torch.equal(augmented[3][0], image)
    # jitter touches the image only
    jittered = SegDataset(synth, size=48, augment=Augment(jitter=0.5), seed=5)
    assert torch.equal(jittered[3][1], masks)
    assert not np.array_equal(jittered[3][0].numpy(), image.numpy())


@pytest.mark.parametrize(
    "file", ["images/000001.png", "masks/cat/000001.png", "masks/animal/000001.png"]
)
def test_a_bomb_in_a_dataset_is_refused_when_it_is_opened(synth, tmp_path, file):
    root = copy_of(synth, tmp_path)
    (root / file).write_bytes(BOMB)
    with pytest.raises(DatasetError, match=rf"labels\.csv:3: .*000001\.png: {TOO_LARGE}"):
        SegDataset(root, size=32)
    result = CliRunner().invoke(
        app, ["train", "seg", "--data", str(root), "--out", str(tmp_path / "run"), "--size", "32"]
    )
    assert result.exit_code == 2
    assert "Traceback" not in result.output
    assert TOO_LARGE in " ".join(result.output.split())


@pytest.mark.parametrize("file", ["images/000004.png", "masks/animal/000004.png"])
def test_a_file_that_became_a_bomb_after_opening_is_refused_when_it_is_read(synth, tmp_path, file):
    root = copy_of(synth, tmp_path)
    data = SegDataset(root, size=32)  # checked now; the file is replaced before training
    (root / file).write_bytes(BOMB)
    with pytest.raises(DatasetError, match=re.escape(f"{root / file}: {TOO_LARGE}")):
        data[4]


def test_a_truncated_image_is_named_when_it_is_read(synth, tmp_path):
    root = copy_of(synth, tmp_path)
    image = root / "images" / "000005.png"
    image.write_bytes(image.read_bytes()[:80])  # the header survives, the pixels do not
    data = SegDataset(root, size=32)
    with pytest.raises(DatasetError, match=re.escape(f"{image}: corrupt PNG")):
        data[5]


@pytest.mark.parametrize("how", ["parent", "absolute", "nested parent"])
def test_image_names_cannot_leave_the_images_folder(synth, tmp_path, how):
    root = copy_of(synth, tmp_path)
    outside = tmp_path / "outside.png"  # a real image, so following the name would work
    shutil.copyfile(root / "images" / "000000.png", outside)
    for c in ("cat", "animal"):
        shutil.copyfile(root / "masks" / c / "000000.png", root / "masks" / c / "outside.png")
    name = {
        "parent": "../../outside.png",
        "absolute": str(outside),
        "nested parent": "sub/../../../outside.png",
    }[how]
    labels = root / "labels.csv"
    labels.write_text(labels.read_text() + f"{name},1,1\n")  # line 10
    with pytest.raises(DatasetError, match=r"labels\.csv:10: image .* is outside images/"):
        SegDataset(root, size=32)


def test_class_names_cannot_leave_the_masks_folder(synth, tmp_path):
    root = copy_of(synth, tmp_path)
    escaped = root / "masks" / ".." / ".." / "elsewhere"
    escaped.mkdir(parents=True)
    for n in range(8):  # real masks there, so following the name would work
        shutil.copyfile(root / "masks" / "cat" / f"{n:06d}.png", escaped / f"{n:06d}.png")
    labels = root / "labels.csv"
    rows = labels.read_text().splitlines()
    rows[0] = "image,../../elsewhere,animal"
    labels.write_text("\n".join(rows) + "\n")
    with pytest.raises(DatasetError, match=r"class names are folder names under masks/"):
        SegDataset(root, size=32)


@pytest.mark.parametrize("workers", [0, 1])
def test_training_on_a_truncated_image_says_which_in_one_line(synth, tmp_path, workers):
    root = copy_of(synth, tmp_path)
    image = root / "images" / "000005.png"
    image.write_bytes(image.read_bytes()[:80])  # passes the header checks, fails to decode
    # A fresh process, as a user runs it: a DataLoader worker is forked, and forking this test
    # process (servers, OpenVINO and torch thread pools left by earlier tests) is unsafe: it
    # crashed the whole test run minutes later.
    result = subprocess.run(
        [sys.executable, "-m", "visionloop", "train", "seg", "--data", str(root),
         "--out", str(tmp_path / "run"), "--size", "32", "--epochs", "1", "--batch-size", "8",
         "--workers", str(workers)],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    output = result.stdout + result.stderr
    assert result.returncode == 2, output
    assert "Traceback" not in output
    assert f"{image}: corrupt PNG" in "".join(output.split("\n"))
