"""report.html: one self-contained page with report.md's tables and every figure, checked as
markup and in a real browser (Debian's Chromium, driven by Playwright; never downloaded).

    python tests/test_report_html.py results/quickstart/report.html docs/report.png   # a screenshot
"""
import base64
import html
import re
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest

from aalr_ray import report
from test_report_figures import write_experiment

CHROMIUM = Path("/usr/bin/chromium")
# Headless, offline, and quiet: nothing but the page is fetched or started.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]
VIEWPORT = {"width": 1400, "height": 900}
EVIL = "mlp<script>alert('x')</script> & co"  # a model name that is markup
REFRESH_TAG = re.compile(r'<meta http-equiv="refresh" content="(\d+)">')
CELLS = [{"model": model, "method": method} for model in (EVIL, "mnist1d-cnn") for method in ("aalr", "step", "adam")]


class Page(HTMLParser):
    """What the markup holds: tables (title, rows of (tag, classes, text)), images, tags, attributes."""

    def __init__(self, text: str):
        super().__init__(convert_charrefs=True)
        self.tables, self.images, self.tags, self.references = [], [], [], []
        self._cell = self._title = None
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.tags.append(tag)
        self.references += [(name, value) for name, value in attrs.items() if name in ("src", "href", "srcset",
                                                                                   "action", "poster", "data")]
        if tag == "table":
            self.tables.append({"title": "", "rows": []})
        elif tag == "span" and attrs.get("class") == "title" and self.tables:
            self._title = ""
        elif tag == "tr":
            self.tables[-1]["rows"].append([])
        elif tag in ("td", "th") and self.tables:
            self._cell = [tag, (attrs.get("class") or "").split(), ""]
            self.tables[-1]["rows"][-1].append(self._cell)
        elif tag == "img":
            self.images.append(attrs)

    def handle_endtag(self, tag):
        if tag == "span" and self._title is not None:
            self.tables[-1]["title"], self._title = self._title, None
        elif tag in ("td", "th"):
            self._cell = None

    def handle_data(self, data):
        if self._title is not None:
            self._title += data
        if self._cell is not None:
            self._cell[2] += data


def expected_tables(trials, epochs) -> list[report.Table]:
    return [table for section in report.build_tables(trials, epochs) for table in section.tables]


def best_cells(tables: list[report.Table]) -> list[tuple[int, int, int]]:
    """(table, row, column) of every best cell, the row name's column not counted."""
    return [(t, r, c) for t, table in enumerate(tables) for r, (_, cells) in enumerate(table.rows)
            for c, cell in enumerate(cells) if cell.best]


@pytest.fixture(scope="module")
def experiment(tmp_path_factory):
    """A finished experiment and its report (the tests only read it)."""
    directory = tmp_path_factory.mktemp("report") / "html"
    trials, epochs = write_experiment(directory, CELLS)
    report.write_report(str(directory))
    return directory, trials, epochs


# ------------------------------------------------------------------- markup
def test_the_page_has_every_table_with_its_best_cells_and_every_figure_embedded(experiment):
    directory, trials, epochs = experiment
    text = (directory / "report.html").read_text(encoding="utf-8")
    page = Page(text)
    tables = expected_tables(trials, epochs)
    assert [t["title"] for t in page.tables] == [report.plain(t.title) for t in tables]
    found_best = [(t, r - 1, c - 1) for t, table in enumerate(page.tables) for r, row in enumerate(table["rows"])
                  for c, (tag, classes, _) in enumerate(row) if "best" in classes]
    assert found_best == best_cells(tables) and found_best  # one per row of each accuracy table
    markdown = (directory / "report.md").read_text(encoding="utf-8")
    for t, r, c in found_best:  # the same cells report.md bolds
        assert f"**{tables[t].rows[r][1][c].text}**" in markdown
    pngs = sorted(p.read_bytes() for p in directory.glob("*.png"))
    srcs = [image["src"] for image in page.images]
    assert all(src.startswith("data:image/png;base64,") for src in srcs)
    assert sorted(base64.b64decode(src.split(",", 1)[1]) for src in srcs) == pngs and len(pngs) == 4


def test_the_page_is_self_contained_and_escapes_every_text(experiment):
    directory, trials, epochs = experiment
    text = (directory / "report.html").read_text(encoding="utf-8")
    page = Page(text)
    assert not re.search(r"(?i)\b(https?|ftp)://|//[a-z0-9.-]+\.[a-z]{2,}/|url\(|@import", text)
    assert not {"script", "link", "iframe", "object", "embed"} & set(page.tags)
    for name, value in page.references:  # images inline, links inside the page
        assert (name, value[:22]) == ("src", "data:image/png;base64,") or (name == "href" and value[0] == "#")
    assert EVIL not in text and html.escape(EVIL) in text
    row_names = [row[0][2] for table in page.tables for row in table["rows"][1:]]
    assert EVIL in row_names  # the name as it was, once the escapes are read back


def test_the_page_reloads_itself_while_the_grid_runs_and_not_once_it_ended(tmp_path):
    trials, epochs = write_experiment(tmp_path / "x", CELLS[:2])
    trials = [{**t, "epochs": 16} for t in trials]
    running = [{**t, "status": report.RUNNING, "epochs_done": 3} if i == 0 else t for i, t in enumerate(trials)]
    report.write_report(str(tmp_path / "x"), report.Results(running, epochs, running=True), refresh=7)
    page = (tmp_path / "x" / "report.html").read_text(encoding="utf-8")
    assert REFRESH_TAG.findall(page) == ["7"]
    assert "This page reloads every 7 s until the grid ends" in page and "running, epoch 3/16" in page
    report.write_report(str(tmp_path / "x"), report.Results(trials, epochs, running=False), refresh=7)
    page = (tmp_path / "x" / "report.html").read_text(encoding="utf-8")
    assert not REFRESH_TAG.search(page) and "reloads" not in page and "running," not in page


# ------------------------------------------------------------------ browser
# What the browser shows: every image decoded, the tables' titles, and the look of best and plain cells.
SHOWN = """() => {
  const style = (cell) => { const s = getComputedStyle(cell); return {bg: s.backgroundColor, weight: s.fontWeight}; };
  return {
    images: [...document.images].map((i) => ({complete: i.complete, width: i.naturalWidth, height: i.naturalHeight})),
    tables: document.querySelectorAll("table").length,
    titles: [...document.querySelectorAll("table > caption > .title")].map((e) => e.textContent),
    best: [...document.querySelectorAll("td.best")].map(style),
    plain: [...document.querySelectorAll("td:not(.best)")].map(style),
    first_figure_bottom: document.images.length ? document.images[0].getBoundingClientRect().bottom + scrollY : 0,
  };
}"""


def open_in_chromium(page: Path, screenshot: Path) -> tuple[dict, list[str], list[str]]:
    """Open ``page`` in headless Chromium and take a full-page screenshot; (what it shows, console
    errors, URLs requested besides the page)."""
    from playwright.sync_api import sync_playwright

    errors, requests = [], []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            tab = browser.new_page(viewport=VIEWPORT)
            tab.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
            tab.on("pageerror", lambda error: errors.append(str(error)))
            tab.on("request", lambda request: requests.append(request.url))
            tab.goto(page.resolve().as_uri(), wait_until="load")
            shown = tab.evaluate(SHOWN)
            tab.screenshot(path=str(screenshot), full_page=True)
        finally:
            browser.close()
    return shown, errors, [url for url in requests if url != page.resolve().as_uri() and not url.startswith("data:")]


def _needs_a_browser() -> None:
    if not CHROMIUM.exists():
        pytest.skip(f"NOT CHECKED IN A BROWSER: {CHROMIUM} is missing; install Debian's chromium "
                    "(apt-get install -y chromium) to run this test")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        pytest.skip("NOT CHECKED IN A BROWSER: playwright is not installed; pip install -e '.[test]'")


@pytest.mark.slow
def test_chromium_shows_every_figure_and_table_with_the_best_cells_highlighted(experiment, tmp_path):
    _needs_a_browser()
    from PIL import Image

    directory, trials, epochs = experiment
    shown, errors, requests = open_in_chromium(directory / "report.html", tmp_path / "screenshot.png")
    assert errors == [] and requests == []
    assert len(shown["images"]) == len(list(directory.glob("*.png"))) > 0
    assert all(image["complete"] and image["width"] > 0 and image["height"] > 0 for image in shown["images"])
    tables = expected_tables(trials, epochs)
    assert shown["tables"] == len(tables) and shown["titles"] == [report.plain(t.title) for t in tables]
    assert len(shown["best"]) == len(best_cells(tables)) > 0
    plain_looks = {(cell["bg"], cell["weight"]) for cell in shown["plain"]}
    for cell in shown["best"]:  # another background and bolder than every other cell
        assert (cell["bg"], cell["weight"]) not in plain_looks and int(cell["weight"]) >= 600
    with Image.open(tmp_path / "screenshot.png") as screenshot:
        assert screenshot.size[0] == VIEWPORT["width"] and screenshot.size[1] > VIEWPORT["height"]
        assert sum(1 for count in screenshot.convert("L").histogram() if count) > 8  # not a blank page


def readme_picture(screenshot: Path, out: Path, bottom: int) -> None:
    """The top of a full-page screenshot (down to ``bottom`` CSS pixels), quantised to a small PNG."""
    from PIL import Image

    with Image.open(screenshot) as full:
        top = full.crop((0, 0, full.width, min(full.height, bottom)))  # one device pixel per CSS pixel
        top.convert("RGB").quantize(colors=128).save(out, optimize=True)


if __name__ == "__main__":  # python tests/test_report_html.py results/quickstart/report.html docs/report.png
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        shown, errors, requests = open_in_chromium(Path(sys.argv[1]), Path(tmp) / "full.png")
        # The tables and the first figure (the LR per epoch, with AALR's actions marked).
        readme_picture(Path(tmp) / "full.png", Path(sys.argv[2]), bottom=shown["first_figure_bottom"] + 16)
    print(f"{len(shown['images'])} images, {shown['tables']} tables; console errors: {errors or 'none'}")
