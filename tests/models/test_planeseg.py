"""catseg_plane: catseg's channels unchanged, a weak plane channel gated and refined as
planecam decides, weights from a plain catseg run, and the class marked weak everywhere it is
described."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch

from visionloop.models import available, create
from visionloop.models.base import MASKS
from visionloop.models.catseg import CatSeg, SegNet
from visionloop.models.efficientnet_lite import efficientnet_lite0
from visionloop.models.planecam import CamSettings, decide
from visionloop.models.planeseg import PlaneSeg, PlaneSegNet
from visionloop.serving.transport.base import ModelCard


@pytest.fixture(scope="module")
def parts() -> tuple[SegNet, torch.nn.Module]:
    torch.manual_seed(0)
    return SegNet(2, pretrained=False).eval(), efficientnet_lite0(pretrained=False)


def _model(parts, **plane) -> PlaneSeg:
    seg, imagenet = parts
    settings = CamSettings(**({"gate": 0.8, "seed": 0.6, "background": 0.1} | plane))
    return PlaneSeg(PlaneSegNet(seg, imagenet, zoom=1.5), size=64, plane=settings)


def _images(n: int = 3) -> torch.Tensor:
    rng = np.random.default_rng(1)
    return torch.from_numpy(rng.integers(0, 256, (n, 64, 64, 3), dtype=np.uint8))


def test_registered_with_three_classes_and_the_plane_marked_weak():
    assert available()["catseg_plane"] == "visionloop.models.planeseg:build_catseg_plane"
    model = PlaneSeg(PlaneSegNet(pretrained=False), size=64)
    assert model.classes == ("cat", "animal", "plane")
    described = model.describe()
    assert set(described["weak"]) == {"plane"}
    assert "zero labels" in described["weak"]["plane"]
    card = ModelCard.from_json(ModelCard.of(model).to_json())  # what a replica shows
    assert card.describe()["weak"] == described["weak"]
    assert "weak" not in CatSeg(size=64).describe()  # a trained model says nothing
    with pytest.raises(ValueError, match=r"fixed classes .*serve catseg with that run's"):
        model.with_classes(["cat", "animal", "plane", "ship"])


def test_cat_and_animal_are_catseg_s_own(parts):
    seg, _ = parts
    images = _images()
    catseg = CatSeg(seg, size=64)
    expected = catseg.forward(images)
    got = _model(parts).forward(images)
    torch.testing.assert_close(got["probabilities"][:, :2], expected["probabilities"])
    assert torch.equal(got[MASKS][:, :2], expected[MASKS])


@pytest.mark.parametrize("gate", [0.0, 1.0])
def test_the_plane_mask_is_planecam_s_decision_on_each_image(parts, gate):
    """Gate 0: every image is refined (GrabCut on its pixels); gate 1: no softmax reaches it,
    every plane mask is empty and so is the plane's probability channel."""
    model = _model(parts, gate=gate)
    images = _images()
    out = model.forward(images)
    with torch.inference_mode():
        raw = model.raw(images)
    for i, image in enumerate(images.numpy()):
        chance = float(raw[i, 3, 0, 0])
        expected = decide(image, raw[i, 2].numpy(), chance, model.plane)
        assert np.array_equal(out[MASKS][i, 2].numpy().astype(bool), expected)
        assert (chance >= gate) == (gate == 0.0)
        if gate == 1.0:
            assert not expected.any()
            assert not out["probabilities"][i, 2].any()
    if gate == 0.0:  # not vacuous: GrabCut cut something out
        assert out[MASKS][:, 2].any()
    areas = [a["areas"]["plane"] for a in model.postprocess(out)]
    assert areas == [round(float(m.float().mean()), 6) for m in out[MASKS][:, 2]]


def test_without_pixels_the_plane_mask_is_the_gated_map_s_seeds(parts):
    model = _model(parts, gate=0.0)
    images = _images()
    x = model.normalise(images)
    out = model.forward(x)  # float input: no pixels to cut out
    with torch.inference_mode():
        raw = model.raw(x)
    assert torch.equal(out[MASKS][:, 2].bool(), raw[:, 2] >= model.plane.seed)


def test_a_plain_catseg_state_dict_loads_into_the_catseg_half(tmp_path, parts):
    seg, _ = parts
    path = tmp_path / "best.pt"
    torch.save(seg.state_dict(), path)  # what `visionloop train seg` writes
    model = create("catseg_plane", weights=path)
    assert isinstance(model, PlaneSeg)
    for key, value in seg.state_dict().items():
        assert torch.equal(model.network.state_dict()[f"seg.{key}"], value)
    whole = tmp_path / "whole.pt"
    torch.save(model.network.state_dict(), whole)
    again = create("catseg_plane", weights=whole)
    for key, value in model.network.state_dict().items():
        assert torch.equal(again.network.state_dict()[key], value)
    bad = tmp_path / "bad.pt"
    torch.save({"seg.nothing": torch.zeros(1)}, bad)
    with pytest.raises(ValueError, match="do not fit model 'catseg_plane'"):
        create("catseg_plane", weights=bad)


def test_without_opencv_the_model_refuses_to_load_and_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "cv2", None)  # import cv2 now raises
    with pytest.raises(RuntimeError, match=r"pip install 'visionloop\[planes\]'"):
        PlaneSeg(PlaneSegNet(pretrained=False), size=64)
    unrefined = PlaneSeg(PlaneSegNet(pretrained=False), size=64,
                         plane=CamSettings(refine=False))  # fmt: skip
    assert unrefined.classes == ("cat", "animal", "plane")
