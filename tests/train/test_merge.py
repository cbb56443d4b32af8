"""data merge: datasets labelled for different classes become one, each image annotated for
its own dataset's classes only."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from visionloop.cli import app
from visionloop.train.data import DatasetError, SegDataset
from visionloop.train.merge import merge
from visionloop.train.synth import synthesize


def plane_dataset(root, count=3):
    for folder in ("images", "masks/plane"):
        (root / folder).mkdir(parents=True)
    rows = ["image,plane"]
    for i in range(count):
        image = np.full((40, 40, 3), 180, np.uint8)
        mask = np.zeros((40, 40), np.uint8)
        mask[10 : 20 + i, 5:35] = 255
        Image.fromarray(image).save(root / "images" / f"{i:06d}.png")  # same names as synth
        Image.fromarray(mask).save(root / "masks" / "plane" / f"{i:06d}.png")
        rows.append(f"{i:06d}.png,1")
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    return root


def test_each_image_keeps_its_own_classes_and_masks(tmp_path):
    synthesize(tmp_path / "old", 4, size=32, seed=0)
    plane_dataset(tmp_path / "new")
    classes = merge(tmp_path / "both", [tmp_path / "old", tmp_path / "new"])
    assert classes == ("cat", "animal", "plane")
    merged = SegDataset(tmp_path / "both", size=32)
    assert len(merged) == 7
    flags = [s.annotated for s in merged.samples]
    assert flags[:4] == [(True, True, False)] * 4
    assert flags[4:] == [(False, False, True)] * 3
    old, new = SegDataset(tmp_path / "old", size=32), SegDataset(tmp_path / "new", size=32)
    for mine, theirs in zip(merged.samples, old.samples + new.samples, strict=True):
        assert mine.image.read_bytes() == theirs.image.read_bytes()
        assert set(mine.masks) == set(theirs.masks)
        for c, path in mine.masks.items():
            assert path.read_bytes() == theirs.masks[c].read_bytes()


def test_merge_refuses_a_broken_source_and_a_full_folder_and_writes_nothing(tmp_path):
    synthesize(tmp_path / "old", 2, size=32, seed=0)
    broken = plane_dataset(tmp_path / "broken")
    (broken / "masks" / "plane" / "000001.png").unlink()
    with pytest.raises(DatasetError, match=r"plane is annotated on 000001\.png"):
        merge(tmp_path / "out", [tmp_path / "old", broken])
    assert not (tmp_path / "out").exists()
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    with pytest.raises(DatasetError, match="not empty"):
        merge(tmp_path / "full", [tmp_path / "old", tmp_path / "old"])
    with pytest.raises(DatasetError, match="at least two"):
        merge(tmp_path / "one", [tmp_path / "old"])
    twice = plane_dataset(tmp_path / "twice", count=2)  # one stem in two subfolders
    (twice / "images" / "sub").mkdir()
    (twice / "images" / "000000.png").rename(twice / "images" / "sub" / "000000.png")
    (twice / "images" / "000001.png").rename(twice / "images" / "000000.jpg")
    Image.open(twice / "images" / "000000.jpg").convert("RGB").save(
        twice / "images" / "000000.jpg", format="JPEG"
    )
    (twice / "labels.csv").write_text("image,plane\nsub/000000.png,1\n000000.jpg,1\n")
    with pytest.raises(DatasetError, match="share the name '000000'"):
        merge(tmp_path / "dup", [tmp_path / "old", twice])
    assert not (tmp_path / "dup").exists()
    assert not (tmp_path / ".dup.partial").exists()
    result = CliRunner().invoke(app, ["data", "merge", str(tmp_path / "cli"),
                                      str(tmp_path / "old"), str(broken)])  # fmt: skip
    assert result.exit_code == 2
    assert "Traceback" not in result.output
    fine = plane_dataset(tmp_path / "fine")
    result = CliRunner().invoke(app, ["data", "merge", str(tmp_path / "cli"),
                                      str(tmp_path / "old"), str(fine)])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "classes cat, animal, plane" in " ".join(result.output.split())


def test_a_merged_dataset_trains_three_classes_with_no_loss_where_unlabelled(tmp_path):
    """The merged folder trains three classes as it is, like any partially labelled
    dataset (what the masked loss does with the flags is tested with the loss)."""
    from visionloop.train.seg import SegConfig, train_seg

    synthesize(tmp_path / "old", 8, size=32, seed=0)
    plane_dataset(tmp_path / "new", count=8)
    merge(tmp_path / "both", [tmp_path / "old", tmp_path / "new"])
    config = SegConfig(data=tmp_path / "both", out=tmp_path / "run",
                       classes=["cat", "animal", "plane"], size=32, epochs=1, batch_size=4,
                       pretrained=False, val_fraction=0.5)  # fmt: skip
    best = train_seg(config)
    assert {"iou_cat", "iou_animal", "iou_plane"} <= set(best)
    assert (tmp_path / "run" / "best.pt").is_file()
