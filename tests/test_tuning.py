"""Tuning cost without Ray: the validation split, what a search selects and what it costs, its grid-file
checks, PBT's LR hand-over, and the report's "Tuning cost" section."""

import io
import math

import pytest
import torch

from aalr_ray.cli import main
from aalr_ray.data import DataError, load_dataset
from aalr_ray.data.validation import held_out_indices, hold_out
from aalr_ray.grid import GridError, parse_grid, search_plans
from aalr_ray.report import build_tables
from aalr_ray.report_tuning import tuning_sections
from aalr_ray.train import RunConfig, TrainingRun
from aalr_ray.tuning import budget_curve, mark_selected, search_compute, select

TIMINGS = ("epoch_s", "eval_s")


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def run_config(**kwargs):
    return RunConfig(**{"model": "mlp", "dataset": "digits", "method": "step", "epochs": 3, "seed": 5,
                        "validation": 0.1, **kwargs})


def strip(rows):
    return [{k: v for k, v in row.items() if k not in TIMINGS} for row in rows]


# ------------------------------------------------------------ the split
@pytest.mark.parametrize("n, fraction", [(1437, 0.1), (2, 0.5), (10, 0.01), (101, 0.5)])
def test_the_split_is_disjoint_covers_every_example_and_keeps_both_sides(n, fraction):
    train, held = held_out_indices(n, fraction, seed=3)
    assert set(train.tolist()).isdisjoint(held.tolist())
    assert sorted(train.tolist() + held.tolist()) == list(range(n))
    assert len(held) == min(max(1, round(fraction * n)), n - 1) and len(train) >= 1


def test_the_split_is_a_function_of_the_seed(digits):
    first, again = held_out_indices(1437, 0.1, seed=3), held_out_indices(1437, 0.1, seed=3)
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert not torch.equal(first[1], held_out_indices(1437, 0.1, seed=4)[1])
    train, validation = hold_out(digits, 0.1, seed=3)
    x, _ = digits._splits["train"]
    assert torch.equal(validation._splits["test"][0], x[first[1]])
    assert torch.equal(train._splits["train"][0], x[first[0]])
    assert train.spec.train_size + validation.spec.test_size == digits.spec.train_size
    assert train.spec.mean == digits.spec.mean  # the model normalises as without validation
    assert torch.equal(train._splits["test"][0], digits._splits["test"][0])


@pytest.mark.parametrize("bad", [0, -0.1, 0.51, 1, float("nan"), True, "0.1"])
def test_a_fraction_outside_the_range_is_refused_in_one_line(bad):
    with pytest.raises(DataError, match=r"validation must be a fraction .*\(0, 0.5\], got") as info:
        RunConfig(model="mlp", dataset="digits", method="aalr", epochs=1, validation=bad)
    assert "\n" not in str(info.value)


def test_rows_gain_validation_metrics_and_training_skips_the_held_out_examples(digits):
    run = TrainingRun(run_config(epochs=1), data=digits)
    assert run.data.num_examples("train") == digits.num_examples("train") - round(0.1 * digits.num_examples("train"))
    row = run.train_one_epoch()
    assert 0 <= row["val_acc"] <= 1 and math.isfinite(row["val_loss"])
    assert {"final_val_acc", "final_val_loss"} <= run.summary().keys()
    plain = TrainingRun(run_config(epochs=1, validation=None), data=digits).train_one_epoch()
    assert "val_acc" not in plain


def test_a_run_with_validation_resumes_bit_for_bit(digits):
    expected = strip(TrainingRun(run_config(), data=digits))
    part = TrainingRun(run_config(), data=digits)
    head = [part.train_one_epoch()]
    buffer = io.BytesIO()
    torch.save(part.state_dict(), buffer)
    buffer.seek(0)
    resumed = TrainingRun(run_config(), data=digits)  # a new process holds out the same examples
    resumed.load_state_dict(torch.load(buffer, weights_only=True))
    assert strip(head) + strip(resumed) == expected


# --------------------------------------------------- PBT's LR hand-over
def test_a_checkpoint_with_another_lr_continues_the_schedule_at_the_new_lr(digits):
    donor = TrainingRun(run_config(epochs=4, method_options={"lr": 0.1, "milestones": [0.25]}), data=digits)
    donor.train_one_epoch()  # the milestone (epoch 1) has passed: the LR is 0.1 * gamma
    decayed = donor.method.current_lr()
    assert decayed == pytest.approx(0.1 * 0.2)
    receiver = TrainingRun(run_config(epochs=4, method_options={"lr": 0.3, "milestones": [0.25]}), data=digits)
    with pytest.raises(ValueError, match="method_options"):
        receiver.load_state_dict(donor.state_dict())  # without adopt_lr: another run
    receiver.load_state_dict(donor.state_dict(), adopt_lr=True)
    assert receiver.method.current_lr() == pytest.approx(decayed * 3)
    assert receiver.method.scheduler.base_lrs == [pytest.approx(0.3)]
    for a, b in zip(receiver.model.state_dict().values(), donor.model.state_dict().values()):
        assert torch.equal(a, b)
    assert receiver.train_one_epoch()["lr"] == pytest.approx(decayed * 3)


def test_aalr_refuses_to_have_its_lr_scaled(digits):
    run = TrainingRun(run_config(method="aalr", epochs=2), data=digits)
    with pytest.raises(ValueError, match="sets its own LR"):
        run.method.scale_lr(2.0)


# ------------------------------------------------ selection and compute
def trial(trial_id, val, test, epochs=10, name="g-cell", search="g", status="TERMINATED", val_loss=1.0):
    return {"trial_id": trial_id, "trial_name": name, "search": search, "epochs_done": epochs, "status": status,
            "final_val_acc": val, "final_val_loss": val_loss, "final_test_acc": test, "wall_s": epochs * 0.5,
            "method": "step", "seed": 0}


def test_a_search_selects_the_best_on_validation_not_on_test():
    trials = [trial("a", 0.70, 0.95), trial("b", 0.80, 0.60), trial("c", 0.75, 0.99),
              trial("x", 0.10, 0.10, name="g-other"), trial("y", 0.20, 0.05, name="g-other"),
              {**trial("m", 0.99, 0.99, search=None), "trial_name": "aalr-cell"}]
    assert select(trials) == {"b", "y"}
    mark_selected(trials)
    assert [t["selected"] for t in trials] == [False, True, False, False, True, None]


def test_a_tie_on_validation_goes_to_the_lower_validation_loss():
    assert select([trial("a", 0.8, 0.9, val_loss=0.5), trial("b", 0.8, 0.1, val_loss=0.4)]) == {"b"}


def test_the_compute_adds_up_every_trial_early_stopped_ones_included():
    trials = [trial("a", 0.7, 0.7, epochs=40), trial("b", 0.2, 0.2, epochs=1, status="STOPPED"),
              trial("c", 0.3, 0.3, epochs=3, status="STOPPED"), trial("z", 0.1, 0.1, epochs=0, status="STOPPED")]
    assert search_compute(trials) == {"g-cell": (44, 22.0)}
    assert select(trials) == {"a"}  # a trial that trained nothing is never selected


def test_budget_curves():
    grid = [trial("a", 0.9, 0.5), trial("b", 0.8, 0.7), trial("c", 0.7, 0.9)]
    curve = budget_curve("none", grid, {})
    assert [epochs for epochs, _ in curve] == [10, 20, 30]
    assert curve[0][1] == pytest.approx((0.5 + 0.7 + 0.9) / 3)  # one random LR: the mean
    assert curve[1][1] == pytest.approx((2 * 0.5 + 1 * 0.7) / 3)  # two of three: "a" is in 2 of the 3 pairs
    assert curve[2][1] == pytest.approx(0.5)  # all: what the search selected
    asha = [trial("a", 0.5, 0.5, epochs=9), trial("b", 0.1, 0.1, epochs=1), trial("c", 0.9, 0.8, epochs=27)]
    assert budget_curve("asha", asha, {}) == [(9, 0.5), (10, 0.5), (37, 0.8)]
    rows = {"p": [{"epoch": 1, "val_acc": 0.2, "test_acc": 0.3}, {"epoch": 2, "val_acc": 0.9, "test_acc": 0.4}],
            "q": [{"epoch": 1, "val_acc": 0.5, "test_acc": 0.6}, {"epoch": 2, "val_acc": 0.6, "test_acc": 0.9}]}
    assert budget_curve("pbt", [trial("p", 0.9, 0.4), trial("q", 0.6, 0.9)], rows) == [(2, 0.6), (4, 0.4)]


def test_the_report_has_a_tuning_cost_table_and_a_verdict_per_workload():
    base = {"dataset": "digits", "model": "mlp", "augmentation": "none", "batch_size": 128, "weight_decay": 5e-4,
            "training": "natural", "epochs": 10, "status": "TERMINATED"}
    trials = []
    for seed in (0, 1):
        trials.append({**base, **trial(f"aalr{seed}", 0.8, 0.80, search=None), "method": "aalr", "seed": seed,
                       "trial_name": f"aalr-{seed}", "peak_test_acc": 0.8})
        for i, test in enumerate((0.70, 0.86)):
            trials.append({**base, **trial(f"g{seed}{i}", 0.5 + i / 10, test, name=f"g-{seed}"), "seed": seed,
                           "search_scheduler": "none", "search_wall_s": 3.0, "peak_test_acc": test})
    mark_selected(trials)
    for t in trials:
        if t.get("search"):
            t["search_epochs"], t["search_trial_s"] = search_compute(trials)[t["trial_name"]]
    [section] = tuning_sections(trials, [])
    [table] = section.tables
    rows = dict(table.rows)
    assert rows["aalr"][0].text == "10" and rows["aalr"][2].text == "1.0x"
    assert rows["g (search)"][0].text == "20" and rows["g (search)"][2].text == "2.0x"
    assert rows["g (search)"][1].text == "86.00 ± 0.00" and rows["g (search)"][1].best
    assert "`g` needs 2.0x" in section.blocks[-1]  # one LR (10 epochs): 78 %; both (20): 86 % > 80.5 %
    grid_sections = [s for s in build_tables(trials, []) if not s.title.startswith("Tuning cost")]
    assert all("step" not in table.columns for s in grid_sections for table in s.tables)  # searches apart


# ----------------------------------------------------- grid-file checks
GRID = """
name: t
epochs: 3
datasets: [digits]
models: [mlp]
methods: [aalr]
"""


def test_searches_expand_over_every_cell_with_the_cells_settings():
    grid = parse_grid({"name": "t", "epochs": 3, "seeds": 2, "datasets": ["digits"], "models": ["mlp"],
                       "methods": ["aalr", "step"], "validation": 0.2,
                       "searches": {"s": {"method": "step", "lr": {"grid": [0.1, 0.3]}}}})
    plans = search_plans(grid)
    assert [p.experiment_name for p in plans] == ["s-mlp-digits-bs128-s0", "s-mlp-digits-bs128-s1"]
    assert all(p.config["validation"] == 0.2 and p.config["method"] == "step" and p.lr_values == 2 for p in plans)


def test_every_search_problem_is_one_line_all_at_once(tmp_path, capsys):
    job = tmp_path / "job.yaml"
    job.write_text(GRID + """validation: 0.6
searches:
  a: {method: step, lr: {grid: [0.1]}, scheduler: hyperband}
  b: {method: step, lr: {loguniform: [1.0e-3, 1.0]}, scheduler: asha, samples: 4}
  c: {method: clr, lr: {grid: [0.1]}}
  d: {method: step, lr: {loguniform: [1.0e-3, 1.0]}}
""")
    storage = tmp_path / "results"
    assert main(["grid", str(job), "--storage", str(storage)]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    expected = ["validation: expected a fraction of the training split in (0, 0.5], got 0.6",
                "searches.a.scheduler: unknown scheduler 'hyperband'; choose from: none, asha, pbt",
                "searches.b: a search without a budget: give budget_epochs",
                "searches.c.method: method 'clr' has no lr option to search; choose from: aalr,",
                "searches.d: a search without a budget: give samples"]
    for fragment in expected:
        assert sum(fragment in line for line in lines) == 1, (fragment, lines)
    assert len(lines) == len(expected), lines
    assert all(line.startswith(f"aalr-ray: error: {job}: ") for line in lines)
    assert not storage.exists()


@pytest.mark.parametrize("search, fragment", [
    ({"method": "step", "lr": {"grid": [0.1]}, "samples": 3}, "samples: a grid of LRs trains each value once"),
    ({"method": "step", "lr": {"loguniform": [0.1, 1]}, "scheduler": "pbt", "population": 4},
     "give perturbation_interval"),
    ({"method": "step", "lr": {"loguniform": [0.1, 1]}, "scheduler": "pbt", "perturbation_interval": 2},
     "a search without a budget: give population"),
    ({"method": "aalr", "lr": {"loguniform": [0.1, 1]}, "scheduler": "pbt", "population": 2,
      "perturbation_interval": 2}, "AALR's controller sets itself"),
    ({"method": "step", "lr": {"grid": [0.1]}, "population": 2}, "applies only to scheduler: pbt"),
    ({"method": "step", "lr": {"grid": [0.1], "loguniform": [0.1, 1]}}, "not both"),
    ({"method": "step", "lr": {"loguniform": [1, 0.1]}, "samples": 2}, "expected low < high"),
])
def test_search_problems(search, fragment):
    with pytest.raises(GridError) as info:
        parse_grid({"name": "t", "epochs": 3, "datasets": ["digits"], "models": ["mlp"], "methods": ["aalr"],
                    "validation": 0.1, "searches": {"s": search}})
    assert len(info.value.problems) == 1 and fragment in info.value.problems[0], info.value.problems


def test_searches_need_a_validation_split():
    with pytest.raises(GridError, match="searches select on validation accuracy"):
        parse_grid({"name": "t", "epochs": 3, "datasets": ["digits"], "models": ["mlp"], "methods": ["aalr"],
                    "searches": {"s": {"method": "step", "lr": {"grid": [0.1]}}}})


def test_the_cli_takes_a_validation_fraction(tmp_path, capsys):
    out = tmp_path / "rows.jsonl"
    assert main(["train", "--model", "mlp", "--dataset", "digits", "--epochs", "1", "--validation", "0.7",
                 "--out", str(out)]) == 2
    assert "--validation must be a fraction of the training split in (0, 0.5], got 0.7" in capsys.readouterr().err
    assert not out.exists()
