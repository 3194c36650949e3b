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
"""

from __future__ import annotations

import dataclasses
import importlib
import itertools
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .attacks import AttackConfig
from .data import AUGMENTATIONS, builtin_input_shape, dataset_names, valid_augmentations
from .methods import METHODS, method_names
from .models import ModelShapeError, check_input_shape, model_names
from .train import EPOCH_LOSSES, ROBUST_EVAL_DEFAULTS, RunConfig

__all__ = ["Grid", "GridError", "load_grid", "parse_grid", "expand", "smoke_configs", "trial_name",
           "TRIAL_KEYS", "SMOKE"]

# Keys a trial config has, besides the run's own (RunConfig) fields.
TRIAL_KEYS = ("trial_name",)
# Keys include/exclude/overrides may match on.
MATCH_KEYS = ("dataset", "model", "method", "seed", "batch_size", "augmentation", "weight_decay", "training")
OVERRIDE_KEYS = ("epochs", "batch_size", "weight_decay", "method_options", "augmentation")
# --smoke: the grid, shrunk to a covering set on tiny data (see smoke_configs).
SMOKE = {"epochs": 2, "batch_size": 4, "train_limit": 4, "test_limit": 4, "robust_subset": 4, "attack_steps": 2}


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


# ------------------------------------------------------------------ checking
class _Checker:
    """Collects problems instead of stopping at the first."""

    def __init__(self, source: str):
        self.source = source
        self.problems: list[str] = []

    def add(self, path: str, message: str) -> None:
        self.problems.append(f"{self.source}: {path}: {message}")

    def typed(self, path: str, value: Any, kind: type | tuple, what: str) -> bool:
        ok = isinstance(value, kind) and not (isinstance(value, bool) and bool not in _as_tuple(kind))
        if not ok:
            self.add(path, f"expected {what}, got {value!r}")
        return ok

    def positive_int(self, path: str, value: Any) -> bool:
        if not self.typed(path, value, int, "a positive integer"):
            return False
        if value <= 0:
            self.add(path, f"expected a positive integer, got {value!r}")
            return False
        return True

    def name_list(self, path: str, value: Any, valid: list[str], what: str, import_path: bool = False) -> list:
        items = value if isinstance(value, list) else None
        if items is None or not items:
            self.add(path, f"expected a non-empty list of {what} names, got {value!r}")
            return []
        good = []
        for i, item in enumerate(items):
            if not isinstance(item, str):
                self.add(f"{path}[{i}]", f"expected a {what} name, got {item!r}")
            elif item in valid:
                good.append(item)
            elif import_path and ":" in item:
                if self._importable(f"{path}[{i}]", item):
                    good.append(item)
            else:
                extra = " (or an import path package.module:function)" if import_path else ""
                self.add(f"{path}[{i}]", f"unknown {what} {item!r}; choose from: {', '.join(valid)}{extra}")
        return good

    def _importable(self, path: str, target: str) -> bool:
        module, _, attr = target.partition(":")
        try:
            obj = getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError, ValueError) as exc:
            self.add(path, f"cannot import {target!r}: {type(exc).__name__}: {exc}")
            return False
        if not callable(obj):
            self.add(path, f"{target!r} is not callable")
            return False
        return True


def _as_tuple(kind) -> tuple:
    return kind if isinstance(kind, tuple) else (kind,)


_FIELDS = {
    "name": "experiment name (letters, digits, . _ -)",
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


def _number_list(check: _Checker, path: str, value: Any) -> list[float]:
    items = value if isinstance(value, list) else [value]
    good = []
    for i, item in enumerate(items):
        where = f"{path}[{i}]" if isinstance(value, list) else path
        if isinstance(item, bool) or not isinstance(item, (int, float)) or not math.isfinite(item) or item < 0:
            check.add(where, f"expected a number >= 0, got {item!r}")
        else:
            good.append(float(item))
    return good


def _match_list(check: _Checker, path: str, value: Any) -> list[dict]:
    if not isinstance(value, list):
        check.add(path, f"expected a list of mappings, got {value!r}")
        return []
    good = []
    for i, entry in enumerate(value):
        if not isinstance(entry, dict) or not entry:
            check.add(f"{path}[{i}]", f"expected a non-empty mapping of {', '.join(MATCH_KEYS)}, got {entry!r}")
            continue
        bad = [k for k in entry if k not in MATCH_KEYS]
        for key in bad:
            check.add(f"{path}[{i}].{key}", f"unknown key; choose from: {', '.join(MATCH_KEYS)}")
        if not bad:
            good.append(entry)
    return good


def parse_grid(raw: Any, source: str = "<grid>") -> Grid:
    """Validate a parsed YAML document; raise :class:`GridError` listing every problem."""
    check = _Checker(source)
    if not isinstance(raw, dict):
        raise GridError([f"{source}: expected a mapping of {', '.join(_FIELDS)}, got {type(raw).__name__}"])
    for key in raw:
        if key not in _FIELDS:
            check.add(str(key), f"unknown key; valid keys: {', '.join(_FIELDS)}")
    for key in _REQUIRED:
        if key not in raw:
            check.add(key, f"missing ({_FIELDS[key]})")

    name = raw.get("name", "grid")
    if "name" in raw and check.typed("name", name, str, "a string") and not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
        check.add("name", f"use letters, digits, '.', '_' or '-' only, got {name!r}")
    epochs = raw.get("epochs", 1)
    if "epochs" in raw and not check.positive_int("epochs", epochs):
        epochs = 1  # reported; a stand-in lets the pair checks still run

    seeds_raw = raw.get("seeds", 1)
    seeds: list[int] = []
    if isinstance(seeds_raw, int) and not isinstance(seeds_raw, bool):
        if check.positive_int("seeds", seeds_raw):
            seeds = list(range(seeds_raw))
    elif isinstance(seeds_raw, list) and seeds_raw:
        for i, s in enumerate(seeds_raw):
            if check.typed(f"seeds[{i}]", s, int, "an integer seed"):
                seeds.append(s)
        if len(set(seeds)) != len(seeds):
            check.add("seeds", f"repeated seeds in {seeds_raw!r}")
    else:
        check.add("seeds", f"expected {_FIELDS['seeds']}, got {seeds_raw!r}")

    datasets = check.name_list("datasets", raw.get("datasets"), dataset_names(), "dataset", True) \
        if "datasets" in raw else []
    models = check.name_list("models", raw.get("models"), model_names(), "model", True) if "models" in raw else []
    methods_raw = raw.get("methods")
    if methods_raw == "all":
        methods = method_names()
    elif "methods" in raw:
        methods = check.name_list("methods", methods_raw, method_names(), "method")
    else:
        methods = []

    batch_sizes = []
    for i, b in enumerate(raw.get("batch_sizes", [128]) if isinstance(raw.get("batch_sizes", [128]), list)
                          else [None]):
        if b is None:
            check.add("batch_sizes", f"expected a list of positive integers, got {raw['batch_sizes']!r}")
        elif check.positive_int(f"batch_sizes[{i}]", b):
            batch_sizes.append(b)
    augmentations = check.name_list("augmentations", raw.get("augmentations", ["none"]), list(AUGMENTATIONS),
                                    "augmentation")
    weight_decays = _number_list(check, "weight_decay", raw.get("weight_decay", 5e-4))

    training = []
    training_raw = raw.get("training", ["natural"])
    if not isinstance(training_raw, list) or not training_raw:
        check.add("training", f"expected a non-empty list of training modes, got {training_raw!r}")
    else:
        for i, mode in enumerate(training_raw):
            try:
                AttackConfig.parse(mode)
                training.append(mode)
            except (ValueError, TypeError) as exc:
                check.add(f"training[{i}]", str(exc))

    robust_eval = raw.get("robust_eval")
    if robust_eval is not None:
        if not isinstance(robust_eval, dict):
            check.add("robust_eval", f"expected a mapping of {', '.join(ROBUST_EVAL_DEFAULTS)}, got {robust_eval!r}")
            robust_eval = None
        else:
            bad = [key for key in robust_eval if key not in ROBUST_EVAL_DEFAULTS]
            for key in bad:
                check.add(f"robust_eval.{key}", f"unknown key; choose from: {', '.join(ROBUST_EVAL_DEFAULTS)}")
            try:
                if not bad:
                    RunConfig(model="mlp", dataset="digits", method="aalr", epochs=1, robust_eval=robust_eval)
            except ValueError as exc:
                check.add("robust_eval", str(exc))
                bad = True
            if bad:
                robust_eval = None

    method_options = raw.get("method_options", {}) or {}
    if not isinstance(method_options, dict):
        check.add("method_options", f"expected a mapping method -> options, got {method_options!r}")
        method_options = {}
    for method, options in method_options.items():
        if method not in METHODS:
            check.add(f"method_options.{method}", f"unknown method; choose from: {', '.join(method_names())}")
        elif not isinstance(options, dict):
            check.add(f"method_options.{method}", f"expected a mapping of options, got {options!r}")
        else:
            valid = sorted(METHODS[method].defaults)
            for key in options:
                if key not in valid:
                    check.add(f"method_options.{method}.{key}", f"unknown option; choose from: {', '.join(valid)}")

    epoch_loss = raw.get("epoch_loss", "train-mean")
    if epoch_loss not in EPOCH_LOSSES:
        check.add("epoch_loss", f"unknown value {epoch_loss!r}; choose from: {', '.join(EPOCH_LOSSES)}")
        epoch_loss = EPOCH_LOSSES[0]
    device = raw.get("device", "auto")
    if not (isinstance(device, str) and re.fullmatch(r"auto|cpu|cuda(:\d+)?|mps", device)):
        check.add("device", f"unknown device {device!r}; choose from: auto, cpu, cuda, cuda:N, mps")

    resources = raw.get("resources", {"cpu": 1, "gpu": 0})
    if not isinstance(resources, dict):
        check.add("resources", f"expected a mapping with cpu and gpu, got {resources!r}")
        resources = {"cpu": 1, "gpu": 0}
    for key, value in resources.items():
        if key not in ("cpu", "gpu"):
            check.add(f"resources.{key}", "unknown resource; choose from: cpu, gpu")
        elif isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0 or \
                (key == "cpu" and value == 0):
            check.add(f"resources.{key}", f"expected a number {'> 0' if key == 'cpu' else '>= 0'} "
                                          f"(fractions share a device), got {value!r}")
    resources = {"cpu": resources.get("cpu", 1), "gpu": resources.get("gpu", 0)}

    max_concurrent = raw.get("max_concurrent")
    if max_concurrent is not None:
        check.positive_int("max_concurrent", max_concurrent)
    workers_per_trial = raw.get("workers_per_trial", 1)
    if not check.positive_int("workers_per_trial", workers_per_trial):
        workers_per_trial = 1

    include = _match_list(check, "include", raw.get("include", []))
    exclude = _match_list(check, "exclude", raw.get("exclude", []))
    overrides = []
    overrides_raw = raw.get("overrides", [])
    if not isinstance(overrides_raw, list):
        check.add("overrides", f"expected a list of {{match, set}} mappings, got {overrides_raw!r}")
        overrides_raw = []
    for i, entry in enumerate(overrides_raw):
        if not isinstance(entry, dict) or set(entry) != {"match", "set"} or not isinstance(entry["set"], dict):
            check.add(f"overrides[{i}]", f"expected a mapping with keys match and set, got {entry!r}")
            continue
        matched = _match_list(check, f"overrides[{i}].match", [entry["match"]])
        for key, value in entry["set"].items():
            if key not in OVERRIDE_KEYS:
                check.add(f"overrides[{i}].set.{key}", f"cannot override; choose from: {', '.join(OVERRIDE_KEYS)}")
            elif key in ("epochs", "batch_size"):
                check.positive_int(f"overrides[{i}].set.{key}", value)
        if matched:
            overrides.append(entry)

    grid = Grid(name=name, epochs=epochs, seeds=seeds, datasets=datasets, models=models, methods=methods,
                batch_sizes=batch_sizes, augmentations=augmentations, weight_decays=weight_decays,
                training=training, robust_eval=robust_eval, method_options=method_options,
                epoch_loss=epoch_loss, device=device, resources=resources, max_concurrent=max_concurrent,
                workers_per_trial=workers_per_trial,
                include=include, exclude=exclude, overrides=overrides, source=source)
    # Impossible pairs among the names that are valid, reported with the rest.
    if grid.datasets and grid.models and grid.methods and grid.augmentations:
        stand_in = dataclasses.replace(grid, seeds=grid.seeds or [0], batch_sizes=grid.batch_sizes or [128],
                                       weight_decays=grid.weight_decays or [5e-4],
                                       training=grid.training or ["natural"])
        check.problems += _pair_problems(stand_in)
    if check.problems:
        raise GridError(check.problems)
    return grid


def load_grid(path: str | Path) -> Grid:
    """Read and validate a grid file (``yaml.safe_load``)."""
    path = Path(path)
    if not path.is_file():
        raise GridError([f"{path}: no such grid file"])
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        first = str(exc).replace("\n", " ")
        raise GridError([f"{path}: not valid YAML: {first}"]) from None
    return parse_grid(raw, source=str(path))


# ----------------------------------------------------------------- expansion
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


def expand(grid: Grid) -> list[dict]:
    """The grid's trial configs: RunConfig fields plus ``trial_name``. Pure and ordered."""
    configs = []
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
        for override in grid.overrides:
            if _matches(config, override["match"]):
                for key, value in override["set"].items():
                    config[key] = {**config[key], **value} if key == "method_options" else value
        config["trial_name"] = trial_name(config)
        configs.append(config)
    return configs


def _pair_problems(grid: Grid) -> list[str]:
    """Impossible pairs left after include/exclude: a model that cannot take a dataset's
    input shape, an augmentation a dataset does not support."""
    problems, seen = [], set()
    configs = expand(grid)
    if not configs:
        return [f"{grid.source}: include/exclude leave no trials"]
    for config in configs:
        dataset, model, augmentation = config["dataset"], config["model"], config["augmentation"]
        shape = builtin_input_shape(dataset)
        if shape is not None and (model, dataset) not in seen:
            seen.add((model, dataset))
            try:
                check_input_shape(model, shape)
            except ModelShapeError as exc:
                problems.append(f"{grid.source}: models/datasets: {exc} (dataset {dataset!r}); "
                                f"drop the pair with exclude: [{{model: {model}, dataset: {dataset}}}]")
        if (augmentation, dataset) not in seen:
            seen.add((augmentation, dataset))
            valid = valid_augmentations(dataset)
            if augmentation not in valid:
                problems.append(f"{grid.source}: augmentations: {augmentation!r} does not apply to dataset "
                                f"{dataset!r}; choose from: {', '.join(valid)}, or exclude the pair")
    return problems


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
