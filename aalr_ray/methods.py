"""Training methods: an optimizer plus its LR schedule, driven by one loop.

Every method is built the same way and exposes the same hooks, so the
training loop does not know which one it runs::

    method = build_method("sgdr", model, epochs=200, steps_per_epoch=391, model_name="resnet18")
    method.start(initial_loss)                    # J(theta_0); only AALR uses it
    for epoch in range(epochs):
        method.train_mode()
        for x, y in train_batches():
            optimizer.zero_grad(); loss_fn(model(x), y).backward()
            method.optimizer.step(); method.after_batch()
        extra = method.after_epoch(train_loss)    # per-epoch schedules; AALR may reload weights
        m = method.eval_model(model, train_batches)   # evaluate / checkpoint m
    method.finish()

Build the method after the model is on its device. A checkpoint for resuming
holds ``model.state_dict()`` (the trained model, never the module
``eval_model`` returns: for DoG that is the averaged copy, which lives in
``method.state_dict()``) and ``method.state_dict()``; load the model first.

Every method runs at its documented defaults, untuned, as the AALR paper
compares them; each default's source is written next to it. ``options``
override them by key. Weight decay is passed to every optimizer in the form it
supports (L2 added to the gradient unless noted: Prodigy's is decoupled).

``current_lr()`` is the step size the next batch uses, for param group 0:
the scheduled LR for SGD-style methods, d*lr for Prodigy, d*lr/||g_0|| for
D-Adapt SGD (its actual multiplier of the gradient), eta for DoG and the
adapted alpha for SGD-HD. DoG and D-Adapt have no step size before their first
gradient and report 0.0 until then, so per-epoch means stay finite.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import io
import itertools
import json
import math
import re
from dataclasses import dataclass
from typing import Callable, Iterable

import torch
from torch import nn

from .controller import AALRController

__all__ = ["AALR_OPTIMIZERS", "METHODS", "OPTIMIZER_CHOICES", "STEP_RECIPES", "Method", "MethodError",
           "OptimizerOptionError", "build_method", "method_names", "milestone_epochs", "optimizer_problems",
           "resolve_optimizer", "step_recipe"]


class MethodError(ValueError):
    """An unknown method name or option; the message is one line listing the choices."""


Batches = Callable[[], Iterable[tuple[torch.Tensor, torch.Tensor]]]


# ====================================================================== base
class Method:
    """An optimizer and its LR schedule behind the training loop's hooks.

    The base class runs a torch LR scheduler either per batch (``per_batch``)
    or per epoch, or none; subclasses change only what differs.
    """

    def __init__(self, name: str, optimizer: torch.optim.Optimizer, *, scheduler=None,
                 per_batch: bool = False, info: dict | None = None,
                 lr_fn: Callable[[torch.optim.Optimizer], float] | None = None):
        self.name = name
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.per_batch = per_batch
        self.controller: AALRController | None = None
        self.info: dict = dict(info or {})
        self._lr_fn = lr_fn
        self.batches = 0  # optimizer steps so far (after_batch calls)
        self.epochs = 0  # after_epoch calls so far

    # ------------------------------------------------------------- the loop
    def start(self, initial_loss: float) -> None:
        """J(theta_0) before epoch 1; only AALR needs it."""

    def current_lr(self) -> float:
        if self._lr_fn is not None:
            return float(self._lr_fn(self.optimizer))
        return float(self.optimizer.param_groups[0]["lr"])

    def after_batch(self) -> None:
        self.batches += 1
        if self.scheduler is not None and self.per_batch:
            self.scheduler.step()

    def after_epoch(self, train_loss: float) -> dict:
        self.epochs += 1
        if self.scheduler is not None and not self.per_batch:
            self.scheduler.step()
        return {}

    def eval_model(self, model: nn.Module, train_batches: Batches | None = None) -> nn.Module:
        return model

    def train_mode(self) -> None:
        """Back to training after an evaluation."""

    def finish(self) -> bool:
        """After the last epoch; True if it changed the model's weights."""
        return False

    # ---------------------------------------------------------- persistence
    def state_dict(self) -> dict:
        return {
            "name": self.name,
            "batches": self.batches,
            "epochs": self.epochs,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict`; call it after the model's weights were loaded."""
        if state.get("name") != self.name:
            raise MethodError(f"state of method {state.get('name')!r} cannot be loaded into {self.name!r}")
        self.batches = int(state["batches"])
        self.epochs = int(state["epochs"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scheduler is not None:
            self.scheduler.load_state_dict(state["scheduler"])

    def scale_lr(self, factor: float) -> None:
        """Multiply the LR, now and for the rest of the schedule, by ``factor`` (PBT's perturbation).

        The optimizer's LR, its ``initial_lr`` and the scheduler's base LRs
        all scale, so a step schedule keeps its milestones and decays from
        the new base. AALR methods refuse: their controller owns the LR.
        """
        if self.controller is not None:
            raise MethodError(f"method {self.name!r} sets its own LR (AALR); it cannot be perturbed")
        for group in self.optimizer.param_groups:
            group["lr"] *= factor
            if "initial_lr" in group:
                group["initial_lr"] *= factor
        if self.scheduler is not None and hasattr(self.scheduler, "base_lrs"):
            self.scheduler.base_lrs = [lr * factor for lr in self.scheduler.base_lrs]
            self.scheduler._last_lr = [group["lr"] for group in self.optimizer.param_groups]

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, lr={self.current_lr():.4g})"


class AALRMethod(Method):
    """An optimizer (SGD, Adam, ...) driven by :class:`AALRController`: one ``controller.step`` per epoch."""

    def __init__(self, name, optimizer, controller: AALRController, *, info=None):
        super().__init__(name, optimizer, info=info)
        self.controller = controller

    def start(self, initial_loss: float) -> None:
        self.controller.start(initial_loss)

    def after_epoch(self, train_loss: float) -> dict:
        self.epochs += 1
        action = self.controller.step(train_loss)  # may reload theta_0 or the best weights
        return {"phase": self.controller.phase, "patience": self.controller.patience,
                "best_loss": float(self.controller.best_loss), "action": action.value}

    def finish(self) -> bool:
        return self.controller.finish()  # final="best" reloads the best checkpoint

    def state_dict(self) -> dict:
        return {**super().state_dict(), "controller": self.controller.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.controller.load_state_dict(state["controller"])  # after the optimizer: it re-applies the LR


class PlateauMethod(Method):
    """ReduceLROnPlateau steps on the epoch's training loss (NaN counts as no improvement)."""

    def after_epoch(self, train_loss: float) -> dict:
        self.epochs += 1
        self.scheduler.step(float(train_loss))
        return {}


class WarmRestartsMethod(Method):
    """CosineAnnealingWarmRestarts stepped per batch with fractional epochs.

    PyTorch's documented usage is ``scheduler.step(epoch + i / iters)``; here
    the value after batch i is ``epoch + (i + 1) / steps_per_epoch``, the
    position of the batch that uses it, and each epoch ends on the exact
    integer, so restarts fall on epoch boundaries even if an epoch has a
    different number of batches than announced.
    """

    def __init__(self, name, optimizer, scheduler, steps_per_epoch: int, *, info=None):
        super().__init__(name, optimizer, scheduler=scheduler, per_batch=True, info=info)
        self.steps_per_epoch = steps_per_epoch
        self.batch_in_epoch = 0

    def after_batch(self) -> None:
        self.batches += 1
        self.batch_in_epoch += 1
        self.scheduler.step(self.epochs + self.batch_in_epoch / self.steps_per_epoch)

    def after_epoch(self, train_loss: float) -> dict:
        self.epochs += 1
        self.batch_in_epoch = 0
        self.scheduler.step(self.epochs)
        return {}

    def state_dict(self) -> dict:
        return {**super().state_dict(), "batch_in_epoch": self.batch_in_epoch}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.batch_in_epoch = int(state["batch_in_epoch"])


class ScheduleFreeMethod(Method):
    """schedulefree.SGDScheduleFree: switch the weights between y (train) and x (eval).

    Per the schedulefree README: ``optimizer.train()`` where ``model.train()``
    is called, ``optimizer.eval()`` before evaluation and checkpointing, and
    with BatchNorm the running statistics recomputed at x in train mode over
    up to 50 training batches (``itertools.islice(train_loader, 50)`` there).
    """

    def __init__(self, name, optimizer, *, has_batchnorm: bool, bn_batches: int, info=None):
        super().__init__(name, optimizer, info=info, lr_fn=_schedulefree_lr)
        self.has_batchnorm = has_batchnorm
        self.bn_batches = bn_batches

    def train_mode(self) -> None:
        self.optimizer.train()

    def eval_model(self, model, train_batches=None):
        self.optimizer.eval()
        if self.has_batchnorm and train_batches is not None and self.bn_batches > 0:
            was_training = model.training
            model.train()
            with torch.no_grad():
                for x, _ in itertools.islice(train_batches(), self.bn_batches):
                    model(x)
            model.train(was_training)
        return model


def _schedulefree_lr(optimizer) -> float:
    # The next step's LR: warmup scales lr by (k + 1) / warmup_steps while k < warmup_steps.
    group = optimizer.param_groups[0]
    k, warmup = group["k"], group["warmup_steps"]
    return group["lr"] * ((k + 1) / warmup if k < warmup else 1.0)


class DoGMethod(Method):
    """dog.DoG plus the PolynomialDecayAverager its authors require; the average is evaluated."""

    def __init__(self, name, optimizer, averager, *, info=None):
        super().__init__(name, optimizer, info=info, lr_fn=_dog_lr)
        self.averager = averager

    def after_batch(self) -> None:
        self.batches += 1
        self.averager.step()  # README: "after each optimizer.step(), call averager.step()"

    def eval_model(self, model, train_batches=None):
        return self.averager.averaged_model

    def state_dict(self) -> dict:
        # The averaged weights are a second model: clone so a kept state is a snapshot.
        averager = self.averager.state_dict()
        averager["av_model"] = {k: v.detach().clone() for k, v in averager["av_model"].items()}
        return {**super().state_dict(), "averager": averager}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.averager.load_state_dict(state["averager"])


@functools.cache
def _nan_tolerant_dog():
    """dog.DoG whose ``assert G > 0`` does not turn a NaN/inf gradient into an exception.

    Every other optimizer lets a bad batch propagate NaN into the weights, and
    the loop ends the epoch on the NaN loss; DoG would crash the run instead.

    The only use of a private name of another package: dog-optimizer has no
    public way to skip that assert (no option; ``step`` always calls it), so
    this overrides the private method ``DoG._update_group_state(group, init)``,
    checked against dog-optimizer 1.0.3 (``DoG.__version__``), where it sets
    ``group["rbar"]``, ``group["G"]`` and then, after ``assert group['G'] > 0``,
    ``group["eta"] = [lr * rbar / sqrt(G)] * len(params)``; on a non-finite G
    this sets the same eta the assert skipped. tests/test_ray_compat.py checks
    that the private method is still there.
    """
    from dog import DoG

    class NaNTolerantDoG(DoG):
        def _update_group_state(self, group, init):
            try:
                super()._update_group_state(group, init)
            except AssertionError:
                if bool(torch.isfinite(group["G"]).all()):
                    raise  # a genuine G <= 0 (all-zero gradients): DoG's own error
                group["eta"] = [group["lr"] * group["rbar"] / torch.sqrt(group["G"])] * len(group["params"])

    return NaNTolerantDoG


def _dog_lr(optimizer) -> float:
    # DoG computes eta_t from the gradient of step t: the latest eta is the best
    # estimate of the next one; before the first step there is none.
    eta = optimizer.param_groups[0].get("eta")
    return float(eta[0]) if eta else 0.0


def _prodigy_lr(optimizer) -> float:
    group = optimizer.param_groups[0]  # use_bias_correction=False (default): step = d * lr
    bias = 1.0
    if group["use_bias_correction"]:
        beta1, beta2 = group["betas"]
        k = group["k"]
        bias = ((1 - beta2 ** (k + 1)) ** 0.5) / (1 - beta1 ** (k + 1))
    return group["d"] * group["lr"] * bias


def _dadapt_lr(optimizer) -> float:
    # DAdaptSGD moves the weights by d * lr / ||g_0|| times the gradient
    # (s += dlr * g; x = x0 - s); ||g_0|| exists after the first step.
    group = optimizer.param_groups[0]
    g0 = group.get("g0_norm")
    return group["d"] * group["lr"] / g0 if g0 else 0.0


# ================================================================= registry
@dataclass(frozen=True)
class _Context:
    epochs: int
    steps_per_epoch: int
    model_name: str
    weight_decay: float
    snapshot_device: str = "same"  # where AALR keeps its snapshots (AALRController)


@dataclass(frozen=True)
class _Spec:
    build: Callable[[nn.Module, dict, _Context], Method]
    defaults: dict


METHODS: dict[str, _Spec] = {}


def _register(name: str, defaults: dict):
    def wrap(build):
        METHODS[name] = _Spec(build, dict(defaults))
        return build
    return wrap


def method_names() -> list[str]:
    return sorted(METHODS)


def build_method(name: str, model: nn.Module, *, epochs: int, steps_per_epoch: int,
                 model_name: str = "", weight_decay: float = 5e-4,
                 options: dict | None = None, snapshot_device: str = "same") -> Method:
    """Build method ``name`` for ``model``; ``options`` override its defaults by key.

    ``snapshot_device``: where the AALR methods keep theta_0 and the best
    snapshot, ``"same"`` (the model's device) or ``"cpu"`` (see
    :class:`AALRController`); the other methods keep none and ignore it.
    """
    spec = METHODS.get(name)
    if spec is None:
        raise MethodError(f"unknown method {name!r}; valid methods: {', '.join(method_names())}")
    options = dict(options or {})
    unknown = sorted(k for k in options if k not in spec.defaults)
    if unknown:
        raise MethodError(f"unknown option(s) {', '.join(map(repr, unknown))} for method {name!r}; "
                          f"valid options: {', '.join(sorted(spec.defaults)) or '(none)'}")
    for what, value in (("epochs", epochs), ("steps_per_epoch", steps_per_epoch)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise MethodError(f"{what} must be an integer >= 1, got {value!r}")
    if not (math.isfinite(weight_decay) and weight_decay >= 0):
        raise MethodError(f"weight_decay must be a finite number >= 0, got {weight_decay!r}")
    opts = {**spec.defaults, **options}
    ctx = _Context(epochs, steps_per_epoch, model_name or "", float(weight_decay), snapshot_device)
    method = spec.build(model, opts, ctx)
    method.info = _jsonable({"method": name, "model_name": ctx.model_name, "epochs": epochs,
                             "steps_per_epoch": steps_per_epoch, "weight_decay": ctx.weight_decay,
                             **opts, **method.info})
    return method


def _jsonable(value):
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


def _has_batchnorm(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def _sgd(model, opts, ctx, lr_key="lr") -> torch.optim.SGD:
    return torch.optim.SGD(model.parameters(), lr=opts[lr_key], momentum=opts["momentum"],
                           nesterov=bool(opts.get("nesterov", False)), weight_decay=ctx.weight_decay)


def _cosine(optimizer, opts, ctx):
    """Per-batch cosine annealing to 0 over the whole run, or None (``schedule="none"``)."""
    if opts["schedule"] == "none":
        return None
    if opts["schedule"] != "cosine":
        raise MethodError(f"schedule must be one of: cosine, none; got {opts['schedule']!r}")
    return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=ctx.epochs * ctx.steps_per_epoch)


# ------------------------------------------------------------------ AALR
# AALR only sets the LR of every param group and resets or reloads the
# optimizer's state_dict() (aalr_ray/controller.py), so it drives any
# torch.optim.Optimizer that keeps its state in state_dict() and whose step()
# needs no closure. Algorithm 1 names SGD; the paper's Table 1 footnote also
# runs it over Adam.
AALR_OPTIMIZERS = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam, "adamw": torch.optim.AdamW}
OPTIMIZER_CHOICES = "sgd, adam, adamw, or an import path package.module:Class to a torch.optim.Optimizer subclass"
SGD_MOMENTUM = 0.9  # AALR paper, Algorithm 1 ("Optimizer SGD, Momentum=0.9")
# Constructor arguments AALR fills in itself, so optimizer_options may not set them.
_FILLED_IN = {"params": "the model's parameters are passed",
              "lr": "the initial LR is option lr",
              "weight_decay": "the run's weight_decay is passed (grid key weight_decay, --weight-decay)",
              "momentum": "it is option momentum"}


class OptimizerOptionError(MethodError):
    """A bad ``optimizer`` / ``optimizer_options`` / ``momentum`` option; ``option`` names which."""

    def __init__(self, option: str, message: str):
        super().__init__(message)
        self.option = option


def _first_line(exc: BaseException, limit: int = 200) -> str:
    text = " ".join((str(exc).strip().splitlines() or [""])[0].split())
    return f"{type(exc).__name__}: {text[:limit]}" if text else type(exc).__name__


def resolve_optimizer(name) -> type:
    """The optimizer class named by ``name``: a key of AALR_OPTIMIZERS or ``package.module:Class``."""
    if isinstance(name, str) and name in AALR_OPTIMIZERS:
        return AALR_OPTIMIZERS[name]
    module_name, sep, attr = name.partition(":") if isinstance(name, str) else ("", "", "")
    if not (sep and module_name and attr):
        raise OptimizerOptionError("optimizer", f"unknown optimizer {name!r}; choose from: {OPTIMIZER_CHOICES}")
    from .imports import ImportPathError, load_object

    try:  # the module's own code runs here: anything may go wrong in it, and comes back as one line
        obj = load_object(name, "optimizer")
    except ImportPathError as exc:
        raise OptimizerOptionError("optimizer", f"{exc}; choose from: {OPTIMIZER_CHOICES}") from None
    if not (isinstance(obj, type) and issubclass(obj, torch.optim.Optimizer)):
        raise OptimizerOptionError("optimizer", f"optimizer {name!r} is not a torch.optim.Optimizer subclass "
                                                f"(got {type(obj).__name__}); choose from: {OPTIMIZER_CHOICES}")
    closure = _parameters(obj.step).get("closure")
    if closure is not None and closure.default is inspect.Parameter.empty:
        # LBFGS-style: the training loop calls optimizer.step() without a closure.
        raise OptimizerOptionError("optimizer", f"optimizer {name!r} needs a closure in step(), which the training "
                                                f"loop does not pass; choose from: {OPTIMIZER_CHOICES}")
    return obj


def _parameters(function) -> dict:
    try:
        return dict(inspect.signature(function).parameters)
    except (TypeError, ValueError):  # a C extension without a signature: let the call itself judge
        return {"kwargs": inspect.Parameter("kwargs", inspect.Parameter.VAR_KEYWORD)}


def _keywords(cls) -> tuple[set[str], bool]:
    """The keyword arguments ``cls(params, ...)`` names, and whether it takes any (``**kwargs``)."""
    params = list(_parameters(cls.__init__).values())[1:]  # without self
    named = {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    return named, any(p.kind is p.VAR_KEYWORD for p in params)


def optimizer_arguments(opts: dict, weight_decay: float) -> tuple[type, dict]:
    """(class, keyword arguments besides params and lr) for an AALR method's options.

    ``optimizer_options`` pass through as keyword arguments (JSON lists become
    tuples, as in ``betas=(0.9, 0.999)``); ``momentum`` null means 0.9 for SGD
    (Algorithm 1) and the optimizer's own default otherwise; the run's weight
    decay goes to the optimizer's ``weight_decay`` (L2 for SGD and Adam,
    decoupled for AdamW).
    """
    name, extra, momentum = opts["optimizer"], opts["optimizer_options"], opts["momentum"]
    cls = resolve_optimizer(name)
    named, any_keyword = _keywords(cls)
    own = ", ".join(sorted(named - set(_FILLED_IN))) or "(none)"
    if not isinstance(extra, dict):
        raise OptimizerOptionError("optimizer_options", f"expected a mapping of optimizer {name!r}'s options "
                                                        f"({own}), got {extra!r}")
    for key in extra:
        if key in _FILLED_IN:
            raise OptimizerOptionError("optimizer_options", f"optimizer_options may not set {key!r}: "
                                                            f"{_FILLED_IN[key]}")
        if key not in named and not any_keyword:
            raise OptimizerOptionError("optimizer_options", f"optimizer {name!r} takes no option {key!r}; "
                                                            f"valid optimizer_options: {own}")
    kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in extra.items()}
    if momentum is None and cls is torch.optim.SGD:
        momentum = SGD_MOMENTUM
    if momentum is not None:
        if "momentum" not in named and not any_keyword:
            raise OptimizerOptionError("momentum", f"optimizer {name!r} takes no momentum; leave option momentum "
                                                   f"null (its own options go in optimizer_options: {own})")
        kwargs["momentum"] = momentum
    if "weight_decay" in named or any_keyword:
        kwargs["weight_decay"] = weight_decay
    elif weight_decay:
        raise MethodError(f"optimizer {name!r} takes no weight_decay; run it with weight decay 0 "
                          f"(grid key weight_decay, --weight-decay), got {weight_decay!r}")
    return cls, kwargs


def optimizer_problems(opts: dict) -> list[tuple[str, str]]:
    """(option, problem) if an AALR method's optimizer options do not build an optimizer; [] if they do.

    Builds the optimizer over one dummy parameter, so the optimizer's own
    checks of its values (Adam's betas in [0, 1), eps >= 0, ...) run too.
    The run's weight decay is not known here; the method build checks it.
    """
    try:  # a grid checks every trial (up to 10,000): judge the same options once
        key = json.dumps([opts[k] for k in _OPTIMIZER_KEYS], sort_keys=True, allow_nan=False)
    except (TypeError, ValueError):
        return _optimizer_problems(opts)
    return list(_cached_optimizer_problems(key))


_OPTIMIZER_KEYS = ("optimizer", "optimizer_options", "momentum", "lr")


@functools.lru_cache(maxsize=256)
def _cached_optimizer_problems(key: str) -> tuple:
    return tuple(_optimizer_problems(dict(zip(_OPTIMIZER_KEYS, json.loads(key)))))


def _optimizer_problems(opts: dict) -> list[tuple[str, str]]:
    try:
        cls, kwargs = optimizer_arguments(opts, weight_decay=0.0)
        cls([nn.Parameter(torch.zeros(1))], lr=opts["lr"], **kwargs)
    except OptimizerOptionError as exc:
        return [(exc.option, str(exc))]
    except Exception as exc:  # noqa: BLE001 - the optimizer's own refusal of a value
        return [("optimizer_options", f"optimizer {opts['optimizer']!r} does not take these options: "
                                      f"{_first_line(exc)}")]
    return []


def _aalr_optimizer(model, opts, ctx) -> tuple[torch.optim.Optimizer, dict]:
    cls, kwargs = optimizer_arguments(opts, ctx.weight_decay)
    try:
        optimizer = cls(model.parameters(), lr=opts["lr"], **kwargs)
    except Exception as exc:  # noqa: BLE001 - the optimizer's own refusal of a value
        raise MethodError(f"optimizer {opts['optimizer']!r} does not take these options: "
                          f"{_first_line(exc)}") from None
    decoupled = issubclass(cls, torch.optim.AdamW) or bool(kwargs.get("decoupled_weight_decay"))
    info = {"optimizer_class": f"{cls.__module__}.{cls.__qualname__}", "momentum": kwargs.get("momentum"),
            "optimizer_options": {k: v for k, v in kwargs.items() if k not in _FILLED_IN},
            "weight_decay_form": "decoupled" if decoupled else
            "L2 (coupled)" if cls in AALR_OPTIMIZERS.values() else "the optimizer's weight_decay"}
    return optimizer, info


_AALR_DEFAULTS = {
    "lr": 0.1,  # eta_0 = 0.1: AALR paper, Algorithm 1 ("Initial LR eta_0 = 0.1")
    "optimizer": "sgd",  # AALR paper, Algorithm 1 ("Optimizer SGD"); or adam, adamw, package.module:Class
    "optimizer_options": {},  # the optimizer's own keyword options, e.g. {betas: [0.9, 0.99]}; never mutated
    "momentum": None,  # None: 0.9 for SGD (Algorithm 1, "Momentum=0.9"); the optimizer's own otherwise
    "phase1_patience": 10,  # AALR paper, Section 2: 10 epochs of non-increasing loss end phase 1
    "window": "text",  # w = p + 1 (Sections 2 and 4); see aalr_ray/core.py
    "collapse_is_divergence": False,  # off = the paper; see aalr_ray/core.py
    "restore_on_decrease": False,  # off = the paper
    "restore_if_worse": False,  # off = the paper; see aalr_ray/core.py
    "significant_gain": False,  # off = the paper
    "judge": "last",  # the paper judges a window by its last epoch; "mean": by its mean loss
    "final": "last",  # the paper reports the last epoch's weights
    "best_path": None,  # keep the best checkpoint in memory (a path keeps it on disk)
}
_AALR_ROBUST = {
    "collapse_is_divergence": True,  # a finite loss >= J(theta_0) in phase 2 is divergence
    "restore_on_decrease": True,  # a failed second try reloads the best weights
    "final": "best",  # finish() reloads the best checkpoint
}
_AALR_ADAM = {
    "optimizer": "adam",  # AALR paper, Table 1 footnote: AALR over Adam (VGG16 on CIFAR-10, peak 10% -> 78.46%)
    # The initial LR is Adam's documented default, 1e-3 (torch.optim.Adam = Kingma & Ba 2015,
    # Algorithm 1), as 0.1 is SGD-momentum's: each optimizer starts from its own untuned default.
    # Not the paper's 0.1 for every optimizer: Adam's step is about lr per weight whatever the
    # gradient's scale, so 0.1 is ~100x its usual step, and phase 1 can only come down from there
    # one halving (one epoch, theta_0 reloaded) at a time; phase 2 still doubles the LR upward.
    # Measured afterwards on the CPU league (bench/league.py, 3 workloads x 5 seeds): from 1e-3
    # phase 1 never restarted; from 0.1 it restarted 1-5 times (phase 1 ended at epoch 17-39,
    # not 10) and the mean final accuracy was 0.5-3.4 points lower in all six workload x method cells.
    "lr": 1e-3,
}


def _build_aalr(name: str):
    def build(model, opts, ctx):
        optimizer, info = _aalr_optimizer(model, opts, ctx)
        controller = AALRController(
            model, optimizer, ctx.epochs, initial_lr=opts["lr"],
            phase1_patience=opts["phase1_patience"], window=opts["window"],
            collapse_is_divergence=opts["collapse_is_divergence"],
            restore_on_decrease=opts["restore_on_decrease"], restore_if_worse=opts["restore_if_worse"],
            significant_gain=opts["significant_gain"], judge=opts["judge"], final=opts["final"],
            best_path=opts["best_path"], snapshot_device=ctx.snapshot_device)
        return AALRMethod(name, optimizer, controller, info={"max_epochs": ctx.epochs, **info})
    return build


for _name, _defaults in (("aalr", {}), ("aalr-robust", _AALR_ROBUST), ("aalr-adam", _AALR_ADAM),
                         ("aalr-robust-adam", {**_AALR_ROBUST, **_AALR_ADAM})):
    _register(_name, {**_AALR_DEFAULTS, **_defaults})(_build_aalr(_name))


# ------------------------------------------------------------ step decay
# The literature's tuned step schedules, milestones as fractions of the run.
_CUTOUT = {  # uoguelph-mlrg/Cutout train.py: SGD(lr=0.1, momentum=0.9, nesterov=True,
    # weight_decay=5e-4), MultiStepLR(milestones=[60, 120, 160], gamma=0.2), 200 epochs;
    # the same schedule as Zagoruyko & Komodakis 2016 (WRN: Nesterov, 0.1, x0.2 at 60/120/160 of 200).
    "optimizer": "sgd", "lr": 0.1, "momentum": 0.9, "nesterov": True, "gamma": 0.2,
    "milestones": (60 / 200, 120 / 200, 160 / 200),
    "source": "uoguelph-mlrg/Cutout train.py; Zagoruyko & Komodakis 2016"}
STEP_RECIPES: dict[str, dict] = {
    "cutout": _CUTOUT,
    "he2016": {  # He et al. 2016 Sec. 4.2 (CIFAR-10): SGD momentum 0.9, lr 0.1, divided by 10
        # at 32k and 48k iterations, terminated at 64k (weight decay 1e-4).
        "optimizer": "sgd", "lr": 0.1, "momentum": 0.9, "nesterov": False, "gamma": 0.1,
        "milestones": (32 / 64, 48 / 64), "source": "He et al. 2016, Sec. 4.2"},
    "vgg-cifar": {  # chengyangfu/pytorch-vgg-cifar10 main.py: SGD(lr=0.05, momentum=0.9,
        # weight_decay=5e-4), lr = 0.05 * 0.5 ** (epoch // 30), 300 epochs.
        "optimizer": "sgd", "lr": 0.05, "momentum": 0.9, "nesterov": False, "gamma": 0.5,
        "milestones": tuple(e / 300 for e in range(30, 300, 30)),
        "source": "chengyangfu/pytorch-vgg-cifar10 main.py"},
    "simplenet": {  # Coderx7/SimpleNet_Pytorch Cifar/main.py: Adadelta(lr=0.1, rho=0.9, eps=1e-3,
        # weight_decay=0.001), MultiStepLR([100, 190, 306, 390, 440, 540], gamma=0.1); its README runs
        # --epochs 540, so 540 is the run's end and drops out. It is not SGD: the repo's tuned
        # optimizer is kept ("hard coded just like caffe", Cifar/README.md).
        "optimizer": "adadelta", "lr": 0.1, "rho": 0.9, "eps": 1e-3, "gamma": 0.1,
        "milestones": tuple(e / 540 for e in (100, 190, 306, 390, 440)),
        "source": "Coderx7/SimpleNet_Pytorch Cifar/main.py + Cifar/README.md"},
}


def step_recipe(model_name: str) -> str:
    """The step-schedule recipe for a model name (the Cutout one for any other model)."""
    key = re.sub(r"[^a-z0-9]", "", (model_name or "").lower())
    if key.startswith("resnet20"):
        return "he2016"
    if key.startswith(("vgg",)):
        return "vgg-cifar"
    if key.startswith(("simplenet", "simpnet")):
        return "simplenet"
    # resnet18, wrn-*, wide-resnet: their own schedule. Everything else (mnist1d-cnn,
    # mlp, small-cnn, "module:function" models) has no published tuned schedule:
    # the ResNet-18/Cutout schedule is the generic default.
    return "cutout"


def milestone_epochs(fractions, epochs: int) -> list[int]:
    """Fractions of the run -> epochs after which the LR drops (half up, at least 1)."""
    return [max(1, math.floor(f * epochs + 0.5)) for f in fractions]


@_register("step", {
    "recipe": "auto",  # "auto": from model_name via step_recipe(); or a key of STEP_RECIPES
    "lr": None, "momentum": None, "nesterov": None, "gamma": None,  # None: the recipe's value
    "milestones": None,  # None: the recipe's fractions of the run
})
def _build_step(model, opts, ctx):
    recipe_name = step_recipe(ctx.model_name) if opts["recipe"] == "auto" else opts["recipe"]
    if recipe_name not in STEP_RECIPES:
        raise MethodError(f"unknown step recipe {recipe_name!r}; valid recipes: auto, "
                          f"{', '.join(sorted(STEP_RECIPES))}")
    recipe = {**STEP_RECIPES[recipe_name],
              **{k: v for k, v in opts.items() if k != "recipe" and v is not None}}
    if recipe["optimizer"] == "adadelta":
        optimizer = torch.optim.Adadelta(model.parameters(), lr=recipe["lr"], rho=recipe["rho"],
                                         eps=recipe["eps"], weight_decay=ctx.weight_decay)
    else:
        optimizer = _sgd(model, recipe, ctx)
    milestones = milestone_epochs(recipe["milestones"], ctx.epochs)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones, gamma=recipe["gamma"])
    return Method("step", optimizer, scheduler=scheduler, per_batch=False, info={
        **recipe, "recipe": recipe_name, "milestone_epochs": milestones})


# ---------------------------------------------------------- SGDR and CLR
@_register("sgdr", {
    # Loshchilov & Hutter's WRN runs, loshchil/SGDR SGDR_WRNs.py scenario 6 (T0=10, Tmult=2):
    "lr": 0.05,  # eta_max: that script's lr = 0.05 for every SGDR scenario (0.1 only for its step baselines)
    "eta_min": 0.0,  # "lr_min = 0" there; also PyTorch's default
    "T_0": 10,  # Te = 10 epochs
    "T_mult": 2,  # multFactor = 2
    "momentum": 0.9,  # lasagne.updates.momentum(..., momentum=0.9): classical, not Nesterov
})
def _build_sgdr(model, opts, ctx):
    optimizer = _sgd(model, opts, ctx)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(
        optimizer, T_0=opts["T_0"], T_mult=opts["T_mult"], eta_min=opts["eta_min"])
    return WarmRestartsMethod("sgdr", optimizer, scheduler, ctx.steps_per_epoch)


@_register("clr", {
    "base_lr": 0.01,  # PyTorch CyclicLR docs example (base_lr=0.01, max_lr=0.1); no PyTorch default exists
    "max_lr": 0.1,  # same example; 0.1 is also the SGD-momentum LR of the other baselines
    "step_size_epochs": 4,  # Smith 2017 Sec. 3.2: stepsize = 2-10 x iterations per epoch. (PyTorch's
    # default step_size_up=2000 iterations is ~5 epochs at CIFAR batch 128 but hundreds on small data.)
    "mode": "triangular",  # PyTorch default; Smith 2017's basic policy
    "momentum": 0.9,  # SGD momentum as in every SGD baseline (CyclicLR then cycles it)
    "cycle_momentum": True,  # PyTorch default: momentum cycles inversely to the LR ...
    "base_momentum": 0.8,  # ... between base_momentum=0.8 (PyTorch default) ...
    "max_momentum": 0.9,  # ... and max_momentum=0.9 (PyTorch default)
})
def _build_clr(model, opts, ctx):
    optimizer = torch.optim.SGD(model.parameters(), lr=opts["base_lr"], momentum=opts["momentum"],
                                weight_decay=ctx.weight_decay)
    step_size_up = opts["step_size_epochs"] * ctx.steps_per_epoch
    scheduler = torch.optim.lr_scheduler.CyclicLR(
        optimizer, base_lr=opts["base_lr"], max_lr=opts["max_lr"], step_size_up=step_size_up,
        mode=opts["mode"], cycle_momentum=opts["cycle_momentum"],
        base_momentum=opts["base_momentum"], max_momentum=opts["max_momentum"])
    return Method("clr", optimizer, scheduler=scheduler, per_batch=True,
                  info={"step_size_up": step_size_up})


# ------------------------------------------------------------- plateau
@_register("plateau", {
    "lr": 0.1,  # the SGD-momentum LR of the other baselines (AALR's eta_0)
    "momentum": 0.9,
    "factor": 0.1,  # ReduceLROnPlateau defaults (PyTorch docs) from here on
    "patience": 10,
    "threshold": 1e-4,
    "threshold_mode": "rel",
    "cooldown": 0,
    "min_lr": 0.0,
})
def _build_plateau(model, opts, ctx):
    optimizer = _sgd(model, opts, ctx)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimizer, mode="min", factor=opts["factor"], patience=opts["patience"],
        threshold=opts["threshold"], threshold_mode=opts["threshold_mode"],
        cooldown=opts["cooldown"], min_lr=opts["min_lr"])
    return PlateauMethod("plateau", optimizer, scheduler=scheduler, info={"monitors": "train_loss"})


# --------------------------------------------------------------- Adam
@_register("adam", {
    "lr": 1e-3,  # torch.optim.Adam default = Kingma & Ba 2015, Algorithm 1
    "betas": (0.9, 0.999),  # same
    "eps": 1e-8,  # same
})
def _build_adam(model, opts, ctx):
    optimizer = torch.optim.Adam(model.parameters(), lr=opts["lr"], betas=tuple(opts["betas"]),
                                 eps=opts["eps"], weight_decay=ctx.weight_decay)  # L2, not AdamW
    return Method("adam", optimizer, info={"weight_decay_form": "L2 (coupled)"})


# ------------------------------------------------------------- SGD-HD
@_register("sgd-hd", {
    "lr": 1e-3,  # alpha_0 = 0.001: Baydin et al. 2018, Experiments (alpha_0 of all their runs)
    "hypergrad_lr": 1e-3,  # beta = 0.001 for SGD-HD and SGDN-HD: Baydin et al. 2018, Experiments
    "momentum": 0.0,  # 0 = SGD-HD (the "SGDHD" the AALR paper ran); 0.9 = the paper's SGDN-HD mu
})
def _build_sgd_hd(model, opts, ctx):
    from .hypergrad import SGDHD

    optimizer = SGDHD(model.parameters(), lr=opts["lr"], momentum=opts["momentum"],
                      weight_decay=ctx.weight_decay, hypergrad_lr=opts["hypergrad_lr"])
    return Method("sgd-hd", optimizer, info={"variant": "SGDN-HD" if opts["momentum"] else "SGD-HD"})


# ------------------------------------------------- parameter-free methods
@_register("prodigy", {
    "lr": 1.0,  # prodigyopt README: "We recommend using lr=1. (default) for all networks"
    "betas": (0.9, 0.999),  # Prodigy signature default
    "d_coef": 1.0,  # signature default; the README's preferred knob, left untouched
    "decouple": True,  # default: AdamW-style decoupled weight decay (README)
    "use_bias_correction": False,  # signature default
    "safeguard_warmup": False,  # signature default (README: only needed with warm-up or restarts)
    "schedule": "cosine",  # README: "either no scheduler or cosine annealing", with
    # CosineAnnealingLR(opt, T_max=total_steps) and one scheduler.step() per optimizer step
})
def _build_prodigy(model, opts, ctx):
    from prodigyopt import Prodigy

    with contextlib.redirect_stdout(io.StringIO()):  # it prints "Using decoupled weight decay"
        optimizer = Prodigy(model.parameters(), lr=opts["lr"], betas=tuple(opts["betas"]),
                            weight_decay=ctx.weight_decay, decouple=opts["decouple"],
                            use_bias_correction=opts["use_bias_correction"],
                            safeguard_warmup=opts["safeguard_warmup"], d_coef=opts["d_coef"])
    return Method("prodigy", optimizer, scheduler=_cosine(optimizer, opts, ctx), per_batch=True,
                  lr_fn=_prodigy_lr,
                  info={"weight_decay_form": "decoupled (AdamW)" if opts["decouple"] else "L2 (coupled)"})


@_register("dadapt", {
    "lr": 1.0,  # dadaptation README: "Set the LR parameter to 1.0"; DAdaptSGD default
    "momentum": 0.0,  # DAdaptSGD signature default
    "d0": 1e-6,  # signature default ("Rarely needs changing")
    "schedule": "none",  # the README says to keep the problem's usual schedule; untuned
    # defaults means none here ("cosine" is available as an option)
})
def _build_dadapt(model, opts, ctx):
    from dadaptation import DAdaptSGD

    optimizer = DAdaptSGD(model.parameters(), lr=opts["lr"], momentum=opts["momentum"],
                          weight_decay=ctx.weight_decay, d0=opts["d0"])  # L2 added to the gradient
    return Method("dadapt", optimizer, scheduler=_cosine(optimizer, opts, ctx), per_batch=True,
                  lr_fn=_dadapt_lr)


@_register("schedule-free", {
    "lr": 1.0,  # SGDScheduleFree signature default (README: 10x-50x the classical SGD LR)
    "momentum": 0.9,  # signature default (README: "Our default of 0.9 works on most problems")
    "warmup_steps": 0,  # signature default. The README recommends warmup but gives no length.
    "r": 0.0,  # signature default
    "weight_lr_power": 2.0,  # signature default
    "bn_batches": 50,  # README BatchNorm caveat: itertools.islice(train_loader, 50)
})
def _build_schedule_free(model, opts, ctx):
    from schedulefree import SGDScheduleFree

    optimizer = SGDScheduleFree(model.parameters(), lr=opts["lr"], momentum=opts["momentum"],
                                weight_decay=ctx.weight_decay, warmup_steps=opts["warmup_steps"],
                                r=opts["r"], weight_lr_power=opts["weight_lr_power"])  # L2 at y
    return ScheduleFreeMethod("schedule-free", optimizer, has_batchnorm=_has_batchnorm(model),
                              bn_batches=opts["bn_batches"])


@_register("dog", {
    "reps_rel": None,  # None: 1e-6, or 1e-4 for a model with BatchNorm (dog.DoG docstring:
    # "Suggested value is 1e-6, unless the model uses batch-normalization, ... 1e-4")
    "lr": 1.0,  # DoG default; "changing it is not recommended"
    "eps": 1e-8,  # DoG default
    "gamma": 8.0,  # PolynomialDecayAverager default; README: "its default configuration should work well"
})
def _build_dog(model, opts, ctx):
    from dog import PolynomialDecayAverager

    reps_rel = opts["reps_rel"]
    if reps_rel is None:
        reps_rel = 1e-4 if _has_batchnorm(model) else 1e-6
    optimizer = _nan_tolerant_dog()(model.parameters(), reps_rel=reps_rel, lr=opts["lr"], eps=opts["eps"],
                    weight_decay=ctx.weight_decay)  # "weight_decay * x_t is added directly to the gradient"
    averager = PolynomialDecayAverager(model, gamma=opts["gamma"])
    return DoGMethod("dog", optimizer, averager, info={"reps_rel": reps_rel, "evaluates": "averaged model"})

