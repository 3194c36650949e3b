"""Adversarial training on a CPU: robust accuracy per method, and what an attack costs.

    python bench/adversarial.py            # digits, small CNN, 6 methods x {natural, FGSM} x 3 seeds
    python bench/adversarial.py --quick    # 1 seed, 5 epochs

The grid is jobs/adversarial_quickstart.yaml's (run here without Ray, one
process per run, so that the numbers are training alone). The cost table
trains natural, FGSM and PGD-10 side by side in one process, alternating
epochs, and compares the training time per epoch (robust evaluation excluded).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, write_fragment  # noqa: E402

EPS = 0.1  # digits pixels are in [0, 1]
ROBUST_EVAL = {"eps": EPS, "alpha": EPS / 4, "pgd_steps": 10, "subset": 360}
METHODS = ["aalr", "aalr-robust", "step", "sgdr", "clr", "adam"]
TRAINING = {"natural": "natural", "FGSM": f"fgsm:eps={EPS}"}


def run_one(job: dict) -> dict:
    os.environ["OMP_NUM_THREADS"] = "1"
    from aalr_ray.train import RunConfig, TrainingRun

    run = TrainingRun(RunConfig(model="small-cnn", dataset="digits", method=job["method"], epochs=job["epochs"],
                                seed=job["seed"], batch_size=64, training=job["training"], robust_eval=ROBUST_EVAL))
    rows = list(run)
    return {**job, "peak_fgsm": max(r["fgsm_acc"] for r in rows), "peak_pgd": max(r["pgd_acc"] for r in rows),
            "peak_clean": max(r["test_acc"] for r in rows), "final_clean": rows[-1]["test_acc"]}


def cost(epochs: int) -> list[tuple[str, list[float]]]:
    """Training seconds per epoch for natural, FGSM and PGD-10, interleaved in one process."""
    import torch

    from aalr_ray.train import RunConfig, TrainingRun

    torch.set_num_threads(1)
    runs = {name: TrainingRun(RunConfig(model="small-cnn", dataset="digits", method="step", epochs=epochs,
                                        batch_size=64, training=training))
            for name, training in (("natural", "natural"), ("FGSM", f"fgsm:eps={EPS}"),
                                   ("PGD-10", f"pgd:eps={EPS},alpha={EPS / 4},steps=10"))}
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(epochs):
        for name, run in runs.items():
            times[name].append(run.train_one_epoch()["epoch_s"])
    return list(times.items())


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="1 seed, 5 epochs: a check, not a result")
    parser.add_argument("--jobs", type=int, default=2)
    args = parser.parse_args(argv)
    seeds, epochs = (1, 5) if args.quick else (3, 30)

    jobs = [{"method": m, "mode": mode, "training": training, "seed": s, "epochs": epochs}
            for m in METHODS for mode, training in TRAINING.items() for s in range(seeds)]
    started = time.perf_counter()
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        results = list(pool.map(run_one, jobs))
    grid_s = time.perf_counter() - started

    def cell(method, mode, key):
        values = [100 * r[key] for r in results if r["method"] == method and r["mode"] == mode]
        return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}" if len(values) > 1 \
            else f"{values[0]:.2f}"

    lines = [f"Digits (sklearn, 1437 train / 360 test), `small-cnn`, batch 64, {epochs} epochs, {seeds} seeds; "
             f"white-box l-inf attacks at eps = {EPS} on all 360 test images each epoch (PGD-10: alpha = "
             f"{EPS / 4}, random start). Peak accuracy over the epochs, mean ± std over seeds, in %.", "",
             "| method | training | peak clean | peak FGSM | peak PGD-10 |", "|---|---|---|---|---|"]
    for method in METHODS:
        for mode in TRAINING:
            lines.append(f"| {method} | {mode} | {cell(method, mode, 'peak_clean')} | "
                         f"{cell(method, mode, 'peak_fgsm')} | {cell(method, mode, 'peak_pgd')} |")
    lines += ["", f"{len(jobs)} runs in {grid_s / 60:.1f} min with {args.jobs} processes.", ""]

    timings = cost(5 if args.quick else 20)
    natural = statistics.median(timings[0][1])
    lines += ["Cost of adversarial training per epoch (`step`, same model and data, the three runs "
              "alternating epoch by epoch in one process; training only):", "",
              "| training | median s/epoch (min-max) | ratio to natural | expected |", "|---|---|---|---|"]
    expected = {"natural": "1", "FGSM": "about 2", "PGD-10": "about 11"}
    for name, values in timings:
        lines.append(f"| {name} | {statistics.median(values):.3f} ({min(values):.3f}-{max(values):.3f}) | "
                     f"{statistics.median(values) / natural:.2f} | {expected[name]} |")
    body = "\n".join(lines) + "\n"
    command = "python bench/adversarial.py " + " ".join(argv if argv is not None else sys.argv[1:])
    write_fragment("adversarial", "Adversarial training on a CPU (robust accuracy and cost)", command.strip(), body)
    (RESULTS / "adversarial.json").write_text(json.dumps({"runs": results, "cost": timings}))
    print(body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
