"""bench/gpu.py: its dry run takes every code path, and it needs nothing a bare GPU machine lacks.

The GPU machine it is written for has torch, torchvision, numpy and pyyaml
and this package, nothing else. The script runs here with every other
dependency of the project hidden (a ``sitecustomize`` on PYTHONPATH, so the
worker processes it starts see the same): an import of Ray or an optimizer
package anywhere on its path fails the run.
"""
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
import gpu  # noqa: E402

# pyproject.toml's dependencies besides torch, torchvision, numpy and pyyaml, by import name,
# and what they bring (pandas with Ray, scipy with scikit-learn). Kept apart from the script's own list.
ABSENT = ("ray", "pandas", "pyarrow", "matplotlib", "tensorboardX", "tensorboard", "pydantic", "sklearn", "scipy",
          "mnist1d", "prodigyopt", "schedulefree", "dadaptation", "dog")

# Every import finder is wrapped to find none of them, so they are absent as on that machine:
# ``import ray`` raises ModuleNotFoundError and ``importlib.util.find_spec("pandas")`` is None
# (torch probes optional packages that way).
BLOCKER = """\
import sys

ABSENT = set({absent!r})


class _Hiding:
    def __init__(self, finder):
        self._finder = finder

    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in ABSENT:
            return None
        return self._finder.find_spec(name, path, target)

    def __getattr__(self, name):
        return getattr(self._finder, name)


sys.meta_path[:] = [_Hiding(finder) for finder in sys.meta_path]
"""

DRY_RUN_TIMEOUT_S = 120


@pytest.fixture(scope="module")
def bare_env(tmp_path_factory):
    """The environment of a bare GPU machine: every package in ABSENT fails to import."""
    directory = tmp_path_factory.mktemp("bare_gpu_machine")
    (directory / "sitecustomize.py").write_text(BLOCKER.format(absent=ABSENT))
    path = os.pathsep.join(p for p in (str(directory), os.environ.get("PYTHONPATH")) if p)
    return dict(os.environ, PYTHONPATH=path)


def script(*args, env, timeout):
    return subprocess.run([sys.executable, str(ROOT / "bench" / "gpu.py"), *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def dry_run(bare_env, tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu_bench") / "gpu.md"
    started = time.monotonic()
    result = script("--dry-run", "--out", str(out), env=bare_env, timeout=DRY_RUN_TIMEOUT_S)
    return result, out, time.monotonic() - started


def test_the_blocker_blocks(bare_env):
    probe = subprocess.run([sys.executable, "-c", "import ray"], env=bare_env, capture_output=True, text=True,
                           timeout=60)
    assert probe.returncode != 0 and "No module named 'ray'" in probe.stderr


@pytest.mark.slow
def test_dry_run_writes_every_row_and_goal(dry_run):
    result, out, seconds = dry_run
    assert result.returncode == 0, f"exit {result.returncode} after {seconds:.0f} s:\n{result.stdout[-3000:]}\n" \
                                   f"{result.stderr[-3000:]}"
    text = out.read_text()
    assert text.startswith(f"## {gpu.TITLE}\n") and "**Dry run**" in text
    assert "| configuration | model | images/s | ratio |" in result.stdout  # printed as well as written
    for label, model in gpu.row_labels(gpu.DRY):
        # Measured: a number in the images/s column, not a skip or a failure.
        assert re.search(rf"^\| {re.escape(label)} \| {re.escape(model)} \| [\d,]+ ", text, re.M), (label, model)
    goals = [line for line in text.splitlines() if line.startswith("- (")]
    tags = [line.split(":")[0] for line in goals]
    assert tags == ["- (1) resnet18", "- (1) wrn-16-8", "- (2) resnet18", "- (3) resnet18"]
    assert all(re.search(r": (PASS|FAIL), [\d.]+x \(", line) for line in goals), goals
    assert "a GPU machine may lack" in text and text.rstrip().endswith(": none.")


@pytest.mark.slow
def test_the_packed_rows_came_from_worker_processes(dry_run):
    result, out, _ = dry_run
    assert result.returncode == 0
    for count in gpu.DRY.packs:
        assert f"Packed trials, {count} process(es): " in out.read_text()


@pytest.mark.skipif(torch.cuda.is_available(), reason="with a GPU the script measures")
def test_without_a_gpu_it_keeps_benchmarks_section(bare_env, tmp_path):
    out = tmp_path / "gpu.md"
    result = script("--out", str(out), env=bare_env, timeout=60)
    assert result.returncode == 0, result.stderr
    section = gpu.current_section()
    assert section is not None, "BENCHMARKS.md has no GPU section"
    assert out.read_text() == section
    assert gpu.NOT_MEASURED in section or "| configuration | model |" in section


def cells(values: dict) -> dict:
    return {key: gpu.Cell([value]) for key, value in values.items()}


def test_goals_compare_with_their_baselines():
    measured = cells({(gpu.TRIAL_TRAIN, "resnet18"): 95.0, (gpu.BARE, "resnet18"): 100.0,
                      (gpu.FAST_PATH.label, "resnet18"): 190.0, (gpu.DEFAULT_PATH.label, "resnet18"): 100.0,
                      (gpu.pack_label(4), "resnet18"): 150.0, (gpu.pack_label(1), "resnet18"): 100.0})
    lines = gpu.goals(measured, gpu.FULL, ("resnet18",))
    assert [re.search(r": (PASS|FAIL|NOT MEASURED)", line).group(1) for line in lines] == ["PASS", "FAIL", "PASS"]
    assert "0.95x (95 against 100 images/s)" in lines[0]
    void = {**measured, (gpu.BARE, "resnet18"): gpu.Cell([], "skipped: --time-budget 420 s spent")}
    assert gpu.goals(void, gpu.FULL, ("resnet18",))[0].endswith("NOT MEASURED (skipped: --time-budget 420 s spent)")
