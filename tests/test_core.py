"""The AALR state machine: one scripted row per branch, then properties."""

import json
import math
import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aalr_ray.core import AALR, Action

NAN, INF = math.nan, math.inf
C, S, B, I = Action.CONTINUE, Action.SAVE_BEST, Action.RESTORE_BEST, Action.RESTORE_INITIAL


def run(initial_loss, losses, **kwargs):
    """Feed ``losses``; return (lr used, action, patience after) per epoch."""
    ctl = AALR(max_epochs=kwargs.pop("max_epochs", len(losses)), **kwargs)
    ctl.start(initial_loss)
    rows = []
    for loss in losses:
        lr = ctl.lr
        rows.append((lr, ctl.step(loss), ctl.patience))
    return ctl, rows


# Each row: kwargs, J(theta_0), per-epoch losses, expected (lr used, action) per epoch.
SCRIPTS = {
    "phase1 counts L <= L*, then phase 2 doubles on gain": (
        dict(phase1_patience=2), 2.0,
        [1.9, 1.9, 1.8, 1.7],
        [(0.1, C), (0.1, S), (0.2, C), (0.2, S)],
    ),
    "phase1 worse loss reloads theta_0, halves, resets L* to J(theta_0)": (
        dict(phase1_patience=2), 2.0,
        # 1.95 > 1.9 restarts; 1.98 > 1.9 but <= J(theta_0) counts after the reset
        [1.9, 1.95, 1.98, 1.98],
        [(0.1, C), (0.1, I), (0.05, C), (0.05, S)],
    ),
    "phase1 NaN and inf reload theta_0": (
        dict(phase1_patience=1), 2.0,
        [NAN, INF, 1.5],
        [(0.1, I), (0.05, I), (0.025, S)],
    ),
    "text window: no gain gets a second try, then halve and double p": (
        dict(phase1_patience=1), 2.0,
        # phase 2 at 0.2, w=2: epochs 2-3 first try, 4-5 second try (equal is no gain)
        [1.5, 1.6, 1.55, 1.52, 1.5, 1.4, 1.3, 1.2],
        [(0.1, S), (0.2, C), (0.2, C), (0.2, C), (0.2, C), (0.1, C), (0.1, C), (0.1, S)],
    ),
    "pseudocode window is p epochs": (
        dict(phase1_patience=1, window="pseudocode"), 2.0,
        # w=1: judged every epoch; after the halving p=2, w=2
        [1.5, 1.4, 1.45, 1.41, 1.3, 1.2],
        [(0.1, S), (0.2, S), (0.4, C), (0.4, C), (0.2, C), (0.2, S)],
    ),
    "second try that improves doubles": (
        dict(phase1_patience=1), 2.0,
        [1.5, 1.6, 1.6, 1.6, 1.4, 1.5, 1.45],  # then 1.45 at T ends a cut window: judged
        [(0.1, S), (0.2, C), (0.2, C), (0.2, C), (0.2, S), (0.4, C), (0.4, C)],
    ),
    "only a window's last epoch is judged": (
        dict(phase1_patience=1), 2.0,
        # 1.0 mid-window is ignored; the window ends on 1.6 (no gain) -> second try
        [1.5, 1.0, 1.6, 1.7, 1.8],
        [(0.1, S), (0.2, C), (0.2, C), (0.2, C), (0.2, C)],
    ),
    "bad loss mid-window restores best, halves, doubles p, new window": (
        dict(phase1_patience=1), 2.0,
        # after the rollback: lr 0.1, p=2, w=3 -> judged at the third epoch
        [1.5, NAN, 1.45, 1.44, 1.4],
        [(0.1, S), (0.2, B), (0.1, C), (0.1, C), (0.1, S)],
    ),
    "a window cut at T is judged at T": (
        dict(phase1_patience=1, max_epochs=4), 2.0,
        [1.5, 1.4, 1.3, 1.2],  # epochs 2-3 win; epoch 4 is the cut window's end
        [(0.1, S), (0.2, C), (0.2, S), (0.4, S)],
    ),
    "collapse_is_divergence off: a collapsed finite loss is ordinary": (
        dict(phase1_patience=1), 2.0,
        [1.5, 2.3, 2.3],
        [(0.1, S), (0.2, C), (0.2, C)],
    ),
    "collapse_is_divergence on: loss >= J(theta_0) rolls back": (
        dict(phase1_patience=1, collapse_is_divergence=True), 2.0,
        [1.5, 2.0, 1.9, 1.8, 1.4],
        [(0.1, S), (0.2, B), (0.1, C), (0.1, C), (0.1, S)],
    ),
    "restore_on_decrease: a failed second try also rolls back": (
        dict(phase1_patience=1, restore_on_decrease=True), 2.0,
        [1.5, 1.6, 1.6, 1.6, 1.6, 1.6],
        [(0.1, S), (0.2, C), (0.2, C), (0.2, C), (0.2, B), (0.1, C)],
    ),
    "restore_if_worse: a failed second try more than 1 % worse than L* rolls back": (
        dict(phase1_patience=1, restore_if_worse=True), 2.0,
        [1.5, 1.6, 1.6, 1.6, 1.516, 1.6],  # 1.516 > 1.5 * 1.01
        [(0.1, S), (0.2, C), (0.2, C), (0.2, C), (0.2, B), (0.1, C)],
    ),
    "restore_if_worse: a failed second try within 1 % of L* keeps its weights": (
        dict(phase1_patience=1, restore_if_worse=True), 2.0,
        [1.5, 1.6, 1.6, 1.6, 1.514, 1.6],  # 1.514 <= 1.5 * 1.01: only noisy
        [(0.1, S), (0.2, C), (0.2, C), (0.2, C), (0.2, C), (0.1, C)],
    ),
    "significant_gain: a gain of under 1 % of L* does not double": (
        dict(phase1_patience=1, significant_gain=True), 2.0,
        # 1.495 < 1.5 but not below 1.485: second try; 1.48 is below it: doubled
        [1.5, 1.6, 1.495, 1.6, 1.48, 1.6],
        [(0.1, S), (0.2, C), (0.2, C), (0.2, C), (0.2, S), (0.4, C)],
    ),
    "significant_gain off: the same small gain doubles (the paper)": (
        dict(phase1_patience=1), 2.0,
        [1.5, 1.6, 1.495, 1.6, 1.48, 1.6],
        [(0.1, S), (0.2, C), (0.2, S), (0.4, C), (0.4, S), (0.8, C)],
    ),
    "judge mean: a window whose mean beats L* is a gain, its last epoch aside": (
        dict(phase1_patience=1, judge="mean"), 2.0,
        # mean(1.0, 1.6) = 1.3 < 1.5: doubled, L* = 1.3; mean(1.2, 1.45) = 1.325: second try
        [1.5, 1.0, 1.6, 1.2, 1.45, 1.3],
        [(0.1, S), (0.2, C), (0.2, S), (0.4, C), (0.4, C), (0.4, C)],
    ),
    "judge last: the same window is no gain (the paper)": (
        dict(phase1_patience=1), 2.0,
        [1.5, 1.0, 1.6, 1.2, 1.45, 1.3],  # the last epoch ends a cut window: judged, 1.3 < 1.45
        [(0.1, S), (0.2, C), (0.2, C), (0.2, C), (0.2, S), (0.4, S)],
    ),
    "judge mean: the second try's mean counts its own epochs only": (
        dict(phase1_patience=1, judge="mean"), 2.0,
        # first try mean(1.6, 1.6) = 1.6; second try mean(1.45, 1.5) = 1.475 < 1.5 (with the
        # first try's epochs in it the mean would be 1.5375: no gain)
        [1.5, 1.6, 1.6, 1.45, 1.5, 1.6],
        [(0.1, S), (0.2, C), (0.2, C), (0.2, C), (0.2, S), (0.4, C)],
    ),
}


@pytest.mark.parametrize("name", list(SCRIPTS))
def test_scripted_branches(name):
    kwargs, initial, losses, expected = SCRIPTS[name]
    ctl, rows = run(initial, losses, **dict(kwargs))
    assert [(lr, action) for lr, action, _ in rows] == expected
    assert ctl.finished and ctl.epoch == len(losses)


def test_patience_and_phase_bookkeeping():
    ctl, rows = run(2.0, [1.5, 1.6, 1.6, 1.6, 1.6, NAN], phase1_patience=1, max_epochs=20)
    assert [p for _, _, p in rows] == [1, 1, 1, 1, 2, 4]
    assert ctl.phase == 2 and ctl.best_loss == 1.5 and ctl.window_length == 5
    assert ctl.lr == pytest.approx(0.05)


def test_judge_mean_keeps_the_judged_mean_as_the_best_loss():
    ctl, _ = run(2.0, [1.5, 1.0, 1.6], phase1_patience=1, judge="mean", max_epochs=10)
    assert ctl.best_loss == pytest.approx(1.3)


def test_a_state_saved_before_the_new_options_loads_and_runs_as_the_paper():
    ctl, _ = run(2.0, [1.5, 1.6, 1.6], phase1_patience=1, max_epochs=12)
    old = {k: v for k, v in ctl.state_dict().items() if k not in AALR._ADDED}
    rebuilt = AALR.from_state_dict(json.loads(json.dumps(old)))
    assert (rebuilt.judge, rebuilt.significant_gain, rebuilt.restore_if_worse) == ("last", False, False)
    rest = [1.6, 1.4, NAN, 1.3, 1.2, 1.25, 1.1, 1.0, 1.05]
    assert drive(rebuilt, rest) == drive(ctl, rest)


def test_rollback_keeps_best_loss():
    ctl, _ = run(2.0, [1.5, 1.4, 1.3, NAN], phase1_patience=1, max_epochs=10)
    assert ctl.best_loss == 1.3


def test_phase1_never_ends_when_every_loss_is_bad():
    ctl, rows = run(2.0, [NAN] * 8, phase1_patience=10)
    assert all(action is I for _, action, _ in rows)
    assert ctl.phase == 1 and ctl.finished
    assert ctl.lr == pytest.approx(0.1 / 2**8)


def test_misuse_is_reported():
    ctl = AALR(max_epochs=1)
    with pytest.raises(RuntimeError, match="start"):
        ctl.step(1.0)
    ctl.start(2.0)
    with pytest.raises(RuntimeError, match="already"):
        ctl.start(2.0)
    ctl.step(1.0)
    with pytest.raises(RuntimeError, match="already trained"):
        ctl.step(1.0)


@pytest.mark.parametrize("kwargs, fragment", [
    (dict(max_epochs=0), "max_epochs"),
    (dict(max_epochs=5, initial_lr=0), "initial_lr"),
    (dict(max_epochs=5, initial_lr=math.nan), "initial_lr"),
    (dict(max_epochs=5, phase1_patience=0), "phase1_patience"),
    (dict(max_epochs=5, window="book"), "text, pseudocode"),
    (dict(max_epochs=5, judge="median"), "last, mean"),
    (dict(max_epochs=5, restore_on_decrease=True, restore_if_worse=True), "exclude each other"),
])
def test_bad_configuration(kwargs, fragment):
    with pytest.raises(ValueError, match=fragment):
        AALR(**kwargs)


def test_import_pulls_in_neither_torch_nor_ray():
    code = "import aalr_ray.core, sys; assert 'torch' not in sys.modules and 'ray' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


# ---------------------------------------------------------------- properties
losses = st.lists(
    st.one_of(st.floats(0.0, 5.0), st.sampled_from([NAN, INF, 2.0])), min_size=1, max_size=80)
configs = st.fixed_dictionaries({
    "max_epochs": st.integers(1, 60),
    "phase1_patience": st.integers(1, 10),
    "window": st.sampled_from(["text", "pseudocode"]),
    "collapse_is_divergence": st.booleans(),
    "significant_gain": st.booleans(),
    "judge": st.sampled_from(["last", "mean"]),
    "restore": st.sampled_from([{}, {"restore_on_decrease": True}, {"restore_if_worse": True}]),
}).map(lambda c: {**{k: v for k, v in c.items() if k != "restore"}, **c["restore"]})


def drive(ctl, sequence):
    """Feed ``sequence`` cyclically until the run ends; return (lr, action) per epoch."""
    out = []
    i = 0
    while not ctl.finished:
        lr = ctl.lr
        loss = sequence[i % len(sequence)]
        out.append((lr, ctl.step(loss), loss))
        i += 1
    return out


@settings(max_examples=300, deadline=None)
@given(config=configs, sequence=losses)
def test_run_lasts_exactly_max_epochs(config, sequence):
    ctl = AALR(**config)
    ctl.start(2.0)
    assert len(drive(ctl, sequence)) == config["max_epochs"] == ctl.epoch


@settings(max_examples=300, deadline=None)
@given(config=configs, sequence=losses)
def test_lr_moves_by_factors_of_two_and_bad_losses_roll_back(config, sequence):
    ctl = AALR(**config)
    ctl.start(2.0)
    trace = drive(ctl, sequence)
    lrs = [lr for lr, _, _ in trace] + [ctl.lr]
    for before, after in zip(lrs, lrs[1:]):
        assert after / before in (0.5, 1.0, 2.0)
    for _, action, loss in trace:
        if not math.isfinite(loss):
            assert action in (Action.RESTORE_BEST, Action.RESTORE_INITIAL)


@settings(max_examples=300, deadline=None)
@given(config=configs, sequence=losses, cut=st.integers(0, 60))
def test_json_round_trip_gives_the_same_future(config, sequence, cut):
    original = AALR(**config)
    original.start(2.0)
    cut = min(cut, config["max_epochs"])
    for i in range(cut):
        original.step(sequence[i % len(sequence)])
    rebuilt = AALR.from_state_dict(json.loads(json.dumps(original.state_dict())))
    assert json.dumps(rebuilt.state_dict()) == json.dumps(original.state_dict())
    rest = sequence[cut % len(sequence):] + sequence[:cut % len(sequence)]
    assert drive(rebuilt, rest) == drive(original, rest)
