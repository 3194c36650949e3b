"""What hyperparameter-free saves: jobs/tuning_cost.yaml, and its BENCHMARKS.md section "Tuning cost".

    python bench/tuning_cost.py                       # run the job (13 min on 2 cores), write the section
    python bench/tuning_cost.py --from results/tuning_cost --elapsed-s 800   # the section of a finished run
    python bench/tuning_cost.py --quick               # the job's --smoke run: checks the script

The job trains AALR, aalr-robust and the literature's step schedule once per
seed, and three Ray Tune searches of the step schedule's LR (a 5-LR grid,
ASHA over 16 log-uniform LRs, PBT over a population of 4), on the league's
three CPU workloads. The section is the report's "Tuning cost" part
(:mod:`aalr_ray.report_tuning`): per workload, every method's and search's
epochs, the selected configuration's test accuracy and the compute relative
to one AALR run, and how many times AALR's compute a search needs to beat it
by more than half a point.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(BENCH))
from common import write_fragment, write_section  # noqa: E402

JOB = ROOT / "jobs" / "tuning_cost.yaml"


def run_job(storage: Path, smoke: bool) -> tuple[Path, float]:
    """Run the job through the CLI, as a user would; (experiment directory, seconds it took)."""
    command = [sys.executable, "-m", "aalr_ray.cli", "grid", str(JOB), "--storage", str(storage)]
    started = time.monotonic()
    subprocess.run(command + (["--smoke"] if smoke else []), check=True, cwd=ROOT)
    return storage / ("tuning_cost-smoke" if smoke else "tuning_cost"), time.monotonic() - started


def section_body(experiment: Path, elapsed_s: float | None, smoke: bool) -> str:
    from aalr_ray.report import load_results, markdown_table
    from aalr_ray.report_tuning import tuning_sections

    trials, epochs = load_results(str(experiment))
    sections = tuning_sections(trials, epochs)
    took = f"{elapsed_s / 60:.1f} min" if elapsed_s is not None else "not timed"
    lines = [
        "AALR (one run, no LR to choose) against Ray Tune's own searches for the LR of the step schedule, "
        "each searching on a validation split (10 % of the training data, held out by seed; AALR trains "
        "on the same 90 %) and reporting the test accuracy of what it selected. "
        "Compute is epochs trained: every trial of a search, ASHA-stopped ones as far as they went; "
        "AALR's rolled-back epochs count. "
        f"The whole job took {took} on this machine ({'--smoke: tiny data, not results' if smoke else '2 trials at a time'}).",
        ""]
    for section in sections:
        lines += [f"### {section.title.removeprefix('Tuning cost: ')}", ""]
        for block in section.blocks:
            lines += (markdown_table(block) if not isinstance(block, str) else [block]) + [""]
    lines += ["Where a search's row beats AALR's, AALR loses on that workload at that compute; the sentence under "
              "each table says at what multiple of AALR's epochs that first happens, on the mean over seeds of "
              "each search's budget curve (the report's figure)."]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--from", dest="experiment", default=None, help="a finished run's experiment directory")
    parser.add_argument("--elapsed-s", type=float, default=None, help="with --from: the run's measured seconds")
    parser.add_argument("--quick", action="store_true", help="the job's --smoke run")
    args = parser.parse_args()
    title = "Tuning cost: AALR against Ray Tune's LR searches"
    if args.experiment:
        body = section_body(Path(args.experiment), args.elapsed_s, False)
        elapsed = f" --elapsed-s {args.elapsed_s:g}" if args.elapsed_s is not None else ""
        storage = Path(args.experiment).parent
        command = (f"aalr-ray grid jobs/tuning_cost.yaml --storage {storage}; "
                   f"python bench/tuning_cost.py --from {args.experiment}{elapsed}")
    else:
        with tempfile.TemporaryDirectory() as tmp:
            experiment, elapsed = run_job(Path(tmp), args.quick)
            body = section_body(experiment, elapsed, args.quick)
        command = "python bench/tuning_cost.py" + (" --quick" if args.quick else "")
    write_fragment("tuning_cost", title, command, body)
    if not args.quick:  # quick figures check the script; they never go into BENCHMARKS.md on their own
        write_section("tuning_cost")
    return 0

if __name__ == "__main__":
    sys.exit(main())
