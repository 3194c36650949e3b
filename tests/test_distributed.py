"""Data-parallel trials (aalr_ray.distributed): 2 gloo ranks follow the 1-worker run.

Besides the shard arithmetic, two checks, each of one thing:

* without Ray, in float64: two processes with the data-parallel hooks follow
  the single-process run to rounding (sharding, loss reduction, rollback on
  every rank), so any difference in float32 is summation order, not logic;
* with Ray, in float32, through ``run_grid`` with ``workers_per_trial: 2``: the
  production path (TorchTrainer inside a Tune trial, rank-0 checkpoints,
  epochs.parquet), with a worker killed mid-run to show the Tune retry resumes
  from Ray Train's latest checkpoint.
"""

import datetime
import json
import os
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

# Light imports only: the spawned ranks import this module (Ray, pyarrow: inside the Ray test).
from aalr_ray import distributed
from aalr_ray.data import Data, load_dataset, load_mnist1d
from aalr_ray.results import RUN_CONTEXT_FIELDS
from aalr_ray.train import RunConfig, TrainingRun


def relative(a: float, b: float) -> float:
    return abs(a - b) / abs(b)


def checkpoint_epoch(directory: Path) -> int | None:
    """The epoch a run checkpoint directory holds, or None if it cannot be read."""
    from aalr_ray.trainable import CheckpointError, load_checkpoint_dir

    try:
        return load_checkpoint_dir(directory)[0]["epoch"]
    except CheckpointError:
        return None


def untimed(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in row.items() if k not in RUN_CONTEXT_FIELDS} for row in rows]


def test_shard_sizes_cover_every_global_batch_once():
    # 4000 = 31 x 128 + 32: both ranks get 64 of every full batch and 16 of the last.
    assert [distributed.shard_size(4000, 128, r, 2) for r in (0, 1)] == [2000, 2000]
    assert sum(distributed.shard_size(1000, 96, r, 3) for r in range(3)) == 1000
    with pytest.raises(ValueError, match="cannot be split over 4 workers"):
        distributed.shard_size(1001, 100, 0, 4)  # a last batch of 1 example


# --------------------------------------------- float64, torch.distributed only
# AALR leaves phase 1 at epoch 3, doubles the LR to 0.4, and at epoch 9 a failed
# second try rolls back to the best weights (restore_on_decrease): every branch
# that needs the ranks to agree.
FLOAT64 = {"model": "mnist1d-cnn", "dataset": "mnist1d", "method": "aalr", "epochs": 10, "seed": 0,
           "method_options": {"phase1_patience": 3, "restore_on_decrease": True}}


def float64_run(data_dir, rank=None, world_size=None):
    """The run in float64 (weights via the default dtype, inputs converted), 1 process or one rank."""
    torch.set_num_threads(1)
    torch.set_default_dtype(torch.float64)
    spec = load_dataset("mnist1d", data_dir=data_dir).spec
    train, test = load_mnist1d(Path(data_dir))
    data = Data(spec, (train[0].double(), train[1]), (test[0].double(), test[1]))
    config = RunConfig(**FLOAT64, data_dir=data_dir)
    if rank is None:
        return TrainingRun(config, data)
    return distributed.data_parallel_run(config, rank, world_size, data)


def _rank(rank, world_size, data_dir, init, out):
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world_size)
    try:
        run = float64_run(data_dir, rank, world_size)
        rows = []
        while run.epoch < run.config.epochs:
            rows.append(run.train_one_epoch())
            distributed.check_ranks_agree(run, world_size)  # raises if the ranks' weights/snapshots differ
        Path(f"{out}.{rank}").write_text(json.dumps(rows))
        # Neither rank tears gloo down while the other still talks to it: under load on CI a rank
        # that finished first once took its peer down with SIGABRT ("terminate called without an
        # active exception").
        dist.monitored_barrier(timeout=datetime.timedelta(seconds=300))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_two_ranks_follow_the_one_process_run_to_rounding(data_dir, tmp_path):
    try:
        expected = list(float64_run(data_dir))
    finally:
        torch.set_default_dtype(torch.float32)
    mp.spawn(_rank, args=(2, data_dir, f"file://{tmp_path}/init", str(tmp_path / "rows")), nprocs=2)
    rows = [json.loads((tmp_path / f"rows.{rank}").read_text()) for rank in (0, 1)]

    assert untimed(rows[0]) == untimed(rows[1])  # every rank saw the same losses and took the same decisions
    got = rows[0]
    assert [r["action"] for r in got] == [r["action"] for r in expected]
    assert "restore_best" in [r["action"] for r in got]
    assert [r["lr"] for r in got] == [r["lr"] for r in expected] == [0.1] * 3 + [0.2] * 2 + [0.4] * 4 + [0.2]
    # float64 rounding (1e-16) amplified by the training dynamics: measured at most 5e-10 (epoch 9;
    # 3e-15 at epoch 10, trained from the restored best weights).
    for mine, theirs in zip(got, expected):
        assert relative(mine["train_loss"], theirs["train_loss"]) < 1e-8, mine["epoch"]
        assert relative(mine["best_loss"], theirs["best_loss"]) < 1e-8, mine["epoch"]
        assert abs(mine["test_acc"] - theirs["test_acc"]) <= 0.002, mine["epoch"]  # 2 of 1000 test examples


# ----------------------------------------------------- float32, Ray, run_grid
EPOCHS = 8
DIE_AT = 5  # rank 1 dies at the start of epoch 5, once
# initial LR 0.05: the LR rises to 0.4 only at epoch 8, so every AALR comparison (epochs 1-7)
# happens before float32 rounding is amplified into macroscopically different runs.
OPTIONS = {"phase1_patience": 3, "lr": 0.05}
LRS = [0.05] * 3 + [0.1] * 2 + [0.2] * 2 + [0.4]
ACTIONS = ["continue", "continue", "save_best"] + ["continue", "save_best"] * 2  # epochs 1-7


@pytest.fixture(scope="module")
def one_worker(data_dir):
    """The single-process run the data-parallel trial must follow: (run, rows)."""
    run = TrainingRun(RunConfig(model="mnist1d-cnn", dataset="mnist1d", method="aalr", epochs=EPOCHS,
                                data_dir=data_dir, method_options=OPTIONS))
    return run, list(run)


@pytest.mark.cpu_sensitive
def test_the_one_worker_schedule_has_wide_margins(one_worker):
    """The schedule the Ray test below compares with: every judged epoch of 1-7 beats
    the best by at least 1 % (epoch 1, from theta_0 at LR 0.05; 15 % or more after), far
    beyond the rounding of this run on any CPU (the kernels of ATEN_CPU_CAPABILITY=default
    and avx2 give losses 1e-7 apart up to epoch 7)."""
    run, rows = one_worker
    assert [r["lr"] for r in rows] == LRS
    assert [r["action"] for r in rows[:7]] == ACTIONS
    best = run.initial_loss
    for row in rows[:7]:
        if row["phase"] == 1 or row["action"] == "save_best":  # the judged epochs
            assert row["train_loss"] < 0.99 * best, row
            best = row["train_loss"]


@pytest.mark.ray
def test_grid_with_two_workers_per_trial_matches_one_worker_and_resumes(local_ray, data_dir, one_worker, tmp_path,
                                                                        monkeypatch):
    import pyarrow.parquet as pq
    import yaml

    from aalr_ray.runner import run_grid
    from aalr_ray.trainable import load_checkpoint_dir

    job = tmp_path / "ddp.yaml"
    job.write_text(yaml.safe_dump({
        "name": "ddp", "epochs": EPOCHS, "seeds": [0], "datasets": ["mnist1d"], "models": ["mnist1d-cnn"],
        "methods": ["aalr"], "method_options": {"aalr": OPTIONS}, "workers_per_trial": 2,
        "resources": {"cpu": 1, "gpu": 0}}))

    marker, started = tmp_path / "died", tmp_path / "started"

    def flaky_worker(config):  # pickled by value into the Train workers
        from aalr_ray import train
        from aalr_ray.distributed import train_worker  # the real one: workers import the module afresh

        def train_one_epoch(self, _original=train.TrainingRun.train_one_epoch):
            rank = self.shard[0]
            if rank == 0:
                with open(started, "a") as log:
                    log.write(f"{self.epoch + 1}\n")
            if rank == 1 and self.epoch + 1 == DIE_AT and not marker.exists():
                marker.touch()
                os._exit(1)  # like a lost node
            return _original(self)

        train.TrainingRun.train_one_epoch = train_one_epoch
        train_worker(config)

    monkeypatch.setattr(distributed, "train_worker", flaky_worker)
    experiment, collected = run_grid(str(job), storage=str(tmp_path / "results"), data_dir=data_dir)

    assert collected.complete and marker.exists()
    # Every restart resumed from the newest checkpoint in storage (aalr_ray.trainable.resume_newest),
    # not from Ray Train's latest registered one, which can be a few reports behind (it registers
    # them asynchronously: 2 epochs behind seen under load): only the epoch in flight, or none,
    # was trained again. On a loaded machine Ray Train's worker health check can fail an attempt
    # too (seen on CI); every restart must resume the same way.
    trained = [int(e) for e in started.read_text().split()]
    starts = [0] + [i for i in range(1, len(trained)) if trained[i] <= trained[i - 1]] + [len(trained)]
    attempts = [trained[a:b] for a, b in zip(starts, starts[1:])]
    assert attempts[0] == list(range(1, len(attempts[0]) + 1)), trained
    for before, attempt in zip(attempts, attempts[1:]):
        assert attempt == list(range(attempt[0], attempt[-1] + 1)), trained
        assert before[-1] <= attempt[0] <= before[-1] + 1, trained
    assert attempts[-1][-1] == EPOCHS, trained
    assert any(attempt[-1] >= DIE_AT - 1 for attempt in attempts[:-1]), trained  # rank 1 died there
    rows = sorted(pq.read_table(Path(experiment) / "epochs.parquet").to_pylist(), key=lambda r: r["epoch"])
    trials = pq.read_table(Path(experiment) / "trials.parquet").to_pylist()
    assert [r["epoch"] for r in rows] == list(range(1, EPOCHS + 1))
    assert trials[0]["status"] == "TERMINATED" and trials[0]["epochs_done"] == EPOCHS

    _, single = one_worker
    assert set(single[-1]) | {"epochs_done"} <= set(rows[-1])  # the single-process columns
    # Epochs 1-7 decide with wide margins (test_the_one_worker_schedule_has_wide_margins). Epoch 8,
    # at LR 0.4, is the run's last and is judged too, but its loss is not comparable (below), so
    # neither is its action.
    assert [r["lr"] for r in rows] == [r["lr"] for r in single] == LRS
    assert [r["action"] for r in rows[:7]] == [r["action"] for r in single[:7]] == ACTIONS
    # Tolerance: DDP's mean of the two ranks' 64-example means is the 128-example mean, summed in
    # another order. That float32 rounding (3e-7 at most in epoch 1) is amplified by training, in
    # jumps, the more the higher the LR, by amounts that depend on the CPU's kernels. Measured
    # (seeds 0-3, ATEN_CPU_CAPABILITY=default and avx2; 2 gloo ranks against 1 process): at most
    # 3e-7 at LR 0.05 (epochs 1-3), 1e-3 at 0.1 (4-5), 2.5e-2 at 0.2 (6-7: seed 0, default), and
    # 1-77 % at 0.4 (epoch 8), where it is not compared. A wrong shard or gradient average shows
    # in epoch 1 already.
    tolerance = [1e-6] + [1e-4] * 2 + [1e-2] * 2 + [0.1] * 2
    for mine, theirs, tol in zip(rows, single, tolerance):
        assert relative(mine["train_loss"], theirs["train_loss"]) < tol, (mine["epoch"], mine["train_loss"],
                                                                          theirs["train_loss"])

    # Rank 0's checkpoints live in Ray Train's run directory inside the Tune trial directory. Ray
    # Train keeps the newest num_to_keep=2 of the checkpoints it registered; those it never
    # registered (written after its latest registered one, before the failure) were deleted by the
    # retry once it reported a newer one: nothing is left behind.
    (trial_dir,) = [d for d in Path(experiment).iterdir() if (d / distributed.TRAIN_RUN_NAME).is_dir()]
    checkpoints = sorted(d for d in (trial_dir / distributed.TRAIN_RUN_NAME).glob("checkpoint_*") if d.is_dir())
    assert [checkpoint_epoch(d) for d in checkpoints] == [EPOCHS - 1, EPOCHS], trained  # names: timestamps
    state, saved = load_checkpoint_dir(checkpoints[-1])
    assert state["epoch"] == EPOCHS and [r["epoch"] for r in saved] == list(range(1, EPOCHS + 1))
    assert not any(k.startswith("module.") for k in state["model"])  # the bare model, as single-process runs save it
