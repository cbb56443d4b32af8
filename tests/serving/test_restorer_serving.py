"""The restorer through the same server: v1 answers the picture as base64 PNG in JSON, or the
PNG itself for Accept: image/png (figures in headers); a model without a picture answers 406 to
that; v2 returns the UINT8 [N, H, W, 3] output; several photos at once are batched like any
model's. catdog_restored classifies the restored photo (the untrained restorer: catdog's
answer)."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
import torch
from PIL import Image

from tests.live_server import client
from visionloop.models.catdog import CatDog
from visionloop.models.restorer import RestoreNet, Restorer, build_catdog_restored
from visionloop.settings import ModelSettings


@pytest.fixture(scope="module")
def restorer() -> Restorer:
    torch.manual_seed(0)
    network = RestoreNet(8, 1)
    with torch.no_grad():  # a restorer that visibly changes the picture: darker by ~0.1
        network.tail[-1].bias.fill_(-0.1)
    return Restorer(network, size=64).prepare(ModelSettings(model="restorer", engine="torch"))  # type: ignore[return-value]


def photo_png(size: int = 80) -> bytes:
    yy, xx = np.mgrid[:size, :size]
    pixels = np.stack([xx * 3, yy * 3, np.full_like(xx, 200)], axis=-1).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def test_v1_json_png_and_v2_agree_on_the_restored_picture(serve, restorer):
    server = serve(model=restorer)
    data = photo_png()
    with client(server) as http:
        as_json = http.post("/v1/models/restorer/predict", content=data)
        as_png = http.post("/v1/models/restorer/predict", content=data,
                           headers={"accept": "image/png"})  # fmt: skip
        body = {"inputs": [{"name": "image_bytes", "datatype": "BYTES", "shape": [1, 1],
                            "data": [base64.b64encode(data).decode()]}]}  # fmt: skip
        v2 = http.post("/v2/models/restorer/infer", json=body)
        several = http.post(
            "/v1/models/restorer/predict",
            files=[("files", (f"p{i}.png", data, "image/png")) for i in range(3)],
        )
    assert as_json.status_code == 200, as_json.text
    answer = as_json.json()
    assert answer["image_format"] == "png"
    assert (answer["width"], answer["height"]) == (64, 64)
    from_json = np.asarray(Image.open(io.BytesIO(base64.b64decode(answer["image"]))))
    assert answer["mean_change"] > 10  # the bias darkens every pixel by ~25 levels
    assert as_png.status_code == 200
    assert as_png.headers["content-type"] == "image/png"
    assert as_png.headers["x-model"] == "restorer"
    assert "inference=" in as_png.headers["x-timing-ms"]
    from_png = np.asarray(Image.open(io.BytesIO(as_png.content)))
    assert from_png.shape == (64, 64, 3)
    assert np.array_equal(from_png, from_json)
    assert v2.status_code == 200, v2.text
    (image,) = [o for o in v2.json()["outputs"] if o["name"] == "image"]
    assert image["datatype"] == "UINT8"
    assert image["shape"] == [1, 64, 64, 3]
    assert np.array_equal(np.array(image["data"], dtype=np.uint8).reshape(64, 64, 3), from_png)
    assert several.status_code == 200
    assert [p["width"] for p in several.json()["predictions"]] == [64, 64, 64]


def test_a_picture_asked_of_a_model_without_one_is_406(serve):
    server = serve(model=CatDog().prepare(ModelSettings(engine="torch")))
    with client(server) as http:
        refused = http.post("/v1/models/catdog/predict", content=photo_png(),
                            headers={"accept": "image/png"})  # fmt: skip
    assert refused.status_code == 406
    assert "returns no image" in refused.json()["error"]


def test_catdog_restored_is_catdog_after_the_restorer():
    restored, plain = build_catdog_restored(), CatDog()
    images = torch.randint(0, 256, (2, 224, 224, 3), dtype=torch.uint8)
    untrained = restored.forward(images)["scores"]
    assert torch.allclose(untrained, plain.forward(images)["scores"], atol=1e-5)
    network = restored.network
    with torch.no_grad():
        network.restore.tail[-1].bias.fill_(0.3)  # type: ignore[union-attr,index,operator]
    assert not torch.allclose(restored.forward(images)["scores"], untrained, atol=1e-3)
    state = RestoreNet().state_dict()  # a train gan best.pt loads into the restorer half
    network.load_state_dict(state)  # type: ignore[union-attr]
    assert torch.allclose(restored.forward(images)["scores"], untrained, atol=1e-5)


@pytest.mark.parametrize(
    ("accept", "expected"),
    [
        ("image/png", "image/png"),
        ("image/png, application/json;q=0.5", "image/png"),
        ("application/json, image/png;q=0.5", "application/json"),
        ("image/png;q=0", "application/json"),
        ("image/*", "image/png"),
        ("*/*", "application/json"),
        ("text/html", "application/json"),
    ],
)
def test_accept_chooses_the_answer_by_its_q_values(serve, restorer, accept, expected):
    server = serve(model=restorer)
    with client(server) as http:
        answer = http.post("/v1/models/restorer/predict", content=photo_png(),
                           headers={"accept": accept})  # fmt: skip
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"].startswith(expected)


def test_catdog_answers_json_to_a_client_that_also_accepts_json(serve):
    server = serve(model=CatDog().prepare(ModelSettings(engine="torch")))
    with client(server) as http:
        both = http.post("/v1/models/catdog/predict", content=photo_png(),
                         headers={"accept": "application/json, image/png"})  # fmt: skip
    assert both.status_code == 200
    assert both.json()["label"] in ("cat", "dog", "neither")


def test_weights_of_another_width_depth_or_norm_are_served(tmp_path):
    """A train gan run with --width 8 --blocks 2 --norm batch serves as restorer and inside
    catdog_restored: the generator is rebuilt to the weights' shape."""
    from visionloop.models import registry

    network = RestoreNet(8, 2, "batch")
    path = tmp_path / "best.pt"
    torch.save(network.state_dict(), path)
    restorer = registry.create("restorer", path)
    assert (restorer.network.width, restorer.network.blocks_count, restorer.network.norm) == (
        8,
        2,
        "batch",
    )
    restored = registry.create("catdog_restored", path)
    assert restored.network.restore.width == 8  # type: ignore[union-attr]
    images = torch.randint(0, 256, (1, 256, 256, 3), dtype=torch.uint8)
    assert restorer.forward(images)["image"].shape == (1, 256, 256, 3)
