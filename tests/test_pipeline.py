"""End to end: the whole DVC pipeline on the smoke profile, in a temporary copy of the repository.

Never touches the user's params.yaml: the copy gets its own, written by `python -m afcore.params use smoke`.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from afcore.utils import REPO_ROOT

pytestmark = pytest.mark.slow


def _run(cmd, cwd, env, timeout=3000):
    out = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    if out.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({out.returncode}):\n{out.stdout[-6000:]}\n{out.stderr[-6000:]}")
    return out


@pytest.fixture(scope="module")
def smoke_repo(tmp_path_factory):
    root = tmp_path_factory.mktemp("pipeline")
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO_ROOT,
                           capture_output=True, text=True, check=True).stdout.split()
    for rel in files:
        src = REPO_ROOT / rel
        if src.is_file():
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, root / rel)
    # Stage outputs start absent, as on a fresh clone, so every stage really runs.
    for rel in ("dvc.lock",):
        (root / rel).unlink(missing_ok=True)
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    env["PYTHONPATH"] = str(root)
    env["HF_HUB_OFFLINE"] = "1"
    env["HF_DATASETS_OFFLINE"] = "1"
    env["MPLBACKEND"] = "Agg"
    env["AFCORE_DEVICE_GUARD"] = "1"  # a tensor factory without device= in our code fails the run (utils.DeviceGuard)
    _run(["git", "init", "-q"], root, env)
    _run([sys.executable, "-m", "afcore.params", "use", "smoke"], root, env)
    first = _run(["dvc", "repro"], root, env).stdout
    return root, env, first


def test_every_stage_runs_and_writes_its_outputs(smoke_repo):
    root, env, log = smoke_repo
    stages = yaml.safe_load((root / "dvc.yaml").read_text())["stages"]
    lock = yaml.safe_load((root / "dvc.lock").read_text())["stages"]
    for name in stages:
        assert any(k == name or k.startswith(name + "@") for k in lock), f"stage {name} did not run"
    for report in (root / "reports").glob("*.ipynb"):
        assert report.stat().st_size > 0
    metrics = sorted((root / "metrics").glob("*.json"))
    assert metrics, "no metrics written"
    for m in metrics:
        json.loads(m.read_text())
    # the smoke run must not have edited the user's params.yaml
    assert "profile: cpu" in (REPO_ROOT / "params.yaml").read_text()


def test_second_repro_runs_nothing(smoke_repo):
    root, env, _ = smoke_repo
    again = _run(["dvc", "repro"], root, env).stdout
    assert "Running stage" not in again, again
    status = _run(["dvc", "status"], root, env).stdout
    assert "up to date" in status, status


def test_metrics_and_plots_show(smoke_repo):
    root, env, _ = smoke_repo
    shown = json.loads(_run(["dvc", "metrics", "show", "--json"], root, env).stdout)
    assert shown
    plots = _run(["dvc", "plots", "show", "-o", str(root / "plots_out")], root, env)
    assert (root / "plots_out" / "index.html").exists(), plots.stdout
