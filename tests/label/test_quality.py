"""Each QC rule, honeypot retirement, aggregation and the payment view."""

from __future__ import annotations

import numpy as np
import pytest

from visionloop.label.quality import Rules, Sub, aggregate, assess, check_honeypot, payment


def disc(cy, cx, r, size=48):
    yy, xx = np.mgrid[:size, :size]
    return (yy - cy) ** 2 + (xx - cx) ** 2 < r * r


GOLD = {"cat": disc(24, 24, 12)}
SPOILED = {"cat": disc(24, 24, 12) | disc(6, 6, 5)}  # a false blob added


def honeypot(task, who, label, gold=GOLD, shown=SPOILED):
    return Sub(task, who, "honeypot", label, shown, gold, seconds=10.0)


def test_a_honeypot_needs_the_iou_and_the_spoiling_fixed():
    rules = Rules(iou_threshold=0.75, fix_fraction=0.6)
    assert check_honeypot(honeypot(1, "a", GOLD), rules).passed
    # the spoiled pre-label itself: IoU with gold is high (0.84) but the blob is still there
    lazy = check_honeypot(honeypot(1, "a", SPOILED), rules)
    assert lazy.iou > 0.75
    assert lazy.fixed == 0.0
    assert not lazy.passed
    # blob removed but the cat half missing: the spoiling is fixed, the IoU too low
    half = {"cat": GOLD["cat"] & (np.arange(48)[None, :] < 24)}
    check = check_honeypot(honeypot(1, "a", half), rules)
    assert check.fixed == 1.0
    assert check.iou < 0.75
    assert not check.passed


def test_pass_rate_ban_waits_for_the_warmup_and_spares_honest_bad_luck():
    rules = Rules(warmup=4, min_pass_rate=0.75, confidence=0.05)
    lazy = [honeypot(t, "lazy", SPOILED) for t in range(3)]
    assert assess(lazy, rules).new_bans == {}  # three fails: still warming up
    lazy.append(honeypot(3, "lazy", SPOILED))
    ban = assess(lazy, rules).new_bans["lazy"]
    assert ban.startswith("passed 0 of 4 honeypots")
    # an honest annotator failing 2 of 6 is not banned: a 75 % pass rate is still plausible
    honest = [honeypot(t, "h", GOLD if t < 4 else SPOILED) for t in range(6)]
    assert assess(honest, rules).new_bans == {}


def test_banned_annotators_work_is_rejected_and_unpaid():
    rules = Rules(warmup=4)
    subs = [honeypot(t, "lazy", SPOILED) for t in range(4)]
    subs.append(Sub(10, "lazy", "normal", GOLD, GOLD))
    subs.append(Sub(11, "good", "normal", GOLD, GOLD))
    result = assess(subs, rules)
    assert result.verdicts[10, "lazy"][0] == "rejected"
    assert result.verdicts[11, "good"] == ("accepted", "")
    pay = {row["annotator"]: row for row in payment(result, rate=0.5)}
    assert pay["lazy"]["pay"] == 0.0
    assert pay["lazy"]["banned"]
    assert pay["good"]["pay"] == 0.5


def test_earlier_bans_stand():
    result = assess([Sub(1, "x", "normal", GOLD, GOLD)], Rules(), banned={"x": "by hand"})
    assert result.annotators["x"].ban == "by hand"
    assert result.new_bans == {}
    assert result.verdicts[1, "x"][0] == "rejected"


def test_agreement_rule_bans_who_disagrees_with_the_others_on_overlap():
    rules = Rules(min_agreement=0.5, agreement_warmup=3, min_pass_rate=None)
    subs = []
    for t in range(3):
        for who in ("a", "b", "c"):
            subs.append(Sub(t, who, "overlap", GOLD, GOLD))
        subs.append(Sub(t, "scribbler", "overlap", {"cat": disc(5, 40, 4)}, GOLD))
    result = assess(subs, rules)
    assert set(result.new_bans) == {"scribbler"}
    assert result.annotators["a"].agreement == pytest.approx(1.0)


def test_unchanged_rule_and_time_rule():
    rules = Rules(max_unchanged=0.5, unchanged_warmup=10, min_pass_rate=None,
                  min_median_seconds=3.0, warmup=4)  # fmt: skip
    subs = [Sub(t, "keeper", "normal", GOLD, GOLD, seconds=20.0) for t in range(10)]
    subs += [Sub(t, "fast", "normal", SPOILED, GOLD, seconds=1.0) for t in range(10, 20)]
    bans = assess(subs, rules).new_bans
    assert "unchanged" in bans["keeper"]
    assert "median 1.0 s" in bans["fast"]
    assert assess(subs[:9], rules).new_bans == {}  # below the warm-up: no ban


def test_a_honeypot_trusted_annotators_fail_is_retired_and_forgiven():
    rules = Rules(warmup=4, trusted_pass_rate=0.8, retire_after=3, retire_fail_rate=0.5)
    wrong_gold = {"cat": np.zeros((48, 48), bool)}  # a stale bait: the cat is really there
    subs = []
    for who in ("a", "b", "c"):
        subs += [honeypot(t, who, GOLD) for t in range(5)]  # trusted: pass 5 of 5
        subs.append(honeypot(99, who, GOLD, gold=wrong_gold, shown=GOLD))
    result = assess(subs, rules)
    assert result.baits[99].retired
    assert result.baits[99].trusted_fails == 3
    assert not result.baits[0].retired
    assert all(a.honeypots == 5 and a.passed == 5 for a in result.annotators.values())
    # decided once, it stays retired: with one attempt on it (a's), the data alone would not
    # retire it again, the recorded decision does, and a is not judged against its gold
    later = subs[:6]
    assert [s.task for s in later] == [0, 1, 2, 3, 4, 99]
    assert not assess(later, rules).baits[99].retired
    again = assess(later, rules, retired={99})
    assert again.baits[99].retired
    assert again.verdicts[99, "a"] == ("accepted", "honeypot retired: not judged")
    assert again.annotators["a"].honeypots == 5


@pytest.mark.parametrize("method", ["mv", "em", "rasa"])
def test_aggregation_with_crowd_kit_recovers_the_majority(method):
    noisy = {"cat": GOLD["cat"] ^ disc(40, 40, 6)}
    labels = {1: [("a", GOLD), ("b", GOLD), ("c", noisy)]}
    out = aggregate(labels, {"a": 0.9, "b": 0.9, "c": 0.2}, method)
    np.testing.assert_array_equal(out[1]["cat"], GOLD["cat"])


def test_skill_weights_decide_a_two_way_tie():
    other = {"cat": disc(10, 10, 6)}
    labels = {1: [("expert", GOLD), ("novice", other)]}
    out = aggregate(labels, {"expert": 0.95, "novice": 0.3}, "mv")
    np.testing.assert_array_equal(out[1]["cat"], GOLD["cat"])


def test_rules_are_checked():
    with pytest.raises(ValueError, match="iou_threshold"):
        Rules(iou_threshold=2)
    with pytest.raises(ValueError, match="aggregator"):
        Rules(aggregator="vote")


def test_newcomers_and_doubtful_annotators_are_suspects_until_the_honeypots_decide():
    rules = Rules(warmup=4, min_pass_rate=0.75)
    fresh = assess([honeypot(0, "new", GOLD)], rules).annotators["new"]
    assert fresh.suspect(rules)  # one honeypot is not enough to trust anyone
    good = assess([honeypot(t, "good", GOLD) for t in range(6)], rules).annotators["good"]
    assert not good.suspect(rules)
    assert good.plausible > 0.8
    mixed = [honeypot(t, "mixed", GOLD if t % 2 else SPOILED) for t in range(6)]
    doubtful = assess(mixed, rules).annotators["mixed"]
    assert doubtful.suspect(rules)
    assert doubtful.ban is None  # 3 of 6 is suspicious, not yet proof


def test_one_overlap_submission_far_from_the_others_is_rejected_alone():
    rules = Rules(reject_below=0.3, min_agreement=None, min_pass_rate=None)
    subs = [Sub(1, who, "overlap", GOLD, GOLD) for who in ("a", "b", "c")]
    subs.append(Sub(1, "d", "overlap", {"cat": disc(5, 40, 4)}, GOLD))
    subs.append(Sub(2, "d", "normal", GOLD, GOLD))
    result = assess(subs, rules)
    verdict, why = result.verdicts[1, "d"]
    assert verdict == "rejected"
    assert "consensus" in why
    assert result.verdicts[2, "d"] == ("accepted", "")  # the rest of d's work stands
    assert result.verdicts[1, "a"] == ("accepted", "")
    assert result.new_bans == {}
