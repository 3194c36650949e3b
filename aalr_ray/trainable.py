"""Ray Tune function trainable: one training run per trial, AALR decided in-process.

AALR's decisions (double, halve, roll back) happen inside the trial, by the
PyTorch controller, so a trial never restarts to change its LR: the only cost
Ray adds is the per-epoch report and checkpoint.

    tuner = tune.Tuner(
        tune.with_resources(aalr_trainable, {"cpu": 1, "gpu": 0.25}),
        param_space={"model": "mnist1d-cnn", "dataset": "mnist1d", "method": "aalr",
                     "epochs": 60, "seed": tune.grid_search([0, 1, 2])},
        run_config=tune.RunConfig(storage_path="./results", failure_config=tune.FailureConfig(max_failures=2)),
    )

The config holds :class:`aalr_ray.train.RunConfig`'s fields; other keys (grid
labels) are ignored. Every epoch the trial reports the metrics row plus
``epochs_done`` (its own epoch counter: Tune's ``training_iteration`` rewinds
after a restore) and a checkpoint directory holding

* ``run.pt``: model, method state (optimizer, schedule, AALR core + best
  snapshot), epoch and J(theta_0), written atomically, read back with
  ``torch.load(..., weights_only=True)``;
* ``epochs.jsonl``: every row so far, so the full history travels with the
  checkpoint into Ray storage (local disk or S3) and is exact after resumes.

On start it resumes from ``tune.get_checkpoint()``: retries under
``FailureConfig`` and ``Tuner.restore`` continue bit for bit on a CPU (data
order, augmentation and dropout are functions of (seed, epoch)). It also
appends each row to ``epochs.jsonl`` in the trial directory as it goes (for
``tail -f``), dropping rows past the checkpoint it resumed from, because
Tune's ``result.json`` loses rows across pauses and restores.
"""

from __future__ import annotations

import dataclasses
import json
import tempfile
from pathlib import Path

import torch
from ray import tune

from .controller import atomic_torch_save
# The epoch log's format lives in results (free of Ray); its names are imported from here too.
from .results import ROWS_FILE, RowsError, read_rows, write_rows
from .train import RunConfig, TrainingRun

__all__ = ["aalr_trainable", "run_config_from", "resume", "train_next_epoch", "write_checkpoint_dir",
           "load_checkpoint_dir", "read_rows", "CheckpointError", "CHECKPOINT_FILE", "ROWS_FILE"]

CHECKPOINT_FILE = "run.pt"
_write_rows = write_rows  # the name bench/ray_cost.py times the trainable's rows writer by
_RUN_FIELDS = {f.name for f in dataclasses.fields(RunConfig)}


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be read; the message names the file."""


def run_config_from(config: dict) -> RunConfig:
    return RunConfig(**{k: v for k, v in config.items() if k in _RUN_FIELDS})


def load_checkpoint_dir(directory: Path) -> tuple[dict, list[dict]]:
    """(run state, rows so far) from a checkpoint directory, or a CheckpointError naming the file."""
    path = Path(directory) / CHECKPOINT_FILE
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for truncated/corrupt files
        raise CheckpointError(f"cannot load checkpoint {path}: {type(exc).__name__}: {exc}") from None
    try:
        return state, read_rows(Path(directory) / ROWS_FILE)
    except RowsError as exc:
        raise CheckpointError(f"cannot load checkpoint rows: {exc}") from None


class _LiveLog:
    """The trial directory's epochs.jsonl: appended and flushed every epoch."""

    def __init__(self, path: Path, rows: list[dict]):
        self.path = path
        write_rows(path, rows)  # drops rows of epochs that will be trained again
        self.file = open(path, "a")

    def append(self, row: dict) -> None:
        self.file.write(json.dumps(row) + "\n")
        self.file.flush()

    def close(self) -> None:
        # A reused actor runs many trials: each closes its log when it ends.
        self.file.close()


def resume(run: TrainingRun, checkpoint) -> list[dict]:
    """Load ``checkpoint`` (Tune's or Ray Train's; None: a fresh start) into ``run``.

    Returns the rows of the epochs it holds: rows past its epoch, written by
    an attempt that died before its next checkpoint, are dropped.
    """
    if checkpoint is None:
        return []
    with checkpoint.as_directory() as directory:
        state, rows = load_checkpoint_dir(Path(directory))
    run.load_state_dict(state)
    return [row for row in rows if row["epoch"] <= run.epoch]


def train_next_epoch(run: TrainingRun) -> dict:
    """Train one epoch; its row with ``epochs_done``, plus the run's summary after the last."""
    row = run.train_one_epoch()
    row["epochs_done"] = run.epoch
    if run.epoch == run.config.epochs:
        run.finish()  # aalr-robust: the best weights become the final ones
        row.update(run.summary())
    return row


def write_checkpoint_dir(run: TrainingRun, rows: list[dict], directory: Path) -> None:
    """``run.pt`` (atomically) and ``epochs.jsonl`` into ``directory``, to be reported."""
    atomic_torch_save(run.state_dict(), Path(directory) / CHECKPOINT_FILE)
    write_rows(Path(directory) / ROWS_FILE, rows)


def live_log_dir() -> Path | None:
    """The trial's directory in local (or shared) storage, where ``tail -f epochs.jsonl`` finds it.

    Not ``get_trial_dir()``: in Ray 2.60 that is the driver's staging copy for
    an actor's first trial but, after ``reuse_actors`` reset the actor, a
    working directory that nothing copies into storage, so later trials' logs
    were lost. None on object storage (no appends there; the rows travel in
    every checkpoint anyway).
    """
    import pyarrow.fs as pafs

    storage = tune.get_context().get_storage()  # DeveloperAPI, checked against Ray 2.60.0
    if not isinstance(storage.storage_filesystem, pafs.LocalFileSystem):
        return None
    return Path(storage.trial_fs_path)


def aalr_trainable(config: dict) -> None:
    """Run one :class:`TrainingRun` as a Tune trial; see the module docstring."""
    run = TrainingRun(run_config_from(config))
    rows = resume(run, tune.get_checkpoint())
    directory = live_log_dir()
    live = _LiveLog(directory / ROWS_FILE, rows) if directory is not None else None
    try:
        while run.epoch < run.config.epochs:
            row = train_next_epoch(run)
            rows.append(row)
            if live is not None:
                live.append(row)
            with tempfile.TemporaryDirectory() as directory:
                write_checkpoint_dir(run, rows, Path(directory))
                tune.report(row, checkpoint=tune.Checkpoint.from_directory(directory))
    finally:
        if live is not None:
            live.close()
