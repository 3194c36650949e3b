"""AALR for any PyTorch training loop.

:class:`AALRController` applies the decisions of :class:`aalr_ray.core.AALR`
to a model and an optimizer: it keeps theta_0 (during phase 1) and the best
checkpoint (during phase 2), reloads them when the core says so, and sets the
LR on every param group. It follows the contract of ``torch.optim``'s LR
schedulers: ``step(loss)`` once per epoch, ``get_last_lr()``,
``state_dict()``/``load_state_dict()``.

Example::

    model = Net()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    aalr = AALRController(model, optimizer, max_epochs=100)
    aalr.start(measure_loss(model, train_batches(), loss_fn))   # J(theta_0)
    while not aalr.finished:
        loss = train_epoch(model, optimizer, train_batches(), loss_fn)
        aalr.step(loss)          # may reload weights; sets the next epoch's LR
    aalr.finish()                # final="best" reloads the best checkpoint

A typical LR per epoch (phase 1 needs 10 epochs that do not worsen the loss;
then the LR doubles while the loss improves, gets a second window when it
does not, and halves after the second failure)::

    epochs 1-10   0.1     phase 1
    epochs 11-12  0.2     improved -> double
    epochs 13-14  0.4     no gain, second try
    epochs 15-16  0.4     no gain again -> halve, patience 2
    epochs 17-19  0.2     improved -> double ...

Only the memory of one extra model + optimizer state is used: theta_0 is
dropped when phase 1 ends, when the first best checkpoint is taken.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path

import torch

from .core import AALR, Action
from .files import atomic_open
# The epoch loops live in loops; the README's example imports them from here.
from .loops import measure_loss, train_epoch  # noqa: F401

__all__ = ["AALRController", "train_epoch", "measure_loss", "FINALS", "SNAPSHOT_DEVICES", "atomic_torch_save"]

FINALS = ("last", "best")
# Where the snapshots live: "same" = the model's device; "cpu" = host memory (see _snapshot).
SNAPSHOT_DEVICES = ("same", "cpu")


def atomic_torch_save(obj, path: str | os.PathLike) -> None:
    """``torch.save`` through :func:`aalr_ray.files.atomic_open`: a process killed
    mid-write leaves the previous file, never a truncated one."""
    with atomic_open(path, "wb") as stream:
        torch.save(obj, stream)


def _snapshot(model: torch.nn.Module, optimizer: torch.optim.Optimizer, on_host: bool = False) -> dict:
    """A frozen copy of the weights and optimizer state: on their device, or ``on_host`` in CPU memory."""
    # state_dict() returns live references; copy so later steps cannot change the snapshot.
    if on_host:
        return {"model": {k: _host_copy(v) for k, v in model.state_dict().items()},
                "optimizer": _host_copy(optimizer.state_dict())}
    return {
        "model": {k: v.detach().clone() for k, v in model.state_dict().items()},
        "optimizer": copy.deepcopy(optimizer.state_dict()),
    }


def _host_copy(item):
    """``item`` (a tensor, or a state dict's nesting of them) copied into CPU memory.

    A CUDA tensor goes into page-locked (pinned) memory with a non-blocking copy:
    the GPU's copy engine moves it while the next epoch computes. Everything the
    GPU does later, the weight updates included, is queued behind the copy on
    the same stream, so the copy reads the weights as they were; only the host
    must not read the copy before it lands (AALRController._settle).
    """
    if isinstance(item, torch.Tensor):
        pin = item.is_cuda  # pinned memory needs CUDA and only speeds copies from a GPU
        host = torch.empty(item.shape, dtype=item.dtype, pin_memory=pin)
        return host.copy_(item.detach(), non_blocking=pin)
    if isinstance(item, dict):
        return {k: _host_copy(v) for k, v in item.items()}
    if isinstance(item, (list, tuple)):
        return type(item)(_host_copy(v) for v in item)
    return copy.deepcopy(item)


def snapshot_nbytes(snapshot: dict | None) -> int:
    """Bytes held by the tensors of a snapshot (for the memory benchmark)."""
    if snapshot is None:
        return 0
    total = 0
    stack = [snapshot]
    while stack:
        item = stack.pop()
        if isinstance(item, torch.Tensor):
            total += item.numel() * item.element_size()
        elif isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, (list, tuple)):
            stack.extend(item)
    return total


class AALRController:
    """Drive a model and optimizer with AALR, one :meth:`step` per epoch.

    Args:
        model, optimizer: what to train. The LR of every param group is set
            to ``core.lr`` times the group's ratio to the first group at
            construction, so per-group LR ratios are kept.
        max_epochs, initial_lr, phase1_patience, window,
        collapse_is_divergence, restore_on_decrease, restore_if_worse,
        significant_gain, judge: passed to :class:`aalr_ray.core.AALR`
            (the paper's values by default).
        final: ``"last"`` keeps the last weights after :meth:`finish`;
            ``"best"`` reloads the best checkpoint.
        best_path: keep the best checkpoint in this file instead of memory
            (for models whose second copy does not fit on the device).
        snapshot_device: where theta_0 and the best snapshot are held:
            ``"same"`` (default) on the model's device; ``"cpu"`` in host
            memory (pinned for a model on a GPU, copied without blocking), so
            that trials sharing a GPU do not each hold two extra copies there.
            A restore copies them back to the model's device. The format of
            :meth:`state_dict` is the same either way.
    """

    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, max_epochs: int, *,
                 initial_lr: float = 0.1, phase1_patience: int = 10, window: str = "text",
                 collapse_is_divergence: bool = False, restore_on_decrease: bool = False,
                 restore_if_worse: bool = False, significant_gain: bool = False, judge: str = "last",
                 final: str = "last", best_path: str | os.PathLike | None = None,
                 snapshot_device: str = "same"):
        if final not in FINALS:
            raise ValueError(f"final must be one of {', '.join(FINALS)}; got {final!r}")
        if snapshot_device not in SNAPSHOT_DEVICES:
            raise ValueError(f"snapshot_device must be one of {', '.join(SNAPSHOT_DEVICES)}; got {snapshot_device!r}")
        self.core = AALR(max_epochs, initial_lr=initial_lr, phase1_patience=phase1_patience,
                         window=window, collapse_is_divergence=collapse_is_divergence,
                         restore_on_decrease=restore_on_decrease, restore_if_worse=restore_if_worse,
                         significant_gain=significant_gain, judge=judge)
        self.model = model
        self.optimizer = optimizer
        self.final = final
        self.best_path = Path(best_path) if best_path is not None else None
        self.snapshot_device = snapshot_device
        # A CUDA event after the last non-blocking copies into host snapshots, until they land.
        self._copies_in_flight = None
        reference = optimizer.param_groups[0]["lr"]
        if not reference > 0:
            raise ValueError(f"the optimizer's first param group needs an LR > 0 to keep ratios, got {reference!r}")
        self.lr_ratios = [group["lr"] / reference for group in optimizer.param_groups]
        self._initial: dict | None = None  # theta_0 + fresh optimizer state, phase 1 only
        self._best: dict | None = None  # in memory unless best_path is set
        self._best_saved = False
        self.last_action: Action | None = None
        self._apply_lr()

    # -------------------------------------------------------------- the loop
    def start(self, initial_loss: float) -> None:
        """Remember theta_0 and the fresh optimizer; L* := ``initial_loss``."""
        self.core.start(initial_loss)
        self._initial = self._take_snapshot()
        self._apply_lr()

    def step(self, loss: float) -> Action:
        """Feed one epoch's loss; perform the core's action; set the next LR."""
        action = self.core.step(loss)
        if action is Action.SAVE_BEST:
            self._save_best()
            self._initial = None  # phase 1 is over: theta_0 is never reloaded again
        elif action is Action.RESTORE_BEST:
            self._load(self._load_best())
        elif action is Action.RESTORE_INITIAL:
            self._load(self._initial)
        self._apply_lr()
        self.last_action = action
        return action

    def finish(self) -> bool:
        """With ``final="best"``, reload the best checkpoint (if phase 2 was
        reached); return whether the weights changed."""
        if self.final == "best" and self.has_best:
            self._load(self._load_best())
            self._apply_lr()
            return True
        return False

    # ------------------------------------------------------------------ views
    def get_last_lr(self) -> list[float]:
        """The LR of each param group, as torch's LR schedulers report it."""
        return [group["lr"] for group in self.optimizer.param_groups]

    @property
    def lr(self) -> float:
        return self.core.lr

    @property
    def finished(self) -> bool:
        return self.core.finished

    @property
    def epoch(self) -> int:
        return self.core.epoch

    @property
    def phase(self) -> int:
        return self.core.phase

    @property
    def patience(self) -> int:
        return self.core.patience

    @property
    def best_loss(self) -> float:
        return self.core.best_loss

    @property
    def has_best(self) -> bool:
        return self._best_saved

    def snapshot_nbytes(self) -> int:
        """Bytes of weights and optimizer state held in memory besides the live ones."""
        return snapshot_nbytes(self._initial) + snapshot_nbytes(self._best)

    # ---------------------------------------------------------- persistence
    def state_dict(self) -> dict:
        """Core state + snapshots; save it with ``torch.save`` beside the model's.

        The snapshots are included even with ``best_path`` so that a checkpoint
        is self-contained (it may be moved to other storage before a resume).
        """
        self._settle()  # the caller serialises the snapshots: host copies must have landed
        return {
            "core": self.core.state_dict(),
            "lr_ratios": list(self.lr_ratios),
            "final": self.final,
            "initial": self._initial,
            "best": self._load_best() if self.has_best else None,
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict`; call it after loading the optimizer's state."""
        self.core.load_state_dict(state["core"])
        self.lr_ratios = list(state["lr_ratios"])
        self.final = state["final"]
        self._initial = state["initial"]
        self._best, self._best_saved = None, False
        if state["best"] is not None:
            self._store_best(state["best"])
        self._apply_lr()  # a loaded optimizer state carries the LR it was saved with

    # -------------------------------------------------------------- helpers
    def _apply_lr(self) -> None:
        for group, ratio in zip(self.optimizer.param_groups, self.lr_ratios):
            group["lr"] = self.core.lr * ratio

    def _save_best(self) -> None:
        self._store_best(self._take_snapshot())

    def _take_snapshot(self) -> dict:
        on_host = self.snapshot_device == "cpu"
        snapshot = _snapshot(self.model, self.optimizer, on_host=on_host)
        if on_host and torch.cuda.is_available():
            parameter = next(self.model.parameters(), None)
            if parameter is not None and parameter.is_cuda:
                self._copies_in_flight = torch.cuda.current_stream(parameter.device).record_event()
        return snapshot

    def _settle(self) -> None:
        """Wait for the non-blocking copies into host snapshots, before the host reads them."""
        if self._copies_in_flight is not None:
            self._copies_in_flight.synchronize()
            self._copies_in_flight = None

    def _store_best(self, snapshot: dict) -> None:
        if self.best_path is None:
            self._best = snapshot
        else:
            self._settle()
            atomic_torch_save(snapshot, self.best_path)
        self._best_saved = True

    def _load_best(self) -> dict:
        if self.best_path is None:
            return self._best
        return torch.load(self.best_path, map_location="cpu", weights_only=True)

    def _load(self, snapshot: dict | None) -> None:
        if snapshot is None:
            raise RuntimeError("AALR has no snapshot to restore: was start() called?")
        self._settle()
        self.model.load_state_dict(snapshot["model"])  # copies into the parameters, onto their device
        # Optimizer.load_state_dict replaces (not merges) the per-parameter state but keeps
        # the given tensors when dtype and device already match (Tensor.to returns self), and
        # every optimizer then updates its state in place (SGD's momentum, Adam's moments and
        # step): loading the snapshot itself would let training rewrite the kept snapshot, and
        # a second RESTORE_BEST would bring back that. So the optimizer gets its own copy.
        self.optimizer.load_state_dict(copy.deepcopy(snapshot["optimizer"]))
