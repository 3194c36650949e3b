"""The report's "Tuning cost" part: AALR against searched baselines at their compute.

For each workload (dataset x model x the settings a grid varies, all seeds
together), a table of every method and search: the epochs it trained (a
search: all its trials, ASHA-stopped ones as far as they went), the test
accuracy of what it ends with (a search: the configuration it selected on
validation accuracy), and that compute relative to one AALR run; then one
sentence per AALR method, how much of its compute each search needs to beat
it by more than :data:`BEAT_MARGIN`; and a figure of accuracy against epochs trained.

Free of Ray and torch (matplotlib only inside :func:`tuning_figures`).
Imported by :mod:`aalr_ray.report`, whose table model it fills.
"""

from __future__ import annotations

import math
import re
import statistics
from collections import defaultdict

from .report import Cell, Section, Table, _mean_std, _mode, _ordered
from .tuning import budget_curve, groups

__all__ = ["BEAT_MARGIN", "tuning_sections", "tuning_figures", "workloads"]

BEAT_MARGIN = 0.005  # "beats AALR": by more than half a point of test accuracy
_WORKLOAD_FIELDS = ("dataset", "model", "augmentation", "batch_size", "weight_decay", "training", "epochs")


def _workload(trial: dict) -> tuple:
    return tuple(str(trial.get(k)) for k in _WORKLOAD_FIELDS)


def _workload_title(trials: list[dict]) -> str:
    first = trials[0]
    extras = [f"{k} {first[k]}" for k in ("augmentation", "batch_size") if str(first.get(k)) not in ("none", "128")]
    return (f"Tuning cost: {first['model']} on {first['dataset']}, {_mode(str(first['training']))} training, "
            f"{first['epochs']} epochs" + (f" ({', '.join(extras)})" if extras else ""))


def workloads(trials: list[dict]) -> dict[tuple, list[dict]]:
    """Trials by workload, only for workloads that hold a search."""
    found: dict[tuple, list[dict]] = defaultdict(list)
    for trial in trials:
        found[_workload(trial)].append(trial)
    return {key: group for key, group in found.items() if any(t.get("search") for t in group)}


def _reference(trials: list[dict]) -> str | None:
    """The AALR method the compute is relative to: ``aalr`` (the paper's) if it ran, else the first AALR variant."""
    names = _ordered(t["method"] for t in trials if not t.get("search") and t["method"].startswith("aalr"))
    return "aalr" if "aalr" in names else (names[0] if names else None)


def _runs(trials: list[dict]) -> list[tuple[str, str, list[tuple[float, float, float, float]]]]:
    """(name, kind, [(epochs, test accuracy, wall s, trial s) per seed]) for every method and search."""
    runs = []
    for method in _ordered(t["method"] for t in trials if not t.get("search")):
        ended = [t for t in trials if not t.get("search") and t["method"] == method and t["status"] == "TERMINATED"]
        runs.append((method, "method", [(t["epochs_done"], t["final_test_acc"], t["wall_s"], t["wall_s"])
                                        for t in ended]))
    for search in _ordered(t["search"] for t in trials if t.get("search")):
        per_seed = []
        for group in groups([t for t in trials if t.get("search") == search]).values():
            chosen = [t for t in group if t.get("selected")]
            if chosen and all(t["status"] in ("TERMINATED", "STOPPED") for t in group):
                first = group[0]
                per_seed.append((first["search_epochs"], chosen[0]["final_test_acc"], first["search_wall_s"],
                                 first["search_trial_s"]))
        runs.append((search, "search", per_seed))
    return runs


def _cell(values: list[float], fmt: str) -> Cell:
    mean, std, n = _mean_std(values)
    return Cell(text=fmt.format(mean, std) if n else "")


def _table(trials: list[dict]) -> tuple[Table, dict]:
    reference = _reference(trials)
    runs = _runs(trials)
    ref_epochs = next((statistics.mean(r[0] for r in seeds) for name, kind, seeds in runs
                       if name == reference and kind == "method" and seeds), None)
    best = max((statistics.mean(r[1] for r in seeds) for _, _, seeds in runs if seeds), default=math.nan)
    rows, means = [], {}
    for name, kind, seeds in runs:
        accuracy = _cell([100 * r[1] for r in seeds], "{:.2f} ± {:.2f}")
        accuracy.best = bool(seeds) and statistics.mean(r[1] for r in seeds) == best
        epochs = _cell([r[0] for r in seeds], "{:.0f}")
        ratio = Cell(text=f"{statistics.mean(r[0] for r in seeds) / ref_epochs:.1f}x") \
            if seeds and ref_epochs else Cell()
        label = f"{name} (search)" if kind == "search" else name
        rows.append((label, [epochs, accuracy, ratio, _cell([r[2] for r in seeds], "{:.0f}"),
                             _cell([r[3] for r in seeds], "{:.0f}")]))
        means[name] = seeds
    caption = (f"mean ± std over {len({t['seed'] for t in trials})} seeds; a search's accuracy is that of the "
               "configuration it selected on validation accuracy; epochs and seconds count every trial of a "
               "search, early-stopped ones as far as they trained; wall time of a search with its trials side "
               f"by side; compute relative to one `{reference}` run" if reference else "")
    columns = ["method or search", "total epochs", "test accuracy (%)",
               f"compute vs {reference}" if reference else "compute", "wall time (s)", "trial time (s)"]
    return Table("Tuning cost", caption, columns, rows), {"reference": reference, "ref_epochs": ref_epochs}


def mean_curve(scheduler: str, search_trials: list[dict], rows_by_trial: dict) -> list[tuple[float, float]]:
    """The search's budget curve (:func:`aalr_ray.tuning.budget_curve`), averaged over seeds step by step."""
    curves = [budget_curve(scheduler, group, rows_by_trial) for group in groups(search_trials).values()]
    curves = [c for c in curves if c]
    if not curves:
        return []
    steps = min(len(c) for c in curves)
    return [(statistics.mean(c[i][0] for c in curves), statistics.mean(c[i][1] for c in curves))
            for i in range(steps)]


def _scheduler_of(trials: list[dict]) -> str:
    """A search's scheduler, as its trials record it (``search_scheduler``)."""
    return str(trials[0].get("search_scheduler") or "none")


def _verdict(trials: list[dict], rows_by_trial: dict, reference: str, ref_epochs: float | None) -> str:
    """How many times ``reference``'s compute each search needs to beat its mean test accuracy by
    more than BEAT_MARGIN, on the search's budget curve averaged over seeds."""
    ref = [t["final_test_acc"] for t in trials if not t.get("search") and t["method"] == reference
           and t["status"] == "TERMINATED"]
    if not ref or not ref_epochs:
        return f"No `{reference}` run has finished in this workload yet."
    target = statistics.mean(ref) + BEAT_MARGIN
    parts = []
    for search in _ordered(t["search"] for t in trials if t.get("search")):
        mine = [t for t in trials if t.get("search") == search]
        curve = mean_curve(_scheduler_of(mine), mine, rows_by_trial)
        if not curve:
            continue
        beat = next((epochs for epochs, acc in curve if acc > target), None)
        if beat is None:
            parts.append(f"`{search}` never within {curve[-1][0] / ref_epochs:.1f}x")
        else:
            parts.append(f"`{search}` needs {beat / ref_epochs:.1f}x")
    return (f"To beat `{reference}` ({100 * statistics.mean(ref):.2f} %) by more than {100 * BEAT_MARGIN:.1f} "
            f"points, a search needs this many times its compute: {'; '.join(parts) or 'no search has finished'}.")


def _aalr_methods(trials: list[dict]) -> list[str]:
    return _ordered(t["method"] for t in trials if not t.get("search") and t["method"].startswith("aalr"))


def tuning_sections(trials: list[dict], epochs: list[dict]) -> list[Section]:
    """A "Tuning cost" section per workload that holds a search."""
    rows_by_trial = _rows_by_trial(epochs)
    sections = []
    for group in workloads(trials).values():
        table, _ = _table(group)
        verdicts = [_verdict(group, rows_by_trial, method, _mean_epochs(group, method))
                    for method in _aalr_methods(group)]
        sections.append(Section(_workload_title(group), [table, *(verdicts or [
            "No AALR run in this workload: the compute has nothing to be relative to."])]))
    return sections


def _mean_epochs(trials: list[dict], method: str) -> float | None:
    done = [t["epochs_done"] for t in trials if not t.get("search") and t["method"] == method
            and t["status"] == "TERMINATED"]
    return statistics.mean(done) if done else None


def _rows_by_trial(epochs: list[dict]) -> dict[str, list[dict]]:
    found: dict[str, list[dict]] = defaultdict(list)
    for row in epochs:
        found[row["trial_id"]].append(row)
    for rows in found.values():
        rows.sort(key=lambda r: r["epoch"])
    return found


def tuning_figures(plt, trials: list[dict], epochs: list[dict]):
    """Yield (file name, title, figure) per workload: test accuracy against epochs trained (log x),
    a point per method (its seeds' mean, with their range) and a line per search as its budget grows."""
    from .report import _FALLBACK_COLOURS, DPI, method_style

    rows_by_trial = _rows_by_trial(epochs)
    for group in workloads(trials).values():
        fig, ax = plt.subplots(figsize=(7.5, 4.5), dpi=DPI, layout="constrained")
        searches = _ordered(t["search"] for t in group if t.get("search"))
        for name, kind, seeds in _runs(group):
            if not seeds:
                continue
            colour, style = method_style(name) if kind == "method" else \
                (_FALLBACK_COLOURS[searches.index(name) % len(_FALLBACK_COLOURS)], "-")  # apart from the methods'
            if kind == "method":
                x = statistics.mean(r[0] for r in seeds)
                accs = [100 * r[1] for r in seeds]
                mean = statistics.mean(accs)
                ax.errorbar([x], [mean], yerr=[[mean - min(accs)], [max(accs) - mean]], fmt="o", color=colour,
                            capsize=3, label=name, zorder=3)
                continue
            mine = [t for t in group if t.get("search") == name]
            curve = mean_curve(_scheduler_of(mine), mine, rows_by_trial)
            if curve:
                ax.plot([p[0] for p in curve], [100 * p[1] for p in curve], linestyle=style, marker=".",
                        color=colour, label=f"{name} (search)")
        ax.set_xscale("log")
        ax.set_xlabel("epochs trained (all trials of a search)")
        ax.set_ylabel("test accuracy (%) of the selected configuration")
        ax.set_title(_workload_title(group).replace("Tuning cost: ", ""), fontsize=10)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
        stem = re.sub(r"[^A-Za-z0-9.]+", "_", f"{group[0]['dataset']}_{group[0]['model']}_{group[0]['epochs']}")
        yield f"tuning_{stem}.png", f"Tuning cost: {group[0]['model']} on {group[0]['dataset']}", fig
