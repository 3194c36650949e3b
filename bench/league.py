"""Quality league table: every method at its defaults on CPU workloads nobody tuned for.

    python bench/league.py                       # 3 workloads x all methods x 5 seeds -> bench/results/league.{json,md}
    python bench/league.py --workloads convbase --seeds 2 --epochs 10   # a quick look
    python bench/league.py --methods aalr-adam --method-options '{"aalr-adam": {"lr": 0.1}}' --name league-adam-lr0.1

``--methods all`` is every registered method: the AALR variants over SGD
(``aalr``, ``aalr-robust``) and over Adam (``aalr-adam``, ``aalr-robust-adam``)
and every baseline. ``--method-options`` overrides defaults as a grid file's
``method_options`` does (checked the same way), e.g. to compare starts.

Each (workload, method, seed) is one aalr_ray TrainingRun in a worker process
with one torch thread; ``--jobs`` processes run side by side.
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

# name: (model, dataset, epochs, published reference)
WORKLOADS = {
    "convbase": ("mnist1d-cnn", "mnist1d", 100, "ConvBase about 94% (Greydanus 2020)"),
    "mlp": ("mlp", "mnist1d", 100, "MLP about 68% (Greydanus 2020)"),
    "digits": ("small-cnn", "digits", 60, "none"),
}
CHANCE_MARGIN = 0.05  # final accuracy below 1/classes + 5 points counts as collapsed


def run_one(job: dict) -> dict:
    os.environ["OMP_NUM_THREADS"] = "1"
    from aalr_ray.train import RunConfig, TrainingRun

    config = RunConfig(model=job["model"], dataset=job["dataset"], method=job["method"], epochs=job["epochs"],
                       seed=job["seed"], data_dir=job.get("data_dir"), method_options=job.get("method_options") or {})
    run = TrainingRun(config)
    rows = list(run)
    summary = run.summary()
    return {**job, "rows": rows, "final_test_acc": summary["final_test_acc"],
            "num_classes": run.data.spec.num_classes}


def mean_std(values: list[float]) -> str:
    pct = [100 * v for v in values]
    if len(pct) == 1:
        return f"{pct[0]:.2f}"
    return f"{statistics.mean(pct):.2f} ± {statistics.stdev(pct):.2f}"


def epochs_to_reach(rows: list[dict], target: float) -> int | None:
    for row in rows:
        if row["test_acc"] >= target:
            return row["epoch"]
    return None


def summarise(results: list[dict], methods: list[str]) -> tuple[str, dict]:
    """Markdown tables per workload and an overall rank; also the numbers as a dict."""
    lines, numbers = [], {}
    by_workload: dict[str, dict[str, list[dict]]] = {}
    for r in results:
        by_workload.setdefault(r["workload"], {}).setdefault(r["method"], []).append(r)
    ranks: dict[str, list[int]] = {m: [] for m in methods}
    for workload, per_method in by_workload.items():
        model, dataset, _, reference = WORKLOADS[workload]
        epochs = next(iter(per_method.values()))[0]["epochs"]
        step_peaks = [max(row["test_acc"] for row in r["rows"]) for r in per_method.get("step", [])]
        target = statistics.mean(step_peaks) - 0.005 if step_peaks else None
        lines += [f"### {workload}: {model} on {dataset}, {epochs} epochs, "
                  f"{len(next(iter(per_method.values())))} seeds (published reference: {reference})", "",
                  "| method | final acc % | peak acc % | worst seed final % | collapsed | "
                  "epochs to step's peak - 0.5 (median) |",
                  "|---|---|---|---|---|---|"]
        table = {}
        for method in methods:
            runs = per_method.get(method)
            if not runs:
                continue
            finals = [r["final_test_acc"] for r in runs]
            peaks = [max(row["test_acc"] for row in r["rows"]) for r in runs]
            chance = 1.0 / runs[0]["num_classes"] + CHANCE_MARGIN
            collapsed = sum(f < chance for f in finals)
            reach = [epochs_to_reach(r["rows"], target) for r in runs] if target is not None else []
            reached = [e for e in reach if e is not None]
            if not reach:
                reach_text = "-"
            elif len(reached) * 2 > len(reach):
                reach_text = f"{statistics.median(reach if len(reached) == len(reach) else reached):.0f}"
                if len(reached) < len(reach):
                    reach_text += f" ({len(reach) - len(reached)} never)"
            else:
                reach_text = f"never ({len(reached)}/{len(reach)} reached)"
            table[method] = {"final_mean": statistics.mean(finals), "peak_mean": statistics.mean(peaks),
                             "worst_final": min(finals), "collapsed": collapsed, "epochs_to_target": reach}
            lines.append(f"| {method} | {mean_std(finals)} | {mean_std(peaks)} | {100 * min(finals):.2f} | "
                         f"{collapsed}/{len(runs)} | {reach_text} |")
        order = sorted(table, key=lambda m: -table[m]["final_mean"])
        for rank, method in enumerate(order, 1):
            ranks[method].append(rank)
        numbers[workload] = table
        lines.append("")
    lines += ["### Overall rank (mean rank of the mean final accuracy over the workloads)", "",
              "| method | mean rank | ranks per workload |", "|---|---|---|"]
    overall = sorted((m for m in methods if ranks[m]), key=lambda m: statistics.mean(ranks[m]))
    for method in overall:
        lines.append(f"| {method} | {statistics.mean(ranks[method]):.1f} | "
                     f"{', '.join(str(r) for r in ranks[method])} |")
    numbers["overall_rank"] = {m: statistics.mean(ranks[m]) for m in overall}
    return "\n".join(lines) + "\n", numbers


def league_methods(spec: str) -> list[str]:
    """``all`` (every registered method, the Adam variants of AALR included) or a comma list."""
    from aalr_ray.methods import method_names

    return method_names() if spec == "all" else spec.split(",")


def method_options_problem(methods: list[str], text: str | None) -> tuple[dict, str | None]:
    """(method -> options, None) from --method-options JSON, or ({}, one line saying what is wrong)."""
    from aalr_ray.grid import option_problems
    from aalr_ray.methods import method_names

    if text is None:
        return {}, None
    try:
        options = json.loads(text)
    except json.JSONDecodeError as exc:
        return {}, f"--method-options is not JSON: {exc}"
    if not isinstance(options, dict):
        return {}, "--method-options expects a JSON mapping method -> options"
    for method, opts in options.items():
        if method not in methods or method not in method_names():
            return {}, f"--method-options names {method!r}, which is not among --methods: {', '.join(methods)}"
        for key, problem in option_problems(method, opts):
            return {}, f"--method-options {method}.{key}: {problem}"
    return options, None


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workloads", default=",".join(WORKLOADS))
    parser.add_argument("--methods", default="all")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=None, help="override every workload's epochs")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--name", default="league")
    parser.add_argument("--method-options", default=None, metavar="JSON",
                        help='override method defaults, e.g. \'{"aalr-adam": {"lr": 0.1}}\'')
    args = parser.parse_args(argv)

    workloads = args.workloads.split(",")
    unknown = [w for w in workloads if w not in WORKLOADS]
    if unknown:
        print(f"unknown workload {unknown[0]!r}; choose from: {', '.join(WORKLOADS)}", file=sys.stderr)
        return 2
    methods = league_methods(args.methods)
    method_options, problem = method_options_problem(methods, args.method_options)
    if problem:
        print(problem, file=sys.stderr)
        return 2
    jobs = []
    for workload in workloads:
        model, dataset, epochs, _ = WORKLOADS[workload]
        for seed in range(args.seeds):
            for method in methods:
                jobs.append({"workload": workload, "model": model, "dataset": dataset, "method": method,
                             "epochs": args.epochs or epochs, "seed": seed, "data_dir": args.data_dir,
                             "method_options": method_options.get(method, {})})
    # Longest first keeps both processes busy to the end.
    jobs.sort(key=lambda j: -j["epochs"] * (3 if j["dataset"] == "digits" else 1))
    started = time.perf_counter()
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        results = list(pool.map(run_one, jobs))
    elapsed = time.perf_counter() - started
    text, numbers = summarise(results, methods)
    command = "python bench/league.py " + " ".join(argv if argv is not None else sys.argv[1:])
    body = (f"{text}\n{len(jobs)} runs in {elapsed / 60:.1f} min with {args.jobs} processes of one torch thread. "
            f"Collapsed: final accuracy below chance + {100 * CHANCE_MARGIN:.0f} points. The epochs-to-target column is "
            "the first epoch whose test accuracy reaches the mean peak of `step` minus 0.5 points.\n")
    write_fragment(args.name, "Quality league table (CPU, real data, every method at its defaults)",
                   command.strip(), body)
    (RESULTS / f"{args.name}.json").write_text(json.dumps(
        {"numbers": numbers, "seconds": elapsed, "jobs": args.jobs, "runs": results}))
    print(text)
    print(f"{len(jobs)} runs in {elapsed / 60:.1f} min with {args.jobs} processes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
