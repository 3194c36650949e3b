"""Reports of grids that run or were interrupted: rows read from the trials' checkpoints, without Ray.

The experiments are built on disk the way the runner and the trainables leave them
(tests/report_factories.py): grid.json, trial directories with checkpoint
directories, Ray Train's under ddp/ for a data-parallel trial, and live logs.
"""
import json
import re
import threading
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from aalr_ray import progress, report
from aalr_ray.cli import main
from aalr_ray.results import TrialResult, collect_trials, table_of, write_rows
from report_factories import checkpoint, epoch_rows, grid_configs, start, train, trial_dir

EPOCHS = 6
REFRESH_TAG = re.compile(r'<meta http-equiv="refresh" content="(\d+)">')


def tree(directory: Path) -> dict[str, bytes]:
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def one_error_line(capsys) -> str:
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("aalr-ray: error:"), lines
    return lines[0]


def rows_of(experiment: Path) -> tuple[list[dict], list[dict]]:
    results = progress.read_experiment(str(experiment))
    return results.trials, results.epochs


@pytest.fixture
def running(tmp_path):
    """A grid of aalr and step, 3 seeds, mid-run. aalr: seed 0 finished, seed 1 finished as a
    data-parallel trial, seed 2 at epoch 2 with a newer checkpoint cut short (no run.pt). step: seed 0
    at epoch 4 in its live log, its newest checkpoint at 3; seed 1 not started; seed 2's directory
    made but no epoch yet. Returns (experiment, configs by trial name, rows each trial should show)."""
    experiment = tmp_path / "prog"
    configs = grid_configs("prog", epochs=EPOCHS, seeds=3)
    start(experiment, configs)
    by = {(c["method"], c["seed"]): c for c in configs}
    shown = {}
    for index, ((method, seed), config) in enumerate(by.items()):
        directory = trial_dir(experiment, config, index)
        if (method, seed) == ("aalr", 0):
            rows = train(directory, config, EPOCHS)
        elif (method, seed) == ("aalr", 1):
            rows = train(directory, config, EPOCHS, ddp=True, live=False)
        elif (method, seed) == ("aalr", 2):
            rows = train(directory, config, 2, live=False)
            checkpoint(directory, epoch_rows(config, 3), complete=False)  # being written: no run.pt yet
        elif (method, seed) == ("step", 0):
            rows = train(directory, config, 4, every=3)
        elif (method, seed) == ("step", 2):
            directory.mkdir()
            (directory / "params.json").write_text(json.dumps(config))
            rows = []
        else:
            rows = []
        shown[config["trial_name"]] = rows
    return experiment, {c["trial_name"]: c for c in configs}, shown


# ------------------------------------------------------------------ reading
def test_each_trial_shows_its_newest_complete_checkpoint_or_its_longer_live_log(running):
    experiment, configs, shown = running
    results = progress.read_experiment(str(experiment))
    assert results.running
    by_name = {t["trial_name"]: t for t in results.trials}
    assert by_name.keys() == configs.keys()
    for name, rows in shown.items():
        trial = by_name[name]
        assert trial["epochs_done"] == len(rows), name
        got = sorted((r for r in results.epochs if r.get("trial_name") == name), key=lambda r: r["epoch"])
        assert [r["test_acc"] for r in got] == [r["test_acc"] for r in rows], name
        expected = ("TERMINATED" if len(rows) == EPOCHS else
                    "PENDING" if not any(p.name.startswith(name + "_") for p in experiment.iterdir()) else "RUNNING")
        assert trial["status"] == expected, name


def test_tables_mark_running_and_not_started_trials_and_figures_show_what_exists(running, capsys):
    experiment, configs, shown = running
    assert main(["report", str(experiment)]) == 0, capsys.readouterr().err
    text = (experiment / "report.md").read_text()
    page = (experiment / "report.html").read_text()
    sections = report.build_tables(*rows_of(experiment))
    [peak] = [t for t in sections[0].tables if t.title.startswith("Peak test")]
    columns = peak.columns[1:]
    [(_, cells)] = peak.rows
    aalr, step = cells[columns.index("aalr")], cells[columns.index("step")]
    aalr_running = len(shown["aalr-mlp-mnist1d-bs128-s2"])
    step_running = len(shown["step-mlp-mnist1d-bs128-s0"])
    assert aalr.note == f"running, epoch {aalr_running}/{EPOCHS}"
    assert aalr.text.endswith("(n=2)") and aalr.best  # the two finished seeds
    assert step.note == f"running, epoch {step_running}/{EPOCHS}; 2 not started" and step.text == ""
    for note in (aalr.note, step.note):
        assert note in text and note in page
    assert f"_{step.note}_" in text  # in the Markdown table's cell, in italics
    for name in ("lr", "test_acc", "train_loss", "trials"):
        assert (experiment / f"{name}_mnist1d_natural.png").stat().st_size > 1000
    assert page.count('<img src="data:image/png;base64,') == 4
    assert [int(n) for n in REFRESH_TAG.findall(page)] == [report.REFRESH_S]
    finished = sum(len(rows) == EPOCHS for rows in shown.values())
    assert f"The grid has not ended: {finished} of {len(configs)} trials finished" in text
    out = capsys.readouterr().out
    assert f"report: {experiment}/report.md" in out and f"report: {experiment}/report.html" in out


def test_a_grid_resumed_after_an_interruption_shows_the_checkpoints_newer_than_its_parquet(running):
    """trials.parquet of the interrupted run (UNFINISHED trials) stays behind what --resume trains since."""
    experiment, configs, shown = running
    stale = collect_trials([TrialResult("x", c, epoch_rows(c, 1), None) for c in configs.values()],
                           list(configs.values()))
    pq.write_table(table_of(stale.trials), experiment / "trials.parquet")
    pq.write_table(table_of(stale.epochs), experiment / "epochs.parquet")
    results = progress.read_experiment(str(experiment))
    assert results.running and {t["trial_name"]: t["epochs_done"] for t in results.trials} == {
        name: len(rows) for name, rows in shown.items()}


def test_an_interrupted_grid_without_its_checkpoints_is_reported_from_parquet_and_does_not_reload(
        running, tmp_path, capsys):
    """Only the Parquet files copied (no grid.json): nothing there can change, so no refresh."""
    experiment, _, shown = running
    results = progress.read_experiment(str(experiment))
    copy = tmp_path / "copy"
    copy.mkdir()
    trials = [{**t, "status": "UNFINISHED" if t["status"] == "RUNNING" else t["status"]} for t in results.trials]
    pq.write_table(table_of(trials), copy / "trials.parquet")
    pq.write_table(table_of(results.epochs), copy / "epochs.parquet")
    assert main(["report", str(copy)]) == 0, capsys.readouterr().err
    page = (copy / "report.html").read_text()
    assert not REFRESH_TAG.search(page)
    assert f"interrupted, epoch {len(shown['step-mlp-mnist1d-bs128-s0'])}/{EPOCHS}" in page


def test_a_grid_that_ended_is_reported_from_parquet_alone(running):
    experiment, configs, _ = running
    finished = collect_trials([TrialResult(f"t{i}", c, epoch_rows(c, EPOCHS), None)
                               for i, c in enumerate(configs.values())], list(configs.values()))
    pq.write_table(table_of(finished.trials), experiment / "trials.parquet")
    pq.write_table(table_of(finished.epochs), experiment / "epochs.parquet")
    results = progress.read_experiment(str(experiment))
    assert not results.running and {t["trial_id"] for t in results.trials} == {t["trial_id"]
                                                                              for t in finished.trials}
    assert main(["report", str(experiment)]) == 0
    page = (experiment / "report.html").read_text()
    assert not REFRESH_TAG.search(page) and "running" not in (experiment / "report.md").read_text()


def test_the_file_names_agree_with_the_runner_and_the_trainables():
    from aalr_ray import distributed, runner, trainable

    assert progress.GRID_FILE == runner.GRID_FILE
    assert progress.CHECKPOINT_FILE == trainable.CHECKPOINT_FILE
    assert progress.TRAIN_RUN_DIR == distributed.TRAIN_RUN_NAME
    assert progress.CHECKPOINT_DIR.pattern == trainable._ANY_CHECKPOINT_DIR.pattern


# ---------------------------------------------------------------- bad input
def _newest_checkpoint_rows(experiment: Path, trial: str) -> Path:
    [directory] = experiment.glob(f"{trial}_*")
    return sorted(p for p in directory.glob("checkpoint_*") if (p / "run.pt").exists())[-1] / "epochs.jsonl"


def _spoil_middle_line(path: Path) -> None:
    lines = path.read_text().splitlines()
    lines[1] = lines[1][: len(lines[1]) // 2]
    path.write_text("\n".join(lines) + "\n")


def _drop_key(path: Path, key: str) -> None:
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    del rows[0][key]
    write_rows(path, rows)


@pytest.mark.parametrize("spoil, culprit, fragment", [
    (lambda e: _spoil_middle_line(_newest_checkpoint_rows(e, "aalr-mlp-mnist1d-bs128-s0")),
     lambda e: _newest_checkpoint_rows(e, "aalr-mlp-mnist1d-bs128-s0"), "line 2 of"),
    (lambda e: _spoil_middle_line(next(e.glob("step-mlp-mnist1d-bs128-s0_*")) / "epochs.jsonl"),
     lambda e: next(e.glob("step-mlp-mnist1d-bs128-s0_*")) / "epochs.jsonl", "is not a JSON row"),
    (lambda e: _drop_key(_newest_checkpoint_rows(e, "aalr-mlp-mnist1d-bs128-s2"), "test_acc"),
     lambda e: _newest_checkpoint_rows(e, "aalr-mlp-mnist1d-bs128-s2"), "line 1 has no number 'test_acc'"),
    (lambda e: (e / "grid.json").write_text('[{"trial_name": '), lambda e: e / "grid.json", "not JSON"),
    (lambda e: (e / "grid.json").write_text('[{"trial_name": "x"}]'), lambda e: e / "grid.json",
     "trial 0 has no dataset"),
    (lambda e: (e / "trials.parquet").write_bytes(b"PAR1 torn"), lambda e: e / "trials.parquet",
     "not a readable Parquet table"),
], ids=["checkpoint-rows", "live-log", "row-without-test_acc", "grid.json-torn", "grid.json-not-configs",
        "trials.parquet-torn"])
def test_a_damaged_file_is_one_line_naming_it_exit_2_and_nothing_written(running, capsys, spoil, culprit,
                                                                        fragment):
    experiment, _, _ = running
    spoil(experiment)
    before = tree(experiment)
    assert main(["report", str(experiment)]) == 2
    line = one_error_line(capsys)
    assert str(culprit(experiment)) in line and fragment in line, line
    assert tree(experiment) == before


def test_a_grid_with_no_rows_yet_says_so_in_one_line_and_writes_nothing(tmp_path, capsys):
    experiment = tmp_path / "fresh"
    configs = grid_configs("fresh", epochs=EPOCHS, seeds=1)
    start(experiment, configs)
    trial_dir(experiment, configs[0], 0).mkdir()  # Tune made the directory; no epoch ended yet
    before = tree(experiment)
    assert main(["report", str(experiment)]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert out == [f"{experiment}: no trial has finished an epoch yet (0 of {len(configs)} trials finished); "
                   "nothing written"]
    assert tree(experiment) == before


def test_not_an_experiment_directory(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 2
    assert f"no trials.parquet or grid.json in {tmp_path}" in one_error_line(capsys)


@pytest.mark.parametrize("value", ["0", "-3", "nan", "inf", "-0.5"])
def test_watch_takes_only_a_positive_number_of_seconds(running, capsys, value):
    experiment, _, _ = running
    before = tree(experiment)
    assert main(["report", str(experiment), "--watch", value]) == 2
    line = one_error_line(capsys)
    assert "--watch must be a positive number of seconds" in line and line.endswith(f"got {float(value):g}")
    assert tree(experiment) == before


# -------------------------------------------------------------------- watch
def test_watch_rewrites_until_every_trial_has_all_its_epochs_then_stops_reloading(running, capsys):
    experiment, configs, _ = running
    page = experiment / "report.html"
    seen_refresh = []

    def finish_the_grid():  # once the first (running) report is there, every trial trains to its end
        deadline = time.monotonic() + 60
        while not page.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        seen_refresh.extend(REFRESH_TAG.findall(page.read_text()))
        for index, config in enumerate(configs.values()):
            directory = next(experiment.glob(f"{config['trial_name']}_*"), trial_dir(experiment, config, index))
            if len(_rows_in(directory)) < EPOCHS:
                rows = epoch_rows(config, EPOCHS)
                checkpoint(directory, rows, ddp=(directory / "ddp").exists())
                if (directory / "epochs.jsonl").exists():
                    write_rows(directory / "epochs.jsonl", rows)

    worker = threading.Thread(target=finish_the_grid)
    worker.start()
    try:
        assert main(["report", str(experiment), "--watch", "0.2"]) == 0
    finally:
        worker.join()
    assert seen_refresh == ["1"]  # while it ran: reload every ceil(0.2) s
    assert not REFRESH_TAG.search(page.read_text())  # the last report, of the grid that ended
    assert "running" not in (experiment / "report.md").read_text()
    out = capsys.readouterr().out
    assert "trials finished); again in 0.2 s" in out and out.rstrip().endswith("report.html")


def _rows_in(directory: Path) -> list:
    newest = sorted(p for p in directory.glob("**/checkpoint_*") if (p / "run.pt").exists())
    return (newest[-1] / "epochs.jsonl").read_text().splitlines() if newest else []


# ----------------------------------------------------------------------- S3
def test_a_running_grid_in_s3_is_reported_from_the_bucket(running, tmp_path, monkeypatch, capsys):
    import s3_server

    experiment, _, shown = running
    with s3_server.moto_s3(tmp_path / "aws", "results") as (env, client):
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        for path in sorted(experiment.rglob("*")):
            if path.is_file() and not (path.name == "epochs.jsonl" and path.parent.parent == experiment):
                client.put_object(Bucket="results", Key=f"runs/prog/{path.relative_to(experiment)}",
                                  Body=path.read_bytes())  # no live logs on object storage
        uri = "s3://results/runs/prog"
        assert main(["report", uri]) == 0, capsys.readouterr().err
        page = client.get_object(Bucket="results", Key="runs/prog/report.html")["Body"].read().decode()
        text = client.get_object(Bucket="results", Key="runs/prog/report.md")["Body"].read().decode()
    # step seed 0 shows its newest checkpoint: its live log, which has more, is not in the bucket
    step_checkpointed = len(_rows_in(next(experiment.glob("step-mlp-mnist1d-bs128-s0_*"))))
    assert len(shown["step-mlp-mnist1d-bs128-s0"]) > step_checkpointed
    note = f"running, epoch {step_checkpointed}/{EPOCHS}; 2 not started"
    assert note in page and note in text and REFRESH_TAG.search(page)


def test_a_running_grid_with_searches_reports_its_own_trials(tmp_path):
    """grid.json of a grid with searches also lists each search ({search, spec, config}); the report of
    the running grid shows the grid's trials (the searches' section comes once the grid has ended)."""
    from report_factories import grid_configs, start

    experiment = tmp_path / "searching"
    configs = grid_configs("searching", epochs=3, seeds=1)
    start(experiment, configs)
    listed = json.loads((experiment / "grid.json").read_text())
    search = {"search": "s", "spec": {"method": "step", "lr": {"grid": [0.1]}, "scheduler": "none"},
              "config": {**configs[0], "method": "step", "search": "s"}}
    (experiment / "grid.json").write_text(json.dumps(listed + [search]))
    results = progress.read_experiment(str(experiment))
    assert results.running
    assert sorted(t["trial_name"] for t in results.trials) == sorted(c["trial_name"] for c in configs)
