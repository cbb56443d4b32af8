"""Selection (uncertainty, k-center diversity, mix, mining by the ImageNet head) and
pre-labels through the library and through a running server."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.live_server import client
from visionloop.label.prelabel import LibraryPrelabeler, ServerPrelabeler, _resize, square_input
from visionloop.label.select import group_indices, kcenter, mine_scores, pick, pool_scores
from visionloop.models import registry
from visionloop.models.catdog import imagenet_labels
from visionloop.models.catseg import CatSeg
from visionloop.models.planecam import PLANE_CLASSES
from visionloop.settings import ModelSettings

DATA = Path(__file__).resolve().parents[1] / "data"


def test_kcenter_spreads_over_the_clusters_and_avoids_the_labelled():
    rng = np.random.default_rng(0)
    centres = np.array([[0, 0], [10, 0], [0, 10], [10, 10]], dtype=np.float32)
    points = np.concatenate([c + rng.normal(0, 0.3, (25, 2)) for c in centres]).astype(np.float32)
    clusters = {i // 25 for i in kcenter(points, 4)}
    assert clusters == {0, 1, 2, 3}
    # cluster 0 already labelled: three more picks land in the other three clusters
    assert {i // 25 for i in kcenter(points, 3, centers=[0, 1])} == {1, 2, 3}


def test_uncertainty_takes_the_highest_entropy_and_mix_adds_diversity():
    entropy = np.array([0.1, 0.9, 0.5, 0.8, 0.2, 0.3])
    embeddings = np.eye(6, dtype=np.float32)
    assert [i for i, _ in pick("uncertainty", 2, entropy, embeddings)] == [1, 3]
    mixed = [i for i, _ in pick("mix", 4, entropy, embeddings)]
    assert mixed[:2] == [1, 3]
    assert len(set(mixed)) == 4
    with pytest.raises(ValueError, match="method must be one of"):
        pick("random", 2, entropy, embeddings)


def test_class_groups_parse():
    assert group_indices("cat") == [281, 282, 283, 284, 285]
    assert len(group_indices("animal")) == 398
    assert group_indices("7-8,cat") == [7, 8, 281, 282, 283, 284, 285]
    assert group_indices("plane") == list(PLANE_CLASSES) == [404, 895, 908]
    names = imagenet_labels()
    assert [names[i] for i in group_indices("plane")] == ["airliner", "warplane", "wing"]
    with pytest.raises(ValueError, match="0-999"):
        group_indices("990-1200")


@pytest.mark.slow
def test_mining_ranks_the_animals_above_the_rest():
    paths = [DATA / n for n in ("neither_coffee.png", "cat_chelsea.png", "neither_astronaut.png",
                                "dog_german_shepherd.webp")]  # fmt: skip
    scores = mine_scores(registry.create("catdog"), paths, group_indices("animal"))
    assert set(np.argsort(-scores)[:2].tolist()) == {1, 3}
    # "animals other than cats": the dog first
    other = mine_scores(
        registry.create("catdog"), paths, group_indices("animal"), group_indices("cat")
    )
    assert int(np.argmax(other)) == 3


@pytest.fixture(scope="module")
def catseg() -> CatSeg:
    return CatSeg(size=64).prepare(ModelSettings(model="catseg"))  # type: ignore[return-value]


@pytest.fixture
def photos(tmp_path):
    rng = np.random.default_rng(0)
    out = []
    for n, (w, h) in enumerate([(80, 60), (50, 90), (64, 64)]):
        path = tmp_path / f"{n}.png"
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(path)
        out.append(path)
    return out


def test_pool_scores_give_entropy_and_unit_embeddings(catseg, photos):
    entropy, embeddings = pool_scores(catseg, photos)
    assert entropy.shape == (3,)
    assert ((entropy >= 0) & (entropy <= np.log(2) + 1e-6)).all()
    np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1.0, rtol=1e-5)


# How far from the threshold a pixel's probability may be and still come out differently
# through the server: its batches differ from the library's, so the float sums do (measured:
# at most 7e-7 apart on CPU). Every other pixel must agree exactly.
AT_THE_THRESHOLD = 1e-5


def test_server_and_library_prelabels_agree_at_the_image_size(serve, catseg, photos):
    library = LibraryPrelabeler(catseg)(photos)
    server = serve(model=catseg)
    with client(server):
        remote = ServerPrelabeler(server.url, "catseg", size=64)(photos)
    for path, a, b in zip(photos, library, remote, strict=True):
        with Image.open(path) as image:
            size = image.size[::-1]
        assert set(a) == set(b) == {"cat", "animal"}
        square, original = square_input(path, 64)
        with torch.inference_mode():
            batch = torch.from_numpy(np.array(square)[None])
            probabilities = catseg.forward(batch)["probabilities"][0].numpy()
        for i, c in enumerate(catseg.classes):
            assert a[c].shape == b[c].shape == size
            near = np.abs(probabilities[i] - catseg.threshold) < AT_THE_THRESHOLD
            may_differ = _resize(near, original)  # as the masks are scaled back
            assert may_differ.mean() < 0.01  # the exception stays an exception
            assert not ((a[c] != b[c]) & ~may_differ).any()


def test_a_server_error_names_the_image(serve, catseg, photos):
    server = serve(model=catseg)
    with pytest.raises(RuntimeError, match=r"0\.png: the server said 404"):
        ServerPrelabeler(server.url, "nonexistent", size=64)(photos[:1])


def test_kcenter_moves_away_from_labelled_images_past_the_pool():
    rng = np.random.default_rng(1)
    centres = np.array([[0, 0], [10, 0], [0, 10]], dtype=np.float32)
    pool = np.concatenate([c + rng.normal(0, 0.3, (10, 2)) for c in centres])
    labelled = np.array([[0.1, 0.1], [10.1, 0.1]], dtype=np.float32)  # clusters 0 and 1 done
    rows = np.concatenate([pool, labelled]).astype(np.float32)
    picks = kcenter(rows, 1, centers=[30, 31], candidates=30)
    assert picks[0] // 10 == 2  # the one cluster nobody has labelled
    entropy = np.zeros(30)
    chosen = [i for i, _ in pick("diversity", 3, entropy, rows, labelled=[30, 31])]
    assert all(i < 30 for i in chosen)
    assert chosen[0] // 10 == 2
