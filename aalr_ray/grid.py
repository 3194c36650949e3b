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
aliases or repeated keys; at most 1 MB, 50 levels, 20,000 values). Its
structure is the pydantic model :class:`GridFile`: every key typed, unknown
keys refused (``extra="forbid"``), every error collected with its key path and
written here as one line of our own. What a schema cannot say is checked on
top, per trial, the way a run checks it (:class:`RunConfig`, every method
option's type and range against its method, model x dataset shapes, the
method built once on a tiny model), so a value an override sets is checked
like the same value at the top level, and nothing that passes here fails
every trial later. Import paths (``package.module:function``, see
:mod:`aalr_ray.imports`) are imported here: a grid file runs code in the
driver, like a Python script.

``validation: 0.1`` holds out a fraction of every trial's training split (by
seed); ``searches`` names searched baselines, each a search of one method's
``lr`` with Ray Tune's grid search, ASHA or PBT, run over every cell of the
grid (:func:`search_plans`, :class:`Search`; :mod:`aalr_ray.search` runs them)::

    validation: 0.1
    searches:
      step-lr-grid: {method: step, lr: {grid: [0.01, 0.03, 0.1, 0.3, 1.0]}}
      step-asha: {method: step, lr: {loguniform: [1.0e-3, 1.0]}, scheduler: asha, samples: 16, budget_epochs: 240}

``precision`` (auto | fp32 | bf16 | fp16), ``channels_last`` (auto | on | off)
and ``snapshot_device`` (auto | same | cpu) say how every trial computes
(:class:`aalr_ray.train.RunConfig`), at the top level or per trial in an
override's ``set``; the device and precision are checked against
``resources.gpu`` (:func:`_check_placement`), not against the machine that
reads the file.

Importing this module loads neither torch nor Ray (the CLI and the report
import it); validating a file imports torch, for the names and the checks.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import itertools
import json
import math
import re
import typing
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Callable, ClassVar, NoReturn

from pydantic import BaseModel, ConfigDict, Field, PlainValidator, ValidationError, WrapValidator, model_validator
from pydantic_core import InitErrorDetails, PydanticCustomError

from . import safeyaml
from .core import JUDGES, WINDOWS
from .errors import describe, one_line
from .imports import ImportPathError, load_callable

__all__ = ["Grid", "GridError", "GridFile", "load_grid", "parse_grid", "expand", "smoke_configs", "trial_name",
           "trial_count", "run_configs", "option_problems", "search_plans", "smoke_plans", "SearchPlan",
           "SEARCH_SCHEDULERS", "TRIAL_KEYS", "MATCH_KEYS", "OVERRIDE_KEYS", "SMOKE",
           "MAX_TRIALS"]

# Keys a trial config has, besides the run's own (RunConfig) fields.
TRIAL_KEYS = ("trial_name", "search")  # search: the searched baseline a trial belongs to
# --smoke: the grid, shrunk to a covering set on tiny data (see smoke_configs).
SMOKE = {"epochs": 2, "batch_size": 2, "train_limit": 2, "test_limit": 2, "robust_subset": 2, "attack_steps": 2}

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
    precision: str = "auto"
    channels_last: str = "auto"
    snapshot_device: str = "auto"
    augment_on: str = "auto"  # where augmentation runs: batched on the device, or per example in workers
    resources: dict = field(default_factory=lambda: {"cpu": 1, "gpu": 0})
    max_concurrent: int | None = None
    workers_per_trial: int = 1
    checkpoint_every: int = 1
    include: list[dict] = field(default_factory=list)
    exclude: list[dict] = field(default_factory=list)
    overrides: list[dict] = field(default_factory=list)
    validation: float | None = None
    # search name -> its mapping as the file gave it (Search); see search_plans.
    searches: dict = field(default_factory=dict)
    source: str = "<grid>"
    # The key path of each entry of ``overrides`` in the file ("overrides[2]").
    override_paths: list[str] = field(default_factory=list)


# ------------------------------------------------------------------ messages
def _r(value: Any, limit: int = 80) -> str:
    """A value for a message: its repr, cut to ``limit`` characters (one line: repr escapes newlines)."""
    try:
        text = repr(value)
    except Exception:  # noqa: BLE001 - a value from YAML always has a repr; be sure anyway
        text = f"<{type(value).__name__}>"
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


class _Problems:
    """The lines of a GridError, each said once (many trials share one problem)."""

    def __init__(self, source: str):
        self.source = source
        self.lines: list[str] = []

    def add(self, path: str, message: str) -> None:
        line = one_line(f"{self.source}: {path}: {message}" if path else f"{self.source}: {message}", _MESSAGE_CHARS)
        if line not in self.lines:
            self.lines.append(line)


# ------------------------------------------------ pydantic errors of our own
# Every check below raises its problem as one PydanticCustomError of this type;
# the text travels in ctx, so braces in a quoted value are never a template.
_PROBLEM = "grid_problem"


def _refusal(message: str) -> PydanticCustomError:
    return PydanticCustomError(_PROBLEM, "{problem}", {"problem": message})


def _refuse(message: str) -> NoReturn:
    raise _refusal(message)


def _refuse_all(problems: list[tuple[tuple, str]], value: Any) -> NoReturn:
    """Several problems from one validator, each at its own place (loc) below the value it checked;
    pydantic prefixes each loc with the field's."""
    raise ValidationError.from_exception_data(
        "grid", [InitErrorDetails(type=_refusal(message), loc=loc, input=value) for loc, message in problems])


def _loc_key(key: Any) -> str:
    """A mapping key in a loc (pydantic takes str or int; an int there reads as a list index)."""
    return key if isinstance(key, str) else _r(key, 60)


# ------------------------------------------------------------- value checks
# PlainValidators: each takes the raw YAML value and returns it, or refuses it
# in our words (pydantic's own coercion would accept "3" for 3 and 1 for true).
def _check_positive_int(value: Any, maximum: int = MAX_INT) -> int:
    if not _is_int(value) or value <= 0:
        _refuse(f"expected a positive integer, got {_r(value)}{_number_hint(value)}")
    if value > maximum:
        _refuse(f"expected a positive integer of at most {maximum}, got {_r(value)}")
    return value


PositiveInt = Annotated[int, PlainValidator(_check_positive_int)]


def _experiment_name(value: Any) -> str:
    if not isinstance(value, str):
        _refuse(f"expected a string, got {_r(value)}")
    if not re.fullmatch(r"[A-Za-z0-9_.-]{1,%d}" % NAME_MAX, value) or value in (".", ".."):
        _refuse(f"expected one path component of 1-{NAME_MAX} letters, digits, '.', '_' or '-' "
                f"(not '.' or '..'), got {_r(value)}")
    return value


def _registered(what: str) -> list[str]:
    """The registered names of ``what``; their modules import torch, so they are asked when a file is
    validated, never when this module is imported."""
    from . import data, methods, models

    return {"dataset": data.dataset_names, "model": models.model_names, "method": methods.method_names,
            "augmentation": lambda: list(data.AUGMENTATIONS)}[what]()


def _known_name(what: str, import_path: bool = False) -> PlainValidator:
    """A registered ``what`` name or, where ``import_path``, a callable's import path (imported here)."""
    article = "an" if what[0] in "aeiou" else "a"

    def check(value: Any) -> str:
        if not isinstance(value, str):
            _refuse(f"expected {article} {what} name, got {_r(value)}")
        if value in _registered(what):
            return value
        if import_path and ":" in value:
            try:
                load_callable(value, what)
            except ImportPathError as exc:
                _refuse(one_line(exc))
            return value
        extra = " (or an import path package.module:function)" if import_path else ""
        _refuse(f"unknown {what} {_r(value)}; choose from: {', '.join(_registered(what))}{extra}")

    return PlainValidator(check)


def _seed(value: Any) -> int:
    if not _is_int(value) or not 0 <= value <= MAX_SEED:
        _refuse(f"expected an integer seed in 0..2**63-1, got {_r(value)}")
    return value


def _weight_decay(value: Any) -> float:
    if not _is_real(value) or value < 0:
        _refuse(f"expected a finite number >= 0, got {_r(value)}{_number_hint(value)}")
    return float(value)


def _attack(mode: Any):
    from .attacks import AttackConfig

    return AttackConfig.parse(mode)


def _training_mode(value: Any) -> Any:
    try:
        _attack(value)
    except (ValueError, TypeError) as exc:
        _refuse(one_line(exc, 300))
    return value


def _epoch_loss(value: Any) -> str:
    from .train import EPOCH_LOSSES

    if not isinstance(value, str) or value not in EPOCH_LOSSES:
        _refuse(f"unknown value {_r(value)}; choose from: {', '.join(EPOCH_LOSSES)}")
    return value


def _device(value: Any) -> str:
    if not (isinstance(value, str) and re.fullmatch(r"auto|cpu|cuda(:\d{1,3})?|mps", value)):
        _refuse(f"unknown device {_r(value)}; choose from: auto, cpu, cuda, cuda:N, mps")
    return value


def _one_of(what: str, choices: str) -> PlainValidator:
    """A value of RunConfig's ``choices`` (the name of a tuple in aalr_ray.train)."""

    def check(value: Any) -> str:
        from . import train

        valid = getattr(train, choices)
        if what == "channels_last" and isinstance(value, bool):  # YAML 1.1 reads a bare on/off as a bool
            return "on" if value else "off"
        if not isinstance(value, str) or value not in valid:
            _refuse(f"unknown {what} {_r(value)}; choose from: {', '.join(valid)}")
        return value

    return PlainValidator(check)


Precision = Annotated[str, _one_of("precision", "PRECISIONS")]
ChannelsLast = Annotated[str, _one_of("channels_last", "CHANNELS_LAST")]
SnapshotDevice = Annotated[str, _one_of("snapshot_device", "RUN_SNAPSHOT_DEVICES")]
AugmentOn = Annotated[str, _one_of("augment_on", "AUGMENT_PLACES")]


def _resource(key: str) -> PlainValidator:
    top, low = MAX_RESOURCES[key], ("> 0" if key == "cpu" else ">= 0")

    def check(value: Any) -> float:
        if not (_is_real(value) and (value > 0 if key == "cpu" else value >= 0) and value <= top):
            _refuse(f"expected a finite number {low} and <= {top} (fractions share a device), got {_r(value)}")
        if value > 1 and value != int(value):
            _refuse(f"a request above 1 must be a whole number (Ray's rule), got {_r(value)}")
        return value

    return PlainValidator(check)


def _options_mapping(value: Any) -> dict:
    """An override's method_options: which options are valid depends on the matched trials' method,
    so they are checked per trial (_check_options)."""
    if not isinstance(value, dict):
        _refuse(f"expected a mapping of options of the matched trials' method, got {_r(value)}")
    return value


def _method_options(value: Any) -> dict:
    """method -> options; each option checked against its method (option_problems): a mapping
    whose valid keys depend on another key is beyond a static schema."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        _refuse(f"expected a mapping method -> options, got {_r(value)}")
    problems = []
    for method, options in value.items():
        if method not in _registered("method"):
            problems.append(((_loc_key(method),), f"unknown method; choose from: {', '.join(_registered('method'))}"))
            continue
        problems += [((method, _loc_key(key)) if key != "" else (method,), problem)
                     for key, problem in option_problems(method, options)]
    if problems:
        _refuse_all(problems, value)
    return value


# ------------------------------------------------------------- list checks
# WrapValidators around a list field: pydantic checks the items (each with its
# index in the key path); these add what concerns the list as a whole.
def _distinct_list(expected: str, key: Callable[[Any], Any] = lambda item: item,
                   twice: str = "is listed twice") -> WrapValidator:
    """A non-empty list; an item equal (by ``key``) to an earlier one is refused at its index,
    together with the items' own problems."""

    def check(value: Any, handler) -> list:
        if not isinstance(value, list) or not value:
            _refuse(f"expected {expected}, got {_r(value)}")
        problems: list[tuple[tuple, str]] = []
        items = None
        try:
            items = handler(value)
        except ValidationError as exc:
            problems = [(error["loc"], _message(error)) for error in exc.errors()]
        failed = {loc[0] for loc, _ in problems if loc}
        seen = set()
        for i, item in enumerate(value):
            if i in failed:
                continue
            identity = key(item)
            if identity in seen:
                problems.append(((i,), f"{_r(item)} {twice}"))
            seen.add(identity)
        if problems:
            _refuse_all(problems, value)
        return items

    return WrapValidator(check)


def _seed_count(value: Any, handler) -> list[int]:
    """``seeds: 3`` means seeds 0, 1, 2."""
    if _is_int(value):
        return list(range(_check_positive_int(value, maximum=MAX_TRIALS)))
    return handler(value)


def _all_methods(value: Any, handler) -> list[str]:
    """``methods: all``."""
    return _registered("method") if value == "all" else handler(value)


def _one_or_more(value: Any, handler) -> list[float]:
    """``weight_decay: 5e-4`` is a list of one; its problem is at ``weight_decay``, not ``weight_decay[0]``."""
    return handler(value) if isinstance(value, list) else [_weight_decay(value)]


# ------------------------------------------------------------------- schema
class _Schema(BaseModel):
    """A mapping of the grid file: unknown keys refused, every problem collected."""

    model_config = ConfigDict(extra="forbid")
    # How a key that is not a field is refused; the fields follow.
    unknown_key_text: ClassVar[str] = "unknown key; choose from"
    # Whether {} is refused: a filter that matches every trial, an override that sets nothing.
    may_be_empty: ClassVar[bool] = True

    @classmethod
    def keys(cls) -> dict[str, Any]:
        """Each key as the file spells it (an alias where the field's name is a builtin) -> its FieldInfo."""
        return {info.alias or name: info for name, info in cls.model_fields.items()}

    def given(self) -> dict:
        """The keys the file gave, as it spelled them."""
        return self.model_dump(exclude_unset=True, by_alias=True)

    @model_validator(mode="before")
    @classmethod
    def _not_empty(cls, data: Any) -> Any:
        if not cls.may_be_empty and isinstance(data, dict) and not data:
            _refuse(f"expected a non-empty mapping of {', '.join(cls.keys())}, got {{}}")
        return data


class Resources(_Schema):
    """Per trial; fractions share a device."""

    unknown_key_text: ClassVar[str] = "unknown resource; choose from"
    cpu: Annotated[float, _resource("cpu")] = 1
    gpu: Annotated[float, _resource("gpu")] = 0


class RobustEval(_Schema):
    """FGSM/PGD evaluation settings; what is left out takes train.ROBUST_EVAL_DEFAULTS."""

    eps: Any = None
    alpha: Any = None
    pgd_steps: Any = None
    subset: PositiveInt | None = None

    @model_validator(mode="after")
    def _as_a_run_takes_them(self) -> RobustEval:
        from .train import RunConfig

        try:
            RunConfig(model="mlp", dataset="digits", method="aalr", epochs=1, robust_eval=self.given())
        except (ValueError, TypeError) as exc:
            _refuse(one_line(exc, 300))
        return self


class Match(_Schema):
    """Trials whose fields equal all of these (``training`` also matches by mode name: fgsm)."""

    may_be_empty: ClassVar[bool] = False

    dataset: Any = None
    model: Any = None
    method: Any = None
    seed: Any = None
    batch_size: Any = None
    augmentation: Any = None
    weight_decay: Any = None
    training: Any = None


class OverrideSet(_Schema):
    """What an override sets, checked like the same key at the top level (method_options per trial)."""

    unknown_key_text: ClassVar[str] = "cannot override; choose from"
    may_be_empty: ClassVar[bool] = False
    # None: not set (given() leaves it out); a null in the file is refused like any wrong value.
    epochs: PositiveInt = None
    batch_size: PositiveInt = None
    weight_decay: Annotated[float, PlainValidator(_weight_decay)] = None
    method_options: Annotated[dict, PlainValidator(_options_mapping)] = None
    augmentation: Annotated[str, _known_name("augmentation")] = None
    precision: Precision = None
    channels_last: ChannelsLast = None
    snapshot_device: SnapshotDevice = None
    augment_on: AugmentOn = None


class Override(_Schema):
    """One entry of ``overrides``."""

    match: Match = Field(description="a mapping: the trials to change")
    values: OverrideSet = Field(alias="set", description="a mapping: what to set in them")


MATCH_KEYS = tuple(Match.keys())  # the keys include/exclude/overrides may match on
OVERRIDE_KEYS = tuple(OverrideSet.keys())


def _names(what: str, import_path: bool = False, shorthand: str = "") -> Any:
    """The type of a non-empty list of distinct ``what`` names."""
    return Annotated[list[Annotated[str, _known_name(what, import_path)]],
                     _distinct_list(f"a non-empty list of {what} names{shorthand}")]


# The axes' types (the outermost WrapValidator runs first: it turns a shorthand into a list).
DatasetNames = _names("dataset", import_path=True)
ModelNames = _names("model", import_path=True)
MethodNames = Annotated[_names("method", shorthand=", or 'all'"), WrapValidator(_all_methods)]
AugmentationNames = _names("augmentation")
Seeds = Annotated[list[Annotated[int, PlainValidator(_seed)]],
                  _distinct_list("a count n (seeds 0..n-1) or a list of integers"), WrapValidator(_seed_count)]
BatchSizes = Annotated[list[PositiveInt], _distinct_list("a non-empty list of positive integers")]
WeightDecays = Annotated[list[Annotated[float, PlainValidator(_weight_decay)]],
                         _distinct_list("a number or a non-empty list of numbers", key=float),
                         WrapValidator(_one_or_more)]
TrainingModes = Annotated[list[Annotated[Any, PlainValidator(_training_mode)]],
                          _distinct_list("a non-empty list of training modes", key=_attack,
                                         twice="is the same training mode as an earlier entry")]
WorkerCount = Annotated[int, PlainValidator(functools.partial(_check_positive_int, maximum=MAX_WORKERS))]


# ------------------------------------------------------------------ searches
SEARCH_SCHEDULERS = ("none", "asha", "pbt")  # none: every configuration trains all epochs


def _validation(value: Any) -> float:
    from .data.validation import VALIDATION_MAX

    if not _is_real(value) or not 0 < value <= VALIDATION_MAX:
        _refuse(f"expected a fraction of the training split in (0, {VALIDATION_MAX}], got {_r(value)}")
    return float(value)


def _scheduler(value: Any) -> str:
    if not isinstance(value, str) or value not in SEARCH_SCHEDULERS:
        _refuse(f"unknown scheduler {_r(value)}; choose from: {', '.join(SEARCH_SCHEDULERS)}")
    return value


def _learning_rate(value: Any) -> float:
    if not _is_real(value) or value <= 0:
        _refuse(f"expected a learning rate (a finite number > 0), got {_r(value)}{_number_hint(value)}")
    return float(value)


def _lr_range(value: Any) -> list[float]:
    if not isinstance(value, list) or len(value) != 2:
        _refuse(f"expected [low, high], two learning rates, got {_r(value)}")
    low, high = (_learning_rate(v) for v in value)
    if not low < high:
        _refuse(f"expected low < high, got {_r(value)}")
    return [low, high]


def _reduction_factor(value: Any) -> int:
    if not _is_int(value) or not 2 <= value <= 100:
        _refuse(f"expected an integer in 2..100 (ASHA keeps 1 in this many at each rung), got {_r(value)}")
    return value


class LrSpace(_Schema):
    """Where a search looks for the LR: a list of values, or a log-uniform range (Tune samples it)."""

    unknown_key_text: ClassVar[str] = "unknown LR space; choose from"
    may_be_empty: ClassVar[bool] = False
    grid: Annotated[list[Annotated[float, PlainValidator(_learning_rate)]],
                    _distinct_list("a non-empty list of learning rates")] = None
    loguniform: Annotated[list[float], PlainValidator(_lr_range)] = None

    @model_validator(mode="after")
    def _one_space(self) -> LrSpace:
        if len(self.given()) != 1:
            _refuse("give one of grid: [LRs] or loguniform: [low, high], not both")
        return self


class Search(_Schema):
    """A searched baseline: Ray Tune's search over one method's ``lr``, selected on validation accuracy.

    ``scheduler: none`` trains every configuration for all epochs (the grid's
    values, or ``samples`` log-uniform draws); ``asha`` stops the worse early
    (``ASHAScheduler``) within ``budget_epochs`` in all; ``pbt`` trains a
    ``population`` and perturbs the LR every ``perturbation_interval`` epochs
    (``PopulationBasedTraining``). Checked together in :func:`_search_problems`.
    """

    method: Annotated[str, _known_name("method")] = Field(description="the method whose lr option is searched")
    lr: LrSpace = Field(description="a mapping: grid: [LRs] or loguniform: [low, high]")
    scheduler: Annotated[str, PlainValidator(_scheduler)] = Field("none", description="none | asha | pbt")
    samples: PositiveInt = None
    budget_epochs: PositiveInt = None
    population: PositiveInt = None
    perturbation_interval: PositiveInt = None
    grace_period: PositiveInt = None
    reduction_factor: Annotated[int, PlainValidator(_reduction_factor)] = None


SearchName = Annotated[str, PlainValidator(_experiment_name)]


class GridFile(_Schema):
    """A grid file. Defaults are Grid's; ``seeds``, ``methods`` and ``weight_decay`` also take a
    shorthand (a count, ``all``, one number)."""

    unknown_key_text: ClassVar[str] = "unknown key; valid keys"
    name: Annotated[str, PlainValidator(_experiment_name)] = Field(
        description=f"experiment name: 1-{NAME_MAX} letters, digits, '.', '_' or '-'")
    epochs: PositiveInt = Field(description="epochs per trial")
    seeds: Seeds = Field([0], description="a count n (seeds 0..n-1) or a list of integers")
    datasets: DatasetNames = Field(description="list of dataset names")
    models: ModelNames = Field(description="list of model names")
    methods: MethodNames = Field(description="list of method names, or 'all'")
    batch_sizes: BatchSizes = Field([128], description="list of batch sizes")
    augmentations: AugmentationNames = Field(["none"], description="list of augmentations")
    weight_decay: WeightDecays = Field([5e-4], description="a number or a list")
    training: TrainingModes = Field(["natural"], description="list of training modes: natural | fgsm | pgd, "
                                                             "as strings or mappings")
    robust_eval: RobustEval | None = Field(None, description="mapping of FGSM/PGD evaluation settings")
    method_options: Annotated[dict, PlainValidator(_method_options)] = Field(
        {}, description="mapping method -> mapping of option overrides")
    epoch_loss: Annotated[str, PlainValidator(_epoch_loss)] = Field("train-mean", description="train-mean | clean-pass")
    device: Annotated[str, PlainValidator(_device)] = Field("auto", description="auto | cpu | cuda | cuda:N | mps")
    precision: Precision = Field("auto", description="auto | fp32 | bf16 | fp16")
    channels_last: ChannelsLast = Field("auto", description="auto | on | off")
    snapshot_device: SnapshotDevice = Field("auto", description="auto | same | cpu")
    augment_on: AugmentOn = Field("auto", description="auto | device | workers")
    resources: Resources = Field(default_factory=Resources, description="mapping cpu, gpu per trial")
    max_concurrent: PositiveInt | None = Field(None, description="trials running at once")
    workers_per_trial: WorkerCount = Field(1, description="data-parallel workers per trial (Ray Train, DDP)")
    checkpoint_every: PositiveInt = Field(1, description="epochs between checkpoints (the last epoch always has one)")
    include: list[Match] = Field([], description="a list of mappings; keep only trials matching one")
    exclude: list[Match] = Field([], description="a list of mappings; drop trials matching one")
    overrides: list[Override] = Field([], description="a list of {match: mapping, set: mapping}")
    validation: Annotated[float, PlainValidator(_validation)] | None = Field(
        None, description="a fraction of the training split held out by seed, in (0, 0.5]")
    searches: dict[SearchName, Search] = Field({}, description="a mapping: search name -> search")


# ------------------------------------------------- pydantic errors -> lines
def _schema_in(annotation: Any) -> type[_Schema] | None:
    """The schema an annotation holds: Match for list[Match], RobustEval for RobustEval | None."""
    if isinstance(annotation, type) and issubclass(annotation, _Schema):
        return annotation
    for arg in typing.get_args(annotation):
        found = _schema_in(arg)
        if found is not None:
            return found
    return None


def _schema_at(loc: tuple) -> type[_Schema] | None:
    """The schema of the mapping at ``loc`` in the file (GridFile at ()), or None if it is not one."""
    schema: type[_Schema] | None = GridFile
    for part in loc:
        if isinstance(part, int):  # an item of a list of mappings: the same schema
            continue
        info = schema.keys().get(part)
        schema = _schema_in(info.annotation) if info is not None else None
        if schema is None:
            return None
    return schema


def _path(loc: tuple) -> str:
    """``("overrides", 0, "set", "epochs")`` -> ``overrides[0].set.epochs``."""
    path = ""
    for part in loc:
        if _is_int(part):
            path += f"[{part}]"
        elif part != "[key]":  # pydantic's marker for a problem with a mapping's key
            path += ("." if path else "") + _k(part)
    return path


def _message(error: dict) -> str:
    """One pydantic error in our words: the key path is said by the caller."""
    kind, loc, value = error["type"], error["loc"], error.get("input")
    if kind == _PROBLEM:
        return error["ctx"]["problem"]
    parent = _schema_at(loc[:-1]) if loc else None
    if kind in ("extra_forbidden", "invalid_key") and parent is not None:
        return f"{parent.unknown_key_text}: {', '.join(parent.keys())}"
    info = parent.keys().get(loc[-1]) if parent is not None else None
    if kind == "missing" and info is not None:
        return f"missing ({info.description})"
    schema = _schema_at(loc)
    if kind in ("model_type", "model_attributes_type", "dict_type") and schema is not None:
        return f"expected a mapping of {', '.join(schema.keys())}, got {_r(value)}"
    if info is not None and info.description:
        return f"expected {info.description}, got {_r(value)}"
    return f"{one_line(error['msg'], 200)}, got {_r(value)}"


def _error_path(error: dict) -> str:
    loc = error["loc"]
    if error["type"] == "invalid_key":  # pydantic writes the key as str(key): say it as given
        return ".".join(p for p in (_path(loc[:-1]), _k(error["input"])) if p)
    return _path(loc)


# ------------------------------------------------------------ method options
# Each option takes what its default's type says (an int where a float is
# expected, never a bool for a number, a bool only where the default is one),
# narrowed to the values the method really accepts.
@functools.cache
def _option_choices() -> dict[str, tuple]:
    from .controller import FINALS
    from .methods import STEP_RECIPES

    return {
        "window": WINDOWS,  # aalr_ray/core.py
        "judge": JUDGES,  # aalr_ray/core.py
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
_OPTIMIZER_KEYS = ("optimizer", "optimizer_options")


def _optimizer_rule(key: str) -> tuple[str, Callable[[Any], bool]]:
    if key == "optimizer":
        from .methods import OPTIMIZER_CHOICES

        return f"a string: {OPTIMIZER_CHOICES}", lambda v: isinstance(v, str)
    return ("a mapping of the optimizer's own keyword options",
            lambda v: isinstance(v, dict) and all(isinstance(k, str) for k in v) and _jsonable(v))


def _option_rule(default: Any, key: str) -> tuple[str, Callable[[Any], bool]]:
    """(what option ``key`` with this default takes, a test of a value)."""
    if key in _OPTIMIZER_KEYS:
        return _optimizer_rule(key)
    if default is None:
        what, test = _option_kind_rule(_OPTION_NONE_DEFAULT.get(key, "any"), key)
        return f"{what}, or null", lambda v: v is None or test(v)
    choices = _option_choices().get(key)
    if choices is not None:
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
    from .methods import METHODS, optimizer_problems

    if not isinstance(options, dict):
        return [("", f"expected a mapping of options, got {_r(options)}")]
    defaults = METHODS[method].defaults
    problems = []
    for key, value in options.items():
        if key not in defaults:
            problems.append((key, f"unknown option; choose from: {', '.join(sorted(defaults)) or '(none)'}"))
            continue
        what, test = _option_rule(defaults[key], key)
        if not test(value):
            problems.append((key, f"expected {what}, got {_r(value)}{_number_hint(value)}"))
    # Which optimizer options are valid depends on the optimizer: check them together, once each
    # alone is well typed (building it on a dummy parameter needs torch, never Ray).
    if "optimizer" in defaults and not {k for k, _ in problems} & {"lr", "momentum", *_OPTIMIZER_KEYS}:
        problems += optimizer_problems({**defaults, **options})
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
        return f"method {method!r} does not build with these options: {describe(exc, 300)}"
    return None


# ------------------------------------------------------------------ parsing
# After a failed validation, the valid part of the file is validated once more
# and its trials checked too, so that one run reports every problem. What goes
# with a problem: the list item or the mapping key at depth 2, except these.
_PRUNE_DEPTH = {"method_options": 3, "robust_eval": 1}  # one option of one method; robust_eval as a whole
_STAND_INS = {"name": "grid", "epochs": 1}  # for required scalars that were wrong


def _without(raw: dict, locs: list[tuple]) -> dict:
    """A copy of ``raw`` without what is at each loc; a list emptied this way takes its default."""
    pruned = copy.deepcopy(raw)
    # Deepest and highest index first, so that earlier deletions move nothing still to delete.
    for *parents, last in sorted(set(locs), key=_sort_key, reverse=True):
        container = pruned
        for part in parents:
            container = container[part] if isinstance(container, (dict, list)) and _has(container, part) else None
        if isinstance(container, dict):
            container.pop(last, None)
        elif isinstance(container, list) and _has(container, last):
            del container[last]
    return {key: value for key, value in pruned.items() if value != [] or raw[key] == []}


def _has(container: dict | list, part: Any) -> bool:
    if isinstance(container, list):
        return _is_int(part) and 0 <= part < len(container)
    return part in container


def _sort_key(loc: tuple) -> tuple:
    """Locs in file order (indices as numbers), comparable whatever their keys' types."""
    return tuple((_is_int(part), part if _is_int(part) else str(part)) for part in loc)


def _pruned_loc(error: dict) -> tuple:
    loc = error["loc"]
    if error["type"] == "invalid_key":
        loc = (*loc[:-1], error["input"])
    return loc[:_PRUNE_DEPTH.get(loc[0], 2)] if loc else ()


def _validate(raw: dict, problems: _Problems) -> tuple[GridFile | None, list[str]]:
    """The file's schema (or that of its valid part, None if none) and the key path of each
    override in it; every problem is added to ``problems``."""
    overrides = raw.get("overrides")
    try:
        return GridFile.model_validate(raw), [f"overrides[{i}]" for i in range(len(overrides or []))]
    except ValidationError as exc:
        errors = exc.errors()
    for error in errors:
        problems.add(_error_path(error), _message(error))
    locs = [_pruned_loc(error) for error in errors]
    try:
        valid = GridFile.model_validate({**_STAND_INS, **_without(raw, locs)})
    except ValidationError:
        return None, []
    dropped = {loc[1] for loc in locs if len(loc) >= 2 and loc[0] == "overrides"}
    kept = [f"overrides[{i}]" for i in range(len(overrides)) if i not in dropped] \
        if isinstance(overrides, list) and ("overrides",) not in locs else []
    return valid, kept


def _grid_of(schema: GridFile, source: str, override_paths: list[str]) -> Grid:
    return Grid(name=schema.name, epochs=schema.epochs, seeds=list(schema.seeds), datasets=list(schema.datasets),
                models=list(schema.models), methods=list(schema.methods), batch_sizes=list(schema.batch_sizes),
                augmentations=list(schema.augmentations), weight_decays=list(schema.weight_decay),
                training=list(schema.training),
                robust_eval=schema.robust_eval.given() if schema.robust_eval is not None else None,
                method_options=dict(schema.method_options), epoch_loss=schema.epoch_loss, device=schema.device,
                precision=schema.precision, channels_last=schema.channels_last,
                snapshot_device=schema.snapshot_device, augment_on=schema.augment_on,
                resources=schema.resources.model_dump(), max_concurrent=schema.max_concurrent,
                workers_per_trial=schema.workers_per_trial, checkpoint_every=schema.checkpoint_every,
                include=[entry.given() for entry in schema.include],
                exclude=[entry.given() for entry in schema.exclude],
                overrides=[{"match": entry.match.given(), "set": entry.values.given()} for entry in schema.overrides],
                validation=schema.validation,
                searches={name: {**search.given(), "lr": search.lr.given()} for name, search in schema.searches.items()},
                source=source, override_paths=override_paths)


def parse_grid(raw: Any, source: str = "<grid>") -> Grid:
    """Validate a parsed grid file; raise :class:`GridError` listing every problem."""
    if not isinstance(raw, dict):
        what = "an empty file" if raw is None else _r(raw)
        raise GridError([f"{source}: expected a mapping of {', '.join(GridFile.keys())}, got {what}"])
    problems = _Problems(source)
    schema, override_paths = _validate(raw, problems)
    if schema is not None:
        grid = _grid_of(schema, source, override_paths)
        # Every trial, checked as a run would check it (for a file with problems: its valid part).
        for line in _trial_problems(grid, report_unmatched=not problems.lines) + _search_problems(grid, "validation" in raw):
            if line not in problems.lines:
                problems.lines.append(line)
    if problems.lines:
        raise GridError(problems.lines)
    return grid


def load_grid(path: str | Path) -> Grid:
    """Read (:func:`aalr_ray.safeyaml.load_file`: ``safe_load`` within limits) and validate a grid file."""
    path = Path(path)
    source = str(path) if str(path).isprintable() else ascii(str(path))
    try:
        missing = not path.exists() and not path.is_symlink()
    except (OSError, ValueError) as exc:  # e.g. a NUL byte in the path
        raise GridError([f"{source}: not a usable path ({one_line(exc, 300)})"]) from None
    if missing:
        raise GridError([f"{source}: no such grid file"])
    try:
        raw = safeyaml.load_file(path)
    except safeyaml.YamlRefused as exc:
        raise GridError([f"{source}: {exc}"]) from None
    return parse_grid(raw, source=source)


# ----------------------------------------------------------------- expansion
@functools.cache
def _run_fields() -> tuple[str, ...]:
    from .train import RunConfig

    return tuple(f.name for f in dataclasses.fields(RunConfig))


def _matches(config: dict, entry: dict) -> bool:
    return all(_matches_value(config, key, value) for key, value in entry.items())


def _matches_value(config: dict, key: str, value) -> bool:
    if key == "training":  # by mode name ("fgsm") or by the exact spec ("fgsm:eps=4/255")
        return value == config["training"] or value == _attack(config["training"]).mode
    return config[key] == value


def trial_name(config: dict) -> str:
    """A short readable name: method-model-dataset[-aug][-bs][-mode]-s<seed>."""
    parts = [config["method"], config["model"].split(":")[-1], config["dataset"].split(":")[-1]]
    if config["augmentation"] != "none":
        parts.append(config["augmentation"])
    parts.append(f"bs{config['batch_size']}")
    mode = _attack(config["training"]).mode
    if mode != "natural":
        parts.append(mode)
    parts.append(f"s{config['seed']}")
    return "-".join(parts)


def _name_part(key: str, value: Any) -> str:
    if key == "weight_decay":
        return f"wd{value:g}"
    if key == "training":
        value = str(_attack(value))
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
    from .train import RunConfig

    traced, matched = [], set()
    for dataset, model, augmentation, batch_size, weight_decay, training, method, seed in itertools.product(
            grid.datasets, grid.models, grid.augmentations, grid.batch_sizes, grid.weight_decays, grid.training,
            grid.methods, grid.seeds):
        config = RunConfig(model=model, dataset=dataset, method=method, epochs=grid.epochs, seed=seed,
                           batch_size=batch_size, weight_decay=weight_decay, augmentation=augmentation,
                           training=training, robust_eval=grid.robust_eval, epoch_loss=grid.epoch_loss,
                           device=grid.device, validation=grid.validation, precision=grid.precision,
                           channels_last=grid.channels_last, snapshot_device=grid.snapshot_device,
                           augment_on=grid.augment_on,
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
    from .train import RunConfig

    check = _Problems(grid.source)
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
        _check_placement(check, config, origin, grid.resources)
        try:
            RunConfig(**{k: config[k] for k in _run_fields()})
        except (ValueError, TypeError) as exc:
            check.add(f"trial {config['trial_name']}", one_line(exc, 300))
    if report_unmatched:
        for i, path in enumerate(grid.override_paths):
            if i not in matched:
                check.add(f"{path}.match", f"matches no trial: {_r(grid.overrides[i]['match'])}")
    return check.lines


def _check_pairs(check: _Problems, config: dict, origin: dict, seen: set) -> None:
    """A model that cannot take a dataset's input shape; an augmentation a dataset does not support."""
    from .data import builtin_input_shape, valid_augmentations
    from .models import ModelShapeError, check_input_shape

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


def _check_placement(check: _Problems, config: dict, origin: dict, resources: dict) -> None:
    """The trial's device and precision against the GPUs it holds (resources.gpu).

    Judged from the file, not from this machine: the driver may have no GPU
    while the cluster's nodes do. Ray shows a trial the GPUs it holds as
    cuda:0, cuda:1, ...; one that holds none trains on the CPU. Whether a
    trial's GPU has bf16 is known on it only: the trial refuses it there.
    """
    from .train import precision_choices

    device, gpu = config["device"], resources["gpu"]
    if device.startswith("cuda") and int(device.partition(":")[2] or 0) >= math.ceil(gpu):
        need = int(device.partition(":")[2] or 0) + 1
        check.add("device", f"{device!r} needs {need} GPU{'s' if need > 1 else ''} per trial and resources.gpu "
                            f"is {_r(gpu)}; raise resources.gpu (a fraction shares a GPU) or choose from: auto, cpu")
        return
    runs_on = "cuda" if device.startswith("cuda") or (device == "auto" and gpu > 0) else \
        ("cpu" if device == "auto" else device)
    precision = config["precision"]
    if runs_on == "cuda" or precision in precision_choices(runs_on):
        return
    where = "resources.gpu is 0" if device == "auto" else f"device {device}"
    why = "needs a CUDA GPU (its GradScaler)" if precision == "fp16" else f"has no autocast on {runs_on}"
    check.add(origin.get("precision", "precision"),
              f"{precision!r} {why}, and the trials run on the {runs_on.upper()} ({where}); "
              f"choose from: {', '.join(precision_choices(runs_on))}, or give the trials a GPU "
              "(resources.gpu > 0 with device auto or cuda)")


def _check_options(check: _Problems, config: dict, origin: dict) -> None:
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


# ------------------------------------------------------------------ searches
# Keys that only one scheduler reads, and what each search needs as its budget of epochs.
_SCHEDULER_KEYS = {"asha": ("budget_epochs", "grace_period", "reduction_factor"),
                   "pbt": ("population", "perturbation_interval")}
ASHA_DEFAULTS = {"grace_period": 1, "reduction_factor": 3}  # Tune's ASHAScheduler defaults


def _search_problems(grid: Grid, validation_given: bool = True) -> list[str]:
    """What a search's keys mean together: a budget, keys of its scheduler only, a method with an lr.
    ``validation_given``: the file has the key (a wrong value was reported already)."""
    from .methods import METHODS

    check = _Problems(grid.source)
    if grid.searches and grid.validation is None and not validation_given:
        check.add("searches", "searches select on validation accuracy: set validation "
                              "(a fraction of the training split in (0, 0.5], e.g. 0.1)")
    with_lr = [name for name, spec in METHODS.items() if "lr" in spec.defaults]
    for name, search in grid.searches.items():
        path, scheduler = f"searches.{name}", search.get("scheduler", "none")
        for problem in _search_budget_problems(search, scheduler):
            check.add(path, problem)
        for key in (k for sched, keys in _SCHEDULER_KEYS.items() if sched != scheduler for k in keys):
            if key in search and not (key == "budget_epochs" and scheduler == "asha"):
                check.add(f"{path}.{key}", f"applies only to scheduler: {_scheduler_of(key)} "
                                           f"(this search's scheduler is {scheduler})")
        method = search["method"]
        if "lr" not in METHODS[method].defaults:
            check.add(f"{path}.method", f"method {method!r} has no lr option to search; choose from: "
                                        f"{', '.join(with_lr)}")
        elif scheduler == "pbt" and grid.workers_per_trial > 1:
            check.add(f"{path}.scheduler", "PBT hands checkpoints between single-process trials; with "
                                           "workers_per_trial > 1 choose from: none, asha")
        elif scheduler == "pbt" and method.startswith("aalr"):
            check.add(f"{path}.method", f"PBT sets the LR of a running trial, which AALR's controller sets itself; "
                                        f"choose a scheduled method: {', '.join(m for m in with_lr if not m.startswith('aalr'))}")
    return check.lines


def _scheduler_of(key: str) -> str:
    return next(sched for sched, keys in _SCHEDULER_KEYS.items() if key in keys)


def _search_budget_problems(search: dict, scheduler: str) -> list:
    """A search must say how many epochs it may train: a grid of LRs or ``samples`` (times the
    epochs), ASHA's ``budget_epochs``, PBT's ``population``."""
    problems = []
    space = "grid" if "grid" in search["lr"] else "loguniform"
    if space == "grid" and "samples" in search:
        problems.append("samples: a grid of LRs trains each value once; drop samples, or search loguniform")
    if space == "loguniform" and scheduler != "pbt" and "samples" not in search:
        problems.append("a search without a budget: give samples (how many LRs Tune draws)")
    if scheduler == "asha" and "budget_epochs" not in search:
        problems.append("a search without a budget: give budget_epochs (the epochs of all its trials together)")
    if scheduler == "pbt":
        if "population" not in search:
            problems.append("a search without a budget: give population (PBT trains population x epochs)")
        if "perturbation_interval" not in search:
            problems.append("give perturbation_interval (epochs between PBT's exploit/explore steps)")
        if "samples" in search:
            problems.append("samples: PBT trains its population; drop samples")
    return problems


@dataclass
class SearchPlan:
    """One search over one cell of the grid (a dataset x model x ... x seed): its own Tune experiment.

    ``config`` is a trial config of ``spec["method"]`` (the LR is Tune's to set);
    ``spec`` has every key of :class:`Search` resolved (see :func:`search_plans`).
    """

    search: str
    cell: str
    spec: dict
    config: dict

    @property
    def experiment_name(self) -> str:
        return f"{self.search}-{self.cell}"

    @property
    def lr_values(self) -> int:
        """How many configurations start: the grid's LRs, the samples or the population."""
        if self.spec["scheduler"] == "pbt":
            return self.spec["population"]
        return len(self.spec["lr"]["grid"]) if "grid" in self.spec["lr"] else self.spec["samples"]


def _resolved(search: dict) -> dict:
    spec = {"scheduler": "none", **search}
    if spec["scheduler"] == "asha":
        spec = {**ASHA_DEFAULTS, **spec}
    return spec


def search_plans(grid: Grid, configs: list[dict] | None = None) -> list[SearchPlan]:
    """Every search over every cell of ``configs`` (default: the grid's trials), in file order.

    A cell is the trials that differ only in their method; the search's
    trials take the cell's settings (epochs, batch size, seed, validation,
    ...) with the searched method and that method's ``method_options``.
    """
    cells: dict[str, dict] = {}
    for config in expand(grid) if configs is None else configs:
        cell = {k: v for k, v in config.items() if k not in ("method", "method_options", "trial_name")}
        key = json.dumps(cell, sort_keys=True, default=str)
        cells.setdefault(key, config)
    plans = []
    for name, search in grid.searches.items():
        spec = _resolved(search)
        for template in cells.values():
            cell_name = trial_name({**template, "method": "x"})[2:]  # the trial's name without its method
            config = {**template, "method": spec["method"],
                      "method_options": dict(grid.method_options.get(spec["method"], {})),
                      "trial_name": f"{name}-{cell_name}", "search": name}
            plans.append(SearchPlan(name, cell_name, spec, config))
    return plans


def smoke_plans(plans: list[SearchPlan], smoke: list[dict]) -> list[SearchPlan]:
    """The searches of a --smoke run: each search once, over the first smoke trial's cell it has,
    with two LRs (or members) on the smoke trial's tiny settings."""
    # Smoke trials have smaller batches than their cells: matched on what smoke leaves as it is.
    same = ("dataset", "model", "seed", "augmentation", "weight_decay")
    smoke_by_cell = {}
    for config in smoke:
        smoke_by_cell.setdefault(tuple(str(config[k]) for k in same), config)
    cut, seen = [], set()
    for plan in plans:
        template = smoke_by_cell.get(tuple(str(plan.config[k]) for k in same))
        if template is None or plan.search in seen:
            continue
        seen.add(plan.search)
        spec = dict(plan.spec)
        if "grid" in spec["lr"]:
            spec["lr"] = {"grid": spec["lr"]["grid"][:2]}
        for key in ("samples", "population"):
            if key in spec:
                spec[key] = min(spec[key], 2)
        if "perturbation_interval" in spec:
            spec["perturbation_interval"] = 1
        config = {**template, **{k: plan.config[k] for k in ("method", "method_options", "trial_name", "search")}}
        cut.append(SearchPlan(plan.search, plan.cell, spec, config))
    return cut


# --------------------------------------------------------------------- smoke
def smoke_configs(configs: list[dict]) -> list[dict]:
    """A covering subset of the trials on tiny data, for a CPU check of a paper-scale grid.

    Every model x dataset pair, method, augmentation, batch size and training
    mode of the grid still runs at least once (greedily, first seed only), for
    ``SMOKE["epochs"]`` epochs on two examples (torchvision sets are
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
        if config["precision"] == "fp16":  # a CPU has no fp16 (GradScaler): the smoke run checks the rest
            config["precision"] = "auto"
        attack = _attack(config["training"])
        if attack.mode == "pgd" and attack.steps > SMOKE["attack_steps"]:
            config["training"] = {**dataclasses.asdict(attack), "steps": SMOKE["attack_steps"]}
        if config["robust_eval"] is not None or attack.mode != "natural":
            config["robust_eval"] = {**(config["robust_eval"] or {}), "subset": SMOKE["robust_subset"],
                                     "pgd_steps": SMOKE["attack_steps"]}
        smoke.append(config)
    return smoke


def run_configs(configs: list[dict]) -> list:
    """The RunConfig of each trial config (checks every field once more)."""
    from .train import RunConfig

    return [RunConfig(**{k: v for k, v in c.items() if k in _run_fields()}) for c in configs]
