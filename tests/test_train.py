"""One training run: every method learns, runs are reproducible, resume is exact."""

import io

import pytest
import torch

from aalr_ray.data import load_dataset
from aalr_ray.methods import method_names
from aalr_ray.train import RunConfig, TrainingRun

TIMINGS = ("epoch_s", "eval_s")


@pytest.fixture(scope="module")
def mnist1d(tmp_path_factory):
    return load_dataset("mnist1d", data_dir=tmp_path_factory.mktemp("data"))


def config(method="aalr", epochs=4, **kwargs):
    return RunConfig(model="mnist1d-cnn", dataset="mnist1d", method=method, epochs=epochs, **kwargs)


def strip(rows):
    return [{k: v for k, v in row.items() if k not in TIMINGS} for row in rows]


# DAdaptSGD at its documented defaults overshoots on this workload: its step
# size estimate jumps from 1e-3 to about 40 within four epochs and the loss
# stays at chance (measured with and without momentum and weight decay). The
# strict xfail keeps that finding honest: a fix makes this test fail.
DIVERGES_AT_DEFAULTS = {"dadapt"}
LEARNING_METHODS = [
    pytest.param(m, marks=pytest.mark.xfail(strict=True, reason="DAdaptSGD diverges to chance here at its defaults"))
    if m in DIVERGES_AT_DEFAULTS else m
    for m in method_names()
]


@pytest.mark.parametrize("method", LEARNING_METHODS)
def test_every_method_lowers_the_training_loss(method, mnist1d):
    run = TrainingRun(config(method, epochs=5), data=mnist1d)
    rows = list(run)
    assert [row["epoch"] for row in rows] == [1, 2, 3, 4, 5]
    assert min(row["train_loss"] for row in rows[1:]) < min(rows[0]["train_loss"], run.initial_loss)
    assert all(row["lr"] >= 0 for row in rows)
    assert 0.0 <= run.summary()["final_test_acc"] <= 1.0


def test_aalr_rows_carry_the_controller_state(mnist1d):
    rows = list(TrainingRun(config("aalr", epochs=12), data=mnist1d))
    assert {"phase", "patience", "best_loss", "action"} <= rows[0].keys()
    assert rows[0]["phase"] == 1 and rows[-1]["phase"] == 2  # 10 epochs of phase 1 on this data
    assert any(row["action"] == "save_best" for row in rows)


def test_same_seed_same_run_bit_for_bit(mnist1d):
    first = TrainingRun(config("aalr", epochs=4, seed=3), data=mnist1d)
    second = TrainingRun(config("aalr", epochs=4, seed=3), data=mnist1d)
    assert strip(first) == strip(second)
    for a, b in zip(first.model.state_dict().values(), second.model.state_dict().values()):
        assert torch.equal(a, b)
    other = TrainingRun(config("aalr", epochs=1, seed=4), data=mnist1d)
    assert strip(other)[0]["train_loss"] != strip(TrainingRun(config("aalr", epochs=1, seed=3), data=mnist1d))[0]["train_loss"]


@pytest.mark.parametrize("method", method_names())
def test_resume_from_a_checkpoint_continues_bit_for_bit(method, mnist1d):
    whole = TrainingRun(config(method, epochs=6), data=mnist1d)
    expected = strip(whole)

    part = TrainingRun(config(method, epochs=6), data=mnist1d)
    head = [part.train_one_epoch() for _ in range(3)]
    buffer = io.BytesIO()
    torch.save(part.state_dict(), buffer)
    buffer.seek(0)
    resumed = TrainingRun(config(method, epochs=6), data=mnist1d)
    resumed.load_state_dict(torch.load(buffer, weights_only=True))
    assert strip(head) + strip(resumed) == expected
    for a, b in zip(whole.model.state_dict().values(), resumed.model.state_dict().values()):
        assert torch.equal(a, b)


def test_a_checkpoint_of_another_run_is_refused(mnist1d):
    run = TrainingRun(config("aalr", epochs=3), data=mnist1d)
    run.train_one_epoch()
    other = TrainingRun(config("step", epochs=3), data=mnist1d)
    with pytest.raises(ValueError, match="method"):
        other.load_state_dict(run.state_dict())


def test_digits_small_cnn_learns(tmp_path):
    run = TrainingRun(RunConfig(model="small-cnn", dataset="digits", method="aalr", epochs=3,
                                data_dir=str(tmp_path)))
    rows = list(run)
    assert rows[-1]["train_loss"] < run.initial_loss


@pytest.mark.parametrize("bad", [dict(epochs=0), dict(batch_size=-1), dict(training="telepathy"),
                                 dict(epoch_loss="vibes")])
def test_bad_run_config(bad):
    with pytest.raises(ValueError):
        config(**bad)
