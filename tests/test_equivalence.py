"""One deterministic run, three ways: the PyTorch controller in one process, the Ray
trainable, and a PBT-style trainable driven by AALRScheduler. Same LR per epoch.

The run passes through every kind of restart by construction, not by where one
CPU's rounding happens to lead the training: the model (tests/factories.py's
cnn_nan_in_epochs) outputs NaN in data epochs 2 and 9, which every path
recognises the same way (the global torch seed of the epoch), and the LRs stay
at or below 0.2, where each judged epoch of ConvBase on MNIST-1D beats the best
loss by at least 1 % (measured under ATEN_CPU_CAPABILITY=default and avx2; their
losses differ by about 1e-7 relative up to epoch 7, 1e-4 at epoch 8).
"""

import json
import math
from pathlib import Path

import pytest
import torch
from ray import tune

import factories
import tune_helpers
from aalr_ray.examples import pbt_trainable
from aalr_ray.scheduler import AALRScheduler
from aalr_ray.train import RunConfig, TrainingRun
from aalr_ray.trainable import aalr_trainable, load_checkpoint_dir

pytestmark = pytest.mark.ray
MODEL = "factories:cnn_nan_in_epochs"
SEED = factories.NAN_SEED
EPOCHS = 12
# The paper's initial LR 0.1 and a short phase 1. collapse_is_divergence travels to
# every path too; no loss of this run comes near J(theta_0) in phase 2, so it never fires.
OPTIONS = {"phase1_patience": 3, "collapse_is_divergence": True}
# What the construction forces, epoch by epoch (the LR the epoch used, the decision after it):
#  1     0.1   continue          phase 1, 1 of 3 (2.19 < J(theta_0) = 2.30: 4.9 % margin)
#  2     0.1   restore_initial   NaN: theta_0 and a fresh optimizer, LR halved
#  3-4   0.05  continue          phase 1 again (margins 1.1 %, 18 %)
#  5     0.05  save_best         phase 2 (14 %): LR doubled, windows of 2 epochs
#  6-7   0.1   save_best at 7    1.31 < 1.61 (19 %): doubled
#  8-9   0.2   restore_best      NaN at 9: back to epoch 7's weights, LR halved, patience 2
# 10-12  0.1   save_best at 12   the 3-epoch window: 0.70 < 1.31 (47 %); the run ends
EXPECTED_LRS = [0.1, 0.1] + [0.05] * 3 + [0.1] * 2 + [0.2] * 2 + [0.1] * 3
EXPECTED_ACTIONS = ["continue", "restore_initial", "continue", "continue", "save_best", "continue",
                    "save_best", "continue", "restore_best", "continue", "continue", "save_best"]
EXPECTED_PATIENCE = [1] * 8 + [2] * 3 + [1]
assert sorted(factories.NAN_EPOCHS) == [2, 9] and len(EXPECTED_LRS) == EPOCHS


def same_losses(a, b):
    """Bit for bit, NaN included (NaN != NaN, and JSON hands back a new float object)."""
    return [repr(float(x)) for x in a] == [repr(float(x)) for x in b]


@pytest.fixture(scope="module")
def in_process(data_dir):
    run = TrainingRun(RunConfig(model=MODEL, dataset="mnist1d", method="aalr", epochs=EPOCHS, seed=SEED,
                                data_dir=data_dir, method_options=OPTIONS))
    return run, list(run)


@pytest.mark.cpu_sensitive
def test_the_run_passes_through_every_branch(in_process):
    run, rows = in_process
    # The NaNs fell in the chosen data epochs, and only there.
    assert [r["epoch"] for r in rows if r["bad_loss"]] == list(factories.NAN_EPOCHS)
    assert [r["action"] for r in rows] == EXPECTED_ACTIONS
    assert [r["lr"] for r in rows] == EXPECTED_LRS
    assert [r["phase"] for r in rows] == [1] * 4 + [2] * 8
    assert [r["patience"] for r in rows] == EXPECTED_PATIENCE
    # Every judged epoch beat the best by a wide margin, so no CPU's rounding can flip it.
    best = run.initial_loss
    for row in rows:
        if row["action"] == "restore_initial":
            best = run.initial_loss
        elif row["action"] == "save_best" or (row["phase"] == 1 and not row["bad_loss"]):
            assert row["train_loss"] < 0.99 * best, row
            best = row["train_loss"]
    # collapse_is_divergence never comes near firing in phase 2 (epochs 6-12).
    for row in rows[EXPECTED_ACTIONS.index("save_best") + 1:]:
        assert row["bad_loss"] or row["train_loss"] < 0.7 * run.initial_loss, row
    assert rows[-1]["best_loss"] == rows[-1]["train_loss"]


def test_three_paths_give_the_same_lr_per_epoch(local_ray, data_dir, in_process, tmp_path):
    run, rows = in_process
    expected_lrs = [r["lr"] for r in rows]
    assert expected_lrs == EXPECTED_LRS  # the construction held in process

    # 2. The Ray trainable (AALR decided in the trial).
    config = {"model": MODEL, "dataset": "mnist1d", "method": "aalr", "epochs": EPOCHS, "seed": SEED,
              "data_dir": data_dir, "method_options": OPTIONS}
    result = tune_helpers.tuner(aalr_trainable, config, tmp_path, "trainable").fit()[0]
    with result.checkpoint.as_directory() as directory:
        state, trial_rows = load_checkpoint_dir(Path(directory))
    assert [r["lr"] for r in trial_rows] == expected_lrs
    assert [r["action"] for r in trial_rows] == EXPECTED_ACTIONS
    assert same_losses([r["train_loss"] for r in trial_rows], [r["train_loss"] for r in rows])
    for key, value in run.model.state_dict().items():
        assert torch.equal(state["model"][key], value), key

    # 3. An unmodified PBT-style trainable (aalr_ray.examples) under AALRScheduler (restarts per LR change).
    scheduler = AALRScheduler(metric="train_loss", max_epochs=EPOCHS, **OPTIONS)
    tuner = tune.Tuner(
        tune.with_resources(pbt_trainable, {"cpu": 1}),
        param_space={"model": MODEL, "seed": SEED, "data_dir": data_dir, "log": str(tmp_path / "lr_log.jsonl")},
        tune_config=tune.TuneConfig(scheduler=scheduler, reuse_actors=True),
        run_config=tune.RunConfig(name="scheduler", storage_path=str(tmp_path), verbose=0,
                                  checkpoint_config=tune.CheckpointConfig(num_to_keep=None)))
    result = tuner.fit()[0]
    assert result.error is None
    trained = [json.loads(line) for line in (tmp_path / "lr_log.jsonl").read_text().splitlines()]
    assert [entry["epoch"] for entry in trained] == list(range(1, EPOCHS + 1))  # each epoch once
    assert [entry["lr"] for entry in trained] == expected_lrs
    assert same_losses([entry["loss"] for entry in trained], [r["train_loss"] for r in rows])
    assert [e["epoch"] for e in trained if math.isnan(e["loss"])] == list(factories.NAN_EPOCHS)
    # Doublings at epochs 5 and 7 (epoch 12's save ends the run: a stop, not a restart),
    # the rollback to theta_0 at 2 and to the best at 9.
    assert scheduler.restart_counts() == {"lr_change": 2, "restore_best": 1, "restore_initial": 1}

    # Final weights: the scheduler's last checkpoint holds what the controller ended with.
    final = torch.load(Path(result.checkpoint.path) / "state.pt", weights_only=True)["model"]
    for key, value in run.model.state_dict().items():
        assert torch.equal(final[key], value), key
