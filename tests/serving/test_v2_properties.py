"""Property tests for the v2 request parser: whatever the body, an answer or a clear 4xx.

The parser (:func:`visionloop.serving.protocol_v2._parse`) is what turns a client's bytes into
images; it runs in a decode thread on every v2 request. Random bodies, valid requests mutated
byte by byte, and structurally odd but well-formed JSON must either parse into images of the
model's shape or raise :class:`ApiError` with a 4xx status: never another exception (a 500),
never more images than ``max_images``, and never memory that stays allocated.

Longer run::

    HYPOTHESIS_PROFILE=long .venv/bin/python -m pytest -q tests/serving/test_v2_properties.py
"""

from __future__ import annotations

import base64
import json
import tracemalloc

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from tests.hypothesis_profiles import budget
from tests.serving.fakes import FakeModel, solid_png
from visionloop.serving.protocol_v2 import _parse
from visionloop.serving.state import ApiError

MODEL = FakeModel()
MAX_IMAGES = 4
PIXELS = [[[[1, 2, 3]] * 8] * 8]


def _valid_bodies() -> list[tuple[bytes, int]]:
    """(body, JSON header length) for each kind of request the parser accepts."""
    png = solid_png(20)
    b64 = base64.b64encode(png).decode()
    blob = len(png).to_bytes(4, "little") + png
    binary_header = json.dumps({"inputs": [{
        "name": "x", "shape": [1, 1], "datatype": "BYTES",
        "parameters": {"binary_data_size": len(blob)},
    }]}).encode()  # fmt: skip
    pixels_blob = np.full((1, 8, 8, 3), 7, np.uint8).tobytes()
    pixels_header = json.dumps({"inputs": [{
        "name": "x", "shape": [1, 8, 8, 3], "datatype": "UINT8",
        "parameters": {"binary_data_size": len(pixels_blob)},
    }]}).encode()  # fmt: skip
    uint8 = {"name": "x", "shape": [1, 8, 8, 3], "datatype": "UINT8", "data": PIXELS}
    fp32 = {**uint8, "datatype": "FP32"}
    bodies = [
        json.dumps({"inputs": [{"name": "x", "shape": [1], "datatype": "BYTES", "data": [b64]}]}),
        json.dumps({"inputs": [uint8]}),
        json.dumps({"id": "a", "inputs": [fp32], "outputs": [{"name": "mean"}]}),
    ]
    plain = [(b.encode(), len(b)) for b in bodies]
    return [*plain, (binary_header + blob, len(binary_header)),
            (pixels_header + pixels_blob, len(pixels_header))]  # fmt: skip


VALID = _valid_bodies()


def _check(body: bytes, header_length: int) -> None:
    try:
        parsed, payload = _parse(body, header_length, MAX_IMAGES, MODEL)
    except ApiError as exc:
        status, message = exc.status, exc.message
        assert 400 <= status < 500, message
        assert message
        return
    assert len(parsed.inputs) == 1
    assert parsed.inputs[0].data is None  # the JSON lists were let go
    if payload.encoded is not None:
        assert 1 <= len(payload.encoded) <= MAX_IMAGES
        assert all(isinstance(e, bytes) for e in payload.encoded)
    else:
        assert 1 <= len(payload.pixels) <= MAX_IMAGES
        for image in payload.pixels:
            assert image.dtype == np.uint8
            assert image.shape == MODEL.input_spec.shape


@budget(300)
@given(st.binary(max_size=2000), st.integers(min_value=0, max_value=2000))
def test_random_bytes_are_a_4xx_or_a_request(body, header_length):
    _check(body, min(header_length, len(body)))


@st.composite
def mutated(draw) -> tuple[bytes, int]:
    body, header_length = draw(st.sampled_from(VALID))
    data = bytearray(body)
    for _ in range(draw(st.integers(min_value=1, max_value=8))):
        if not data:
            break
        at = draw(st.integers(min_value=0, max_value=len(data) - 1))
        op = draw(st.sampled_from(["flip", "insert", "delete", "truncate", "digit"]))
        if op == "flip":
            data[at] ^= 1 << draw(st.integers(min_value=0, max_value=7))
        elif op == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=8))
        elif op == "delete":
            del data[at : at + draw(st.integers(min_value=1, max_value=8))]
        elif op == "truncate":
            del data[at:]
        else:  # numbers are where the parser's arithmetic lives: shapes, sizes, pixel values
            data[at:at] = str(draw(st.integers(min_value=-(2**63), max_value=2**64))).encode()
    header_length = min(header_length + draw(st.integers(min_value=-8, max_value=8)), len(data))
    return bytes(data), max(header_length, 0)


@budget(500)
@given(mutated())
def test_mutated_valid_requests_are_a_4xx_or_a_request(case):
    _check(*case)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner,
                                                               max_size=4),
    max_leaves=30,
)  # fmt: skip


@st.composite
def odd_requests(draw) -> bytes:
    """Well-formed JSON in the request's shape, with any value in any field."""
    dims = st.integers(min_value=-2, max_value=10**12)
    shape = draw(st.one_of(st.lists(dims, max_size=5), json_values))
    tensor = {
        "name": draw(st.one_of(st.text(max_size=5), json_values)),
        "shape": shape,
        "datatype": draw(st.sampled_from(["BYTES", "UINT8", "FP32", "INT64", "", 3])),
        "data": draw(st.one_of(json_values, st.just(PIXELS), st.lists(st.just(PIXELS[0])))),
    }
    if draw(st.booleans()):
        tensor["parameters"] = {"binary_data_size": draw(json_values)}
    request = {"inputs": draw(st.sampled_from([[tensor], [tensor, tensor], [], tensor]))}
    if draw(st.booleans()):
        request["parameters"] = draw(json_values)
    return json.dumps(request, allow_nan=True).encode()


@budget(400)
@given(odd_requests())
def test_well_formed_json_with_odd_values_is_a_4xx_or_a_request(body):
    _check(body, len(body))


def test_many_parses_leave_no_memory_behind():
    """Parse (and fail) thousands of requests: what Python allocates stays flat after warm-up."""
    bodies = [body for body, _ in VALID] + [b"[" * 50_000, b'{"inputs": [' * 1000, b"\xff" * 100]
    lengths = [length for _, length in VALID] + [50_000, 12_000, 100]

    def round_() -> None:
        for body, length in zip(bodies, lengths, strict=True):
            _check(body, length)

    for _ in range(20):
        round_()
    tracemalloc.start()
    try:
        round_()
        start, _ = tracemalloc.get_traced_memory()
        for _ in range(300):
            round_()
        end, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert end - start < 256 * 1024, f"{end - start} bytes still allocated after 300 rounds"
