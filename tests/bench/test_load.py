"""bench load: drives a real server and accounts for every request it sent."""

from __future__ import annotations

import asyncio
import io
import json

import pytest
from PIL import Image
from typer.testing import CliRunner

from tests.serving.fakes import solid_png
from visionloop.bench.load import Target, closed_loop, load_payloads, open_loop
from visionloop.bench.plots import plot_latency
from visionloop.cli import app

PAYLOADS = [solid_png(m) for m in (20, 21, 22)]


def test_open_loop_accounts_for_every_request(serve):
    server = serve(max_batch_size=4, max_delay_ms=5)
    target = Target(f"{server.url}/v1/models/fake/predict", metrics_url=f"{server.url}/metrics")
    result = asyncio.run(open_loop(target, PAYLOADS, rate=40, duration_s=1.0, slo_ms=1000))
    assert result.sent == sum(result.statuses.values())
    assert result.ok == result.statuses["200"] == result.sent
    assert result.good <= result.ok
    assert 0 < result.p50_ms <= result.p90_ms <= result.p99_ms <= result.max_ms
    assert result.mean_batch is not None
    assert result.mean_batch >= 1
    assert result.client_cpu_pct >= 0


def test_closed_loop_over_v2(serve):
    server = serve()
    target = Target(f"{server.url}/v2/models/fake/infer", protocol="v2")
    result = asyncio.run(closed_loop(target, PAYLOADS, clients=3, duration_s=0.5))
    assert result.ok > 0
    assert result.statuses == {"200": result.ok}
    assert result.mean_batch is None  # no metrics URL given


def test_refusals_are_counted_by_status(serve):
    server = serve()
    target = Target(f"{server.url}/v1/models/fake/predict")
    result = asyncio.run(closed_loop(target, [b"not an image"], clients=1, duration_s=0.2))
    assert result.ok == 0
    assert result.statuses["415"] == result.sent > 0


def test_load_payloads_reencodes_as_jpeg_and_skips_other_files(tmp_path):
    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    (tmp_path / "notes.md").write_text("hi")
    payloads = load_payloads(tmp_path)
    assert len(payloads) == 1
    assert payloads[0][:3] == b"\xff\xd8\xff"
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="no images"):
        load_payloads(empty)


def test_load_payloads_scales_photos_to_phone_size(tmp_path):
    Image.new("RGB", (300, 200), (10, 200, 30)).save(tmp_path / "a.png")
    (payload,) = load_payloads(tmp_path, megapixels=1.5)
    with Image.open(io.BytesIO(payload)) as image:
        assert image.format == "JPEG"
        assert image.size == (1500, 1000)


def test_cli_load_writes_json_and_plot(serve, tmp_path):
    server = serve()
    out = tmp_path / "rows.json"
    url = f"{server.url}/v1/models/fake/predict"
    args = ["--rates", "10", "--duration", "0.5", "--warmup", "0", "--label", "fake"]
    result = CliRunner().invoke(app, ["bench", "load", url, *args, "--json", str(out)])
    assert result.exit_code == 0, result.output
    rows = json.loads(out.read_text())
    assert [r["label"] for r in rows] == ["fake"]
    png = plot_latency(rows, tmp_path / "plot.png", title="test")
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_bad_levels_are_refused():
    result = CliRunner().invoke(app, ["bench", "load", "http://127.0.0.1:9/x", "--rates", "0"])
    assert result.exit_code == 2


def test_deadline_travels_as_a_header(serve):
    server = serve(policy="fixed")  # fixed answers every late request 504 (adaptive may 503)
    target = Target(f"{server.url}/v1/models/fake/predict", deadline_ms=0.001)
    result = asyncio.run(closed_loop(target, PAYLOADS, clients=1, duration_s=0.2))
    assert set(result.statuses) == {"504"}  # every request expired in the queue


def test_payloads_are_read_with_the_upload_guards(tmp_path):
    """The load generator reads the operator's photos through imaging's checks, like the
    server: a file that is no image, or a header declaring too many pixels, is named."""
    import pytest

    from visionloop import imaging
    from visionloop.bench.load import load_payloads

    (tmp_path / "notes.png").write_bytes(b"this is not an image")
    with pytest.raises(imaging.ImageError, match=r"notes\.png"):
        load_payloads(tmp_path, megapixels=1.0)
