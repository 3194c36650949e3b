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

* ``run.pt``: model, method state (optimizer, schedule, AALR core), epoch
  and J(theta_0), written atomically, read back with
  ``torch.load(..., weights_only=True)``; AALR's theta_0 and best snapshots
  are files of their own beside the checkpoints, uploaded once each
  (:mod:`aalr_ray.checkpoints`);
* ``epochs.jsonl``: every row so far, so the full history travels with the
  checkpoint into Ray storage (local disk or S3) and is exact after resumes.

With ``checkpoint_every: k`` in the config, only every k-th epoch (and the
last) carries a checkpoint: for large models, at the price of up to k - 1
epochs trained again after a failure. Each row also names the Ray node that
trained it (``node``: its id, ``node_ip``), and the trial sets its live
state as Ray metrics (:mod:`aalr_ray.metrics`) for Prometheus.

On start it resumes from ``tune.get_checkpoint()``, or from a newer
checkpoint of the trial in storage (:func:`resume_newest`: after a lost
driver, Tune's last experiment snapshot can name one a few epochs old):
retries under ``FailureConfig`` and ``Tuner.restore`` continue bit for bit
on a CPU (data order, augmentation and dropout are functions of (seed,
epoch)). It first checks that its storage takes a write, so a node that
cannot reach S3 fails the trial at once with one line. It also
appends each row to ``epochs.jsonl`` in the trial directory as it goes (for
``tail -f``), dropping rows past the checkpoint it resumed from, because
Tune's ``result.json`` loses rows across pauses and restores.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
import tempfile
import warnings
from pathlib import Path

import pyarrow.fs as pafs
import torch
from ray import tune

from . import storage as store
from ._ray_compat import advance_checkpoint_index, trial_storage
from .checkpoints import INDEX_FILE, SNAPSHOT_DIR, SnapshotFileError, SnapshotFiles, index_of
from .controller import atomic_torch_save
from .files import atomic_write
from .metrics import TrialMetrics
# The epoch log's format lives in results (free of Ray); its names are imported from here too.
from .results import ROWS_FILE, RowsError, read_rows, write_rows
from .train import RunConfig, TrainingRun

__all__ = ["aalr_trainable", "run_config_from", "snapshots_for_trial", "resume", "train_next_epoch",
           "write_checkpoint_dir", "load_checkpoint_dir", "read_rows", "node_labels", "checkpoint_due",
           "resume_newest", "drop_checkpoints", "experiment_name", "newer_checkpoints", "CheckpointError",
           "CHECKPOINT_FILE", "ROWS_FILE"]

log = logging.getLogger(__name__)

CHECKPOINT_FILE = "run.pt"
SEARCH_KEY = "search"  # config key (not a RunConfig field): the searched baseline the trial belongs to
EVERY_KEY = "checkpoint_every"  # config key (not a RunConfig field): checkpoint every k epochs and the last
_write_rows = write_rows  # the name bench/ray_cost.py times the trainable's rows writer by
_RUN_FIELDS = {f.name for f in dataclasses.fields(RunConfig)}


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be read; the message names the file."""


def run_config_from(config: dict) -> RunConfig:
    return RunConfig(**{k: v for k, v in config.items() if k in _RUN_FIELDS})


def snapshots_for_trial(config: RunConfig, gpus: float | None = None) -> RunConfig:
    """``snapshot_device: auto`` as "cpu" for a trial that holds a fraction of a GPU.

    Trials of ``resources: {gpu: 0.25}`` share one GPU's memory, and AALR's
    snapshots would add up to a model and an optimizer state per trial there;
    in host memory they cost a copy per SAVE_BEST and per restore. ``gpus``:
    the trial's GPU request (default: this Tune trial's own resources).
    """
    if config.snapshot_device != "auto":
        return config
    if gpus is None:
        try:
            with warnings.catch_warnings():  # outside a trial Ray warns, then returns None
                warnings.simplefilter("ignore")
                gpus = float(tune.get_context().get_trial_resources().required_resources.get("GPU", 0))
        except Exception:  # noqa: BLE001 - not in a Tune trial: no resources to share
            gpus = 0.0
    return dataclasses.replace(config, snapshot_device="cpu") if 0 < gpus < 1 else config


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


def resume(run: TrainingRun, checkpoint, snapshots: SnapshotFiles | None = None, *,
           adopt_lr: bool = False) -> list[dict]:
    """Load ``checkpoint`` (Tune's or Ray Train's; None: a fresh start) into ``run``.

    ``snapshots`` reads the snapshot files the checkpoint refers to (from
    beside the checkpoint). Returns the rows of the epochs it holds: rows past
    its epoch, written by an attempt that died before its next checkpoint,
    are dropped. ``adopt_lr``: see :meth:`TrainingRun.load_state_dict` (PBT).
    """
    if checkpoint is None:
        return []
    with checkpoint.as_directory() as directory:
        state, rows = load_checkpoint_dir(Path(directory))
    if snapshots is not None:
        try:
            state = snapshots.join(state, checkpoint.path, checkpoint.filesystem)
        except SnapshotFileError as exc:
            raise CheckpointError(f"cannot load checkpoint {checkpoint.path}: {exc}") from None
    run.load_state_dict(state, adopt_lr=adopt_lr)
    return [row for row in rows if row["epoch"] <= run.epoch]


def train_next_epoch(run: TrainingRun) -> dict:
    """Train one epoch; its row with ``epochs_done``, plus the run's summary after the last."""
    row = run.train_one_epoch()
    row["epochs_done"] = run.epoch
    if run.epoch == run.config.epochs:
        run.finish()  # aalr-robust: the best weights become the final ones
        row.update(run.summary())
    return row


def write_checkpoint_dir(run: TrainingRun, rows: list[dict], directory: Path,
                         snapshots: SnapshotFiles | None = None) -> dict:
    """``run.pt`` (atomically) and ``epochs.jsonl`` into ``directory``, to be reported.

    With ``snapshots``, AALR's snapshots go to their own files (new ones
    written now) and ``run.pt`` refers to them. Returns the state written,
    for :meth:`SnapshotFiles.committed` once the checkpoint is reported.
    """
    state = run.state_dict()
    if snapshots is not None:
        state = snapshots.split(state)
        atomic_write(Path(directory) / INDEX_FILE, index_of(state))
    atomic_torch_save(state, Path(directory) / CHECKPOINT_FILE)
    write_rows(Path(directory) / ROWS_FILE, rows)
    return state


def checkpoint_due(run: TrainingRun, every: int) -> bool:
    """Whether this epoch carries a checkpoint: every ``every``-th, and always the last."""
    return run.epoch % every == 0 or run.epoch >= run.config.epochs


def node_labels() -> dict:
    """The Ray node this process runs on: ``node`` (its id) and ``node_ip``."""
    import ray

    return {"node": ray.get_runtime_context().get_node_id(), "node_ip": ray.util.get_node_ip_address()}


def experiment_name() -> str:
    """The Tune experiment this trial belongs to (its directory's name), or "" outside one."""
    try:
        return tune.get_context().get_experiment_name() or ""
    except Exception:  # a trainable called outside Tune (tests, a user's own loop)
        return ""


def trial_snapshot_files(fs, trial_path: str) -> SnapshotFiles:
    """This trial's snapshot files, after checking that its storage takes a write.

    The check makes a node that cannot reach the storage (S3) fail the trial
    at once with one line naming the endpoint, instead of after an epoch's
    training with a long retry and a traceback from deep in Ray.
    """
    store.check_writable(fs, trial_path, f"the trial storage on node {node_labels()['node_ip']}")
    return SnapshotFiles(fs, f"{trial_path}/{SNAPSHOT_DIR}")


def live_log_dir(fs, trial_path: str) -> Path | None:
    """The trial's directory in local (or shared) storage, where ``tail -f epochs.jsonl`` finds it.

    ``fs``, ``trial_path``: the trial's storage (:func:`trial_storage`). Not
    ``get_trial_dir()``: in Ray 2.60 that is the driver's staging copy for an
    actor's first trial but, after ``reuse_actors`` reset the actor, a
    working directory that nothing copies into storage, so later trials' logs
    were lost. None on object storage (no appends there; the rows travel in
    every checkpoint anyway).
    """
    return Path(trial_path) if isinstance(fs, pafs.LocalFileSystem) else None


_TUNE_CHECKPOINT_DIR = re.compile(r"checkpoint_(\d+)")
_ANY_CHECKPOINT_DIR = re.compile(r"checkpoint_[0-9][0-9_.-]*")  # Tune's and Ray Train's names


def newer_checkpoints(given, fs, run_path: str) -> list[tuple[str, bool]]:
    """(path, complete) of the run's checkpoint directories in storage newer than ``given``, newest first.

    After the driver dies, ``Tuner.restore`` restarts each trial from the
    checkpoint its last experiment snapshot names, and Tune snapshots only
    every few checkpoints of a trial (``num_to_keep``) or seconds; after a
    lost node, Ray Train restores the newest checkpoint its controller had
    registered, which can be a few reports old. Without this, that many
    finished epochs would be trained again. Checkpoint directories sort by
    name in the order they were written (Tune's ``checkpoint_000007``, Ray
    Train's ``checkpoint_<date and time>``); complete: it holds ``run.pt``
    and ``epochs.jsonl``. A ``given`` checkpoint of another run (PBT hands
    them over) is kept as is; a scheduler that restarts a trial from an
    older checkpoint of its own on purpose (as
    :class:`aalr_ray.scheduler.AALRScheduler` does) needs a trainable that
    restores what it is given, such as :func:`aalr_ray.examples.pbt_trainable`.
    """
    run_path = run_path.rstrip("/")
    if given is not None and given.path.rstrip("/").rsplit("/", 1)[0] != run_path:
        return []
    floor = "" if given is None else given.path.rstrip("/").rsplit("/", 1)[-1]
    files: dict[str, set[str]] = {}
    for info in fs.get_file_info(pafs.FileSelector(run_path, recursive=True, allow_not_found=True)):
        parts = info.path[len(run_path) + 1:].split("/")
        if len(parts) == 2 and _ANY_CHECKPOINT_DIR.fullmatch(parts[0]) and parts[0] > floor:
            files.setdefault(parts[0], set()).add(parts[1])
    return [(f"{run_path}/{name}", {CHECKPOINT_FILE, ROWS_FILE} <= files[name])
            for name in sorted(files, reverse=True)]


def resume_newest(run: TrainingRun, given, snapshots: SnapshotFiles, fs, run_path: str, *,
                  adopt_lr: bool = False) -> tuple[list[dict], list]:
    """:func:`resume` from the newest loadable checkpoint: ``given`` (Ray's), or a newer one of the run's in storage.

    ``run_path`` is where the run's checkpoint directories are (the Tune
    trial's directory, or the Ray Train run's inside it). Returns (rows,
    the checkpoint directories newer than ``given``): Ray never registered
    those, so it never deletes them; :func:`drop_checkpoints` does, once a
    newer checkpoint is reported. Tune's next checkpoint goes after all of
    them, whichever this resumes from: never into one of them (a directory
    cut short by a crash included), which that deletion would then take.
    """
    newer = newer_checkpoints(given, fs, run_path)
    index = _TUNE_CHECKPOINT_DIR.fullmatch(newer[0][0].rsplit("/", 1)[-1]) if newer else None
    if index is not None:
        advance_checkpoint_index(int(index.group(1)))
    unknown_to_ray = [path for path, _ in newer]
    checkpoint_class = type(given) if given is not None else tune.Checkpoint
    for path, complete in newer:
        if not complete:
            continue
        checkpoint = checkpoint_class(path, filesystem=fs)
        try:
            rows = resume(run, checkpoint, snapshots, adopt_lr=adopt_lr)
        except CheckpointError as exc:  # a copy cut short by the crash: try the next older one
            # (CheckpointError comes before anything is loaded into the run.)
            log.warning("skipping checkpoint %s: %s", path, exc)
            continue
        log.info("resuming from %s, newer than the %s Ray restored", path,
                 "checkpoint" if given is not None else "fresh start")
        return rows, unknown_to_ray
    return resume(run, given, snapshots, adopt_lr=adopt_lr), unknown_to_ray


def drop_checkpoints(fs, paths: list) -> None:
    """Delete checkpoint directories (those :func:`resume_newest` found that Ray does not know of)."""
    for path in paths:
        try:
            fs.delete_dir(path)
        except FileNotFoundError:
            pass


def aalr_trainable(config: dict) -> None:
    """Run one :class:`TrainingRun` as a Tune trial; see the module docstring."""
    fs, trial_path = trial_storage()
    snapshots = trial_snapshot_files(fs, trial_path)
    run = TrainingRun(snapshots_for_trial(run_config_from(config)))
    # A trial of a PBT search may be handed another member's checkpoint with its own, perturbed LR.
    rows, unknown_to_ray = resume_newest(run, tune.get_checkpoint(), snapshots, fs, trial_path,
                                         adopt_lr=config.get(SEARCH_KEY) is not None)
    every, node = int(config.get(EVERY_KEY) or 1), node_labels()
    metrics = TrialMetrics.for_trial(config, experiment_name())
    directory = live_log_dir(fs, trial_path)
    live = _LiveLog(directory / ROWS_FILE, rows) if directory is not None else None
    try:
        while run.epoch < run.config.epochs:
            row = {**train_next_epoch(run), **node}
            rows.append(row)
            metrics.export(row, rows)
            if live is not None:
                live.append(row)
            if not checkpoint_due(run, every):
                tune.report(row)
                continue
            with tempfile.TemporaryDirectory() as directory:
                state = write_checkpoint_dir(run, rows, Path(directory), snapshots)
                tune.report(row, checkpoint=tune.Checkpoint.from_directory(directory))
            drop_checkpoints(fs, unknown_to_ray)
            unknown_to_ray = []
            snapshots.committed(state)
    finally:
        if live is not None:
            live.close()
