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

import contextlib
import dataclasses
import functools
import sys
import time
from dataclasses import dataclass, field
from typing import Callable, ContextManager, Iterator

import torch

from .attacks import MODES as TRAINING_MODES
from .attacks import AttackConfig, fgsm_accuracy, make_inputs, pgd_accuracy
from .controller import SNAPSHOT_DEVICES, measure_loss, train_epoch
from .loops import at_least_fp32
from .core import is_bad
from .data import AUGMENT_PLACES, Data, load_dataset
from .data.validation import check_fraction, hold_out
from .methods import Method, build_method
from .models import build_model

__all__ = ["RunConfig", "TrainingRun", "TRAINING_MODES", "EPOCH_LOSSES", "ROBUST_EVAL_DEFAULTS",
           "PRECISIONS", "CHANNELS_LAST", "RUN_SNAPSHOT_DEVICES", "resolve_device", "resolve_precision",
           "resolve_channels_last", "precision_choices", "cpu_bf16_autocast", "autocast_for", "evaluate",
           "load_run_data"]

# What AALR (and plateau) judge: the mean training loss of the epoch (free; the
# paper's no-overhead claim) or a clean no-grad pass over the training set.
EPOCH_LOSSES = ("train-mean", "clean-pass")
# RunConfig's choices of how a run computes (see its fields; resolved per device below).
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
CHANNELS_LAST = ("auto", "on", "off")
RUN_SNAPSHOT_DEVICES = ("auto", *SNAPSHOT_DEVICES)
_AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


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
    # Where augmentation runs (aalr_ray.data.AUGMENT_PLACES): "auto" = batched on
    # the GPU when the training split fits there, per example in DataLoader
    # workers on a CPU (as before this field existed, so old runs resume bit for bit).
    augment_on: str = "auto"
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
    # The arithmetic of the forward passes and losses (PRECISIONS; resolve_precision):
    # "auto" = bf16 on a CUDA GPU with native bf16, fp32 elsewhere (CPU runs are as before
    # this field). bf16 and fp16 run under torch.autocast, fp16 with a GradScaler; weights,
    # optimizer state and checkpoints stay fp32, and AALR judges an fp32 mean loss.
    precision: str = "auto"
    # The channels_last memory format (CHANNELS_LAST; resolve_channels_last): "auto" = on for
    # a model fed images (4-D batches) on CUDA, off otherwise; "on" wherever batches are 4-D.
    channels_last: str = "auto"
    # Where AALR holds theta_0 and its best snapshot (SNAPSHOT_DEVICES): "same" = the model's
    # device, "cpu" = host memory; "auto" = "same", except in a Ray trial holding a fraction of
    # a GPU (aalr_ray.trainable), where trials share the GPU's memory: "cpu".
    snapshot_device: str = "auto"
    data_dir: str | None = None
    smoke: bool = False
    train_limit: int | None = None  # keep only the first N training / test examples
    test_limit: int | None = None
    # A fraction (0, 0.5] of the training split held out by seed (aalr_ray.data.validation):
    # rows gain val_loss and val_acc, and searches select on them. None: train on all of it.
    # AALR itself keeps judging the training loss, as in the paper.
    validation: float | None = None
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
        if self.augment_on not in AUGMENT_PLACES:
            raise ValueError(f"unknown augment_on {self.augment_on!r}; choose from: {', '.join(AUGMENT_PLACES)}")
        if self.validation is not None:
            check_fraction(self.validation)
        if isinstance(self.channels_last, bool):  # YAML reads on/off as booleans
            self.channels_last = "on" if self.channels_last else "off"
        for name, choices in (("precision", PRECISIONS), ("channels_last", CHANNELS_LAST),
                              ("snapshot_device", RUN_SNAPSHOT_DEVICES)):
            if getattr(self, name) not in choices:
                raise ValueError(f"unknown {name} {getattr(self, name)!r}; choose from: {', '.join(choices)}")

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


# Config keys a checkpoint is not compared on (TrainingRun.load_state_dict): where the run
# runs (device, data_dir, threads) and how, without changing what it trains
# (channels_last: the same weights in another layout, whose kernels may round the last
# bits differently, as another device or thread count may; snapshot_device: AALR's
# snapshots in other memory). precision changes the numbers: it is compared, as resolved.
_NOT_THE_RUN = ("device", "data_dir", "threads", "channels_last", "snapshot_device", "precision")


# Robust accuracy as RobustBench and Madry et al. report it: white-box, l-inf,
# plain FGSM and PGD-k with a random start, on the first ``subset`` test
# examples (None: all) to keep per-epoch evaluation affordable.
ROBUST_EVAL_DEFAULTS = {"eps": 8 / 255, "alpha": None, "pgd_steps": 10, "subset": 1000}


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


@functools.cache
def cpu_bf16_autocast() -> bool:
    """Whether this CPU runs bf16 autocast: a tiny autocast matmul, tried once per process.

    A test of function, not of speed: with torch >= 2 every x86-64 CPU passes
    (oneDNN emulates bf16 where the CPU lacks AVX512-BF16 or AMX, and is then
    slower than fp32), so bf16 on a CPU is for checking a bf16 run on a laptop.
    A build or CPU without bf16 autocast fails it, and bf16 is refused there.
    """
    try:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            product = torch.ones(2, 2) @ torch.ones(2, 2)
    except (RuntimeError, TypeError, ValueError):
        return False
    return product.dtype == torch.bfloat16


def _cuda_bf16(device: torch.device) -> bool:
    """Native bf16 on this GPU (compute capability 8.0 and up: A100, H100, ...), not emulated."""
    with torch.cuda.device(device):
        try:
            return torch.cuda.is_bf16_supported(including_emulation=False)
        except TypeError:  # torch < 2.4 reports native support only
            return torch.cuda.is_bf16_supported()


def precision_choices(device: torch.device | str) -> tuple[str, ...]:
    """The precisions a run on ``device`` can take (fp16 needs CUDA: its GradScaler)."""
    device = torch.device(device)
    if device.type == "cuda":
        return ("auto", "fp32", "bf16", "fp16") if _cuda_bf16(device) else ("auto", "fp32", "fp16")
    if device.type == "cpu" and cpu_bf16_autocast():
        return ("auto", "fp32", "bf16")
    return ("auto", "fp32")


def resolve_precision(precision: str, device: torch.device | str) -> str:
    """What ``precision`` comes to on ``device``: "fp32", "bf16" or "fp16".

    "auto" is bf16 on a CUDA GPU with native bf16 and fp32 anywhere else, so
    a CPU run is what it was before precision existed. A precision the device
    cannot run is a ValueError of one line naming it and the device's choices.
    """
    device = torch.device(device)
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if device.type == "cuda" and (device.index or 0) >= gpus:  # asked for a GPU this machine lacks
        raise ValueError(f"device {str(device)!r} is not on this machine ({gpus} CUDA device(s)); "
                         "choose from: auto, cpu")
    choices = precision_choices(device)
    if precision not in choices:
        why = {"fp16": " (fp16 needs a CUDA GPU, for its GradScaler)",
               "bf16": f" (no bf16 autocast on this {'GPU' if device.type == 'cuda' else device.type})"}
        raise ValueError(f"precision {precision!r} cannot run on device {device}{why.get(precision, '')}; "
                         f"choose from: {', '.join(choices)}")
    if precision == "auto":
        return "bf16" if "bf16" in choices and device.type == "cuda" else "fp32"
    return precision


def autocast_for(precision: str, device: torch.device) -> Callable[[], ContextManager]:
    """The context of a forward pass and its loss at a resolved ``precision`` (nothing for fp32)."""
    dtype = _AUTOCAST_DTYPES.get(precision)
    if dtype is None:
        return contextlib.nullcontext
    return functools.partial(torch.autocast, torch.device(device).type, dtype=dtype)


def resolve_channels_last(channels_last: str, device: torch.device | str, model: torch.nn.Module,
                          input_shape: tuple[int, ...]) -> bool:
    """Whether a run uses the channels_last memory format (for 4-D batches only, the one it applies to).

    "auto": for a model with 2-D convolutions on CUDA, where cuDNN's kernels
    (tensor cores in bf16 most of all) are faster in it; not on a CPU, where
    oneDNN picks its own layouts. "on": wherever the examples are (C, H, W).
    """
    if len(input_shape) != 3 or channels_last == "off":
        return False
    if channels_last == "on":
        return True
    convolutional = any(isinstance(m, torch.nn.Conv2d) for m in model.modules())
    return convolutional and torch.device(device).type == "cuda"


def _grad_scaler(device: torch.device):
    """fp16's loss scaler, at torch's defaults (initial scale 2**16, halved on a skipped step)."""
    if hasattr(torch.amp, "GradScaler"):
        return torch.amp.GradScaler(device.type)
    return torch.cuda.amp.GradScaler()  # torch < 2.3


def epoch_seed(seed: int, epoch: int) -> int:
    # Distinct, reproducible streams per (seed, epoch); epoch 0 is the J(theta_0) pass.
    return (seed * 1_000_003 + epoch) % (2**63)


@torch.no_grad()
def evaluate(model: torch.nn.Module, batches, *,
             autocast: Callable[[], ContextManager] | None = None) -> tuple[float, float]:
    """(mean cross-entropy, accuracy in [0, 1]) of ``model`` in eval mode.

    ``autocast``: the forward passes' mixed precision (:func:`autocast_for`);
    the loss is taken and summed in fp32 whatever it is.
    """
    was_training = model.training
    model.eval()
    total_loss = torch.zeros(())
    correct = torch.zeros((), dtype=torch.long)
    count = 0
    for x, y in batches:
        with (autocast or contextlib.nullcontext)():
            logits = model(x)
        logits = at_least_fp32(logits)
        total_loss = total_loss.to(logits.device) + torch.nn.functional.cross_entropy(
            logits, y, reduction="sum")
        correct = correct.to(logits.device) + (logits.argmax(1) == y).sum()
        count += y.shape[0]
    model.train(was_training)
    return float(total_loss) / count, float(correct) / count


def load_run_data(config: RunConfig) -> Data:
    """The dataset ``config`` names, as :class:`TrainingRun` loads it when given none."""
    return load_dataset(config.dataset, data_dir=config.data_dir, augmentation=config.augmentation,
                        augment_on=config.augment_on, smoke=config.smoke, train_limit=config.train_limit,
                        test_limit=config.test_limit)


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
        # How the run computes, resolved for its device (refused before any data loads).
        self.precision = resolve_precision(config.precision, self.device)
        self.autocast = autocast_for(self.precision, self.device)
        # fp16's loss scaler; its state is in the checkpoint, so an fp16 resume is exact.
        self.scaler = _grad_scaler(self.device) if self.precision == "fp16" else None
        self.snapshot_device = "same" if config.snapshot_device == "auto" else config.snapshot_device
        self.data = data or load_run_data(config)
        spec = self.data.spec  # the whole training split's: the model is the same with or without validation
        # The held-out examples, evaluated after every epoch (None without validation).
        self.validation_data: Data | None = None
        if config.validation is not None:
            self.data, self.validation_data = hold_out(self.data, config.validation, config.seed)
        torch.manual_seed(config.seed)
        self.model = build_model(config.model, spec.num_classes, spec.input_shape,
                                 mean=spec.mean, std=spec.std).to(self.device)
        self.channels_last = resolve_channels_last(config.channels_last, self.device, self.model,
                                                   tuple(spec.input_shape))
        if self.channels_last:  # the 4-D weights (convolutions) change layout, not values or dtype
            self.model.to(memory_format=torch.channels_last)
        self.steps_per_epoch = self.data.num_batches("train", config.batch_size)
        self.method: Method = build_method(
            config.method, self.model, epochs=config.epochs, steps_per_epoch=self.steps_per_epoch,
            model_name=config.model, weight_decay=config.weight_decay, options=config.method_options,
            snapshot_device=self.snapshot_device)
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
        if self.shard is not None:
            rank, world_size = self.shard
            batches = ((x[rank::world_size], y[rank::world_size]) for x, y in batches)
        return self._in_format(batches)

    def _in_format(self, batches):
        """Batches in the memory format of the model's weights: channels_last images where the run uses it."""
        if not self.channels_last:
            return batches
        return ((x.contiguous(memory_format=torch.channels_last), y) for x, y in batches)

    def _reduced(self, loss: float) -> float:
        return loss if self.reduce_loss is None else self.reduce_loss(loss)

    def test_batches(self):
        return self._in_format(self.data.batches("test", self.config.batch_size, seed=self.config.seed,
                                                 epoch=0, device=self.device))

    def _aalr_loss(self, train_loss: float, epoch: int) -> float:
        if self.config.epoch_loss == "train-mean" or is_bad(train_loss):
            return train_loss
        return self._reduced(measure_loss(self.model, self.train_batches(epoch), self.loss_fn,
                                          train_mode=False, make_inputs=self.make_inputs,
                                          autocast=self.autocast))

    # ---------------------------------------------------------------- loop
    def start(self) -> None:
        """Measure J(theta_0) and hand it to the method (AALR's first L*)."""
        torch.manual_seed(epoch_seed(self.config.seed, 0))
        self.initial_loss = self._reduced(measure_loss(self.model, self.train_batches(0), self.loss_fn,
                                                       train_mode=self.config.epoch_loss == "train-mean",
                                                       make_inputs=self.make_inputs, autocast=self.autocast))
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
        scaler_before = self.scaler.state_dict() if self.scaler is not None else None
        # A sharded epoch never stops early at a bad loss: every rank must take the same
        # number of DDP steps; the reduced loss is NaN if any rank's was.
        train_loss = self._reduced(train_epoch(
            self.train_model, method.optimizer, self.train_batches(epoch), self.loss_fn,
            make_inputs=self.make_inputs,
            after_batch=lambda: (method.after_batch(), lrs.append(method.current_lr())),
            check_every=sys.maxsize if self.shard is not None else None,
            autocast=self.autocast, scaler=self.scaler))
        if scaler_before is not None and is_bad(train_loss):
            # The loss scale fell with weights that diverged; AALR rolls them back (and the
            # skipped steps never reached them): go on from the scale the epoch started with.
            self.scaler.load_state_dict(scaler_before)
        decision = method.after_epoch(self._aalr_loss(train_loss, epoch))
        epoch_s = time.perf_counter() - started

        started = time.perf_counter()
        eval_model = method.eval_model(self.model, lambda: self.train_batches(epoch))
        test_loss, test_acc = evaluate(eval_model, self.test_batches(), autocast=self.autocast)
        robust = self._robust_accuracy(eval_model)
        validation = self._validation_metrics(eval_model)
        eval_s = time.perf_counter() - started

        self.epoch = epoch
        self._last_eval = (epoch, {"test_loss": test_loss, "test_acc": test_acc, **robust, **validation})
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
            **validation,
        }
        row.update(decision)
        return row

    def _validation_metrics(self, model: torch.nn.Module) -> dict:
        """``val_loss`` and ``val_acc`` on the held-out examples ({} without validation)."""
        if self.validation_data is None:
            return {}
        batches = self.validation_data.batches("test", self.config.batch_size, seed=self.config.seed,
                                               epoch=0, device=self.device)
        val_loss, val_acc = evaluate(model, self._in_format(batches), autocast=self.autocast)
        return {"val_loss": val_loss, "val_acc": val_acc}

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
            test_loss, test_acc = evaluate(eval_model, self.test_batches(), autocast=self.autocast)
            metrics = {"test_loss": test_loss, "test_acc": test_acc, **self._robust_accuracy(eval_model),
                       **self._validation_metrics(eval_model)}
        return {f"final_{k}": v for k, v in metrics.items()}

    # --------------------------------------------------------- checkpoints
    def state_dict(self) -> dict:
        """Everything needed to continue bit for bit (safe for ``weights_only`` loading).

        Tensors are as the model and optimizer hold them (fp32 in any
        precision) in any memory format: a state loads whatever the loading
        run's channels_last. ``precision`` is the resolved one; ``scaler``
        (fp16 only) the GradScaler's scale and growth tracker.
        """
        state = {
            "epoch": self.epoch,
            "initial_loss": self.initial_loss,
            "model": self.model.state_dict(),
            "method": self.method.state_dict(),
            "config": self.config.to_dict(),
            "precision": self.precision,
        }
        if self.scaler is not None:
            state["scaler"] = self.scaler.state_dict()
        return state

    def load_state_dict(self, state: dict, *, adopt_lr: bool = False) -> None:
        """Continue from :meth:`state_dict`; a checkpoint of another run is refused.

        ``adopt_lr``: the checkpoint may come from a run that differs in its
        method's ``lr`` option alone (PBT hands a better member's checkpoint
        to a trial with a perturbed LR); the schedule then continues with
        every LR scaled by new / old, e.g. a step schedule at 0.1 that had
        decayed to 0.01 continues at 0.02 under lr 0.2.
        """
        saved = {k: v for k, v in state["config"].items() if k not in _NOT_THE_RUN}
        mine = {k: v for k, v in self.config.to_dict().items() if k in saved}
        old_lr = new_lr = None
        if adopt_lr and "method_options" in saved:
            old_lr = saved["method_options"].get("lr")
            new_lr = mine["method_options"].get("lr")
            saved = {**saved, "method_options": {**saved["method_options"], "lr": new_lr}}
        changed = sorted(k for k in saved if saved[k] != mine.get(k))
        # Compared as resolved: "auto" here and "bf16" there are one run on a GPU with bf16.
        # A checkpoint from before precision existed was trained in fp32.
        if state.get("precision", "fp32") != self.precision:
            changed.append(f"precision: {state.get('precision', 'fp32')} there, {self.precision} here")
        if changed:
            raise ValueError(f"checkpoint belongs to a different run (differs in {', '.join(changed)})")
        self.model.load_state_dict(state["model"])
        self.method.load_state_dict(state["method"])
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        if old_lr != new_lr:
            if old_lr is None or new_lr is None:
                raise ValueError("adopt_lr needs the lr option set in both runs, got "
                                 f"{old_lr!r} -> {new_lr!r}")
            self.method.scale_lr(new_lr / old_lr)
        self.epoch = int(state["epoch"])
        self.initial_loss = state["initial_loss"]

