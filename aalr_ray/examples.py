"""An example Ray Tune function trainable written for PBT, to run under AALRScheduler.

:func:`pbt_trainable` is what a user's own trainable looks like when it is
written for PBT and knows nothing of AALR: it reads ``config["lr"]``, restores
model and optimizer from ``tune.get_checkpoint()`` (then sets the LR from the
config), and reports the training loss and a checkpoint every epoch, with
J(theta_0) (``initial_loss``) on its first result. It trains with the pieces of
aalr_ray's own run (``aalr_ray.controller.train_epoch``, a model of
``aalr_ray.models``, a dataset of ``aalr_ray.data``), so that at the same LRs
its epochs are those of :class:`aalr_ray.train.TrainingRun` bit for bit
(tests/test_equivalence.py compares the two). Under
:class:`aalr_ray.scheduler.AALRScheduler` it follows AALR's LR schedule, one
restart per LR change or rollback::

    from ray import tune
    from aalr_ray.examples import pbt_trainable
    from aalr_ray.scheduler import AALRScheduler

    tuner = tune.Tuner(
        tune.with_resources(pbt_trainable, {"cpu": 1}),
        param_space={"model": "mnist1d-cnn", "dataset": "mnist1d", "seed": tune.grid_search([0, 1])},
        tune_config=tune.TuneConfig(scheduler=AALRScheduler(metric="train_loss", max_epochs=30),
                                    reuse_actors=True),
        run_config=tune.RunConfig(checkpoint_config=tune.CheckpointConfig(num_to_keep=None)))
    tuner.fit()

With Tune's own ``PopulationBasedTraining`` (``"lr"`` in its mutations) or in a
plain Tune loop (``"lr"`` in the param space), give ``"max_epochs"`` (or a
``stop`` criterion): nothing else stops it.

:func:`pbt_loop` is its PBT part alone (restore, set the LR, train, report,
checkpoint), for trainables that bring their own model, data and epoch.

Nothing in the package imports this module; it is a top layer for the
README, the tests and the benchmarks.
"""
from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path
from typing import Callable

STATE_FILE = "state.pt"  # the checkpoint: {"model", "optimizer", "epoch"}
EPOCHS_DONE_KEY = "aalr_epochs_done"  # aalr_ray.scheduler.EPOCHS_KEY: epochs trained, rolled-back ones included


def pbt_trainable(config: dict) -> None:
    """A PBT-style trainable: SGD at ``config["lr"]``, a checkpoint and the training loss every epoch.

    Config: ``lr`` (set by the scheduler); ``seed`` (0); ``model``
    (``"mnist1d-cnn"``, any name or ``module:factory`` of ``aalr_ray.models``);
    ``dataset`` (``"mnist1d"``) and ``data_dir``; ``batch_size`` (128),
    ``momentum`` (0.9), ``weight_decay`` (5e-4): the paper's SGD; ``evaluate``
    (False: also report ``test_acc`` every epoch); ``max_epochs`` and ``log``
    as in :func:`pbt_loop`.

    Like TrainingRun it seeds torch with ``epoch_seed(seed, epoch)`` before each
    data epoch (0: the J(theta_0) pass), and its data epoch after a restart is
    ``config["aalr_epochs_done"] + 1``: the count of epochs trained, which a
    rollback does not rewind (without that key, the checkpoint's epoch).
    """
    import torch

    from aalr_ray.controller import measure_loss, train_epoch
    from aalr_ray.data import load_dataset
    from aalr_ray.models import build_model
    from aalr_ray.train import epoch_seed, evaluate

    started = time.time()
    torch.set_num_threads(1)  # one CPU per trial
    seed, batch_size = config.get("seed", 0), config.get("batch_size", 128)
    data = load_dataset(config.get("dataset", "mnist1d"), data_dir=config.get("data_dir"))
    spec = data.spec
    torch.manual_seed(seed)
    model = build_model(config.get("model", "mnist1d-cnn"), spec.num_classes, spec.input_shape,
                        mean=spec.mean, std=spec.std)
    optimizer = torch.optim.SGD(model.parameters(), lr=config["lr"], momentum=config.get("momentum", 0.9),
                                weight_decay=config.get("weight_decay", 5e-4))
    loss_fn = torch.nn.functional.cross_entropy

    def batches(epoch):
        return data.batches("train", batch_size, seed=seed, epoch=epoch)

    def initial_loss():
        torch.manual_seed(epoch_seed(seed, 0))
        return measure_loss(model, batches(0), loss_fn)

    def one_epoch(epoch):
        torch.manual_seed(epoch_seed(seed, epoch))
        loss = train_epoch(model, optimizer, batches(epoch), loss_fn)
        if not config.get("evaluate"):
            return loss, {}
        _, test_acc = evaluate(model, data.batches("test", batch_size, seed=seed, epoch=0))
        return loss, {"test_acc": test_acc}

    pbt_loop(config, model, optimizer, one_epoch, initial_loss, started=started)


def pbt_loop(config: dict, model, optimizer, one_epoch: Callable[[int], tuple[float, dict]],
             initial_loss: Callable[[], float], *, started: float | None = None,
             epoch_from_checkpoint: bool = False) -> None:
    """Restore, then train and report one epoch at a time until the scheduler stops the trial.

    Restores ``model`` and ``optimizer`` from ``tune.get_checkpoint()`` when there
    is one, else calls ``initial_loss()`` (J(theta_0), reported with the first
    result); then sets the optimizer's LR to ``config["lr"]`` (a loaded
    optimizer carries its old LR). Each epoch: ``one_epoch(epoch)`` (1-based)
    gives the training loss and extra metrics; the checkpoint
    (``{"model", "optimizer", "epoch"}`` in ``state.pt``) and the metrics
    ``train_loss``, ``lr_used``, ``data_epoch`` (and the extras) are reported.

    The epoch after a restart continues from ``config["aalr_epochs_done"]``
    (AALRScheduler's count of epochs trained), else from the checkpoint's; with
    ``epoch_from_checkpoint`` always from the checkpoint's (0 without one), so
    that the data order rewinds with a rollback. ``config["max_epochs"]``, when
    given, stops the loop once that epoch is done. ``config["log"]``, when given:
    a JSONL file that gets a line per trained epoch, rolled back or not
    (``epoch``, ``lr``, ``loss``, ``initial_loss``, the extras, ``pid``,
    ``started`` (``started``, on the first line of each start, else None),
    ``ready`` (restored and J(theta_0) measured, likewise) and ``reported``
    (just before ``tune.report``), as ``time.time()``).
    """
    import torch
    from ray import tune

    from aalr_ray.controller import atomic_torch_save

    lr = config["lr"]
    checkpoint = tune.get_checkpoint()
    restored_epoch, first_loss = 0, None
    if checkpoint is not None:
        with checkpoint.as_directory() as directory:
            state = torch.load(Path(directory) / STATE_FILE, weights_only=True)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        restored_epoch = state["epoch"]
    else:
        first_loss = initial_loss()
    for group in optimizer.param_groups:
        group["lr"] = lr
    epoch = restored_epoch if epoch_from_checkpoint else config.get(EPOCHS_DONE_KEY, restored_epoch)
    max_epochs = config.get("max_epochs")
    ready = time.time()
    while max_epochs is None or epoch < max_epochs:  # else the scheduler stops the trial
        epoch += 1
        loss, extras = one_epoch(epoch)
        metrics = {"train_loss": loss, "lr_used": lr, "data_epoch": epoch, **extras}
        if first_loss is not None:
            metrics["initial_loss"] = first_loss
        with tempfile.TemporaryDirectory() as directory:
            atomic_torch_save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch},
                              Path(directory) / STATE_FILE)
            if config.get("log"):
                row = {"epoch": epoch, "lr": lr, "loss": loss, "initial_loss": first_loss, **extras,
                       "pid": os.getpid(), "started": started, "ready": ready, "reported": time.time()}
                with open(config["log"], "a") as log:
                    log.write(json.dumps(row) + "\n")
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(directory))
        first_loss = started = ready = None
