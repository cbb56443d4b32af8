"""The label commands that run the loop: status, add, select, mine, prelabel, make-batch,
export, ingest."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from visionloop.cli.common import console, escape, say, warn
from visionloop.cli.label.app import DEFAULT_DB, Db, app, label_errors, open_store_at
from visionloop.cli.options import ClassesOption


@app.command("status")
def status(
    as_json: Annotated[bool, typer.Option("--json", help="Print the same as JSON.")] = False,
    db: Db = DEFAULT_DB,
) -> None:
    """Where the loop stands: images, tasks, submissions, annotators; and the cost model (paid
    tasks per image: one per image, overlap copies, honeypots, qualification batches)."""
    from visionloop.label.loop import cost
    from visionloop.label.loop import status as run

    with label_errors():
        store = open_store_at(db)
        counts, costs = run(store), cost(store)
    if as_json:
        print(json.dumps({"counts": counts, "cost": costs}, indent=1))
        return
    for title, values in (("count", counts), ("cost", costs)):
        table = Table("", title)
        for name, value in values.items():
            table.add_row(name, str(value))
        console.print(table)


@app.command("add")
def add(
    images: Annotated[Path, typer.Argument(help="A folder of images (recursive) or one image.")],
    db: Db = DEFAULT_DB,
) -> None:
    """Add unlabelled images to the pool."""
    from visionloop.label.loop import add_images

    with label_errors():
        added, skipped = add_images(open_store_at(db), images)
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

    with label_errors():  # a DatasetError is a ValueError: one line, the file and the reason
        say(f"added {run(open_store_at(db), dataset)} gold images")


def _segmenter(name: str, weights: Path | None, classes: str | None, command: str) -> Any:
    """The model ``name`` (registry name or ``module:factory``), with ``weights`` trained for
    ``classes``, as a :class:`~visionloop.models.base.Segmenter`; a ValueError (one line) if
    it is unknown or not a segmenter, or if it needs weights that were not given: an untrained
    decoder ranks and pre-labels at random, differently on every run. A model with a weak
    (zero-label) channel may pre-label without them, with a warning for the other classes."""
    from visionloop.models import UnknownModel, as_segmenter, registry

    try:
        model = registry.create(name, weights, classes)
    except UnknownModel as exc:
        raise ValueError(str(exc)) from None
    untrained = model.untrained_classes()
    if untrained:
        hint = (
            f"{name} without --weights has an untrained decoder ({', '.join(untrained)}): "
            "pass --weights RUN/best.pt from `visionloop train seg`"
        )
        if command == "select" or len(untrained) == len(model.classes):
            raise ValueError(f"{hint}; its {command} would be noise, different on every run")
        warn(f"{hint}; only {', '.join(c for c in model.classes if c not in untrained)} "
             "pre-labels mean anything (make-batch --classes to ask for those alone)")  # fmt: skip
    return as_segmenter(model)


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

    with label_errors():
        if method not in METHODS:
            raise ValueError(f"--method must be one of {', '.join(METHODS)}")
        segmenter = _segmenter(model, weights, classes, "select")  # before the store opens
        picked, size = run(open_store_at(db), segmenter, k, method)
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

    with label_errors():
        wanted = group_indices(group)
        excluded = group_indices(exclude) if exclude else []
        store = open_store_at(db)
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
    """Pre-label the selected images and the gold images (a honeypot shows the model's
    pre-label of a gold image, spoiled) with the segmenter."""
    from visionloop.label.loop import prelabel as run
    from visionloop.label.prelabel import LibraryPrelabeler, Prelabeler, ServerPrelabeler

    with label_errors():
        labeler: Prelabeler
        if server:
            labeler = ServerPrelabeler(server, model)
        else:
            labeler = LibraryPrelabeler(_segmenter(model, weights, classes, "prelabel"))
        done = run(open_store_at(db), labeler, everything)
        say(f"pre-labelled {done} images (selected and gold)")


HONEYPOTS_HELP = (
    "Share of the batch that are honeypots; like any task, a honeypot goes to --copies "
    "annotators if it is among the --overlap share, else to one (paid tasks: `label status` "
    "shows the cost)."
)
MIN_OBJECT_HELP = (
    "No honeypot from a gold image with an object smaller than this share of the image (too "
    "small to judge an honest hand by)."
)
PREFIX_HELP = (
    "The URL where the annotation tool serves the export's image folder (--media); without "
    "it, tasks name their image by its path."
)
MEDIA_HELP = (
    "Where the export's images go: each re-encoded (upright, no EXIF) under a random name, so "
    "nothing about an image's origin tells a honeypot apart. Default: beside the export "
    "(b1.json -> b1.media/, a png folder b1/ -> b1.media/)."
)


@app.command("make-batch")
def make_batch(
    name: Annotated[str, typer.Argument(help="Batch name.")],
    size: Annotated[int, typer.Option(min=1, help="Images to annotate (honeypots extra).")] = 100,
    honeypots: Annotated[float, typer.Option(help=HONEYPOTS_HELP)] = 0.1,
    overlap: Annotated[
        float,
        typer.Option(help="Share of all tasks, honeypots included, sent to --copies annotators."),
    ] = 0.1,
    copies: Annotated[int, typer.Option(min=2, help="Annotators per overlap task.")] = 3,
    min_bait_object: Annotated[float, typer.Option(help=MIN_OBJECT_HELP)] = 0.005,
    classes: Annotated[str, typer.Option(help="Classes to annotate (default: all).")] = "",
    spoilings: Annotated[str, typer.Option(help="Honeypot corruptions to use.")] = "",
    qualification: Annotated[bool, typer.Option(help="Honeypots only, for newcomers.")] = False,
    fmt: Annotated[
        str, typer.Option("--format", help="label-studio, coco or png.")
    ] = "label-studio",
    out: Annotated[
        Path | None, typer.Option(help="Export here (a .json, or a folder for png).")
    ] = None,
    image_prefix: Annotated[str, typer.Option(help=PREFIX_HELP)] = "",
    media: Annotated[Path | None, typer.Option(help=MEDIA_HELP)] = None,
    seed: Annotated[
        int | None,
        typer.Option(
            help="Fixes the order, the overlap and the spoilings; default: fresh each batch "
            "(an order repeated from batch to batch would place the honeypots)."
        ),
    ] = None,
    db: Db = DEFAULT_DB,
) -> None:
    """Assemble a batch with honeypots and overlap, and export it."""
    from visionloop.label.formats import FORMATS
    from visionloop.label.loop import make_batch as run
    from visionloop.label.spoil import SPOILINGS

    with label_errors():
        if out is not None and fmt not in FORMATS:
            raise ValueError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
        store = open_store_at(db)
        tasks = run(
            store, name, size, classes=[c for c in classes.split(",") if c] or None,
            honeypot_share=honeypots, overlap_share=overlap, copies=copies,
            spoilings=[s for s in spoilings.split(",") if s] or SPOILINGS,
            qualification=qualification, min_object=min_bait_object, seed=seed,
        )  # fmt: skip
        say(f"batch {name}: {len(tasks)} tasks")
        if out is not None:
            _export(store, name, fmt, out, image_prefix, media)


def _export(store: Any, name: str, fmt: str, out: Path, prefix: str, folder: Path | None) -> None:
    from visionloop.label.loop import export_batch, export_tells
    from visionloop.label.media import media_folder

    folder = folder or media_folder(out, fmt)
    count = export_batch(store, name, fmt, out, prefix=prefix, media_dir=folder)
    say(f"exported {count} tasks as {fmt} to {out}; their images to {folder}/")
    for tell in export_tells(store, name):
        warn(tell, "tell")


@app.command("export")
def export(
    name: Annotated[str, typer.Argument(help="Batch name.")],
    out: Annotated[Path, typer.Option(help="A .json file, or a folder for png.")],
    fmt: Annotated[
        str, typer.Option("--format", help="label-studio, coco or png.")
    ] = "label-studio",
    image_prefix: Annotated[str, typer.Option(help=PREFIX_HELP)] = "",
    media: Annotated[Path | None, typer.Option(help=MEDIA_HELP)] = None,
    db: Db = DEFAULT_DB,
) -> None:
    """Export a batch again (another format, another image location)."""
    with label_errors():
        _export(open_store_at(db), name, fmt, out, image_prefix, media)


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

    with label_errors():
        report = run(open_store_at(db), path, fmt, annotator)
    for error in report.errors:
        warn(error, tag="skipped")
    say(
        f"ingested {report.added} submissions, {report.duplicates} already known, "
        f"{len(report.errors)} rows skipped"
    )
    if report.errors and not report.added:
        raise typer.Exit(1)
