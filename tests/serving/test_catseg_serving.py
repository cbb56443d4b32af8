"""catseg through the same server: v1 answers areas and per-class masks as PNG or COCO RLE
(chosen by ?masks=), v2 returns the FP32 probabilities and UINT8 masks."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from PIL import Image

from tests.live_server import client
from visionloop.models.catseg import CatSeg
from visionloop.models.masks import coco_decode
from visionloop.settings import ModelSettings


@pytest.fixture(scope="module")
def catseg() -> CatSeg:
    return CatSeg(size=64).prepare(ModelSettings(model="catseg"))  # type: ignore[return-value]


def v2_masks(http, data: bytes) -> np.ndarray:
    body = {"inputs": [{"name": "image_bytes", "datatype": "BYTES", "shape": [1, 1],
                        "data": [base64.b64encode(data).decode()]}]}  # fmt: skip
    answer = http.post("/v2/models/catseg/infer", json=body)
    assert answer.status_code == 200, answer.text
    outputs = {o["name"]: o for o in answer.json()["outputs"]}
    assert outputs["probabilities"]["datatype"] == "FP32"
    assert outputs["probabilities"]["shape"] == [1, 2, 64, 64]
    assert outputs["masks"]["datatype"] == "UINT8"
    probabilities = np.array(outputs["probabilities"]["data"]).reshape(2, 64, 64)
    masks = np.array(outputs["masks"]["data"], dtype=np.uint8).reshape(2, 64, 64)
    assert np.array_equal(masks, (probabilities >= 0.5).astype(np.uint8))
    return masks


def test_v1_masks_as_rle_and_png_match_v2(serve, catseg, sample_bytes):
    server = serve(model=catseg)
    data = sample_bytes["cat_chelsea.png"]
    headers = {"content-type": "image/png"}
    with client(server) as http:
        expected = v2_masks(http, data)
        rle = http.post("/v1/models/catseg/predict?masks=rle", content=data, headers=headers)
        png = http.post("/v1/models/catseg/predict", content=data, headers=headers)
        none = http.post("/v1/models/catseg/predict?masks=none", content=data, headers=headers)
        bad = http.post("/v1/models/catseg/predict?masks=gif", content=data, headers=headers)
    assert rle.status_code == png.status_code == none.status_code == 200
    body = rle.json()
    assert set(body["areas"]) == {"cat", "animal"}
    assert body["mask_format"] == "rle"
    for i, name in enumerate(("cat", "animal")):
        assert np.array_equal(coco_decode(body["masks"][name]), expected[i].astype(bool))
        decoded = np.asarray(Image.open(io.BytesIO(base64.b64decode(png.json()["masks"][name]))))
        assert np.array_equal(decoded > 0, expected[i].astype(bool))
        assert body["areas"][name] == pytest.approx(expected[i].mean(), abs=1e-6)
    assert "masks" not in none.json()
    assert bad.status_code == 400
    assert "masks must be one of png, rle, none" in bad.json()["error"]


def test_classes_choose_masks_and_a_missing_class_is_a_400_naming_the_classes(
    serve, catseg, sample_bytes
):
    """``?classes=`` returns the masks of those classes only; a class the model lacks (a plane
    asked of a catseg without one) is refused before the upload is read, naming the classes
    the version has; the same for a model without masks."""
    server = serve(model=catseg)
    data = sample_bytes["cat_chelsea.png"]
    headers = {"content-type": "image/png"}
    with client(server) as http:
        everything = http.post("/v1/models/catseg/predict?masks=rle", content=data,
                               headers=headers).json()  # fmt: skip
        animal = http.post("/v1/models/catseg/predict?masks=rle&classes=animal", content=data,
                           headers=headers)  # fmt: skip
        plane = http.post("/v1/models/catseg/predict?classes=plane,cat", content=data,
                          headers=headers)  # fmt: skip
        empty = http.post("/v1/models/catseg/predict?classes=,", content=data, headers=headers)
        files = {"file": ("cat.png", data, "image/png")}
        many = http.post("/v1/models/catseg/predict?classes=plane", files=files)
    assert animal.status_code == 200
    assert set(animal.json()["masks"]) == {"animal"}
    assert animal.json()["masks"]["animal"] == everything["masks"]["animal"]
    assert set(animal.json()["areas"]) == {"cat", "animal"}  # the answer itself is whole
    for refused in (plane, many):
        assert refused.status_code == 400
        assert refused.json()["error"] == (
            "model 'catseg' version 1 has no class 'plane'; its classes are cat, animal"
        )
    assert empty.status_code == 400
    assert empty.json()["error"] == (
        "?classes= names no class; the classes of model 'catseg' version 1 are cat, animal"
    )


def test_classes_on_a_model_without_masks_is_a_400(serve, sample_bytes):
    server = serve()  # a fake classifier: no masks output, no classes
    with client(server) as http:
        answer = http.post("/v1/models/fake/predict?classes=plane",
                           content=sample_bytes["cat_chelsea.png"],
                           headers={"content-type": "image/png"})  # fmt: skip
    assert answer.status_code == 400
    assert answer.json()["error"] == (
        "model 'fake' version 1 returns no masks: ?classes= chooses masks (its classes: none)"
    )


def test_the_plane_aware_segmenter_serves_its_weak_plane_channel(serve, sample_bytes):
    """catseg_plane through the server: ?classes=plane gives the plane mask alone, the answer
    has all three areas, and the v2 metadata marks the plane channel weak."""
    from visionloop.models.planeseg import PlaneSeg, PlaneSegNet

    model = PlaneSeg(PlaneSegNet(pretrained=False, zoom=1.0), size=64)
    server = serve(model=model.prepare(ModelSettings(model="catseg_plane", engine="torch")))
    data = sample_bytes["cat_chelsea.png"]
    with client(server) as http:
        answer = http.post("/v1/models/catseg_plane/predict?masks=rle&classes=plane",
                           content=data, headers={"content-type": "image/png"})  # fmt: skip
        metadata = http.get("/v2/models/catseg_plane").json()
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert set(body["masks"]) == {"plane"}
    assert set(body["areas"]) == {"cat", "animal", "plane"}
    assert coco_decode(body["masks"]["plane"]).shape == (64, 64)
    assert "zero labels" in metadata["weak"]["plane"]
