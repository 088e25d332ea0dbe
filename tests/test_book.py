"""workbook.book: the course site builds from executed notebooks, folds solutions, typesets math offline, and a
headless browser shows its pages (where Chromium is installed)."""
from __future__ import annotations

import base64
import io
import shutil
import subprocess

import nbformat
import pytest

from workbook import book

pytest.importorskip("sphinx")
pytest.importorskip("myst_nb")


def _png() -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(2, 1))
    ax.plot([0, 1], [0, 1])
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def _executed_notebook(title: str) -> nbformat.NotebookNode:
    nb = nbformat.v4.new_notebook(metadata={"kernelspec": {"name": "python3", "language": "python",
                                                           "display_name": "Python 3"},
                                            "language_info": {"name": "python"}})
    params = nbformat.v4.new_code_cell("cutoff = 0.25", metadata={"tags": ["parameters"]})
    injected = nbformat.v4.new_code_cell("cutoff = 0.3  # papermill", metadata={"tags": ["injected-parameters"]})
    plot = nbformat.v4.new_code_cell("plot()")
    plot.outputs = [nbformat.v4.new_output("display_data", data={"image/png": _png(), "text/plain": "<Figure>"})]
    solution = nbformat.v4.new_code_cell("answer = 42\nassert answer == 42", metadata={"tags": ["solution"]})
    nb.cells = [nbformat.v4.new_markdown_cell(f"# {title}\n\nThe Nyquist limit is $f < 1/2$ cycles per sample:\n\n"
                                              "$$x[n] = \\cos(2\\pi f n)$$"),
                params, injected, plot, nbformat.v4.new_markdown_cell("## Exercises"), solution]
    return nb


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("book")
    reports = tmp / "reports"
    reports.mkdir()
    for name in book.CHAPTERS:
        nbformat.write(_executed_notebook(name), reports / f"{name}.ipynb")
    return book.build(reports, tmp / "out"), tmp


def test_the_book_builds_every_chapter_with_folded_solutions_and_local_math(built):
    index, _ = built
    html = index.parent
    assert "Order, objectives and time" in index.read_text()  # the guide is the front page
    for name in book.CHAPTERS:
        page = (html / "notebooks" / f"{name}.html").read_text()
        assert name in index.read_text()  # listed in the table of contents
        assert "tag_solution tag_hide-cell" in page  # the solution is there, folded
        assert "papermill" not in page  # papermill's injected cell is removed
        assert "\\(f &lt; 1/2\\)" in page or "\\(f < 1/2\\)" in page  # math handed to MathJax
        assert '<img alt="../_images/' in page or "_images/" in page  # the figure output
        assert 'src="http' not in page and "cdn" not in page.lower()  # nothing fetched from the network
    assert (html / "_static" / "mathjax" / "MathJax.js").is_file()
    assert list((html / "_images").glob("*.png"))


def test_missing_executed_chapters_are_named(tmp_path):
    (tmp_path / "reports").mkdir()
    nbformat.write(_executed_notebook("x"), tmp_path / "reports" / f"{book.CHAPTERS[0]}.ipynb")
    with pytest.raises(book.BookError, match=book.CHAPTERS[1]) as err:
        book.build(tmp_path / "reports", tmp_path / "out")
    assert "make repro" in str(err.value) and not (tmp_path / "out" / "html").exists()


def test_fold_cells_keeps_existing_tags_and_adds_the_fold_once():
    nb = _executed_notebook("t")
    twice = book.fold_cells(book.fold_cells(nb))
    tags = [c.metadata.get("tags") for c in twice.cells if c.metadata.get("tags")]
    assert tags == [["parameters", "hide-cell"], ["injected-parameters", "remove-cell"], ["solution", "hide-cell"]]


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(CHROMIUM is None, reason="needs Chromium (Debian: apt-get install chromium)")
def test_a_headless_browser_renders_the_pages_and_typesets_the_math(built):
    index, tmp = built
    flags = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={tmp / 'chromium-profile'}", "--virtual-time-budget=8000"]
    page = index.parent / "notebooks" / f"{book.CHAPTERS[0]}.html"
    dom = subprocess.run(flags + ["--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120).stdout
    assert "MathJax" in dom and 'class="MathJax' in dom, "MathJax did not typeset the formulas"
    shot = tmp / "index.png"
    subprocess.run(flags + ["--window-size=1280,900", f"--screenshot={shot}", index.as_uri()], capture_output=True,
                   timeout=120)
    from PIL import Image
    import numpy as np

    pixels = np.asarray(Image.open(shot).convert("L"), dtype=float)
    assert pixels.std() > 10  # a rendered page, not a blank one
