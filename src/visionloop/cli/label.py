"""``visionloop label ...``: the labelling loop from the command line.

Every command takes ``--db`` (a SQLAlchemy URL; ``VISIONLOOP_LABEL_DB``, default
``sqlite:///labels.db``). Errors are one line and exit 2.
"""

from __future__ import annotations

import csv
import json
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from visionloop.cli.common import console, errors, escape, fail, say, warn
from visionloop.cli.options import ClassesOption

app = typer.Typer(help="Label cheaply: select, pre-label, batch with honeypots, ingest, QC.")

Db = Annotated[
    str, typer.Option(envvar="VISIONLOOP_LABEL_DB", help="SQLAlchemy URL of the label store.")
]
DEFAULT_DB = "sqlite:///labels.db"
LABEL_MODULES = ("sqlalchemy", "pycocotools", "crowdkit", "scipy", "pandas", "httpx")


@app.callback()
def _needs_label_extra() -> None:
    """Every label command needs the `label` extra: say so in one line, not a traceback."""
    import importlib.util

    missing = [m for m in LABEL_MODULES if importlib.util.find_spec(m) is None]
    if missing:
        raise fail(
            f"{', '.join(missing)} missing: the label commands need the label extra "
            "(pip install 'visionloop[label]'; make test installs it)"
        )


def _errors() -> AbstractContextManager[None]:
    """The error context for the label loop: bad input, files, the store, a pre-label server."""
    import httpx
    from sqlalchemy.exc import SQLAlchemyError

    return errors(ValueError, OSError, RuntimeError, SQLAlchemyError, httpx.HTTPError)


def _store(db: str) -> Any:
    from visionloop.label.store import open_store

    return open_store(db)


@app.command("status")
def status(db: Db = DEFAULT_DB) -> None:
    """Where the loop stands: images, tasks, submissions, annotators."""
    from visionloop.label.loop import status as run

    with _errors():
        counts = run(_store(db))
    table = Table("", "count")
    for name, value in counts.items():
        table.add_row(name, str(value))
    console.print(table)


@app.command("add")
def add(
    images: Annotated[Path, typer.Argument(help="A folder of images (recursive) or one image.")],
    db: Db = DEFAULT_DB,
) -> None:
    """Add unlabelled images to the pool."""
    from visionloop.label.loop import add_images

    with _errors():
        added, skipped = add_images(_store(db), images)
    for error in skipped:
        warn(error, tag="skipped")
    say(f"added {added} images to the pool, {len(skipped)} files skipped")
    if skipped:
        raise typer.Exit(1)


@app.command("add-gold")
def add_gold(
    dataset: Annotated[Path, typer.Argument(help="Dataset folder (images/, masks/, labels.csv).")],
    db: Db = DEFAULT_DB,
) -> None:
    """Add trusted labels: the honeypots are made from these."""
    from visionloop.label.loop import add_gold as run

    with _errors():  # a DatasetError is a ValueError: one line, the file and the reason
        say(f"added {run(_store(db), dataset)} gold images")


def _segmenter(name: str, weights: Path | None, classes: str | None = None) -> Any:
    """The model ``name`` (registry name or ``module:factory``), with ``weights`` trained for
    ``classes``, as a :class:`~visionloop.models.base.Segmenter`; a ValueError (one line) if
    it is unknown or not a segmenter."""
    from visionloop.models import UnknownModel, as_segmenter, registry

    try:
        return as_segmenter(registry.create(name, weights, classes))
    except UnknownModel as exc:
        raise ValueError(str(exc)) from None


@app.command("select")
def select_images(
    k: Annotated[int, typer.Option(min=1, help="How many images to pick.")],
    method: Annotated[str, typer.Option(help="uncertainty, diversity or mix.")] = "mix",
    model: Annotated[
        str, typer.Option(help="The segmenter: a registry name or module:factory.")
    ] = "catseg",
    weights: Annotated[
        Path | None, typer.Option(help="The segmenter's weights (train seg's best.pt).")
    ] = None,
    classes: ClassesOption = None,
    db: Db = DEFAULT_DB,
) -> None:
    """Pick K pool images for annotation with the segmenter."""
    from visionloop.label.loop import select_images as run
    from visionloop.label.select import METHODS

    with _errors():
        if method not in METHODS:
            raise ValueError(f"--method must be one of {', '.join(METHODS)}")
        segmenter = _segmenter(model, weights, classes)  # refused before the store is opened
        picked, size = run(_store(db), segmenter, k, method)
        say(f"selected {picked} of {size} pool images by {method}")


@app.command("mine")
def mine(
    group: Annotated[
        str, typer.Argument(help="ImageNet classes: animal, dog, bird, plane, 151-268 ...")
    ],
    k: Annotated[int, typer.Option(min=1, help="How many images to pick.")],
    exclude: Annotated[str, typer.Option(help="Classes to subtract, e.g. cat.")] = "",
    db: Db = DEFAULT_DB,
) -> None:
    """Pick the K pool images most likely to show GROUP, by the catdog ImageNet head."""
    from visionloop.label.loop import mark_selected, pool
    from visionloop.label.select import group_indices, mine_scores
    from visionloop.models import registry

    with _errors():
        wanted = group_indices(group)
        excluded = group_indices(exclude) if exclude else []
        store = _store(db)
        candidates = pool(store)
        if not candidates:
            raise ValueError("the pool is empty: `label add IMAGES` first")
        scores = mine_scores(
            registry.create("catdog"), [p for _, p in candidates], wanted, excluded
        )
        order = scores.argsort()[::-1][:k]
        mark_selected(store, [(candidates[i][0], float(scores[i])) for i in order], f"mine:{group}")
        table = Table("image", "score")
        for i in order[:10]:
            table.add_row(escape(candidates[i][1].name), f"{scores[i]:.3f}")
        console.print(table)
        say(f"selected {len(order)} of {len(candidates)} pool images for {group}")


@app.command("prelabel")
def prelabel(
    weights: Annotated[
        Path | None, typer.Option(help="The segmenter's weights, run in this process.")
    ] = None,
    server: Annotated[str | None, typer.Option(help="Or a running server's URL.")] = None,
    model: Annotated[
        str,
        typer.Option(
            help="The segmenter: a registry name or module:factory, or the server's model name."
        ),
    ] = "catseg",
    everything: Annotated[
        bool, typer.Option("--all", help="The whole pool, not the selected.")
    ] = False,
    classes: ClassesOption = None,
    db: Db = DEFAULT_DB,
) -> None:
    """Pre-label the selected images with the segmenter."""
    from visionloop.label.loop import prelabel as run
    from visionloop.label.prelabel import LibraryPrelabeler, Prelabeler, ServerPrelabeler

    with _errors():
        labeler: Prelabeler
        if server:
            labeler = ServerPrelabeler(server, model)
        else:
            labeler = LibraryPrelabeler(_segmenter(model, weights, classes))
        say(f"pre-labelled {run(_store(db), labeler, everything)} images")


@app.command("make-batch")
def make_batch(
    name: Annotated[str, typer.Argument(help="Batch name.")],
    size: Annotated[int, typer.Option(min=1, help="Images to annotate (honeypots extra).")] = 100,
    honeypots: Annotated[float, typer.Option(help="Share of the batch that are honeypots.")] = 0.1,
    overlap: Annotated[
        float, typer.Option(help="Share of tasks sent to --copies annotators.")
    ] = 0.1,
    copies: Annotated[int, typer.Option(min=2)] = 3,
    classes: Annotated[str, typer.Option(help="Classes to annotate (default: all).")] = "",
    spoilings: Annotated[str, typer.Option(help="Honeypot corruptions to use.")] = "",
    qualification: Annotated[bool, typer.Option(help="Honeypots only, for newcomers.")] = False,
    fmt: Annotated[
        str, typer.Option("--format", help="label-studio, coco or png.")
    ] = "label-studio",
    out: Annotated[
        Path | None, typer.Option(help="Export here (a .json, or a folder for png).")
    ] = None,
    image_prefix: Annotated[
        str, typer.Option(help="URL for the batch's image folder (paths below it are kept).")
    ] = "",
    seed: Annotated[int, typer.Option()] = 0,
    db: Db = DEFAULT_DB,
) -> None:
    """Assemble a batch with honeypots and overlap, and export it."""
    from visionloop.label.formats import FORMATS
    from visionloop.label.loop import make_batch as run
    from visionloop.label.spoil import SPOILINGS

    with _errors():
        if out is not None and fmt not in FORMATS:
            raise ValueError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
        store = _store(db)
        tasks = run(
            store, name, size, classes=[c for c in classes.split(",") if c] or None,
            honeypot_share=honeypots, overlap_share=overlap, copies=copies,
            spoilings=[s for s in spoilings.split(",") if s] or SPOILINGS,
            qualification=qualification, seed=seed,
        )  # fmt: skip
        say(f"batch {name}: {len(tasks)} tasks")
        if out is not None:
            _export(store, name, fmt, out, image_prefix)


def _export(store: Any, name: str, fmt: str, out: Path, prefix: str) -> None:
    from visionloop.label.loop import export_batch

    count = export_batch(store, name, fmt, out, prefix=prefix)
    say(f"exported {count} tasks as {fmt} to {out}")


@app.command("export")
def export(
    name: Annotated[str, typer.Argument(help="Batch name.")],
    out: Annotated[Path, typer.Option(help="A .json file, or a folder for png.")],
    fmt: Annotated[
        str, typer.Option("--format", help="label-studio, coco or png.")
    ] = "label-studio",
    image_prefix: Annotated[
        str, typer.Option(help="URL for the batch's image folder (paths below it are kept).")
    ] = "",
    db: Db = DEFAULT_DB,
) -> None:
    """Export a batch again (another format, another image location)."""
    with _errors():
        _export(_store(db), name, fmt, out, image_prefix)


@app.command("ingest")
def ingest(
    path: Annotated[Path, typer.Argument(help="An export file, or a PNG submissions folder.")],
    fmt: Annotated[
        str, typer.Option("--format", help="label-studio, coco or png.")
    ] = "label-studio",
    annotator: Annotated[str | None, typer.Option(help="Whose work (COCO without ids).")] = None,
    db: Db = DEFAULT_DB,
) -> None:
    """Record annotators' submissions; bad rows are reported one by one, the rest kept."""
    from visionloop.label.loop import ingest as run

    with _errors():
        report = run(_store(db), path, fmt, annotator)
    for error in report.errors:
        warn(error, tag="skipped")
    say(
        f"ingested {report.added} submissions, {report.duplicates} already known, "
        f"{len(report.errors)} rows skipped"
    )
    if report.errors and not report.added:
        raise typer.Exit(1)


ReportOption = Annotated[Path | None, typer.Option(help="Write a static HTML report here.")]
DatasetOption = Annotated[Path | None, typer.Option(help="Write accepted labels as a dataset.")]
PaymentsOption = Annotated[Path | None, typer.Option(help="Write the payment report (CSV).")]
IouOption = Annotated[float, typer.Option(help="Honeypot: IoU with gold at least.")]
FixOption = Annotated[float, typer.Option(help="Honeypot: share of spoiling fixed.")]
WarmupOption = Annotated[int, typer.Option(min=1, help="Honeypots before a ban.")]
PassRateOption = Annotated[float, typer.Option(help="Ban when a rate this high is implausible.")]
ConfidenceOption = Annotated[float, typer.Option(help="... at this probability.")]
AgreementOption = Annotated[float, typer.Option(help="Overlap: min IoU with consensus; 0 off.")]
RejectOption = Annotated[
    float, typer.Option(help="Reject an overlap submission below this IoU; 0 off.")
]
UnchangedOption = Annotated[float, typer.Option(help="Ban above this unchanged rate; 1 off.")]
SecondsOption = Annotated[float, typer.Option(help="Ban below this median time; 0 off.")]
AggregatorOption = Annotated[str, typer.Option(help="mv (skill-weighted), em or rasa.")]


@app.command("qc")
def qc(
    report: ReportOption = None,
    dataset: DatasetOption = None,
    payments: PaymentsOption = None,
    rate: Annotated[float, typer.Option(help="Pay per accepted task.")] = 1.0,
    iou_threshold: IouOption = 0.75,
    fix_fraction: FixOption = 0.6,
    warmup: WarmupOption = 4,
    min_pass_rate: PassRateOption = 0.75,
    confidence: ConfidenceOption = 0.05,
    min_agreement: AgreementOption = 0.5,
    reject_below: RejectOption = 0.3,
    max_unchanged: UnchangedOption = 1.0,
    min_seconds: SecondsOption = 0.0,
    aggregator: AggregatorOption = "mv",
    db: Db = DEFAULT_DB,
) -> None:
    """Score annotators, ban and reject by the rules, retire bad honeypots, aggregate."""
    from visionloop.label.loop import run_qc, write_dataset
    from visionloop.label.quality import Rules

    with _errors():
        rules = Rules(
            iou_threshold=iou_threshold, fix_fraction=fix_fraction, warmup=warmup,
            min_pass_rate=min_pass_rate, confidence=confidence,
            min_agreement=min_agreement or None, reject_below=reject_below or None,
            max_unchanged=None if max_unchanged >= 1 else max_unchanged,
            min_median_seconds=min_seconds or None, aggregator=aggregator,
        )  # fmt: skip
        store = _store(db)
        result, subs = run_qc(store, rules)
        if not subs:
            raise ValueError("no submissions yet: `label ingest` first")
        _print_annotators(result, rules)
        _print_decisions(result)
        if payments is not None:
            _write_payments(payments, result, rate)
        if dataset is not None:
            count = write_dataset(store, dataset, result, subs, aggregator)
            say(f"dataset: {count} images in {dataset}")
        if report is not None:
            from visionloop.label.report import write_report

            write_report(report, store, result, subs)
            say(f"report: {report}")


def _print_decisions(result: Any) -> None:
    """The bans made by this run, and the honeypots retired."""
    for name, reason in result.new_bans.items():
        console.print(f"[red]banned[/red] {escape(name)}: {escape(reason)}")
    for task, bait in result.baits.items():
        if bait.retired:
            fails = f"{bait.trusted_fails}/{bait.trusted_attempts}"
            say(f"honeypot task {task} retired: trusted annotators failed {fails}")


def _write_payments(path: Path, result: Any, rate: float) -> None:
    from visionloop.label.quality import payment

    rows = payment(result, rate)
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    say(f"payments: {path}")


def _print_annotators(result: Any, rules: Any) -> None:
    table = Table("annotator", "tasks", "honeypots", "passed", "P(good)", "agreement",
                  "unchanged", "median s", "status")  # fmt: skip
    for name, a in sorted(result.annotators.items()):
        status = "banned" if a.ban else "suspect" if a.suspect(rules) else "trusted"
        table.add_row(
            escape(name), str(a.tasks), str(a.honeypots), str(a.passed),
            "-" if a.plausible is None else f"{a.plausible:.2f}",
            "-" if a.agreement is None else f"{a.agreement:.2f}", f"{a.unchanged:.0%}",
            "-" if a.median_seconds is None else f"{a.median_seconds:.1f}", status,
        )  # fmt: skip
    console.print(table)
    suspects = [n for n, a in result.annotators.items() if not a.ban and a.suspect(rules)]
    if suspects:
        say(
            f"not yet trusted: {', '.join(sorted(suspects))}: give them a qualification batch "
            "(make-batch --qualification) before more paid work"
        )


@app.command("timing")
def timing(
    drop_slowest: Annotated[
        float,
        typer.Option(help="Share of tasks furthest above a first fit left out (idle time)."),
    ] = 0.05,
    as_json: Annotated[bool, typer.Option("--json", help="Print the fit as JSON.")] = False,
    db: Db = DEFAULT_DB,
) -> None:
    """Fit seconds per task to what annotators changed (objects drawn, erased, fixed) on the
    times the annotation tool recorded (Label Studio's lead_time, kept by `label ingest`);
    banned annotators' work is left out."""
    from visionloop.label.results import load_subs
    from visionloop.label.timing import changes, fit

    with _errors():
        subs, banned, _ = load_subs(_store(db))
        kept = [s for s in subs if s.annotator not in banned]
        result = fit(changes(kept), drop_slowest=drop_slowest, source=f"label timing, {db}")
    if as_json:
        print(json.dumps(result.to_json(), indent=1))
        return
    m = result.model
    say(
        f"seconds per task = {m.look:.1f} (look) + {m.draw:.1f} x objects drawn + "
        f"{m.erase:.1f} x erased + {m.fix:.1f} x fixed"
    )
    say(
        f"fitted on {result.used} timed submissions ({result.dropped} furthest above a first "
        f"fit left out as idle time); median error {result.median_abs_error_s:.1f} s; "
        + ", ".join(f"{n} {k}" for k, n in result.counts.items())
    )


@app.command("simulate")
def simulate(
    images: Annotated[int, typer.Option(min=10, help="Pool size.")] = 2000,
    quality: Annotated[
        str, typer.Option(help="Model pre-label qualities (share right).")
    ] = "0.4,0.8",
    strategies: Annotated[
        str, typer.Option(help="honeypots, unchanged, overlap3, none.")
    ] = "honeypots,unchanged,overlap3",
    seeds: Annotated[int, typer.Option(min=1, help="Crowds per setting.")] = 3,
    crowds: Annotated[
        str,
        typer.Option(
            help="tuning (the kinds the QC rules were tuned on), heldout (kinds written after "
            "the rules were frozen), or both, comma-separated."
        ),
    ] = "tuning",
    out: Annotated[Path | None, typer.Option(help="Write every run as JSON.")] = None,
    markdown: Annotated[bool, typer.Option(help="Print the table as Markdown.")] = False,
) -> None:
    """Simulate a crowd; compare QC strategies (lazy caught, honest banned, IoU, cost)."""
    from visionloop.label.crowd_heldout import HELD_OUT, HELD_OUT_CROWD
    from visionloop.label.simulate import CROWD, TUNING, SimConfig, summarise
    from visionloop.label.simulate import simulate as run

    known = {"tuning": (CROWD, TUNING), "heldout": (HELD_OUT_CROWD, HELD_OUT)}
    with _errors():
        chosen = [c.strip() for c in crowds.split(",") if c.strip()]
        unknown = [c for c in chosen if c not in known]
        if unknown or not chosen:
            raise ValueError(f"unknown crowd {unknown or crowds!r}; have tuning, heldout")
        runs = [
            run(SimConfig(strategy=s, images=images, model_quality=float(q), seed=seed,
                          crowd=dict(known[c][0]), behaviours=known[c][1], label=c))
            for c in chosen
            for q in quality.split(",")
            for s in strategies.split(",")
            for seed in range(seeds)
        ]  # fmt: skip
    rows = summarise(runs)
    if markdown:
        print("| " + " | ".join(rows[0]) + " |")
        print("|" + " --- |" * len(rows[0]))
        for row in rows:
            print("| " + " | ".join(str(v) for v in row.values()) + " |")
    else:
        table = Table(*rows[0])
        for row in rows:
            table.add_row(*(escape(str(v)) for v in row.values()))
        console.print(table)
    if out is not None:
        out.write_text(json.dumps(runs, indent=1))
