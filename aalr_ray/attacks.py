"""l-infinity adversarial attacks (FGSM, PGD) for adversarial training and evaluation.

All attacks work in pixel space: inputs are in [0, 1] (the models in
:mod:`aalr_ray.models` normalise inside), and every result is clipped both to
the l-inf ball of radius ``eps`` around the clean input and to [0, 1] (the
paper, Section 5.4: "All attacks are l_inf within [0, 1] ball").

* :func:`fgsm` -- Goodfellow et al. 2015, "Explaining and harnessing
  adversarial examples": ``x + eps * sgn(grad_x L)``. With ``alpha`` it is the
  "FGSM with random initialisation" of Wong et al. 2020, "Fast is better than
  free": a uniform start in the eps-ball, then one step of size ``alpha``
  (they use ``alpha = 1.25 * eps``), projected back into the ball.
* :func:`pgd` -- Madry et al. 2018, "Towards deep learning models resistant to
  adversarial attacks": ``steps`` signed steps of size ``alpha``, each
  followed by the projection, from a uniform random start in the ball (or
  from ``x`` with ``random_start=False``).
* :class:`AttackConfig` / :func:`make_inputs` -- the training modes
  ("natural", "fgsm", "pgd") and the callable for ``TrainingRun.make_inputs``.
* :func:`robust_accuracy` (and :func:`fgsm_accuracy`, :func:`pgd_accuracy`)
  -- accuracy on examples crafted against the model in eval mode.

Which "FGSM" is the default
---------------------------
The paper labels its FGSM results "eps = 8/255 and alpha = 2/255" (Table 3),
but its footnote 3 defines FGSM as ``x + eps * sgn(grad)`` -- one step of size
eps, no alpha -- and PGD as iterated alpha steps. ``(8/255, 2/255)`` is Madry
et al.'s CIFAR-10 PGD setting; a single alpha = 2/255 step (with or without a
random start) could never reach the 8/255 radius the label names, and Wong et
al.'s random-start variant needs alpha > eps (1.25 eps), not eps / 4. The
baseline the paper compares with (Madry et al.'s 56.1% under FGSM) is also
plain FGSM. So the DEFAULT ("fgsm" mode, ``alpha=None``) is the footnote's
Goodfellow FGSM and alpha is read as the PGD step that the label carries
along; Wong et al.'s variant is there when ``alpha`` is given explicitly.
(Another reading -- training with PGD(8/255, 2/255) and reporting FGSM
accuracy -- is a choice of training mode, not of attack; both are
expressible with :class:`AttackConfig`.) Note that plain-FGSM training can
"catastrophically overfit" (Wong et al. 2020, Sec. 4); that is a property of
the method the paper describes, not something this module hides.

Which mode the model is in while the attack runs
------------------------------------------------
Default ``model_mode="eval"``, both for evaluation and during training:

* Evaluation in eval mode is the universal convention (RobustBench;
  torchattacks' ``Attack`` switches to eval unless told otherwise; Madry et
  al.'s evaluation).
* During training, MadryLab's ``robustness`` library (``AttackerModel``
  calls ``self.eval()`` before crafting and restores train mode after), TRADES
  and MART also craft in eval mode. It attacks the deterministic function
  that is evaluated and deployed: no dropout noise in the attack gradient,
  no batch-statistics coupling between the examples of a batch, and no
  BatchNorm running statistics updated by intermediate iterates.
* For AALR it makes the inner maximisation a function of the weights only
  (given the random start), so the training batches, J(theta_0) and the
  epoch loss that AALR compares with its best are all computed with the same
  attack whether the caller had the model in train or eval mode.

``model_mode="train"`` crafts with batch statistics and dropout on, as Wong
et al. 2020 and Rice et al. 2020 do (their PyTorch loops never leave train
mode). Unlike those loops, the BatchNorm running statistics (all buffers) are
put back afterwards, so they keep estimating the inputs the model is trained
on, not the attack's intermediate iterates. For models without BatchNorm or
dropout (``mlp``, ``small-cnn``, ``mnist1d-cnn``) the two modes coincide.

Guarantees
----------
* The model leaves as it came: ``model.training`` restored (also on error),
  parameters' ``.grad`` untouched (None stays None, a set grad stays
  bit-identical) because gradients are taken with
  ``torch.autograd.grad(loss, x_adv)``, never ``.backward()``;
  ``requires_grad`` flags are never changed; buffers are unchanged.
* Inputs are detached; the result is a new tensor without a graph.
  Gradients are enabled inside the attack, so it works under
  ``torch.no_grad()`` (not under ``torch.inference_mode()``).
* Loss: cross-entropy summed over the batch (Madry et al.'s reference code
  attacks ``xent = reduce_sum(...)``). The sign of each example's gradient
  does not depend on the batch size then, and small per-example gradients
  are not scaled by 1/N towards underflow (a zero gradient means a zero
  step). torchattacks uses the mean; with a power-of-two batch the 1/N
  scaling is exact and the two give bit-identical perturbations.
* Randomness (random starts) comes from ``generator`` if given (it must be on
  the inputs' device), otherwise from the global torch RNG, which
  ``TrainingRun`` reseeds at every epoch, so training runs stay reproducible.
* Cost: one forward and one backward (to the input only) per step -- PGD-k
  costs about k + 1 times natural training; batched, no per-example loops.
* ``|x_adv - x| <= eps`` holds up to float32 rounding of ``x + delta``
  (half an ulp of x, < 6e-8 in [0, 1]).
"""
from __future__ import annotations

import functools
import numbers
from dataclasses import dataclass, fields
from fractions import Fraction
from typing import Any, Callable, Iterable, Mapping

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "MODES",
    "MODEL_MODES",
    "AttackConfig",
    "fgsm",
    "fgsm_accuracy",
    "make_inputs",
    "pgd",
    "pgd_accuracy",
    "robust_accuracy",
]

MODES = ("natural", "fgsm", "pgd")
MODEL_MODES = ("eval", "train")

Attack = Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]


# ------------------------------------------------------------------ checks
def _check_radius(name: str, value: Any, *, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and 0 < value <= 1
    if not ok:  # also rejects NaN, which fails 0 < value
        none = " or None" if allow_none else ""
        raise ValueError(f"attack {name} must be a number in (0, 1]{none} "
                         f"(l-inf size in [0, 1] pixel units, e.g. 8/255), got {value!r}")


def _check_steps(steps: Any) -> None:
    if isinstance(steps, bool) or not isinstance(steps, numbers.Integral) or steps < 1:
        raise ValueError(f"attack steps must be an integer >= 1, got {steps!r}")


def _check_model_mode(model_mode: Any) -> None:
    if model_mode not in MODEL_MODES:
        raise ValueError(f"unknown attack model_mode {model_mode!r}; "
                         f"choose from {', '.join(MODEL_MODES)}")


# ------------------------------------------------------------------ core
class _AttackMode:
    """Context: put the model in the attack's mode; restore mode and buffers after.

    In train mode BatchNorm updates its running statistics on every forward;
    the attack's forwards must not count, so buffers are saved and put back
    (they are small: per-channel statistics, not activations).
    """

    def __init__(self, model: nn.Module, model_mode: str):
        self.model, self.train = model, model_mode == "train"

    def __enter__(self) -> None:
        self.was_training = self.model.training
        self.saved = [b.detach().clone() for b in self.model.buffers()] if self.train else None
        self.model.train(self.train)

    def __exit__(self, *exc) -> None:
        if self.saved is not None:
            with torch.no_grad():
                for buffer, saved in zip(self.model.buffers(), self.saved):
                    buffer.copy_(saved)
        self.model.train(self.was_training)


def _input_grad(model: nn.Module, x_adv: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Gradient of the summed cross-entropy w.r.t. the inputs only.

    ``autograd.grad`` with ``inputs=x_adv`` accumulates nothing into the
    parameters' ``.grad`` and lets the engine skip the weight-gradient
    kernels, so a step costs one forward and one input backward.
    """
    x_adv = x_adv.detach().requires_grad_(True)
    with torch.enable_grad():
        loss = F.cross_entropy(model(x_adv), y, reduction="sum")
        (grad,) = torch.autograd.grad(loss, x_adv)
    return grad


def _uniform_start(x: torch.Tensor, eps: float, generator: torch.Generator | None) -> torch.Tensor:
    # Uniform in the l-inf ball (Madry et al. 2018; Wong et al. 2020), then
    # into [0, 1]; clipping keeps it inside the ball because x is in [0, 1].
    noise = torch.empty_like(x).uniform_(-eps, eps, generator=generator)
    return (x + noise).clamp_(0, 1)


def _signed_steps(model: nn.Module, x: torch.Tensor, y: torch.Tensor, x_adv: torch.Tensor,
                  eps: float, alpha: float, steps: int) -> torch.Tensor:
    for _ in range(steps):
        grad = _input_grad(model, x_adv, y)
        # Step, then project: delta into [-eps, eps], x + delta into [0, 1].
        # Computing via delta (rather than clamping x_adv between x - eps and
        # x + eps) is the same projection and matches torchattacks' rounding.
        delta = (x_adv + alpha * grad.sign() - x).clamp_(-eps, eps)
        x_adv = (x + delta).clamp_(0, 1)
    return x_adv


def _prepare(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if not torch.is_floating_point(x):
        raise ValueError(f"attack inputs must be floating point in [0, 1], got dtype {x.dtype}")
    return x.detach(), y.detach()


def fgsm(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float,
         alpha: float | None = None, *, model_mode: str = "eval",
         generator: torch.Generator | None = None) -> torch.Tensor:
    """Fast gradient sign method, l-inf radius ``eps``, inputs in [0, 1].

    ``alpha=None`` (default): ``clip_[0,1](x + eps * sgn(grad_x CE))``, one step
    from the clean input (Goodfellow et al. 2015; the paper's footnote 3).
    ``alpha`` given: uniform random start in the eps-ball, one step of size
    ``alpha``, projection onto the ball and [0, 1] (Wong et al. 2020's
    "FGSM with random initialisation", alpha = 1.25 eps there).
    See the module docstring for ``model_mode`` and ``generator``.
    """
    _check_radius("eps", eps)
    _check_radius("alpha", alpha, allow_none=True)
    _check_model_mode(model_mode)
    x, y = _prepare(x, y)
    with _AttackMode(model, model_mode):
        if alpha is None:
            # A step of exactly eps from x is inside the ball: only [0, 1]
            # needs clipping (and this is torchattacks.FGSM's arithmetic).
            grad = _input_grad(model, x, y)
            return (x + eps * grad.sign()).clamp_(0, 1)
        start = _uniform_start(x, eps, generator)
        return _signed_steps(model, x, y, start, eps, alpha, 1)


def pgd(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, alpha: float,
        steps: int, random_start: bool = True, *, model_mode: str = "eval",
        generator: torch.Generator | None = None) -> torch.Tensor:
    """Projected gradient descent on the cross-entropy (Madry et al. 2018), l-inf.

    ``steps`` iterations of ``x_adv <- Proj(x_adv + alpha * sgn(grad))``,
    where Proj clips to the eps-ball around ``x`` and to [0, 1]; starting from
    a uniform point in the ball (``random_start=True``, as Madry et al. train
    and RobustBench/torchattacks evaluate) or from ``x``. Madry et al.'s
    CIFAR-10 setting is eps = 8/255, alpha = 2/255 (7 steps for training;
    the paper evaluates PGD-10). See the module docstring for ``model_mode``
    and ``generator``.
    """
    _check_radius("eps", eps)
    _check_radius("alpha", alpha)
    _check_steps(steps)
    _check_model_mode(model_mode)
    x, y = _prepare(x, y)
    with _AttackMode(model, model_mode):
        start = _uniform_start(x, eps, generator) if random_start else x
        return _signed_steps(model, x, y, start, eps, alpha, steps)


# ------------------------------------------------------------------ config
def _parse_number(key: str, text: str) -> float | None:
    if text.strip().lower() == "none":
        return None
    try:  # Fraction takes "8/255" as well as "0.03"
        return float(Fraction(text.strip()))
    except (ValueError, ZeroDivisionError):
        raise ValueError(f"attack {key} must be a number like 8/255 or 0.03, got {text!r}") from None


def _parse_int(key: str, text: str) -> int:
    try:
        return int(text.strip())
    except ValueError:
        raise ValueError(f"attack {key} must be an integer, got {text!r}") from None


def _parse_bool(key: str, text: str) -> bool:
    value = text.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"attack {key} must be true or false, got {text!r}")


@dataclass(frozen=True)
class AttackConfig:
    """How training inputs are made: natural, FGSM or PGD (validated on creation).

    ``alpha=None`` means: for "fgsm", plain FGSM (a step of eps from x, see
    the module docstring); for "pgd", ``eps / 4`` -- Madry et al.'s 2/255 at
    8/255 and the paper's pair for its 8/255 rows (its 4/255 row used 2/255:
    pass alpha explicitly). ``steps`` and ``random_start`` apply to "pgd"
    only ("fgsm" has a random start exactly when alpha is given). ``steps=10``
    is the paper's PGD-10. ``model_mode`` is the mode the model is in while
    the attack crafts (module docstring).
    """

    mode: str = "natural"
    eps: float = 8 / 255
    alpha: float | None = None
    steps: int = 10
    random_start: bool = True
    model_mode: str = "eval"

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"unknown attack mode {self.mode!r}; choose from {', '.join(MODES)}")
        _check_radius("eps", self.eps)
        _check_radius("alpha", self.alpha, allow_none=True)
        _check_steps(self.steps)
        if not isinstance(self.random_start, bool):
            raise ValueError(f"attack random_start must be True or False, got {self.random_start!r}")
        _check_model_mode(self.model_mode)

    @property
    def step_size(self) -> float | None:
        """The alpha the attack uses (None: plain FGSM or natural)."""
        if self.mode == "pgd" and self.alpha is None:
            return self.eps / 4
        return None if self.mode == "natural" else self.alpha

    @classmethod
    def parse(cls, spec: "str | Mapping[str, Any] | AttackConfig | None") -> "AttackConfig":
        """Build from ``None`` (natural), a config, a mapping of fields, or a string.

        Strings: ``"natural"``, ``"fgsm"``, ``"pgd"``, optionally followed by
        ``:key=value,...``, e.g. ``"pgd:eps=8/255,alpha=2/255,steps=7"`` or
        ``"fgsm:eps=8/255,alpha=10/255"``. Keys: eps, alpha, steps,
        random_start, model_mode. Errors are one-line ValueErrors.
        """
        if spec is None:
            return cls()
        if isinstance(spec, AttackConfig):
            return spec
        names = [f.name for f in fields(cls)]
        if isinstance(spec, Mapping):
            unknown = sorted(str(k) for k in spec if k not in names)
            if unknown:
                raise ValueError(f"unknown attack option(s) {', '.join(unknown)}; "
                                 f"valid options: {', '.join(names)}")
            return cls(**dict(spec))
        if not isinstance(spec, str):
            raise ValueError(f"attack spec must be a string, mapping or AttackConfig, "
                             f"got {type(spec).__name__}")
        mode, _, rest = spec.strip().partition(":")
        values: dict[str, Any] = {"mode": mode.strip().lower()}
        parsers = {"eps": _parse_number, "alpha": _parse_number, "steps": _parse_int,
                   "random_start": _parse_bool, "model_mode": lambda k, v: v.strip().lower()}
        for item in filter(None, (p.strip() for p in rest.split(","))):
            key, eq, value = item.partition("=")
            key = key.strip()
            if not eq or key not in parsers:
                raise ValueError(f"bad attack option {item!r} in {spec!r}; expected key=value "
                                 f"with key in {', '.join(parsers)}")
            values[key] = parsers[key](key, value)
        return cls(**values)

    def attack(self) -> Attack | None:
        """``attack(model, x, y) -> x_adv`` for this config; None for natural."""
        return make_inputs(self)

    def __str__(self) -> str:
        if self.mode == "natural":
            return "natural"
        parts = [f"eps={self.eps:.6g}"]
        if self.step_size is not None:
            parts.append(f"alpha={self.step_size:.6g}")
        if self.mode == "pgd":
            parts += [f"steps={self.steps}", f"random_start={self.random_start}"]
        parts.append(f"model_mode={self.model_mode}")
        return f"{self.mode}({', '.join(parts)})"


def make_inputs(config: "AttackConfig | str | Mapping[str, Any] | None") -> Attack | None:
    """The callable for ``TrainingRun.make_inputs``: ``(model, x, y) -> x_adv``.

    None for natural training. The result is a ``functools.partial`` of
    :func:`fgsm` or :func:`pgd` (picklable, readable repr).
    """
    config = AttackConfig.parse(config)
    if config.mode == "natural":
        return None
    if config.mode == "fgsm":
        return functools.partial(fgsm, eps=config.eps, alpha=config.alpha,
                                 model_mode=config.model_mode)
    return functools.partial(pgd, eps=config.eps, alpha=config.step_size, steps=config.steps,
                             random_start=config.random_start, model_mode=config.model_mode)


# ------------------------------------------------------------------ evaluation
def robust_accuracy(model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
                    attack: Attack, limit: int | None = None) -> float:
    """Accuracy (fraction in [0, 1]) on ``attack(model, x, y)`` over ``batches``.

    The model is in eval mode both while ``attack`` crafts (RobustBench's
    convention; an attack with ``model_mode="train"`` switches itself) and
    while the adversarial examples are classified; its mode is restored
    after. ``limit`` keeps only the first ``limit`` examples (the last batch
    is cut), for a quick estimate. White-box: the attack sees this model.
    """
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ValueError(f"limit must be a positive integer or None, got {limit!r}")
    was_training = model.training
    model.eval()
    correct = None
    count = 0
    try:
        for x, y in batches:
            if limit is not None:
                if count >= limit:
                    break
                x, y = x[: limit - count], y[: limit - count]
            x_adv = attack(model, x, y)
            with torch.no_grad():
                hits = (model(x_adv).argmax(1) == y).sum()
            # Summed on the device; one sync at the end.
            correct = hits if correct is None else correct + hits
            count += y.shape[0]
    finally:
        model.train(was_training)
    if count == 0:
        raise ValueError("robust_accuracy got no examples")
    return float(correct) / count


def fgsm_accuracy(model: nn.Module, batches, eps: float, alpha: float | None = None,
                  limit: int | None = None) -> float:
    """:func:`robust_accuracy` under :func:`fgsm` (plain FGSM unless alpha is given)."""
    return robust_accuracy(model, batches, functools.partial(fgsm, eps=eps, alpha=alpha), limit)


def pgd_accuracy(model: nn.Module, batches, eps: float, alpha: float, steps: int,
                 random_start: bool = True, limit: int | None = None) -> float:
    """:func:`robust_accuracy` under :func:`pgd`."""
    attack = functools.partial(pgd, eps=eps, alpha=alpha, steps=steps, random_start=random_start)
    return robust_accuracy(model, batches, attack, limit)
