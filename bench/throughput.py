"""Sweep throughput of aalr_trainable on a local Ray: 1 against 2 concurrent trials.

    python bench/throughput.py            # (a) 8 trials x 20 epochs; (b) 64 trials x 3 epochs (~5 min)
    python bench/throughput.py --repeats 3    # (a) repeated, for min-max (each repeat ~2-3 min)
    python bench/throughput.py --quick    # (a) 4 x 5, 1 repeat; (b) 8 x 3

Why: a sweep is where a Tune integration earns its keep. On this 2-core
machine two trials of one CPU and one torch thread each should run nearly
twice as fast as one at a time, unless the driver and Ray's per-trial work
(actor start, per-epoch report and checkpoint) eat the second core.

(a) 8 MNIST-1D trials (aalr on mnist1d-cnn, 20 epochs, seeds 0-7) through
    ``tune.Tuner`` + ``aalr_trainable``, 1 CPU each, with
    ``max_concurrent_trials`` 1 and 2: wall time of ``Tuner.fit`` and the
    speed-up (goal: 2 concurrent >= 1.7x faster). With Tune's default
    ``reuse_actors=False`` (a new actor, i.e. a new worker process that
    imports torch, per trial) and with ``reuse_actors=True``. Each repeat
    runs all four; the order of 1 and 2 alternates between repeats. One
    repeat by default: ``make bench`` has ~10 minutes for everything but
    the league table. Also the
    time per trial outside the trainable: wall time per trial at 1
    concurrent minus the trials' own ``time_total_s``.
(b) 64 tiny trials (3 epochs each, seeds 0-63), same trainable: trials per
    minute with 1 and 2 concurrent trials, with ``reuse_actors=True``: with
    a new actor per trial, start-up (measured in (a)) is all such a sweep
    would measure, and 64 of them would not fit the benchmark's time budget.

The Tuners run in one process on one local Ray (2 CPUs), so all settings see
the same machine. Times include each ``Tuner.fit``'s own start and finish.
An unmeasured 1-epoch trial runs first: the first ``Tuner.fit`` of a fresh
Ray waits several seconds longer for its first trial than later ones.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, write_fragment  # noqa: E402
from raytools import LoadWatch, command_line, goal, med, start_ray, warm_up  # noqa: E402

SPEEDUP_GOAL = 1.7


def sweep(tmp: Path, name: str, trials: int, epochs: int, concurrent: int, reuse: bool) -> dict:
    from ray import tune

    from aalr_ray.trainable import aalr_trainable

    space = {"model": "mnist1d-cnn", "dataset": "mnist1d", "method": "aalr", "epochs": epochs,
             "seed": tune.grid_search(list(range(trials)))}
    started = time.perf_counter()
    results = tune.Tuner(
        tune.with_resources(aalr_trainable, {"cpu": 1}),
        param_space=space,
        tune_config=tune.TuneConfig(max_concurrent_trials=concurrent, reuse_actors=reuse),
        run_config=tune.RunConfig(name=name, storage_path=str(tmp), verbose=0),
    ).fit()
    wall = time.perf_counter() - started
    if results.errors:
        raise RuntimeError(f"{name}: {results.errors[0]}")
    inside = [r.metrics["time_total_s"] for r in results]
    shutil.rmtree(tmp / name, ignore_errors=True)
    print(f"{name}: {trials} trials, {concurrent} concurrent, reuse_actors={reuse}: {wall:.1f} s", flush=True)
    return {"wall_s": wall, "inside_s": inside}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small sizes: a check that it runs")
    parser.add_argument("--trials", type=int, default=None, help="(a) trials; default 8 (quick: 4)")
    parser.add_argument("--epochs", type=int, default=None, help="(a) epochs; default 20 (quick: 5)")
    parser.add_argument("--repeats", type=int, default=None, help="(a) repeats; default 1")
    parser.add_argument("--tiny-trials", type=int, default=None, help="(b) trials; default 64 (quick: 8)")
    parser.add_argument("--tiny-epochs", type=int, default=3)
    parser.add_argument("--tiny-repeats", type=int, default=1)
    parser.add_argument("--name", default="throughput")
    args = parser.parse_args(argv)
    trials = args.trials or (4 if args.quick else 8)
    epochs = args.epochs or (5 if args.quick else 20)
    repeats = args.repeats or 1
    tiny = args.tiny_trials or (8 if args.quick else 64)

    load = LoadWatch()
    ray = start_ray()
    tmp = Path(tempfile.mkdtemp(prefix="aalr_throughput_"))
    runs = {(c, r): [] for r in (False, True) for c in (1, 2)}
    tiny_walls = {1: [], 2: []}
    started = time.perf_counter()
    try:
        warm_up(tmp)
        for rep in range(repeats):
            for reuse in (False, True):
                for concurrent in ((1, 2) if rep % 2 == 0 else (2, 1)):  # alternate which goes first
                    runs[(concurrent, reuse)].append(
                        sweep(tmp, f"sweep_c{concurrent}_r{int(reuse)}_{rep}", trials, epochs, concurrent, reuse))
        for rep in range(args.tiny_repeats):
            for concurrent in ((1, 2) if rep % 2 == 0 else (2, 1)):
                tiny_walls[concurrent].append(
                    sweep(tmp, f"tiny_c{concurrent}_{rep}", tiny, args.tiny_epochs, concurrent, True)["wall_s"])
    finally:
        ray.shutdown()
        shutil.rmtree(tmp, ignore_errors=True)
    elapsed = time.perf_counter() - started

    walls = {k: [r["wall_s"] for r in v] for k, v in runs.items()}
    lines = ["| `reuse_actors` | wall s, 1 concurrent | wall s, 2 concurrent | trials/min, 1 | trials/min, 2 "
             "| speed-up of 2 over 1 | goal >= 1.7x | s per trial outside the trainable (1 concurrent) |",
             "|---|---|---|---|---|---|---|---|"]
    speedups = {}
    for reuse in (False, True):
        sp = [a / b for a, b in zip(walls[(1, reuse)], walls[(2, reuse)])]
        speedups[reuse] = sp
        outside = [r["wall_s"] / trials - statistics.mean(r["inside_s"]) for r in runs[(1, reuse)]]
        rate = {c: med([60 * trials / x for x in walls[(c, reuse)]]) for c in (1, 2)}
        lines.append(f"| {reuse} | {med(walls[(1, reuse)])} | {med(walls[(2, reuse)])} | {rate[1]} | {rate[2]} "
                     f"| {med(sp, '{:.2f}')}x | {goal(statistics.median(sp) >= SPEEDUP_GOAL)} | {med(outside)} |")
    inside = [s for r in runs[(1, False)] for s in r["inside_s"]]
    body = (f"### (a) {trials} trials x {epochs} epochs (aalr, mnist1d-cnn, one seed each)\n\n"
            + "\n".join(lines) + "\n\n"
            f"Median (min-max) over {repeats} repeat(s). A trial's own time (`time_total_s`: its trainable "
            f"from start to last report) was {med(inside)} s. The goal is for Tune's default "
            f"(`reuse_actors=False`); `True` is shown for comparison.\n\n"
            f"### (b) {tiny} tiny trials x {args.tiny_epochs} epochs, `reuse_actors=True`\n\n"
            f"| concurrent trials | `Tuner.fit` wall s | trials per minute |\n|---|---|---|\n")
    for concurrent, ws in tiny_walls.items():
        body += f"| {concurrent} | {med(ws)} | {med([60 * tiny / w for w in ws])} |\n"
    tiny_speedup = [a / b for a, b in zip(tiny_walls[1], tiny_walls[2])]
    body += (f"\n{args.tiny_repeats} repeat(s); 2 concurrent over 1: {med(tiny_speedup, '{:.2f}')}x. "
             f"No goal was set for trials per minute. All sweeps took {elapsed / 60:.1f} min, an unmeasured "
             f"warm-up trial included.\n")
    body = body.rstrip() + "\n\n" + load.note() + "\n"
    write_fragment(args.name, "Sweep throughput on a local Ray (aalr_trainable, 2 CPUs)",
                   command_line("throughput.py", argv), body)
    (RESULTS / f"{args.name}.json").write_text(json.dumps(
        {"sweeps": {f"c{c}_reuse{r}": v for (c, r), v in runs.items()},
         "speedups": {str(k): v for k, v in speedups.items()}, "tiny": tiny_walls, "seconds": elapsed}))
    print(body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
