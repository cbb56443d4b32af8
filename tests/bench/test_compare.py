"""benchmarks/compare.py: the choices it makes between runs (no server, no timing)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def compare():
    spec = importlib.util.spec_from_file_location("compare", ROOT / "benchmarks" / "compare.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["compare"] = module  # dataclasses look their module up by name
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop("compare", None)


def test_refine_bisects_toward_the_better_neighbour_first(compare):
    grid = [10.0, 20.0, 30.0, 40.0]
    goodputs = {10.0: [10, 10], 20.0: [19, 20, 18], 30.0: [25, 27, 26], 40.0: [12, 30, 11]}
    # best median: 30 (26); neighbours 20 (median 19) and 40 (median 12): the lower side first
    assert compare.refine_rates(grid, goodputs, 1) == [25.0]
    assert compare.refine_rates(grid, goodputs, 2) == [25.0, 35.0]
    assert compare.refine_rates(grid, goodputs, 4) == [25.0, 35.0, 27.5, 22.5]
    assert compare.refine_rates(grid, goodputs, 6) == [25.0, 35.0, 27.5, 22.5, 32.5, 37.5]


def test_refine_at_the_edge_of_the_grid_goes_inward_only(compare):
    grid = [10.0, 20.0, 40.0]
    top = {10.0: [5], 20.0: [10], 40.0: [30]}
    assert compare.refine_rates(grid, top, 3) == [30.0, 35.0, 25.0]
    bottom = {10.0: [9], 20.0: [3], 40.0: [1]}
    assert compare.refine_rates(grid, bottom, 1) == [15.0]


def test_refine_has_nothing_to_do_without_a_grid(compare):
    assert compare.refine_rates([10.0], {10.0: [5]}, 3) == []
    assert compare.refine_rates([10.0, 20.0], {}, 3) == []  # the system failed: no rows
    assert compare.refine_rates([10.0, 20.0], {10.0: [1], 20.0: [2]}, 0) == []


def test_refine_ties_go_to_the_lower_rate_and_skip_grid_rates(compare):
    grid = [10.0, 20.0, 30.0]
    goodputs = {10.0: [8], 20.0: [8], 30.0: [2]}
    extra = compare.refine_rates(grid, goodputs, 3)
    assert extra == [15.0, 12.5, 17.5]  # best is 10 (tie with 20): only the upper side
    assert not set(extra) & set(grid)


def test_grid_goodputs_use_grid_rows_of_that_system_only(compare):
    rows = [
        {"label": "a", "offered": 10.0, "goodput_rps": 9.0, "phase": "grid"},
        {"label": "a", "offered": 10.0, "goodput_rps": 8.0, "phase": "grid"},
        {"label": "a", "offered": 15.0, "goodput_rps": 14.0, "phase": "refine"},
        {"label": "b", "offered": 10.0, "goodput_rps": 1.0, "phase": "grid"},
    ]
    assert compare._grid_goodputs(rows, "a") == {10.0: [9.0, 8.0]}


def test_system_order_is_a_reproducible_permutation_per_repeat(compare):
    systems = ["naive", "fixed", "adaptive", "litserve", "litserve-slo", "bentoml"]
    orders = compare.system_orders(systems, 5, seed=0)
    assert len(orders) == 5
    for order in orders:
        assert sorted(order) == sorted(systems)
    assert compare.system_orders(systems, 5, seed=0) == orders
    assert len({tuple(o) for o in orders}) > 1  # not one order for every repeat
    assert compare.system_orders(systems, 5, seed=1) != orders


def test_peer_names_choose_engine_and_mode(compare):
    assert compare.peer_name("litserve") == ("litserve", "torch", "shipped")
    assert compare.peer_name("litserve-slo") == ("litserve", "torch", "slo")
    assert compare.peer_name("bentoml-fast") == ("bentoml", "auto", "shipped")
    assert compare.peer_name("bentoml-fast-slo") == ("bentoml", "auto", "slo")
    sys_ = compare.system("pytriton-slo", 8000, threads=1, slo_ms=250)
    assert sys_.env["VISIONLOOP_PEER_MODE"] == "slo"
    assert sys_.env["VISIONLOOP_PEER_SLO_MS"] == "250"
    assert sys_.env["VISIONLOOP_THREADS"] == "1"
    assert sys_.protocol == "v2"


def test_every_batching_system_has_the_same_cap(compare):
    for name in ("fixed", "adaptive", "adaptive-torch", "adaptive-drift1", "batched"):
        args = compare.system(name, 8000, threads=1).command
        assert args[args.index("--max-batch-size") + 1] == "8"
        assert args[args.index("--max-delay-ms") + 1] == "10"
        assert args[args.index("--threads") + 1] == "1"


def test_every_peer_lists_its_knobs(compare):
    for peer_json in sorted((ROOT / "benchmarks" / "peers").glob("*/peer.json")):
        spec = json.loads(peer_json.read_text())
        assert spec["knobs"], peer_json
        for knob in spec["knobs"]:
            assert {"name", "what", "shipped", "slo", "where"} <= set(knob), (peer_json, knob)


def test_cpu_lists(compare):
    assert compare.cpu_list("0") == {0}
    assert compare.cpu_list("0,2") == {0, 2}
    assert compare.cpu_list("1-3") == {1, 2, 3}


def test_results_file_shape(compare, tmp_path):
    argv = ["compare.py", "--systems", "fixed,litserve-slo", "--rates", "5,10", "--repeats", "2"]
    argv += ["--server-cpus", "0", "--results", str(tmp_path / "r.json")]
    args = compare.parse_args(argv[1:])
    assert args.server_cpus == {0}
    row = {"label": "fixed", "offered": 5.0, "repeat": 1, "goodput_rps": 4.9}
    document = compare.results_document(args, argv, "2026-01-01T00:00:00+00:00", [row])
    text = json.dumps(document)  # all of it JSON
    document = json.loads(text)
    assert {"what", "command", "date", "machine", "args", "peer_versions", "rows"} <= set(document)
    assert document["command"].startswith("python benchmarks/compare.py --systems fixed,")
    assert document["machine"]["cpus"] >= 1
    assert isinstance(document["machine"]["avx512"], bool)
    assert "cpu_model" in document["machine"]
    assert "python" in document["machine"]
    assert document["args"]["repeats"] == 2
    assert document["args"]["server_cpus"] == [0]
    assert set(document["peer_versions"]) == {"litserve"}
    assert document["rows"] == [row]


def test_options_are_checked(compare):
    with pytest.raises(SystemExit):
        compare.parse_args(["--mode", "closed", "--refine", "2"])
    with pytest.raises(SystemExit):
        compare.parse_args(["--repeats", "0"])
