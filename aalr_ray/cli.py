"""The ``aalr-ray`` command line.

Bad input never reaches a traceback: it is one line on stderr naming the bad
value and the valid choices, exit status 2, and no output file is created.

Each command imports what it needs when it runs: ``aalr-ray report`` loads
neither Ray nor torch, so it works where only the Parquet files and pyarrow are.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Callable

from .errors import describe, one_line

__all__ = ["main"]


class UsageError(Exception):
    """A bad value given by the user: reported as one line, exit status 2."""


class _Parser(argparse.ArgumentParser):
    """argparse with its errors as one ``aalr-ray: error:`` line (no usage block), exit status 2."""

    def error(self, message):
        raise UsageError(f"{message} (see {self.prog} --help)")


class _DeferredParser(_Parser):
    """A command's parser whose arguments are added when that command is parsed or its help shown.

    Describing ``train``'s arguments lists the models, datasets and methods,
    which imports torch; building every command's parser up front would make
    ``aalr-ray report`` import it too.
    """

    def __init__(self, *args, add_arguments: Callable[[argparse.ArgumentParser], None] | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self._add_arguments = add_arguments

    def _complete(self) -> None:
        if self._add_arguments is not None:
            add, self._add_arguments = self._add_arguments, None
            add(self)

    def parse_known_args(self, args=None, namespace=None):
        self._complete()
        return super().parse_known_args(args, namespace)

    def format_help(self) -> str:
        self._complete()
        return super().format_help()

    def format_usage(self) -> str:
        self._complete()
        return super().format_usage()


def _choices(kind: str, value: str, valid: list[str], allow_import_path: bool = False) -> str:
    if value in valid or (allow_import_path and ":" in value):
        return value
    extra = " (or an import path package.module:function)" if allow_import_path else ""
    raise UsageError(f"unknown {kind} {value!r}; choose from: {', '.join(valid)}{extra}")


def _positive(name: str, value: int) -> int:
    from .grid import MAX_INT

    if value <= 0:
        raise UsageError(f"{name} must be a positive integer, got {value}")
    if value > MAX_INT:
        raise UsageError(f"{name} must be at most {MAX_INT}, got {value}")
    return value


def _in_range(name: str, value, low, high, what: str):
    import math

    if not (isinstance(value, int) or math.isfinite(value)) or not low <= value <= high:
        raise UsageError(f"{name} must be {what}, got {value}")
    return value


def _device(value: str) -> str:
    """auto, cpu, cuda, cuda:N or mps, and present on this machine."""
    import re

    import torch

    if not re.fullmatch(r"auto|cpu|cuda(:\d{1,3})?|mps", value):
        raise UsageError(f"unknown device {value!r}; choose from: auto, cpu, cuda, cuda:N, mps")
    if value.startswith("cuda"):
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        index = int(value.partition(":")[2] or 0)
        if index >= count:
            present = ", ".join(["auto", "cpu", *(f"cuda:{i}" for i in range(count))])
            raise UsageError(f"device {value!r} is not on this machine ({count} CUDA device(s)); "
                             f"choose from: {present}")
    if value == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        raise UsageError("device 'mps' is not on this machine; choose from: auto, cpu")
    return value


def _format_row(row: dict, epochs: int) -> str:
    text = (f"epoch {row['epoch']:>4}/{epochs}  lr {row['lr']:<9.4g} train_loss {row['train_loss']:<8.4f} "
            f"test_loss {row['test_loss']:<8.4f} test_acc {100 * row['test_acc']:6.2f}%  {row['epoch_s']:.2f}s")
    for key in ("fgsm_acc", "pgd_acc"):
        if key in row:
            text += f"  {key} {100 * row[key]:.2f}%"
    if "phase" in row:
        patience = f" p={row['patience']}" if row["phase"] == 2 else ""
        text += f"  phase {row['phase']}{patience} {row['action']}"
    return text


# ------------------------------------------------------------------- train
def _train_parser(sub) -> None:
    sub.add_parser(
        "train", help="one training run, a progress line per epoch",
        description="Train one model with one LR method; print a line per epoch and write the rows as JSON lines.",
        formatter_class=argparse.RawDescriptionHelpFormatter, add_arguments=_train_arguments)


def _train_arguments(p: argparse.ArgumentParser) -> None:
    from .data import AUGMENTATIONS, dataset_names, default_data_dir
    from .methods import method_names
    from .models import model_names
    from .train import AUGMENT_PLACES, CHANNELS_LAST, EPOCH_LOSSES, PRECISIONS, RUN_SNAPSHOT_DEVICES

    p.epilog = (f"models:        {', '.join(model_names())}\n"
                f"datasets:      {', '.join(dataset_names())}\n"
                f"methods:       {', '.join(method_names())}\n"
                f"augmentations: {', '.join(AUGMENTATIONS)}\n"
                "A model or dataset may also be an import path package.module:function.")
    p.add_argument("--model", required=True, help="model name (see below)")
    p.add_argument("--dataset", required=True, help="dataset name (see below)")
    p.add_argument("--method", default="aalr", help="LR method (default: aalr)")
    p.add_argument("--epochs", type=int, required=True, help="epochs to train (every epoch counts, rolled back or not)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--weight-decay", type=float, default=5e-4)
    p.add_argument("--augmentation", default="none")
    p.add_argument("--training", default="natural",
                   help="natural, or adversarial training: fgsm:eps=8/255 | pgd:eps=8/255,alpha=2/255,steps=7")
    p.add_argument("--robust-eval", action="store_true",
                   help="report FGSM and PGD-10 test accuracy every epoch (on by default for adversarial training)")
    p.add_argument("--epoch-loss", default="train-mean", choices=EPOCH_LOSSES,
                   help="the loss AALR judges: the epoch's mean training loss (free) or a clean pass")
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, cuda:1, ...")
    p.add_argument("--precision", default="auto", choices=PRECISIONS,
                   help="forward passes and losses under autocast: auto (bf16 on a CUDA GPU with bf16, fp32 "
                        "elsewhere), fp32, bf16, fp16 (CUDA only, with a GradScaler); weights stay fp32")
    p.add_argument("--channels-last", default="auto", choices=CHANNELS_LAST,
                   help="channels_last memory format for image models: auto (on for convolutional models on "
                        "CUDA), on, off")
    p.add_argument("--snapshot-device", default="auto", choices=RUN_SNAPSHOT_DEVICES,
                   help="where AALR keeps theta_0 and its best snapshot: auto (= same here), same (the model's "
                        "device), cpu (host memory, pinned on a GPU machine)")
    p.add_argument("--augment-on", default="auto", choices=AUGMENT_PLACES,
                   help="where --augmentation runs: auto (batched on a GPU when the training split fits "
                        "there, per example in DataLoader workers on a CPU), device, workers")
    p.add_argument("--validation", type=float, default=None, metavar="FRACTION",
                   help="hold out this fraction (0, 0.5] of the training split by seed; rows gain val_loss "
                        "and val_acc (default: none)")
    p.add_argument("--data-dir", default=None, help=f"where datasets live (default {default_data_dir()})")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads for this run (default 1; 0 = torch's choice)")
    p.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                   help="override a method default, e.g. --option lr=0.01 (JSON values)")
    p.add_argument("--out", default=None, help="write the per-epoch rows here as JSON lines")
    p.set_defaults(func=_run_train)


def _parse_options(pairs: list[str]) -> dict:
    options = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise UsageError(f"--option expects KEY=VALUE, got {pair!r}")
        try:
            options[key] = json.loads(value)
        except json.JSONDecodeError:
            options[key] = value
    return options


def _train_config(args):
    from .data import AUGMENTATIONS, dataset_names
    from .grid import MAX_SEED
    from .methods import method_names
    from .models import model_names
    from .train import RunConfig

    return RunConfig(
        model=_choices("model", args.model, model_names(), allow_import_path=True),
        dataset=_choices("dataset", args.dataset, dataset_names(), allow_import_path=True),
        method=_choices("method", args.method, method_names()),
        epochs=_positive("--epochs", args.epochs),
        seed=_in_range("--seed", args.seed, 0, MAX_SEED, "an integer in 0..2**63-1"),
        batch_size=_positive("--batch-size", args.batch_size),
        weight_decay=_in_range("--weight-decay", args.weight_decay, 0, float("inf"), "a finite number >= 0"),
        augmentation=_choices("augmentation", args.augmentation, list(AUGMENTATIONS)),
        epoch_loss=args.epoch_loss,
        device=_device(args.device),
        precision=args.precision,
        channels_last=args.channels_last,
        snapshot_device=args.snapshot_device,
        augment_on=args.augment_on,
        data_dir=args.data_dir,
        method_options=_parse_options(args.option),
        threads=_in_range("--threads", args.threads, 0, 1024, "an integer in 0..1024 (0 = torch's choice)"),
        training=args.training,
        robust_eval={} if args.robust_eval else None,
        validation=None if args.validation is None else _in_range(
            "--validation", args.validation, 1e-12, 0.5, "a fraction of the training split in (0, 0.5]"),
    )


def _check_options(config) -> None:
    """Every --option checked as a grid file's method_options are, before any data loads."""
    from .grid import option_problems

    problems = option_problems(config.method, config.method_options)
    if problems:
        key, problem = problems[0]
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise UsageError(f"--option {key}: {problem}{more}")


def _check_precision(config) -> None:
    """The precision against the run's device (fp16 needs CUDA), before any data loads."""
    from .train import resolve_device, resolve_precision

    try:
        resolve_precision(config.precision, resolve_device(config.device))
    except ValueError as exc:
        raise UsageError(one_line(exc)) from None


def _open_out(out: Path):
    """Create --out now, before the data loads: refuse a path that exists, a directory or one that cannot be written."""
    if out.is_dir():
        raise UsageError(f"--out {str(out)!r} is a directory; give a file path")
    if out.exists() or out.is_symlink():
        raise UsageError(f"--out {str(out)!r} already exists; remove it or pick another path")
    if not out.parent.is_dir():
        what = "is not a directory" if out.parent.exists() else "does not exist"
        raise UsageError(f"--out directory {str(out.parent)!r} {what}")
    try:
        return open(out, "x")
    except OSError as exc:
        raise UsageError(f"cannot write --out {str(out)!r}: {exc.strerror or type(exc).__name__}") from None


def _run_train(args) -> int:
    from .data import DataError
    from .methods import MethodError
    from .models import ModelShapeError
    from .train import TrainingRun

    try:
        config = _train_config(args)
    except ValueError as exc:  # RunConfig's own checks (training mode, robust eval)
        raise UsageError(one_line(exc)) from None
    _check_options(config)
    _check_precision(config)
    out = Path(args.out) if args.out else None
    sink = _open_out(out) if out is not None else None
    rows, finished = 0, False
    try:
        try:
            run = TrainingRun(config)  # loads data, builds model and method: input errors surface here
        except (DataError, MethodError, ModelShapeError):
            raise
        except Exception as exc:  # noqa: BLE001 - a factory or data directory of the user's
            raise UsageError(one_line(exc) if isinstance(exc, ValueError) else describe(exc, 400)) from None
        spec = run.data.spec
        print(f"{config.method} on {config.model} / {config.dataset} {spec.input_shape}, {config.epochs} epochs, "
              f"seed {config.seed}, batch {config.batch_size}, device {run.device}", flush=True)
        for row in run:
            print(_format_row(row, config.epochs), flush=True)
            if sink is not None:
                sink.write(json.dumps(row) + "\n")
                sink.flush()
                rows += 1
        finished = True
    finally:
        if sink is not None:
            sink.close()
            if not finished and rows == 0:
                out.unlink(missing_ok=True)  # failed before the first epoch (bad input): leave nothing behind
    summary = run.summary()
    print(f"final test_acc {100 * summary['final_test_acc']:.2f}%  test_loss {summary['final_test_loss']:.4f}"
          + (f"  rows in {out}" if out else ""))
    return 0


# -------------------------------------------------------------------- grid
def _grid_parser(sub) -> None:
    p = sub.add_parser(
        "grid", help="run a YAML grid as one Ray Tune experiment",
        description="Run datasets x models x methods x seeds from a YAML job file as one Ray Tune experiment; "
                    "write epochs.parquet, trials.parquet, report.md and report.html into <storage>/<name>.")
    p.add_argument("job", help="the grid file, e.g. jobs/quickstart.yaml")
    p.add_argument("--storage", default="./results", help="local path or URI (s3://bucket/prefix); default ./results")
    p.add_argument("--address", default=None,
                   help="Ray cluster address (auto, ray://..., host:port); default $RAY_ADDRESS or an embedded local Ray")
    p.add_argument("--data-dir", default=None, help="where datasets live on every node")
    p.add_argument("--resume", action="store_true", help="continue an interrupted grid (finished trials are kept)")
    p.add_argument("--smoke", action="store_true",
                   help="check the file on a CPU: a covering subset, 2 epochs, tiny (synthetic where needed) data")
    p.set_defaults(func=_run_grid)


def _run_grid(args) -> int:
    from . import storage
    from .grid import GridError
    from .report import REPORT_HTML, print_summary, write_report
    from .runner import GridRunError, run_grid
    from .storage import StorageError

    try:
        experiment, collected = run_grid(args.job, storage=args.storage, address=args.address,
                                         data_dir=args.data_dir, resume=args.resume, smoke=args.smoke)
    except GridError as exc:  # every problem of the file, one line each; nothing started or written
        for problem in exc.problems:
            print(f"aalr-ray: error: {' '.join(problem.split())}", file=sys.stderr)
        return 2
    except (GridRunError, StorageError) as exc:
        raise UsageError(one_line(exc)) from None
    if collected is not None or not storage.exists(f"{experiment}/{REPORT_HTML}"):  # (a report of before report.html)
        write_report(experiment)
    print_summary(experiment)
    if collected is not None and not collected.complete:
        unfinished = [t["trial_name"] for t in collected.trials if t["status"] not in ("TERMINATED", "STOPPED")]
        print(f"{len(unfinished)} of {len(collected.trials)} trials did not finish: {', '.join(unfinished[:6])}"
              f"{' ...' if len(unfinished) > 6 else ''}; continue with --resume", file=sys.stderr)
        return 1
    return 0


def _report_parser(sub) -> None:
    p = sub.add_parser(
        "report", help="(re)write report.md, report.html and the figures of an experiment, finished or running",
        description="Write report.md, report.html and PNG figures into EXPERIMENT_DIR: from its "
                    "{epochs,trials}.parquet once the grid has ended, or from the rows the trials have "
                    "checkpointed so far while it runs (or after it was interrupted). An experiment whose "
                    "trials have no rows yet is said so in one line, exit status 0, nothing written.")
    p.add_argument("experiment", help="experiment directory or URI, e.g. results/quickstart")
    p.add_argument("--watch", type=float, default=None, metavar="SECONDS",
                   help="rewrite the report every SECONDS until the grid has ended, then once more and exit 0; "
                        "report.html reloads itself as often meanwhile")
    p.set_defaults(func=_run_report)


def _read_for_report(experiment: str):
    """Every row of the experiment's report, read and checked before anything is written."""
    from .progress import read_experiment
    from .storage import StorageError

    try:
        return read_experiment(experiment)
    except (OSError, ValueError, StorageError) as exc:  # ReportError, ProgressError, RowsError are ValueErrors
        raise UsageError(one_line(exc)) from None


def _write_report(experiment: str, results, refresh: int) -> str:
    from .report import write_report

    try:
        return write_report(experiment, results, refresh=refresh)
    except OSError as exc:
        raise UsageError(f"cannot write the report into {experiment}: {one_line(exc)}") from None


def _run_report(args) -> int:
    import math
    import time

    from .report import ENDED, REFRESH_S, print_summary

    watch = args.watch
    if watch is not None and not (math.isfinite(watch) and watch > 0):
        raise UsageError(f"--watch must be a positive number of seconds, got {watch:g}")
    experiment = args.experiment if "://" in args.experiment else str(Path(args.experiment).resolve())
    refresh = math.ceil(watch) if watch is not None else REFRESH_S
    told_empty = False
    try:
        while True:
            results = _read_for_report(experiment)
            ended = sum(t["status"] in ENDED for t in results.trials)
            if results.running and not results.epochs:  # nothing to show yet
                if not told_empty:
                    print(f"{experiment}: no trial has finished an epoch yet (0 of {len(results.trials)} trials "
                          f"finished); nothing written{'; waiting' if watch else ''}", flush=True)
                    told_empty = True
                if watch is None:
                    return 0
            else:
                written = _write_report(experiment, results, refresh)
                if watch is None or not results.running:
                    break
                print(f"wrote {written} ({ended} of {len(results.trials)} trials finished); "
                      f"again in {watch:g} s", flush=True)
            time.sleep(watch)
    except KeyboardInterrupt:
        print("aalr-ray: report --watch stopped; the report last written stays", file=sys.stderr)
        return 130
    print(f"wrote {written}")
    print_summary(experiment, results=results)
    return 0


# -------------------------------------------------------------------- main
# The errors, besides UsageError, that mean bad input: (module, class). Their
# modules import torch, so they are looked up only where already loaded: an
# exception of a class whose module is not loaded cannot have been raised.
_INPUT_ERRORS = (("aalr_ray.data.spec", "DataError"), ("aalr_ray.methods", "MethodError"),
                 ("aalr_ray.models", "ModelShapeError"))


def _is_bad_input(exc: Exception) -> bool:
    if isinstance(exc, UsageError):
        return True
    for module_name, class_name in _INPUT_ERRORS:
        module = sys.modules.get(module_name)
        if module is not None and isinstance(exc, getattr(module, class_name)):
            return True
    return False


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="aalr-ray", description="Hyperparameter-free learning-rate tuning (AALR) on PyTorch and Ray Tune.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_DeferredParser)
    _train_parser(sub)
    _grid_parser(sub)
    _report_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except UsageError as exc:  # argparse's own errors: unknown flag, not an integer, missing argument
        print(f"aalr-ray: error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    try:
        return args.func(args)
    except Exception as exc:
        if not _is_bad_input(exc):
            raise
        print(f"aalr-ray: error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C outside Tune's own handling (Tune stops a running grid itself)
        print("aalr-ray: interrupted; an interrupted grid continues with --resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
