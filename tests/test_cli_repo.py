"""``visionloop repo``: the folder commands (init, add, list -r) on a folder alone, and the
server commands (list, load, unload, canary, shadow, promote, rollback) against a live server.

The models are :class:`tests.serving.fakes.VersionedModel`: version v's weights add 1000 x v to
the label, so a prediction says which version answered it.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import httpx
import pytest
import torch
from click.testing import Result
from typer.testing import CliRunner

from tests.cli_checks import assert_one_line_error
from tests.live_server import LiveServer
from tests.serving.fakes import solid_png, versioned_weights
from tests.serving.test_repository import FAST, make_model
from visionloop.cli import app
from visionloop.serving.repository import ModelConfig, VersionPolicy, read_config

runner = CliRunner()
# Neither a server nor a token from the environment this suite runs in; wide enough that Rich
# folds no line of ours.
ENV = {"VISIONLOOP_URL": None, "VISIONLOOP_API_TOKEN": None, "COLUMNS": "300"}
NOBODY = "http://127.0.0.1:9"  # the discard port: nothing listens on it


def repo(*args: str, **env: str | None) -> Result:
    """``visionloop repo ARGS`` with the test environment (plus ``env``)."""
    return runner.invoke(app, ["repo", *args], env={**ENV, **env})


def ok(result) -> str:
    """The stdout of a command that succeeded."""
    assert result.exit_code == 0, (result.stdout, result.stderr)
    return result.stdout


def error_line(result, expected: str, code: int) -> str:
    """The one ``error: ...`` line a command failed with (``code``), holding ``expected``."""
    assert_one_line_error(result, expected, code)
    line = result.stderr.strip()
    assert line.startswith("error: "), line
    return line


def weights_file(folder: Path, version: int) -> Path:
    """A state dict of the fake model's version ``version``, outside any repository."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"v{version}.pt"
    torch.save(versioned_weights(version), path)
    return path


def states(rows: list[dict]) -> list[tuple[str, str, str]]:
    return [(r["name"], r["version"], r["state"]) for r in rows]


# -- the folder ------------------------------------------------------------------------------


def test_init_writes_a_config_that_reads_back(tmp_path):
    root = tmp_path / "models"  # made by init, parents and all
    args = ["-r", str(root), "--architecture", FAST, "--max-batch-size", "4", "--instances", "2"]
    out = ok(repo("init", "m", *args, "--latest", "2"))
    config_path = root / "m" / "config.toml"
    assert "wrote" in out
    assert "config.toml" in out
    assert read_config(config_path) == ModelConfig(
        architecture=FAST, max_batch_size=4, instances=2, version_policy=VersionPolicy(latest=2)
    )
    # the defaults: one version, the newest
    ok(repo("init", "plain", "-r", str(root)))
    plain = read_config(root / "plain" / "config.toml")
    assert plain.architecture is None
    assert plain.max_batch_size == ModelConfig().max_batch_size
    assert plain.version_policy == VersionPolicy(latest=1)


def test_init_refuses_an_existing_model_a_bad_name_and_a_bad_setting(tmp_path):
    root = tmp_path / "models"
    ok(repo("init", "m", "-r", str(root), "--architecture", FAST, "--max-batch-size", "4"))
    before = (root / "m" / "config.toml").read_text()
    error_line(repo("init", "m", "-r", str(root), "--max-batch-size", "2"), "exists", 2)
    assert (root / "m" / "config.toml").read_text() == before  # never overwritten

    error_line(repo("init", "../x", "-r", str(root)), "model name '../x'", 2)
    assert not (tmp_path / "x").exists()
    assert not (root / ".." / "x").exists()
    assert sorted(p.name for p in root.iterdir()) == ["m"]

    error_line(repo("init", "e", "-r", str(root), "--engine", "tensorrt"), "engine", 2)
    assert not (root / "e").exists()
    result = repo("init", "b", "-r", str(root), "--max-batch-size", "0")
    assert result.exit_code == 2  # Typer's own range check
    assert not (root / "b").exists()


def test_add_numbers_versions_and_never_overwrites(tmp_path):
    root, sources = tmp_path / "models", tmp_path / "sources"
    root.mkdir()
    w1, w2 = weights_file(sources, 1), weights_file(sources, 2)

    out = ok(repo("add", "m", str(w1), "-r", str(root)))
    assert "added m version 1" in out
    assert (root / "m" / "1" / "weights.pt").read_bytes() == w1.read_bytes()
    assert read_config(root / "m" / "config.toml") == ModelConfig(
        version_policy=VersionPolicy(latest=1)
    )  # a new model gets the default config
    assert "added m version 2" in ok(repo("add", "m", str(w2), "-r", str(root)))
    assert (root / "m" / "2" / "weights.pt").read_bytes() == w2.read_bytes()

    error_line(repo("add", "m", str(w1), "-r", str(root), "--version", "2"), "never overwritten", 2)
    assert (root / "m" / "2" / "weights.pt").read_bytes() == w2.read_bytes()

    # an explicit number, and a folder that holds weights.pt (a version of its own)
    assert "added m version 5" in ok(repo("add", "m", str(w1), "-r", str(root), "--version", "5"))
    assert "added m version 6" in ok(repo("add", "m", str(root / "m" / "2"), "-r", str(root)))
    assert (root / "m" / "6" / "weights.pt").read_bytes() == w2.read_bytes()

    empty = sources / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("no model here")
    error_line(repo("add", "m", str(empty), "-r", str(root)), "neither card.json", 2)
    error_line(repo("add", "m", str(sources / "missing.pt"), "-r", str(root)), "does not exist", 2)
    (sources / "w.bin").write_bytes(b"x")
    error_line(repo("add", "m", str(sources / "w.bin"), "-r", str(root)), "a .pt state dict", 2)
    error_line(repo("add", "../m", str(w1), "-r", str(root)), "model name", 2)
    error_line(repo("add", "m", str(w1), "-r", str(tmp_path / "nope")), "not a folder", 2)

    versions = sorted(p.name for p in (root / "m").iterdir() if p.is_dir())
    assert versions == ["1", "2", "5", "6"]  # nothing half-written, no staging folder left
    listed = json.loads(ok(repo("list", "-r", str(root), "--json")))
    assert states(listed) == [
        ("m", "1", "ON DISK"),
        ("m", "2", "ON DISK"),
        ("m", "5", "ON DISK"),
        ("m", "6", "SELECTED"),
    ]


def test_add_with_its_own_architecture_writes_version_toml_and_refuses_a_typo(tmp_path):
    root, sources = tmp_path / "models", tmp_path / "sources"
    root.mkdir()
    w1 = weights_file(sources, 1)
    ok(repo("add", "catseg", str(w1), "-r", str(root), "--architecture", "catseg_plane"))
    assert (root / "catseg" / "1" / "version.toml").read_text() == (
        'architecture = "catseg_plane"\n'
    )
    error_line(repo("add", "catseg", str(w1), "-r", str(root), "--architecture", "catsge"),
               "unknown model 'catsge'", 2)  # fmt: skip
    assert sorted(p.name for p in (root / "catseg").iterdir()) == ["1", "config.toml"]


def test_add_with_classes_checks_the_weights_and_writes_them_to_version_toml(tmp_path):
    """Weights trained for cat, animal and plane: `--classes` names them (checked by loading
    the weights into the architecture); a count that does not fit, or a repeated class, is
    refused before anything is written."""

    from visionloop.models.catseg import SegNet

    root = tmp_path / "models"
    root.mkdir()
    three = tmp_path / "three.pt"
    torch.save(SegNet(3, pretrained=False).state_dict(), three)
    error_line(repo("add", "catseg", str(three), "-r", str(root), "--classes", "cat,plane"),
               "do not fit model 'catseg'", 2)  # fmt: skip
    error_line(repo("add", "catseg", str(three), "-r", str(root), "--classes", "cat,cat,plane"),
               "classes repeat cat", 2)  # fmt: skip
    assert not (root / "catseg").exists()
    ok(repo("add", "catseg", str(three), "-r", str(root), "--classes", "cat, animal, plane"))
    assert (root / "catseg" / "1" / "version.toml").read_text() == (
        'classes = ["cat", "animal", "plane"]\n'
    )


def test_list_from_the_folder_gives_each_version_its_state(tmp_path):
    root = tmp_path
    make_model(root, "good", versions=(1, 2, 3), version_policy=VersionPolicy(latest=2))
    make_model(root, "pinned", versions=(1, 2), version_policy=VersionPolicy(specific=[1]))
    make_model(root, "typo", versions=(1,))
    (root / "typo" / "config.toml").write_text("max_batch = 3\n")
    make_model(root, "corrupt", versions=(1,))
    (root / "corrupt" / "config.toml").write_text("max_batch_size = [")
    make_model(root, "holes", versions=(1,))
    (root / "holes" / "2").mkdir()  # a version folder without files
    make_model(root, "empty", versions=())
    (root / ".staging").mkdir()  # hidden: ignored
    (root / "README.txt").write_text("not a model")  # a file: ignored
    (root / "good" / "notes").mkdir()  # not a version number: ignored

    rows = json.loads(ok(repo("list", "-r", str(root), "--json")))
    assert states(rows) == [
        ("corrupt", "", "INVALID"),
        ("empty", "", "EMPTY"),
        ("good", "1", "ON DISK"),
        ("good", "2", "SELECTED"),
        ("good", "3", "SELECTED"),
        ("holes", "1", "ON DISK"),
        ("holes", "2", "INVALID"),
        ("pinned", "1", "SELECTED"),
        ("pinned", "2", "ON DISK"),
        ("typo", "", "INVALID"),
    ]
    reasons = {(r["name"], r["version"]): r["reason"] for r in rows}
    assert "cannot read" in reasons["corrupt", ""]
    assert "max_batch" in reasons["typo", ""]
    assert "not a valid model config" in reasons["typo", ""]
    assert "neither card.json" in reasons["holes", "2"]
    assert reasons["good", "2"] == ""
    assert reasons["empty", ""] == "no versions"

    table = ok(repo("list", "-r", str(root)))  # the same rows, for people
    for word in ("corrupt", "good", "SELECTED", "ON DISK", "INVALID", "EMPTY", "max_batch"):
        assert word in table
    assert ".staging" not in table
    assert "README" not in table

    error_line(repo("list", "-r", str(root / "nope")), "not a folder", 2)


# -- a running server ------------------------------------------------------------------------


@pytest.fixture
def repo_server(tmp_path, serve_repository):
    """Servers of the repository ``tmp_path / "models"``."""
    return functools.partial(serve_repository, tmp_path / "models")


def predicted_version(server: LiveServer) -> str:
    """The version that answers an unversioned prediction of model ``a`` (checked by its label)."""
    response = httpx.post(
        f"{server.url}/v1/models/a/predict", content=solid_png(7, (8, 8)), timeout=30
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["label"] == str(7 + 1000 * int(body["model_version"]))
    return body["model_version"]


def test_list_load_and_a_rollout_against_a_server(tmp_path, repo_server):
    root, sources = tmp_path / "models", tmp_path / "sources"
    make_model(root, "a")
    server = repo_server()
    url = ("--url", server.url)

    rows = json.loads(ok(repo("list", *url, "--json")))
    assert states(rows) == [("a", "1", "READY")]
    assert rows[0]["role"] == "serving"
    assert "READY" in ok(repo("list", *url))

    # a new version: added to the folder, then loaded; it takes over
    ok(repo("add", "a", str(weights_file(sources, 2)), "-r", str(root)))
    assert json.loads(ok(repo("load", "a", *url))) == {"name": "a", "loaded": ["2"], "serving": "2"}
    assert predicted_version(server) == "2"
    rows = json.loads(ok(repo("list", *url, "--json")))
    by_version = {r["version"]: r for r in rows}
    assert by_version["2"]["state"] == "READY"
    assert by_version["2"]["role"] == "serving"
    assert by_version["1"]["state"] != "READY"

    # a canary of version 3 beside it, promoted, then rolled back
    ok(repo("add", "a", str(weights_file(sources, 3)), "-r", str(root)))
    answer = json.loads(ok(repo("canary", "a", "3", "--share", "0.5", *url)))
    assert answer == {"name": "a", "canary": "3", "serving": "2"}
    rows = {r["version"]: r for r in json.loads(ok(repo("list", *url, "--json")))}
    assert rows["3"]["role"] == "canary"
    assert rows["3"]["share"] == 0.5
    assert rows["2"]["role"] == "serving"
    assert "canary 50%" in ok(repo("list", *url))
    assert json.loads(ok(repo("promote", "a", *url))) == {"name": "a", "serving": "3"}
    assert predicted_version(server) == "3"
    assert json.loads(ok(repo("rollback", "a", *url))) == {"name": "a", "serving": "2"}
    assert predicted_version(server) == "2"

    # a shadow answers nothing; a rollback drops it
    assert json.loads(ok(repo("shadow", "a", "3", *url))) == {
        "name": "a",
        "shadow": "3",
        "serving": "2",
    }
    assert {predicted_version(server) for _ in range(10)} == {"2"}
    assert json.loads(ok(repo("rollback", "a", *url))) == {"name": "a", "serving": "2"}
    rows = {r["version"]: r for r in json.loads(ok(repo("list", *url, "--json")))}
    assert rows["3"]["state"] != "READY"

    # what the server refuses: exit 1, its status and reason on one line
    error_line(repo("promote", "a", *url), "400", 1)
    error_line(repo("promote", "a", *url), "no canary or shadow to promote", 1)
    error_line(repo("canary", "a", "2", *url), "already the serving", 1)
    line = error_line(repo("load", "nope", *url), "404", 1)
    assert "nope" in line
    assert "/v2/repository/models/nope/load" in line
    error_line(repo("canary", "nope", "1", *url), "404", 1)
    error_line(repo("canary", "a", "9", *url), "404", 1)
    assert predicted_version(server) == "2"  # none of that changed what serves

    # unload, then load again
    assert json.loads(ok(repo("unload", "a", *url))) == {"name": "a", "unloaded": True}
    assert (
        httpx.post(f"{server.url}/v1/models/a/predict", content=solid_png(7, (8, 8))).status_code
        == 503
    )
    assert not [r for r in json.loads(ok(repo("list", *url, "--json"))) if r["state"] == "READY"]
    assert json.loads(ok(repo("load", "a", *url)))["serving"] == "3"  # the newest in the folder
    assert predicted_version(server) == "3"


def test_a_rollout_the_budget_refuses_is_exit_1_with_its_reason(tmp_path, repo_server):
    policy = VersionPolicy(specific=[1])
    make_model(tmp_path / "models", "a", versions=(1, 2), memory_mb=300, version_policy=policy)
    server = repo_server(memory_budget_mb=500)
    line = error_line(repo("canary", "a", "2", "--url", server.url), "400", 1)
    assert "a version 2 expects 300 MB" in line
    assert "the memory budget is 500 MB" in line
    rows = json.loads(ok(repo("list", "--url", server.url, "--json")))
    assert [(r["version"], r["state"], r.get("role")) for r in rows] == [
        ("1", "READY", "serving"),
        ("2", "UNAVAILABLE", None),
    ]
    assert "memory budget" in rows[1]["reason"]
    assert predicted_version(server) == "1"  # what served serves on


def test_the_server_url_can_come_from_the_environment(tmp_path, repo_server):
    make_model(tmp_path / "models", "a")
    server = repo_server()
    rows = json.loads(ok(repo("list", "--json", VISIONLOOP_URL=server.url + "/")))
    assert states(rows) == [("a", "1", "READY")]
    # --url wins over the environment
    error_line(repo("list", "--url", NOBODY, VISIONLOOP_URL=server.url), "cannot reach", 1)


def test_a_server_with_a_token_needs_it(tmp_path, repo_server):
    make_model(tmp_path / "models", "a")
    server = repo_server(token="s3cret")
    url = ("--url", server.url)

    rows = json.loads(ok(repo("list", *url, "--token", "s3cret", "--json")))
    assert states(rows) == [("a", "1", "READY")]
    rows = json.loads(ok(repo("list", *url, "--json", VISIONLOOP_API_TOKEN="s3cret")))
    assert states(rows) == [("a", "1", "READY")]
    answer = json.loads(ok(repo("load", "a", *url, VISIONLOOP_API_TOKEN="s3cret")))
    assert answer["serving"] == "1"

    error_line(repo("list", *url, "--json"), "401", 1)
    error_line(repo("load", "a", *url), "401", 1)
    line = error_line(repo("list", *url, "--token", "wrong"), "401", 1)
    assert "bearer token" in line
    assert "s3cret" not in line
    # --token wins over the environment
    error_line(repo("list", *url, "--token", "wrong", VISIONLOOP_API_TOKEN="s3cret"), "401", 1)


def test_no_server_listening_is_one_clear_error():
    line = error_line(repo("list", "--url", NOBODY, "--json"), "cannot reach", 1)
    assert NOBODY in line
    error_line(repo("load", "a", "--url", NOBODY), "cannot reach", 1)
    error_line(repo("promote", "a", "--url", NOBODY + "/"), f"cannot reach {NOBODY}:", 1)


def test_a_folder_that_is_not_a_model_name_does_not_hide_the_others(tmp_path):
    make_model(tmp_path, "good")
    (tmp_path / "my model").mkdir()  # a space: not a model name
    rows = json.loads(ok(repo("list", "-r", str(tmp_path), "--json")))
    assert [(r["name"], r["state"]) for r in rows] == [
        ("good", "SELECTED"),
        ("my model", "INVALID"),
    ]
    assert "model name" in rows[1]["reason"]


def test_a_canary_share_of_zero_and_a_bad_name_are_refused_before_any_request():
    # nothing listens on port 9: exit 2 (ours), not 1 (a server's refusal or no server)
    error_line(repo("canary", "a", "2", "--share", "0", "--url", "http://127.0.0.1:9"), "share", 2)
    error_line(repo("load", "a b", "--url", "http://127.0.0.1:9"), "model name", 2)
