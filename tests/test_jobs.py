"""Every job file in jobs/ runs through the grid runner in smoke mode on a real local Ray.

Kept apart from test_runner.py so that the parallel test run (pytest-xdist,
one module per worker) can put the two long modules on different workers.
"""

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from aalr_ray.runner import run_grid

pytestmark = pytest.mark.ray
# The paper-scale job files; quickstart runs in full under `make demo` and its
# path is test_runner.py's end-to-end test.
JOBS = sorted(p for p in (Path(__file__).resolve().parent.parent / "jobs").glob("*.yaml")
              if p.name != "quickstart.yaml")


@pytest.mark.parametrize("job", JOBS, ids=lambda p: p.name)
def test_smoke_runs_every_job_file(local_ray, tmp_path, job):
    experiment, collected = run_grid(str(job), storage=str(tmp_path), smoke=True)
    assert experiment.endswith("-smoke")
    assert collected.complete, [(t["trial_name"], t["error"]) for t in collected.trials]
    trials = pq.read_table(Path(experiment) / "trials.parquet").to_pylist()
    assert all(t["smoke"] for t in trials)
    assert json.loads((Path(experiment) / "grid.json").read_text())
