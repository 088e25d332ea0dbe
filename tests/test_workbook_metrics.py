"""workbook.metrics: every number of a metrics file on its own short line (dvc metrics show is one huge table)."""
from __future__ import annotations

import json

from workbook import metrics


def test_every_leaf_is_printed_on_its_own_line(tmp_path, capsys):
    data = {"fid": {"A": 1.5, "B": [2.0, 3.0]}, "name": "x", **{f"k{i}": i for i in range(200)}}
    path = tmp_path / "m.json"
    path.write_text(json.dumps(data))
    metrics.main([str(path)])
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == str(path)
    assert len(lines) == 1 + 4 + 200  # one line per leaf
    assert any(line.split() == ["fid.B.1", "3.0"] for line in lines)
    assert max(len(line) for line in lines[1:]) < 100
    metrics.main([str(path), "--grep", "FID"])
    assert [line.split()[0] for line in capsys.readouterr().out.splitlines()[1:]] == ["fid.A", "fid.B.0", "fid.B.1"]


def test_committed_metrics_print_narrowly(capsys):
    metrics.main([])
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) > 10 and max(len(line) for line in lines if not line.startswith("  ")) < 200
