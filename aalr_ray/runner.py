"""Run a grid as one Ray Tune experiment and write its results (see :mod:`aalr_ray.results`).

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
import time
from pathlib import Path

from . import storage as store
from ._ray_compat import tolerate_pruned_checkpoints
from .grid import Grid, SearchPlan, expand, load_grid, search_plans, smoke_configs, smoke_plans
from .guard import StateGuard, full_disk_message, repair, torn_state_files
# The tables and their file names live in results (free of Ray); imported from here too.
from .results import (EPOCHS_FILE, JSON_FIELDS, TRIALS_FILE, Collected, TrialResult, collect_trials,  # noqa: F401
                      trial_summary, write_parquet)
from .trainable import EVERY_KEY, CheckpointError, aalr_trainable, load_checkpoint_dir, newer_checkpoints
from .tuning import mark_selected, search_compute

__all__ = ["run_grid", "GridRunError", "collect", "write_parquet", "Collected", "EPOCHS_FILE", "TRIALS_FILE"]

GRID_FILE = "grid.json"
SEARCH_DIR = "searches"  # <experiment>/searches/<search>-<cell>: one Tune experiment per search and cell
SEARCH_DONE_FILE = "search.json"  # in a search's experiment once it ended: its wall time
# Config keys that say where a trial runs, not what it trains: left out of grid.json, so an
# experiment resumes from another machine.
NOT_IN_GRID_FILE = ("data_dir", "threads")
# A grid is complete when every trial is one of these (STOPPED: a search stopped it early, on purpose).
COMPLETE_STATUSES = ("TERMINATED", "STOPPED")
MAX_FAILURES = 2  # a trial whose worker dies is retried from its last checkpoint
KEEP_CHECKPOINTS = 3


class GridRunError(RuntimeError):
    """A problem with the experiment as a whole (exists unfinished, grid changed, ...)."""


# ------------------------------------------------------------------- results
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
    # Tune's result can name an older checkpoint than the trial wrote: after a full disk or a lost
    # driver, Tune registered fewer than the trial copied into storage (the trial itself resumes
    # from the newest, aalr_ray.trainable.resume_newest). The rows are the newest complete one's.
    run_path = checkpoint.path.rstrip("/").rsplit("/", 1)[0]
    for path, complete in newer_checkpoints(checkpoint, checkpoint.filesystem, run_path):
        if complete:
            try:
                return _checkpoint_rows(type(checkpoint)(path, filesystem=checkpoint.filesystem))
            except CheckpointError:  # cut short by the crash: try the next older one
                continue
    return _checkpoint_rows(checkpoint)


def _checkpoint_rows(checkpoint) -> list[dict]:
    with checkpoint.as_directory() as directory:
        return load_checkpoint_dir(Path(directory))[1]


def _trial_result(result) -> TrialResult:
    """One Tune result as the results module takes it; the rows come from the trial's latest checkpoint."""
    trial_id = result.metrics.get("trial_id") or Path(result.path).name.split("_", 1)[-1]
    return TrialResult(trial_id, result.config, _rows_of(result), _trial_error(result))


def collect(result_grid, configs: list[dict]) -> Collected:
    """Rows from each trial's latest checkpoint (the authoritative per-epoch log).

    Every config of the grid gets a trials row: one that Tune never started
    (an interrupted run) is PENDING with no epochs.
    """
    return collect_trials((_trial_result(result) for result in result_grid), configs)


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
            print(dashboard_line(f"http://{context.dashboard_url}"), flush=True)


def dashboard_line(url: str) -> str:
    """Where the dashboard is and, with token authentication (Ray 2.60's default), where its token is."""
    if os.environ.get("RAY_AUTH_MODE", "token").lower() != "token":
        return f"Ray dashboard: {url}"
    if os.environ.get("RAY_AUTH_TOKEN"):
        where = "the token in $RAY_AUTH_TOKEN"
    else:
        where = "the token in " + (os.environ.get("RAY_AUTH_TOKEN_PATH") or str(Path.home() / ".ray" / "auth_token"))
    return (f"Ray dashboard: {url}\n"
            f"  it asks once for {where} (`ray get-auth-token` prints it); API calls send it as "
            "'Authorization: Bearer <token>'")


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


def _reporter(metrics: dict | None = None):
    from ray import tune

    return tune.CLIReporter(
        parameter_columns={"method": "method", "model": "model", "dataset": "dataset", "seed": "seed"},
        metric_columns={"epochs_done": "epoch", "lr": "lr", "train_loss": "train_loss", "test_acc": "test_acc",
                        **(metrics or {})},
        max_report_frequency=10, max_progress_rows=40, print_intermediate_tables=True)


def _tuner(grid: Grid, configs: list[dict], storage: str, name: str):
    from ray import tune

    reporter = _reporter({"val_acc": "val_acc"} if grid.validation is not None else None)
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
            # bound the disk (a ResNet-18 checkpoint is 89 MB, one per epoch).
            # Tune snapshots the experiment state whenever a trial has
            # checkpointed num_to_keep times since the last snapshot, so the
            # value is also how often that happens.
            checkpoint_config=tune.CheckpointConfig(num_to_keep=KEEP_CHECKPOINTS),
            # Atomic copies of Tune's state files, and a stop on a full disk.
            callbacks=[StateGuard(store.experiment_uri(storage, name))],
        ),
    )


def prepare(grid_path: str, *, data_dir: str | None = None,
            smoke: bool = False) -> tuple[Grid, list[dict], str, list[SearchPlan]]:
    """Grid, trial configs, experiment name and searches; validates everything before anything runs."""
    grid = load_grid(grid_path)
    configs = expand(grid)
    plans = search_plans(grid, configs)
    name = grid.name
    if smoke:
        # A CPU check: one CPU per trial and no GPU, whatever the file asks for
        # (a GPU request would wait forever on a machine without one).
        configs, name = smoke_configs(configs), f"{grid.name}-smoke"
        plans = smoke_plans(plans, configs)
        grid = dataclasses.replace(grid, resources={"cpu": 1, "gpu": 0}, max_concurrent=None)
    threads = max(1, int(grid.resources["cpu"]))
    for config in [*configs, *(plan.config for plan in plans)]:
        config["data_dir"] = str(Path(data_dir).expanduser().resolve()) if data_dir else None
        config["threads"] = threads
        if grid.checkpoint_every != 1:  # only then: the configs (and grid.json) of earlier grids stay as they were
            config[EVERY_KEY] = grid.checkpoint_every
    return grid, configs, name, plans


def _fingerprint(configs: list[dict], plans: list[SearchPlan]) -> list[dict]:
    """What grid.json holds: every trial config and, only where there are any, every search."""
    fingerprint = [{k: v for k, v in c.items() if k not in NOT_IN_GRID_FILE} for c in configs]
    return fingerprint + [{"search": plan.search, "spec": plan.spec,
                           "config": {k: v for k, v in plan.config.items() if k not in NOT_IN_GRID_FILE}}
                          for plan in plans]


def _same_grid(saved, current: list[dict]) -> bool:
    """Whether grid.json (``saved``) holds the grid of ``current``. A key a trial config has gained since
    the experiment started (a RunConfig field added in a later version, such as precision or validation)
    counts as the same when it is at its default: that is what the older trial ran with."""
    if not isinstance(saved, list) or len(saved) != len(current):
        return False
    defaults = _run_defaults()
    for old, new in zip(saved, current):
        if not isinstance(old, dict):
            return False
        added = {k: v for k, v in new.items() if k not in old}
        if any(k not in defaults or defaults[k] != v for k, v in added.items()):
            return False
        if {k: v for k, v in new.items() if k in old} != old:
            return False
    return True


def _run_defaults() -> dict:
    from .train import RunConfig

    return {f.name: f.default for f in dataclasses.fields(RunConfig) if f.default is not dataclasses.MISSING}


def _already_done(experiment: str, fingerprint: list[dict], resume: bool) -> bool:
    """Whether the experiment ran before and finished; refuse a changed grid or a missing --resume."""
    started_before = store.exists(f"{experiment}/{GRID_FILE}")
    if not started_before:
        if resume:
            raise GridRunError(f"nothing to resume at {experiment}; run without --resume to start it")
        return False
    if not _same_grid(store.read_json(f"{experiment}/{GRID_FILE}"), json.loads(json.dumps(fingerprint))):
        raise GridRunError(f"{experiment} holds a different grid (the file changed since it ran); "
                           "give the grid a new name or use another --storage")
    if store.exists(f"{experiment}/{TRIALS_FILE}"):
        trials = store.read_table(f"{experiment}/{TRIALS_FILE}").to_pylist()
        if trials and all(t["status"] in COMPLETE_STATUSES for t in trials):
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


# ------------------------------------------------------------------ searches
def _search_tuner(grid: Grid, plan: SearchPlan, experiment: str):
    from ray import tune

    from .search import keep_checkpoints, search_param_space, search_stopper, search_tune_config

    return tune.Tuner(
        trainable_for(grid), param_space=search_param_space(plan),
        # A smoke search's trials take a second each: one actor, reused, costs less than starting a second.
        tune_config=search_tune_config(plan, 1 if plan.config.get("smoke") else grid.max_concurrent),
        run_config=tune.RunConfig(
            name=plan.experiment_name, storage_path=f"{experiment}/{SEARCH_DIR}", verbose=1,
            progress_reporter=_reporter({"val_acc": "val_acc"}), stop=search_stopper(plan),
            failure_config=tune.FailureConfig(max_failures=MAX_FAILURES),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=keep_checkpoints(plan, KEEP_CHECKPOINTS)),
            callbacks=[StateGuard(f"{experiment}/{SEARCH_DIR}/{plan.experiment_name}")]))


def _search(grid: Grid, plan: SearchPlan, experiment: str, out) -> Collected:
    """Run, resume or read one search's Tune experiment; its trials' rows and summaries.

    A search that ended (its ``search.json`` is written) is read, not run
    again; one that was interrupted continues through ``Tuner.restore``.
    """
    from ray import tune

    from .search import search_param_space

    uri = f"{experiment}/{SEARCH_DIR}/{plan.experiment_name}"
    done = f"{uri}/{SEARCH_DONE_FILE}"
    if store.exists(done):
        results, wall_s = tune.Tuner.restore(uri, trainable_for(grid)).get_results(), store.read_json(done)["wall_s"]
    else:
        print(f"search {plan.experiment_name}: {plan.lr_values} {plan.spec['method']} configurations "
              f"({plan.spec['scheduler']})", file=out, flush=True)
        started = time.monotonic()
        if store.exists(uri):
            repair(uri)
        if store.exists(uri) and tune.Tuner.can_restore(uri):
            tuner = tune.Tuner.restore(uri, trainable_for(grid), resume_unfinished=True, resume_errored=True,
                                       param_space=search_param_space(plan))
        else:
            tuner = _search_tuner(grid, plan, experiment)
        results = _fit(tuner, uri)
        wall_s = time.monotonic() - started
        store.write_bytes(done, json.dumps({"wall_s": wall_s}).encode())
    started = [trial for trial in (_search_trial(result, plan) for result in results) if trial is not None]
    found = collect_trials(sorted(started, key=lambda r: r.trial_id), [])
    for trial in found.trials:
        if trial["status"] == "UNFINISHED":  # the search ended: its scheduler or its budget stopped the trial
            trial["status"] = "STOPPED"
        trial["search_wall_s"] = wall_s
        trial["search_scheduler"] = plan.spec["scheduler"]
    return found


def _search_trial(result, plan: SearchPlan) -> TrialResult | None:
    """A search trial's result; None for one that never started (the budget ended the search first)."""
    if result.config is not None:
        return _trial_result(result)
    error = _trial_error(result)
    if error is None:
        return None
    return TrialResult(Path(result.path).name.split("_", 1)[-1], plan.config, [], error)


def _account(trials: list[dict]) -> None:
    """Per search trial: the search's total epochs and trial seconds, and whether it is the one selected."""
    mark_selected(trials)
    totals = search_compute(trials)
    for trial in trials:
        trial["search_epochs"], trial["search_trial_s"] = totals[trial["trial_name"]]


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
    grid, configs, name, plans = prepare(grid_path, data_dir=data_dir, smoke=smoke)
    storage = storage if "://" in storage else str(Path(storage).expanduser().resolve())
    experiment = store.experiment_uri(storage, name)
    fingerprint = _fingerprint(configs, plans)

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
        if plans:
            searched = Collected([], [])
            for plan in plans:
                found = _search(grid, plan, experiment, out)
                searched.epochs += found.epochs
                searched.trials += found.trials
            _account(searched.trials)
            collected = Collected(collected.epochs + searched.epochs, collected.trials + searched.trials)
        write_parquet(experiment, collected)
    return experiment, collected
