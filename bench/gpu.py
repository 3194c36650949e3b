"""Training throughput on one GPU: ResNet-18 and WRN-16-8, today's path against the fast one.

    python bench/gpu.py --out bench/results/gpu.md    # on a machine with one CUDA GPU (sized for <= 8 min on an H100)
    python bench/gpu.py --batch-size 256              # another batch size (default 128, the paper's)
    python bench/gpu.py --dry-run --out /tmp/gpu.md   # tiny sizes on a CPU (30 s on 2 idle cores): every code path

It needs torch, torchvision, numpy, pyyaml and this package, nothing else: no
Ray (nothing it imports from aalr_ray imports Ray), no optimizer packages,
no dataset files, no network. The data are synthetic CIFAR-shaped uint8
images (50,000 train / 10,000 test, 3x32x32, 10 classes) from
``aalr_ray.data.sources.synthetic_images``, generated deterministically once
and shared with the worker processes through a temporary file.

Each row is images/s of training, the median of several timed windows after
an untimed warm-up (first epochs: cuDNN's algorithm choice, the DataLoader
workers' start, allocator growth):

* the paths, each a ``TrainingRun`` with method ``aalr`` and one RunConfig
  setting changed: today's default (fp32, default memory format, per-example
  augmentation in DataLoader workers), bf16, channels_last, augmentation on
  the device, bf16 + channels_last, and the fast path (all three). An epoch is
  ``--steps`` training steps (train_limit = steps x batch), one timed window;
  images/s come from the row's ``epoch_s`` (training + AALR's decision);
* a trial: ``TrainingRun`` with method ``aalr`` at the "auto" settings (on a
  GPU the fast path), whole 50,000-image epochs (391 steps at batch 128) and
  the whole test set: images/s of the training part (``epoch_s``) and of the
  whole epoch (``epoch_s + eval_s``);
* the bare PyTorch loop, the upper bound: the same model, bf16 autocast,
  channels_last, the data on the device with the same batched augmentation,
  SGD with momentum, cuDNN's autotuner on; no AALR, no snapshot, no
  evaluation, no loss checks;
* ResNet-18 trials packed on the GPU: 1, 2 and 4 trial processes at once
  (this script's ``--worker`` mode, standing in for fractional-GPU trials),
  each a ``TrainingRun`` at the auto settings with ``--pack-steps`` steps per
  epoch and a test set a fifth of that (CIFAR's ratio); the processes start
  their timed epochs together, and the row is all their training images
  divided by the wall time from the first start to the last end. Two or more
  keep AALR's snapshot in host memory, as a Ray trial with a fraction of a
  GPU does (``snapshot_device`` "auto" there).

The sizes aim at under 8 minutes on one H100 (an estimate from the usual
CIFAR throughputs; no GPU has run it yet, hence the budget): a fixed number
of steps per window rather than full epochs where the row does not need
them (100 steps: long against a step's launch overhead, short enough for 12
path runs); full epochs for the trial, whose share of evaluation is part of
what it measures. ``--time-budget`` (default 420 s) starts no measurement
after that many seconds; those rows say so. The goals (issue 18), evaluated
at the end: (1) a trial's training images/s >= 0.9x the bare loop's; (2) the
fast path >= 2x today's default path on ResNet-18; (3) 4 packed ResNet-18
trials >= 1.5x the images/s of one trial, at batch 128.

The output (``--out``, default ``bench/results/gpu.md``) is the GPU section of
BENCHMARKS.md (``bench/run_all.py`` assembles it with the others). Without a
GPU and without ``--dry-run`` nothing is measured: the section BENCHMARKS.md
already has is kept, or one saying that nothing was measured yet is written,
so that ``make bench`` on a CPU machine keeps the section.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(BENCH))
if str(ROOT) not in sys.path:  # run from a checkout where the package is not installed
    sys.path.insert(1, str(ROOT))
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from common import RESULTS, write_section  # noqa: E402  (no Ray at import; machine() imports it, unused)

from aalr_ray.data import Data, DatasetSpec  # noqa: E402
from aalr_ray.data.augment import Augmenter  # noqa: E402
from aalr_ray.data.device_augment import BatchAugmenter, batch_generator  # noqa: E402
from aalr_ray.data.sources import TORCHVISION, synthetic_images  # noqa: E402
from aalr_ray.models import build_model  # noqa: E402
from aalr_ray.train import RunConfig, TrainingRun, precision_choices  # noqa: E402

TITLE = "GPU throughput (training images/s on one GPU)"
NOT_MEASURED = "Not yet measured on a GPU"
MODELS = ("resnet18", "wrn-16-8")
PACK_MODEL = "resnet18"
DATA_SEED = 0
PACK_TIMEOUT_S = 240  # one packed measurement, start to exit; 4 H100 trials should take well under a minute
# Issue 18's goals.
TRIAL_VS_BARE, FAST_VS_DEFAULT, PACKED_VS_ONE, PACKED = 0.9, 2.0, 1.5, 4
# The project's dependencies that the GPU machine lacks: none may be imported here.
ABSENT_ON_GPU_MACHINE = ("ray", "pyarrow", "pandas", "pydantic", "sklearn", "scipy", "matplotlib",
                         "tensorboardX", "tensorboard", "mnist1d", "prodigyopt", "schedulefree",
                         "dadaptation", "dog")


@dataclass(frozen=True)
class Sizes:
    """How much each measurement trains (see the module docstring for why)."""

    train: int  # synthetic training images generated
    test: int
    shape: tuple[int, int, int]
    batch: int
    steps: int  # a path run's epoch and a bare-loop window, in training steps
    trial_steps: int | None  # a trial's epoch; None: the whole training split
    pack_steps: int  # an epoch of each packed trial
    warmup: int  # untimed epochs (or windows) first
    windows: int  # timed epochs (or windows)
    packs: tuple[int, ...]  # trial processes at once

    def train_images(self, steps: int | None) -> int:
        return self.train if steps is None else min(self.train, steps * self.batch)

    def test_images(self, steps: int | None) -> int:
        """The test set that goes with ``steps``: CIFAR's ratio, a fifth of the training images."""
        return self.test if steps is None else max(1, min(self.test, self.train_images(steps) // 5))


FULL = Sizes(train=50_000, test=10_000, shape=(3, 32, 32), batch=128, steps=100, trial_steps=None,
             pack_steps=200, warmup=1, windows=3, packs=(1, 2, PACKED))
# 16x16 is the smallest image the CIFAR nets take: a quarter of the CPU time of 32x32.
DRY = Sizes(train=256, test=64, shape=(3, 16, 16), batch=4, steps=1, trial_steps=2, pack_steps=1,
            warmup=1, windows=1, packs=(1, 2))


@dataclass(frozen=True)
class Setting:
    """One way to train: the RunConfig fields of issue 18 ("auto": the run decides)."""

    label: str
    precision: str  # "fp32" | "bf16" | "auto"
    channels_last: str  # "on" | "off" | "auto"
    augment_on: str  # "workers" | "device" | "auto"
    snapshot_device: str = "auto"  # "same" | "cpu" | "auto"


DEFAULT_PATH = Setting("default path today: fp32, default memory format, augmentation in DataLoader workers",
                       "fp32", "off", "workers")
FAST_PATH = Setting("fast path: bf16 + channels_last + device augmentation", "bf16", "on", "device")
PATHS = (
    DEFAULT_PATH,
    Setting("bf16", "bf16", "off", "workers"),
    Setting("channels_last", "fp32", "on", "workers"),
    Setting("device augmentation", "fp32", "off", "device"),
    Setting("bf16 + channels_last", "bf16", "on", "workers"),
    FAST_PATH,
)
AUTO = Setting("trial (aalr, auto settings)", "auto", "auto", "auto")
TRIAL_TRAIN = "trial (aalr, auto settings): training part (epoch_s)"
TRIAL_WHOLE = "trial (aalr, auto settings): whole epoch (training + eval)"
BARE = "bare PyTorch loop: bf16, channels_last, device augmentation, SGD momentum"


def pack_label(count: int) -> str:
    if count == 1:
        return "packed trials: 1 process (auto settings, training + eval)"
    return f"packed trials: {count} processes at once (aggregate)"


def pack_setting(count: int) -> Setting:
    """A packed trial's setting: as a Ray trial's with a fraction of a GPU (snapshot in host memory) if shared."""
    return AUTO if count == 1 else replace(AUTO, snapshot_device="cpu")


def row_labels(sizes: Sizes, models=MODELS) -> list[tuple[str, str]]:
    """Every (configuration, model) row of the table, in its order."""
    rows = []
    for model in models:
        rows += [(s.label, model) for s in PATHS] + [(BARE, model), (TRIAL_TRAIN, model), (TRIAL_WHOLE, model)]
        if model == PACK_MODEL:
            rows += [(pack_label(n), model) for n in sizes.packs]
    return rows


# ------------------------------------------------------------------ devices and data


def bf16_available(device: torch.device) -> bool:
    """Native bf16 on a CUDA GPU. A CPU's bf16 autocast is emulated, several times slower than fp32
    here: the dry run would take minutes and measure nothing a bf16 row is for."""
    return device.type == "cuda" and "bf16" in precision_choices(device)


def effective(setting: Setting, device: torch.device) -> Setting:
    """The setting as run here: bf16 falls back to fp32 where the device has none (a CPU in the dry run)."""
    if setting.precision == "bf16" and not bf16_available(device):
        return replace(setting, precision="fp32")
    return setting


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def release() -> None:
    """Free what the last measurement left on the GPU, so the next one starts alike."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def make_splits(sizes: Sizes):
    """The synthetic CIFAR-shaped uint8 splits ((x, y), (x_test, y_test)), with CIFAR-10's statistics."""
    info = TORCHVISION["cifar10"]
    return synthetic_images(sizes.train, sizes.test, info.num_classes, sizes.shape, info.mean, info.std, DATA_SEED)


def make_data(splits, sizes: Sizes, steps: int | None, augment_on: str) -> Data:
    """A ``Data`` of the first images of ``splits``, standard augmentation ``augment_on`` the device or workers."""
    (x, y), (x_test, y_test) = splits
    n, m = sizes.train_images(steps), sizes.test_images(steps)
    info = TORCHVISION["cifar10"]
    spec = DatasetSpec("synthetic-cifar", info.num_classes, sizes.shape, info.mean, info.std, n, m)
    return Data(spec, (x[:n], y[:n]), (x_test[:m], y_test[:m]), augmentation="standard",
                augmenter=Augmenter("standard", "cifar10", info.mean), augment_on=augment_on)


def run_config(model: str, setting: Setting, sizes: Sizes, device: torch.device) -> RunConfig:
    return RunConfig(model=model, dataset="synthetic-cifar", method="aalr", epochs=sizes.warmup + sizes.windows,
                     batch_size=sizes.batch, augmentation="standard", device=str(device),
                     precision=setting.precision, channels_last=setting.channels_last,
                     augment_on=setting.augment_on, snapshot_device=setting.snapshot_device)


# ------------------------------------------------------------------ measurements


def time_trial(config: RunConfig, data: Data, sizes: Sizes, ready=None) -> dict:
    """Train a TrainingRun for ``sizes.warmup`` untimed and ``sizes.windows`` timed epochs.

    Returns the training images/s of each timed epoch from its row (``epoch_s``:
    training + the method's decision), those of the whole epoch (+ ``eval_s``),
    each epoch's (start, end) on the machine-wide monotonic clock, and whether a
    timed epoch had a bad loss (it then ended early: its figure is void).
    ``ready()`` runs between the warm-up and the timed epochs.
    """
    run = TrainingRun(config, data)
    images = data.num_examples("train")
    try:
        for _ in range(sizes.warmup):
            run.train_one_epoch()
        if ready is not None:
            ready()
        result = {"images": images, "train": [], "whole": [], "stamps": [], "bad": False}
        for _ in range(sizes.windows):
            begin = time.monotonic()
            row = run.train_one_epoch()
            result["stamps"].append((begin, time.monotonic()))
            result["bad"] = result["bad"] or bool(row["bad_loss"])
            result["train"].append(images / row["epoch_s"])
            result["whole"].append(images / (row["epoch_s"] + row["eval_s"]))
        result["resolved"] = resolved_settings(run)
        return result
    finally:
        data.close()
        del run
        release()


def resolved_settings(run: TrainingRun) -> str:
    """What the run's "auto" settings came to."""
    parts = [f"{name}={getattr(run, name, getattr(run.config, name))}"
             for name in ("precision", "channels_last", "snapshot_device")]
    # Data keeps "auto"'s choice of place per device, made at the first augmented epoch.
    on_device = run.data.augments_on_device(run.device)
    return ", ".join(parts + [f"augmentation {'on the device' if on_device else 'in DataLoader workers'}"])


def bare_loop(model: str, splits, sizes: Sizes, device: torch.device) -> dict:
    """The upper bound: a plain loop with the fast path's ingredients and nothing of the project's run."""
    (x, y), _ = splits
    info = TORCHVISION["cifar10"]
    torch.manual_seed(0)
    net = build_model(model, info.num_classes, sizes.shape, mean=info.mean, std=info.std)
    net = net.to(device, memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    x, y = x.to(device), y.to(device)
    augment = BatchAugmenter(Augmenter("standard", "cifar10", info.mean))
    bf16 = bf16_available(device)
    # What a hand-tuned loop does; restored after, so that the runs measure the project's own choice.
    benchmark = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = True
    rates = []
    try:
        for window in range(sizes.warmup + sizes.windows):
            synchronize(device)
            started = time.perf_counter()
            for step in range(sizes.steps):
                index = torch.randint(len(y), (sizes.batch,), device=device)
                xb = augment(x[index], batch_generator(device, DATA_SEED, window, step))
                xb = xb.contiguous(memory_format=torch.channels_last)
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                    loss = F.cross_entropy(net(xb), y[index])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
            synchronize(device)
            if window >= sizes.warmup:
                rates.append(sizes.steps * sizes.batch / (time.perf_counter() - started))
    finally:
        torch.backends.cudnn.benchmark = benchmark
        del net, optimizer, x, y
        release()
    return {"train": rates, "bad": not torch.isfinite(loss).item()}


def packed_trials(count: int, model: str, sizes: Sizes, data_file: Path, device: torch.device) -> dict:
    """``count`` trial processes on the device at once (``--worker``): their aggregate training images/s.

    Every worker trains its warm-up epochs, says READY and waits; all get GO
    together, so their timed epochs overlap. The aggregate is every worker's
    timed training images over the wall time from the first start to the last end.
    """
    spec = json.dumps({"model": model, "sizes": sizes.__dict__, "data": str(data_file), "device": str(device),
                       "setting": pack_setting(count).__dict__})
    procs, logs = [], []
    # A hung worker would block the reads below for ever: kill them all after PACK_TIMEOUT_S.
    watchdog = threading.Timer(PACK_TIMEOUT_S, lambda: [p.kill() for p in procs])
    watchdog.start()
    try:
        for _ in range(count):
            log = tempfile.TemporaryFile(mode="w+")  # a file, not a pipe: a chatty stderr cannot block a worker
            logs.append(log)
            procs.append(subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--worker", spec],
                                          stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log,
                                          text=True, cwd=ROOT))
        for proc, log in zip(procs, logs):
            expect(proc, log, "READY")
        for proc in procs:
            proc.stdin.write("GO\n")
            proc.stdin.flush()
        results = [json.loads(expect(proc, log, "RESULT ")) for proc, log in zip(procs, logs)]
        for proc in procs:
            proc.wait(timeout=120)
    finally:
        watchdog.cancel()
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        for log in logs:
            log.close()
    begin = min(r["stamps"][0][0] for r in results)
    end = max(r["stamps"][-1][1] for r in results)
    images = sum(r["images"] * len(r["stamps"]) for r in results)
    return {"train": [images / (end - begin)], "bad": any(r["bad"] for r in results),
            "per_trial": [statistics.median(r["whole"]) for r in results],
            "foreign": sorted({m for r in results for m in r["foreign"]}), "resolved": results[0]["resolved"]}


def expect(proc: subprocess.Popen, log, prefix: str) -> str:
    """The rest of the worker's next stdout line starting with ``prefix``; its stderr in the error if it died."""
    for line in proc.stdout:
        if line.startswith(prefix):
            return line[len(prefix):].strip()
    proc.wait()
    log.seek(0)
    tail = log.read()[-2000:]
    raise RuntimeError(f"worker exited ({proc.returncode}) before {prefix.strip()!r}: {tail}")


def worker(spec: dict) -> None:
    """``--worker``: one packed trial; READY after the warm-up, timed epochs after GO, RESULT <json>, exit."""
    fields = dict(spec["sizes"], shape=tuple(spec["sizes"]["shape"]), packs=tuple(spec["sizes"]["packs"]))
    sizes = Sizes(**fields)
    splits = torch.load(spec["data"], weights_only=True)
    device = torch.device(spec["device"])
    setting = Setting(**spec["setting"])
    data = make_data(splits, sizes, sizes.pack_steps, setting.augment_on)
    config = run_config(spec["model"], setting, sizes, device)

    def ready() -> None:
        print("READY", flush=True)
        sys.stdin.readline()

    result = time_trial(config, data, sizes, ready)
    result["foreign"] = foreign_modules()
    print("RESULT " + json.dumps(result), flush=True)
    # Nothing is left to save, and the interpreter's teardown of torch takes seconds on a busy CPU.
    os._exit(0)


def foreign_modules() -> list[str]:
    """The packages this process imported that the GPU machine lacks (should be none)."""
    return sorted({name.split(".")[0] for name in sys.modules} & set(ABSENT_ON_GPU_MACHINE))


# ------------------------------------------------------------------ the table and the goals


@dataclass
class Cell:
    """One row's figure: images/s of each timed window, or why there is none."""

    rates: list[float]
    note: str = ""  # skipped, failed or void: the reason

    @property
    def value(self) -> float | None:
        return statistics.median(self.rates) if self.rates and not self.note else None


def images_per_s(cell: Cell | None) -> str:
    if cell is None:
        return "not measured"
    if cell.value is None:
        return cell.note
    if len(cell.rates) == 1:
        return f"{cell.value:,.0f}"
    return f"{cell.value:,.0f} ({min(cell.rates):,.0f}-{max(cell.rates):,.0f})"


def baseline(label: str, model: str, sizes: Sizes) -> tuple[tuple[str, str], str] | None:
    """The row that ``label`` is compared with, and its name in the ratio column (None: a baseline)."""
    if label in {s.label for s in PATHS[1:]}:
        return (DEFAULT_PATH.label, model), "default path"
    if label in (TRIAL_TRAIN, TRIAL_WHOLE):
        return (BARE, model), "bare loop"
    if label in {pack_label(n) for n in sizes.packs if n > 1}:
        return (pack_label(1), model), "one trial"
    return None


def ratio(cells: dict, key: tuple[str, str], base: tuple[str, str]) -> float | None:
    cell, reference = cells.get(key), cells.get(base)
    if cell is None or reference is None or cell.value is None or reference.value is None:
        return None
    return cell.value / reference.value


def table(cells: dict, sizes: Sizes, models) -> list[str]:
    lines = ["| configuration | model | images/s | ratio |", "|---|---|---|---|"]
    for label, model in row_labels(sizes, models):
        compared = baseline(label, model, sizes)
        if compared is None:
            shown = "baseline"
        else:
            value = ratio(cells, (label, model), compared[0])
            shown = "-" if value is None else f"{value:.2f}x {compared[1]}"
        lines.append(f"| {label} | {model} | {images_per_s(cells.get((label, model)))} | {shown} |")
    return lines


def goal_line(tag: str, what: str, cells: dict, key, base, threshold: float) -> str:
    value = ratio(cells, key, base)
    if value is None:
        why = next((c.note for c in (cells.get(key), cells.get(base)) if c is not None and c.note), "not measured")
        return f"- {tag} {what}: NOT MEASURED ({why})"
    verdict = "PASS" if value >= threshold else "FAIL"
    return (f"- {tag} {what}: {verdict}, {value:.2f}x ({cells[key].value:,.0f} against "
            f"{cells[base].value:,.0f} images/s)")


def goals(cells: dict, sizes: Sizes, models) -> list[str]:
    """Issue 18's goals, one line each: PASS or FAIL with the measured ratio, or NOT MEASURED and why."""
    lines = [goal_line("(1)", f"{model}: a trial's training images/s >= {TRIAL_VS_BARE:g}x the bare loop's",
                       cells, (TRIAL_TRAIN, model), (BARE, model), TRIAL_VS_BARE) for model in models]
    lines.append(goal_line("(2)", f"resnet18: the fast path >= {FAST_VS_DEFAULT:g}x today's default path",
                           cells, (FAST_PATH.label, "resnet18"), (DEFAULT_PATH.label, "resnet18"),
                           FAST_VS_DEFAULT))
    most = max(sizes.packs)
    scope = ("" if (most, sizes.batch) == (PACKED, 128)
             else f" (goal: {PACKED} at batch 128; here {most} at batch {sizes.batch})")
    lines.append(goal_line("(3)", f"{PACK_MODEL}: {most} trials at once >= {PACKED_VS_ONE:g}x the images/s of "
                                  f"one{scope}",
                           cells, (pack_label(most), PACK_MODEL), (pack_label(1), PACK_MODEL), PACKED_VS_ONE))
    return lines


# ------------------------------------------------------------------ running it all


class Clock:
    """Seconds since the start, against ``--time-budget`` (0: none)."""

    def __init__(self, budget: float):
        self.started = time.monotonic()
        self.budget = budget

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def allows(self) -> bool:
        return not self.budget or self.elapsed() < self.budget


class Measurements:
    """The cells measured so far, the notes for under the table and the errors (a row that raised)."""

    def __init__(self, clock: Clock):
        self.clock = clock
        self.cells: dict[tuple[str, str], Cell] = {}
        self.notes: list[str] = []
        self.errors: list[str] = []

    def take(self, key: tuple[str, str], measure, *also: tuple[str, str]) -> dict | None:
        """Run ``measure()`` for row ``key`` (rows ``also`` share its fate); None when skipped or failed."""
        label, model = key
        if not self.clock.allows():
            self._void((key, *also), f"skipped: --time-budget {self.clock.budget:g} s spent")
            return None
        print(f"[{self.clock.elapsed():5.0f} s] {model}: {label}", flush=True)
        try:
            result = measure()
        except Exception as exc:  # one row's failure is reported; the others are still measured
            import traceback

            traceback.print_exc()
            self.errors.append(f"{model}, {label}: {type(exc).__name__}: {' '.join(str(exc).split())[:300]}")
            self._void((key, *also), f"failed ({type(exc).__name__}; see below)")
            return None
        self.cells[key] = Cell(result["train"], "void: a bad (NaN/inf) loss in a timed window" if result["bad"] else "")
        print(f"         {images_per_s(self.cells[key])} images/s", flush=True)
        return result

    def _void(self, keys, note: str) -> None:
        for key in keys:
            self.cells[key] = Cell([], note)


def measure_model(m: Measurements, model: str, splits, sizes: Sizes, device, data_file: Path) -> None:
    """Every row of ``model``: the paths, the bare loop, a trial and (ResNet-18) the packed trials."""
    for setting in PATHS:
        run = effective(setting, device)
        m.take((setting.label, model), lambda: time_trial(
            run_config(model, run, sizes, device), make_data(splits, sizes, sizes.steps, run.augment_on), sizes))
    m.take((BARE, model), lambda: bare_loop(model, splits, sizes, device))
    trial = m.take((TRIAL_TRAIN, model), lambda: time_trial(
        run_config(model, AUTO, sizes, device), make_data(splits, sizes, sizes.trial_steps, AUTO.augment_on),
        sizes), (TRIAL_WHOLE, model))
    if trial is not None:
        m.cells[(TRIAL_WHOLE, model)] = Cell(trial["whole"], m.cells[(TRIAL_TRAIN, model)].note)
        m.notes.append(f"{model} trial: {trial['images']:,} training images per epoch; the auto settings "
                       f"came to {trial['resolved']}.")
    if model != PACK_MODEL:
        return
    for count in sizes.packs:
        packed = m.take((pack_label(count), model), lambda: packed_trials(count, model, sizes, data_file, device))
        if packed is not None:
            m.notes.append(f"Packed trials, {count} process(es): {sizes.train_images(sizes.pack_steps):,} training "
                           f"images per epoch each, {packed['resolved']}; whole-epoch images/s of each: "
                           f"{', '.join(f'{r:,.0f}' for r in packed['per_trial'])}.")
            if packed["foreign"]:
                m.errors.append(f"a worker imported {', '.join(packed['foreign'])}")


def measure_everything(sizes: Sizes, device: torch.device, models, clock: Clock) -> Measurements:
    m = Measurements(clock)
    print(f"generating {sizes.train:,} + {sizes.test:,} synthetic images {sizes.shape}", flush=True)
    splits = make_splits(sizes)
    with tempfile.TemporaryDirectory(prefix="aalr_gpu_bench_") as tmp:
        data_file = Path(tmp) / "splits.pt"  # what the --worker processes load instead of generating
        torch.save(splits, data_file)
        for model in models:
            measure_model(m, model, splits, sizes, device, data_file)
    if not bf16_available(device):
        m.notes.append(f"The bf16 rows ran in fp32: no native bf16 on {device.type} here.")
    if device.type == "cuda":
        m.notes.append(f"fp32 convolutions may use TF32: torch.backends.cudnn.allow_tf32 = "
                       f"{torch.backends.cudnn.allow_tf32} (PyTorch's default), matmuls: "
                       f"{torch.backends.cuda.matmul.allow_tf32}.")
    return m


# ------------------------------------------------------------------ the section of BENCHMARKS.md

COMMAND = "python bench/gpu.py --out bench/results/gpu.md"
GOALS_TEXT = [
    f"(1) a trial (TrainingRun with aalr, its snapshot and evaluation included) trains at >= {TRIAL_VS_BARE:g}x "
    f"the images/s of a bare PyTorch loop;",
    f"(2) bf16 + channels_last + device augmentation >= {FAST_VS_DEFAULT:g}x today's default path (fp32, default "
    f"memory format, augmentation in DataLoader workers) on ResNet-18;",
    f"(3) {PACKED} ResNet-18 trials packed on one GPU >= {PACKED_VS_ONE:g}x the images/s of one trial, at batch 128.",
]


def machine(device: torch.device) -> str:
    """The GPU, the CPU and the versions: everything that moves these figures."""
    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else "no GPU (run on the CPU)"
    cuda = f", CUDA {torch.version.cuda}" if device.type == "cuda" else ""
    return (f"{gpu}, {os.cpu_count()} CPU cores ({cpu}), torch {torch.__version__}{cuda}, "
            f"Python {platform.python_version()}")


def sizes_text(sizes: Sizes) -> str:
    return (f"Synthetic CIFAR-shaped uint8 data: {sizes.train:,} training and {sizes.test:,} test images "
            f"{'x'.join(map(str, sizes.shape))}, 10 classes; batch {sizes.batch}; standard augmentation (pad-4 "
            f"crop + flip). Each figure is the median (min-max) of {sizes.windows} timed window(s) after "
            f"{sizes.warmup} untimed: a path run's epoch is {sizes.steps} steps, a bare-loop window {sizes.steps} "
            f"steps, a trial's epoch {sizes.train_images(sizes.trial_steps) // sizes.batch} steps with "
            f"{sizes.test_images(sizes.trial_steps):,} test images, a packed trial's {sizes.pack_steps} steps "
            f"(one aggregate figure per row). The ratio column compares a row with today's default path, "
            f"the bare loop or one trial process.")


def fragment(command: str, device: torch.device, body: str) -> str:
    return (f"## {TITLE}\n\nCommand: `{command}`  \nMachine: {machine(device)}  \n"
            f"Date: {datetime.date.today().isoformat()}\n\n{body.rstrip()}\n")


def placeholder() -> str:
    """The section while no GPU has run this script."""
    goals = "\n".join(f"- {goal}" for goal in GOALS_TEXT)
    return (f"## {TITLE}\n\nCommand: `{COMMAND}` (on a machine with one CUDA GPU)  \nMachine: -  \nDate: -\n\n"
            f"**{NOT_MEASURED}**: none of the machines that ran these benchmarks had one, so this section has "
            f"no figures. `bench/gpu.py` measures the training images/s of ResNet-18 and WRN-16-8 (synthetic "
            f"CIFAR-shaped data, method aalr, batch 128): today's default path (fp32, default memory format, "
            f"augmentation in DataLoader workers), bf16, channels_last, augmentation on the device, bf16 + "
            f"channels_last, and the fast path (all three); a trial at the auto settings over whole epochs (its "
            f"training part, and the whole epoch with evaluation); a bare PyTorch loop, the upper bound; and 1, 2 "
            f"and 4 ResNet-18 trial processes packed on the GPU. It is sized for at most 8 minutes on one H100 "
            f"(`--time-budget`, default 420 s, starts no measurement after that); its docstring says how each "
            f"figure is taken.\n\nGoals (issue 18):\n\n{goals}\n\n"
            f"`python bench/gpu.py --dry-run` runs every code path at tiny sizes on a CPU "
            f"(`tests/test_bench_gpu.py` runs it); its figures are not results. On a machine without a GPU the "
            f"script measures nothing and keeps this section as it is, so `make bench` there leaves it alone.\n")


def current_section() -> str | None:
    """This section as BENCHMARKS.md has it now, or None."""
    path = ROOT / "BENCHMARKS.md"
    if not path.exists():
        return None
    lines = path.read_text().splitlines(keepends=True)
    head = f"## {TITLE}\n"
    if head not in lines:
        return None
    start = lines.index(head)
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
    return "".join(lines[start:end]).rstrip() + "\n"


def report(m: Measurements, sizes: Sizes, models, dry_run: bool, device: torch.device) -> str:
    body = []
    if dry_run:
        body.append(f"**Dry run** (`--dry-run`, on {device.type}): tiny sizes, every code path once; "
                    f"these figures are not results.\n")
    body += [sizes_text(sizes), "", *table(m.cells, sizes, models), ""]
    body += [f"- {note}" for note in m.notes] + [""]
    body += [f"Goals (issue 18), at {sizes.batch} images per batch:", "", *goals(m.cells, sizes, models), ""]
    if m.errors:
        body += ["Errors:", "", *(f"- {error}" for error in m.errors), ""]
    foreign = foreign_modules()
    body.append(f"Took {m.clock.elapsed() / 60:.1f} min. Imported from the packages a GPU machine may lack "
                f"({', '.join(ABSENT_ON_GPU_MACHINE)}): {', '.join(foreign) or 'none'}.")
    return "\n".join(body)


# ------------------------------------------------------------------ the command line


def parse(argv):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=None,
                        help="the Markdown section to write (default bench/results/gpu.md, a BENCHMARKS.md fragment)")
    parser.add_argument("--dry-run", action="store_true", help="tiny sizes on a CPU: every code path, no results")
    parser.add_argument("--batch-size", type=int, default=None, help="default 128 (dry run: 4)")
    parser.add_argument("--steps", type=int, default=None, help="steps per path epoch and bare-loop window (100)")
    parser.add_argument("--pack-steps", type=int, default=None, help="steps per packed trial's epoch (200)")
    parser.add_argument("--windows", type=int, default=None, help="timed windows per figure (3)")
    parser.add_argument("--models", default=",".join(MODELS), help=f"comma-separated subset of {', '.join(MODELS)}")
    parser.add_argument("--device", default=None, help="default cuda (dry run: cpu)")
    parser.add_argument("--time-budget", type=float, default=420.0,
                        help="seconds after which no measurement starts (0: no limit); default 420")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)  # internal: one packed trial
    args = parser.parse_args(argv)
    models = tuple(args.models.split(","))
    unknown = sorted(set(models) - set(MODELS))
    if unknown:
        parser.error(f"unknown model {unknown[0]!r}; choose from {', '.join(MODELS)}")
    for name in ("batch_size", "steps", "pack_steps", "windows"):
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {value}")
    return args, models


def sizes_for(args) -> Sizes:
    sizes = DRY if args.dry_run else FULL
    changes = {name: getattr(args, option) for name, option in
               (("batch", "batch_size"), ("steps", "steps"), ("pack_steps", "pack_steps"), ("windows", "windows"))
               if getattr(args, option) is not None}
    return replace(sizes, **changes)


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args, models = parse(argv)
    if args.worker is not None:
        worker(json.loads(args.worker))  # does not return
    out = args.out or RESULTS / "gpu.md"
    device = torch.device(args.device or ("cpu" if args.dry_run else "cuda"))
    if not args.dry_run and device.type != "cuda":
        print(f"error: the full sizes are for a CUDA GPU, not {device}; use --dry-run to check the script there",
              file=sys.stderr)
        return 2
    if not args.dry_run and device.type == "cuda" and not torch.cuda.is_available():
        kept = current_section()
        text = kept if kept is not None and NOT_MEASURED not in kept else placeholder()
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text)
        print(f"no CUDA GPU here: nothing measured; {out} holds BENCHMARKS.md's section "
              f"({'as it was' if text is kept else 'not measured yet'})")
        return 0
    sizes = sizes_for(args)
    clock = Clock(0 if args.dry_run else args.time_budget)
    m = measure_everything(sizes, device, models, clock)
    text = fragment(" ".join(["python", "bench/gpu.py", *argv]), device, report(m, sizes, models, args.dry_run, device))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print("\n" + text + f"\nwrote {out}")
    if not args.dry_run and out.resolve() == (RESULTS / "gpu.md").resolve():
        write_section("gpu")  # the fragment run_all assembles: this section of BENCHMARKS.md, in place
    return 1 if m.errors or foreign_modules() else 0


if __name__ == "__main__":
    sys.exit(main())
