"""One deterministic run, three ways: the PyTorch controller in one process, the Ray
trainable, and a PBT-style trainable driven by AALRScheduler. Same LR per epoch."""

import json
from pathlib import Path

import pytest
import torch
from ray import tune

import tune_helpers
from aalr_ray.data import load_dataset
from aalr_ray.scheduler import AALRScheduler
from aalr_ray.train import RunConfig, TrainingRun
from aalr_ray.trainable import aalr_trainable, load_checkpoint_dir

pytestmark = pytest.mark.ray
EPOCHS = 16
# Short phase 1 and collapse-as-divergence, so that 16 epochs of ConvBase on
# MNIST-1D (seed 0) pass through phase 1, two doublings, a failed second try,
# a halving and a rollback to the best checkpoint.
OPTIONS = {"phase1_patience": 3, "collapse_is_divergence": True}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("data")
    load_dataset("mnist1d", data_dir=directory)
    return str(directory)


@pytest.fixture(scope="module")
def in_process(data_dir):
    run = TrainingRun(RunConfig(model="mnist1d-cnn", dataset="mnist1d", method="aalr", epochs=EPOCHS, seed=0,
                                data_dir=data_dir, method_options=OPTIONS))
    return run, list(run)


def test_the_run_passes_through_every_branch(in_process):
    _, rows = in_process
    actions = [r["action"] for r in rows]
    lrs = [r["lr"] for r in rows]
    assert rows[0]["phase"] == 1 and rows[-1]["phase"] == 2
    assert actions.count("save_best") >= 2 and "restore_best" in actions
    assert any(b == 2 * a for a, b in zip(lrs, lrs[1:])) and any(b == a / 2 for a, b in zip(lrs, lrs[1:]))
    assert any(r["patience"] >= 2 for r in rows)  # a failed second try doubled the patience


def test_three_paths_give_the_same_lr_per_epoch(local_ray, data_dir, in_process, tmp_path):
    run, rows = in_process
    expected_lrs = [r["lr"] for r in rows]

    # 2. The Ray trainable (AALR decided in the trial).
    config = {"model": "mnist1d-cnn", "dataset": "mnist1d", "method": "aalr", "epochs": EPOCHS, "seed": 0,
              "data_dir": data_dir, "method_options": OPTIONS}
    result = tune_helpers.tuner(aalr_trainable, config, tmp_path, "trainable").fit()[0]
    with result.checkpoint.as_directory() as directory:
        state, trial_rows = load_checkpoint_dir(Path(directory))
    assert [r["lr"] for r in trial_rows] == expected_lrs
    assert [r["train_loss"] for r in trial_rows] == [r["train_loss"] for r in rows]

    # 3. An unmodified PBT-style trainable under AALRScheduler (restarts per LR change).
    scheduler = AALRScheduler(metric="train_loss", max_epochs=EPOCHS, **OPTIONS)
    tuner = tune.Tuner(
        tune.with_resources(tune_helpers.pbt_style_trainable, {"cpu": 1}),
        param_space={"seed": 0, "data_dir": data_dir, "lr_log": str(tmp_path / "lr_log.jsonl")},
        tune_config=tune.TuneConfig(scheduler=scheduler, reuse_actors=True),
        run_config=tune.RunConfig(name="scheduler", storage_path=str(tmp_path), verbose=0,
                                  checkpoint_config=tune.CheckpointConfig(num_to_keep=None)))
    result = tuner.fit()[0]
    assert result.error is None
    trained = [json.loads(line) for line in (tmp_path / "lr_log.jsonl").read_text().splitlines()]
    assert [entry["epoch"] for entry in trained] == list(range(1, EPOCHS + 1))  # each epoch once
    assert [entry["lr"] for entry in trained] == expected_lrs
    assert [entry["loss"] for entry in trained] == [r["train_loss"] for r in rows]
    restarts = scheduler.restart_counts()
    assert restarts["restore_best"] >= 1 and restarts["lr_change"] >= 3

    # Final weights: the scheduler's last checkpoint holds what the controller ended with.
    final = torch.load(Path(result.checkpoint.path) / "state.pt", weights_only=True)["model"]
    for key, value in run.model.state_dict().items():
        assert torch.equal(final[key], value), key
