"""AALR as a Ray Tune ``TrialScheduler``, for trainables written for PBT.

:class:`AALRScheduler` runs AALR (:mod:`aalr_ray.core`) over an unmodified
PBT-style function trainable: it feeds each reported loss to one
:class:`~aalr_ray.core.AALR` per trial and turns the returned action into Tune
operations, the way PBT's exploit does::

    from aalr_ray.scheduler import AALRScheduler

    tuner = tune.Tuner(
        my_trainable,
        param_space={"seed": tune.grid_search([0, 1, 2])},
        tune_config=tune.TuneConfig(
            scheduler=AALRScheduler(metric="train_loss", max_epochs=60),
            reuse_actors=True,  # cheaper restarts while other trials wait (docs/scheduler.md)
        ),
        run_config=tune.RunConfig(
            storage_path="./results",
            checkpoint_config=tune.CheckpointConfig(num_to_keep=None),  # required
        ),
    )

What the trainable must do (a function trainable, as for PBT):

* read ``config["lr"]`` (``lr_key``) at start; it is set by the scheduler;
* on start, restore model *and* optimizer from ``tune.get_checkpoint()`` when
  there is one, **then** set the optimizer's LR from the config
  (``optimizer.load_state_dict`` brings back the old LR); with no checkpoint,
  initialise the model from its seed: that is theta_0, which AALR's phase 1
  rolls back to;
* report the training loss (``metric``) and a checkpoint (model, optimizer and
  its own epoch counter) with **every** result, one result per epoch;
* report ``initial_loss`` (``initial_loss_key``) = J(theta_0), the untrained
  model's training loss, on its first result. Without it J(theta_0) is taken
  as +inf: phase 1 then never rejects the first epoch after a restart from
  theta_0 (L* is reset to J(theta_0) there), and ``collapse_is_divergence``
  never fires;
* derive each epoch's data order from the seed and an epoch count, so that a
  restart does not change the data. The checkpoint's own counter rewinds on
  a rollback; ``config["aalr_epochs_done"]`` (set by the scheduler: epochs
  trained so far, rolled-back ones included) does not, and gives the same
  data as :class:`aalr_ray.controller.AALRController` in one process;
* not stop on its own before the scheduler stops it (a loop bound of
  ``max_epochs`` on the checkpoint's epoch counter is fine: rollbacks only
  make that counter lag the scheduler's).

Every LR change restarts the trial from a checkpoint (Tune cannot change a
running trial's config): about 0.1 s with ``reuse_actors=True`` while other
trials wait to start, seconds otherwise.

The config gains the reserved keys ``"_aalr"`` (the scheduler's state) and
``"aalr_epochs_done"``; the trainable must ignore unknown config keys.
``CheckpointConfig(num_to_keep=...)`` must be ``None`` (the default): the
best checkpoint is needed for any number of later epochs (``ValueError``
otherwise).

Example: ``AALRScheduler(max_epochs=16, phase1_patience=2)`` on a trial whose
J(theta_0) is 2.3 (``lr`` is ``config["lr"]`` of the epoch; AALR's decisions
are those of :mod:`aalr_ray.core`'s example)::

    epoch  loss   lr     AALR action      returns        the trial
      1    2.0    0.1    continue         CONTINUE       trains on
      2    2.5    0.1    restore_initial  NOOP (paused)  restarts from theta_0 at 0.05
      3    1.9    0.05   continue         CONTINUE
      4    1.8    0.05   save_best        PAUSE          restarts from epoch 4's checkpoint at 0.1
      5    1.9    0.1    continue         CONTINUE
      6    1.7    0.1    save_best        PAUSE          restarts from epoch 6's checkpoint at 0.2
      7-9  ...    0.2    continue         CONTINUE
     10    1.71   0.2    continue         PAUSE          restarts from epoch 10's checkpoint at 0.1
     11    nan    0.1    restore_best     NOOP (paused)  restarts from epoch 6's checkpoint at 0.05
     12-15 ...    0.05   continue         CONTINUE
     16    1.4    0.05   save_best        STOP           Result.checkpoint is epoch 16's

How the actions map to Tune operations, where the state lives and why (it
survives ``Tuner.restore``), and what a restart costs: ``docs/scheduler.md``.
The Ray internals used are in :mod:`aalr_ray._ray_compat`.
"""

from __future__ import annotations

import copy
import logging
import math
import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Dict, List, Optional

from ray.tune.experiment import Trial
from ray.tune.schedulers.trial_scheduler import TrialScheduler

from . import _ray_compat
from .core import AALR, Action

if TYPE_CHECKING:
    from ray.tune.execution.tune_controller import TuneController

__all__ = ["AALRScheduler", "STATE_KEY", "EPOCHS_KEY"]

logger = logging.getLogger(__name__)

STATE_KEY = "_aalr"  # reserved config key holding the per-trial state
# Config key with the epochs the trial trained so far, rolled-back ones included:
# a trainable that derives its data order from it sees the same data whatever
# checkpoint it restarts from (the checkpoint's own counter rewinds on rollbacks).
EPOCHS_KEY = "aalr_epochs_done"
_FORMAT = 1
_CHECKPOINT_DIR_NAME = "checkpoint_dir_name"  # Tune adds it to every function-trainable result
_KEEP = object()  # _restart_trial: keep the checkpoint reported with this result
_RESTART_KINDS = ("lr_change", "restore_best", "restore_initial")


# --------------------------------------------------------------- Ray internals
def _restart_trial(tune_controller: Optional["TuneController"], trial: Trial, updates: Dict,
                   restore_from=_KEEP) -> None:
    """Set ``updates`` in ``trial``'s config and choose what it restarts from.

    The ONLY function of this module that relies on Ray Tune internals, all
    of them through :mod:`aalr_ray._ray_compat` (checked against Ray 2.60.0);
    PBT does the same in ``ray/tune/schedulers/pbt.py`` (``_exploit``).

    ``restore_from``:

    * ``_KEEP``: only set the config. The caller returns CONTINUE, STOP, or
      PAUSE; on PAUSE the controller saves and registers the checkpoint of
      the current result, then stops the trial, which restarts from it.
    * ``None``: pause without saving, restart with no checkpoint (theta_0).
    * a checkpoint directory name: pause without saving, restart from that
      registered checkpoint.

    With ``tune_controller=None`` the trial is not paused (it is stopping).
    """
    # num_to_keep deletes all but the newest K checkpoints (the latest is
    # spared); the best one is needed for any number of later epochs.
    num_to_keep = _ray_compat.checkpoint_num_to_keep(trial)
    if num_to_keep is not None:
        raise ValueError(f"AALRScheduler needs CheckpointConfig(num_to_keep=None), got "
                         f"num_to_keep={num_to_keep}: it would delete the best checkpoint")

    trial.set_config({**trial.config, **updates})  # public; invalidates the cached trial JSON
    # Our keys must survive Tuner.restore's rebuild of the config from its unresolved copy.
    _ray_compat.set_unresolved_config(trial, updates)

    if restore_from is _KEEP:
        return
    target = None
    if restore_from is not None:
        found = next((r for r in _ray_compat.registered_checkpoint_results(trial)
                      if _dir_name(r.checkpoint.path) == restore_from), None)
        if found is None:
            raise RuntimeError(f"AALRScheduler: trial {trial} has no registered checkpoint "
                               f"{restore_from!r} to roll back to")
        # A copy, as PBT does: Tune adds keys to the metrics of the result it restores.
        target = _ray_compat.training_result(copy.copy(found.checkpoint), dict(found.metrics))
    if tune_controller is not None and trial.status == Trial.RUNNING:
        # Whitelisted scheduler API; without a save the checkpoint reported
        # with the current result is never registered (it is discarded).
        tune_controller.pause_trial(trial, should_checkpoint=False)
    # The checkpoint the trial restores from when it starts again (None: no
    # restore; the trainable sees tune.get_checkpoint() is None), saved with
    # the new config in the next experiment snapshot.
    _ray_compat.set_restore_point(trial, target)


# --------------------------------------------------------------------- helpers
def _dir_name(path: str) -> str:
    return os.path.basename(str(path).rstrip("/\\"))


def _checkpoint_name(trial: Trial) -> Optional[str]:
    """The directory name of the checkpoint ``trial`` would restart from (public API)."""
    checkpoint = trial.checkpoint
    return None if checkpoint is None else _dir_name(checkpoint.path)


@dataclass
class _TrialState:
    """One trial: its core and what belongs with it. ``ckpt`` is the checkpoint
    the trial restarts from in this state; ``best`` the last SAVE_BEST's."""

    core: AALR
    ckpt: Optional[str] = None
    best: Optional[str] = None
    action: Optional[str] = None
    restarts: Dict[str, int] = field(default_factory=lambda: dict.fromkeys(_RESTART_KINDS, 0))

    def record(self) -> dict:
        return {"ckpt": self.ckpt, "best": self.best, "action": self.action,
                "restarts": dict(self.restarts), "core": self.core.state_dict()}

    @classmethod
    def from_record(cls, record: dict) -> "_TrialState":
        restarts = dict.fromkeys(_RESTART_KINDS, 0)
        restarts.update(record.get("restarts") or {})
        return cls(core=AALR.from_state_dict(record["core"]), ckpt=record.get("ckpt"),
                   best=record.get("best"), action=record.get("action"), restarts=restarts)


# ------------------------------------------------------------------- scheduler
class AALRScheduler(TrialScheduler):
    """Run AALR on every trial of a Tune experiment (see the module docstring).

    Args:
        metric: the training loss the trainable reports every epoch.
        mode: must be ``"min"``: AALR minimises a loss.
        max_epochs: epochs per trial, rolled-back ones included; the trial is
            stopped after them.
        lr_key: the config key the trainable reads its LR from.
        initial_loss_key: result key of J(theta_0), read from a trial's first
            result (missing: +inf, see the module docstring).
        initial_lr, phase1_patience, window, collapse_is_divergence,
        restore_on_decrease, restore_if_worse, significant_gain, judge: passed
            to :class:`aalr_ray.core.AALR`.
    """

    # Every epoch must reach the scheduler: results are not buffered.
    _supports_buffered_results = False

    def __init__(self, metric: str = "train_loss", mode: str = "min", max_epochs: int = None,
                 lr_key: str = "lr", initial_loss_key: str = "initial_loss", initial_lr: float = 0.1,
                 phase1_patience: int = 10, window: str = "text", collapse_is_divergence: bool = False,
                 restore_on_decrease: bool = False, restore_if_worse: bool = False,
                 significant_gain: bool = False, judge: str = "last"):
        if mode != "min":
            raise ValueError(f"AALRScheduler minimises a loss: mode must be 'min', got {mode!r}")
        for name, value in (("metric", metric), ("lr_key", lr_key), ("initial_loss_key", initial_loss_key)):
            if not isinstance(value, str) or not value:
                raise ValueError(f"{name} must be a non-empty string, got {value!r}")
        if {STATE_KEY, EPOCHS_KEY} & {lr_key, metric, initial_loss_key}:
            raise ValueError(f"{STATE_KEY!r} and {EPOCHS_KEY!r} are reserved for the scheduler")
        if max_epochs is None:
            raise ValueError("max_epochs is required: the epochs each trial trains")
        self._core_args = dict(max_epochs=max_epochs, initial_lr=initial_lr,
                               phase1_patience=phase1_patience, window=window,
                               collapse_is_divergence=collapse_is_divergence,
                               restore_on_decrease=restore_on_decrease, restore_if_worse=restore_if_worse,
                               significant_gain=significant_gain, judge=judge)
        AALR(**self._core_args)  # validates them, with the core's one-line messages
        super().__init__()
        self._metric = metric
        self._mode = mode
        self._lr_key = lr_key
        self._initial_loss_key = initial_loss_key
        self._trials: Dict[str, _TrialState] = {}  # trial_id -> state; rebuilt from configs
        self._rebuilds = 0  # states rebuilt from a config (after Tuner.restore, retries)

    # ------------------------------------------------------------ Tune API
    def set_search_properties(self, metric: Optional[str], mode: Optional[str], **spec) -> bool:
        if mode not in (None, "min"):
            raise ValueError(f"AALRScheduler minimises a loss: mode must be 'min', got {mode!r}")
        return metric is None or metric == self._metric  # False: Tune names the conflict

    def on_trial_add(self, tune_controller: "TuneController", trial: Trial):
        # New trials, trials of a restored experiment, and retried trials
        # (Tune calls on_trial_error, then on_trial_add) all come here.
        state, records = self._load(trial)
        self._trials[trial.trial_id] = state
        self._write(None, trial, state, records, _KEEP)

    def on_trial_result(self, tune_controller: "TuneController", trial: Trial, result: Dict) -> str:
        state = self._trials.get(trial.trial_id)
        if state is None:  # the scheduler lost its memory: rebuild from the config
            state, _ = self._load(trial)
            self._trials[trial.trial_id] = state
        if self._metric not in result:
            raise ValueError(f"AALRScheduler: trial {trial} reported no {self._metric!r}; "
                             f"report the training loss with every result")
        reported = result.get(_CHECKPOINT_DIR_NAME)
        if not reported:
            raise ValueError(f"AALRScheduler: trial {trial} reported no checkpoint; report one "
                             f"with every result (tune.report(metrics, checkpoint=...))")
        core = state.core
        if core.finished:
            # A result past the last epoch (a restored trial whose stop was
            # lost): stop without registering this extra epoch's checkpoint.
            tune_controller.stop_trial(trial)
            return TrialScheduler.NOOP
        if not core.started:
            core.start(float(result.get(self._initial_loss_key, math.inf)))
        before = state.record()
        old_lr = core.lr
        action = core.step(float(result[self._metric]))
        state.action = action.value
        updates_lr = core.lr != old_lr

        if core.finished:
            # The last epoch: its checkpoint is saved on STOP; a final
            # RESTORE_BEST is applied in on_trial_complete, after that save.
            state.ckpt = reported
            if action is Action.SAVE_BEST:
                state.best = reported
            self._write(None, trial, state, [before, state.record()], _KEEP)
            return TrialScheduler.STOP
        if action is Action.RESTORE_BEST:
            if state.best is None:
                raise RuntimeError(f"AALRScheduler: trial {trial} must roll back but has no best checkpoint")
            state.ckpt = state.best
            state.restarts["restore_best"] += 1
            self._write(tune_controller, trial, state, [before, state.record()], state.best)
            return TrialScheduler.NOOP
        if action is Action.RESTORE_INITIAL:
            state.ckpt = None
            state.restarts["restore_initial"] += 1
            self._write(tune_controller, trial, state, [before, state.record()], None)
            return TrialScheduler.NOOP
        # CONTINUE or SAVE_BEST: the weights of this epoch go on. Its checkpoint
        # is registered only after this call returns, so the best is kept by name.
        state.ckpt = reported
        if action is Action.SAVE_BEST:
            state.best = reported
        if updates_lr:
            state.restarts["lr_change"] += 1
        self._write(None, trial, state, [before, state.record()], _KEEP)
        return TrialScheduler.PAUSE if updates_lr else TrialScheduler.CONTINUE

    def on_trial_complete(self, tune_controller: "TuneController", trial: Trial, result: Dict):
        state = self._trials.get(trial.trial_id)
        if (state is not None and state.core.finished and state.action == Action.RESTORE_BEST.value
                and state.best is not None and state.ckpt != state.best):
            # The last epoch's weights were bad: hand back the best ones.
            state.ckpt = state.best
            self._write(None, trial, state, [state.record()], state.best)

    def on_trial_error(self, tune_controller: "TuneController", trial: Trial):
        # A retried trial restarts from its latest registered checkpoint,
        # which may predate the last result: rebuild in on_trial_add.
        self._trials.pop(trial.trial_id, None)

    def on_trial_remove(self, tune_controller: "TuneController", trial: Trial):
        self._trials.pop(trial.trial_id, None)

    def choose_trial_to_run(self, tune_controller: "TuneController") -> Optional[Trial]:
        # Resume paused (restarting) trials before starting new ones, so that
        # started trials finish first.
        trials = tune_controller.get_trials()
        for status in (Trial.PAUSED, Trial.PENDING):
            for trial in trials:
                if trial.status == status:
                    return trial
        return None

    def debug_string(self) -> str:
        states = list(self._trials.values())
        phase1 = sum(1 for s in states if not s.core.finished and s.core.phase == 1)
        phase2 = sum(1 for s in states if not s.core.finished and s.core.phase == 2)
        done = sum(1 for s in states if s.core.finished)
        r = self.restart_counts()
        return (f"AALRScheduler: {len(states)} trials (phase 1: {phase1}, phase 2: {phase2}, "
                f"finished: {done}); restarts: {sum(r.values())} (LR changes {r['lr_change']}, "
                f"to best {r['restore_best']}, to theta_0 {r['restore_initial']})")

    # ------------------------------------------------------------- queries
    def restart_counts(self) -> Dict[str, int]:
        """Restarts so far over the trials this scheduler knows, by kind."""
        return {k: sum(s.restarts[k] for s in self._trials.values()) for k in _RESTART_KINDS}

    def trial_state(self, trial_id: str) -> Optional[dict]:
        """The trial's current record (core state, best checkpoint name, counters), or None."""
        state = self._trials.get(trial_id)
        return None if state is None else state.record()

    # ------------------------------------------------------------ internals
    def _load(self, trial: Trial):
        """The trial's state from its config (or a fresh one) and the records to keep."""
        blob = trial.config.get(STATE_KEY)
        if (isinstance(blob, dict) and blob.get("format") == _FORMAT
                and blob.get("trial_id") == trial.trial_id and blob.get("records")):
            records: List[dict] = blob["records"]
            latest = _checkpoint_name(trial)
            # Newest first: the record of the checkpoint the trial restarts from.
            chosen = next((r for r in reversed(records) if r.get("ckpt") == latest), None)
            if chosen is None:
                chosen = records[-1]
                logger.warning("AALRScheduler: trial %s restarts from checkpoint %s, which matches "
                               "no saved AALR state; continuing from the newest one (%s)",
                               trial, latest, chosen.get("ckpt"))
            self._rebuilds += 1
            return _TrialState.from_record(chosen), [chosen]
        # A new trial (or one Tune reset to start over under a new id).
        user_lr = trial.config.get(self._lr_key)
        if user_lr is not None and user_lr != self._core_args["initial_lr"]:
            logger.warning("AALRScheduler sets config[%r] (was %r) to initial_lr=%g for trial %s",
                           self._lr_key, user_lr, self._core_args["initial_lr"], trial)
        state = _TrialState(core=AALR(**self._core_args))
        return state, [state.record()]

    def _write(self, tune_controller, trial: Trial, state: _TrialState, records: List[dict],
               restore_from) -> None:
        """Persist ``records`` and the LR in the trial's config; apply the restart."""
        blob = {"format": _FORMAT, "trial_id": trial.trial_id, "records": records}
        updates = {self._lr_key: state.core.lr, EPOCHS_KEY: state.core.epoch, STATE_KEY: blob}
        _restart_trial(tune_controller, trial, updates, restore_from)
