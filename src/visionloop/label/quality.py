"""Crowd quality control: honeypot checks, per-annotator scores, ban rules, honeypot health,
aggregation of overlapping submissions (crowd-kit) and the payment view.

Pure functions over :class:`Sub` records, so the ``qc`` command (records from the store) and
the crowd simulator (records it makes up) run the same rules.

Honeypots are "gold" tasks made by injecting known errors into what the model shows for a
trusted answer's image, as in Oleson et al., *Programmatic Gold: Targeted and Scalable Quality
Assurance in Crowdsourcing* (HCOMP 2011); the pass-rate posterior is Beta-Binomial with a
uniform prior.

Banning on a raw pass rate after a few honeypots bans honest people by bad luck, more so when
it is re-checked after every batch; the rule is Bayesian instead: ban when the probability
that the annotator's true pass rate reaches ``min_pass_rate`` falls below ``confidence``.

A honeypot is passed when the submission's IoU with the gold is at least ``iou_threshold``
(mean over the task's classes) AND the spoiling was fixed: on the pixels the spoiling made
wrong (``Sub.wrong``, recorded when the bait was made; ``gold XOR shown pre-label`` when the
shown label is the spoiled gold itself, as in the simulator) the submission agrees with the
gold on at least ``fix_fraction`` of them. The IoU alone would let a lazy annotator pass a
subtle spoiling.

The aggregators (:mod:`visionloop.label.aggregate`) are re-exported here.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
from scipy.stats import beta

from visionloop import plugins
from visionloop.label.aggregate import (
    AGGREGATORS,
    Aggregator,
    ExpectationMaximisation,
    MajorityVote,
    Rasa,
    aggregate,
)
from visionloop.label.masks import BoolMask, StoredLabel, iou

__all__ = [
    "AGGREGATORS",
    "Aggregator",
    "AnnotatorScore",
    "Bait",
    "ExpectationMaximisation",
    "HoneypotCheck",
    "MajorityVote",
    "QCResult",
    "Rasa",
    "Rules",
    "Sub",
    "aggregate",
    "assess",
    "check_honeypot",
    "is_unchanged",
]


@dataclass(frozen=True)
class Rules:
    """QC thresholds. ``None`` turns a rule off."""

    iou_threshold: float = 0.75  # honeypot: mean IoU with the gold at least this ...
    fix_fraction: float = 0.6  # ... and this share of the spoiled pixels set right
    warmup: int = 6  # honeypots seen before the pass-rate rule may ban (4 until issue 21)
    min_pass_rate: float | None = 0.75  # ban when a pass rate this high is implausible:
    confidence: float = 0.05  # P(rate >= min_pass_rate | passes, fails; uniform prior) below
    min_agreement: float | None = 0.5  # overlap: mean IoU with the others' consensus
    agreement_warmup: int = 3
    reject_below: float | None = 0.3  # reject one overlap submission this far from the others
    max_unchanged: float | None = None  # the "ban if unchanged" baseline; off by default
    unchanged_warmup: int = 10
    min_median_seconds: float | None = None  # ban who answer faster than anyone can look
    copy_min_tasks: int | None = 3  # same drawings: ban who answered later on this many
    trusted_pass_rate: float = 0.8  # who counts as trusted for honeypot health
    retire_after: int = 3  # trusted attempts before a bait is judged
    retire_fail_rate: float = 0.5  # a bait trusted annotators fail this often is retired
    aggregator: str = "mv"

    def __post_init__(self) -> None:
        for name in ("iou_threshold", "fix_fraction", "trusted_pass_rate", "retire_fail_rate"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        plugins.check(AGGREGATORS, self.aggregator, "aggregator")
        counts = (self.warmup, self.agreement_warmup, self.unchanged_warmup, self.retire_after)
        if min(counts) < 1 or (self.copy_min_tasks is not None and self.copy_min_tasks < 1):
            raise ValueError("warm-up counts must be >= 1")


@dataclass
class Sub:
    """One submission as QC sees it. ``kind``: normal, honeypot or overlap."""

    task: int
    annotator: str
    kind: str
    label: Mapping[str, BoolMask]
    prelabel: Mapping[str, BoolMask]
    gold: Mapping[str, BoolMask] | None = None
    seconds: float | None = None
    bait: int | None = None  # a honeypot's health key (its gold image); None: the task
    at: float | None = None  # when it was submitted (seconds), if known
    wrong: Mapping[str, BoolMask] | None = None  # a honeypot's spoiled pixels, if recorded

    @property
    def bait_key(self) -> int:
        return self.task if self.bait is None else self.bait


@dataclass(frozen=True)
class HoneypotCheck:
    task: int
    annotator: str
    iou: float
    fixed: float  # share of the spoiled pixels set right
    passed: bool
    bait: int  # the health key: the gold image behind the task (or the task itself)


@dataclass
class AnnotatorScore:
    name: str
    tasks: int = 0
    honeypots: int = 0  # judged: on baits not retired
    passed: int = 0
    overlaps: int = 0
    agreement: float | None = None
    unchanged: float = 0.0
    median_seconds: float | None = None
    ban: str | None = None
    plausible: float | None = None  # P(true pass rate >= min_pass_rate | honeypots so far)
    agreements: dict[int, float] = field(default_factory=dict)  # overlap task -> IoU

    def suspect(self, rules: Rules) -> bool:
        """Not yet trusted: still warming up, or a good pass rate is not the likely one.
        Send such annotators more honeypots (a qualification batch) until they are decided."""
        return self.plausible is None or self.honeypots < rules.warmup or self.plausible < 0.5

    @property
    def pass_rate(self) -> float | None:
        return self.passed / self.honeypots if self.honeypots else None

    @property
    def skill(self) -> float:
        """Honeypot pass rate with a uniform prior: 0.5 before any evidence."""
        return (self.passed + 1) / (self.honeypots + 2)


@dataclass
class Bait:
    """Health of one bait: a gold image over every honeypot task made from it (in the store),
    or one honeypot task (in the simulator, where a task is handed to many people)."""

    key: int
    attempts: int = 0
    trusted_attempts: int = 0
    trusted_fails: int = 0
    retired: bool = False

    @property
    def trusted_fail_rate(self) -> float | None:
        return self.trusted_fails / self.trusted_attempts if self.trusted_attempts else None


@dataclass
class QCResult:
    annotators: dict[str, AnnotatorScore]
    checks: list[HoneypotCheck]
    baits: dict[int, Bait]
    new_bans: dict[str, str]
    verdicts: dict[tuple[int, str], tuple[str, str]] = field(default_factory=dict)
    pairs: list[Any] = field(default_factory=list)  # same drawings (collusion.Pair)

    def banned(self) -> set[str]:
        return {n for n, a in self.annotators.items() if a.ban}


def check_honeypot(sub: Sub, rules: Rules) -> HoneypotCheck:
    if sub.gold is None:
        raise ValueError(f"task {sub.task} is a honeypot without gold")
    gold = dict(sub.gold.items())  # decoded once (stored labels decode on access)
    shown = dict(sub.prelabel.items())
    label = {c: sub.label.get(c, np.zeros_like(g)) for c, g in gold.items()}
    overlap = mean_iou(label, gold)
    if sub.wrong is not None:  # what the spoiling made wrong, recorded when it was made
        wrong = dict(sub.wrong.items())
        regions = {c: wrong[c] for c in gold if c in wrong}
    else:  # the spoiled gold itself was shown: every difference is the spoiling's
        regions = {c: gold[c] != shown[c] for c in gold if c in shown}
    total = sum(int(np.count_nonzero(r)) for r in regions.values())
    right = sum(int(np.count_nonzero((label[c] == gold[c]) & r)) for c, r in regions.items())
    fixed = right / total if total else 1.0
    passed = overlap >= rules.iou_threshold and fixed >= rules.fix_fraction
    return HoneypotCheck(sub.task, sub.annotator, overlap, fixed, passed, sub.bait_key)


def is_unchanged(sub: Sub) -> bool:
    """The submission is the pre-label it was shown, class for class."""
    if isinstance(sub.label, StoredLabel) and isinstance(sub.prelabel, StoredLabel):
        return all(sub.label.json.get(c) == rle for c, rle in sub.prelabel.json.items())
    return all(
        np.array_equal(sub.label.get(c, np.zeros_like(p)), p) for c, p in sub.prelabel.items()
    )


def assess(
    subs: Sequence[Sub],
    rules: Rules,
    banned: Mapping[str, str] | None = None,
    retired: Iterable[int] = (),
) -> QCResult:
    """Score every annotator, judge the baits, decide bans and each submission's verdict.
    ``banned`` and ``retired`` (bait keys, :attr:`Sub.bait_key`): decisions already taken
    (they stand)."""
    from visionloop.label import collusion  # it builds on this module

    banned = dict(banned or {})
    events, shared = collusion.same_drawings(subs)
    pairs = collusion.pairs_of(events, shared, min_tasks=rules.copy_min_tasks or 3)
    copying = (
        collusion.verdicts(events, rules.copy_min_tasks)
        if rules.copy_min_tasks is not None
        else collusion.Verdicts()
    )
    checks = [
        replace(c, passed=False) if (c.task, c.annotator) in copying.rejected else c
        for c in (check_honeypot(s, rules) for s in subs if s.kind == "honeypot")
    ]  # a copied honeypot was not done by the copier: it counts as failed
    banned_now = {**copying.bans, **banned}
    baits = {c.bait: Bait(c.bait) for c in checks}
    retired_now = set(retired) & set(baits)
    for _ in range(2):  # trust depends on retirements and retirements on trust: settle twice
        scores = _scores(subs, checks, retired_now, banned_now, rules)
        trusted = {
            n
            for n, a in scores.items()
            if not a.ban
            and a.honeypots >= rules.warmup
            and (a.pass_rate or 0) >= rules.trusted_pass_rate
        }
        # a copied answer says nothing of the bait: it is left out of its health
        judged = [c for c in checks if (c.task, c.annotator) not in copying.rejected]
        baits = _health(judged, trusted, set(retired) & set(baits), rules)
        retired_now = {t for t, b in baits.items() if b.retired}
    scores = _scores(subs, checks, retired_now, banned_now, rules)
    new_bans = {n: a.ban for n, a in scores.items() if a.ban and n not in banned}
    result = QCResult(scores, checks, baits, new_bans, pairs=list(pairs))
    passed = {(c.task, c.annotator): c for c in checks}
    for s in subs:
        result.verdicts[s.task, s.annotator] = _verdict(
            s, scores[s.annotator], passed, copying.rejected, retired_now, rules
        )
    return result


def _verdict(
    s: Sub,
    person: AnnotatorScore,
    checks: Mapping[tuple[int, str], HoneypotCheck],
    copied: Mapping[tuple[int, str], str],
    retired: set[int],
    rules: Rules,
) -> tuple[str, str]:
    """One submission's verdict and why."""
    if person.ban:
        return "rejected", f"annotator banned: {person.ban}"
    if (s.task, s.annotator) in copied:
        return "rejected", copied[s.task, s.annotator]
    if s.kind == "honeypot" and s.bait_key in retired:
        return "accepted", "honeypot retired: not judged"
    if s.kind == "honeypot":
        check = checks[s.task, s.annotator]
        why = f"honeypot IoU {check.iou:.2f}, spoiling {check.fixed:.0%} fixed"
        return ("accepted" if check.passed else "rejected"), why
    agreement = person.agreements.get(s.task)
    if rules.reject_below is not None and agreement is not None and agreement < rules.reject_below:
        return "rejected", f"IoU {agreement:.2f} with the others' consensus"
    return "accepted", ""


def _scores(
    subs: Sequence[Sub],
    checks: Sequence[HoneypotCheck],
    retired: set[int],
    banned: Mapping[str, str],
    rules: Rules,
) -> dict[str, AnnotatorScore]:
    scores = {s.annotator: AnnotatorScore(s.annotator) for s in subs}
    seconds: dict[str, list[float]] = defaultdict(list)
    unchanged: dict[str, int] = defaultdict(int)
    for s in subs:
        scores[s.annotator].tasks += 1
        unchanged[s.annotator] += s.kind != "honeypot" and is_unchanged(s)
        if s.seconds is not None:
            seconds[s.annotator].append(s.seconds)
    for c in checks:
        if c.bait not in retired:
            scores[c.annotator].honeypots += 1
            scores[c.annotator].passed += c.passed
    for name, a in scores.items():
        plain = a.tasks - a.honeypots
        a.unchanged = unchanged[name] / plain if plain else 0.0
        a.median_seconds = statistics.median(seconds[name]) if seconds[name] else None
        if rules.min_pass_rate is not None:
            failed = a.honeypots - a.passed
            a.plausible = float(beta.sf(rules.min_pass_rate, a.passed + 1, failed + 1))
        a.ban = banned.get(name) or _ban_reason(a, plain, rules)
    # Consensus only among annotators in good standing: two cheats agreeing on an untouched
    # pre-label must not outvote, and so ban, the honest third.
    out = {n for n, a in scores.items() if a.ban}
    for name, agreement in _agreement(subs, out).items():
        a = scores[name]
        a.agreements = agreement
        a.overlaps, a.agreement = len(agreement), float(np.mean(list(agreement.values())))
        a.ban = a.ban or _ban_reason(a, a.tasks - a.honeypots, rules)
    return scores


def _ban_reason(a: AnnotatorScore, plain: int, rules: Rules) -> str | None:
    if rules.min_pass_rate is not None and a.honeypots >= rules.warmup:
        chance = a.plausible if a.plausible is not None else 1.0
        if chance < rules.confidence:
            return (
                f"passed {a.passed} of {a.honeypots} honeypots: a pass rate of "
                f"{rules.min_pass_rate:.0%} or more has only {chance:.1%} probability"
            )
    agreement = a.agreement if a.overlaps >= rules.agreement_warmup else None
    if (
        rules.min_agreement is not None
        and agreement is not None
        and agreement < rules.min_agreement
    ):
        return f"agreement with consensus {agreement:.2f} < {rules.min_agreement}"
    unchanged = a.unchanged if plain >= rules.unchanged_warmup else None
    if (
        rules.max_unchanged is not None
        and unchanged is not None
        and unchanged > rules.max_unchanged
    ):
        return f"left {unchanged:.0%} of pre-labels unchanged (> {rules.max_unchanged:.0%})"
    fast = a.median_seconds if a.tasks >= rules.warmup else None
    if (
        rules.min_median_seconds is not None
        and fast is not None
        and fast < rules.min_median_seconds
    ):
        return f"median {fast:.1f} s per task < {rules.min_median_seconds} s"
    return None


def _agreement(subs: Sequence[Sub], banned: set[str]) -> dict[str, dict[int, float]]:
    """Per annotator, IoU with the leave-one-out majority of the others on overlap tasks
    (tasks with 3+ submissions from annotators not banned)."""
    by_task: dict[int, list[Sub]] = defaultdict(list)
    for s in subs:
        if s.kind == "overlap" and s.annotator not in banned:
            by_task[s.task].append(s)
    out: dict[str, dict[int, float]] = defaultdict(dict)
    for group in by_task.values():
        if len(group) < 3:
            continue
        classes = list(group[0].prelabel)
        for s in group:
            others = [o for o in group if o is not s]
            values = []
            for c in classes:
                votes = np.mean([o.label[c] for o in others if c in o.label], axis=0) >= 0.5
                values.append(iou(s.label.get(c, np.zeros_like(votes)), votes))
            out[s.annotator][s.task] = float(np.mean(values))
    return out


def _health(
    checks: Sequence[HoneypotCheck], trusted: set[str], retired: set[int], rules: Rules
) -> dict[int, Bait]:
    baits: dict[int, Bait] = {}
    for c in checks:
        bait = baits.setdefault(c.bait, Bait(c.bait, retired=c.bait in retired))
        bait.attempts += 1
        if c.annotator in trusted:
            bait.trusted_attempts += 1
            bait.trusted_fails += not c.passed
    for bait in baits.values():
        rate = bait.trusted_fail_rate
        if bait.trusted_attempts >= rules.retire_after and rate is not None:
            bait.retired = bait.retired or rate >= rules.retire_fail_rate
    return baits


def payment(result: QCResult, rate: float = 1.0) -> list[dict[str, object]]:
    """Per annotator: submitted, accepted, rejected, and pay (accepted x rate; nothing for a
    banned annotator)."""
    counts: dict[str, dict[str, int]] = defaultdict(lambda: {"accepted": 0, "rejected": 0})
    for (_, who), (verdict, _) in result.verdicts.items():
        counts[who][verdict] += 1
    rows = []
    for name, a in sorted(result.annotators.items()):
        accepted = counts[name]["accepted"]
        rows.append(
            {
                "annotator": name,
                "submitted": a.tasks,
                "accepted": accepted,
                "rejected": counts[name]["rejected"],
                "banned": a.ban is not None,
                "pay": round(accepted * rate, 2) if not a.ban else 0.0,
            }
        )
    return rows


def mean_iou(label: Mapping[str, BoolMask], gold: Mapping[str, BoolMask]) -> float:
    return float(np.mean([iou(label.get(c, np.zeros_like(g)), g) for c, g in gold.items()]))
