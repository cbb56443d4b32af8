"""Open Inference Protocol v2, proven with the real tritonclient and with raw JSON."""

from __future__ import annotations

import base64
import json

import numpy as np
import pytest
import tritonclient.http as triton

from tests.conftest import EXPECTED
from tests.live_server import client
from tests.serving.fakes import solid_png


@pytest.fixture
def catdog_server(serve, catdog):
    return serve(model=catdog, max_batch_size=4, max_delay_ms=5)


def triton_client(server) -> triton.InferenceServerClient:
    return triton.InferenceServerClient(url=f"127.0.0.1:{server.port}")


def test_tritonclient_health_and_metadata(catdog_server):
    tc = triton_client(catdog_server)
    assert tc.is_server_live()
    assert tc.is_server_ready()
    assert tc.is_model_ready("catdog")
    meta = tc.get_model_metadata("catdog")
    assert meta["name"] == "catdog"
    assert {i["name"]: i["datatype"] for i in meta["inputs"]} == {
        "image_bytes": "BYTES",
        "image": "UINT8",
    }
    assert {"scores", "probabilities", "label"} <= {o["name"] for o in meta["outputs"]}
    config = tc.get_model_config("catdog")
    assert config["max_batch_size"] == 4
    assert tc.get_server_metadata()["extensions"]


def test_tritonclient_infer_encoded_images_with_binary_data(catdog_server, sample_bytes):
    tc = triton_client(catdog_server)
    names = list(EXPECTED)
    images = np.array([sample_bytes[n] for n in names], dtype=np.object_)
    inp = triton.InferInput("image_bytes", [len(names)], "BYTES")
    inp.set_data_from_numpy(images, binary_data=True)
    outputs = [
        triton.InferRequestedOutput("scores", binary_data=True),
        triton.InferRequestedOutput("label", binary_data=True),
    ]
    result = tc.infer("catdog", [inp], outputs=outputs)
    labels = [x.decode() for x in result.as_numpy("label")]
    assert labels == [EXPECTED[n] for n in names]
    scores = result.as_numpy("scores")
    assert scores.shape == (4, 3)
    assert scores.dtype == np.float32
    np.testing.assert_allclose(scores.sum(axis=1), 1.0, atol=1e-5)


def test_tritonclient_infer_uint8_pixels_with_json_output(catdog_server, catdog, sample_bytes):
    from visionloop import imaging

    pixels = imaging.prepare(
        sample_bytes["dog_german_shepherd.webp"], catdog.input_spec.crop, imaging.ImageLimits()
    )
    tc = triton_client(catdog_server)
    inp = triton.InferInput("image", [1, *pixels.shape], "UINT8")
    inp.set_data_from_numpy(pixels[None], binary_data=True)
    result = tc.infer(
        "catdog", [inp], outputs=[triton.InferRequestedOutput("label", binary_data=False)]
    )
    assert result.as_numpy("label")[0] in (b"dog", "dog")


def test_tritonclient_stats_count_inferences(catdog_server, sample_bytes):
    tc = triton_client(catdog_server)
    inp = triton.InferInput("image_bytes", [1], "BYTES")
    inp.set_data_from_numpy(np.array([sample_bytes["cat_chelsea.png"]], dtype=np.object_))
    tc.infer("catdog", [inp])
    stats = tc.get_inference_statistics("catdog")["model_stats"][0]
    assert stats["inference_count"] >= 1
    assert stats["execution_count"] >= 1


def test_json_infer_with_base64_bytes_and_fp32_pixels(serve):
    server = serve()
    payload = {
        "id": "r1",
        "inputs": [
            {
                "name": "image_bytes",
                "shape": [2],
                "datatype": "BYTES",
                "data": [base64.b64encode(solid_png(m)).decode() for m in (21, 22)],
            }
        ],
    }
    pixels = np.full((1, 8, 8, 3), 33.0, dtype=np.float32)
    fp32 = {
        "inputs": [
            {
                "name": "image",
                "shape": [1, 8, 8, 3],
                "datatype": "FP32",
                "data": pixels.ravel().tolist(),
            }
        ],
        "outputs": [{"name": "label"}],
    }
    with client(server) as c:
        first = c.post("/v2/models/fake/infer", json=payload).json()
        second = c.post("/v2/models/fake/infer", json=fp32).json()
    assert first["id"] == "r1"
    assert first["model_name"] == "fake"
    outputs = {o["name"]: o for o in first["outputs"]}
    assert outputs["label"]["data"] == ["21", "22"]
    assert outputs["mean"]["shape"] == [2, 3]
    assert second["outputs"] == [
        {"name": "label", "shape": [1], "datatype": "BYTES", "data": ["33"]}
    ]


def test_binary_request_and_response_by_hand(serve):
    server = serve()
    image = solid_png(25)
    blob = len(image).to_bytes(4, "little") + image
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "x",
                    "shape": [1],
                    "datatype": "BYTES",
                    "parameters": {"binary_data_size": len(blob)},
                }
            ],
            "parameters": {"binary_data_output": True},
        }
    ).encode()
    with client(server) as c:
        response = c.post(
            "/v2/models/fake/infer",
            content=header + blob,
            headers={"Inference-Header-Content-Length": str(len(header))},
        )
    assert response.status_code == 200
    length = int(response.headers["Inference-Header-Content-Length"])
    meta = json.loads(response.content[:length])
    sizes = {o["name"]: o["parameters"]["binary_data_size"] for o in meta["outputs"]}
    assert sum(sizes.values()) == len(response.content) - length
    offset = length
    for o in meta["outputs"]:
        if o["name"] == "mean":
            mean = np.frombuffer(response.content[offset : offset + sizes["mean"]], dtype="<f4")
            assert mean[0] == pytest.approx(25.0)
        offset += sizes[o["name"]]


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ({"inputs": []}, "invalid inference request"),
        (
            {"inputs": [{"name": "x", "shape": [1], "datatype": "INT64", "data": [1]}]},
            "datatype must be",
        ),
        (
            {"inputs": [{"name": "x", "shape": [2], "datatype": "BYTES", "data": ["aGk="]}]},
            "has 1 elements",
        ),
        ({"inputs": [{"name": "x", "shape": [1], "datatype": "BYTES", "data": ["***"]}]}, "base64"),
        (
            {"inputs": [{"name": "x", "shape": [1, 4, 4, 3], "datatype": "UINT8", "data": [0]}]},
            "shape must be",
        ),
        (
            {
                "inputs": [
                    {"name": "x", "shape": [1, 8, 8, 3], "datatype": "FP32", "data": [300.0] * 192}
                ]
            },
            "0-255",
        ),
        (
            {
                "inputs": [
                    {"name": "x", "shape": [1, 8, 8, 3], "datatype": "UINT8", "data": [1] * 10}
                ]
            },
            "does not fit",
        ),
        ({"inputs": [{"name": "x", "shape": [1], "datatype": "BYTES"}]}, "neither data nor"),
    ],
)
def test_bad_v2_requests_are_400_with_a_reason(serve, payload, message):
    server = serve()
    with client(server) as c:
        response = c.post("/v2/models/fake/infer", json=payload)
    assert response.status_code == 400
    assert message in response.json()["error"]


def test_a_bad_image_in_v2_is_a_4xx_and_an_unknown_output_a_400(serve):
    server = serve()
    bad = {
        "inputs": [
            {
                "name": "x",
                "shape": [1],
                "datatype": "BYTES",
                "data": [base64.b64encode(b"nope").decode()],
            }
        ]
    }
    unknown = {
        "inputs": [
            {
                "name": "x",
                "shape": [1],
                "datatype": "BYTES",
                "data": [base64.b64encode(solid_png(20)).decode()],
            }
        ],
        "outputs": [{"name": "nope"}],
    }
    with client(server) as c:
        assert c.post("/v2/models/fake/infer", json=bad).status_code == 415
        response = c.post("/v2/models/fake/infer", json=unknown)
    assert response.status_code == 400
    assert "unknown output 'nope'" in response.json()["error"]


def test_invalid_json_is_400(serve):
    server = serve()
    with client(server) as c:
        response = c.post("/v2/models/fake/infer", content=b"{nope")
    assert response.status_code == 400
    assert "not valid JSON" in response.json()["error"]


def test_v2_timeout_parameter_is_in_microseconds(serve):
    server = serve()
    payload = {
        "parameters": {"timeout": "soon"},
        "inputs": [
            {
                "name": "x",
                "shape": [1],
                "datatype": "BYTES",
                "data": [base64.b64encode(solid_png(20)).decode()],
            }
        ],
    }
    with client(server) as c:
        assert c.post("/v2/models/fake/infer", json=payload).status_code == 400
        payload["parameters"]["timeout"] = 5_000_000
        assert c.post("/v2/models/fake/infer", json=payload).status_code == 200


def test_unknown_model_in_v2_is_404(serve):
    server = serve()
    with client(server) as c:
        assert c.get("/v2/models/zebra").status_code == 404
        assert c.get("/v2/models/zebra/ready").status_code == 404
        assert c.post("/v2/models/zebra/infer", json={"inputs": []}).status_code == 404


def test_config_and_metadata_read_as_triton_would_write_them(catdog_server):
    tc = triton_client(catdog_server)
    config = tc.get_model_config("catdog")
    assert all(i["optional"] for i in config["input"])  # either input, never both
    shapes = {i["name"]: i["shape"] for i in tc.get_model_metadata("catdog")["inputs"]}
    assert shapes["image_bytes"] == [
        -1,
        *next(i["dims"] for i in config["input"] if i["name"] == "image_bytes"),
    ]


def test_stats_report_every_phase_with_equal_counts(catdog_server, sample_bytes):
    tc = triton_client(catdog_server)
    inp = triton.InferInput("image_bytes", [2, 1], "BYTES")
    inp.set_data_from_numpy(np.array([[sample_bytes["cat_chelsea.png"]]] * 2, dtype=np.object_))
    tc.infer("catdog", [inp])
    stats = tc.get_inference_statistics("catdog")["model_stats"][0]["inference_stats"]
    phases = ("success", "queue", "compute_input", "compute_infer", "compute_output")
    assert len({stats[p]["count"] for p in phases}) == 1
    assert stats["compute_infer"]["ns"] > 0
