"""One training run: every method learns, runs are reproducible, resume is exact."""

import io

import pytest
import torch

import factories
from aalr_ray.core import AALR
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


# DAdaptSGD at its documented defaults overshoots on this workload (measured with
# and without momentum and weight decay): it has its own test below. Whether its
# loss, hovering at chance (ln 10 = 2.303), dips below the first epoch's is a
# coin toss of the CPU's rounding, so it is not part of this one.
DIVERGES_AT_DEFAULTS = {"dadapt"}
LEARNING_METHODS = [m for m in method_names() if m not in DIVERGES_AT_DEFAULTS]


# Margins (measured under ATEN_CPU_CAPABILITY=default and avx2): the best later epoch is 33-63 %
# below the first epoch's loss, except DoG and SGD-HD, whose tiny initial steps lower it steadily
# (by 5e-4 and 2e-4 relative after 5 epochs, while the two kernels' losses agree to 3e-7).
@pytest.mark.cpu_sensitive
@pytest.mark.parametrize("method", LEARNING_METHODS)
def test_every_method_lowers_the_training_loss(method, mnist1d):
    run = TrainingRun(config(method, epochs=5), data=mnist1d)
    rows = list(run)
    assert [row["epoch"] for row in rows] == [1, 2, 3, 4, 5]
    assert min(row["train_loss"] for row in rows[1:]) < min(rows[0]["train_loss"], run.initial_loss)
    assert all(row["lr"] >= 0 for row in rows)
    assert 0.0 <= run.summary()["final_test_acc"] <= 1.0


@pytest.mark.cpu_sensitive
def test_dadapt_stays_at_chance_at_its_defaults(mnist1d):
    """The finding, asserted with margins: D-Adaptation's step size jumps from about 1e-3
    in the first epoch to 6 (SGD's is 0.1), and the network stays at chance (10 classes,
    0.09-0.12) on the test set in every epoch; SGD with step decay reaches 46 % in these
    5 epochs. A fix makes this test fail."""
    rows = list(TrainingRun(config("dadapt", epochs=5), data=mnist1d))
    lrs = [row["lr"] for row in rows]
    assert lrs[0] < 0.01 and max(lrs) > 1.0, lrs
    assert all(row["test_acc"] < 0.2 for row in rows), [row["test_acc"] for row in rows]


# factories.cnn_nan_in_epochs outputs NaN in data epochs 2 and 9 (of seed 0); at the paper's
# LR 0.1 with a 3-epoch phase 1 every other judged epoch beats the best by at least 1 %
# (tests/test_equivalence.py has the schedule), so the rows pass through every action.
ROW_ACTIONS = ["continue", "restore_initial", "continue", "continue", "save_best", "continue", "save_best",
               "continue", "restore_best"]


@pytest.mark.cpu_sensitive
def test_aalr_rows_carry_the_controller_state(mnist1d):
    epochs = len(ROW_ACTIONS)
    run = TrainingRun(RunConfig(model="factories:cnn_nan_in_epochs", dataset="mnist1d", method="aalr",
                                epochs=epochs, seed=factories.NAN_SEED, method_options={"phase1_patience": 3}),
                      data=mnist1d)
    rows = list(run)
    assert {"phase", "patience", "best_loss", "action"} <= rows[0].keys()
    assert [row["action"] for row in rows] == ROW_ACTIONS
    assert [row["epoch"] for row in rows if row["bad_loss"]] == [2, 9]
    # Each row holds the LR its epoch used and the state after its decision: what a bare
    # core fed the same losses holds.
    core = AALR(epochs, phase1_patience=3)
    core.start(run.initial_loss)
    for row in rows:
        assert row["lr"] == core.lr, row
        action = core.step(row["train_loss"])
        assert (row["action"], row["phase"], row["patience"], row["best_loss"]) == (
            action.value, core.phase, core.patience, core.best_loss), row
    assert rows[0]["phase"] == 1 and rows[-1]["phase"] == 2 and rows[-1]["patience"] == 2


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


def test_data_parallel_hooks_are_constructor_arguments(mnist1d):
    """One rank of one (shard (0, 1), identity hooks) is the single-process run, and uses the hooks."""
    plain = strip(TrainingRun(config("aalr", epochs=2), data=mnist1d))
    reduced, wrapped = [], []

    def reduce_loss(loss):
        reduced.append(loss)
        return loss

    def wrap_model(model):
        wrapped.append(model)
        return torch.nn.Sequential(model)  # another module around the same weights

    run = TrainingRun(config("aalr", epochs=2), data=mnist1d, shard=(0, 1), reduce_loss=reduce_loss,
                      wrap_model=wrap_model)
    assert run.shard == (0, 1) and run.reduce_loss is reduce_loss and wrapped == [run.model]
    assert run.train_model is not run.model
    assert strip(run) == plain
    assert len(reduced) == 3  # J(theta_0) and the two epoch losses
    with pytest.raises(ValueError, match="rank"):
        TrainingRun(config("aalr"), data=mnist1d, shard=(2, 2))


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
