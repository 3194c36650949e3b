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


# Two classes, so that the parallel run (--dist loadscope: one class per scope) can put the
# adversarial job files, the slowest to smoke, on one worker and the others on the second.
ADVERSARIAL = {"adversarial_quickstart.yaml", "paper_table3_fgsm.yaml", "paper_table4_pgd.yaml"}


def smoke_runs(job: Path, storage: Path) -> None:
    experiment, collected = run_grid(str(job), storage=str(storage), smoke=True)
    assert experiment.endswith("-smoke")
    assert collected.complete, [(t["trial_name"], t["error"]) for t in collected.trials]
    trials = pq.read_table(Path(experiment) / "trials.parquet").to_pylist()
    assert all(t["smoke"] for t in trials)
    assert json.loads((Path(experiment) / "grid.json").read_text())


def test_the_two_classes_cover_every_job_file():
    assert ADVERSARIAL < {job.name for job in JOBS}


class TestNaturalTrainingJobs:
    @pytest.mark.parametrize("job", [j for j in JOBS if j.name not in ADVERSARIAL], ids=lambda p: p.name)
    def test_smoke_runs_the_job_file(self, local_ray, tmp_path, job):
        smoke_runs(job, tmp_path)


class TestAdversarialTrainingJobs:
    @pytest.mark.parametrize("job", [j for j in JOBS if j.name in ADVERSARIAL], ids=lambda p: p.name)
    def test_smoke_runs_the_job_file(self, local_ray, tmp_path, job):
        smoke_runs(job, tmp_path)
