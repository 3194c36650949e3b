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
    """With config["corrupt"]: on its first start, report a checkpoint whose run.pt
    is truncated (as by a crash mid-copy), then die like a killed worker, so that
    the retry resumes from the corrupt file. Otherwise the plain trainable."""
    import tempfile

    from aalr_ray.trainable import CHECKPOINT_FILE

    if config.get("corrupt") and tune.get_checkpoint() is None:
        with tempfile.TemporaryDirectory() as directory:
            Path(directory, CHECKPOINT_FILE).write_bytes(b"PK\x03\x04 cut short")
            tune.report({"epochs_done": 0}, checkpoint=tune.Checkpoint.from_directory(directory))
        os._exit(1)
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


def pbt_style_trainable(config):
    """A trainable written for PBT, unaware of AALR: SGD at config["lr"], a checkpoint
    (model, optimizer, epoch) and the training loss every epoch, J(theta_0) first.

    It builds the same pieces as aalr_ray's own run (config["model"], default
    mnist1d-cnn (ConvBase), MNIST-1D, SGD with momentum 0.9 and weight decay 5e-4)
    so the test can compare the three paths; like TrainingRun it seeds torch with
    epoch_seed(seed, epoch) before each epoch (0: the J(theta_0) pass).
    Its data epoch is config["aalr_epochs_done"] + 1 after a restart: the count of
    epochs trained, which a rollback does not rewind.
    """
    import tempfile

    import torch

    from aalr_ray.controller import atomic_torch_save, measure_loss, train_epoch
    from aalr_ray.data import load_dataset
    from aalr_ray.models import build_model
    from aalr_ray.train import epoch_seed

    torch.set_num_threads(1)
    data = load_dataset("mnist1d", data_dir=config["data_dir"])
    spec = data.spec
    torch.manual_seed(config["seed"])
    model = build_model(config.get("model", "mnist1d-cnn"), spec.num_classes, spec.input_shape,
                        mean=spec.mean, std=spec.std)
    optimizer = torch.optim.SGD(model.parameters(), lr=config["lr"], momentum=0.9, weight_decay=5e-4)
    loss_fn = torch.nn.functional.cross_entropy

    def batches(epoch):
        return data.batches("train", 128, seed=config["seed"], epoch=epoch)

    checkpoint = tune.get_checkpoint()
    initial_loss = None
    if checkpoint is not None:
        with checkpoint.as_directory() as directory:
            state = torch.load(Path(directory) / "state.pt", weights_only=True)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        for group in optimizer.param_groups:  # a loaded optimizer carries its old LR
            group["lr"] = config["lr"]
    else:
        torch.manual_seed(epoch_seed(config["seed"], 0))
        initial_loss = measure_loss(model, batches(0), loss_fn)
    epoch = config.get("aalr_epochs_done", 0)
    while True:  # the scheduler stops the trial
        epoch += 1
        torch.manual_seed(epoch_seed(config["seed"], epoch))
        loss = train_epoch(model, optimizer, batches(epoch), loss_fn)
        with open(config["lr_log"], "a") as log:  # every trained epoch, rolled back or not
            log.write(json.dumps({"epoch": epoch, "lr": config["lr"], "loss": loss}) + "\n")
        metrics = {"train_loss": loss, "lr_used": config["lr"], "data_epoch": epoch}
        if initial_loss is not None:
            metrics["initial_loss"] = initial_loss
            initial_loss = None
        with tempfile.TemporaryDirectory() as directory:
            atomic_torch_save({"model": model.state_dict(), "optimizer": optimizer.state_dict()},
                              Path(directory) / "state.pt")
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(directory))
