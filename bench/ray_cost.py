"""Ray's cost per epoch for the in-process trainable: report + checkpoint.

    python bench/ray_cost.py            # ConvBase 30 epochs, ResNet-18 state 12 epochs
    python bench/ray_cost.py --quick    # 8 and 4: a check that it runs

Why: ``aalr_ray.trainable.aalr_trainable`` decides AALR inside the trial, so
the only cost Ray adds is what every epoch does after training: write
``run.pt`` (``atomic_torch_save``) and ``epochs.jsonl`` into a temp directory
and hand it to ``tune.report(row, checkpoint=...)``, which copies it into Ray
storage and waits for the driver to take the result (function trainables
report synchronously). This measures that path, on a real local Ray with
storage in a temp dir, for two states:

* ConvBase (mnist1d-cnn) on MNIST-1D: a real aalr TrainingRun trained every
  epoch, so the cost is also given as a share of the epoch it follows;
* a ResNet-18 (CIFAR stem) TrainingRun with method aalr: built once and
  trained one epoch on 64 synthetic 32x32 images (so SGD momentum exists),
  then its ``run.state_dict()`` (model, momentum, AALR's theta_0 snapshot: the
  very ``run.pt`` aalr_trainable writes) is reported every "epoch". A
  CIFAR-size epoch is out of reach on this CPU, so no share is given for it.

Every epoch, inside the same trial process and in rotating order, it times:

* ``torch.save`` of the state to a local directory (the bare reference);
* ``atomic_torch_save`` of it (temp file, fsync, rename);
* ``tune.report(row)`` without a checkpoint;
* aalr_trainable's path: temp dir, ``atomic_torch_save``, rows file,
  ``tune.report(row, checkpoint=...)``, temp dir removed; also its
  ``tune.report`` call alone (the copy into storage plus the driver round
  trip), and within it Ray's copy into storage
  (``StorageContext.persist_current_checkpoint``, wrapped with a timer in
  the trial process).

The first epoch is a warm-up and is left out of the statistics.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, write_fragment  # noqa: E402
from raytools import LoadWatch, command_line, med, start_ray  # noqa: E402

KINDS = ("bare", "atomic", "report", "ckpt")


def cost_trainable(config: dict) -> None:
    """Trains (or holds) one TrainingRun and times the four save/report paths every epoch."""
    import torch
    from ray import tune

    from aalr_ray.controller import atomic_torch_save
    from aalr_ray.train import RunConfig, TrainingRun
    from aalr_ray.trainable import CHECKPOINT_FILE, ROWS_FILE, _write_rows

    torch.set_num_threads(1)
    # Time Ray's copy of the checkpoint into storage inside tune.report (a private
    # method, wrapped in this worker process only; nothing else changes).
    from ray.train._internal.storage import StorageContext

    copies = []
    persist = StorageContext.persist_current_checkpoint

    def timed_persist(self, checkpoint):
        started = time.perf_counter()
        try:
            return persist(self, checkpoint)
        finally:
            copies.append(time.perf_counter() - started)

    StorageContext.persist_current_checkpoint = timed_persist
    run = TrainingRun(RunConfig(**config["run"]))
    scratch = Path(config["scratch"])
    scratch.mkdir(parents=True, exist_ok=True)
    log = open(config["log"], "a")
    built = None
    if not config["train"]:
        started = time.perf_counter()
        built = run.train_one_epoch()  # momentum buffers exist from here on
        log.write(json.dumps({"build_epoch_s": time.perf_counter() - started}) + "\n")
    rows = []
    for epoch in range(1, config["epochs"] + 1):
        record = {"epoch": epoch}
        if config["train"]:
            started = time.perf_counter()
            row = run.train_one_epoch()
            record["epoch_s"] = time.perf_counter() - started  # training + AALR + test evaluation
        else:
            row = {**built, "epoch": epoch}
        row["epochs_done"] = epoch
        rows.append(row)
        for i in range(len(KINDS)):
            kind = KINDS[(epoch + i) % len(KINDS)]  # rotate: no path always runs first
            started = time.perf_counter()
            if kind == "bare":
                torch.save(run.state_dict(), scratch / "bare.pt")
            elif kind == "atomic":
                atomic_torch_save(run.state_dict(), scratch / "atomic.pt")
            elif kind == "report":
                tune.report({**row, "path": "plain"})
            else:  # aalr_trainable's per-epoch path, verbatim plus timers
                with tempfile.TemporaryDirectory() as directory:
                    atomic_torch_save(run.state_dict(), Path(directory) / CHECKPOINT_FILE)
                    _write_rows(Path(directory) / ROWS_FILE, rows)
                    before_report = time.perf_counter()
                    tune.report({**row, "path": "checkpoint"},
                                checkpoint=tune.Checkpoint.from_directory(directory))
                    record["ckpt_report_s"] = time.perf_counter() - before_report
                    record["copy_s"] = copies[-1] if copies else float("nan")
            record[kind + "_s"] = time.perf_counter() - started
        record["state_bytes"] = (scratch / "bare.pt").stat().st_size
        log.write(json.dumps(record) + "\n")
        log.flush()


def measure(name: str, run: dict, epochs: int, train: bool, tmp: Path) -> dict:
    from ray import tune

    log = tmp / f"{name}.jsonl"
    started = time.perf_counter()
    results = tune.Tuner(
        tune.with_resources(cost_trainable, {"cpu": 1}),
        param_space={"run": run, "epochs": epochs, "train": train, "log": str(log),
                     "scratch": str(tmp / f"{name}_bare")},
        run_config=tune.RunConfig(name=name, storage_path=str(tmp / "storage"), verbose=0),
    ).fit()
    wall = time.perf_counter() - started
    if results.errors:
        raise RuntimeError(f"{name}: {results.errors[0]}")
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    meta = next((r for r in lines if "build_epoch_s" in r), None)
    records = [r for r in lines if "epoch" in r][1:]  # epoch 1 is the warm-up
    stored = sum(f.stat().st_size for f in (tmp / "storage" / name).rglob("run.pt"))
    shutil.rmtree(tmp / "storage" / name, ignore_errors=True)  # ResNet-18: ~130 MB per epoch
    return {"name": name, "records": records, "meta": meta, "wall_s": wall, "stored_bytes": stored}


def series(records, key):
    return [r[key] for r in records]


def table(results: list[dict]) -> str:
    lines = ["| state | run.pt size | `torch.save` (bare) | `atomic_torch_save` | `tune.report` without checkpoint "
             "| aalr_trainable's report + checkpoint | of which `tune.report` | of which Ray's copy into storage "
             "| report + checkpoint / bare `torch.save` |",
             "|---|---|---|---|---|---|---|---|---|"]
    for res in results:
        r = res["records"]
        size = statistics.median(series(r, "state_bytes"))
        size_text = f"{size / 1e6:.1f} MB" if size > 1e6 else f"{size / 1e3:.0f} KB"
        ratio = statistics.median(series(r, "ckpt_s")) / statistics.median(series(r, "bare_s"))
        lines.append(f"| {res['label']} | {size_text} | {med(series(r, 'bare_s'), scale=1e3)} "
                     f"| {med(series(r, 'atomic_s'), scale=1e3)} | {med(series(r, 'report_s'), scale=1e3)} "
                     f"| {med(series(r, 'ckpt_s'), scale=1e3)} | {med(series(r, 'ckpt_report_s'), scale=1e3)} "
                     f"| {med(series(r, 'copy_s'), scale=1e3)} "
                     f"| {ratio:.1f}x |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="few epochs: a check that it runs")
    parser.add_argument("--convbase-epochs", type=int, default=None, help="default 30 (quick: 8)")
    parser.add_argument("--resnet-epochs", type=int, default=None, help="default 12 (quick: 4)")
    parser.add_argument("--name", default="ray_cost")
    args = parser.parse_args(argv)
    conv_epochs = args.convbase_epochs or (8 if args.quick else 30)
    resnet_epochs = args.resnet_epochs or (4 if args.quick else 12)

    load = LoadWatch()
    ray = start_ray()
    tmp = Path(tempfile.mkdtemp(prefix="aalr_ray_cost_"))
    try:
        started = time.perf_counter()
        conv = measure("convbase", dict(model="mnist1d-cnn", dataset="mnist1d", method="aalr",
                                        epochs=conv_epochs, seed=0), conv_epochs, True, tmp)
        conv["label"] = f"ConvBase (mnist1d-cnn), aalr, {conv_epochs - 1} epochs"
        resnet = measure("resnet18", dict(model="resnet18", dataset="synthetic", method="aalr", epochs=100,
                                          seed=0, train_limit=64, test_limit=64), resnet_epochs, False, tmp)
        resnet["label"] = f"ResNet-18 (CIFAR stem), aalr state, {resnet_epochs - 1} reports"
        elapsed = time.perf_counter() - started
    finally:
        ray.shutdown()
        shutil.rmtree(tmp, ignore_errors=True)

    r = conv["records"]
    epoch_s = series(r, "epoch_s")
    share = [c / e for c, e in zip(series(r, "ckpt_s"), epoch_s)]
    share_report = [c / e for c, e in zip(series(r, "report_s"), epoch_s)]
    body = (f"Milliseconds per epoch, median (min-max) over the epochs after a warm-up one, all timed "
            f"inside one Tune trial (1 CPU, one torch thread) on a local Ray with 2 CPUs, storage on the "
            f"local disk (a temp dir):\n\n{table([conv, resnet])}\n\n"
            f"ConvBase epoch in the same trial (training, AALR's decision, test evaluation): "
            f"{med(epoch_s, scale=1e3)} ms. aalr_trainable's report + checkpoint is "
            f"**{med(share, '{:.0f}', 100)} %** of it, epoch by epoch (a report without a checkpoint: "
            f"{med(share_report, '{:.0f}', 100)} %). No goal was set for these figures: they are what the "
            f"in-process trainable pays Ray per epoch, against the paper's 'no computational overhead' for "
            f"AALR itself (see the AALR overhead section); the share falls as the epoch grows.\n\n")
    meta = resnet["meta"]
    if meta:
        body += (f"The ResNet-18 state is aalr_trainable's `run.pt` in AALR's phase 1: weights, SGD momentum and "
                 f"the theta_0 snapshot, three copies of the 11.2 M weights (in phase 2 the best snapshot holds "
                 f"momentum too: four). Building it took one epoch on 64 synthetic images "
                 f"({meta['build_epoch_s']:.1f} s in this run).\n\n")
    body += ("For the 134 MB state the times depend on the disk's write-back as much as on Ray: every "
             "\"epoch\" here writes the state four times (bare, atomic, the checkpoint's temp file, Ray's copy "
             "into storage), and the spread over epochs is wide; compare the medians.\n\n")
    body += (f"Ray copies every checkpoint into storage: ConvBase kept {conv['stored_bytes'] / 1e6:.1f} MB, the "
             f"ResNet-18 state {resnet['stored_bytes'] / 1e9:.2f} GB over these few reports "
             "(`CheckpointConfig(num_to_keep=None)`, the default; AALRScheduler requires it). "
             f"The two trials took {elapsed:.0f} s, their start-up included.\n")
    body = body.rstrip() + "\n\n" + load.note() + "\n"
    write_fragment(args.name, "Ray's cost per epoch for the in-process trainable (report + checkpoint)",
                   command_line("ray_cost.py", argv), body)
    (RESULTS / f"{args.name}.json").write_text(json.dumps(
        {"convbase": conv, "resnet18": resnet, "seconds": elapsed}, default=str))
    print(body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
