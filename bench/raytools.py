"""Helpers of the Ray benchmarks (ray_cost, scheduler_cost, throughput): a local
Ray for the benchmark process, and the statistics every fragment prints.

Not a benchmark itself; ``run_all.py`` does not run it.
"""

from __future__ import annotations

import math
import os
import statistics
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent


def start_ray(num_cpus: int = 2, include_dashboard: bool = False):
    """An embedded local Ray of its own (``address="local"`` never joins another
    Ray on the machine; ``ray.shutdown()`` stops only what this process started).

    Workers import the bench modules by name, so bench/ goes on their PYTHONPATH;
    one torch/OpenMP thread per worker process.
    """
    os.environ["OMP_NUM_THREADS"] = "1"
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    os.environ["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(BENCH), str(ROOT), os.environ.get("PYTHONPATH")) if p)
    if str(BENCH) not in sys.path:
        sys.path.insert(0, str(BENCH))
    import ray

    ray.init(address="local", num_cpus=num_cpus, include_dashboard=include_dashboard, log_to_driver=False,
             configure_logging=False)
    return ray


def quantile(values, q: float) -> float:
    """The q-quantile by linear interpolation (q=0.99 for a p99)."""
    xs = sorted(values)
    if not xs:
        return math.nan
    pos = q * (len(xs) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def med(values, fmt: str = "{:.1f}", scale: float = 1.0) -> str:
    """``median (min-max)`` of ``values`` times ``scale``; just the value for one."""
    xs = [scale * v for v in values]
    if not xs:
        return "-"
    if len(xs) == 1:
        return fmt.format(xs[0])
    return f"{fmt.format(statistics.median(xs))} ({fmt.format(min(xs))}-{fmt.format(max(xs))})"


def goal(met: bool) -> str:
    return "met" if met else "**not met**"


def command_line(script: str, argv) -> str:
    args = list(argv if argv is not None else sys.argv[1:])
    return " ".join(["python", f"bench/{script}", *args])


class LoadWatch:
    """The machine's 1-minute load average at the start and end of a benchmark,
    for its fragment: timings on a busy machine say so themselves."""

    def __init__(self):
        self.start = os.getloadavg()[0]

    def note(self) -> str:
        end = os.getloadavg()[0]
        cores = os.cpu_count()
        return (f"1-minute load average of the machine: {self.start:.1f} at the start, {end:.1f} at the end, "
                f"on {cores} cores (this benchmark's own work included; a start well above 0 means something "
                f"else was running).")


def warm_up(storage) -> float:
    """One 1-epoch aalr_trainable trial, not measured: the first ``Tuner.fit`` of a
    fresh Ray waits several seconds longer for its first trial than later ones
    (seen here: ~12 s against 4-6 s), which would bias whichever run goes first."""
    import time

    from ray import tune

    from aalr_ray.trainable import aalr_trainable

    started = time.perf_counter()
    tune.Tuner(tune.with_resources(aalr_trainable, {"cpu": 1}),
               param_space={"model": "mnist1d-cnn", "dataset": "mnist1d", "method": "aalr", "epochs": 1},
               run_config=tune.RunConfig(name="warm_up", storage_path=str(storage), verbose=0)).fit()
    return time.perf_counter() - started
