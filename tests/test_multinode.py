"""Grids on a real multi-node Ray that loses worker nodes, loses its driver and scales up and down.

A head with no CPU for trials and worker nodes of one CPU each, real ``ray
start`` processes with token authentication (``ray_procs.py``), S3 on a moto
server (no shared disk), the driver under ``ray job submit``. The scenarios
and their counting live in ``bench/multinode.py``, which also writes the
"Multi-node faults" section of BENCHMARKS.md; here each is asserted.

Rows are compared with an uninterrupted in-process run (metric columns bit
for bit); retrained epochs are counted by the model itself
(``factories:epoch_counting_mlp``), so an epoch trained twice is seen even
when its row was dropped. One module, one xdist group (``--dist loadscope``).
"""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
import multinode  # noqa: E402

pytestmark = [pytest.mark.ray, pytest.mark.slow]


@pytest.fixture(scope="module")
def reference(data_dir, tmp_path_factory):
    return multinode.reference_rows(multinode.write_job(tmp_path_factory.mktemp("reference"), multinode.JOB),
                                    data_dir)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    with multinode.s3_cluster(tmp_path_factory.mktemp("cluster"), workers=2) as handles:
        yield handles


def assert_every_epoch_once_and_at_most_one_retrained(outcome):
    assert (outcome.rows_lost, outcome.rows_twice) == (0, 0), outcome
    assert outcome.rows_expected == outcome.trials * multinode.EPOCHS
    assert all(n <= 1 for n in outcome.detail["retrained_per_trial"].values()), outcome.detail


def test_a_lost_worker_node_costs_at_most_an_epoch_per_trial_and_no_row(cluster, reference, data_dir, tmp_path):
    handle, client, epoch_log = cluster
    outcome = multinode.node_loss(handle, client, epoch_log, tmp_path, data_dir, reference)
    assert_every_epoch_once_and_at_most_one_retrained(outcome)
    assert outcome.rows_differing == 0, outcome  # bit-identical to the run without any fault
    # Spread: the trials ran on both workers, and every row and trial names its node(s).
    assert outcome.nodes_used == 2, outcome
    assert all(outcome.detail["trial_nodes"].values()), outcome.detail
    # The killed node's trial went on on the other node, training again at most its epoch in flight
    # (none when the kill fell between two epochs).
    assert outcome.trials_affected >= 1 and outcome.epochs_retrained <= outcome.trials_affected, outcome


def test_a_lost_node_of_a_data_parallel_trial(cluster, data_dir, tmp_path):
    handle, client, epoch_log = cluster
    while sum(not node.killed for node in handle.nodes) < 3:  # two for the ranks, one to take over
        handle.add_node({"cpus": 1})
    outcome = multinode.ddp_node_loss(handle, client, epoch_log, tmp_path, data_dir)
    assert outcome.detail["ranks_on_nodes"] == 2  # the ranks were on different nodes
    assert_every_epoch_once_and_at_most_one_retrained(outcome)
    assert outcome.trials == 1 and outcome.trials_affected == 1 and outcome.nodes_used >= 3, outcome


def test_a_killed_driver_resumes_from_s3_with_ray_job_submit(cluster, reference, data_dir, tmp_path):
    handle, client, epoch_log = cluster
    outcome = multinode.driver_loss(handle, client, epoch_log, tmp_path, data_dir, reference)
    assert outcome.detail["killed_job_status"] == "FAILED"
    assert_every_epoch_once_and_at_most_one_retrained(outcome)
    assert outcome.rows_differing == 0, outcome


def test_the_autoscaler_adds_workers_while_trials_wait_and_removes_them_after(data_dir, tmp_path):
    outcome = multinode.autoscaling(tmp_path, data_dir)
    counts = [n for _, n in outcome.detail["timeline"]]
    assert counts[0] == 0 and max(counts) >= 1 and counts[-1] == 0, outcome.detail
    peak = counts.index(max(counts))
    assert all(a <= b for a, b in zip(counts[:peak], counts[1:peak + 1])), outcome.detail  # up, then down
    # Removed when idle: after the trials, whatever the driver still writes (every row is there,
    # so no worker went while its trial ran).
    assert (outcome.rows_lost, outcome.rows_twice) == (0, 0), outcome
