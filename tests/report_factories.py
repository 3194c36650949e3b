"""Experiments on disk as `aalr-ray grid` leaves them while it runs, without Ray.

grid.json holds every trial config (the real grid expansion's); a trial directory
``<trial_name>_<trial_id>`` holds Tune checkpoint directories ``checkpoint_NNNNNN``
(or, for a data-parallel trial, Ray Train's ``ddp/checkpoint_<date>``), each with
``run.pt`` and ``epochs.jsonl`` (every row so far), and on local storage the live
``epochs.jsonl``. The rows have every field a trainable's rows have that the
report and the trials summary read.
"""
import json
from pathlib import Path

from aalr_ray.grid import expand, parse_grid
from aalr_ray.results import write_rows

NOT_IN_GRID_FILE = ("data_dir", "threads")  # aalr_ray.runner's: grid.json leaves them out


def grid_configs(name: str, *, epochs: int, seeds: int, methods=("aalr", "step"), models=("mlp",)) -> list[dict]:
    grid = parse_grid({"name": name, "epochs": epochs, "seeds": seeds, "datasets": ["mnist1d"],
                       "models": list(models), "methods": list(methods)})
    return [{k: v for k, v in c.items() if k not in NOT_IN_GRID_FILE} for c in expand(grid)]


def epoch_rows(config: dict, count: int) -> list[dict]:
    """``count`` rows of the trial: accuracy rising per epoch, apart per method and seed."""
    offset = 0.02 * config["seed"] + (0.05 if config["method"] == "aalr" else 0.0)
    return [{"epoch": e, "lr": 0.1 / e, "train_loss": 2.0 / e, "test_loss": 2.1 / e,
             "test_acc": min(0.99, 0.3 + 0.05 * e + offset), "epoch_s": 0.5, "eval_s": 0.1,
             "action": "continue" if config["method"] == "aalr" else None} for e in range(1, count + 1)]


def trial_dir(experiment: Path, config: dict, index: int) -> Path:
    return experiment / f"{config['trial_name']}_a1b2c3d4_{index:05d}"


def start(experiment: Path, configs: list[dict]) -> None:
    """What the runner writes before Tune starts: grid.json."""
    experiment.mkdir(parents=True, exist_ok=True)
    (experiment / "grid.json").write_text(json.dumps(configs, indent=1))


def checkpoint(directory: Path, rows: list[dict], *, ddp: bool = False, complete: bool = True) -> Path:
    """A checkpoint directory after ``len(rows)`` epochs (Tune's name, or Ray Train's under ddp/)."""
    epoch = len(rows)
    name = f"ddp/checkpoint_2025-06-01_12-00-{epoch:02d}.000000" if ddp else f"checkpoint_{epoch - 1:06d}"
    path = directory / name
    path.mkdir(parents=True)
    write_rows(path / "epochs.jsonl", rows)
    if complete:
        (path / "run.pt").write_bytes(b"weights")  # never read by the report
    return path


def train(directory: Path, config: dict, epochs: int, *, ddp: bool = False, live: bool = True,
          every: int = 1) -> list[dict]:
    """A trial that trained ``epochs`` epochs: a checkpoint every ``every`` epochs (the last two kept) and
    the live log with every row."""
    rows = epoch_rows(config, epochs)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "params.json").write_text(json.dumps(config))
    for done in [e for e in range(1, epochs + 1) if e % every == 0][-2:]:
        checkpoint(directory, rows[:done], ddp=ddp)
    if live:
        write_rows(directory / "epochs.jsonl", rows)
    return rows
