"""End to end: the whole DVC pipeline on the smoke profile, in a temporary copy of the repository.

Never touches the user's params.yaml: the copy gets its own, written by `python -m workbook.params use smoke`.
"""
from __future__ import annotations

import hashlib
import json
import os

import pytest
import yaml

from workbook import smoke
from afcore.utils import REPO_ROOT

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def smoke_repo(tmp_path_factory):
    """The same preparation as `python -m workbook.smoke` (and `make smoke-gpu`): a copy with the smoke profile,
    no dvc.lock, offline hubs, and the device guard on (a tensor factory without device= in our code fails)."""
    root = tmp_path_factory.mktemp("pipeline")
    env = smoke.prepare(root, device="cpu")
    first = smoke.run_checked(["dvc", "repro"], root, env).stdout
    return root, env, first


def test_every_stage_runs_and_writes_its_outputs(smoke_repo):
    root, env, log = smoke_repo
    stages = yaml.safe_load((root / "dvc.yaml").read_text())["stages"]
    lock = yaml.safe_load((root / "dvc.lock").read_text())["stages"]
    for name in stages:
        assert any(k == name or k.startswith(name + "@") for k in lock), f"stage {name} did not run"
    for report in (root / "reports").glob("*.ipynb"):
        assert report.stat().st_size > 0
    metrics = sorted((root / "metrics").rglob("*.json"))
    assert metrics, "no metrics written"
    for m in metrics:
        _assert_finite_numbers(json.loads(m.read_text()), m.name)
    # outputs are readable by others (the umask's mode, not a temporary file's private 0600)
    mask = os.umask(0)
    os.umask(mask)
    readable = 0o044 & ~mask
    for folder in ("data", "metrics", "figures", "reports"):
        for f in (root / folder).rglob("*"):
            if f.is_file():
                assert f.stat().st_mode & readable == readable, f"{f.relative_to(root)}: mode {f.stat().st_mode:o}"
    # the smoke run must not have edited the user's params.yaml
    assert "profile: cpu" in (REPO_ROOT / "params.yaml").read_text()


def _assert_finite_numbers(node, where):
    """Every number a stage writes is finite (NaN/inf are written as strings by save_json: none allowed), every PSNR
    lies in a plausible range (capped values and round-off reach a few hundred dB; below -50 dB means a broken peak),
    and every other dB value is a real number of sensible size (filter attenuations reach -200 dB)."""
    if isinstance(node, dict):
        for k, v in node.items():
            if k == "IS" and str(node.get("features", "")).startswith("rand-") and v == "nan":
                continue  # IS of random-CNN "logits" is meaningless: the classifier stage writes it as not-a-number
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                if "psnr" in k.lower():
                    assert -50.0 < v < 400.0, f"{where}: {k} = {v}"
                elif "db" in k.lower():
                    assert -1000.0 < v < 1000.0, f"{where}: {k} = {v}"
            _assert_finite_numbers(v, f"{where}.{k}")
    elif isinstance(node, list):
        for i, v in enumerate(node):
            _assert_finite_numbers(v, f"{where}[{i}]")
    elif isinstance(node, str):
        assert node not in ("nan", "inf", "-inf"), f"{where} is {node}"


def test_second_repro_runs_nothing(smoke_repo):
    root, env, _ = smoke_repo
    again = smoke.run_checked(["dvc", "repro"], root, env).stdout
    assert "Running stage" not in again, again
    status = smoke.run_checked(["dvc", "status"], root, env).stdout
    assert "up to date" in status, status


def test_metrics_and_plots_show(smoke_repo):
    root, env, _ = smoke_repo
    shown = json.loads(smoke.run_checked(["dvc", "metrics", "show", "--json"], root, env).stdout)
    assert shown
    plots = smoke.run_checked(["dvc", "plots", "show", "-o", str(root / "plots_out")], root, env)
    assert (root / "plots_out" / "index.html").exists(), plots.stdout


def test_rerunning_the_data_stage_leaves_everything_downstream_up_to_date(smoke_repo):
    """The data stage writes the same bytes for the same data (a .pt file's archive does not carry a temporary
    file's name; PNG and JSON are deterministic), so forcing it again makes no other stage stale."""
    root, env, _ = smoke_repo

    def digests():
        files = [*(root / "data").glob("*.pt"), root / "metrics" / "10_data.json", *(root / "figures").glob("10_*/*")]
        return {f.relative_to(root): hashlib.md5(f.read_bytes()).hexdigest() for f in files if f.is_file()}

    before = digests()
    assert any(str(f).endswith(".pt") for f in before)
    smoke.run_checked(["dvc", "repro", "--force", "--single-item", "data"], root, env)
    assert digests() == before
    status = smoke.run_checked(["dvc", "status"], root, env).stdout
    assert "up to date" in status, status
