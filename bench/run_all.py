"""Run every benchmark of the project in sequence, then assemble BENCHMARKS.md.

    python bench/run_all.py            # what `make bench` runs: full sizes (about an hour on 2 cores)
    python bench/run_all.py --quick    # every script at its small sizes, a few minutes: a check
    python bench/run_all.py --stages ray_cost,throughput    # some stages, then reassemble
    python bench/run_all.py --assemble-only                 # rebuild BENCHMARKS.md from the fragments

Each stage is one benchmark script run as its own process; each writes its
section of BENCHMARKS.md (a fragment in bench/results/, with its command,
machine and date) through ``common.write_fragment``. BENCHMARKS.md is then
put together from the fragments in a fixed order under a short header.

``--quick`` passes each script its small-size options and sends the fragments
to bench/results/quick/ (the full fragments in bench/results/ are left as
they are); BENCHMARKS.md then says in its header that it holds quick-mode
figures, which are for checking the scripts, not for publication.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import subprocess
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(BENCH))
from common import RESULTS, machine  # noqa: E402

# name: (script, full-mode arguments, quick-mode arguments); also the order of BENCHMARKS.md.
# Full-mode durations measured on the quiet 2-core machine: league ~9 min, overhead ~2,
# ray_cost ~1, scheduler_cost ~3, throughput ~4, adversarial ~3.5.
STAGES = {
    "league": ("league.py", [], ["--workloads", "convbase", "--seeds", "1", "--epochs", "3"]),
    "overhead": ("overhead.py", [], ["--epochs", "10", "--seeds", "1"]),
    "ray_cost": ("ray_cost.py", [], ["--quick"]),
    "scheduler_cost": ("scheduler_cost.py", [], ["--quick"]),
    "throughput": ("throughput.py", [], ["--quick"]),
    "monitoring_cost": ("monitoring_cost.py", [], ["--quick"]),  # ~1 min
    "adversarial": ("adversarial.py", [], ["--quick"]),  # optional: skipped when the script is missing
    "faults": ("faults.py", [], ["--scenarios", "kill9-running,two-drivers"]),
    "multinode": ("multinode.py", [], ["--scenarios", "node-loss,autoscaling"]),  # full mode ~20 min
    "ablation": ("ablation.py", [], ["--quick"]),  # full mode ~25 min
    "tuning_cost": ("tuning_cost.py", [], ["--quick"]),  # full mode: jobs/tuning_cost.yaml, ~13 min
    # Measures only on a CUDA GPU (sized for <= 8 min on an H100); elsewhere it keeps its section as it is.
    "gpu": ("gpu.py", [], ["--dry-run"]),
}
OPTIONAL = {"adversarial"}
QUICK_RESULTS = RESULTS / "quick"


def run_stage_into(results: Path, script: Path, args: list[str]) -> int:
    """Run ``script`` as ``__main__`` with its fragments sent to ``results``.

    ``common.RESULTS`` is replaced before the script imports it; the script is
    installed as ``sys.modules["__main__"]`` so that process pools (fork) and
    Ray (functions of ``__main__`` go by value) treat it as when run directly.
    """
    import common

    results.mkdir(parents=True, exist_ok=True)
    common.RESULTS = results
    sys.argv = [str(script), *args]
    spec = importlib.util.spec_from_file_location("__main__", script)
    module = importlib.util.module_from_spec(spec)
    sys.modules["__main__"] = module
    try:
        spec.loader.exec_module(module)  # ends in sys.exit(main()) like any run
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    return 0


def fragments(results: Path) -> list[Path]:
    """The fragments in BENCHMARKS.md order: the stages first, then any others by name."""
    present = {p.stem: p for p in sorted(results.glob("*.md"))}
    ordered = [present.pop(name) for name in STAGES if name in present]
    return ordered + list(present.values())


def assemble(results: Path, quick: bool, stage_log: list[tuple[str, str, float]]) -> Path:
    parts = fragments(results)
    if quick:
        how = ("**Quick mode** (`python bench/run_all.py --quick`): every benchmark at its small sizes, to check "
               "that the scripts run. These figures are not results; `make bench` replaces this file with the "
               "full ones.")
    else:
        how = ("Produced by `make bench` (`python bench/run_all.py`), which runs every benchmark script in "
               "`bench/` in sequence, each writing its section, and then assembles this file from those "
               "sections (`bench/results/*.md`).")
    lines = ["# Benchmarks", "", how, "",
             f"Machine: {machine()}.", "",
             "Every figure comes from the command printed above it, run on that machine on the date given "
             "with it; each section says how it measures, and states the goal next to a figure where one was "
             "set.", ""]
    if stage_log:
        total = sum(seconds for _, _, seconds in stage_log)
        lines += [f"Stages of the run of {datetime.date.today().isoformat()} "
                  f"({total / 60:.1f} min in all): " + "; ".join(
                      f"{name} {status}" + (f" {seconds / 60:.1f} min" if seconds else "")
                      for name, status, seconds in stage_log) + ".", ""]
    lines.append("Contents: " + ", ".join(p.stem for p in parts) + ".")
    text = "\n".join(lines) + "\n"
    for part in parts:
        text += "\n" + part.read_text().rstrip() + "\n"
    out = ROOT / "BENCHMARKS.md"
    out.write_text(text)
    return out


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--stage-into"]:  # internal: one quick-mode stage, in this process
        return run_stage_into(Path(argv[1]), Path(argv[2]), argv[3:])
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small sizes, fragments to bench/results/quick/")
    parser.add_argument("--stages", default=",".join(STAGES), help="comma-separated subset of: " + ", ".join(STAGES))
    parser.add_argument("--assemble-only", action="store_true", help="run nothing; rebuild BENCHMARKS.md")
    args = parser.parse_args(argv)
    stages = args.stages.split(",")
    unknown = [s for s in stages if s not in STAGES]
    if unknown:
        parser.error(f"unknown stage {unknown[0]!r}; choose from: {', '.join(STAGES)}")
    results = QUICK_RESULTS if args.quick else RESULTS

    log: list[tuple[str, str, float]] = []
    failed = []
    if not args.assemble_only:
        for name in stages:
            script_name, full_args, quick_args = STAGES[name]
            script = BENCH / script_name
            if not script.exists():
                if name in OPTIONAL:
                    print(f"== {name}: skipped, bench/{script_name} does not exist", flush=True)
                    log.append((name, "skipped (no script)", 0.0))
                    continue
                raise FileNotFoundError(script)
            if args.quick:
                command = [sys.executable, str(Path(__file__).resolve()), "--stage-into", str(results), str(script),
                           *quick_args]
            else:
                command = [sys.executable, str(script), *full_args]
            shown = " ".join(["python", f"bench/{script_name}", *(quick_args if args.quick else full_args)])
            print(f"== {name}: {shown}", flush=True)
            started = time.perf_counter()
            code = subprocess.call(command, cwd=ROOT)
            seconds = time.perf_counter() - started
            status = "ok" if code == 0 else f"FAILED (exit {code})"
            if code != 0:
                failed.append(name)
            log.append((name, status, seconds))
            print(f"== {name}: {status} in {seconds / 60:.1f} min", flush=True)
    out = assemble(results, args.quick, log)
    print("\nStage times:")
    for name, status, seconds in log:
        print(f"  {name:15s} {status:22s} {seconds / 60:5.1f} min")
    if log:
        print(f"  {'total':15s} {'':22s} {sum(s for _, _, s in log) / 60:5.1f} min")
    print(f"Wrote {out.relative_to(ROOT)} from {len(fragments(results))} fragments in "
          f"{results.relative_to(ROOT)}/")
    if failed:
        print(f"Failed stages: {', '.join(failed)}; their sections in BENCHMARKS.md are from an earlier run, "
              "if any (see each section's date).", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
