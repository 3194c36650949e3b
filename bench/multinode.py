"""Multi-node faults: grids on a real multi-node Ray on this machine that loses nodes and drivers.

    python bench/multinode.py                 # every scenario, then the BENCHMARKS.md section
    python bench/multinode.py --scenarios node-loss,traffic

A head with no CPU for trials (as in ``cluster.yaml``), worker nodes of one
CPU each, all real ``ray start`` processes with token authentication
(``tests/ray_procs.py``), S3 storage on a moto server on loopback (no shared
disk: every checkpoint goes through the bucket), and the driver under
``ray job submit`` on the head, as the README runs it. Scenarios:

* ``node-loss``: 4 trials on 2 workers; a worker node is SIGKILLed (raylet
  and every worker process under it) mid-epoch; its trials are retried on the
  survivor from their last checkpoint in S3.
* ``ddp-node-loss``: one ``workers_per_trial: 2`` trial whose ranks sit on
  two of three worker nodes; one of those nodes is killed.
* ``driver-loss``: the job's driver is SIGKILLed; ``ray job submit ...
  --resume`` continues from S3.
* ``autoscaling``: worker types like ``cluster.yaml``'s (min 0, max 2, idle
  timeout shortened); the autoscaler's node count is read over time.
* ``traffic``: bytes uploaded per trial-epoch, from the bucket's own listing,
  for MNIST-1D's CNN and for ResNet-18 on CIFAR-shaped synthetic data.

Each fault scenario also runs the same grid without the fault on the same
cluster (wall time side by side). Rows are checked against an uninterrupted
in-process run of the same trials (metric columns bit for bit); epochs
trained are counted by the test model itself (``factories:epoch_counting_mlp``
logs each data epoch it starts), so an epoch trained twice is seen even when
its row was dropped. The same functions back ``tests/test_multinode.py``.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import secrets
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import yaml

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
TESTS = ROOT / "tests"
for _path in (str(TESTS), str(BENCH)):
    if _path not in sys.path:
        sys.path.insert(0, _path)

import ray_procs  # noqa: E402
import s3_server  # noqa: E402
from faults import METRICS  # noqa: E402

BUCKET = "aalr-multinode"
EPOCHS = 4
JOB = {"name": "multinode", "epochs": EPOCHS, "seeds": 4, "datasets": ["mnist1d"],
       "models": ["factories:epoch_counting_mlp"], "methods": ["aalr"], "max_concurrent": 2,
       "resources": {"cpu": 1, "gpu": 0}}
DDP_JOB = {**JOB, "name": "multinode-ddp", "seeds": [7], "workers_per_trial": 2, "max_concurrent": 1}
LOCK_TTL_S = 10  # the S3 lease of a killed driver expires this fast here (default 60 s)


@dataclass
class Outcome:
    scenario: str
    nodes_killed: int = 0
    drivers_killed: int = 0
    trials: int = 0
    trials_affected: int = 0
    epochs_retrained: int = 0  # data epochs started more than once, over all trials
    rows_expected: int = 0
    rows_lost: int = 0
    rows_twice: int = 0
    rows_differing: int = 0
    nodes_used: int = 0  # distinct nodes in the rows
    wall_s: float = 0.0
    no_fault_wall_s: float | None = None
    detail: dict = field(default_factory=dict)

    @property
    def exact(self) -> bool:
        return self.rows_lost == 0 and self.rows_twice == 0 and self.rows_differing == 0


# ------------------------------------------------------------------ the cluster
@contextlib.contextmanager
def s3_cluster(workdir: Path, workers: int):
    """(RayCluster, boto3 client, epoch log path): moto S3 + a head and ``workers`` 1-CPU worker nodes."""
    workdir.mkdir(parents=True, exist_ok=True)
    epoch_log = workdir / "epochs-started.log"
    with s3_server.moto_s3(workdir / "aws", BUCKET) as (s3_env, client):
        env = {**s3_env, "OMP_NUM_THREADS": "1", "AALR_EPOCH_LOG": str(epoch_log),
               "AALR_RAY_LOCK_TTL_S": str(LOCK_TTL_S), "RAY_AIR_NEW_OUTPUT": "0",
               "PYTHONPATH": os.pathsep.join(p for p in (str(TESTS), os.environ.get("PYTHONPATH")) if p)}
        specs = [{"cpus": 1, "resources": {f"worker{i}": 1}} for i in range(workers)]
        with ray_procs.ray_cluster(specs, env=env) as cluster:
            yield cluster, client, epoch_log


def write_job(directory: Path, job: dict, **fields) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{job['name']}.yaml"
    path.write_text(yaml.safe_dump({**job, **fields}))
    return path


def submit_grid(cluster, job: Path, prefix: str, data_dir: str, *extra: str, upload: bool = True) -> str:
    """``ray job submit --working-dir JOB_DIR -- aalr-ray grid JOB --storage s3://BUCKET/PREFIX``; the submission id.

    ``upload=False``: no working directory; the job file by its path on this machine. (Nodes the
    fake autoscaler starts share the head's session directory, and one that is removed deletes
    the job's unpacked working directory under the running driver.)
    """
    submission = f"aalr-{secrets.token_hex(4)}"
    cluster.submit(["aalr-ray", "grid", job.name if upload else str(job), "--storage", f"s3://{BUCKET}/{prefix}",
                    "--data-dir", data_dir, *extra], working_dir=str(job.parent) if upload else None,
                   submission_id=submission)
    return submission


def finished(cluster, submission: str, timeout: float = 420) -> dict:
    job = cluster.wait_job(submission, timeout=timeout)
    if job["status"] != "SUCCEEDED":
        raise AssertionError(f"job {job['status']}: {cluster.job_logs(submission)[-3000:]}")
    return job


# ------------------------------------------------------------------ the bucket
def keys(client, prefix: str) -> dict[str, int]:
    """{key: size} under a prefix."""
    return {key: item["Size"] for key, item in s3_server.listing(client, BUCKET, prefix).items()}


def newest_rows(client, experiment: str) -> dict[str, list[dict]]:
    """Per trial directory: the rows of its newest checkpoint in the bucket, Tune's or (DDP) Ray Train's."""
    newest: dict[str, str] = {}
    for key in keys(client, experiment + "/"):
        parts = key[len(experiment) + 1:].split("/")
        if len(parts) >= 3 and parts[-2].startswith("checkpoint_") and parts[-1] == "epochs.jsonl":
            newest[parts[0]] = max(newest.get(parts[0], ""), key)  # names sort in the order written
    rows = {}
    for trial, key in newest.items():
        body = client.get_object(Bucket=BUCKET, Key=key)["Body"].read().decode()
        rows[trial] = [json.loads(line) for line in body.splitlines() if line.strip()]
    return rows


def read_parquet(client, key: str) -> list[dict]:
    import pyarrow.parquet as pq

    return pq.read_table(io.BytesIO(client.get_object(Bucket=BUCKET, Key=key)["Body"].read())).to_pylist()


def wait_for(predicate, cluster, submission: str, timeout: float = 240, every: float = 0.2):
    """Poll ``predicate()`` until it returns something truthy (returned); fail if the job ends first."""
    deadline = time.time() + timeout
    while True:
        value = predicate()
        if value:
            return value
        status = cluster.job(submission)["status"]
        if status in ray_procs.JOB_DONE:
            raise AssertionError(f"job ended ({status}) before the fault: {cluster.job_logs(submission)[-3000:]}")
        if time.time() > deadline:
            raise AssertionError(f"no fault point within {timeout} s")
        time.sleep(every)


# ------------------------------------------------------------------ counting
def reference_rows(job: Path, data_dir: str):
    """A future of (trial name, epoch) -> metric values of an uninterrupted in-process run of every trial.

    Computed in a thread of this process while the cluster starts and the grid runs: the test
    model spends its time asleep.
    """
    import concurrent.futures

    import faults

    executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="reference")
    future = executor.submit(faults.reference_rows, job, data_dir)
    executor.shutdown(wait=False)
    return future


def epoch_starts(epoch_log: Path, job: Path) -> dict[str, int]:
    """Per trial name: data epochs (1..) started, from the test model's log (repeats included)."""
    from aalr_ray.grid import expand, load_grid
    from aalr_ray.train import epoch_seed

    by_seed = {}
    for config in expand(load_grid(job)):
        for epoch in range(1, config["epochs"] + 1):
            by_seed[epoch_seed(config["seed"], epoch)] = config["trial_name"]
    counts: dict[str, int] = {}
    lines = epoch_log.read_text().split() if epoch_log.exists() else []
    for seed in lines:
        name = by_seed.get(int(seed))
        if name is not None:
            counts[name] = counts.get(name, 0) + 1
    return counts


def count(outcome: Outcome, client, experiment: str, reference, starts: dict[str, int],
          killed_nodes: set[str] = frozenset()) -> Outcome:
    """Fill the row and epoch counts of ``outcome`` from the experiment's Parquet files in the bucket.

    ``reference``: the reference rows, a future of them (computed while the grid ran), or None.
    """
    if hasattr(reference, "result"):
        reference = reference.result()
    rows = read_parquet(client, f"{experiment}/epochs.parquet")
    trials = read_parquet(client, f"{experiment}/trials.parquet")
    keys_seen = [(r["trial_name"], r["epoch"]) for r in rows]
    expected = set(reference) if reference is not None else {(t["trial_name"], e) for t in trials
                                                             for e in range(1, t["epochs"] + 1)}
    outcome.trials = len(trials)
    outcome.rows_expected = len(expected)
    outcome.rows_lost = len(expected - set(keys_seen))
    outcome.rows_twice = len(keys_seen) - len(set(keys_seen))
    if reference is not None:
        outcome.rows_differing = sum(reference.get(k) != tuple(r.get(m) for m in METRICS)
                                     for r, k in zip(rows, keys_seen))
    outcome.nodes_used = len({node for r in rows for node in str(r.get("node", "")).split(",") if node})
    outcome.epochs_retrained = sum(max(0, n - EPOCHS) for n in starts.values())
    if killed_nodes:  # the trials on a killed node that went on elsewhere
        affected = {r["trial_name"] for r in rows if set(str(r.get("node", "")).split(",")) & killed_nodes}
        outcome.trials_affected = len({name for name in affected
                                       if any(r["trial_name"] == name and not set(str(r["node"]).split(",")) &
                                              killed_nodes for r in rows)})
    outcome.detail["retrained_per_trial"] = {name: n - EPOCHS for name, n in sorted(starts.items()) if n > EPOCHS}
    outcome.detail["trial_nodes"] = {t["trial_name"]: t.get("node") for t in trials}
    return outcome


# ------------------------------------------------------------------ scenarios
def no_fault(cluster, client, workdir: Path, data_dir: str, job: dict) -> float:
    """The same grid, no fault: its wall time from submission to success."""
    path = write_job(workdir / "no-fault", job)
    started = time.perf_counter()
    finished(cluster, submit_grid(cluster, path, "no-fault", data_dir))
    return time.perf_counter() - started


def _submitted(scenario: str, job_spec: dict, cluster, epoch_log: Path, workdir: Path, data_dir: str):
    """(outcome, job file, experiment prefix, start time, submission id) of a scenario's grid, submitted."""
    job = write_job(workdir / scenario, job_spec)
    epoch_log.unlink(missing_ok=True)
    started = time.perf_counter()
    return Outcome(scenario), job, f"{scenario}/{job_spec['name']}", started, submit_grid(cluster, job, scenario,
                                                                                          data_dir)


def node_loss(cluster, client, epoch_log: Path, workdir: Path, data_dir: str, reference,
              job_spec: dict = JOB, scenario: str = "node-loss") -> Outcome:
    """Kill a worker node of a trial that has a checkpoint in S3, mid-epoch; the grid finishes.

    For a data-parallel trial (``DDP_JOB``), one of the nodes that hold its ranks.
    """
    outcome, job, experiment, started, submission = _submitted(scenario, job_spec, cluster, epoch_log, workdir,
                                                               data_dir)
    alive = {node.node_id: node for node in cluster.nodes if not node.killed}

    def victims():
        """The nodes of a trial that has checkpointed 1 to EPOCHS - 2 epochs: it has an epoch in flight."""
        for rows in newest_rows(client, experiment).values():
            if rows and 1 <= len(rows) <= EPOCHS - 2:
                nodes = [alive[n] for n in rows[-1]["node"].split(",") if n in alive]
                if nodes:
                    return nodes
        return None

    nodes = wait_for(victims, cluster, submission)
    time.sleep(0.3)  # into the next epoch (the model sleeps 10 ms per batch: epochs take about a second)
    outcome.detail["ranks_on_nodes"] = len(nodes)
    outcome.detail["node_death_detected_s"] = round(cluster.kill_node(nodes[-1]), 1)
    outcome.nodes_killed = 1
    finished(cluster, submission)
    outcome.wall_s = time.perf_counter() - started
    return count(outcome, client, experiment, reference, epoch_starts(epoch_log, job), {nodes[-1].node_id})


def ddp_node_loss(cluster, client, epoch_log: Path, workdir: Path, data_dir: str) -> Outcome:
    """:func:`node_loss` for one ``workers_per_trial: 2`` trial whose ranks sit on different nodes."""
    return node_loss(cluster, client, epoch_log, workdir, data_dir, None, DDP_JOB, "ddp-node-loss")


def driver_loss(cluster, client, epoch_log: Path, workdir: Path, data_dir: str, reference: dict) -> Outcome:
    """SIGKILL the job's driver with trials mid-run; resubmit with --resume."""
    import signal

    outcome, job, experiment, started, submission = _submitted("driver-loss", JOB, cluster, epoch_log, workdir,
                                                               data_dir)
    # One trial mid-run is enough: two at once (reuse_actors staggers them, and each S3 poll takes a
    # while under load) left a window a CI run once missed entirely, and the job ended unkilled.
    wait_for(lambda: sum(1 <= len(rows) <= EPOCHS - 2 for rows in newest_rows(client, experiment).values()) >= 1,
             cluster, submission)
    time.sleep(0.3)
    outcome.trials_affected = sum(len(rows) < EPOCHS for rows in newest_rows(client, experiment).values())
    for pid in cluster.driver_pids(submission):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    outcome.drivers_killed = 1
    outcome.detail["killed_job_status"] = cluster.wait_job(submission, timeout=120)["status"]
    # The dead driver's S3 lease expires LOCK_TTL_S after its last renewal; until then a
    # --resume is refused with one line naming it (tests/test_storage.py).
    time.sleep(LOCK_TTL_S)
    resumed = submit_grid(cluster, job, "driver-loss", data_dir, "--resume")
    finished(cluster, resumed)
    outcome.wall_s = time.perf_counter() - started
    return count(outcome, client, experiment, reference, epoch_starts(epoch_log, job))


def autoscaling(workdir: Path, data_dir: str, idle_timeout_minutes: float = 0.1) -> Outcome:
    """Worker types like cluster.yaml's (min 0); read the autoscaler's node count while a grid runs and after."""
    outcome = Outcome("autoscaling")
    worker_types = {"cpu_worker": {"resources": {"CPU": 1}, "min_workers": 0, "max_workers": 2, "node_config": {}}}
    job = write_job(workdir / "autoscaling", JOB, name="autoscaling", seeds=2, epochs=2)
    with s3_server.moto_s3(workdir / "aws", BUCKET) as (s3_env, client):
        env = {**s3_env, "OMP_NUM_THREADS": "1", "RAY_AIR_NEW_OUTPUT": "0",
               "PYTHONPATH": os.pathsep.join(p for p in (str(TESTS), os.environ.get("PYTHONPATH")) if p)}
        with ray_procs.autoscaling_cluster(worker_types, idle_timeout_minutes, env=env) as cluster:
            timeline = [(0.0, cluster.alive_worker_count())]
            started = time.perf_counter()
            submission = submit_grid(cluster, job, "autoscaling", data_dir, upload=False)
            done_at = None
            while True:
                workers = cluster.alive_worker_count()
                now = time.perf_counter() - started
                if workers != timeline[-1][1]:
                    timeline.append((round(now, 1), workers))
                if done_at is None and cluster.job(submission)["status"] in ray_procs.JOB_DONE:
                    finished(cluster, submission, timeout=5)
                    done_at = now
                if done_at is not None and workers == 0:
                    break
                if now > 300:
                    raise AssertionError(f"the autoscaler did not scale to 0 within 300 s: {timeline}")
                time.sleep(0.5)
            outcome.wall_s = done_at
            outcome.detail.update(timeline=timeline, grid_done_s=round(done_at, 1),
                                  idle_timeout_s=idle_timeout_minutes * 60,
                                  max_workers=max(n for _, n in timeline))
            count(outcome, client, "autoscaling/autoscaling", None, {})
    return outcome


def traffic(cluster, client, workdir: Path, data_dir: str) -> Outcome:
    """Bytes uploaded per trial-epoch, from the bucket's listing polled while the grid runs."""
    outcome = Outcome("traffic")
    # ResNet-18: 3 epochs of phase 1 (one CPU thread takes about a minute an epoch): the first
    # uploads theta_0, the others nothing new. The CNN: phase-1 patience 2, so that SAVE_BESTs come.
    job = write_job(workdir / "traffic", {
        "name": "traffic", "epochs": 3, "seeds": [0], "datasets": ["mnist1d", "synthetic"],
        "models": ["mnist1d-cnn", "resnet18"], "methods": ["aalr"], "max_concurrent": 2,
        "resources": {"cpu": 1, "gpu": 0},
        "include": [{"model": "mnist1d-cnn", "dataset": "mnist1d"}, {"model": "resnet18", "dataset": "synthetic"}],
        "overrides": [{"match": {"model": "mnist1d-cnn"},
                       "set": {"epochs": 8, "method_options": {"phase1_patience": 2}}}]})
    experiment = "traffic/traffic"
    submission = submit_grid(cluster, job, "traffic", data_dir)
    sizes: dict[str, int] = {}
    indexes: dict[str, list[str]] = {}  # checkpoint dir -> snapshot files it names
    while True:
        done = cluster.job(submission)["status"] in ray_procs.JOB_DONE
        for key, size in keys(client, experiment + "/").items():
            sizes.setdefault(key, size)
            if key.endswith("/snapshots.json") and key.rsplit("/", 1)[0] not in indexes:
                body = client.get_object(Bucket=BUCKET, Key=key)["Body"].read()
                indexes[key.rsplit("/", 1)[0]] = json.loads(body)["snapshots"]
        if done:
            break
        time.sleep(0.2)
    finished(cluster, submission, timeout=5)
    rows = read_parquet(client, f"{experiment}/epochs.parquet")
    outcome.detail["per_model"] = per_model_traffic(sizes, indexes, rows, data_dir)
    return outcome


def per_model_traffic(sizes: dict[str, int], indexes: dict[str, list[str]], rows: list[dict],
                      data_dir: str) -> dict:
    """Per model: bytes per epoch without and with new snapshot files, before/after, and model + optimizer."""
    import statistics

    result = {}
    by_trial: dict[str, dict] = {}
    for directory, names in indexes.items():
        trial, checkpoint = directory.rsplit("/", 2)[-2:]
        own = sum(size for key, size in sizes.items() if key.startswith(directory + "/"))
        snapshot_bytes = {name: sizes.get(f"{directory.rsplit('/', 1)[0]}/snapshots/{name}", 0) for name in names}
        by_trial.setdefault(trial, {})[int(checkpoint.split("_")[1])] = (own, snapshot_bytes)
    for trial, checkpoints in by_trial.items():
        model = next(r["model"] for r in rows if trial.startswith(r["trial_name"] + "_"))
        seen: set[str] = set()
        quiet, busy, before = [], [], []
        for index in sorted(checkpoints):
            own, snapshot_bytes = checkpoints[index]
            new = {name: size for name, size in snapshot_bytes.items() if name not in seen}
            seen.update(snapshot_bytes)
            (busy if new else quiet).append(own + sum(new.values()))
            before.append(own + sum(snapshot_bytes.values()))
        live = model_and_optimizer_bytes(model, rows, data_dir)
        result[model] = {
            "epochs": len(checkpoints), "epochs_uploading_a_snapshot": len(busy),
            "after_quiet_median": statistics.median(quiet) if quiet else None,
            "after_snapshot_median": statistics.median(busy) if busy else None,
            "before_median": statistics.median(before), "model_and_optimizer": live,
            "after_quiet_ratio": statistics.median(quiet) / live if quiet else None,
            "before_ratio": statistics.median(before) / live}
    return result


def model_and_optimizer_bytes(model: str, rows: list[dict], data_dir: str) -> int:
    """torch.save size of the model's and its optimizer's state after one step, momentum buffers included.

    Measured on a ``step`` run (the same SGD with momentum as AALR's): an AALR epoch that ends
    in RESTORE_INITIAL hands back theta_0's fresh optimizer, without buffers.
    """
    import torch

    from aalr_ray.train import RunConfig, TrainingRun

    row = next(r for r in rows if r["model"] == model)
    run = TrainingRun(RunConfig(model=model, dataset=row["dataset"], method="step", epochs=1, seed=0,
                                data_dir=data_dir, train_limit=128, test_limit=16, batch_size=128))
    run.train_one_epoch()
    buffer = io.BytesIO()
    torch.save({"model": run.model.state_dict(), "optimizer": run.method.optimizer.state_dict()}, buffer)
    return len(buffer.getvalue())


# ------------------------------------------------------------------ the report
SCENARIOS = ("node-loss", "ddp-node-loss", "driver-loss", "autoscaling", "traffic")


def _mb(value) -> str:
    return "-" if value is None else f"{value / 1e6:.2f} MB"


def fault_table(outcomes: list[Outcome]) -> str:
    lines = ["| fault | nodes killed | drivers killed | trials (in flight at the fault) | epochs retrained | rows expected | "
             "lost | twice | differing | nodes used | wall | no-fault wall |", "|---|" + "---|" * 11]
    for o in outcomes:
        lines.append(f"| {o.scenario} | {o.nodes_killed} | {o.drivers_killed} | {o.trials} ({o.trials_affected}) | "
                     f"{o.epochs_retrained} | {o.rows_expected} | {o.rows_lost} | {o.rows_twice} | "
                     f"{o.rows_differing if o.scenario != 'ddp-node-loss' else '-'} | {o.nodes_used} | "
                     f"{o.wall_s:.0f} s | " + (f"{o.no_fault_wall_s:.0f} s |" if o.no_fault_wall_s else "- |"))
    return "\n".join(lines)


def traffic_table(outcome: Outcome) -> str:
    lines = ["| model | model + optimizer | before: per epoch | after: epoch without a new snapshot | ratio | "
             "after: epoch that uploads one | epochs (uploading) |", "|---|---|---|---|---|---|---|"]
    for model, t in outcome.detail["per_model"].items():
        ratio = "-" if t["after_quiet_ratio"] is None else f"{t['after_quiet_ratio']:.2f} x"
        lines.append(f"| {model} | {_mb(t['model_and_optimizer'])} | {_mb(t['before_median'])} "
                     f"({t['before_ratio']:.2f} x) | {_mb(t['after_quiet_median'])} | {ratio} | "
                     f"{_mb(t['after_snapshot_median'])} | {t['epochs']} ({t['epochs_uploading_a_snapshot']}) |")
    return "\n".join(lines)


def run_scenarios(names: list[str], base: Path, data_dir: str) -> list[Outcome]:
    outcomes = []
    needs_cluster = [n for n in names if n != "autoscaling"]
    reference = reference_rows(write_job(base / "reference", JOB), data_dir) if needs_cluster else None
    if needs_cluster:
        with s3_cluster(base / "cluster", workers=2) as (cluster, client, epoch_log):
            baseline = None
            for name in needs_cluster:
                started = time.perf_counter()
                if name == "node-loss":
                    baseline = baseline or no_fault(cluster, client, base / "cluster", data_dir, JOB)
                    outcome = node_loss(cluster, client, epoch_log, base / "cluster", data_dir, reference)
                    outcome.no_fault_wall_s = baseline
                    cluster.add_node({"cpus": 1, "resources": {"worker2": 1}})  # the spot node's replacement
                elif name == "ddp-node-loss":
                    while sum(not n.killed for n in cluster.nodes) < 3:
                        cluster.add_node({"cpus": 1})
                    ddp_baseline = no_fault(cluster, client, base / "cluster-ddp", data_dir, DDP_JOB)
                    outcome = ddp_node_loss(cluster, client, epoch_log, base / "cluster", data_dir)
                    outcome.no_fault_wall_s = ddp_baseline
                elif name == "driver-loss":
                    outcome = driver_loss(cluster, client, epoch_log, base / "cluster", data_dir, reference)
                    outcome.no_fault_wall_s = baseline
                else:
                    outcome = traffic(cluster, client, base / "cluster", data_dir)
                outcomes.append(outcome)
                print(f"{name}: {json.dumps(asdict(outcome))} ({time.perf_counter() - started:.0f} s)", flush=True)
    if "autoscaling" in names:
        outcome = autoscaling(base / "autoscaling", data_dir)
        outcomes.append(outcome)
        print(f"autoscaling: {json.dumps(asdict(outcome))}", flush=True)
    return outcomes


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenarios", default=",".join(SCENARIOS), help="comma-separated: " + ", ".join(SCENARIOS))
    args = parser.parse_args(argv)
    names = args.scenarios.split(",")
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown:
        parser.error(f"unknown scenario {unknown[0]!r}; choose from {', '.join(SCENARIOS)}")
    from aalr_ray.data import load_dataset

    base = Path(tempfile.mkdtemp(prefix="aalr-multinode-"))
    data_dir = str(base / "data")
    load_dataset("mnist1d", data_dir=data_dir)
    outcomes = merged(run_scenarios(names, base, data_dir))
    body = render(outcomes)
    from common import write_fragment, write_section

    write_fragment("multinode", "Multi-node faults", f"python bench/multinode.py --scenarios {args.scenarios}", body)
    write_section("multinode")
    print("wrote the Multi-node faults section of BENCHMARKS.md")
    return 0 if all(o.exact for o in outcomes) else 1


def merged(outcomes: list[Outcome]) -> list[Outcome]:
    """These outcomes, plus those of scenarios not run this time from the last run (multinode.json beside
    the fragments, rewritten here), in SCENARIOS order: one scenario can be measured again on its own."""
    import common  # its RESULTS is where this run's fragments go (run_all.py --quick moves it)

    outcomes_file = common.RESULTS / "multinode.json"
    earlier = json.loads(outcomes_file.read_text()) if outcomes_file.exists() else {}
    by_name = {name: Outcome(**fields) for name, fields in earlier.items()}
    by_name.update({o.scenario: o for o in outcomes})
    outcomes_file.parent.mkdir(parents=True, exist_ok=True)
    outcomes_file.write_text(json.dumps({n: asdict(o) for n, o in by_name.items()}, indent=1) + "\n")
    return [by_name[name] for name in SCENARIOS if name in by_name]


def render(outcomes: list[Outcome]) -> str:
    faults_run = [o for o in outcomes if o.scenario not in ("autoscaling", "traffic")]
    parts = []
    if faults_run:
        parts.append(
            "A head with no CPU for trials and worker nodes of 1 CPU each, real `ray start` processes with token "
            "authentication on this machine; S3 on a moto server on loopback (no shared disk); the driver under "
            f"`ray job submit`. Grid: {JOB['seeds']} trials x {EPOCHS} epochs (aalr, a sleeping MLP on MNIST-1D, "
            "2 at a time); the DDP grid: 1 trial, 2 ranks. A node is killed with SIGKILL to its raylet and every "
            "process under it, mid-epoch, once one of its trials has a checkpoint in S3. Epochs retrained: data "
            "epochs started more than once, counted by the model itself. Differing: metric columns ("
            + ", ".join(METRICS) + ") not bit-identical to an uninterrupted in-process run (not checked for "
            "DDP, whose rows are checked against a one-process run to rounding in tests/test_distributed.py). "
            "No-fault wall: the same grid on the same cluster without the fault.\n\n" + fault_table(faults_run))
    for o in outcomes:
        if o.scenario == "autoscaling":
            d = o.detail
            parts.append(f"Autoscaling (fake multi-node provider, worker type: 1 CPU, min 0, max 2, idle timeout "
                         f"{d['idle_timeout_s']:.0f} s; a grid of 2 trials x 2 epochs): worker nodes over time "
                         f"(seconds from submission, count) {d['timeline']}; the grid finished at "
                         f"{d['grid_done_s']} s; rows lost {o.rows_lost}.")
        if o.scenario == "traffic":
            parts.append("Checkpoint traffic: bytes uploaded per trial-epoch, from the bucket's own listing "
                         "(polled every 0.2 s while the grid ran). MNIST-1D CNN: 8 epochs of AALR with phase-1 "
                         "patience 2, so both kinds of epoch occur; ResNet-18 on CIFAR-shaped synthetic data "
                         "(2,048 images): 3 epochs, all in phase 1. After: the checkpoint directory plus any snapshot file "
                         "uploaded for it. Before: the same checkpoints with the snapshots they name inline, as "
                         "the previous layout wrote every epoch. Model + optimizer: `torch.save` of both states.\n\n"
                         + traffic_table(o))
    return "\n\n".join(parts)


if __name__ == "__main__":
    sys.exit(main())
