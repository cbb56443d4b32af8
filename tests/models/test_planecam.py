"""Zero-label plane masks: the activation map's arithmetic, the gate, GrabCut's refinement and
the threshold search."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw, ImageFilter
from torch import nn

from visionloop.models.efficientnet_lite import efficientnet_lite0
from visionloop.models.planecam import (
    PLANE_CLASSES,
    CamSettings,
    PlaneCam,
    decide,
    iou_counts,
    refine,
    tune,
)


@pytest.fixture(scope="module")
def network() -> nn.Module:
    torch.manual_seed(0)
    return efficientnet_lite0(pretrained=False)


class _Features(nn.Module):
    """Replaces the head: one active feature (channel 0) at a cell given as a fraction of the
    grid (whatever the grid's size), or the same features at every cell (``everywhere``)."""

    def __init__(self, row: float = 0.0, col: float = 0.0, everywhere: bool = False) -> None:
        super().__init__()
        self.row, self.col, self.everywhere = row, col, everywhere

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, _, h, w = x.shape
        if self.everywhere:
            torch.manual_seed(1)
            return torch.randn(n, 1280, 1, 1).expand(n, 1280, h, w)
        out = torch.zeros(n, 1280, h, w)
        out[:, 0, int(self.row * h), int(self.col * w)] = 1.0
        return out


def test_with_the_same_features_everywhere_a_cell_says_what_the_pooled_head_says() -> None:
    """P(plane) is the best cell's plane mass under the classifier's softmax; when every cell
    holds the same features that is the network's own softmax mass on the plane classes."""
    net = efficientnet_lite0(pretrained=False)
    net.head = _Features(everywhere=True)  # type: ignore[assignment]
    x = torch.randn(2, 3, 224, 224)
    probability, cam = PlaneCam(net, zoom=1.0).maps(x)
    with torch.inference_mode():
        expected = net(x).softmax(1)[:, list(PLANE_CLASSES)].sum(1)
    torch.testing.assert_close(probability, expected, rtol=1e-4, atol=1e-6)
    assert cam.shape == (2, 224, 224)
    assert float(cam.min()) >= 0.0
    assert float(cam.max()) <= 1.0


@pytest.mark.parametrize("zoom", [1.0, 2.0])
def test_the_map_peaks_where_the_plane_rows_see_their_feature(zoom: float) -> None:
    """No transposed axes, at any zoom: a feature at the cell 1/7 down and 5/7 across puts
    the map's peak there in the image, at the input's size, and the map is zero far from it."""
    net = efficientnet_lite0(pretrained=False)
    net.head = _Features(1 / 7, 5 / 7)  # type: ignore[assignment]
    with torch.no_grad():
        net.classifier.weight.zero_()
        net.classifier.bias.zero_()
        net.classifier.weight[list(PLANE_CLASSES), 0] = 1.0
    probability, cam = PlaneCam(net, zoom=zoom).maps(torch.zeros(1, 3, 224, 224))
    assert cam.shape == (1, 224, 224)
    y, x = np.unravel_index(int(cam[0].argmax()), (224, 224))
    assert 32 <= y < 64  # the cell (1, 5) of a 32-px grid
    assert 160 <= x < 192
    assert float(cam[0].max()) == pytest.approx(1.0)
    assert float(cam[0, 200:, :100].max()) == 0.0
    # the active cell's classifier gives each plane class logit 1 and the rest 0
    expected = 3 * np.e / (3 * np.e + 997)
    assert float(probability[0]) == pytest.approx(expected, rel=1e-4)


def test_no_positive_position_gives_an_all_zero_map() -> None:
    net = efficientnet_lite0(pretrained=False)
    net.head = _Features(3 / 7, 3 / 7)  # type: ignore[assignment]
    with torch.no_grad():
        net.classifier.weight.zero_()
        net.classifier.weight[list(PLANE_CLASSES), 0] = -1.0  # the only feature says "no"
    _, cam = PlaneCam(net).maps(torch.zeros(1, 3, 64, 64))
    assert float(cam.abs().max()) == 0.0


def _scene(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A dark plane-like shape on a textured light background; its mask; a coarse map (a
    blurred, shifted blob over it, as a 7 x 7 CAM upsampled looks)."""
    rng = np.random.default_rng(seed)
    base = rng.integers(170, 230, size=(160, 160, 3)).astype(np.uint8)
    image = Image.fromarray(base).filter(ImageFilter.GaussianBlur(2))
    shape = Image.new("L", (160, 160))
    draw = ImageDraw.Draw(shape)
    draw.ellipse((30, 70, 130, 90), fill=255)  # fuselage
    draw.polygon([(70, 80), (95, 40), (105, 40), (90, 80)], fill=255)  # wing
    draw.polygon([(70, 80), (95, 120), (105, 120), (90, 80)], fill=255)
    plane = Image.new("RGB", (160, 160), (40, 50, 90))
    image.paste(plane, (0, 0), shape)
    truth = np.asarray(shape) > 127
    blob = Image.new("L", (160, 160))
    ImageDraw.Draw(blob).ellipse((35, 45, 135, 125), fill=255)
    cam = np.asarray(blob.filter(ImageFilter.GaussianBlur(18)), dtype=np.float32)
    return np.asarray(image), truth, cam / cam.max()


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / (a | b).sum())


def test_grabcut_turns_a_coarse_region_into_the_object() -> None:
    image, truth, cam = _scene()
    s = CamSettings(seed=0.5, background=0.1, core=0.95)
    coarse = cam >= s.seed
    refined = refine(image, cam, s)
    assert _iou(refined, truth) > 0.8
    assert _iou(refined, truth) > _iou(coarse, truth) + 0.2


def test_the_gate_empties_the_mask_of_an_unlikely_plane() -> None:
    image, _, cam = _scene()
    s = CamSettings(gate=0.3)
    assert not decide(image, cam, 0.29, s).any()
    assert decide(image, cam, 0.31, s).any()
    unrefined = decide(image, cam, 0.9, CamSettings(refine=False, seed=0.5))
    assert np.array_equal(unrefined, cam >= 0.5)


def test_refine_edge_cases() -> None:
    image, _, cam = _scene()
    s = CamSettings(seed=0.5, background=0.1)
    assert not refine(image, np.zeros_like(cam), s).any()  # nothing reaches the seed
    everywhere = np.ones_like(cam)
    assert refine(image, everywhere, s).all()  # no background to model: the seeds
    with pytest.raises(ValueError, match="differ in size"):
        refine(image, cam[:100], s)


def test_masks_checks_the_two_inputs_match(network) -> None:
    cam = PlaneCam(network)
    with pytest.raises(ValueError, match="do not match"):
        cam.masks(np.zeros((1, 64, 64, 3), np.uint8), torch.zeros(1, 3, 96, 96))
    masks, p, maps = cam.masks(np.zeros((2, 64, 64, 3), np.uint8), torch.zeros(2, 3, 64, 64))
    assert masks.shape == maps.shape == (2, 64, 64)
    assert p.shape == (2,)


def test_tune_raises_the_gate_above_a_plane_free_image_with_a_blob() -> None:
    image, truth, cam = _scene()
    empty = np.zeros_like(truth)
    images = np.stack([image, image])
    maps = np.stack([cam, cam])
    probabilities = np.array([0.6, 0.08], np.float32)  # the second image has no plane
    truths = np.stack([truth, empty])
    best, tried = tune(images, probabilities, maps, truths, gates=(0.05, 0.1), seeds=(0.5,),
                       backgrounds=(0.1,))  # fmt: skip
    assert best.gate == 0.1
    assert [t["gate"] for t in tried] == [0.05, 0.1]
    assert tried[1]["iou"] > tried[0]["iou"]
    inter, union = iou_counts([decide(i, m, float(q), best) for i, m, q in
                               zip(images, maps, probabilities, strict=True)], truths)  # fmt: skip
    assert tried[1]["iou"] == pytest.approx(inter / union)


def test_tune_keeps_false_masks_on_plane_free_images_rare() -> None:
    """The best IoU would take a faint plane and a blob on a plane-free photo together; with
    at most 5 % of plane-free images masked the gate goes above both."""
    image, truth, cam = _scene()
    images, maps = np.stack([image, image]), np.stack([cam, cam])
    probabilities = np.array([0.06, 0.07], np.float32)
    truths = np.stack([truth, np.zeros_like(truth)])
    grid = {"gates": (0.05, 0.1), "seeds": (0.5,), "backgrounds": (0.1,)}
    loose, tried = tune(images, probabilities, maps, truths, max_false_rate=1.0, **grid)
    assert loose.gate == 0.05
    assert tried[0]["iou"] > 0.0
    assert tried[0]["false_rate"] == 1.0
    strict, _ = tune(images, probabilities, maps, truths, **grid)
    assert strict.gate == 0.1
    with pytest.raises(ValueError, match="max_false_rate"):
        tune(images, probabilities, maps, truths, max_false_rate=2.0)


def test_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="background <= seed <= core"):
        CamSettings(seed=0.9, core=0.5)
    with pytest.raises(ValueError, match="probability"):
        CamSettings(gate=1.5)
    with pytest.raises(ValueError, match="iterations"):
        CamSettings(iterations=0)
    with pytest.raises(ValueError, match="indices"):
        PlaneCam(efficientnet_lite0(pretrained=False), classes=(1000,))
    with pytest.raises(ValueError, match="zoom"):
        PlaneCam(efficientnet_lite0(pretrained=False), zoom=8.0)


def test_maps_of_a_bfloat16_network_match_its_float32_twin():
    """Served in bf16 (``--precision bf16``), the classifier's weights are bf16 while the maps
    are computed in fp32: no dtype clash, and the same answer within bf16's precision."""
    torch.manual_seed(0)
    net = efficientnet_lite0(pretrained=False)
    x = torch.randn(2, 3, 64, 64)
    p32, m32 = PlaneCam(net, zoom=1.0).maps(x)
    half = efficientnet_lite0(pretrained=False)
    half.load_state_dict(net.state_dict())
    p16, m16 = PlaneCam(half.to(torch.bfloat16), zoom=1.0).maps(x.to(torch.bfloat16))
    assert p16.dtype == m16.dtype == torch.float32
    torch.testing.assert_close(p16, p32, atol=0.05, rtol=0.2)
    assert m16.shape == m32.shape
