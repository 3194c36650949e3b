"""Wrapper trainables and a driver that the Ray tests run (workers import this module by name).

Run as a script it is a Tune driver in its own process, so a test can
interrupt it the way a user would (Ctrl-C) and then restore the experiment.
"""
import json
import os
import sys
import time
from pathlib import Path

from ray import tune

from aalr_ray import train
from aalr_ray.trainable import aalr_trainable


def _patch_epoch(hook):
    """Run ``hook(run)`` before every epoch of every TrainingRun in this worker process."""
    original = train.TrainingRun.train_one_epoch

    def patched(self):
        hook(self)
        return original(self)

    train.TrainingRun.train_one_epoch = patched


def flaky_trainable(config):
    """Dies (os._exit) once, at the start of epoch ``die_at``, like a killed worker."""
    marker = Path(config["marker"])

    def hook(run):
        if run.epoch + 1 == config["die_at"] and not marker.exists():
            marker.touch()
            os._exit(1)

    _patch_epoch(hook)
    aalr_trainable(config)


def corrupt_then_die_trainable(config):
    """A checkpoint damaged, then a death like a killed worker's, so that the retry resumes from it.

    config["fault"]: "corrupt": on its first start, report a checkpoint whose
    run.pt is truncated (as by a crash mid-copy); "lose_snapshot": train 2
    epochs, then delete the trial's snapshot files (as by hand) and die.
    Otherwise (None) the plain trainable.
    """
    import tempfile

    from aalr_ray._ray_compat import trial_storage
    from aalr_ray.checkpoints import SNAPSHOT_DIR
    from aalr_ray.trainable import CHECKPOINT_FILE

    if config.get("fault") == "corrupt" and tune.get_checkpoint() is None:
        with tempfile.TemporaryDirectory() as directory:
            Path(directory, CHECKPOINT_FILE).write_bytes(b"PK\x03\x04 cut short")
            tune.report({"epochs_done": 0}, checkpoint=tune.Checkpoint.from_directory(directory))
        os._exit(1)
    if config.get("fault") == "lose_snapshot" and tune.get_checkpoint() is None:
        fs, trial_path = trial_storage()

        def lose_snapshots(run):
            if run.epoch == 2:
                fs.delete_dir(f"{trial_path}/{SNAPSHOT_DIR}")
                os._exit(1)

        _patch_epoch(lose_snapshots)
    aalr_trainable(config)


def slow_trainable(config):
    """Sleeps before each epoch so that a test can interrupt the driver mid-run."""
    _patch_epoch(lambda run: time.sleep(config["sleep_s"]))
    aalr_trainable(config)


def tuner(trainable, param_space, storage, name, max_failures=0):
    return tune.Tuner(
        tune.with_resources(trainable, {"cpu": 1}),
        param_space=param_space,
        run_config=tune.RunConfig(name=name, storage_path=str(storage), verbose=0,
                                  failure_config=tune.FailureConfig(max_failures=max_failures)),
    )


if __name__ == "__main__":  # python tune_helpers.py STORAGE NAME PARAM_SPACE_JSON MAX_FAILURES
    import ray

    storage, name, space, max_failures = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), int(sys.argv[4])
    space = {k: tune.grid_search(v["grid_search"]) if isinstance(v, dict) and "grid_search" in v else v
             for k, v in space.items()}
    ray.init(address="local", num_cpus=2, include_dashboard=False)
    tuner(slow_trainable, space, storage, name, max_failures).fit()


# ------------------------------------------------- stub trials for the scheduler's unit tests
def stub_trial(config=None, num_to_keep=None):
    """A Tune Trial that never runs, in RUNNING state: what a scheduler sees of a live trial."""
    from ray.train import CheckpointConfig
    from ray.tune import PlacementGroupFactory
    from ray.tune.experiment import Trial

    trial = Trial("aalr_stub", stub=True, config=dict(config or {"seed": 0}),
                  checkpoint_config=CheckpointConfig(num_to_keep=num_to_keep))
    trial.placement_group_factory = PlacementGroupFactory([{"CPU": 1}])  # for JSON snapshots
    trial.set_status(Trial.RUNNING)
    return trial


def register(trial, name, metrics):
    """What Tune's controller does with a saved checkpoint; returns the checkpoint."""
    from ray.train import Checkpoint

    from aalr_ray import _ray_compat

    checkpoint = Checkpoint(path=f"/nonexistent/{trial.trial_id}/{name}")
    trial.run_metadata.checkpoint_manager.register_checkpoint(_ray_compat.training_result(checkpoint, dict(metrics)))
    return checkpoint
