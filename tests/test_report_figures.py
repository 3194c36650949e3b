"""The report's figures on small synthetic experiments: size, legend, one style per method, AALR's actions.

Each experiment is written as `aalr-ray grid` writes it (trials.parquet and
epochs.parquet, the columns of tests/test_runner.py); the AALR rows come from
the real state machine (aalr_ray.core, standard library only), so their
``action`` column holds every action AALR takes.
"""

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
import pytest  # noqa: E402
from matplotlib.colors import to_hex  # noqa: E402
from PIL import Image  # noqa: E402

from aalr_ray import report  # noqa: E402
from aalr_ray.core import AALR  # noqa: E402

DATASET = "hidden_cases:mnist5k"  # long and with a colon: the title that used to be clipped
STEM = "hidden_cases_mnist5k_natural"
FIGURES = [f"{m}_{STEM}.png" for m in ("lr", "test_acc", "train_loss", "trials")]
# The docstring example of aalr_ray/core.py: a restart from theta_0 (epoch 2), doublings (4, 6), a
# failed second try that halves (10) and a rollback to the best (11, the NaN).
AALR_LOSSES = [2.0, 2.5, 1.9, 1.8, 1.9, 1.7, 1.8, 1.75, 1.72, 1.71, math.nan, 1.6, 1.65, 1.5, 1.55, 1.4]
EPOCHS = len(AALR_LOSSES)
UNKNOWN = "mypackage.optim:MyOptimizer"  # a method given as an import path: the fallback style
AALR_FAMILY = ("aalr", "aalr-adam", "aalr-robust", "aalr-robust-adam")


def aalr_rows(seed: int) -> list[dict]:
    ctl = AALR(max_epochs=EPOCHS, phase1_patience=2)
    ctl.start(2.3)
    rows = []
    for epoch, loss in enumerate(AALR_LOSSES, start=1):
        loss = loss + seed / 100
        lr = ctl.lr
        rows.append({"epoch": epoch, "lr": lr, "train_loss": loss, "action": ctl.step(loss).value})
    return rows


def schedule_rows(seed: int, index: int) -> list[dict]:
    return [{"epoch": e, "lr": 0.1 * (0.5 ** (e // 5)) * (1 + index / 20), "train_loss": 2.0 / (e + seed + index / 7),
             "action": None} for e in range(1, EPOCHS + 1)]


def write_experiment(directory: Path, cells: list[dict], seeds=(0, 1, 2)) -> tuple[list[dict], list[dict]]:
    """One trial per cell and seed; a cell is {model, method, batch_size, augmentation}."""
    trials, epochs = [], []
    for index, cell in enumerate(cells):
        for seed in seeds:
            trial_id = f"t{index}_{seed}"
            config = {"dataset": DATASET, "model": cell.get("model", "mlp"), "method": cell["method"],
                      "training": "natural", "seed": seed, "batch_size": cell.get("batch_size", 128),
                      "augmentation": cell.get("augmentation", "none")}
            rows = aalr_rows(seed) if cell["method"] in AALR_FAMILY else schedule_rows(seed, index)
            for row in rows:
                row.update(config, trial_id=trial_id, test_acc=0.5 + 0.03 * row["epoch"] - seed / 100 - index / 500,
                           test_loss=1.0, epoch_s=0.1, epochs_done=row["epoch"])
            epochs += rows
            trials.append({**config, "trial_id": trial_id, "status": "TERMINATED", "error": None,
                           "peak_test_acc": max(r["test_acc"] for r in rows), "final_test_acc": rows[-1]["test_acc"]})
    directory.mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(trials), directory / "trials.parquet")
    pq.write_table(pa.Table.from_pylist(epochs), directory / "epochs.parquet")
    return trials, epochs


def write_experiment_in_memory(cells) -> tuple[list[dict], list[dict]]:
    """(trials, epochs) of an experiment that was written to Parquet and read back by nobody."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        return write_experiment(Path(tmp) / "x", cells)


def every_method_cells(models=("mnist1d-cnn", "mnist1d-mlp")) -> list[dict]:
    return [{"model": model, "method": method} for model in models for method in [*report.METHOD_STYLES, UNKNOWN]]


def figures(trials, epochs) -> dict:
    return {name: fig for name, _, fig in report._figures(trials, epochs)}


def legends(fig) -> list:
    return [legend for figure in (fig, *fig.subfigs) for legend in figure.legends]


def legend_texts(fig) -> list[str]:
    [legend] = legends(fig)
    return [t.get_text() for t in legend.get_texts()]


def lines(fig, prefix: str) -> list:
    return [line for ax in fig.axes for line in ax.get_lines() if (line.get_gid() or "").startswith(prefix)]


def assert_nothing_clipped(fig) -> None:
    renderer = fig.canvas.get_renderer()
    fig.draw(renderer)
    box = fig.bbox
    titles = [f._suptitle for f in (fig, *fig.subfigs) if f._suptitle is not None]
    texts = [*titles, *(t for legend in legends(fig) for t in legend.get_texts())]
    for ax in fig.axes:
        if ax.get_visible():
            texts += [ax.title, ax.xaxis.label, ax.yaxis.label]
    for text in texts:
        if text is None or not text.get_text():
            continue
        extent = text.get_window_extent(renderer)
        assert (extent.x0 >= box.x0 - 1 and extent.y0 >= box.y0 - 1 and extent.x1 <= box.x1 + 1
                and extent.y1 <= box.y1 + 1), f"clipped: {text.get_text()!r} at {extent} in {box}"
    for legend in legends(fig):  # the legend sits outside every panel and clear of the title
        for other in [*titles] + [ax for ax in fig.axes if ax.get_visible()]:
            assert not legend.get_window_extent(renderer).overlaps(other.get_window_extent(renderer)), other


@pytest.fixture
def closing():
    yield
    plt.close("all")


# ------------------------------------------------------------------ styles
def test_the_style_table_covers_every_registered_method():
    from aalr_ray.methods import method_names  # imports torch; the report itself does not

    assert set(method_names()) <= set(report.METHOD_STYLES), set(method_names()) - set(report.METHOD_STYLES)


def test_no_two_methods_share_a_colour_and_line_style():
    from aalr_ray.methods import method_names

    pairs = [(to_hex(report.method_style(m)[0]), report.method_style(m)[1]) for m in method_names()]
    assert len(set(pairs)) == len(pairs)
    colours = [to_hex(c) for c, _ in report.METHOD_STYLES.values()]
    assert len(set(colours)) == len(colours)  # in fact one colour per method


def test_unknown_methods_get_a_stable_style_no_registered_method_has():
    style = report.method_style(UNKNOWN)
    assert style == report.method_style(UNKNOWN)
    assert style not in report.METHOD_STYLES.values()
    many = [f"pkg.mod:Opt{i}" for i in range(12)]
    styles = report._styles([*report.METHOD_STYLES, *many])
    assert len(set(styles.values())) == len(styles)  # two unknown names that hash alike still differ
    assert report._styles(many) == report._styles(list(reversed(many)))


# ----------------------------------------------------------------- figures
def test_every_figure_file_its_size_and_the_report_referencing_it(tmp_path):
    experiment = tmp_path / "every-method"
    write_experiment(experiment, every_method_cells())
    report.write_report(str(experiment))
    text = (experiment / "report.md").read_text()
    mean_size = (round((2 * report.PANEL_W + report.LEGEND_W) * report.DPI),
                 round((report.PANEL_H + report.TITLE_H) * report.DPI))
    trials_size = (mean_size[0], round((3 * report.PANEL_H + report.TITLE_H) * report.DPI))
    for name in FIGURES:
        assert f"]({name})" in text, name
        with Image.open(experiment / name) as image:
            expected = trials_size if name.startswith("trials_") else mean_size
            assert all(abs(a - b) <= 1 for a, b in zip(image.size, expected)), (name, image.size, expected)
            assert image.size[0] >= 1000 and image.size[1] >= 600
            assert min(image.info["dpi"]) >= 149.9  # at least 150 dpi, recorded in the file
    assert report.DPI >= 150


def test_mean_figures_have_a_legend_entry_per_method_and_a_band_per_line(closing):
    trials, epochs = write_experiment_in_memory(every_method_cells())
    figs = figures(trials, epochs)
    assert sorted(figs) == sorted(FIGURES)
    methods = [*report.METHOD_STYLES, UNKNOWN]
    for name in FIGURES:
        fig = figs[name]
        entries = legend_texts(fig)
        actions = [text for _, text in report.ACTION_MARKERS.values()]
        expected = methods + (actions if name.startswith(("lr_", "trials_")) else [])
        assert entries == expected, name
        assert_nothing_clipped(fig)
    fig = figs[f"test_acc_{STEM}.png"]
    assert len([ax for ax in fig.axes if ax.get_visible()]) == 2  # a panel per model
    assert [ax.get_title() for ax in fig.axes] == ["mnist1d-cnn", "mnist1d-mlp"]
    means = lines(fig, "mean:")
    assert len(means) == 2 * len(methods)  # one line per method and model, not one per seed
    assert all(len(ax.collections) == len(methods) for ax in fig.axes)  # a min-max band per line
    trial_lines = lines(figs[f"trials_{STEM}.png"], "trial:")
    assert len(trial_lines) == 3 * len(trials)  # every trial, in each of the three metric rows


def test_no_two_methods_share_a_colour_and_line_style_in_a_figure(closing):
    trials, epochs = write_experiment_in_memory(every_method_cells(models=("mnist1d-cnn",)))
    for name, fig in figures(trials, epochs).items():
        styles = {}
        for line in lines(fig, "mean:") + lines(fig, "trial:"):
            method = line.get_gid().split(":", 1)[1]
            styles.setdefault(method, set()).add((to_hex(line.get_color()), line.get_linestyle()))
        assert all(len(s) == 1 for s in styles.values()), name  # one style per method, every panel
        pairs = [next(iter(s)) for s in styles.values()]
        assert len(styles) == len(report.METHOD_STYLES) + 1 and len(set(pairs)) == len(pairs), name
        for method, [(colour, linestyle)] in ((m, list(s)) for m, s in styles.items()):
            if method in report.METHOD_STYLES:  # the fixed table's, the same in every report
                assert (colour, linestyle) == (to_hex(report.METHOD_STYLES[method][0]),
                                               report.METHOD_STYLES[method][1])


def test_lr_figures_mark_aalrs_actions_where_the_rows_have_them(closing):
    cells = [{"method": "aalr"}, {"method": "step"}, {"method": "aalr-robust"}]
    trials, epochs = write_experiment_in_memory(cells)
    rows = sorted((r for r in epochs if r["trial_id"] == "t0_0"), key=lambda r: r["epoch"])
    expected = {("double", 4), ("double", 6), ("halve", 10), ("restore_best", 11), ("restore_initial", 2)}
    assert {(kind, epoch) for epoch, _, kind in report.lr_actions(rows)} >= expected
    assert report.lr_actions(sorted((r for r in epochs if r["trial_id"] == "t1_0"), key=lambda r: r["epoch"])) == []
    figs = figures(trials, epochs)
    aalr_colours = {to_hex(report.METHOD_STYLES[m][0]) for m in ("aalr", "aalr-robust")}
    for name in (f"lr_{STEM}.png", f"trials_{STEM}.png"):
        markers = lines(figs[name], "action:")
        assert {m.get_gid().split(":")[1] for m in markers} == set(report.ACTION_MARKERS), name
        assert {to_hex(m.get_markerfacecolor()) for m in markers} == aalr_colours, name  # none on `step`
        restarts = {(x, y) for m in markers if m.get_gid() == "action:restore_initial"
                    for x, y in zip(m.get_xdata(), m.get_ydata())}
        want = {(r["epoch"], r["lr"]) for r in epochs if r.get("action") == "restore_initial"}
        assert restarts == want, name  # at the epoch and LR of every row that has the action
        entries = legend_texts(figs[name])
        assert entries == ["aalr", "step", "aalr-robust"] + [t for _, t in report.ACTION_MARKERS.values()]
    for name in (f"test_acc_{STEM}.png", f"train_loss_{STEM}.png"):
        assert lines(figs[name], "action:") == [], name
        assert len(legend_texts(figs[name])) == 3


@pytest.mark.parametrize("field, values", [("batch_size", [32, 128, 512]),
                                           ("augmentation", ["none", "standard", "random-erasing"])])
def test_grids_over_batch_size_or_augmentation_keep_the_papers_layout(field, values, tmp_path, closing):
    """Figures 1-2 of the paper: AALR's LR per batch size (augmentation), a colour per value, a panel per model."""
    cells = [{"model": model, "method": "aalr", field: value} for model in ("resnet20", "vgg16") for value in values]
    trials, epochs = write_experiment(tmp_path / "grid", cells)
    figs = figures(trials, epochs)
    fig = figs[f"lr_{STEM}.png"]
    assert [ax.get_title() for ax in fig.axes] == ["resnet20", "vgg16"]
    assert legend_texts(fig) == [f"{field}={v}" for v in values] + [t for _, t in report.ACTION_MARKERS.values()]
    colours = {line.get_gid(): to_hex(line.get_color()) for line in lines(fig, "mean:")}
    assert len(set(colours.values())) == len(values)
    assert len(lines(fig, "mean:")) == 2 * len(values)
    assert lines(fig, "action:")
    assert_nothing_clipped(fig)
    assert len(legend_texts(figs[f"test_acc_{STEM}.png"])) == len(values)
    report.write_report(str(tmp_path / "grid"))
    with Image.open(tmp_path / "grid" / f"lr_{STEM}.png") as image:
        assert abs(image.size[0] - round((2 * report.PANEL_W + report.LEGEND_W) * report.DPI)) <= 1


def test_many_models_wrap_into_rows_of_panels(closing):
    models = [f"model{i}" for i in range(5)]
    trials, epochs = write_experiment_in_memory([{"model": m, "method": "aalr"} for m in models])
    fig = figures(trials, epochs)[f"test_acc_{STEM}.png"]
    visible = [ax for ax in fig.axes if ax.get_visible()]
    assert [ax.get_title() for ax in visible] == models
    width, height = fig.get_size_inches()
    assert width == pytest.approx(report.MAX_COLUMNS * report.PANEL_W + report.LEGEND_W)
    assert height == pytest.approx(2 * report.PANEL_H + report.TITLE_H)
    assert_nothing_clipped(fig)
