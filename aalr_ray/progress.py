"""What an experiment holds so far: the rows of a report, also while its grid runs or after it stopped.

:func:`read_experiment` gives the report (:mod:`aalr_ray.report`) its rows, from storage (a
local path or any URI :mod:`aalr_ray.storage` takes, ``s3://`` included):

* a grid that ended (``trials.parquet`` with every trial TERMINATED or ERROR): its Parquet files;
* a grid that started and has not ended (``grid.json`` is there, and no ``trials.parquet`` or
  one with unfinished trials): every trial of ``grid.json`` with the rows it has checkpointed so
  far. Such a report is *running* (:attr:`Results.running`): its trials that have not all their
  epochs are RUNNING (PENDING: no trial directory yet), and a report written again later shows more;
* Parquet files alone (a copy of an interrupted grid's tables): those, as they are; nothing
  there can change them, so that report is not running.

Where the rows are (:mod:`aalr_ray.runner`, :mod:`aalr_ray.trainable`, :mod:`aalr_ray.distributed`)::

    <experiment>/grid.json                                 every trial's config
    <experiment>/<trial_name>_<trial_id>/checkpoint_000007/{run.pt,epochs.jsonl}
    <experiment>/<trial_name>_<trial_id>/ddp/checkpoint_<date>/{run.pt,epochs.jsonl}   data-parallel
    <experiment>/<trial_name>_<trial_id>/epochs.jsonl      live log, appended each epoch (local storage)

A trial's rows are those of its newest complete checkpoint (one that holds both files; names
sort in the order they were written), or of its live log when that has more. Everything is read
and checked before the caller writes anything: a damaged file is a ProgressError (or the
report's ReportError, results' RowsError) naming it, in one line. Neither Ray nor torch.
"""

from __future__ import annotations

import json
import math
import re

import pyarrow.fs as pafs

from . import storage as store
from .errors import one_line
from .report import ENDED, RUNNING, Results, load_results
from .results import ROWS_FILE, TRIALS_FILE, TrialResult, collect_trials, parse_rows

__all__ = ["read_experiment", "ProgressError", "GRID_FILE", "CHECKPOINT_FILE", "TRAIN_RUN_DIR", "CHECKPOINT_DIR"]

# The names of the runner's and the trainables' files. Those modules import Ray and torch, so the
# names are repeated here; tests/test_report_progress.py checks that they agree.
GRID_FILE = "grid.json"  # aalr_ray.runner.GRID_FILE
CHECKPOINT_FILE = "run.pt"  # aalr_ray.trainable.CHECKPOINT_FILE
TRAIN_RUN_DIR = "ddp"  # aalr_ray.distributed.TRAIN_RUN_NAME: Ray Train's run inside a data-parallel trial
CHECKPOINT_DIR = re.compile(r"checkpoint_[0-9][0-9_.-]*")  # aalr_ray.trainable._ANY_CHECKPOINT_DIR
# What a report reads of a trial config and of an epoch row.
CONFIG_KEYS = ("trial_name", "dataset", "model", "method", "training", "epochs")
ROW_NUMBERS = ("epoch", "lr", "train_loss", "test_acc", "epoch_s", "eval_s")
SOURCE = ("every trial's newest checkpoint so far in storage (its `epochs.jsonl`, or the trial's live "
          "`epochs.jsonl` where that is newer) and `grid.json`")


class ProgressError(ValueError):
    """An experiment file (grid.json, a trial's rows, the listing) that cannot be read; one line naming it."""


def read_experiment(experiment: str) -> Results:
    """The rows of ``experiment``'s report, finished or not (see the module docstring).

    ``Results.running`` is True while the grid has not ended: some trial of ``grid.json`` has
    neither all its epochs nor TERMINATED/ERROR in ``trials.parquet``. Raises ProgressError,
    ReportError or RowsError (one line naming the file) for anything damaged, StorageError when
    the storage cannot be read.
    """
    has_trials, has_grid = store.exists(f"{experiment}/{TRIALS_FILE}"), store.exists(f"{experiment}/{GRID_FILE}")
    if not has_trials and not has_grid:
        raise ProgressError(f"no {TRIALS_FILE} or {GRID_FILE} in {experiment}: "
                            "not an experiment directory written by aalr-ray grid")
    parquet = load_results(experiment) if has_trials else None
    if parquet is not None and (not has_grid or all(t["status"] in ENDED for t in parquet[0])):
        return Results(*parquet)
    configs = _grid_configs(f"{experiment}/{GRID_FILE}")
    collected = collect_trials(_trial_results(experiment, configs), configs)
    earlier = {t.get("trial_name"): t for t in parquet[0]} if parquet is not None else {}
    trials = [_with_status(trial, earlier.get(trial["trial_name"])) for trial in collected.trials]
    return Results(trials, collected.epochs, running=not all(t["status"] in ENDED for t in trials), source=SOURCE)


def _with_status(trial: dict, earlier: dict | None) -> dict:
    """A trial read from its checkpoints: RUNNING when it has fewer rows than epochs, unless
    trials.parquet says it failed and it has trained nothing since."""
    failed = earlier is not None and earlier["status"] == "ERROR"
    if failed and trial["epochs_done"] <= (earlier.get("epochs_done") or 0):
        return {**trial, "status": "ERROR", "error": earlier.get("error")}
    return {**trial, "status": RUNNING} if trial["status"] == "UNFINISHED" else trial


def _grid_configs(uri: str) -> list[dict]:
    """grid.json's trial configs, each with the fields the report reads."""
    fs, path = store.filesystem(uri)
    try:
        configs = json.loads(store.read_file(fs, path))
    except FileNotFoundError:
        raise ProgressError(f"{uri}: no such file") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ProgressError(f"{uri}: not JSON ({one_line(exc, 200)}); "
                            "not a grid.json written by aalr-ray grid") from None
    if not isinstance(configs, list) or not all(isinstance(c, dict) for c in configs):
        raise ProgressError(f"{uri}: not a list of trial configs; not a grid.json written by aalr-ray grid")
    # A search's entry ({"search", "spec", "config"}; aalr_ray.runner): its trials are in their own
    # experiments under searches/, reported (Tuning cost) once the grid has ended.
    configs = [c for c in configs if not {"search", "spec", "config"} <= c.keys()]
    for index, config in enumerate(configs):
        missing = [key for key in CONFIG_KEYS if key not in config]
        if missing:
            raise ProgressError(f"{uri}: trial {index} has no {', '.join(missing)}; "
                                "not a grid.json written by aalr-ray grid")
    return configs


def _listing(experiment: str) -> tuple[pafs.FileSystem, str, dict[str, dict[str, set[str]]], set[str]]:
    """(filesystem, root, {trial dir: {checkpoint dir: its file names}}, trial dirs with a live log), from
    one recursive listing (one paginated request on S3). A checkpoint dir is named relative to its
    trial dir (``checkpoint_000007``, ``ddp/checkpoint_<date>``)."""
    fs, root = store.filesystem(experiment)
    root = root.rstrip("/")
    try:
        infos = fs.get_file_info(pafs.FileSelector(root, recursive=True))
    except OSError as exc:
        raise store.StorageError(f"cannot list {experiment}: {one_line(exc)}") from None
    checkpoints: dict[str, dict[str, set[str]]] = {}
    live: set[str] = set()
    for info in infos:
        if info.type != pafs.FileType.File:
            continue
        parts = info.path[len(root) + 1:].split("/")
        trial_dir, inner = parts[0], parts[1:]
        if inner == [ROWS_FILE]:
            live.add(trial_dir)
        elif len(inner) == 2 and CHECKPOINT_DIR.fullmatch(inner[0]):
            checkpoints.setdefault(trial_dir, {}).setdefault(inner[0], set()).add(inner[1])
        elif len(inner) == 3 and inner[0] == TRAIN_RUN_DIR and CHECKPOINT_DIR.fullmatch(inner[1]):
            checkpoints.setdefault(trial_dir, {}).setdefault(f"{TRAIN_RUN_DIR}/{inner[1]}", set()).add(inner[2])
        elif inner:
            checkpoints.setdefault(trial_dir, {})  # a trial directory with no checkpoint yet
    return fs, root, checkpoints, live


def _trial_of(directory: str, names: set[str]) -> tuple[str, str] | None:
    """(trial name, trial id) of a ``<trial_name>_<trial_id>`` directory; the longest name that fits
    (names may hold "_"), None for a directory of no trial of the grid."""
    for cut in reversed([i for i, char in enumerate(directory) if char == "_"]):
        if directory[:cut] in names:
            return directory[:cut], directory[cut + 1:]
    return None


def _trial_results(experiment: str, configs: list[dict]) -> list[TrialResult]:
    """A TrialResult per trial directory of the grid's trials (the one with most rows, should a trial
    have two); trials without one are left to collect_trials (PENDING)."""
    fs, root, checkpoints, live = _listing(experiment)
    by_name = {c["trial_name"]: c for c in configs}
    found: dict[str, TrialResult] = {}
    for directory in sorted(checkpoints.keys() | live):
        trial = _trial_of(directory, by_name.keys())
        if trial is None:
            continue
        name, trial_id = trial
        rows = _trial_rows(fs, f"{root}/{directory}", checkpoints.get(directory, {}), directory in live)
        if name not in found or len(rows) > len(found[name].rows):
            found[name] = TrialResult(trial_id, by_name[name], rows, None)
    return list(found.values())


def _trial_rows(fs: pafs.FileSystem, trial_path: str, checkpoints: dict[str, set[str]],
                has_live: bool) -> list[dict]:
    """The rows of the trial's newest complete checkpoint (Tune's or Ray Train's), or of its live log when
    that has more."""
    candidates = []
    for run in sorted({name.rpartition("/")[0] for name in checkpoints}):  # "" (Tune) and "ddp" (Ray Train)
        newest_first = sorted((n for n in checkpoints if n.rpartition("/")[0] == run), reverse=True)
        for name in newest_first:
            if {CHECKPOINT_FILE, ROWS_FILE} <= checkpoints[name]:
                rows = _rows(fs, f"{trial_path}/{name}/{ROWS_FILE}")
                if rows is not None:
                    candidates.append(rows)
                    break
    if has_live:
        candidates.append(_rows(fs, f"{trial_path}/{ROWS_FILE}") or [])
    return max(candidates, key=len, default=[])


def _rows(fs: pafs.FileSystem, path: str) -> list[dict] | None:
    """An epoch log's rows, checked; None when it is gone (a checkpoint pruned since the listing)."""
    try:
        data = store.read_file(fs, path)
    except FileNotFoundError:
        return None
    uri = store.uri_of(fs, path)
    rows = parse_rows(data, uri)
    for number, row in enumerate(rows, start=1):
        for key in ROW_NUMBERS:
            value = row.get(key)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or (
                    key == "epoch" and not math.isfinite(value)):
                raise ProgressError(f"{uri}: line {number} has no number {key!r} "
                                    f"(it has {json.dumps(value)[:40]}); not an epoch log written by aalr-ray")
    return rows
