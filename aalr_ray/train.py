"""One training run: (model, dataset, method, seed, epochs, ...) -> a metrics row per epoch.

Reads top to bottom like the loop it is::

    run = TrainingRun(RunConfig(model="mnist1d-cnn", dataset="mnist1d", method="aalr", epochs=60))
    for row in run:              # one dict per trained epoch
        print(row["epoch"], row["lr"], row["test_acc"])
    run.summary()                # final metrics, after the method's finish() (aalr-robust: best weights)

Determinism on CPU: the weights are initialised from ``seed``; each epoch's
data order and augmentation come from (seed, epoch) (the data module), and the
global torch RNG (dropout, random attack starts) is reseeded from
(seed, epoch) before every epoch. So a run resumed from
:meth:`TrainingRun.state_dict` at any epoch, in any process, continues bit for
bit, and a checkpoint needs no RNG state of its own.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from typing import Callable, Iterator

import torch

from .controller import measure_loss, train_epoch
from .core import is_bad
from .data import Data, load_dataset
from .methods import Method, build_method
from .models import build_model

__all__ = ["RunConfig", "TrainingRun", "TRAINING_MODES", "EPOCH_LOSSES", "resolve_device", "evaluate"]

TRAINING_MODES = ("natural",)  # the adversarial issue adds fgsm and pgd here
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
    training: str = "natural"
    epoch_loss: str = "train-mean"
    device: str = "auto"
    data_dir: str | None = None
    smoke: bool = False
    method_options: dict = field(default_factory=dict)
    # One torch thread per run: two 2-thread runs on a 2-core machine are many
    # times slower than two 1-thread runs. 0 leaves torch's default.
    threads: int = 1

    def __post_init__(self):
        for name in ("epochs", "batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.training not in TRAINING_MODES:
            raise ValueError(f"unknown training mode {self.training!r}; choose from: {', '.join(TRAINING_MODES)}")
        if self.epoch_loss not in EPOCH_LOSSES:
            raise ValueError(f"unknown epoch_loss {self.epoch_loss!r}; choose from: {', '.join(EPOCH_LOSSES)}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


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


class TrainingRun:
    """A run you iterate over, one metrics row per epoch; checkpointable at any epoch."""

    def __init__(self, config: RunConfig, data: Data | None = None):
        self.config = config
        if config.threads and config.threads > 0:
            torch.set_num_threads(config.threads)
        self.device = resolve_device(config.device)
        self.data = data or load_dataset(config.dataset, data_dir=config.data_dir,
                                         augmentation=config.augmentation, smoke=config.smoke)
        spec = self.data.spec
        torch.manual_seed(config.seed)
        self.model = build_model(config.model, spec.num_classes, spec.input_shape,
                                 mean=spec.mean, std=spec.std).to(self.device)
        self.steps_per_epoch = self.data.num_batches("train", config.batch_size)
        self.method: Method = build_method(
            config.method, self.model, epochs=config.epochs, steps_per_epoch=self.steps_per_epoch,
            model_name=config.model, weight_decay=config.weight_decay, options=config.method_options)
        self.loss_fn = torch.nn.functional.cross_entropy
        # The seam for adversarial training: replaces a batch's inputs before
        # the update, and is used for J(theta_0) too, so AALR compares like
        # with like. None means natural training.
        self.make_inputs: Callable | None = None
        self.epoch = 0
        self.initial_loss: float | None = None

    # ---------------------------------------------------------------- data
    def train_batches(self, epoch: int):
        return self.data.batches("train", self.config.batch_size, seed=self.config.seed,
                                 epoch=epoch, device=self.device)

    def test_batches(self):
        return self.data.batches("test", self.config.batch_size, seed=self.config.seed,
                                 epoch=0, device=self.device)

    def _aalr_loss(self, train_loss: float, epoch: int) -> float:
        if self.config.epoch_loss == "train-mean" or is_bad(train_loss):
            return train_loss
        return measure_loss(self.model, self.train_batches(epoch), self.loss_fn, train_mode=False,
                            make_inputs=self.make_inputs)

    # ---------------------------------------------------------------- loop
    def start(self) -> None:
        """Measure J(theta_0) and hand it to the method (AALR's first L*)."""
        torch.manual_seed(epoch_seed(self.config.seed, 0))
        self.initial_loss = measure_loss(self.model, self.train_batches(0), self.loss_fn,
                                         train_mode=self.config.epoch_loss == "train-mean",
                                         make_inputs=self.make_inputs)
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
        train_loss = train_epoch(self.model, method.optimizer, self.train_batches(epoch), self.loss_fn,
                                 make_inputs=self.make_inputs,
                                 after_batch=lambda: (method.after_batch(), lrs.append(method.current_lr())))
        decision = method.after_epoch(self._aalr_loss(train_loss, epoch))
        epoch_s = time.perf_counter() - started

        started = time.perf_counter()
        eval_model = method.eval_model(self.model, lambda: self.train_batches(epoch))
        test_loss, test_acc = evaluate(eval_model, self.test_batches())
        eval_s = time.perf_counter() - started

        self.epoch = epoch
        used = lrs[:-1] or lrs  # the last entry is the LR after the final step
        row = {
            "epoch": epoch,
            "lr": sum(used) / len(used),
            "train_loss": train_loss,
            "test_loss": test_loss,
            "test_acc": test_acc,
            "epoch_s": epoch_s,
            "eval_s": eval_s,
            "bad_loss": is_bad(train_loss),  # NaN/inf: the flag a diverged run carries
        }
        row.update(decision)
        return row

    def __iter__(self) -> Iterator[dict]:
        while self.epoch < self.config.epochs:
            yield self.train_one_epoch()
        self.method.finish()

    def summary(self) -> dict:
        """Test metrics of the weights the run ends with (after ``finish()``)."""
        eval_model = self.method.eval_model(self.model, lambda: self.train_batches(self.epoch))
        test_loss, test_acc = evaluate(eval_model, self.test_batches())
        return {"final_test_loss": test_loss, "final_test_acc": test_acc, "epochs": self.epoch}

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

