"""AALRScheduler: its decisions on stub trials, a real local Ray run, and Tuner.restore.

Ray workers import this module by name (conftest puts tests/ on PYTHONPATH),
so module level holds only definitions.
"""

import copy
import json
import math
import os
import pickle
import time
from pathlib import Path

import pytest
import torch
from ray import tune
from ray.tune.experiment import Trial
from ray.tune.schedulers import TrialScheduler

from aalr_ray.core import AALR, Action
from aalr_ray.examples import pbt_loop
from aalr_ray.scheduler import STATE_KEY, AALRScheduler
from tune_helpers import register, stub_trial

CONTINUE, PAUSE, STOP, NOOP = (TrialScheduler.CONTINUE, TrialScheduler.PAUSE, TrialScheduler.STOP,
                               TrialScheduler.NOOP)

# ----------------------------------------------------------------- decision path (no Ray)
# The example of aalr_ray.core's docstring: a restart from theta_0, the end of
# phase 1, a doubling, a second try, a halving, a rollback to the best.
J0 = 2.3
SCRIPT = [2.0, 2.5, 1.9, 1.8, 1.9, 1.7, 1.8, 1.75, 1.72, 1.71, math.nan, 1.6, 1.55, 1.5, 1.45, 1.4]
CORE_ARGS = dict(max_epochs=16, phase1_patience=2)


def bare_core(losses, initial_loss=J0, **core_args):
    """What the core alone decides: (lr used, action, lr after) per epoch."""
    core = AALR(**{**CORE_ARGS, **core_args})
    core.start(initial_loss)
    rows = []
    for loss in losses:
        lr = core.lr
        action = core.step(loss)
        rows.append((lr, action, core.lr))
        if core.finished:
            break
    return rows


def expected_decision(row, last):
    lr, action, new_lr = row
    if last:
        return STOP
    if action in (Action.RESTORE_BEST, Action.RESTORE_INITIAL):
        return NOOP
    return PAUSE if new_lr != lr else CONTINUE


class FakeController:
    """The scheduler-facing part of TuneController, recording pauses."""

    def __init__(self, trials):
        self.trials = trials
        self.paused = []
        self.stopped = []

    def get_trials(self):
        return self.trials

    def pause_trial(self, trial, should_checkpoint=True):
        self.paused.append((trial.trial_id, should_checkpoint))
        trial.set_status(Trial.PAUSED)

    def stop_trial(self, trial):
        self.stopped.append(trial.trial_id)
        trial.set_status(Trial.TERMINATED)


def checkpoint_name(trial):
    return None if trial.checkpoint is None else os.path.basename(trial.checkpoint.path)


class FakeTune:
    """Drives one stub trial like Tune would: the worker names checkpoints by a
    counter synced from the driver at each (re)start; PAUSE/CONTINUE/STOP
    register the result's checkpoint, a NOOP after a pause discards it."""

    def __init__(self, scheduler, trial, controller=None):
        self.scheduler, self.trial = scheduler, trial
        self.controller = controller or FakeController([trial])
        self.registered = -1  # driver-side checkpoint index
        self.worker_index = -1
        self.first = True
        self.log = []  # (lr used, decision, restore target after, paused with a save?)

    def result(self, loss):
        self.worker_index += 1
        name = f"checkpoint_{self.worker_index:06d}"
        result = {"train_loss": loss, "checkpoint_dir_name": name, "training_iteration": 1}
        if self.first:
            result["initial_loss"] = J0
            self.first = False
        lr = self.trial.config["lr"]
        decision = self.scheduler.on_trial_result(self.controller, self.trial, result)
        if decision in (CONTINUE, PAUSE, STOP):
            self.registered += 1
            assert self.registered == self.worker_index
            register(self.trial, name, result)
        if decision in (PAUSE, NOOP):  # restart: the worker index is synced from the driver
            self.worker_index = self.registered
            self.trial.set_status(Trial.RUNNING)
        if decision == STOP:
            self.scheduler.on_trial_complete(self.controller, self.trial, result)
        self.log.append((lr, decision, checkpoint_name(self.trial)))
        return decision


def new_scheduler(**kwargs):
    return AALRScheduler(**{"metric": "train_loss", **CORE_ARGS, **kwargs})


def run_script(losses, scheduler=None, trial=None):
    scheduler = scheduler or new_scheduler()
    trial = trial or stub_trial()
    scheduler.on_trial_add(FakeController([trial]), trial)
    tune_ = FakeTune(scheduler, trial)
    for loss in losses:
        if tune_.result(loss) == STOP:
            break
    return scheduler, trial, tune_


def test_decisions_and_lrs_match_the_bare_core():
    scheduler, trial, fake = run_script(SCRIPT)
    rows = bare_core(SCRIPT)
    assert [lr for lr, _, _ in fake.log] == [lr for lr, _, _ in rows]
    assert [d for _, d, _ in fake.log] == [expected_decision(r, i == len(rows) - 1) for i, r in enumerate(rows)]
    assert len(fake.log) == 16
    # The rollbacks: epoch 2 to theta_0 (no checkpoint), epoch 11 to the best of epoch 6.
    actions = [a for _, a, _ in rows]
    assert actions[1] is Action.RESTORE_INITIAL and fake.log[1][2] is None
    assert actions[10] is Action.RESTORE_BEST
    assert actions[5] is Action.SAVE_BEST
    best_name = fake.log[5][2]  # registered on epoch 6's PAUSE
    assert fake.log[10][2] == best_name
    # Pauses for rollbacks discard the result's checkpoint; LR changes keep it (via PAUSE).
    assert fake.controller.paused == [(trial.trial_id, False)] * 2
    record = scheduler.trial_state(trial.trial_id)
    assert record["core"]["epoch"] == 16 and record["restarts"] == {
        "lr_change": sum(d == PAUSE for _, d, _ in fake.log), "restore_best": 1, "restore_initial": 1}
    assert "restarts: " in scheduler.debug_string() and "finished: 1" in scheduler.debug_string()


# Scripts (from tests/test_core.py) under which each option of the ablation changes a decision.
OPTION_SCRIPTS = {
    "restore_if_worse": ({"restore_if_worse": True}, [1.5, 1.6, 1.6, 1.6, 1.516, 1.6, 1.4, 1.3]),
    "significant_gain": ({"significant_gain": True}, [1.5, 1.6, 1.495, 1.6, 1.48, 1.6, 1.4, 1.3]),
    "judge": ({"judge": "mean"}, [1.5, 1.0, 1.6, 1.2, 1.45, 1.3, 1.2, 1.1]),
}


@pytest.mark.parametrize("option", list(OPTION_SCRIPTS))
def test_the_ablation_options_decide_as_in_the_bare_core(option):
    options, script = OPTION_SCRIPTS[option]
    args = dict(max_epochs=len(script), phase1_patience=1)
    _, _, fake = run_script(script, scheduler=new_scheduler(**args, **options))
    rows = bare_core(script, **args, **options)
    assert [lr for lr, _, _ in fake.log] == [lr for lr, _, _ in rows]
    assert [d for _, d, _ in fake.log] == [expected_decision(r, i == len(rows) - 1) for i, r in enumerate(rows)]
    assert rows != bare_core(script, **args)  # the option changes this run: it reached the scheduler's core


def test_trials_are_independent():
    scheduler = new_scheduler()
    trials = [stub_trial({"seed": 0}), stub_trial({"seed": 1})]
    fakes = []
    for trial in trials:
        scheduler.on_trial_add(FakeController(trials), trial)
        fakes.append(FakeTune(scheduler, trial))
    for loss in SCRIPT:  # interleaved results
        for fake in fakes:
            fake.result(loss)
    assert fakes[0].log == fakes[1].log == run_script(SCRIPT)[2].log
    assert scheduler.restart_counts()["restore_best"] == 2


def test_a_result_past_the_end_stops_without_its_checkpoint():
    scheduler, trial, fake = run_script(SCRIPT)
    latest = checkpoint_name(trial)
    trial.set_status(Trial.RUNNING)  # as if restored before its stop took effect
    result = {"train_loss": 1.0, "checkpoint_dir_name": "checkpoint_000099"}
    assert scheduler.on_trial_result(fake.controller, trial, result) == NOOP
    assert fake.controller.stopped == [trial.trial_id] and checkpoint_name(trial) == latest


def test_rollback_restores_the_best_checkpoint_with_its_metrics():
    scheduler, trial, fake = run_script(SCRIPT[:11])  # ends with the NaN of epoch 11
    latest = trial.run_metadata.checkpoint_manager.latest_checkpoint_result
    assert os.path.basename(latest.checkpoint.path) == fake.log[5][2]
    assert latest.metrics["train_loss"] == 1.7  # epoch 6's result, copied
    assert trial.config["lr"] == bare_core(SCRIPT[:11])[-1][2]
    assert trial.status == Trial.RUNNING  # restarted by FakeTune


def test_initial_loss_missing_means_infinity():
    scheduler = new_scheduler()
    trial = stub_trial()
    scheduler.on_trial_add(FakeController([trial]), trial)
    result = {"train_loss": 5.0, "checkpoint_dir_name": "checkpoint_000000"}
    assert scheduler.on_trial_result(FakeController([trial]), trial, result) == CONTINUE
    assert scheduler.trial_state(trial.trial_id)["core"]["initial_loss"] == math.inf


def test_config_lr_is_the_core_lr_on_add():
    scheduler = new_scheduler(initial_lr=0.4)
    trial = stub_trial({"seed": 3, "lr": 1.0})
    scheduler.on_trial_add(FakeController([trial]), trial)
    assert trial.config["lr"] == 0.4 and trial.config["seed"] == 3
    assert trial.config[STATE_KEY]["records"][0]["core"]["started"] is False


@pytest.mark.parametrize("stop_after", [3, 6, 7, 10, 11, 12])
def test_state_is_rebuilt_when_the_scheduler_forgets(stop_after):
    """Drop the scheduler's memory (a new one, as Tuner.restore unpickles it) mid-run."""
    reference = run_script(SCRIPT)[2].log
    scheduler, trial, fake = run_script(SCRIPT[:stop_after])
    fresh = pickle.loads(pickle.dumps(new_scheduler()))
    fake.scheduler = fresh
    for loss in SCRIPT[stop_after:]:
        fake.result(loss)
    assert fake.log == reference
    assert fresh._rebuilds == 1


def test_a_retried_trial_continues_from_its_latest_checkpoint():
    """FailureConfig retries: Tune calls on_trial_error, then on_trial_add, and
    restarts the trial from its latest registered checkpoint."""
    reference = run_script(SCRIPT)[2].log
    scheduler, trial, fake = run_script(SCRIPT[:6])  # epoch 7's worker dies while training
    scheduler.on_trial_error(fake.controller, trial)
    scheduler.on_trial_add(fake.controller, trial)
    fake.worker_index = fake.registered
    for loss in SCRIPT[6:]:
        fake.result(loss)
    assert fake.log == reference and scheduler._rebuilds == 1


@pytest.mark.parametrize("stop_after", [2, 3, 6, 7, 10, 11])
def test_snapshot_between_result_and_checkpoint_picks_the_older_record(stop_after):
    """Tune snapshots the trial after the scheduler saw a result but before that
    result's checkpoint is registered: the restored trial restarts from the
    previous checkpoint, so the scheduler must take the state from before."""
    reference = run_script(SCRIPT)[2].log
    scheduler, trial, fake = run_script(SCRIPT[:stop_after - 1])
    # Epoch `stop_after`: the scheduler decides; the snapshot is taken before registration.
    fake.worker_index += 1
    result = {"train_loss": SCRIPT[stop_after - 1], "training_iteration": 1,
              "checkpoint_dir_name": f"checkpoint_{fake.worker_index:06d}"}
    decision = scheduler.on_trial_result(fake.controller, trial, result)
    trial_json, metadata_json = trial.get_json_state()
    restored = Trial.from_json_state(trial_json, stub=True)
    restored.restore_run_metadata(metadata_json)
    restored.set_status(Trial.RUNNING)
    # The snapshot's restore point is the newest record's checkpoint if the
    # scheduler set it (rollback) or else the previously registered one.
    fresh = pickle.loads(pickle.dumps(new_scheduler()))
    fresh.on_trial_add(FakeController([restored]), restored)
    redo = FakeTune(fresh, restored)
    redo.first = False
    redo.registered = redo.worker_index = fake.registered
    if decision == NOOP:  # a rollback is complete at the snapshot: continue after it
        losses = SCRIPT[stop_after:]
        done = reference[:stop_after]
    else:  # the epoch is lost with its checkpoint: retrain it
        losses = SCRIPT[stop_after - 1:]
        done = reference[:stop_after - 1]
    for loss in losses:
        if redo.result(loss) == STOP:
            break
    assert done + redo.log == reference


def test_final_restore_best_hands_back_the_best_checkpoint():
    losses = [2.0, 1.9, 1.8, math.nan]  # phase 1 ends at epoch 2; epoch 4 is the last and bad
    scheduler, trial, fake = run_script(losses, scheduler=new_scheduler(max_epochs=4))
    assert [d for _, d, _ in fake.log] == [CONTINUE, PAUSE, CONTINUE, STOP]
    assert checkpoint_name(trial) == fake.log[1][2]  # the best (epoch 2), not epoch 4's


def test_unresolved_config_keeps_the_state():
    """Tune rebuilds a restored trial's config from its unresolved copy when the
    param space holds objects; the scheduler's keys must be in it."""
    scheduler, trial, fake = run_script(SCRIPT[:5])
    expected = copy.deepcopy(trial.config)
    trial.resolve_config_placeholders({})
    assert trial.config == expected


def test_choose_trial_prefers_paused_trials():
    scheduler = new_scheduler()
    pending, paused = stub_trial(), stub_trial()
    pending.set_status(Trial.PENDING)
    paused.set_status(Trial.PAUSED)
    assert scheduler.choose_trial_to_run(FakeController([pending, paused])) is paused
    assert scheduler.choose_trial_to_run(FakeController([pending])) is pending


@pytest.mark.parametrize("kwargs, message", [
    (dict(mode="max"), "mode must be 'min'"),
    (dict(max_epochs=0), "max_epochs"),
    (dict(initial_lr=-1.0), "initial_lr"),
    (dict(phase1_patience=0), "phase1_patience"),
    (dict(window="both"), "window"),
    (dict(metric=""), "metric"),
    (dict(lr_key=STATE_KEY), "reserved"),
])
def test_arguments_are_validated(kwargs, message):
    with pytest.raises(ValueError, match=message):
        new_scheduler(**kwargs)
    with pytest.raises(ValueError, match="max_epochs is required"):
        AALRScheduler()


def test_search_properties():
    scheduler = new_scheduler()
    assert scheduler.set_search_properties("train_loss", "min")
    assert scheduler.set_search_properties(None, None)
    assert not scheduler.set_search_properties("val_loss", "min")
    with pytest.raises(ValueError, match="mode must be 'min'"):
        scheduler.set_search_properties(None, "max")


def test_small_num_to_keep_is_rejected():
    trial = stub_trial(num_to_keep=3)
    with pytest.raises(ValueError, match="num_to_keep=None"):
        new_scheduler().on_trial_add(FakeController([trial]), trial)


def test_results_without_loss_or_checkpoint_are_rejected():
    scheduler = new_scheduler()
    trial = stub_trial()
    scheduler.on_trial_add(FakeController([trial]), trial)
    with pytest.raises(ValueError, match="reported no 'train_loss'"):
        scheduler.on_trial_result(FakeController([trial]), trial, {"checkpoint_dir_name": "c"})
    with pytest.raises(ValueError, match="reported no checkpoint"):
        scheduler.on_trial_result(FakeController([trial]), trial, {"train_loss": 1.0,
                                                                   "checkpoint_dir_name": None})


# ----------------------------------------------------------------- a PBT-style trainable
N_POINTS, N_FEATURES, N_CLASSES, BATCH = 512, 8, 3, 64
NAN_LR = 0.5  # from the 2nd epoch of a lineage on, an LR above it reports NaN: a divergence
PENALTY_LR = (0.3, 0.5)  # from the 3rd epoch of a lineage on, this LR band reports a worse loss
PENALTY = 0.5
RAY_CORE = dict(max_epochs=12, initial_lr=0.8, phase1_patience=2)
# With seed 0 the run goes: an epoch at 0.8, NaN -> theta_0 at 0.4 (though a
# checkpoint exists); phase 1 ends (save best, 0.8); NaN -> best at 0.4; a
# window and its second try fail -> 0.2; a save at T.


def _data(seed):
    g = torch.Generator().manual_seed(1000 + seed)
    x = torch.randn(N_POINTS, N_FEATURES, generator=g)
    teacher = torch.randn(N_FEATURES, N_CLASSES, generator=g)
    y = (x @ teacher + 0.5 * torch.randn(N_POINTS, N_CLASSES, generator=g)).argmax(1)
    return x, y


def _model(seed, lr):
    torch.manual_seed(seed)  # theta_0 is a function of the seed
    model = torch.nn.Sequential(torch.nn.Linear(N_FEATURES, 16), torch.nn.Tanh(),
                                torch.nn.Linear(16, N_CLASSES))
    return model, torch.optim.SGD(model.parameters(), lr=lr, momentum=0.5)


def _full_loss(model, x, y):
    with torch.no_grad():
        return float(torch.nn.functional.cross_entropy(model(x), y))


def _train_epoch(model, opt, x, y, seed, epoch):
    order = torch.randperm(N_POINTS, generator=torch.Generator().manual_seed(seed * 100003 + epoch))
    total = 0.0
    for i in range(0, N_POINTS, BATCH):
        idx = order[i:i + BATCH]
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(x[idx]), y[idx])
        loss.backward()
        opt.step()
        total += loss.item() * len(idx)
    return total / N_POINTS


def _reported(loss, lr, epoch):
    """The loss the trainable reports after its ``epoch``-th lineage epoch (1-based)."""
    if lr > NAN_LR and epoch >= 2:
        return math.nan
    if PENALTY_LR[0] < lr <= PENALTY_LR[1] and epoch >= 3:
        return loss + PENALTY
    return loss


def _set_lr(opt, lr):
    for group in opt.param_groups:
        group["lr"] = lr


def pbt_trainable(config):
    """A trainable written for PBT (aalr_ray.examples.pbt_loop) on the synthetic task. Its
    data order follows the checkpoint's epoch, which a rollback rewinds, as in replay()."""
    started = time.time()
    torch.set_num_threads(1)
    seed, lr = config["seed"], config["lr"]
    x, y = _data(seed)
    model, opt = _model(seed, lr)

    def one_epoch(epoch):  # the 1-based lineage epoch
        return _reported(_train_epoch(model, opt, x, y, seed, epoch - 1), lr, epoch), {}

    pbt_loop(config, model, opt, one_epoch, lambda: _full_loss(model, x, y), started=started,
             epoch_from_checkpoint=True)


def replay(seed, max_epochs, **core_args):
    """The same training in this process, with AALR's actions applied directly."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        x, y = _data(seed)
        core = AALR(max_epochs, **core_args)
        model, opt = _model(seed, core.lr)
        epoch = 0
        core.start(_full_loss(model, x, y))
        best, rows = None, []
        while not core.finished:
            lr = core.lr
            _set_lr(opt, lr)
            loss = _reported(_train_epoch(model, opt, x, y, seed, epoch), lr, epoch + 1)
            epoch += 1
            action = core.step(loss)
            rows.append((lr, loss, action))
            if action is Action.SAVE_BEST:
                best = copy.deepcopy((model.state_dict(), opt.state_dict(), epoch))
            elif action is Action.RESTORE_BEST:
                model.load_state_dict(best[0])
                opt.load_state_dict(best[1])
                epoch = best[2]
            elif action is Action.RESTORE_INITIAL and not core.finished:
                model, opt = _model(seed, core.lr)
                epoch = 0
        return rows, model.state_dict()
    finally:
        torch.set_num_threads(threads)


def read_log(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


def core_lrs(rows):
    """The bare core fed the logged losses: the LR it asks for at each epoch."""
    core = AALR(**RAY_CORE)
    core.start(rows[0]["initial_loss"])
    lrs = []
    for row in rows:
        lrs.append(core.lr)
        core.step(row["loss"] if row["loss"] is not None else math.nan)
    return lrs


def final_weights(result):
    with result.checkpoint.as_directory() as directory:
        return torch.load(Path(directory, "state.pt"), weights_only=True)["model"]


def trial_config(experiment_path):
    """The trial's config as Tune persisted it (Result.config is the config the
    trainable last started with)."""
    (trial,) = tune.ExperimentAnalysis(experiment_path).trials
    return trial.config


def restart_seconds(rows):
    """Seconds from the report that triggered a restart to the restarted function's start."""
    return [row["started"] - prev["reported"] for prev, row in zip(rows, rows[1:]) if row["started"]]


# ----------------------------------------------------------------- real local Ray (conftest's local_ray)
def make_tuner(storage, name, log, callbacks=()):
    return tune.Tuner(
        tune.with_resources(pbt_trainable, {"cpu": 1}),
        param_space={"seed": 0, "max_epochs": RAY_CORE["max_epochs"], "log": str(log)},
        tune_config=tune.TuneConfig(scheduler=AALRScheduler(metric="train_loss", **RAY_CORE),
                                    reuse_actors=True),
        run_config=tune.RunConfig(name=name, storage_path=str(storage), verbose=0,
                                  callbacks=list(callbacks)),
    )


@pytest.fixture(scope="module")
def reference_run(local_ray, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("aalr_sched")
    log = tmp / "reference.jsonl"
    start = time.time()
    results = make_tuner(tmp, "reference", log).fit()
    return {"results": results, "rows": read_log(log), "seconds": time.time() - start}


@pytest.mark.ray
def test_real_run_follows_the_bare_core(reference_run):
    results, rows = reference_run["results"], reference_run["rows"]
    assert len(results) == 1 and results[0].error is None
    result = results[0]
    # Exactly max_epochs trained epochs, rolled-back ones included.
    assert len(rows) == RAY_CORE["max_epochs"]
    assert [r["lr"] for r in rows] == core_lrs(rows)
    # The same as an in-process replay: losses, LRs and final weights.
    expected_rows, expected_weights = replay(0, **RAY_CORE)
    assert [r["lr"] for r in rows] == [lr for lr, _, _ in expected_rows]
    for row, (_, loss, _) in zip(rows, expected_rows):
        assert (math.isnan(loss) and math.isnan(row["loss"])) or row["loss"] == loss
    actions = [a for _, _, a in expected_rows]
    assert {Action.RESTORE_INITIAL, Action.RESTORE_BEST, Action.SAVE_BEST} <= set(actions)
    # The restart from theta_0 ignores the checkpoint registered before it.
    assert actions[:2] == [Action.CONTINUE, Action.RESTORE_INITIAL]
    assert [r["epoch"] for r in rows[:3]] == [1, 2, 1] and rows[2]["initial_loss"] == rows[0]["initial_loss"]
    assert len(set(r["lr"] for r in rows)) >= 3  # a doubling and a halving
    weights = final_weights(result)
    for key, value in expected_weights.items():
        assert torch.equal(weights[key], value), key
    state = trial_config(results.experiment_path)[STATE_KEY]["records"][-1]
    assert state["core"]["epoch"] == RAY_CORE["max_epochs"]
    restarts = sum(1 for r in rows[1:] if r["started"])
    assert restarts == sum(state["restarts"].values())
    seconds = restart_seconds(rows)
    print(f"\nreal run: {reference_run['seconds']:.1f} s, {restarts} restarts, "
          f"seconds per restart: {[round(s, 2) for s in seconds]}, "
          f"worker processes: {len(set(r['pid'] for r in rows))}")


class Crashes(tune.Callback):
    """Simulated driver crashes: raises at the ``at``-th ``hook`` call of a driver
    session, for the first crash point whose marker file does not exist yet.
    Tuner.restore brings this callback back from tuner.pkl with fresh counters."""

    def __init__(self, points, directory):
        self.points, self.directory = points, str(directory)
        self.calls = {"result": 0, "save": 0}

    def _count(self, hook):
        self.calls[hook] += 1
        for i, (point_hook, at) in enumerate(self.points):
            marker = Path(self.directory, f"crashed_{i}")
            if marker.exists():
                continue
            if point_hook == hook and self.calls[hook] == at:
                marker.touch()
                raise RuntimeError(f"simulated driver crash {i}")
            return

    def on_trial_result(self, iteration, trials, trial, result, **info):
        self._count("result")

    def on_trial_save(self, iteration, trials, trial, **info):
        self._count("save")


def snapshot_epochs(path):
    """The epochs a restored trial counts as done: the core epoch of the record
    that belongs to the checkpoint the snapshot restarts the trial from."""
    (trial,) = tune.ExperimentAnalysis(path).trials
    latest = None if trial.checkpoint is None else os.path.basename(trial.checkpoint.path)
    records = trial.config[STATE_KEY]["records"]
    chosen = next(r for r in reversed(records) if r["ckpt"] == latest)
    return chosen["core"]["epoch"], chosen is records[-1]


@pytest.mark.ray
def test_restore_continues_like_the_uninterrupted_run(reference_run, tmp_path, monkeypatch):
    """Two driver crashes, each followed by Tuner.restore with a new scheduler:
    1. at the save of the checkpoint of the SAVE_BEST that ends phase 1, epoch 4
       (the snapshot has the scheduler's state for it, but not the checkpoint);
    2. in the restored run, at the first result after the rollback to the best,
       epoch 6 (the snapshot has the rollback's restore point)."""
    monkeypatch.setenv("TUNE_GLOBAL_CHECKPOINT_S", "0")  # snapshot the experiment every step
    log = tmp_path / "log.jsonl"
    path = str(tmp_path / "interrupted")
    crashes = Crashes([("save", 3), ("result", 3)], tmp_path)
    with pytest.raises(Exception, match="simulated driver crash 0"):
        make_tuner(tmp_path, "interrupted", log, [crashes]).fit()
    sessions = [read_log(log)]
    kept = [snapshot_epochs(path)]
    # Epoch 4's record is newer than the registered checkpoint, so the one before
    # it is used (or, if Tune skipped that step's upload, the snapshot predates it).
    assert kept[0][0] == 3
    with pytest.raises(Exception, match="simulated driver crash 1"):
        tune.Tuner.restore(path, pbt_trainable, resume_unfinished=True).fit()
    sessions.append(read_log(log)[sum(map(len, sessions)):])
    kept.append(snapshot_epochs(path))
    assert kept[1] == (5, True)  # epoch 5's rollback is in the snapshot
    results = tune.Tuner.restore(path, pbt_trainable, resume_unfinished=True).fit()
    assert results[0].error is None
    sessions.append(read_log(log)[sum(map(len, sessions)):])

    # Each session's epochs past its snapshot were lost and retrained.
    rows = sessions[0][:kept[0][0]] + sessions[1][:kept[1][0] - kept[0][0]] + sessions[2]
    strip = lambda rows: [(r["epoch"], r["lr"], repr(r["loss"])) for r in rows]  # noqa: E731
    assert strip(rows) == strip(reference_run["rows"])
    for key, value in final_weights(reference_run["results"][0]).items():
        assert torch.equal(final_weights(results[0])[key], value), key
    final_state = lambda r: trial_config(r.experiment_path)[STATE_KEY]["records"][-1]["core"]  # noqa: E731
    assert final_state(results) == final_state(reference_run["results"])
