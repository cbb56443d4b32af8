"""Open Inference Protocol v2 (KServe / Triton), so ``tritonclient`` and ``perf_analyzer`` work.

Inputs (exactly one tensor per request, dispatched on its datatype; the name is free):

- ``BYTES`` shape ``[N]`` or ``[N, 1]``: encoded images (JPEG, PNG, ...). In JSON, each element
  is a base64 string; with the binary extension, each is a 4-byte little-endian length + bytes.
- ``UINT8`` shape ``[N, H, W, 3]``: ready RGB pixels of the model's size.
- ``FP32`` the same shape, pixel values 0-255 (rounded to uint8; anything else is refused).

Outputs: the model's tensors (``scores``, ``probabilities`` for catdog) plus ``label`` (BYTES)
when the model answers with one. JSON by default; binary when the output asks for
``parameters.binary_data`` or the request sets ``parameters.binary_data_output``.
Deadline: ``parameters.timeout`` in microseconds, as Triton and tritonclient define it.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import math
import struct
from collections.abc import Callable
from typing import Any

import numpy as np
import numpy.typing as npt
from fastapi import APIRouter, Request
from pydantic import BaseModel, Field, ValidationError
from starlette.responses import JSONResponse, Response

from visionloop import __version__
from visionloop.serving.state import ApiError, ServerState, timeout_from
from visionloop.serving.transport.base import ItemResult, ModelInfo, Transport
from visionloop.serving.uploads import read_body, too_large

HEADER_LENGTH = "inference-header-content-length"
_NUMPY_TO_V2 = {
    "float32": "FP32", "float16": "FP16", "float64": "FP64", "uint8": "UINT8",
    "int8": "INT8", "int32": "INT32", "int64": "INT64", "bool": "BOOL",
}  # fmt: skip


class TensorIn(BaseModel):
    name: str
    shape: list[int]
    datatype: str
    parameters: dict[str, Any] = Field(default_factory=dict)
    data: list[Any] | None = None


class OutputRequest(BaseModel):
    name: str
    parameters: dict[str, Any] = Field(default_factory=dict)


class InferRequest(BaseModel):
    id: str | None = None
    parameters: dict[str, Any] = Field(default_factory=dict)
    inputs: list[TensorIn] = Field(min_length=1)
    outputs: list[OutputRequest] | None = None


def router(state: ServerState, authorise: Callable[[ServerState, Request], None]) -> APIRouter:
    """The v2 routes, bound to one server's state."""
    api = APIRouter(prefix="/v2", tags=["v2"])

    @api.get("")
    async def server_metadata() -> dict[str, Any]:
        return {
            "name": "visionloop",
            "version": __version__,
            "extensions": _extensions(state),
        }

    @api.get("/health/live")
    async def live() -> dict[str, bool]:
        return {"live": True}

    @api.get("/health/ready")
    async def ready() -> Response:
        ok, body = state.readiness()
        return JSONResponse(body, status_code=200 if ok else 503)

    @api.get("/models/{model}/ready")
    @api.get("/models/{model}/versions/{version}/ready")
    async def model_ready(model: str, version: str | None = None) -> dict[str, Any]:
        runner = state.runner_for(model, version)
        return {"name": model, "version": runner.version, "ready": True}

    @api.get("/models/{model}")
    @api.get("/models/{model}/versions/{version}")
    async def model_metadata(
        model: str, request: Request, version: str | None = None
    ) -> dict[str, Any]:
        authorise(state, request)
        return metadata(state.runner_for(model, version), state.versions(model))

    @api.get("/models/{model}/config")
    @api.get("/models/{model}/versions/{version}/config")
    async def model_config(
        model: str, request: Request, version: str | None = None
    ) -> dict[str, Any]:
        authorise(state, request)
        return config(state, state.runner_for(model, version))

    @api.get("/models/{model}/stats")
    @api.get("/models/{model}/versions/{version}/stats")
    async def model_stats(
        model: str, request: Request, version: str | None = None
    ) -> dict[str, Any]:
        authorise(state, request)
        return stats(state.runner_for(model, version))

    @api.post("/models/{model}/infer")
    @api.post("/models/{model}/versions/{version}/infer")
    async def infer(model: str, request: Request, version: str | None = None) -> Response:
        authorise(state, request)
        with state.lease(model, version) as runner:
            return await _infer(state, runner, request)

    return api


def _extensions(state: ServerState) -> list[str]:
    found = ["binary_tensor_data", "statistics", "model_configuration"]
    return [*found, "model_repository"] if state.fleet is not None else found


def metadata(runner: Transport, versions: list[str]) -> dict[str, Any]:
    model = runner.model
    spec = model.input_spec
    outputs = [
        {"name": o.name, "datatype": o.dtype, "shape": [-1, *o.shape]} for o in model.outputs
    ] + [{"name": "label", "datatype": "BYTES", "shape": [-1]}]
    weak = dict(getattr(model, "weak", {}))  # classes made without labels, and how
    return {
        "name": runner.name,
        "versions": versions,
        **({"weak": weak} if weak else {}),
        "platform": "pytorch",
        "inputs": [
            # [-1, 1] as Triton derives it from the config (max_batch_size > 0, dims [1]);
            # [N] is accepted too.
            {"name": "image_bytes", "datatype": "BYTES", "shape": [-1, 1]},
            {"name": "image", "datatype": "UINT8", "shape": [-1, *spec.shape]},
        ],
        "outputs": outputs,
    }


def config(state: ServerState, runner: Transport) -> dict[str, Any]:
    """Triton's model configuration, from the runner's own settings where it has them (each
    version of a model repository has its own), else the server's."""
    s, model = state.settings, runner.model
    own = getattr(runner, "config", None)
    policy = getattr(own, "policy", None)
    max_batch = policy.max_batch_size if policy else s.max_batch_size
    max_delay_ms = policy.max_delay_ms if policy else s.max_delay_ms
    max_queue = policy.max_queue if policy else s.max_queue
    timeout_ms = own.timeout_ms if own is not None and policy else s.timeout_ms
    instances = own.instances if own is not None and policy else s.instances
    engine = model.engine_info() if hasattr(model, "engine_info") else {}
    platform = {"onnxruntime": "onnxruntime_onnx", "openvino": "openvino"}
    return {
        "name": runner.name,
        "version": runner.version,
        "platform": platform.get(str(engine.get("engine")), "pytorch"),
        "backend": "visionloop",
        # Which engine and precision run the forward pass, and why (Triton's string parameters,
        # and the same as an object for people).
        "parameters": {k: {"string_value": str(v)} for k, v in engine.items()},
        "engine": engine,
        "max_batch_size": max_batch,
        # Either input, never both: Triton's way to say so is "optional" on each.
        "input": [
            {"name": "image_bytes", "data_type": "TYPE_STRING", "dims": [1], "optional": True},
            {
                "name": "image",
                "data_type": "TYPE_UINT8",
                "dims": list(model.input_spec.shape),
                "optional": True,
            },
        ],
        "output": [
            {"name": o.name, "data_type": f"TYPE_{o.dtype}", "dims": list(o.shape)}
            for o in model.outputs
        ],
        "dynamic_batching": {
            "max_queue_delay_microseconds": int(max_delay_ms * 1000),
            "preferred_batch_size": list(runner.preferred_batch_sizes),
            "default_queue_policy": {
                "max_queue_size": max_queue,
                "default_timeout_microseconds": int(timeout_ms * 1000),
            },
        },
        "instance_group": [
            {
                "count": instances,
                "kind": "KIND_GPU" if model.device.type == "cuda" else "KIND_CPU",
            }
        ],
    }


def stats(runner: Transport) -> dict[str, Any]:
    s = runner.stats
    return {
        "model_stats": [
            {
                "name": runner.name,
                "version": runner.version,
                "last_inference": s.last_inference_ms,
                "inference_count": s.inference_count,
                "execution_count": s.execution_count,
                "inference_stats": {
                    "success": {"count": s.success_count, "ns": s.success_ns},
                    "fail": {"count": s.fail_count, "ns": s.fail_ns},
                    "queue": {"count": s.success_count, "ns": s.queue_ns},
                    "compute_input": {"count": s.success_count, "ns": s.input_ns},
                    "compute_infer": {"count": s.success_count, "ns": s.infer_ns},
                    "compute_output": {"count": s.success_count, "ns": s.output_ns},
                    "cache_hit": {"count": 0, "ns": 0},
                    "cache_miss": {"count": 0, "ns": 0},
                },
                "batch_stats": [
                    {
                        "batch_size": size,
                        "compute_input": {"count": runs, "ns": input_ns},
                        "compute_infer": {"count": runs, "ns": infer_ns},
                        "compute_output": {"count": runs, "ns": output_ns},
                    }
                    for size, (runs, input_ns, infer_ns, output_ns) in sorted(s.batches.items())
                ],
            }
        ]
    }


async def _infer(state: ServerState, runner: Transport, request: Request) -> Response:
    settings = state.settings
    header_ms = timeout_from(request.headers.get("x-timeout-ms"), "X-Timeout-Ms")
    arrived = state.start_clock(request, runner, header_ms)
    state.admit(runner, header_ms, arrived)  # an overloaded server refuses before the body
    within = runner.deadline(header_ms, arrived) - runner.clock()
    declared = request.headers.get(HEADER_LENGTH)
    # A body without the binary extension is all JSON: it stops at the JSON limit as it streams.
    limit = settings.max_request_bytes if declared else settings.max_json_bytes
    body = await read_body(request, limit, within)
    header_length = _header_length(declared, len(body))
    if header_length > settings.max_json_bytes:
        raise too_large(
            f"JSON part too large: {header_length} bytes exceeds the limit of "
            f"{settings.max_json_bytes} bytes (send tensors with the binary extension)"
        )
    model = runner.model
    # Parsing JSON and converting tensors is CPU work: done off the event loop, in the bounded
    # decode pool, so a large request neither stalls other clients nor multiplies its memory.
    parsed, payload = await state.off_loop(
        runner, _parse, body, header_length, settings.max_files, model
    )
    del body
    timeout_us = timeout_from(parsed.parameters.get("timeout"), "parameters.timeout")
    timeout_ms = timeout_us / 1000 if timeout_us is not None else None
    if header_ms is not None:
        timeout_ms = header_ms if timeout_ms is None else min(timeout_ms, header_ms)
    if payload.encoded is not None:
        decoding = (state.decode(e, runner, timeout_ms, arrived) for e in payload.encoded)
        images = list(await asyncio.gather(*decoding))
    else:
        runner.admit(timeout_ms, arrived)
        images = payload.pixels
    items = await asyncio.gather(
        *(state.infer(request, runner, image, timeout_ms, arrived) for image in images)
    )
    return _response(parsed, runner, list(items))


class _Payload:
    """One request's images: encoded files (BYTES) or ready pixels (UINT8 / FP32)."""

    def __init__(
        self,
        encoded: list[bytes] | None = None,
        pixels: list[npt.NDArray[np.uint8]] | None = None,
    ) -> None:
        self.encoded = encoded
        self.pixels = pixels or []


def _parse(
    body: bytes, header_length: int, max_images: int, model: ModelInfo
) -> tuple[InferRequest, _Payload]:
    """Runs in a decode thread: JSON header -> request, its one input -> images."""
    parsed, binary = _split(body, header_length)
    tensor = _single_input(parsed)
    count = tensor.shape[0] if tensor.shape else 0
    if count > max_images:
        raise ApiError(413, f"too many images: {count} > {max_images}", error_type="ImageTooLarge")
    if tensor.datatype == "BYTES":
        payload = _Payload(encoded=_bytes_elements(tensor, binary))
    else:
        payload = _Payload(pixels=_pixel_tensor(tensor, binary, model))
    tensor.data = None  # the parsed JSON lists can be freed while the images wait for the model
    return parsed, payload


def _header_length(value: str | None, body_length: int) -> int:
    if value is None:
        return body_length
    if not value.isdigit() or int(value) > body_length:
        raise ApiError(
            400,
            f"Inference-Header-Content-Length {value!r} is not a "
            f"length within the {body_length}-byte body",
        )
    return int(value)


def _split(body: bytes, header_length: int) -> tuple[InferRequest, bytes]:
    header, binary = body[:header_length], body[header_length:]
    try:
        return InferRequest.model_validate(json.loads(header)), binary
    except json.JSONDecodeError as exc:
        raise ApiError(400, f"request header is not valid JSON: {exc}") from None
    except UnicodeDecodeError as exc:
        raise ApiError(400, f"request header is not UTF-8 JSON: {exc}") from None
    except RecursionError:
        raise ApiError(400, "request header is nested too deeply") from None
    except ValidationError as exc:
        raise ApiError(400, f"invalid inference request: {exc.errors(include_url=False)}") from None


def _single_input(parsed: InferRequest) -> TensorIn:
    if len(parsed.inputs) != 1:
        raise ApiError(400, f"expected exactly one input tensor, got {len(parsed.inputs)}")
    tensor = parsed.inputs[0]
    if tensor.datatype not in ("BYTES", "UINT8", "FP32"):
        raise ApiError(400, f"input datatype must be BYTES, UINT8 or FP32, got {tensor.datatype!r}")
    if any(d < 0 for d in tensor.shape):
        raise ApiError(400, f"input shape must be non-negative, got {tensor.shape}")
    return tensor


def _raw_input(tensor: TensorIn, binary: bytes) -> bytes | None:
    """This input's binary bytes, or None if it carries JSON ``data``."""
    size = tensor.parameters.get("binary_data_size")
    if size is None:
        if tensor.data is None:
            raise ApiError(400, f"input {tensor.name!r} has neither data nor binary_data_size")
        return None
    if not isinstance(size, int) or size < 0 or size != len(binary):
        raise ApiError(
            400,
            f"input {tensor.name!r}: binary_data_size {size!r} does not match "
            f"the {len(binary)} bytes after the JSON header",
        )
    return binary


def _bytes_elements(tensor: TensorIn, binary: bytes) -> list[bytes]:
    if len(tensor.shape) not in (1, 2) or (len(tensor.shape) == 2 and tensor.shape[1] != 1):
        raise ApiError(400, f"BYTES input shape must be [N] or [N, 1], got {tensor.shape}")
    count = math.prod(tensor.shape)
    if count == 0:
        raise ApiError(400, "BYTES input has no images")
    raw = _raw_input(tensor, binary)
    if raw is None:
        items = _flatten(tensor.data)
        if len(items) == count:
            try:
                return [base64.b64decode(str(e), validate=True) for e in items]
            except (binascii.Error, ValueError):
                raise ApiError(400, "BYTES data in JSON must be base64 strings") from None
        found = len(items)
    else:
        elements = _length_prefixed(raw, count)
        if len(elements) == count:
            return elements
        found = len(elements)
    raise ApiError(400, f"BYTES input has {found} elements, shape {tensor.shape} says {count}")


def _length_prefixed(raw: bytes, count: int) -> list[bytes]:
    """The binary extension's BYTES: each element a 4-byte little-endian length + its bytes."""
    elements: list[bytes] = []
    offset = 0
    while offset < len(raw):
        if offset + 4 > len(raw):
            raise ApiError(400, "BYTES binary data ends inside a 4-byte length prefix")
        if len(elements) == count:
            raise ApiError(400, f"BYTES binary data holds more than the {count} elements")
        (length,) = struct.unpack_from("<I", raw, offset)
        if offset + 4 + length > len(raw):
            raise ApiError(400, "BYTES binary data is shorter than its length prefixes say")
        elements.append(raw[offset + 4 : offset + 4 + length])
        offset += 4 + length
    return elements


def _pixel_tensor(tensor: TensorIn, binary: bytes, model: ModelInfo) -> list[npt.NDArray[np.uint8]]:
    expected = model.input_spec.shape
    if len(tensor.shape) != 4 or tuple(tensor.shape[1:]) != expected or tensor.shape[0] < 1:
        raise ApiError(
            400,
            f"{tensor.datatype} input shape must be [N, {', '.join(map(str, expected))}], "
            f"got {tensor.shape}",
        )
    dtype = np.dtype("<f4") if tensor.datatype == "FP32" else np.dtype(np.uint8)
    count = math.prod(tensor.shape)
    raw = _raw_input(tensor, binary)
    try:
        if raw is None:
            # Straight to 4-byte floats (exact for 0-255): no float64 copy, no flattened list.
            array = np.asarray(tensor.data, dtype=np.float32)
        else:
            if len(raw) != count * dtype.itemsize:
                raise ValueError(f"{len(raw)} bytes, {count * dtype.itemsize} expected")
            array = np.frombuffer(raw, dtype=dtype)
        if array.size != count:
            raise ValueError(f"{array.size} values, {count} expected")
        array = array.reshape(tensor.shape)
    except (ValueError, TypeError, OverflowError) as exc:
        raise ApiError(400, f"input data does not fit shape {tensor.shape}: {exc}") from None
    if array.dtype != np.uint8:
        if not np.all(np.isfinite(array)) or array.min() < 0 or array.max() > 255:
            raise ApiError(400, "pixel values must be finite and within 0-255")
        if tensor.datatype == "UINT8" and not np.array_equal(array, np.rint(array)):
            raise ApiError(400, "UINT8 pixel values must be whole numbers 0-255")
        array = np.rint(array).astype(np.uint8)
    return [np.ascontiguousarray(p) for p in array]


def _flatten(data: Any) -> list[Any]:
    if isinstance(data, list):
        return [x for item in data for x in _flatten(item)]
    return [data]


def _response(parsed: InferRequest, runner: Transport, items: list[ItemResult]) -> Response:
    available: dict[str, npt.NDArray[Any]] = {
        name: np.stack([item.outputs[name] for item in items]) for name in items[0].outputs
    }
    if all("label" in item.result for item in items):
        available["label"] = np.array([item.result["label"] for item in items], dtype=object)
    binary_default = bool(parsed.parameters.get("binary_data_output", False))
    requested = parsed.outputs or [OutputRequest(name=n) for n in available]
    outputs, blobs = [], []
    for out in requested:
        if out.name not in available:
            raise ApiError(400, f"unknown output {out.name!r}; available: {', '.join(available)}")
        array = available[out.name]
        entry: dict[str, Any] = {
            "name": out.name,
            "shape": list(array.shape),
            "datatype": "BYTES" if array.dtype == object else _NUMPY_TO_V2[str(array.dtype)],
        }
        if out.parameters.get("binary_data", binary_default):
            blob = _serialise_binary(array)
            entry["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            entry["data"] = (
                [str(x) for x in array.ravel()] if array.dtype == object else array.ravel().tolist()
            )
        outputs.append(entry)
    body: dict[str, Any] = {
        "model_name": runner.name,
        "model_version": runner.version,
        "outputs": outputs,
    }
    if parsed.id is not None:
        body["id"] = parsed.id
    header = json.dumps(body).encode()
    if not blobs:
        return Response(header, media_type="application/json")
    return Response(
        header + b"".join(blobs),
        media_type="application/octet-stream",
        headers={"Inference-Header-Content-Length": str(len(header))},
    )


def _serialise_binary(array: npt.NDArray[Any]) -> bytes:
    if array.dtype == object:
        return b"".join(
            struct.pack("<I", len(b)) + b for b in (str(x).encode() for x in array.ravel())
        )
    return array.astype(array.dtype.newbyteorder("<"), copy=False).tobytes()
