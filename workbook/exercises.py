"""Student copies of the notebooks: every cell tagged ``solution`` is replaced by an empty placeholder cell.

    python -m workbook.exercises notebooks student      # (make exercises)

Writes ``student/<name>.ipynb`` (and the paired ``.py``), ready to open in JupyterLab.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import jupytext
import nbformat

PLACEHOLDER = "# Your solution here\n"


def strip_solutions(notebook: nbformat.NotebookNode) -> tuple[nbformat.NotebookNode, int]:
    """Return a copy whose solution cells are emptied, and how many were."""
    student = nbformat.from_dict(notebook)
    removed = 0
    for cell in student.cells:
        if "solution" in cell.get("metadata", {}).get("tags", []):
            cell.source = PLACEHOLDER
            cell.metadata["tags"] = [t for t in cell.metadata["tags"] if t != "solution"] + ["exercise"]
            if cell.cell_type == "code":
                cell.outputs, cell.execution_count = [], None
            removed += 1
    return student, removed


def write_student_copies(source_dir: str | Path, out_dir: str | Path) -> dict[str, int]:
    source_dir, out_dir = Path(source_dir), Path(out_dir)
    sources = sorted(source_dir.glob("[0-9]*.py"))
    if not sources:
        raise ValueError(f"source_dir={source_dir}: no notebooks (NN_name.py) found")
    out_dir.mkdir(parents=True, exist_ok=True)
    counts = {}
    for src in sources:
        student, removed = strip_solutions(jupytext.read(src))
        if not removed:
            continue
        jupytext.write(student, out_dir / f"{src.stem}.ipynb")
        jupytext.write(student, out_dir / f"{src.stem}.py", fmt="py:percent")
        counts[src.stem] = removed
    return counts


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m workbook.exercises", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source_dir", nargs="?", default="notebooks")
    parser.add_argument("out_dir", nargs="?", default="student")
    args = parser.parse_args(argv)
    for name, n in write_student_copies(args.source_dir, args.out_dir).items():
        print(f"{args.out_dir}/{name}.ipynb: {n} solution cell(s) removed")


if __name__ == "__main__":
    main()
