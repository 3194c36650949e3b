"""The Ray Tune trainable on a real local Ray: exact resume, crashes, restores, bad checkpoints."""

import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from ray import tune

import tune_helpers
from aalr_ray.results import RUN_CONTEXT_FIELDS
from aalr_ray.train import RunConfig, TrainingRun
from aalr_ray.trainable import CHECKPOINT_FILE, ROWS_FILE, aalr_trainable, load_checkpoint_dir, read_rows

pytestmark = pytest.mark.ray
TIMINGS = (*RUN_CONTEXT_FIELDS, "final_test_loss", "final_test_acc", "epochs", "epochs_done")
EPOCHS = 14  # ConvBase on MNIST-1D: phase 1 ends at 10, then doublings and a second try


def space(data_dir, **overrides):
    return {"model": "mnist1d-cnn", "dataset": "mnist1d", "method": "aalr", "epochs": EPOCHS, "seed": 0,
            "data_dir": data_dir, **overrides}


def strip(rows):
    return [{k: v for k, v in row.items() if k not in TIMINGS} for row in rows]


def plain_run(config):
    run = TrainingRun(RunConfig(**{k: v for k, v in config.items() if k in RunConfig.__dataclass_fields__}))
    rows = list(run)
    return run, rows


@pytest.fixture(scope="module")
def reference(data_dir):
    """The uninterrupted run, in this process, without Ray."""
    return plain_run(space(data_dir))


def checkpoint_contents(result):
    with result.checkpoint.as_directory() as directory:
        return load_checkpoint_dir(Path(directory))


def assert_same_weights(state, model):
    for key, value in model.state_dict().items():
        assert torch.equal(state["model"][key], value), key


def test_trial_equals_the_plain_run_bit_for_bit(local_ray, data_dir, reference, tmp_path):
    run, expected = reference
    results = tune_helpers.tuner(aalr_trainable, space(data_dir), tmp_path, "plain").fit()
    result = results[0]
    assert result.error is None
    state, rows = checkpoint_contents(result)
    assert strip(rows) == strip(expected)
    assert [row["epochs_done"] for row in rows] == list(range(1, EPOCHS + 1))
    assert result.metrics["epochs_done"] == EPOCHS and "final_test_acc" in result.metrics
    assert_same_weights(state, run.model)
    assert strip(read_rows(Path(result.path) / ROWS_FILE)) == strip(expected)  # the live log


def test_killed_trial_is_retried_and_loses_nothing(local_ray, data_dir, reference, tmp_path):
    """It dies at the start of epoch 6; with checkpoint_every=4 it resumes from epoch 4 and trains 5 again.

    (Every epoch checkpointed, the default, is what the fault tests and tests/test_multinode.py run.)
    """
    run, expected = reference
    checkpoint_every = 4
    config = space(data_dir, marker=str(tmp_path / "died"), die_at=6, checkpoint_every=checkpoint_every)
    result = tune_helpers.tuner(tune_helpers.flaky_trainable, config, tmp_path, "flaky", max_failures=1).fit()[0]
    assert (tmp_path / "died").exists()  # it really died once
    assert result.error is None
    state, rows = checkpoint_contents(result)
    assert strip(rows) == strip(expected)
    live = read_rows(Path(result.path) / ROWS_FILE)
    assert [row["epoch"] for row in live] == list(range(1, EPOCHS + 1))  # every epoch exactly once
    assert_same_weights(state, run.model)
    # A checkpoint at every checkpoint_every-th epoch and the last, no other (Tune keeps them all here).
    written = sorted(int(p.name.split("_")[1]) for p in Path(result.path).glob("checkpoint_*"))
    epochs = [load_checkpoint_dir(Path(result.path) / f"checkpoint_{i:06d}")[0]["epoch"] for i in written]
    assert epochs == sorted({*range(checkpoint_every, EPOCHS + 1, checkpoint_every), EPOCHS})


def test_nan_from_the_first_epoch_ends_at_t_with_a_flag(local_ray, data_dir, tmp_path):
    config = space(data_dir, model="factories:nan_model", epochs=5)
    result = tune_helpers.tuner(aalr_trainable, config, tmp_path, "nan").fit()[0]
    assert result.error is None
    _, rows = checkpoint_contents(result)
    assert [row["epochs_done"] for row in rows] == [1, 2, 3, 4, 5]
    assert all(row["bad_loss"] and row["action"] == "restore_initial" for row in rows)
    assert [row["lr"] for row in rows] == [0.1, 0.05, 0.025, 0.0125, 0.00625]


def _interrupt_driver(storage, name, config, wait_for, max_failures=0):
    """Start a Tune driver in its own process; Ctrl-C it once ``wait_for()`` holds."""
    cmd = [sys.executable, tune_helpers.__file__, str(storage), name, json.dumps(config), str(max_failures)]
    driver = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    try:
        while not wait_for():
            assert driver.poll() is None, "the driver ended before it could be interrupted"
            assert time.time() < deadline, "the experiment made no progress"
            time.sleep(0.2)
        driver.send_signal(signal.SIGINT)
        driver.wait(timeout=120)
    finally:
        if driver.poll() is None:
            driver.kill()
    return storage / name


def _trial_dir(experiment, **params):
    """The trial directory whose params.json matches ``params``, or None."""
    for path in experiment.glob("*/params.json"):
        found = json.loads(path.read_text())
        if all(found.get(k) == v for k, v in params.items()):
            return path.parent
    return None


def _checkpoints(experiment, **params):
    """Checkpoint directories of a trial in storage (written synchronously by tune.report)."""
    trial = _trial_dir(experiment, **params)
    return sorted(trial.glob("checkpoint_*")) if trial else []


def test_driver_stopped_then_restored_continues_exactly(local_ray, data_dir, reference, tmp_path):
    _, expected = reference
    config = space(data_dir, epochs={"grid_search": [3, EPOCHS]}, sleep_s=0.5)
    experiment = tmp_path / "interrupted"
    _interrupt_driver(tmp_path, "interrupted", config,
                      lambda: len(_checkpoints(experiment, epochs=3)) == 3
                      and len(_checkpoints(experiment, epochs=EPOCHS)) >= 4)
    short_checkpoints = _checkpoints(experiment, epochs=3)
    assert len(_checkpoints(experiment, epochs=EPOCHS)) < EPOCHS  # really stopped mid-run

    results = tune.Tuner.restore(str(experiment), tune_helpers.slow_trainable, resume_unfinished=True).fit()
    by_epochs = {r.config["epochs"]: r for r in results}
    assert all(r.error is None for r in results)
    _, long_rows = checkpoint_contents(by_epochs[EPOCHS])
    assert strip(long_rows) == strip(expected)
    live = read_rows(_trial_dir(experiment, epochs=EPOCHS) / ROWS_FILE)
    assert [row["epoch"] for row in live] == list(range(1, EPOCHS + 1))
    assert _checkpoints(experiment, epochs=3) == short_checkpoints  # the finished trial was not re-run


def test_damaged_checkpoints_fail_their_trial_only_and_name_the_file(local_ray, data_dir, tmp_path):
    """A truncated run.pt (seed 0) and a checkpoint whose snapshot file was deleted (seed 1)."""
    faults = {0: "corrupt", 1: "lose_snapshot", 2: None}
    config = space(data_dir, seed=tune.grid_search([0, 1, 2]), epochs=4,
                   fault=tune.sample_from(lambda config: faults[config["seed"]]))
    results = tune_helpers.tuner(tune_helpers.corrupt_then_die_trainable, config, tmp_path, "corrupt",
                                 max_failures=1).fit()
    by_seed = {r.config["seed"]: r for r in results}
    assert by_seed[2].error is None and by_seed[2].metrics["epochs_done"] == 4
    message = str(by_seed[0].error)
    assert "cannot load checkpoint" in message and f"checkpoint_000000/{CHECKPOINT_FILE}" in message
    message = str(by_seed[1].error).strip().splitlines()[-1]
    assert re.search(r"checkpoint_000001: snapshot file \S+/snapshots/[0-9a-f]{32}\.pt is missing", message), message
    # Each was retried once per FailureConfig, from the same damaged checkpoint, before giving up.
    analysis = tune.ExperimentAnalysis(str(tmp_path / "corrupt"))
    failures = {t.config["seed"]: t.run_metadata.num_failures for t in analysis.trials}
    assert failures == {0: 2, 1: 2, 2: 0}


def test_resume_newest_passes_a_torn_newer_checkpoint_and_writes_after_it(data_dir, tmp_path, monkeypatch):
    """Tune restores checkpoint 0; 1 is whole, 2 (the newest) was cut short by the crash. The run
    resumes from 1, and Tune's next checkpoint is 3: never one of the directories that are deleted
    once it is reported (before, a fallback wrote into the torn one and then deleted it)."""
    import pyarrow.fs as pafs
    import ray.tune.context
    from ray.train._internal.storage import StorageContext

    from aalr_ray.checkpoints import SnapshotFiles
    from aalr_ray.trainable import resume_newest, write_checkpoint_dir

    trial = tmp_path / "exp" / "trial_0"
    config = RunConfig(model="mnist1d-cnn", dataset="mnist1d", method="aalr", epochs=3, data_dir=data_dir)
    files = lambda: SnapshotFiles(pafs.LocalFileSystem(), str(trial / "snapshots"))  # noqa: E731
    run, snapshots, rows = TrainingRun(config), files(), []
    for index in range(3):  # checkpoints 0, 1, 2 after epochs 1, 2, 3
        rows.append(run.train_one_epoch())
        (trial / f"checkpoint_{index:06d}").mkdir(parents=True)
        write_checkpoint_dir(run, rows, trial / f"checkpoint_{index:06d}", snapshots)
    (trial / "checkpoint_000002" / CHECKPOINT_FILE).write_bytes(b"PK\x03\x04 cut short")
    storage = StorageContext(storage_path=str(tmp_path), experiment_dir_name="exp", trial_dir_name="trial_0",
                             current_checkpoint_index=0)
    monkeypatch.setattr(ray.tune.context.session, "get_storage", lambda: storage)

    resumed = TrainingRun(config)
    given = tune.Checkpoint(str(trial / "checkpoint_000000"))
    back, unknown_to_ray = resume_newest(resumed, given, files(), pafs.LocalFileSystem(), str(trial))
    assert resumed.epoch == 2 and back == rows[:2]
    assert unknown_to_ray == [str(trial / "checkpoint_000002"), str(trial / "checkpoint_000001")]
    storage._update_checkpoint_index({})  # what Tune does before it writes the next checkpoint
    assert storage.checkpoint_dir_name == "checkpoint_000003"
