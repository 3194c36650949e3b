"""bench/ablation.py's decision: the rule written into BENCHMARKS.md, applied to made-up numbers."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
import ablation  # noqa: E402

CANDIDATES = list(ablation.CANDIDATES)
TODAY, COLLAPSE, RESTORE = "robust (today)", "collapse", "restore"


def numbers(finals: dict[str, list[float]], collapsed: dict[tuple[int, str], int] | None = None,
            aalr: list[float] | None = None, step: list[float] | None = None) -> dict:
    """{workload: {label: numbers}}: ``finals[label][i]`` is the mean final accuracy on workload i
    (a candidate not named gets 0.5 everywhere); ``collapsed[(i, label)]`` its collapsed seeds there."""
    count = len(next(iter(finals.values())))
    collapsed = collapsed or {}
    out = {}
    for i in range(count):
        table = {label: {"final_mean": finals.get(label, [0.5] * count)[i], "worst": 0.0,
                         "collapsed": collapsed.get((i, label), 0)} for label in CANDIDATES}
        table["aalr"] = {"final_mean": (aalr or [0.5] * count)[i], "worst": 0.0, "collapsed": 0}
        table["step"] = {"final_mean": (step or [0.5] * count)[i], "worst": 0.0, "collapsed": 0}
        out[f"w{i}"] = table
    return out


def test_the_eligible_candidate_with_the_best_mean_rank_wins():
    _, decision = ablation.decide(numbers({COLLAPSE: [0.9, 0.9], TODAY: [0.8, 0.8]}))
    assert "becomes `collapse`" in decision


def test_a_collapsed_seed_makes_a_candidate_ineligible():
    _, decision = ablation.decide(numbers({COLLAPSE: [0.9, 0.9], RESTORE: [0.85, 0.85]},
                                          collapsed={(1, COLLAPSE): 1}))
    assert "becomes `restore`" in decision


def test_more_than_half_a_point_below_the_papers_aalr_makes_a_candidate_ineligible():
    # collapse ranks first on w0 but is 0.6 points below aalr on w1: restore (0.4 below) wins
    _, decision = ablation.decide(numbers({COLLAPSE: [0.99, 0.894], RESTORE: [0.95, 0.896]}, aalr=[0.5, 0.9]))
    assert "becomes `restore`" in decision


def test_a_tie_goes_to_the_simpler_candidate_then_to_todays():
    # within 0.25 of each other in mean rank: collapse (one option) beats today's (two)
    finals = {label: [0.5, 0.5] for label in CANDIDATES}
    finals[TODAY], finals[COLLAPSE] = [0.91, 0.90], [0.90, 0.91]
    _, decision = ablation.decide(numbers(finals))
    assert "becomes `collapse`" in decision
    assert ablation.simplicity(ablation.CANDIDATES[COLLAPSE]) < ablation.simplicity(ablation.CANDIDATES[TODAY])


def test_today_wins_and_stays():
    _, decision = ablation.decide(numbers({TODAY: [0.95, 0.95]}))
    assert "today's `aalr-robust` stays" in decision


def test_rule_4_relaxes_to_no_collapse_and_says_so():
    # nobody is within 0.5 points of aalr: only "no collapsed seed" is asked
    finals = {label: [0.5, 0.5] for label in CANDIDATES}
    finals[RESTORE] = [0.6, 0.6]
    _, decision = ablation.decide(numbers(finals, aalr=[0.9, 0.9]))
    assert "rule 4" in decision and "becomes `restore`" in decision


def test_when_every_candidate_collapses_today_stays_and_the_workload_is_named():
    collapsed = {(1, label): 2 for label in CANDIDATES}
    _, decision = ablation.decide(numbers({COLLAPSE: [0.9, 0.9]}, collapsed=collapsed))
    assert "collapsed seeds on w1" in decision and "today's `aalr-robust` stays" in decision


@pytest.mark.parametrize("step, named", [([0.9, 0.99], "w1"), ([0.9, 0.5], None)])
def test_the_workloads_where_every_aalr_variant_loses_to_step_are_named(step, named):
    lines, _ = ablation.decide(numbers({COLLAPSE: [0.95, 0.9]}, aalr=[0.5, 0.5], step=step))
    text = "\n".join(lines)
    assert ("w1 (step 99.00 %, best AALR variant 90.00 %)" in text) == (named == "w1")
    assert ("nowhere" in text) == (named is None)
