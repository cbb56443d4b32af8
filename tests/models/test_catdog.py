"""catdog: the sample photos get the right answers, and the decision rule is a setting."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.conftest import EXPECTED
from visionloop import imaging
from visionloop.models.catdog import CAT_CLASSES, DOG_CLASSES, CatDog, imagenet_labels
from visionloop.settings import CatDogSettings


def batch_of(model, sample_bytes, names):
    arrays = [
        imaging.prepare(sample_bytes[n], model.input_spec.crop, imaging.ImageLimits())
        for n in names
    ]
    return torch.from_numpy(np.stack(arrays))


def test_sample_photos_are_classified_correctly(catdog, sample_bytes):
    names = list(EXPECTED)
    outputs = catdog.forward(batch_of(catdog, sample_bytes, names))
    results = catdog.postprocess(outputs)
    assert [r["label"] for r in results] == [EXPECTED[n] for n in names]


def test_scores_are_summed_class_probabilities(catdog, sample_bytes):
    outputs = catdog.forward(batch_of(catdog, sample_bytes, ["cat_chelsea.png"]))
    probabilities = outputs["probabilities"][0]
    cat, dog, neither = outputs["scores"][0].tolist()
    assert cat == pytest.approx(probabilities[list(CAT_CLASSES)].sum().item(), abs=1e-6)
    assert dog == pytest.approx(probabilities[list(DOG_CLASSES)].sum().item(), abs=1e-6)
    assert cat + dog + neither == pytest.approx(1.0, abs=1e-5)
    assert cat > 0.8


def test_top_k_names_imagenet_classes(catdog, sample_bytes):
    result = catdog.postprocess(
        catdog.forward(batch_of(catdog, sample_bytes, ["dog_german_shepherd.webp"]))
    )[0]
    assert len(result["imagenet_top_k"]) == 5
    assert result["imagenet_top_k"][0] == {
        "index": 235,
        "name": "German shepherd",
        "probability": pytest.approx(0.97, abs=0.02),
    }


def test_imagenet_labels_cover_the_cat_and_dog_ranges():
    labels = imagenet_labels()
    assert len(labels) == 1000
    assert labels[CAT_CLASSES.start] == "tabby"
    assert labels[DOG_CLASSES.start] == "Chihuahua"


@pytest.mark.parametrize(
    ("cat", "dog", "threshold", "label"),
    [
        (0.6, 0.1, 0.5, "cat"),
        (0.4, 0.1, 0.5, "neither"),
        (0.4, 0.1, 0.3, "cat"),
        (0.1, 0.7, 0.5, "dog"),
        (0.3, 0.35, 0.3, "dog"),
        (0.2, 0.2, 0.5, "neither"),
    ],
)
def test_decision_uses_thresholds_from_settings(cat, dog, threshold, label):
    model = CatDog(
        network=torch.nn.Identity(),
        settings=CatDogSettings(cat_threshold=threshold, dog_threshold=threshold),
    )
    assert model.decide(cat, dog) == label


def test_thresholds_come_from_the_environment(monkeypatch):
    monkeypatch.setenv("VISIONLOOP_CATDOG_CAT_THRESHOLD", "0.9")
    assert CatDogSettings().cat_threshold == 0.9


def test_top_k_zero_omits_the_list(catdog, sample_bytes):
    model = CatDog(network=catdog.network, settings=CatDogSettings(top_k=0))
    result = model.postprocess(model.forward(batch_of(model, sample_bytes, ["cat_chelsea.png"])))[0]
    assert "imagenet_top_k" not in result


def test_forward_rejects_wrong_shaped_input(catdog):
    with pytest.raises(ValueError, match=r"expected uint8 images of shape \(N, H, W, 3\)"):
        catdog.forward(torch.zeros((1, 3, 224, 224), dtype=torch.uint8))
