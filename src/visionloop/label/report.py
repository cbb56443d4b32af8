"""``label qc --report out.html``: one self-contained HTML file (images inlined, no scripts).

Annotator table, a skill histogram (inline SVG), honeypot health, and the worst honeypot
failures with the image, the gold, the spoiled pre-label shown and the submission side by side.
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from PIL import Image as PILImage
from sqlalchemy import select

from visionloop import imaging
from visionloop.label.masks import BoolMask
from visionloop.label.quality import QCResult, Sub
from visionloop.label.store import Image, Store, Task

__all__ = ["write_report"]

_COLOURS = [(230, 60, 60), (60, 140, 230), (60, 190, 90), (230, 180, 40)]
_STYLE = """body{font-family:system-ui,sans-serif;margin:2em;color:#222}
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:3px 8px;
text-align:right}th{background:#f3f3f3}td:first-child{text-align:left}.banned{background:#fde2e2}
.retired{background:#fff3cd}figure{display:inline-block;margin:4px;text-align:center}
figcaption{font-size:12px}img{width:160px;image-rendering:pixelated;border:1px solid #ddd}"""


def write_report(
    out: Path, store: Store, result: QCResult, subs: Sequence[Sub], worst: int = 12
) -> None:
    parts = [
        f"<!doctype html><meta charset=utf-8><title>visionloop QC</title><style>{_STYLE}</style>",
        "<h1>Labelling QC</h1>",
        _summary(result, subs),
        "<h2>Annotators</h2>",
        _annotators(result),
        "<h2>Skill (honeypot pass rate, smoothed)</h2>",
        _histogram([a.skill for a in result.annotators.values()]),
        "<h2>Honeypot health</h2>",
        _baits(result),
        f"<h2>Worst honeypot failures (up to {worst})</h2>",
        _failures(store, result, subs, worst),
    ]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(parts))


def _summary(result: QCResult, subs: Sequence[Sub]) -> str:
    banned = result.banned()
    retired = sum(b.retired for b in result.baits.values())
    accepted = sum(v == "accepted" for v, _ in result.verdicts.values())
    return (
        f"<p>{len(subs)} submissions from {len(result.annotators)} annotators; "
        f"{accepted} accepted; {len(banned)} annotators banned; "
        f"{len(result.baits)} gold images used as honeypots, {retired} retired.</p>"
    )


def _annotators(result: QCResult) -> str:
    rows = [
        "<table><tr><th>annotator</th><th>tasks</th><th>honeypots</th><th>passed</th>"
        "<th>skill</th><th>P(good)</th><th>agreement</th><th>unchanged</th><th>median s</th>"
        "<th>status</th></tr>"
    ]
    for name, a in sorted(result.annotators.items(), key=lambda kv: kv[1].skill):
        agreement = "-" if a.agreement is None else f"{a.agreement:.2f}"
        plausible = "-" if a.plausible is None else f"{a.plausible:.2f}"
        seconds = "-" if a.median_seconds is None else f"{a.median_seconds:.1f}"
        status = html.escape(f"banned: {a.ban}") if a.ban else "ok"
        css = "banned" if a.ban else "ok"
        rows.append(
            f"<tr class={css}><td>{html.escape(name)}</td><td>{a.tasks}</td>"
            f"<td>{a.honeypots}</td><td>{a.passed}</td><td>{a.skill:.2f}</td><td>{plausible}</td>"
            f"<td>{agreement}</td>"
            f"<td>{a.unchanged:.0%}</td><td>{seconds}</td><td>{status}</td></tr>"
        )
    return "".join(rows) + "</table>"


def _histogram(values: Sequence[float], bins: int = 10) -> str:
    counts, _ = np.histogram(values, bins=bins, range=(0, 1))
    top = max(int(counts.max()), 1)
    width, height = 40, 120
    bars = []
    for i, count in enumerate(counts.tolist()):
        h = height * count / top
        bars.append(
            f'<rect x="{i * width + 2}" y="{height - h + 10}" width="{width - 4}" height="{h}" '
            f'fill="#4a7bd0"/><text x="{i * width + width / 2}" y="{height + 24}" font-size="10" '
            f'text-anchor="middle">{i / bins:.1f}</text><text x="{i * width + width / 2}" '
            f'y="{height - h + 6}" font-size="10" text-anchor="middle">{count or ""}</text>'
        )
    return (
        f'<svg width="{bins * width}" height="{height + 30}" role="img" '
        f'aria-label="skill histogram">{"".join(bars)}</svg>'
    )


def _baits(result: QCResult) -> str:
    rows = [
        "<table><tr><th>gold image</th><th>attempts</th><th>trusted attempts</th>"
        "<th>trusted fails</th><th>status</th></tr>"
    ]
    for key, b in sorted(result.baits.items(), key=lambda kv: -(kv[1].trusted_fail_rate or 0)):
        rows.append(
            f"<tr class={'retired' if b.retired else 'ok'}><td>{key}</td><td>{b.attempts}</td>"
            f"<td>{b.trusted_attempts}</td><td>{b.trusted_fails}</td>"
            f"<td>{'retired' if b.retired else 'active'}</td></tr>"
        )
    return "".join(rows) + "</table>"


def _failures(store: Store, result: QCResult, subs: Sequence[Sub], worst: int) -> str:
    failed = sorted((c for c in result.checks if not c.passed), key=lambda c: c.iou)[:worst]
    if not failed:
        return "<p>No honeypot failures.</p>"
    by_key = {(s.task, s.annotator): s for s in subs}
    with store.session() as s:
        paths = {
            t.id: i.path
            for t, i in s.execute(select(Task, Image).join(Image, Task.image_id == Image.id))
        }
    blocks = []
    for check in failed:
        sub = by_key[check.task, check.annotator]
        unreadable = ""
        try:
            with imaging.load_path(paths[check.task], imaging.ImageLimits()) as raw:
                photo = imaging.upright(raw).convert("RGB")
        except (OSError, imaging.ImageError) as exc:  # shown grey, with the reason
            photo = PILImage.new("RGB", next(iter(sub.prelabel.values())).shape[::-1], "grey")
            unreadable = f" (image not shown: {html.escape(str(exc))})"
        caption = (
            f"task {check.task}, {html.escape(check.annotator)}: IoU {check.iou:.2f}, "
            f"spoiling {check.fixed:.0%} fixed{unreadable}"
        )
        figures = [
            _figure(photo, None, "image"),
            _figure(photo, sub.gold or {}, "gold"),
            _figure(photo, sub.prelabel, "shown (spoiled)"),
            _figure(photo, sub.label, "submitted"),
        ]
        blocks.append(f"<div><p>{caption}</p>{''.join(figures)}</div>")
    return "".join(blocks)


def _figure(photo: PILImage.Image, label: Mapping[str, BoolMask] | None, caption: str) -> str:
    pixels = np.asarray(photo, dtype=np.float32).copy()
    for colour, mask in zip(_COLOURS, (label or {}).values(), strict=False):
        if mask.shape == pixels.shape[:2]:
            pixels[mask] = 0.45 * pixels[mask] + 0.55 * np.array(colour, dtype=np.float32)
    image = PILImage.fromarray(pixels.astype(np.uint8))
    image.thumbnail((320, 320))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    data = base64.b64encode(buffer.getvalue()).decode()
    names = ", ".join(label or {}) if label else ""
    return (
        f'<figure><img alt="{html.escape(caption)}" src="data:image/png;base64,{data}">'
        f"<figcaption>{html.escape(caption)} {html.escape(names)}</figcaption></figure>"
    )
