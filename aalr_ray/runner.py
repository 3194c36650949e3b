"""Run a grid as one Ray Tune experiment; write epochs.parquet, trials.parquet and the report.

    aalr-ray grid jobs/quickstart.yaml [--storage PATH_OR_URI] [--address auto|ADDR]
                                       [--data-dir DIR] [--resume] [--smoke]

The experiment lives at ``<storage>/<grid name>`` (``<name>-smoke`` with
``--smoke``); storage is a local path or any URI Ray storage takes
(``s3://bucket/prefix``). Every trial checkpoints each epoch there, so an
interrupted grid continues with ``--resume`` (finished trials are not run
again), and running a finished grid again only prints its results.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import signal
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa

from . import storage as store
from ._ray_compat import tolerate_pruned_checkpoints
from .grid import Grid, expand, load_grid, smoke_configs
from .guard import StateGuard, full_disk_message, repair, torn_state_files
from .trainable import aalr_trainable, load_checkpoint_dir

__all__ = ["run_grid", "GridRunError", "collect", "write_parquet", "Collected", "EPOCHS_FILE", "TRIALS_FILE"]

EPOCHS_FILE = "epochs.parquet"
TRIALS_FILE = "trials.parquet"
GRID_FILE = "grid.json"
MAX_FAILURES = 2  # a trial whose worker dies is retried from its last checkpoint
KEEP_CHECKPOINTS = 3
# Config fields that are dicts or mixed types go into Parquet as JSON text.
JSON_FIELDS = ("method_options", "robust_eval", "training")


class GridRunError(RuntimeError):
    """A problem with the experiment as a whole (exists unfinished, grid changed, ...)."""


# ------------------------------------------------------------------- results
def _flat_config(config: dict) -> dict:
    flat = {k: v for k, v in config.items() if k not in ("data_dir", "threads", "device")}
    for key in JSON_FIELDS:
        if key in flat and not isinstance(flat[key], str):
            flat[key] = json.dumps(flat[key], sort_keys=True)
    return flat


def _epochs_to(rows: list[dict], target: float) -> int | None:
    return next((row["epoch"] for row in rows if row["test_acc"] >= target), None)


def trial_summary(config: dict, rows: list[dict], status: str, error: str | None) -> dict:
    """One trials.parquet row: config, final/peak accuracies, rollbacks, wall time, status."""
    summary = {**_flat_config(config), "status": status, "error": error, "epochs_done": len(rows)}
    if rows:
        last = rows[-1]
        peak = max(rows, key=lambda r: r["test_acc"])
        summary.update(
            final_test_acc=last.get("final_test_acc", last["test_acc"]),
            peak_test_acc=peak["test_acc"], peak_epoch=peak["epoch"],
            epochs_to_99pct_peak=_epochs_to(rows, 0.99 * peak["test_acc"]),
            final_train_loss=last["train_loss"], final_lr=last["lr"],
            rollbacks=sum(str(r.get("action", "")).startswith("restore") for r in rows),
            bad_epochs=sum(bool(r.get("bad_loss")) for r in rows),
            wall_s=sum(r["epoch_s"] + r["eval_s"] for r in rows),
        )
        for key in ("fgsm_acc", "pgd_acc"):
            if key in last:
                summary[f"final_{key}"] = last.get(f"final_{key}", last[key])
                summary[f"peak_{key}"] = max(r[key] for r in rows)
    return summary


@dataclass
class Collected:
    epochs: list[dict]
    trials: list[dict]

    @property
    def complete(self) -> bool:
        return all(t["status"] == "TERMINATED" for t in self.trials)


def _trial_error(result) -> str | None:
    """The last line of a trial's error, or None; a torn error file (full disk) is an error too."""
    try:
        error = result.error
    except Exception as exc:  # Tune unpickles error.pkl, which a full disk can leave torn
        return f"(error file unreadable: {type(exc).__name__})"
    return None if error is None else str(error).strip().splitlines()[-1][:500]


def _rows_of(result) -> list[dict]:
    checkpoint = result.checkpoint
    if checkpoint is None and result.metrics.get("checkpoint_path"):
        # A data-parallel trial (aalr_ray.distributed): Ray Train holds the checkpoint,
        # on the trial's storage; its path arrives as a metric.
        from ray import tune

        checkpoint = tune.Checkpoint(result.metrics["checkpoint_path"], filesystem=result.filesystem)
    if checkpoint is None:
        return []
    with checkpoint.as_directory() as directory:
        return load_checkpoint_dir(Path(directory))[1]


def collect(result_grid, configs: list[dict]) -> Collected:
    """Rows from each trial's latest checkpoint (the authoritative per-epoch log).

    Every config of the grid gets a trials row: one that Tune never started
    (an interrupted run) is PENDING with no epochs.
    """
    by_name = {c["trial_name"]: c for c in configs}
    epochs, trials, seen = [], [], set()
    for result in result_grid:
        config = by_name.get(result.config.get("trial_name"), result.config)
        seen.add(config.get("trial_name"))
        rows = _rows_of(result)
        error = _trial_error(result)
        if error is not None:
            status = "ERROR"
        elif len(rows) >= config["epochs"]:
            status = "TERMINATED"
        else:
            status = "UNFINISHED"
        trial_id = result.metrics.get("trial_id") or Path(result.path).name.split("_", 1)[-1]
        for row in rows:
            epochs.append({"trial_id": trial_id, **_flat_config(config), **row})
        trials.append({"trial_id": trial_id, **trial_summary(config, rows, status, error)})
    for name, config in by_name.items():
        if name not in seen:
            trials.append({"trial_id": None, **trial_summary(config, [], "PENDING", None)})
    return Collected(epochs, trials)


def _table(records: list[dict]) -> pa.Table:
    columns: dict[str, None] = {}
    for record in records:
        columns.update(dict.fromkeys(record))
    data = {c: [r.get(c) for r in records] for c in columns}
    if "error" in data:
        data["error"] = pa.array(data["error"], type=pa.string())  # typed even when no trial failed
    # NaN losses stay NaN (floats); a column mixing ints and floats becomes float.
    for c, values in data.items():
        if any(isinstance(v, float) for v in values) and all(isinstance(v, (int, float)) or v is None
                                                             for v in values if not isinstance(v, bool)):
            data[c] = [float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else v for v in values]
    return pa.table(data)


def write_parquet(experiment: str, collected: Collected) -> None:
    store.write_table(f"{experiment}/{EPOCHS_FILE}", _table(collected.epochs))
    store.write_table(f"{experiment}/{TRIALS_FILE}", _table(collected.trials))


# ---------------------------------------------------------------------- Tune
def _init_ray(address: str | None) -> None:
    import ray

    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    if address:  # a cluster: `ray job submit` sets RAY_ADDRESS for the driver
        ray.init(address=address, logging_level=logging.WARNING, log_to_driver=False)
    else:  # embedded: always a new local Ray, never another one on this machine
        context = ray.init(address="local", logging_level=logging.WARNING, log_to_driver=False)
        if context.dashboard_url:  # bound to 127.0.0.1 by default
            print(f"Ray dashboard: http://{context.dashboard_url}", flush=True)


def _param_space(configs: list[dict]) -> dict:
    """A grid search over trial names, each resolving to its full, flat trial config.

    include/exclude/overrides make grids that crossing ``tune.grid_search``
    axes cannot express; this keeps Tune's configs flat (one column per field
    in its results, TensorBoard and progress table).
    """
    from ray import tune

    by_name = {c["trial_name"]: c for c in configs}
    space = {"trial_name": tune.grid_search(list(by_name))}
    for key in configs[0]:
        if key != "trial_name":
            space[key] = tune.sample_from(lambda config, key=key: by_name[config["trial_name"]][key])
    return space


def trainable_for(grid: Grid):
    """The Tune trainable with its resources: one process per trial, or a
    data-parallel Ray Train run per trial (``workers_per_trial`` > 1)."""
    from ray import tune

    if grid.workers_per_trial > 1:
        from .distributed import ddp_trainable_for

        return ddp_trainable_for(grid.workers_per_trial, grid.resources)
    return tune.with_resources(aalr_trainable, {"cpu": grid.resources["cpu"], "gpu": grid.resources["gpu"]})


def _tuner(grid: Grid, configs: list[dict], storage: str, name: str):
    from ray import tune

    reporter = tune.CLIReporter(
        parameter_columns={"method": "method", "model": "model", "dataset": "dataset", "seed": "seed"},
        metric_columns={"epochs_done": "epoch", "lr": "lr", "train_loss": "train_loss", "test_acc": "test_acc"},
        max_report_frequency=10, max_progress_rows=40, print_intermediate_tables=True)
    return tune.Tuner(
        trainable_for(grid),
        param_space=_param_space(configs),
        tune_config=tune.TuneConfig(
            max_concurrent_trials=grid.max_concurrent,
            # A finished trial's process takes the next trial: no new Python,
            # torch import and first-optimizer warm-up (about 3 s on a CPU) per trial.
            reuse_actors=True,
            trial_dirname_creator=lambda trial: f"{trial.config['trial_name']}_{trial.trial_id}",
            trial_name_creator=lambda trial: trial.config["trial_name"],
        ),
        run_config=tune.RunConfig(
            name=name, storage_path=storage, progress_reporter=reporter, verbose=1,
            failure_config=tune.FailureConfig(max_failures=MAX_FAILURES),
            # The trainable only ever restores the latest checkpoint; a few
            # bound the disk (a ResNet-18 checkpoint is 45 MB, one per epoch).
            # Tune snapshots the experiment state whenever a trial has
            # checkpointed num_to_keep times since the last snapshot, so the
            # value is also how often that happens.
            checkpoint_config=tune.CheckpointConfig(num_to_keep=KEEP_CHECKPOINTS),
            # Atomic copies of Tune's state files, and a stop on a full disk.
            callbacks=[StateGuard(store.experiment_uri(storage, name))],
        ),
    )


def prepare(grid_path: str, *, data_dir: str | None = None, smoke: bool = False) -> tuple[Grid, list[dict], str]:
    """Grid, trial configs and experiment name; validates everything before anything runs."""
    grid = load_grid(grid_path)
    configs = expand(grid)
    name = grid.name
    if smoke:
        # A CPU check: one CPU per trial and no GPU, whatever the file asks for
        # (a GPU request would wait forever on a machine without one).
        configs, name = smoke_configs(configs), f"{grid.name}-smoke"
        grid = dataclasses.replace(grid, resources={"cpu": 1, "gpu": 0}, max_concurrent=None)
    threads = max(1, int(grid.resources["cpu"]))
    for config in configs:
        config["data_dir"] = str(Path(data_dir).expanduser().resolve()) if data_dir else None
        config["threads"] = threads
    return grid, configs, name


def _already_done(experiment: str, fingerprint: list[dict], resume: bool) -> bool:
    """Whether the experiment ran before and finished; refuse a changed grid or a missing --resume."""
    started_before = store.exists(f"{experiment}/{GRID_FILE}")
    if not started_before:
        if resume:
            raise GridRunError(f"nothing to resume at {experiment}; run without --resume to start it")
        return False
    if store.read_json(f"{experiment}/{GRID_FILE}") != json.loads(json.dumps(fingerprint)):
        raise GridRunError(f"{experiment} holds a different grid (the file changed since it ran); "
                           "give the grid a new name or use another --storage")
    if store.exists(f"{experiment}/{TRIALS_FILE}"):
        trials = store.read_table(f"{experiment}/{TRIALS_FILE}").to_pylist()
        if trials and all(t["status"] == "TERMINATED" for t in trials):
            return True
    if not resume:
        raise GridRunError(f"{experiment} exists and did not finish; continue it with --resume "
                           "(finished trials are not run again)")
    return False


def _restored_tuner(grid: Grid, configs: list[dict], experiment: str):
    """Tune's own restore (of an experiment whose torn state files, if any, were repaired)."""
    from ray import tune

    torn = torn_state_files(experiment)
    if torn:
        raise GridRunError(f"{experiment}: Tune's state file {torn[0]} is torn and has no intact copy; "
                           "the trial checkpoints are kept, but the experiment cannot be resumed")
    # param_space again: without it, tune.sample_from values of trials that had
    # not started come back as placeholders and those trials fail on every try.
    return tune.Tuner.restore(experiment, trainable_for(grid), resume_unfinished=True, resume_errored=True,
                              param_space=_param_space(configs))


def _fit(tuner, experiment: str):
    """``tuner.fit()``; a full disk becomes one StorageError line, and Ctrl-C works again afterwards."""
    main_thread = threading.current_thread() is threading.main_thread()
    sigint = signal.getsignal(signal.SIGINT) if main_thread else None
    try:
        return tuner.fit()
    except Exception:
        if full_disk_message(experiment) is None:
            raise
        repair(experiment)
        raise store.StorageError(full_disk_message(experiment)) from None
    finally:
        if main_thread:  # Tune leaves its own handler installed, which would swallow a Ctrl-C
            signal.signal(signal.SIGINT, sigint)  # during the collection that follows


def run_grid(grid_path: str, *, storage: str = "./results", address: str | None = None,
             data_dir: str | None = None, resume: bool = False, smoke: bool = False,
             out=None) -> tuple[str, Collected | None]:
    """Run or resume a grid and write its Parquet files.

    Returns (experiment URI, collected results), or (URI, None) when the
    experiment had already completed and nothing was trained. One driver at a
    time: a second one on the same experiment is refused while the first lives.
    """
    from ray import tune

    out = out or sys.stdout
    grid, configs, name = prepare(grid_path, data_dir=data_dir, smoke=smoke)
    storage = storage if "://" in storage else str(Path(storage).expanduser().resolve())
    experiment = store.experiment_uri(storage, name)
    fingerprint = [{k: v for k, v in c.items() if k not in ("data_dir", "threads")} for c in configs]

    # First, so that a wrong endpoint fails here in seconds, before any other
    # storage call (each would retry for long) and before any trial starts.
    store.check_reachable(storage)
    if resume and not store.exists(f"{experiment}/{GRID_FILE}"):  # before the lock makes the directory
        raise GridRunError(f"nothing to resume at {experiment}; run without --resume to start it")
    with store.ExperimentLock(experiment):
        if _already_done(experiment, fingerprint, resume):
            print(f"{name}: already complete, nothing to train; results in {experiment}", file=out)
            return experiment, None
        _init_ray(address)
        tolerate_pruned_checkpoints()  # a restore can name checkpoints pruned since its snapshot
        os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # Tune's table with our columns, not the new output
        # Per-epoch checkpoints of fast CPU epochs trigger one warning per
        # snapshot (hundreds per grid); the snapshots themselves are intended.
        os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
        print(f"{name}: {len(configs)} trials -> {experiment}", file=out, flush=True)
        started_before = store.exists(f"{experiment}/{GRID_FILE}")
        if started_before:
            repair(experiment)  # before can_restore: a full disk may have left no state file at all
        if started_before and tune.Tuner.can_restore(experiment):
            tuner = _restored_tuner(grid, configs, experiment)
        else:
            store.write_bytes(f"{experiment}/{GRID_FILE}", json.dumps(fingerprint, indent=1).encode())
            tuner = _tuner(grid, configs, storage, name)
        results = _fit(tuner, experiment)
        collected = collect(results, configs)
        write_parquet(experiment, collected)
    return experiment, collected
