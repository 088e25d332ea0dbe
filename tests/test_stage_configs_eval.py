"""Stage ``configs_eval``: the table, SPSNR, cost and Config E of one data set, with the properties they promise."""
from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest

from afcore import config_unet
from afcore.stages import configs_eval as stage
from afcore.utils import _jsonable


def test_run_evaluates_every_config_of_a_data_set(stage_device, device_checks, smoke_workspace, smoke_params,
                                                  tmp_path, monkeypatch):
    shared = smoke_workspace("configs_train", "classifier")
    root = tmp_path  # private: a CUDA run's metrics must not feed the shared workspace's report
    for part in ("data", "checkpoints"):
        shutil.copytree(shared / part, root / part)
    monkeypatch.setattr(stage, "COST_REPEATS", 2)  # one timed step per config after the warm-up: enough here
    cfg = stage.Config.from_params(smoke_params, dataset="mnist")
    with device_checks(stage_device):
        out = stage.run(cfg, stage_device, root)

    assert json.loads((root / "metrics/configs_eval/mnist.json").read_text()) == json.loads(
        json.dumps(_jsonable(out)))
    for name in ("samples.png", "rotation.gif", "rotation_consistency.png"):
        assert (root / f"figures/13_configs_eval/mnist_{name}").stat().st_size > 0
    assert [r["config"] for r in out["table"]] == list(cfg.configs)
    spsnr_csv = (root / "metrics/configs_eval/mnist_spsnr.csv").read_text().split()
    assert len(spsnr_csv) == 1 + len(cfg.configs) * len(cfg.spsnr_shifts)
    for row in out["table"]:
        assert row["samples"] == cfg.n_samples and row["features"] == "clf-mnist"
        assert all(math.isfinite(row[k]) for k in ("IS", "FID", "KIDx100", "KIDx100_std", "denoiser_spsnr_db",
                                                   "sample_spsnr_db"))
        assert row["denoiser_spsnr_sem"] >= 0 and row["sample_spsnr_sem"] >= 0 and row["IS"] >= 1.0 - 1e-9
        paper = config_unet.PAPER_TABLE["mnist"][row["config"]]
        assert (row["paper_IS"], row["paper_FID"], row["paper_KIDx100"]) == paper
        # every shift holds the same images: the mean over images and shifts is the mean of the per-shift means
        lines = [line.split(",") for line in spsnr_csv[1:] if line.split(",")[1] == row["config"]]
        assert row["denoiser_spsnr_db"] == pytest.approx(np.mean([float(v[3]) for v in lines]), rel=1e-9)
        assert row["sample_spsnr_db"] == pytest.approx(np.mean([float(v[4]) for v in lines]), rel=1e-9)
    assert out["train_step_time_relative_to_A"][cfg.configs[0]] == 1.0
    assert all(s > 0 for s in out["train_step_seconds"].values())
    # Config E: the first config and the last D config; an angle of 0 reproduces the plain sample exactly
    assert list(out["rotation_consistency_mean_db"]) == ["A", "D-1N"]
    zero = [r for r in out["rotation"] if r["angle"] == 0]
    assert len(zero) == 2 and all(r["psnr_db"] == 100.0 and r["psnr_sem"] == 0.0 for r in zero)
    for config, mean in out["rotation_consistency_mean_db"].items():
        vals = [r["psnr_db"] for r in out["rotation"] if r["config"] == config and r["angle"] != 0]
        assert mean == pytest.approx(np.mean(vals)) and 0 < mean < 100


def test_missing_checkpoints_name_the_stage_to_run(tmp_path, smoke_params):
    cfg = stage.Config.from_params(smoke_params, dataset="mnist")
    with pytest.raises(FileNotFoundError, match="configs_train"):
        stage.load_unet(cfg, "A", "cpu", tmp_path)
