"""The per-epoch cost of AALR's Ray metrics (:mod:`aalr_ray.metrics`) inside a Ray worker.

    python bench/monitoring_cost.py             # 60 real ConvBase epochs + 2,000 exports on a 200-epoch history
    python bench/monitoring_cost.py --quick     # 10 and 200: a check that it runs

Every epoch a trial calls ``TrialMetrics.export(row, rows)``: six gauges set
and two counters brought to the rows' totals, all tagged with the trial.
This times that call in a Ray worker process on a local Ray with its
dashboard and metrics agent (as ``aalr-ray grid`` starts it), two ways:

* after each epoch of a real aalr TrainingRun (mnist1d-cnn on MNIST-1D), so
  the cost is also given as a share of the epoch;
* on a synthetic 200-epoch AALR history (the paper's CIFAR length), where
  counting the rollbacks goes over the most rows.

The goal (issue 20) is under 1 ms per epoch.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import write_fragment, write_section  # noqa: E402
from raytools import LoadWatch, command_line, goal, med, quantile, start_ray  # noqa: E402


def time_exports(epochs: int, exports: int, data_dir: str | None) -> dict:
    """(In a Ray worker.) Seconds per export after real epochs, and on a long synthetic history."""
    import torch

    from aalr_ray.metrics import TrialMetrics
    from aalr_ray.train import RunConfig, TrainingRun

    torch.set_num_threads(1)
    config = {"trial_name": "bench", "method": "aalr", "model": "mnist1d-cnn", "dataset": "mnist1d"}
    metrics = TrialMetrics.for_trial(config, "monitoring-cost")
    run = TrainingRun(RunConfig(model="mnist1d-cnn", dataset="mnist1d", method="aalr", epochs=epochs,
                                data_dir=data_dir))
    real, epoch_s, rows = [], [], []
    for _ in range(epochs):
        started = time.perf_counter()
        row = run.train_one_epoch()
        epoch_s.append(time.perf_counter() - started)
        row["epochs_done"] = run.epoch
        rows.append(row)
        started = time.perf_counter()
        metrics.export(row, rows)
        real.append(time.perf_counter() - started)

    long = TrialMetrics.for_trial({**config, "trial_name": "bench-200"}, "monitoring-cost")
    actions = ("continue", "save_best", "continue", "restore_best", "restore_initial")
    history = [{"epoch": e, "epochs_done": e, "lr": 0.1 / (1 + e % 7), "train_loss": 1.0 / e, "test_acc": 0.5,
                "phase": 2, "patience": 1 + e % 4, "action": actions[e % len(actions)]} for e in range(1, 201)]
    synthetic = []
    for i in range(exports):
        started = time.perf_counter()
        long.export(history[-1], history)
        synthetic.append(time.perf_counter() - started)
    return {"real": real[1:], "epoch_s": epoch_s[1:], "synthetic": synthetic[10:], "enabled": metrics.enabled}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="10 epochs and 200 exports")
    parser.add_argument("--data-dir", default=None)
    args = parser.parse_args(argv)
    epochs, exports = (10, 200) if args.quick else (60, 2000)
    load = LoadWatch()
    ray = start_ray(num_cpus=2, include_dashboard=True)
    try:
        result = ray.get(ray.remote(num_cpus=1)(time_exports).remote(epochs, exports, args.data_dir))
    finally:
        ray.shutdown()
    real_ms = [1e3 * s for s in result["real"]]
    share = [r / e for r, e in zip(result["real"], result["epoch_s"])]
    worst = max(statistics.median(real_ms), quantile(real_ms, 0.99))
    body = "\n".join([
        "Milliseconds per `TrialMetrics.export` call (six gauges, two counters, five tags), in a Ray worker "
        "on a local Ray with its dashboard and metrics agent, median (min-max); the first epoch is a warm-up "
        f"and left out. Metrics enabled: {result['enabled']}.",
        "",
        "| case | exports | export, ms | p99, ms | share of the epoch |",
        "|---|---|---|---|---|",
        f"| after each real ConvBase aalr epoch | {len(real_ms)} | {med(real_ms, '{:.3f}')} | "
        f"{quantile(real_ms, 0.99):.3f} | {med(share, '{:.2%}')} |",
        f"| synthetic 200-epoch history | {len(result['synthetic'])} | "
        f"{med([1e3 * s for s in result['synthetic']], '{:.3f}')} | "
        f"{quantile([1e3 * s for s in result['synthetic']], 0.99):.3f} | - |",
        "",
        f"ConvBase epoch in the same worker: {med([1e3 * s for s in result['epoch_s']])} ms. "
        f"Goal: under 1 ms per epoch: {goal(worst < 1.0)} (the real epochs' p99: {quantile(real_ms, 0.99):.3f} ms).",
        "",
        load.note(),
    ])
    write_fragment("monitoring_cost", "Monitoring cost: AALR's Ray metrics per epoch",
                   command_line("monitoring_cost.py", argv), body)
    if not args.quick:
        write_section("monitoring_cost")  # this section of BENCHMARKS.md, in place
    print(body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
