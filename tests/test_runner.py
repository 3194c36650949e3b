"""The grid runner end to end on a real local Ray: Parquet files, report, rerun, resume."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from aalr_ray.cli import main
from aalr_ray.report import write_report
from aalr_ray.runner import GridRunError, run_grid
from aalr_ray.train import RunConfig, TrainingRun

pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    from aalr_ray.data import load_dataset

    directory = tmp_path_factory.mktemp("data")
    load_dataset("mnist1d", data_dir=directory)
    return str(directory)


def write_job(path, **fields):
    job = {"name": "tiny", "epochs": 3, "seeds": 2, "datasets": ["mnist1d"], "models": ["mnist1d-cnn"],
           "methods": ["aalr", "step"], "max_concurrent": 2, **fields}
    path.write_text(yaml.safe_dump(job))
    return path


def checkpoints(experiment: Path) -> dict[str, int]:
    """Epochs checkpointed so far per trial (the newest checkpoint_NNNNNN index + 1)."""
    return {trial.name: 1 + max((int(c.name.split("_")[1]) for c in trial.glob("checkpoint_*")), default=-1)
            for trial in experiment.iterdir() if trial.is_dir()}


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
    assert list(experiment.glob("*/events.out.tfevents.*"))  # TensorBoard scalars per trial

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


def test_interrupted_grid_resumes_without_rerunning_finished_trials(local_ray, data_dir, tmp_path):
    # Seed 0 trains 2 epochs, seed 1 eight; the driver is interrupted in between.
    job = write_job(tmp_path / "slow.yaml", name="slow", models=["factories:slow_mlp"], methods=["aalr"],
                    epochs=8, overrides=[{"match": {"seed": 0}, "set": {"epochs": 2}}])
    storage = tmp_path / "results"
    experiment = storage / "slow"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")]))
    cmd = [sys.executable, "-m", "aalr_ray.cli", "grid", str(job), "--storage", str(storage), "--data-dir", data_dir]
    driver = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    def counts():
        found = checkpoints(experiment) if experiment.exists() else {}
        return sorted(found.values())

    deadline = time.time() + 240
    while not (len(counts()) == 2 and counts()[0] == 2 and counts()[1] >= 3):
        assert driver.poll() is None, driver.stdout.read()
        assert time.time() < deadline
        time.sleep(0.2)
    driver.send_signal(signal.SIGINT)
    output, _ = driver.communicate(timeout=180)
    assert driver.returncode == 1, output
    assert "continue with --resume" in output
    trials = pq.read_table(experiment / "trials.parquet").to_pylist()
    assert sorted(t["status"] for t in trials) == ["TERMINATED", "UNFINISHED"]
    finished = {name: n for name, n in checkpoints(experiment).items() if "-s0_" in name}

    result = subprocess.run(cmd[:-2], env=env, capture_output=True, text=True, timeout=300)
    assert "--resume" in result.stderr and result.returncode == 2  # refuses without --resume
    result = subprocess.run(cmd + ["--resume"], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    trials = pq.read_table(experiment / "trials.parquet").to_pylist()
    assert all(t["status"] == "TERMINATED" for t in trials)
    assert sorted(t["epochs_done"] for t in trials) == [2, 8]
    assert {name: n for name, n in checkpoints(experiment).items() if "-s0_" in name} == finished
    epochs = pq.read_table(experiment / "epochs.parquet").to_pylist()
    long_trial = [r["epoch"] for r in epochs if r["seed"] == 1]
    assert sorted(long_trial) == list(range(1, 9))  # every epoch once, across the interruption
