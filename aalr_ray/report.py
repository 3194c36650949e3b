"""The report of an experiment, from its Parquet files (or, while its grid runs, its checkpoints).

    aalr-ray report EXPERIMENT_DIR [--watch SECONDS]   # also run at the end of every grid

Writes ``report.md`` (the paper's table layout: rows models, columns methods,
cells mean +- std over seeds, the best cell per row in bold) and PNG figures
into the experiment directory, per dataset and training mode: the LR on a log
scale with AALR's actions marked (like the paper's Figures 1-2; a grid over
batch size or augmentation gets a colour per value), test accuracy and training
loss, each as the mean over seeds with a min-max band and a panel per model,
and every trial's own lines in ``trials_*.png``. A method has the same colour
and line style in every figure of every report (``METHOD_STYLES``).

``report.html`` beside it has the same tables (the best cell per row
highlighted) and every figure embedded: one file, no script, nothing fetched,
so it opens from a laptop after copying the results. Both are rendered from
one model of the tables (:class:`Section`, :class:`Table`, :class:`Cell`).

It reads only ``epochs.parquet`` and ``trials.parquet`` (or the rows that
:mod:`aalr_ray.progress` reads from a running grid's checkpoints), so it runs
anywhere the files are, e.g. on a laptop after copying results from S3.
Standard library, pyarrow and matplotlib only: neither Ray nor torch.
"""

from __future__ import annotations

import base64
import hashlib
import html
import math
import re
import statistics
import struct
import sys
import tempfile
import textwrap
from collections import Counter, defaultdict
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Callable

from . import storage as store
from .errors import one_line
from .results import EPOCHS_FILE, TRIALS_FILE

__all__ = ["write_report", "print_summary", "build_tables", "load_results", "ReportError", "Results", "Section",
           "Table", "Cell", "markdown_table", "html_table", "render_html", "REPORT_MD", "REPORT_HTML", "REFRESH_S",
           "TARGET_MARGIN"]

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


# -------------------------------------------------------------------- tables
# One model of the tables, rendered both to Markdown (report.md, the CLI's summary) and to HTML
# (report.html). Text in it is plain, except `code` spans (backticks), which both renderers mark.
@dataclass
class Cell:
    """One table cell: its value, whether it is the best of its row, and what its unfinished seeds do."""

    text: str = ""
    best: bool = False
    note: str = ""  # e.g. "running, epoch 37/200": seeds of the cell that have not finished


@dataclass
class Table:
    """One table: a title, a caption, the header and the rows."""

    title: str  # e.g. "Peak test accuracy (%)": bold in Markdown, the caption's heading in HTML
    caption: str  # what the cells are, after the title
    columns: list[str]  # the header, the row names' column first
    rows: list[tuple[str, list[Cell]]]  # (row name, a cell per column after the first)


@dataclass
class Section:
    """The tables of one (dataset, training mode) group, and paragraphs (text) where a table has no data."""

    title: str
    blocks: list  # Table or str, in order

    @property
    def tables(self) -> list[Table]:
        return [block for block in self.blocks if isinstance(block, Table)]


RUNNING, UNFINISHED, PENDING = "RUNNING", "UNFINISHED", "PENDING"  # trials that have not finished
ENDED = ("TERMINATED", "STOPPED", "ERROR")  # a trial in one of these statuses trains no more (STOPPED: by its search)


def plain(text: str) -> str:
    """``text`` without its `code` marks: what a reader sees of a title."""
    return text.replace("`", "")


def _progress(trials: list[dict]) -> str:
    """What the unfinished trials of a cell are doing: "running, epoch 37/200", "2 not started", ...

    RUNNING: read from the checkpoints of a grid that has not ended; UNFINISHED: ``aalr-ray grid``
    stopped before it finished (an interrupted run, continued with --resume).
    """
    parts = []
    for status, word in ((RUNNING, "running"), (UNFINISHED, "interrupted")):
        done = [t["epochs_done"] for t in trials if t["status"] == status and t.get("epochs_done")]
        if not done:
            continue
        total = next((t.get("epochs") for t in trials if t.get("epochs")), None)
        low, high = min(done), max(done)
        epochs = f"epoch {low}" if low == high else f"epochs {low}-{high}"
        parts.append(f"{len(done)} {word}" if len(done) > 1 else word)
        parts[-1] += f", {epochs}" + (f"/{total}" if total else "")
    waiting = sum(t["status"] == PENDING or (t["status"] in (RUNNING, UNFINISHED) and not t.get("epochs_done"))
                  for t in trials)
    if waiting:
        parts.append("not started" if waiting == 1 else f"{waiting} not started")
    return "; ".join(parts)


def _grid_trials(trials: list[dict]) -> list[dict]:
    """The grid's own trials: a searched baseline's trials have their own section (aalr_ray.report_tuning)."""
    return [t for t in trials if not t.get("search")]


def build_tables(trials: list[dict], epochs: list[dict]) -> list[Section]:
    """The report's tables, a :class:`Section` per dataset and training mode, then the tuning cost of
    each workload that has searches."""
    from .report_tuning import tuning_sections

    rows_by_trial: dict[str, list[dict]] = defaultdict(list)
    for row in epochs:
        rows_by_trial[row["trial_id"]].append(row)
    sections = []
    for (dataset, mode), group in _groups(_grid_trials(trials)).items():
        varying = _varying(group)
        methods = _ordered(t["method"] for t in group)
        row_keys = _ordered(_row_key(t, varying) for t in group)
        cells: dict[tuple[str, str], list[dict]] = defaultdict(list)
        for trial in group:
            cells[(_row_key(trial, varying), trial["method"])].append(trial)
        metrics = [("peak_test_acc", "Peak test accuracy (%)"), ("final_test_acc", "Final test accuracy (%)")]
        if mode != "natural" or any("peak_fgsm_acc" in t for t in group):
            metrics = [(f"peak_{key}", f"Peak {name} accuracy (%), white-box l-inf")
                       for key, name in ADVERSARIAL_METRICS if any(t.get(f"peak_{key}") is not None for t in group)
                       ] + metrics
        blocks: list = [_metric_table(title, key, row_keys, methods, cells) for key, title in metrics]
        blocks.append(_time_to_target(row_keys, methods, cells, rows_by_trial))
        sections.append(Section(f"{dataset}, {mode} training", blocks))
    return sections + tuning_sections(trials, epochs)


def _metric_table(title, key, row_keys, methods, cells) -> Table:
    rows = []
    for row_key in row_keys:
        stats = {m: _mean_std([t.get(key) for t in cells.get((row_key, m), [])
                               if t["status"] == "TERMINATED"]) for m in methods}
        best = max((s[0] for s in stats.values() if not math.isnan(s[0])), default=math.nan)
        row = []
        for method in methods:
            mean, std, n = stats[method]
            trials = cells.get((row_key, method), [])
            cell = Cell(note=_progress(trials))
            if n:
                cell.text = f"{100 * mean:.2f} ± {100 * std:.2f}" + (f" (n={n})" if n != len(trials) else "")
                cell.best = mean == best
            row.append(cell)
        rows.append((row_key, row))
    return Table(title, "mean ± std over seeds (n = seeds that finished; best per row in bold)",
                 ["model", *methods], rows)


def _time_to_target(row_keys, methods, cells, rows_by_trial) -> Table | str:
    if "step" not in methods:
        return "Epochs to the tuned `step` baseline's peak: no `step` trials in this grid."
    rows = []
    for row_key in row_keys:
        # Trials still training count once they have ended: the target is the finished step seeds' peak.
        step_peaks = _finite(t.get("peak_test_acc") for t in cells.get((row_key, "step"), [])
                             if t["status"] in ENDED)
        if not step_peaks:
            continue
        target = statistics.mean(step_peaks) - TARGET_MARGIN
        row = []
        for method in methods:
            trials = cells.get((row_key, method), [])
            cell = Cell(note=_progress(trials))
            reached = []
            for trial in (t for t in trials if t["status"] in ENDED):
                trial_rows = sorted(rows_by_trial.get(trial["trial_id"], []), key=lambda r: r["epoch"])
                reached.append(next((r["epoch"] for r in trial_rows if r["test_acc"] >= target), None))
            got = [e for e in reached if e is not None]
            if reached and not got:
                cell.text = "never"
            elif got:
                cell.text = f"{statistics.median(got):.0f}" + ("" if len(got) == len(reached)
                                                               else f" ({len(reached) - len(got)} never)")
            row.append(cell)
        rows.append((row_key, row))
    return Table(f"Epochs to reach the `step` baseline's mean peak minus {100 * TARGET_MARGIN:.1f} points",
                 "median over seeds (never = no seed got there)", ["model", *methods], rows)


def _md_text(text: str) -> str:
    return text.replace("|", "\\|")  # a name with a pipe must not split the Markdown table's cell


def _md_cell(cell: Cell) -> str:
    value = f"**{cell.text}**" if cell.best and cell.text else cell.text
    note = f"_{cell.note}_" if cell.note else ""
    return _md_text("; ".join(part for part in (value, note) if part) or "-")


def markdown_table(table: Table) -> list[str]:
    """The table as Markdown lines: its bold title and caption, a blank line, the rows."""
    return [f"**{table.title}**, {table.caption}", "",
            "| " + " | ".join(_md_text(c) for c in table.columns) + " |", "|---|" + "---|" * (len(table.columns) - 1),
            *("| " + " | ".join([_md_text(key), *(_md_cell(c) for c in cells)]) + " |" for key, cells in table.rows)]


def markdown_section(section: Section) -> list[str]:
    lines = [f"## {section.title}", ""]
    for block in section.blocks:
        lines += (markdown_table(block) if isinstance(block, Table) else [block]) + [""]
    return lines


# ------------------------------------------------------------------- figures
# One fixed style per registered method, the same in every figure of every report: a colour and a
# line style, no (colour, line style) pair used twice. The AALR family is warm and solid/dashed,
# the SGD schedules blue-green, the adaptive and parameter-free optimizers the rest. This table is
# here, not in aalr_ray.methods, because that module imports torch and the report must not;
# tests/test_report_figures.py checks that it covers aalr_ray.methods.method_names().
METHOD_STYLES: dict[str, tuple[str, str]] = {
    "aalr": ("#d62728", "-"),              # red
    "aalr-robust": ("#7f0000", "--"),      # maroon
    "aalr-adam": ("#ff7f0e", "-"),         # orange
    "aalr-robust-adam": ("#a65628", "--"),  # brown-orange
    "step": ("#1f77b4", "-"),              # blue
    "sgdr": ("#17becf", "-."),             # cyan
    "clr": ("#2ca02c", "-."),              # green
    "plateau": ("#9467bd", ":"),           # purple
    "adam": ("#e377c2", "-"),              # pink
    "sgd-hd": ("#8c564b", "-."),           # brown
    "dadapt": ("#7f7f7f", "--"),           # grey
    "dog": ("#bcbd22", ":"),               # olive
    "prodigy": ("#000000", "--"),          # black
    "schedule-free": ("#393b79", ":"),     # navy
}
# Unknown names (an import path, a method added later): a colour not in the table, picked by a
# stable hash of the name (not hash(), which changes per process), so never a registered pair.
_FALLBACK_COLOURS = ("#6a3d9a", "#b15928", "#1b9e77", "#e7298a", "#66a61e", "#e6ab02", "#a6761d", "#666666",
                     "#fb9a99", "#80b1d3")
_LINESTYLES = ("-", "--", "-.", ":")
# AALR's actions on the LR plots: (marker, legend text), drawn where the row's epoch ended.
ACTION_MARKERS = {
    "double": ("^", "AALR: new best, LR doubled"),
    "halve": ("v", "AALR: no gain, LR halved"),
    "restore_best": ("X", "AALR: rollback to best, LR halved"),
    "restore_initial": ("o", "AALR: restart from θ₀, LR halved"),
}
DPI = 150
PANEL_W, PANEL_H, TITLE_H, LEGEND_W = 4.6, 3.4, 0.7, 2.9  # inches
MAX_COLUMNS = 3  # mean figures wrap models into rows of at most this many panels
METRICS = (("lr", "learning rate", True), ("test_acc", "test accuracy", False), ("train_loss", "training loss", True))
# Grids over these fields keep the paper's Figures 1-2 layout: a colour per value, a panel per model.
VARIANT_COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf",
                   "#bcbd22", "#7f7f7f")


def method_style(name: str) -> tuple[str, str]:
    """(colour, line style) of method ``name``: the fixed table's, or a stable fallback for other names."""
    if name in METHOD_STYLES:
        return METHOD_STYLES[name]
    digest = int.from_bytes(hashlib.sha256(name.encode()).digest()[:4], "big")
    return (_FALLBACK_COLOURS[digest % len(_FALLBACK_COLOURS)],
            _LINESTYLES[(digest // len(_FALLBACK_COLOURS)) % len(_LINESTYLES)])


def _styles(names) -> dict[str, tuple[str, str]]:
    """The styles of ``names`` in one figure: two unknown names that hash alike move on, in sorted order."""
    styles = {n: METHOD_STYLES[n] for n in names if n in METHOD_STYLES}
    taken = set(styles.values())
    pairs = [(c, s) for s in _LINESTYLES for c in _FALLBACK_COLOURS]
    for name in sorted(n for n in set(names) if n not in METHOD_STYLES):
        start = pairs.index(method_style(name))
        styles[name] = next((p for p in pairs[start:] + pairs[:start] if p not in taken), pairs[start])
        taken.add(styles[name])
    return styles


def lr_actions(rows: list[dict]) -> list[tuple[int, float, str]]:
    """(epoch, lr, kind) of AALR's actions in one trial's rows (sorted by epoch), from the ``action``
    column: save_best doubles the LR, restore_best and restore_initial roll back (and halve it), and
    a ``continue`` after which the LR falls is a failed second try (halved, weights kept). Rows of
    other methods have no action and give nothing."""
    found = []
    for i, row in enumerate(rows):
        action, lr = row.get("action"), row.get("lr")
        if not action or not _finite([lr]):
            continue
        if action == "save_best":
            found.append((row["epoch"], lr, "double"))
        elif action in ("restore_best", "restore_initial"):
            found.append((row["epoch"], lr, action))
        elif action == "continue" and i + 1 < len(rows) and _finite([rows[i + 1].get("lr")]) \
                and rows[i + 1]["lr"] < 0.75 * lr:
            found.append((row["epoch"], lr, "halve"))
    return found


def _wrap(text: str, inches: float, points: float) -> str:
    """``text`` wrapped to fit ``inches`` at ``points`` (a character is at most ~0.62 em wide)."""
    return textwrap.fill(text, width=max(12, int(inches * 72 / (0.62 * points))), break_on_hyphens=False)


def _series(rows: list[dict], metric: str, log: bool) -> tuple[list, list]:
    xs = [r["epoch"] for r in rows]
    ys = [r.get(metric) if _finite([r.get(metric)]) and (not log or r.get(metric) > 0) else math.nan for r in rows]
    if metric == "lr" and rows:  # epoch e trains from e-1 to e at its LR; actions sit at its end
        xs, ys = [xs[0] - 1] + xs, [ys[0]] + ys
    return xs, ys


def _band(trial_rows: list[list[dict]], metric: str, log: bool) -> tuple[list, list, list, list]:
    """Per epoch over the seeds: (epochs, mean, min, max); the mean is geometric on log scales."""
    values: dict[float, list[float]] = defaultdict(list)
    for rows in trial_rows:
        xs, ys = _series(rows, metric, log)
        for x, y in zip(xs, ys):
            if not math.isnan(y):
                values[x].append(y)
    epochs = sorted(values)
    means = [math.exp(statistics.fmean(math.log(v) for v in values[e])) if log else statistics.fmean(values[e])
             for e in epochs]
    return epochs, means, [min(values[e]) for e in epochs], [max(values[e]) for e in epochs]


def _figure(plt, panels: int, rows: int, columns: int):
    """(figure, panels' subfigure, legend's subfigure, axes): the legend has a column of its own at the
    right, so it never covers data or the title; constrained layout keeps every label inside."""
    fig = plt.figure(figsize=(PANEL_W * columns + LEGEND_W, PANEL_H * rows + TITLE_H), dpi=DPI,
                     layout="constrained")
    main, side = fig.subfigures(1, 2, width_ratios=[PANEL_W * columns, LEGEND_W], wspace=0)
    axes = main.subplots(rows, columns, squeeze=False)
    for ax in axes.flat[panels:]:
        ax.set_visible(False)
    return fig, main, side, axes


def _finish_axes(ax, title: str, xlabel: str, ylabel: str, log: bool) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.set_title(_wrap(title, PANEL_W - 0.6, 11), fontsize=11)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs
    if log:
        ax.set_yscale("log")
    ax.grid(alpha=0.3, which="both" if not log else "major")


def _legend(side, handles: list) -> None:
    for handle in handles:
        handle.set_label(_wrap(handle.get_label(), LEGEND_W - 0.6, 8))
    if handles:
        side.legend(handles=handles, loc="upper left", fontsize=8, frameon=False, borderaxespad=0.2)


def _mark_actions(ax, rows: list[dict], colour: str, kinds_seen: set) -> None:
    by_kind: dict[str, list] = defaultdict(list)
    for epoch, lr, kind in lr_actions(rows):
        by_kind[kind].append((epoch, lr))
    for kind, points in by_kind.items():
        ax.plot([p[0] for p in points], [p[1] for p in points], linestyle="none", marker=ACTION_MARKERS[kind][0],
                markersize=6, markerfacecolor=colour, markeredgecolor="black", markeredgewidth=0.7, zorder=4,
                gid=f"action:{kind}")
        kinds_seen.add(kind)


@dataclass
class _Plan:
    """What the figures of one (dataset, training mode) group draw: its lines and their styles."""

    dataset: str
    mode: str
    group: list[dict]
    models: list[str]
    labels: list[str]  # one legend entry (a line) each
    label: Callable[[dict], str]
    style: Callable[[dict], tuple]  # a trial's (colour, line style)
    style_of: dict[str, tuple]  # the same, per label
    cells: dict[tuple, list[dict]]  # (model, label) -> the seeds of that line
    seeds: int

    @property
    def stem(self) -> str:
        return f"{self.dataset.replace(':', '_').replace('.', '_')}_{self.mode}"


def _plan(dataset: str, mode: str, group: list[dict]) -> _Plan:
    """Colour by method; or, for a grid over batch size or augmentation, by that value (the paper's
    Figures 1-2), with methods told apart by line style."""
    varying = _varying(group)
    colour_by = next((k for k in ("batch_size", "augmentation") if k in varying), "method")
    other = [k for k in varying if k not in (colour_by, "method")]
    methods = _ordered(t["method"] for t in group)
    styles = _styles(methods)
    if colour_by == "method":
        def style(trial):
            return styles[trial["method"]]
    else:
        values = _ordered(str(t[colour_by]) for t in group)
        colours = {v: VARIANT_COLOURS[i % len(VARIANT_COLOURS)] for i, v in enumerate(values)}

        def style(trial):
            return colours[str(trial[colour_by])], styles[trial["method"]][1] if len(methods) > 1 else "-"

    def label(trial):
        parts = [trial["method"]] if colour_by == "method" else [f"{colour_by}={trial[colour_by]}"] + (
            [trial["method"]] if len(methods) > 1 else [])
        return ", ".join(parts + [f"{k}={trial.get(k)}" for k in other])

    cells: dict[tuple, list[dict]] = defaultdict(list)
    for trial in group:
        cells[(trial["model"], label(trial))].append(trial)
    return _Plan(dataset, mode, group, _ordered(t["model"] for t in group), _ordered(label(t) for t in group),
                 label, style, {label(t): style(t) for t in group}, cells, max(len(c) for c in cells.values()))


def _legend_handles(plan: _Plan, kinds: set, linewidth: float) -> list:
    """One entry per line of the plan, then one per kind of AALR action drawn."""
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], color=plan.style_of[t][0], linestyle=plan.style_of[t][1], linewidth=linewidth,
                      label=t) for t in plan.labels]
    return handles + [Line2D([], [], linestyle="none", marker=ACTION_MARKERS[k][0], markerfacecolor="white",
                             markeredgecolor="black", label=ACTION_MARKERS[k][1])
                      for k in ACTION_MARKERS if k in kinds]


def _mean_figure(plt, plan: _Plan, rows_by_trial: dict, metric: str, name: str, log: bool):
    """A metric's seed mean with a min-max band, a panel per model, AALR's actions on the LR."""
    columns = min(MAX_COLUMNS, len(plan.models))
    fig, main, side, axes = _figure(plt, len(plan.models), math.ceil(len(plan.models) / columns), columns)
    kinds: set = set()
    step = "pre" if metric == "lr" else None
    for ax, model in zip(axes.flat, plan.models):
        for text in plan.labels:
            members = plan.cells.get((model, text))
            if not members:
                continue
            colour, linestyle = plan.style_of[text]
            xs, mean, low, high = _band([rows_by_trial[t["trial_id"]] for t in members], metric, log)
            ax.plot(xs, mean, color=colour, linestyle=linestyle, linewidth=1.6, gid=f"mean:{text}",
                    drawstyle="steps-pre" if step else "default")
            if len(members) > 1:
                ax.fill_between(xs, low, high, color=colour, alpha=0.15, linewidth=0, step=step)
            if metric == "lr":
                for trial in members:
                    _mark_actions(ax, rows_by_trial[trial["trial_id"]], colour, kinds)
        _finish_axes(ax, model, "epoch", name, log)
    _legend(side, _legend_handles(plan, kinds, 1.6))
    spread = f"line: {'geometric ' if log else ''}mean over seeds" + (", band: min to max" if plan.seeds > 1 else "")
    main.suptitle(_wrap(f"{name.capitalize()} per epoch: {plan.dataset}, {plan.mode} training ({spread})",
                        PANEL_W * columns - 0.3, 12), fontsize=12)
    return fig


def _trials_figure(plt, plan: _Plan, rows_by_trial: dict):
    """Every trial's own lines: a row per metric, a panel per model."""
    fig, main, side, axes = _figure(plt, len(plan.models) * len(METRICS), len(METRICS), len(plan.models))
    kinds: set = set()
    for row_axes, (metric, name, log) in zip(axes, METRICS):
        for ax, model in zip(row_axes, plan.models):
            for trial in (t for t in plan.group if t["model"] == model):
                rows = rows_by_trial[trial["trial_id"]]
                colour, linestyle = plan.style(trial)
                xs, ys = _series(rows, metric, log)
                ax.plot(xs, ys, color=colour, linestyle=linestyle, linewidth=1, alpha=0.8,
                        drawstyle="steps-pre" if metric == "lr" else "default", gid=f"trial:{plan.label(trial)}")
                if metric == "lr":
                    _mark_actions(ax, rows, colour, kinds)
            _finish_axes(ax, model, "epoch", name, log)
    _legend(side, _legend_handles(plan, kinds, 1.2))
    main.suptitle(_wrap(f"Every trial: {plan.dataset}, {plan.mode} training (a line per seed)",
                        PANEL_W * len(plan.models) - 0.3, 12), fontsize=12)
    return fig


def _figures(trials: list[dict], epochs: list[dict]):
    """Yield (file name, title, matplotlib figure) per figure of every (dataset, mode) group: the seed
    mean with a min-max band of the LR (with AALR's actions), test accuracy and training loss, a panel
    per model; then every trial's own lines in one figure. The caller saves and closes each."""
    import matplotlib

    matplotlib.use("Agg")  # headless: no display on servers and CI
    import matplotlib.pyplot as plt

    rows_by_trial: dict[str, list[dict]] = defaultdict(list)
    for row in epochs:
        rows_by_trial[row["trial_id"]].append(row)
    for rows in rows_by_trial.values():
        rows.sort(key=lambda r: r["epoch"])
    for (dataset, mode), group in _groups(_grid_trials(trials)).items():
        group = [t for t in group if rows_by_trial.get(t.get("trial_id"))]
        if not group:
            continue
        plan = _plan(dataset, mode, group)
        for metric, name, log in METRICS:
            yield (f"{metric}_{plan.stem}.png", f"{name.capitalize()}: {dataset}, {mode}",
                   _mean_figure(plt, plan, rows_by_trial, metric, name, log))
        yield f"trials_{plan.stem}.png", f"Every trial: {dataset}, {mode}", _trials_figure(plt, plan, rows_by_trial)
    from .report_tuning import tuning_figures

    yield from tuning_figures(plt, trials, epochs)


def _plots(trials: list[dict], epochs: list[dict], directory: Path) -> list[tuple[str, str]]:
    """Write the PNGs of :func:`_figures` into ``directory``; [(title, file name)]."""
    import matplotlib.pyplot as plt

    written = []
    for name, title, fig in _figures(trials, epochs):
        try:
            fig.savefig(directory / name, dpi=DPI)
        finally:
            plt.close(fig)
        written.append((title, name))
    return written


# --------------------------------------------------------------------- HTML
REPORT_MD, REPORT_HTML = "report.md", "report.html"
REFRESH_S = 30  # how often report.html reloads itself while the grid runs, unless told otherwise
# Plain, readable, and all inline: report.html is one file that opens anywhere, offline.
HTML_STYLE = """
body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, Helvetica, Arial, sans-serif;
       color: #1b1b1b; background: #fff; max-width: 1500px; margin: 1.5rem auto; padding: 0 1.2rem; }
h1 { font-size: 1.7rem; margin-bottom: .3rem; }
h2 { font-size: 1.3rem; margin-top: 2.4rem; padding-bottom: .2rem; border-bottom: 1px solid #d8d8d8; }
h3 { font-size: 1.05rem; margin: 1.6rem 0 .4rem; }
nav ul { margin: .3rem 0; padding-left: 1.2rem; }
a { color: #1f5fa8; }
code { font: .92em ui-monospace, "SFMono-Regular", Menlo, Consolas, monospace; background: #f2f2f2;
       padding: 0 .25em; border-radius: 3px; }
.running { background: #eef4fc; border-left: 4px solid #1f77b4; padding: .5rem .8rem; }
table { border-collapse: collapse; margin: .5rem 0 1.8rem; font-variant-numeric: tabular-nums; }
caption { caption-side: top; text-align: left; padding: 0 0 .4rem; max-width: 60rem; }
caption .title { font-weight: 700; }
th, td { border: 1px solid #cfcfcf; padding: .3rem .65rem; text-align: right; white-space: nowrap; }
thead th { background: #f2f2f2; text-align: center; }
tbody th { text-align: left; font-weight: 600; background: #fafafa; }
td.best { background: #fff0b3; font-weight: 700; }
.note { display: block; color: #7a5300; font-style: italic; font-weight: 400; font-size: .88em; }
figure { margin: .4rem 0 2rem; }
figure img { max-width: 100%; height: auto; border: 1px solid #e4e4e4; }
figcaption { font-weight: 600; margin: 1.4rem 0 .4rem; }
"""


def _html_text(text: str) -> str:
    """``text`` escaped for HTML, its `code` spans as <code>."""
    return re.sub(r"`([^`]*)`", r"<code>\1</code>", html.escape(text))


def _html_cell(cell: Cell) -> str:
    value = html.escape(cell.text) if cell.text else ("" if cell.note else "-")
    note = f'<span class="note">{html.escape(cell.note)}</span>' if cell.note else ""
    return f'<td class="best">{value}{note}</td>' if cell.best and cell.text else f"<td>{value}{note}</td>"


def html_table(table: Table) -> str:
    head = "".join(f'<th scope="col">{html.escape(c)}</th>' for c in table.columns)
    body = "\n".join(f'<tr><th scope="row">{html.escape(key)}</th>{"".join(_html_cell(c) for c in cells)}</tr>'
                     for key, cells in table.rows)
    return (f'<table>\n<caption><span class="title">{_html_text(table.title)}</span>, {_html_text(table.caption)}'
            f"</caption>\n<thead><tr>{head}</tr></thead>\n<tbody>\n{body}\n</tbody>\n</table>")


def _png_size(png: bytes) -> tuple[int, int]:
    """(width, height) from a PNG's header (IHDR, right after the 8-byte signature)."""
    return struct.unpack(">II", png[16:24])


def render_html(name: str, summary: str, notice: str | None, sections: list[Section],
                figures: list[tuple[str, bytes]], refresh: int | None) -> str:
    """The whole report as one self-contained page: inline CSS, figures (title, PNG bytes) as base64
    images, no script, nothing fetched. ``notice``: a line on the grid still running, shown
    highlighted; ``refresh`` (seconds) makes the page reload itself (None: never). Text is escaped."""
    head = ['<!DOCTYPE html>', '<html lang="en">', "<head>", '<meta charset="utf-8">',
            '<meta name="viewport" content="width=device-width, initial-scale=1">']
    if refresh is not None:
        head.append(f'<meta http-equiv="refresh" content="{int(refresh)}">')
    head += [f"<title>{html.escape(name)}: aalr-ray report</title>", f"<style>{HTML_STYLE}</style>", "</head>"]
    links = [f'<li><a href="#section-{i}">{html.escape(s.title)}</a></li>' for i, s in enumerate(sections)]
    body = ["<body>", f"<h1>{html.escape(name)}</h1>", f"<p>{_html_text(summary)}</p>",
            *([f'<p class="running">{_html_text(notice)}</p>'] if notice else []),
            "<nav><ul>", *links, *(['<li><a href="#figures">Figures</a></li>'] if figures else []), "</ul></nav>"]
    for i, section in enumerate(sections):
        body.append(f'<section id="section-{i}">\n<h2>{html.escape(section.title)}</h2>')
        body += [html_table(b) if isinstance(b, Table) else f"<p>{_html_text(b)}</p>" for b in section.blocks]
        body.append("</section>")
    if figures:
        body.append('<section id="figures">\n<h2>Figures</h2>')
        for title, png in figures:
            width, height = _png_size(png)
            body.append(f"<figure><figcaption>{html.escape(title)}</figcaption>\n"
                        f'<img src="data:image/png;base64,{base64.b64encode(png).decode("ascii")}" '
                        f'width="{width}" height="{height}" alt="{html.escape(title)}"></figure>')
        body.append("</section>")
    return "\n".join(head + body + ["</body>", "</html>", ""])


# -------------------------------------------------------------------- entry
@dataclass
class Results:
    """What a report is made of: the trials and epochs rows, and where they came from.

    ``running``: the grid has not ended (a trial may still train), so the rows are what the
    trials have checkpointed so far (:mod:`aalr_ray.progress`) and report.html reloads itself.
    """

    trials: list[dict]
    epochs: list[dict]
    running: bool = False
    source: str = ("`epochs.parquet` (one row per trial per epoch) and `trials.parquet` (one row per trial)")


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


def _results(experiment: str, results: Results | tuple | None) -> Results:
    """``results`` as Results: read from the experiment's Parquet files when None, wrapped when a tuple."""
    if results is None:
        results = _load(experiment)
    return results if isinstance(results, Results) else Results(*results)


def _summary(results: Results) -> str:
    statuses = Counter(t["status"] for t in results.trials)
    return (f"{len(results.trials)} trials ({', '.join(f'{n} {s.lower()}' for s, n in sorted(statuses.items()))}). "
            f"Source: {results.source}. Accuracies in %.")


def _notice(results: Results) -> str | None:
    """The line that says a report is of a grid still running, and when it was written; None once it ended."""
    if not results.running:
        return None
    ended = sum(t["status"] in ENDED for t in results.trials)
    written = datetime.now().astimezone().isoformat(timespec="seconds")
    return (f"The grid has not ended: {ended} of {len(results.trials)} trials finished; the others are shown "
            f"as far as they had checkpointed when this report was written ({written}).")


def write_report(experiment: str, results: Results | tuple[list[dict], list[dict]] | None = None, *,
                 refresh: int = REFRESH_S) -> str:
    """Write report.md, report.html and the PNGs into ``experiment``; return report.md's location.

    ``results``: :func:`load_results`'s (trials, epochs) or a :class:`Results` when already read
    (None: read the Parquet files). While ``results.running``, report.html reloads itself every
    ``refresh`` seconds; a report of a grid that ended never does. Everything is written into a
    temporary directory first, then each file is uploaded atomically (:func:`storage.upload_dir`).
    """
    results = _results(experiment, results)
    name = experiment.rstrip("/").rsplit("/", 1)[-1]
    sections = build_tables(results.trials, results.epochs)
    summary, notice = _summary(results), _notice(results)
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        figures = _plots(results.trials, results.epochs, directory)
        lines = [f"# {name}", "", summary, "", *([f"**{notice}**", ""] if notice else [])]
        for section in sections:
            lines += markdown_section(section)
        lines += ["## Figures", ""]
        for title, png in figures:
            lines += [f"### {title}", "", f"![{title}]({png})", ""]
        (directory / REPORT_MD).write_text("\n".join(lines), encoding="utf-8")
        pngs = [(title, (directory / png).read_bytes()) for title, png in figures]
        if notice:
            notice += f" This page reloads every {int(refresh)} s until the grid ends."
        page = render_html(name, summary, notice, sections, pngs, refresh if results.running else None)
        (directory / REPORT_HTML).write_text(page, encoding="utf-8")
        store.upload_dir(directory, experiment)
    return f"{experiment}/{REPORT_MD}"


def print_summary(experiment: str, out=None, results: Results | tuple[list[dict], list[dict]] | None = None) -> None:
    """The first table (peak accuracy) of each section of the report, and where the report is."""
    out = out or sys.stdout
    results = _results(experiment, results)
    for section in build_tables(results.trials, results.epochs):
        print(f"\n{section.title}", file=out)
        if section.tables:
            print("\n".join(markdown_table(section.tables[0])), file=out)
    print(f"\nreport: {experiment}/{REPORT_MD}\nreport: {experiment}/{REPORT_HTML}", file=out)
