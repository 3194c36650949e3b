"""Benchmark grids: a YAML file -> validated trial configs (pure functions, no Ray).

A grid is datasets x models x methods x seeds (x batch sizes x augmentations
x weight decays x training modes), filtered by ``include``/``exclude`` and
adjusted by ``overrides``. Everything wrong with a file is reported at once,
one line per problem, naming the file, the key path and the valid choices;
:class:`GridError` carries the lines.

Example (``jobs/quickstart.yaml``)::

    name: quickstart
    epochs: 40
    seeds: 3                      # 3 -> seeds 0, 1, 2; or a list [0, 7]
    datasets: [mnist1d]
    models: [mnist1d-cnn]
    methods: all                  # or a list of names
    batch_sizes: [128]
    resources: {cpu: 1, gpu: 0}
    max_concurrent: 2

The file is read by :mod:`aalr_ray.safeyaml` (``safe_load`` without anchors,
aliases or repeated keys; at most 1 MB, 50 levels, 20,000 values). Each
trial's config is then checked the way a run checks it (:class:`RunConfig`,
every method option's type and range, the method built once on a tiny
model), so a value an override sets is checked like the same value at the
top level, and nothing that passes here fails every trial later. Import
paths (``package.module:function``) are imported here: a grid file runs
code in the driver, like a Python script.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import itertools
import json
import math
import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from . import safeyaml
from .attacks import AttackConfig
from .controller import FINALS
from .core import WINDOWS
from .data import AUGMENTATIONS, builtin_input_shape, dataset_names, valid_augmentations
from .methods import METHODS, OPTIMIZER_CHOICES, STEP_RECIPES, method_names, optimizer_problems
from .models import ModelShapeError, check_input_shape, model_names
from .train import EPOCH_LOSSES, ROBUST_EVAL_DEFAULTS, RunConfig

__all__ = ["Grid", "GridError", "load_grid", "parse_grid", "expand", "smoke_configs", "trial_name",
           "option_problems", "TRIAL_KEYS", "SMOKE", "MAX_TRIALS"]

# Keys a trial config has, besides the run's own (RunConfig) fields.
TRIAL_KEYS = ("trial_name",)
# Keys include/exclude/overrides may match on.
MATCH_KEYS = ("dataset", "model", "method", "seed", "batch_size", "augmentation", "weight_decay", "training")
OVERRIDE_KEYS = ("epochs", "batch_size", "weight_decay", "method_options", "augmentation")
# --smoke: the grid, shrunk to a covering set on tiny data (see smoke_configs).
SMOKE = {"epochs": 2, "batch_size": 4, "train_limit": 4, "test_limit": 4, "robust_subset": 4, "attack_steps": 2}

# Ranges. A name is one path component under --storage; numbers beyond these
# are typos or would wait forever for resources no machine has.
NAME_MAX = 100
MAX_TRIALS = 10_000  # the product of the axes, before include/exclude
MAX_INT = 2**31 - 1  # epochs, batch sizes, max_concurrent, robust_eval subset
MAX_SEED = 2**63 - 1  # torch.manual_seed takes up to 2**64 - 1; epoch seeds are taken mod 2**63
MAX_RESOURCES = {"cpu": 1024, "gpu": 64}  # per trial
MAX_WORKERS = 1024  # workers_per_trial
_MESSAGE_CHARS = 2000


class GridError(ValueError):
    """Every problem of a grid file, one line each."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("\n".join(problems))


@dataclass
class Grid:
    name: str
    epochs: int
    seeds: list[int]
    datasets: list[str]
    models: list[str]
    methods: list[str]
    batch_sizes: list[int] = field(default_factory=lambda: [128])
    augmentations: list[str] = field(default_factory=lambda: ["none"])
    weight_decays: list[float] = field(default_factory=lambda: [5e-4])
    training: list[Any] = field(default_factory=lambda: ["natural"])
    robust_eval: dict | None = None
    method_options: dict = field(default_factory=dict)
    epoch_loss: str = "train-mean"
    device: str = "auto"
    resources: dict = field(default_factory=lambda: {"cpu": 1, "gpu": 0})
    max_concurrent: int | None = None
    workers_per_trial: int = 1
    include: list[dict] = field(default_factory=list)
    exclude: list[dict] = field(default_factory=list)
    overrides: list[dict] = field(default_factory=list)
    source: str = "<grid>"
    # The key path of each entry of ``overrides`` in the file ("overrides[2]").
    override_paths: list[str] = field(default_factory=list)


# ------------------------------------------------------------------ checking
def _r(value: Any, limit: int = 80) -> str:
    """A value for a message: its repr, cut to ``limit`` characters (one line: repr escapes newlines)."""
    try:
        text = repr(value)
    except Exception:  # noqa: BLE001 - a value from YAML always has a repr; be sure anyway
        text = f"<{type(value).__name__}>"
    return text if len(text) <= limit else text[:limit] + "..."


def _text(message: Any, limit: int = 300) -> str:
    """An exception's message as one line of at most ``limit`` characters."""
    text = " ".join(str(message).split())
    return text if len(text) <= limit else text[:limit] + "..."


def _k(key: Any) -> str:
    """A mapping key as a key-path component."""
    return key if isinstance(key, str) and re.fullmatch(r"[A-Za-z0-9_.:/-]{1,60}", key) else _r(key, 60)


def _number_hint(value: Any) -> str:
    """YAML 1.1 reads ``1e-3`` (no dot) as text; say so when a string looks like a number."""
    if isinstance(value, str):
        try:
            float(value)
        except ValueError:
            return ""
        return f" (YAML reads {_r(value)} as text; write it with a dot, e.g. 1.0e-3)"
    return ""


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_real(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


class _Checker:
    """Collects problems instead of stopping at the first."""

    def __init__(self, source: str):
        self.source = source
        self.problems: list[str] = []
        self._seen: set[str] = set()

    def add(self, path: str, message: str) -> None:
        line = " ".join(f"{self.source}: {path}: {message}".split())[:_MESSAGE_CHARS]  # one line, whatever the input
        if line not in self._seen:  # many trials share one problem: say it once
            self._seen.add(line)
            self.problems.append(line)

    def typed(self, path: str, value: Any, kind: type | tuple, what: str) -> bool:
        ok = isinstance(value, kind) and not (isinstance(value, bool) and bool not in _as_tuple(kind))
        if not ok:
            self.add(path, f"expected {what}, got {_r(value)}")
        return ok

    def positive_int(self, path: str, value: Any, maximum: int = MAX_INT) -> bool:
        if not _is_int(value) or value <= 0:
            self.add(path, f"expected a positive integer, got {_r(value)}{_number_hint(value)}")
            return False
        if value > maximum:
            self.add(path, f"expected a positive integer of at most {maximum}, got {_r(value)}")
            return False
        return True

    def name_list(self, path: str, value: Any, valid: list[str], what: str, import_path: bool = False) -> list:
        items = value if isinstance(value, list) else None
        if items is None or not items:
            self.add(path, f"expected a non-empty list of {what} names, got {_r(value)}")
            return []
        good = []
        for i, item in enumerate(items):
            if not isinstance(item, str):
                self.add(f"{path}[{i}]", f"expected a {what} name, got {_r(item)}")
            elif item in good:
                self.add(f"{path}[{i}]", f"{_r(item)} is listed twice")
            elif item in valid:
                good.append(item)
            elif import_path and ":" in item:
                if self._importable(f"{path}[{i}]", item):
                    good.append(item)
            else:
                extra = " (or an import path package.module:function)" if import_path else ""
                self.add(f"{path}[{i}]", f"unknown {what} {_r(item)}; choose from: {', '.join(valid)}{extra}")
        return good

    def _importable(self, path: str, target: str) -> bool:
        module, _, attr = target.partition(":")
        if not re.fullmatch(r"[A-Za-z_][\w.]*", module) or not re.fullmatch(r"[A-Za-z_]\w*", attr):
            self.add(path, f"expected an import path package.module:function, got {_r(target)}")
            return False
        try:  # the module's own code runs here: anything may go wrong in it
            obj = getattr(importlib.import_module(module), attr)
        except (Exception, SystemExit) as exc:  # noqa: BLE001
            first = (str(exc).strip().splitlines() or [""])[0]
            self.add(path, f"cannot import {_r(target)}: {type(exc).__name__}: {_text(first, 200)}")
            return False
        if not callable(obj):
            self.add(path, f"{_r(target)} is not callable")
            return False
        return True


def _as_tuple(kind) -> tuple:
    return kind if isinstance(kind, tuple) else (kind,)


_FIELDS = {
    "name": f"experiment name: 1-{NAME_MAX} letters, digits, '.', '_' or '-'",
    "epochs": "epochs per trial",
    "seeds": "a count n (seeds 0..n-1) or a list of integers",
    "datasets": "list of dataset names",
    "models": "list of model names",
    "methods": "list of method names, or 'all'",
    "batch_sizes": "list of batch sizes (default [128])",
    "augmentations": "list of augmentations (default [none])",
    "weight_decay": "a number or a list (default 5e-4)",
    "training": "list of training modes: natural | fgsm | pgd, as strings or mappings",
    "robust_eval": "mapping of FGSM/PGD evaluation settings",
    "method_options": "mapping method -> mapping of option overrides",
    "epoch_loss": "train-mean | clean-pass",
    "device": "auto | cpu | cuda | cuda:N",
    "resources": "mapping cpu, gpu per trial",
    "max_concurrent": "trials running at once",
    "workers_per_trial": "data-parallel workers per trial (Ray Train, DDP); default 1",
    "include": "list of mappings; keep only trials matching one",
    "exclude": "list of mappings; drop trials matching one",
    "overrides": "list of {match: mapping, set: mapping}",
}
_REQUIRED = ("name", "epochs", "datasets", "models", "methods")


def _weight_decay_problem(value: Any) -> str | None:
    if not _is_real(value) or value < 0:
        return f"expected a finite number >= 0, got {_r(value)}{_number_hint(value)}"
    return None


def _number_list(check: _Checker, path: str, value: Any) -> list[float]:
    if isinstance(value, list) and not value:
        check.add(path, "expected a number or a non-empty list of numbers, got []")
    items = value if isinstance(value, list) else [value]
    good = []
    for i, item in enumerate(items):
        where = f"{path}[{i}]" if isinstance(value, list) else path
        problem = _weight_decay_problem(item)
        if problem:
            check.add(where, problem)
        elif float(item) in good:
            check.add(where, f"{_r(item)} is listed twice")
        else:
            good.append(float(item))
    return good


def _match_list(check: _Checker, path: str, value: Any) -> list[dict]:
    if not isinstance(value, list):
        check.add(path, f"expected a list of mappings, got {_r(value)}")
        return []
    good = []
    for i, entry in enumerate(value):
        if not isinstance(entry, dict) or not entry:
            check.add(f"{path}[{i}]", f"expected a non-empty mapping of {', '.join(MATCH_KEYS)}, got {_r(entry)}")
            continue
        bad = [k for k in entry if k not in MATCH_KEYS]
        for key in bad:
            check.add(f"{path}[{i}].{_k(key)}", f"unknown key; choose from: {', '.join(MATCH_KEYS)}")
        if not bad:
            good.append(entry)
    return good


# ------------------------------------------------------------ method options
# Each option takes what its default's type says (an int where a float is
# expected, never a bool for a number, a bool only where the default is one),
# narrowed to the values the method really accepts.
_OPTION_CHOICES = {
    "window": WINDOWS,  # aalr_ray/core.py
    "final": FINALS,  # aalr_ray/controller.py
    "recipe": ("auto", *sorted(STEP_RECIPES)),
    "mode": ("triangular", "triangular2", "exp_range"),  # torch CyclicLR
    "threshold_mode": ("rel", "abs"),  # torch ReduceLROnPlateau
    "schedule": ("cosine", "none"),
}
# > 0 (the others >= 0): step sizes, scales, and counts that must be at least 1.
_OPTION_POSITIVE = {"lr", "base_lr", "max_lr", "d_coef", "d0", "reps_rel", "T_0", "T_mult", "phase1_patience",
                    "step_size_epochs"}
# A number, although the default is an integer (CLR's half cycle may be a fraction of epochs).
_OPTION_REAL = {"step_size_epochs"}
# Options whose default is None: what they take besides null.
_OPTION_NONE_DEFAULT = {"lr": "number", "momentum": "number", "gamma": "number", "reps_rel": "number",
                        "nesterov": "bool", "milestones": "fractions", "best_path": "path"}


# The AALR methods' optimizer (aalr_ray/methods.py): the types here; which names import and
# which options the chosen optimizer takes are checked together in option_problems.
_OPTION_OPTIMIZER = {
    "optimizer": (f"a string: {OPTIMIZER_CHOICES}", lambda v: isinstance(v, str)),
    "optimizer_options": ("a mapping of the optimizer's own keyword options",
                          lambda v: isinstance(v, dict) and all(isinstance(k, str) for k in v) and _jsonable(v)),
}


def _option_rule(method: str, key: str) -> tuple[str, Callable[[Any], bool]]:
    """(what option ``key`` of ``method`` takes, a test of a value)."""
    default = METHODS[method].defaults[key]
    if key in _OPTION_OPTIMIZER:
        return _OPTION_OPTIMIZER[key]
    if default is None:
        kind = _OPTION_NONE_DEFAULT.get(key, "any")
        what, test = _option_kind_rule(kind, key)
        return f"{what}, or null", lambda v: v is None or test(v)
    if key in _OPTION_CHOICES:
        choices = _OPTION_CHOICES[key]
        return f"one of: {', '.join(choices)}", lambda v: isinstance(v, str) and v in choices
    if isinstance(default, bool):
        return _option_kind_rule("bool", key)
    if isinstance(default, tuple):
        return _option_kind_rule("betas", key)
    if isinstance(default, int) and key not in _OPTION_REAL:
        return _option_kind_rule("int", key)
    if isinstance(default, (int, float)):
        return _option_kind_rule("number", key)
    return _option_kind_rule("any", key)


def _option_kind_rule(kind: str, key: str) -> tuple[str, Callable[[Any], bool]]:
    positive = key in _OPTION_POSITIVE
    low = "> 0" if positive else ">= 0"
    if kind == "bool":
        return "true or false", lambda v: isinstance(v, bool)
    if kind == "int":
        return f"an integer {'>= 1' if positive else '>= 0'}", \
            lambda v: _is_int(v) and v >= (1 if positive else 0) and v <= MAX_INT
    if kind == "number" and key == "factor":
        return "a number in (0, 1)", lambda v: _is_real(v) and 0 < v < 1  # ReduceLROnPlateau: factor < 1
    if kind == "number":
        return f"a finite number {low}", lambda v: _is_real(v) and (v > 0 if positive else v >= 0)
    if kind == "betas":
        return "a pair of numbers in [0, 1)", \
            lambda v: isinstance(v, (list, tuple)) and len(v) == 2 and all(_is_real(b) and 0 <= b < 1 for b in v)
    if kind == "fractions":
        return "a non-empty list of fractions of the run in (0, 1]", \
            lambda v: isinstance(v, list) and 0 < len(v) <= 1000 and all(_is_real(f) and 0 < f <= 1 for f in v)
    if kind == "path":
        return "a file path", lambda v: isinstance(v, str) and 0 < len(v) <= 4096 and "\x00" not in v
    return "a JSON value", lambda v: _jsonable(v)


def _jsonable(value: Any) -> bool:
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError):
        return False
    return True


def option_problems(method: str, options: Any) -> list[tuple[str, str]]:
    """(option, problem) for every option of ``options`` that ``method`` does not take
    (option "" when ``options`` is not a mapping at all)."""
    if not isinstance(options, dict):
        return [("", f"expected a mapping of options, got {_r(options)}")]
    spec = METHODS[method]
    problems = []
    for key, value in options.items():
        if key not in spec.defaults:
            problems.append((key, f"unknown option; choose from: "
                                      f"{', '.join(sorted(spec.defaults)) or '(none)'}"))
            continue
        what, test = _option_rule(method, key)
        if not test(value):
            problems.append((key, f"expected {what}, got {_r(value)}{_number_hint(value)}"))
    # Which optimizer options are valid depends on the optimizer: check them together, once each
    # alone is well typed (building it on a dummy parameter needs torch, never Ray).
    if "optimizer" in spec.defaults and not {k for k, _ in problems} & {"lr", "momentum", *_OPTION_OPTIMIZER}:
        problems += optimizer_problems({**spec.defaults, **options})
    return problems


@functools.lru_cache(maxsize=256)
def _build_problem(method: str, options_json: str, model_name: str, epochs: int, weight_decay: float) -> str | None:
    """Build the method once on a tiny model: what the options do together (e.g. Nesterov
    without momentum) fails here, not in every trial. None if it builds."""
    import torch

    from .methods import build_method

    try:
        build_method(method, torch.nn.Linear(2, 2), epochs=epochs, steps_per_epoch=1, model_name=model_name,
                     weight_decay=weight_decay, options=json.loads(options_json))
    except Exception as exc:  # noqa: BLE001 - any error here is the options' fault
        first = (str(exc).strip().splitlines() or [""])[0]
        return f"method {method!r} does not build with these options: {type(exc).__name__}: {_text(first)}"
    return None


# ------------------------------------------------------------------ parsing
def _parse_name(check: _Checker, raw: dict) -> str:
    name = raw.get("name", "grid")
    if "name" in raw and check.typed("name", name, str, "a string"):
        if not re.fullmatch(r"[A-Za-z0-9_.-]{1,%d}" % NAME_MAX, name) or name in (".", ".."):
            check.add("name", f"expected one path component of 1-{NAME_MAX} letters, digits, '.', '_' or '-' "
                              f"(not '.' or '..'), got {_r(name)}")
    return name


def _parse_seeds(check: _Checker, seeds_raw: Any) -> list[int]:
    seeds: list[int] = []
    if _is_int(seeds_raw):
        if check.positive_int("seeds", seeds_raw, maximum=MAX_TRIALS):
            seeds = list(range(seeds_raw))
    elif isinstance(seeds_raw, list) and seeds_raw:
        for i, s in enumerate(seeds_raw):
            if not _is_int(s) or not 0 <= s <= MAX_SEED:
                check.add(f"seeds[{i}]", f"expected an integer seed in 0..2**63-1, got {_r(s)}")
            else:
                seeds.append(s)
        if len(set(seeds)) != len(seeds):
            check.add("seeds", f"repeated seeds in {_r(seeds_raw)}")
    else:
        check.add("seeds", f"expected {_FIELDS['seeds']}, got {_r(seeds_raw)}")
    return seeds


def _parse_axes(check: _Checker, raw: dict) -> dict:
    """datasets, models, methods, batch_sizes, augmentations, weight_decays, training."""
    axes = {"datasets": [], "models": [], "methods": []}
    if "datasets" in raw:
        axes["datasets"] = check.name_list("datasets", raw["datasets"], dataset_names(), "dataset", True)
    if "models" in raw:
        axes["models"] = check.name_list("models", raw["models"], model_names(), "model", True)
    if raw.get("methods") == "all":
        axes["methods"] = method_names()
    elif "methods" in raw:
        axes["methods"] = check.name_list("methods", raw["methods"], method_names(), "method")
    axes["batch_sizes"] = _parse_batch_sizes(check, raw.get("batch_sizes", [128]))
    axes["augmentations"] = check.name_list("augmentations", raw.get("augmentations", ["none"]),
                                            list(AUGMENTATIONS), "augmentation")
    axes["weight_decays"] = _number_list(check, "weight_decay", raw.get("weight_decay", 5e-4))
    axes["training"] = _parse_training(check, raw.get("training", ["natural"]))
    return axes


def _parse_batch_sizes(check: _Checker, value: Any) -> list[int]:
    if not isinstance(value, list) or not value:
        check.add("batch_sizes", f"expected a non-empty list of positive integers, got {_r(value)}")
        return []
    good = []
    for i, b in enumerate(value):
        if check.positive_int(f"batch_sizes[{i}]", b):
            if b in good:
                check.add(f"batch_sizes[{i}]", f"{b} is listed twice")
            else:
                good.append(b)
    return good


def _parse_training(check: _Checker, value: Any) -> list:
    if not isinstance(value, list) or not value:
        check.add("training", f"expected a non-empty list of training modes, got {_r(value)}")
        return []
    good, seen = [], []
    for i, mode in enumerate(value):
        try:
            attack = AttackConfig.parse(mode)
        except (ValueError, TypeError) as exc:
            check.add(f"training[{i}]", _text(exc))
            continue
        if attack in seen:
            check.add(f"training[{i}]", f"{_r(mode)} is the same training mode as an earlier entry")
            continue
        seen.append(attack)
        good.append(mode)
    return good


def _parse_robust_eval(check: _Checker, robust_eval: Any) -> dict | None:
    if robust_eval is None:
        return None
    if not isinstance(robust_eval, dict):
        check.add("robust_eval", f"expected a mapping of {', '.join(ROBUST_EVAL_DEFAULTS)}, got {_r(robust_eval)}")
        return None
    bad = [key for key in robust_eval if key not in ROBUST_EVAL_DEFAULTS]
    for key in bad:
        check.add(f"robust_eval.{_k(key)}", f"unknown key; choose from: {', '.join(ROBUST_EVAL_DEFAULTS)}")
    subset = robust_eval.get("subset")
    if subset is not None and not check.positive_int("robust_eval.subset", subset):
        bad.append("subset")
    if bad:
        return None
    try:
        RunConfig(model="mlp", dataset="digits", method="aalr", epochs=1, robust_eval=robust_eval)
    except (ValueError, TypeError) as exc:
        check.add("robust_eval", _text(exc))
        return None
    return robust_eval


def _parse_method_options(check: _Checker, method_options: Any) -> dict:
    """The valid part of ``method_options``; every invalid option is reported."""
    if method_options is None:
        return {}
    if not isinstance(method_options, dict):
        check.add("method_options", f"expected a mapping method -> options, got {_r(method_options)}")
        return {}
    good = {}
    for method, options in method_options.items():
        if method not in METHODS:
            check.add(f"method_options.{_k(method)}", f"unknown method; choose from: {', '.join(method_names())}")
            continue
        problems = option_problems(method, options)
        for key, problem in problems:
            check.add(f"method_options.{method}" + (f".{_k(key)}" if key != "" else ""), problem)
        if isinstance(options, dict):
            bad = {key for key, _ in problems}
            good[method] = {k: v for k, v in options.items() if k not in bad}
    return good


def _parse_resources(check: _Checker, resources: Any) -> dict:
    if not isinstance(resources, dict):
        check.add("resources", f"expected a mapping with cpu and gpu, got {_r(resources)}")
        return {"cpu": 1, "gpu": 0}
    good = {"cpu": 1, "gpu": 0}
    for key, value in resources.items():
        if key not in ("cpu", "gpu"):
            check.add(f"resources.{_k(key)}", "unknown resource; choose from: cpu, gpu")
            continue
        top = MAX_RESOURCES[key]
        ok = _is_real(value) and (value > 0 if key == "cpu" else value >= 0) and value <= top
        if not ok:
            check.add(f"resources.{key}", f"expected a finite number {'> 0' if key == 'cpu' else '>= 0'} and "
                                          f"<= {top} (fractions share a device), got {_r(value)}")
        elif value > 1 and value != int(value):
            check.add(f"resources.{key}", f"a request above 1 must be a whole number (Ray's rule), got {_r(value)}")
        else:
            good[key] = value
    return good


def _parse_runtime(check: _Checker, raw: dict) -> dict:
    """epoch_loss, device, resources, max_concurrent, workers_per_trial."""
    epoch_loss = raw.get("epoch_loss", "train-mean")
    if not isinstance(epoch_loss, str) or epoch_loss not in EPOCH_LOSSES:
        check.add("epoch_loss", f"unknown value {_r(epoch_loss)}; choose from: {', '.join(EPOCH_LOSSES)}")
        epoch_loss = EPOCH_LOSSES[0]
    device = raw.get("device", "auto")
    if not (isinstance(device, str) and re.fullmatch(r"auto|cpu|cuda(:\d{1,3})?|mps", device)):
        check.add("device", f"unknown device {_r(device)}; choose from: auto, cpu, cuda, cuda:N, mps")
        device = "auto"
    max_concurrent = raw.get("max_concurrent")
    if max_concurrent is not None and not check.positive_int("max_concurrent", max_concurrent):
        max_concurrent = None
    workers_per_trial = raw.get("workers_per_trial", 1)
    if not check.positive_int("workers_per_trial", workers_per_trial, maximum=MAX_WORKERS):
        workers_per_trial = 1
    return {"epoch_loss": epoch_loss, "device": device,
            "resources": _parse_resources(check, raw.get("resources", {"cpu": 1, "gpu": 0})),
            "max_concurrent": max_concurrent, "workers_per_trial": workers_per_trial}


def _parse_override_set(check: _Checker, path: str, values: dict) -> dict:
    """The valid part of an override's ``set``, checked like the same keys at the top level."""
    good = {}
    for key, value in values.items():
        where = f"{path}.set.{_k(key)}"
        if key not in OVERRIDE_KEYS:
            check.add(where, f"cannot override; choose from: {', '.join(OVERRIDE_KEYS)}")
        elif key in ("epochs", "batch_size"):
            if check.positive_int(where, value):
                good[key] = value
        elif key == "weight_decay":
            problem = _weight_decay_problem(value)
            if problem:
                check.add(where, problem)
            else:
                good[key] = float(value)
        elif key == "augmentation":
            if not isinstance(value, str) or value not in AUGMENTATIONS:
                check.add(where, f"unknown augmentation {_r(value)}; choose from: {', '.join(AUGMENTATIONS)}")
            else:
                good[key] = value  # its pairing with each matched dataset: _trial_problems
        elif not isinstance(value, dict):  # method_options: checked per matched trial, against its method
            check.add(where, f"expected a mapping of options of the matched trials' method, got {_r(value)}")
        else:
            good[key] = value
    return good


def _parse_overrides(check: _Checker, overrides_raw: Any) -> tuple[list[dict], list[str]]:
    if not isinstance(overrides_raw, list):
        check.add("overrides", f"expected a list of {{match, set}} mappings, got {_r(overrides_raw)}")
        return [], []
    overrides, paths = [], []
    for i, entry in enumerate(overrides_raw):
        path = f"overrides[{i}]"
        if not isinstance(entry, dict) or set(entry) != {"match", "set"} or not isinstance(entry["set"], dict):
            check.add(path, f"expected a mapping with keys match and set, got {_r(entry)}")
            continue
        matched = _match_list(check, f"{path}.match", [entry["match"]])
        values = _parse_override_set(check, path, entry["set"])
        if matched and values:
            overrides.append({"match": entry["match"], "set": values})
            paths.append(path)
    return overrides, paths


def parse_grid(raw: Any, source: str = "<grid>") -> Grid:
    """Validate a parsed grid file; raise :class:`GridError` listing every problem."""
    check = _Checker(source)
    if not isinstance(raw, dict):
        what = "an empty file" if raw is None else _r(raw)
        raise GridError([f"{source}: expected a mapping of {', '.join(_FIELDS)}, got {what}"])
    for key in raw:
        if key not in _FIELDS:
            check.add(_k(key), f"unknown key; valid keys: {', '.join(_FIELDS)}")
    for key in _REQUIRED:
        if key not in raw:
            check.add(key, f"missing ({_FIELDS[key]})")
    epochs = raw.get("epochs", 1)
    if "epochs" in raw and not check.positive_int("epochs", epochs):
        epochs = 1  # reported; a stand-in lets the trial checks still run
    overrides, override_paths = _parse_overrides(check, raw.get("overrides", []))
    grid = Grid(name=_parse_name(check, raw), epochs=epochs, seeds=_parse_seeds(check, raw.get("seeds", 1)),
                **_parse_axes(check, raw), robust_eval=_parse_robust_eval(check, raw.get("robust_eval")),
                method_options=_parse_method_options(check, raw.get("method_options", {})),
                **_parse_runtime(check, raw),
                include=_match_list(check, "include", raw.get("include", [])),
                exclude=_match_list(check, "exclude", raw.get("exclude", [])),
                overrides=overrides, override_paths=override_paths, source=source)
    # Every trial, checked as a run would check it, among the values that are valid.
    if grid.datasets and grid.models and grid.methods and grid.augmentations:
        stand_in = dataclasses.replace(grid, seeds=grid.seeds or [0], batch_sizes=grid.batch_sizes or [128],
                                       weight_decays=grid.weight_decays or [5e-4],
                                       training=grid.training or ["natural"])
        known = set(check.problems)
        check.problems += [p for p in _trial_problems(stand_in, report_unmatched=not check.problems)
                           if p not in known]
    if check.problems:
        raise GridError(check.problems)
    return grid


def load_grid(path: str | Path) -> Grid:
    """Read (:func:`aalr_ray.safeyaml.load_file`: ``safe_load`` within limits) and validate a grid file."""
    path = Path(path)
    source = str(path) if str(path).isprintable() else ascii(str(path))
    try:
        missing = not path.exists() and not path.is_symlink()
    except (OSError, ValueError) as exc:  # e.g. a NUL byte in the path
        raise GridError([f"{source}: not a usable path ({_text(exc)})"]) from None
    if missing:
        raise GridError([f"{source}: no such grid file"])
    try:
        raw = safeyaml.load_file(path)
    except safeyaml.YamlRefused as exc:
        raise GridError([f"{source}: {exc}"]) from None
    return parse_grid(raw, source=source)


# ----------------------------------------------------------------- expansion
_RUN_FIELDS = tuple(f.name for f in dataclasses.fields(RunConfig))


def _matches(config: dict, entry: dict) -> bool:
    return all(_matches_value(config, key, value) for key, value in entry.items())


def _matches_value(config: dict, key: str, value) -> bool:
    if key == "training":  # by mode name ("fgsm") or by the exact spec ("fgsm:eps=4/255")
        return value == config["training"] or value == AttackConfig.parse(config["training"]).mode
    return config[key] == value


def trial_name(config: dict) -> str:
    """A short readable name: method-model-dataset[-aug][-bs][-mode]-s<seed>."""
    parts = [config["method"], config["model"].split(":")[-1], config["dataset"].split(":")[-1]]
    if config["augmentation"] != "none":
        parts.append(config["augmentation"])
    parts.append(f"bs{config['batch_size']}")
    mode = AttackConfig.parse(config["training"]).mode
    if mode != "natural":
        parts.append(mode)
    parts.append(f"s{config['seed']}")
    return "-".join(parts)


def _name_part(key: str, value: Any) -> str:
    if key == "weight_decay":
        return f"wd{value:g}"
    if key == "training":
        value = str(AttackConfig.parse(value))
    return re.sub(r"[^A-Za-z0-9.]+", "_", str(value)).strip("_")


def _name_trials(configs: list[dict]) -> None:
    """Set each ``trial_name``; trials that :func:`trial_name` cannot tell apart (two weight
    decays, two FGSM radii, two factories of one function name) get what differs appended."""
    groups: dict[str, list[dict]] = defaultdict(list)
    for config in configs:
        config["trial_name"] = trial_name(config)
        groups[config["trial_name"]].append(config)
    for name, group in groups.items():
        if len(group) > 1:
            varying = [k for k in ("model", "dataset", "weight_decay", "training")
                       if len({json.dumps(c[k], sort_keys=True) for c in group}) > 1]
            for config in group:
                config["trial_name"] = "-".join([name, *(_name_part(k, config[k]) for k in varying)])
    counts = defaultdict(int)
    for config in configs:
        counts[config["trial_name"]] += 1
    numbered: dict[str, int] = defaultdict(int)
    for config in configs:  # still equal: numbered in order
        name = config["trial_name"]
        if counts[name] > 1:
            numbered[name] += 1
            config["trial_name"] = f"{name}-{numbered[name]}"


def trial_count(grid: Grid) -> int:
    """The product of the grid's axes (before include/exclude)."""
    return math.prod(len(axis) for axis in (grid.datasets, grid.models, grid.augmentations, grid.batch_sizes,
                                            grid.weight_decays, grid.training, grid.methods, grid.seeds))


def _expand_traced(grid: Grid) -> tuple[list[tuple[dict, dict]], set[int]]:
    """[(config, origin)] and the indices of the overrides that matched a trial. ``origin``
    maps each field an override set ("epochs", "method_options.lr") to its key path."""
    traced, matched = [], set()
    for dataset, model, augmentation, batch_size, weight_decay, training, method, seed in itertools.product(
            grid.datasets, grid.models, grid.augmentations, grid.batch_sizes, grid.weight_decays, grid.training,
            grid.methods, grid.seeds):
        config = RunConfig(model=model, dataset=dataset, method=method, epochs=grid.epochs, seed=seed,
                           batch_size=batch_size, weight_decay=weight_decay, augmentation=augmentation,
                           training=training, robust_eval=grid.robust_eval, epoch_loss=grid.epoch_loss,
                           device=grid.device,
                           method_options=dict(grid.method_options.get(method, {}))).to_dict()
        if grid.include and not any(_matches(config, entry) for entry in grid.include):
            continue
        if any(_matches(config, entry) for entry in grid.exclude):
            continue
        origin: dict[str, str] = {}
        for i, override in enumerate(grid.overrides):
            if not _matches(config, override["match"]):
                continue
            matched.add(i)
            path = grid.override_paths[i] if i < len(grid.override_paths) else f"overrides[{i}]"
            for key, value in override["set"].items():
                if key == "method_options":
                    config[key] = {**config[key], **value}
                    origin.update({f"{key}.{k}": f"{path}.set.{key}.{_k(k)}" for k in value})
                else:
                    config[key] = value
                    origin[key] = f"{path}.set.{key}"
        traced.append((config, origin))
    _name_trials([config for config, _ in traced])
    return traced, matched


def expand(grid: Grid) -> list[dict]:
    """The grid's trial configs: RunConfig fields plus ``trial_name``. Pure and ordered."""
    return [config for config, _ in _expand_traced(grid)[0]]


# ------------------------------------------------------------- trial checks
def _trial_problems(grid: Grid, report_unmatched: bool = True) -> list[str]:
    """Each trial checked as its run will check it: model x dataset shapes, augmentation x
    dataset, method options (types, then a build), RunConfig; overrides that match nothing."""
    check = _Checker(grid.source)
    count = trial_count(grid)
    if count > MAX_TRIALS:
        return [f"{grid.source}: the axes make {count} trials (before include/exclude); the limit is {MAX_TRIALS}"]
    traced, matched = _expand_traced(grid)
    if not traced:
        return [f"{grid.source}: include/exclude leave no trials"]
    seen: set = set()
    for config, origin in traced:
        _check_pairs(check, config, origin, seen)
        _check_options(check, config, origin)
        try:
            RunConfig(**{k: config[k] for k in _RUN_FIELDS})
        except (ValueError, TypeError) as exc:
            check.add(f"trial {config['trial_name']}", _text(exc))
    if report_unmatched:
        for i, path in enumerate(grid.override_paths):
            if i not in matched:
                check.add(f"{path}.match", f"matches no trial: {_r(grid.overrides[i]['match'])}")
    return check.problems


def _check_pairs(check: _Checker, config: dict, origin: dict, seen: set) -> None:
    """A model that cannot take a dataset's input shape; an augmentation a dataset does not support."""
    dataset, model, augmentation = config["dataset"], config["model"], config["augmentation"]
    shape = builtin_input_shape(dataset)
    if shape is not None and (model, dataset) not in seen:
        seen.add((model, dataset))
        try:
            check_input_shape(model, shape)
        except ModelShapeError as exc:
            check.add("models/datasets", f"{exc} (dataset {dataset!r}); drop the pair with "
                                         f"exclude: [{{model: {model}, dataset: {dataset}}}]")
    path = origin.get("augmentation", "augmentations")
    if (path, augmentation, dataset) not in seen:
        seen.add((path, augmentation, dataset))
        valid = valid_augmentations(dataset)
        if augmentation not in valid:
            fix = ", or exclude the pair" if path == "augmentations" else ", or narrow the override's match"
            check.add(path, f"{augmentation!r} does not apply to dataset {dataset!r}; "
                            f"choose from: {', '.join(valid)}{fix}")


def _check_options(check: _Checker, config: dict, origin: dict) -> None:
    method, options = config["method"], config["method_options"]
    problems = option_problems(method, options)
    for key, problem in problems:
        if f"method_options.{key}" in origin:  # set by an override: say which method's trials it reached
            check.add(origin[f"method_options.{key}"], f"{problem} (in trials of method {method!r})")
        else:
            check.add(f"method_options.{method}.{_k(key)}", problem)
    if problems:
        return
    problem = _build_problem(method, json.dumps(options, sort_keys=True), config["model"] if method == "step" else "",
                             config["epochs"], config["weight_decay"])
    if problem:
        paths = sorted({p for k, p in origin.items() if k.startswith("method_options.")})
        check.add(" and ".join(paths) or f"method_options.{method}", problem)


# --------------------------------------------------------------------- smoke
def smoke_configs(configs: list[dict]) -> list[dict]:
    """A covering subset of the trials on tiny data, for a CPU check of a paper-scale grid.

    Every model x dataset pair, method, augmentation, batch size and training
    mode of the grid still runs at least once (greedily, first seed only), for
    ``SMOKE["epochs"]`` epochs on four examples (torchvision sets are
    replaced by synthetic data of the same shape), with PGD cut to two steps
    and the robust evaluation cut to a handful of examples.
    """
    first_seed = min(c["seed"] for c in configs)
    pool = [c for c in configs if c["seed"] == first_seed]
    facets = ("method", "augmentation", "batch_size")

    def keys(c):
        return {("pair", c["model"], c["dataset"])} | {(f, str(c[f])) for f in facets} | \
            {("training", str(c["training"]))}

    needed = set().union(*(keys(c) for c in pool))
    chosen = []
    while needed:
        best = max(pool, key=lambda c: len(keys(c) & needed))
        chosen.append(best)
        needed -= keys(best)
    smoke = []
    for config in chosen:
        config = dict(config, epochs=min(config["epochs"], SMOKE["epochs"]), smoke=True,
                      batch_size=min(config["batch_size"], SMOKE["batch_size"]),
                      train_limit=SMOKE["train_limit"], test_limit=SMOKE["test_limit"])
        attack = AttackConfig.parse(config["training"])
        if attack.mode == "pgd" and attack.steps > SMOKE["attack_steps"]:
            config["training"] = {**dataclasses.asdict(attack), "steps": SMOKE["attack_steps"]}
        if config["robust_eval"] is not None or attack.mode != "natural":
            config["robust_eval"] = {**(config["robust_eval"] or {}), "subset": SMOKE["robust_subset"],
                                     "pgd_steps": SMOKE["attack_steps"]}
        smoke.append(config)
    return smoke


def run_configs(configs: list[dict]) -> list[RunConfig]:
    """The RunConfig of each trial config (checks every field once more)."""
    names = {f.name for f in dataclasses.fields(RunConfig)}
    return [RunConfig(**{k: v for k, v in c.items() if k in names}) for c in configs]
