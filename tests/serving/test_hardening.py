"""An attacker's requests against a real server: every body bounded in memory, every route
behind the token, slow senders cut off without taking what normal clients need."""

from __future__ import annotations

import base64
import json
import logging
import socket
import threading
import time

import httpx
import numpy as np
import pytest

from tests.live_server import client
from tests.serving.fakes import FakeModel, solid_png
from visionloop.settings import ImagingSettings

BOUNDARY = "visionloopboundary"
MiB = 1024 * 1024


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


def _reset_peak_rss() -> None:
    with open("/proc/self/clear_refs", "w") as f:  # "5": reset the peak (VmHWM) to now
        f.write("5")


def _peak_rss() -> int:
    with open("/proc/self/status") as f:
        line = next(line for line in f if line.startswith("VmHWM:"))
    return int(line.split()[1]) * 1024


def _send_chunked(port: int, path: str, headers: dict[str, str], head: bytes, total: int):
    """POST ``head`` and then zeros, ``total`` bytes in all, chunked, until the server stops us.

    Returns (bytes sent, the response's first bytes or b"" if the connection was cut).
    """
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    lines = [f"POST {path} HTTP/1.1", "Host: 127.0.0.1", "Transfer-Encoding: chunked"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
    chunk = b"\0" * MiB
    sent = 0
    try:
        for piece in [head] + [chunk] * ((total - len(head)) // MiB):
            sock.sendall(b"%x\r\n%s\r\n" % (len(piece), piece))
            sent += len(piece)
        sock.sendall(b"0\r\n\r\n")
    except OSError:
        pass  # the server answered and closed: the rest was never read
    try:
        answer = sock.recv(4096)
    except OSError:
        answer = b""
    sock.close()
    return sent, answer


def _multipart_head(filename: str = "big.jpg") -> bytes:
    return (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="{filename}"'
        "\r\nContent-Type: image/jpeg\r\n\r\n\xff\xd8\xff"
    ).encode("latin-1")


def test_a_1gb_multipart_upload_is_refused_early_and_costs_no_memory(serve):
    server = serve(imaging=ImagingSettings(max_bytes=MiB))
    with client(server) as c:  # warm the route, so that its first use costs nothing below
        c.post("/v1/models/fake/predict", files={"file": ("a.png", solid_png(20))})
    idle = _rss()
    _reset_peak_rss()
    sent, answer = _send_chunked(
        server.port,
        "/v1/models/fake/predict",
        {"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"},
        _multipart_head(),
        1024 * MiB,
    )
    grew = _peak_rss() - idle
    assert sent < 64 * MiB, f"the server read {sent // MiB} MiB before it stopped"
    assert grew < 32 * MiB, f"peak RSS grew by {grew / MiB:.0f} MiB for a refused upload"
    if answer:  # the answer may be lost when the socket is reset under the sender
        assert answer.startswith(b"HTTP/1.1 413")


def test_a_file_part_past_max_bytes_is_413_naming_the_file(serve):
    server = serve(imaging=ImagingSettings(max_bytes=1000))
    with client(server) as c:
        r = c.post("/v1/models/fake/predict", files={"file": ("big.png", b"\x89PNG" + b"0" * 2000)})
    assert r.status_code == 413
    assert r.json() == {
        "error": "file 'big.png' too large: more than 1000 bytes",
        "type": "ImageTooLarge",
    }


def test_more_files_than_max_files_is_413_before_any_is_decoded(serve):
    server = serve(max_files=2)
    files = [("file", (f"{i}.png", solid_png(20 + i))) for i in range(3)]
    with client(server) as c:
        r = c.post("/v1/models/fake/predict", files=files)
    assert r.status_code == 413
    assert r.json()["error"] == "too many files: more than 2"
    assert server.state.runner.model.probe.seen == []


def test_a_multipart_body_past_max_request_bytes_is_413(serve):
    server = serve(max_request_bytes=3000)
    files = [("file", (f"{i}.png", solid_png(20 + i) + b"\0" * 1000)) for i in range(4)]
    with client(server) as c:
        r = c.post("/v1/models/fake/predict", files=files)
    assert r.status_code == 413
    assert r.json()["error"] == "body too large: 4870 bytes exceeds the limit of 3000 bytes"


@pytest.mark.parametrize(
    ("body", "error"),
    [
        (b"no boundary here", "malformed multipart body: Expected boundary character 45, got"),
        (
            f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="a.png"'
            "\r\n\r\nabc".encode(),
            "malformed multipart body: it ends before its closing boundary",
        ),
        (
            f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="a"\r\n\r\nx\r\n'
            f"--{BOUNDARY}--\r\n".encode(),
            "multipart body has no file parts",
        ),
        (
            f"--{BOUNDARY}\r\nContent-Type: image/png\r\n\r\nx\r\n--{BOUNDARY}--\r\n".encode(),
            "multipart part has no Content-Disposition header",
        ),
    ],
)
def test_malformed_multipart_is_a_clear_400(serve, body, error):
    server = serve()
    headers = {"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"}
    with client(server) as c:
        r = c.post("/v1/models/fake/predict", content=body, headers=headers)
    assert r.status_code == 400
    assert r.json()["error"].startswith(error)


def test_a_multipart_upload_still_answers_each_file(serve):
    server = serve()
    files = [("file", ("a.png", solid_png(20))), ("file", ("b.png", solid_png(21)))]
    with client(server) as c:
        r = c.post("/v1/models/fake/predict", files=files, data={"note": "ignored"})
    assert r.status_code == 200
    assert [(p["file"], p["label"]) for p in r.json()["predictions"]] == [
        ("a.png", "20"),
        ("b.png", "21"),
    ]


# --- v2 ----------------------------------------------------------------------------------


def _v2(server, body: bytes, headers=None) -> httpx.Response:
    with client(server) as c:
        return c.post("/v2/models/fake/infer", content=body, headers=headers or {})


def _pixels_request(n: int, datatype: str = "UINT8", data=None) -> bytes:
    shape = [n, 8, 8, 3]
    values = data if data is not None else [1] * (n * 8 * 8 * 3)
    tensor = {"name": "image", "shape": shape, "datatype": datatype, "data": values}
    return json.dumps({"inputs": [tensor]}).encode()


def test_a_v2_body_past_max_request_bytes_is_413_while_it_streams(serve):
    server = serve(max_request_bytes=4 * MiB)
    sent, answer = _send_chunked(
        server.port, "/v2/models/fake/infer", {"Content-Type": "application/json"}, b"{", 256 * MiB
    )
    assert sent < 64 * MiB, f"the server read {sent // MiB} MiB before it stopped"
    if answer:
        assert answer.startswith(b"HTTP/1.1 413")


def test_a_v2_json_header_past_max_json_bytes_is_413(serve):
    server = serve(max_json_bytes=1000)
    body = _pixels_request(2)  # all JSON: stopped at the JSON limit while it streams
    r = _v2(server, body)
    assert r.status_code == 413
    assert r.json()["error"] == f"body too large: {len(body)} bytes exceeds the limit of 1000 bytes"
    # With the binary extension the body may be larger, but not its JSON part.
    r = _v2(server, body + b"\0" * 10, {"Inference-Header-Content-Length": str(len(body))})
    assert r.status_code == 413
    assert r.json()["error"].startswith(f"JSON part too large: {len(body)} bytes exceeds")
    assert "binary extension" in r.json()["error"]


@pytest.mark.parametrize("datatype", ["UINT8", "FP32"])
def test_pixel_tensors_are_capped_at_max_files_before_their_data_is_read(serve, datatype):
    server = serve(max_files=2)
    # Three images declared, the data of one: the count is refused before the data is looked at.
    r = _v2(server, _pixels_request(3, datatype, data=[1] * (8 * 8 * 3)))
    assert r.status_code == 413
    assert r.json()["error"] == "too many images: 3 > 2"
    assert server.state.runner.model.probe.seen == []


def test_bytes_tensors_are_capped_at_max_files(serve):
    server = serve(max_files=2)
    png = base64.b64encode(solid_png(20)).decode()
    body = {"inputs": [{"name": "x", "shape": [3], "datatype": "BYTES", "data": [png] * 3}]}
    r = _v2(server, json.dumps(body).encode())
    assert r.status_code == 413
    assert r.json()["error"] == "too many images: 3 > 2"


def test_uint8_pixels_must_be_whole_numbers(serve):
    server = serve()
    values = [1.5] * (8 * 8 * 3)
    r = _v2(server, _pixels_request(1, "UINT8", data=values))
    assert r.status_code == 400
    assert r.json()["error"] == "UINT8 pixel values must be whole numbers 0-255"


def test_json_pixels_become_uint8_without_a_float64_copy(serve, monkeypatch):
    """The JSON list goes straight to float32 (exact for 0-255), never through float64."""
    server = serve()
    made: list[np.dtype] = []
    original = np.asarray

    def watching(*args, **kwargs):
        out = original(*args, **kwargs)
        made.append(out.dtype)
        return out

    monkeypatch.setattr(np, "asarray", watching)
    values = [[[[7.0, 8.0, 9.0]] * 8] * 8]
    r = _v2(server, _pixels_request(1, "FP32", data=values))
    assert r.status_code == 200, r.text
    assert np.dtype(np.float64) not in made
    assert np.dtype(np.float32) in made


def test_a_malformed_v2_header_never_500s(serve):
    server = serve()
    for body, headers in [
        (b"\xff\xfe not utf-8", {}),
        (b"[" * 100_000, {}),
        (b'{"inputs": []}', {}),
        (b'{"inputs": [{"name": "x", "shape": [1], "datatype": "BYTES"}]}', {}),
        (b"{}xx", {"Inference-Header-Content-Length": "2"}),
        (b"{}", {"Inference-Header-Content-Length": "-1"}),
    ]:
        r = _v2(server, body, headers)
        assert 400 <= r.status_code < 500, (body[:20], r.status_code, r.text)
        assert r.json()["error"]


# --- the token -----------------------------------------------------------------------------


ROUTES = [
    ("POST", "/v1/models/fake/predict"),
    ("POST", "/v2/models/fake/infer"),
    ("POST", "/v2/models/fake/versions/1/infer"),
    ("GET", "/v2/models/fake"),
    ("GET", "/v2/models/fake/config"),
    ("GET", "/v2/models/fake/stats"),
]


@pytest.mark.parametrize(("method", "path"), ROUTES)
@pytest.mark.parametrize(
    "sent", [None, "Bearer wrong", "Bearer s3cre", "Bearer s3cret2", "Basic s3cret", "s3cret"]
)
def test_every_route_family_refuses_a_missing_or_wrong_token(serve, method, path, sent):
    server = serve(api_token="s3cret")
    headers = {"Authorization": sent} if sent is not None else {}
    with client(server) as c:
        r = c.request(method, path, content=solid_png(20), headers=headers)
    assert r.status_code == 401
    assert r.headers["www-authenticate"] == "Bearer"
    assert server.state.runner.model.probe.seen == []


def test_the_token_is_compared_in_constant_time(serve, monkeypatch):
    import hmac

    compared: list[tuple[bytes, bytes]] = []
    original = hmac.compare_digest

    def recording(a, b):
        compared.append((a, b))
        return original(a, b)

    monkeypatch.setattr(hmac, "compare_digest", recording)
    server = serve(api_token="s3cret")
    with client(server) as c:
        r = c.post("/v1/models/fake/predict", content=solid_png(20), headers={"Authorization": "x"})
    assert r.status_code == 401
    assert compared == [(b"x", b"Bearer s3cret")]


# --- slow clients --------------------------------------------------------------------------


def _read_all(sock: socket.socket) -> bytes:
    data = b""
    try:
        while chunk := sock.recv(4096):
            data += chunk
    except OSError:
        pass
    return data


def test_a_client_trickling_headers_is_answered_408_and_closed(serve):
    server = serve(header_timeout_s=0.3)
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=30)
    sock.sendall(b"POST /v1/models/fake/predict HTTP/1.1\r\nHost: x\r\n")
    stop = threading.Event()

    def trickle() -> None:  # one header byte every 50 ms: never done
        while not stop.is_set():
            try:
                sock.sendall(b"X")
            except OSError:
                return
            time.sleep(0.05)

    sender = threading.Thread(target=trickle)
    sender.start()
    answer = _read_all(sock)
    stop.set()
    sender.join()
    sock.close()
    assert answer.startswith(b"HTTP/1.1 408 Request Timeout")


def test_a_keep_alive_connection_gets_a_fresh_header_deadline_per_request(serve):
    server = serve(header_timeout_s=0.5)
    with client(server) as c:  # one connection, several requests, each well within its deadline
        for marker in (20, 21, 22):
            assert c.post("/v1/models/fake/predict", content=solid_png(marker)).status_code == 200


def test_a_body_that_has_not_arrived_by_the_deadline_is_408_and_never_queued(serve):
    server = serve(timeout_ms=300)
    png = solid_png(20)
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=30)
    head = f"POST /v1/models/fake/predict HTTP/1.1\r\nHost: x\r\nContent-Length: {len(png)}\r\n\r\n"
    sock.sendall(head.encode() + png[:10])  # and then nothing more
    answer = _read_all(sock)
    sock.close()
    assert answer.startswith(b"HTTP/1.1 408")
    assert b"did not arrive within its deadline" in answer
    assert server.state.runner.model.probe.seen == []


def test_normal_clients_are_served_while_slow_ones_hold_connections(serve):
    server = serve(header_timeout_s=30)
    held = []
    for _ in range(50):
        sock = socket.create_connection(("127.0.0.1", server.port), timeout=30)
        sock.sendall(b"POST /v1/models/fake/predict HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        held.append(sock)
    try:
        with client(server) as c:
            for marker in range(20, 30):
                r = c.post("/v1/models/fake/predict", content=solid_png(marker))
                assert (r.status_code, r.json()["label"]) == (200, str(marker))
        assert sum(server.state._decoding.values()) == 0
        assert len(server.state.runner.batcher) == 0
    finally:
        for sock in held:
            sock.close()


# --- deadlines -----------------------------------------------------------------------------


def test_a_request_whose_batch_runs_past_its_deadline_is_504_at_the_deadline(serve):
    """The client stops waiting at its deadline: a 200 after it would go to nobody."""
    model = FakeModel()
    server = serve(model=model, max_batch_size=1, max_delay_ms=0)
    model.probe.gate = threading.Event()
    url = f"{server.url}/v1/models/fake/predict"
    answer: dict[str, httpx.Response] = {}
    slow = threading.Thread(
        target=lambda: answer.update(
            r=httpx.post(url, content=solid_png(41), headers={"X-Timeout-Ms": "300"}, timeout=30)
        )
    )
    slow.start()
    assert model.probe.entered.wait(timeout=30)  # its batch is running, held by the gate
    slow.join(timeout=30)  # answered while the batch is still held
    assert not slow.is_alive()
    model.probe.gate.set()
    assert answer["r"].status_code == 504
    assert answer["r"].json()["error"].startswith("deadline passed while its batch ran")
    assert server.metric('visionloop_refusals_total{model="fake",reason="deadline_in_batch"}') == 1
    with client(server) as c:  # the executor finished the batch and serves on
        assert c.post("/v1/models/fake/predict", content=solid_png(42)).json()["label"] == "42"


def test_a_sender_that_leaves_mid_body_is_dropped_quietly(serve):
    """No traceback, no 500: the request is counted as 499 (client gone) and nothing else."""
    server = serve()
    errors: list[logging.LogRecord] = []
    handler = logging.Handler(logging.ERROR)
    handler.emit = errors.append  # type: ignore[method-assign]
    logging.getLogger("uvicorn.error").addHandler(handler)  # uvicorn's does not propagate
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=30)
    head = "POST /v1/models/fake/predict HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n"
    sock.sendall(head.encode() + b"\x89PNG")
    time.sleep(0.2)  # the route is reading the body
    sock.close()
    deadline = time.monotonic() + 30
    gone = 'visionloop_requests_total{endpoint="v1_predict",model="fake",status="499"}'
    while server.metric(gone) < 1:
        assert time.monotonic() < deadline, "the server never noticed the sender left"
        time.sleep(0.02)
    logging.getLogger("uvicorn.error").removeHandler(handler)
    assert not errors, [r.getMessage() for r in errors]
    with client(server) as c:
        assert c.post("/v1/models/fake/predict", content=solid_png(20)).status_code == 200


def test_the_deadline_counts_from_the_first_byte_not_from_the_route(serve):
    """Headers that take longer than the deadline to arrive: the route starts late, and the
    request is already out of time (it used to get a fresh deadline there)."""
    model = FakeModel()
    server = serve(model=model)
    png = solid_png(20)
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=30)
    sock.sendall(b"POST /v1/models/fake/predict HTTP/1.1\r\n")
    time.sleep(0.4)
    rest = f"Host: x\r\nX-Timeout-Ms: 200\r\nContent-Length: {len(png)}\r\n\r\n".encode()
    sock.sendall(rest + png)
    answer = _read_all(sock)
    sock.close()
    assert answer.startswith(b"HTTP/1.1 504"), answer[:200]
    assert b"deadline passed before the body was read" in answer
    assert model.probe.seen == []


@pytest.mark.parametrize("content_type", ["image/png", f"multipart/form-data; boundary={BOUNDARY}"])
def test_a_declared_length_over_the_limit_is_413_before_any_body_is_read(serve, content_type):
    """Only the headers are sent: had the server waited for the body, the answer would be the
    deadline's 408, not 413."""
    server = serve()
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=30)
    head = (
        "POST /v1/models/fake/predict HTTP/1.1\r\nHost: x\r\n"
        f"Content-Type: {content_type}\r\nContent-Length: {1 << 30}\r\nX-Timeout-Ms: 3000\r\n\r\n"
    )
    sock.sendall(head.encode())
    answer = _read_all(sock)
    sock.close()
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert b"connection: close" in answer.lower()
