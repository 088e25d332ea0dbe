"""Stage ``configs_report``: the table gathers every run, and each gap to Config A is the difference of the two rows
with their standard errors combined."""
from __future__ import annotations

import json
import shutil

import pytest

from afcore.stages import configs_report as stage


def test_report_gathers_every_run_and_its_gaps_to_a(stage_device, device_checks, smoke_workspace, smoke_params,
                                                    tmp_path):
    root = tmp_path
    shutil.copytree(smoke_workspace("configs_eval") / "metrics", root / "metrics")
    cfg = stage.Config.from_params(smoke_params)
    with device_checks(stage_device):
        report = stage.run(cfg, stage_device, root)
    assert json.loads((root / "metrics/14_configs_report.json").read_text()) == report
    for name in ("loss", "spsnr", "rotation_consistency"):  # README shows the rotation figure
        assert (root / f"figures/14_configs_report/{name}.png").stat().st_size > 0
    keys = [f"{d}/{c}" for d in cfg.config_datasets for c in cfg.configs]
    assert list(report["rows"]) == keys and len(report["table"]) == len(keys)
    for key, row in report["rows"].items():
        train = json.loads((root / f"metrics/configs_train/{key.replace('/', '-')}.json").read_text())
        assert row["trainable_parameters"] == train["trainable_parameters"] > 0
    assert all(report["rows"][f"{d}/{cfg.configs[0]}"]["train_step_relative_to_A"] == 1.0
               for d in cfg.config_datasets)
    # the contrasts are the evaluations' seed-level contrasts, keyed by data set; the seed means of a paired
    # contrast equal the difference of the rows' seed means (a mean of differences is the difference of means)
    base = cfg.configs[0]
    expected = [f"{d}/{m}: {c} - {base}" for d in cfg.config_datasets for c in cfg.configs[1:]
                for m in ("sample_spsnr_db", "denoiser_spsnr_db", "FID")]
    assert set(expected) <= set(report["contrasts"])
    for d in cfg.config_datasets:
        for c in cfg.configs[1:]:
            for m in ("sample_spsnr_db", "denoiser_spsnr_db", "FID"):
                got = report["contrasts"][f"{d}/{m}: {c} - {base}"]
                a, b = report["rows"][f"{d}/{base}"], report["rows"][f"{d}/{c}"]
                assert got["mean"] == pytest.approx(b[m] - a[m], abs=1e-6)
                assert got["n_seeds"] == len(cfg.seeds) and got["primary"] == (m == "sample_spsnr_db")
    assert set(report["rotation_consistency"]) == {f"{d}/{c}" for d in cfg.config_datasets
                                                  for c in (cfg.configs[0], "D-1N")}
    assert report["scale"]["train_steps"] == cfg.train_steps and report["profile"] == "smoke"


def test_a_missing_evaluation_names_the_stage_to_run(tmp_path, smoke_params):
    with pytest.raises(FileNotFoundError, match="configs_train"):
        stage.run(stage.Config.from_params(smoke_params), "cpu", tmp_path)
