"""Searched baselines on a real local Ray: each search is its own Tune experiment, its trials' rows
land in epochs.parquet, its selection and its compute in trials.parquet (see also test_tuning.py)."""

import pyarrow.parquet as pq
import pytest

from aalr_ray.runner import run_grid

pytestmark = pytest.mark.ray

EPOCHS = 4
JOB = f"""
name: searched
epochs: {EPOCHS}
datasets: [digits]
models: [mlp]
methods: [aalr]
validation: 0.2
train_limit: null
max_concurrent: 1
searches:
  lr-grid: {{method: step, lr: {{grid: [0.03, 0.3]}}}}
  # A budget below one trial's epochs: the first trial is stopped after 2 of its 4 epochs,
  # and nothing else trains (one trial at a time), whatever the losses.
  asha: {{method: step, lr: {{loguniform: [1.0e-3, 1.0]}}, scheduler: asha, samples: 3, budget_epochs: 2}}
  pbt: {{method: step, lr: {{loguniform: [1.0e-3, 1.0]}}, scheduler: pbt, population: 2, perturbation_interval: 2}}
""".replace("train_limit: null\n", "")


@pytest.fixture(scope="module")
def searched(local_ray, tmp_path_factory):
    job = tmp_path_factory.mktemp("job") / "searched.yaml"
    job.write_text(JOB)
    storage = tmp_path_factory.mktemp("results")
    experiment, collected = run_grid(str(job), storage=str(storage))
    trials = pq.read_table(f"{experiment}/trials.parquet").to_pylist()
    epochs = pq.read_table(f"{experiment}/epochs.parquet").to_pylist()
    return job, storage, experiment, collected, trials, epochs


def of(trials, search):
    return [t for t in trials if t.get("search") == search]


def test_each_search_runs_as_its_own_experiment_with_every_trials_rows(searched):
    _, _, experiment, collected, trials, epochs = searched
    assert collected.complete
    assert {t["search"] for t in trials} == {None, "lr-grid", "asha", "pbt"}
    grid = of(trials, "lr-grid")
    assert sorted(t["method_options"] for t in grid) == ['{"lr": 0.03}', '{"lr": 0.3}']
    for trial in trials:
        rows = [r for r in epochs if r["trial_id"] == trial["trial_id"]]
        assert len(rows) == trial["epochs_done"]
        assert all(r["search"] == trial["search"] for r in rows)
        assert all(0 <= r["val_acc"] <= 1 and r["lr"] > 0 for r in rows)  # every trial: validation, its LR
    for trial in of(trials, "pbt"):  # PBT members train every epoch and record the LR of each
        assert trial["status"] == "TERMINATED" and trial["epochs_done"] == EPOCHS
    import pathlib

    assert sorted(p.name for p in pathlib.Path(experiment, "searches").iterdir()) == [
        "asha-mlp-digits-bs128-s0", "lr-grid-mlp-digits-bs128-s0", "pbt-mlp-digits-bs128-s0"]


def test_the_selected_trial_is_the_best_on_validation(searched):
    trials = searched[4]
    for search in ("lr-grid", "pbt"):
        group = of(trials, search)
        [chosen] = [t for t in group if t["selected"]]
        assert chosen["final_val_acc"] == max(t["final_val_acc"] for t in group)
    assert all(t["selected"] is None for t in trials if t["search"] is None)


def test_the_compute_of_a_search_adds_up_its_trials_stopped_ones_included(searched):
    trials, epochs = searched[4], searched[5]
    asha = of(trials, "asha")
    trained = [t for t in asha if t["epochs_done"] > 0]
    assert trained and all(t["status"] == "STOPPED" and t["epochs_done"] < EPOCHS for t in trained)
    for search in ("lr-grid", "asha", "pbt"):
        group = of(trials, search)
        rows = [r for r in epochs if r["search"] == search]
        assert {t["search_epochs"] for t in group} == {sum(t["epochs_done"] for t in group)} == {len(rows)}
        seconds = sum(r["epoch_s"] + r["eval_s"] for r in rows)
        assert all(t["search_trial_s"] == pytest.approx(seconds) for t in group)
        assert all(t["search_wall_s"] > 0 for t in group)
    assert sum(t["epochs_done"] for t in of(trials, "lr-grid")) == 2 * EPOCHS


def test_the_report_has_the_tuning_cost_section(searched):
    experiment = searched[2]
    from aalr_ray.report import write_report

    text = open(write_report(experiment)).read()
    assert "## Tuning cost: mlp on digits" in text
    for name in ("lr-grid (search)", "asha (search)", "pbt (search)"):
        assert f"| {name} |" in text
    assert "To beat `aalr`" in text


def test_a_finished_grid_with_searches_is_not_run_again(searched):
    job, storage = searched[0], searched[1]
    experiment, collected = run_grid(str(job), storage=str(storage))
    assert collected is None


def test_a_grid_stopped_during_its_searches_resumes_them(searched):
    """As after a driver lost between a search's end and the grid's: no trials.parquet, one search
    without its search.json. --resume trains nothing again and collects the same rows."""
    import pathlib

    job, storage, experiment, _, trials, epochs = searched
    pathlib.Path(experiment, "trials.parquet").unlink()
    pathlib.Path(experiment, "searches", "lr-grid-mlp-digits-bs128-s0", "search.json").unlink()
    _, collected = run_grid(str(job), storage=str(storage), resume=True)
    again = {(r["trial_id"], r["epoch"]): r["train_loss"] for r in collected.epochs}
    assert again == {(r["trial_id"], r["epoch"]): r["train_loss"] for r in epochs}
    assert sorted(t["trial_id"] for t in collected.trials if t.get("selected")) == \
        sorted(t["trial_id"] for t in trials if t["selected"])
