"""The engine seam: ONNX Runtime and OpenVINO run the same model as torch, chosen by settings the
same way for every command; what cannot be honoured is a clear error, never a silent change."""

from __future__ import annotations

import os
import sys
import threading
import time
from dataclasses import replace

import numpy as np
import pytest
import torch

from tests.conftest import EXPECTED
from visionloop import imaging
from visionloop.engines import EngineError, MissingEngine, attach, build
from visionloop.engines.runtimes import openvino_supports_bf16
from visionloop.models import create, load
from visionloop.settings import ModelSettings


@pytest.fixture(scope="module")
def photos(sample_bytes) -> np.ndarray:
    crop = create("catdog").input_spec.crop
    return np.stack(
        [imaging.prepare(sample_bytes[n], crop, imaging.ImageLimits()) for n in EXPECTED]
    )


@pytest.fixture(scope="module")
def torch_model():
    return load(ModelSettings(engine="torch"))


def answers(model, photos):
    outputs = model.forward(torch.from_numpy(photos))
    return outputs, model.postprocess(outputs)


@pytest.mark.parametrize("engine", ["onnxruntime", "openvino"])
def test_each_engine_answers_like_torch(engine, photos, torch_model):
    model = load(ModelSettings(engine=engine))
    assert model.engine is not None
    assert model.engine_info()["engine"] == engine
    assert model.engine_info()["precision"] == "fp32"
    outputs, results = answers(model, photos)
    reference, expected = answers(torch_model, photos)
    assert [r["label"] for r in results] == list(EXPECTED.values())
    assert [r["label"] for r in results] == [r["label"] for r in expected]
    for name in ("scores", "probabilities"):
        torch.testing.assert_close(outputs[name], reference[name], atol=1e-4, rtol=1e-3)


def test_auto_picks_a_fast_engine_on_a_cpu_and_torch_where_asked_for_compile():
    model = load(ModelSettings())
    info = model.engine_info()
    assert info["engine"] == "openvino"
    assert info["selected_by"] == "auto"
    assert load(ModelSettings(engine="torch")).engine is None
    compiled = create("catdog").prepare(ModelSettings(engine="torch"))
    assert attach(compiled, ModelSettings(compile=True)).engine is None  # torch.compile is torch


def test_the_segmentation_model_runs_on_an_engine_too(photos):
    model = create("catseg").prepare(ModelSettings())
    reference = model.forward(torch.from_numpy(photos))
    attach(model, ModelSettings(engine="openvino"))
    outputs = model.forward(torch.from_numpy(photos))
    assert outputs["masks"].shape == reference["masks"].shape == (4, 2, 224, 224)
    torch.testing.assert_close(
        outputs["probabilities"], reference["probabilities"], atol=1e-4, rtol=1e-3
    )


def test_the_plane_aware_segmenter_runs_on_an_engine_with_the_same_masks(photos):
    """Both halves trace into one graph; GrabCut runs after it on the host either way."""
    model = create("catseg_plane").prepare(ModelSettings(model="catseg_plane"))
    model.plane = replace(model.plane, gate=0.0)  # every photo refined: GrabCut is exercised
    reference = model.forward(torch.from_numpy(photos))
    assert reference["masks"][:, 2].any()
    attach(model, ModelSettings(model="catseg_plane", engine="openvino"))
    assert model.engine is not None
    outputs = model.forward(torch.from_numpy(photos))
    assert outputs["masks"].shape == reference["masks"].shape == (4, 3, 224, 224)
    torch.testing.assert_close(
        outputs["probabilities"], reference["probabilities"], atol=1e-4, rtol=1e-3
    )
    disagree = (outputs["masks"] != reference["masks"]).float().mean()
    assert float(disagree) < 1e-3  # GrabCut on the same pixels from near-equal maps


def test_a_missing_engine_package_names_the_extra_and_auto_falls_back(monkeypatch):
    monkeypatch.setitem(sys.modules, "openvino", None)  # import openvino now raises
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(MissingEngine, match=r"pip install 'visionloop\[serve\]'"):
        load(ModelSettings(engine="openvino"))
    assert load(ModelSettings()).engine is None  # auto: torch, and it still answers
    from typer.testing import CliRunner

    from visionloop.cli import app

    result = CliRunner().invoke(app, ["serve", "--engine", "onnxruntime", "--port", "1"])
    assert result.exit_code == 2
    assert result.output.count("\n") == 1
    assert "pip install 'visionloop[serve]'" in result.output


def test_int8_and_bf16_are_never_given_without_a_check():
    with pytest.raises(ValueError, match="int8 needs an artifact"):
        ModelSettings(precision="int8")
    model = create("catdog").prepare(ModelSettings(engine="torch"))
    with pytest.raises(EngineError, match="bf16 is not offered"):
        build(model, "onnxruntime", "bf16", ModelSettings())
    if not openvino_supports_bf16():
        with pytest.raises(EngineError, match="no bf16"):
            build(model, "openvino", "bf16", ModelSettings())


def test_an_openvino_engine_serves_several_threads_at_once(photos, torch_model):
    model = load(ModelSettings(engine="openvino"))
    expected = torch_model.forward(torch.from_numpy(photos))["scores"]
    failures: list[str] = []

    def hammer(order: list[int]) -> None:
        for _ in range(5):
            got = model.forward(torch.from_numpy(photos[order]))["scores"]
            if not torch.allclose(got, expected[order], atol=1e-4):
                failures.append(f"order {order}")

    threads = [threading.Thread(target=hammer, args=(o,)) for o in ([0, 1, 2, 3], [3, 2, 1, 0])]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not failures


@pytest.mark.skipif(not hasattr(os, "sched_getaffinity"), reason="thread CPUs need Linux")
def test_openvino_leaves_a_computing_thread_on_every_cpu_of_the_process(tmp_path):
    """OpenVINO's default CPU pinning binds each computing thread to a core of its choice, the
    same one for every compiled model: two models (or executors) then share one core
    (benchmarks/results/openvino_pinning.json). The engine turns it off."""
    from visionloop.engines.graph import onnx_bytes
    from visionloop.engines.runtimes import OpenVinoEngine

    path = tmp_path / "catdog.onnx"
    path.write_bytes(onnx_bytes(create("catdog")))
    engine = OpenVinoEngine(path, "fp32", threads=1)
    assert engine.compiled.get_property("ENABLE_CPU_PINNING") is False
    batch = np.zeros((8, *create("catdog").input_spec.shape), np.uint8)
    engine.run(batch)
    stop = threading.Event()
    tids: list[int] = []

    def compute() -> None:
        tids.append(threading.get_native_id())
        while not stop.is_set():
            engine.run(batch)

    thread = threading.Thread(target=compute)
    thread.start()
    seen: list[str] = []
    try:
        while not tids:
            time.sleep(0.01)
        for _ in range(20):  # read from outside while it computes (most of its time)
            with open(f"/proc/self/task/{tids[0]}/status") as status:
                seen.extend(ln.split()[1] for ln in status if ln.startswith("Cpus_allowed_list"))
            time.sleep(0.01)
    finally:
        stop.set()
        thread.join()
    allowed = sorted(os.sched_getaffinity(0))
    assert {_cpu_list(s) for s in seen} == {tuple(allowed)}


def _cpu_list(text: str) -> tuple[int, ...]:
    """'0-2,5' -> (0, 1, 2, 5)."""
    cpus: list[int] = []
    for part in text.split(","):
        low, _, high = part.partition("-")
        cpus.extend(range(int(low), int(high or low) + 1))
    return tuple(cpus)


def test_a_conversion_that_differs_from_torch_is_refused(monkeypatch):
    import visionloop.engines.runtimes as runtimes

    original = runtimes.OnnxRuntimeEngine.run
    monkeypatch.setattr(
        runtimes.OnnxRuntimeEngine, "run", lambda self, images: original(self, images) + 1.0
    )
    with pytest.raises(EngineError, match="differs from torch"):
        load(ModelSettings(engine="onnxruntime"))
    model = load(ModelSettings())  # auto: OpenVINO is unaffected and still chosen
    assert model.engine_info()["engine"] == "openvino"


def test_the_v2_config_says_which_engine_serves(serve, sample_bytes):
    import httpx

    server = serve(model=load(ModelSettings()), max_batch_size=4)
    with httpx.Client(base_url=server.url, timeout=30) as http:
        config = http.get("/v2/models/catdog/config").json()
        assert config["platform"] == "openvino"
        assert config["engine"]["engine"] == "openvino"
        assert config["engine"]["precision"] == "fp32"
        assert config["parameters"]["selected_by"] == {"string_value": "auto"}
        answer = http.post(
            "/v1/models/catdog/predict",
            content=sample_bytes["cat_chelsea.png"],
            headers={"content-type": "image/png"},
        ).json()
    assert answer["label"] == "cat"


def test_auto_leaves_a_model_that_does_not_declare_itself_exportable_on_torch():
    from tests.serving.fakes import FakeModel

    model = FakeModel()  # its network has side effects that tracing would drop
    assert attach(model, ModelSettings()).engine is None
    assert model.engine_info()["engine"] == "torch"


def test_a_gpu_device_without_a_gpu_engine_is_a_clear_error(tmp_path):
    import onnxruntime

    from visionloop.engines.graph import onnx_bytes
    from visionloop.engines.runtimes import OnnxRuntimeEngine, openvino_device

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("this onnxruntime has a CUDA provider")
    path = tmp_path / "model.onnx"
    path.write_bytes(onnx_bytes(create("catdog").prepare(ModelSettings(engine="torch"))))
    with pytest.raises(EngineError, match="no CUDA provider"):
        OnnxRuntimeEngine(path, "fp32", device="cuda:0")
    assert openvino_device("cuda:1") == "GPU.1"
    assert openvino_device("cpu") == "CPU"
    with pytest.raises(EngineError, match="cannot run on device 'mps'"):
        openvino_device("mps")


def test_bf16_with_engine_auto_or_torch_runs_torch_in_bfloat16():
    for engine in ("auto", "torch"):
        model = load(ModelSettings(engine=engine, precision="bf16"))
        assert model.engine is None
        assert model.engine_info()["precision"] == "bf16"
