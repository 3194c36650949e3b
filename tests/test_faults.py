"""Nothing a user ran is lost: real grid drivers interrupted at every stage, a full disk, two drivers.

The harness (drivers in subprocesses, fault points, row counting against an
uninterrupted in-process run) lives in bench/faults.py, which also writes the
"Faults and bad input" table of BENCHMARKS.md; the full disk is tested in
tests/test_full_disk.py.
"""

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
import faults  # noqa: E402

pytestmark = [pytest.mark.ray, pytest.mark.slow]


@pytest.fixture(scope="module")
def reference(data_dir, tmp_path_factory):
    return faults.reference_rows(faults.write_job(tmp_path_factory.mktemp("job")), data_dir)


def test_interrupted_three_times_then_resumed_gives_every_row_once(tmp_path, data_dir, reference):
    job, storage = faults.write_job(tmp_path), tmp_path / "results"
    experiment = storage / faults.JOB["name"]
    outcome = faults.Outcome("chain")
    command = faults.grid_command(job, storage, data_dir)

    # 1. Ctrl-C while the first two trials run: two trials never started.
    driver = faults.start(command, tmp_path / "1.log")
    faults.wait_for(lambda: faults.running_first_pair(experiment), driver)
    os.killpg(driver.pid, signal.SIGINT)
    assert faults.finish(driver, tmp_path / "1.log", "ctrl-c", outcome) == 1
    log = (tmp_path / "1.log").read_text()
    assert "4 of 4 trials did not finish" in log and "continue with --resume" in log
    statuses = sorted(t["status"] for t in pq.read_table(experiment / "trials.parquet").to_pylist())
    assert statuses == ["PENDING", "PENDING", "UNFINISHED", "UNFINISHED"]
    refused = subprocess.run(command, env=faults._env(), capture_output=True, text=True, timeout=120)
    assert refused.returncode == 2 and "continue it with --resume" in refused.stderr  # no silent restart

    # 2. Resume; while it runs, a second driver is refused naming the first; then kill -9 the
    #    resumed driver and its Ray after two trials finished and two are mid-run.
    driver = faults.start(command + ["--resume"], tmp_path / "2.log")
    faults.wait_for(lambda: faults.running_second_pair(experiment), driver)
    os.kill(driver.pid, signal.SIGSTOP)  # alive for certain while the second one tries
    try:
        second = subprocess.run(command + ["--resume"], env=faults._env(), capture_output=True, text=True,
                                timeout=120)
    finally:
        os.kill(driver.pid, signal.SIGCONT)
    errors = [line for line in second.stderr.splitlines() if line.strip()]
    assert second.returncode == 2 and len(errors) == 1, second.stderr
    assert f"pid {driver.pid}" in errors[0] and socket.gethostname() in errors[0]
    faults.kill_tree(driver.pid)
    faults.finish(driver, tmp_path / "2.log", "kill -9", outcome)
    finished = {name: n for name, n in faults.checkpoints(experiment).items() if n >= faults.EPOCHS}
    assert len(finished) >= 2

    # 3. Resume, killed -9 between the two Parquet writes of the final collection.
    wrapper = [sys.executable, faults.__file__, "--die-in-collect", "SIGKILL", "--", *command[3:], "--resume"]
    assert faults.run(wrapper, tmp_path / "3.log", "kill -9 in collection", outcome) == -signal.SIGKILL

    # 4. The last resume trains what is left and writes everything.
    assert faults.run(command + ["--resume"], tmp_path / "4.log", "resume", outcome) == 0
    faults.count_rows(experiment, reference, outcome)
    assert (outcome.expected, outcome.present, outcome.duplicated, outcome.differing) == (16, 16, 0, 0)
    trials = pq.read_table(experiment / "trials.parquet").to_pylist()
    assert sorted(t["status"] for t in trials) == ["TERMINATED"] * 4
    # Finished trials were not trained again (their newest checkpoint is still the same).
    assert {name: faults.checkpoints(experiment)[name] for name in finished} == finished
    for log in ("2.log", "3.log", "4.log"):  # resumes are quiet about checkpoints Tune pruned
        assert "Error handling checkpoint" not in (tmp_path / log).read_text()
    # The live epochs.jsonl is in every trial directory, also for trials run in a reused actor.
    for trial in (d for d in experiment.iterdir() if d.is_dir() and not d.name.startswith(".")):
        assert (trial / "epochs.jsonl").exists(), trial.name


def test_resume_of_nothing_is_refused_and_leaves_nothing(tmp_path):
    from aalr_ray.runner import GridRunError, run_grid

    job = faults.write_job(tmp_path)
    with pytest.raises(GridRunError, match="nothing to resume"):
        run_grid(str(job), storage=str(tmp_path / "results"), resume=True)
    assert not (tmp_path / "results" / faults.JOB["name"]).exists()
