"""The ``aalr-ray`` command line.

Bad input never reaches a traceback: it is one line on stderr naming the bad
value and the valid choices, exit status 2, and no output file is created.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

__all__ = ["main"]


class UsageError(Exception):
    """A bad value given by the user: reported as one line, exit status 2."""


def _choices(kind: str, value: str, valid: list[str], allow_import_path: bool = False) -> str:
    if value in valid or (allow_import_path and ":" in value):
        return value
    extra = " (or an import path package.module:function)" if allow_import_path else ""
    raise UsageError(f"unknown {kind} {value!r}; choose from: {', '.join(valid)}{extra}")


def _positive(name: str, value: int) -> int:
    if value <= 0:
        raise UsageError(f"{name} must be a positive integer, got {value}")
    return value


def _format_row(row: dict, epochs: int) -> str:
    text = (f"epoch {row['epoch']:>4}/{epochs}  lr {row['lr']:<9.4g} train_loss {row['train_loss']:<8.4f} "
            f"test_loss {row['test_loss']:<8.4f} test_acc {100 * row['test_acc']:6.2f}%  {row['epoch_s']:.2f}s")
    if "phase" in row:
        text += f"  phase {row['phase']} p={row['patience']} {row['action']}"
    return text


# ------------------------------------------------------------------- train
def _train_parser(sub) -> None:
    from .data import AUGMENTATIONS, dataset_names, default_data_dir
    from .methods import method_names
    from .models import model_names
    from .train import EPOCH_LOSSES

    p = sub.add_parser(
        "train", help="one training run, a progress line per epoch",
        description="Train one model with one LR method; print a line per epoch and write the rows as JSON lines.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=(f"models:        {', '.join(model_names())}\n"
                f"datasets:      {', '.join(dataset_names())}\n"
                f"methods:       {', '.join(method_names())}\n"
                f"augmentations: {', '.join(AUGMENTATIONS)}\n"
                "A model or dataset may also be an import path package.module:function."))
    p.add_argument("--model", required=True, help="model name (see below)")
    p.add_argument("--dataset", required=True, help="dataset name (see below)")
    p.add_argument("--method", default="aalr", help="LR method (default: aalr)")
    p.add_argument("--epochs", type=int, required=True, help="epochs to train (every epoch counts, rolled back or not)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--weight-decay", type=float, default=5e-4)
    p.add_argument("--augmentation", default="none")
    p.add_argument("--epoch-loss", default="train-mean", choices=EPOCH_LOSSES,
                   help="the loss AALR judges: the epoch's mean training loss (free) or a clean pass")
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, cuda:1, ...")
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


def _run_train(args) -> int:
    from .data import AUGMENTATIONS, dataset_names
    from .methods import method_names
    from .models import model_names
    from .train import RunConfig, TrainingRun

    config = RunConfig(
        model=_choices("model", args.model, model_names(), allow_import_path=True),
        dataset=_choices("dataset", args.dataset, dataset_names(), allow_import_path=True),
        method=_choices("method", args.method, method_names()),
        epochs=_positive("--epochs", args.epochs),
        seed=args.seed,
        batch_size=_positive("--batch-size", args.batch_size),
        weight_decay=args.weight_decay,
        augmentation=_choices("augmentation", args.augmentation, list(AUGMENTATIONS)),
        epoch_loss=args.epoch_loss,
        device=args.device,
        data_dir=args.data_dir,
        method_options=_parse_options(args.option),
        threads=args.threads,
    )
    out = Path(args.out) if args.out else None
    if out is not None and not out.parent.is_dir():
        raise UsageError(f"--out directory {str(out.parent)!r} does not exist")
    run = TrainingRun(config)  # loads data, builds model and method: all input errors surface here
    spec = run.data.spec
    print(f"{config.method} on {config.model} / {config.dataset} {spec.input_shape}, {config.epochs} epochs, "
          f"seed {config.seed}, batch {config.batch_size}, device {run.device}", flush=True)
    sink = open(out, "w") if out is not None else None
    try:
        for row in run:
            print(_format_row(row, config.epochs), flush=True)
            if sink is not None:
                sink.write(json.dumps(row) + "\n")
                sink.flush()
    finally:
        if sink is not None:
            sink.close()
    summary = run.summary()
    print(f"final test_acc {100 * summary['final_test_acc']:.2f}%  test_loss {summary['final_test_loss']:.4f}"
          + (f"  rows in {out}" if out else ""))
    return 0


# -------------------------------------------------------------------- main
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="aalr-ray", description="Hyperparameter-free learning-rate tuning (AALR) on PyTorch and Ray Tune.")
    sub = parser.add_subparsers(dest="command", required=True)
    _train_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from .data import DataError
    from .methods import MethodError
    from .models import ModelShapeError

    try:
        return args.func(args)
    except (UsageError, DataError, MethodError, ModelShapeError) as exc:
        print(f"aalr-ray: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
