"""An experiment's results as files: the per-epoch log of a trial and the two Parquet tables.

* ``epochs.jsonl``: one JSON row per epoch, appended by a trial as it trains
  and carried in every checkpoint (:func:`read_rows`, :func:`write_rows`);
* ``epochs.parquet``: every trial's rows, one per trial per epoch;
* ``trials.parquet``: one summary row per trial (:func:`trial_summary`).

Free of Ray and torch (pyarrow and the standard library only), so that the
report, and anything else that only reads results, runs where neither is
installed. The grid driver (:mod:`aalr_ray.runner`) gathers each trial's
rows from Tune and hands them here as :class:`TrialResult`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import pyarrow as pa

from . import storage as store
from .files import atomic_open

__all__ = ["EPOCHS_FILE", "TRIALS_FILE", "ROWS_FILE", "JSON_FIELDS", "RUN_CONTEXT_FIELDS", "RowsError", "read_rows",
           "parse_rows", "write_rows", "trial_summary", "TrialResult", "Collected", "collect_trials", "table_of",
           "write_parquet"]

EPOCHS_FILE = "epochs.parquet"
TRIALS_FILE = "trials.parquet"
ROWS_FILE = "epochs.jsonl"
# Config fields that are dicts or mixed types go into Parquet as JSON text.
JSON_FIELDS = ("method_options", "robust_eval", "training")
# Row fields that say where and how fast an epoch ran: two runs of the same trial differ
# in these alone (on one machine), so comparisons of runs leave them out.
RUN_CONTEXT_FIELDS = ("epoch_s", "eval_s", "node", "node_ip")
# Config fields that say where and how a trial ran, not what it trained: not results.
_MACHINE_FIELDS = ("data_dir", "threads", "device")


# ------------------------------------------------------------ the epoch log
class RowsError(ValueError):
    """An epoch log with a bad line before its last; the message names the file and the line."""


def read_rows(path: Path) -> list[dict]:
    """The rows of a JSON-lines epoch log ([] when there is none).

    A torn last line is dropped: a process killed mid-append leaves one, and
    the epoch it belongs to is trained again. A bad line anywhere else is not
    a crash's trace but a damaged file, and raises RowsError rather than
    silently losing every later row.
    """
    path = Path(path)
    if not path.exists():
        return []
    return parse_rows(path.read_bytes(), str(path))


def parse_rows(data: bytes, source: str) -> list[dict]:
    """The rows of an epoch log's bytes, read from ``source`` (a path or URI, named in errors);
    the rules of :func:`read_rows`."""
    try:
        lines = data.decode().splitlines()
    except UnicodeDecodeError as exc:
        raise RowsError(f"{source}: not UTF-8 text (byte {exc.start}); not an epoch log") from None
    rows = []
    for number, line in enumerate(lines, start=1):
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            if number == len(lines):
                break
            raise RowsError(f"{source}: line {number} of {len(lines)} is not a JSON row ({exc.msg}, "
                            f"column {exc.colno}); only a torn last line is dropped") from None
        if not isinstance(row, dict):
            raise RowsError(f"{source}: line {number} of {len(lines)} is not a JSON object "
                            f"(it is a {type(row).__name__})")
        rows.append(row)
    return rows


def write_rows(path: Path, rows: list[dict]) -> None:
    """Write ``rows`` as ``path``'s JSON lines, atomically (a killed writer leaves the old file)."""
    with atomic_open(path, "w") as stream:
        stream.writelines(json.dumps(row) + "\n" for row in rows)


# --------------------------------------------------------------- summaries
def _flat_config(config: dict) -> dict:
    flat = {k: v for k, v in config.items() if k not in _MACHINE_FIELDS}
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
        for key in ("node", "node_ip"):  # where it trained (a DDP row names every rank's), each node once
            if any(key in r for r in rows):
                nodes = (node for r in rows if key in r for node in str(r[key]).split(","))
                summary[key] = ",".join(dict.fromkeys(nodes))
        for key in ("fgsm_acc", "pgd_acc"):
            if key in last:
                summary[f"final_{key}"] = last.get(f"final_{key}", last[key])
                summary[f"peak_{key}"] = max(r[key] for r in rows)
        for key in ("val_loss", "val_acc"):  # with a validation split: what a search selects on
            if key in last:
                summary[f"final_{key}"] = last.get(f"final_{key}", last[key])
    return summary


@dataclass
class TrialResult:
    """What the grid driver read from one trial: Tune's id and config, its rows, its error line or None."""

    trial_id: str
    config: dict
    rows: list[dict]
    error: str | None


@dataclass
class Collected:
    epochs: list[dict]
    trials: list[dict]

    @property
    def complete(self) -> bool:
        # STOPPED: a search's scheduler (ASHA) or its epoch budget ended the trial early, on purpose.
        return all(t["status"] in ("TERMINATED", "STOPPED") for t in self.trials)


def _status(config: dict, rows: list[dict], error: str | None) -> str:
    if error is not None:
        return "ERROR"
    return "TERMINATED" if len(rows) >= config["epochs"] else "UNFINISHED"


def collect_trials(results: Iterable[TrialResult], configs: list[dict]) -> Collected:
    """The rows of both tables from the trials' results.

    Every config of the grid gets a trials row: one that Tune never started
    (an interrupted run) is PENDING with no epochs.
    """
    by_name = {c["trial_name"]: c for c in configs}
    epochs, trials, seen = [], [], set()
    for result in results:
        config = by_name.get(result.config.get("trial_name"), result.config)
        seen.add(config.get("trial_name"))
        status = _status(config, result.rows, result.error)
        for row in result.rows:
            epochs.append({"trial_id": result.trial_id, **_flat_config(config), **row})
        trials.append({"trial_id": result.trial_id, **trial_summary(config, result.rows, status, result.error)})
    for name, config in by_name.items():
        if name not in seen:
            trials.append({"trial_id": None, **trial_summary(config, [], "PENDING", None)})
    return Collected(epochs, trials)


# ------------------------------------------------------------------ Parquet
def _numbers_as_floats(values: list) -> list:
    """A column mixing ints and floats as floats (NaN losses stay NaN); any other column unchanged."""
    numeric = all(isinstance(v, (int, float)) or v is None for v in values if not isinstance(v, bool))
    if not (numeric and any(isinstance(v, float) for v in values)):
        return values
    return [float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else v for v in values]


def table_of(records: list[dict]) -> pa.Table:
    """The records as an Arrow table: one column per key seen in any record, null where a record lacks it."""
    columns: dict[str, None] = {}
    for record in records:
        columns.update(dict.fromkeys(record))
    data = {c: _numbers_as_floats([r.get(c) for r in records]) for c in columns}
    if "error" in data:
        data["error"] = pa.array(data["error"], type=pa.string())  # typed even when no trial failed
    return pa.table(data)


def write_parquet(experiment: str, collected: Collected) -> None:
    """``epochs.parquet`` and ``trials.parquet`` into ``experiment`` (a local path or a URI), each atomically."""
    store.write_table(f"{experiment}/{EPOCHS_FILE}", table_of(collected.epochs))
    store.write_table(f"{experiment}/{TRIALS_FILE}", table_of(collected.trials))
