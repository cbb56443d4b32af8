"""A crowd simulator: how well does each QC strategy catch lazy annotators, and at what cost?

The pool is synthetic ``cat`` / ``animal`` masks (cats are animals). The model's pre-labels
are right (boundary wobble only) on a ``model_quality`` share of images; the rest miss an
object, gain a false blob or have a badly drawn boundary. Annotators:

- ``careful``: keeps a pre-label that is right (every class IoU >= 0.93), otherwise redraws
  it (0.7 px wobble)
- ``sloppy``: keeps one with IoU >= 0.85; redraws with 1.2 px wobble; misses an error 5 % of
  the time
- ``lazy``: submits every pre-label unchanged
- ``scribbler``: draws random blobs
- ``lazy_fixes_obvious``: fixes only errors covering 4 % of the image or more

Each kind is a :class:`Behaviour` (``TUNING``, the set the QC rules were tuned on); a
simulation takes any name -> behaviour table, so :mod:`visionloop.label.crowd_heldout` judges
the frozen rules on annotators they never saw.

The work is handed out in rounds; after each round QC runs on everything so far, banned
annotators get no more work, and their tasks go back to the queue (paid again). Strategies:
``honeypots`` (10 % spoiled gold tasks; 50 % for newcomers and suspects, i.e. until the
posterior says a good pass rate is likely: honeypots go where the doubt is; Bayesian ban),
``unchanged`` (ban who leaves more than half of the pre-labels unchanged), ``overlap3``
(every task to three people, ban on low agreement, majority vote). Some baits have a wrong
gold (a stale honeypot): honeypot health should retire them before they cost honest people
their jobs.

Where the simulator is simpler than the store: a bait shows the spoiled gold itself (the store
shows the model's pre-label of the gold image, spoiled); its 80 baits are shared by the crowd,
each annotator taking those it has not seen (the store uses each gold image once before any
twice, and a bait wants as many annotators as a normal task); and a bait's health is kept per
bait, which here is one task.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
from scipy import ndimage

from visionloop.label.masks import BoolMask, Label, iou
from visionloop.label.quality import QCResult, Rules, Sub, aggregate, assess, mean_iou
from visionloop.label.spoil import big_enough, spoil

__all__ = [
    "CROWD",
    "STRATEGIES",
    "TUNING",
    "Behaviour",
    "Seen",
    "SimConfig",
    "annotate",
    "crowd_answers",
    "fix_large_errors",
    "scene",
    "simulate",
    "summarise",
    "wobble",
]

STRATEGIES = ("honeypots", "unchanged", "overlap3", "none")
HONEST = ("careful", "sloppy")
CROWD = {"careful": 16, "sloppy": 12, "lazy": 6, "lazy_fixes_obvious": 4, "scribbler": 2}
SECONDS = {
    "careful": 25.0,
    "sloppy": 12.0,
    "lazy": 2.0,
    "lazy_fixes_obvious": 5.0,
    "scribbler": 3.0,
}


@dataclass(frozen=True)
class Seen:
    """What an annotator has to go on besides the task: its name, how many tasks it has
    submitted so far, and the answers others have already given to this task (what a copier
    would get from a partner)."""

    name: str
    done: int
    answers: Mapping[str, Label]


class Behaviour(Protocol):
    """One kind of annotator: honest or not (what "caught" and "honest banned" count), and its
    answer to a task with the seconds it took."""

    @property
    def honest(self) -> bool: ...

    def __call__(
        self, shown: Label, truth: Label, rng: np.random.Generator, size: int, seen: Seen
    ) -> tuple[Label, float]: ...


@dataclass(frozen=True)
class Kind:
    """A behaviour of the tuning set: :func:`annotate` for ``kind``, ``SECONDS[kind]`` each."""

    kind: str

    @property
    def honest(self) -> bool:
        return self.kind in HONEST

    def __call__(
        self, shown: Label, truth: Label, rng: np.random.Generator, size: int, seen: Seen
    ) -> tuple[Label, float]:
        return annotate(self.kind, shown, truth, rng, size), SECONDS[self.kind]


TUNING: dict[str, Behaviour] = {k: Kind(k) for k in SECONDS}


@dataclass(frozen=True)
class SimConfig:
    strategy: str = "honeypots"
    images: int = 2000
    size: int = 64
    model_quality: float = 0.7  # share of pre-labels that are right
    crowd: dict[str, int] = field(default_factory=lambda: dict(CROWD))
    honeypot_share: float = 0.1
    baits: int = 80
    qualification_share: float = 0.5  # honeypot share for newcomers and suspects
    bad_baits: float = 0.05  # share of baits whose gold is wrong
    per_round: int = 10  # tasks per annotator per round
    small_objects: float = 0.0  # share of images with one more, tiny object (0.1-0.8 %)
    min_bait_object: float = 0.005  # no bait from gold with an object under this share
    seed: int = 0
    rules: Rules = field(default_factory=Rules)
    behaviours: Mapping[str, Behaviour] = field(default_factory=lambda: dict(TUNING))
    label: str = "tuning"  # which crowd this is, in the figures

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise ValueError(f"strategy must be one of {', '.join(STRATEGIES)}")
        if not 0 <= self.model_quality <= 1 or not 0 <= self.honeypot_share < 1:
            raise ValueError("model_quality must be in [0, 1] and honeypot_share in [0, 1)")
        unknown = set(self.crowd) - set(self.behaviours)
        if unknown:
            raise ValueError(
                f"unknown annotator types {sorted(unknown)}; have {sorted(self.behaviours)}"
            )


def scene(rng: np.random.Generator, size: int) -> Label:
    """A synthetic truth: 0-2 cats and 0-1 dogs as ellipses; every cat is also an animal."""
    yy, xx = np.mgrid[:size, :size]
    cat = np.zeros((size, size), dtype=bool)
    animal = np.zeros_like(cat)
    for kind in ["cat"] * int(rng.integers(0, 3)) + ["dog"] * int(rng.integers(0, 2)):
        cy, cx = rng.uniform(0.15, 0.85, 2) * size
        ry, rx = rng.uniform(0.08, 0.22, 2) * size
        blob = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
        animal |= blob
        if kind == "cat":
            cat |= blob
    return {"cat": cat, "animal": animal}


def wobble(label: Label, rng: np.random.Generator, pixels: float) -> Label:
    """Move every boundary by smooth noise of about ``pixels``; keeps cat inside animal."""
    noise = ndimage.gaussian_filter(rng.normal(size=next(iter(label.values())).shape), 3)
    noise *= pixels / max(float(noise.std()), 1e-9)
    out = {}
    for c, mask in label.items():
        if not mask.any() or mask.all():
            out[c] = mask.copy()
            continue
        inside = ndimage.distance_transform_edt(mask)
        outside = ndimage.distance_transform_edt(~mask)
        out[c] = (np.asarray(inside) - np.asarray(outside) + 0.5 + noise) > 0
    if "cat" in out and "animal" in out:
        out["animal"] |= out["cat"]
    return out


def _prelabel(truth: Label, rng: np.random.Generator, quality: float) -> Label:
    shown = wobble(truth, rng, 0.5)
    if rng.random() < quality:
        return shown
    kind = rng.choice(["erase", "add_blob", "dilate", "erode", "shift"])
    try:
        return spoil(shown, rng, [str(kind)])[0]
    except ValueError:
        return shown


def fix_large_errors(
    shown: Label, truth: Label, share: float, rng: np.random.Generator | None = None
) -> Label:
    """``shown`` with each connected error of ``share`` of the image or more set right, the
    smaller ones left as they are. With ``rng``, a fix is drawn by hand (the truth with a
    0.7 px wobble), as people draw: two who fix the same error do not draw the same pixels."""
    hand = wobble(truth, rng, 0.7) if rng is not None else truth
    out = {}
    for c, mask in shown.items():
        wrong, count = ndimage.label(mask != truth[c])
        fixed = mask.copy()
        for index in range(1, count + 1):
            part = wrong == index
            if part.sum() >= share * mask.size:
                fixed[part] = hand[c][part]
        out[c] = fixed
    return out


def annotate(kind: str, shown: Label, truth: Label, rng: np.random.Generator, size: int) -> Label:
    if kind == "lazy":
        return shown
    if kind == "scribbler":
        scribble = scene(rng, size)
        return {c: scribble[c] for c in shown}
    if kind == "lazy_fixes_obvious":
        return fix_large_errors(shown, truth, 0.04, rng)
    worst = min(iou(shown[c], truth[c]) for c in shown)  # one wrong class is noticed
    good = worst >= (0.93 if kind == "careful" else 0.85)
    if good or (kind == "sloppy" and rng.random() < 0.05):
        return shown
    return wobble(truth, rng, 0.7 if kind == "careful" else 1.2)


@dataclass
class _Task:
    id: int
    kind: str
    truth: Label
    shown: Label
    gold: Label | None = None
    stale: bool = False  # a bait whose gold is wrong


def simulate(config: SimConfig) -> dict[str, Any]:
    """Run one crowd under one strategy; the figures of the README's table."""
    rng = np.random.default_rng(config.seed)
    people = [(f"{k}{i}", k) for k, n in config.crowd.items() for i in range(n)]
    kind_of = dict(people)
    pool = [
        _Task(
            i,
            "overlap" if config.strategy == "overlap3" else "normal",
            t,
            _prelabel(t, rng, config.model_quality),
        )
        for i, t in enumerate(_scene(config, rng) for _ in range(config.images))
    ]
    copies = 3 if config.strategy == "overlap3" else 1
    baits = _baits(config, rng) if config.strategy == "honeypots" else []
    rules = _rules(config)
    queue = [t for t in pool for _ in range(copies)]
    done: dict[int, set[str]] = defaultdict(set)
    subs: list[Sub] = []
    banned: dict[str, str] = {}
    trusted: set[str] = set()  # newcomers and suspects get qualification_share honeypots
    retired: set[int] = set()
    answers: dict[int, dict[str, Label]] = defaultdict(dict)
    count: dict[str, int] = defaultdict(int)
    rounds = 0
    while queue and rounds < 1000:
        rounds += 1
        active = [p for p in people if p[0] not in banned]
        if not active:
            break
        rng.shuffle(active)
        for name, kind in active:
            for _ in range(config.per_round):
                share = config.honeypot_share if name in trusted else config.qualification_share
                task = _next(queue, baits, name, done, retired, share, rng)
                if task is None:
                    break
                seen = Seen(name, count[name], dict(answers[task.id]))
                label, seconds = config.behaviours[kind](
                    task.shown, task.truth, rng, config.size, seen
                )
                done[task.id].add(name)
                answers[task.id][name] = label
                count[name] += 1
                subs.append(Sub(task.id, name, task.kind, label, task.shown, task.gold, seconds,
                                at=float(len(subs))))  # fmt: skip
        result = assess(subs, rules, banned, retired)
        retired = {t for t, b in result.baits.items() if b.retired}
        trusted = {n for n, a in result.annotators.items() if not a.suspect(rules)}
        for name, reason in result.new_bans.items():
            banned[name] = reason
            # their work on pool tasks goes back to the queue, to be done (and paid) again
            lost = {s.task for s in subs if s.annotator == name and s.kind != "honeypot"}
            queue.extend(t for t in pool if t.id in lost)
            for t in lost:
                done[t].discard(name)
                answers[t].pop(name, None)
    final = assess(subs, rules, banned, retired)
    return _figures(config, pool, baits, subs, final, kind_of, rounds)


def _rules(config: SimConfig) -> Rules:
    base = config.rules
    off = {"min_pass_rate": None, "min_agreement": None, "max_unchanged": None}
    if config.strategy == "honeypots":
        return Rules(**{**base.__dict__, "min_agreement": None, "max_unchanged": None})
    if config.strategy == "unchanged":
        return Rules(**{**base.__dict__, **off, "max_unchanged": base.max_unchanged or 0.5})
    if config.strategy == "overlap3":
        return Rules(**{**base.__dict__, **off, "min_agreement": base.min_agreement or 0.5})
    return Rules(**{**base.__dict__, **off})


def _scene(config: SimConfig, rng: np.random.Generator) -> Label:
    """A truth from :func:`scene`, with one more tiny object on ``small_objects`` of them."""
    truth = scene(rng, config.size)
    if config.small_objects and rng.random() < config.small_objects:
        yy, xx = np.mgrid[: config.size, : config.size]
        cy, cx = rng.uniform(0.1, 0.9, 2) * config.size
        r = rng.uniform(0.02, 0.05) * config.size
        speck = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
        truth["animal"] = truth["animal"] | speck
        if rng.random() < 0.5:
            truth["cat"] = truth["cat"] | speck
    return truth


def _baits(config: SimConfig, rng: np.random.Generator) -> list[_Task]:
    baits = []
    for i in range(config.baits):
        truth = _scene(config, rng)
        while config.min_bait_object and not big_enough(truth, config.min_bait_object):
            truth = _scene(config, rng)
        gold, stale = truth, bool(rng.random() < config.bad_baits)
        if stale:  # the gold misses an object that is there, or has one that is not
            gold = spoil(truth, rng, ["erase", "add_blob"])[0]
        shown = spoil(gold, rng)[0]
        baits.append(_Task(-1 - i, "honeypot", truth, shown, gold, stale))
    return baits


def _next(
    queue: list[_Task],
    baits: Sequence[_Task],
    name: str,
    done: dict[int, set[str]],
    retired: set[int],
    share: float,
    rng: np.random.Generator,
) -> _Task | None:
    fresh = [b for b in baits if name not in done[b.id] and b.id not in retired]
    if fresh and rng.random() < share:
        return fresh[int(rng.integers(len(fresh)))]
    for index, task in enumerate(queue):
        if name not in done[task.id]:
            return queue.pop(index)
    return None


def _figures(
    config: SimConfig,
    pool: Sequence[_Task],
    baits: Sequence[_Task],
    subs: Sequence[Sub],
    result: QCResult,
    kind_of: dict[str, str],
    rounds: int,
) -> dict[str, Any]:
    banned = result.banned()
    accepted = {key for key, (verdict, _) in result.verdicts.items() if verdict == "accepted"}
    labels: dict[int, list[tuple[str, Mapping[str, BoolMask]]]] = defaultdict(list)
    for s in subs:
        if (s.task, s.annotator) in accepted and s.kind != "honeypot":
            labels[s.task].append((s.annotator, s.label))
    skills = {n: a.skill for n, a in result.annotators.items()}
    final: dict[int, Mapping[str, BoolMask]] = dict(
        aggregate({t: g for t, g in labels.items() if len(g) > 1}, skills)
    )
    final.update({t: g[0][1] for t, g in labels.items() if len(g) == 1})
    scores = [mean_iou(final[t.id], t.truth) if t.id in final else 0.0 for t in pool]
    honest_kind = {k: config.behaviours[k].honest for k in set(kind_of.values())}
    # "lazy": every dishonest kind but the scribbler, who is counted apart
    lazy = [n for n, k in kind_of.items() if not honest_kind[k] and k != "scribbler"]
    honest = [n for n, k in kind_of.items() if honest_kind[k]]
    by_kind: dict[str, dict[str, Any]] = {}
    for kind in sorted(set(kind_of.values())):
        names = [n for n, k in kind_of.items() if k == kind]
        by_kind[kind] = {"honest": honest_kind[kind], "people": len(names),
                         "banned": sum(n in banned for n in names)}  # fmt: skip
    stale = {b.id for b in baits if b.stale}
    retired = {t for t, b in result.baits.items() if b.retired}
    return {
        "crowd": config.label,
        "strategy": config.strategy,
        "model_quality": config.model_quality,
        "seed": config.seed,
        "images": config.images,
        "lazy": len(lazy),
        "lazy_caught": sum(n in banned for n in lazy),
        "honest": len(honest),
        "honest_banned": sum(n in banned for n in honest),
        "scribblers_caught": sum(n in banned for n, k in kind_of.items() if k == "scribbler"),
        "final_iou": round(float(np.mean(scores)), 4),
        "unlabelled": sum(t.id not in final for t in pool),
        "paid_tasks": len(accepted),  # a banned annotator's work is rejected, not paid
        "submissions": len(subs),
        "stale_baits": len(stale),
        "stale_retired": len(stale & retired),
        "sound_retired": len(retired - stale),
        "rounds": rounds,
        "by_kind": by_kind,
    }


def summarise(runs: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (crowd, model quality, strategy), summed over seeds."""
    groups: dict[tuple[str, float, str], list[dict[str, Any]]] = defaultdict(list)
    for r in runs:
        groups[r.get("crowd", "tuning"), r["model_quality"], r["strategy"]].append(r)
    rows = []
    for (crowd, quality, strategy), group in groups.items():

        def total(key: str, g: list[dict[str, Any]] = group) -> int:
            return sum(int(r[key]) for r in g)

        images = sum(r["images"] for r in group)
        rows.append(
            {
                "crowd": crowd,
                "model right": f"{quality:.0%}",
                "strategy": strategy,
                "crowds": len(group),
                "lazy caught": f"{total('lazy_caught')}/{total('lazy')} "
                f"({total('lazy_caught') / max(total('lazy'), 1):.0%})",
                "honest banned": f"{total('honest_banned')}/{total('honest')} "
                f"({total('honest_banned') / max(total('honest'), 1):.1%})",
                "label IoU": f"{np.mean([r['final_iou'] for r in group]):.3f}",
                "paid tasks / image": f"{total('paid_tasks') / images:.2f}",
                "stale baits retired": f"{total('stale_retired')}/{total('stale_baits')}",
            }
        )
    return rows


def crowd_answers(
    tasks: Sequence[dict[str, Any]],
    truth: Callable[[str], Label],
    copies: Callable[[int], int],
    people: Sequence[tuple[str, str]],
    seed: int = 0,
) -> list[dict[str, Any]]:
    """A Label Studio export for exported ``tasks``, as a simulated crowd would return it:
    each task annotated by ``copies(task id)`` of ``people`` ((name, kind) pairs) who behave
    as their kind does. ``truth(image)`` is what is really on the image."""
    from visionloop.label.formats import brush_label, brush_results

    rng = np.random.default_rng(seed)
    out = []
    for task in tasks:
        data = task["data"]
        shown_results = task["predictions"][0]["result"] if task.get("predictions") else []
        real = truth(data["image"])
        shown = {c: np.zeros_like(m) for c, m in real.items()}
        shown.update(brush_label(shown_results, tuple(real)))
        height, width = next(iter(real.values())).shape
        chosen = rng.choice(
            len(people), size=min(copies(data["visionloop_task"]), len(people)), replace=False
        )
        annotations = []
        for index in chosen:
            name, kind = people[int(index)]
            label = annotate(kind, shown, real, rng, height)
            annotations.append(
                {
                    "completed_by": {"email": name},
                    "result": brush_results(label, width, height),
                    "lead_time": SECONDS[kind] * float(rng.uniform(0.7, 1.3)),
                    "was_cancelled": False,
                }
            )
        out.append({**task, "annotations": annotations})
    return out
