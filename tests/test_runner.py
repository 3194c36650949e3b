"""The grid runner end to end on a real local Ray: Parquet files, report, rerun (interruptions and
resume: tests/test_faults.py)."""

from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from aalr_ray.cli import main
from aalr_ray.report import write_report
from aalr_ray.runner import GridRunError, run_grid
from aalr_ray.train import RunConfig, TrainingRun

pytestmark = pytest.mark.ray


def write_job(path, **fields):
    job = {"name": "tiny", "epochs": 3, "seeds": 2, "datasets": ["mnist1d"], "models": ["mnist1d-cnn"],
           "methods": ["aalr", "step"], "max_concurrent": 2, **fields}
    path.write_text(yaml.safe_dump(job))
    return path


def checkpoints(experiment: Path) -> dict[str, int]:
    """Epochs checkpointed so far per trial (the newest checkpoint_NNNNNN index + 1)."""
    return {trial.name: 1 + max((int(c.name.split("_")[1]) for c in trial.glob("checkpoint_*")), default=-1)
            for trial in experiment.iterdir() if trial.is_dir()}


def assert_tensorboard_has_every_epoch(experiment: Path, trials: list[dict], epochs: list[dict]) -> None:
    """TensorBoard's own reader finds, per trial, lr, train_loss and test_acc at every epoch (phase for AALR)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    for trial in trials:
        (directory,) = [d for d in experiment.iterdir() if d.name.endswith("_" + trial["trial_id"])]
        events = EventAccumulator(str(directory))
        events.Reload()
        rows = sorted((r for r in epochs if r["trial_id"] == trial["trial_id"]), key=lambda r: r["epoch"])
        names = ("lr", "train_loss", "test_acc") + (("phase",) if trial["method"] == "aalr" else ())
        for name in names:
            scalars = events.Scalars(f"ray/tune/{name}")
            assert [s.step for s in scalars] == [r["epoch"] for r in rows], (trial["trial_name"], name)
            assert [s.value for s in scalars] == pytest.approx([r[name] for r in rows], rel=1e-6)


def test_tiny_grid_end_to_end(local_ray, data_dir, tmp_path, capsys):
    job = write_job(tmp_path / "tiny.yaml")
    experiment, collected = run_grid(str(job), storage=str(tmp_path / "results"), data_dir=data_dir)
    assert collected.complete
    experiment = Path(experiment)
    assert experiment == tmp_path / "results" / "tiny"

    epochs = pq.read_table(experiment / "epochs.parquet").to_pylist()
    trials = pq.read_table(experiment / "trials.parquet").to_pylist()
    assert len(trials) == 4 and len(epochs) == 4 * 3
    assert {(t["method"], t["seed"]) for t in trials} == {("aalr", 0), ("aalr", 1), ("step", 0), ("step", 1)}
    for column in ("trial_id", "model", "dataset", "method", "seed", "batch_size", "epoch", "lr", "train_loss",
                   "test_loss", "test_acc", "epoch_s", "epochs_done"):
        assert column in epochs[0], column
    for column in ("final_test_acc", "peak_test_acc", "peak_epoch", "epochs_to_99pct_peak", "rollbacks",
                   "wall_s", "status"):
        assert column in trials[0], column
    assert all(t["status"] == "TERMINATED" and t["epochs_done"] == 3 for t in trials)

    # The aalr seed-0 trial's rows are exactly a plain run's rows.
    trial = next(t for t in trials if t["method"] == "aalr" and t["seed"] == 0)
    rows = sorted((r for r in epochs if r["trial_id"] == trial["trial_id"]), key=lambda r: r["epoch"])
    plain = list(TrainingRun(RunConfig(model="mnist1d-cnn", dataset="mnist1d", method="aalr", epochs=3,
                                       data_dir=data_dir)))
    assert [r["lr"] for r in rows] == [r["lr"] for r in plain]
    assert [r["train_loss"] for r in rows] == [r["train_loss"] for r in plain]
    assert trial["peak_test_acc"] == max(r["test_acc"] for r in plain)

    report = Path(write_report(str(experiment)))
    text = report.read_text()
    assert "| model | aalr | step |" in text and "mnist1d-cnn" in text
    for png in ("lr_mnist1d_natural.png", "test_acc_mnist1d_natural.png", "train_loss_mnist1d_natural.png"):
        assert (experiment / png).stat().st_size > 1000
    assert_tensorboard_has_every_epoch(experiment, trials, epochs)

    # The same command again: reports, trains nothing.
    before = checkpoints(experiment)
    again, collected = run_grid(str(job), storage=str(tmp_path / "results"), data_dir=data_dir)
    assert collected is None and checkpoints(experiment) == before
    assert "already complete" in capsys.readouterr().out

    # A changed grid under the same name is refused rather than mixed in.
    write_job(job, epochs=4)
    with pytest.raises(GridRunError, match="different grid"):
        run_grid(str(job), storage=str(tmp_path / "results"), data_dir=data_dir)


def test_report_command_rewrites_the_report_from_parquet_alone(local_ray, data_dir, tmp_path, capsys):
    job = write_job(tmp_path / "tiny.yaml", seeds=1, epochs=2)
    experiment, _ = run_grid(str(job), storage=str(tmp_path / "results"), data_dir=data_dir)
    moved = tmp_path / "copied"
    moved.mkdir()
    for name in ("epochs.parquet", "trials.parquet"):
        (moved / name).write_bytes((Path(experiment) / name).read_bytes())
    assert main(["report", str(moved)]) == 0
    assert (moved / "report.md").exists() and (moved / "lr_mnist1d_natural.png").exists()
    assert main(["report", str(tmp_path / "nothing-here")]) == 2
    assert "no trials.parquet" in capsys.readouterr().err


def test_collection_takes_the_newest_complete_checkpoint_not_only_the_one_tune_registered(tmp_path, data_dir):
    """After a full disk or a lost driver Tune's result can name an older checkpoint (even one pruned
    since) than the trial wrote into storage: the rows come from the newest complete one."""
    from types import SimpleNamespace

    import pyarrow.fs as pafs
    from ray import tune

    from aalr_ray.checkpoints import SnapshotFiles
    from aalr_ray.runner import _rows_of
    from aalr_ray.trainable import CHECKPOINT_FILE, train_next_epoch, write_checkpoint_dir

    trial = tmp_path / "trial_0"
    run = TrainingRun(RunConfig(model="mnist1d-cnn", dataset="mnist1d", method="aalr", epochs=3, data_dir=data_dir))
    snapshots, rows = SnapshotFiles(pafs.LocalFileSystem(), str(trial / "snapshots")), []
    for index in range(3):
        rows.append(train_next_epoch(run))
        (trial / f"checkpoint_{index:06d}").mkdir(parents=True)
        write_checkpoint_dir(run, rows, trial / f"checkpoint_{index:06d}", snapshots)
    (trial / "checkpoint_000002" / CHECKPOINT_FILE).unlink()  # the newest, cut short: not complete
    registered = SimpleNamespace(checkpoint=tune.Checkpoint(str(trial / "checkpoint_000000")), metrics={})
    assert _rows_of(registered) == rows[:2]
    for path in (trial / "checkpoint_000000").iterdir():  # pruned since Tune registered it
        path.unlink()
    (trial / "checkpoint_000000").rmdir()
    assert _rows_of(registered) == rows[:2]


def test_an_experiment_started_before_new_run_fields_is_still_the_same_grid():
    """grid.json of an older version lacks fields RunConfig gained since (precision, validation, ...):
    at their defaults they are what the older trials ran with, so --resume goes on; anything else differs."""
    from aalr_ray.runner import _same_grid

    current = [{"trial_name": "a", "epochs": 3, "precision": "auto", "validation": None, "augment_on": "auto"}]
    older = [{"trial_name": "a", "epochs": 3}]
    assert _same_grid(older, current)
    assert not _same_grid(older, [{**current[0], "validation": 0.1}])  # a new field set: a new grid
    assert not _same_grid([{"trial_name": "a", "epochs": 4}], current)
    assert not _same_grid([{**older[0], "gone": 1}], current)
    assert not _same_grid(older + older, current) and not _same_grid({"a": 1}, current)
