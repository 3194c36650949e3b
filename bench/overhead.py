"""AALR's cost over plain SGD: wall time per epoch and the memory of its snapshots.

    python bench/overhead.py            # ConvBase on MNIST-1D, 100 epochs, 3 seeds

AALR, plain SGD (same optimizer: momentum 0.9, lr 0.1, no schedule) and the
tuned `step` baseline train side by side in one process, alternating epoch by
epoch, so all three see the same machine load. Every epoch counts, rolled-back ones included. The per-epoch time
covers the training pass and the method's end-of-epoch work (AALR's snapshot or
rollback), not the test evaluation both share.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, write_fragment  # noqa: E402

PLAIN_SGD = {"recipe": "cutout", "milestones": [], "nesterov": False, "lr": 0.1, "momentum": 0.9}


def state_bytes(model, optimizer) -> int:
    from aalr_ray.controller import snapshot_nbytes

    return snapshot_nbytes({"model": model.state_dict(), "optimizer": optimizer.state_dict()})


def main(argv=None) -> int:
    import torch

    from aalr_ray.train import RunConfig, TrainingRun

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="mnist1d-cnn")
    parser.add_argument("--dataset", default="mnist1d")
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)

    lines = ["| seed | AALR median s/epoch | SGD median s/epoch | step median s/epoch | AALR / SGD (medians) | "
             "AALR / SGD (totals) | AALR / step (medians) | AALR rollbacks |",
             "|---|---|---|---|---|---|---|---|"]
    ratios, step_ratios, memory = [], [], None
    for seed in range(args.seeds):
        common = dict(model=args.model, dataset=args.dataset, epochs=args.epochs, seed=seed)
        aalr = TrainingRun(RunConfig(method="aalr", **common))
        sgd = TrainingRun(RunConfig(method="step", method_options=PLAIN_SGD, **common), data=aalr.data)
        step = TrainingRun(RunConfig(method="step", **common), data=aalr.data)
        aalr_rows, sgd_rows, step_rows = [], [], []
        for _ in range(args.epochs):
            aalr_rows.append(aalr.train_one_epoch())
            sgd_rows.append(sgd.train_one_epoch())
            step_rows.append(step.train_one_epoch())
        a = [r["epoch_s"] for r in aalr_rows]
        s = [r["epoch_s"] for r in sgd_rows]
        t = [r["epoch_s"] for r in step_rows]
        ratio = statistics.median(a) / statistics.median(s)
        ratios.append(ratio)
        step_ratios.append(statistics.median(a) / statistics.median(t))
        rollbacks = sum(r["action"].startswith("restore") for r in aalr_rows)
        lines.append(f"| {seed} | {statistics.median(a):.4f} | {statistics.median(s):.4f} | "
                     f"{statistics.median(t):.4f} | {ratio:.3f} | {sum(a) / sum(s):.3f} | {step_ratios[-1]:.3f} | "
                     f"{rollbacks} |")
        controller = aalr.method.controller
        if controller.phase == 2:
            memory = (controller.snapshot_nbytes(), state_bytes(aalr.model, aalr.method.optimizer))
    body = "\n".join(lines) + "\n\n"
    body += (f"AALR / plain SGD, median over seeds: **{statistics.median(ratios):.3f}** "
             f"(min {min(ratios):.3f}, max {max(ratios):.3f}); the goal is <= 1.02 "
             f"({'met' if statistics.median(ratios) <= 1.02 else 'NOT met'}). "
             f"AALR / step: {statistics.median(step_ratios):.3f} "
             f"(min {min(step_ratios):.3f}, max {max(step_ratios):.3f}).\n\n")
    if memory:
        body += (f"Extra memory of AALR in phase 2: {memory[0]:,} bytes of snapshot against {memory[1]:,} bytes of "
                 f"live model + optimizer state (ratio {memory[0] / memory[1]:.3f}; theta_0 is dropped when "
                 "phase 1 ends, so one copy is all it holds).\n")
    command = "python bench/overhead.py " + " ".join(argv if argv is not None else sys.argv[1:])
    write_fragment("overhead", f"AALR overhead against plain SGD ({args.model} on {args.dataset}, "
                   f"{args.epochs} epochs)", command.strip(), body)
    (RESULTS / "overhead.json").write_text(json.dumps({"ratios": ratios, "step_ratios": step_ratios,
                                                        "memory": memory}))
    print(body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
