"""AALRScheduler's cost: restarts on a real run, and its decision path at scale.

    python bench/scheduler_cost.py            # (a) 30 epochs, 1 repeat; (b) 1000 trials x 100 epochs
    python bench/scheduler_cost.py --quick    # (a) 12 epochs x 1; (b) 100 trials x 100 epochs

Why: :class:`aalr_ray.scheduler.AALRScheduler` runs AALR over an unmodified
PBT-style trainable, and every LR change or rollback restarts the trial (Tune
cannot change a running trial's config). The in-process trainable
(``aalr_trainable``) never restarts. Two questions:

(a) What do the restarts cost on a real run? The same run (ConvBase on
    MNIST-1D, seed 0; phase1_patience 3 and collapse_is_divergence, as in
    tests/test_equivalence.py, so that LR changes and a rollback happen
    within the epochs; everything else the paper's defaults) three ways on a local Ray
    with 2 CPUs, one trial each, side by side in one process, repeat by
    repeat: aalr_trainable; a PBT-style trainable (``aalr_ray.examples.pbt_trainable``,
    with a test evaluation per epoch as aalr_trainable) under AALRScheduler with
    ``reuse_actors=True``; the same with ``reuse_actors=False``. Reported:
    wall time of ``Tuner.fit`` and its ratio to aalr_trainable's, restarts
    (``scheduler.restart_counts()``), seconds per restart (from the report
    that asked for it to the restarted trial training again, timed in the
    trial; and the extra wall time divided by the restarts), and whether the
    LR of every epoch is the same on both paths. An unmeasured 1-epoch
    trial runs first (a fresh Ray's first ``Tuner.fit`` starts slower).
(b) Does the decision path scale? ``on_trial_result`` is driven directly, no
    training and no Ray cluster (stub trials and a fake controller, as in
    tests/test_scheduler.py; Ray's own scheduler tests do the same), for 1000
    trials interleaved, 100 epochs each. Each trial is a small simulated
    training whose loss depends on the LR the scheduler set (noisy decay, a
    divergence threshold, rare NaN spikes) and whose state follows the
    scheduler's rollbacks, so every branch runs: phase-1 restarts from
    theta_0, doublings, second tries, halvings, rollbacks to the best.
    Reported: latency per result (median, p99; goal p99 < 1 ms), the driver
    memory the scheduler holds per trial (tracemalloc, allocations made
    under aalr_ray; goal < 10 KB) and the size of the state it persists in
    each trial's config, and the total time.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, write_fragment  # noqa: E402
from raytools import LoadWatch, command_line, goal, med, quantile, start_ray, warm_up  # noqa: E402

# (a)'s AALR options, those of tests/test_equivalence.py: a short phase 1 so that LR changes
# happen within a few dozen epochs, and a collapse (ReLUs dead at LR 0.4, loss >= J(theta_0))
# counted as divergence, so that the run also rolls back (seed 0, 30 epochs: 8 LR changes and a
# rollback to the best; with the paper's rule alone this run collapses to chance and stays there).
OPTIONS = {"phase1_patience": 3, "collapse_is_divergence": True}


# ======================================================================= (a) real runs
def run_inprocess(epochs: int, tmp: Path, name: str) -> dict:
    from ray import tune

    from aalr_ray.trainable import aalr_trainable, load_checkpoint_dir

    config = {"model": "mnist1d-cnn", "dataset": "mnist1d", "method": "aalr", "epochs": epochs, "seed": 0,
              "method_options": OPTIONS}
    started = time.perf_counter()
    results = tune.Tuner(tune.with_resources(aalr_trainable, {"cpu": 1}), param_space=config,
                         run_config=tune.RunConfig(name=name, storage_path=str(tmp), verbose=0)).fit()
    wall = time.perf_counter() - started
    if results.errors:
        raise RuntimeError(f"{name}: {results.errors[0]}")
    with results[0].checkpoint.as_directory() as directory:
        _, rows = load_checkpoint_dir(Path(directory))
    shutil.rmtree(tmp / name, ignore_errors=True)
    return {"wall_s": wall, "lrs": [r["lr"] for r in rows], "final_acc": rows[-1]["test_acc"],
            "epoch_s": [r["epoch_s"] + r["eval_s"] for r in rows]}


def run_scheduled(epochs: int, tmp: Path, name: str, reuse: bool) -> dict:
    from ray import tune

    from aalr_ray.examples import pbt_trainable
    from aalr_ray.scheduler import AALRScheduler

    log = tmp / f"{name}.jsonl"
    scheduler = AALRScheduler(metric="train_loss", max_epochs=epochs, **OPTIONS)
    started = time.perf_counter()
    results = tune.Tuner(
        tune.with_resources(pbt_trainable, {"cpu": 1}),
        param_space={"seed": 0, "log": str(log), "evaluate": True},  # aalr_trainable evaluates too
        tune_config=tune.TuneConfig(scheduler=scheduler, reuse_actors=reuse),
        run_config=tune.RunConfig(name=name, storage_path=str(tmp), verbose=0,
                                  checkpoint_config=tune.CheckpointConfig(num_to_keep=None)),
    ).fit()
    wall = time.perf_counter() - started
    if results.errors:
        raise RuntimeError(f"{name}: {results.errors[0]}")
    trained = [json.loads(line) for line in log.read_text().splitlines()]  # a line per epoch
    gaps, last_report = [], None
    for e in trained:  # "ready" and "started" on the first epoch of each start of the trial
        if e["ready"] is not None and last_report is not None:
            gaps.append(e["ready"] - last_report)
        last_report = e["reported"]
    shutil.rmtree(tmp / name, ignore_errors=True)
    return {"wall_s": wall, "lrs": [e["lr"] for e in trained], "final_acc": trained[-1]["test_acc"],
            "restarts": scheduler.restart_counts(), "gaps": gaps,
            "starts": sum(e["started"] is not None for e in trained)}


def part_a(epochs: int, repeats: int) -> tuple[str, dict]:
    ray = start_ray()
    tmp = Path(tempfile.mkdtemp(prefix="aalr_sched_cost_"))
    runs = {"inprocess": [], "reuse": [], "noreuse": []}
    try:
        warm_up(tmp)
        for rep in range(repeats):
            runs["inprocess"].append(run_inprocess(epochs, tmp, f"inprocess_{rep}"))
            runs["reuse"].append(run_scheduled(epochs, tmp, f"reuse_{rep}", True))
            runs["noreuse"].append(run_scheduled(epochs, tmp, f"noreuse_{rep}", False))
            print(f"(a) repeat {rep + 1}/{repeats}: " + ", ".join(
                f"{k} {v[-1]['wall_s']:.1f} s" for k, v in runs.items()), flush=True)
    finally:
        ray.shutdown()
        shutil.rmtree(tmp, ignore_errors=True)

    base = [r["wall_s"] for r in runs["inprocess"]]
    lines = ["| path | `Tuner.fit` wall s | ratio to aalr_trainable | restarts (LR change / to best / to theta_0) "
             "| s per restart: report -> training again | s per restart: extra wall / restarts "
             "| same LR every epoch as aalr_trainable |",
             "|---|---|---|---|---|---|---|"]
    lines.append(f"| aalr_trainable (AALR in the trial) | {med(base)} | 1 | 0 | - | - | - |")
    for key, label in (("reuse", "AALRScheduler, `reuse_actors=True`"),
                       ("noreuse", "AALRScheduler, `reuse_actors=False`")):
        rs = runs[key]
        walls = [r["wall_s"] for r in rs]
        ratios = [w / b for w, b in zip(walls, base)]
        counts = rs[0]["restarts"]
        total = [sum(r["restarts"].values()) for r in rs]
        gaps = [g for r in rs for g in r["gaps"]]
        extra = [(w - b) / t for w, b, t in zip(walls, base, total) if t]
        same = all(r["lrs"] == i["lrs"] for r, i in zip(rs, runs["inprocess"]))
        lines.append(f"| {label} | {med(walls)} | {med(ratios, '{:.2f}')}x | {med(total, '{:.0f}')} "
                     f"({counts['lr_change']} / {counts['restore_best']} / {counts['restore_initial']}) "
                     f"| {med(gaps, '{:.2f}')} | {med(extra, '{:.2f}')} | {'yes' if same else '**no**'} |")
    inproc_epoch = [s for r in runs["inprocess"] for s in r["epoch_s"]]
    body = ("\n".join(lines) + "\n\n"
            f"ConvBase on MNIST-1D, seed 0, AALR with phase1_patience 3 and collapse_is_divergence (the options "
            f"of tests/test_equivalence.py). One trial, {epochs} epochs (rolled-back ones included), "
            f"{repeats} repeat(s) of the three runs side "
            f"by side; median (min-max) over repeats, over all restarts for the per-restart column. The "
            f"trial's own epoch (training + test evaluation) took {med(inproc_epoch, '{:.3f}')} s in "
            f"aalr_trainable. Final test accuracy: aalr_trainable "
            f"{100 * runs['inprocess'][0]['final_acc']:.2f} %, AALRScheduler "
            f"{100 * runs['reuse'][0]['final_acc']:.2f} % (first repeat). No goal was set for the restart cost; "
            f"it is why aalr_trainable is the recommended path when a trainable can be written for it.\n")
    return body, runs


# ======================================================================= (b) simulation
class FakeController:
    """The scheduler-facing part of TuneController (as in tests/test_scheduler.py)."""

    def __init__(self, trials):
        self.trials = trials

    def get_trials(self):
        return self.trials

    def pause_trial(self, trial, should_checkpoint=True):
        from ray.tune.experiment import Trial

        trial.set_status(Trial.PAUSED)

    def stop_trial(self, trial):
        from ray.tune.experiment import Trial

        trial.set_status(Trial.TERMINATED)


def stub_trial(seed: int):
    from ray.train import CheckpointConfig
    from ray.tune import PlacementGroupFactory
    from ray.tune.experiment import Trial

    trial = Trial("aalr_sim", stub=True, config={"seed": seed},
                  checkpoint_config=CheckpointConfig(num_to_keep=None))
    trial.placement_group_factory = PlacementGroupFactory([{"CPU": 1}])
    trial.set_status(Trial.RUNNING)
    return trial


class SimTrial:
    """A trial as Tune runs it, with a simulated training whose loss depends on the
    LR in the trial's config and whose weights follow the scheduler's rollbacks.

    Checkpoints are registered with the trial's checkpoint manager the way the
    controller does it (CONTINUE/PAUSE/STOP register the result's checkpoint; a
    NOOP after a pause discards it); the simulated weights of each registered
    checkpoint are kept by name, so a restart resumes from the right ones."""

    INITIAL = 2.3

    def __init__(self, seed: int):
        self.trial = stub_trial(seed)
        self.rng = random.Random(seed)
        self.lr_limit = 0.08 * 2 ** self.rng.uniform(0, 4.5)  # diverges above it: 0.08 .. 1.8
        self.floor = self.rng.uniform(0.02, 0.6)
        self.rate = self.rng.uniform(0.3, 2.0)
        self.noise = self.rng.uniform(0.005, 0.05)
        self.loss = self.INITIAL  # the loss of the current weights
        self.saved = {}  # checkpoint name -> simulated weights (their loss)
        self.registered = -1
        self.worker_index = -1
        self.first = True
        self.done = False

    def next_loss(self) -> float:
        lr = self.trial.config["lr"]
        if not math.isfinite(self.loss):
            return self.loss
        if lr > self.lr_limit and self.rng.random() < 0.7 or self.rng.random() < 0.005:
            self.loss = math.nan  # divergence, or a rare NaN spike
            return self.loss
        gain = min(0.6, self.rate * lr)
        self.loss = self.floor + (self.loss - self.floor) * (1 - gain) + self.rng.gauss(0, self.noise)
        return self.loss

    def result(self, scheduler, controller, clock) -> tuple[float, str]:
        from ray.train import Checkpoint
        from ray.train._internal.session import _TrainingResult
        from ray.tune.experiment import Trial
        from ray.tune.schedulers import TrialScheduler

        self.worker_index += 1
        name = f"checkpoint_{self.worker_index:06d}"
        result = {"train_loss": self.next_loss(), "checkpoint_dir_name": name, "training_iteration": 1}
        if self.first:
            result["initial_loss"] = self.INITIAL
            self.first = False
        started = clock()
        decision = scheduler.on_trial_result(controller, self.trial, result)
        if decision == TrialScheduler.STOP:
            scheduler.on_trial_complete(controller, self.trial, result)
        elapsed = clock() - started
        if decision in (TrialScheduler.CONTINUE, TrialScheduler.PAUSE, TrialScheduler.STOP):
            self.registered += 1
            self.saved[name] = self.loss
            checkpoint = Checkpoint(path=f"/nonexistent/{self.trial.trial_id}/{name}")
            self.trial.run_metadata.checkpoint_manager.register_checkpoint(_TrainingResult(checkpoint, result))
        if decision in (TrialScheduler.PAUSE, TrialScheduler.NOOP):  # the trial restarts
            self.worker_index = self.registered
            restored = self.trial.checkpoint
            self.loss = (self.INITIAL if restored is None
                         else self.saved[os.path.basename(restored.path)])
            self.trial.set_status(Trial.RUNNING)
        if decision == TrialScheduler.STOP:
            self.done = True
        return elapsed, decision


def deep_size(roots) -> int:
    """Bytes of the objects reachable from ``roots`` through dicts, lists, tuples and
    instance dicts (each object once): what these containers hold."""
    seen, stack, total = set(), list(roots), 0
    while stack:
        obj = stack.pop()
        if id(obj) in seen:
            continue
        seen.add(id(obj))
        total += sys.getsizeof(obj)
        if isinstance(obj, dict):
            stack.extend(obj.keys())
            stack.extend(obj.values())
        elif isinstance(obj, (list, tuple, set)):
            stack.extend(obj)
        elif hasattr(obj, "__dict__") and not isinstance(obj, type):
            stack.append(vars(obj))
    return total


def simulate(n_trials: int, epochs: int, memory: bool) -> dict:
    """Feed ``n_trials`` simulated trials to one scheduler until each is stopped.

    With ``memory``, tracemalloc runs throughout; at the end the scheduler and
    everything it wrote into the trials' configs are dropped, and the traced
    memory that goes away is what the scheduler held. (tracemalloc's per-line
    attribution is not used: CPython's dict free lists make a dict freed in the
    scheduler and reused for a Tune result look like the scheduler's.)
    """
    from aalr_ray.scheduler import EPOCHS_KEY, STATE_KEY, AALRScheduler

    sims = [SimTrial(seed) for seed in range(n_trials)]
    controller = FakeController([s.trial for s in sims])
    gc.collect()
    if memory:
        tracemalloc.start(1)
    scheduler = AALRScheduler(metric="train_loss", max_epochs=epochs)  # the paper's defaults
    for s in sims:
        scheduler.on_trial_add(controller, s.trial)
    latencies, decisions = [], {}
    started = time.perf_counter()
    while True:
        live = [s for s in sims if not s.done]
        if not live:
            break
        for s in live:  # round robin: results of all trials interleave, as with concurrent trials
            elapsed, decision = s.result(scheduler, controller, time.perf_counter)
            latencies.append(elapsed)
            decisions[decision] = decisions.get(decision, 0) + 1
    total = time.perf_counter() - started
    out = {"latencies": latencies, "total_s": total, "decisions": decisions,
           "restarts": scheduler.restart_counts(), "results": len(latencies),
           "state_bytes": [len(json.dumps(s.trial.config[STATE_KEY])) for s in sims],
           "phases": {p: sum(scheduler.trial_state(s.trial.trial_id)["core"]["phase"] == p for s in sims)
                      for p in (1, 2)}}
    # Everything the scheduler keeps: its per-trial states and the state it writes into configs.
    out["held_bytes"] = deep_size([scheduler._trials, *(s.trial.config[STATE_KEY] for s in sims)])
    if memory:
        gc.collect()
        with_scheduler, _ = tracemalloc.get_traced_memory()
        del scheduler
        for s in sims:
            s.trial.config = {k: v for k, v in s.trial.config.items() if k not in (STATE_KEY, EPOCHS_KEY)}
            s.trial._Trial__unresolved_config = dict(s.trial.config)
        gc.collect()
        without, _ = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        out["traced_bytes"] = with_scheduler - without
    return out


def part_b(n_trials: int, epochs: int) -> tuple[str, dict]:
    timed = simulate(n_trials, epochs, memory=False)
    mem = simulate(n_trials, epochs, memory=True)
    lat = timed["latencies"]
    p50, p99, worst = (statistics.median(lat) * 1e3, quantile(lat, 0.99) * 1e3, max(lat) * 1e3)
    per_trial = mem["traced_bytes"] / n_trials
    held = timed["held_bytes"] / n_trials
    state = timed["state_bytes"]
    d = timed["decisions"]
    r = timed["restarts"]
    body = (f"{n_trials} simulated trials x {epochs} epochs = {timed['results']:,} results, interleaved, into "
            f"one `AALRScheduler` (paper defaults: initial LR 0.1, phase1_patience 10, window p + 1):\n\n"
            f"| figure | measured | goal |\n|---|---|---|\n"
            f"| latency per result (`on_trial_result`), median | {1e3 * p50:.0f} us | - |\n"
            f"| latency per result, p99 | {1e3 * p99:.0f} us (max {worst:.1f} ms) | p99 < 1 ms: "
            f"{goal(p99 < 1.0)} |\n"
            f"| driver memory the scheduler holds per trial (tracemalloc: freed when it and its config "
            f"entries are dropped, after the run) | {per_trial / 1e3:.1f} KB | < 10 KB: {goal(per_trial < 10_000)} |\n"
            f"| the same counted object by object (`sys.getsizeof` over its states and config entries) | "
            f"{held / 1e3:.1f} KB | < 10 KB: {goal(held < 10_000)} |\n"
            f"| state persisted in each trial's config (JSON), median (max) | {statistics.median(state) / 1e3:.1f} "
            f"({max(state) / 1e3:.1f}) KB | - |\n"
            f"| total time of the decision path for all results | {timed['total_s']:.1f} s | - |\n\n"
            f"Branches that ran: {d.get('CONTINUE', 0):,} CONTINUE, {d.get('PAUSE', 0):,} PAUSE (LR changes), "
            f"{d.get('NOOP', 0):,} NOOP (rollbacks: {r['restore_best']:,} to the best, {r['restore_initial']:,} "
            f"to theta_0), {d.get('STOP', 0):,} STOP; {timed['phases'][2]} of {n_trials} trials reached phase 2. "
            f"The latency is of `on_trial_result` alone (the stub trials' checkpoint registration is outside "
            f"it). The memory is the scheduler's own (per-trial AALR state, the two records it keeps in each "
            f"config), not Tune's per-trial bookkeeping (its checkpoint list grows by one result per epoch "
            f"with any scheduler); the tracemalloc figure comes from a second identical pass.\n")
    return body, {k: v for k, v in timed.items() if k != "latencies"} | {
        "p50_ms": p50, "p99_ms": p99, "max_ms": worst, "traced_bytes_per_trial": per_trial,
        "held_bytes_per_trial": held}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small sizes: a check that it runs")
    parser.add_argument("--epochs", type=int, default=None, help="(a) epochs per run; default 30 (quick: 12)")
    parser.add_argument("--repeats", type=int, default=None, help="(a) repeats of the three runs; default 1")
    parser.add_argument("--trials", type=int, default=None, help="(b) simulated trials; default 1000 (quick: 100)")
    parser.add_argument("--sim-epochs", type=int, default=100, help="(b) epochs per simulated trial")
    parser.add_argument("--skip-real", action="store_true", help="only (b), no Ray")
    parser.add_argument("--name", default="scheduler_cost")
    args = parser.parse_args(argv)
    epochs = args.epochs or (12 if args.quick else 30)
    repeats = args.repeats or 1  # a scheduled 30-epoch run restarts ~10 times at several s each
    trials = args.trials or (100 if args.quick else 1000)

    load = LoadWatch()
    started = time.perf_counter()
    body_b, numbers_b = part_b(trials, args.sim_epochs)
    print(body_b, flush=True)
    body = "### (b) The decision path at scale (simulated trials, no Ray cluster)\n\n" + body_b
    numbers = {"b": numbers_b}
    if not args.skip_real:
        body_a, runs = part_a(epochs, repeats)
        print(body_a)
        body = ("### (a) Restarts on a real run: AALRScheduler against the in-process trainable\n\n" + body_a
                + "\n" + body)
        numbers["a"] = runs
    numbers["seconds"] = time.perf_counter() - started
    body = body.rstrip() + "\n\n" + load.note() + "\n"
    write_fragment(args.name, "AALRScheduler's cost: restarts and decision path",
                   command_line("scheduler_cost.py", argv), body)
    (RESULTS / f"{args.name}.json").write_text(json.dumps(numbers, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
