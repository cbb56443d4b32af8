"""``visionloop repo``: a model repository folder, and the server that serves it.

Folder commands (``--repository DIR``, no server needed): ``init``, ``add``, and ``list``
without ``--url``. Server commands (``--url``, default ``http://127.0.0.1:8000``; the token from
``--token`` or ``VISIONLOOP_API_TOKEN``): ``list``, ``load``, ``unload``, ``canary``, ``shadow``,
``promote``, ``rollback``. A server's answer that is not 2xx is printed as ``error: ...`` with
exit 1 (2 for bad input of ours, as everywhere). A verb answered 202 (an API replica of Redis
workers recorded the rollout, but no worker serves it yet) prints the answer, then
``pending: ...`` on stderr, and exits 3: scripts can tell a rollout still going on from one
done (exit 0).

A rollout, for example::

    visionloop repo add catdog exports/catdog-v2 --repository models/
    visionloop repo canary catdog 2 --share 0.1     # 10 % of traffic, compared with v1
    visionloop repo promote catdog                   # or: visionloop repo rollback catdog
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from visionloop.cli.common import CommandError, console, err_console, errors, escape, fail, say

app = typer.Typer(
    help="A model repository: its folder (init, add, list) and a running server's models "
    "(list, load, unload, canary, shadow, promote, rollback).",
    no_args_is_help=True,
)

RepositoryOption = Annotated[
    Path, typer.Option("--repository", "-r", help="The model repository folder.")
]
UrlOption = Annotated[
    str | None,
    typer.Option(help="A running server (default http://127.0.0.1:8000, VISIONLOOP_URL)."),
]
TokenOption = Annotated[
    str | None, typer.Option(help="API token (default: VISIONLOOP_API_TOKEN).", show_default=False)
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON, for programs.")]
ModelArg = Annotated[str, typer.Argument(help="The model's name (its folder in the repository).")]
VersionArg = Annotated[int, typer.Argument(min=1, help="A version number.")]
TIMEOUT_S = 600.0  # a load warms a model up: give it time


@app.command("init")
def init(
    model: ModelArg,
    repository: RepositoryOption,
    architecture: Annotated[
        str | None, typer.Option(help="Registry name or module:factory (default: MODEL).")
    ] = None,
    engine: Annotated[str | None, typer.Option(help="auto, torch, onnxruntime, openvino.")] = None,
    max_batch_size: Annotated[int | None, typer.Option(min=1)] = None,
    instances: Annotated[int | None, typer.Option(min=1)] = None,
    threads: Annotated[int | None, typer.Option(min=0, help="0: cores shared out.")] = None,
    latest: Annotated[int, typer.Option(min=1, help="Versions loaded: the newest N.")] = 1,
) -> None:
    """Create DIR/MODEL/config.toml (the folder too) with these settings."""
    from visionloop.serving.repository import (
        CONFIG,
        ModelConfig,
        RepositoryError,
        check_name,
        write_config,
    )

    with errors(RepositoryError, ValueError, OSError):
        check_name(model)
        fields = {
            "architecture": architecture, "engine": engine, "max_batch_size": max_batch_size,
            "instances": instances, "threads": threads,
        }  # fmt: skip
        config = ModelConfig.model_validate(
            {
                **{k: v for k, v in fields.items() if v is not None},
                "version_policy": {"latest": latest},
            }
        )
        folder = repository / model
        if (folder / CONFIG).exists():
            raise CommandError(f"{folder / CONFIG} exists; edit it instead")
        folder.mkdir(parents=True, exist_ok=True)
        write_config(folder / CONFIG, config)
    say(f"wrote {folder / CONFIG}")


@app.command("add")
def add(
    model: ModelArg,
    source: Annotated[
        Path,
        typer.Argument(help="A folder made by `visionloop export`, or a weights .pt file."),
    ],
    repository: RepositoryOption,
    version: Annotated[
        int | None, typer.Option(min=1, help="Version number (default: one past the newest).")
    ] = None,
    architecture: Annotated[
        str | None,
        typer.Option(
            help="This version's network, when not the model's (e.g. catseg_plane as a "
            "version of catseg); written to its version.toml."
        ),
    ] = None,
    classes: Annotated[
        str | None,
        typer.Option(
            help="Comma-separated classes the weights were trained for, in channel order "
            "(train seg --classes), when not the architecture's own; checked by loading the "
            "weights, and written to the version's version.toml."
        ),
    ] = None,
) -> None:
    """Copy an export (or a state dict) into the repository as a new version of MODEL. A
    running server picks it up with `repo load MODEL` (or `repo canary MODEL VERSION`)."""
    from visionloop.models.base import class_names
    from visionloop.models.registry import UnknownModel, create, resolve
    from visionloop.serving.repository import Repository, RepositoryError

    with errors(RepositoryError, OSError, UnknownModel, ValueError):
        if architecture is not None:
            resolve(architecture)  # a typo is refused here, not at the version's first load
        names = None
        if classes is not None:  # weights that do not fit are refused here too
            names = class_names(classes)
            weights = source / "weights.pt" if source.is_dir() else source
            create(architecture or _architecture(repository, model), weights, names)
        added = Repository(repository).add_version(
            model, source, version, architecture=architecture, classes=names
        )
    say(f"added {model} version {added} in {repository / model / str(added)}")


@app.command("list")
def list_models(
    repository: Annotated[
        Path | None, typer.Option("--repository", "-r", help="Read this folder, not a server.")
    ] = None,
    url: UrlOption = None,
    token: TokenOption = None,
    as_json: JsonOption = False,
) -> None:
    """Every model and version with its state (and why, when not ready): from a running
    server, or (with --repository) from the folder alone."""
    if repository is not None:
        rows = _folder_rows(repository)
    else:
        rows = _call(url, token, "/v2/repository/index")
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    table = Table("model", "version", "state", "role", "reason")
    for row in rows:
        role = str(row.get("role", ""))
        if row.get("share"):
            role += f" {row['share']:.0%}"
        table.add_row(
            *(
                escape(str(x))
                for x in (row["name"], row["version"], row["state"], role, row.get("reason", ""))
            )
        )
    console.print(table)


@app.command("load")
def load(model: ModelArg, url: UrlOption = None, token: TokenOption = None) -> None:
    """(Re)load MODEL as its folder says now: a new version is warmed beside the serving one,
    then takes over with no failed request; the old one drains and unloads."""
    _report(_call(url, token, _model_path(model, "load")))


@app.command("unload")
def unload(model: ModelArg, url: UrlOption = None, token: TokenOption = None) -> None:
    """Stop serving MODEL (its queue drains first)."""
    _report(_call(url, token, _model_path(model, "unload")))


@app.command("canary")
def canary(
    model: ModelArg,
    version: VersionArg,
    share: Annotated[float, typer.Option(max=1.0, help="Share of traffic, in (0, 1].")] = 0.1,
    url: UrlOption = None,
    token: TokenOption = None,
) -> None:
    """Send SHARE of MODEL's unversioned traffic to VERSION; /metrics compares it with the
    serving version (visionloop_version_*)."""
    if not share > 0:
        raise fail(f"--share must be > 0 (a share of the traffic, at most 1), got {share}")
    body = {"version": version, "share": share}
    _report(_call(url, token, _model_path(model, "canary"), body))


@app.command("shadow")
def shadow(
    model: ModelArg, version: VersionArg, url: UrlOption = None, token: TokenOption = None
) -> None:
    """Run a copy of MODEL's traffic on VERSION without answering from it, and compare."""
    _report(_call(url, token, _model_path(model, "shadow"), {"version": version}))


@app.command("promote")
def promote(model: ModelArg, url: UrlOption = None, token: TokenOption = None) -> None:
    """The canary or shadow becomes MODEL's serving version."""
    _report(_call(url, token, _model_path(model, "promote")))


@app.command("rollback")
def rollback(model: ModelArg, url: UrlOption = None, token: TokenOption = None) -> None:
    """Drop MODEL's canary or shadow; without one, serve its previous version again."""
    _report(_call(url, token, _model_path(model, "rollback")))


PENDING_EXIT = 3  # a 202: recorded, not served yet


def _report(answer: Any) -> None:
    print(json.dumps(answer))  # one line, unwrapped, for programs
    if isinstance(answer, dict) and "pending" in answer:
        err_console.print(f"[yellow]pending:[/yellow] {escape(str(answer['pending']))}")
        raise typer.Exit(PENDING_EXIT)


def _folder_rows(repository: Path) -> list[dict[str, Any]]:
    from visionloop.serving.repository import Repository, RepositoryError, version_files

    rows: list[dict[str, Any]] = []
    with errors(RepositoryError):
        entries = Repository(repository).scan()
    for name, entry in entries.items():
        if entry.error:
            rows.append({"name": name, "version": "", "state": "INVALID", "reason": entry.error})
            continue
        assert entry.config is not None
        chosen = set(entry.config.version_policy.select(list(entry.versions)))
        if not entry.versions:
            rows.append({"name": name, "version": "", "state": "EMPTY", "reason": "no versions"})
        for version in entry.versions:
            try:
                version_files(entry.version_dir(version))
                state, reason = ("SELECTED" if version in chosen else "ON DISK"), ""
            except RepositoryError as exc:
                state, reason = "INVALID", str(exc)
            rows.append({"name": name, "version": str(version), "state": state, "reason": reason})
    return rows


def _model_path(model: str, verb: str) -> str:
    """The repository API path for ``model`` (checked: exit 2 for a name that is not one)."""
    from visionloop.serving.repository import RepositoryError, check_name

    with errors(RepositoryError):
        check_name(model)
    return f"/v2/repository/models/{urllib.parse.quote(model, safe='')}/{verb}"


def _call(url: str | None, token: str | None, path: str, body: dict[str, Any] | None = None) -> Any:
    """POST ``body`` as JSON to the server; its JSON answer, or exit with its error."""
    base = (url or os.environ.get("VISIONLOOP_URL") or "http://127.0.0.1:8000").rstrip("/")
    token = token or os.environ.get("VISIONLOOP_API_TOKEN")
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(
        base + path, data=json.dumps(body or {}).encode(), headers=headers, method="POST"
    )
    with errors(CommandError):
        try:
            with urllib.request.urlopen(request, timeout=TIMEOUT_S) as answer:
                return json.loads(answer.read() or b"null")
        except urllib.error.HTTPError as exc:
            detail = exc.read()[:4096].decode("utf-8", "replace")
            with contextlib.suppress(json.JSONDecodeError, AttributeError):
                detail = json.loads(detail).get("error", detail)
            raise CommandError(f"{base}{path}: {exc.code} {detail}", code=1) from None
        except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as exc:
            raise CommandError(f"cannot reach {base}: {exc}", code=1) from None


def _architecture(repository: Path, model: str) -> str:
    """The network of MODEL's versions: its config.toml's architecture, else its name."""
    from visionloop.serving.repository import CONFIG, read_config

    path = repository / model / CONFIG
    named = read_config(path).architecture if path.is_file() else None
    return named or model
