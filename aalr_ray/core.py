"""AALR, the automated adaptive learning-rate algorithm, as a pure state machine.

Standard library only: the Ray scheduler, the PyTorch controller and any
outside check drive this one class. It never touches weights; it tells its
caller what to do with them through the :class:`Action` each epoch returns.

Usage::

    ctl = AALR(max_epochs=T)          # initial_lr=0.1, phase1_patience=10, window="text"
    ctl.start(initial_loss)           # L* := J(theta_0), the untrained model's training loss
    while not ctl.finished:
        loss = train_one_epoch(ctl.lr)
        action = ctl.step(loss)       # CONTINUE | SAVE_BEST | RESTORE_BEST | RESTORE_INITIAL

Example, ``AALR(max_epochs=16, phase1_patience=2)`` from an initial loss of
2.3 (``action`` is returned after the epoch; ``lr`` is the LR that epoch used)::

    epoch  loss   lr      action            why
      1    2.0    0.1     continue          phase 1: 2.0 <= L*, counter 1 of 2
      2    2.5    0.1     restore_initial   worse: halve, reload theta_0, L* := 2.3
      3    1.9    0.05    continue          counter 1
      4    1.8    0.05    save_best         counter 2: phase 2, lr 0.1, p = 1, w = 2
      5    1.9    0.1     continue          window epoch 1 of 2
      6    1.7    0.1     save_best         1.7 < 1.8: double to 0.2, p = 1
      7    1.8    0.2     continue
      8    1.75   0.2     continue          no gain: second try at 0.2
      9    1.72   0.2     continue
     10    1.71   0.2     continue          still no gain: lr 0.1, p = 2, w = 3
     11    nan    0.1     restore_best      bad loss: reload best, lr 0.05, p = 4, w = 5
     12..16       0.05                      the last window; epoch 16 = T ends the run

Readings of the paper (its Algorithm 1 and its Sections 2 and 4 disagree in
places; these are the choices made here):

* Every :meth:`step` is one trained epoch, in both phases, including epochs
  whose weights are later rolled back. The run ends after ``max_epochs``
  epochs; a window that would pass the end is cut there, and its last epoch
  is judged like any window end (so a final improvement is still saved).
* A loss is *bad* when it is NaN or infinite.
* Phase 1 starts at ``initial_lr``. An epoch whose loss is bad or greater
  than L* halves the LR and returns RESTORE_INITIAL (reload theta_0 and a
  fresh optimizer); L* is reset to the initial loss, because the reference
  must belong to the restored model (without the reset phase 1 could never
  end), and the counter restarts. Otherwise (L <= L*) L* := L and one more
  epoch counts; after ``phase1_patience`` such epochs in a row the core
  returns SAVE_BEST, doubles the LR, sets the patience p := 1 and enters
  phase 2.
* Phase 2 trains in windows of w(p) epochs at one LR: w = p + 1 for
  ``window="text"`` (Sections 2 and 4, the default) or w = p for
  ``window="pseudocode"`` (Algorithm 1). Only the last epoch of a window is
  judged: L < L* (strict) saves the best, doubles the LR and resets p := 1;
  otherwise a first try earns one more window at the same LR (the paper's
  optimistic second chance), and a failed second try halves the LR and
  doubles p, keeping the weights.
* A bad loss at any epoch of phase 2 returns RESTORE_BEST (reload weights and
  optimizer state of the best checkpoint), halves the LR, doubles p and
  starts a fresh window: the weights cannot recover, so waiting wastes epochs.
* The action of the final epoch is returned like any other, so a caller that
  ends on a bad loss still gets usable weights back.

Options, all off by default (off is the paper); none has a value to tune:

===========================  ====================================================
option                       what changes in phase 2
===========================  ====================================================
``collapse_is_divergence``   a finite loss >= J(theta_0) counts as bad. A network
                             whose ReLUs died reports a finite loss near
                             ln(classes) forever; the paper's rule would halve the
                             LR without ever rolling back.
``restore_on_decrease``      a failed second try also returns RESTORE_BEST.
``restore_if_worse``         a failed second try returns RESTORE_BEST only when
                             the judged loss is worse than L* by more than
                             :data:`SIGNIFICANT` (1 %) of L*: progress made at a
                             higher LR whose last epoch was merely noisy is kept.
                             Excludes ``restore_on_decrease``.
``significant_gain``         a window's end is a gain only when it beats L* by
                             more than :data:`SIGNIFICANT` of L*, so that noise
                             alone does not double the LR.
``judge="mean"``             a window is judged by the mean loss of its epochs,
                             not its last epoch (``"last"``, the paper); L* is
                             then the judged mean of the best window.
===========================  ====================================================

Phase 1 is the paper's under every option; its patience is
``phase1_patience`` (10 in the paper).
"""

from __future__ import annotations

import math
from enum import Enum

__all__ = ["AALR", "Action", "WINDOWS", "JUDGES", "SIGNIFICANT"]

WINDOWS = ("text", "pseudocode")
JUDGES = ("last", "mean")
# The fraction of L* that ``significant_gain`` and ``restore_if_worse`` ask for. Fixed once,
# before any benchmark was run (BENCHMARKS.md, "AALR ablation"), and the same for every
# model and dataset: a constant of the method, not a knob.
SIGNIFICANT = 0.01


class Action(str, Enum):
    """What the caller does with the weights after an epoch."""

    CONTINUE = "continue"
    SAVE_BEST = "save_best"  # snapshot weights + optimizer state as the best
    RESTORE_BEST = "restore_best"  # reload the best snapshot, then apply the new LR
    RESTORE_INITIAL = "restore_initial"  # reload theta_0 and a fresh optimizer, new LR


def is_bad(loss: float) -> bool:
    """NaN or infinite: the weights that produced it cannot be trained further."""
    return not math.isfinite(loss)


class AALR:
    """The AALR state machine; see the module docstring for every decision."""

    _CONFIG = ("max_epochs", "initial_lr", "phase1_patience", "window",
               "collapse_is_divergence", "restore_on_decrease", "restore_if_worse", "significant_gain", "judge")
    _STATE = ("lr", "epoch", "phase", "patience", "best_loss", "initial_loss",
              "phase1_count", "window_epochs", "window_loss_sum", "second_try", "started")
    # Keys that states saved before they existed lack: the value that behaves as those states did.
    _ADDED = {"restore_if_worse": False, "significant_gain": False, "judge": "last", "window_loss_sum": 0.0}

    def __init__(self, max_epochs: int, initial_lr: float = 0.1, phase1_patience: int = 10,
                 window: str = "text", collapse_is_divergence: bool = False,
                 restore_on_decrease: bool = False, restore_if_worse: bool = False,
                 significant_gain: bool = False, judge: str = "last"):
        if isinstance(max_epochs, bool) or not isinstance(max_epochs, int) or max_epochs < 1:
            raise ValueError(f"max_epochs must be an integer >= 1, got {max_epochs!r}")
        if not (isinstance(initial_lr, (int, float)) and math.isfinite(initial_lr) and initial_lr > 0):
            raise ValueError(f"initial_lr must be a finite number > 0, got {initial_lr!r}")
        if isinstance(phase1_patience, bool) or not isinstance(phase1_patience, int) or phase1_patience < 1:
            raise ValueError(f"phase1_patience must be an integer >= 1, got {phase1_patience!r}")
        if window not in WINDOWS:
            raise ValueError(f"window must be one of {', '.join(WINDOWS)}; got {window!r}")
        if judge not in JUDGES:
            raise ValueError(f"judge must be one of {', '.join(JUDGES)}; got {judge!r}")
        if restore_on_decrease and restore_if_worse:
            raise ValueError("restore_on_decrease (always reload the best on a halving) and restore_if_worse "
                             "(only when the loss is worse) exclude each other; choose one")
        self.max_epochs = max_epochs
        self.initial_lr = float(initial_lr)
        self.phase1_patience = phase1_patience
        self.window = window
        self.collapse_is_divergence = bool(collapse_is_divergence)
        self.restore_on_decrease = bool(restore_on_decrease)
        self.restore_if_worse = bool(restore_if_worse)
        self.significant_gain = bool(significant_gain)
        self.judge = judge

        self.lr = self.initial_lr
        self.epoch = 0  # epochs trained so far, rolled-back ones included
        self.phase = 1
        self.patience = 1  # p; meaningful in phase 2
        self.best_loss = math.nan  # L*
        self.initial_loss = math.nan  # J(theta_0)
        self.phase1_count = 0  # phase 1: epochs in a row that did not worsen the loss
        self.window_epochs = 0  # phase 2: epochs trained in the current window
        self.window_loss_sum = 0.0  # phase 2: their losses added up (judge="mean")
        self.second_try = False  # phase 2: the current window is the second chance
        self.started = False

    # ------------------------------------------------------------------ views
    @property
    def finished(self) -> bool:
        """True once ``max_epochs`` epochs were trained."""
        return self.epoch >= self.max_epochs

    @property
    def window_length(self) -> int:
        """w(p): the epochs of one phase-2 window at patience p."""
        return self.patience + 1 if self.window == "text" else self.patience

    # ------------------------------------------------------------------ steps
    def start(self, initial_loss: float) -> None:
        """Record J(theta_0), the untrained model's loss, as the first L*."""
        if self.started:
            raise RuntimeError("AALR.start() was already called")
        self.initial_loss = float(initial_loss)
        self.best_loss = self.initial_loss
        self.started = True

    def step(self, loss: float) -> Action:
        """Take one trained epoch's loss; return what to do with the weights.

        Afterwards :attr:`lr` is the LR for the next epoch.
        """
        if not self.started:
            raise RuntimeError("call AALR.start(initial_loss) before step()")
        if self.finished:
            raise RuntimeError(f"the run already trained its {self.max_epochs} epochs")
        loss = float(loss)
        self.epoch += 1
        if self.phase == 1:
            return self._phase1(loss)
        return self._phase2(loss)

    def _phase1(self, loss: float) -> Action:
        if is_bad(loss) or loss > self.best_loss:
            self.lr /= 2
            self.best_loss = self.initial_loss
            self.phase1_count = 0
            return Action.RESTORE_INITIAL
        self.best_loss = loss
        self.phase1_count += 1
        if self.phase1_count < self.phase1_patience:
            return Action.CONTINUE
        self.phase = 2
        self.lr *= 2
        self._new_window(patience=1)
        return Action.SAVE_BEST

    def _phase2(self, loss: float) -> Action:
        self.window_epochs += 1
        self.window_loss_sum += loss
        collapsed = self.collapse_is_divergence and loss >= self.initial_loss
        if is_bad(loss) or collapsed:
            self.lr /= 2
            self._new_window(patience=self.patience * 2)
            return Action.RESTORE_BEST
        if self.window_epochs < self.window_length and not self.finished:
            return Action.CONTINUE
        judged = self.window_loss_sum / self.window_epochs if self.judge == "mean" else loss
        if self._is_gain(judged):
            self.best_loss = judged
            self.lr *= 2
            self._new_window(patience=1)
            return Action.SAVE_BEST
        if not self.second_try:
            self.window_epochs, self.window_loss_sum = 0, 0.0
            self.second_try = True
            return Action.CONTINUE
        worse = judged > self.best_loss + SIGNIFICANT * abs(self.best_loss)
        self.lr /= 2
        self._new_window(patience=self.patience * 2)
        if self.restore_on_decrease or (self.restore_if_worse and worse):
            return Action.RESTORE_BEST
        return Action.CONTINUE

    def _is_gain(self, judged: float) -> bool:
        """Whether a window's judged loss beats L* (by SIGNIFICANT of it, with ``significant_gain``)."""
        margin = SIGNIFICANT * abs(self.best_loss) if self.significant_gain else 0.0
        return judged < self.best_loss - margin

    def _new_window(self, patience: int) -> None:
        self.patience = patience
        self.window_epochs, self.window_loss_sum = 0, 0.0
        self.second_try = False

    # ------------------------------------------------------------ persistence
    def state_dict(self) -> dict:
        """A JSON-serializable snapshot of the configuration and the state."""
        return {name: getattr(self, name) for name in self._CONFIG + self._STATE}

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict`'s output; future decisions are unchanged."""
        state = {**self._ADDED, **state}  # a state saved before an option existed runs as it did then
        missing = [k for k in self._CONFIG + self._STATE if k not in state]
        if missing:
            raise ValueError(f"AALR state is missing {', '.join(missing)}")
        fresh = AALR(**{k: state[k] for k in self._CONFIG})  # validates the configuration
        self.__dict__.update(fresh.__dict__)
        for name in self._STATE:
            setattr(self, name, state[name])
        self.lr = float(self.lr)
        self.best_loss = float(self.best_loss)
        self.initial_loss = float(self.initial_loss)
        self.window_loss_sum = float(self.window_loss_sum)

    @classmethod
    def from_state_dict(cls, state: dict) -> "AALR":
        ctl = cls(max_epochs=state["max_epochs"])
        ctl.load_state_dict(state)
        return ctl

    def __repr__(self) -> str:
        return (f"AALR(epoch={self.epoch}/{self.max_epochs}, phase={self.phase}, lr={self.lr:g}, "
                f"patience={self.patience}, best_loss={self.best_loss:.6g})")
