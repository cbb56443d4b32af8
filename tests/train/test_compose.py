"""data compose: cut-outs pasted on backgrounds; masks are exactly where each class's opaque
pixels ended up (occlusion included), parents are unions, distractors are never labelled."""

from __future__ import annotations

import re

import numpy as np
import pytest
from PIL import Image, ImageDraw
from typer.testing import CliRunner

from tests.test_imaging import png_header_only
from visionloop.cli import app
from visionloop.imaging import ImageTooLarge
from visionloop.train.compose import compose
from visionloop.train.data import SegDataset

RED, BLUE, GREEN = (255, 0, 0, 255), (0, 0, 255, 255), (0, 255, 0, 255)


@pytest.fixture
def material(tmp_path):
    cutouts, backgrounds = tmp_path / "cutouts", tmp_path / "backgrounds"
    for folder, colour, shape in (
        ("cat", RED, "disc"),
        ("dog", BLUE, "box"),
        ("_thing", GREEN, "box"),
    ):
        (cutouts / folder / "sub").mkdir(parents=True)
        image = Image.new("RGBA", (40, 40))
        draw = ImageDraw.Draw(image)
        (draw.ellipse if shape == "disc" else draw.rectangle)((5, 5, 35, 35), fill=colour)
        image.save(cutouts / folder / "sub" / "a.png")
    backgrounds.mkdir()
    rng = np.random.default_rng(0)
    for i in range(2):  # grey noise: no pure red, blue or green
        Image.fromarray(rng.integers(90, 160, (50, 70, 3), dtype=np.uint8)).save(
            backgrounds / f"{i}.jpg"
        )
    return cutouts, backgrounds


def test_masks_are_where_each_class_ended_up(material, tmp_path):
    cutouts, backgrounds = material
    out = tmp_path / "out"
    classes = compose(
        out, cutouts, backgrounds, 12, size=64, seed=3, parents={"cat": "animal", "dog": "animal"}
    )
    assert classes == ["cat", "dog", "animal"]
    data = SegDataset(out, size=64)
    seen = 0
    for index in range(12):
        pixels = np.asarray(Image.open(out / "images" / f"{index:06d}.png")).astype(int)
        _, masks, annotated = data[index]
        cat, dog, animal = (masks[i].numpy() > 0 for i in range(3))
        assert annotated.tolist() == [True, True, True]
        r, g, b = pixels[..., 0], pixels[..., 1], pixels[..., 2]
        red = (r > 220) & (g < 45) & (b < 45)  # opaque enough to be labelled
        blue = (b > 220) & (r < 45) & (g < 45)
        assert not np.any(red & ~cat)  # every visible cat pixel is labelled cat
        assert not np.any(blue & ~dog)
        if cat.any():  # and labelled pixels are cat-coloured (resampled edges aside)
            assert np.mean((r - np.maximum(g, b))[cat] > 40) > 0.95
        if dog.any():
            assert np.mean((b - np.maximum(r, g))[dog] > 40) > 0.95
        assert np.array_equal(animal, cat | dog)
        seen += int(cat.any()) + int(dog.any())
    assert seen > 4  # the scenes did contain labelled objects


def test_compose_is_deterministic_and_refuses_bad_input(material, tmp_path):
    cutouts, backgrounds = material
    compose(tmp_path / "a", cutouts, backgrounds, 3, size=48, seed=1)
    compose(tmp_path / "b", cutouts, backgrounds, 3, size=48, seed=1)
    assert (tmp_path / "a/images/000002.png").read_bytes() == (
        tmp_path / "b/images/000002.png"
    ).read_bytes()
    with pytest.raises(ValueError, match="without cut-outs"):
        compose(tmp_path / "c", cutouts, backgrounds, 1, parents={"bird": "animal"})
    result = CliRunner().invoke(
        app,
        [
            "data",
            "compose",
            str(tmp_path / "d"),
            "--cutouts",
            str(tmp_path / "none"),
            "--backgrounds",
            str(backgrounds),
        ],
    )
    assert result.exit_code == 2


@pytest.mark.parametrize("where", ["backgrounds/0.jpg", "cutouts/cat/sub/a.png"])
def test_a_bomb_among_the_material_is_a_clear_error(material, tmp_path, where):
    cutouts, backgrounds = material
    for path in (tmp_path / "backgrounds").iterdir():  # one background: it is always drawn
        if path.name != "0.jpg":
            path.unlink()
    bomb = tmp_path / where
    bomb.write_bytes(png_header_only(8_000, 8_000))  # 64 M pixels: over our 50 M default
    message = re.escape(f"{bomb}: image too large: 8000 x 8000 exceeds 50000000 pixels")
    with pytest.raises(ImageTooLarge, match=message):
        compose(tmp_path / "out", cutouts, backgrounds, 4, size=64, seed=0, objects=(4, 4))
    result = CliRunner().invoke(
        app, ["data", "compose", str(tmp_path / "cli"), "--cutouts", str(cutouts),
              "--backgrounds", str(backgrounds), "--count", "4", "--size", "64"],
    )  # fmt: skip
    assert result.exit_code == 2
    assert "Traceback" not in result.output
    assert "exceeds 50000000 pixels" in result.output


def test_objects_and_scale_set_how_many_and_how_large(material, tmp_path):
    """One object per image at 45-55 % of the side: each image has one labelled or distractor
    object, and a labelled one's longer side is 45-55 % of the image's (the disc's bounding
    box is 30 of the cut-out's 40 px). A cut-out is never enlarged: at 80-90 % of 64 px it
    keeps its own 40 px."""
    cutouts, backgrounds = material
    out = tmp_path / "one"
    compose(out, cutouts, backgrounds, 12, size=64, seed=2, objects=(1, 1), scale=(0.45, 0.55))
    compose(tmp_path / "big", cutouts, backgrounds, 12, size=64, seed=2, objects=(1, 1),
            scale=(0.8, 0.9))  # fmt: skip
    data = SegDataset(out, size=64)
    big = SegDataset(tmp_path / "big", size=64)
    measured = 0
    for dataset, low, high in ((data, 0.45 * 64 * 30 / 40, 0.55 * 64 * 30 / 40), (big, 31, 31)):
        for index in range(12):
            _, masks, _ = dataset[index]
            assert sum(bool(m.any()) for m in masks) <= 1  # the one object may be a distractor
            for plane in masks:
                rows = np.flatnonzero(plane.numpy().any(axis=1))
                cols = np.flatnonzero(plane.numpy().any(axis=0))
                if len(rows) and min(rows[0], cols[0]) > 0 and max(rows[-1], cols[-1]) < 63:
                    side = max(rows[-1] - rows[0], cols[-1] - cols[0]) + 1  # not cut by an edge
                    assert low - 2 <= side <= high + 2
                    measured += 1
    assert measured >= 4  # not vacuous: objects away from the edges were measured
    with pytest.raises(ValueError, match="objects must be a range"):
        compose(tmp_path / "x", cutouts, backgrounds, 1, objects=(2, 1))
    with pytest.raises(ValueError, match="scale must be a range"):
        compose(tmp_path / "y", cutouts, backgrounds, 1, scale=(0.0, 0.5))
    base = ["data", "compose", str(tmp_path / "cli"), "--cutouts", str(cutouts),
            "--backgrounds", str(backgrounds), "--count", "2", "--size", "48"]  # fmt: skip
    result = CliRunner().invoke(app, [*base, "--objects", "1", "--scale", "0.5-0.7"])
    assert result.exit_code == 0, result.output
    bad = CliRunner().invoke(app, [*base, "--objects", "one"])
    assert bad.exit_code == 2
    assert "--objects must be a number or a range like 1-4, got 'one'" in bad.output
