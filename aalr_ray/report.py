"""The report of an experiment, from its Parquet files alone.

    aalr-ray report EXPERIMENT_DIR      # also run at the end of every grid

Writes ``report.md`` (the paper's table layout: rows models, columns methods,
cells mean +- std over seeds, the best cell per row in bold) and PNG figures
(LR trajectories per trial on a log scale, like the paper's Figures 1-2; test
accuracy and training loss per epoch) into the experiment directory. It reads
only ``epochs.parquet`` and ``trials.parquet``, so it runs anywhere the files
are, e.g. on a laptop after copying results from S3.
"""

from __future__ import annotations

import math
import re
import statistics
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

from . import storage as store
from .errors import one_line
from .results import EPOCHS_FILE, TRIALS_FILE

__all__ = ["write_report", "print_summary", "build_tables", "load_results", "ReportError", "TARGET_MARGIN"]

TARGET_MARGIN = 0.005  # time-to-target: reach the tuned step baseline's peak within 0.5 points
# Fields that, when they vary inside a (dataset, training) group, name the table row.
VARIANT_FIELDS = ("augmentation", "batch_size", "weight_decay", "epochs", "training")
ADVERSARIAL_METRICS = (("fgsm_acc", "FGSM"), ("pgd_acc", "PGD"))


def _finite(values) -> list[float]:
    return [v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)]


def _mean_std(values) -> tuple[float, float, int]:
    values = _finite(values)
    if not values:
        return math.nan, math.nan, 0
    return statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else 0.0), len(values)


def _mode(training: str) -> str:
    # training is stored as JSON text or a plain string such as "fgsm:eps=0.03"
    text = training.strip('"')
    for mode in ("natural", "fgsm", "pgd"):
        if text.startswith(mode) or f'"mode": "{mode}"' in text:
            return mode
    return text


def _groups(trials: list[dict]) -> dict[tuple[str, str], list[dict]]:
    groups: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for trial in trials:
        groups[(trial["dataset"], _mode(trial["training"]))].append(trial)
    return dict(groups)


def _row_key(trial: dict, varying: list[str]) -> str:
    extras = [f"{k}={trial[k]}" if k != "augmentation" else str(trial[k]) for k in varying]
    return trial["model"] + (f" ({', '.join(extras)})" if extras else "")


def _varying(trials: list[dict]) -> list[str]:
    return [k for k in VARIANT_FIELDS if len({str(t.get(k)) for t in trials}) > 1]


def _ordered(values) -> list:
    return list(dict.fromkeys(values))


def build_tables(trials: list[dict], epochs: list[dict]) -> list[tuple[str, list[str]]]:
    """[(section title, markdown lines)] per dataset and training mode."""
    rows_by_trial: dict[str, list[dict]] = defaultdict(list)
    for row in epochs:
        rows_by_trial[row["trial_id"]].append(row)
    sections = []
    for (dataset, mode), group in _groups(trials).items():
        varying = _varying(group)
        methods = _ordered(t["method"] for t in group)
        row_keys = _ordered(_row_key(t, varying) for t in group)
        cells: dict[tuple[str, str], list[dict]] = defaultdict(list)
        for trial in group:
            cells[(_row_key(trial, varying), trial["method"])].append(trial)
        lines: list[str] = []
        metrics = [("peak_test_acc", "Peak test accuracy (%)"), ("final_test_acc", "Final test accuracy (%)")]
        if mode != "natural" or any("peak_fgsm_acc" in t for t in group):
            metrics = [(f"peak_{key}", f"Peak {name} accuracy (%), white-box l-inf")
                       for key, name in ADVERSARIAL_METRICS if any(t.get(f"peak_{key}") is not None for t in group)
                       ] + metrics
        for key, title in metrics:
            lines += _metric_table(title, key, row_keys, methods, cells)
        lines += _time_to_target(row_keys, methods, cells, rows_by_trial)
        sections.append((f"{dataset}, {mode} training", lines))
    return sections


def _metric_table(title, key, row_keys, methods, cells) -> list[str]:
    lines = [f"**{title}**, mean ± std over seeds (n = seeds that finished; best per row in bold)", "",
             "| model | " + " | ".join(methods) + " |", "|---|" + "---|" * len(methods)]
    for row_key in row_keys:
        stats = {m: _mean_std([t.get(key) for t in cells.get((row_key, m), [])
                               if t["status"] == "TERMINATED"]) for m in methods}
        best = max((s[0] for s in stats.values() if not math.isnan(s[0])), default=math.nan)
        texts = []
        for method in methods:
            mean, std, n = stats[method]
            if n == 0:
                texts.append("-")
                continue
            text = f"{100 * mean:.2f} ± {100 * std:.2f}" + (f" (n={n})" if n != len(cells[(row_key, method)])
                                                               else "")
            texts.append(f"**{text}**" if mean == best else text)
        lines.append(f"| {row_key} | " + " | ".join(texts) + " |")
    return lines + [""]


def _time_to_target(row_keys, methods, cells, rows_by_trial) -> list[str]:
    if "step" not in methods:
        return ["Epochs to the tuned `step` baseline's peak: no `step` trials in this grid.", ""]
    lines = [f"**Epochs to reach the `step` baseline's mean peak minus {100 * TARGET_MARGIN:.1f} points** "
             "(median over seeds; never = no seed got there)", "",
             "| model | " + " | ".join(methods) + " |", "|---|" + "---|" * len(methods)]
    for row_key in row_keys:
        step_peaks = _finite(t.get("peak_test_acc") for t in cells.get((row_key, "step"), []))
        if not step_peaks:
            continue
        target = statistics.mean(step_peaks) - TARGET_MARGIN
        texts = []
        for method in methods:
            reached = []
            trials = cells.get((row_key, method), [])
            for trial in trials:
                rows = sorted(rows_by_trial.get(trial["trial_id"], []), key=lambda r: r["epoch"])
                hit = next((r["epoch"] for r in rows if r["test_acc"] >= target), None)
                reached.append(hit)
            got = [e for e in reached if e is not None]
            if not trials:
                texts.append("-")
            elif not got:
                texts.append("never")
            else:
                texts.append(f"{statistics.median(got):.0f}" + ("" if len(got) == len(reached)
                                                              else f" ({len(reached) - len(got)} never)"))
        lines.append(f"| {row_key} | " + " | ".join(texts) + " |")
    return lines + [""]


# ------------------------------------------------------------------- figures
def _plots(trials: list[dict], epochs: list[dict], directory: Path) -> list[tuple[str, str]]:
    """PNG files per (dataset, mode): LR trajectories, test accuracy, training loss."""
    import matplotlib

    matplotlib.use("Agg")  # headless: no display on servers and CI
    import matplotlib.pyplot as plt

    rows_by_trial: dict[str, list[dict]] = defaultdict(list)
    for row in epochs:
        rows_by_trial[row["trial_id"]].append(row)
    written = []
    for (dataset, mode), group in _groups(trials).items():
        varying = _varying(group)
        colour_by = next((k for k in ("batch_size", "augmentation") if k in varying), "method")
        models = _ordered(t["model"] for t in group)
        colours = {v: f"C{i % 10}" for i, v in enumerate(_ordered(str(t[colour_by]) for t in group))}
        stem = f"{dataset.replace(':', '_').replace('.', '_')}_{mode}"
        for metric, label, log in (("lr", "learning rate", True), ("test_acc", "test accuracy", False),
                                   ("train_loss", "training loss", True)):
            fig, axes = plt.subplots(1, len(models), figsize=(5 * len(models), 3.6), squeeze=False)
            for ax, model in zip(axes[0], models):
                seen = set()
                for trial in (t for t in group if t["model"] == model):
                    rows = sorted(rows_by_trial.get(trial["trial_id"], []), key=lambda r: r["epoch"])
                    if not rows:
                        continue
                    key = str(trial[colour_by])
                    values = [r[metric] if _finite([r[metric]]) else math.nan for r in rows]
                    if log:
                        values = [v if v > 0 else math.nan for v in values]
                    ax.plot([r["epoch"] for r in rows], values, color=colours[key], alpha=0.75, linewidth=1,
                            drawstyle="steps-post" if metric == "lr" else "default",
                            label=None if key in seen else f"{colour_by}={key}" if colour_by != "method" else key)
                    seen.add(key)
                ax.set_title(model)
                ax.set_xlabel("epoch")
                ax.set_ylabel(label)
                if log:
                    ax.set_yscale("log")
                ax.grid(alpha=0.3)
                ax.legend(fontsize=7)
            fig.suptitle(f"{label} per epoch: {dataset}, {mode} training")
            fig.tight_layout()
            name = f"{metric}_{stem}.png"
            fig.savefig(directory / name, dpi=110)
            plt.close(fig)
            written.append((f"{label.capitalize()}: {dataset}, {mode}", name))
    return written


# -------------------------------------------------------------------- entry
class ReportError(ValueError):
    """A results file that cannot be read or is not what aalr-ray grid writes; one line naming it."""


# The columns the report reads and what each must hold: "text" or "number", without nulls; a
# "?" column may hold nulls (a trial Tune never started has no trial_id and no accuracies) and
# the accuracies are absent when no trial trained an epoch. A table without rows may have no columns.
TRIAL_COLUMNS = {"trial_id": "text?", "dataset": "text", "model": "text", "method": "text", "training": "text",
                 "status": "text", "peak_test_acc": "number?", "final_test_acc": "number?"}
EPOCH_COLUMNS = {"trial_id": "text", "epoch": "number", "lr": "number", "train_loss": "number", "test_acc": "number"}


def _read(uri: str, columns: dict[str, str]) -> list[dict]:
    """A Parquet table's rows, after checking it has the columns the report reads."""
    import pyarrow as pa
    import pyarrow.fs as pafs

    try:
        fs, path = store.filesystem(uri)
        kind = fs.get_file_info(path).type
        if kind == pafs.FileType.NotFound:
            raise ReportError(f"{uri}: no such file")
        if kind != pafs.FileType.File:  # pyarrow would read a directory as an (empty) dataset
            raise ReportError(f"{uri}: not a file")
        table = store.read_table(uri)
    except ReportError:
        raise
    except FileNotFoundError:
        raise ReportError(f"{uri}: no such file") from None
    except (OSError, ValueError, pa.ArrowException) as exc:  # empty, truncated, not Parquet
        detail = re.sub(r"^Could not open Parquet input source '.*?': ", "", one_line(exc, 300))
        raise ReportError(f"{uri}: not a readable Parquet table ({type(exc).__name__}: {detail})") from None
    missing = [c for c, kind in columns.items() if c not in table.column_names and not kind.endswith("?")]
    if missing and table.num_rows:
        raise ReportError(f"{uri}: missing column(s) {', '.join(missing)}; not a table written by aalr-ray grid")
    for name, kind in columns.items():
        if name not in table.column_names:
            continue
        column, optional, kind = table.column(name), kind.endswith("?"), kind.rstrip("?")
        if optional and pa.types.is_null(column.type):
            continue  # nothing but nulls
        if kind == "text" and not (pa.types.is_string(column.type) or pa.types.is_large_string(column.type)):
            raise ReportError(f"{uri}: column {name} holds {column.type}, expected text")
        if column.null_count and not optional:
            raise ReportError(f"{uri}: column {name} has {column.null_count} empty value(s)")
        if kind == "number" and not (pa.types.is_integer(column.type) or pa.types.is_floating(column.type)):
            raise ReportError(f"{uri}: column {name} holds {column.type}, expected numbers")
    return table.to_pylist()


def load_results(experiment: str) -> tuple[list[dict], list[dict]]:
    """(trials, epochs) from ``trials.parquet`` and ``epochs.parquet``; ReportError (one line) if either
    is missing, unreadable or lacks a column the report reads."""
    return (_read(f"{experiment}/{TRIALS_FILE}", TRIAL_COLUMNS),
            _read(f"{experiment}/{EPOCHS_FILE}", EPOCH_COLUMNS))


def _load(experiment: str) -> tuple[list[dict], list[dict]]:
    return load_results(experiment)


def write_report(experiment: str, results: tuple[list[dict], list[dict]] | None = None) -> str:
    """Write report.md and the PNGs into ``experiment`` (``results``: :func:`load_results`'s, when
    already read); return report.md's location."""
    trials, epochs = results if results is not None else _load(experiment)
    name = experiment.rstrip("/").rsplit("/", 1)[-1]
    statuses = defaultdict(int)
    for trial in trials:
        statuses[trial["status"]] += 1
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        lines = [f"# {name}", "",
                 f"{len(trials)} trials ({', '.join(f'{n} {s.lower()}' for s, n in sorted(statuses.items()))}). "
                 "Source: `epochs.parquet` (one row per trial per epoch) and `trials.parquet` "
                 "(one row per trial). Accuracies in %.", ""]
        for title, section in build_tables(trials, epochs):
            lines += [f"## {title}", ""] + section
        lines += ["## Figures", ""]
        for title, png in _plots(trials, epochs, directory):
            lines += [f"### {title}", "", f"![{title}]({png})", ""]
        (directory / "report.md").write_text("\n".join(lines))
        store.upload_dir(directory, experiment)
    return f"{experiment}/report.md"


def print_summary(experiment: str, out=None, results: tuple[list[dict], list[dict]] | None = None) -> None:
    """The peak-accuracy tables of the report, and where the report is."""
    out = out or sys.stdout
    trials, epochs = results if results is not None else _load(experiment)
    for title, section in build_tables(trials, epochs):
        print(f"\n{title}", file=out)
        end = section.index("", 2) if "" in section[2:] else len(section)
        print("\n".join(section[:end]), file=out)
    print(f"\nreport: {experiment}/report.md", file=out)
