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
    assert out["training_seeds"] == cfg.seeds and len(cfg.seeds) >= 2
    spsnr_csv = [line.split(",") for line in (root / "metrics/configs_eval/mnist_spsnr.csv").read_text().split()]
    assert spsnr_csv[0] == ["dataset", "config", "seed", "shift", "denoiser_spsnr_db", "sample_spsnr_db"]
    assert len(spsnr_csv) == 1 + len(cfg.configs) * len(cfg.spsnr_shifts) * len(cfg.seeds)

    def csv_mean(config, seed, col):  # every shift holds the same images: per-unit shift means average linearly
        return np.mean([float(v[col]) for v in spsnr_csv[1:] if v[1] == config and int(v[2]) == seed])

    for row in out["table"]:
        assert row["samples"] == cfg.n_samples and row["features"] == "clf-mnist" and row["n_seeds"] == len(cfg.seeds)
        assert all(math.isfinite(row[k]) for k in ("IS", "FID", "KIDx100", "denoiser_spsnr_db", "sample_spsnr_db"))
        paper = config_unet.PAPER_TABLE["mnist"][row["config"]]
        assert (row["paper_IS"], row["paper_FID"], row["paper_KIDx100"]) == paper
        for key, col in (("denoiser_spsnr_db", 4), ("sample_spsnr_db", 5)):  # mean and SE over seeds
            per_seed = [csv_mean(row["config"], s, col) for s in cfg.seeds]
            assert row[f"{key}_per_seed"] == pytest.approx(per_seed, rel=1e-9)
            assert row[key] == pytest.approx(np.mean(per_seed), rel=1e-9)
            assert row[f"{key}_se"] == pytest.approx(np.std(per_seed, ddof=1) / np.sqrt(len(per_seed)), rel=1e-9)
    # contrasts: computed within each seed (paired over the same noises), then over seeds; primary = sample SPSNR
    base = cfg.configs[0]
    for config in cfg.configs[1:]:
        for key, col in (("sample_spsnr_db", 5), ("denoiser_spsnr_db", 4)):
            c = out["contrasts"][f"{key}: {config} - {base}"]
            expected = [csv_mean(config, s, col) - csv_mean(base, s, col) for s in cfg.seeds]
            assert c["per_seed"] == pytest.approx(expected, rel=1e-6, abs=1e-9)
            assert c["primary"] == (key == "sample_spsnr_db") and c["n_seeds"] == len(cfg.seeds)
        fid = out["contrasts"][f"FID: {config} - {base}"]
        rows = {(r["config"], r["seed"]): r["FID"] for r in out["table_per_seed"]}
        assert fid["per_seed"] == pytest.approx([rows[(config, s)] - rows[(base, s)] for s in cfg.seeds])
    assert out["train_step_time_relative_to_A"][cfg.configs[0]] == 1.0
    assert all(s > 0 for s in out["train_step_seconds"].values())
    # Config E, every seed: the first config and the last D config; an angle of 0 reproduces the plain sample exactly
    assert list(out["rotation_consistency_mean_db"]) == ["A", "D-1N"]
    zero = [r for r in out["rotation"] if r["angle"] == 0]
    assert len(zero) == 2 * len(cfg.seeds) and all(r["psnr_db"] == 100.0 and r["psnr_sem"] == 0.0 for r in zero)
    for config, summary in out["rotation_consistency_mean_db"].items():
        per_seed = [np.mean([r["psnr_db"] for r in out["rotation"]
                             if r["config"] == config and r["seed"] == s and r["angle"] != 0]) for s in cfg.seeds]
        assert summary["per_seed"] == pytest.approx(per_seed) and 0 < summary["mean"] < 100


def test_missing_checkpoints_name_the_stage_to_run(tmp_path, smoke_params):
    cfg = stage.Config.from_params(smoke_params, dataset="mnist")
    with pytest.raises(FileNotFoundError, match="configs_train"):
        stage.load_unet(cfg, "A", "cpu", tmp_path)
