"""The layers that must stay free of Ray and torch, checked in a fresh interpreter each.

The report runs where only the Parquet files and pyarrow are (a laptop after
copying results from S3), and the grid schema is checked before Ray starts; a
stray import would make both pay for (or need) Ray and torch. Each check runs
``python -c`` so that nothing this test process imported counts.
"""

import json
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

ROOT = Path(__file__).resolve().parent.parent
HEAVY = ("ray", "torch")


def loaded_heavy_modules(code: str) -> list[str]:
    """Run ``code`` in a fresh interpreter; which of Ray and torch it left in sys.modules."""
    probe = (f"{code}\nimport json, sys\n"
             f"print('LOADED ' + json.dumps(sorted(m for m in {HEAVY!r} if m in sys.modules)))")
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-2000:]
    [line] = [line for line in result.stdout.splitlines() if line.startswith("LOADED ")]
    return json.loads(line[len("LOADED "):])


@pytest.mark.parametrize("module", ["aalr_ray.report", "aalr_ray.results", "aalr_ray.progress", "aalr_ray.tuning",
                                    "aalr_ray.report_tuning"])
def test_importing_loads_neither_ray_nor_torch(module):
    assert loaded_heavy_modules(f"import {module}") == []


def write_small_experiment(directory: Path) -> None:
    """A two-trial experiment as `aalr-ray grid` writes it: trials.parquet and epochs.parquet."""
    trials = [{"trial_id": f"t{seed}", "dataset": "digits", "model": "mlp", "method": "aalr",
               "training": "natural", "seed": seed, "status": "TERMINATED", "error": None,
               "peak_test_acc": 0.9 + seed / 100, "final_test_acc": 0.89 + seed / 100} for seed in (0, 1)]
    epochs = [{"trial_id": f"t{seed}", "dataset": "digits", "model": "mlp", "method": "aalr", "seed": seed,
               "epoch": epoch, "lr": 0.1 * epoch, "train_loss": 1.0 / epoch, "test_acc": 0.8 + epoch / 100}
              for seed in (0, 1) for epoch in (1, 2, 3)]
    directory.mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(trials), directory / "trials.parquet")
    pq.write_table(pa.Table.from_pylist(epochs), directory / "epochs.parquet")


def test_the_report_command_loads_neither_ray_nor_torch(tmp_path):
    experiment = tmp_path / "small"
    write_small_experiment(experiment)
    code = f"from aalr_ray.cli import main\nassert main(['report', {str(experiment)!r}]) == 0"
    assert loaded_heavy_modules(code) == []
    assert (experiment / "report.md").read_text().startswith("# small")


def test_the_report_of_a_running_grid_loads_neither_ray_nor_torch(tmp_path):
    """Its rows come from the trials' checkpoints (aalr_ray.progress), read without Ray's or torch's help."""
    from report_factories import grid_configs, start, train, trial_dir

    experiment = tmp_path / "running"
    configs = grid_configs("running", epochs=4, seeds=1)
    start(experiment, configs)
    train(trial_dir(experiment, configs[0], 0), configs[0], 2)
    code = f"from aalr_ray.cli import main\nassert main(['report', {str(experiment)!r}]) == 0"
    assert loaded_heavy_modules(code) == []
    assert "running, epoch 2/4" in (experiment / "report.md").read_text()


def test_the_grid_schema_loads_neither_ray_nor_torch():
    """Grid files are checked before Ray starts, by the same code on a laptop and on a cluster."""
    assert loaded_heavy_modules("import aalr_ray.grid") == []


def test_the_checkpoint_layout_loads_no_ray():
    """aalr_ray.checkpoints sits with the training run (torch and pyarrow): a checkpoint can be read without Ray."""
    assert loaded_heavy_modules("import aalr_ray.checkpoints") == ["torch"]
