"""One training run: (model, dataset, method, seed, epochs, ...) -> a metrics row per epoch.

Reads top to bottom like the loop it is::

    run = TrainingRun(RunConfig(model="mnist1d-cnn", dataset="mnist1d", method="aalr", epochs=60))
    for row in run:              # one dict per trained epoch
        print(row["epoch"], row["lr"], row["test_acc"])
    run.summary()                # final metrics, after the method's finish() (aalr-robust: best weights)

A row's test metrics are those of the weights after the epoch's decision: after
a rollback, of the restored weights.

Determinism on CPU: the weights are initialised from ``seed``; each epoch's
data order and augmentation come from (seed, epoch) (the data module), and the
global torch RNG (dropout, random attack starts) is reseeded from
(seed, epoch) before every epoch. So a run resumed from
:meth:`TrainingRun.state_dict` at any epoch, in any process, continues bit for
bit, and a checkpoint needs no RNG state of its own.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from dataclasses import dataclass, field
from typing import Callable, Iterator

import torch

from .attacks import MODES as TRAINING_MODES
from .attacks import AttackConfig, fgsm_accuracy, make_inputs, pgd_accuracy
from .controller import measure_loss, train_epoch
from .core import is_bad
from .data import Data, load_dataset
from .methods import Method, build_method
from .models import build_model

__all__ = ["RunConfig", "TrainingRun", "TRAINING_MODES", "EPOCH_LOSSES", "ROBUST_EVAL_DEFAULTS",
           "resolve_device", "evaluate", "load_run_data"]

# What AALR (and plateau) judge: the mean training loss of the epoch (free; the
# paper's no-overhead claim) or a clean no-grad pass over the training set.
EPOCH_LOSSES = ("train-mean", "clean-pass")


@dataclass
class RunConfig:
    """Everything that defines a run; JSON-serializable, so it travels in Tune configs."""

    model: str
    dataset: str
    method: str
    epochs: int
    seed: int = 0
    batch_size: int = 128
    # 5e-4 is what the paper's baselines used (Cutout, WRN, VGG code bases);
    # every method gets the same value so that only the LR rule differs.
    weight_decay: float = 5e-4
    augmentation: str = "none"
    # "natural", or an attack that replaces each batch's inputs before the
    # update: "fgsm:eps=8/255", "pgd:eps=8/255,alpha=2/255,steps=7" or the same
    # as a mapping (aalr_ray.attacks.AttackConfig). AALR then judges the
    # adversarial training loss, and J(theta_0) is measured under the attack.
    training: str | dict = "natural"
    # FGSM and PGD test accuracy per epoch: None = on for adversarial training
    # (at its eps), off for natural; a mapping turns it on and overrides
    # ROBUST_EVAL_DEFAULTS.
    robust_eval: dict | None = None
    epoch_loss: str = "train-mean"
    device: str = "auto"
    data_dir: str | None = None
    smoke: bool = False
    train_limit: int | None = None  # keep only the first N training / test examples
    test_limit: int | None = None
    method_options: dict = field(default_factory=dict)
    # One torch thread per run: two 2-thread runs on a 2-core machine are many
    # times slower than two 1-thread runs. 0 leaves torch's default.
    threads: int = 1

    def __post_init__(self):
        for name in ("epochs", "batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        self.attack  # validates the training mode  # noqa: B018
        self.robust_eval_settings  # noqa: B018
        if self.epoch_loss not in EPOCH_LOSSES:
            raise ValueError(f"unknown epoch_loss {self.epoch_loss!r}; choose from: {', '.join(EPOCH_LOSSES)}")

    @property
    def attack(self) -> AttackConfig:
        return AttackConfig.parse(self.training)

    @property
    def robust_eval_settings(self) -> dict | None:
        """The robust evaluation actually run, or None."""
        attack = self.attack
        if self.robust_eval is None and attack.mode == "natural":
            return None
        unknown = sorted(set(self.robust_eval or {}) - set(ROBUST_EVAL_DEFAULTS))
        if unknown:
            raise ValueError(f"unknown robust_eval option(s) {', '.join(unknown)}; "
                             f"choose from: {', '.join(ROBUST_EVAL_DEFAULTS)}")
        settings = dict(ROBUST_EVAL_DEFAULTS)
        if attack.mode != "natural":
            settings["eps"] = attack.eps
        settings.update(self.robust_eval or {})
        if settings["alpha"] is None:
            settings["alpha"] = settings["eps"] / 4  # Madry et al.: 2/255 steps at 8/255
        AttackConfig(mode="pgd", eps=settings["eps"], alpha=settings["alpha"], steps=settings["pgd_steps"])
        return settings

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# Robust accuracy as RobustBench and Madry et al. report it: white-box, l-inf,
# plain FGSM and PGD-k with a random start, on the first ``subset`` test
# examples (None: all) to keep per-epoch evaluation affordable.
ROBUST_EVAL_DEFAULTS = {"eps": 8 / 255, "alpha": None, "pgd_steps": 10, "subset": 1000}


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def epoch_seed(seed: int, epoch: int) -> int:
    # Distinct, reproducible streams per (seed, epoch); epoch 0 is the J(theta_0) pass.
    return (seed * 1_000_003 + epoch) % (2**63)


@torch.no_grad()
def evaluate(model: torch.nn.Module, batches) -> tuple[float, float]:
    """(mean cross-entropy, accuracy in [0, 1]) of ``model`` in eval mode."""
    was_training = model.training
    model.eval()
    total_loss = torch.zeros(())
    correct = torch.zeros((), dtype=torch.long)
    count = 0
    for x, y in batches:
        logits = model(x)
        total_loss = total_loss.to(logits.device) + torch.nn.functional.cross_entropy(
            logits, y, reduction="sum")
        correct = correct.to(logits.device) + (logits.argmax(1) == y).sum()
        count += y.shape[0]
    model.train(was_training)
    return float(total_loss) / count, float(correct) / count


def load_run_data(config: RunConfig) -> Data:
    """The dataset ``config`` names, as :class:`TrainingRun` loads it when given none."""
    return load_dataset(config.dataset, data_dir=config.data_dir, augmentation=config.augmentation,
                        smoke=config.smoke, train_limit=config.train_limit, test_limit=config.test_limit)


class TrainingRun:
    """A run you iterate over, one metrics row per epoch; checkpointable at any epoch.

    Args:
        config: what to train.
        data: the dataset (default: loaded from ``config``, :func:`load_run_data`).

    Data-parallel hooks (:mod:`aalr_ray.distributed` sets them; the defaults
    are a single process):

    * ``shard=(rank, world_size)``: train on examples ``rank::world_size`` of
      every global batch (default None: all of them). A sharded epoch never
      stops early at a bad loss (every rank must take the same number of steps).
    * ``reduce_loss(this shard's mean loss)`` -> the mean over every rank's
      examples, applied to the epoch loss and J(theta_0) (default None: as is).
    * ``wrap_model(model)`` -> the module the training steps run through, e.g.
      ``DistributedDataParallel`` around the model (default None: the model).
      Adversarial inputs are then made through the bare model: DDP expects one
      backward per forward.

    They are kept as the attributes ``shard``, ``reduce_loss`` and ``train_model``.
    """

    def __init__(self, config: RunConfig, data: Data | None = None, *,
                 shard: tuple[int, int] | None = None,
                 reduce_loss: Callable[[float], float] | None = None,
                 wrap_model: Callable[[torch.nn.Module], torch.nn.Module] | None = None):
        if shard is not None:
            rank, world_size = shard
            if not 0 <= rank < world_size:
                raise ValueError(f"shard must be (rank, world_size) with 0 <= rank < world_size, got {shard!r}")
        self.config = config
        if config.threads and config.threads > 0:
            torch.set_num_threads(config.threads)
        self.device = resolve_device(config.device)
        self.data = data or load_run_data(config)
        spec = self.data.spec
        torch.manual_seed(config.seed)
        self.model = build_model(config.model, spec.num_classes, spec.input_shape,
                                 mean=spec.mean, std=spec.std).to(self.device)
        self.steps_per_epoch = self.data.num_batches("train", config.batch_size)
        self.method: Method = build_method(
            config.method, self.model, epochs=config.epochs, steps_per_epoch=self.steps_per_epoch,
            model_name=config.model, weight_decay=config.weight_decay, options=config.method_options)
        self.loss_fn = torch.nn.functional.cross_entropy
        # Adversarial training replaces a batch's inputs before the update,
        # and J(theta_0) is measured the same way, so AALR compares like with
        # like. None means natural training.
        attack = make_inputs(config.attack)
        self.robust_eval = config.robust_eval_settings
        self.epoch = 0
        self.initial_loss: float | None = None
        # The last epoch's test metrics; summary() reuses them while the
        # weights are the ones they were measured on.
        self._last_eval: tuple[int, dict] | None = None
        # Data-parallel hooks (see the class docstring); None for a single process.
        self.shard: tuple[int, int] | None = tuple(shard) if shard is not None else None
        self.reduce_loss: Callable[[float], float] | None = reduce_loss
        # The module the training steps run through.
        self.train_model: torch.nn.Module = self.model if wrap_model is None else wrap_model(self.model)
        if attack is not None and self.train_model is not self.model:
            bare = self.model
            self.make_inputs = lambda _model, x, y: attack(bare, x, y)
        else:
            self.make_inputs = attack

    # ---------------------------------------------------------------- data
    def train_batches(self, epoch: int):
        batches = self.data.batches("train", self.config.batch_size, seed=self.config.seed,
                                    epoch=epoch, device=self.device)
        if self.shard is None:
            return batches
        rank, world_size = self.shard
        return ((x[rank::world_size], y[rank::world_size]) for x, y in batches)

    def _reduced(self, loss: float) -> float:
        return loss if self.reduce_loss is None else self.reduce_loss(loss)

    def test_batches(self):
        return self.data.batches("test", self.config.batch_size, seed=self.config.seed,
                                 epoch=0, device=self.device)

    def _aalr_loss(self, train_loss: float, epoch: int) -> float:
        if self.config.epoch_loss == "train-mean" or is_bad(train_loss):
            return train_loss
        return self._reduced(measure_loss(self.model, self.train_batches(epoch), self.loss_fn,
                                          train_mode=False, make_inputs=self.make_inputs))

    # ---------------------------------------------------------------- loop
    def start(self) -> None:
        """Measure J(theta_0) and hand it to the method (AALR's first L*)."""
        torch.manual_seed(epoch_seed(self.config.seed, 0))
        self.initial_loss = self._reduced(measure_loss(self.model, self.train_batches(0), self.loss_fn,
                                                       train_mode=self.config.epoch_loss == "train-mean",
                                                       make_inputs=self.make_inputs))
        self.method.start(self.initial_loss)

    def train_one_epoch(self) -> dict:
        """Train, let the method decide, evaluate; return the epoch's metrics row."""
        if self.initial_loss is None:
            self.start()
        epoch = self.epoch + 1
        torch.manual_seed(epoch_seed(self.config.seed, epoch))
        method = self.method
        method.train_mode()
        lrs = [method.current_lr()]  # the LR of each batch, for per-batch schedules

        started = time.perf_counter()
        # A sharded epoch never stops early at a bad loss: every rank must take the same
        # number of DDP steps; the reduced loss is NaN if any rank's was.
        train_loss = self._reduced(train_epoch(
            self.train_model, method.optimizer, self.train_batches(epoch), self.loss_fn,
            make_inputs=self.make_inputs,
            after_batch=lambda: (method.after_batch(), lrs.append(method.current_lr())),
            check_every=sys.maxsize if self.shard is not None else None))
        decision = method.after_epoch(self._aalr_loss(train_loss, epoch))
        epoch_s = time.perf_counter() - started

        started = time.perf_counter()
        eval_model = method.eval_model(self.model, lambda: self.train_batches(epoch))
        test_loss, test_acc = evaluate(eval_model, self.test_batches())
        robust = self._robust_accuracy(eval_model)
        eval_s = time.perf_counter() - started

        self.epoch = epoch
        self._last_eval = (epoch, {"test_loss": test_loss, "test_acc": test_acc, **robust})
        used = lrs[:-1] or lrs  # the last entry is the LR after the final step
        row = {
            "epoch": epoch,
            # A constant LR is reported exactly, not as a rounded mean.
            "lr": used[0] if min(used) == max(used) else sum(used) / len(used),
            "train_loss": train_loss,
            "test_loss": test_loss,
            "test_acc": test_acc,
            "epoch_s": epoch_s,
            "eval_s": eval_s,
            "bad_loss": is_bad(train_loss),  # NaN/inf: the flag a diverged run carries
            **robust,
        }
        row.update(decision)
        return row

    def _robust_accuracy(self, model: torch.nn.Module) -> dict:
        settings = self.robust_eval
        if settings is None:
            return {}
        subset = settings["subset"]
        # The same random starts at every epoch and in summary(): robust
        # accuracy then moves only with the weights.
        torch.manual_seed(epoch_seed(self.config.seed, 0) + 1)
        return {
            "fgsm_acc": fgsm_accuracy(model, self.test_batches(), settings["eps"], limit=subset),
            "pgd_acc": pgd_accuracy(model, self.test_batches(), settings["eps"], settings["alpha"],
                                    settings["pgd_steps"], limit=subset),
        }

    def __iter__(self) -> Iterator[dict]:
        while self.epoch < self.config.epochs:
            yield self.train_one_epoch()
        self.finish()

    def finish(self) -> None:
        """The method's end of run (aalr-robust reloads its best weights)."""
        if self.method.finish():
            self._last_eval = None

    def summary(self) -> dict:
        """Test metrics of the weights the run ends with (after :meth:`finish`)."""
        if self._last_eval is not None and self._last_eval[0] == self.epoch:
            metrics = self._last_eval[1]  # the weights the last epoch was evaluated with
        else:
            eval_model = self.method.eval_model(self.model, lambda: self.train_batches(self.epoch))
            test_loss, test_acc = evaluate(eval_model, self.test_batches())
            metrics = {"test_loss": test_loss, "test_acc": test_acc, **self._robust_accuracy(eval_model)}
        return {f"final_{k}": v for k, v in metrics.items()}

    # --------------------------------------------------------- checkpoints
    def state_dict(self) -> dict:
        """Everything needed to continue bit for bit (safe for ``weights_only`` loading)."""
        return {
            "epoch": self.epoch,
            "initial_loss": self.initial_loss,
            "model": self.model.state_dict(),
            "method": self.method.state_dict(),
            "config": self.config.to_dict(),
        }

    def load_state_dict(self, state: dict) -> None:
        saved = {k: v for k, v in state["config"].items() if k not in ("device", "data_dir", "threads")}
        mine = {k: v for k, v in self.config.to_dict().items() if k in saved}
        if saved != mine:
            changed = sorted(k for k in saved if saved[k] != mine.get(k))
            raise ValueError(f"checkpoint belongs to a different run (differs in {', '.join(changed)})")
        self.model.load_state_dict(state["model"])
        self.method.load_state_dict(state["method"])
        self.epoch = int(state["epoch"])
        self.initial_loss = state["initial_loss"]

