"""Faults and bad input: interrupt, starve and double-start real grid drivers; count what survives.

    python bench/faults.py               # every scenario, then the BENCHMARKS.md section
    python bench/faults.py --scenarios kill9-running,full-disk

Each scenario runs the same small grid (4 trials, 2 at a time, MNIST-1D, a
small MLP that sleeps in its forward pass so that the faults land mid-run)
through the real CLI in a subprocess, injects one fault, then continues it
with ``--resume`` where the fault stopped the driver. It counts, in the final
``epochs.parquet``, the (trial, epoch) rows expected, present, duplicated,
and differing from an uninterrupted in-process run of the same trials (the
metric columns compared bit for bit on this machine).

The same functions back ``tests/test_faults.py``: one home for the harness.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import yaml

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
TESTS = ROOT / "tests"
EPOCHS = 4
METRICS = ("lr", "train_loss", "test_loss", "test_acc", "action", "phase")
JOB = {"name": "faults", "epochs": EPOCHS, "seeds": 2, "datasets": ["mnist1d"], "models": ["factories:slow_mlp"],
       "methods": ["aalr", "step"], "max_concurrent": 2}
RAY_WORKER_PREFIXES = ("ray::ImplicitFunc", "ray::aalr_trainable")


@dataclass
class Outcome:
    scenario: str
    expected: int = 0
    present: int = 0
    duplicated: int = 0
    differing: int = 0
    runs: list = field(default_factory=list)  # (what, exit status, last stderr line)

    @property
    def exact(self) -> bool:
        return self.present == self.expected and self.duplicated == 0 and self.differing == 0


# ------------------------------------------------------------------ the grid
def write_job(workdir: Path, **fields) -> Path:
    path = workdir / "faults.yaml"
    path.write_text(yaml.safe_dump({**JOB, **fields}))
    return path


def reference_rows(job: Path, data_dir: str) -> dict[tuple[str, int], tuple]:
    """(trial name, epoch) -> metric values of an uninterrupted in-process run of every trial."""
    sys.path.insert(0, str(TESTS))  # factories:slow_mlp
    import torch

    from aalr_ray.grid import expand, load_grid
    from aalr_ray.train import TrainingRun
    from aalr_ray.trainable import run_config_from

    torch.set_num_threads(1)
    reference = {}
    for config in expand(load_grid(job)):
        run = TrainingRun(run_config_from({**config, "data_dir": data_dir, "threads": 1}))
        for row in run:
            reference[(config["trial_name"], row["epoch"])] = tuple(row.get(m) for m in METRICS)
    return reference


def count_rows(experiment: Path, reference: dict, outcome: Outcome) -> Outcome:
    import pyarrow.parquet as pq

    outcome.expected = len(reference)
    path = experiment / "epochs.parquet"
    rows = pq.read_table(path).to_pylist() if path.exists() else []
    keys = [(r["trial_name"], r["epoch"]) for r in rows]
    outcome.present = len(set(keys) & set(reference))
    outcome.duplicated = len(keys) - len(set(keys))
    outcome.differing = sum(1 for r, k in zip(rows, keys)
                            if reference.get(k) != tuple(r.get(m) for m in METRICS))
    return outcome


# ------------------------------------------------------------------ drivers
def _env() -> dict:
    return dict(os.environ, OMP_NUM_THREADS="1",
                PYTHONPATH=os.pathsep.join(p for p in (str(TESTS), os.environ.get("PYTHONPATH")) if p))


def grid_command(job: Path, storage: Path, data_dir: str, *extra: str) -> list[str]:
    return [sys.executable, "-m", "aalr_ray.cli", "grid", str(job), "--storage", str(storage),
            "--data-dir", data_dir, *extra]


def start(command: list[str], log: Path) -> subprocess.Popen:
    """A driver in its own process group (so that a kill reaches what it started, like Ctrl-C in a shell)."""
    return subprocess.Popen(command, env=_env(), stdout=open(log, "w"), stderr=subprocess.STDOUT,
                            start_new_session=True)


def finish(proc: subprocess.Popen, log: Path, what: str, outcome: Outcome, timeout: float = 300) -> int:
    try:
        code = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        code = None
    try:  # whatever the driver left running in its session (its Ray, after a kill -9)
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    code = proc.wait() if code is None else code
    lines = [line for line in log.read_text(errors="replace").splitlines()
             if line.startswith("aalr-ray") or "did not finish" in line]
    outcome.runs.append((what, code, lines[-1] if lines else ""))
    return code


def run(command: list[str], log: Path, what: str, outcome: Outcome, timeout: float = 300) -> int:
    return finish(start(command, log), log, what, outcome, timeout)


def checkpoints(experiment: Path) -> dict[str, int]:
    """Checkpointed epochs per started trial, by trial name (the newest checkpoint_NNNNNN + 1:
    only the last few are kept)."""
    if not experiment.is_dir():
        return {}
    return {d.name.rsplit("_", 2)[0]: 1 + max((int(c.name.split("_")[1]) for c in d.glob("checkpoint_*")), default=-1)
            for d in experiment.iterdir() if d.is_dir() and not d.name.startswith(".")}


def wait_for(predicate, proc: subprocess.Popen, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if proc.poll() is not None:
            raise RuntimeError(f"the driver ended (exit {proc.returncode}) before the fault point")
        if time.monotonic() > deadline:
            raise TimeoutError("the fault point was not reached in time")
        time.sleep(0.1)


def kill_tree(pid: int) -> None:
    """SIGKILL a driver and every process it started (its Ray), as a lost machine would."""
    for child in descendants(pid):
        _kill(child)
    _kill(pid)


def _kill(pid: int, sig: int = signal.SIGKILL) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


# ------------------------------------------------------------------ points
def running_first_pair(experiment: Path) -> bool:
    """Two trials have checkpointed, none has finished: two never started."""
    done = checkpoints(experiment)
    return len(done) == 2 and all(1 <= n < EPOCHS for n in done.values())


def running_second_pair(experiment: Path) -> bool:
    """The first two trials finished; a later one has checkpointed."""
    done = checkpoints(experiment)
    return len(done) >= 3 and sum(n >= EPOCHS for n in done.values()) >= 2 and \
        any(1 <= n < EPOCHS for n in done.values())


POINTS = {"running": running_first_pair, "partial": running_second_pair}


# ---------------------------------------------------------------- scenarios
def driver_signal(workdir: Path, data_dir: str, reference: dict, point: str, sig: str) -> Outcome:
    """Interrupt the driver at ``point`` with Ctrl-C (SIGINT) or kill -9 (its whole tree), then --resume."""
    job, storage = write_job(workdir), workdir / "results"
    experiment = storage / JOB["name"]
    outcome = Outcome(f"driver {sig} at {point}")
    if point == "collect":  # die inside the final Parquet write, through a wrapper driver
        command = [sys.executable, str(Path(__file__).resolve()), "--die-in-collect", sig, "--",
                   *grid_command(job, storage, data_dir)[3:]]
        run(command, workdir / "first.log", f"driver, {sig} in collection", outcome)
    else:
        proc = start(grid_command(job, storage, data_dir), workdir / "first.log")
        wait_for(lambda: POINTS[point](experiment), proc)
        if sig == "SIGKILL":
            kill_tree(proc.pid)
        else:
            os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C in a terminal signals the foreground group
        finish(proc, workdir / "first.log", f"driver, {sig} at {point}", outcome)
    run(grid_command(job, storage, data_dir, "--resume"), workdir / "resume.log", "--resume", outcome)
    return count_rows(experiment, reference, outcome)


def trial_kill(workdir: Path, data_dir: str, reference: dict) -> Outcome:
    """kill -9 one trial's worker process mid-run; Tune retries it from its last checkpoint."""
    job, storage = write_job(workdir), workdir / "results"
    experiment = storage / JOB["name"]
    outcome = Outcome("trial worker SIGKILL")
    proc = start(grid_command(job, storage, data_dir), workdir / "first.log")
    wait_for(lambda: running_first_pair(experiment), proc)
    workers = [p for p in descendants(proc.pid) if _cmdline(p).startswith(RAY_WORKER_PREFIXES)]
    if not workers:
        raise RuntimeError("no trial worker process found under the driver")
    _kill(workers[0])
    finish(proc, workdir / "first.log", "driver (a trial killed)", outcome)
    return count_rows(experiment, reference, outcome)


def full_disk(workdir: Path, data_dir: str, reference: dict, size: str = "600k") -> Outcome:
    """Storage on a tmpfs that fills up mid-grid; grow it, then --resume."""
    job, disk = write_job(workdir), workdir / "disk"
    disk.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(disk)], check=True)
    try:
        storage = disk / "results"
        experiment = storage / JOB["name"]
        outcome = Outcome(f"full disk ({size} tmpfs)")
        run(grid_command(job, storage, data_dir), workdir / "first.log", "driver, disk full", outcome)
        outcome.runs.append(("torn state files", len(torn(experiment)), ", ".join(torn(experiment))))
        subprocess.run(["mount", "-o", "remount,size=64m", str(disk)], check=True)
        run(grid_command(job, storage, data_dir, "--resume"), workdir / "resume.log", "--resume", outcome)
        return count_rows(experiment, reference, outcome)
    finally:
        shutil.copytree(disk, workdir / "disk-copy", dirs_exist_ok=True)  # for a look afterwards
        subprocess.run(["umount", "-l", str(disk)], check=False)


def torn(experiment: Path) -> list[str]:
    from aalr_ray.guard import torn_state_files

    return torn_state_files(experiment)


def two_drivers(workdir: Path, data_dir: str, reference: dict) -> Outcome:
    """A second driver on a running experiment is refused, with or without --resume; the first finishes.

    The first driver is paused (SIGSTOP) while the second ones run, so that it
    is certainly still alive and mid-grid when they try, however slowly they start.
    """
    job, storage = write_job(workdir), workdir / "results"
    experiment = storage / JOB["name"]
    outcome = Outcome("two drivers")
    first = start(grid_command(job, storage, data_dir), workdir / "first.log")
    wait_for(lambda: running_first_pair(experiment), first)
    os.kill(first.pid, signal.SIGSTOP)
    try:
        run(grid_command(job, storage, data_dir), workdir / "second.log", "second driver", outcome, timeout=120)
        run(grid_command(job, storage, data_dir, "--resume"), workdir / "third.log", "second driver --resume",
            outcome, timeout=120)
    finally:
        os.kill(first.pid, signal.SIGCONT)
    finish(first, workdir / "first.log", "first driver", outcome)
    return count_rows(experiment, reference, outcome)


SCENARIOS = {
    "kill9-running": lambda w, d, r: driver_signal(w, d, r, "running", "SIGKILL"),
    "ctrlc-running": lambda w, d, r: driver_signal(w, d, r, "running", "SIGINT"),
    "kill9-partial": lambda w, d, r: driver_signal(w, d, r, "partial", "SIGKILL"),
    "ctrlc-partial": lambda w, d, r: driver_signal(w, d, r, "partial", "SIGINT"),
    "kill9-collect": lambda w, d, r: driver_signal(w, d, r, "collect", "SIGKILL"),
    "ctrlc-collect": lambda w, d, r: driver_signal(w, d, r, "collect", "SIGINT"),
    "trial-kill": trial_kill,
    "full-disk": full_disk,
    "two-drivers": two_drivers,
}


# ------------------------------------------------------- the wrapper driver
def die_in_collect(sig: str, cli_args: list[str]) -> int:
    """The real CLI, except that the driver is signalled between the two Parquet writes."""
    from aalr_ray import cli, storage

    write_table = storage.write_table

    def dying_write_table(uri, table):
        write_table(uri, table)
        if uri.endswith("epochs.parquet"):
            os.kill(os.getpid(), signal.SIGKILL if sig == "SIGKILL" else signal.SIGINT)
            time.sleep(5)  # the signal arrives here

    storage.write_table = dying_write_table
    return cli.main(cli_args)


# ------------------------------------------------------------------- report
def _shown(line: str) -> str:
    """A driver's last line for the table: temporary paths cut, at most 110 characters."""
    import re

    line = re.sub(r"/\S*/results/faults", "<storage>/faults", line)
    line = re.sub(r"/\S*/disk/results", "<tmpfs>/results", line)
    return line[:110] + ("..." if len(line) > 110 else "")


def table(outcomes: list[Outcome]) -> str:
    lines = ["| fault injected | rows expected | present | duplicated | differing | exits (last line) |",
             "|---|---|---|---|---|---|"]
    for o in outcomes:
        exits = "; ".join(f"{what}: {code}" + (f" ({_shown(last)})" if last else "") for what, code, last in o.runs)
        lines.append(f"| {o.scenario} | {o.expected} | {o.present} | {o.duplicated} | {o.differing} | "
                     f"{exits.replace('|', '/')} |")
    return "\n".join(lines)


def bad_input_table(workdir: Path) -> str:
    sys.path.insert(0, str(BENCH))
    from bad_input import run_cases

    workdir.mkdir(parents=True, exist_ok=True)
    cases = run_cases(workdir)
    kinds = {}
    for case in cases:
        tried, clean = kinds.get(case["kind"], (0, 0))
        kinds[case["kind"]] = (tried + 1, clean + bool(case["clean"]))
    lines = ["| bad input | tried | handled cleanly |", "|---|---|---|"]
    lines += [f"| {kind} | {tried} | {clean} |" for kind, (tried, clean) in kinds.items()]
    unclean = [f"{c['kind']}: {c['case']}" for c in cases if not c["clean"]]
    return "\n".join(lines) + ("\n\nNot clean: " + "; ".join(unclean) if unclean else "")


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--die-in-collect"]:
        return die_in_collect(argv[1], argv[3:])
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenarios", default=",".join(SCENARIOS), help="comma-separated: " + ", ".join(SCENARIOS))
    parser.add_argument("--workdir", default=None, help="where the experiments go (default: a temporary directory)")
    args = parser.parse_args(argv)
    import tempfile

    from aalr_ray.data import load_dataset

    base = Path(args.workdir or tempfile.mkdtemp(prefix="aalr-faults-"))
    data_dir = str(base / "data")
    load_dataset("mnist1d", data_dir=data_dir)
    reference = reference_rows(write_job(base), data_dir)
    outcomes = []
    for name in args.scenarios.split(","):
        workdir = base / name
        workdir.mkdir()
        started = time.perf_counter()
        outcome = SCENARIOS[name](workdir, data_dir, reference)
        outcomes.append(outcome)
        print(f"{name}: {json.dumps(asdict(outcome))} ({time.perf_counter() - started:.0f} s)", flush=True)
    body = ("Every fault on the same grid: 4 trials x "
            f"{EPOCHS} epochs (aalr and step, 2 seeds, a sleeping MLP on MNIST-1D, 2 trials at a time), driven "
            "through `aalr-ray grid` in a subprocess. Rows: (trial, epoch) rows of the final `epochs.parquet`; "
            "differing: metric columns (" + ", ".join(METRICS) + ") not bit-identical to an uninterrupted "
            "in-process run of the same trial. Exits: each driver run's exit status and its last `aalr-ray` line. "
            "`running`: two trials mid-run, two never started; `partial`: two finished, two running; "
            "`collect`: between the two Parquet writes at the end. Every resume after a kill -9 also takes "
            "over the dead driver's lock.\n\n" + table(outcomes) + "\n\n"
            + bad_input_table(base / "bad-input"))
    sys.path.insert(0, str(BENCH))
    from common import write_fragment, write_section

    write_fragment("faults", "Faults and bad input", f"python bench/faults.py --scenarios {args.scenarios}",
                   body)
    write_section("faults")
    print("wrote the Faults and bad input section of BENCHMARKS.md")
    return 0 if all(o.exact for o in outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
