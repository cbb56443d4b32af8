"""The label commands that judge the crowd: qc, timing, simulate."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from visionloop.cli.common import console, escape, say, warn
from visionloop.cli.label.app import DEFAULT_DB, Db, app, label_errors, open_store_at

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
JsonOption = Annotated[
    bool, typer.Option("--json", help="Print the outcome as JSON (messages go to stderr).")
]
CopyOption = Annotated[
    int,
    typer.Option(
        min=0,
        help="Same drawings (timed by the tool's created_at): reject the later answer, and "
        "ban who answered later on this many tasks, from any sources; 0: only report pairs.",
    ),
]


@app.command("qc")
def qc(
    report: ReportOption = None,
    dataset: DatasetOption = None,
    payments: PaymentsOption = None,
    rate: Annotated[float, typer.Option(help="Pay per accepted task.")] = 1.0,
    iou_threshold: IouOption = 0.75,
    fix_fraction: FixOption = 0.6,
    warmup: WarmupOption = 6,
    min_pass_rate: PassRateOption = 0.75,
    confidence: ConfidenceOption = 0.05,
    min_agreement: AgreementOption = 0.5,
    reject_below: RejectOption = 0.3,
    max_unchanged: UnchangedOption = 1.0,
    min_seconds: SecondsOption = 0.0,
    aggregator: AggregatorOption = "mv",
    copy_tasks: CopyOption = 3,
    as_json: JsonOption = False,
    db: Db = DEFAULT_DB,
) -> None:
    """Score annotators, ban and reject by the rules, retire bad honeypots, aggregate."""
    from visionloop.label.loop import qc_summary, run_qc, write_dataset
    from visionloop.label.quality import Rules

    with label_errors():
        rules = Rules(
            iou_threshold=iou_threshold, fix_fraction=fix_fraction, warmup=warmup,
            min_pass_rate=min_pass_rate, confidence=confidence,
            min_agreement=min_agreement or None, reject_below=reject_below or None,
            max_unchanged=None if max_unchanged >= 1 else max_unchanged,
            min_median_seconds=min_seconds or None, aggregator=aggregator,
            copy_min_tasks=copy_tasks or None,
        )  # fmt: skip
        store = open_store_at(db)
        result, subs = run_qc(store, rules)
        if not subs:
            raise ValueError("no submissions yet: `label ingest` first")
        copying = result.pairs
        tell = warn if as_json else say  # with --json, stdout is the JSON alone
        if as_json:
            print(json.dumps(qc_summary(result, rules, rate, copying), indent=1))
        else:
            _print_annotators(result, rules)
            _print_decisions(result)
            for pair in copying:
                say(
                    f"same edits: {pair.first} and {pair.second} on {len(pair.copied)} of the "
                    f"{pair.shared} tasks both changed (tasks {', '.join(map(str, pair.copied))})"
                    f", answering second: {', '.join(w or 'unknown' for w in pair.later)}"
                )
        if payments is not None:
            _write_payments(payments, result, rate)
            tell(f"payments: {payments}")
        if dataset is not None:
            count = write_dataset(store, dataset, result, subs, aggregator)
            tell(f"dataset: {count} images in {dataset}")
        if report is not None:
            from visionloop.label.report import write_report

            write_report(report, store, result, subs)
            tell(f"report: {report}")


def _print_decisions(result: Any) -> None:
    """The bans made by this run, and the honeypots retired."""
    for name, reason in result.new_bans.items():
        console.print(f"[red]banned[/red] {escape(name)}: {escape(reason)}")
    for image, bait in result.baits.items():
        if bait.retired:
            fails = f"{bait.trusted_fails}/{bait.trusted_attempts}"
            say(f"gold image {image} retired as a honeypot: trusted annotators failed {fails}")


def _write_payments(path: Path, result: Any, rate: float) -> None:
    from visionloop.label.quality import payment

    rows = payment(result, rate)
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


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

    with label_errors():
        subs, banned, _ = load_subs(open_store_at(db))
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
            "the rules were first frozen), fresh (kinds written before the second round of "
            "rule changes was tuned), comma-separated."
        ),
    ] = "tuning",
    out: Annotated[Path | None, typer.Option(help="Write every run as JSON.")] = None,
    markdown: Annotated[bool, typer.Option(help="Print the table as Markdown.")] = False,
) -> None:
    """Simulate a crowd; compare QC strategies (lazy caught, honest banned, IoU, cost)."""
    from visionloop.label.crowd_fresh import FRESH, FRESH_CROWD
    from visionloop.label.crowd_heldout import HELD_OUT, HELD_OUT_CROWD
    from visionloop.label.simulate import CROWD, TUNING, SimConfig, summarise
    from visionloop.label.simulate import simulate as run

    known = {
        "tuning": (CROWD, TUNING),
        "heldout": (HELD_OUT_CROWD, HELD_OUT),
        "fresh": (FRESH_CROWD, FRESH),
    }
    with label_errors():
        chosen = [c.strip() for c in crowds.split(",") if c.strip()]
        unknown = [c for c in chosen if c not in known]
        if unknown or not chosen:
            raise ValueError(f"unknown crowd {unknown or crowds!r}; have {', '.join(known)}")
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
