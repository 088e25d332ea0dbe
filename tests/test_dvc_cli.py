"""DVC's own commands on the committed repository: `dvc plots show` renders every committed plot CSV without a warning
(unquoted CSVs once made it print "argument of type 'NoneType' is not iterable", drop one plot and merge rows)."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DVC = shutil.which("dvc", path=str(Path(sys.executable).parent)) or shutil.which("dvc")
pytestmark = pytest.mark.skipif(DVC is None or not (ROOT / ".dvc").exists(), reason="dvc (or .dvc/) not available")


def _field(spec, axis: str) -> str:
    """The data field of the first ``encoding.<axis>`` anywhere in a vega-lite spec (DVC nests them in layers)."""
    stack = [spec]
    while stack:
        node = stack.pop(0)
        if isinstance(node, dict):
            enc = node.get("encoding", {})
            if isinstance(enc.get(axis), dict) and "field" in enc[axis]:
                return enc[axis]["field"]
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    raise AssertionError(f"no encoding.{axis}.field in the spec")


def test_dvc_plots_show_renders_every_plot_without_a_warning(tmp_path):
    out = subprocess.run([DVC, "plots", "show", "-o", str(tmp_path / "plots")], cwd=ROOT, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stderr.strip() == "", out.stderr
    assert "warning" not in out.stdout.lower() and "error" not in out.stdout.lower(), out.stdout
    assert (tmp_path / "plots" / "index.html").exists()
    shown = subprocess.run([DVC, "plots", "show", "--json"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert shown.returncode == 0 and shown.stderr.strip() == "", shown.stderr
    result = json.loads(shown.stdout)
    assert "errors" not in result, result.get("errors")
    committed = set(subprocess.run(["git", "ls-files", "metrics/*.csv"], cwd=ROOT, capture_output=True,
                                   text=True).stdout.split())
    assert set(result["data"]) == committed  # every committed CSV is a declared plot, and each one renders
    for name, plots in result["data"].items():
        spec = plots[0]["content"]
        fields = [_field(spec, "x"), _field(spec, "y")]
        rows = spec["data"]["values"]
        assert rows, name
        for row in rows:  # a row split by an unquoted comma lacks a field or holds a non-number
            assert all(f in row for f in fields), (name, row)
            float(row[fields[1]])
