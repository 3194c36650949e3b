"""Data-parallel trials: each Tune trial drives a Ray Train ``TorchTrainer`` (DDP).

A grid with ``workers_per_trial: N`` (N > 1) runs every trial this way; the
runner gets the trainable from :func:`ddp_trainable_for`. Ray 2.60 (Train V2)
no longer takes a Trainer as a Tune trainable: the Tune trial is a small driver
function that builds the TorchTrainer, calls ``fit()``, and forwards rank 0's
reports to Tune with ``TuneReportCallback``.

Resources. The driver trains nothing, so it reserves no CPU or GPU, only
``DRIVER_MEMORY`` (Tune needs a non-empty reservation; a CPU share, however
small, would leave N workers of one CPU unable to start on an N-CPU machine).
Ray Train reserves its own placement group of N workers with ``resources``
(cpu, gpu) each; its controller actor takes 0 CPU. Limit ``max_concurrent``
in the grid so that waiting drivers do not pile up.

Each worker runs the single-process :class:`aalr_ray.train.TrainingRun`,
built with its data-parallel hooks (``shard``, ``reduce_loss``, ``wrap_model``):

* sharding: rank r trains examples r::N of every global batch of the
  (seed, epoch)-determined order, so the ranks together see exactly the
  1-worker batch. DDP averages the ranks' mean gradients, which is the
  global-batch mean when the shares are equal (batch size and the last batch
  divisible by N; otherwise examples of the smaller shares weigh slightly more,
  as in any DDP run). Every rank loads (and augments) the whole global batch
  and keeps its share: deterministic, but augmentation work is not divided.
* losses: the epoch loss and J(theta_0) are all-reduced means over all
  examples, so every rank feeds AALR the same number and takes the same
  decision; a sharded epoch does not stop early at NaN (all ranks must take
  the same number of DDP steps), so a diverged epoch costs a full epoch; AALR
  rolls it back all the same.
* snapshots: DDP keeps weights and optimizer state identical on every rank,
  so each rank's AALR controller holds the same in-memory snapshot and a
  rollback restores the same weights everywhere. This is checked after every
  epoch (a fingerprint of the weights and the whole method state, AALR
  snapshots included, must agree on all ranks) rather than assumed.
* evaluation: every rank evaluates the full test set with its (identical)
  weights; only rank 0's row is reported. It costs no wall time (the other
  ranks would wait for rank 0 anyway) and needs no hook in the evaluation.
* checkpoints: rank 0 writes ``run.pt`` + ``epochs.jsonl`` (the same files as
  :mod:`aalr_ray.trainable`, AALR's snapshots in files of their own beside
  the checkpoints, :mod:`aalr_ray.checkpoints`) and reports them to Ray
  Train; the others report metrics only. ``checkpoint_every`` applies too.
  Each row's ``node``/``node_ip`` name every rank's node, comma-joined. Ray
  Train stores the checkpoints under ``<trial dir>/ddp/`` in the Tune
  experiment's storage (local or S3); Tune gets their path as the
  ``checkpoint_path`` metric, which :func:`aalr_ray.runner.collect` reads.
* resume: the Train run's storage path and name are fixed per Tune trial, so
  when Tune restarts a trial (``FailureConfig``, ``Tuner.restore``) Ray Train
  hands every rank its latest registered checkpoint. After a crash that can be
  a report or two older than the last one written (reports the Train
  controller had not processed yet are dropped), so every rank resumes from
  the newest complete checkpoint in the run's storage instead
  (:func:`aalr_ray.trainable.resume_newest`); only the epoch in flight is
  trained again, and on CPU the rerun is identical. Worker failures are not
  retried by Ray Train itself (``max_failures=0``): Tune's retry is the one
  policy.
* no live ``epochs.jsonl`` in the Tune trial directory (the single-process
  trainable's ``tail -f`` log): the rows travel in the checkpoints.

Models with BatchNorm use per-rank batch statistics (plain DDP), so they do
not follow the 1-worker trajectory exactly; ConvBase and MLPs do (up to float
summation order).
"""

from __future__ import annotations

import tempfile
import warnings
from pathlib import Path
from typing import Callable

import torch
import torch.distributed as dist

from .data import Data
from .train import RunConfig, TrainingRun, load_run_data, resolve_device

__all__ = ["ddp_trainable_for", "train_worker", "data_parallel_run", "check_ranks_agree", "shard_size",
           "DRIVER_MEMORY", "TRAIN_RUN_NAME"]

DRIVER_MEMORY = 256 * 2**20  # bytes reserved for a trial's driver process
TRAIN_RUN_NAME = "ddp"  # Ray Train's run directory inside the Tune trial directory
TRAIN_KEEP_CHECKPOINTS = 2  # Ray Train's num_to_keep: the worker only restores the latest
SNAPSHOTS_KEY = "_snapshots"  # (filesystem, directory) of the Train run's snapshot files, in the worker config
EXPERIMENT_KEY = "_experiment"  # the Tune experiment's name, for the trial's metrics tags


# --------------------------------------------------------------- the worker
def shard_size(num_examples: int, batch_size: int, rank: int, world_size: int) -> int:
    """Examples rank ``rank`` trains per epoch (its share of every global batch)."""
    sizes = [batch_size] * (num_examples // batch_size)
    if num_examples % batch_size:
        sizes.append(num_examples % batch_size)  # the last, smaller batch
    if min(sizes) < world_size:
        raise ValueError(f"a global batch of {min(sizes)} examples cannot be split over {world_size} "
                         f"workers (every rank needs at least one); change batch_size or workers_per_trial")
    return sum(len(range(rank, size, world_size)) for size in sizes)


def _global_mean(mean: float, count: int, device: torch.device) -> float:
    # Sum and count in float64, so the mean is over examples, not over ranks.
    totals = torch.tensor([mean * count, count], dtype=torch.float64, device=device)
    dist.all_reduce(totals)
    return float(totals[0] / totals[1])


def _fingerprint(run: TrainingRun) -> torch.Tensor:
    """A checksum: the float64 sum of every tensor and number in the model and method state."""
    total = torch.zeros((), dtype=torch.float64)
    stack = [run.model.state_dict(), run.method.state_dict()]
    while stack:
        item = stack.pop()
        if isinstance(item, torch.Tensor):
            total += item.detach().double().sum().cpu()
        elif isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, (list, tuple)):
            stack.extend(item)
        elif isinstance(item, (int, float)):  # bool included
            total += float(item)
    return total


def check_ranks_agree(run: TrainingRun, world_size: int) -> None:
    """Raise unless every rank holds the same weights, method state (AALR snapshots included) and LR."""
    mine = torch.stack([_fingerprint(run), torch.tensor(run.method.current_lr(), dtype=torch.float64)])
    mine = mine.to(run.device)  # nccl gathers CUDA tensors only
    everyone = [torch.empty_like(mine) for _ in range(world_size)]
    dist.all_gather(everyone, mine)
    everyone = [f.cpu() for f in everyone]
    if not all(torch.isclose(f, everyone[0], rtol=0, atol=0, equal_nan=True).all() for f in everyone):
        raise RuntimeError(f"data-parallel ranks diverged after epoch {run.epoch} "
                           f"(weights/method-state fingerprint and LR per rank: {[f.tolist() for f in everyone]})")


def data_parallel_run(run_config: RunConfig, rank: int, world_size: int, data: Data | None = None) -> TrainingRun:
    """This rank's TrainingRun, built with its data-parallel hooks; needs an initialised process group."""
    data = data or load_run_data(run_config)
    device = resolve_device(run_config.device)
    examples, batch_size = data.num_examples("train"), run_config.batch_size
    count = shard_size(examples, batch_size, rank, world_size)
    if rank == 0 and (batch_size % world_size or examples % batch_size % world_size):
        warnings.warn(f"global batches do not split evenly over {world_size} workers: DDP's gradient "
                      "average then weighs the smaller shares' examples slightly more", stacklevel=1)
    return TrainingRun(
        run_config, data, shard=(rank, world_size),
        reduce_loss=lambda mean: _global_mean(mean, count, device),
        wrap_model=lambda model: torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device] if device.type == "cuda" else None))


def _nodes_of_all_ranks(labels: dict, world_size: int) -> dict:
    """Every rank's node, in rank order without repeats, comma-joined (``node`` and ``node_ip``)."""
    everyone: list = [None] * world_size
    dist.all_gather_object(everyone, labels)
    return {key: ",".join(dict.fromkeys(rank_labels[key] for rank_labels in everyone)) for key in labels}


def train_worker(config: dict) -> None:
    """One rank of a data-parallel trial (the TorchTrainer's ``train_loop_per_worker``)."""
    import ray.train
    import ray.train.torch

    from . import storage as store
    from .checkpoints import SnapshotFiles
    # The single-process trainable's epoch and checkpoint format (imported here: it imports Ray Tune).
    from .metrics import TrialMetrics
    from .trainable import (EVERY_KEY, checkpoint_due, drop_checkpoints, node_labels, resume_newest,
                            run_config_from, train_next_epoch, write_checkpoint_dir)

    context = ray.train.get_context()
    rank, world_size = context.get_world_rank(), context.get_world_size()
    labels = node_labels()
    fs, snapshot_dir = config[SNAPSHOTS_KEY]
    store.check_writable(fs, snapshot_dir, f"the trial storage on node {labels['node_ip']}")
    snapshots = SnapshotFiles(fs, snapshot_dir)
    run_config = run_config_from(config)
    if run_config.device == "auto":
        run_config.device = str(ray.train.torch.get_device())  # this rank's GPU, or cpu
    run = data_parallel_run(run_config, rank, world_size)
    node = _nodes_of_all_ranks(labels, world_size)

    # A restarted trial: every rank loads the same checkpoint, the newest in the Train run's storage.
    rows, unknown_to_ray = resume_newest(run, ray.train.get_checkpoint(), snapshots, fs,
                                         snapshot_dir.rsplit("/", 1)[0])

    every = int(config.get(EVERY_KEY) or 1)
    # Rank 0's metrics stand for the trial, as its row does.
    metrics = TrialMetrics.for_trial(config, config.get(EXPERIMENT_KEY, "")) if rank == 0 else None
    while run.epoch < run.config.epochs:
        row = {**train_next_epoch(run), **node}
        check_ranks_agree(run, world_size)
        rows.append(row)
        if metrics is not None:
            metrics.export(row, rows)
        # report() is a barrier: every rank calls it each epoch, rank 0 alone with a checkpoint.
        if rank == 0 and checkpoint_due(run, every):
            with tempfile.TemporaryDirectory() as directory:
                state = write_checkpoint_dir(run, rows, Path(directory), snapshots)
                ray.train.report(row, checkpoint=ray.train.Checkpoint.from_directory(directory))
            drop_checkpoints(fs, unknown_to_ray)
            unknown_to_ray = []
            snapshots.committed(state)
        else:
            ray.train.report(row)


# ---------------------------------------------------------------- the trial
def ddp_trainable_for(workers: int, resources: dict, *, worker_fn: Callable[[dict], None] | None = None):
    """The Tune trainable for data-parallel trials of ``workers`` ranks with ``resources`` each.

    ``worker_fn`` is what every rank runs (default :func:`train_worker`; tests wrap it).
    """
    from ray import tune

    worker_fn = worker_fn or train_worker
    cpu, gpu = resources.get("cpu", 1), resources.get("gpu", 0)

    def aalr_ddp_trainable(config: dict) -> None:
        import ray.train
        from ray.train.torch import TorchConfig, TorchTrainer
        from ray.tune.integration.ray_train import TuneReportCallback

        from aalr_ray._ray_compat import trial_storage  # absolute: this function is pickled by value
        from aalr_ray.trainable import experiment_name
        from aalr_ray.checkpoints import SNAPSHOT_DIR

        # The Tune trial's own directory in the experiment storage (local or S3). A fixed
        # name inside it makes a restarted trial resume.
        filesystem, trial_path = trial_storage()
        run_path = f"{trial_path}/{TRAIN_RUN_NAME}"
        trainer = TorchTrainer(
            worker_fn,
            # The snapshots live beside the Train run's checkpoints (aalr_ray.checkpoints).
            train_loop_config={**config, SNAPSHOTS_KEY: (filesystem, f"{run_path}/{SNAPSHOT_DIR}"),
                               EXPERIMENT_KEY: experiment_name()},
            torch_config=TorchConfig(backend="nccl" if gpu else "gloo"),
            scaling_config=ray.train.ScalingConfig(
                num_workers=workers, use_gpu=bool(gpu),
                resources_per_worker={"CPU": cpu, **({"GPU": gpu} if gpu else {})}),
            run_config=ray.train.RunConfig(
                name=TRAIN_RUN_NAME, storage_path=trial_path, storage_filesystem=filesystem,
                # The worker only ever restores the latest checkpoint; two bound the disk.
                checkpoint_config=ray.train.CheckpointConfig(num_to_keep=TRAIN_KEEP_CHECKPOINTS),
                # Worker failures fail the trial and Tune's FailureConfig retries it: one retry policy.
                failure_config=ray.train.FailureConfig(max_failures=0),
                callbacks=[TuneReportCallback()]),
        )
        trainer.fit()

    return tune.with_resources(aalr_ddp_trainable, {"cpu": 0, "gpu": 0, "memory": DRIVER_MEMORY})
