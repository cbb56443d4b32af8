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


# Burns CPU until this process has used 0.2 s of it (CPU time, not wall time), then either
# says so and waits (argv[1] == "stay") or exits.
BURN = """
import sys, time
while time.process_time() < 0.2:
    pass
if sys.argv[1] == "stay":
    print("burned", flush=True)
    time.sleep(60)
"""
# The "server": on "go", starts a child that burns and stays, runs (and reaps) one that burns
# and exits, then says "ready" and waits for its stdin to close.
TREE = """
import subprocess, sys
BURN = sys.argv[1]
sys.stdin.readline()
stay = subprocess.Popen([sys.executable, "-c", BURN, "stay"], stdout=subprocess.PIPE)
stay.stdout.readline()
subprocess.run([sys.executable, "-c", BURN, "exit"], check=True)
print("ready", flush=True)
sys.stdin.readline()
stay.kill()
stay.wait()
"""


def test_server_cpu_sums_the_whole_process_tree():
    """A grandchild started in the window counts from zero; a child that ended in it counts
    through the parent that reaped it: at least 2 x 0.2 s of CPU, whatever the wall time."""
    import subprocess
    import sys

    from visionloop.bench.load import ProcessTreeCPU

    root = subprocess.Popen(
        [sys.executable, "-c", TREE, BURN],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        tree = ProcessTreeCPU(root.pid)
        assert tree.session == root.pid
        before = tree.sample()
        assert len(before) == 1  # the root only, so far
        root.stdin.write("go\n")
        root.stdin.flush()
        assert root.stdout.readline().strip() == "ready"
        after = tree.sample()
        assert len(after) == 2  # root and the child that stayed
        assert ProcessTreeCPU.used(before, after) >= 0.35  # /proc counts in 10 ms ticks
        assert ProcessTreeCPU.used(after, after) == 0
    finally:
        root.stdin.close()
        root.wait(timeout=30)
    assert ProcessTreeCPU(root.pid).sample() == {}  # gone: nothing to count


def test_rows_carry_server_cpu_and_repeat(serve):
    import os

    from visionloop.bench.load import sweep

    server = serve(max_batch_size=4, max_delay_ms=5)
    url = f"{server.url}/v1/models/fake/predict"
    # The test server runs in this process: its "tree" is this process.
    target = Target(url, server_pid=os.getpid())
    (row,) = sweep(target, PAYLOADS, "open", [20], 0.5, warmup_s=0, slo_ms=1000, repeat=3)
    assert row.repeat == 3
    assert row.server_cpu_pct is not None
    assert row.server_cpu_pct > 0
    assert row.as_dict()["server_cpu_pct"] == row.server_cpu_pct
    (plain,) = sweep(Target(url), PAYLOADS, "open", [20], 0.3, warmup_s=0)
    assert plain.server_cpu_pct is None
    assert plain.repeat == 0


def test_the_open_loop_pool_never_binds_before_the_client_timeout():
    """Requests a server never answers hold their connection until the client's timeout; the
    pool must hold every request of that long, or the generator delays the next ones itself."""
    from visionloop.bench.load import CLIENT_TIMEOUT_S, open_loop_connections

    assert open_loop_connections(60.0, CLIENT_TIMEOUT_S) >= 60 * CLIENT_TIMEOUT_S
    assert open_loop_connections(0.5, 30.0) == 16
    assert open_loop_connections(10.1, 30.0) == 303
