"""The pipeline's metrics, readably: one ``key  value`` line per number, grouped by file (``dvc metrics show`` puts
every metric of every stage into a single table tens of thousands of characters wide).

    python -m workbook.metrics                              # every metrics/*.json (and its sub-folders)
    python -m workbook.metrics metrics/14_configs_report.json   # one file
    python -m workbook.metrics --grep fid                   # only keys holding 'fid'
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from afcore.utils import REPO_ROOT


def flatten(data, prefix: str = "") -> list[tuple[str, object]]:
    """``(dotted.key, value)`` for every leaf of a JSON value (list items by index)."""
    if isinstance(data, dict):
        items = data.items()
    elif isinstance(data, list):
        items = ((str(i), v) for i, v in enumerate(data))
    else:
        return [(prefix, data)]
    out = []
    for key, value in items:
        out.extend(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return out


def render(path: Path, grep: str = "") -> str:
    """One file's metrics as ``  key  value`` lines under the file's name (keys aligned, long lists one item a line)."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise SystemExit(f"{path}: cannot be read as JSON ({type(exc).__name__}: {exc})") from exc
    rows = [(k, v) for k, v in flatten(data) if grep.lower() in k.lower()]
    if not rows:
        return ""
    width = min(max(len(k) for k, _ in rows), 60)
    return "\n".join([str(path)] + [f"  {k:<{width}}  {v}" for k, v in rows])


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m workbook.metrics", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("files", nargs="*", help="metrics JSON files (default: every metrics/**/*.json)")
    parser.add_argument("--grep", default="", help="only keys containing this text (case-insensitive)")
    args = parser.parse_args(argv)
    files = [Path(f) for f in args.files] or sorted((REPO_ROOT / "metrics").rglob("*.json"))
    blocks = [b for b in (render(f, args.grep) for f in files) if b]
    print("\n\n".join(blocks) if blocks else "no metrics match")


if __name__ == "__main__":
    main()
