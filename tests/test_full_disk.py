"""A disk that fills up mid-grid: one line, no torn Tune state, and --resume finishes after space is freed.

A real tmpfs of 600 KiB under the experiment (root only: CI runs as root);
the harness is bench/faults.py. A module of its own so that pytest-xdist
runs it beside tests/test_faults.py.
"""

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
import faults  # noqa: E402

pytestmark = [pytest.mark.ray, pytest.mark.slow]


@pytest.fixture(scope="module")
def reference(data_dir, tmp_path_factory):
    return faults.reference_rows(faults.write_job(tmp_path_factory.mktemp("job")), data_dir)


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a small tmpfs needs root (CI runs as root)")
def test_full_disk_leaves_no_torn_state_and_resumes_after_space_is_freed(tmp_path, data_dir, reference):
    outcome = faults.full_disk(tmp_path, data_dir, reference)
    (first, code, line), (_, torn, names), (_, resume_code, _) = outcome.runs
    assert code == 2 and "no space left on device" in line and str(tmp_path / "disk") in line, outcome.runs
    errors = [line for line in (tmp_path / "first.log").read_text().splitlines() if line.startswith("aalr-ray")]
    assert len(errors) == 1, errors
    assert torn == 0, names
    assert resume_code == 0
    assert (outcome.expected, outcome.present, outcome.duplicated, outcome.differing) == (16, 16, 0, 0)
