"""workbook.stage_ab: runs alternate between the revisions, and the summary is the medians and savings of what ran."""
from __future__ import annotations

from pathlib import Path

from workbook import stage_ab


def test_runs_alternate_and_the_summary_is_medians(monkeypatch):
    order = []
    seconds = {"old": iter([10.0, 14.0, 12.0]), "new": iter([8.0, 6.0, 7.0])}

    def fake_worktree(rev, where):
        return Path(where)

    def fake_run(tree, dataset, config):
        name = Path(tree).name
        order.append(name)
        t = next(seconds[name])
        return {"wall_s": t + 1, "train_seconds": t, "median_step_seconds": t / 100}

    monkeypatch.setattr(stage_ab, "_worktree", fake_worktree)
    monkeypatch.setattr(stage_ab, "_run_stage", fake_run)
    monkeypatch.setattr(stage_ab.subprocess, "run", lambda cmd, **kw: type("P", (), {"stdout": "abc1234\n"})())
    report = stage_ab.compare("old-rev", "HEAD", "mnist", "D-1N", repeats=3)
    assert order == ["old", "new", "new", "old", "old", "new"]  # a drifting machine affects both alike
    assert report["median"]["old"]["train_seconds"] == 12.0 and report["median"]["new"]["train_seconds"] == 7.0
    assert abs(report["saving"]["train_seconds"] - (1 - 7.0 / 12.0)) < 1e-12
    assert abs(report["speedup_train_seconds"] - 12.0 / 7.0) < 1e-12
    assert len(report["runs"]["old"]) == len(report["runs"]["new"]) == 3
